"""Exports on this machine: one trainer-environment subprocess per export (``python -m tuneforge.trainer.export``),
its failure recorded as ``error.json`` next to where the export would be."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.domain.exports import ERROR_FILE, Exporter, ExportRequest
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)


class LocalExporter(Exporter):
    def __init__(self, settings: ServiceSettings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        self._running: dict[str, asyncio.Task[None]] = {}

    def running(self, out_prefix: str) -> bool:
        task = self._running.get(out_prefix)
        return task is not None and not task.done()

    def start(self, request: ExportRequest) -> None:
        self._running[request.out_prefix] = asyncio.get_running_loop().create_task(self._run(request))

    async def _run(self, request: ExportRequest) -> None:
        executor = self.settings.executor
        proc = await asyncio.create_subprocess_exec(
            executor.trainer_python, "-m", "tuneforge.trainer.export", "--store", self.settings.storage.url,
            "--base", request.base_model, "--model-prefix", request.model_prefix, "--out-prefix",
            request.out_prefix, "--format", request.format,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TUNEFORGE_MODEL_CACHE": str(executor.model_cache), "HF_HUB_OFFLINE": "1",
                 "TUNEFORGE_GGUF_CONVERTER": executor.gguf_converter})
        _, err = await proc.communicate()
        if proc.returncode != 0:
            lines = [line for line in err.decode(errors="replace").splitlines() if line.startswith("tuneforge:")]
            message = (lines[-1].removeprefix("tuneforge:").strip() if lines else
                       f"the export process exited with {proc.returncode}")
            log.warning("export of %s (%s) failed: %s", request.job_id, request.format, message)
            await asyncio.to_thread(self.store.put_bytes, f"{request.out_prefix}/{ERROR_FILE}",
                                    json.dumps({"message": message}).encode())

    async def aclose(self) -> None:
        for task in self._running.values():
            task.cancel()
