"""bench/control_plane.py at tiny sizes: it seeds, serves and measures every route on each database, and says
what it measured. No figure is asserted (timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROUTES = ["get job", "list limit=20", "list limit=100", "list limit=20 metadata", "list limit=100 metadata",
          "events limit=20", "events limit=100", "events limit=100 after", "models", "metrics (public)",
          "metrics (token)"]


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image", "."))
    return subprocess.run([sys.executable, str(REPO / "bench" / "control_plane.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tiny_run_measures_every_route(backend: str, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    if backend not in pytestconfig.getoption("--databases").split(","):
        pytest.skip(f"--databases leaves out {backend}")
    out = tmp_path / "result.json"
    proc = run_bench("--backend", backend, "--jobs", "50", "--events", "200", "--seconds", "0.3", "--clients", "2",
                     "--log-level", "warning", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (result,) = json.loads(out.read_text())["results"]
    assert result["backend"] == backend
    assert (result["jobs"], result["events"]) == (50, 200)  # every seeded row is in the database
    assert [r["route"] for r in result["routes"]] == ROUTES
    for row in result["routes"] + [result["healthz"]]:
        assert row["requests"] > 0 and row["p50_ms"] <= row["p99_ms"], row
    for row in result["routes"]:
        assert row["rps_vs_healthz"] > 0 and row["p99_vs_healthz"] > 0, row
    # the service's own CPU per request is measured (some routes take under a clock tick in 0.3 s: >= 0)
    assert all(row["cpu_ms_per_request"] >= 0 for row in result["routes"] + [result["healthz"]])
    assert sum(row["cpu_ms_per_request"] for row in result["routes"]) > 0
    assert [s["route"] for s in result["size"]] == [r for r in ROUTES if r.startswith("list")]

    table = proc.stdout
    for route in ["healthz", *ROUTES]:
        assert f"{route} |" in table or f"/{route}:" in table, f"{route} missing from:\n{table}"
    assert "req/s ÷ healthz" in table and "service CPU ms/req" in table and "targets (issue #13):" in table
    assert "load average" in table


def test_sizes_too_small_to_page_are_refused() -> None:
    proc = run_bench("--jobs", "5", timeout=60)
    assert proc.returncode == 2
    assert "--jobs must be at least 10" in proc.stderr
