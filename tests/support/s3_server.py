"""A real S3 server for tests and benchmarks (moto's server mode), and a fault-injecting proxy in front of it.

``MinioServer`` (MinIO built from Go modules) is the benchmark's second server.

``MotoServer`` runs ``python -m moto.server`` as a subprocess on 127.0.0.1 and a free port: a separate process,
so the server's CPU work does not contend with the client's GIL. ``FaultProxy`` is a small threaded HTTP proxy
on loopback that forwards to it and, for the requests its rules select, answers 500/503 (with S3's XML error
bodies), drops the connection before or after the server handled the request, or corrupts the response body.
It also refuses expired presigned URLs with 403, as S3 does and moto does not.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.processes import stop_process
from tests.support.waiting import free_port

#: credentials moto accepts (it checks none); region for signing
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "tuneforge-test",
    "AWS_SECRET_ACCESS_KEY": "tuneforge-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, timeout: float,
                stop: Callable[[], None]) -> None:
    """Wait until ``url`` answers 2xx-4xx; a server that exits or never answers raises (and is stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                # stderr is only needed for start-up failures; stop piping it so it cannot fill up
                if proc.stderr:
                    proc.stderr.close()
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop()
    raise TimeoutError(f"{name} on {url} did not start in {timeout}s")


class MotoServer:
    """moto's S3 in server mode, in its own process; objects live in its memory (large ones spill to /tmp)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MotoServer:
        env = {**os.environ, **TEST_ENV, **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _wait_ready(self.proc, f"{self.url}/moto-api/", "moto server", timeout, self.stop)
        return self

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a process that should use this server through boto3's standard chain."""
        return {**TEST_ENV, "AWS_ENDPOINT_URL": endpoint or self.url}

    def reset(self) -> None:
        """Forget every bucket and object."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MinioServer:
    """A MinIO server (built by infra/testbed/minio/build.sh) on 127.0.0.1, storing in a temporary directory.

    The benchmark's second server (``bench/object_store.py --server minio``); the store test suite also runs on
    it when it is built.
    """

    # the tests' credentials, so the clients built for moto work unchanged
    ACCESS_KEY = TEST_ENV["AWS_ACCESS_KEY_ID"]
    SECRET_KEY = TEST_ENV["AWS_SECRET_ACCESS_KEY"]

    def __init__(self, binary: str, data_dir: str, port: int | None = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MinioServer:
        env = {**os.environ, "MINIO_ROOT_USER": self.ACCESS_KEY, "MINIO_ROOT_PASSWORD": self.SECRET_KEY,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "CI": "true"}
        self.proc = subprocess.Popen(
            [self.binary, "server", self.data_dir, "--quiet", "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{free_port()}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _wait_ready(self.proc, f"{self.url}/minio/health/ready", "minio", timeout, self.stop)
        return self

    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": self.ACCESS_KEY, "aws_secret_access_key": self.SECRET_KEY,
                "region_name": "us-east-1"}

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


# -- the fault-injecting proxy --


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_upload_part(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query and "uploadId" in self.query

    @property
    def is_put_object(self) -> bool:
        return self.method == "PUT" and "uploadId" not in self.query and "x-amz-copy-source" not in self.headers

    @property
    def is_complete(self) -> bool:
        return self.method == "POST" and "uploadId" in self.query

    @property
    def is_create_multipart(self) -> bool:
        return self.method == "POST" and "uploads" in self.query

    @property
    def is_get_object(self) -> bool:
        return self.method == "GET" and self.path.count("/") >= 2 and not any(
            q in self.query for q in ("list-type", "uploads", "prefix", "location"))

    @property
    def part_number(self) -> int | None:
        values = self.query.get("partNumber")
        return int(values[0]) if values else None


def first_try(match: Callable[[Request], bool]) -> Callable[[Request], bool]:
    """Select the first attempt of each distinct request ``match`` selects (method, path and query): a transient
    fault that a retry gets past."""
    seen: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    lock = threading.Lock()

    def select(r: Request) -> bool:
        if not match(r):
            return False
        ident = (r.method, r.path, tuple(sorted((k, v[0] if v else "") for k, v in r.query.items())))
        with lock:
            if ident in seen:
                return False
            seen.add(ident)
        return True

    return select


#: what a rule can do to a request
ACTIONS = ("500", "503", "slowdown", "nosuchupload", "drop", "drop_after", "corrupt")


@dataclass
class Rule:
    action: str
    match: Callable[[Request], bool]
    times: int | None = None  # at most this many faults (None: every match)
    every: int = 1  # fault every n-th matching request
    seen: int = 0
    fired: int = 0

    def applies(self, request: Request) -> bool:
        if not self.match(request):
            return False
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if (self.seen - 1) % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class ProxyStats:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path+query, action or "")


_ERROR_BODIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    # what a server that is not idempotent says to a retried CompleteMultipartUpload
    "nosuchupload": (404, "NoSuchUpload", "The specified upload does not exist."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """Forwards to ``upstream``; ``inject(...)`` adds rules, evaluated in order, the first that fires wins."""

    def __init__(self, upstream: str, enforce_presigned_expiry: bool = True) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.enforce_presigned_expiry = enforce_presigned_expiry
        self.rules: list[Rule] = []
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, action: str, match: Callable[[Request], bool] | None = None, *, times: int | None = None,
               every: int = 1) -> Rule:
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}; one of {ACTIONS}")
        rule = Rule(action, match or (lambda r: True), times, every)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.stats = ProxyStats()

    def decide(self, request: Request) -> str | None:
        with self._lock:
            self.stats.requests += 1
            action = next((rule.action for rule in self.rules if rule.applies(request)), None)
            if action:
                self.stats.faults[action] = self.stats.faults.get(action, 0) + 1
            query = "&".join(sorted(request.query))
            self.stats.log.append((request.method, f"{request.path}?{query}", action or ""))
            return action


def _presign_expired(query: dict[str, list[str]]) -> bool:
    if "X-Amz-Expires" not in query or "X-Amz-Date" not in query:
        return False
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return time.time() > signed_at.timestamp() + int(query["X-Amz-Expires"][0])


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        chunks = []
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>fault-proxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _handle(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, split.path, query, headers)
        body = self._body() if self.command in ("PUT", "POST", "DELETE") else b""
        if self.owner.enforce_presigned_expiry and _presign_expired(query):
            self._error(403, "AccessDenied", "Request has expired")
            return
        action = self.owner.decide(request)
        if action in _ERROR_BODIES:
            self._error(*_ERROR_BODIES[action])
            return
        if action == "drop":
            self._drop()
            return
        upstream = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=300)
        try:
            fwd_headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body if body or self.command != "GET" else None,
                             headers=fwd_headers)
            response = upstream.getresponse()
            data = response.read()
            if action == "drop_after":  # the server did the work; the client never hears of it
                self._drop()
                return
            if action == "corrupt" and data:
                damaged = bytearray(data)
                damaged[len(damaged) // 2] ^= 0xFF
                data = bytes(damaged)
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                # a HEAD answer keeps the object's length; a body we pass on gets its own
                if key.lower() not in _HOP_BY_HOP and (key.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
