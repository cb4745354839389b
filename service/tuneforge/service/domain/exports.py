"""Exports of tuned models for use elsewhere (an extension: ``POST /v1/models/{id}/export``).

A LoRA model is merged into its base's full weights (safetensors, with the tokenizer and its chat template), or
turned into one GGUF file for llama.cpp and Ollama. The export lives next to the job's model, under
``jobs/{id}/exports/{format}/`` with its manifest; whether it is done, running or failed is read from the store
(manifest, or ``error.json``) and from the exports running in this service, so there is no table to keep in step.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Literal

from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix, job_prefix
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.model_registry import tuned_model_job
from tuneforge.service.schemas import ArtifactObject, ExportObject
from tuneforge.storage import ObjectNotFound, ObjectStore

Format = Literal["safetensors", "gguf"]
FORMATS: tuple[Format, ...] = ("safetensors", "gguf")
ERROR_FILE = "error.json"


def export_prefix(job_id: str, fmt: str) -> str:
    return f"{job_prefix(job_id)}/exports/{fmt}"


@dataclass(frozen=True)
class ExportRequest:
    job_id: str
    base_model: str
    model_prefix: str
    out_prefix: str
    format: Format


class Exporter(abc.ABC):
    """Runs exports (here: a trainer-environment subprocess per export)."""

    @abc.abstractmethod
    def running(self, out_prefix: str) -> bool: ...

    @abc.abstractmethod
    def start(self, request: ExportRequest) -> None: ...

    async def aclose(self) -> None:
        return None


def exportable_job(repo: TenantRepo, model: str) -> Job:
    job = tuned_model_job(repo, model)
    if (job.method or {}).get("type") == "reward_model":
        raise InvalidRequest(f"'{model}' is a reward model: it has no language-model head to export.",
                             param="model", code="model_not_supported")
    return job


def check_format(fmt: object) -> Format:
    if fmt not in FORMATS:
        raise InvalidRequest(f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}", param="format")
    return fmt


def describe(store: ObjectStore, exporter: Exporter, job: Job, fmt: Format,
             links: list[ArtifactObject] | None = None) -> ExportObject:
    prefix = export_prefix(job.id, fmt)
    base = {"id": f"export-{job.id.removeprefix('ftjob-')}-{fmt}", "model": job.fine_tuned_model or job.id,
            "format": fmt}
    if exporter.running(prefix):
        return ExportObject(**base, status="running")
    if store.exists(f"{prefix}/{MANIFEST_NAME}"):
        return ExportObject(**base, status="succeeded", files=links or [])
    try:
        error = json.loads(store.get_bytes(f"{prefix}/{ERROR_FILE}"))
        return ExportObject(**base, status="failed", error={"code": "export_failed",
                                                             "message": str(error.get("message", ""))[:1000]})
    except (ObjectNotFound, ValueError):
        return ExportObject(**base, status="not_started")


def start(store: ObjectStore, exporter: Exporter, job: Job, fmt: Format) -> None:
    """Start the export unless it is running or done; a failed one is tried again."""
    prefix = export_prefix(job.id, fmt)
    if exporter.running(prefix) or store.exists(f"{prefix}/{MANIFEST_NAME}"):
        return
    store.delete(f"{prefix}/{ERROR_FILE}")
    exporter.start(ExportRequest(job.id, str(job.spec.get("base_model", "")), job_model_prefix(job.id), prefix,
                                 fmt))
