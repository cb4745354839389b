"""The engine: one base model, its tokenizer and chat template, LoRA adapters, and the batcher running them.

Requests arrive validated (:mod:`.protocol`); here they become token ids (the chat template of the model, or of
the adapter when it ships its own), are checked against the context length, and are handed to the batcher.
Their events come back on the asyncio loop through a queue per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.engine.adapters import AdapterInfo, AdapterSet
from tuneforge.engine.batcher import Batcher, Event, Failed, Finish, Request
from tuneforge.engine.errors import BadRequest, EngineError, NotFound
from tuneforge.engine.protocol import GenerationSpec
from tuneforge.engine.textstream import TokenText

log = logging.getLogger("tuneforge.engine")

#: end-of-turn markers of common chat templates; a generation ends at any of them that the vocabulary has
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass
class EngineConfig:
    model_dir: Path
    served_name: str
    max_loras: int = 8
    max_batch: int = 16
    max_n: int = 16
    max_model_len: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    kv_growth: int = 64
    max_waiting: int = 1024


@dataclass
class Prepared:
    """A request turned into token ids, with the budget of each prompt."""

    spec: GenerationSpec
    adapter: AdapterInfo | None
    prompts: list[list[int]]
    max_new: list[int]
    echo_texts: list[str]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.model_dir), trust_remote_code=False)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(config.model_dir), dtype=_dtype(config.dtype, device), use_safetensors=True, trust_remote_code=False
        )
        model.to(self.device)
        model.eval()
        self.vocab_size = int(model.config.vocab_size)
        self.max_model_len = self._context_length(model.config, config.max_model_len)
        self.eos_ids = self._end_ids(model)
        pad = self.tokenizer.pad_token_id
        self.chat_template: str | None = self.tokenizer.chat_template
        self.token_text = TokenText(self.tokenizer)
        self.adapters = AdapterSet(model, config.max_loras, self.chat_template)
        self.batcher = Batcher(self.adapters, self.tokenizer, self.eos_ids, max_batch=config.max_batch,
                               pad_id=int(pad if pad is not None else min(self.eos_ids)),
                               kv_growth=config.kv_growth, max_waiting=config.max_waiting, device=self.device)
        self.created = int(time.time())
        self.batcher.start()
        log.info("engine ready: %s (%s, %s), context %d, end-of-turn ids %s", config.served_name,
                 config.model_dir, device, self.max_model_len, sorted(self.eos_ids))

    def _context_length(self, model_config: Any, limit: int | None) -> int:
        lengths = [int(getattr(model_config, "max_position_embeddings", 0) or 0)]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 10**9:
            lengths.append(tok_max)
        known = [n for n in lengths if n > 0] or [2048]
        length = min(known)
        return min(length, limit) if limit else length

    def _end_ids(self, model: Any) -> set[int]:
        ids: set[int] = set()
        eos = getattr(model.generation_config, "eos_token_id", None)
        for value in eos if isinstance(eos, list) else [eos]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
        return ids

    def stop(self) -> None:
        self.batcher.stop()

    # -- adapters --

    async def load_adapter(self, name: str, path: str) -> bool:
        """Register and load an adapter now (so a bad one fails here); False if it was already loaded."""
        info = self.adapters.validate(name, path)
        if not self.adapters.register(info):
            return False
        try:
            await asyncio.wrap_future(self.batcher.call(lambda: self.adapters.ensure({name})))
        except EngineError:
            self.adapters.forget(name)
            raise
        return True

    async def unload_adapter(self, name: str) -> None:
        self.adapters.forget(name)
        await asyncio.wrap_future(self.batcher.call(self.adapters.drop_forgotten))

    # -- requests --

    def resolve(self, model: str) -> AdapterInfo | None:
        if model == self.config.served_name:
            return None
        info = self.adapters.info(model)
        if info is None:
            raise NotFound(f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return info

    def prepare(self, spec: GenerationSpec) -> Prepared:
        adapter = self.resolve(spec.model)
        echo_texts: list[str] = []
        if spec.kind == "chat":
            prompts = [self._chat_ids(spec.messages, adapter)]
            where = "messages"
        else:
            if spec.echo and spec.params.logprobs:
                raise BadRequest("echo together with logprobs is not supported by this engine", param="echo",
                                 code="unsupported_parameter")
            prompts = []
            for p in spec.prompts:
                ids = p if isinstance(p, list) else self.tokenizer(p, add_special_tokens=True)["input_ids"]
                if not ids:
                    raise BadRequest("prompt: an empty prompt has no tokens to continue", param="prompt")
                prompts.append(list(ids))
                if spec.echo:
                    echo_texts.append(p if isinstance(p, str) else str(self.tokenizer.decode(p)))
            where = "prompt"
        max_new = [self._budget(len(ids), spec.params.max_tokens, where) for ids in prompts]
        return Prepared(spec, adapter, prompts, max_new, echo_texts)

    def _chat_ids(self, messages: list[dict[str, Any]], adapter: AdapterInfo | None) -> list[int]:
        template = adapter.chat_template if adapter and adapter.chat_template else self.chat_template
        if not template:
            raise BadRequest("this model has no chat template; use /v1/completions with a plain prompt",
                             param="messages", code="no_chat_template")
        try:
            text = self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # jinja's own errors ("roles must alternate", raise_exception in templates)
            raise BadRequest(f"messages: the chat template refused them: {exc}", param="messages",
                             code="invalid_messages") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _budget(self, prompt_len: int, max_tokens: int | None, where: str) -> int:
        limit = self.max_model_len
        if prompt_len >= limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. However, your {where} "
                             f"resulted in {prompt_len} tokens. Please reduce the length of the {where}.",
                             param=where, code="context_length_exceeded")
        if max_tokens is None:
            return limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. However, you requested "
                             f"{prompt_len + max_tokens} tokens ({prompt_len} in the {where}, {max_tokens} in the "
                             f"completion). Please reduce the length of the {where} or completion.",
                             param="max_tokens", code="context_length_exceeded")
        return max_tokens

    def run(self, prepared: Prepared) -> AsyncIterator[Event]:
        """Submit now (an overloaded engine raises here) and return the request's events, until every choice
        has finished; a failure is raised from the iterator. Closing the iterator early cancels the request."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (server shutting down)
                loop.call_soon_threadsafe(queue.put_nowait, event)

        spec = prepared.spec
        request = Request(prompts=prepared.prompts, n=spec.n, params=spec.params,
                          adapter=prepared.adapter.name if prepared.adapter else None,
                          max_new=prepared.max_new, emit=emit, stream=spec.stream)
        self.batcher.submit(request)
        return self._events(request, queue, len(prepared.prompts) * spec.n)

    async def _events(self, request: Request, queue: asyncio.Queue[Event], remaining: int) -> AsyncIterator[Event]:
        try:
            while remaining:
                event = await queue.get()
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Finish):
                    remaining -= 1
                yield event
        finally:
            if remaining:
                self.batcher.cancel(request)

    def describe(self) -> dict[str, Any]:
        loaded = list(self.adapters.loaded)
        return {
            "model": self.config.served_name, "model_dir": str(self.config.model_dir), "device": str(self.device),
            "max_model_len": self.max_model_len, "max_batch": self.config.max_batch,
            "adapters_known": self.adapters.names(), "adapters_loaded": loaded,
            "max_loras": self.config.max_loras, "evictions": self.adapters.evictions,
            **self.batcher.load(), **self.batcher.stats,
        }
