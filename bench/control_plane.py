"""Control plane: req/s and p50/p99 of the read routes of one real service process, against its own ``/healthz``.

The server is ``python -m tuneforge.service.cli.main serve`` (one uvicorn worker, executor off, the service's
default log level), exactly as the tests' ``ProcessServer`` starts it, on SQLite and on a real PostgreSQL (Debian's
package, ``tests/support/postgres.py``). Its database is seeded by bulk inserts through the ORM models: ``--jobs``
jobs over four organizations (the benchmark's key belongs to ``default``, 40% of the jobs), mostly finished (a few
active ones per 500, as quotas keep them), 60% with metadata ``{"team": "search"|"ads", "run": …}`` (the filter
``{"team": "search"}`` matches 30%), and ``--events`` events:
a fifth of them on one job (the events pages read it), the rest spread over all jobs; ``job_usage`` is filled as
the jobs' ends would have filled it.

Each route runs for ``--seconds`` with ``--clients`` concurrent keep-alive connections (httpx async, one process;
the client's own cost is in every figure, ``/healthz``'s too), after a short warm-up. ``/healthz`` (no database, no
key) runs first and last; the baseline is both runs together, and every route is printed as req/s ÷ healthz and
p99 ÷ healthz. ``/metrics`` is scraped by one client, as Prometheus does (a scrape's latency, not a queue of
them), against ``/healthz`` by one client measured right before. Listing is measured twice: at a tenth of the jobs
and events, then (rows added to the same database while the server runs) at the full size, so the table-size ratio
compares the same server.

Every route also records the CPU time the service process spent per request (``/proc/<pid>/stat``, all its
threads; PostgreSQL's own processes are not counted): unlike req/s it hardly moves with whatever else the machine
runs, so an A/B of two commits on a shared machine reads it first.

    PYTHONPATH=service:operator:trainer_image:. .venv/bin/python bench/control_plane.py \\
        [--backend sqlite|postgresql|both] [--jobs 10000] [--events 100000] [--seconds 5] [--clients 4] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for part in ("service", "operator", "trainer_image", "."):
    if str(REPO / part) not in sys.path:
        sys.path.insert(0, str(REPO / part))

import httpx  # noqa: E402
from sqlalchemy import Engine, insert, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402
from tests.support.live_server import ProcessServer  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.waiting import free_port  # noqa: E402

from tuneforge.contracts.status import JobStatus  # noqa: E402
from tuneforge.service.db.models import Job, JobEvent, JobUsage, Tenant  # noqa: E402
from tuneforge.service.db.session import init_db, make_engine  # noqa: E402

API_KEY = "sk-tf-bench-" + "k" * 40
METRICS_TOKEN = "bench-metrics-token-" + "m" * 20
#: the benchmark's organization (its key's) first: it holds two jobs in five
TENANTS = ("default", "default", "acme", "globex", "initech")
TEAMS = ("search", "ads")
METHODS = ("supervised", "supervised", "supervised", "dpo", "reinforcement")
T0 = 1_780_000_000
#: the share of the events that go to the one job whose events are paged
BIG_JOB_SHARE = 5
#: the metadata filter the listing is measured with: it matches 30% of the organization's jobs, so that at a tenth of
#: the rows (400 of the organization's jobs) a page of 100 is still full and the two sizes do the same work
FILTER = json.dumps({"team": "search"})
ONE_CLIENT_HEALTHZ = "healthz (1 client)"
LIST_ROUTES = ("list limit=20", "list limit=100", "list limit=20 metadata", "list limit=100 metadata")
# issue #13's targets
GET_MIN_RPS, GET_MAX_P99_MS, GET_MIN_HEALTHZ_SHARE, METRICS_MAX_P99_MS = 1500.0, 25.0, 0.5, 20.0
#: listing counts as independent of the table's size when 10x the rows keep this share of the req/s
SIZE_MIN_RATIO = 0.8


# -- the database ------------------------------------------------------------------------------------------------

def _job_id(i: int) -> str:
    return f"ftjob-{i:08d}{random.Random(i).getrandbits(64):016x}"


def _method(kind: str) -> dict[str, Any]:
    hyper: dict[str, Any] = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    if kind == "dpo":
        hyper |= {"beta": 0.1}
    if kind == "reinforcement":
        hyper |= {"reasoning_effort": "medium", "compute_multiplier": 1.0, "eval_interval": 10, "eval_samples": 4}
        return {"type": kind, kind: {"hyperparameters": hyper, "grader": {
            "type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "operation": "eq"}}}
    return {"type": kind, kind: {"hyperparameters": hyper}}


def _status(i: int, rng: random.Random) -> str:
    if i % 500 == 499:  # a few active jobs (quotas bound them), cycling through the non-terminal statuses
        return (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.VALIDATING_FILES)[(i // 500) % 4]
    roll = rng.random()
    return JobStatus.SUCCEEDED if roll < 0.7 else JobStatus.FAILED if roll < 0.9 else JobStatus.CANCELLED


def job_row(i: int) -> dict[str, Any]:
    """The i-th job: the fields a created and (mostly) finished job has, with JSON of realistic size."""
    rng = random.Random(i)
    job_id, tenant, kind = _job_id(i), TENANTS[i % len(TENANTS)], METHODS[i % len(METHODS)]
    status = _status(i, rng)
    method = _method(kind)
    created = T0 + i * 60
    finished = created + 600 + rng.randrange(3600) if status in (
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) else None
    metadata = {"team": TEAMS[rng.randrange(len(TEAMS))], "run": f"r{i}"} if rng.random() < 0.6 else None
    adapter = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    resources = {"gpus": 1, "gpu_type": "", "memory": "", "cpu": ""}
    succeeded = status == JobStatus.SUCCEEDED
    return {
        "id": job_id, "tenant_id": tenant, "status": str(status), "model": "SmolLM2-135M-Instruct",
        "method": method, "hyperparameters": method[kind]["hyperparameters"], "adapter": adapter,
        "resources": resources, "training_file": f"file-{i:024x}", "validation_file": None, "suffix": None,
        "seed": i, "job_metadata": metadata, "idempotency_key": None, "token_hash": "",
        "spec": {"version": 2, "job_id": job_id, "tenant": tenant, "model": "SmolLM2-135M-Instruct",
                 "method": method, "adapter": adapter, "resources": resources, "seed": i,
                 "data": {"train": f"files/{tenant}/file-{i:024x}.jsonl", "validation": None},
                 "output": {"prefix": f"jobs/{job_id}", "checkpoint_every_steps": 50, "keep_checkpoints": 3},
                 "integrations": []},
        "fine_tuned_model": f"ft:SmolLM2-135M-Instruct:{tenant}::{job_id[6:14]}" if succeeded else None,
        "result_files": [f"file-result-{i:08d}"] if succeeded else [],
        "trained_tokens": 100_000 + rng.randrange(900_000) if succeeded else None,
        "error": {"code": "trainer_failed", "message": "The trainer exited with code 1", "param": None}
        if status == JobStatus.FAILED else None,
        "progress": {"step": 120, "total_steps": 120, "train_loss": 1.25, "tokens_per_second": 1375.5}
        if finished else {}, "last_seq": 0, "attempts": 1 if finished else 0, "created_at": created,
        "started_at": created + 5 if finished or status == JobStatus.RUNNING else None, "finished_at": finished,
        "gpu_seconds": float(finished - created) if finished else 0.0,
    }


def event_rows(jobs: list[dict[str, Any]], big: dict[str, Any], count: int, first: int) -> Iterator[dict[str, Any]]:
    """``count`` events: a fifth on ``big``, the rest round-robin over ``jobs``; ids numbered from ``first``."""
    for n in range(count):
        job = big if n % BIG_JOB_SHARE == 0 else jobs[n % len(jobs)]
        k = first + n
        metrics = k % 3 == 0
        yield {"id": f"ftevent-{k:010d}", "job_id": job["id"], "tenant_id": job["tenant_id"],
               "created_at": job["created_at"] + k % 600, "level": "info", "type": "metrics" if metrics else "message",
               "message": f"Step {k % 120}/120: training loss={1.5 - (k % 120) / 200:.4f}" if metrics
               else f"Checkpoint saved at step {k % 120}",
               "data": {"step": k % 120, "train_loss": 1.5 - (k % 120) / 200, "learning_rate": 2e-4} if metrics
               else None}


def _chunks(rows: Iterator[dict[str, Any]] | list[dict[str, Any]], size: int = 2000) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def seed(engine: Engine, jobs: range, events: int, first_event: int) -> None:
    """Insert the jobs ``jobs`` and ``events`` events (bulk ORM inserts), and count finished jobs in job_usage."""
    rows = [job_row(i) for i in jobs]
    big = job_row(0)  # the paged job: the first of the benchmark's organization
    with Session(engine) as session:
        known = {t for (t,) in session.execute(text("SELECT id FROM tenants"))}
        missing = [{"id": t, "name": t, "created_at": T0} for t in dict.fromkeys(TENANTS) if t not in known]
        if missing:
            session.execute(insert(Tenant), missing)
        for chunk in _chunks(rows):
            session.execute(insert(Job), chunk)
        for chunk in _chunks(event_rows(rows, big, events, first_event)):
            session.execute(insert(JobEvent), chunk)
        usage: dict[tuple[str, str, str], list[int]] = {}
        for row in rows:
            if row["finished_at"] is not None:
                entry = usage.setdefault((row["tenant_id"], row["status"], row["method"]["type"]), [0, 0, 0])
                entry[0] += 1
                entry[1] += row["finished_at"] - row["created_at"]
                entry[2] += int(row["gpu_seconds"])
        for (tenant, status, method), (n, seconds, gpu) in usage.items():
            updated = session.execute(text(
                "UPDATE job_usage SET jobs = jobs + :n, job_seconds = job_seconds + :s, gpu_seconds = gpu_seconds + :g"
                " WHERE tenant_id = :t AND status = :st AND method = :m"),
                {"n": n, "s": seconds, "g": gpu, "t": tenant, "st": status, "m": method})
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                session.execute(insert(JobUsage).values(tenant_id=tenant, status=status, method=method, jobs=n,
                                                        job_seconds=seconds, gpu_seconds=gpu))
        session.commit()
    if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))


# -- the load ----------------------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    route: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    #: CPU seconds the service process spent meanwhile: what a route costs, whatever else the machine runs
    server_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu_s * 1000 / max(1, len(self.latencies))

    def row(self) -> dict[str, Any]:
        return {"route": self.route, "requests": len(self.latencies), "rps": round(self.rps, 1),
                "p50_ms": round(percentile(self.latencies, 50) * 1000, 2),
                "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
                "cpu_ms_per_request": round(self.cpu_ms, 3)}


async def _drive(client: httpx.AsyncClient, paths: Callable[[], str], seconds: float, clients: int,
                 headers: dict[str, str], route: str) -> Result:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.get(paths(), headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{route}: HTTP {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return Result(route, time.perf_counter() - started, latencies)


#: (name, the next path, headers, concurrent clients: None for --clients)
Routes = list[tuple[str, Callable[[], str], dict[str, str], int | None]]


async def measure(url: str, routes: Routes, seconds: float, clients: int, pid: int) -> list[Result]:
    """Each route for ``seconds`` after a warm-up of a tenth of that (at least 20 requests), one after another;
    ``pid`` is the service's process, whose CPU time each route's requests cost."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        results = []
        for route, paths, headers, concurrency in routes:
            await _drive(client, paths, max(seconds / 10, 0.05), concurrency or clients, headers, route)
            cpu_before = process_cpu_seconds(pid)
            results.append(await _drive(client, paths, seconds, concurrency or clients, headers, route))
            results[-1].server_cpu_s = process_cpu_seconds(pid) - cpu_before
            print(f"  {route:<28} {results[-1].rps:8.1f} req/s", file=sys.stderr, flush=True)
        return results


def _cycle(paths: list[str]) -> Callable[[], str]:
    it = itertools.cycle(paths)
    return lambda: next(it)


def healthz() -> Routes:
    return [("healthz", _cycle(["/healthz"]), {}, None)]


def list_routes(auth: dict[str, str]) -> Routes:
    jobs = "/v1/fine_tuning/jobs"
    meta = httpx.QueryParams({"metadata": FILTER})
    return [
        ("list limit=20", _cycle([f"{jobs}?limit=20"]), auth, None),
        ("list limit=100", _cycle([f"{jobs}?limit=100"]), auth, None),
        ("list limit=20 metadata", _cycle([f"{jobs}?limit=20&{meta}"]), auth, None),
        ("list limit=100 metadata", _cycle([f"{jobs}?limit=100&{meta}"]), auth, None),
    ]


def all_routes(auth: dict[str, str], jobs: int, events: int) -> Routes:
    mine = [_job_id(i) for i in range(jobs) if TENANTS[i % len(TENANTS)] == "default"]
    sample = random.Random(13).sample(mine, min(len(mine), 500))
    big = f"/v1/fine_tuning/jobs/{_job_id(0)}/events"
    # an event of the paged job about halfway through its history: every BIG_JOB_SHARE-th event of each seeding
    # is the paged job's, and the second seeding numbers its events from the first one's count
    small_events = events // 10
    middle = small_events + (events - small_events) // BIG_JOB_SHARE // 2 * BIG_JOB_SHARE
    after = f"ftevent-{middle:010d}"
    return [
        ("get job", _cycle([f"/v1/fine_tuning/jobs/{j}" for j in sample]), auth, None),
        *list_routes(auth),
        ("events limit=20", _cycle([f"{big}?limit=20"]), auth, None),
        ("events limit=100", _cycle([f"{big}?limit=100"]), auth, None),
        ("events limit=100 after", _cycle([f"{big}?limit=100&after={after}"]), auth, None),
        # every succeeded job of the organization is a model, unpaged as in OpenAI's API (2,800 at 10,000 jobs)
        ("models", _cycle(["/v1/models"]), auth, None),
        (ONE_CLIENT_HEALTHZ, _cycle(["/healthz"]), {}, 1),
        ("metrics (public)", _cycle(["/metrics"]), {}, 1),
        ("metrics (token)", _cycle(["/metrics"]), {"Authorization": f"Bearer {METRICS_TOKEN}"}, 1),
    ]


# -- one backend ---------------------------------------------------------------------------------------------------

def _baseline(first: Result, last: Result) -> Result:
    return Result("healthz", first.seconds + last.seconds, first.latencies + last.latencies,
                  first.server_cpu_s + last.server_cpu_s)


def _with_ratios(result: Result, base: Result) -> dict[str, Any]:
    row = result.row()
    row["rps_vs_healthz"] = round(result.rps / base.rps, 3)
    row["p99_vs_healthz"] = round(percentile(result.latencies, 99) / percentile(base.latencies, 99), 2)
    # the CPU view of the same ratio: healthz's CPU per request over the route's (0.5: the route costs twice as much)
    row["cpu_vs_healthz"] = round(base.cpu_ms / result.cpu_ms, 3) if result.cpu_ms else None
    return row


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    postgres = PostgresServer(free_port()).start() if backend == "postgresql" else None
    url = postgres.url if postgres else f"sqlite:///{work / 'tuneforge.db'}"
    engine = make_engine(url)
    server = None
    try:
        init_db(engine)
        small_jobs, small_events = max(args.jobs // 10, 10), args.events // 10
        started = time.perf_counter()
        seed(engine, range(small_jobs), small_events, 0)
        seeded_small = time.perf_counter() - started
        server = ProcessServer(work / "home", log_level=args.log_level, env={
            "TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_API_KEY": API_KEY, "TUNEFORGE_METRICS_TOKEN": METRICS_TOKEN,
            "TUNEFORGE_EXECUTOR": "none"}).start()
        auth = {"Authorization": f"Bearer {API_KEY}"}
        print(f"{backend}: {small_jobs} jobs, {small_events} events (seeded in {seeded_small:.1f} s)",
              file=sys.stderr, flush=True)
        assert server.proc is not None
        pid = server.proc.pid
        small = asyncio.run(measure(server.url, healthz() + list_routes(auth) + healthz(), args.seconds,
                                    args.clients, pid))
        small_base = _baseline(small[0], small[-1])

        started = time.perf_counter()
        seed(engine, range(small_jobs, args.jobs), args.events - small_events, small_events)
        seeded = time.perf_counter() - started
        with engine.connect() as connection:
            counts = {t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                      for t in ("jobs", "job_events")}
        print(f"{backend}: {counts['jobs']} jobs, {counts['job_events']} events (added in {seeded:.1f} s)",
              file=sys.stderr, flush=True)
        full = asyncio.run(measure(server.url, healthz() + all_routes(auth, args.jobs, args.events) + healthz(),
                                   args.seconds, args.clients, pid))
        base = _baseline(full[0], full[-1])
    finally:
        if server is not None:
            server.stop()
        engine.dispose()
        if postgres is not None:
            postgres.stop()
    measured = [r for r in full[1:-1] if r.route != ONE_CLIENT_HEALTHZ]
    one_client = next(r for r in full if r.route == ONE_CLIENT_HEALTHZ)
    by_route = {r.route: r for r in measured}
    small_by_route = {r.route: r for r in small[1:-1]}
    size = []
    for route in LIST_ROUTES:
        at_small, at_full = small_by_route[route], by_route[route]
        size.append({"route": route, "rps_small": round(at_small.rps, 1), "rps_full": round(at_full.rps, 1),
                     "ratio": round(at_full.rps / at_small.rps, 3),
                     "ratio_vs_healthz": round((at_full.rps / base.rps) / (at_small.rps / small_base.rps), 3)})
    return {"backend": backend, "jobs": counts["jobs"], "events": counts["job_events"], "small_jobs": small_jobs,
            "small_events": small_events, "healthz": base.row(),
            "healthz_runs": [full[0].row(), full[-1].row()], "healthz_one_client": one_client.row(),
            "routes": [_with_ratios(r, one_client if r.route.startswith("metrics") else base) for r in measured],
            "size": size}


# -- the report ----------------------------------------------------------------------------------------------------

def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    get = next(r for r in result["routes"] if r["route"] == "get job")
    metrics = [r for r in result["routes"] if r["route"].startswith("metrics")]
    worst_size = min(s["ratio"] for s in result["size"])
    return [
        (f"get >= {GET_MIN_RPS:,.0f} req/s", get["rps"] >= GET_MIN_RPS, f"{get['rps']:,.1f} req/s"),
        (f"get p99 < {GET_MAX_P99_MS:.0f} ms", get["p99_ms"] < GET_MAX_P99_MS, f"{get['p99_ms']} ms"),
        (f"get >= {GET_MIN_HEALTHZ_SHARE} x healthz req/s", get["rps_vs_healthz"] >= GET_MIN_HEALTHZ_SHARE,
         f"{get['rps_vs_healthz']}"),
        (f"list at 10x rows keeps >= {SIZE_MIN_RATIO} of its req/s", worst_size >= SIZE_MIN_RATIO,
         f"worst {worst_size}"),
        (f"/metrics p99 < {METRICS_MAX_P99_MS:.0f} ms", all(m["p99_ms"] < METRICS_MAX_P99_MS for m in metrics),
         ", ".join(f"{m['p99_ms']} ms" for m in metrics)),
    ]


def report(result: dict[str, Any]) -> str:
    h = result["healthz"]
    lines = [f"## {result['backend']}: {result['jobs']:,} jobs, {result['events']:,} events",
             "", f"baseline /healthz: {h['rps']:,.1f} req/s, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms "
             f"(first run {result['healthz_runs'][0]['rps']:,.1f} req/s, "
             f"last {result['healthz_runs'][1]['rps']:,.1f}); "
             f"one client (the /metrics rows' baseline): {result['healthz_one_client']['rps']:,.1f} req/s, "
             f"p99 {result['healthz_one_client']['p99_ms']} ms",
             f"; /healthz costs the service {h['cpu_ms_per_request']} ms of CPU a request",
             "", "| route | req/s | p50 ms | p99 ms | req/s ÷ healthz | p99 ÷ healthz | service CPU ms/req | "
             "healthz CPU ÷ route CPU |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['route']} | {r['rps']:,.1f} | {r['p50_ms']} | {r['p99_ms']} | {r['rps_vs_healthz']} | "
              f"{r['p99_vs_healthz']} | {r['cpu_ms_per_request']} | {r['cpu_vs_healthz']} |"
              for r in result["routes"]]
    lines += ["", f"listing at {result['small_jobs']:,} vs {result['jobs']:,} jobs:", "",
              f"| route | req/s at {result['small_jobs']:,} | req/s at {result['jobs']:,} | ratio | ratio of "
              "÷ healthz |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s['route']} | {s['rps_small']:,.1f} | {s['rps_full']:,.1f} | {s['ratio']} | "
              f"{s['ratio_vs_healthz']} |" for s in result["size"]]
    lines += ["", "targets (issue #13):"]
    lines += [f"- {'met   ' if ok else 'MISSED'} {name}: {value}" for name, ok, value in targets(result)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per route")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="the server's (info: the service's default, one access-log line per request)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.jobs < 10 or args.events < 10 * BIG_JOB_SHARE:
        parser.error("--jobs must be at least 10 and --events at least 50")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = []
    print(f"control plane: {args.seconds:g} s per route, {args.clients} clients, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for backend in backends:
        work = Path(tempfile.mkdtemp(prefix=f"bench-control-plane-{backend}-"))
        try:
            result = run_backend(backend, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        results.append(result)
        print(report(result) + f"\n\nload average after: {' '.join(map(str, result['load_average_after']))}\n",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
