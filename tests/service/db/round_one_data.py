"""A database as round one left it: ``create_all`` from the frozen round-one models, with rows in every table."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from tests.service.db import round_one_models as r1

T0 = 1_764_000_000
#: the API key whose hash is stored for tenant "default" (round one stored a plain sha256 of the key)
API_KEY = "sk-tf-round-one-" + "a" * 43
#: the per-job token of the running job, for the trainer's progress route
JOB_TOKEN = "tok-round-one-" + "b" * 40
INT32_MAX = 2**31 - 1
#: what the trainer numbers its progress reports with (epoch milliseconds): beyond INT32_MAX
EPOCH_MS = 1_764_000_000_123


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _job(**fields: Any) -> r1.Job:
    base: dict[str, Any] = dict(
        model="SmolLM2-135M-Instruct", hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate": 2e-4},
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        resources={"gpus": 0}, training_file="file-r1a", validation_file=None, suffix=None, seed=42,
        job_metadata=None, idempotency_key=None, token_hash=_sha256("unused"), fine_tuned_model=None,
        result_files=[], trained_tokens=None, error=None, trainer_error=None, result=None, progress={},
        last_seq=0, attempts=0, pid=None, started_at=None, finished_at=None, estimated_finish=None,
    )
    base.update(fields)
    return r1.Job(**base)


def round_one_rows() -> list[Any]:
    """Rows for every table, with the awkward values: JSON with unicode and floats, NULLs, 64-bit numbers."""
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}}
    spec = {"job_id": "ftjob-r1done", "method": method, "data": {"train": "files/default/file-r1a.jsonl"},
            "hyperparameters": {"learning_rate": 2e-4, "n_epochs": 2, "warmup_ratio": 0.03},
            "notes": "ünïcødé ✓ \"quoted\" and\nnewline", "tags": [1, 2.5, None, True]}
    return [
        r1.Tenant(id="default", created_at=T0),
        r1.Tenant(id="acme-ünï", created_at=T0 + 1),
        r1.ApiKey(tenant_id="default", key_hash=_sha256(API_KEY), name="TUNEFORGE_API_KEY", created_at=T0),
        r1.ApiKey(tenant_id="acme-ünï", key_hash=_sha256("sk-acme"), name="", created_at=T0 + 2),
        r1.File(id="file-r1a", tenant_id="default", filename="forge_chat.jsonl", purpose="fine-tune",
                bytes=5 * 10**9, sha256="c" * 64, key="files/default/file-r1a.jsonl", format="chat", rows=260,
                tokens=10**10, created_at=T0 + 3),
        r1.File(id="file-r1b", tenant_id="acme-ünï", filename="ünï.jsonl", purpose="fine-tune", bytes=10,
                sha256="d" * 64, key="files/acme/file-r1b.jsonl", format=None, rows=0, tokens=0, created_at=T0 + 4),
        _job(id="ftjob-r1done", tenant_id="default", status="succeeded", method=method, spec=spec, suffix="mine",
             job_metadata={"team": "fórge", "n": "1"}, idempotency_key="key-1", fine_tuned_model="ft:SmolLM2:mine",
             result_files=["file-result"], trained_tokens=17_581, result={"trained_tokens": 17_581, "files": []},
             progress={"step": 33, "total_steps": 33, "train_loss": 1.25, "tokens_per_second": 137.5},
             last_seq=INT32_MAX, attempts=1, pid=4_194_303, created_at=T0 + 5, started_at=T0 + 6,
             finished_at=T0 + 166, validation_file="file-r1a"),
        _job(id="ftjob-r1run", tenant_id="default", status="running", token_hash=_sha256(JOB_TOKEN),
             method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
             spec={"job_id": "ftjob-r1run", "method": {"type": "dpo"}}, attempts=1, pid=1234,
             created_at=T0 + 7, started_at=T0 + 8, estimated_finish=T0 + 600),
        _job(id="ftjob-r1acme", tenant_id="acme-ünï", status="failed", training_file="file-r1b", seed=0,
             method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}},
             spec={}, error={"code": "invalid_file", "message": "no rows", "param": "training_file"},
             trainer_error={"code": "data", "message": "empty"}, created_at=T0 + 9, finished_at=T0 + 10),
        r1.JobEvent(id="ftevent-1", job_id="ftjob-r1done", tenant_id="default", created_at=T0 + 5,
                    level="info", type="message", message="Job created", data={"status": "validating_files"}),
        r1.JobEvent(id="ftevent-2", job_id="ftjob-r1done", tenant_id="default", created_at=T0 + 60,
                    level="info", type="metrics", message="Step 10/33: training loss=1.9000",
                    data={"step": 10, "total_steps": 33, "train_loss": 1.9, "learning_rate": 0.0002}),
        r1.JobEvent(id="ftevent-3", job_id="ftjob-r1done", tenant_id="default", created_at=T0 + 166,
                    level="info", type="message", message="The job has successfully completed", data=None),
        r1.JobEvent(id="ftevent-4", job_id="ftjob-r1run", tenant_id="default", created_at=T0 + 8,
                    level="warn", type="message", message="Trainer starting ✓", data={"phase": "starting"}),
        r1.JobEvent(id="ftevent-5", job_id="ftjob-r1acme", tenant_id="acme-ünï", created_at=T0 + 10,
                    level="error", type="message", message="no rows", data={"status": "failed"}),
        r1.Checkpoint(id="ftckpt-1", job_id="ftjob-r1done", tenant_id="default", created_at=T0 + 100,
                      step_number=20, metrics={"step": 20, "train_loss": 1.5}, prefix="jobs/ftjob-r1done/ckpt-20",
                      fine_tuned_model_checkpoint="ft:SmolLM2:mine:ckpt-step-20"),
        r1.Checkpoint(id="ftckpt-2", job_id="ftjob-r1done", tenant_id="default", created_at=T0 + 160,
                      step_number=33, metrics={"step": 33}, prefix="jobs/ftjob-r1done/ckpt-33",
                      fine_tuned_model_checkpoint="ft:SmolLM2:mine:ckpt-step-33"),
    ]


def create_round_one_database(url: str) -> dict[str, list[dict[str, Any]]]:
    """Make the database round one's way (its own engine and ORM, no migrations); returns its contents."""
    engine = create_engine(url)
    try:
        r1.Base.metadata.create_all(engine)
        with Session(engine) as session:
            for row in round_one_rows():
                session.add(row)
                session.flush()  # one at a time: autoincrement keys come out 1, 2, 3 on both databases
            session.commit()
        return snapshot(engine)
    finally:
        engine.dispose()


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every round-one table, read through round one's own table definitions, in key order."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        for table in r1.Base.metadata.sorted_tables:
            rows = connection.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [dict(row._mapping) for row in rows]
    return out
