"""The chart rendered by the real helm binary (no cluster): lint, the objects for the defaults and for the
production example, the security defaults, RBAC against docs/cluster/rbac.yaml, the rendered environment read
back by the components' own settings classes, and values.schema.json refusing bad values.

tests/operator/test_helm_install.py installs it into the real control plane."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm_chart import (
    CHART,
    PRODUCTION_VALUES,
    Helm,
    HelmError,
    Manifest,
    by_kind,
    container_env,
    one,
    secret_data,
)

ROOT = Path(__file__).resolve().parents[2]
RBAC_YAML = ROOT / "docs" / "cluster" / "rbac.yaml"
# the production example names existing Secrets; these stand in for them where the rendered env is resolved
EXISTING_SECRETS = {
    "tuneforge-database": {"database-url": "postgresql+psycopg://tuneforge:pw@db.internal:5432/tuneforge"},
    "tuneforge-auth": {"api-key": "tf-" + "k" * 40, "secret-key": "s" * 48, "metrics-token": "m" * 32},
}


@pytest.fixture(scope="module")
def defaults(helm: Helm) -> list[Manifest]:
    return helm.template()


@pytest.fixture(scope="module")
def production(helm: Helm) -> list[Manifest]:
    return helm.template([PRODUCTION_VALUES], release="tuneforge")


def _pod_specs(docs: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")]


def _kinds(docs: list[Manifest]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in docs:
        out[d["kind"]] = out.get(d["kind"], 0) + 1
    return out


# --------------------------------------------------------------------------- lint and what is rendered


def test_lint_strict(helm: Helm):
    for extra in ([], ["-f", str(PRODUCTION_VALUES)], ["--set", "operator.clusterWide=true"],
                  ["-f", str(PRODUCTION_VALUES), "--set", "serving.enabled=true"]):
        out = helm.run("lint", "--strict", str(CHART), *extra)
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_defaults_render_a_one_replica_try_out(defaults: list[Manifest]):
    assert _kinds(defaults) == {
        "Secret": 2, "ServiceAccount": 3, "Role": 2, "RoleBinding": 2, "Service": 1, "Deployment": 2,
        "PodDisruptionBudget": 2, "KopfPeering": 1, "NetworkPolicy": 3,
    }
    api = one(defaults, "Deployment", "tf-tuneforge")
    assert api["spec"]["replicas"] == 1 and api["spec"]["strategy"] == {"type": "Recreate"}  # SQLite
    env = container_env(api, {s["metadata"]["name"]: secret_data(s) for s in by_kind(defaults, "Secret")})
    assert env["TUNEFORGE_DATABASE_URL"] == "sqlite:////var/lib/tuneforge/tuneforge.db"
    assert env["TUNEFORGE_API_KEY"].startswith("tf-") and len(env["TUNEFORGE_API_KEY"]) == 46
    assert len(env["TUNEFORGE_SECRET_KEY"]) == 48
    assert "TUNEFORGE_METRICS_TOKEN" not in env


def test_production_renders_everything(production: list[Manifest]):
    kinds = _kinds(production)
    assert kinds == {
        "Secret": 1,  # storage only: database and auth are existing Secrets
        "ServiceAccount": 3, "Role": 2, "RoleBinding": 2, "Service": 1, "Deployment": 2,
        "PodDisruptionBudget": 2, "KopfPeering": 1, "NetworkPolicy": 3, "Ingress": 1,
        "ServiceMonitor": 1, "PodMonitor": 1, "PrometheusRule": 1, "ConfigMap": 2,
    }
    dashboards = {k for cm in by_kind(production, "ConfigMap") for k in cm["data"]}
    assert dashboards == {"tuneforge-fleet.json", "tuneforge-job.json"}
    for cm in by_kind(production, "ConfigMap"):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        for name, text in cm["data"].items():
            assert text == (ROOT / "infra" / "dashboards" / name).read_text().rstrip("\n")
    monitor = one(production, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "tuneforge-auth", "key": "metrics-token", "optional": True}
    assert one(production, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["targetPort"] == 9400
    ingress = one(production, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "tuneforge", "port": {"name": "http"}}


def test_chart_crds_are_helm_crds():
    """helm/crds/ is the source (generated from the contracts); the chart carries an exact copy."""
    source = sorted(p.name for p in (ROOT / "helm" / "crds").glob("*.yaml"))
    assert source and sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == source
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "helm" / "crds" / name).read_bytes(), (
            f"helm/tuneforge/crds/{name} differs from helm/crds/{name}: cp helm/crds/*.yaml helm/tuneforge/crds/")


def test_chart_dashboards_are_infra_dashboards():
    source = sorted(p.name for p in (ROOT / "infra" / "dashboards").glob("*.json"))
    assert sorted(p.name for p in (CHART / "dashboards").glob("*.json")) == source
    for name in source:
        assert (CHART / "dashboards" / name).read_bytes() == (ROOT / "infra" / "dashboards" / name).read_bytes(), (
            f"cp infra/dashboards/{name} helm/tuneforge/dashboards/")


# --------------------------------------------------------------------------- security defaults


@pytest.mark.parametrize("values", ["defaults", "production"])
def test_security_defaults(values: str, request: pytest.FixtureRequest):
    docs: list[Manifest] = request.getfixturevalue(values)
    specs = _pod_specs(docs)
    assert len(specs) == 2
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] >= 1000, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # both talk to the API server, so both mount their token, and say so explicitly
        assert spec["automountServiceAccountToken"] is True, name
        assert spec["enableServiceLinks"] is False, name
        assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
            assert c["resources"]["limits"]["memory"], name
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert not c["image"].endswith(":latest"), name
            # every writable path is a volume: an emptyDir (or the api's PVC), never the image
            for mount in c["volumeMounts"]:
                assert "emptyDir" in volumes[mount["name"]] or "persistentVolumeClaim" in volumes[mount["name"]]
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, name
    api = one(docs, "Deployment", "tuneforge")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # service accounts: none mounts its token by default; the trainer's never
    for sa in by_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    # every budget selects exactly one Deployment's pods
    selectors = [d["spec"]["selector"]["matchLabels"] for d in by_kind(docs, "Deployment")]
    assert sorted(json.dumps(p["spec"]["selector"]["matchLabels"], sort_keys=True)
                  for p in by_kind(docs, "PodDisruptionBudget")) == sorted(
        json.dumps(s, sort_keys=True) for s in selectors)


def test_trainer_network_policy(production: list[Manifest]):
    np = one(production, "NetworkPolicy", "-trainer")
    assert np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "tuneforge-operator",
                                                        "app.kubernetes.io/component": "trainer"}
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = np["spec"]["egress"]
    dns, api, peers, store = egress
    assert {p["port"] for p in dns["ports"]} == {53}
    assert api["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert api["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert peers["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    assert store["ports"] == [{"port": 443, "protocol": "TCP"}]
    # public addresses only: not the cluster, its API server or the instance metadata service
    assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(store["to"][0]["ipBlock"]["except"])
    assert len(egress) == 4  # nothing else
    # the monitoring namespace may scrape the trainers' metrics port, and only that
    ingress = np["spec"]["ingress"]
    assert ingress[1]["ports"] == [{"port": 9400, "protocol": "TCP"}]


# --------------------------------------------------------------------------- RBAC


def _rules(doc: Mapping[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted((tuple(sorted(r["apiGroups"])), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
                  for r in doc["rules"])


def _rbac_doc(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(RBAC_YAML.read_text())
                if d and d["kind"] == kind and d["metadata"]["name"] == name)


def test_rbac_is_least_privilege(defaults: list[Manifest], helm: Helm):
    for role in by_kind(defaults, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    assert not by_kind(defaults, "ClusterRole") and not by_kind(defaults, "ClusterRoleBinding")
    operator = one(defaults, "Role", "-operator")
    assert not any("secrets" in r["resources"] for r in operator["rules"]), "the operator needs no Secrets"
    # the same permissions as docs/cluster/rbac.yaml (tested there against the code), in one namespace; rbac.yaml
    # includes serving's (serving.enabled: false drops them: test_chart_serving.py)
    with_serving = helm.template(sets={"serving.enabled": "true"})
    api = one(with_serving, "Role", "-api")
    assert _rules(api) == _rules(_rbac_doc("Role", "tuneforge-service"))
    cluster_wide = helm.template(sets={"operator.clusterWide": "true", "serving.enabled": "true"})
    cluster_role = one(cluster_wide, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "tuneforge-tf-tuneforge-operator"  # namespaced name
    # rbac.yaml also allows namespaced KopfPeerings (for namespace globs); --all-namespaces peers cluster-wide only
    expected = _rbac_doc("ClusterRole", "tuneforge-operator")
    for rule in expected["rules"]:
        if rule["apiGroups"] == ["kopf.dev"]:
            rule["resources"] = ["clusterkopfpeerings"]
    assert _rules(cluster_role) == _rules(expected)
    binding = one(cluster_wide, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tf-tuneforge-operator",
                                    "namespace": "tuneforge"}]
    assert one(cluster_wide, "ClusterKopfPeering")["metadata"]["name"] == "tuneforge-tf-tuneforge"
    args = one(cluster_wide, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--peering=tuneforge-tf-tuneforge" in args


# --------------------------------------------------------------------------- the rendered configuration


def test_api_environment_is_what_the_service_reads(production: list[Manifest], monkeypatch, tmp_path):
    from tuneforge.service.core.config import ServiceSettings

    secrets = {**EXISTING_SECRETS, **{s["metadata"]["name"]: secret_data(s) for s in by_kind(production, "Secret")}}
    env = container_env(one(production, "Deployment", "tuneforge"), secrets)
    for name in list(os.environ):
        if name.startswith(("TUNEFORGE_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))  # /var/lib/tuneforge in the pod
    settings = ServiceSettings()
    ex = settings.executor
    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert ex.kind == "kubernetes" and ex.kube_namespace == "tuneforge"
    assert ex.kube_image == f"{registry}/tuneforge/trainer:0.1.0"
    assert ex.kube_storage_secret == "tuneforge-storage" and ex.kube_service_account == "tuneforge-trainer"
    assert ex.kube_node_selector == {"tuneforge.dev/pool": "gpu"}
    assert ex.kube_tolerations == [{"key": "tuneforge.dev/dedicated", "operator": "Equal", "value": "training",
                                    "effect": "NoSchedule"}]
    assert ex.kube_default_gpu_type == "a10g" and ex.kube_default_gpus == 1
    assert ex.kube_gpu_resources == {"a10g": {"cpu": "3", "memory": "14Gi"}, "h100": {"cpu": "20", "memory": "220Gi"}}
    assert ex.kube_trainer_env == {"TUNEFORGE_TRAINER_METRICS_PORT": "9400",
                                   "TUNEFORGE_TRAINER_METRICS_ADDR": "0.0.0.0"}
    assert ex.max_attempts == 3 and ex.kube_queue_name == "" and ex.kube_image_pull_secrets == []
    assert settings.database_url == EXISTING_SECRETS["tuneforge-database"]["database-url"]
    assert settings.storage.url == "s3://acme-tuneforge-prod/tuneforge"
    assert settings.server.public_url == "http://tuneforge.tuneforge.svc:8000"
    assert settings.auth.api_key == EXISTING_SECRETS["tuneforge-auth"]["api-key"]
    assert settings.secret_key == EXISTING_SECRETS["tuneforge-auth"]["secret-key"]
    assert settings.auth.metrics_token == EXISTING_SECRETS["tuneforge-auth"]["metrics-token"]
    assert settings.limits.max_active_jobs_per_tenant == 50
    assert env["AWS_REGION"] == "us-east-1" and "AWS_ACCESS_KEY_ID" not in env  # IRSA, no static keys
    assert env["TUNEFORGE_S3_MAX_INFLIGHT"] == "16"
    # every TUNEFORGE_* variable the chart sets is one the service reads (a typo would be silently ignored):
    # the service's settings models, and the object store's S3 settings
    from tuneforge.contracts.settings import rows
    from tuneforge.storage.s3 import S3EnvSettings

    readers = {variable for model in (ServiceSettings, S3EnvSettings) for variable, _, _ in rows(model)}
    for name in env:
        if name.startswith("TUNEFORGE_"):
            assert name in readers, f"the chart sets {name}, which nothing reads"


def test_operator_environment_is_what_the_operator_reads(production: list[Manifest], monkeypatch):
    from tuneforge.operator.config import OperatorSettings

    deployment = one(production, "Deployment", "-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container, "the operator gets no Secret"
    env = container_env(deployment, {})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorSettings()
    assert config.default_image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneforge/trainer:0.1.0"
    assert config.gpu_type_label == "tuneforge.dev/gpu-type" and config.gpu_resource == "nvidia.com/gpu"
    assert config.storage_secret == "tuneforge-storage" and config.active_deadline_seconds == 259200
    assert config.shm_size == "8Gi" and config.run_as_user == 10001 and config.resync_seconds == 30
    from tuneforge.contracts.settings import rows

    readers = {variable for variable, _, _ in rows(OperatorSettings)}
    for name in env:
        if name.startswith("TUNEFORGE_"):
            assert name in readers, f"the chart sets {name}, which the operator does not read"
    assert container["args"] == ["--namespace=tuneforge", "--peering=tuneforge",
                                 "--liveness=http://0.0.0.0:8080/healthz"]


def test_notes_tell_how_to_get_a_key_and_submit_a_job(helm: Helm):
    out = helm.run("install", "tf", str(CHART), "--namespace", "ml", "--dry-run=client")
    notes = out[out.index("NOTES:"):]
    assert "kubectl -n ml get secret tf-tuneforge-auth" in notes
    assert "-o jsonpath='{.data.api-key}' | base64 -d" in notes
    assert "tuneforge keys create --tenant" in notes and "tuneforge jobs create" in notes
    assert "port-forward svc/tf-tuneforge 8000:8000" in notes
    assert "WARNING: no database is configured" in notes
    out = helm.run("install", "tuneforge", str(CHART), "--namespace", "tuneforge", "--dry-run=client",
                   "-f", str(PRODUCTION_VALUES))
    notes = out[out.index("NOTES:"):]
    assert "export TUNEFORGE_URL=https://tuneforge.example.com" in notes and "WARNING" not in notes


# --------------------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(("sets", "expect"), [
    ({"api.replicas": "3"}, "database"),                        # SQLite cannot serve several replicas
    ({"api.replica": "2"}, "additional properties 'replica' not allowed"),  # a typo is not ignored
    ({"objectStore.url": "http://minio:9000/bucket"}, "objectStore/url"),
    ({"trainer.gpu.types.h100.memory": "lots"}, "trainer/gpu/types/h100/memory"),
    ({"trainer.gpu.types.h100.gpus": "8"}, "additional properties 'gpus' not allowed"),
    ({"api.image.pullPolicy": "Sometimes"}, "api/image/pullPolicy"),
    ({"auth.apiKey": "short"}, "auth/apiKey"),
    ({"trainer.tolerations[0].effect": "NoWay"}, "trainer/tolerations/0/effect"),
    ({"metrics.prometheusRule.queueStuck.for": "ten minutes"}, "metrics/prometheusRule/queueStuck/for"),
    ({"database.url": "mysql://db/x"}, "database/url"),
])
def test_schema_rejects_bad_values(helm: Helm, sets: dict[str, str], expect: str):
    with pytest.raises(HelmError) as err:
        helm.template(sets=sets)
    assert "values don't meet the specifications of the schema" in err.value.output, err.value.output
    assert expect in err.value.output, err.value.output


def test_schema_accepts_postgres_with_replicas(helm: Helm):
    docs = helm.template(sets={"api.replicas": "3",
                               "database.url": "postgresql+psycopg://u:p@db:5432/tuneforge"})
    api = one(docs, "Deployment", "tf-tuneforge")
    assert api["spec"]["replicas"] == 3 and "strategy" not in api["spec"]
    assert secret_data(one(docs, "Secret", "-database"))["database-url"].startswith("postgresql+psycopg://")
