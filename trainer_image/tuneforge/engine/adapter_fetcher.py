"""The engine pod's helpers in cluster mode (the trainer image holds the storage and model code; vLLM's does not).

``python -m tuneforge.engine.adapter_fetcher weights --store URL (--catalogue ID | --prefix P) --dest /models/base``
    the init container: the base weights (a published store prefix, or a catalogue model converted by the
    trainer's model code) into the shared volume; ``--dest`` becomes a link to the checked copy.

``python -m tuneforge.engine.adapter_fetcher serve --store URL --dir /adapters --port 8001``
    the sidecar. ``POST /fetch {"name", "prefix", "files"}`` copies an adapter from the store into ``--dir``,
    checked file by file against its manifest (as embedded serving does), and answers ``{"name", "path"}``: the
    path vLLM's ``/v1/load_lora_adapter`` then loads (the volume is mounted at the same path there).
    ``DELETE /adapters/{name}`` removes the copy of an evicted adapter. ``GET /health`` for the readiness probe.
    Every request but ``GET /health`` needs ``Authorization: Bearer TOKEN``, the token shared with the api (in
    ``$TUNEFORGE_FETCHER_TOKEN``, from a Secret; the sidecar does not start without one): anything else that
    reaches the pod could otherwise make it copy from the object store or delete adapters.
    Errors: ``{"error": {"message", "type", "param", "code"}}`` (400 bad input, 401 no or a wrong token, 404 not
    published, 502 the store or the copy failed).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tuneforge.contracts.servingengine import FETCHER_TOKEN_ENV
from tuneforge.storage import ObjectStore, StoreError, open_store
from tuneforge.storage.base import check_key
from tuneforge.storage.published import NotPublished, fetch_published

log = logging.getLogger("tuneforge.adapter_fetcher")

#: adapter names are public model ids (``ft:base:org:suffix:id``, checkpoint ids)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,255}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_BODY = 64 * 1024
#: a shorter shared token could be guessed; the chart generates 48 characters
MIN_TOKEN_LENGTH = 16


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


class FetchRequest:
    """A checked ``POST /fetch`` body."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object {name, prefix, files}")
        name, prefix, files = body.get("name"), body.get("prefix"), body.get("files", [])
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError("'name' must be a model id: letters, digits and _.:@+- (at most 256 characters)")
        if not isinstance(prefix, str):
            raise ValueError("'prefix' must be an object-store prefix such as jobs/ID/model")
        try:
            check_key(prefix.rstrip("/"))
        except ValueError:
            raise ValueError(f"'prefix' {prefix!r} is not a valid object-store prefix") from None
        if not isinstance(files, list) or not all(isinstance(f, str) and _FILE.match(f) for f in files):
            raise ValueError("'files' must be a list of file names (no folders)")
        self.name: str = name
        self.prefix: str = prefix.rstrip("/")
        self.files: tuple[str, ...] = tuple(files)


class AdapterFetcher:
    """Adapters copied into ``root``, by name (two names may share a copy: the same prefix)."""

    def __init__(self, store: ObjectStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.paths: dict[str, Path] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def fetch(self, request: FetchRequest) -> Path:
        lock = self._locks.setdefault(request.prefix, asyncio.Lock())
        async with lock:
            path = await asyncio.to_thread(fetch_published, self.store, request.prefix, self.root, request.files)
        self.paths[request.name] = path
        return path

    def evict(self, name: str) -> bool:
        path = self.paths.pop(name, None)
        if path is None:
            return False
        if path not in self.paths.values():
            shutil.rmtree(path, ignore_errors=True)
        return True


class BearerAuth:
    """Refuses every request without ``Authorization: Bearer <token>`` (401), except ``GET /health`` (the kubelet's
    readiness probe carries no token). Compared in constant time, as bytes."""

    OPEN = frozenset({("GET", "/health"), ("HEAD", "/health")})

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the bearer token must have at least {MIN_TOKEN_LENGTH} characters")
        self.app = app
        self.token = token

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            raw = given.strip().encode("latin-1")  # how ASGI servers decode header bytes
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(raw, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.OPEN:
            await self.app(scope, receive, send)
            return
        if not self.authorized(Headers(scope=scope).get("authorization")):
            response = _error(401, "the adapter fetcher needs the api's bearer token: Authorization: Bearer TOKEN "
                              f"(the token in {FETCHER_TOKEN_ENV}), and this request has none or another one",
                              "invalid_token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="adapter-fetcher"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(fetcher: AdapterFetcher, token: bytes) -> Starlette:
    async def health(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def fetch(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, f"the body is over {MAX_BODY} bytes", "request_too_large")
        try:
            wanted = FetchRequest(json.loads(raw or b"null"))
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request")
        try:
            path = await fetcher.fetch(wanted)
        except NotPublished as exc:
            return _error(404, str(exc), "adapter_not_published", "prefix")
        except StoreError as exc:
            log.warning("fetching %s from %s failed: %s", wanted.name, wanted.prefix, exc)
            return _error(502, f"could not copy the adapter from the object store: {exc}", "adapter_fetch_failed")
        log.info("adapter %s ready at %s", wanted.name, path)
        return JSONResponse({"name": wanted.name, "path": str(path)})

    async def evict(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        return JSONResponse({"name": name, "deleted": fetcher.evict(name)})

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/fetch", fetch, methods=["POST"]),
        Route("/adapters/{name:path}", evict, methods=["DELETE"]),
    ])
    app.add_middleware(BearerAuth, token=token)
    return app


def fetch_weights(store_url: str, dest: Path, catalogue: str | None = None, prefix: str | None = None) -> Path:
    """Base weights into ``dest``'s folder; ``dest`` becomes a link to them (re-linked on every start)."""
    if (catalogue is None) == (prefix is None):
        raise ValueError("give exactly one of --catalogue and --prefix")
    if prefix is not None:
        source = fetch_published(open_store(store_url), prefix, dest.parent / "store")
    else:
        from tuneforge.trainer.models import resolve_model  # the trainer's conversion of bundled models

        assert catalogue is not None
        source = resolve_model(catalogue)
    tmp = dest.with_name(dest.name + ".link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(source, dest.parent))
    tmp.replace(dest)
    return source


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.engine.adapter_fetcher")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the adapter-fetcher sidecar")
    serve.add_argument("--store", required=True, help="object store URL (s3://bucket/prefix or file:///dir)")
    serve.add_argument("--dir", required=True, type=Path, help="where adapters are copied (the shared volume)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    weights = sub.add_parser("weights", help="the base weights into the shared volume (init container)")
    weights.add_argument("--store", required=True)
    source = weights.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalogue", help="a bundled model id")
    source.add_argument("--prefix", help="an object-store prefix with published weights")
    weights.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "weights":
        try:
            path = fetch_weights(args.store, args.dest, args.catalogue, args.prefix)
        except Exception as exc:  # the init container's last line becomes the pod's termination message
            print(f"tuneforge: cannot fetch the base weights: {exc}", file=sys.stderr)
            return 1
        print(path)
        return 0
    import uvicorn

    token = os.environ.get(FETCHER_TOKEN_ENV, "").strip().encode("latin-1", "replace")
    if len(token) < MIN_TOKEN_LENGTH:
        print(f"tuneforge: the adapter fetcher needs a bearer token of at least {MIN_TOKEN_LENGTH} characters in "
              f"{FETCHER_TOKEN_ENV} (the operator sets it from its fetcher-token Secret)", file=sys.stderr)
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    app = build_app(AdapterFetcher(open_store(args.store), args.dir), token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
