"""Jobs name models from the registry, never a path: tests register their tiny models the way an operator does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.service.domain.model_registry import register_directory
from tuneforge.storage import ObjectStore, open_store

TINY = "tiny-llama"


def register_model(where: Any, path: Path, name: str = TINY) -> str:
    """Publish ``path`` as the base model ``name`` in a server's object store (a ThreadServer, a
    ProcessServer or an ObjectStore) and return the name jobs use."""
    if isinstance(where, ObjectStore):
        store = where
    elif hasattr(where, "state"):
        store = where.state.store
    else:
        store = open_store(where.storage_url)
    register_directory(store, path, name)
    return name
