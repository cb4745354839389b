"""A reward model served for scoring: ``python -m tuneforge.engine --task score --model DIR``.

``DIR`` holds a published ``reward_model`` job's files (``manifest.json``, the LoRA adapter or the whole sequence
classifier, the tokenizer), as the service copies them from the object store. The score of an answer is what
reinforcement training gets from the same model (TRL's reward-model path): the chat template over the
conversation and the answer, the classifier's logit at the last token that is not padding.

``POST /v1/score`` ``{"model", "input": [{"messages": [...], "output_text": "..."}, ...]}`` answers
``{"object": "list", "model", "data": [{"object": "score", "index", "score"}], "usage": {"prompt_tokens"}}``; at
most ``MAX_INPUTS`` pairs a request, scored ``BATCH`` at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tuneforge.engine.errors import BadRequest, EngineError

MAX_INPUTS = 256
BATCH = 8
ROLES = {"system", "user", "assistant", "developer"}


class Scorer:
    def __init__(self, model_dir: Path, served_name: str, dtype: str = "auto", max_length: int | None = None) -> None:
        import torch

        from tuneforge.storage import open_store
        from tuneforge.trainer.data import ensure_chat_template
        from tuneforge.trainer.graders import load_downloaded_reward_model
        from tuneforge.trainer.models import load_tokenizer

        manifest = json.loads((model_dir / "manifest.json").read_text())
        if manifest.get("task") != "sequence_classification":
            raise BadRequest(f"{model_dir} is not a reward model (its manifest's task is {manifest.get('task')!r})")
        url = os.environ.get("TUNEFORGE_STORAGE_URL")
        store = open_store(url) if url else None
        torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        self.model = load_downloaded_reward_model(model_dir, manifest, store, torch_dtype)
        self.tokenizer = load_tokenizer(model_dir)
        ensure_chat_template(self.tokenizer)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.served_name = served_name
        self.max_length = max_length or int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        # one forward pass at a time: torch's CPU threads are shared, and requests queue here instead
        self._lock = threading.Lock()

    def texts(self, inputs: list[tuple[list[dict[str, str]], str]]) -> list[str]:
        return [self.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}],
                                                   tokenize=False) for messages, answer in inputs]

    def score(self, inputs: list[tuple[list[dict[str, str]], str]]) -> tuple[list[float], int]:
        """Each pair's score, and the tokens read."""
        import torch

        scores: list[float] = []
        tokens = 0
        texts = self.texts(inputs)
        with self._lock, torch.no_grad():
            for start in range(0, len(texts), BATCH):
                batch = self.tokenizer(texts[start:start + BATCH], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                tokens += int(batch["attention_mask"].sum())
                logits = self.model(**batch).logits
                scores += [float(v) for v in logits[:, 0].float()]
        return scores, tokens


def parse_inputs(body: Any) -> list[tuple[list[dict[str, str]], str]]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    raw = body.get("input")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("input: a non-empty list of {messages, output_text} is required", param="input")
    if len(raw) > MAX_INPUTS:
        raise BadRequest(f"input: at most {MAX_INPUTS} pairs a request, got {len(raw)}", param="input")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise BadRequest(f"input.{i}: an object with 'messages' and 'output_text' is required", param=f"input.{i}")
        messages, answer = entry.get("messages"), entry.get("output_text")
        if not isinstance(answer, str):
            raise BadRequest(f"input.{i}.output_text: a string is required", param=f"input.{i}.output_text")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            raise BadRequest(f"input.{i}.messages: a list of {{role, content}} messages is required",
                             param=f"input.{i}.messages")
        out.append(([{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                     for m in messages], answer))
    return out


def create_score_app(scorer: Scorer) -> Starlette:
    async def score(request: Request) -> Response:
        try:
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest("the request body is not valid JSON") from None
            inputs = parse_inputs(body)
            scores, tokens = await asyncio.to_thread(scorer.score, inputs)
        except EngineError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse({"object": "list", "model": scorer.served_name,
                             "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": scorer.served_name, "object": "model",
                                                         "owned_by": "tuneforge", "task": "score"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/score", score, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/health", health, methods=["GET"])])
