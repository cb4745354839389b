"""``helm install`` of helm/tuneforge (the production example) into the real control plane, then a job through
the chart's own configuration and RBAC.

1. The chart is installed with the real helm binary (built from its Go module) into a fresh namespace of the
   session's control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes): the apiserver must
   accept every object (``--wait``: the api and operator pods are scheduled on the kwok system node and become
   ready). The Prometheus Operator's kinds exist only as permissive stand-in CRDs here (the apiserver checks
   their envelope, not their fields; tests/helm/test_alerts.py checks the rules with promtool).
2. kwok runs no containers, so the test runs the api and the operator as local processes with what the chart
   rendered: command, arguments and environment from the Deployments in the cluster (Secrets resolved as the
   kubelet would; only the listen address, the local home directory and the kubeconfig differ), each
   authenticated as the chart's ServiceAccount with a bound token from the TokenRequest API. PostgreSQL and S3
   (moto) are real local servers whose addresses go in through the chart's values/Secrets.
3. A job submitted to the api reaches a trainer pod scheduled on the right GPU node with the chart's trainer
   settings, and calls outside the chart's RBAC are refused (403).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes.config import new_client_from_config

from tests.service.helpers import chat_file, upload
from tests.support.helm_chart import (
    CHART,
    PRODUCTION_VALUES,
    Helm,
    build_helm,
    container_env,
    go_available,
    secret_data,
)
from tests.support.k8s_testbed import K8sTestbed
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.processes import stop_process
from tests.support.s3_server import TEST_ENV, MotoServer
from tests.support.waiting import free_port, wait_for
from tuneforge.contracts.finetunejob import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.slow

RELEASE = "tuneforge"  # fullname "tuneforge": the names of examples/values-production.yaml
BUCKET = "tuneforge-chart"
API_KEY = "tf-" + uuid.uuid4().hex + uuid.uuid4().hex
DEDICATED = {"key": "tuneforge.dev/dedicated", "value": "training", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
MONITORING_KINDS = (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"),
                    ("PrometheusRule", "prometheusrules"))


def _raw(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data


def _status(call: Any) -> int:
    """The HTTP status of a Kubernetes API call (200 when it succeeds)."""
    try:
        call()
    except k8s.ApiException as exc:
        return int(exc.status)
    return 200


def _install_monitoring_crds(api: k8s.ApiClient) -> None:
    ext = k8s.ApiextensionsV1Api(api)
    for kind, plural in MONITORING_KINDS:
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
        }
        try:
            ext.create_custom_resource_definition(crd, _request_timeout=10)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise

    def established() -> bool:
        for _, plural in MONITORING_KINDS:
            crd = ext.read_custom_resource_definition(f"{plural}.monitoring.coreos.com", _request_timeout=10)
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_for("monitoring CRDs established", established, 30)


def _token_kubeconfig(core: k8s.CoreV1Api, admin_kubeconfig: Path, namespace: str, account: str,
                      out: Path) -> Path:
    """A kubeconfig acting as ServiceAccount ``namespace/account`` (a bound token from the TokenRequest API)."""
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = core.create_namespaced_service_account_token(account, namespace, request,
                                                         _request_timeout=10).status.token
    cluster = json.loads(admin_kubeconfig.read_text())["clusters"][0]
    out.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }))
    os.chmod(out, 0o600)
    return out


def _local_command(container: dict[str, Any], replace: dict[str, str]) -> list[str]:
    """The container's command and args as a local process: the image's entry point becomes this Python, and
    listen addresses are swapped (``replace``: old argument -> new)."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:2] == ["tuneforge", "serve"]:
        argv = [sys.executable, "-m", "tuneforge.service.cli.main", *argv[1:]]
    elif argv[:3] == ["python", "-m", "tuneforge.operator"]:
        argv = [sys.executable, *argv[1:]]
    else:
        raise AssertionError(f"unexpected entry point {argv}")
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--port" and "--port" in replace:
            out.append(replace["--port"])  # the value after --port
        elif arg in replace and arg != "--port":
            out.append(replace[arg])
        else:
            out.append(arg)
    return out


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
                                         start_new_session=True)

    def wait_http(self, url: str, timeout: float = 150) -> None:
        def ok() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(url, ok, timeout, 0.3)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)


def _base_env(kubeconfig: Path, home: Path) -> dict[str, str]:
    """What a container has besides the Deployment's env: a PATH and a HOME; plus the kubeconfig that stands in
    for the mounted service-account token."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(home),
            "KUBECONFIG": str(kubeconfig), "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def backing_servers() -> Iterator[tuple[PostgresServer, MotoServer]]:
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    pg = PostgresServer(free_port()).start()
    moto = MotoServer().start()
    import boto3

    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                 aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    try:
        yield pg, moto
    finally:
        moto.stop()
        pg.stop()


@pytest.fixture(scope="module")
def installed(testbed: K8sTestbed, api_client: k8s.ApiClient, backing_servers: tuple[PostgresServer, MotoServer],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not go_available():
        pytest.skip("no Go toolchain: cannot build helm")
    core = k8s.CoreV1Api(api_client)
    pg, moto = backing_servers
    suffix = uuid.uuid4().hex[:6]
    ns = f"tfchart-{suffix}"  # not tfop-*: the session's own operator must not touch it
    testbed.create_namespace(ns)
    nodes = {"system": f"sys-{suffix}", "a10g": f"a10g-{suffix}", "h100": f"h100-{suffix}"}
    testbed.add_gpu_node(nodes["system"], gpus=0, labels={"tuneforge.dev/pool": "system"})
    for gpu_type in ("a10g", "h100"):  # the h100 node is a decoy: jobs default to a10g
        testbed.add_gpu_node(nodes[gpu_type], gpus=4, taints=[DEDICATED, GPU_TAINT],
                             labels={"tuneforge.dev/pool": "gpu", "tuneforge.dev/gpu-type": gpu_type})
    _install_monitoring_crds(api_client)
    # the Secrets examples/values-production.yaml expects to exist (made by Terraform / External Secrets)
    core.create_namespaced_secret(ns, {"metadata": {"name": "tuneforge-database"},
                                       "stringData": {"database-url": pg.url}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "tuneforge-auth"}, "stringData": {
        "api-key": API_KEY, "secret-key": uuid.uuid4().hex * 2, "metrics-token": uuid.uuid4().hex}})
    home = tmp_path_factory.mktemp("chart-install")
    helm = Helm(build_helm(), home / "helm", kubeconfig=testbed.kubeconfig_path)
    started = time.monotonic()
    helm.run("install", RELEASE, str(CHART), "--namespace", ns, "-f", str(PRODUCTION_VALUES),
             "--set", f"objectStore.url=s3://{BUCKET}/tuneforge", "--set", f"objectStore.endpoint={moto.url}",
             "--set", f"objectStore.accessKeyId={TEST_ENV['AWS_ACCESS_KEY_ID']}",
             "--set", f"objectStore.secretAccessKey={TEST_ENV['AWS_SECRET_ACCESS_KEY']}",
             "--wait", "--timeout", "180s", timeout=240)
    info: dict[str, Any] = {"ns": ns, "nodes": nodes, "helm": helm, "home": home, "core": core,
                            "install_seconds": time.monotonic() - started, "procs": []}
    try:
        yield info
    finally:
        for proc in info["procs"]:
            proc.stop()
        custom = k8s.CustomObjectsApi(api_client)
        for cr in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, cr["metadata"]["name"],
                                                  {"metadata": {"finalizers": []}})
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, cr["metadata"]["name"])
        try:
            helm.run("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "60s", timeout=90)
        finally:
            core.delete_namespace(ns, _request_timeout=10)
            for node in nodes.values():
                testbed.delete_node(node)


def test_apiserver_accepts_every_object_and_pods_are_scheduled(installed: dict[str, Any], testbed: K8sTestbed):
    ns, helm = installed["ns"], installed["helm"]
    manifest = helm.run("get", "manifest", RELEASE, "--namespace", ns)
    path = installed["home"] / "manifest.yaml"
    path.write_text(manifest)
    got = subprocess.run([str(testbed.bin_dir / "kubectl"), "--kubeconfig", str(testbed.kubeconfig_path),
                          "get", "-f", str(path), "-o", "name"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    names = sorted(got.stdout.split())
    expected_kinds = {"secret", "serviceaccount", "role.rbac.authorization.k8s.io",
                      "rolebinding.rbac.authorization.k8s.io", "service", "deployment.apps",
                      "poddisruptionbudget.policy", "kopfpeering.kopf.dev", "networkpolicy.networking.k8s.io",
                      "ingress.networking.k8s.io", "servicemonitor.monitoring.coreos.com",
                      "podmonitor.monitoring.coreos.com", "prometheusrule.monitoring.coreos.com", "configmap"}
    assert {n.split("/")[0] for n in names} == expected_kinds, names
    assert len(names) == 23, names
    pods = installed["core"].list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    assert sorted(p.metadata.labels["app.kubernetes.io/component"] for p in pods) == ["api", "api", "operator"]
    for pod in pods:
        assert pod.status.phase == "Running" and pod.spec.node_name == installed["nodes"]["system"]
    status = json.loads(helm.run("status", RELEASE, "--namespace", ns, "-o", "json"))
    assert status["info"]["status"] == "deployed"


@pytest.fixture(scope="module")
def running(installed: dict[str, Any], testbed: K8sTestbed, api_client: k8s.ApiClient) -> dict[str, Any]:
    """The api and the operator as local processes, configured from the Deployments the chart created."""
    ns, home, core = installed["ns"], installed["home"], installed["core"]
    apps = k8s.AppsV1Api(api_client)
    secrets = {s["metadata"]["name"]: secret_data(s) for s in
               _raw(core.list_namespaced_secret(ns, _preload_content=False))["items"]}

    operator = _raw(apps.read_namespaced_deployment(f"{RELEASE}-operator", ns, _preload_content=False))
    op_spec = operator["spec"]["template"]["spec"]
    op_kubeconfig = _token_kubeconfig(core, testbed.kubeconfig_path, ns, op_spec["serviceAccountName"],
                                      home / "operator.kubeconfig")
    op_port = free_port()
    op_container = op_spec["containers"][0]
    op_env = {**_base_env(op_kubeconfig, home), **container_env(operator, secrets), "HOME": str(home)}
    op_argv = _local_command(op_container, {"--liveness=http://0.0.0.0:8080/healthz":
                                            f"--liveness=http://127.0.0.1:{op_port}/healthz"})
    op = Proc(op_argv, op_env, home / "operator.log")
    installed["procs"].append(op)
    op.wait_http(f"http://127.0.0.1:{op_port}/healthz")

    api = _raw(apps.read_namespaced_deployment(RELEASE, ns, _preload_content=False))
    api_spec = api["spec"]["template"]["spec"]
    api_kubeconfig = _token_kubeconfig(core, testbed.kubeconfig_path, ns, api_spec["serviceAccountName"],
                                       home / "api.kubeconfig")
    port = free_port()
    api_home = home / "api-home"  # the pod's emptyDir at /var/lib/tuneforge
    api_env = {**_base_env(api_kubeconfig, home), **container_env(api, secrets)}
    api_env.update({"TUNEFORGE_HOME": str(api_home), "TUNEFORGE_MODEL_CACHE": str(api_home / "models"),
                    "TUNEFORGE_HOST": "127.0.0.1", "TUNEFORGE_PORT": str(port), "HOME": str(home)})
    api_argv = _local_command(api_spec["containers"][0], {"0.0.0.0": "127.0.0.1", "--port": str(port)})
    server = Proc(api_argv, api_env, home / "api.log")
    installed["procs"].append(server)
    server.wait_http(f"http://127.0.0.1:{port}/readyz")
    return {"url": f"http://127.0.0.1:{port}", "api_env": api_env, "api": server, "operator": op,
            "operator_kubeconfig": op_kubeconfig, "api_kubeconfig": api_kubeconfig}


def test_a_job_reaches_a_trainer_pod_on_a_gpu_node_with_the_charts_settings(
        installed: dict[str, Any], running: dict[str, Any]):
    ns, core = installed["ns"], installed["core"]
    env = running["api_env"]
    assert env["TUNEFORGE_API_KEY"] == API_KEY and env["TUNEFORGE_DATABASE_URL"].startswith("postgresql+psycopg://")
    with httpx.Client(base_url=running["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        file = upload(client, chat_file(4))
        resp = client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                         "training_file": file["id"], "resources": {"gpus": 2}})
        assert resp.status_code == 200, resp.text
        job_id = resp.json()["id"]

        def pod() -> k8s.V1Pod | None:
            pods = core.list_namespaced_pod(ns, label_selector=f"tuneforge.dev/finetunejob={job_id}").items
            return next((p for p in pods if p.status.phase == "Running"), None)

        try:
            trainer = wait_for(f"a Running trainer pod of {job_id}", pod, 90)
        except AssertionError:
            print(f"--- operator log:\n{running['operator'].tail()}\n--- api log:\n{running['api'].tail()}")
            raise
        spec = trainer.spec
        assert spec.node_name == installed["nodes"]["a10g"]  # the default GPU type, in the GPU pool
        assert spec.node_selector == {"tuneforge.dev/pool": "gpu", "tuneforge.dev/gpu-type": "a10g"}
        tolerations = {(t.key, t.operator, t.value, t.effect) for t in spec.tolerations}
        assert ("tuneforge.dev/dedicated", "Equal", "training", "NoSchedule") in tolerations
        assert ("nvidia.com/gpu", "Exists", None, "NoSchedule") in tolerations
        assert spec.service_account_name == f"{RELEASE}-trainer" and spec.automount_service_account_token is False
        container = spec.containers[0]
        assert container.image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneforge/trainer:0.1.0"
        assert container.resources.requests == {"cpu": "6", "memory": "28Gi", "nvidia.com/gpu": "2"}  # 2 x a10g
        assert container.resources.limits == {"memory": "28Gi", "nvidia.com/gpu": "2"}
        assert [e.secret_ref.name for e in container.env_from] == [f"{RELEASE}-storage"]
        trainer_env = {e.name: e.value for e in container.env}
        assert trainer_env["TUNEFORGE_TRAINER_METRICS_PORT"] == "9400"
        assert trainer_env["TUNEFORGE_TRAINER_METRICS_ADDR"] == "0.0.0.0"
        assert spec.security_context.run_as_non_root and container.security_context.read_only_root_filesystem
        # the service follows the FineTuneJob: queued -> running
        wait_for("the job running", lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running",
                 60)
        # the chart's trainer NetworkPolicy selects this pod
        policy = k8s.NetworkingV1Api(core.api_client).read_namespaced_network_policy(f"{RELEASE}-trainer", ns)
        assert all(trainer.metadata.labels.get(k) == v for k, v in policy.spec.pod_selector.match_labels.items())
        # the training file went to the real S3 server through the chart's storage Secret
        assert client.get(f"/v1/files/{file['id']}/content").content == chat_file(4)


def test_calls_outside_the_charts_rbac_are_refused(installed: dict[str, Any], running: dict[str, Any]):
    ns = installed["ns"]
    op_api = new_client_from_config(config_file=str(running["operator_kubeconfig"]))
    api_api = new_client_from_config(config_file=str(running["api_kubeconfig"]))
    try:
        op_core, op_custom = k8s.CoreV1Api(op_api), k8s.CustomObjectsApi(op_api)
        api_core, api_custom = k8s.CoreV1Api(api_api), k8s.CustomObjectsApi(api_api)
        api_batch = k8s.BatchV1Api(api_api)
        # the operator: no Secrets anywhere, no pods of its own, no FineTuneJobs outside its namespace
        assert _status(lambda: op_core.list_namespaced_secret("kube-system", _request_timeout=10)) == 403
        assert _status(lambda: op_core.read_namespaced_secret("tuneforge-auth", ns, _request_timeout=10)) == 403
        assert _status(lambda: op_core.create_namespaced_pod(ns, {"metadata": {"name": "x"}, "spec": {
            "containers": [{"name": "x", "image": "x"}]}}, _request_timeout=10)) == 403
        assert _status(lambda: op_custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL,
                                                                       _request_timeout=10)) == 403
        # ... but what it needs works
        assert _status(lambda: op_custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                                                       _request_timeout=10)) == 200
        # the api: Secrets and FineTuneJobs of its namespace only; no pods, no Jobs
        assert _status(lambda: api_core.list_namespaced_secret("kube-system", _request_timeout=10)) == 403
        assert _status(lambda: api_core.read_namespaced_secret("default-token", "default", _request_timeout=10)) == 403
        assert _status(lambda: api_core.list_namespaced_secret(ns, _request_timeout=10)) == 403  # get, never list
        assert _status(lambda: api_core.list_namespaced_pod(ns, _request_timeout=10)) == 403
        assert _status(lambda: api_batch.list_namespaced_job(ns, _request_timeout=10)) == 403
        assert _status(lambda: api_custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob",
                                                "metadata": {"name": "x"}, "spec": {}}, _request_timeout=10)) == 403
        assert _status(lambda: api_core.read_namespaced_secret("tuneforge-auth", ns, _request_timeout=10)) == 200
        # serving is off in these values: neither may touch ServingEngines or Deployments, the operator watches
        # none (no 403s in its log), and the api refuses completions clearly
        for custom in (op_custom, api_custom):
            assert _status(lambda c=custom: c.list_namespaced_custom_object(
                GROUP, VERSION, ns, "servingengines", _request_timeout=10)) == 403
        assert _status(lambda: k8s.AppsV1Api(op_api).list_namespaced_deployment(ns, _request_timeout=10)) == 403
        assert "servingengines" not in running["operator"].tail(2000)
        assert "deployments" not in running["operator"].tail(2000)
        with httpx.Client(base_url=running["url"], headers={"Authorization": f"Bearer {API_KEY}"},
                          timeout=60) as client:
            reply = client.post("/v1/chat/completions", json={
                "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "serving_not_enabled"
    finally:
        op_api.close()
        api_api.close()


def test_serving_turned_on_by_an_upgrade_keeps_its_fetcher_token(installed: dict[str, Any],
                                                                 api_client: k8s.ApiClient) -> None:
    """Last in this module (it changes the release): ``helm upgrade --set serving.enabled=true`` creates the
    adapter-fetcher token Secret that the api reads and the operator names, the apiserver accepts the serving RBAC,
    and a later upgrade keeps the token (``lookup``), so running engine pods and the api keep agreeing."""
    ns, helm = installed["ns"], installed["helm"]
    apps, rbac = k8s.AppsV1Api(api_client), k8s.RbacAuthorizationV1Api(api_client)

    def upgrade(*sets: str) -> None:
        helm.run("upgrade", RELEASE, str(CHART), "--namespace", ns, "--reuse-values", *sets, "--wait",
                 "--timeout", "180s", timeout=240)

    def token() -> tuple[str, str]:
        secrets = {s["metadata"]["name"]: secret_data(s) for s in
                   _raw(installed["core"].list_namespaced_secret(ns, _preload_content=False))["items"]}
        api = container_env(_raw(apps.read_namespaced_deployment(RELEASE, ns, _preload_content=False)), secrets)
        operator = container_env(_raw(apps.read_namespaced_deployment(f"{RELEASE}-operator", ns,
                                                                      _preload_content=False)), secrets)
        assert operator["TUNEFORGE_OPERATOR_FETCHER_TOKEN_SECRET"] == f"{RELEASE}-serving"
        assert operator["TUNEFORGE_OPERATOR_SERVING_ENABLED"] == "true"
        return api["TUNEFORGE_SERVING_CLUSTER_FETCHER_TOKEN"], secrets[f"{RELEASE}-serving"]["fetcher-token"]

    upgrade("--set", "serving.enabled=true")
    first, stored = token()
    assert first == stored and len(first) == 48
    api_role = rbac.read_namespaced_role(f"{RELEASE}-api", ns, _request_timeout=10)
    assert any("servingengines" in rule.resources for rule in api_role.rules)
    upgrade("--set", "serving.maxLoras=4")
    assert token() == (first, first), "an upgrade must not change the token the running engine pods have"
