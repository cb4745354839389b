"""Fixtures of the operator suite: ONE real control plane per session (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok fake GPU nodes; tests/support/k8s_testbed.py) with the CRDs,
the RBAC of docs/cluster/rbac.yaml and one operator process (``--standalone --namespace 'tfop-*'``, acting as
the tuneforge-operator service account). Each test gets its own ``tfop-…`` namespace.

The first run builds the binaries from Go modules (cached afterwards under ~/.cache/tuneforge/k8s); the tests
skip only when no Go toolchain exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.config import new_client_from_config

from tests.operator.helpers import (
    GPU_LABEL,
    OperatorProcess,
    apply_rbac,
    grant_service_role,
    install_crds,
    service_account_kubeconfig,
)
from tests.support.k8s_testbed import K8sTestbed, go_available
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port


@pytest.fixture(scope="session")
def testbed() -> Iterator[K8sTestbed]:
    if not go_available():
        pytest.skip(
            "no Go toolchain (go on PATH or /usr/local/go/bin/go): cannot build the Kubernetes control plane"
        )
    bin_dir = K8sTestbed.build()
    tb = K8sTestbed(bin_dir)
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()


@pytest.fixture(scope="session")
def api_client(testbed: K8sTestbed) -> Iterator[k8s.ApiClient]:
    c = new_client_from_config(config_file=str(testbed.kubeconfig_path))
    yield c
    c.close()


@pytest.fixture(scope="session")
def core(api_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def batch(api_client: k8s.ApiClient) -> k8s.BatchV1Api:
    return k8s.BatchV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def gpu_node(testbed: K8sTestbed) -> str:
    name = "gpu-node-a"
    testbed.add_gpu_node(name, gpus=2, labels={GPU_LABEL: "h100"})
    return name


@pytest.fixture(scope="session")
def gpu_pool(testbed: K8sTestbed) -> str:
    """A bigger H100 node for the operator tests (pods of finished tests may still hold GPUs)."""
    name = "gpu-pool-1"
    testbed.add_gpu_node(name, gpus=32, labels={GPU_LABEL: "h100"})
    return name


@pytest.fixture
def namespace(testbed: K8sTestbed, core: k8s.CoreV1Api) -> Iterator[str]:
    name = f"tfop-{uuid.uuid4().hex[:8]}"
    testbed.create_namespace(name)
    yield name
    core.delete_namespace(name, _request_timeout=10)


@pytest.fixture(scope="session")
def crds(api_client: k8s.ApiClient) -> None:
    install_crds(api_client)
    apply_rbac(api_client)


@pytest.fixture(scope="session")
def operator_kubeconfig(testbed: K8sTestbed, api_client: k8s.ApiClient, crds: None,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return service_account_kubeconfig(api_client, testbed.kubeconfig_path, "tuneforge-operator", out)


@pytest.fixture(scope="session")
def service_kubeconfig(testbed: K8sTestbed, api_client: k8s.ApiClient, crds: None,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("service") / "service.kubeconfig"
    return service_account_kubeconfig(api_client, testbed.kubeconfig_path, "tuneforge-service", out)


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: Path, gpu_pool: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, running as the tuneforge-operator service account of docs/cluster/rbac.yaml."""
    log = tmp_path_factory.mktemp("operator-logs") / "operator.log"
    proc = OperatorProcess(operator_kubeconfig, log).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def running_operator(operator: OperatorProcess, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """The session operator, restarted if an earlier test left it stopped; its log tail on failure."""
    if operator.proc is None:
        operator.start()
    else:
        operator.restart_if_dead()
    yield operator
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- operator log tail ({operator.log_path}):\n{operator.log_tail(80)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def make_service(tmp_path: Path, namespace: str, api_client: k8s.ApiClient,
                 service_kubeconfig: Path) -> Iterator[Callable[..., ThreadServer]]:
    """Start the real service (REST API + KubernetesExecutor) on ``namespace``, as the tuneforge-service account."""
    grant_service_role(api_client, namespace)
    servers: list[ThreadServer] = []

    def make(**executor: Any) -> ThreadServer:
        home = tmp_path / f"home{len(servers)}"
        settings = make_settings(home, free_port(), kind="kubernetes", kube_namespace=namespace,
                                 kubeconfig=str(service_kubeconfig), kube_image="tuneforge/trainer:test",
                                 poll_interval_seconds=0.2, **executor)
        server = ThreadServer(settings).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
