"""Deliver queued webhook events, signed as Standard Webhooks says, retried with exponential back-off.

Each pass claims due deliveries (a compare-and-set on ``next_attempt_at``, so replicas never send one twice at
once), POSTs them with no database connection held, and records the attempt: 2xx is delivered; anything else
(an error status, a timeout, a refused connection, a private address) is retried after
``backoff * 2**(attempt-1)`` seconds (+-20% jitter, at most ``max_backoff``) until ``max_attempts``, then the
delivery is ``failed``. Headers: ``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp``,
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body`` with the endpoint's secret).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from tuneforge.service.core.config import WebhookSettings
from tuneforge.service.core.security import decrypt_secret
from tuneforge.service.db.models import now
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.webhooks import private_address

log = logging.getLogger(__name__)
USER_AGENT = "tuneforge-webhooks/1"
#: how long a claimed delivery is reserved for the sender that claimed it
LEASE_SECONDS = 120.0
MAX_LOGGED_BODY = 500


@dataclass(frozen=True)
class _Claimed:
    id: str
    event_id: str
    url: str
    secret: str
    body: str
    attempts: int


def retry_delay(attempt: int, settings: WebhookSettings, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``, after ``attempt`` failed ones."""
    base = settings.webhook_backoff_seconds * 2 ** max(0, attempt - 1)
    jitter = (rng or random).uniform(0.8, 1.2)
    return float(min(settings.webhook_max_backoff_seconds, base * jitter))


def signed_headers(secret: str, event_id: str, body: str, at: dt.datetime | None = None) -> dict[str, str]:
    at = at or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(event_id, at, body)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature,
            "content-type": "application/json", "user-agent": USER_AGENT}


def _resolves_private(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        address = str(info[4][0])
        if private_address(address):
            return f"{host} resolves to a private address ({address}); this deployment delivers to public ones only"
    return None


class WebhookSender:
    def __init__(self, sessions: sessionmaker[Session], settings: WebhookSettings, key_material: str) -> None:
        self.sessions = sessions
        self.settings = settings
        self.key_material = key_material
        self.client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def tick(self, batch: int = 20) -> int:
        """One pass: claim and send what is due; returns how many were attempted."""
        claimed = self._claim(batch)
        for item in claimed:
            outcome = self._send(item)
            self._record(item, *outcome)
        return len(claimed)

    def _claim(self, batch: int) -> list[_Claimed]:
        out = []
        with self.sessions() as session:
            repo = SystemRepo(session)
            for delivery in repo.due_deliveries(time.time(), batch):
                endpoint = repo.webhook_endpoint(delivery.endpoint_id)
                if endpoint is None or not repo.claim_delivery(delivery, time.time() + LEASE_SECONDS):
                    continue
                out.append(_Claimed(delivery.id, delivery.event_id, endpoint.url,
                                    decrypt_secret(endpoint.secret_encrypted, self.key_material),
                                    json.dumps(delivery.payload, separators=(",", ":")), delivery.attempts))
        return out

    def _send(self, item: _Claimed) -> tuple[int | None, str | None, float]:
        started = time.monotonic()
        if not self.settings.webhook_allow_private_urls:
            refused = _resolves_private(item.url)
            if refused:
                return None, refused, 0.0
        try:
            response = self.client.post(item.url, content=item.body.encode(),
                                        headers=signed_headers(item.secret, item.event_id, item.body))
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:MAX_LOGGED_BODY], time.monotonic() - started
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}: " \
            f"{response.text[:MAX_LOGGED_BODY]}"
        return response.status_code, error, time.monotonic() - started

    def _record(self, item: _Claimed, status_code: int | None, error: str | None, seconds: float) -> None:
        with self.sessions() as session:
            delivery = SystemRepo(session).delivery(item.id)
            if delivery is None:  # its endpoint was deleted meanwhile
                return
            attempt = delivery.attempts + 1
            entry: dict[str, Any] = {"attempt": attempt, "at": now(), "status_code": status_code, "error": error,
                                     "duration_ms": round(seconds * 1000, 1)}
            delivery.attempt_log = [*(delivery.attempt_log or []), entry]
            delivery.attempts = attempt
            if error is None:
                delivery.status, delivery.next_attempt_at, delivery.finished_at = "succeeded", None, now()
            elif attempt >= self.settings.webhook_max_attempts:
                delivery.status, delivery.next_attempt_at, delivery.finished_at = "failed", None, now()
                log.warning("webhook %s to %s failed for good after %d attempts: %s", item.event_id, item.url,
                            attempt, error)
            else:
                delivery.next_attempt_at = time.time() + retry_delay(attempt, self.settings)
            session.commit()
