"""TUNEFORGE_S3_CHECKPOINT_TAG: checkpoint objects carry an S3 tag (single PUT and multipart) so that a bucket
lifecycle rule (infra/terraform/aws/storage.tf) can expire old checkpoints while the tuned models stay."""

from __future__ import annotations

import pytest

from tests.storage.conftest import MiB, make_s3_store
from tests.support.s3_server import MotoServer
from tuneforge.storage.s3 import S3Settings

TAG = "tuneforge-kind=checkpoint"


def _tags(store, key: str) -> dict[str, str]:
    full = f"{store.prefix}/{key}" if store.prefix else key
    tagging = store._client.get_object_tagging(Bucket=store.bucket, Key=full)
    return {t["Key"]: t["Value"] for t in tagging["TagSet"]}


def test_checkpoints_are_tagged_models_are_not(moto_server: MotoServer):
    store = make_s3_store(moto_server.url, checkpoint_tag=TAG)
    small, large = b"x" * 1024, b"y" * (7 * MiB)  # one PUT; a multipart upload (threshold 5 MiB)
    store.put_bytes("jobs/ftjob-1/checkpoints/step-10/adapter.safetensors", small)
    store.put_bytes("jobs/ftjob-1/checkpoints/step-10/optimizer.pt", large)
    store.put_bytes("jobs/ftjob-1/model/adapter.safetensors", small)
    store.put_bytes("jobs/ftjob-1/metrics.jsonl", small)
    store.put_bytes("files/file-1", small)
    assert _tags(store, "jobs/ftjob-1/checkpoints/step-10/adapter.safetensors") == {"tuneforge-kind": "checkpoint"}
    assert _tags(store, "jobs/ftjob-1/checkpoints/step-10/optimizer.pt") == {"tuneforge-kind": "checkpoint"}
    for key in ("jobs/ftjob-1/model/adapter.safetensors", "jobs/ftjob-1/metrics.jsonl", "files/file-1"):
        assert _tags(store, key) == {}, key
    assert store.get_bytes("jobs/ftjob-1/checkpoints/step-10/optimizer.pt") == large


def test_no_tag_by_default(moto_server: MotoServer):
    store = make_s3_store(moto_server.url)
    store.put_bytes("jobs/ftjob-2/checkpoints/step-1/a.bin", b"a")
    assert _tags(store, "jobs/ftjob-2/checkpoints/step-1/a.bin") == {}


def test_tag_from_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNEFORGE_S3_CHECKPOINT_TAG", f" {TAG} ")
    assert S3Settings.from_env().checkpoint_tag == TAG
    monkeypatch.delenv("TUNEFORGE_S3_CHECKPOINT_TAG")
    assert S3Settings.from_env().checkpoint_tag is None


@pytest.mark.parametrize("bad", ["checkpoint", "a=b&c=d", "kind=check point", "=x"])
def test_bad_tag_is_refused_with_the_variable_name(bad: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNEFORGE_S3_CHECKPOINT_TAG", bad)
    with pytest.raises(ValueError, match="TUNEFORGE_S3_CHECKPOINT_TAG must be one tag as key=value"):
        S3Settings.from_env()


@pytest.mark.parametrize("name,value,says", [
    ("TUNEFORGE_S3_PART_SIZE_MB", "lots", "TUNEFORGE_S3_PART_SIZE_MB='lots'"),
    ("TUNEFORGE_S3_PART_SIZE_MB", "2", "TUNEFORGE_S3_PART_SIZE_MB='2'"),
    ("TUNEFORGE_S3_CHECKSUM", "md5", "TUNEFORGE_S3_CHECKSUM='md5'"),
])
def test_bad_tuning_variables_are_refused_by_name(name: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as exc:
        S3Settings.from_env()
    assert says in str(exc.value)


def test_tuning_variables_are_read_in_mib(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNEFORGE_S3_PART_SIZE_MB", "8")
    monkeypatch.setenv("TUNEFORGE_S3_CHECKSUM", " Composite ")
    settings = S3Settings.from_env(max_inflight=3)
    assert (settings.part_size, settings.checksum, settings.max_inflight) == (8 * MiB, "composite", 3)
    assert settings.multipart_threshold == S3Settings().multipart_threshold
