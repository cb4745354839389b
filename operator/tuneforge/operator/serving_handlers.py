"""kopf handlers of ServingEngines: thin, like those of FineTuneJobs. Each names the ServingEngine to look at and
calls :func:`reconcile_engine`, which reads it, its Deployment and Service, asks
:func:`tuneforge.operator.serving.serving_plan` what to do (create, scale, replace the template), does it and
mirrors the Deployment's readiness into the status. Level-triggered and idempotent.

Registered by importing this module, which :mod:`.handlers` does only with ``TUNEFORGE_OPERATOR_SERVING_ENABLED``
on (the default); off, kopf watches no ServingEngines, Deployments or engine pods.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from tuneforge.contracts.finetunejob import GROUP, VERSION
from tuneforge.contracts.servingengine import LABEL_SERVINGENGINE, PLURAL, serving_child_names
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.serving import serving_plan

log = logging.getLogger("tuneforge.operator.serving")
RESYNC_SECONDS = OperatorSettings().resync_seconds


def reconcile_engine(namespace: str, name: str) -> str | None:
    """Bring one ServingEngine's Deployment, Service and status in line with its spec; returns the phase."""
    from tuneforge.operator.handlers import CONFIG, _lock, kube

    k = kube()
    with _lock(namespace, f"servingengine/{name}"):
        engine = k.get_servingengine(namespace, name)
        if engine is None or engine["metadata"].get("deletionTimestamp"):
            return None
        names = serving_child_names(name)
        result = serving_plan(engine, k.get_deployment(namespace, names.deployment),
                              k.get_service(namespace, names.service), CONFIG,
                              k.list_pods(namespace, name, label=LABEL_SERVINGENGINE))
        for action in result.actions:
            k.apply_serving(namespace, action)
        if result.patch:
            try:
                k.patch_servingengine_status(namespace, name, result.patch)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for kind, reason, message in result.events:
            log.info("%s/%s: %s %s: %s", namespace, name, result.status.get("phase"), reason, message)
            k.post_event(engine, kind, reason, message)
        return str(result.status.get("phase"))


def _retrying(namespace: str | None, name: str) -> None:
    assert namespace, "ServingEngines are namespaced"
    try:
        reconcile_engine(namespace, name)
    except ApiException as exc:
        if exc.status in (409, 429) or exc.status >= 500:
            raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=1) from exc
        raise


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_engine_create(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.update(GROUP, VERSION, PLURAL)
def on_engine_update(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_engine_resume(namespace: str | None, name: str, **_: Any) -> None:
    _retrying(namespace, name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def engine_resync(namespace: str | None, name: str, **_: Any) -> None:
    """Periodic safety net for a missed Deployment event."""
    _retrying(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_SERVINGENGINE: kopf.PRESENT})
def on_deployment_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _child_event(namespace, labels)


@kopf.on.event("", "v1", "pods", labels={LABEL_SERVINGENGINE: kopf.PRESENT})
def on_engine_pod_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A pod that cannot be scheduled, pulled or started changes nothing on the Deployment: its events do."""
    _child_event(namespace, labels)


def _child_event(namespace: str | None, labels: kopf.Labels) -> None:
    assert namespace, "Deployments and pods are namespaced"
    try:
        reconcile_engine(namespace, labels[LABEL_SERVINGENGINE])
    except ApiException as exc:  # events are not retried by kopf; the timer catches up
        log.warning("reconcile of ServingEngine %s/%s after a Deployment event failed: %s", namespace,
                    labels[LABEL_SERVINGENGINE], exc.reason)

