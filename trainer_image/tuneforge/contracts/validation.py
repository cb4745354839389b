"""pydantic's validation errors of the contract models as a person needs them: which field, as they wrote it,
and what is wrong. Shared by the service (400s), the operator (InvalidSpec) and the trainer (exit 65).

pydantic's error locations carry its own bookkeeping: the tag of a discriminated union (``method.dpo.dpo.…``)
and the member of a plain union (``n_epochs.constrained-int``). :func:`public_path` walks the request body
alongside the location and keeps only the keys and indexes that exist in it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tuneforge.contracts.hyperparameters import UNSUPPORTED

_LOCATIONS = ("body", "query", "path", "header", "form", "cookie")


def public_path(loc: Sequence[Any], body: Any) -> str:
    parts: list[str] = []
    node = body
    tag_possible = True  # a union's tag comes first in the location, once, right where its object starts
    for item in loc:
        if (not parts and item in _LOCATIONS) or item == "[key]":
            continue  # where the value came from; "[key]": the error is about the dictionary key just named
        if isinstance(node, dict):
            if tag_possible and node.get("type") == item:
                tag_possible = False
                continue
            node = node.get(item) if isinstance(item, str) else None
            tag_possible = True
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
            tag_possible = True
        elif parts:
            break  # below a value: the member labels of a union
        parts.append(str(item))
    return ".".join(parts)


def _message(error: dict[str, Any], param: str) -> str:
    kind = error.get("type", "")
    name = param.rsplit(".", 1)[-1] if param else ""
    if kind == "extra_forbidden":
        return UNSUPPORTED.get(name) or f"Unknown parameter '{param}'."
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        return f"Invalid value for '{param}': {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}."
    if kind == "union_tag_not_found":
        return f"Missing required parameter: '{param}'."
    if kind == "missing":
        return f"Missing required parameter: '{param}'."
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}" if param else f"Invalid request: {message}"


def describe(errors: Sequence[Any], body: Any, rename: Callable[[str], str] = str) -> list[dict[str, str]]:
    """One ``{"param", "message"}`` per field at fault, in order. A field that could be a number or ``"auto"``
    fails both ways: the number's complaint is the one shown, with "or 'auto'" added. ``rename`` maps a path
    in ``body`` to the name the client used."""
    out: dict[str, dict[str, str]] = {}
    also_auto: set[str] = set()
    for error in errors:
        param = rename(public_path(error.get("loc", ()), body))
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            param = f"{param}.type" if param else "type"
        # the "auto" branch of a number-or-"auto" field (a Literal that merely includes "auto" is its own field)
        if error.get("type") == "literal_error" and str(error.get("msg", "")) == "Input should be 'auto'":
            also_auto.add(param)
            continue
        out.setdefault(param, {"param": param, "message": _message(error, param)})
    for param in also_auto:
        if param in out:
            out[param]["message"] = out[param]["message"].rstrip(".") + ", or 'auto'"
        else:
            out[param] = {"param": param, "message": f"Invalid value for '{param}': Input should be 'auto'"}
    return list(out.values())


def first_problem(errors: Sequence[Any], body: Any, prefix: str = "") -> str:
    """``where: what`` of the first problem, for one-line messages (``prefix`` names the document)."""
    details = describe(errors, body)
    if not details:
        return f"{prefix or 'input'}: invalid"
    where = ".".join(p for p in (prefix, details[0]["param"]) if p)
    message = details[0]["message"]
    more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
    return f"{where}: {message}{more}"
