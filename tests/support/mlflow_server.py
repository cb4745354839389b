"""A real MLflow tracking server for the integration tests: ``mlflow server`` from the virtualenv that
``.ci/system-deps`` installs under ~/.cache/tuneforge/mlflow/<version> (its pinned dependencies stay out of
ours), on loopback, with a SQLite backend and its artifact proxy (``mlflow-artifacts:``) in a temporary directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import free_port, wait_for

VERSION = "3.17.2"
VENV = Path.home() / ".cache" / "tuneforge" / "mlflow" / VERSION


class MlflowServer:
    def __init__(self, root: Path) -> None:
        executable = VENV / "bin" / "mlflow"
        if not (VENV / ".complete").is_file() or not executable.is_file():
            pytest.skip(f"mlflow {VERSION} is not installed in {VENV} (bash .ci/system-deps installs it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / "mlflow.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(executable), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--artifacts-destination", str(root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> MlflowServer:
        wait_for("the MLflow server", self._up, 180, 0.5)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def api(self, method: str, path: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
        resp = httpx.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)  # type: ignore[arg-type]
        resp.raise_for_status()
        return dict(resp.json())
