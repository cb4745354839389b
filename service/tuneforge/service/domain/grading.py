"""Graders in the service: a request's grader checked (400 naming the field), judge models resolved for the
tenant (404 like any model), and grading with judges that ask the serving backend.

Grading itself is :mod:`tuneforge.graders`, the implementation reinforcement training uses too. It is
synchronous (metrics libraries, regexes), so the service grades in a worker thread; a judge there hands its
chat request to the event loop that owns the serving backend and waits for the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.grader_templates import TemplateError
from tuneforge.contracts.graders import AnyEvalGrader, EvalGrader, judges_in, reward_models_in
from tuneforge.contracts.validation import describe
from tuneforge.graders import GraderError, JudgeError, JudgeReply, JudgeUnavailable, compile_grader
from tuneforge.graders.grading import Grade, Graded
from tuneforge.graders.judges import RewardReply
from tuneforge.service.core.errors import InvalidRequest, ServiceError
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.serving import (
    CHAT,
    SCORE,
    ServingBackend,
    Target,
    resolve_reward_model,
    resolve_target,
)
from tuneforge.storage import ObjectStore

EVAL_GRADER: TypeAdapter[AnyEvalGrader] = TypeAdapter(EvalGrader)
#: longest wait for one judge answer (an engine start included)
JUDGE_TIMEOUT_S = 900.0


def invalid(exc: ValidationError, body: Any, prefix: str = "") -> InvalidRequest:
    """pydantic's errors on ``body`` as one 400 naming the first field (all of them in ``details``)."""
    details = describe(exc.errors(), body)
    if prefix:
        for detail in details:
            param = f"{prefix}.{detail['param']}" if detail["param"] else prefix
            detail["message"] = detail["message"].replace(f"'{detail['param']}'", f"'{param}'", 1)
            detail["param"] = param
    return InvalidRequest(details[0]["message"], param=details[0]["param"] or None, details=list(details))


def _never_called(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> JudgeReply:
    raise JudgeUnavailable("no judge at validation")  # pragma: no cover - validation builds, never grades


class _NeverCalled:
    """Stands in for the serving backend when a grader is only built (validation), never graded."""

    def __call__(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> JudgeReply:
        return _never_called(model, messages, params)

    def reward(self, model: str, messages: list[dict[str, str]], answer: str) -> RewardReply:
        raise JudgeUnavailable("no reward model at validation")  # pragma: no cover - never graded


def parse_grader(raw: Any, param: str) -> AnyEvalGrader:
    """The grader as the contract validates it, and as :mod:`tuneforge.graders` can build it here."""
    try:
        grader = EVAL_GRADER.validate_python(raw)
    except ValidationError as exc:
        raise invalid(exc, raw, param) from None
    for scored in reward_models_in(grader):
        if scored.model_prefix is not None:
            raise InvalidRequest("'model_prefix' is set by the service; name the reward model with 'model'",
                                 param=f"{param}.model_prefix")
    try:
        compile_grader(grader, _NeverCalled())
    except GraderError as exc:
        raise InvalidRequest(f"Invalid value for '{param}': {exc}", param=param) from None
    return grader


def judge_targets(repo: TenantRepo, store: ObjectStore, graders: Mapping[str, Any]) -> dict[str, Target]:
    """The serving target of every judge model the graders name (by param); unknown or foreign: 404."""
    targets: dict[str, Target] = {}
    for param, grader in graders.items():
        for scored in reward_models_in(grader):
            if scored.model not in targets:
                targets[scored.model] = resolve_reward_model(
                    repo, scored.model, f"{param}.model" if scored is grader else f"{param}.graders")
        for judge in judges_in(grader):
            if judge.model in targets:
                continue
            try:
                targets[judge.model] = resolve_target(repo, store, judge.model)
            except ServiceError as exc:
                exc.param = f"{param}.model" if judge is grader else f"{param}.graders"
                raise
    return targets


class ServingJudge:
    """A :data:`tuneforge.graders.Judge` over the serving backend, called from a worker thread."""

    def __init__(self, serving: ServingBackend, targets: Mapping[str, Target], loop: asyncio.AbstractEventLoop,
                 limit: asyncio.Semaphore | None = None) -> None:
        self.serving, self.targets, self.loop, self.limit = serving, targets, loop, limit

    async def _send(self, target: Target, path: str, body: dict[str, Any]) -> Any:
        if self.limit is None:
            return await self.serving.request(target, path, body)
        async with self.limit:
            return await self.serving.request(target, path, body)

    def _answer(self, target: Target, path: str, body: dict[str, Any], who: str) -> dict[str, Any]:
        """The engine's 200 body, from a worker thread; anything else is :class:`JudgeUnavailable` naming ``who``."""
        future = asyncio.run_coroutine_threadsafe(self._send(target, path, body), self.loop)
        try:
            reply = future.result(JUDGE_TIMEOUT_S)
        except ServiceError as exc:
            raise JudgeUnavailable(f"{who} could not answer: {exc.message}") from None
        except Exception as exc:
            future.cancel()
            raise JudgeUnavailable(f"{who} could not answer: {exc or type(exc).__name__}") from None
        if reply.status != 200:
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(reply.body)[:200]
            raise JudgeUnavailable(f"{who} answered {reply.status}: {message}")
        body_out: dict[str, Any] = reply.body
        return body_out

    def __call__(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> JudgeReply:
        target = self.targets[model]
        who = f"the judge model '{model}'"
        answer = self._answer(target, CHAT, {**params, "model": target.public_id, "messages": messages}, who)
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"{who} sent no message") from None
        usage = answer.get("usage") or {}
        return JudgeReply(str(text), {k: int(v) for k, v in usage.items() if isinstance(v, int)})

    def reward(self, model: str, messages: list[dict[str, str]], answer: str) -> RewardReply:
        """The served reward model's score of ``answer`` after ``messages``."""
        target = self.targets[model]
        who = f"the reward model '{model}'"
        scored = self._answer(target, SCORE, {"model": target.public_id, "input": [
            {"messages": messages, "output_text": answer}]}, who)
        try:
            score = float(scored["data"][0]["score"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise JudgeUnavailable(f"{who} sent no score") from None
        tokens = int((scored.get("usage") or {}).get("prompt_tokens", 0))
        return RewardReply(score, {"prompt_tokens": tokens, "total_tokens": tokens})


def _errors(**flags: Any) -> dict[str, Any]:
    errors: dict[str, Any] = {key: False for key in (
        "formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
        "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_runtime_error",
        "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error")}
    errors.update({"python_grader_server_error_type": None, "python_grader_runtime_error_details": None,
                   "model_grader_server_error_details": None})
    errors.update(flags)
    return errors


def usage_by_model(grade: Grade | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for call in grade.judge_calls if grade is not None else ():
        seen = out.setdefault(call.model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                           "cached_tokens": 0, "invocation_count": 0})
        seen["invocation_count"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            seen[key] += int(call.usage.get(key, 0))
    return out


def run_grader(graded: Graded, grader: AnyEvalGrader, model_sample: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """``POST /v1/fine_tuning/alpha/graders/run``'s answer (OpenAI's shape) for one sample; runs in a thread."""
    started = time.monotonic()
    grade: Grade | None = None
    flags: dict[str, Any] = {}
    try:
        grade = graded(item, {"output_text": model_sample})
    except TemplateError as exc:
        flags = {"invalid_variable_error": True, "other_error": True, "details": str(exc)}
    except JudgeUnavailable as exc:
        flags = {"model_grader_server_error": True, "model_grader_server_error_details": str(exc)}
    except JudgeError as exc:
        flags = {"model_grader_parse_error": True, "model_grader_server_error_details": str(exc)}
    usage = usage_by_model(grade)
    sub = dict(grade.sub_scores) if grade is not None else {}
    judges = [call.model for call in grade.judge_calls] if grade is not None else []
    return {
        "reward": grade.score if grade is not None else 0.0,
        "metadata": {
            "name": grader.name or grader.type, "type": grader.type, "errors": _errors(**flags),
            "execution_time": round(time.monotonic() - started, 6), "scores": sub,
            "token_usage": sum(u["total_tokens"] for u in usage.values()) if usage else None,
            "sampled_model_name": judges[0] if judges else None,
        },
        "sub_rewards": sub,
        "model_grader_token_usage_per_model": {m: {k: v for k, v in u.items() if k != "invocation_count"}
                                               for m, u in usage.items()},
    }
