"""Helpers for the observability tests: a real Prometheus, small data files."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.data import write_chat_file
from tests.support.processes import stop_process
from tests.support.waiting import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


class Prometheus:
    """``/usr/bin/prometheus`` on 127.0.0.1 with a temporary config and storage, scraping every second."""

    def __init__(self, workdir: Path, targets: dict[str, str], tokens: dict[str, Path] | None = None) -> None:
        """``tokens``: the bearer-token file a target's scrapes send (the service's metrics token)."""
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        tokens = tokens or {}
        jobs = "".join(
            f"  - job_name: {name}\n    metrics_path: /metrics\n    static_configs:\n"
            f"      - targets: [\"{target}\"]\n"
            + (f"    authorization:\n      credentials_file: {tokens[name]}\n" if name in tokens else "")
            for name, target in targets.items()
        )
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n{jobs}"
        )
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--web.enable-lifecycle", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)

    def _get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        body = response.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._get("/api/v1/query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        values: list[str] = self._get(f"/api/v1/label/{label}/values", **{"match[]": match}, start=start, end=end)
        return values

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self._get("/api/v1/series", **{"match[]": match}, start=start, end=end)
        return found

    def targets_up(self) -> dict[str, str]:
        data = self._get("/api/v1/targets")
        return {t["labels"]["job"]: t["health"] for t in data["activeTargets"]}


def chat_jsonl(path: Path, rows: int, offset: int = 0) -> Path:
    return write_chat_file(path, rows, offset)


def upload(client: httpx.Client, path: Path) -> str:
    with open(path, "rb") as fh:
        response = client.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


