"""The engine's OpenAI routes, through the unchanged ``openai`` client, against a real engine process.

The model is a tiny random Llama with peaked distributions (tests/support/engine_models.py), so greedy answers
are stable to compare: alone vs batched, base vs adapter, streamed vs not.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tuneforge.engine_client import EngineProcess

pytestmark = pytest.mark.timeout(300)

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def client(tiny_engine: EngineProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_engine.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(peaked_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(peaked_model))


def greedy(client: openai.OpenAI, model: str = "tiny", messages: list[dict[str, str]] | None = None,
           **kw: Any) -> Any:
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model=model, messages=messages or MESSAGES,  # type: ignore[arg-type]
                                          temperature=0, **kw)


def test_models_lists_the_base_and_its_adapter(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {"tiny", "a1"}
    assert models["a1"].model_extra["parent"] == "tiny"  # type: ignore[index]


def test_base_and_adapter_answer_differently_and_report_usage(client: openai.OpenAI, tokenizer: Any) -> None:
    base = greedy(client)
    tuned = greedy(client, "a1")
    assert base.model == "tiny" and tuned.model == "a1"
    assert base.choices[0].message.content != tuned.choices[0].message.content
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected_prompt = len(tokenizer(prompt_ids, add_special_tokens=False)["input_ids"])
    for answer in (base, tuned):
        assert answer.object == "chat.completion"
        assert answer.choices[0].message.role == "assistant"
        assert answer.usage.prompt_tokens == expected_prompt
        if answer.choices[0].finish_reason == "length":
            assert answer.usage.completion_tokens == 24
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_logprobs_cover_every_token_of_the_answer(client: openai.OpenAI, tokenizer: Any) -> None:
    answer = greedy(client, logprobs=True, top_logprobs=3, max_tokens=12)
    choice = answer.choices[0]
    content = choice.logprobs.content
    # every generated token has an entry except a closing end-of-turn token (not part of the text)
    assert len(content) == answer.usage.completion_tokens - (choice.finish_reason == "stop")
    # a token may hold part of a character: its bytes are exact, joined they are the answer
    assert bytes(b for e in content for b in e.bytes).decode(errors="replace") == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)


def test_streaming_matches_the_plain_answer_and_ends_with_usage(client: openai.OpenAI) -> None:
    plain = greedy(client, "a1")
    chunks = list(greedy(client, "a1", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(greedy(client, stream=True, max_tokens=4))
    assert chunks and all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_n_choices_are_distinct_and_counted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, max_tokens=16,  # type: ignore[arg-type]
                                            temperature=1.0, seed=11)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content for c in answer.choices]
    assert len(set(texts)) > 1
    streamed = list(client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, max_tokens=16,  # type: ignore[arg-type]
                                                   temperature=1.0, seed=11, stream=True,
                                                   stream_options={"include_usage": True}))
    by_choice = ["", "", ""]
    for c in streamed:
        for ch in c.choices:
            by_choice[ch.index] += ch.delta.content or ""
    assert by_choice == texts  # the same seed gives the same choices, streamed or not
    assert streamed[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_seed_reproduces_alone_and_inside_a_busy_batch(client: openai.OpenAI) -> None:
    def sampled(seed: int, model: str = "tiny") -> str:
        r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20,  # type: ignore[arg-type]
                                           temperature=1.0, top_p=0.9, seed=seed)
        return str(r.choices[0].message.content)

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first
    # the same seeded request while other sequences (another adapter among them) share the batch
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        others = [pool.submit(greedy, client, "a1", max_tokens=40) for _ in range(3)]
        again = pool.submit(sampled, 7)
        assert again.result() == first
        [o.result() for o in others]


def test_batched_answers_equal_answers_alone(client: openai.OpenAI) -> None:
    """Rows join a running batch at step boundaries, with other adapters and prompt lengths: same tokens."""
    requests = [("tiny", "Hi"), ("a1", "Tell me a long story about ships and the sea."), ("tiny", "Why?"),
                ("a1", "x"), ("tiny", "Another, slightly longer question about rivers?")]
    alone = [greedy(client, m, [{"role": "user", "content": p}], max_tokens=30).choices[0].message.content
             for m, p in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(greedy, client, m, [{"role": "user", "content": p}], max_tokens=30)
                   for m, p in requests]
        together = [f.result().choices[0].message.content for f in futures]
    assert together == alone


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    full = greedy(client, max_tokens=30).choices[0].message.content
    assert full and len(full) > 6
    stop = full[4:7]
    cut = greedy(client, max_tokens=30, stop=[stop, "never-there"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in greedy(client, max_tokens=30, stop=stop, stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content


def test_text_completions(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="a1", prompt=["Once upon", "The end"], max_tokens=8, temperature=0,
                                       logprobs=2)
    assert answer.object == "text_completion"
    assert [c.index for c in answer.choices] == [0, 1]
    for c in answer.choices:
        assert c.finish_reason in ("stop", "length")
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == answer.usage.completion_tokens // 2 \
            or c.finish_reason == "stop"
        # OpenAI's shape keys the alternatives by text: two byte tokens that both print as U+FFFD collide
        assert 1 <= len(c.logprobs.top_logprobs[0]) <= 2
    echoed = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Once upon")
    streamed = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0,
                                              stream=True))
    plain = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, temperature=0)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


# -- bad input: a clear 4xx in OpenAI's error shape --


def _error(tiny_engine: EngineProcess, path: str, body: Any, status: int) -> dict[str, Any]:
    r = httpx.post(f"{tiny_engine.base_url}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


def test_prompt_over_the_context_length(tiny_engine: EngineProcess) -> None:
    err = _error(tiny_engine, "/v1/chat/completions",
                 {"model": "tiny", "messages": [{"role": "user", "content": "word " * 100}]}, 400)
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in err["message"] and "resulted in" in err["message"]


def test_max_tokens_too_large(tiny_engine: EngineProcess) -> None:
    err = _error(tiny_engine, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 250}, 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "250 in the completion" in err["message"]
    err = _error(tiny_engine, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400)
    assert err["param"] == "max_tokens"


@pytest.mark.parametrize("n", [0, 9, -1])
def test_n_out_of_range(tiny_engine: EngineProcess, n: int) -> None:
    err = _error(tiny_engine, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "n": n}, 400)
    assert err["param"] == "n" and "between 1 and 8" in err["message"]


@pytest.mark.parametrize(("messages", "param"), [
    ([], "messages"),
    ("hello", "messages"),
    ([{"content": "no role"}], "messages[0].role"),
    ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": 42}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
    ([{"role": "user"}], "messages[0].content"),
])
def test_malformed_messages(tiny_engine: EngineProcess, messages: Any, param: str) -> None:
    err = _error(tiny_engine, "/v1/chat/completions", {"model": "tiny", "messages": messages}, 400)
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "needle"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "response_format 'json_schema' is not supported by this engine"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools and function calling are not supported"),
    ({"frobnicate": True}, "Unrecognized request argument supplied: frobnicate"),
    ({"temperature": 3}, "temperature"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop sequences"),
    ({"logit_bias": {"999999": 1}}, "outside the vocabulary"),
])
def test_unsupported_or_invalid_parameters(tiny_engine: EngineProcess, body: dict[str, Any], needle: str) -> None:
    err = _error(tiny_engine, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, **body}, 400)
    assert needle in err["message"]


def test_unknown_model_and_bad_json(tiny_engine: EngineProcess) -> None:
    err = _error(tiny_engine, "/v1/chat/completions", {"model": "ft:nope", "messages": MESSAGES}, 404)
    assert err["code"] == "model_not_found" and "ft:nope" in err["message"]
    r = httpx.post(f"{tiny_engine.base_url}/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{tiny_engine.base_url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
