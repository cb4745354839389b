"""The few Kubernetes API calls the operator makes (raw JSON in and out, so the pure code sees API dicts)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tuneforge.contracts.finetunejob import GROUP, LABEL_FINETUNEJOB, PLURAL, VERSION
from tuneforge.contracts.servingengine import PLURAL as SERVING_PLURAL
from tuneforge.operator.serving import CreateServing, ReplaceDeployment, ScaleDeployment, ServingAction
from tuneforge.operator.status import Action, CreateChildren, DeleteJob, SuspendJob

log = logging.getLogger(__name__)
JSON = dict[str, Any]
TIMEOUT = 15


def load_api_client(kubeconfig: str = "") -> client.ApiClient:
    """``kubeconfig`` when given; else, in a pod, its service account; else ~/.kube/config."""
    if not kubeconfig:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)

    @staticmethod
    def _json(resp: Any) -> JSON:
        data: JSON = json.loads(resp.data)
        return data

    def get_finetunejob(self, namespace: str, name: str) -> JSON | None:
        try:
            return self._json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_servingengine(self, namespace: str, name: str) -> JSON | None:
        return self._get(lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, SERVING_PLURAL, name, _preload_content=False, _request_timeout=TIMEOUT))

    def get_deployment(self, namespace: str, name: str) -> JSON | None:
        return self._get(lambda: self.apps.read_namespaced_deployment(
            name, namespace, _preload_content=False, _request_timeout=TIMEOUT))

    def get_service(self, namespace: str, name: str) -> JSON | None:
        return self._get(lambda: self.core.read_namespaced_service(
            name, namespace, _preload_content=False, _request_timeout=TIMEOUT))

    def _get(self, call: Any) -> JSON | None:
        try:
            return self._json(call())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_servingengine_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, SERVING_PLURAL, name, {"status": dict(patch)}, _request_timeout=TIMEOUT)

    def apply_serving(self, namespace: str, action: ServingAction) -> None:
        if isinstance(action, CreateServing):
            for manifest in action.manifests:
                self._create(namespace, manifest)
        elif isinstance(action, ScaleDeployment):
            self.apps.patch_namespaced_deployment(action.name, namespace, {"spec": {"replicas": action.replicas}},
                                                  _request_timeout=TIMEOUT)
            log.info("scaled Deployment %s/%s to %d", namespace, action.name, action.replicas)
        elif isinstance(action, ReplaceDeployment):
            name = action.manifest["metadata"]["name"]
            current = self.get_deployment(namespace, name) or {}
            version = (current.get("metadata") or {}).get("resourceVersion")
            body: Any = {**action.manifest, "metadata": {**action.manifest["metadata"], "resourceVersion": version}}
            self.apps.replace_namespaced_deployment(name, namespace, body, _request_timeout=TIMEOUT)
            log.info("replaced the pod template of Deployment %s/%s", namespace, name)

    def get_job(self, namespace: str, name: str) -> JSON | None:
        try:
            return self._json(self.batch.read_namespaced_job(
                name, namespace, _preload_content=False, _request_timeout=TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, owner: str, label: str = LABEL_FINETUNEJOB) -> list[JSON]:
        """The pods whose ``label`` (default: the FineTuneJob's) names ``owner``."""
        data = self._json(self.core.list_namespaced_pod(
            namespace, label_selector=f"{label}={owner}", _preload_content=False,
            _request_timeout=TIMEOUT))
        return list(data.get("items") or [])

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(patch)}, _request_timeout=TIMEOUT)

    def post_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event on ``obj`` (``kubectl describe``); best effort, never retried or raised."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tuneforge-operator"},
            "reportingComponent": "tuneforge-operator",
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=5)
        except Exception as exc:  # e.g. the namespace is being deleted
            log.debug("cannot post event %s on %s: %s", reason, meta["name"], exc)

    def apply(self, namespace: str, action: Action) -> None:
        if isinstance(action, CreateChildren):
            for manifest in action.manifests:
                self._create(namespace, manifest)
        elif isinstance(action, DeleteJob):
            try:
                self.batch.delete_namespaced_job(action.name, namespace, propagation_policy=action.propagation,
                                                 _request_timeout=TIMEOUT)
                log.info("deleted Job %s/%s (%s)", namespace, action.name, action.propagation)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        elif isinstance(action, SuspendJob):
            self.batch.patch_namespaced_job(action.name, namespace, {"spec": {"suspend": action.suspend}},
                                            _request_timeout=TIMEOUT)
            log.info("%s Job %s/%s", "suspended" if action.suspend else "resumed", namespace, action.name)

    def _create(self, namespace: str, manifest: Any) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(namespace, manifest, _request_timeout=TIMEOUT)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, manifest, _request_timeout=TIMEOUT)
            elif kind == "Deployment":
                self.apps.create_namespaced_deployment(namespace, manifest, _request_timeout=TIMEOUT)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, manifest, _request_timeout=TIMEOUT)
            else:  # pragma: no cover - the builder makes only these
                raise ValueError(f"cannot create a {kind}")
            log.info("created %s %s/%s", kind, namespace, name)
        except ApiException as exc:
            if exc.status != 409:  # already there: a repeated reconcile, or a restart in the middle of one
                raise
