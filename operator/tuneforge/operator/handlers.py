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
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.contracts.finetunejob import GROUP, LABEL_FINETUNEJOB, PLURAL, TERMINAL_PHASES, VERSION
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.kube import Kube, load_api_client
from tuneforge.operator.status import plan

log = logging.getLogger("tuneforge.operator")
CONFIG = OperatorSettings()
_kube: Kube | None = None
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(load_api_client(CONFIG.kubeconfig))
    return _kube


_busy: set[tuple[str, str]] = set()
_again: set[tuple[str, str]] = set()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def reconcile_coalesced(namespace: str, name: str) -> None:
    """Reconcile after a child event; events arriving while one runs fold into one more pass, not one each."""
    key = (namespace, name)
    with _locks_guard:
        if key in _busy:
            _again.add(key)
            return
        _busy.add(key)
    try:
        while True:
            reconcile(namespace, name)
            with _locks_guard:
                if key not in _again:
                    _busy.discard(key)
                    return
                _again.discard(key)
    except BaseException:
        with _locks_guard:
            _busy.discard(key)
            _again.discard(key)
        raise


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
            k.post_event(cr, kind, reason, message)
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
    # Events on FineTuneJobs are our own (phase changes, posted by reconcile): kopf's poster is one queue that
    # retries for a minute on a namespace being deleted, holding back every other Event meanwhile
    settings.posting.enabled = False
    # watches are re-opened every minute and after apiserver restarts; a request that hangs (seen right after
    # an apiserver restart under load) is abandoned and retried after 15 s instead of kopf's default 5 min
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 15
    settings.networking.connect_timeout = 10
    settings.batching.error_delays = (1, 1, 2, 3, 5, 8, 13)
    # handlers are sync and mostly wait for the apiserver: more threads than kopf's default (cores + 4)
    settings.execution.max_workers = 16
    kube()
    log.info("tuneforge operator starting: %s", CONFIG)


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


# field handlers on updates only: at creation on_create has done the work already
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.cancel", id="cancel")
def on_cancel(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.suspend", id="suspend")
def on_suspend(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    """Not in a final phase yet, or in one while pods still stop (their deletion events update activePods)."""
    return status.get("phase") not in TERMINAL_PHASES or bool(status.get("activePods"))


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.resync_seconds, initial_delay=CONFIG.resync_seconds,
            when=_unfinished)
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
        reconcile_coalesced(namespace, labels[LABEL_FINETUNEJOB])
    except ApiException as exc:  # events are not retried by kopf; the timer catches up
        log.warning("reconcile of %s/%s after a child event failed: %s", namespace,
                    labels[LABEL_FINETUNEJOB], exc.reason)


# ServingEngines (vLLM Deployments) are reconciled by their own handlers, registered on import; with serving off
# they are never registered, so kopf watches no ServingEngines or Deployments (the chart grants it neither then)
if CONFIG.serving_enabled:
    from tuneforge.operator import serving_handlers  # noqa: F401
