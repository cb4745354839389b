"""Serving on this machine: one engine process per base model in use (tuneforge's engine or vLLM), started on the
first request, stopped when idle, restarted after a crash (``tuneforge.engine_client.EngineManager``).

Models and adapters that live in the object store (registered base models, fully tuned models, adapters of
tuned models and checkpoints) are copied into ``$TUNEFORGE_HOME/serving/`` first, checked file by file against
their manifest, under a directory named after the manifest's sha256: a model pushed again gets a new copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tuneforge.engine_client import Adapter, EngineManager, EngineSpec, Reply
from tuneforge.engine_client.process import EngineKind
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import Unavailable
from tuneforge.service.domain.serving import EngineReply, ServingBackend, Target
from tuneforge.storage import ObjectStore, StoreError
from tuneforge.storage.published import fetch_published

log = logging.getLogger(__name__)

EventHook = Callable[[str, str, dict[str, Any]], None]


class LocalServing(ServingBackend):
    def __init__(self, settings: ServiceSettings, store: ObjectStore, on_event: EventHook | None = None) -> None:
        self.settings = settings
        self.store = store
        self.kind: EngineKind = settings.serving.engine
        self.root = settings.home / "serving"
        #: base key -> the local model reference its engine loads (set before the engine is first asked for)
        self._models: dict[str, str] = {}
        #: base key -> what its engine does (generate, or score with a reward model)
        self._tasks: dict[str, str] = {}
        self._copy_locks: dict[str, asyncio.Lock] = {}
        idle = settings.serving.idle_seconds or None
        self.manager = EngineManager(self._spec_for, idle_seconds=idle, on_event=on_event)
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle --
    async def start(self) -> None:
        if self.manager.idle_seconds:
            self._reaper = asyncio.create_task(self.manager.run_reaper(min(30.0, self.manager.idle_seconds)))

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.manager.aclose()

    def engines(self) -> list[dict[str, Any]]:
        return [{"base_model": base, "engine": running.spec.kind, "pid": running.process.pid,
                 "adapters": sorted(running.adapters), "active_requests": running.active}
                for base, running in self.manager.engines.items()]

    # -- engines --
    def _spec_for(self, base: str) -> EngineSpec:
        serving, executor = self.settings.serving, self.settings.executor
        if self._tasks.get(base) == "score":
            # reward models are scored by tuneforge's engine (in the trainer's environment), whatever generates;
            # the store resolves a registered base model the reward model's adapter was trained on
            return EngineSpec(
                kind="tuneforge", model=self._models[base], served_name=base, python=executor.trainer_python,
                start_timeout=serving.start_timeout_seconds, extra_args=("--task", "score"),
                env={"TUNEFORGE_MODEL_CACHE": str(executor.model_cache),
                     "TUNEFORGE_STORAGE_URL": self.settings.storage.url},
                log_dir=self.settings.home / "logs" / "engines")
        python = serving.vllm_python if self.kind == "vllm" else executor.trainer_python
        if not python:
            raise Unavailable("TUNEFORGE_SERVING_ENGINE is vllm but TUNEFORGE_VLLM_PYTHON names no interpreter")
        return EngineSpec(
            kind=self.kind, model=self._models[base], served_name=base, python=python,
            max_loras=serving.max_loras, max_batch=serving.max_batch, start_timeout=serving.start_timeout_seconds,
            env={"TUNEFORGE_MODEL_CACHE": str(executor.model_cache)},
            log_dir=self.settings.home / "logs" / "engines",
        )

    async def _base_model(self, target: Target) -> None:
        if target.base in self._models:
            return
        self._tasks[target.base] = target.task
        if target.base_is_prefix:
            local = await self._copy(target.base_ref, ())
            self._models[target.base] = str(local)
        elif self.kind == "vllm":
            # vLLM loads a directory: the bundled model converted once, in the trainer's environment
            self._models[target.base] = await self._prepared(target.base_ref)
        else:
            self._models[target.base] = target.base_ref

    async def _prepared(self, model_id: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            self.settings.executor.trainer_python, "-m", "tuneforge.trainer.models", "prepare", model_id,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TUNEFORGE_MODEL_CACHE": str(self.settings.executor.model_cache),
                 "HF_HUB_OFFLINE": "1"})
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise Unavailable(f"could not prepare {model_id} for vLLM: {err.decode(errors='replace')[-300:]}")
        return out.decode().strip().splitlines()[-1]

    async def _copy(self, prefix: str, files: tuple[str, ...]) -> Path:
        """The published files under ``prefix`` (only ``files`` when given), checked against the manifest."""
        lock = self._copy_locks.setdefault(prefix, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self._copy_now, prefix, files)

    def _copy_now(self, prefix: str, files: tuple[str, ...]) -> Path:
        try:
            return fetch_published(self.store, prefix, self.root, files)
        except StoreError as exc:
            raise Unavailable(str(exc)) from exc

    async def _adapter(self, target: Target) -> Adapter | None:
        if target.adapter is None:
            return None
        local = await self._copy(target.adapter.prefix, target.adapter.files)
        return Adapter(target.adapter.name, str(local))

    # -- requests --
    async def request(self, target: Target, path: str, body: dict[str, Any]) -> EngineReply:
        await self._base_model(target)
        reply: Reply = await self.manager.request(target.base, path, body, adapter=await self._adapter(target))
        return EngineReply(reply.status, reply.body)

    async def stream(self, target: Target, path: str, body: dict[str, Any]) -> AsyncIterator[bytes] | EngineReply:
        await self._base_model(target)
        answer = await self.manager.stream(target.base, path, body, adapter=await self._adapter(target))
        if isinstance(answer, Reply):
            return EngineReply(answer.status, answer.body)
        return answer.__aiter__()
