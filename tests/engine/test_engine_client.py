"""The torch-free engine client the service uses: engines on demand, adapters on first use, crash recovery,
runtime adapter routes with an LRU cap. Real engine processes on the tiny peaked model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.conftest import tuneforge_spec
from tests.support.engine_models import make_lora
from tuneforge.engine_client import Adapter, EngineManager, EngineProcess, EngineSpec, EngineStream, Reply

pytestmark = pytest.mark.timeout(420)

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "temperature": 0, "max_tokens": 12}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, base: str, data: dict[str, Any]) -> None:
        self.events.append((kind, base, data))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]


async def collect(stream: EngineStream) -> list[dict[str, Any] | str]:
    out: list[dict[str, Any] | str] = []
    async for event in stream:
        data = event.decode().strip().removeprefix("data: ")
        out.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return out


def test_manager_starts_on_first_use_loads_adapters_once_and_survives_a_crash_mid_stream(
        peaked_model: Path, peaked_loras: list[Path], tmp_path: Path) -> None:
    events = Recorder()

    async def scenario() -> None:
        manager = EngineManager(lambda base: tuneforge_spec(peaked_model, base, tmp_path, max_model_len=512),
                                on_event=events)
        try:
            # concurrent first requests share one start
            base, tuned = await asyncio.gather(
                manager.request("tiny", CHAT, BODY),
                manager.request("tiny", CHAT, BODY, adapter=Adapter("ft:tiny:a", str(peaked_loras[0]))),
            )
            assert base.status == 200 and tuned.status == 200, (base, tuned)
            assert tuned.body["model"] == "ft:tiny:a" and base.body["model"] == "tiny"
            assert base.body["choices"][0]["message"]["content"] != tuned.body["choices"][0]["message"]["content"]
            again = await manager.request("tiny", CHAT, BODY, adapter=Adapter("ft:tiny:a", str(peaked_loras[0])))
            assert again.body["choices"] == tuned.body["choices"]
            assert events.kinds() == ["started", "adapter_loaded"]
            first_pid = manager.engines["tiny"].process.pid

            # a stream the engine dies in the middle of: an error event, then [DONE]
            stream = await manager.stream("tiny", CHAT, {**BODY, "max_tokens": 400, "temperature": 1.0},
                                          adapter=Adapter("ft:tiny:a", str(peaked_loras[0])))
            assert isinstance(stream, EngineStream)
            seen: list[bytes] = []
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    assert first_pid is not None
                    os.kill(first_pid, signal.SIGKILL)
            last = [e.decode() for e in seen[-2:]]
            assert last[1].strip() == "data: [DONE]"
            error = json.loads(last[0].removeprefix("data: "))["error"]
            assert error["code"] == "engine_crashed" and "next request starts it again" in error["message"]
            assert "stream_cut" in events.kinds()

            # the next request starts a fresh engine and loads the adapter there again
            after = await manager.request("tiny", CHAT, BODY, adapter=Adapter("ft:tiny:a", str(peaked_loras[0])))
            assert after.status == 200 and after.body["choices"] == tuned.body["choices"]
            assert manager.engines["tiny"].process.pid != first_pid
            assert events.kinds()[-3:] == ["crashed", "started", "adapter_loaded"]

            # streaming through the manager: OpenAI chunks, usage, [DONE]
            stream = await manager.stream("tiny", CHAT, {**BODY, "stream_options": {"include_usage": True}})
            assert isinstance(stream, EngineStream)
            chunks = await collect(stream)
            assert chunks[-1] == "[DONE]"
            usage = chunks[-2]
            assert isinstance(usage, dict) and usage["usage"]["completion_tokens"] > 0
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-2]
                           if isinstance(c, dict) and c["choices"])
            assert text == base.body["choices"][0]["message"]["content"]

            # errors keep OpenAI's envelope and status, before any chunk
            bad = await manager.stream("tiny", CHAT, {**BODY, "n": 99})
            assert isinstance(bad, Reply) and bad.status == 400 and "n must be between" in bad.body["error"]["message"]
            bad_adapter = await manager.request("tiny", CHAT, BODY, adapter=Adapter("ft:x", str(tmp_path)))
            assert bad_adapter.status == 400 and "adapter_config.json" in bad_adapter.body["error"]["message"]

            # idle engines are stopped
            manager.idle_seconds = 0
            await asyncio.sleep(0.05)
            assert await manager.reap_idle() == ["tiny"]
            assert events.kinds()[-1] == "stopped" and not manager.engines
        finally:
            await manager.aclose()

    run(scenario())


def test_a_base_model_that_cannot_start_is_a_503_with_the_reason(tmp_path: Path) -> None:
    events = Recorder()

    async def scenario() -> Reply:
        manager = EngineManager(lambda base: tuneforge_spec(tmp_path / "missing", base, tmp_path), on_event=events)
        try:
            reply = await manager.request("missing", CHAT, BODY)
            assert isinstance(reply, Reply)
            return reply
        finally:
            await manager.aclose()

    reply = run(scenario())
    assert reply.status == 503 and reply.body["error"]["code"] == "engine_start_failed"
    assert "no such directory" in reply.body["error"]["message"]
    assert events.kinds() == ["start_failed"]


def test_an_engine_still_starting_is_stopped_with_the_manager_or_its_request(peaked_model: Path,
                                                                             tmp_path: Path) -> None:
    """A service that stops while an engine loads (or a request that gives up waiting for it) leaves no engine
    process behind: it was once orphaned, holding a core and a model's memory."""

    async def scenario() -> list[int]:
        pids = []
        for ending in ("manager closes", "request cancelled"):
            manager = EngineManager(lambda base: tuneforge_spec(peaked_model, base, tmp_path, max_model_len=512))
            asking = asyncio.create_task(manager.request("peaked", CHAT, BODY))
            while "peaked" not in manager.starting or manager.starting["peaked"].pid is None:
                await asyncio.sleep(0.01)
            process = manager.starting["peaked"]
            pids.append(process.pid)
            if ending == "manager closes":
                await manager.aclose()
                await asyncio.gather(asking, return_exceptions=True)
            else:
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)
                await manager.aclose()
            assert not process.alive(), ending
            assert manager.starting == {} or ending == "manager closes"
        return pids

    for pid in run(scenario()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture(scope="module")
def lru_engine(peaked_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    from tests.engine.conftest import start_engine, stop_engine

    spec = EngineSpec(kind="tuneforge", model=str(peaked_model), served_name="tiny", python=sys.executable,
                      max_loras=2, log_dir=tmp_path_factory.mktemp("lru-logs"), start_timeout=900)
    process = start_engine(spec)
    yield process
    stop_engine(process)


def _answer(url: str, model: str) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": model}, timeout=120)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_runtime_adapter_loading_unloading_and_lru(lru_engine: EngineProcess, peaked_loras: list[Path],
                                                   peaked_model: Path, tmp_path: Path) -> None:
    url = lru_engine.base_url

    def load(name: str, path: Path | str) -> httpx.Response:
        return httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                          timeout=120)

    for i, path in enumerate(peaked_loras):
        r = load(f"l{i}", path)
        assert r.status_code == 200 and "added successfully" in r.text
    assert load("l0", peaked_loras[0]).status_code == 200  # the same again: idempotent
    clash = load("l0", peaked_loras[1])
    assert clash.status_code == 400 and "already loaded from" in clash.json()["error"]["message"]
    stats = httpx.get(f"{url}/stats").json()
    assert len(stats["adapters_loaded"]) <= 2 and stats["evictions"] >= 1
    assert set(stats["adapters_known"]) == {"l0", "l1", "l2"}

    first = [_answer(url, f"l{i}") for i in range(3)]
    assert len(set(first)) == 3
    # every adapter was evicted and reloaded at least once by now: answers are unchanged
    assert [_answer(url, f"l{i}") for i in (2, 0, 1)] == [first[2], first[0], first[1]]
    assert httpx.get(f"{url}/stats").json()["evictions"] >= 3

    r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "l1"}, timeout=60)
    assert r.status_code == 200
    gone = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": "l1"}, timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    missing = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "l1"}, timeout=60)
    assert missing.status_code == 404


@pytest.mark.parametrize("case", ["no-dir", "not-peft", "pickle", "other-base", "no-name"])
def test_bad_adapters_are_refused_clearly(lru_engine: EngineProcess, tmp_path: Path, model_root: Path,
                                          case: str) -> None:
    body: dict[str, Any] = {"lora_name": "bad", "lora_path": str(tmp_path / "nowhere")}
    needle = "no such directory"
    if case == "not-peft":
        body["lora_path"] = str(tmp_path)
        needle = "no adapter_config.json"
    elif case == "pickle":
        (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
        body["lora_path"] = str(tmp_path)
        needle = "safetensors only"
    elif case == "other-base":
        from tests.support.tiny_model import make_tiny_model

        other = make_tiny_model(model_root, hidden_size=32)
        body["lora_path"] = str(make_lora(other, model_root, seed=5))
        needle = "trained on another base model"
    elif case == "no-name":
        body = {"lora_path": str(tmp_path)}
        needle = "lora_name"
    r = httpx.post(f"{lru_engine.base_url}/v1/load_lora_adapter", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    # the engine still serves, and the refused adapter is not listed
    assert "bad" not in [m["id"] for m in httpx.get(f"{lru_engine.base_url}/v1/models").json()["data"]]
    assert _answer(lru_engine.base_url, "tiny")
