"""ORM rows → API objects."""

from __future__ import annotations

from tuneforge.service.db.models import Checkpoint, File, Job, JobEvent
from tuneforge.service.schemas import (
    CheckpointObject,
    EventObject,
    FileObject,
    JobError,
    JobEvalObject,
    JobObject,
    PiiReport,
)


def file_object(row: File) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename, purpose=row.purpose,
        format=row.format, rows=row.rows, tokens=row.tokens, sha256=row.sha256,
        pii=PiiReport.model_validate(row.pii) if row.pii else None,
    )


def job_object(row: Job) -> JobObject:
    error = JobError(**row.error) if row.error else None
    return JobObject(
        id=row.id, created_at=row.created_at, finished_at=row.finished_at, estimated_finish=row.estimated_finish,
        model=row.model, fine_tuned_model=row.fine_tuned_model, organization_id=row.tenant_id,
        status=row.status, error=error, method=row.method, hyperparameters=row.hyperparameters,
        training_file=row.training_file, validation_file=row.validation_file, result_files=row.result_files or [],
        trained_tokens=row.trained_tokens, seed=row.seed, suffix=row.suffix, metadata=row.job_metadata,
        integrations=(row.spec or {}).get("integrations") or None,
        adapter=row.adapter, resources=row.resources, progress=row.progress or {}, attempts=row.attempts,
        evals=[JobEvalObject(type=e.get("type", "eval"), eval_id=e.get("eval_id"), base_run_id=e.get("base_run_id"),
                             tuned_run_id=e.get("tuned_run_id"), error=e.get("error")) for e in row.evals]
        if row.evals else None,
    )


def event_object(row: JobEvent) -> EventObject:
    return EventObject(id=row.id, created_at=row.created_at, level=row.level, message=row.message,
                       type=row.type, data=row.data)


def checkpoint_object(row: Checkpoint) -> CheckpointObject:
    return CheckpointObject(
        id=row.id, created_at=row.created_at, step_number=row.step_number, metrics=row.metrics,
        fine_tuning_job_id=row.job_id, fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
    )
