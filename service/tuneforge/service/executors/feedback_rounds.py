"""Rounds of the feedback loop, moved on in the background in the service process.

A loop looks at the running rounds every few seconds (and at once when woken) and moves each on as far as its
jobs allow (:func:`tuneforge.service.domain.feedback_rounds.advance_round`): a new job wakes the executor, a new
campaign starts sampling. Everything a round waits for is in the database, so a restarted service (or another
replica) picks the rounds up where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.feedback_rounds import Advanced, advance_round
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)
#: how often running rounds are looked at
POLL_SECONDS = 2.0


class RoundRunner:
    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore, *,
                 wake_executor: Callable[[], None], open_campaign: Callable[[str], None]) -> None:
        self.settings, self.sessions, self.store = settings, sessions, store
        self.wake_executor, self.open_campaign = wake_executor, open_campaign
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._forever(), name="feedback-rounds")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake_threadsafe(self) -> None:
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _forever(self) -> None:
        assert self._wake is not None
        while True:
            try:
                for advanced in await asyncio.to_thread(self.advance_all):
                    if advanced.new_job:
                        self.wake_executor()
                    if advanced.new_campaign_id:
                        self.open_campaign(advanced.new_campaign_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a lost database must not end the loop
                log.exception("feedback rounds: a pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()

    def advance_all(self) -> list[Advanced]:
        """One pass over the running rounds; what each did."""
        with self.sessions() as session:
            running = SystemRepo(session).running_rounds()
        done: list[Advanced] = []
        for tenant_id, campaign_id, round_id in running:
            with self.sessions() as session:
                repo = TenantRepo(session, tenant_id)
                try:
                    row = repo.get_round(campaign_id, round_id)
                    done.append(advance_round(repo, self.store, self.settings, row))
                except Exception:  # one round's bug must not stop the others
                    session.rollback()
                    log.exception("feedback round %s could not be moved on", round_id)
        return done
