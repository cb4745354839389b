"""Rounds of the feedback loop, moved on in the background in the service process.

A loop looks at the running rounds every few seconds (and at once when woken) and moves each on as far as its
jobs allow (:func:`tuneforge.service.domain.feedback_rounds.advance_round`): a new job wakes the executor, a new
campaign starts sampling. Everything a round waits for is in the database, so a restarted service (or another
replica) picks the rounds up where they were.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.feedback_rounds import Advanced, advance_round
from tuneforge.service.executors.background import PollLoop
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)
#: how often running rounds are looked at
POLL_SECONDS = 2.0


class RoundRunner(PollLoop):
    name = "feedback-rounds"

    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore, *,
                 wake_executor: Callable[[], None], open_campaign: Callable[[str], None]) -> None:
        super().__init__(POLL_SECONDS)
        self.settings, self.sessions, self.store = settings, sessions, store
        self.wake_executor, self.open_campaign = wake_executor, open_campaign

    async def start(self) -> None:
        self.start_polling()

    async def aclose(self) -> None:
        await self.stop_polling()

    async def tick(self) -> None:
        for advanced in await asyncio.to_thread(self.advance_all):
            if advanced.new_job:
                self.wake_executor()
            if advanced.new_campaign_id:
                self.open_campaign(advanced.new_campaign_id)

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
