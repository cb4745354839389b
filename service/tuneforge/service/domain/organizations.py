"""Organizations and their API keys, and the audit log that records every change to them.

Each action and its audit entry are committed in one transaction: there is no change without its record.
An API key's secret exists only in the response that creates it; the database keeps its SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.service.core.errors import Conflict, Forbidden
from tuneforge.service.core.ids import new_id, new_key_id
from tuneforge.service.core.roles import Principal, Role
from tuneforge.service.core.security import hash_secret, new_api_key
from tuneforge.service.db.models import ApiKey, AuditLog, Tenant, now
from tuneforge.service.db.repo import OrganizationRepo, SystemRepo

#: characters of a key shown before the ellipsis (``tf-`` and five of the random part)
SHOWN_PREFIX = 8


def redact(key: str) -> str:
    return f"{key[:SHOWN_PREFIX]}…{key[-4:]}"


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit log: a key (``principal``), or the operator on the server (None)."""

    principal: Principal | None
    request_id: str | None = None


#: every kind of audit-log entry (a filter naming another is refused rather than matching nothing)
AuditEventType = Literal["organization.created", "organization.updated", "api_key.created", "api_key.updated",
                         "api_key.revoked"]


def _audit(repo: OrganizationRepo, actor: Actor, org_id: str, type: AuditEventType, resource_id: str | None,
           details: dict[str, Any] | None) -> None:
    who = actor.principal
    repo.add_audit(AuditLog(
        id=new_id("audit_log"), tenant_id=org_id, type=type, effective_at=now(),
        actor_key_id=who.key_id if who else None, actor_tenant_id=who.tenant_id if who else None,
        actor_redacted_value=who.redacted_value if who else None, request_id=actor.request_id,
        resource_id=resource_id, details=details,
    ))


def _commit(repo: OrganizationRepo) -> None:
    try:
        repo.commit()
    except BaseException:
        repo.rollback()
        raise


def _require_instance_admin(repo: OrganizationRepo, what: str) -> None:
    if not repo.instance_admin:
        raise Forbidden(f"Only an admin key of the operator's organization can {what}.",
                        code="insufficient_permissions")


def create_organization(repo: OrganizationRepo, actor: Actor, org_id: str, name: str,
                        limits: dict[str, Any] | None) -> Tenant:
    _require_instance_admin(repo, "create organizations")
    if repo.org_exists(org_id):
        raise Conflict(f"An organization with id '{org_id}' exists already.", param="id",
                       code="organization_exists")
    org = Tenant(id=org_id, name=name or org_id, limits=_clean(limits), created_at=now())
    repo.add_org(org)
    _audit(repo, actor, org_id, "organization.created", org_id, {"name": org.name, "limits": org.limits})
    _commit(repo)
    return org


def _clean(limits: dict[str, Any] | None) -> dict[str, Any] | None:
    kept = {k: v for k, v in (limits or {}).items() if v is not None}
    return kept or None


def update_organization(repo: OrganizationRepo, actor: Actor, org_id: str, name: str | None,
                        limits: dict[str, Any] | None) -> Tenant:
    """``limits`` holds only the fields the request set; a ``None`` value returns that limit to the default."""
    org = repo.get_org(org_id)
    _require_instance_admin(repo, "change an organization's name or limits")
    changes: dict[str, Any] = {}
    if name is not None and name != org.name:
        changes["name"] = name
        org.name = name
    if limits:
        merged = {**(org.limits or {}), **limits}
        org.limits = _clean(merged)
        changes["limits"] = limits
    if changes:
        _audit(repo, actor, org_id, "organization.updated", org_id, {"changes_requested": changes})
        _commit(repo)
    return org


def create_key(repo: OrganizationRepo, actor: Actor, org_id: str, name: str, role: Role) -> tuple[ApiKey, str]:
    """A new key: its row, and the secret (shown to the caller once, never stored)."""
    org = repo.get_org(org_id)
    secret = new_api_key()
    key = ApiKey(public_id=new_key_id(), tenant_id=org.id, key_hash=hash_secret(secret), name=name,
                 role=role.value, redacted_value=redact(secret), created_at=now(),
                 created_by=actor.principal.key_id if actor.principal else None)
    repo.add_key(key)
    _audit(repo, actor, org.id, "api_key.created", key.public_id,
           {"name": name, "role": role.value, "redacted_value": key.redacted_value})
    _commit(repo)
    return key, secret


def _keep_an_admin(repo: OrganizationRepo, key: ApiKey, what: str) -> None:
    if key.role != Role.ADMIN or key.revoked_at is not None:
        return
    repo.lock(key.tenant_id)  # two admins revoking each other at once: the second one sees the first's revocation
    if repo.count_admin_keys(key.tenant_id) <= 1:
        raise Conflict(f"Cannot {what} key {key.public_id}: it is the organization's last admin key. Create "
                       "another admin key first.", code="last_admin_key")


def update_key(repo: OrganizationRepo, actor: Actor, org_id: str, key_id: str, name: str | None,
               role: Role | None) -> ApiKey:
    key = repo.get_key(org_id, key_id)
    if key.revoked_at is not None:
        raise Conflict(f"Key {key_id} has been revoked and cannot be changed.", code="api_key_revoked")
    changes: dict[str, Any] = {}
    if role is not None and role.value != key.role:
        _keep_an_admin(repo, key, "change the role of")
        changes["role"] = role.value
        key.role = role.value
    if name is not None and name != key.name:
        changes["name"] = name
        key.name = name
    if changes:
        _audit(repo, actor, key.tenant_id, "api_key.updated", key.public_id, {"changes_requested": changes})
        _commit(repo)
    return key


def revoke_key(repo: OrganizationRepo, actor: Actor, org_id: str, key_id: str) -> ApiKey:
    """From the next request on, the key is refused (every request looks the key up; nothing is cached)."""
    key = repo.get_key(org_id, key_id)
    if key.revoked_at is None:
        _keep_an_admin(repo, key, "revoke")
        key.revoked_at = now()
        _audit(repo, actor, key.tenant_id, "api_key.revoked", key.public_id,
               {"name": key.name, "role": key.role, "redacted_value": key.redacted_value})
        _commit(repo)
    return key


def register_key(repo: SystemRepo, tenant: str, key: str, name: str, role: Role) -> bool:
    """A key the operator holds (``TUNEFORGE_API_KEY``, the key file, ``tuneforge keys create --direct``): hashed,
    its organization created when missing; nothing happens when it is registered already."""
    return repo.add_api_key(tenant, hash_secret(key), name=name, role=role.value, public_id=new_key_id(),
                            redacted_value=redact(key))


def register_admin_key(repo: SystemRepo, tenant: str, key: str, name: str) -> bool:
    return register_key(repo, tenant, key, name, Role.ADMIN)
