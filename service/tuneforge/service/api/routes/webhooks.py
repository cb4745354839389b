"""``/v1/webhooks``: an organization's webhook endpoints (create, list, get, update, delete) and their
deliveries with every attempt. The signing secret is shown once, in the answer to the create."""

from __future__ import annotations

import math

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.routing import Router
from tuneforge.service.core.errors import QuotaExceeded
from tuneforge.service.core.roles import Permission, requires
from tuneforge.service.core.security import encrypt_secret
from tuneforge.service.db.models import WebhookDelivery, WebhookEndpoint
from tuneforge.service.domain import webhooks as hooks
from tuneforge.service.schemas import (
    DeletedObject,
    ListObject,
    WebhookAttempt,
    WebhookCreate,
    WebhookDeliveryObject,
    WebhookObject,
    WebhookUpdate,
)

router = Router(prefix="/v1/webhooks", tags=["webhooks"])
#: where the organization's job events are sent is the organization's admins' decision
MANAGE = requires(Permission.MANAGE)


def endpoint_object(row: WebhookEndpoint, secret: str | None = None) -> WebhookObject:
    return WebhookObject(id=row.id, url=row.url, events=list(row.events or []), description=row.description,
                         enabled=row.enabled, created_at=row.created_at, secret=secret)


def delivery_object(row: WebhookDelivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=row.id, endpoint_id=row.endpoint_id, event_id=row.event_id, event_type=row.event_type,
        payload=row.payload, status=row.status,
        attempts=[WebhookAttempt(**a) for a in row.attempt_log or []],
        next_attempt_at=math.ceil(row.next_attempt_at) if row.next_attempt_at is not None else None,
        created_at=row.created_at, finished_at=row.finished_at)


@router.post("", response_model=WebhookObject, summary="Add a webhook endpoint (its secret is shown only now)",
             openapi_extra=MANAGE)
def create(body: WebhookCreate, repo: RepoDep, state: StateDep) -> WebhookObject:
    allow_private = state.settings.webhooks.webhook_allow_private_urls
    url = hooks.check_url(body.url, allow_private=allow_private)
    events = hooks.check_events(body.events)
    if repo.count_webhooks() >= hooks.MAX_ENDPOINTS_PER_TENANT:
        raise QuotaExceeded(f"At most {hooks.MAX_ENDPOINTS_PER_TENANT} webhook endpoints per organization.")
    secret = hooks.new_secret()
    row = repo.add_webhook(hooks.endpoint_row(repo.tenant_id, url, events, body.description,
                                              encrypt_secret(secret, state.link_secret)))
    return endpoint_object(row, secret)


@router.get("", response_model=ListObject, summary="List webhook endpoints")
def list_endpoints(repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20) -> ListObject:
    rows, has_more = repo.list_webhooks(after, limit)
    return page(rows, has_more, endpoint_object)


@router.get("/{endpoint_id}", response_model=WebhookObject, summary="Retrieve a webhook endpoint")
def get_endpoint(endpoint_id: str, repo: RepoDep) -> WebhookObject:
    return endpoint_object(repo.get_webhook(endpoint_id))


@router.post("/{endpoint_id}", response_model=WebhookObject, summary="Update a webhook endpoint",
             openapi_extra=MANAGE)
def update_endpoint(endpoint_id: str, body: WebhookUpdate, repo: RepoDep, state: StateDep) -> WebhookObject:
    row = repo.get_webhook(endpoint_id)
    if body.url is not None:
        row.url = hooks.check_url(body.url, allow_private=state.settings.webhooks.webhook_allow_private_urls)
    if body.events is not None:
        row.events = hooks.check_events(body.events)
    if body.description is not None:
        row.description = body.description
    if body.enabled is not None:
        row.enabled = body.enabled
    repo.save()
    return endpoint_object(row)


@router.delete("/{endpoint_id}", response_model=DeletedObject, summary="Delete a webhook endpoint",
               openapi_extra=MANAGE)
def delete_endpoint(endpoint_id: str, repo: RepoDep) -> DeletedObject:
    repo.delete_webhook(repo.get_webhook(endpoint_id))
    return DeletedObject(id=endpoint_id, object="webhook_endpoint")


@router.get("/{endpoint_id}/deliveries", response_model=ListObject,
            summary="An endpoint's deliveries, newest first, with every attempt")
def list_deliveries(endpoint_id: str, repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20) -> ListObject:
    rows, has_more = repo.list_deliveries(repo.get_webhook(endpoint_id), after, limit)
    return page(rows, has_more, delivery_object)
