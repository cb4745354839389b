"""The base of every component's settings: pydantic-settings models read from ``TUNEFORGE_*`` variables.

Environment variable names are a contract too: the local executor and the operator pass some to the trainer,
the Helm chart sets the service's and the operator's. Each component keeps one settings model (nested models
where it helps); nothing else reads ``os.environ`` for configuration.

Tests and tools build settings explicitly with :func:`explicit`, so a developer's environment never leaks in.
:func:`markdown_table` renders the README's configuration tables from the models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

_READ_ENVIRONMENT: ContextVar[bool] = ContextVar("tuneforge_read_environment", default=True)
S = TypeVar("S", bound="EnvSettings")


def _is_settings_group(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, EnvSettings)


class _FlatEnvSource(EnvSettingsSource):
    """Environment variables for plain fields only: a nested settings group reads its own variables (so
    ``TUNEFORGE_EXECUTOR=local`` is the executor's kind, not a JSON value for the ``executor`` group)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if _is_settings_group(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


class EnvSettings(BaseSettings):
    """Settings from init arguments, then ``TUNEFORGE_*`` environment variables, then defaults."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not _READ_ENVIRONMENT.get():
            return (init_settings,)
        return (init_settings, _FlatEnvSource(settings_cls))


@contextmanager
def environment_ignored() -> Iterator[None]:
    token = _READ_ENVIRONMENT.set(False)
    try:
        yield
    finally:
        _READ_ENVIRONMENT.reset(token)


def explicit(cls: type[S], **values: Any) -> S:
    """``cls`` from ``values`` and defaults only, the environment ignored (nested settings included)."""
    with environment_ignored():
        return cls(**values)


def env_name(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The variable that sets ``name`` (its first, preferred one when there are several)."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    prefix = str(model.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _default_text(field: FieldInfo) -> str:
    shown = (field.json_schema_extra or {}).get("default_text") if isinstance(field.json_schema_extra, dict) else None
    if shown is not None:
        return str(shown)
    if field.default_factory is not None or field.is_required():
        return ""
    value = field.default
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rows(model: type[BaseModel]) -> Iterator[tuple[str, str, str]]:
    """(variable, default, meaning) for every field of ``model``, nested settings models expanded."""
    for name, field in model.model_fields.items():
        if _is_settings_group(field):
            assert isinstance(field.annotation, type)
            yield from rows(field.annotation)
            continue
        if field.exclude:
            continue
        yield env_name(model, name, field), _default_text(field), " ".join((field.description or "").split())


def markdown_table(model: type[BaseModel]) -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for variable, default, meaning in rows(model):
        default_cell = f"`{default}`" if default and not default.startswith("(") else default
        lines.append(f"| `{variable}` | {default_cell} | {meaning} |")
    return "\n".join(lines) + "\n"


def _groups(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        if _is_settings_group(field):
            assert isinstance(field.annotation, type)
            yield from _groups(field.annotation)


def describe_settings_error(exc: Exception, model: type[BaseModel]) -> str:
    """A settings error as "VARIABLE=value: what is wrong", naming the environment variable (for a person)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):  # pydantic-settings' SettingsError: a value that is not valid JSON
        match = re.search(r'field "(\w+)"', str(exc))
        found = [g for g in _groups(model) if match and match.group(1) in g.model_fields]
        variable = env_name(found[0], match.group(1), found[0].model_fields[match.group(1)]) if found and match \
            else "a setting"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        return f"{variable} is not valid JSON{cause}"
    # a group constructed on its own (its default factory read the environment) names itself in the title
    title = getattr(exc, "title", None)
    start = next((g for g in _groups(model) if g.__name__ == title), model)
    lines = []
    for error in errors():
        loc = [str(p) for p in error.get("loc", ())]
        owner, variable, rest = start, "a setting", loc
        while rest and rest[0] in owner.model_fields:
            field = owner.model_fields[rest[0]]
            if _is_settings_group(field):
                assert isinstance(field.annotation, type)
                owner, rest = field.annotation, rest[1:]
                continue
            variable, rest = env_name(owner, rest[0], field), rest[1:]
            break
        where = "".join(f"[{p!r}]" for p in rest)
        lines.append(f"{variable}{where}={error.get('input')!r}: {error.get('msg', 'invalid value')}")
    return "; ".join(lines)
