"""The FastAPI application factory."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from tuneforge.service import __version__
from tuneforge.service.api import openapi
from tuneforge.service.api.background import BackgroundLoops
from tuneforge.service.api.bootstrap import build_state, ensure_api_key
from tuneforge.service.api.errors import install_error_handlers
from tuneforge.service.api.routes import (
    artifacts,
    budget,
    evals,
    events_stream,
    feedback,
    files,
    graders,
    health,
    internal,
    jobs,
    models,
    organizations,
    serving,
    ui,
    webhooks,
)
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.db.event_channel import EventChannelListener, supports_notifications
from tuneforge.service.domain.lifecycle import notifier
from tuneforge.service.observability import http as observability
from tuneforge.service.observability.request_context import RequestContextMiddleware

log = logging.getLogger(__name__)


class TuneforgeApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # outside Starlette's ServerErrorMiddleware, so that even an unexpected 500 carries its x-request-id
        return RequestContextMiddleware(super().build_middleware_stack())


def create_app(settings: ServiceSettings | None = None, *, start_executor: bool = True) -> FastAPI:
    settings = settings or ServiceSettings()
    state = build_state(settings)
    background = BackgroundLoops(state)
    # several replicas on one PostgreSQL: every replica's event streams hear of every new event
    listener = EventChannelListener(state.engine, notifier.notify) if supports_notifications(state.engine) else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ensure_api_key(state)
        if listener is not None:
            listener.start()
        if start_executor and state.executor:
            state.executor.start()
        await state.serving.start()
        background.start()
        if state.evals is not None:
            await state.evals.start()
        if state.feedback is not None:
            await state.feedback.start()
        if state.safety is not None:
            await state.safety.start()
        if state.rounds is not None:
            await state.rounds.start()
        try:
            yield
        finally:
            if state.rounds is not None:
                await state.rounds.aclose()
            if state.safety is not None:
                await state.safety.aclose()
            if state.feedback is not None:
                await state.feedback.aclose()
            if state.evals is not None:
                await state.evals.aclose()
            background.stop()
            await state.serving.aclose()
            await state.exporter.aclose()
            if start_executor and state.executor:
                state.executor.stop()
            if listener is not None:
                listener.stop()
            state.engine.dispose()

    app = TuneforgeApp(
        title="tuneforge",
        version=__version__,
        summary="Managed fine-tuning: SFT, DPO, reward models and RL behind an OpenAI-shaped API.",
        lifespan=lifespan,
    )
    app.state.tuneforge = state
    app.state.background = background
    app.state.event_listener = listener
    install_error_handlers(app)
    app.openapi = functools.partial(openapi.document, app)  # type: ignore[method-assign]
    for module in (health, files, jobs, events_stream, artifacts, models, serving, graders, evals, organizations,
                   internal, observability, ui, webhooks, budget, feedback):
        app.include_router(module.router)
    app.add_middleware(observability.MetricsMiddleware, metrics=state.metrics)
    return app
