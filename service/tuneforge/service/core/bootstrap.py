"""Build the service's state from settings and make sure someone can log in."""

from __future__ import annotations

import logging
import os

from tuneforge.service.core.config import Settings
from tuneforge.service.core.security import hash_secret, new_api_key
from tuneforge.service.core.state import AppState
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.db.session import init_db, make_engine, make_session_factory
from tuneforge.service.executors.base import Executor
from tuneforge.storage import open_store

log = logging.getLogger(__name__)


def build_state(settings: Settings) -> AppState:
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    init_db(engine, auto_upgrade=settings.db_auto_upgrade)
    sessions = make_session_factory(engine)
    store = open_store(settings.storage.url)
    state = AppState(settings=settings, engine=engine, sessions=sessions, store=store)
    state.executor = build_executor(state)
    return state


def build_executor(state: AppState) -> Executor | None:
    kind = state.settings.executor.kind
    if kind == "local":
        from tuneforge.service.executors.local import LocalExecutor

        return LocalExecutor(state.settings, state.sessions, state.store)
    if kind == "kubernetes":
        from tuneforge.service.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(state.settings, state.sessions, state.store)
    if kind == "none":
        return None
    raise ValueError(f"unknown executor {kind!r}: expected local or kubernetes")


def ensure_api_key(state: AppState) -> str | None:
    """Register ``TUNEFORGE_API_KEY`` (hashed), or create a key on first start and write it to a 0600 file.

    Returns the path message shown to the user, or None when nothing new was created.
    """
    settings = state.settings
    with state.sessions() as session:
        repo = SystemRepo(session)
        tenant = settings.auth.default_tenant
        if settings.auth.api_key:
            repo.add_api_key(tenant, hash_secret(settings.auth.api_key), name="TUNEFORGE_API_KEY")
            return None
        key_file = settings.auth.key_file
        if key_file.is_file():
            key = key_file.read_text().strip()
            repo.add_api_key(tenant, hash_secret(key), name="key file")
            return None
        key = new_api_key()
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        repo.add_api_key(tenant, hash_secret(key), name="key file")
        message = f"Created an API key for tenant '{tenant}'; it is in {key_file}"
        log.warning(message)
        print(message, flush=True)
        return message
