"""kopf handlers: thin. Each one names the FineTuneJob to look at and calls :func:`reconcile`, which reads the
FineTuneJob, its Job and its pods, asks :func:`tuneforge.operator.status.plan` what to do, does it and writes
the status. Reconciles are level-triggered and idempotent: running one twice, or after an operator restart,
changes nothing more.

Run: ``python -m tuneforge.operator --namespace NS`` (or ``kopf run -m tuneforge.operator.handlers``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.operator import GROUP, LABEL_FINETUNEJOB, PLURAL, TERMINAL_PHASES, VERSION
from tuneforge.operator.config import OperatorConfig
from tuneforge.operator.kube import Kube, load_api_client
from tuneforge.operator.status import plan

log = logging.getLogger("tuneforge.operator")
CONFIG = OperatorConfig.from_env()
_kube: Kube | None = None
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(load_api_client())
    return _kube


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def reconcile(namespace: str, name: str) -> str | None:
    """Bring one FineTuneJob's children and status in line with its spec; returns the phase."""
    k = kube()
    with _lock(namespace, name):
        cr = k.get_finetunejob(namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return None
        job = k.get_job(namespace, name)
        pods = k.list_pods(namespace, name)
        result = plan(cr, job, pods, CONFIG, dt.datetime.now(dt.UTC))
        for action in result.actions:
            k.apply(namespace, action)
        if result.patch:
            try:
                k.patch_status(namespace, name, result.patch)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for kind, reason, message in result.events:
            log.info("%s/%s: %s %s: %s", namespace, name, result.status["phase"], reason, message)
            kopf.event(cast(Any, cr), type=kind, reason=reason, message=message[:1000])
        return str(result.status["phase"])


def _retrying(namespace: str | None, name: str) -> None:
    assert namespace, "FineTuneJobs are namespaced"
    try:
        reconcile(namespace, name)
    except ApiException as exc:
        if exc.status in (409, 429) or exc.status >= 500:
            raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=2) from exc
        raise


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # handler progress and the last-handled spec live in annotations: status belongs to the schema
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/operator"
    # only our own Events (phase changes) reach the FineTuneJob, not kopf's "handler succeeded" chatter
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tuneforge-operator"
    # watches are re-opened regularly and after apiserver restarts
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.batching.error_delays = (1, 1, 2, 3, 5, 8, 13)
    kube()
    log.info("tuneforge operator starting: %s", CONFIG)


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.cancel", id="cancel")
def on_cancel(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.suspend", id="suspend")
def on_suspend(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL_PHASES


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.resync_seconds, when=_unfinished)
def resync(namespace: str | None, name: str, **_: Any) -> None:
    """Periodic safety net: catches anything a missed event left behind (and maxPendingSeconds)."""
    _retrying(namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(namespace: str | None, name: str, **_: Any) -> None:
    """Deleting a FineTuneJob stops its pods now (the garbage collector would also do it, via ownerReferences)."""
    assert namespace, "FineTuneJobs are namespaced"
    try:
        kube().batch.delete_namespaced_job(name, namespace, propagation_policy="Background", _request_timeout=15)
    except ApiException as exc:
        if exc.status != 404:
            raise


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
def on_job_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _child_event(namespace, labels)


@kopf.on.event("", "v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
def on_pod_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _child_event(namespace, labels)


def _child_event(namespace: str | None, labels: kopf.Labels) -> None:
    assert namespace, "Jobs and pods are namespaced"
    try:
        reconcile(namespace, labels[LABEL_FINETUNEJOB])
    except ApiException as exc:  # events are not retried by kopf; the timer catches up
        log.warning("reconcile of %s/%s after a child event failed: %s", namespace,
                    labels[LABEL_FINETUNEJOB], exc.reason)
