"""OpenAI request bodies for chat and text completions, validated into one :class:`GenerationSpec`.

Parameters that change what is generated and that this engine cannot honour (tools, JSON-schema
``response_format``, ``suffix``, ``best_of``) are refused with a 400 that says so, instead of being ignored.
Fields that only label a request (``user``, ``metadata``, ``store``, ...) are accepted and ignored. Any other
field is an error, as with OpenAI ("Unrecognized request argument supplied").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from tuneforge.contracts.completions import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
)
from tuneforge.engine.errors import BadRequest


@dataclass(frozen=True)
class SamplingParams:
    """What one choice is generated with; ``temperature == 0`` means greedy."""

    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain(self) -> bool:
        """No per-row logit processing besides temperature."""
        return (self.top_p >= 1.0 and self.top_k <= 0 and not self.presence_penalty and not self.frequency_penalty
                and not self.logit_bias)


@dataclass
class GenerationSpec:
    """A validated request: one or more prompts (chat: exactly one), ``n`` choices each."""

    kind: Literal["chat", "completion"]
    model: str
    n: int
    params: SamplingParams
    stream: bool
    include_usage: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[str | list[int]] = field(default_factory=list)
    echo: bool = False


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _from_validation(exc: ValidationError) -> BadRequest:
    problems = []
    first_param = None
    for err in exc.errors():
        # pydantic reports every member of a union; the tagged literal/type mismatches are noise
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "list"})))
        param = _loc(loc) or None
        if err["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param}"
        else:
            msg = f"{param}: {err['msg']}" if param else str(err["msg"])
        if msg not in problems:
            problems.append(msg)
        first_param = first_param or param
    return BadRequest("; ".join(problems[:5]), param=first_param, code="invalid_request")


def _parse(model: type[SamplingRequest], body: Any) -> Any:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_request")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _from_validation(exc) from None


def _check_n(n: int, max_n: int) -> None:
    if not 1 <= n <= max_n:
        raise BadRequest(f"n must be between 1 and {max_n} (got {n})", param="n", code="invalid_value")


def _logit_bias(raw: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    if not raw:
        return ()
    out = []
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise BadRequest(f"logit_bias: key {key!r} is not a token id", param="logit_bias") from None
        if not 0 <= token < vocab_size:
            raise BadRequest(f"logit_bias: token id {token} is outside the vocabulary (0-{vocab_size - 1})",
                             param="logit_bias")
        if not -100 <= value <= 100:
            raise BadRequest(f"logit_bias: bias {value} for token {token} is outside [-100, 100]", param="logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def _params(req: SamplingRequest, max_tokens: int | None, logprobs: bool, top_logprobs: int,
            vocab_size: int) -> SamplingParams:
    temperature = 1.0 if req.temperature is None else req.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        stop=tuple(req.stop_list()),
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=_logit_bias(req.logit_bias, vocab_size),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=req.ignore_eos,
    )


def parse_chat(body: Any, *, max_n: int, vocab_size: int) -> GenerationSpec:
    req: ChatCompletionRequest = _parse(ChatCompletionRequest, body)
    _check_n(req.n, max_n)
    if req.tools or req.functions or req.tool_choice not in (None, "none"):
        raise BadRequest("tools and function calling are not supported by this engine", param="tools",
                         code="unsupported_parameter")
    if req.response_format is not None and req.response_format.type != "text":
        raise BadRequest(f"response_format {req.response_format.type!r} is not supported by this engine: it cannot "
                         "constrain generation to JSON; ask without response_format and validate the answer",
                         param="response_format", code="unsupported_parameter")
    if req.top_logprobs and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise BadRequest("max_tokens and max_completion_tokens disagree; send one of them", param="max_tokens")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    messages = []
    for i, msg in enumerate(req.messages):
        if msg.role != "assistant" and msg.content is None:
            raise BadRequest(f"messages[{i}].content: a {msg.role} message needs content",
                             param=f"messages[{i}].content")
        entry: dict[str, Any] = {k: v for k, v in (msg.model_extra or {}).items()}
        # the bundled templates know system/user/assistant; OpenAI's newer 'developer' role is a system prompt
        entry.update(role="system" if msg.role == "developer" else msg.role, content=msg.text())
        if msg.name:
            entry["name"] = msg.name
        messages.append(entry)
    return GenerationSpec(
        kind="chat", model=req.model, n=req.n,
        params=_params(req, max_tokens, req.logprobs, req.top_logprobs or 0, vocab_size),
        stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage),
        messages=messages,
    )


def parse_completion(body: Any, *, max_n: int, vocab_size: int) -> GenerationSpec:
    req: CompletionRequest = _parse(CompletionRequest, body)
    _check_n(req.n, max_n)
    if req.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported by this engine", param="suffix",
                         code="unsupported_parameter")
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequest("best_of other than n is not supported by this engine", param="best_of",
                         code="unsupported_parameter")
    prompts: list[str | list[int]]
    if isinstance(req.prompt, str):
        prompts = [req.prompt]
    elif req.prompt and isinstance(req.prompt[0], int):
        prompts = [list(req.prompt)]
    else:
        prompts = list(req.prompt)  # type: ignore[arg-type]
    if not prompts:
        raise BadRequest("prompt: must not be empty", param="prompt")
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            bad = [t for t in p if not 0 <= t < vocab_size]
            if bad:
                raise BadRequest(f"prompt[{i}]: token id {bad[0]} is outside the vocabulary (0-{vocab_size - 1})",
                                 param="prompt")
            if not p:
                raise BadRequest(f"prompt[{i}]: an empty token list", param="prompt")
    if len(prompts) * req.n > max_n:
        raise BadRequest(f"{len(prompts)} prompts x n={req.n} is more than {max_n} sequences in one request",
                         param="prompt")
    logprobs = req.logprobs is not None
    return GenerationSpec(
        kind="completion", model=req.model, n=req.n,
        params=_params(req, req.max_tokens if req.max_tokens is not None else 16, logprobs, req.logprobs or 0,
                       vocab_size),
        stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage),
        prompts=prompts, echo=req.echo,
    )
