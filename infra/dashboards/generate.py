#!/usr/bin/env python3
"""Grafana dashboards as code: writes ``tuneforge-fleet.json`` and ``tuneforge-job.json`` beside this file.

    python infra/dashboards/generate.py           # (re)write the JSON
    python infra/dashboards/generate.py --check   # exit 1 when the committed JSON is out of date

Standard library only. The metrics are documented in docs/observability.md. Fleet metrics that the
service reads from its database (``tuneforge_jobs``, ``tuneforge_queue_*``, ``tuneforge_tenant_*``, the
per-job gauges) are the same on every replica, so the queries take ``max`` across instances before they
``sum`` over anything else; request metrics are per replica and are summed.

Every expression here is executed against a real Prometheus by tests/observability after a real job ran,
and must return data there (see ``CUDA_ONLY`` for the one exception: series that exist only on GPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
#: metrics that exist only when a trainer runs on CUDA: on a CPU-only machine their panels stay empty
CUDA_ONLY = frozenset({
    "tuneforge_job_gpu_memory_bytes", "tuneforge_job_mfu",
    "tuneforge_trainer_cuda_memory_allocated_bytes", "tuneforge_trainer_cuda_memory_reserved_bytes",
    "tuneforge_trainer_cuda_memory_total_bytes", "tuneforge_trainer_cuda_utilization_ratio",
})
#: request-latency panels leave out streams and downloads, whose duration is not an API call's
SLOW_ROUTES = 'route!~"/metrics|.*/events/stream|.*/content|.*/artifacts/.+"'


def latency_quantile(q: float) -> str:
    bucket = f"tuneforge_http_request_duration_seconds_bucket{{{SLOW_ROUTES}}}"
    return f"histogram_quantile({q}, sum by (le) (rate({bucket}[$__rate_interval])))"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
                           "range": not instant, "instant": instant}
    return out


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def timeseries(title: str, targets: list[dict[str, Any]], unit: str = "short", description: str = "",
               stack: bool = False, min_zero: bool = False, points: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10 if stack else 0,
                              "showPoints": "always" if points else "auto", "spanNulls": True,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, expr: str, unit: str = "short", description: str = "", decimals: int | None = None,
         thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "blue")])]
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto"}}


def datasource_var() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict[str, Any]],
              links: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["tuneforge"],
        "editable": True, "graphTooltip": 1, "timezone": "browser", "schemaVersion": 39, "version": 1,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "",
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": variables},
        "links": links or [],
        "panels": layout.panels,
    }


# ---------------------------------------------------------------------------------------------------------
def fleet() -> dict[str, Any]:
    active = 'max by (status, method) (tuneforge_jobs{status=~"validating_files|queued|running"})'
    lay = Layout()
    lay.row("Jobs")
    lay.add(stat("Running jobs", 'sum(max by (method) (tuneforge_jobs{status="running"}))',
                 thresholds=[(None, "blue")]), 4, 4)
    lay.add(stat("Queue depth", "max(tuneforge_queue_depth)", description="Jobs waiting for a trainer slot",
                 thresholds=[(None, "green"), (5, "orange"), (20, "red")]), 4, 4)
    lay.add(stat("Oldest queued job", "max(tuneforge_queue_oldest_age_seconds)", unit="s",
                 thresholds=[(None, "green"), (600, "orange"), (3600, "red")]), 4, 4)
    lay.add(stat("Succeeded (total)", 'sum(max by (method) (tuneforge_jobs{status="succeeded"}))',
                 thresholds=[(None, "green")]), 4, 4)
    lay.add(stat("Failed (total)", 'sum(max by (method) (tuneforge_jobs{status="failed"}))',
                 thresholds=[(None, "green"), (1, "red")]), 4, 4)
    lay.add(stat("Training tokens/s (all jobs)",
                 "sum(max by (job_id) (tuneforge_job_tokens_per_second)) or vector(0)", unit="short",
                 decimals=0), 4, 4)
    lay.add(timeseries("Active jobs by status", [
        target(f"sum by (status) ({active})", "{{status}}"),
    ], stack=True, min_zero=True), 12, 8)
    lay.add(timeseries("Queue", [
        target("max(tuneforge_queue_depth)", "queued jobs"),
        target("max(tuneforge_queue_oldest_age_seconds) / 60", "oldest wait (min)", ref="B"),
    ], min_zero=True), 12, 8)
    lay.add(timeseries("Jobs finished per hour, by status", [
        target("sum by (status) (max by (status, method) (rate(tuneforge_jobs_finished_total[$__rate_interval]))) "
               "* 3600", "{{status}}"),
    ], unit="short", min_zero=True, description="Throughput of the fleet: jobs reaching a terminal status"), 12, 8)
    lay.add(timeseries("Jobs created per hour, by method", [
        target("sum by (method) (max by (method) (rate(tuneforge_jobs_created_total[$__rate_interval]))) * 3600",
               "{{method}}"),
    ], min_zero=True), 12, 8)
    lay.row("Training")
    lay.add(timeseries("Training throughput (tokens/s), per running job", [
        target("max by (job_id) (tuneforge_job_tokens_per_second)", "{{job_id}}"),
    ], stack=True, min_zero=True), 12, 8)
    lay.add(timeseries("Progress of running jobs", [
        target("max by (job_id) (tuneforge_job_progress_ratio)", "{{job_id}}"),
    ], unit="percentunit", min_zero=True), 12, 8)
    lay.row("Errors")
    lay.add(timeseries("Failed jobs per hour", [
        target("sum(max by (method) (rate(tuneforge_jobs_finished_total{status=\"failed\"}[$__rate_interval]))) "
               "* 3600", "failed"),
    ], min_zero=True), 8, 8)
    lay.add(timeseries("API errors per second, by status", [
        target('sum by (status) (rate(tuneforge_http_requests_total{status=~"4..|5.."}[$__rate_interval]))',
               "{{status}}"),
    ], unit="reqps", min_zero=True), 8, 8)
    lay.add(timeseries("API 5xx ratio", [
        target('(sum(rate(tuneforge_http_requests_total{status=~"5.."}[$__rate_interval])) or vector(0)) '
               "/ sum(rate(tuneforge_http_requests_total[$__rate_interval]))", "5xx / all"),
    ], unit="percentunit", min_zero=True), 8, 8)
    lay.row("API")
    lay.add(timeseries("Requests per second, by route", [
        target("sum by (route) (rate(tuneforge_http_requests_total[$__rate_interval]))", "{{route}}"),
    ], unit="reqps", min_zero=True), 12, 8)
    lay.add(timeseries("Request latency (API calls)", [
        target(latency_quantile(0.5), "p50"),
        target(latency_quantile(0.95), "p95", ref="B"),
        target(latency_quantile(0.99), "p99", ref="C"),
    ], unit="s", min_zero=True), 12, 8)
    lay.add(timeseries("p95 latency by route", [
        target("histogram_quantile(0.95, sum by (le, route) "
               "(rate(tuneforge_http_request_duration_seconds_bucket[$__rate_interval])))", "{{route}}"),
    ], unit="s", min_zero=True), 12, 8)
    lay.add(timeseries("Open event streams and in-flight requests", [
        target("sum(tuneforge_event_streams_open)", "event streams"),
        target("sum(tuneforge_http_requests_in_flight)", "in flight", ref="B"),
    ], min_zero=True), 12, 8)
    lay.row("Tenants")
    lay.add(timeseries("Active jobs per tenant", [
        target("max by (tenant) (tuneforge_tenant_active_jobs)", "{{tenant}}"),
    ], stack=True, min_zero=True), 8, 8)
    lay.add(timeseries("GPUs in use per tenant", [
        target("max by (tenant) (rate(tuneforge_tenant_gpu_seconds_total[$__rate_interval]))", "{{tenant}}"),
    ], min_zero=True, description="GPU-seconds per second: the number of GPUs a tenant's running jobs hold"), 8, 8)
    lay.add(timeseries("GPU-hours and training hours per tenant (total)", [
        target("max by (tenant) (tuneforge_tenant_gpu_seconds_total) / 3600", "{{tenant}} GPU-h"),
        target("max by (tenant) (tuneforge_tenant_job_seconds_total) / 3600", "{{tenant}} training h", ref="B"),
        target("max by (tenant) (tuneforge_tenant_jobs_total)", "{{tenant}} jobs", ref="C"),
    ], min_zero=True), 8, 8)
    lay.row("Evals")
    lay.add(timeseries("Eval runs by status", [
        target("sum by (status) (tuneforge_eval_runs)", "{{status}}"),
    ], min_zero=True), 8, 8)
    lay.add(timeseries("Eval items graded per second, by outcome", [
        target("sum by (status) (rate(tuneforge_eval_items_graded_total[$__rate_interval]))", "{{status}}"),
    ], unit="ops", stack=True, min_zero=True), 8, 8)
    lay.add(timeseries("Grader errors per second, by grader type", [
        target("sum by (grader) (rate(tuneforge_eval_grader_errors_total[$__rate_interval])) or vector(0)",
               "{{grader}}"),
    ], unit="ops", min_zero=True, description="A judge's reply that is not a grade, or an item lacking a field "
       "a template names: the item is errored, the run goes on"), 8, 8)
    lay.row("Human feedback")
    lay.add(timeseries("Feedback campaigns by status", [
        target("sum by (status) (tuneforge_feedback_campaigns)", "{{status}}"),
    ], min_zero=True), 8, 8)
    lay.add(timeseries("Feedback answers sampled per second, by outcome", [
        target("sum by (outcome) (rate(tuneforge_feedback_samples_total[$__rate_interval]))", "{{outcome}}"),
    ], unit="ops", stack=True, min_zero=True, description="Answers the campaigns' models wrote through the "
       "serving engines; an error fails its campaign"), 8, 8)
    lay.add(timeseries("Rater labels per second, by campaign kind", [
        target("sum by (kind) (rate(tuneforge_feedback_labels_total[$__rate_interval]))", "{{kind}}"),
    ], unit="ops", stack=True, min_zero=True), 8, 8)
    links = [{"title": "Job", "type": "dashboards", "tags": ["tuneforge"], "asDropdown": True,
              "includeVars": False, "keepTime": True}]
    return dashboard("tuneforge-fleet", "tuneforge / Fleet overview",
                     "Jobs by status, queue, throughput, errors and API latency of a tuneforge service.",
                     lay, [datasource_var()], links)


def job() -> dict[str, Any]:
    sel = 'job_id="$job_id"'
    lay = Layout()
    lay.add(stat("Step", f"max(tuneforge_job_step{{{sel}}})", decimals=0), 4, 4)
    lay.add(stat("Total steps", f"max(tuneforge_job_total_steps{{{sel}}})", decimals=0), 4, 4)
    lay.add(stat("Progress", f"max(tuneforge_job_progress_ratio{{{sel}}})", unit="percentunit"), 4, 4)
    lay.add(stat("ETA", f"max(tuneforge_job_eta_seconds{{{sel}}})", unit="s"), 4, 4)
    lay.add(stat("Trained tokens", f"max(tuneforge_job_trained_tokens{{{sel}}})", decimals=0), 4, 4)
    lay.add(stat("Running for", f"max(tuneforge_job_running_seconds{{{sel}}})", unit="s"), 4, 4)
    lay.add(timeseries("Loss", [
        target(f"max(tuneforge_job_train_loss{{{sel}}})", "training"),
        target(f"max(tuneforge_job_valid_loss{{{sel}}})", "validation", ref="B"),
    ], points=True), 24, 10)
    lay.add(timeseries("Tokens per second", [
        target(f"max(tuneforge_job_tokens_per_second{{{sel}}})", "tokens/s"),
    ], min_zero=True), 8, 8)
    lay.add(timeseries("Learning rate", [
        target(f"max(tuneforge_job_learning_rate{{{sel}}})", "learning rate"),
    ], min_zero=True), 8, 8)
    lay.add(timeseries("ETA", [target(f"max(tuneforge_job_eta_seconds{{{sel}}})", "ETA")], unit="s",
                       min_zero=True), 8, 8)
    lay.row("GPU")
    lay.add(timeseries("GPU memory (peak, reported with each step)", [
        target(f"max(tuneforge_job_gpu_memory_bytes{{{sel}}})", "peak"),
    ], unit="bytes", min_zero=True, description="CUDA only"), 8, 8)
    lay.add(timeseries("GPU memory per device (trainer endpoint)", [
        target(f"max by (gpu) (tuneforge_trainer_cuda_memory_allocated_bytes{{{sel}}})", "GPU {{gpu}} allocated"),
        target(f"max by (gpu) (tuneforge_trainer_cuda_memory_reserved_bytes{{{sel}}})", "GPU {{gpu}} reserved",
               ref="B"),
        target(f"max by (gpu) (tuneforge_trainer_cuda_memory_total_bytes{{{sel}}})", "GPU {{gpu}} total",
               ref="C"),
    ], unit="bytes", min_zero=True, description="From the trainer's own /metrics (CUDA only)"), 8, 8)
    lay.add(timeseries("GPU utilisation and MFU", [
        target(f"max by (gpu) (tuneforge_trainer_cuda_utilization_ratio{{{sel}}})", "GPU {{gpu}} utilisation"),
        target(f"max(tuneforge_job_mfu{{{sel}}})", "MFU", ref="B"),
    ], unit="percentunit", min_zero=True, description="CUDA only; utilisation needs NVML in the trainer"), 8, 8)
    lay.row("Trainer process")
    lay.add(timeseries("Trainer resident memory", [
        target(f"max(tuneforge_trainer_process_resident_memory_bytes{{{sel}}})", "RSS"),
    ], unit="bytes", min_zero=True, description="From the trainer's own /metrics"), 12, 8)
    lay.add(timeseries("Trainer view: step and tokens/s", [
        target(f"max(tuneforge_trainer_step{{{sel}}})", "step"),
        target(f"max(tuneforge_trainer_tokens_per_second{{{sel}}})", "tokens/s", ref="B"),
    ], min_zero=True, description="From the trainer's own /metrics"), 12, 8)
    job_var = {
        "name": "job_id", "label": "Job", "type": "query", "datasource": DS,
        "query": {"query": "label_values(tuneforge_job_step, job_id)", "refId": "job_id"},
        "definition": "label_values(tuneforge_job_step, job_id)",
        "refresh": 2, "sort": 2, "includeAll": False, "multi": False, "current": {}, "hide": 0, "regex": "",
        "options": [],
    }
    links = [{"title": "Fleet overview", "type": "link", "url": "/d/tuneforge-fleet", "icon": "dashboard",
              "keepTime": True}]
    return dashboard("tuneforge-job", "tuneforge / Job",
                     "One fine-tuning job: loss curves, throughput, ETA and GPU. Pick the job in 'Job' "
                     "(jobs that ran in the selected time range).", lay, [datasource_var(), job_var], links)


DASHBOARDS = {"tuneforge-fleet.json": fleet, "tuneforge-job.json": job}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when the JSON files are out of date")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python infra/dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
