"""Real stopping and chat templates: SmolLM2-135M-Instruct (the bundled base model) on tuneforge's engine.

Generation must end at the chat template's end-of-turn token (``<|im_end|>``) for the base model and for a
tuned one (a LoRA adapter), with ``finish_reason`` saying ``stop``; usage counts match the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.engine.conftest import start_engine, stop_engine, tuneforge_spec
from tests.support.engine_models import make_lora
from tuneforge.engine_client import EngineProcess

pytestmark = pytest.mark.timeout(600)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_lora(smol_model: Path, model_root: Path) -> Path:
    # a small random LoRA: the answer changes, the model still speaks and ends its turn
    return make_lora(smol_model, model_root, seed=3, scale=0.3, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def smol_engine(smol_model: Path, smol_lora: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[EngineProcess]:
    spec = tuneforge_spec("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", tmp_path_factory.mktemp("smol-logs"),
                          "--adapter", f"smol-tuned={smol_lora}", max_model_len=2048)
    process = start_engine(spec)
    yield process
    stop_engine(process)


@pytest.fixture(scope="module")
def client(smol_engine: EngineProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smol_engine.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=model, messages=QUESTION, temperature=0,  # type: ignore[arg-type]
                                          max_tokens=120, **kw)


def test_base_and_tuned_stop_at_end_of_turn(client: openai.OpenAI, smol_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol_model))
    answers = {}
    for model in ("SmolLM2-135M-Instruct", "smol-tuned"):
        answer = ask(client, model, logprobs=True)
        choice = answer.choices[0]
        text = choice.message.content
        assert choice.finish_reason == "stop", (model, text)
        assert answer.usage.completion_tokens < 120
        assert "<|im_end|>" not in text and "<|im_start|>" not in text
        # usage: the prompt as the chat template renders it; the answer's tokens plus the end-of-turn token
        prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
        assert answer.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert answer.usage.completion_tokens == len(choice.logprobs.content) + 1
        assert answer.usage.completion_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        answers[model] = text
    assert "Paris" in answers["SmolLM2-135M-Instruct"]
    assert answers["smol-tuned"] != answers["SmolLM2-135M-Instruct"]

    chunks = list(ask(client, "smol-tuned", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answers["smol-tuned"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_length_when_the_budget_ends_first(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="SmolLM2-135M-Instruct", temperature=0, max_tokens=5,
                                            messages=[{"role": "user", "content": "Write a long poem about rain."}])
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5


def test_text_completion_with_a_stop_sequence(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,", max_tokens=30,
                                       temperature=0, stop=[", 8"])
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text.replace(" ", "") == "5,6,7"
