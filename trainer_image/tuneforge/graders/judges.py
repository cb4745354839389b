"""Model-judged graders (``score_model``, ``label_model``): the judge's prompt and the reading of its reply.

The prompt is the grader's messages rendered over the item and the sample, after a system message that says
what to answer (a number in the range, or one label). A reply is read strictly: a JSON object with ``result``
(or ``score`` / ``label``), or the bare number or label alone. Anything else is a :class:`JudgeError`, and the
item is ``errored``, never a guessed score.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tuneforge.contracts.grader_templates import render
from tuneforge.contracts.graders import LabelModelGrader, ScoreModelGrader

#: a judge's reply shown in an error at most this long
_SHOWN = 200
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class JudgeError(Exception):
    """The judge replied with something that is not a grade."""


class JudgeUnavailable(JudgeError):
    """The judge's model could not answer (engine down, request refused)."""


@dataclass(frozen=True)
class JudgeReply:
    text: str
    usage: Mapping[str, int] = field(default_factory=dict)


#: ``judge(model, messages, sampling_params) -> reply``; raises :class:`JudgeError` when the model cannot answer
Judge = Callable[[str, list[dict[str, str]], dict[str, Any]], JudgeReply]


@dataclass(frozen=True)
class RewardReply:
    score: float
    usage: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class RewardScorer(Protocol):
    """A judge that can also score with a served reward model (``reward_model`` graders)."""

    def reward(self, model: str, messages: list[dict[str, str]], answer: str) -> RewardReply:
        """The reward model's score of ``answer`` after ``messages``; raises :class:`JudgeError` when it cannot."""


def instruction(grader: ScoreModelGrader | LabelModelGrader) -> str:
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        return (f"You are a grader. Reply with only a number from {low:g} to {high:g}, or with the JSON object "
                '{"result": <number>}, and nothing else.')
    labels = ", ".join(json.dumps(label) for label in grader.labels)
    return f"You are a grader. Reply with exactly one of these labels and nothing else: {labels}."


def messages(grader: ScoreModelGrader | LabelModelGrader, item: Mapping[str, Any],
             sample: Mapping[str, Any]) -> list[dict[str, str]]:
    """The judge's chat: the instruction, then the grader's messages rendered (``developer`` becomes ``system``)."""
    chat = [{"role": "system", "content": instruction(grader)}]
    for message in grader.input:
        role = "system" if message.role == "developer" else message.role
        chat.append({"role": role, "content": render(message.text, item, sample)})
    return chat


def sampling(grader: ScoreModelGrader | LabelModelGrader) -> dict[str, Any]:
    """Chat-completion parameters: greedy and short unless the grader says otherwise."""
    params = grader.sampling_params
    out: dict[str, Any] = {"temperature": 0.0, "max_tokens": 32}
    if params is not None:
        if params.temperature is not None:
            out["temperature"] = params.temperature
        if params.top_p is not None:
            out["top_p"] = params.top_p
        if params.seed is not None:
            out["seed"] = params.seed
        tokens = params.max_completion_tokens or params.max_completions_tokens
        if tokens is not None:
            out["max_tokens"] = tokens
    return out


def _shown(text: str) -> str:
    return json.dumps(text if len(text) <= _SHOWN else text[:_SHOWN] + "…", ensure_ascii=False)


def _json_result(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        for key in ("result", "score", "label"):
            if key in value:
                return value[key]
    return None


def read_score(grader: ScoreModelGrader, reply: str) -> float:
    text = reply.strip()
    value = _json_result(text)
    if value is None:
        bare = text.rstrip(".").strip()
        value = float(bare) if _NUMBER.fullmatch(bare) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JudgeError(f"the judge's reply is not a score: {_shown(reply)}")
    low, high = grader.range
    if not low <= value <= high:
        raise JudgeError(f"the judge's score {value:g} is outside the range [{low:g}, {high:g}]")
    return float(value)


def read_label(grader: LabelModelGrader, reply: str) -> str:
    text = reply.strip()
    value = _json_result(text)
    candidate = (value if isinstance(value, str) else text).strip().strip("\"'`.").strip()
    if candidate in grader.labels:
        return candidate
    folded = {label.casefold(): label for label in grader.labels}
    if candidate.casefold() in folded:
        return folded[candidate.casefold()]
    raise JudgeError(f"the judge's reply is not one of the labels {grader.labels}: {_shown(reply)}")
