"""A small HTTP client for the CLI (the official ``openai`` package works too)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tuneforge.service.cli.settings import ClientSettings


class APIError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") or {}
        self.status = status
        self.message = err.get("message") or str(body)
        self.details = err.get("details")
        super().__init__(f"HTTP {status}: {self.message}")


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 60) -> None:
        settings = ClientSettings()
        self.base_url = (base_url or settings.url).rstrip("/")
        key = api_key or settings.key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:500]}}
        if response.status_code >= 400:
            raise APIError(response.status_code, body)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self.http.get(path, params={k: v for k, v in params.items() if v is not None}))

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self._json(self.http.post(path, json=json, headers=headers))

    def delete(self, path: str) -> Any:
        return self._json(self.http.delete(path))

    def upload(self, path: Path, purpose: str = "fine-tune") -> Any:
        with open(path, "rb") as fh:
            response = self.http.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose},
                                      timeout=600)
        return self._json(response)

    def iter_events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every event of a job, oldest first."""
        after = None
        while True:
            page = self.get(f"/v1/fine_tuning/jobs/{job_id}/events", after=after, limit=100, order="asc")
            yield from page["data"]
            if not page["has_more"]:
                return
            after = page["data"][-1]["id"]

    def download_artifacts(self, job_id: str, out_dir: Path) -> list[Path]:
        """Download every artifact and check its size and sha256 against the listing (from the manifest)."""
        listing = self.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts")["data"]
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for item in listing:
            dest = out_dir / item["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            tmp = dest.with_name(dest.name + ".part")
            # the URL is a signed link: no API key is sent with it
            with httpx.stream("GET", item["url"], timeout=600) as response:
                if response.status_code >= 400:
                    body = response.read().decode("utf-8", "replace")
                    # our links answer JSON errors; presigned S3 links answer XML
                    try:
                        error = httpx.Response(200, content=body).json()
                    except ValueError:
                        error = {"error": {"message": f"download of {item['name']} failed: {body[:300]}"}}
                    raise APIError(response.status_code, error)
                with open(tmp, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            if size != item["bytes"] or digest.hexdigest() != item["sha256"]:
                tmp.unlink(missing_ok=True)
                raise APIError(0, {"error": {"message": f"{item['name']}: checksum mismatch after download"}})
            tmp.replace(dest)
            paths.append(dest)
        return paths
