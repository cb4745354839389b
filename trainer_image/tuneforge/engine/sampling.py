"""Choose the next token of every row of a batch, each row with its own parameters and random generator.

A row's random numbers come from its own ``torch.Generator`` seeded from the request's ``seed`` (and the choice
index), so a seeded request gives the same answer whatever else shares the batch. Greedy rows (temperature 0)
share one ``argmax``. Logprobs are taken from the model's distribution before temperature and truncation, as
OpenAI and vLLM report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.engine.protocol import SamplingParams


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


def make_generator(seed: int | None, choice: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        # distinct, reproducible streams for the choices of one seeded request
        gen.manual_seed((seed * 1_000_003 + choice) & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def _process_row(logits: torch.Tensor, params: SamplingParams, counts: dict[int, int] | None) -> torch.Tensor:
    row = logits.clone() if (params.logit_bias or counts) else logits
    for token, bias in params.logit_bias:
        row[token] += bias
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(counts.keys()), dtype=torch.long)
        freq = torch.tensor(list(counts.values()), dtype=row.dtype)
        row[ids] -= params.frequency_penalty * freq + params.presence_penalty
    if params.greedy:
        return row
    row = row / params.temperature
    if params.top_k > 0 and params.top_k < row.shape[-1]:
        kth = torch.topk(row, params.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= params.top_p
        row = row.clone()
        row[order[drop]] = float("-inf")
    return row


def choose(logits: torch.Tensor, rows: list[Any]) -> tuple[list[int], list[TokenLogprob | None]]:
    """``rows[i]`` has ``params``, ``generator`` and ``counts`` (token -> times generated, or None).

    Returns the chosen token of every row and, for rows that asked for logprobs, their logprob entries.
    """
    logits = logits.float().cpu()  # per-row generators and small ops: the CPU is fine for (rows, vocab)
    tokens: list[int] = [0] * len(rows)
    greedy_plain = [i for i, r in enumerate(rows) if r.params.greedy and r.params.plain]
    if greedy_plain:
        best = torch.argmax(logits[greedy_plain], dim=-1).tolist()
        for i, tok in zip(greedy_plain, best, strict=True):
            tokens[i] = int(tok)
    for i, r in enumerate(rows):
        if r.params.greedy and r.params.plain:
            continue
        row = _process_row(logits[i], r.params, r.counts)
        if r.params.greedy:
            tokens[i] = int(torch.argmax(row))
        else:
            probs = torch.softmax(row, dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator))
    entries: list[TokenLogprob | None] = [None] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs]
    if wanted:
        logp = torch.log_softmax(logits[wanted], dim=-1)
        for j, i in enumerate(wanted):
            k = rows[i].params.top_logprobs
            top: list[tuple[int, float]] = []
            if k:
                values, ids = torch.topk(logp[j], k)
                top = [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist(), strict=True)]
            entries[i] = TokenLogprob(tokens[i], float(logp[j, tokens[i]]), top)
    return tokens, entries
