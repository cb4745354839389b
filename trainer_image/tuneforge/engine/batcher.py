"""Continuous batching: one generation thread, one running batch, new sequences join between two steps.

Each loop turn either admits waiting requests (their prompts are prefilled together, left-padded, and their
KV cache is stacked under the running batch's) or advances every running row by one token. Every row carries
its own LoRA adapter name, so base and tuned models of any mix share one forward pass (PEFT's
``adapter_names``). A row ends at an end-of-turn token (``stop``), at a stop string (``stop``), or at its token
budget (``length``); finished and cancelled rows leave the batch at the next step boundary.

Results go out through each request's ``emit`` callback (called on this thread; the engine hands them to the
event loop). A failure in a forward pass fails every request in the batch and leaves the engine serving.
transformers' own continuous batching (``generate_batch``) packs all sequences into a single row for paged
attention, which PEFT's per-row adapter selection cannot address, hence this loop.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.engine import kvcache
from tuneforge.engine.adapters import BASE, AdapterSet
from tuneforge.engine.errors import EngineError, EngineFailure
from tuneforge.engine.protocol import SamplingParams
from tuneforge.engine.sampling import TokenLogprob, choose, make_generator
from tuneforge.engine.textstream import Detokenizer, StopText

log = logging.getLogger("tuneforge.engine")


@dataclass
class Delta:
    choice: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass
class Finish:
    choice: int
    reason: str  # "stop" | "length"
    completion_tokens: int
    text: str  # the whole completion (for answers that are not streamed)
    logprobs: list[TokenLogprob]


@dataclass
class Failed:
    error: EngineError


Event = Delta | Finish | Failed


@dataclass
class Request:
    """One API request: ``len(prompts) * n`` sequences, answered through ``emit``."""

    prompts: list[list[int]]
    n: int
    params: SamplingParams
    adapter: str | None
    max_new: list[int]  # the token budget of each prompt's choices
    emit: Callable[[Event], None]
    stream: bool
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Row:
    request: Request
    choice: int  # the OpenAI choice index: prompt_index * n + i
    prompt: list[int]
    max_new: int
    generator: torch.Generator | None
    detok: Detokenizer
    stoptext: StopText
    counts: dict[int, int] | None
    generated: int = 0
    position: int = 0  # position id of the next input token
    last: int = 0  # the token to feed next
    logprobs: list[TokenLogprob] = field(default_factory=list)
    pending: list[TokenLogprob] = field(default_factory=list)  # logprobs not yet sent with a delta
    done: bool = False

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def adapter(self) -> str:
        return self.request.adapter or BASE


class Batcher:
    def __init__(self, adapters: AdapterSet, tokenizer: Any, eos_ids: set[int], *, max_batch: int,
                 pad_id: int, kv_growth: int = 64, max_waiting: int = 1024,
                 device: torch.device | None = None) -> None:
        self.adapters = adapters
        self.device = device or torch.device("cpu")
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_batch = max_batch
        self.pad_id = pad_id
        self.kv_growth = kv_growth
        self.max_waiting = max_waiting
        self.config = adapters.model.config
        self.waiting: deque[Request] = deque()
        self.commands: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.cond = threading.Condition()
        self.stopping = False
        self.stats = {"steps": 0, "prefills": 0, "tokens": 0, "requests": 0, "failures": 0}
        self.thread = threading.Thread(target=self._loop, name="tuneforge-engine-generate", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=30)

    # -- any thread --

    def submit(self, request: Request) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_waiting:
                from tuneforge.engine.errors import Overloaded

                raise Overloaded(f"the engine has {len(self.waiting)} requests waiting; try again later",
                                 code="engine_overloaded")
            self.waiting.append(request)
            self.stats["requests"] += 1
            self.cond.notify_all()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the generation thread between two steps (changes to the model go through here)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.cond:
            self.commands.append((fn, future))
            self.cond.notify_all()
        return future

    def cancel(self, request: Request) -> None:
        request.cancelled = True
        with self.cond:
            self.cond.notify_all()

    def load(self) -> dict[str, int]:
        with self.cond:
            return {"running": len(self.rows), "waiting": sum(len(r.prompts) * r.n for r in self.waiting)}

    # -- the generation thread --

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not (self.stopping or self.commands or self.rows or self._admissible()):
                    self.cond.wait(timeout=1.0)
                if self.stopping:
                    break
                commands = list(self.commands)
                self.commands.clear()
            for fn, future in commands:
                self._run_command(fn, future)
            self._drop_cancelled()
            admitted = self._admit()
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    elif self.rows:
                        self._decode()
            except Exception as exc:  # a failed forward pass fails the batch, not the engine
                log.exception("generation step failed")
                self.stats["failures"] += 1
                self._fail_all(admitted, EngineFailure(f"generation failed: {type(exc).__name__}: {exc}",
                                                       code="engine_error"))
        self._fail_all([], EngineFailure("the engine is shutting down", code="engine_stopping", status=503))

    def _run_command(self, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller
            future.set_exception(exc)

    def _admissible(self) -> bool:
        return bool(self.waiting) and len(self.rows) < self.max_batch

    def _admit(self) -> list[Request]:
        """Take waiting requests, in order, while their rows fit and their adapters can be in the model."""
        admitted: list[Request] = []
        with self.cond:
            free = self.max_batch - len(self.rows)
            names = {r.adapter for r in self.rows}
            kept: deque[Request] = deque()
            while self.waiting:
                req = self.waiting.popleft()
                if req.cancelled:
                    continue
                size = len(req.prompts) * req.n
                want = names | {req.adapter or BASE}
                if size <= free and self.adapters.can_admit(want):
                    admitted.append(req)
                    free -= size
                    names = want
                else:
                    kept.append(req)
                    if size > free:
                        break  # keep arrival order for the big ones: no starvation by later small requests
            kept.extend(self.waiting)
            self.waiting = kept
        if not admitted:
            self.adapters.drop_forgotten()
            return []
        ok = []
        needed = {r.adapter for r in self.rows}
        for req in admitted:
            try:
                # everything admitted so far stays in `needed`, so loading this one never evicts theirs
                self.adapters.ensure(needed | {req.adapter or BASE})
            except EngineError as exc:
                req.emit(Failed(exc))
                continue
            needed.add(req.adapter or BASE)
            ok.append(req)
        return ok

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 adapters: list[str]) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.adapters.is_peft:
            kwargs["adapter_names"] = adapters
        out = self.adapters.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True, logits_to_keep=1,
                                  **kwargs)
        return out.logits[:, -1, :]

    def _prefill(self, requests: list[Request]) -> None:
        # one prefill row per distinct prompt; the n choices of a prompt copy its cache row
        unique: list[tuple[Request, list[int]]] = []
        new_rows: list[Row] = []
        source: list[int] = []
        for req in requests:
            for p_index, prompt in enumerate(req.prompts):
                unique.append((req, prompt))
                for i in range(req.n):
                    choice = p_index * req.n + i
                    params = req.params
                    new_rows.append(Row(
                        request=req, choice=choice, prompt=prompt, max_new=req.max_new[p_index],
                        generator=None if params.greedy else make_generator(params.seed, choice),
                        detok=Detokenizer(self.tokenizer, prompt[-4:]), stoptext=StopText(params.stop),
                        counts={} if (params.presence_penalty or params.frequency_penalty) else None,
                        position=len(prompt),
                    ))
                    source.append(len(unique) - 1)
        length = max(len(p) for _, p in unique)
        ids = torch.full((len(unique), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(unique), length), dtype=torch.long)
        for i, (_, prompt) in enumerate(unique):
            ids[i, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, length - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = kvcache.new_cache(self.config, self.kv_growth)
        logits = self._forward(ids, mask, positions, cache, [r.adapter or BASE for r, _ in unique])
        self.stats["prefills"] += 1
        if source != list(range(len(unique))):
            mask = kvcache.select(cache, mask, source)
            logits = logits[torch.tensor(source, device=logits.device)]
        if self.cache is None or self.mask is None or not self.rows:
            self.cache, self.mask = cache, mask
        else:
            self.mask = kvcache.merge(self.cache, self.mask, cache, mask)
        self.rows.extend(new_rows)
        for row in new_rows:
            if row.adapter != BASE:
                self.adapters.in_use[row.adapter] += 1
        self._advance(logits, new_rows, offset=len(self.rows) - len(new_rows))

    def _decode(self) -> None:
        assert self.mask is not None
        rows = self.rows
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=1)
        logits = self._forward(ids, self.mask, positions, self.cache, [r.adapter for r in rows])
        self.stats["steps"] += 1
        for r in rows:
            r.position += 1
        self._advance(logits, rows, offset=0)

    def _advance(self, logits: torch.Tensor, rows: list[Row], offset: int) -> None:
        """Choose each row's next token, stream its text, and drop the rows that are done."""
        tokens, entries = choose(logits, rows)
        self.stats["tokens"] += len(rows)
        for row, token, entry in zip(rows, tokens, entries, strict=True):
            self._take(row, token, entry)
        if any(r.done for r in self.rows):
            keep = [i for i, r in enumerate(self.rows) if not r.done]
            self._keep(keep)

    def _take(self, row: Row, token: int, entry: TokenLogprob | None) -> None:
        row.generated += 1
        row.last = token
        if token in self.eos_ids and not row.params.ignore_eos:
            self._finish(row, "stop")
            return
        if row.counts is not None:
            row.counts[token] = row.counts.get(token, 0) + 1
        if entry is not None:
            row.logprobs.append(entry)
            row.pending.append(entry)
        piece = row.stoptext.add(row.detok.add(token))
        if row.stoptext.stopped:
            self._send(row, piece)
            self._finish(row, "stop")
        elif row.generated >= row.max_new:
            self._send(row, piece + row.stoptext.add(row.detok.flush()) + row.stoptext.finish())
            self._finish(row, "stop" if row.stoptext.stopped else "length")
        else:
            self._send(row, piece)

    def _send(self, row: Row, text: str) -> None:
        # logprobs ride with text; tokens that add no text yet (a split character) wait for the next piece
        if row.request.stream and text:
            row.request.emit(Delta(row.choice, text, row.pending))
            row.pending = []

    def _finish(self, row: Row, reason: str) -> None:
        if reason == "stop" and not row.stoptext.stopped:  # end of turn: release what was held for stop strings
            self._send(row, row.stoptext.add(row.detok.flush()) + row.stoptext.finish())
        row.done = True
        rest, row.pending = row.pending, []
        row.request.emit(Finish(row.choice, reason, row.generated, row.stoptext.text, rest if row.request.stream
                                else row.logprobs))
        self._release(row)

    def _release(self, row: Row) -> None:
        name = row.adapter
        if name != BASE:
            self.adapters.in_use[name] -= 1

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, None
            return
        assert self.mask is not None
        self.mask = kvcache.select(self.cache, self.mask, keep)

    def _drop_cancelled(self) -> None:
        if any(r.request.cancelled for r in self.rows):
            for r in self.rows:
                if r.request.cancelled and not r.done:
                    r.done = True
                    self._release(r)
            self._keep([i for i, r in enumerate(self.rows) if not r.done])

    def _fail_all(self, admitted: list[Request], error: EngineError) -> None:
        failed: set[int] = set()
        for r in self.rows:
            if not r.done:
                r.done = True
                self._release(r)
            if id(r.request) not in failed:
                failed.add(id(r.request))
                r.request.emit(Failed(error))
        for req in admitted:
            if id(req) not in failed:
                failed.add(id(req))
                req.emit(Failed(error))
        self.rows, self.cache, self.mask = [], None, None
        with self.cond:
            waiting, self.waiting = list(self.waiting), deque()
        if self.stopping:
            for req in waiting:
                req.emit(Failed(error))
        else:
            with self.cond:
                self.waiting.extendleft(reversed(waiting))
