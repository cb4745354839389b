"""Where a keyed request's CPU goes: the database work of a route, measured in-process, against what the same
route costs the running service (issue #13's get target).

For each route, two figures side by side:

- ``db_us``: the route's database work alone, in this process, as the route does it (a session from the service's
  own session factory, the same repository calls, closed), best of 5 x ``--repeat`` calls, CPU time;
- ``service_cpu_ms``: the CPU time the service process (one uvicorn worker, ``bench/control_plane.py``'s server)
  spends per request of that route, one client, sequential requests.

The baseline is ``/healthz`` (no key, no database). ``/readyz`` adds only a session and ``SELECT 1``; a get adds the
key lookup and the job query. The difference between the service's cost and the database work is the
per-request machinery (thread-pool hand-offs, dependency scopes, middleware).

    PYTHONPATH=service:operator:trainer_image:. .venv/bin/python bench/request_costs.py \\
        [--jobs 2000] [--seconds 3] [--repeat 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import control_plane as cp  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from tuneforge.service.core.security import hash_secret  # noqa: E402
from tuneforge.service.db.repo import SystemRepo, TenantRepo  # noqa: E402
from tuneforge.service.db.session import make_session_factory  # noqa: E402


def cpu_us(call: Callable[[], Any], repeat: int) -> float:
    """Best of five runs of ``repeat`` calls: CPU microseconds per call."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            call()
        best = min(best, (time.process_time() - started) / repeat)
    return best * 1e6


def database_work(engine: Engine, job_id: str, repeat: int) -> dict[str, float]:
    sessions = make_session_factory(engine)
    key_hash = hash_secret(cp.API_KEY)

    def readyz() -> None:
        with sessions() as session:
            session.execute(text("SELECT 1"))

    def get_job() -> None:
        with sessions() as session:
            found = SystemRepo(session).key_for_hash(key_hash)
            assert found is not None
            TenantRepo(session, found[0].tenant_id).get_job(job_id)

    return {"/healthz": 0.0, "/readyz": cpu_us(readyz, repeat), "get job": cpu_us(get_job, repeat)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuneforge-request-costs-"))
    url = f"sqlite:///{work / 'tuneforge.db'}"
    engine = cp.make_engine(url)
    cp.init_db(engine)
    cp.seed(engine, range(args.jobs), args.jobs, 0)
    job_id = cp._job_id(args.jobs // 2)
    server = cp.ProcessServer(work / "home", log_level="warning", env={
        "TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_API_KEY": cp.API_KEY, "TUNEFORGE_METRICS_TOKEN": cp.METRICS_TOKEN,
        "TUNEFORGE_EXECUTOR": "none"}).start()
    try:
        assert server.proc is not None
        auth = {"Authorization": f"Bearer {cp.API_KEY}"}
        routes: cp.Routes = [("/healthz", cp._cycle(["/healthz"]), {}, 1),
                             ("/readyz", cp._cycle(["/readyz"]), {}, 1),
                             ("get job", cp._cycle([f"/v1/fine_tuning/jobs/{job_id}"]), auth, 1)]
        measured = asyncio.run(cp.measure(server.url, routes + routes, args.seconds, 1, server.proc.pid))
    finally:
        server.stop()
    try:
        db = database_work(engine, job_id, args.repeat)  # the service has stopped: this process has the machine
    finally:
        engine.dispose()

    rows = []
    for route, *_ in routes:
        runs = [r for r in measured if r.route == route]
        service_ms = sum(r.cpu_ms for r in runs) / len(runs)
        rows.append({"route": route, "rps": round(sum(r.rps for r in runs) / len(runs), 1),
                     "service_cpu_ms": round(service_ms, 3), "db_us": round(db[route], 1)})
    base = rows[0]["service_cpu_ms"]
    print("| route (1 client) | req/s | service CPU ms/req | ÷ `/healthz` | its database work, in-process | "
          "the rest, over `/healthz` |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        rest = row["service_cpu_ms"] - base - row["db_us"] / 1000
        row["rest_over_healthz_ms"] = round(rest, 3)
        # a short run can spend less than a clock tick on /healthz: no ratio then
        ratio = f"{row['service_cpu_ms'] / base:.2f}" if base else "-"
        print(f"| {row['route']} | {row['rps']:,.1f} | {row['service_cpu_ms']} | {ratio} | "
              f"{row['db_us'] / 1000:.3f} ms | {rest:.3f} ms |")
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "routes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
