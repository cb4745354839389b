"""Public object ids, shaped like OpenAI's (``file-…``, ``ftjob-…``)."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
