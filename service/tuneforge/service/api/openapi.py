"""The OpenAPI document as the service really answers: OpenAI's error envelope for every error status a route can
give, and no FastAPI 422 (validation errors are 400s here, see :mod:`errors`).

FastAPI documents only what each route declares; the statuses that come from shared machinery (authentication,
roles, rate limits, body limits, the tenant-scoped repository's 404) are added here, once, from the shape of the
operation, so a new route is documented truthfully without repeating them. Request schemas given inline through
``openapi_extra`` carry their own ``$defs``; those are moved into ``components`` so every ``$ref`` resolves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import compile_path

#: OpenAI's error envelope, the body of every documented error status
ERROR_MODEL = {
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": "string", "nullable": True},
            "code": {"type": "string", "nullable": True},
            "details": {"type": "array", "items": {"type": "object"}}}}},
    }}},
}
#: routes anyone may call without credentials (they answer no error of the shared machinery)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
WRITES = frozenset({"post", "put", "patch", "delete"})
DESCRIPTIONS = {
    400: "invalid request (the message names the field, line or parameter)",
    401: "missing or wrong credentials",
    403: "the API key's role does not allow this, or the download link is invalid or expired",
    404: "no such object for this organization",
    409: "the object's state does not allow this now, or an idempotency key was reused with another body",
    413: "request body or upload too large",
    429: "rate limit or quota reached (see Retry-After)",
}


def _hoist_defs(node: Any, components: dict[str, Any]) -> None:
    """Move nested ``$defs`` into ``components/schemas`` (their ``$ref``s already point there)."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            components.setdefault(name, schema)
            _hoist_defs(schema, components)
        for value in node.values():
            _hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, components)


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer besides those its route declares."""
    if path in OPEN_PATHS:
        return set()
    statuses = {401, 403, 429}
    params = operation.get("parameters", [])
    has_body = "requestBody" in operation
    if params or has_body:
        statuses.add(400)
    if has_body or method == "post":
        statuses.add(413)
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)
    if method in WRITES:
        statuses.add(409)
    return statuses


def document(app: FastAPI) -> dict[str, Any]:
    """Build (once) and return the app's OpenAPI document."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _hoist_defs(operation.get("requestBody"), components)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(error_statuses(path, method, operation)):
                responses.setdefault(str(status), {"description": DESCRIPTIONS[status], **ERROR_MODEL})
    # FastAPI's own validation-error models are never answered
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The documented methods of the resource at ``path`` (for a 405's Allow header, RFC 9110). As in OpenAPI, a
    concrete path wins over a templated one (``/jobs/estimate`` is not ``/jobs/{job_id}``)."""
    matches: list[tuple[int, set[str]]] = []
    for template, operations in document(app).get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            matches.append((template.count("{"), {method.upper() for method in operations}))
    fewest = min((params for params, _ in matches), default=0)
    return sorted(set().union(*(methods for params, methods in matches if params == fewest)))
