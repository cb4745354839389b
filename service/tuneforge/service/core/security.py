"""API keys, per-job progress tokens and signed download links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

API_KEY_PREFIX = "tf-"
JOB_TOKEN_PREFIX = "tfjob-"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_job_token() -> str:
    return JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # keys are 256-bit random strings, so a plain SHA-256 is not brute-forceable; no salt needed
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_match(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def sign_link(secret_key: str, path: str, expires_at: int) -> str:
    message = f"{path}\n{expires_at}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def check_link(secret_key: str, path: str, expires_at: int, signature: str) -> bool:
    if expires_at < int(time.time()):
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters, which a forged signature may hold
    return hmac.compare_digest(sign_link(secret_key, path, expires_at).encode(), signature.encode())


def _fernet(key_material: str) -> Any:
    from cryptography.fernet import Fernet

    # a separate key for each use of the service's secret: these never sign download links
    key = hashlib.sha256(b"tuneforge webhook secrets\n" + key_material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: str, key_material: str) -> str:
    """A secret the service must read back (a webhook signing secret), encrypted with a key derived from the
    service's own secret (``TUNEFORGE_SECRET_KEY``, or the one generated in its home)."""
    return str(_fernet(key_material).encrypt(secret.encode()).decode())


def decrypt_secret(token: str, key_material: str) -> str:
    return str(_fernet(key_material).decrypt(token.encode()).decode())
