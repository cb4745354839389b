"""The executor as the domain sees it: something that runs queued jobs and can be told about changes.

Implemented by :mod:`tuneforge.service.executors` (local subprocesses, Kubernetes); the domain and the API
only ever hold this interface.
"""

from __future__ import annotations

import abc


class Executor(abc.ABC):
    @abc.abstractmethod
    def start(self) -> None:
        """Reconcile jobs left over from a previous run, then start the control loop."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the loop; running trainers are asked to checkpoint so the next start resumes them."""

    @abc.abstractmethod
    def wake(self) -> None:
        """A job was created or changed: look at the queue now instead of at the next poll."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job's trainer (the job is already marked cancelled)."""

    def running_reason(self, job_id: str) -> str | None:
        """Why a trainer of this job may still be writing to the store, for a person (a cancelled one can take
        seconds to stop: ``the job's trainer is still stopping``); None when none can be."""
        return None

    def discard(self, job_id: str) -> None:
        """Remove what the executor kept on the side for a job being deleted (logs, scratch space)."""
        return None
