"""Public object ids, shaped like OpenAI's (``file-…``, ``ftjob-…``)."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def new_key_id() -> str:
    """An API key's public id (``key_…``, OpenAI's shape); never the key itself."""
    return f"key_{secrets.token_hex(12)}"
