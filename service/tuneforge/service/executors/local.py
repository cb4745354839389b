"""Local executor: runs each job's trainer as a subprocess on this machine."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.contracts.jobspec import JobSpec
from tuneforge.contracts.status import JobStatus
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.security import hash_secret, new_job_token
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.finish import finish_job, requeue_or_fail
from tuneforge.service.domain.lifecycle import transition
from tuneforge.service.executors.base import run_until_stopped
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # the trainer gets SIGTERM (checkpoint and exit "preempted") if the service dies without stopping it
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Running:
    job_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    cancelled: bool = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 16384))
            return fh.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def last_error_line(path: Path) -> str | None:
    """The most informative line of a trainer log: its final exception, not the traceback."""
    for line in reversed(_tail(path)):
        text = line.strip()
        if text and not text.startswith(("File ", "^", "~", "Traceback", "[")) and ":" in text:
            return text[:500]
    return None


class LocalExecutor(Executor):
    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.running: dict[str, _Running] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.work_dir = settings.home / "jobs"
        self.log_dir = settings.home / "logs"

    # -- lifecycle --
    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.reconcile_after_restart()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-local-executor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        with self._lock:
            runs = list(self.running.values())
        for run in runs:
            self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for run in runs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if run.process.poll() is None:
                self._signal(run, signal.SIGKILL)
                run.process.wait()
        # their exit (usually "preempted") is handled by reconcile_after_restart on the next start
        for run in runs:
            run.log_file.close()
        self.running.clear()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            run = self.running.get(job_id)
            if run is None:
                return
            run.cancelled = True
        # SIGINT: stop now, no checkpoint (the job is over); SIGKILL if it lingers
        self._signal(run, signal.SIGINT)
        threading.Thread(target=self._kill_later, args=(run,), daemon=True).start()

    def _kill_later(self, run: _Running) -> None:
        try:
            run.process.wait(timeout=self.settings.executor.cancel_grace_seconds)
        except subprocess.TimeoutExpired:
            self._signal(run, signal.SIGKILL)
        self.wake()

    def running_reason(self, job_id: str) -> str | None:
        with self._lock:
            return "the job's trainer is still stopping" if job_id in self.running else None

    def discard(self, job_id: str) -> None:
        shutil.rmtree(self.work_dir / job_id, ignore_errors=True)
        (self.log_dir / f"{job_id}.log").unlink(missing_ok=True)

    @staticmethod
    def _signal(run: _Running, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.process.pid, sig)

    # -- restart reconciliation --
    def reconcile_after_restart(self) -> None:
        with self.sessions() as session:
            repo = SystemRepo(session)
            for job in repo.jobs_with_status(JobStatus.RUNNING):
                if job.pid and _pid_alive(job.pid):
                    # an orphaned trainer of a service that was killed: ask it to checkpoint and stop
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(job.pid, signal.SIGTERM)
                    for _ in range(120):
                        if not _pid_alive(job.pid):
                            break
                        time.sleep(0.5)
                requeue_or_fail(
                    session, job, self.settings.executor.max_attempts,
                    "The service restarted while this job was running",
                )

    # -- control loop --
    def _loop(self) -> None:
        run_until_stopped(self.tick, self._stop, self._wake, self.settings.executor.poll_interval_seconds,
                          "local executor")

    def tick(self) -> None:
        with self.sessions() as session:
            repo = SystemRepo(session)
            self._collect_finished(session, repo)
            for job in repo.jobs_with_status(JobStatus.VALIDATING_FILES):
                self._validate(session, job)
            with self._lock:
                free = self.settings.executor.max_concurrent_jobs - len(self.running)
            if free > 0:
                for job in repo.jobs_with_status(JobStatus.QUEUED)[:free]:
                    self._launch(session, job)

    def _validate(self, session: Session, job: Job) -> None:
        missing = [fid for fid, key in self._file_keys(job) if not self.store.exists(key)]
        if missing:
            transition(session, job, JobStatus.FAILED, f"Training file {missing[0]} is no longer available",
                       error={"code": "invalid_training_file", "param": "training_file",
                              "message": f"File {missing[0]} was deleted before the job started."})
            return
        transition(session, job, JobStatus.QUEUED, "Validated training files; job queued")

    @staticmethod
    def _file_keys(job: Job) -> list[tuple[str, str]]:
        spec = job.spec
        refs = [spec["training_file"], spec.get("validation_file")]
        return [(r["file_id"], r["key"]) for r in refs if r]

    def _launch(self, session: Session, job: Job) -> None:
        token = new_job_token()
        spec_data = dict(job.spec)
        spec_data["progress"] = {"url": self.settings.server.base_url, "token": token}
        spec = JobSpec.model_validate(spec_data)
        job.attempts += 1
        job.token_hash = hash_secret(token)
        job_dir = self.work_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        spec_path = job_dir / f"jobspec-attempt-{job.attempts}.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the token
        with os.fdopen(fd, "w") as fh:
            fh.write(spec.to_json())
        log_path = self.log_dir / f"{job.id}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - held open by the running trainer, closed when it exits
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TUNEFORGE_MODEL_CACHE": str(self.settings.executor.model_cache),
            "TUNEFORGE_WORKDIR": str(job_dir / "work"),
        })
        env.setdefault("HF_HUB_OFFLINE", "1")
        cmd = [self.settings.executor.trainer_python, "-m", "tuneforge.trainer", "--spec", str(spec_path)]
        try:
            process = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=job_dir, start_new_session=True, preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            log_file.close()
            transition(session, job, JobStatus.FAILED, f"Could not start the trainer: {exc}",
                       error={"code": "executor_error", "message": f"Could not start the trainer: {exc}"})
            return
        job.pid = process.pid
        with self._lock:
            self.running[job.id] = _Running(job.id, process, log_path, log_file)
        attempt = f" (attempt {job.attempts})" if job.attempts > 1 else ""
        transition(session, job, JobStatus.RUNNING, f"Fine-tuning job started{attempt}")

    def _collect_finished(self, session: Session, repo: SystemRepo) -> None:
        with self._lock:
            done = [run for run in self.running.values() if run.process.poll() is not None]
            for run in done:
                del self.running[run.job_id]
        for run in done:
            run.log_file.close()
            job = repo.job(run.job_id)
            if job is None:
                continue
            session.refresh(job)
            code = run.process.returncode
            log.info("trainer for %s exited with %s", job.id, code)
            finish_job(
                session, job, self.store, exit_code=code, cancelled=run.cancelled,
                max_attempts=self.settings.executor.max_attempts,
                fallback_message=last_error_line(run.log_path),
            )
            if job.status != JobStatus.QUEUED:
                self._cleanup_specs(job.id)

    def _cleanup_specs(self, job_id: str) -> None:
        for path in (self.work_dir / job_id).glob("jobspec-attempt-*.json"):
            path.unlink(missing_ok=True)

