"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tuneforge.service import __version__
from tuneforge.service.api.bootstrap import build_state, ensure_api_key
from tuneforge.service.api.errors import install_error_handlers
from tuneforge.service.api.routes import (
    artifacts,
    evals,
    events_stream,
    files,
    graders,
    health,
    internal,
    jobs,
    models,
    serving,
    ui,
)
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.observability import http as observability

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None, *, start_executor: bool = True) -> FastAPI:
    settings = settings or ServiceSettings()
    state = build_state(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ensure_api_key(state)
        if start_executor and state.executor:
            state.executor.start()
        await state.serving.start()
        if state.evals is not None:
            await state.evals.start()
        try:
            yield
        finally:
            if state.evals is not None:
                await state.evals.aclose()
            await state.serving.aclose()
            await state.exporter.aclose()
            if start_executor and state.executor:
                state.executor.stop()
            state.engine.dispose()

    app = FastAPI(
        title="tuneforge",
        version=__version__,
        summary="Managed fine-tuning: SFT, DPO, reward models and RL behind an OpenAI-shaped API.",
        lifespan=lifespan,
    )
    app.state.tuneforge = state
    install_error_handlers(app)
    for module in (health, files, jobs, events_stream, artifacts, models, serving, graders, evals, internal,
                   observability, ui):
        app.include_router(module.router)
    app.add_middleware(observability.MetricsMiddleware, metrics=state.metrics)
    return app
