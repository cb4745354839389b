"""One real job (see conftest), observed four ways, in this order:

1. the SSE stream, read with disconnects and ``Last-Event-ID`` reconnects while the job runs;
2. the /ui job page in headless Chromium (Playwright) shows the loss curve while the job runs (screenshots);
3. the rest of the stream after the job ended: every event exactly once, then ``event: end``;
4. a real Prometheus scraped the service and the trainer: the job's step and loss series are there, and
   every PromQL expression of the generated Grafana dashboards returns data.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.observability.conftest import ObservedJob
from tests.observability.support import ARTIFACTS, ROOT
from tests.support.browser import chromium_page, require_chromium, sign_in
from tests.support.live_server import wait_for_status
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(420)

DASHBOARDS = ROOT / "infra" / "dashboards"
TERMINAL = {"succeeded", "failed", "cancelled"}
#: what the stream delivered so far, across the tests of this module (they run in file order)
STREAM: dict[str, Any] = {"ids": [], "events": [], "last_id": None}


def _stream_url(job: ObservedJob) -> str:
    return f"{job.server.url}/v1/fine_tuning/jobs/{job.job_id}/events/stream"


def _read(
    job: ObservedJob, count: int | None, last_id: str | None, via_list_route: bool = False
) -> tuple[list[ServerSentEvent], str | None]:
    """Reads ``count`` events (or up to ``event: end``), then disconnects."""
    headers = {"Authorization": f"Bearer {job.server.api_key}"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    url = _stream_url(job)
    params: dict[str, Any] = {"heartbeat": 1}
    if via_list_route:
        url = url.removesuffix("/stream")
        params["stream"] = "true"
    events: list[ServerSentEvent] = []
    end_status = None
    with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, \
            connect_sse(client, "GET", url, headers=headers, params=params) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():  # raises unless the content type is text/event-stream
            if sse.event == "end":
                end_status = sse.json()["status"]
                break
            if sse.data and sse.event == "message":
                events.append(sse)
                if count is not None and len(events) >= count:
                    break
    return events, end_status


def _record(events: list[ServerSentEvent]) -> None:
    for sse in events:
        event = sse.json()
        assert sse.id == event["id"]
        STREAM["ids"].append(sse.id)
        STREAM["events"].append(event)
        STREAM["last_id"] = sse.id


def test_1_stream_resumes_while_the_job_runs(observed_job: ObservedJob) -> None:
    frames, end = _read(observed_job, 3, None)
    assert end is None and len(frames) == 3
    _record(frames)
    # reconnect with Last-Event-ID (through GET …/events?stream=true), take a few more, drop again
    frames, end = _read(observed_job, 4, STREAM["last_id"], via_list_route=True)
    assert end is None and len(frames) == 4
    _record(frames)
    assert len(set(STREAM["ids"])) == len(STREAM["ids"]) == 7
    # the JSON list of events still answers as before (OpenAI's client relies on it)
    with observed_job.client() as client:
        listing = client.get(f"/v1/fine_tuning/jobs/{observed_job.job_id}/events", params={"limit": 2}).json()
    assert listing["object"] == "list" and len(listing["data"]) == 2


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_2_ui_shows_the_live_loss_curve(observed_job: ObservedJob) -> None:
    require_chromium()
    server, job_id = observed_job.server, observed_job.job_id
    # the page is public; the data is not
    assert httpx.get(f"{server.url}/ui").status_code == 200
    assert httpx.get(f"{server.url}/v1/fine_tuning/jobs").status_code == 401
    assert httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/events/stream").status_code == 401

    with chromium_page(1280, 900, 30_000, console_errors=True) as (page, errors):

        sign_in(page, server.url, server.api_key)
        page.wait_for_selector(f'tr[data-job-id="{job_id}"]')
        page.screenshot(path=ARTIFACTS / "ui-jobs.png", full_page=True)

        page.evaluate(f"location.hash = '#/jobs/{job_id}'")
        # a running job with a loss curve of several points, drawn from the live stream
        wait_for("job running", lambda: _job_status(observed_job) in ("running", *TERMINAL), 240, 0.3)
        train_path = page.locator("#loss-chart path.series-train")
        page.wait_for_function(
            "() => { const p = document.querySelector('#loss-chart path.series-train');"
            " return p && Number(p.dataset.points) >= 4; }", timeout=240_000)
        points = train_path.get_attribute("data-points")
        shown = page.text_content("#job-status")
        api_status = _job_status(observed_job)
        assert shown == "running" and api_status == "running", (
            f"the job was no longer running when its curve had {points} points: page {shown!r}, "
            f"API {api_status!r}")
        step_text = page.text_content("#stat-step") or ""
        assert re.match(r"^\d+ / \d+$", step_text), step_text
        path_d = train_path.get_attribute("d") or ""
        assert path_d.startswith("M") and path_d.count("L") >= 3
        shot = ARTIFACTS / "ui-job-running.png"
        page.screenshot(path=shot, full_page=True)
        assert _png_size(shot)[0] == 1280

        # the stream ends with the job; the final curve has validation points too
        final = wait_for_status(observed_job.server.client(), job_id, TERMINAL, timeout=300)
        assert final["status"] == "succeeded", final
        page.wait_for_function(
            "() => document.getElementById('stream-state').textContent.includes('stream closed')",
            timeout=60_000)
        page.wait_for_function("() => document.getElementById('job-status').textContent === 'succeeded'")
        page.wait_for_function(
            "() => { const p = document.querySelector('#loss-chart path.series-valid');"
            " return p && Number(p.dataset.points) >= 2; }")
        train_points = int(train_path.get_attribute("data-points") or 0)
        metrics_events = [e for e in _all_events(observed_job)
                          if e["type"] == "metrics" and "train_loss" in (e["data"] or {})]
        assert train_points == len({e["data"]["step"] for e in metrics_events})
        page.screenshot(path=ARTIFACTS / "ui-job-finished.png", full_page=True)
        assert not errors, errors


def _job_status(job: ObservedJob) -> str:
    with job.client() as client:
        return str(client.get(f"/v1/fine_tuning/jobs/{job.job_id}").json()["status"])


def _all_events(job: ObservedJob) -> list[dict[str, Any]]:
    with job.client() as client:
        events: list[dict[str, Any]] = []
        after = None
        while True:
            page = client.get(f"/v1/fine_tuning/jobs/{job.job_id}/events",
                              params={"order": "asc", "limit": 100, **({"after": after} if after else {})}).json()
            events.extend(page["data"])
            if not page["has_more"]:
                return events
            after = page["data"][-1]["id"]


def test_3_stream_delivers_every_event_once_and_ends_with_the_job(observed_job: ObservedJob) -> None:
    if not STREAM["ids"]:
        pytest.skip("needs test_1's first part of the stream")
    final = wait_for_status(observed_job.server.client(), observed_job.job_id, TERMINAL, timeout=300)
    assert final["status"] == "succeeded", final
    frames, end = _read(observed_job, None, STREAM["last_id"])
    assert end == "succeeded"
    _record(frames)
    expected = [e["id"] for e in _all_events(observed_job)]
    assert STREAM["ids"] == expected  # each once, in order, none missing
    assert STREAM["events"] == _all_events(observed_job)  # the same objects as the JSON list
    assert any(e["type"] == "metrics" for e in STREAM["events"])
    # a stream opened after the end replays everything and closes at once
    frames, end = _read(observed_job, None, None)
    assert end == "succeeded" and [f.id for f in frames] == expected


# ---------------------------------------------------------------------------------------------------------
def _prometheus(job: ObservedJob) -> Any:
    if job.prometheus is None:
        pytest.skip("/usr/bin/prometheus is not installed (Debian package 'prometheus'; .ci/system-deps installs it)")
    return job.prometheus


def _after_end_scraped(job: ObservedJob) -> float:
    final = wait_for_status(job.server.client(), job.job_id, TERMINAL, timeout=300)
    assert final["status"] == "succeeded", final
    time.sleep(3)  # a few more 1 s scrapes after the end
    return time.time()


def test_4_prometheus_has_the_jobs_step_and_loss_series(observed_job: ObservedJob) -> None:
    prom = _prometheus(observed_job)
    end = _after_end_scraped(observed_job)
    start, job_id = observed_job.started - 5, observed_job.job_id
    sel = f'{{job_id="{job_id}"}}'

    steps = prom.query_range(f"tuneforge_job_step{sel}", start, end)
    assert len(steps) == 1, steps
    labels = steps[0]["metric"]
    assert labels["tenant"] == "default" and labels["method"] == "supervised" and labels["job"] == "tuneforge"
    values = [float(v) for _, v in steps[0]["values"]]
    assert len(values) >= 3 and values == sorted(values) and values[-1] > values[0], values
    total = prom.query_range(f"tuneforge_job_total_steps{sel}", start, end)
    assert float(total[0]["values"][-1][1]) == 60

    loss = prom.query_range(f"tuneforge_job_train_loss{sel}", start, end)
    assert len(loss) == 1 and len(loss[0]["values"]) >= 3
    assert all(float(v) > 0 for _, v in loss[0]["values"])
    assert prom.query_range(f"tuneforge_job_valid_loss{sel}", start, end)

    # the trainer's own endpoint was scraped too
    trainer = prom.query_range(f"tuneforge_trainer_step{sel}", start, end)
    assert trainer and trainer[0]["metric"]["job"] == "tuneforge-trainer"
    assert prom.query_range(f"tuneforge_trainer_process_resident_memory_bytes{sel}", start, end)

    # the per-job series are gone now that the job has ended (no stale label values)
    assert prom.query(f"tuneforge_job_step{sel}") == []
    assert prom.query('tuneforge_jobs{status="succeeded",method="supervised"}')[0]["value"][1] == "1"
    assert prom.query("tuneforge_queue_depth")[0]["value"][1] == "0"
    # request metrics carry route templates, never raw ids
    routes = {s["route"] for s in prom.series("tuneforge_http_requests_total", start, end)}
    assert "/v1/fine_tuning/jobs/{job_id}" in routes and "/v1/fine_tuning/jobs/{job_id}/events/stream" in routes
    assert not any(job_id in r for r in routes)


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, refId, expr) for every target of every generated dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["refId"], target["expr"]))
    return out


def _substitute(expr: str, job_id: str, window: float) -> str:
    return (expr.replace("$job_id", job_id).replace("$__rate_interval", "10s")
            .replace("$__range", f"{int(window)}s").replace("$__interval", "2s"))


METRIC_NAME = re.compile(r"\b(tuneforge_[a-z0-9_]+)")


def test_5_every_dashboard_query_returns_data(observed_job: ObservedJob) -> None:
    prom = _prometheus(observed_job)
    end = _after_end_scraped(observed_job)
    start = observed_job.started - 5
    from infra.dashboards.generate import CUDA_ONLY

    queries = dashboard_queries()
    assert len(queries) >= 30
    job_names = {s["job"] for s in prom.series("up", start, end)}
    assert {"tuneforge", "tuneforge-trainer"} <= job_names

    # the job-id variable lists the job
    board = json.loads((DASHBOARDS / "tuneforge-job.json").read_text())
    variable = next(v for v in board["templating"]["list"] if v["name"] == "job_id")
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    assert observed_job.job_id in prom.label_values(match.group(2), match.group(1), start, end)

    cuda_job = any((e.get("data") or {}).get("device") not in (None, "cpu") for e in _all_events(observed_job)
                   if e["message"].startswith("Trainer starting"))
    empty, skipped = [], []
    for board_name, title, ref, expr in queries:
        promql = _substitute(expr, observed_job.job_id, end - start)
        assert "$" not in promql, f"unsubstituted variable in {board_name} / {title}: {promql}"
        names = set(METRIC_NAME.findall(promql))
        assert names, promql
        if names <= CUDA_ONLY and not cuda_job:
            # the query must still be valid PromQL (status success), but a CPU trainer exports no CUDA series
            prom.query_range(promql, start, end, step=1)
            skipped.append(f"{board_name} / {title} [{ref}]")
            continue
        for name in names - CUDA_ONLY:  # every metric a panel names exists (no typo hides behind `or vector(0)`)
            assert prom.series(name, start, end), f"{board_name} / {title}: no series named {name}"
        result = prom.query_range(promql, start, end, step=1)
        if not any(series["values"] for series in result):
            empty.append(f"{board_name} / {title} [{ref}]: {promql}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    # only GPU series may lack data, and only without a GPU
    assert len(skipped) <= 6, skipped
    print(f"{len(queries)} dashboard queries checked; CUDA-only, not checked for data on this CPU: {skipped}")
