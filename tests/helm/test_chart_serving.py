"""The chart's serving values: rendered by the real helm binary into the api's and the operator's environment,
read back by the components' own settings classes."""

from __future__ import annotations

import os

import pytest

from tests.support.helm_chart import Helm, HelmError, by_kind, container_env, one, secret_data


def _env(docs: list, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = container_env(one(docs, "Deployment", name), {s["metadata"]["name"]: secret_data(s)
                                                         for s in by_kind(docs, "Secret")})
    for var in list(os.environ):
        if var.startswith(("TUNEFORGE_", "AWS_")):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)


def test_serving_values_reach_the_api_and_the_operator(helm: Helm, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path) -> None:
    from tuneforge.operator.config import OperatorSettings
    from tuneforge.service.core.config import ServiceSettings

    docs = helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.enabled": "true", "serving.gpuType": "l4",
                               "serving.idleSeconds": "120", "serving.maxLoras": "4",
                               "serving.image.tag": "v0.10.0"})
    _env(docs, "tf-tuneforge", monkeypatch)
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    serving = ServiceSettings().serving
    assert serving.cluster_gpu_type == "l4" and serving.idle_seconds == 120 and serving.max_loras == 4
    assert serving.cluster_image == "vllm/vllm-openai:v0.10.0"
    assert serving.cluster_url_template == "http://{service}.{namespace}.svc:8000"
    _env(docs, "tf-tuneforge-operator", monkeypatch)
    assert OperatorSettings().serving_image == "vllm/vllm-openai:v0.10.0"


def test_serving_values_are_checked(helm: Helm) -> None:
    with pytest.raises(HelmError, match="maxLoras"):
        helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.maxLoras": "0"})


def test_only_the_api_reaches_the_engine_pods(helm: Helm) -> None:
    from tuneforge.contracts.finetunejob import LABEL_COMPONENT, LABEL_MANAGED_BY
    from tuneforge.contracts.servingengine import ENGINE_PORT, FETCHER_PORT
    from tuneforge.operator.serving import selector_labels

    docs = helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.enabled": "true",
                               "networkPolicy.enabled": "true"})
    policy = one(docs, "NetworkPolicy", "serving")
    # it selects the pods the operator makes
    pod_labels = {**selector_labels("engine-x"), LABEL_MANAGED_BY: "tuneforge-operator"}
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert LABEL_COMPONENT in policy["spec"]["podSelector"]["matchLabels"]
    (ingress,) = policy["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {ENGINE_PORT, FETCHER_PORT}
    api = one(docs, "Deployment", "tuneforge")
    assert ingress["from"][0]["podSelector"]["matchLabels"].items() <= api["spec"]["template"]["metadata"][
        "labels"].items()
    off = helm.template(sets={"objectStore.url": "s3://bucket/tf", "networkPolicy.enabled": "true"})
    assert not [d for d in by_kind(off, "NetworkPolicy") if d["metadata"]["name"].endswith("-serving")]
