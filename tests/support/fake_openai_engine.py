"""A small OpenAI-compatible engine with vLLM's runtime adapter routes, for tests where a real engine cannot run
(kwok pods run no containers): ``python -m tests.support.fake_openai_engine --port P --served-name BASE``.

It behaves like vLLM where the service depends on it: ``/health``; ``/v1/load_lora_adapter`` loads only a
directory holding ``adapter_config.json`` (400 otherwise, and 400 "already been loaded" for a repeat);
``/v1/unload_lora_adapter`` (404 for an unknown name); a completion for a model that is neither the served base
nor a loaded adapter is a 404 "The model `X` does not exist."; answers say which model answered, with ``usage``;
``stream: true`` sends OpenAI's chunks and ``[DONE]``. ``GET /_calls`` lists the adapter calls it received and
``GET /_state`` the loaded adapters, for the test to check.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def _error(status: int, message: str, type_: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": status}}, status)


def build_app(served_name: str) -> Starlette:
    adapters: dict[str, str] = {}
    calls: list[dict[str, Any]] = []

    async def health(_: Request) -> Response:
        return PlainTextResponse("")

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"}
                                                        for m in [served_name, *adapters]]})

    async def load(request: Request) -> Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        calls.append({"call": "load", "name": name, "path": path})
        if name in adapters:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if not path or not (Path(path) / "adapter_config.json").is_file():
            return _error(400, f"Loading lora {name} failed: no adapter found for {path}")
        adapters[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: Request) -> Response:
        body = await request.json()
        name = body.get("lora_name")
        calls.append({"call": "unload", "name": name})
        if name not in adapters:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del adapters[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def completion(request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        if model != served_name and model not in adapters:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        text = f"answer from {model}"
        created = int(time.time())
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            return JSONResponse({"id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                                 "model": model, "usage": usage, "choices": [{
                                     "index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}]})

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(text.split(" ")):
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [{"index": 0, "finish_reason": None,
                                                      "delta": {"content": word if i == 0 else " " + word}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            last = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}]}
            yield f"data: {json.dumps(last)}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**last, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def state(_: Request) -> JSONResponse:
        return JSONResponse({"adapters": adapters})

    async def recorded(_: Request) -> JSONResponse:
        return JSONResponse(calls)

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models", models),
        Route("/v1/load_lora_adapter", load, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
        Route("/v1/chat/completions", completion, methods=["POST"]),
        Route("/v1/completions", completion, methods=["POST"]),
        Route("/_state", state), Route("/_calls", recorded),
    ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.served_name), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
