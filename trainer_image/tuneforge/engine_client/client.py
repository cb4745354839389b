"""HTTP calls to one running engine: adapters, answers, and streams passed through chunk by chunk.

Errors come back in OpenAI's envelope whatever the engine wrote: vLLM answers ``{"error": {...}}`` or, in older
builds, ``{"object": "error", "message", ...}``; a dead engine becomes a 503 ``engine_unavailable``. A stream
cut by the engine (it crashed or was killed) ends with an ``error`` event and ``[DONE]``, which the ``openai``
client raises as an ``APIError`` instead of hanging or returning half an answer silently.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


def error_body(message: str, type_: str = "server_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def normalize_error(status: int, raw: bytes) -> dict[str, Any]:
    """OpenAI's envelope for an engine's error answer."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return {"error": {"message": str(err["message"]), "type": err.get("type") or "invalid_request_error",
                              "param": err.get("param"), "code": err.get("code")}}
        if "message" in body:  # vLLM's older shape
            return {"error": {"message": str(body["message"]), "type": body.get("type") or "invalid_request_error",
                              "param": body.get("param"), "code": body.get("code")}}
        if "detail" in body:  # FastAPI's validation answer
            return error_body(json.dumps(body["detail"]), "invalid_request_error")
    text = raw.decode(errors="replace").strip() or f"HTTP {status}"
    return error_body(text, "invalid_request_error" if status < 500 else "server_error")


class EngineHTTPError(Exception):
    """The engine answered with an error status; ``body`` is OpenAI's envelope."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


class EngineUnavailable(Exception):
    """The engine process is gone or does not answer."""


class EngineUnreachable(EngineUnavailable):
    """No connection could be made: nothing was sent, so the request may be tried again (on a fresh engine)."""


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


class EngineStream:
    """An open streaming answer with status 200; iterate for SSE events (bytes, each ending in a blank line)."""

    def __init__(self, response: httpx.Response, on_cut: Any = None) -> None:
        self.response = response
        self.on_cut = on_cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        done = False
        try:
            event: list[str] = []
            async for line in self.response.aiter_lines():
                if line:
                    event.append(line)
                    continue
                if event:
                    text = "\n".join(event)
                    event = []
                    done = done or text.strip() == "data: [DONE]"
                    yield (text + "\n\n").encode()
            if not done:
                raise httpx.RemoteProtocolError("the stream ended without [DONE]")
        except httpx.HTTPError as exc:
            if self.on_cut is not None:
                self.on_cut(exc)
            yield _sse(error_body("the engine stopped while answering; the next request starts it again "
                                  f"({type(exc).__name__})", "server_error", "engine_crashed"))
            yield b"data: [DONE]\n\n"
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()


def _sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


class EngineClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None) -> httpx.Response:
        try:
            return await self.http.post(f"{self.base_url}{path}", json=body, timeout=timeout)
        except httpx.ConnectError as exc:
            raise EngineUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def load_adapter(self, name: str, path: str, timeout: float = 120) -> bool:
        """Load (idempotent); True if this call loaded it, False if the engine had it already."""
        r = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout)
        if r.status_code == 200:
            return "already" not in r.text
        if r.status_code == 400 and "already been loaded" in r.text:  # vLLM
            return False
        raise EngineHTTPError(r.status_code, normalize_error(r.status_code, r.content))

    async def unload_adapter(self, name: str, timeout: float = 60) -> None:
        r = await self._post("/v1/unload_lora_adapter", {"lora_name": name}, timeout)
        if r.status_code != 200:
            raise EngineHTTPError(r.status_code, normalize_error(r.status_code, r.content))

    async def models(self) -> list[str]:
        try:
            r = await self.http.get(f"{self.base_url}/v1/models", timeout=10)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(str(exc)) from exc
        return [m["id"] for m in r.json().get("data", [])]

    async def request(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Reply:
        """A non-streaming call (``/v1/chat/completions`` or ``/v1/completions``)."""
        try:
            r = await self._post(path, body, timeout)
        except httpx.TimeoutException as exc:
            return Reply(504, error_body(f"the engine did not answer in time ({exc})", code="engine_timeout"))
        if r.status_code == 200:
            return Reply(200, r.json())
        return Reply(r.status_code, normalize_error(r.status_code, r.content))

    async def stream(self, path: str, body: dict[str, Any], on_cut: Any = None) -> EngineStream:
        """Open a streaming call; an error status raises :class:`EngineHTTPError` before any chunk is sent."""
        request = self.http.build_request("POST", f"{self.base_url}{path}", json={**body, "stream": True},
                                          timeout=httpx.Timeout(None, connect=10))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.ConnectError as exc:
            raise EngineUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raw = await response.aread()
            await response.aclose()
            raise EngineHTTPError(response.status_code, normalize_error(response.status_code, raw))
        return EngineStream(response, on_cut)
