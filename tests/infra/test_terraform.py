"""infra/terraform/aws, offline: every file parses (python-hcl2), the pieces that must agree with the chart do
(IRSA subjects = the chart's service accounts, chart values = keys the chart has, the checkpoint tag = the
lifecycle rule's), and checkov finds nothing that is not skipped with a written reason.

`tofu validate` is not run: the AWS provider cannot be built from the Go module proxy (see the README)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "infra" / "terraform" / "aws"
CHART_VALUES = ROOT / "helm" / "tuneforge" / "values.yaml"
INSTALL_CHECKOV = ROOT / "infra" / "terraform" / "install-checkov.sh"


PLAIN = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


def _unquote(tree: Any) -> Any:
    """Block labels and object keys come quoted ('"aws_s3_bucket"'); values are unquoted by PLAIN."""
    if isinstance(tree, dict):
        return {k.strip('"'): _unquote(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unquote(v) for v in tree]
    return tree


@functools.cache
def _load() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open() as fh:
            out[path.name] = _unquote(hcl2.load(fh, serialization_options=PLAIN))
    return out


def _blocks(kind: str) -> dict[str, Any]:
    """``resource``/``data`` blocks as {"type.name": body}; ``variable``/``output``/``locals`` as {name: body}."""
    found: dict[str, Any] = {}
    for doc in _load().values():
        for block in doc.get(kind, []):
            if kind in ("resource", "data"):
                for rtype, named in block.items():
                    for name, body in named.items():
                        found[f"{rtype}.{name}"] = body
            else:
                found.update(block)
    return found


def test_every_file_parses_and_is_complete():
    docs = _load()
    assert {"versions.tf", "providers.tf", "variables.tf", "outputs.tf", "network.tf", "eks.tf", "storage.tf",
            "iam.tf", "database.tf", "release.tf", "kms.tf"} <= set(docs)
    for name, body in _blocks("variable").items():
        assert body.get("description") and body.get("type"), f"variable {name} needs a description and a type"
    for name, body in _blocks("output").items():
        assert body.get("description"), f"output {name} needs a description"


def test_security_properties():
    res = _blocks("resource")
    db = res["aws_db_instance.this"]
    assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
    access = res["aws_s3_bucket_public_access_block.this"]
    assert all(access[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                            "restrict_public_buckets"))
    assert res["aws_s3_bucket_versioning.this"]["versioning_configuration"][0]["status"] == "Enabled"
    sse = res["aws_s3_bucket_server_side_encryption_configuration.this"]["rule"][0]
    assert sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    gpu = res["aws_eks_node_group.gpu"]
    assert gpu["labels"]["tuneforge.dev/pool"] == "gpu"
    assert {t["key"] for t in gpu["taint"]} == {"nvidia.com/gpu", "tuneforge.dev/dedicated"}
    assert res["aws_eks_node_group.system"]["labels"] == {"tuneforge.dev/pool": "system"}


def test_checkpoint_lifecycle_rule_matches_the_tag_the_chart_sets():
    res = _blocks("resource")
    rules = {r["id"]: r for r in res["aws_s3_bucket_lifecycle_configuration.this"]["rule"]}
    expire = rules["expire-old-checkpoints"]
    tags = expire["filter"][0]["and"][0]["tags"]
    release = _blocks("locals")["chart_values"]
    tag = release["objectStore"]["extraEnv"]["TUNEFORGE_S3_CHECKPOINT_TAG"]
    key, value = tag.split("=")
    assert tags == {key: value}
    assert "days" in expire["expiration"][0]
    # the roles may tag what they write (a PutObject with tags needs s3:PutObjectTagging)
    assert "s3:PutObjectTagging" in json.dumps(_blocks("data")["aws_iam_policy_document.bucket"])


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(tree, dict):
        return [prefix]
    out: list[tuple[str, ...]] = []
    for k, v in tree.items():
        out += _paths(v, (*prefix, k))
    return out


def test_release_values_are_chart_values():
    chart = yaml.safe_load(CHART_VALUES.read_text())
    release = _blocks("locals")["chart_values"]
    # maps the chart leaves open (node selectors, annotations, GPU types, extra env) end the walk
    open_maps = {"nodeSelector", "annotations", "types", "extraEnv"}
    for path in _paths(release):
        node: Any = chart
        for part in path:
            assert isinstance(node, dict) and part in node, f"chart_values.{'.'.join(path)} is not a chart value"
            if part in open_maps:
                break
            node = node[part]


def test_irsa_subjects_are_the_charts_service_accounts():
    """The roles trust exactly system:serviceaccount:<namespace>:<the chart's account names for the release>."""
    local = _blocks("locals")
    release = _blocks("resource")["helm_release.tuneforge"]
    assert release["name"] == "${local.fullname}" and local["fullname"] == "tuneforge"
    # the chart's fullname for release "tuneforge" is "tuneforge" (the release name contains the chart name)
    assert local["service_accounts"] == {"api": "${local.fullname}", "trainer": "${local.fullname}-trainer"}
    text = (TF / "iam.tf").read_text()
    assert "system:serviceaccount:${var.namespace}:${each.value}" in text


@pytest.fixture(scope="module")
def checkov() -> str:
    proc = subprocess.run(["bash", str(INSTALL_CHECKOV)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"checkov could not be installed: {proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_checkov_finds_nothing_unexplained(checkov: str, tmp_path: Path):
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "LOG_LEVEL": "WARNING"}
    proc = subprocess.run([checkov, "--directory", str(TF), "--framework", "terraform", "--output", "json",
                           "--compact", "--skip-download"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    report = json.loads(proc.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results.get("failed_checks", [])]
    assert not failed, "checkov findings (fix them, or skip with '#checkov:skip=ID:reason'):\n" + "\n".join(
        f"{i} {r}: {n}" for i, r, n in failed)
    assert report["summary"]["passed"] > 100
    # every skip says why
    skips = re.findall(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", "".join(p.read_text() for p in TF.glob("*.tf")))
    for check_id, reason in skips:
        assert reason and len(reason.strip()) > 20, f"checkov skip {check_id} has no written reason"
    skipped = {c["check_id"] for c in results.get("skipped_checks", [])}
    assert skipped == {check_id for check_id, _ in skips}
