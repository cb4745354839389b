"""Integrations: the trainer logs hyperparameters, per-step metrics and the tuned model to a real MLflow
tracking server (started here) and to Weights & Biases in offline mode; a tracker that is down never fails
the job."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.waiting import free_port
from tests.trainer.trainer_helpers import chat_rows, run_trainer

pytestmark = pytest.mark.slow
HP = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def test_mlflow_gets_params_metrics_and_the_model(make_job, mlflow: MlflowServer) -> None:  # type: ignore[no-untyped-def]
    job = make_job(chat_rows(12), hyperparameters=HP, job_id="ftjob-mlflow", integrations=[{
        "type": "mlflow", "mlflow": {"experiment_name": "tuneforge-tests", "run_name": "first",
                                     "tracking_uri": mlflow.url, "tags": {"team": "search"}}}])
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [e for e in result.of("log") if "integration disabled" in e["message"]]

    experiment = mlflow.api("GET", "experiments/get-by-name", params={"experiment_name": "tuneforge-tests"})
    runs = mlflow.api("POST", "runs/search", json={"experiment_ids": [experiment["experiment"]["experiment_id"]]})
    (run,) = runs["runs"]
    assert run["info"]["run_name"] == "first" and run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["hp.learning_rate"] == "0.001" and params["method"] == "supervised"
    assert params["hp.batch_size"] == "4" and params["adapter.type"] == "lora"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["tuneforge.job_id"] == "ftjob-mlflow" and tags["team"] == "search"
    assert tags["tuneforge.model_prefix"] == "jobs/ftjob-mlflow/model"
    history = mlflow.api("GET", "metrics/get-history", params={"run_id": run["info"]["run_id"],
                                                                "metric_key": "train_loss"})
    trained = [e["data"] for e in result.of("metrics") if "train_loss" in e["data"]]
    assert sorted(m["step"] for m in history["metrics"]) == [m["step"] for m in trained]
    artifacts = mlflow.api("GET", "artifacts/list", params={"run_id": run["info"]["run_id"], "path": "model"})
    names = {Path(f["path"]).name for f in artifacts["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names


def test_a_tracker_that_is_down_does_not_fail_the_job(make_job) -> None:  # type: ignore[no-untyped-def]
    job = make_job(chat_rows(4), hyperparameters=HP, job_id="ftjob-nomlflow", integrations=[{
        "type": "mlflow", "mlflow": {"experiment_name": "x", "tracking_uri": f"http://127.0.0.1:{free_port()}"}}])
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [e["message"] for e in result.of("log") if "integration disabled" in e["message"]]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow integration disabled: cannot start the run")


def test_wandb_offline_run_has_config_metrics_and_the_model(make_job, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from wandb.proto.wandb_internal_pb2 import Record
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb-root").mkdir()
    job = make_job(chat_rows(8), hyperparameters=HP, job_id="ftjob-wandb", integrations=[{
        "type": "wandb", "wandb": {"project": "tuneforge-tests", "tags": ["ci"]}}])
    result = run_trainer(job)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [e for e in result.of("log") if "integration disabled" in e["message"]], result.of("log")
    (run_dir,) = (tmp_path / "wandb-root" / "wandb").glob("offline-run-*-ftjob-wandb")
    # wandb >= 0.2x writes an offline run only as its transaction log (config.yaml and wandb-summary.json come
    # with a sync): read the log's records
    records = _records(run_dir / "run-ftjob-wandb.wandb")
    by_type: dict[str, list[bytes]] = {}
    for raw in records:
        record = Record()
        record.ParseFromString(raw)
        by_type.setdefault(str(record.WhichOneof("record_type")), []).append(raw)
    (run,) = by_type["run"]
    assert b"hp.learning_rate" in run and b"0.001" in run  # the config travels with the run record
    assert any(b"train_loss" in h for h in by_type["history"])
    assert any(b"trained_tokens" in s for s in by_type["summary"])
    assert any(b"ftjob-wandb-model" in a for a in by_type["artifact"])  # the model artifact


#: the leveldb log format of wandb's transaction log: 32 KiB blocks of records, each with a 7-byte header
#: (checksum, length, type: 1 whole, 2 first, 3 middle, 4 last piece); the file starts with a 7-byte header
_BLOCK, _HEADER = 32 * 1024, 7


def _records(path: Path) -> list[bytes]:
    """The offline run's records (protobuf ``Record`` bytes)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    out: list[bytes] = []
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # the end of a block too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:
            break
        pending += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            out.append(pending)
            pending = b""
    return out
