"""Shared by the operator tests and bench/operator_latency.py: install the CRDs, run the operator as a
subprocess, make service-account kubeconfigs from docs/cluster/rbac.yaml, build FineTuneJobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from tests.support.waiting import free_port, wait_for
from tuneforge.contracts.finetunejob import API_VERSION
from tuneforge.contracts.jobspec import JobSpec

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "helm" / "crds"
RBAC_YAML = ROOT / "docs" / "cluster" / "rbac.yaml"
GPU_LABEL = "tuneforge.dev/gpu-type"
#: the Secret the session operator names for the engine pods' adapter-fetcher token
FETCHER_TOKEN_SECRET = "tuneforge-serving"
TIMEOUT = 60.0




def install_crds(api: k8s.ApiClient) -> None:
    ext = k8s.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            try:
                ext.create_custom_resource_definition(doc, _request_timeout=10)
            except k8s.ApiException as exc:
                if exc.status != 409:
                    raise
            names.append(doc["metadata"]["name"])

    def established() -> bool:
        for name in names:
            crd = ext.read_custom_resource_definition(name, _request_timeout=10)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_for("CRDs established", established, 30)


# --------------------------------------------------------------------------- RBAC from docs/cluster/rbac.yaml


def rbac_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]


def apply_rbac(api: k8s.ApiClient) -> None:
    """Create what docs/cluster/rbac.yaml describes (namespace tuneforge, service accounts, roles)."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    creators = {
        "Namespace": lambda d: core.create_namespace(d),
        "ServiceAccount": lambda d: core.create_namespaced_service_account(d["metadata"]["namespace"], d),
        "ClusterRole": lambda d: rbac.create_cluster_role(d),
        "ClusterRoleBinding": lambda d: rbac.create_cluster_role_binding(d),
        "Role": lambda d: rbac.create_namespaced_role(d["metadata"]["namespace"], d),
        "RoleBinding": lambda d: rbac.create_namespaced_role_binding(d["metadata"]["namespace"], d),
    }
    for doc in rbac_docs():
        try:
            creators[doc["kind"]](doc)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise


def grant_service_role(api: k8s.ApiClient, namespace: str) -> None:
    """The service's Role of docs/cluster/rbac.yaml, in ``namespace``, bound to tuneforge/tuneforge-service."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    role = next(d for d in rbac_docs() if d["kind"] == "Role" and d["metadata"]["name"] == "tuneforge-service")
    role = {**role, "metadata": {"name": "tuneforge-service", "namespace": namespace}}
    rbac.create_namespaced_role(namespace, role, _request_timeout=10)
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "tuneforge-service", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tuneforge-service"},
        "subjects": [{"kind": "ServiceAccount", "name": "tuneforge-service", "namespace": "tuneforge"}],
    }, _request_timeout=10)


def service_account_kubeconfig(api: k8s.ApiClient, admin_kubeconfig: Path, account: str, out: Path) -> Path:
    """A kubeconfig that acts as ServiceAccount tuneforge/``account`` (a bound token from the TokenRequest API)."""
    core = k8s.CoreV1Api(api)
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=86400))
    token = core.create_namespaced_service_account_token(account, "tuneforge", request,
                                                         _request_timeout=10).status.token
    admin = json.loads(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    out.write_text(json.dumps(cfg))
    os.chmod(out, 0o600)
    return out


# --------------------------------------------------------------------------- the operator process


class OperatorProcess:
    """``python -m tuneforge.operator --standalone --namespace GLOB`` with a liveness endpoint; logs to a file.

    ``peering=(name, priority)`` runs it with kopf peering instead of ``--standalone``."""

    def __init__(self, kubeconfig: Path, log_path: Path, namespace: str = "tfop-*",
                 env: Mapping[str, str] | None = None, peering: tuple[str, int] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespace = namespace
        self.env = dict(env or {})
        self.peering = peering
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._cwd = tempfile.mkdtemp(prefix="tuneforge-operator-")
        self.starts = 0

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECONFIG")}
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "TUNEFORGE_OPERATOR_GPU_TYPE_LABEL": GPU_LABEL,
            "TUNEFORGE_OPERATOR_RESYNC_SECONDS": "3",
            # engine pods reference it (kwok starts no containers, so it need not exist)
            "TUNEFORGE_OPERATOR_FETCHER_TOKEN_SECRET": FETCHER_TOKEN_SECRET,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")]),
            "NO_PROXY": "127.0.0.1,localhost",
            # a crash in C code (ssl, a driver) prints the Python stacks to the log instead of nothing
            "PYTHONFAULTHANDLER": "1",
        })
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(proxy, None)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} starting the operator\n".encode())
            log.flush()
            mode = (["--peering", self.peering[0], "--priority", str(self.peering[1])] if self.peering
                    else ["--standalone"])
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.operator", *mode, "--namespace", self.namespace,
                 "--liveness", f"http://127.0.0.1:{self.port}/healthz"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self._cwd,
                start_new_session=True,
            )
        self.starts += 1
        wait_for("operator liveness", self._alive_and_healthy, timeout, 0.2)
        return self

    def restart_if_dead(self) -> int | None:
        """Start the operator again if it exited, and say so in its log; its exit code (negative: the signal), or
        None when it was running."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            with open(self.log_path, "a") as log:
                log.write(f"\n==== the operator had exited with {code}\n")
            self.start()
        return code

    def _alive_and_healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crashed pod or a lost node."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


# --------------------------------------------------------------------------- FineTuneJobs


def jobspec(job_id: str, **overrides: Any) -> dict[str, Any]:
    """A resolved JobSpec as the service writes it into a FineTuneJob (JSON)."""
    spec: dict[str, Any] = JobSpec(
        job_id=job_id,
        tenant_id="default",
        method={"type": "supervised", "supervised": {"hyperparameters": {  # type: ignore[arg-type]
            "n_epochs": 1, "batch_size": 1, "learning_rate": 0.0001}}},
        base_model="SmolLM2-135M-Instruct",
        training_file={"file_id": "file-1", "key": "files/file-1", "format": "chat", "rows": 3},  # type: ignore[arg-type]
        storage_url="s3://bucket/tuneforge",
        output_prefix=f"jobs/{job_id}",
        progress={"url": "http://tuneforge.tuneforge.svc:8000", "token": ""},  # type: ignore[arg-type]
    ).model_dump(mode="json")
    spec.update(overrides)
    return spec


def jobspec_v1(job_id: str) -> dict[str, Any]:
    """A JobSpec as a round-one service wrote it (version 1: flat hyperparameters)."""
    return {
        "version": "tuneforge.dev/v1", "job_id": job_id, "tenant_id": "default", "method": {"type": "supervised"},
        "base_model": "SmolLM2-135M-Instruct",
        "training_file": {"file_id": "file-1", "key": "files/file-1", "format": "chat", "rows": 3},
        "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate": 0.0001, "beta": None,
                            "gradient_checkpointing": None, "max_steps": -1},
        "storage_url": "s3://bucket/tuneforge", "output_prefix": f"jobs/{job_id}",
        "progress": {"url": "http://tuneforge.tuneforge.svc:8000", "token": ""},
    }


def finetunejob(name: str, gpus: int = 1, gpu_type: str = "h100", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {"jobSpec": jobspec(name), "scheduling": {"gpus": gpus, "gpuType": gpu_type}, **spec},
    }
