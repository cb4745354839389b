"""Which models a job may start from and which a tenant may call: the registry, never a path.

- base models: the bundled catalogue (:mod:`tuneforge.contracts.catalog`) and the models an operator registered
  with ``tuneforge models push`` / ``tuneforge models register`` (published under ``models/{name}/`` in the
  object store, ``manifest.json`` last);
- tuned models: ``ft:`` names of this tenant's succeeded jobs, found through the tenant-scoped repository.

A request never names a directory or an object-store prefix: another tenant's model directory was once
trainable by path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.contracts.catalog import BASE_MODELS, canonical_model_id
from tuneforge.contracts.store_layout import MANIFEST_NAME, base_model_prefix
from tuneforge.service.core.errors import InvalidRequest, NotFound
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import TenantRepo
from tuneforge.storage import ObjectStore
from tuneforge.storage.manifest import publish_dir

#: what a registered model's name may look like (it becomes an object-store prefix)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: the release date of the bundled base model: a stable ``created`` for base models
BASE_CREATED = 1730419200


@dataclass(frozen=True)
class BaseModelInfo:
    id: str


def registered_models(store: ObjectStore) -> list[BaseModelInfo]:
    """Models published under ``models/`` whose manifest exists (an unfinished push does not count)."""
    found = []
    for info in store.list(base_model_prefix("")):
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST_NAME and MODEL_NAME.fullmatch(parts[1]):
            found.append(BaseModelInfo(parts[1]))
    return sorted(found, key=lambda m: m.id)


def base_models(store: ObjectStore) -> list[BaseModelInfo]:
    catalogue = [BaseModelInfo(m.id) for m in BASE_MODELS.values()]
    return catalogue + [m for m in registered_models(store) if m.id not in BASE_MODELS]


def find_base_model(store: ObjectStore, name: str) -> str | None:
    """The canonical id of a base model, or None."""
    canonical = canonical_model_id(name)
    if canonical in BASE_MODELS:
        return canonical
    if MODEL_NAME.fullmatch(name) and store.exists(f"{base_model_prefix(name)}/{MANIFEST_NAME}"):
        return name
    return None


def base_model_for_job(repo: TenantRepo, store: ObjectStore, model: str) -> str:
    """The base model a new job trains from; a 400 that lists the choices otherwise."""
    found = find_base_model(store, model)
    if found is not None:
        return found
    if model.startswith("ft:") and repo.find_model_job(model) is not None:
        raise InvalidRequest("Continuing training from a fine-tuned model is not supported yet; use its base "
                             "model.", param="model", code="model_not_available")
    names = ", ".join(m.id for m in base_models(store))
    raise InvalidRequest(f"The model '{model[:200]}' does not exist. Base models: {names}. An operator adds "
                         "others with `tuneforge models register`.", param="model", code="model_not_available")


def tuned_model_job(repo: TenantRepo, name: str) -> Job:
    job = repo.find_model_job(name)
    if job is None:
        raise NotFound("model", name, param="model")
    return job


def register_directory(store: ObjectStore, directory: Path, name: str) -> None:
    """Publish a local model directory as the base model ``name`` (files first, manifest last)."""
    if not MODEL_NAME.fullmatch(name) or name in BASE_MODELS:
        raise ValueError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' (at most 128), and not "
                         "a bundled model's id")
    if not (directory / "config.json").is_file() or not any(directory.glob("*.safetensors")):
        raise ValueError(f"{directory} is not a model directory (config.json and *.safetensors expected)")
    publish_dir(store, directory, base_model_prefix(name), base_model=name)
