"""What the command line reads from the environment: where the service is and which key to send."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import SettingsError

from tuneforge.contracts.settings import EnvSettings, describe_settings_error
from tuneforge.service.core.config import DEFAULT_HOME, ServerSettings, ServiceSettings


class ClientSettings(EnvSettings):
    url: str = Field("http://127.0.0.1:8000", description="the service's URL")
    api_key: str | None = Field(None, description="the API key to send (default: the key file in "
                                "TUNEFORGE_HOME, written by an embedded server's first start)")
    home: Path = Field(DEFAULT_HOME, description="where an embedded server keeps its API key file",
                       json_schema_extra={"default_text": "~/.tuneforge"})

    def key(self) -> str | None:
        if self.api_key:
            return self.api_key
        path = self.home.expanduser() / "api_key"
        return path.read_text().strip() if path.is_file() else None


def service_settings(host: str | None = None, port: int | None = None) -> ServiceSettings:
    """The service's settings from the environment (host and port from the command line win); a bad value is
    one line naming the variable, and exit status 2."""
    overrides: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        return ServiceSettings(server=ServerSettings(**overrides)) if overrides else ServiceSettings()
    except (ValidationError, SettingsError) as exc:
        print(f"Invalid settings: {describe_settings_error(exc, ServiceSettings)}", file=sys.stderr)
        raise SystemExit(2) from None
