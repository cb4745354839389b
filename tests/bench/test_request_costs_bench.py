"""bench/request_costs.py at tiny sizes: it serves, measures and prints every route with its database work.
No figure is asserted (timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_reports_every_route(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image", "."))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "request_costs.py"), "--jobs", "20", "--seconds",
                           "0.3", "--repeat", "5", "--json", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads(out.read_text())["routes"]
    assert [r["route"] for r in rows] == ["/healthz", "/readyz", "get job"]
    assert all(r["rps"] > 0 and r["service_cpu_ms"] >= 0 for r in rows)
    assert rows[0]["db_us"] == 0 and rows[1]["db_us"] > 0 and rows[2]["db_us"] > 0  # the database work was timed
    for row in rows:
        assert f"| {row['route']} |" in proc.stdout
