"""The service's own background loops besides the executor: webhook deliveries and GPU-hour budgets."""

from __future__ import annotations

import threading

from tuneforge.service.api.state import AppState
from tuneforge.service.domain.budgets import enforce
from tuneforge.service.domain.webhook_sender import WebhookSender
from tuneforge.service.executors.base import run_until_stopped


class BackgroundLoops:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.sender = WebhookSender(state.sessions, state.settings.webhooks, state.link_secret)
        self._stop = threading.Event()
        #: set to look now instead of at the next poll (tests, and a job event)
        self.wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        loops = (
            (self._send_webhooks, self.state.settings.webhooks.webhook_poll_interval_seconds, "webhooks"),
            (self._enforce_budgets, self.state.settings.estimate.budget_check_seconds, "budgets"),
        )
        for tick, interval, name in loops:
            thread = threading.Thread(target=run_until_stopped, args=(tick, self._stop, self.wake, interval, name),
                                      name=f"tuneforge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self.sender.close()

    def _send_webhooks(self) -> None:
        while self.sender.tick() and not self._stop.is_set():
            pass

    def _enforce_budgets(self) -> None:
        with self.state.sessions() as session:
            enforce(session, self.state.executor)
