"""Calling models: which engine and which adapter answer a completion request for a public model id.

A public model id is one of (tenant-scoped, like everything else: another tenant's id does not exist):

- a base model from the registry (``SmolLM2-135M-Instruct``, or one an operator registered): its engine, no adapter;
- an ``ft:`` model of this tenant's succeeded job: a LoRA job is its base model's engine with the job's adapter
  (``jobs/{id}/model`` in the store); a fully tuned model is an engine of its own;
- a checkpoint's ``fine_tuned_model_checkpoint``: the adapter saved at that step.

The engines themselves (processes here, Deployments in a cluster) are a :class:`ServingBackend`; the domain only
decides the :class:`Target` and rewrites the request for it.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tuneforge.contracts.store_layout import base_model_prefix, job_model_prefix
from tuneforge.service.core.errors import InvalidRequest, NotFound, TooLarge
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.model_registry import find_base_model
from tuneforge.storage import ObjectStore

#: the completion routes the engines answer
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter in the object store, served under its public id."""

    name: str
    prefix: str
    #: files of the adapter under the prefix (a checkpoint holds optimizer states too)
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """Where a request goes: the engine for ``base`` (which loads ``base_ref``), with ``adapter`` if any."""

    public_id: str
    #: the engine's key: a base model id, or the job id of a fully tuned model
    base: str
    #: what that engine loads: a catalogue id, or an object-store prefix holding the weights
    base_ref: str
    base_is_prefix: bool
    adapter: AdapterRef | None = None


@dataclass(frozen=True)
class EngineReply:
    """A non-streaming answer (or an error in OpenAI's envelope) with its status."""

    status: int
    body: dict[str, Any]


class ServingBackend(abc.ABC):
    """Runs engines and talks to them (embedded: local processes; cluster: Deployments)."""

    #: the engine kind that answers (``/v1/models``' ``engine``); None: serving is off in this deployment
    kind: str | None

    @abc.abstractmethod
    async def request(self, target: Target, path: str, body: dict[str, Any]) -> EngineReply: ...

    @abc.abstractmethod
    async def stream(self, target: Target, path: str, body: dict[str, Any]) -> AsyncIterator[bytes] | EngineReply:
        """Server-sent events (bytes, OpenAI's chunks, ``[DONE]`` last), or the error before any chunk."""

    @abc.abstractmethod
    def engines(self) -> list[dict[str, Any]]:
        """What runs now (for ``GET /v1/serving/engines`` and metrics)."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _job_target(job: Job, public_id: str, prefix: str, files: tuple[str, ...] = ()) -> Target:
    method = (job.method or {}).get("type")
    if method == "reward_model":
        raise InvalidRequest(f"'{public_id}' is a reward model: it scores text and cannot generate it. Use it as "
                             "a reinforcement job's grader.", param="model", code="model_not_supported")
    base = str(job.spec.get("base_model", ""))
    adapter_type = (job.adapter or {}).get("type", "lora")
    if adapter_type == "full":
        # its own weights: an engine of its own, keyed by the job
        return Target(public_id, base=job.id, base_ref=prefix, base_is_prefix=True)
    base_is_prefix = not _is_catalogue(base)
    base_ref = base_model_prefix(base) if base_is_prefix else base
    return Target(public_id, base=base, base_ref=base_ref, base_is_prefix=base_is_prefix,
                  adapter=AdapterRef(public_id, prefix, files))


def _is_catalogue(model: str) -> bool:
    from tuneforge.contracts.catalog import BASE_MODELS

    return model in BASE_MODELS


def resolve_target(repo: TenantRepo, store: ObjectStore, model: Any) -> Target:
    """The engine and adapter for a request's ``model``; an unknown or foreign id is a 404."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: a base model id, an ft: model or a checkpoint's "
                             "fine_tuned_model_checkpoint", param="model")
    if len(model) > 512:
        raise NotFound("model", model[:64] + "…", param="model")
    base = find_base_model(store, model)
    if base is not None:
        is_prefix = not _is_catalogue(base)
        return Target(base, base=base, base_ref=base_model_prefix(base) if is_prefix else base,
                      base_is_prefix=is_prefix)
    job = repo.find_model_job(model)
    if job is not None:
        return _job_target(job, model, job_model_prefix(job.id))
    found = repo.find_checkpoint(model)
    if found is not None:
        checkpoint, owner = found
        if (owner.adapter or {}).get("type") == "full":
            raise InvalidRequest("checkpoints of full fine-tuning jobs cannot be served yet; serve the job's "
                                 "final model", param="model", code="model_not_supported")
        return _job_target(owner, model, checkpoint.prefix, ADAPTER_FILES)
    raise NotFound("model", model, param="model")


def completion_body(raw: bytes, limit: int) -> dict[str, Any]:
    """The request body as JSON, within the size limit (the engine validates the fields themselves)."""
    if len(raw) > limit:
        raise TooLarge(f"The request body is {len(raw)} bytes; at most {limit} are accepted.", code="request_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def for_engine(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    """The body the engine gets: ``model`` names the adapter (answers then carry the public id) or the base."""
    return {**body, "model": target.public_id}
