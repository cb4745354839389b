"""The chart's serving values: rendered by the real helm binary into the api's and the operator's environment,
read back by the components' own settings classes. ``serving.enabled: false`` is no serving anywhere (no RBAC, the
operator's handlers off, the api refusing completions); on, the adapter-fetcher token Secret is shared by the api
and, by reference, the engine pods."""

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
    assert serving.enabled is True
    token = serving.cluster_fetcher_token
    assert len(token) == 48 and token.isalnum()
    _env(docs, "tf-tuneforge-operator", monkeypatch)
    operator = OperatorSettings()
    assert operator.serving_image == "vllm/vllm-openai:v0.10.0" and operator.serving_enabled is True
    # the operator gets the Secret's name and key, never the token; the Secret holds what the api sends
    secret = one(docs, "Secret", "-serving")
    assert operator.fetcher_token_secret == secret["metadata"]["name"] == "tf-tuneforge-serving"
    assert secret_data(secret) == {operator.fetcher_token_key: token}
    operator_text = str(one(docs, "Deployment", "tf-tuneforge-operator"))
    assert token not in operator_text
    # a new token rolls the api (its checksum covers the Secret)
    assert one(docs, "Deployment", "tf-tuneforge")["spec"]["template"]["metadata"]["annotations"][
        "checksum/secrets"]


SERVING_RULES = {"servingengines", "servingengines/status", "deployments"}


def _resources(role: dict) -> set[str]:
    return {r for rule in role["rules"] for r in rule["resources"]}


@pytest.mark.parametrize("cluster_wide", ["false", "true"])
def test_serving_off_is_no_serving_anywhere(helm: Helm, monkeypatch: pytest.MonkeyPatch, tmp_path,
                                            cluster_wide: str) -> None:
    from tuneforge.operator.config import OperatorSettings
    from tuneforge.service.core.config import ServiceSettings

    docs = helm.template(sets={"objectStore.url": "s3://bucket/tf", "operator.clusterWide": cluster_wide,
                               "serving.fetcherToken.value": "x" * 20})
    kind = "ClusterRole" if cluster_wide == "true" else "Role"
    assert not _resources(one(docs, kind, "-operator")) & SERVING_RULES
    assert not _resources(one(docs, "Role", "-api")) & SERVING_RULES
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-serving")]
    _env(docs, "tf-tuneforge", monkeypatch)
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    api = ServiceSettings()
    assert api.serving.enabled is False and api.serving.cluster_fetcher_token == ""
    assert not [v for v in os.environ if v.startswith(("TUNEFORGE_SERVING_CLUSTER_", "TUNEFORGE_MAX_LORA"))]
    _env(docs, "tf-tuneforge-operator", monkeypatch)
    operator = OperatorSettings()
    assert operator.serving_enabled is False and operator.fetcher_token_secret == ""
    assert "TUNEFORGE_OPERATOR_SERVING_IMAGE" not in os.environ

    on = helm.template(sets={"objectStore.url": "s3://bucket/tf", "operator.clusterWide": cluster_wide,
                             "serving.enabled": "true"})
    assert _resources(one(on, kind, "-operator")) >= SERVING_RULES
    assert "servingengines" in _resources(one(on, "Role", "-api"))


def test_the_fetcher_token_can_be_given_or_an_existing_secret(helm: Helm, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path) -> None:
    from tuneforge.operator.config import OperatorSettings

    given = helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.enabled": "true",
                                "serving.fetcherToken.value": "a-token-of-my-own-1234"})
    assert secret_data(one(given, "Secret", "-serving")) == {"fetcher-token": "a-token-of-my-own-1234"}
    existing = helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.enabled": "true",
                                   "serving.fetcherToken.existingSecret": "my-fetcher",
                                   "serving.fetcherToken.existingSecretKey": "tok"})
    assert not [s for s in by_kind(existing, "Secret") if s["metadata"]["name"].endswith("-serving")]
    api = one(existing, "Deployment", "tf-tuneforge")["spec"]["template"]["spec"]["containers"][0]
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in api["env"]
              if e["name"] == "TUNEFORGE_SERVING_CLUSTER_FETCHER_TOKEN"]
    assert ref == {"name": "my-fetcher", "key": "tok"}
    _env(existing, "tf-tuneforge-operator", monkeypatch)
    operator = OperatorSettings()
    assert (operator.fetcher_token_secret, operator.fetcher_token_key) == ("my-fetcher", "tok")
    with pytest.raises(HelmError, match="fetcherToken"):
        helm.template(sets={"objectStore.url": "s3://bucket/tf", "serving.enabled": "true",
                            "serving.fetcherToken.value": "short"})


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
