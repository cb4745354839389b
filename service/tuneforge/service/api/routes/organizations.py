"""The admin API, shaped like OpenAI's (``/v1/organization/…``): organizations, API keys, the audit log.

- ``/v1/organization``: the caller's organization (its limits and usage; any role that can read).
- ``/v1/organization/api_keys[/{key_id}]`` and ``/v1/organization/audit_logs``: its keys and audit log
  (admin keys).
- ``/v1/organizations[/{org_id}]``: every organization, for admins of the operator's organization
  (``TUNEFORGE_DEFAULT_TENANT``); an admin of another organization sees only their own, and another one is a
  404 like a missing one. ``/v1/organizations/{org_id}/api_keys…`` and ``…/audit_logs`` are the same routes for
  a named organization.

A key's secret is in the response that creates it (``value``) and never again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path, Query, Request

from tuneforge.service.api.deps import OrgRepoDep, PrincipalDep, RepoDep, StateDep
from tuneforge.service.api.pagination import AfterQuery, LimitQuery, page
from tuneforge.service.api.routing import Router
from tuneforge.service.core.roles import Permission, requires
from tuneforge.service.db.models import ApiKey, AuditLog, Tenant
from tuneforge.service.db.repo import OrganizationRepo, TenantRepo
from tuneforge.service.domain import organizations as orgs
from tuneforge.service.domain.job_requests import quota_default_gpus
from tuneforge.service.domain.quotas import effective_limits, usage
from tuneforge.service.schemas import (
    ApiKeyCreate,
    ApiKeyObject,
    ApiKeyUpdate,
    AuditActor,
    AuditActorKey,
    AuditLogObject,
    DeletedObject,
    ListObject,
    OrganizationCreate,
    OrganizationLimits,
    OrganizationObject,
    OrganizationUpdate,
    OrganizationUsage,
)

router = Router(tags=["organization"])
MANAGE = requires(Permission.MANAGE)
OrgId = Annotated[str, Path(max_length=64, description="The organization's id")]
KeyId = Annotated[str, Path(max_length=64, description="The API key's id (key_…)")]


# -- presenters --

def org_object(state: Any, org: Tenant, repo: TenantRepo | None = None) -> OrganizationObject:
    limits = effective_limits(state.settings.limits, org.limits)
    used = None
    if repo is not None:
        u = usage(repo, quota_default_gpus(state.settings))
        used = OrganizationUsage(active_jobs=u.active_jobs, queued_jobs=u.queued_jobs, gpus=u.gpus,
                                 stored_bytes=u.stored_bytes)
    return OrganizationObject(id=org.id, name=org.name, created_at=org.created_at,
                              limits=OrganizationLimits(**limits.__dict__), usage=used)


def key_object(row: ApiKey, value: str | None = None) -> ApiKeyObject:
    return ApiKeyObject(id=row.public_id, name=row.name, role=row.role, redacted_value=row.redacted_value,
                        value=value, organization_id=row.tenant_id, created_at=row.created_at,
                        created_by=row.created_by, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


def audit_object(row: AuditLog) -> AuditLogObject:
    if row.actor_key_id:
        actor = AuditActor(type="api_key", api_key=AuditActorKey(
            id=row.actor_key_id, redacted_value=row.actor_redacted_value, organization_id=row.actor_tenant_id))
    else:
        actor = AuditActor(type="operator")
    return AuditLogObject(id=row.id, type=row.type, effective_at=row.effective_at, organization_id=row.tenant_id,
                          actor=actor, resource_id=row.resource_id, details=row.details, request_id=row.request_id)


def _actor(request: Request, principal: PrincipalDep) -> orgs.Actor:
    return orgs.Actor(principal, getattr(request.state, "request_id", None))


# -- the caller's organization --

@router.get("/v1/organization", response_model=OrganizationObject,
            summary="The caller's organization: its limits and current usage")
def get_own_organization(repo: RepoDep, state: StateDep) -> OrganizationObject:
    return org_object(state, repo.organization(), repo)


# -- every organization (admins of the operator's organization) --

@router.get("/v1/organizations", response_model=ListObject, openapi_extra=MANAGE,
            summary="List organizations (an organization admin sees their own)")
def list_organizations(orepo: OrgRepoDep, state: StateDep, after: AfterQuery = None,
                       limit: LimitQuery = 20) -> ListObject:
    rows, has_more = orepo.list_orgs(after, limit)
    return page(rows, has_more, lambda org: org_object(state, org))


@router.post("/v1/organizations", response_model=OrganizationObject, openapi_extra=MANAGE,
             summary="Create an organization (admins of the operator's organization)")
def create_organization(body: OrganizationCreate, orepo: OrgRepoDep, state: StateDep, request: Request,
                        principal: PrincipalDep) -> OrganizationObject:
    limits = body.limits.model_dump(exclude_none=True) if body.limits else None
    org = orgs.create_organization(orepo, _actor(request, principal), body.id, body.name, limits)
    return org_object(state, org)


@router.get("/v1/organizations/{org_id}", response_model=OrganizationObject, openapi_extra=MANAGE,
            summary="Retrieve an organization with its usage")
def get_organization(org_id: OrgId, orepo: OrgRepoDep, state: StateDep) -> OrganizationObject:
    org = orepo.get_org(org_id)
    return org_object(state, org, TenantRepo(orepo.session, org.id))


@router.post("/v1/organizations/{org_id}", response_model=OrganizationObject, openapi_extra=MANAGE,
             summary="Rename an organization or change its limits (null: back to the service's default)")
def update_organization(org_id: OrgId, body: OrganizationUpdate, orepo: OrgRepoDep, state: StateDep,
                        request: Request, principal: PrincipalDep) -> OrganizationObject:
    limits = body.limits.model_dump(exclude_unset=True) if body.limits else None
    org = orgs.update_organization(orepo, _actor(request, principal), org_id, body.name, limits)
    return org_object(state, org)


# -- API keys and the audit log: one implementation, two paths --

def _list_keys(orepo: OrganizationRepo, org_id: str, after: str | None, limit: int,
               include_revoked: bool) -> ListObject:
    rows, has_more = orepo.keys(org_id, after, limit, include_revoked)
    return page(rows, has_more, key_object)


def _audit_logs(orepo: OrganizationRepo, org_id: str, after: str | None, limit: int,
                types: Sequence[str] | None, actors: list[str] | None) -> ListObject:
    rows, has_more = orepo.audit_logs(org_id, after, limit, list(types) if types else None, actors)
    return page(rows, has_more, audit_object)


IncludeRevoked = Annotated[bool, Query(description="also list revoked keys")]
EventTypes = Annotated[list[orgs.AuditEventType] | None, Query(alias="event_types[]", max_length=20,
                                                description="only these types, e.g. api_key.created")]
ActorIds = Annotated[list[str] | None, Query(alias="actor_ids[]", max_length=20,
                                              description="only actions of these API keys")]


@router.get("/v1/organization/api_keys", response_model=ListObject, openapi_extra=MANAGE,
            summary="List the organization's API keys (never their secrets)")
def list_own_keys(orepo: OrgRepoDep, principal: PrincipalDep, after: AfterQuery = None, limit: LimitQuery = 20,
                  include_revoked: IncludeRevoked = False) -> ListObject:
    return _list_keys(orepo, principal.tenant_id, after, limit, include_revoked)


@router.get("/v1/organizations/{org_id}/api_keys", response_model=ListObject, openapi_extra=MANAGE,
            summary="List an organization's API keys")
def list_keys(org_id: OrgId, orepo: OrgRepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
              include_revoked: IncludeRevoked = False) -> ListObject:
    return _list_keys(orepo, org_id, after, limit, include_revoked)


@router.post("/v1/organization/api_keys", response_model=ApiKeyObject, openapi_extra=MANAGE,
             summary="Create an API key; its secret is in this response only")
def create_own_key(body: ApiKeyCreate, orepo: OrgRepoDep, request: Request, principal: PrincipalDep) -> ApiKeyObject:
    return create_key(principal.tenant_id, body, orepo, request, principal)


@router.post("/v1/organizations/{org_id}/api_keys", response_model=ApiKeyObject, openapi_extra=MANAGE,
             summary="Create an API key in an organization; its secret is in this response only")
def create_key(org_id: OrgId, body: ApiKeyCreate, orepo: OrgRepoDep, request: Request,
               principal: PrincipalDep) -> ApiKeyObject:
    row, secret = orgs.create_key(orepo, _actor(request, principal), org_id, body.name, body.role)
    return key_object(row, secret)


@router.get("/v1/organization/api_keys/{key_id}", response_model=ApiKeyObject, openapi_extra=MANAGE,
            summary="Retrieve an API key")
def get_own_key(key_id: KeyId, orepo: OrgRepoDep, principal: PrincipalDep) -> ApiKeyObject:
    return key_object(orepo.get_key(principal.tenant_id, key_id))


@router.get("/v1/organizations/{org_id}/api_keys/{key_id}", response_model=ApiKeyObject, openapi_extra=MANAGE,
            summary="Retrieve an organization's API key")
def get_key(org_id: OrgId, key_id: KeyId, orepo: OrgRepoDep) -> ApiKeyObject:
    return key_object(orepo.get_key(org_id, key_id))


@router.post("/v1/organization/api_keys/{key_id}", response_model=ApiKeyObject, openapi_extra=MANAGE,
             summary="Rename an API key or change its role")
def update_own_key(key_id: KeyId, body: ApiKeyUpdate, orepo: OrgRepoDep, request: Request,
                   principal: PrincipalDep) -> ApiKeyObject:
    return update_key(principal.tenant_id, key_id, body, orepo, request, principal)


@router.post("/v1/organizations/{org_id}/api_keys/{key_id}", response_model=ApiKeyObject, openapi_extra=MANAGE,
             summary="Rename an organization's API key or change its role")
def update_key(org_id: OrgId, key_id: KeyId, body: ApiKeyUpdate, orepo: OrgRepoDep, request: Request,
               principal: PrincipalDep) -> ApiKeyObject:
    return key_object(orgs.update_key(orepo, _actor(request, principal), org_id, key_id, body.name, body.role))


@router.delete("/v1/organization/api_keys/{key_id}", response_model=DeletedObject, openapi_extra=MANAGE,
               summary="Revoke an API key (refused from the next request on)")
def revoke_own_key(key_id: KeyId, orepo: OrgRepoDep, request: Request, principal: PrincipalDep) -> DeletedObject:
    return revoke_key(principal.tenant_id, key_id, orepo, request, principal)


@router.delete("/v1/organizations/{org_id}/api_keys/{key_id}", response_model=DeletedObject, openapi_extra=MANAGE,
               summary="Revoke an organization's API key")
def revoke_key(org_id: OrgId, key_id: KeyId, orepo: OrgRepoDep, request: Request,
               principal: PrincipalDep) -> DeletedObject:
    orgs.revoke_key(orepo, _actor(request, principal), org_id, key_id)
    return DeletedObject(id=key_id, object="organization.api_key.deleted")


@router.get("/v1/organization/audit_logs", response_model=ListObject, openapi_extra=MANAGE,
            summary="The organization's audit log: administrative actions, newest first")
def own_audit_logs(orepo: OrgRepoDep, principal: PrincipalDep, after: AfterQuery = None, limit: LimitQuery = 20,
                   event_types: EventTypes = None, actor_ids: ActorIds = None) -> ListObject:
    return _audit_logs(orepo, principal.tenant_id, after, limit, event_types, actor_ids)


@router.get("/v1/organizations/{org_id}/audit_logs", response_model=ListObject, openapi_extra=MANAGE,
            summary="An organization's audit log, newest first")
def audit_logs(org_id: OrgId, orepo: OrgRepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
               event_types: EventTypes = None, actor_ids: ActorIds = None) -> ListObject:
    return _audit_logs(orepo, org_id, after, limit, event_types, actor_ids)
