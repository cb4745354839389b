"""Build the service's state from its settings, once, before the first request: directories, database (schema
upgraded), object store, link secret, metrics, executor, and an API key someone can log in with."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from tuneforge.service.api.rate_limit import RequestRateLimiter
from tuneforge.service.api.state import AppState
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.security import new_api_key
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.db.session import init_db, make_engine, make_session_factory
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.organizations import register_admin_key
from tuneforge.service.domain.serving import ServingBackend
from tuneforge.service.executors.exports_local import LocalExporter
from tuneforge.service.observability.metrics import ServiceMetrics
from tuneforge.storage import ObjectStore, open_store

log = logging.getLogger(__name__)


def build_state(settings: ServiceSettings) -> AppState:
    _private_dir(settings.home)
    engine = make_engine(settings.database_url)
    init_db(engine, auto_upgrade=settings.db_auto_upgrade)
    sessions = make_session_factory(engine)
    store = open_store(settings.storage.url)
    metrics = ServiceMetrics(sessions)
    state = AppState(settings=settings, engine=engine, sessions=sessions, store=store,
                     link_secret=settings.secret_key or _home_secret(settings.home / "link_secret"),
                     metrics=metrics, serving=build_serving(settings, store, metrics),
                     exporter=LocalExporter(settings, store),
                     metrics_token=settings.auth.metrics_token or _home_secret(settings.home / "metrics_token"))
    state.executor = build_executor(state)
    state.rate_limiter = RequestRateLimiter(settings.limits.rate_limit_storage)
    from tuneforge.service.executors.eval_runs import EvalRunner

    state.evals = EvalRunner(settings, sessions, store, state.serving, on_item=metrics.evals.item)
    from tuneforge.service.executors.feedback_sampling import FeedbackSampler

    state.feedback = FeedbackSampler(settings, sessions, store, state.serving, on_sample=metrics.feedback.sample,
                                     on_prompt=metrics.feedback.prompt)
    from tuneforge.service.executors.safety_reports import SafetyReporter

    state.safety = SafetyReporter(settings, sessions, store, state.serving)
    from tuneforge.service.executors.feedback_rounds import RoundRunner

    executor, sampler = state.executor, state.feedback
    state.rounds = RoundRunner(settings, sessions, store, wake_executor=executor.wake if executor else lambda: None,
                               open_campaign=sampler.submit)
    return state


def _private_dir(path: Path) -> None:
    # the home holds the database, the object store and keys: readable by its owner only
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _home_secret(path: Path) -> str:
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def build_serving(settings: ServiceSettings, store: ObjectStore, metrics: ServiceMetrics) -> ServingBackend:
    from tuneforge.service.executors.serving_local import LocalServing

    def on_event(kind: str, base: str, data: dict[str, Any]) -> None:
        metrics.serving.engine_events.labels(base, kind).inc()
        level = logging.WARNING if kind in ("crashed", "start_failed", "stream_cut") else logging.INFO
        log.log(level, "engine %s for %s: %s", kind, base, {k: v for k, v in data.items() if k != "log_tail"})

    if not settings.serving.enabled:
        from tuneforge.service.executors.serving_disabled import DisabledServing

        return DisabledServing()
    if settings.executor.kind == "kubernetes":
        from tuneforge.service.executors.serving_cluster import ClusterServing

        return ClusterServing(settings, store, on_event)
    return LocalServing(settings, store, on_event)


def build_executor(state: AppState) -> Executor | None:
    kind = state.settings.executor.kind
    if kind == "local":
        from tuneforge.service.executors.local import LocalExecutor

        return LocalExecutor(state.settings, state.sessions, state.store)
    if kind == "kubernetes":
        from tuneforge.service.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(state.settings, state.sessions, state.store)
    return None


def ensure_api_key(state: AppState) -> str | None:
    """Register ``TUNEFORGE_API_KEY`` (hashed), or create a key on first start and write it to a 0600 file: an
    admin key of the default organization (whose admins administer every organization).

    Returns the path message shown to the user, or None when nothing new was created.
    """
    settings = state.settings
    with state.sessions() as session:
        repo = SystemRepo(session)
        tenant = settings.auth.default_tenant
        if settings.auth.api_key:
            register_admin_key(repo, tenant, settings.auth.api_key, "TUNEFORGE_API_KEY")
            return None
        key_file = settings.key_file
        if key_file.is_file():
            register_admin_key(repo, tenant, key_file.read_text().strip(), "key file")
            return None
        key = new_api_key()
        _write_private(key_file, key + "\n")
        register_admin_key(repo, tenant, key, "key file")
        message = f"Created an API key for tenant '{tenant}'; it is in {key_file}"
        log.warning(message)
        if settings.logging.log_format == "plain":  # JSON logs stay one JSON object per line
            print(message, flush=True)
        return message
