"""A deployment without serving (``TUNEFORGE_SERVING_ENABLED=false``, the chart's ``serving.enabled: false``): the
real embedded service refuses completions with a clear 503 in OpenAI's error envelope, starts no engine, and lists
its models with no engine. (Cluster mode, where no ServingEngine may be created either:
tests/operator/test_cluster_serving.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port

pytestmark = pytest.mark.timeout(120)
BASE = "SmolLM2-135M-Instruct"
ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    running = ThreadServer(make_settings(tmp_path / "home", free_port(), groups={"serving": {"enabled": False}}),
                           start_executor=False).start()
    try:
        yield running
    finally:
        running.stop()


def test_completions_are_refused_clearly_and_no_engine_starts(server: ThreadServer) -> None:
    with server.client() as client:
        for path, body in (("/v1/chat/completions", {"model": BASE, **ASK}),
                           ("/v1/chat/completions", {"model": BASE, **ASK, "stream": True}),
                           ("/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 4})):
            reply = client.post(path, json=body)
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"].startswith("application/json")
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["code"], error["param"], error["type"]) == ("serving_not_enabled", "model", "server_error")
            assert "Serving is not enabled in this deployment" in error["message"]
            assert "serving.enabled" in error["message"]
        # the request is still checked first: a bad or unknown model is the usual 400/404
        assert client.post("/v1/chat/completions", json=ASK).status_code == 400
        missing = client.post("/v1/chat/completions", json={"model": "ft:nope:default:x:abc", **ASK})
        assert missing.status_code == 404
        assert client.get("/v1/serving/engines").json() == {"object": "list", "data": []}
        models = client.get("/v1/models").json()["data"]
        assert models and {m["engine"] for m in models} == {None}
    serving = server.app.state.tuneforge.serving
    assert serving.kind is None and serving.engines() == []
