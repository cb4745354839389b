"""Webhooks: an organization's endpoints, and the job events queued for them.

Events are OpenAI's (``fine_tuning.job.succeeded|failed|cancelled``, payload ``{"id": "evt_…", "object":
"event", "created_at", "type", "data": {"id": <job id>}}``) plus tuneforge's ``fine_tuning.job.running``,
``…paused`` and ``…resumed``. A delivery row is written in the same transaction as the status change that
caused it (:func:`enqueue_job_event`, called by :func:`lifecycle.transition`), so an event is never lost
nor sent for a change that was rolled back; :mod:`.webhook_sender` delivers them, signed as Standard Webhooks
says, with retries.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from tuneforge.contracts.status import JobStatus
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import Job, WebhookDelivery, WebhookEndpoint, now
from tuneforge.service.db.repo import webhook_endpoints_of

OPENAI_EVENTS = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
EXTRA_EVENTS = ("fine_tuning.job.running", "fine_tuning.job.paused", "fine_tuning.job.resumed")
EVENT_TYPES = OPENAI_EVENTS + EXTRA_EVENTS
_BY_STATUS = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
    JobStatus.RUNNING: "fine_tuning.job.running",
    JobStatus.PAUSED: "fine_tuning.job.paused",
}
MAX_ENDPOINTS_PER_TENANT = 20


def event_type(old: str, new: str) -> str | None:
    """The webhook event of a status change, or None when there is none."""
    if old == JobStatus.PAUSED and new in (JobStatus.QUEUED, JobStatus.VALIDATING_FILES):
        return "fine_tuning.job.resumed"
    return _BY_STATUS.get(JobStatus(new)) if new in _BY_STATUS else None


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def enqueue_job_event(session: Session, job: Job, old: str, new: str, created_at: int) -> list[WebhookDelivery]:
    """Queue the change's event for every enabled endpoint of the job's organization that subscribed to it
    (not committed: part of the status change's transaction)."""
    kind = event_type(old, new)
    if kind is None:
        return []
    endpoints = [e for e in webhook_endpoints_of(session, job.tenant_id) if e.enabled and kind in (e.events or [])]
    if not endpoints:
        return []
    event_id = "evt_" + secrets.token_hex(12)
    payload: dict[str, Any] = {"id": event_id, "object": "event", "created_at": created_at, "type": kind,
                               "data": {"id": job.id}}
    rows = []
    for endpoint in endpoints:
        row = WebhookDelivery(id=new_id("whdel"), endpoint_id=endpoint.id, tenant_id=job.tenant_id,
                              event_id=event_id, event_type=kind, payload=payload, status="pending", attempts=0,
                              next_attempt_at=time.time(), attempt_log=[], created_at=now())
        session.add(row)
        rows.append(row)
    return rows


# -- endpoint requests --


def private_address(host: str) -> bool:
    """True for loopback, private, link-local, reserved or unspecified addresses."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost")
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
            or address.is_unspecified or address.is_multicast)


def check_url(url: str, *, allow_private: bool) -> str:
    """An endpoint URL: http(s), a host, no credentials; private addresses only when the deployment allows them
    (the sender checks the resolved address again before every delivery)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"'url' is not a valid URL: {exc}", param="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("'url' must be an http:// or https:// URL with a host, e.g. https://example.com/hook",
                             param="url")
    if parts.username or parts.password:
        raise InvalidRequest("'url' must not carry credentials; the secret signs every delivery", param="url")
    if port == 0:
        raise InvalidRequest("'url' has port 0", param="url")
    if not allow_private and private_address(parts.hostname):
        raise InvalidRequest(f"'url' points to a private or loopback address ({parts.hostname}); this deployment "
                             "delivers webhooks to public addresses only", param="url")
    return url


def check_events(events: list[str] | None) -> list[str]:
    if events is None:
        return list(OPENAI_EVENTS)
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"Unknown event type {unknown[0][:100]!r}; known: {', '.join(EVENT_TYPES)}",
                             param="events")
    if not events:
        raise InvalidRequest("'events' must name at least one event type", param="events")
    return list(dict.fromkeys(events))


def endpoint_row(tenant_id: str, url: str, events: list[str], description: str, encrypted_secret: str
                 ) -> WebhookEndpoint:
    return WebhookEndpoint(id=new_id("wh"), tenant_id=tenant_id, url=url, description=description, events=events,
                           enabled=True, secret_encrypted=encrypted_secret, created_at=now())
