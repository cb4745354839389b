"""The chart's PrometheusRule: every metric it names is one the service exports, and Prometheus's own promtool
checks the rules and unit-tests the alerts on synthetic series (they fire on a failing fleet, a stuck queue and
API errors, and stay silent on a healthy one)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.helm_chart import PRODUCTION_VALUES, Helm, one

SEL = 'job="tuneforge",namespace="tuneforge",instance="10.0.0.1:8000"'
SEL2 = 'job="tuneforge",namespace="tuneforge",instance="10.0.0.2:8000"'


@pytest.fixture(scope="module")
def rule(helm: Helm) -> dict[str, Any]:
    docs = helm.template([PRODUCTION_VALUES], release="tuneforge")
    return one(docs, "PrometheusRule")


def _metric_names(rule: dict[str, Any]) -> set[str]:
    names = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names |= set(re.findall(r"\b(tuneforge_[a-z_]+)\b", r["expr"]))
    return names


def test_rules_use_metrics_the_service_exports(rule: dict[str, Any], api_server: Any):
    """Scrape a live service's /metrics (after one request, so the request counter has a series) and find every
    name there."""
    with api_server.client() as client:
        assert client.get("/v1/models").status_code == 200
    # the metrics token (not an API key) is what the chart's Prometheus scrapes with
    text = httpx.get(f"{api_server.url}/metrics",
                     headers={"Authorization": f"Bearer {api_server.state.metrics_token}"}).text
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    names = _metric_names(rule)
    assert names == {"tuneforge_jobs_finished_total", "tuneforge_queue_oldest_age_seconds",
                     "tuneforge_http_requests_total"}
    missing = {n for n in names if n not in exported}
    assert not missing, f"the rules name metrics the service does not export: {missing}"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/system-deps installs it)")
    return tool


NS = "tuneforge"
#: what the platform engineer reads, for the synthetic series below
ANNOTATIONS = {
    "TuneforgeJobsFailing": {
        "summary": f"Fine-tuning jobs are failing in {NS}",
        "description": "83.33% of the jobs that finished in the last 1h failed. Look at their error codes "
                       f"(GET /v1/fine_tuning/jobs/ID, kubectl get ftj -n {NS} -o wide): out_of_memory, "
                       "unschedulable or image_pull_error point at the cluster, invalid_training_file at users."},
    "TuneforgeQueueStuck": {
        "summary": f"A fine-tuning job has waited in the queue for too long in {NS}",
        "description": f"The oldest queued job has waited 1h 20m 0s. Check kubectl get ftj -n {NS} -o wide (reason "
                       "Unschedulable: no GPU node fits; WaitingForAdmission: Kueue quota), the GPU nodes and the "
                       "operator's log."},
    "TuneforgeAPIErrors": {
        "summary": f"The tuneforge API answers with server errors in {NS}",
        "description": "10% of the API's responses are 5xx. Check the api pods' logs, the database (GET /readyz) "
                       "and the object store."},
    "TuneforgeAPIDown": {
        "summary": f"No tuneforge API pod in {NS} is scraped successfully",
        "description": "Prometheus cannot scrape any api pod's /metrics; the API is probably down."},
}


def _alert(eval_time: str, name: str, severity: str | None) -> dict[str, Any]:
    expected = [{"exp_labels": {"severity": severity}, "exp_annotations": ANNOTATIONS[name]}] if severity else []
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": expected}


def test_promtool_checks_and_unit_tests_the_alerts(rule: dict[str, Any], tmp_path: Path):
    promtool = _promtool()
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 4 rules found" in check.stdout + check.stderr

    failing = f'tuneforge_jobs_finished_total{{{SEL},status="failed",method="supervised"}}'
    succeeded = f'tuneforge_jobs_finished_total{{{SEL},status="succeeded",method="supervised"}}'
    # fleet metrics are read from the database: the second replica reports the same numbers
    failing2 = f'tuneforge_jobs_finished_total{{{SEL2},status="failed",method="supervised"}}'
    series_ok = [
        {"series": f'tuneforge_http_requests_total{{{SEL},route="/v1/files",method="GET",status="200"}}',
         "values": "0+60x120"},
        {"series": f'tuneforge_queue_oldest_age_seconds{{{SEL}}}', "values": "0x120"},
        {"series": f'up{{{SEL}}}', "values": "1x120"},
    ]
    tests = [
        {   # healthy: a few failures among many successes, an empty queue, no 5xx: nothing fires
            "interval": "1m",
            "input_series": [
                *series_ok,
                {"series": failing, "values": "0x60 1x60"},
                {"series": succeeded, "values": "0+1x120"},
            ],
            "alert_rule_test": [_alert("110m", a, None) for a in
                                ("TuneforgeJobsFailing", "TuneforgeQueueStuck", "TuneforgeAPIErrors",
                                 "TuneforgeAPIDown")],
        },
        {   # most jobs fail (counted once although two replicas report them); the queue stands still for 2 h;
            # 10 % of the API's answers are 500s; then every api pod is down
            "interval": "1m",
            "input_series": [
                {"series": failing, "values": "0+1x120"},
                {"series": failing2, "values": "0+1x120"},
                {"series": succeeded, "values": "0+0.2x120"},
                {"series": f'tuneforge_queue_oldest_age_seconds{{{SEL}}}', "values": "0+60x120"},
                {"series": f'tuneforge_http_requests_total{{{SEL},route="/v1/files",method="GET",status="200"}}',
                 "values": "0+54x120"},
                {"series": f'tuneforge_http_requests_total{{{SEL},route="/v1/files",method="POST",status="500"}}',
                 "values": "0+6x120"},
                {"series": f'up{{{SEL}}}', "values": "1x60 0x60"},
            ],
            "alert_rule_test": [
                _alert("30m", "TuneforgeJobsFailing", "warning"),
                _alert("50m", "TuneforgeQueueStuck", None),      # 50 min queued: not yet (threshold 1 h)
                _alert("80m", "TuneforgeQueueStuck", "warning"),  # 1 h + 15 min for
                _alert("5m", "TuneforgeAPIErrors", None),          # not for 10 minutes yet
                _alert("30m", "TuneforgeAPIErrors", "critical"),
                _alert("62m", "TuneforgeAPIDown", None),
                _alert("70m", "TuneforgeAPIDown", "critical"),
            ],
        },
    ]
    test_file = tmp_path / "alerts.test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m",
                                         "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
