"""The generated Grafana dashboards: up to date with their generator and well-formed for provisioning.

(Their queries are executed against a real Prometheus in test_observed_job.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infra.dashboards.generate import DASHBOARDS, main

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "infra" / "dashboards"


def test_json_is_generated_from_the_script() -> None:
    assert main(["--check"]) == 0, "run: python infra/dashboards/generate.py"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(name: str) -> None:
    board = json.loads((BOARDS / name).read_text())
    assert board["uid"].startswith("tuneforge-") and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and "tuneforge_" in target["expr"]
            for var in ("$job_id",):
                if var in target["expr"]:
                    assert var[1:] in variables, f"{panel['title']}: {var} is not a variable of {name}"
    if name == "tuneforge-job.json":
        assert variables["job_id"]["definition"] == "label_values(tuneforge_job_step, job_id)"


def test_provisioning_points_at_the_dashboards() -> None:
    dashboards = (ROOT / "infra/grafana/provisioning/dashboards/tuneforge.yaml").read_text()
    datasources = (ROOT / "infra/grafana/provisioning/datasources/tuneforge.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards/tuneforge" in dashboards
    assert "type: prometheus" in datasources and "uid: prometheus" in datasources
    prometheus = (ROOT / "infra/prometheus/prometheus.yml").read_text()
    assert '"127.0.0.1:8000"' in prometheus and "metrics_path: /metrics" in prometheus


def test_prometheus_config_is_valid() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; .ci/system-deps installs it)")
    result = subprocess.run([promtool, "check", "config", str(ROOT / "infra/prometheus/prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
