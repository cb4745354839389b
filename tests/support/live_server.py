"""Run the real service for tests: in a thread (uvicorn) or as a separate process (`tuneforge serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support.waiting import free_port
from tuneforge.contracts.settings import explicit
from tuneforge.service.api.app import create_app
from tuneforge.service.core.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def make_settings(
    home: Path,
    port: int,
    *,
    database_url: str = "",
    storage_url: str = "",
    api_key: str | None = None,
    limits: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    groups: dict[str, Any] | None = None,
    **executor: Any,
) -> ServiceSettings:
    """Settings for a test server, built explicitly: the developer's TUNEFORGE_* environment is ignored.

    The safety report is off unless a test turns it on (``groups={"privacy": {"safety_report_enabled": True}}``): it
    starts serving engines after every succeeded job, which tests of engines and of CPU time must not see."""
    groups = dict(groups or {})
    groups["privacy"] = {"safety_report_enabled": False, **groups.get("privacy", {})}
    return explicit(
        ServiceSettings,
        home=home,
        database_url=database_url,
        server={"host": "127.0.0.1", "port": port, **(server or {})},
        auth={"api_key": api_key, **(auth or {})},
        storage={"url": storage_url},
        executor={"trainer_python": sys.executable, **executor},
        limits=limits or {},
        # other settings groups by name, e.g. {"webhooks": {"webhook_allow_private_urls": True}}
        **(groups or {}),
    )


def wait_healthy(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


class ThreadServer:
    """The real app behind a real HTTP socket, in this process (so tests can reach its state)."""

    def __init__(self, settings: ServiceSettings, start_executor: bool = True) -> None:
        self.settings = settings
        self.app = create_app(settings, start_executor=start_executor)
        self.url = f"http://127.0.0.1:{settings.server.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.server.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.tuneforge

    @property
    def api_key(self) -> str:
        return self.settings.auth.api_key or self.settings.key_file.read_text().strip()

    def client(self, api_key: str | None = None) -> httpx.Client:
        key = api_key if api_key is not None else self.api_key
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def start(self) -> ThreadServer:
        self.thread.start()
        wait_healthy(self.url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class ProcessServer:
    """`python -m tuneforge.service.cli.main serve` as a separate process, like a user runs it."""

    def __init__(self, home: Path, port: int | None = None, env: dict[str, str] | None = None,
                 log_level: str = "warning") -> None:
        self.home = home
        self.log_level = log_level
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the developer's own TUNEFORGE_* settings must not reach the server under test
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        # the safety report (serving engines after every succeeded job) is off unless a test turns it on
        self.env = {**inherited, "TUNEFORGE_HOME": str(home), "TUNEFORGE_PORT": str(self.port),
                    "TUNEFORGE_SAFETY_REPORT_ENABLED": "false", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def api_key(self) -> str:
        return self.env.get("TUNEFORGE_API_KEY") or (self.home / "api_key").read_text().strip()

    @property
    def storage_url(self) -> str:
        return self.env.get("TUNEFORGE_STORAGE_URL") or (self.home / "objects").as_uri()

    def client(self, api_key: str | None = None) -> httpx.Client:
        key = api_key if api_key is not None else self.api_key
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def start(self) -> ProcessServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = self._spawn(log)
        try:
            wait_healthy(self.url, proc=self.proc)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from exc
        return self

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuneforge.service.cli.main",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                self.log_level,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: str = "term") -> None:
        if self.proc and self.proc.poll() is None:
            if sig == "kill":
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for_status(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job.get("status") in statuses:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not reach {statuses} in {timeout}s; last: {job}")
