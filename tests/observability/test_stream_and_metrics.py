"""The SSE stream and /metrics against the executor-less server, with progress posted by the test through the
trainer's real progress route (per-job token): fast and deterministic, no training."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port
from tuneforge.service.core.security import hash_secret
from tuneforge.service.db.repo import SystemRepo

pytestmark = pytest.mark.timeout(120)
TOKEN = "job-token-for-tests"
OTHER_KEY = "tf-observability-other-tenant-0123456789"


@pytest.fixture
def client(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with api_server.client() as c:
        yield c


def _running_job(server: ThreadServer, client: httpx.Client) -> str:
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    file = client.post("/v1/files", files={"file": ("t.jsonl", (line + "\n") * 3)}, data={"purpose": "fine-tune"})
    assert file.status_code == 200, file.text
    job = client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                    "training_file": file.json()["id"]})
    assert job.status_code == 200, job.text
    job_id = str(job.json()["id"])
    with server.state.sessions() as session:
        row = SystemRepo(session).job(job_id)
        assert row is not None
        row.status, row.token_hash, row.started_at = "running", hash_secret(TOKEN), int(time.time()) - 30
        row.resources = {"gpus": 2, "nodes": 1}
        session.commit()
    return job_id


def _post(server: ThreadServer, job_id: str, seq: int, **data: Any) -> None:
    event = {"kind": "metrics", "seq": seq, "data": {"total_steps": 100, **data}}
    # 30 s, not httpx's 5: on a loaded machine a progress post next to 20 open streams took longer (CI, once)
    response = httpx.post(f"{server.url}/internal/v1/jobs/{job_id}/progress", json={"events": [event]},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text


class StreamReader:
    """Reads a stream in a thread (httpx-sse), putting its events on a queue as ``{event, data, id}``;
    ``close()`` drops the connection."""

    def __init__(self, server: ThreadServer, job_id: str, last_id: str | None = None, key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key or server.api_key}"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=30))
        self.request = self.client.build_request(
            "GET", f"{server.url}/v1/fine_tuning/jobs/{job_id}/events/stream", headers=headers,
            params={"heartbeat": 0.5})
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            response = self.client.send(self.request, stream=True)
            self.status = response.status_code
            for sse in EventSource(response).iter_sse():
                if self.stop.is_set():
                    break
                self.frames.put({"event": sse.event, "data": sse.data, "id": sse.id})
            response.close()
        except httpx.HTTPError:
            pass
        finally:
            self.frames.put({"event": "<closed>", "data": "", "id": None})

    def events(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if frame["event"] == "message" and frame["data"]:
                out.append(frame)
            elif frame["event"] in ("end", "<closed>"):
                out.append(frame)
                break
        return out

    def close(self) -> None:
        self.stop.set()
        self.client.close()
        self.thread.join(timeout=10)


def test_reconnect_with_last_event_id_gets_every_event_exactly_once(
    api_server: ThreadServer, client: httpx.Client
) -> None:
    job_id = _running_job(api_server, client)
    seen: list[str] = []

    before = len(client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"])
    reader = StreamReader(api_server, job_id)
    first = reader.events(before)  # the backlog
    for step in range(1, 3):
        _post(api_server, job_id, step, step=step, train_loss=3.0 - step / 10)
    first += reader.events(2)  # live
    assert [f["event"] for f in first] == ["message"] * (before + 2)
    seen += [f["id"] for f in first]
    reader.close()  # the client goes away mid-job

    # events keep coming while nobody listens
    for step in range(3, 6):
        _post(api_server, job_id, step, step=step, train_loss=3.0 - step / 10)

    reader = StreamReader(api_server, job_id, last_id=seen[-1])
    for step in range(6, 8):
        _post(api_server, job_id, step, step=step, train_loss=3.0 - step / 10)
    got = reader.events(5)
    seen += [f["id"] for f in got]
    reader.close()

    # a third connection, then the job ends: the stream closes by itself after the last event
    reader = StreamReader(api_server, job_id, last_id=seen[-1])
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    rest = reader.events(50)
    assert rest[-1]["event"] == "end" and json.loads(rest[-1]["data"]) == {"status": "cancelled"}
    seen += [f["id"] for f in rest if f["event"] == "message"]
    reader.thread.join(timeout=10)
    assert not reader.thread.is_alive(), "the stream did not close after the end"
    reader.close()

    listing = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 100}).json()
    assert seen == [e["id"] for e in listing["data"]]
    assert len(seen) == len(set(seen)) == before + 7 + 1


def test_stream_auth_heartbeats_and_tenancy(api_server: ThreadServer, client: httpx.Client) -> None:
    job_id = _running_job(api_server, client)
    url = f"{api_server.url}/v1/fine_tuning/jobs/{job_id}/events/stream"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    missing = client.get("/v1/fine_tuning/jobs/ftjob-nope/events/stream")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "fine_tuning_job_not_found"
    with api_server.state.sessions() as session:
        SystemRepo(session).add_api_key("acme", hash_secret(OTHER_KEY))
    foreign = httpx.get(url, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert foreign.status_code == 404 and job_id in foreign.json()["error"]["message"]
    foreign = httpx.get(f"{api_server.url}/v1/fine_tuning/jobs/{job_id}/events",
                        params={"stream": "true"}, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert foreign.status_code == 404

    # nothing new for a while: keep-alive comments (which SSE parsers drop: read the raw lines)
    comments = 0
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {api_server.api_key}"},
                      params={"heartbeat": 0.5}, timeout=10) as response:
        assert response.headers["cache-control"] == "no-cache"
        for line in response.iter_lines():
            if line == ": keep-alive":
                comments += 1
                if comments == 2:
                    break
    assert comments == 2


def _metrics(server: ThreadServer, token: str | None = "", **headers: str) -> str:
    """A scrape with the server's metrics token ("" : the server's own; None: no credentials)."""
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token or server.state.metrics_token}")
    response = httpx.get(f"{server.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_follow_the_job_and_drop_its_series_when_it_ends(
    api_server: ThreadServer, client: httpx.Client
) -> None:
    job_id = _running_job(api_server, client)
    _post(api_server, job_id, 1, step=7, train_loss=2.5, valid_loss=2.75, learning_rate=1e-4,
          tokens_per_second=321.5, eta_seconds=42, gpu_memory_bytes=123456789, trained_tokens=999)
    text = _metrics(api_server)
    labels = f'job_id="{job_id}",method="supervised",tenant="default"'
    assert _samples(text, "tuneforge_job_step") == {f"tuneforge_job_step{{{labels}}}": 7.0}
    for name, value in (("train_loss", 2.5), ("valid_loss", 2.75), ("learning_rate", 1e-4),
                        ("tokens_per_second", 321.5), ("eta_seconds", 42), ("gpu_memory_bytes", 123456789),
                        ("total_steps", 100), ("trained_tokens", 999), ("progress_ratio", 0.07)):
        assert _samples(text, f"tuneforge_job_{name}") == {f"tuneforge_job_{name}{{{labels}}}": value}, name
    assert _samples(text, "tuneforge_jobs")['tuneforge_jobs{method="supervised",status="running"}'] == 1
    assert _samples(text, "tuneforge_queue_depth") == {"tuneforge_queue_depth": 0}
    gpu_s = _samples(text, "tuneforge_tenant_gpu_seconds_total")['tuneforge_tenant_gpu_seconds_total{tenant="default"}']
    assert 2 * 29 <= gpu_s <= 2 * 60  # running for ~30 s on 2 GPUs
    assert _samples(text, "tuneforge_tenant_jobs_total") == {'tuneforge_tenant_jobs_total{tenant="default"}': 1}

    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    text = _metrics(api_server)
    assert job_id not in text  # no label of an ended job survives
    assert _samples(text, "tuneforge_jobs_finished_total")[
        'tuneforge_jobs_finished_total{method="supervised",status="cancelled"}'] == 1
    # request metrics: route templates, bounded; unknown paths share one label value
    httpx.get(f"{api_server.url}/no/such/path/{job_id}")
    text = _metrics(api_server)
    requests = _samples(text, "tuneforge_http_requests_total")
    assert requests['tuneforge_http_requests_total{method="POST",route="/v1/fine_tuning/jobs/{job_id}/cancel",'
                    'status="200"}'] == 1
    assert requests['tuneforge_http_requests_total{method="GET",route="<unmatched>",status="404"}'] >= 1
    assert job_id not in text
    assert "tuneforge_http_request_duration_seconds_bucket" in text


def test_metrics_without_the_token_name_no_organization_and_no_job(api_server: ThreadServer,
                                                                    client: httpx.Client) -> None:
    """Anyone who reaches /metrics sees the fleet (jobs by status, the queue, requests), never an organization's
    name, a job id or a tenant's GPU-seconds; the metrics token sees those too; a wrong token is a 401."""
    job_id = _running_job(api_server, client)
    _post(api_server, job_id, 1, step=3, train_loss=2.5)
    public = _metrics(api_server, token=None)
    assert _samples(public, "tuneforge_jobs")['tuneforge_jobs{method="supervised",status="running"}'] == 1
    assert "tuneforge_queue_depth 0.0" in public and "tuneforge_http_requests_total" in public
    assert job_id not in public and "tenant=" not in public and 'tenant="default"' not in public
    assert "tuneforge_tenant_" not in public and "tuneforge_job_step" not in public
    private = _metrics(api_server)
    assert f'job_id="{job_id}"' in private and 'tuneforge_tenant_gpu_seconds_total{tenant="default"}' in private
    for header in ("Bearer wrong", "Basic abc", "Bearer"):
        wrong = httpx.get(f"{api_server.url}/metrics", headers={"Authorization": header})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key", header
        assert job_id not in wrong.text
    # the generated token is the home's, private to its owner
    token_file = api_server.settings.home / "metrics_token"
    assert token_file.read_text().strip() == api_server.state.metrics_token
    assert token_file.stat().st_mode & 0o077 == 0


def test_a_configured_metrics_token_is_the_one_required(tmp_path: Any, database_url: str) -> None:

    settings = make_settings(tmp_path / "home", free_port(), database_url=database_url)
    settings = settings.model_copy(update={"auth": settings.auth.model_copy(update={"metrics_token": "scrape-secret"})})
    server = ThreadServer(settings, start_executor=False).start()
    try:
        assert not (settings.home / "metrics_token").exists()
        assert "tuneforge_tenant_jobs_total" in _metrics(server, "scrape-secret")
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer x"}).status_code == 401
        assert "tuneforge_tenant_" not in _metrics(server, None)
    finally:
        server.stop()


def test_a_scrape_reads_a_few_rows_not_every_job(api_server: ThreadServer, client: httpx.Client) -> None:
    """Finished jobs are counted by the transition that ends them (job_usage): a scrape reads the jobs that have
    not ended and a few totals per tenant, and its statements do not grow with the jobs table."""
    from sqlalchemy import event

    file_id = client.post("/v1/files", files={"file": ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
                          data={"purpose": "fine-tune"}).json()["id"]
    ended = []
    for _ in range(6):
        job = client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id})
        ended.append(job.json()["id"])
        assert client.post(f"/v1/fine_tuning/jobs/{ended[-1]}/cancel").status_code == 200
    statements: list[str] = []
    executed: list[tuple[str, Any]] = []
    scraping: set[int] = set()  # the thread that ran the scrape's statements
    checkouts: list[int] = []
    engine = api_server.state.engine

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        # background loops' polls, not the scrape: the webhook sender's, the feedback rounds' and the job evals'
        if not any(poll in statement for poll in ("FROM webhook_deliveries", "FROM feedback_rounds", "evals_state")):
            statements.append(statement)
            executed.append((statement, parameters))
            scraping.add(threading.get_ident())

    def checkout(*args: Any) -> None:
        checkouts.append(threading.get_ident())

    event.listen(engine, "after_cursor_execute", count)
    event.listen(engine.pool, "checkout", checkout)
    try:
        text = _metrics(api_server)
    finally:
        event.remove(engine, "after_cursor_execute", count)
        event.remove(engine.pool, "checkout", checkout)
    # one session, one connection from the pool, for the whole scrape (each checkout is a pre-ping round trip
    # on PostgreSQL: three of them made /metrics 2-3x slower there, issue #13's benchmark)
    (thread,) = scraping
    assert checkouts.count(thread) == 1, checkouts
    assert _samples(text, "tuneforge_jobs_finished_total")[
        'tuneforge_jobs_finished_total{method="supervised",status="cancelled"}'] == 6
    assert _samples(text, "tuneforge_tenant_jobs_total") == {'tuneforge_tenant_jobs_total{tenant="default"}': 6}
    # the fleet's few aggregates and the unfinished jobs, the eval runs and the feedback campaigns by status: a
    # fixed number
    assert len(statements) <= 5, statements
    # no statement reads the jobs table without a filter on the status (the finished ones are never read)
    for statement in statements:
        if "FROM jobs" in statement:
            assert "status" in statement.split("WHERE", 1)[-1], statement
    # ... and that filter searches an index: a status NOT IN (the finished ones) read the whole table on every
    # scrape (issue #13's benchmark: 24 ms of a scrape at 10,000 jobs)
    for statement, parameters in executed:
        if "FROM jobs" in statement:
            assert not _scans_jobs(engine, statement, parameters), statement


def _scans_jobs(engine: Any, statement: str, parameters: Any) -> bool:
    """Whether the database plans to read the whole jobs table for this statement (PostgreSQL is told to avoid
    that wherever an index can answer: with tiny test tables it would scan anyway)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            return any(step.startswith("SCAN jobs") for step in plan)
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
        return any("Seq Scan on jobs" in step for step in plan)


def test_ui_is_served_without_a_key_but_holds_no_data(api_server: ThreadServer) -> None:
    page = httpx.get(f"{api_server.url}/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    script = httpx.get(f"{api_server.url}/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "Authorization" in script.text and "Last-Event-ID" in script.text
    assert httpx.get(f"{api_server.url}/ui/style.css").status_code == 200
    assert httpx.get(f"{api_server.url}/ui/..%2Fapi%2Fapp.py").status_code == 404
    assert httpx.get(f"{api_server.url}/ui/secrets.txt").status_code == 404
