"""``tuneforge orgs``, ``tuneforge keys`` and ``tuneforge audit``: the admin API from the command line.

Every command but ``keys create --direct`` talks to the service with the caller's key (an admin key;
organizations other than one's own need an admin key of the operator's organization). ``keys create --direct``
writes a key straight into the service's database, on the server's machine: the way to the first admin key of
an organization when no admin key is at hand.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.service.cli.client import APIError, Client
from tuneforge.service.cli.settings import service_settings

orgs_app = typer.Typer(help="Organizations (tenants), their limits and usage.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, change, revoke.", no_args_is_help=True)

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="Service URL (default: TUNEFORGE_URL)")]
OrgOpt = Annotated[str | None, typer.Option("--org", help="Organization (default: the key's own)")]
ROLES = "admin | member | read_only | rater"


def _fail(exc: APIError) -> None:
    err_console.print(f"[red]Error ({exc.status}):[/red] {exc.message}")
    raise typer.Exit(1)


def _when(ts: int | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def _keys_path(org: str | None, key_id: str | None = None) -> str:
    base = f"/v1/organizations/{org}/api_keys" if org else "/v1/organization/api_keys"
    return f"{base}/{key_id}" if key_id else base


def _parse_limits(values: list[str]) -> dict[str, Any]:
    """``max_active_jobs=5``; ``max_gpus=default`` returns a limit to the service's default."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE (or NAME=default), got {item!r}")
        if raw == "default":
            out[name] = None
            continue
        try:
            out[name] = int(raw)
        except ValueError:
            raise typer.BadParameter(f"{name}: expected a whole number or 'default', got {raw!r}") from None
    return out


def _show_org(org: dict[str, Any]) -> None:
    table = Table("limit", "value", "in use", title=f"{org['id']} ({org['name']})")
    used = org.get("usage") or {}
    in_use = {"max_active_jobs": used.get("active_jobs"), "max_queued_jobs": used.get("queued_jobs"),
              "max_gpus": used.get("gpus"), "max_stored_bytes": used.get("stored_bytes")}
    for name, value in org["limits"].items():
        table.add_row(name, str(value), "" if in_use.get(name) is None else str(in_use[name]))
    console.print(table)


@orgs_app.command("list")
def orgs_list(url: UrlOpt = None) -> None:
    """Every organization (an organization admin sees their own)."""
    try:
        data = Client(base_url=url).get("/v1/organizations", limit=100)["data"]
    except APIError as exc:
        _fail(exc)
    table = Table("id", "name", "created", "max_active_jobs", "requests_per_minute")
    for org in data:
        table.add_row(org["id"], org["name"], _when(org["created_at"]), str(org["limits"]["max_active_jobs"]),
                      str(org["limits"]["requests_per_minute"]))
    console.print(table)


@orgs_app.command("get")
def orgs_get(org: Annotated[str | None, typer.Argument(help="default: the key's own")] = None,
             url: UrlOpt = None) -> None:
    """An organization's limits and what it uses now."""
    try:
        _show_org(Client(base_url=url).get(f"/v1/organizations/{org}" if org else "/v1/organization"))
    except APIError as exc:
        _fail(exc)


LimitOpt = Annotated[list[str] | None, typer.Option(
    "--limit", help="NAME=VALUE, e.g. max_active_jobs=5 or max_gpus=default (repeatable)")]


@orgs_app.command("create")
def orgs_create(org_id: str, name: str = "", limit: LimitOpt = None, url: UrlOpt = None) -> None:
    """Create an organization (admin key of the operator's organization); then `tuneforge keys create --org`."""
    body: dict[str, Any] = {"id": org_id, "name": name}
    if limit:
        body["limits"] = _parse_limits(limit)
    try:
        org = Client(base_url=url).post("/v1/organizations", json=body)
    except APIError as exc:
        _fail(exc)
    console.print(f"[green]Created[/green] organization {org['id']}")


@orgs_app.command("update")
def orgs_update(org_id: str, name: str | None = None, limit: LimitOpt = None, url: UrlOpt = None) -> None:
    """Rename an organization or change its limits."""
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if limit:
        body["limits"] = _parse_limits(limit)
    try:
        _show_org(Client(base_url=url).post(f"/v1/organizations/{org_id}", json=body))
    except APIError as exc:
        _fail(exc)


@keys_app.command("list")
def keys_list(org: OrgOpt = None, all_keys: Annotated[bool, typer.Option("--all", help="revoked ones too")] = False,
              url: UrlOpt = None) -> None:
    try:
        data = Client(base_url=url).get(_keys_path(org), limit=100, include_revoked=all_keys)["data"]
    except APIError as exc:
        _fail(exc)
    table = Table("id", "key", "name", "role", "created", "last used", "revoked")
    for key in data:
        table.add_row(key["id"], key["redacted_value"], key["name"], key["role"], _when(key["created_at"]),
                      _when(key["last_used_at"]), _when(key["revoked_at"]))
    console.print(table)


@keys_app.command("create")
def keys_create(
    org: OrgOpt = None,
    name: str = "",
    role: Annotated[str, typer.Option(help=ROLES)] = "member",
    direct: Annotated[bool, typer.Option("--direct", help="write to the service's database (on the server's "
                                         "machine, no running service or admin key needed)")] = False,
    url: UrlOpt = None,
) -> None:
    """Create an API key and print it: it is shown this once, only its hash is stored."""
    if direct:
        _create_direct(org or service_settings().auth.default_tenant, name, role)
        return
    try:
        key = Client(base_url=url).post(_keys_path(org), json={"name": name, "role": role})
    except APIError as exc:
        _fail(exc)
    err_console.print(f"Created {key['role']} key {key['id']} in {key['organization_id']}; it is shown only now:")
    print(key["value"])


def _create_direct(org: str, name: str, role: str) -> None:
    from tuneforge.service.core.roles import Role
    from tuneforge.service.core.security import new_api_key
    from tuneforge.service.db.repo import SystemRepo
    from tuneforge.service.db.session import init_db, make_engine, make_session_factory
    from tuneforge.service.domain.organizations import register_key

    try:
        chosen = Role(role)
    except ValueError:
        raise typer.BadParameter(f"unknown role {role!r}: expected {ROLES}") from None
    settings = service_settings()
    engine = make_engine(settings.database_url)
    try:
        init_db(engine, auto_upgrade=settings.db_auto_upgrade)
        key = new_api_key()
        with make_session_factory(engine)() as session:
            register_key(SystemRepo(session), org, key, name or "created with --direct", chosen)
    finally:
        engine.dispose()
    err_console.print(f"Created {chosen.value} key in {org}; it is shown only now:")
    print(key)


@keys_app.command("update")
def keys_update(key_id: str, org: OrgOpt = None, name: str | None = None,
                role: Annotated[str | None, typer.Option(help=ROLES)] = None, url: UrlOpt = None) -> None:
    body = {k: v for k, v in (("name", name), ("role", role)) if v is not None}
    try:
        key = Client(base_url=url).post(_keys_path(org, key_id), json=body)
    except APIError as exc:
        _fail(exc)
    console.print(f"{key['id']} ({key['redacted_value']}): {key['role']}, '{key['name']}'")


@keys_app.command("revoke")
def keys_revoke(key_id: str, org: OrgOpt = None, url: UrlOpt = None) -> None:
    """Revoke a key: refused from the next request on."""
    try:
        Client(base_url=url).delete(_keys_path(org, key_id))
    except APIError as exc:
        _fail(exc)
    console.print(f"Revoked {key_id}")


def audit(
    org: OrgOpt = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="e.g. api_key.created (repeatable)")] = None,
    limit: int = 50,
    url: UrlOpt = None,
) -> None:
    """The audit log: who changed what, when, with which key (admin keys)."""
    path = f"/v1/organizations/{org}/audit_logs" if org else "/v1/organization/audit_logs"
    try:
        data = Client(base_url=url).get(path, limit=min(limit, 100), **{"event_types[]": event_type})["data"]
    except APIError as exc:
        _fail(exc)
    table = Table("when", "type", "resource", "actor", "details")
    for entry in data:
        actor = (entry["actor"].get("api_key") or {}).get("redacted_value") or entry["actor"]["type"]
        table.add_row(_when(entry["effective_at"]), entry["type"], entry.get("resource_id") or "", actor,
                      str(entry.get("details") or ""))
    console.print(table)
