"""Everything a running service holds, created once at start-up (:mod:`.bootstrap`)."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.service.api.rate_limit import RequestRateLimiter
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.exports import Exporter
from tuneforge.service.domain.serving import ServingBackend
from tuneforge.service.executors.eval_runs import EvalRunner
from tuneforge.service.executors.feedback_rounds import RoundRunner
from tuneforge.service.executors.feedback_sampling import FeedbackSampler
from tuneforge.service.executors.safety_reports import SafetyReporter
from tuneforge.service.observability.metrics import ServiceMetrics
from tuneforge.storage import ObjectStore


@dataclass
class AppState:
    settings: ServiceSettings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    #: HMAC key of signed download links (the setting, or one generated once per home)
    link_secret: str
    metrics: ServiceMetrics
    serving: ServingBackend
    exporter: Exporter
    #: the bearer token of /metrics' private series (the setting, or one generated once per home)
    metrics_token: str = ""
    executor: Executor | None = None
    rate_limiter: RequestRateLimiter | None = None
    #: eval runs in the background (bootstrap sets it)
    evals: EvalRunner | None = None
    #: feedback campaigns' sampling in the background (bootstrap sets it)
    feedback: FeedbackSampler | None = None
    #: safety reports of succeeded jobs in the background (bootstrap sets it)
    safety: SafetyReporter | None = None
    #: rounds of the feedback loop, moved on in the background (bootstrap sets it)
    rounds: RoundRunner | None = None
    #: event streams' database reads take a token each (created on first use, in the server's event loop)
    _stream_reads: anyio.CapacityLimiter | None = None

    @property
    def stream_reads(self) -> anyio.CapacityLimiter:
        if self._stream_reads is None:
            self._stream_reads = anyio.CapacityLimiter(self.settings.server.stream_db_readers)
        return self._stream_reads
