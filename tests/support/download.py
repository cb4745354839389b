"""Download a job's artifacts the way the CLI does (size and sha256 verified)."""

from __future__ import annotations

from pathlib import Path

from tuneforge.service.cli.client import Client


def download_all(url: str, api_key: str, job_id: str, out: Path) -> list[str]:
    client = Client(base_url=url, api_key=api_key)
    try:
        return sorted(p.name for p in client.download_artifacts(job_id, out))
    finally:
        client.close()
