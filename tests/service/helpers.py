"""Small helpers shared by the API tests: data lines, uploads, error-shape checks, DB pokes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.live_server import ThreadServer
from tuneforge.service.core.roles import Role
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.organizations import register_key

BASE_MODEL = "SmolLM2-135M-Instruct"


def chat_row(i: int = 0) -> dict[str, Any]:
    return {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"{i + 1}"},
    ]}


def pc_row(i: int = 0) -> dict[str, Any]:
    return {"prompt": f"Count to {i}:", "completion": " ".join(str(n) for n in range(1, i + 2))}


def pref_row(i: int = 0) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Say hello #{i}"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def chat_file(n: int = 3) -> bytes:
    return jsonl([chat_row(i) for i in range(n)])


def upload_raw(client: httpx.Client, content: bytes, filename: str = "train.jsonl",
               purpose: str = "fine-tune") -> httpx.Response:
    return client.post("/v1/files", files={"file": (filename, content, "application/jsonl")},
                       data={"purpose": purpose})


def upload(client: httpx.Client, content: bytes, filename: str = "train.jsonl") -> dict[str, Any]:
    resp = upload_raw(client, content, filename)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def create_job(client: httpx.Client, training_file: str, headers: dict[str, str] | None = None,
               **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": training_file, **body},
                       headers=headers)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    return job


def assert_error(resp: httpx.Response, status: int, *, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, the status, and (when given) the code and param; returns ``error``."""
    assert resp.status_code == status, f"{resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    result: dict[str, Any] = error
    return result


def add_tenant(server: ThreadServer, tenant: str, key: str, role: str = "admin") -> httpx.Client:
    """Register another organization (or another key of one) with its own API key; returns a client that uses
    it."""
    with server.state.sessions() as session:
        register_key(SystemRepo(session), tenant, key, f"test key of {tenant}", Role(role))
    return server.client(key)


def update_job(server: ThreadServer, job_id: str, **fields: Any) -> None:
    with server.state.sessions() as session:
        job = SystemRepo(session).job(job_id)
        assert job is not None, job_id
        for key, value in fields.items():
            setattr(job, key, value)
        session.commit()


def load_job(server: ThreadServer, job_id: str) -> Job:
    with server.state.sessions() as session:
        job = SystemRepo(session).job(job_id)
        assert job is not None, job_id
        return job


def store_snapshot(server: ThreadServer) -> set[str]:
    """Every file under the local object store's root (temporary files included)."""
    root = Path(server.state.store.root)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
