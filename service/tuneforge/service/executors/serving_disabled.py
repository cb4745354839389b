"""The serving backend of a deployment without serving (``TUNEFORGE_SERVING_ENABLED=false``, the chart's
``serving.enabled: false``): every completion is refused with a clear 503 ``serving_not_enabled`` (OpenAI's error
envelope), no engine is started and no ServingEngine is created. Evals, feedback sampling and graders that need
generation fail the same way, with the same message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

from tuneforge.service.core.errors import Unavailable
from tuneforge.service.domain.serving import EngineReply, ServingBackend, Target

MESSAGE = ("Serving is not enabled in this deployment: completions on base and fine-tuned models are off (an "
           "operator enables them with the Helm value serving.enabled=true, or TUNEFORGE_SERVING_ENABLED=true). The "
           "fine-tuned model can still be downloaded.")


class DisabledServing(ServingBackend):
    #: no engine answers here (``/v1/models`` lists models with ``engine: null``)
    kind = None

    def _refuse(self) -> NoReturn:
        raise Unavailable(MESSAGE, param="model", code="serving_not_enabled")

    async def request(self, target: Target, path: str, body: dict[str, Any]) -> EngineReply:
        self._refuse()

    async def stream(self, target: Target, path: str, body: dict[str, Any]) -> AsyncIterator[bytes] | EngineReply:
        self._refuse()

    def engines(self) -> list[dict[str, Any]]:
        return []
