"""Scores of PPO's responses: the job's grader, as a rule over the decoded text or as a reward model.

A reward model reads what the ``reward_model`` method trained it on and what GRPO/RLOO give it: the prompt and
the response rendered with the chat template, right-padded, scored at the last non-pad token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

Messages = list[dict[str, Any]]


class Scorer(Protocol):
    def __call__(
        self, prompts: list[Messages], completions: list[str], columns: dict[str, list[Any]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scores [B], extra metrics such as a multi grader's ``reward_<name>`` means)."""
        ...


class RuleScorer:
    """A rule grader (string_check, regex, multi) from :func:`tuneforge.trainer.graders.make_reward`."""

    def __init__(self, reward_fn: Callable[..., list[float]]) -> None:
        self.reward_fn = reward_fn

    def __call__(
        self, prompts: list[Messages], completions: list[str], columns: dict[str, list[Any]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        extra: dict[str, float] = {}

        def log_metric(name: str, value: float) -> None:
            extra[name] = float(value)

        # every rule grader takes extra keyword columns; a multi grader reports its sub-graders' means here
        scores = self.reward_fn(prompts, completions, log_metric=log_metric, **columns)
        return torch.tensor(scores, dtype=torch.float32), extra


class ModelScorer:
    """A reward model: ``forward(input_ids, attention_mask) -> scores`` (its own model, or its adapter on the
    shared base), fed ``chunk`` sequences at a time."""

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokenizer: Any,
                 device: torch.device, chunk: int) -> None:  # fmt: skip
        self.forward = forward
        self.tokenizer = tokenizer
        self.device = device
        self.chunk = max(1, chunk)

    def texts(self, prompts: list[Messages], completions: list[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": completion}], tokenize=False
            )
            for prompt, completion in zip(prompts, completions, strict=True)
        ]

    @torch.no_grad()
    def __call__(
        self, prompts: list[Messages], completions: list[str], columns: dict[str, list[Any]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        texts = self.texts(prompts, completions)
        out = []
        for start in range(0, len(texts), self.chunk):
            enc = self.tokenizer(
                texts[start : start + self.chunk], return_tensors="pt", padding=True, padding_side="right",
                add_special_tokens=False,
            )  # fmt: skip
            out.append(self.forward(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)).cpu())
        return torch.cat(out).float(), {}
