"""Serving in cluster mode on the real control plane: the service's ClusterServing, the operator's ServingEngine
handlers, Deployments and Services, kwok engine pods.

kwok runs no containers, so the engine behind the Service is played by processes this test starts on 127.0.0.1
(the service's URL templates point at them): a small OpenAI-compatible engine with vLLM's adapter routes
(tests/support/fake_openai_engine.py, which records adapter calls) and the real adapter-fetcher sidecar
(``python -m tuneforge.engine.adapter_fetcher serve``, with the bearer token the service sends) over the service's
object store. The test also restarts
the engine process (its adapters are gone) and the service (which adopts the engine it finds scaled up).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from tests.operator.helpers import FETCHER_TOKEN_SECRET, GPU_LABEL, ROOT
from tests.serving.published import succeeded_job
from tests.support.k8s_testbed import K8sTestbed
from tests.support.live_server import ThreadServer
from tests.support.processes import stop_process
from tests.support.waiting import free_port, wait_for
from tuneforge.contracts.finetunejob import GROUP, VERSION
from tuneforge.contracts.servingengine import FETCHER_TOKEN_ENV, PLURAL, engine_name

pytestmark = [pytest.mark.usefixtures("running_operator", "gpu_pool"), pytest.mark.timeout(300)]

BASE = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
FETCHER_TOKEN = "the-fetcher-token-of-this-test"


class Helper:
    """A process on 127.0.0.1 that stands in for a container of the engine pod."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), **(env or {})}
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(proxy, None)
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

        def healthy() -> bool:
            assert self.proc.poll() is None, f"{argv[2]} exited: {log.read_text()[-2000:]}"
            try:
                return httpx.get(f"{self.url}/health", timeout=1, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(f"{argv[2]} healthy", healthy, 60, 0.2)

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5, trust_env=False).json()

    def stop(self) -> None:
        stop_process(self.proc, 10)


@pytest.fixture
def gpu_type(testbed: K8sTestbed, namespace: str) -> Iterator[str]:
    """A GPU type no node has yet: the engine pod stays Pending until the test adds one."""
    name = f"l4-{namespace}"
    yield name
    testbed.delete_node(f"node-{name}")


def adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "base_model_name_or_path": "x"}')
    (path / "adapter_model.safetensors").write_bytes(os.urandom(256))
    return path


def test_chat_through_a_serving_engine_scales_to_zero_and_back(
        make_service: Any, namespace: str, testbed: K8sTestbed, gpu_type: str, tmp_path: Path,
        custom: k8s.CustomObjectsApi, api_client: k8s.ApiClient) -> None:
    apps, core = k8s.AppsV1Api(api_client), k8s.CoreV1Api(api_client)
    engine_port, fetcher_port = free_port(), free_port()
    server: ThreadServer = make_service(groups={"serving": {
        "cluster_url_template": f"http://127.0.0.1:{engine_port}",
        "cluster_fetcher_url_template": f"http://127.0.0.1:{fetcher_port}",
        "cluster_gpu_type": gpu_type, "idle_seconds": 4, "max_loras": 2, "start_timeout_seconds": 90,
        "cluster_fetcher_token": FETCHER_TOKEN}})
    helpers: list[Any] = [
        Helper([sys.executable, "-m", "tests.support.fake_openai_engine", "--port", str(engine_port),
                "--served-name", BASE], engine_port, tmp_path / "engine.log"),
        Helper([sys.executable, "-m", "tuneforge.engine.adapter_fetcher", "serve", "--store",
                server.settings.storage.url, "--dir", str(tmp_path / "adapters"), "--port", str(fetcher_port)],
               fetcher_port, tmp_path / "fetcher.log", env={FETCHER_TOKEN_ENV: FETCHER_TOKEN}),
    ]
    engine, fetcher = helpers
    name = engine_name(BASE)
    try:
        client = server.client()
        client.timeout = httpx.Timeout(120)
        models = [succeeded_job(server, client, adapter_dir(tmp_path / "src", f"a{i}"), BASE)[1] for i in range(3)]

        # the first requests (base model and an adapter, concurrently) create one ServingEngine and wait while its
        # pod cannot be scheduled
        a, b, c = models
        answers: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: answers.setdefault(
            "first", client.post(CHAT, json={"model": BASE, **ASK})))
        second = threading.Thread(target=lambda: answers.setdefault(
            "second", server.client().post(CHAT, json={"model": a, **ASK}, timeout=120)))
        first.start()
        second.start()
        deployment = wait_for("the engine's Deployment", lambda: _read(apps.read_namespaced_deployment, name,
                                                                       namespace), 30)
        wait_for("the engine's Service", lambda: _read(core.read_namespaced_service, name, namespace), 30)
        assert deployment.spec.replicas == 1
        assert deployment.spec.template.spec.node_selector == {GPU_LABEL: gpu_type}
        vllm, sidecar = deployment.spec.template.spec.containers
        assert "--enable-lora" in vllm.args and vllm.readiness_probe.http_get.path == "/health"
        (token,) = [e for e in sidecar.env if e.name == FETCHER_TOKEN_ENV]
        assert token.value is None and token.value_from.secret_key_ref.name == FETCHER_TOKEN_SECRET
        wait_for("the engine reported Unschedulable", lambda: _cr(custom, namespace, name).get("status", {}).get(
            "reason") == "Unschedulable", 30)
        assert _cr(custom, namespace, name)["status"]["phase"] == "Starting"
        first.join(2)
        assert first.is_alive() and second.is_alive(), "the first requests must wait for the engine, not fail"
        testbed.add_gpu_node(f"node-{gpu_type}", gpus=1, labels={GPU_LABEL: gpu_type})
        first.join(60)
        second.join(60)
        assert not first.is_alive() and not second.is_alive()
        reply = answers["first"]
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == f"answer from {BASE}"
        assert answers["second"].status_code == 200 and answers["second"].json()["model"] == a
        engines = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=10)
        assert [e["metadata"]["name"] for e in engines["items"]] == [name]
        status = _cr(custom, namespace, name)["status"]
        assert status["phase"] == "Ready" and status["readyReplicas"] == 1

        # adapters: fetched by the sidecar and loaded once; a third beyond max_loras=2 evicts the LRU one
        for model in (a, a, b, a):
            reply = client.post(CHAT, json={"model": model, **ASK})
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == model
        with client.stream("POST", CHAT, json={"model": c, **ASK, "stream": True}) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and f"answer from {c}".split()[0] in events[0]
        calls = engine.get("/_calls")
        assert [(x["call"], x["name"]) for x in calls] == [("load", a), ("load", b), ("load", c), ("unload", b)]
        assert all(Path(x["path"]).is_relative_to(tmp_path / "adapters") for x in calls if x["call"] == "load")
        assert sorted(engine.get("/_state")["adapters"]) == sorted([a, c])
        b_copy = next(x["path"] for x in calls if x["call"] == "load" and x["name"] == b)
        assert not Path(b_copy).exists(), "the evicted adapter's copy is deleted by the sidecar"
        listed = client.get("/v1/serving/engines")
        assert listed.status_code == 200, listed.text

        # the engine process restarts behind the service's back (a replaced pod): it has lost its adapters, so
        # vLLM's "model does not exist" makes the service load the adapter again and the request still succeeds
        engine.stop()
        engine = helpers[0] = Helper([sys.executable, "-m", "tests.support.fake_openai_engine", "--port",
                                      str(engine_port), "--served-name", BASE], engine_port, tmp_path / "engine2.log")
        reply = client.post(CHAT, json={"model": c, **ASK})
        assert reply.status_code == 200, reply.text
        assert [(x["call"], x["name"]) for x in engine.get("/_calls")] == [("load", c)]

        # the service restarts: the new process adopts the engine it finds scaled up, and scales it to zero once
        # idle; the next request brings it back, and adapters are loaded again there
        server.stop()
        settings = server.settings.model_copy(update={"serving": server.settings.serving.model_copy(
            update={"max_loras": 3})})  # changed settings apply from the engine's next start
        restarted = ThreadServer(settings).start()
        helpers.append(restarted)  # stopped below
        client = restarted.client()
        client.timeout = httpx.Timeout(120)
        wait_for("scaled to zero", lambda: apps.read_namespaced_deployment(name, namespace).spec.replicas == 0, 30)
        wait_for("ScaledToZero", lambda: _cr(custom, namespace, name).get("status", {}).get(
            "phase") == "ScaledToZero", 30)
        reply = client.post(CHAT, json={"model": a, **ASK})
        assert reply.status_code == 200, reply.text
        deployment = apps.read_namespaced_deployment(name, namespace)
        assert deployment.spec.replicas == 1
        args = deployment.spec.template.spec.containers[0].args
        assert args[args.index("--max-loras") + 1] == "3"
        assert _cr(custom, namespace, name)["status"]["phase"] == "Ready"
        assert [(x["call"], x["name"]) for x in engine.get("/_calls")][-1] == ("load", a)
        assert fetcher.proc.poll() is None
    finally:
        for helper in helpers:
            helper.stop()


def test_the_api_server_refuses_a_serving_engine_with_two_weight_sources(
        custom: k8s.CustomObjectsApi, namespace: str, crds: None) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServingEngine", "metadata": {"name": "bad"},
            "spec": {"baseModel": BASE, "storageUrl": "s3://b/p",
                     "weights": {"catalogue": BASE, "prefix": "models/x"}, "replicas": 2}}
    with pytest.raises(k8s.ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=10)
    assert refused.value.status == 422
    message = str(refused.value.body)
    assert "exactly one of catalogue and prefix" in message and "spec.replicas" in message


def _read(read: Any, name: str, namespace: str) -> Any:
    try:
        return read(name, namespace, _request_timeout=10)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _cr(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, namespace, PLURAL, name, _request_timeout=10)
    return found


def test_with_serving_off_completions_are_a_clear_503_and_no_engine_is_made(
        make_service: Any, namespace: str, custom: k8s.CustomObjectsApi) -> None:
    server: ThreadServer = make_service(groups={"serving": {"enabled": False}})
    client = server.client()
    for body in ({"model": BASE, **ASK}, {"model": BASE, **ASK, "stream": True}):
        reply = client.post(CHAT, json=body)
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "serving_not_enabled" and error["param"] == "model"
        assert "Serving is not enabled in this deployment" in error["message"]
    assert client.post("/v1/completions", json={"model": BASE, "prompt": "hi"}).json()["error"]["code"] == \
        "serving_not_enabled"
    # an unknown model is still a 404: the error says what is wrong with the request first
    assert client.post(CHAT, json={"model": "ft:nope:x:y:z", **ASK}).status_code == 404
    assert client.get("/v1/serving/engines").json()["data"] == []
    assert {m["engine"] for m in client.get("/v1/models").json()["data"]} == {None}
    engines = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=10)
    assert engines["items"] == []


def test_a_request_whose_engine_cannot_start_in_time_is_a_clear_503(
        make_service: Any, namespace: str, custom: k8s.CustomObjectsApi) -> None:
    server: ThreadServer = make_service(groups={"serving": {
        "cluster_url_template": f"http://127.0.0.1:{free_port()}", "cluster_gpu_type": f"none-{namespace}",
        "start_timeout_seconds": 6}})
    reply = server.client().post(CHAT, json={"model": BASE, **ASK})
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["code"] == "engine_start_timeout"
    assert f"ServingEngine {engine_name(BASE)}" in error["message"]
    assert "did not become ready in 6 s" in error["message"] and "cannot be scheduled" in error["message"]
    # nothing is left half-done: the ServingEngine stays, asking for its replica, and the operator reports why
    cr = _cr(custom, namespace, engine_name(BASE))
    assert cr["spec"]["replicas"] == 1 and cr["status"]["phase"] == "Starting"
    missing = server.client().post(CHAT, json={"model": "ft:SmolLM2-135M-Instruct:other:x:abc", **ASK})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_a_replica_does_not_stop_an_engine_another_replica_is_using(
        make_service: Any, namespace: str, testbed: K8sTestbed, gpu_type: str, tmp_path: Path,
        api_client: k8s.ApiClient) -> None:
    apps = k8s.AppsV1Api(api_client)
    engine_port = free_port()
    groups = {"serving": {"cluster_url_template": f"http://127.0.0.1:{engine_port}", "cluster_gpu_type": gpu_type,
                          "idle_seconds": 5, "start_timeout_seconds": 60}}
    testbed.add_gpu_node(f"node-{gpu_type}", gpus=1, labels={GPU_LABEL: gpu_type})
    engine = Helper([sys.executable, "-m", "tests.support.fake_openai_engine", "--port", str(engine_port),
                     "--served-name", BASE], engine_port, tmp_path / "engine.log")
    try:
        first, second = make_service(groups=groups), make_service(groups=groups)
        assert first.client().post(CHAT, json={"model": BASE, **ASK}, timeout=90).status_code == 200
        name = engine_name(BASE)
        # the second replica keeps the engine busy past the first one's idle time
        busy = second.client()
        for _ in range(18):
            assert busy.post(CHAT, json={"model": BASE, **ASK}, timeout=90).status_code == 200
            assert apps.read_namespaced_deployment(name, namespace).spec.replicas == 1
            time.sleep(0.5)
        # once nobody uses it, it goes to zero
        wait_for("scaled to zero", lambda: apps.read_namespaced_deployment(name, namespace).spec.replicas == 0, 30)
    finally:
        engine.stop()
