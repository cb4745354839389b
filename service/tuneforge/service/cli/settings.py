"""What the command line reads from the environment: where the service is and which key to send."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tuneforge.contracts.settings import EnvSettings
from tuneforge.service.core.config import DEFAULT_HOME


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
