"""The cluster-wide trainer settings the Helm chart renders into the service's environment
(``TUNEFORGE_KUBE_SERVICE_ACCOUNT``, ``_NODE_SELECTOR``, ``_TOLERATIONS``, ``_GPU_RESOURCES``, ...) and how they
land in the FineTuneJob the service writes. No cluster: tests/helm/test_chart_install.py runs them for real."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from tests.operator.test_executor_mapping import new_job
from tests.support.live_server import ThreadServer
from tuneforge.contracts.finetunejob import scale_quantity
from tuneforge.contracts.settings import describe_settings_error, explicit
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.executors.kubernetes import build_finetunejob

TOLERATION = {"key": "tuneforge.dev/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


@pytest.fixture
def client(api_server: ThreadServer) -> Iterator[httpx.Client]:
    with api_server.client() as c:
        yield c


def _cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "TUNEFORGE_KUBE_SERVICE_ACCOUNT": "tuneforge-trainer",
        "TUNEFORGE_KUBE_NODE_SELECTOR": json.dumps({"tuneforge.dev/pool": "gpu"}),
        "TUNEFORGE_KUBE_TOLERATIONS": json.dumps([TOLERATION]),
        "TUNEFORGE_KUBE_IMAGE_PULL_SECRETS": "regcred, other ",
        "TUNEFORGE_KUBE_DEFAULT_GPU_TYPE": "a10g",
        "TUNEFORGE_KUBE_GPU_RESOURCES": json.dumps({"a10g": {"cpu": "3500m", "memory": "15Gi"},
                                                    "h100": {"cpu": "12", "memory": "160Gi"}}),
        "TUNEFORGE_KUBE_TRAINER_ENV": json.dumps({"TUNEFORGE_TRAINER_METRICS_PORT": "9400"}),
    }.items():
        monkeypatch.setenv(name, value)


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    _cluster_env(monkeypatch)
    ex = ServiceSettings().executor
    assert ex.kube_service_account == "tuneforge-trainer"
    assert ex.kube_node_selector == {"tuneforge.dev/pool": "gpu"} and ex.kube_tolerations == [TOLERATION]
    assert ex.kube_image_pull_secrets == ["regcred", "other"]
    assert ex.kube_default_gpu_type == "a10g" and ex.kube_gpu_resources["h100"]["memory"] == "160Gi"
    assert ex.kube_trainer_env == {"TUNEFORGE_TRAINER_METRICS_PORT": "9400"}


@pytest.mark.parametrize(("name", "value", "expect"), [
    ("TUNEFORGE_KUBE_NODE_SELECTOR", "{pool: gpu}", "TUNEFORGE_KUBE_NODE_SELECTOR is not valid JSON"),
    ("TUNEFORGE_KUBE_NODE_SELECTOR", '["gpu"]', "TUNEFORGE_KUBE_NODE_SELECTOR=['gpu']: Input should be a valid dict"),
    ("TUNEFORGE_KUBE_TOLERATIONS", '{"key": "x"}', "TUNEFORGE_KUBE_TOLERATIONS={'key': 'x'}: Input should be a valid"),
])
def test_bad_json_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path, name, value, expect):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(Exception) as exc:
        ServiceSettings()
    assert expect in describe_settings_error(exc.value, ServiceSettings)


@pytest.mark.parametrize(("resources", "expect"), [
    ({"h100": {"cpu": "12", "gpus": "8"}}, "only cpu and memory"),
    ({"h100": {"memory": "lots"}}, "'h100'.memory: 'lots' is not a Kubernetes quantity"),
    ({"h100": "12"}, "valid dictionary"),
])
def test_bad_gpu_resources_are_refused_when_settings_are_read(resources, expect):
    with pytest.raises(ValidationError) as exc:
        explicit(ServiceSettings, executor={"kube_gpu_resources": resources})
    message = describe_settings_error(exc.value, ServiceSettings)
    assert message.startswith("TUNEFORGE_KUBE_GPU_RESOURCES") and expect in message


def test_finetunejob_carries_the_cluster_settings(monkeypatch: pytest.MonkeyPatch, api_server: ThreadServer,
                                                  client: httpx.Client):
    _cluster_env(monkeypatch)
    monkeypatch.setenv("TUNEFORGE_HOME", str(api_server.state.settings.home))
    settings = ServiceSettings()
    two_h100 = new_job(client, resources={"gpus": 2, "gpu_type": "h100"})
    default_type = new_job(client)
    unknown_type = new_job(client, resources={"gpus": 1, "gpu_type": "t4"})
    with api_server.state.sessions() as session:
        repo = SystemRepo(session)
        spec = build_finetunejob(repo.job(two_h100), settings)["spec"]
        default_spec = build_finetunejob(repo.job(default_type), settings)["spec"]
        unknown_spec = build_finetunejob(repo.job(unknown_type), settings)["spec"]
    assert spec["scheduling"] == {"gpus": 2, "nodes": 1, "gpuType": "h100",
                                  "nodeSelector": {"tuneforge.dev/pool": "gpu"}, "tolerations": [TOLERATION]}
    assert spec["resources"] == {"cpu": "24", "memory": "320Gi"}  # per GPU x 2
    assert spec["serviceAccountName"] == "tuneforge-trainer"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert spec["env"] == [{"name": "TUNEFORGE_TRAINER_METRICS_PORT", "value": "9400"}]
    # no type asked: the default type and its resources (1 GPU)
    assert default_spec["scheduling"]["gpuType"] == "a10g"
    assert default_spec["resources"] == {"cpu": "3500m", "memory": "15Gi"}
    # a type without configured resources: scheduled on that type, no CPU/memory request
    assert unknown_spec["scheduling"]["gpuType"] == "t4" and "resources" not in unknown_spec


@pytest.mark.parametrize(("quantity", "factor", "expect"), [
    ("160Gi", 2, "320Gi"), ("500m", 3, "1500m"), ("12", 1, "12"), ("1.5", 2, "3"), ("0.25", 3, "0.75"),
    ("1.25Gi", 2, "2.5Gi"),
])
def test_scale_quantity(quantity, factor, expect):
    assert scale_quantity(quantity, factor) == expect


@pytest.mark.parametrize("bad", ["", "1e3", "-1", "12 Gi", "Gi"])
def test_scale_quantity_rejects(bad):
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        scale_quantity(bad, 2)
