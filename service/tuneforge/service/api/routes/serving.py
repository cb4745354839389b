"""OpenAI's ``POST /v1/chat/completions`` and ``POST /v1/completions`` on base and tuned models.

The service resolves the model (tenant-scoped: another tenant's ``ft:`` model is a 404), checks the body against
the shared request models (:mod:`tuneforge.contracts.completions`), and proxies to the engine that serves it,
streaming included. No database connection is held while the engine answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.completions import ChatCompletionRequest, CompletionRequest
from tuneforge.contracts.validation import describe
from tuneforge.service.api.deps import StateDep
from tuneforge.service.api.openapi import ERROR_MODEL
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.api.state import AppState
from tuneforge.service.core.errors import InvalidRequest, TooLarge
from tuneforge.service.domain.serving import CHAT, TEXT, EngineReply, Target, completion_body, resolve_target

router = Router(tags=["serving"])

_REQUESTS: dict[str, TypeAdapter[Any]] = {CHAT: TypeAdapter(ChatCompletionRequest),
                                          TEXT: TypeAdapter(CompletionRequest)}
_ERRORS: dict[int | str, dict[str, Any]] = {status: {"description": text, **ERROR_MODEL} for status, text in (
    (400, "invalid request"), (401, "missing or wrong API key"), (404, "no such model for this organization"),
    (413, "request body too large"),
    (503, "the engine could not be started or stopped while answering, or serving is not enabled in this deployment "
          "(code serving_not_enabled)"))}


def _request_schema(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}}


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The request body is {declared} bytes; at most {limit} are accepted.",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The request body is over {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _validated(path: str, body: dict[str, Any]) -> None:
    try:
        _REQUESTS[path].validate_python(body)
    except ValidationError as exc:
        details = describe(exc.errors(), body)
        raise InvalidRequest(details[0]["message"], param=details[0]["param"] or None,
                             details=list(details)) from None


def _usage_tokens(body: dict[str, Any]) -> int:
    usage = body.get("usage") if isinstance(body, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0


class _Meter:
    """One request's metrics: status, time to first token, tokens and seconds generating."""

    def __init__(self, state: AppState, target: Target, path: str) -> None:
        self.metrics = state.metrics.serving
        self.base, self.route = target.base, "chat" if path == CHAT else "text"
        self.started = time.monotonic()
        self.first: float | None = None
        self.metrics.in_flight.labels(self.base).inc()

    def first_token(self) -> None:
        if self.first is None:
            self.first = time.monotonic()
            self.metrics.ttft.labels(self.base, self.route).observe(self.first - self.started)

    def done(self, status: int, tokens: int) -> None:
        self.metrics.in_flight.labels(self.base).dec()
        self.metrics.requests.labels(self.base, self.route, str(status)).inc()
        if tokens:
            self.metrics.output_tokens.labels(self.base).inc(tokens)
            self.metrics.generation_seconds.labels(self.base).inc(time.monotonic() - (self.first or self.started))


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    """The final usage-only chunk (``choices: []``) of a stream, parsed; None for any other event."""
    text = event.decode("utf-8", "replace").strip()
    if not text.startswith("data: {") or '"usage"' not in text:
        return None
    try:
        chunk = json.loads(text[len("data: "):])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage") else None


async def _relay(events: AsyncIterator[bytes], meter: _Meter, client_wants_usage: bool) -> AsyncIterator[bytes]:
    tokens, status = 0, 200
    try:
        async for event in events:
            usage = _usage_chunk(event)
            if usage is not None:
                tokens = _usage_tokens(usage)
                if not client_wants_usage:
                    continue  # asked of the engine for the metrics only
            elif b'"error"' in event:
                status = 500
            else:
                meter.first_token()
            yield event
    finally:
        meter.done(status, tokens)


async def _complete(path: str, request: Request, repo: ShortRepoDep, state: StateDep) -> Response:
    raw = await _read(request, state.settings.serving.max_request_bytes)
    body = completion_body(raw, state.settings.serving.max_request_bytes)
    target = resolve_target(repo, state.store, body.get("model"))
    _validated(path, body)
    meter = _Meter(state, target, path)
    if not body.get("stream"):
        try:
            reply: EngineReply = await state.serving.request(target, path, body)
        except BaseException:
            meter.done(500, 0)
            raise
        meter.first_token()
        meter.done(reply.status, _usage_tokens(reply.body) if reply.status == 200 else 0)
        return JSONResponse(reply.body, status_code=reply.status)
    options = body.get("stream_options") or {}
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    engine_body = {**body, "stream_options": {**(options if isinstance(options, dict) else {}),
                                              "include_usage": True}}
    try:
        answer = await state.serving.stream(target, path, engine_body)
    except BaseException:
        meter.done(500, 0)
        raise
    if isinstance(answer, EngineReply):
        meter.done(answer.status, 0)
        return JSONResponse(answer.body, status_code=answer.status)
    return StreamingResponse(_relay(answer, meter, wants_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions", summary="Create a chat completion (OpenAI's shape; base or tuned models)",
             openapi_extra=_request_schema(ChatCompletionRequest), responses=_ERRORS,
             description="`model` is a base model, an `ft:` model of this organization, or a checkpoint's "
             "`fine_tuned_model_checkpoint`. `stream: true` answers with OpenAI's chunks as server-sent events.")
async def chat_completions(request: Request, repo: ShortRepoDep, state: StateDep) -> Response:
    return await _complete(CHAT, request, repo, state)


@router.post("/v1/completions", summary="Create a text completion (OpenAI's shape; base or tuned models)",
             openapi_extra=_request_schema(CompletionRequest), responses=_ERRORS)
async def completions(request: Request, repo: ShortRepoDep, state: StateDep) -> Response:
    return await _complete(TEXT, request, repo, state)


@router.get("/v1/serving/engines", summary="The engines running now (an extension)",
            description="Base models with a running engine, its kind, its requests in flight, and the adapters of "
            "this organization loaded in it.")
def engines(repo: ShortRepoDep, state: StateDep) -> dict[str, Any]:
    tenant = repo.tenant_id
    data = []
    for engine in state.serving.engines():
        own = [a for a in engine.get("adapters", []) if _owner(a) == tenant]
        data.append({**{k: v for k, v in engine.items() if k not in ("adapters", "pid")}, "adapters": own})
    return {"object": "list", "data": data}


def _owner(model_id: str) -> str | None:
    parts = model_id.split(":")
    return parts[2] if len(parts) > 2 and parts[0] == "ft" else None
