"""Client side of the inference engines, free of torch: the service imports this to serve chat completions.

- :mod:`.process`: start/stop one engine process (tuneforge's ``python -m tuneforge.engine`` or vLLM's
  OpenAI server from its own virtualenv) and wait until it is ready;
- :mod:`.client`: HTTP calls to a running engine (adapter loading, answers, streams passed through) with
  errors in OpenAI's envelope;
- :mod:`.manager`: one engine per base model on demand, adapters loaded on first use, restart after a crash,
  idle stop.
"""

from tuneforge.engine_client.client import EngineClient, EngineHTTPError, EngineStream, EngineUnavailable, Reply
from tuneforge.engine_client.manager import Adapter, EngineManager, RunningEngine
from tuneforge.engine_client.process import EngineKind, EngineProcess, EngineSpec, EngineStartError

__all__ = [
    "Adapter",
    "EngineClient",
    "EngineHTTPError",
    "EngineKind",
    "EngineManager",
    "EngineProcess",
    "EngineSpec",
    "EngineStartError",
    "EngineStream",
    "EngineUnavailable",
    "Reply",
    "RunningEngine",
]
