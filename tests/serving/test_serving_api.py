"""Chat and text completions through the service (the real engine process behind it), with the official
`openai` client: base and tuned models, checkpoints, streaming, tenancy, bad input, an engine crash, metrics.

One server and one engine for the module (an engine start costs seconds to minutes on a busy machine). The
tuned model is a succeeded LoRA job whose adapter (a random PEFT adapter of the tiny model, as training would
publish it) sits in the object store under the job's prefix.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.service.helpers import add_tenant
from tests.serving.published import succeeded_job
from tests.support.engine_models import make_lora, make_peaked_model
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.waiting import free_port, wait_for
from tuneforge.service.db.models import Checkpoint
from tuneforge.storage.manifest import publish_dir

pytestmark = pytest.mark.timeout(1800)
BASE = "tiny-peaked"
OTHER_KEY = "tf-other-tenant-key-for-serving-tests"
HELLO = [{"role": "user", "content": "hello there"}]


class Served:
    def __init__(self, server: ThreadServer, tuned: str, checkpoint: str, reward: str) -> None:
        self.server, self.tuned, self.checkpoint, self.reward = server, tuned, checkpoint, reward

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=key or self.server.api_key,
                             max_retries=0, timeout=900)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = Path(os.environ.get("TUNEFORGE_TEST_MODEL_DIR") or tmp_path_factory.mktemp("serving-models"))
    model = make_peaked_model(root)
    adapter = make_lora(model, root, seed=5)
    home = tmp_path_factory.mktemp("serving") / "home"
    server = ThreadServer(make_settings(home, free_port()), start_executor=False).start()
    try:
        register_model(server, model, BASE)
        with server.client() as client:
            job_id, tuned = succeeded_job(server, client, adapter, BASE)
            _, reward = succeeded_job(server, client, adapter, BASE, method="reward_model")
        # a checkpoint of the tuned job: the same adapter saved at step 3, next to optimizer state
        prefix = f"jobs/{job_id}/checkpoints/step-3"
        publish_dir(server.state.store, adapter, prefix)
        checkpoint = f"{tuned}:ckpt-step-3"
        with server.state.sessions() as session:
            session.add(Checkpoint(id="ftckpt-serving", job_id=job_id, tenant_id="default", step_number=3,
                                   metrics={}, prefix=prefix, fine_tuned_model_checkpoint=checkpoint))
            session.commit()
        add_tenant(server, "acme", OTHER_KEY).close()
        yield Served(server, tuned, checkpoint, reward)
    finally:
        server.stop()


def test_base_and_tuned_models_answer_differently_through_the_openai_client(served: Served) -> None:
    client = served.client()
    base = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=12, temperature=0)
    tuned = client.chat.completions.create(model=served.tuned, messages=HELLO, max_tokens=12, temperature=0)
    assert base.model == BASE and tuned.model == served.tuned
    assert base.choices[0].message.content != tuned.choices[0].message.content
    for answer in (base, tuned):
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
        assert answer.choices[0].finish_reason in ("stop", "length")
    # a checkpoint of the job is callable too, and is the same adapter here
    ckpt = client.chat.completions.create(model=served.checkpoint, messages=HELLO, max_tokens=12, temperature=0)
    assert ckpt.choices[0].message.content == tuned.choices[0].message.content


def test_streaming_relays_the_chunks_and_usage_only_when_asked(served: Served) -> None:
    client = served.client()
    plain = client.chat.completions.create(model=served.tuned, messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model=served.tuned, messages=HELLO, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    # the service asks the engine for usage (metrics) but does not pass it on unasked
    quiet = list(client.chat.completions.create(model=served.tuned, messages=HELLO, max_tokens=10, temperature=0,
                                                stream=True))
    assert all(c.usage is None for c in quiet) and all(c.choices for c in quiet)


def test_sampling_parameters_reach_the_engine(served: Served) -> None:
    client = served.client()
    many = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=11)
    assert [c.index for c in many.choices] == [0, 1, 2]
    again = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in many.choices]
    text = client.completions.create(model=served.tuned, prompt="once upon", max_tokens=6, temperature=0)
    assert text.object == "text_completion" and text.choices[0].text


def test_another_tenants_model_does_not_exist(served: Served) -> None:
    other = served.client(OTHER_KEY)
    for model in (served.tuned, served.checkpoint, "ft:tiny-peaked:default:nope:000000000000"):
        with pytest.raises(openai.NotFoundError) as exc:
            other.chat.completions.create(model=model, messages=HELLO, max_tokens=4)
        assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    # the base model is everyone's
    assert other.chat.completions.create(model=BASE, messages=HELLO, max_tokens=4).choices


@pytest.mark.parametrize("body,status,param", [
    ({"model": BASE, "messages": HELLO, "n": 0}, 400, "n"),
    ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": BASE, "messages": []}, 400, "messages"),
    ({"model": BASE, "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": BASE, "messages": HELLO, "temperature": 9}, 400, "temperature"),
    ({"model": BASE, "messages": HELLO, "not_a_field": 1}, 400, "not_a_field"),
    ({"messages": HELLO}, 400, "model"),
    ({"model": "no-such-model", "messages": HELLO}, 404, "model"),
])
def test_bad_requests_are_refused_before_any_engine_work(served: Served, body: dict[str, Any], status: int,
                                                         param: str) -> None:
    with served.server.client() as client:
        resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"]


def test_engine_limits_come_back_as_openai_errors(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "word " * 5000}],
                                       max_tokens=4)
    assert exc.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_unparsable_and_oversized_bodies(served: Served) -> None:
    with served.server.client() as client:
        bad = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        assert client.post("/v1/chat/completions", json=[1, 2]).status_code == 400
        huge = {"model": BASE, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
        assert client.post("/v1/chat/completions", json=huge).status_code == 413
        deep = client.post("/v1/chat/completions", content=b'{"model": "x", "messages": ' + b"[" * 20_000
                           + b"]" * 20_000 + b"}", headers={"content-type": "application/json"})
        assert deep.status_code == 400


def test_a_reward_model_cannot_generate(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        served.client().chat.completions.create(model=served.reward, messages=HELLO, max_tokens=4)
    assert "reward model" in str(exc.value)


def test_no_key_no_answer(served: Served) -> None:
    resp = httpx.post(f"{served.server.url}/v1/chat/completions", json={"model": BASE, "messages": HELLO})
    assert resp.status_code == 401


def test_an_engine_crash_mid_stream_ends_the_stream_and_the_next_request_starts_a_fresh_engine(
        served: Served) -> None:
    client = served.client()
    stream = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=400, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    assert first.choices
    engines = served.server.state.serving.engines()
    pid = next(e["pid"] for e in engines if e["base_model"] == BASE)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as exc:
        for _ in stream:
            pass
    assert "engine" in str(exc.value)
    answer = client.chat.completions.create(model=BASE, messages=HELLO, max_tokens=4)
    assert answer.choices
    new_pid = next(e["pid"] for e in served.server.state.serving.engines() if e["base_model"] == BASE)
    assert new_pid != pid


def test_metrics_count_requests_tokens_and_engine_events(served: Served) -> None:
    served.client().chat.completions.create(model=BASE, messages=HELLO, max_tokens=4)
    text = wait_for("serving metrics", lambda: (lambda t: t if "tuneforge_serving_output_tokens_total" in t else None)(
        httpx.get(f"{served.server.url}/metrics").text), 30)
    assert f'tuneforge_serving_requests_total{{base_model="{BASE}",route="chat",status="200"}}' in text
    assert f'tuneforge_serving_engine_events_total{{base_model="{BASE}",event="started"}}' in text
    assert "tuneforge_serving_time_to_first_token_seconds_bucket" in text


def test_engines_listing_shows_only_this_tenants_adapters(served: Served) -> None:
    served.client().chat.completions.create(model=served.tuned, messages=HELLO, max_tokens=2)
    with served.server.client() as mine:
        listed = mine.get("/v1/serving/engines").json()["data"]
    assert any(served.tuned in e["adapters"] for e in listed)
    with served.server.client(OTHER_KEY) as theirs:
        assert all(not e["adapters"] for e in theirs.get("/v1/serving/engines").json()["data"])


def test_playground_streams_two_models_side_by_side(served: Served) -> None:
    """The built-in page's playground in headless Chromium: base and tuned model, same prompt, both answers."""
    from tests.observability.support import ROOT
    from tests.support.browser import chromium_page, sign_in

    url = served.server.url
    # a long default timeout: an engine may start on a busy machine
    with chromium_page(1280, 760, 600_000) as (page, errors):
        sign_in(page, url, served.server.api_key)
        page.evaluate("location.hash = '#/playground'")
        page.wait_for_selector(f'#play-model-b option[value="{served.tuned}"]', state="attached")
        page.select_option("#play-model-a", BASE)
        page.select_option("#play-model-b", served.tuned)
        page.fill("#play-prompt", "hello there")
        page.fill("#play-max-tokens", "24")
        page.click("#play-send")
        page.wait_for_function("() => document.getElementById('play-stats-a').textContent.includes('tokens') && "
                               "document.getElementById('play-stats-b').textContent.includes('tokens')")
        left, right = page.inner_text("#play-out-a"), page.inner_text("#play-out-b")
        assert left and right and left != right
        assert page.inner_text("#play-title-b") == served.tuned
        shots = ROOT / "test-artifacts"
        shots.mkdir(exist_ok=True)
        page.screenshot(path=shots / "ui-playground.png", full_page=True)
        assert not errors, errors
