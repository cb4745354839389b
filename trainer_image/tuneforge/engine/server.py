"""HTTP routes of the engine (Starlette) and OpenAI's response and chunk shapes.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``,
``POST /v1/load_lora_adapter`` / ``POST /v1/unload_lora_adapter`` (vLLM's bodies ``{lora_name, lora_path}`` and
answers), ``GET /stats`` (batch, queue and adapter figures for the service's metrics).

Streams are Server-Sent Events in OpenAI's chunk format, ``data: [DONE]`` last. A request that fails after its
stream began ends with an ``data: {"error": {...}}`` event (the ``openai`` client raises it as an APIError).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tuneforge.engine.batcher import Delta, Finish
from tuneforge.engine.engine import Engine, Prepared
from tuneforge.engine.errors import BadRequest, EngineError, error_body
from tuneforge.engine.protocol import GenerationSpec, parse_chat, parse_completion
from tuneforge.engine.sampling import TokenLogprob

log = logging.getLogger("tuneforge.engine")
FINGERPRINT = "tuneforge-engine"


class EventStream(StreamingResponse):
    """A stream that stops generating as soon as the client goes away.

    With ASGI 2.4 servers Starlette only notices a disconnect when a write fails, and uvicorn drops writes to a
    closed connection silently, so the rows of a vanished client would run to their token budget. Listening for
    ``http.disconnect`` beside the stream (Starlette's pre-2.4 way) cancels it, which cancels the rows.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as group:

            async def run_then_cancel(func: Any) -> None:
                await func()
                group.cancel_scope.cancel()

            group.start_soon(run_then_cancel, functools.partial(self.stream_response, send))
            await run_then_cancel(functools.partial(self.listen_for_disconnect, receive))


def _error(exc: EngineError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


class Shapes:
    """Builds OpenAI's objects for one request (chat or text completion)."""

    def __init__(self, engine: Engine, prepared: Prepared) -> None:
        self.engine = engine
        self.prepared = prepared
        self.spec: GenerationSpec = prepared.spec
        self.chat = self.spec.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.completion_tokens = 0
        self.token_text = engine.token_text

    def _token(self, token: int) -> str:
        return self.token_text(token)[0]

    def _chat_logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        def one(token: int, logprob: float) -> dict[str, Any]:
            text, raw = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": raw}

        return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                            for e in entries]}

    def _text_logprobs(self, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        tokens, offsets = [], []
        for e in entries:
            offsets.append(offset)
            text = self._token(e.token)
            tokens.append(text)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._token(t): lp for t, lp in e.top} for e in entries] if
                self.spec.params.top_logprobs else None,
                "text_offset": offsets}

    def logprobs(self, entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any] | None:
        if not self.spec.params.logprobs:
            return None
        return self._chat_logprobs(entries) if self.chat else self._text_logprobs(entries, offset)

    def usage(self) -> dict[str, int]:
        prompt = self.prepared.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    def echo(self, choice: int) -> str:
        texts = self.prepared.echo_texts
        return texts[choice // self.spec.n] if texts else ""

    def answer(self, finished: list[Finish]) -> dict[str, Any]:
        choices = []
        for f in sorted(finished, key=lambda f: f.choice):
            self.completion_tokens += f.completion_tokens
            if self.chat:
                choices.append({"index": f.choice, "message": {"role": "assistant", "content": f.text},
                                "logprobs": self.logprobs(f.logprobs), "finish_reason": f.reason})
            else:
                choices.append({"index": f.choice, "text": self.echo(f.choice) + f.text,
                                "logprobs": self.logprobs(f.logprobs), "finish_reason": f.reason})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.spec.model, "system_fingerprint": FINGERPRINT,
                "choices": choices, "usage": self.usage()}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                                "created": self.created, "model": self.spec.model,
                                "system_fingerprint": FINGERPRINT, "choices": choices}
        if self.spec.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta_choice(self, choice: int, text: str | None, logprobs: list[TokenLogprob], finish: str | None,
                     offset: int = 0, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": choice, "delta": delta, "logprobs": self.logprobs(logprobs) if logprobs else None,
                    "finish_reason": finish}
        return {"index": choice, "text": text or "",
                "logprobs": self.logprobs(logprobs, offset) if logprobs else None, "finish_reason": finish}


async def _stream(shapes: Shapes, events: AsyncIterator[Any]) -> AsyncIterator[str]:
    spec = shapes.spec
    total = len(shapes.prepared.prompts) * spec.n
    offsets = [0] * total
    if shapes.chat:
        yield shapes.chunk([shapes.delta_choice(i, "", [], None, role=True) for i in range(total)])
    elif shapes.prepared.echo_texts:
        for i in range(total):
            offsets[i] = len(shapes.echo(i))
        yield shapes.chunk([shapes.delta_choice(i, shapes.echo(i), [], None) for i in range(total)])
    try:
        async for event in events:
            if isinstance(event, Delta):
                yield shapes.chunk([shapes.delta_choice(event.choice, event.text, event.logprobs, None,
                                                        offsets[event.choice])])
                offsets[event.choice] += len(event.text)
            elif isinstance(event, Finish):
                shapes.completion_tokens += event.completion_tokens
                text = None if shapes.chat else ""
                yield shapes.chunk([shapes.delta_choice(event.choice, text, event.logprobs, event.reason,
                                                        offsets[event.choice])])
    except EngineError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    if spec.include_usage:
        yield shapes.chunk([], shapes.usage())
    yield "data: [DONE]\n\n"


async def _collect(events: AsyncIterator[Any], request: Request) -> list[Finish] | None:
    """The finished choices, or None when the client disconnects first (the generation is then cancelled)."""
    finished: list[Finish] = []
    gone = False
    failure: EngineError | None = None
    async with anyio.create_task_group() as group:

        async def gather() -> None:
            nonlocal failure
            try:
                async for event in events:
                    if isinstance(event, Finish):
                        finished.append(event)
            except EngineError as exc:  # raised below, outside the task group (which would wrap it)
                failure = exc
            finally:
                group.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            group.cancel_scope.cancel()

        group.start_soon(gather)
        group.start_soon(watch)
    if failure is not None:
        raise failure
    if gone:
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]
        return None
    return finished


def create_app(engine: Engine) -> Starlette:
    async def completions(request: Request, kind: str) -> Response:
        try:
            body = await _json_body(request)
            parse = parse_chat if kind == "chat" else parse_completion
            spec = parse(body, max_n=engine.config.max_n, vocab_size=engine.vocab_size)
            prepared = engine.prepare(spec)
            shapes = Shapes(engine, prepared)
            events = engine.run(prepared)  # submitted here: an overloaded engine answers 503 before any stream
            if spec.stream:
                return EventStream(_stream(shapes, events), media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            finished = await _collect(events, request)
            if finished is None:  # the client left: its rows were cancelled, nobody reads an answer
                return Response(status_code=499)
            return JSONResponse(shapes.answer(finished))
        except EngineError as exc:
            return _error(exc)

    async def chat(request: Request) -> Response:
        return await completions(request, "chat")

    async def text(request: Request) -> Response:
        return await completions(request, "completion")

    async def models(request: Request) -> Response:
        base = engine.config.served_name
        data = [{"id": base, "object": "model", "created": engine.created, "owned_by": "tuneforge",
                 "root": str(engine.config.model_dir), "parent": None, "max_model_len": engine.max_model_len}]
        for name in engine.adapters.names():
            info = engine.adapters.info(name)
            data.append({"id": name, "object": "model", "created": engine.created, "owned_by": "tuneforge",
                         "root": str(info.path) if info else None, "parent": base,
                         "max_model_len": engine.max_model_len})
        return JSONResponse({"object": "list", "data": data})

    async def load_adapter(request: Request) -> Response:
        try:
            body = await _json_body(request)
            name, path = _adapter_fields(body, need_path=True)
            added = await engine.load_adapter(name, path)
        except EngineError as exc:
            return _error(exc)
        if not added:
            return PlainTextResponse(f"Success: LoRA adapter '{name}' was already loaded.")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_adapter(request: Request) -> Response:
        try:
            body = await _json_body(request)
            name, _ = _adapter_fields(body, need_path=False)
            await engine.unload_adapter(name)
        except EngineError as exc:
            return _error(exc)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse(engine.describe())

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}", "not_found_error"),
                            status_code=404)

    async def bad_method(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"method {request.method} is not allowed on {request.url.path}",
                                       "invalid_request_error"), status_code=405)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", text, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/load_lora_adapter", load_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_adapter, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.stop()

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method, 500: crashed},
                     lifespan=lifespan)


def _adapter_fields(body: Any, need_path: bool) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    name = body.get("lora_name")
    path = body.get("lora_path")
    if not isinstance(name, str) or not name:
        raise BadRequest("lora_name: a non-empty string is required", param="lora_name")
    if need_path and (not isinstance(path, str) or not path):
        raise BadRequest("lora_path: a non-empty string is required", param="lora_path")
    return name, path or ""
