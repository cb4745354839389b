"""Status changes are compare-and-sets: a write decided on a stale look at a job loses, and the user's cancel
wins every race with the executor (fault 4 of issue 13: an executor's "running" landed after the cancel and
left the job running forever, with ``finished_at`` set, holding a quota slot)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import httpx
import pytest

from tests.service.helpers import chat_file, create_job, upload
from tests.support.live_server import ThreadServer
from tests.support.waiting import wait_for
from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.finish import finish_job
from tuneforge.service.domain.lifecycle import transition


def _stale(server: ThreadServer, job_id: str) -> tuple[Any, Job]:
    """A session that has looked at the job (as an executor's tick does) and still holds that copy."""
    session = server.state.sessions()
    job = SystemRepo(session).job(job_id)
    assert job is not None
    return session, job


def _statuses(client: httpx.Client, job_id: str) -> list[str]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 100}).json()
    return [e["data"]["status"] for e in events["data"] if (e.get("data") or {}).get("status")]


def test_an_executor_write_decided_before_the_cancel_loses(api_server: ThreadServer, client: httpx.Client) -> None:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    session, job = _stale(api_server, job_id)
    try:
        assert transition(session, job, "queued", "Validated training files; job queued")
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        # the executor's tick still believes "queued" and starts the job: it must lose, and write nothing
        assert not transition(session, job, "running", "Fine-tuning job started")
        assert job.status == "cancelled"  # the loser now sees what won
        session.expire(job)
        job.status = "queued"  # a copy as stale as before, with the fields a start writes along
        assert not transition(session, job, "running", "Fine-tuning job started",
                              fields={"attempts": 1, "token_hash": "x" * 64})
        session.commit()
    finally:
        session.close()
    final = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert final["status"] == "cancelled" and final["finished_at"] is not None
    assert final["attempts"] == 0
    assert _statuses(client, job_id) == ["validating_files", "queued", "cancelled"]


def test_a_trainer_exit_after_the_cancel_does_not_make_the_job_succeed(api_server: ThreadServer,
                                                                      client: httpx.Client) -> None:
    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    session, job = _stale(api_server, job_id)
    try:
        assert transition(session, job, "queued", "queued")
        assert transition(session, job, "running", "started")
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        # the exit is handled with the copy read before the cancel: it must not turn the job into anything
        finish_job(session, job, api_server.state.store, exit_code=ExitCode.PREEMPTED, cancelled=False,
                   max_attempts=3, fallback_message=None)
        assert job.status == "cancelled"
    finally:
        session.close()
    final = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None
    assert _statuses(client, job_id) == ["validating_files", "queued", "running", "cancelled"]


def test_cancel_wins_when_the_job_moved_after_the_user_looked(api_server: ThreadServer, client: httpx.Client) -> None:
    """The other order: the cancel's look is the stale one (queued), the executor started the job meanwhile.
    The cancel's compare-and-set fails once, looks again, and cancels the running job."""
    from tuneforge.service.db.repo import TenantRepo
    from tuneforge.service.domain import jobs as job_actions

    job_id = create_job(client, upload(client, chat_file())["id"])["id"]
    with api_server.state.sessions() as executor_session:
        job = SystemRepo(executor_session).job(job_id)
        assert job is not None and transition(executor_session, job, "queued", "queued")
    with api_server.state.sessions() as user_session:
        repo = TenantRepo(user_session, "default")
        stale = repo.get_job(job_id)  # the user's request looked: queued
        with api_server.state.sessions() as executor_session:
            job = SystemRepo(executor_session).job(job_id)
            assert job is not None and transition(executor_session, job, "running", "started")
        assert stale.status == "queued"
        cancelled = job_actions.cancel(repo, None, job_id)
        assert cancelled.status == "cancelled"
    assert _statuses(client, job_id) == ["validating_files", "queued", "running", "cancelled"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)
def test_the_users_cancel_wins_every_race_with_dispatch(server: ThreadServer) -> None:
    """Many rounds of create → cancel after a random delay while the real local executor validates, queues and
    starts the real trainer: every job ends cancelled, stays cancelled, and no trainer is left running."""
    rng = random.Random(13)
    rounds = 40
    pids: list[int] = []
    with server.client() as client:
        file_id = upload(client, chat_file())["id"]
        jobs = []
        for _ in range(rounds):
            job_id = create_job(client, file_id)["id"]
            time.sleep(rng.uniform(0, 0.25))  # lands before, during or after validation, queueing, the start
            run = server.state.executor.running.get(job_id)
            if run is not None:
                pids.append(run.process.pid)
            response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
            jobs.append(job_id)

        def settled() -> bool:
            return not server.state.executor.running and all(not _pid_alive(p) for p in pids)

        wait_for("every trainer to stop", settled, timeout=120)
        time.sleep(1)  # a few more executor ticks: nothing may move a cancelled job again
        for job_id in jobs:
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert job["status"] == "cancelled", job
            assert job["finished_at"] is not None
            statuses = _statuses(client, job_id)
            assert statuses[-1] == "cancelled" and statuses.count("cancelled") == 1, statuses
        with server.state.sessions() as session:
            rows = [SystemRepo(session).job(j) for j in jobs]
            assert all(r is not None and r.pid is None for r in rows)
