"""``/v1/models``: the bundled base model, and this organization's succeeded fine-tuned models."""

from __future__ import annotations

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, assert_error, chat_file, create_job, update_job, upload
from tests.support.live_server import ThreadServer


def test_list_has_the_bundled_base_model(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    base = models[BASE_MODEL]
    assert base["object"] == "model"
    assert isinstance(base["created"], int) and base["created"] > 0
    assert base["owned_by"] == "tuneforge"
    assert base["kind"] == "base"
    assert all(m["kind"] == "base" for m in body["data"])


def test_get_base_model(client: httpx.Client) -> None:
    resp = client.get(f"/v1/models/{BASE_MODEL}")
    assert resp.status_code == 200
    listed = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == BASE_MODEL)
    assert resp.json() == listed


@pytest.mark.parametrize("alias", ["HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"])
def test_aliases_resolve_to_the_base_model(client: httpx.Client, alias: str) -> None:
    assert client.get(f"/v1/models/{alias}").json()["id"] == BASE_MODEL


@pytest.mark.parametrize("model_id", ["gpt-4o-mini", "org/unknown-model", "ft:SmolLM2-135M-Instruct:default::nope"])
def test_unknown_model_is_404(client: httpx.Client, model_id: str) -> None:
    error = assert_error(client.get(f"/v1/models/{model_id}"), 404, code="model_not_found", param="model")
    assert model_id in error["message"]


def test_succeeded_jobs_are_listed_as_tuned_models(client: httpx.Client, api_server: ThreadServer) -> None:
    file_id = upload(client, chat_file())["id"]
    done = create_job(client, file_id, suffix="done")
    pending = create_job(client, file_id, suffix="pending")
    failed = create_job(client, file_id, suffix="failed")
    name = f"ft:{BASE_MODEL}:default:done:{done['id'].removeprefix('ftjob-')[:12]}"
    update_job(api_server, done["id"], status="succeeded", fine_tuned_model=name, finished_at=done["created_at"] + 5)
    update_job(api_server, failed["id"], status="failed", fine_tuned_model="ft:should-not-show")

    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == [BASE_MODEL, name]
    assert pending["id"] not in ids

    tuned = client.get(f"/v1/models/{name}").json()
    assert tuned == {
        "id": name, "object": "model", "created": done["created_at"] + 5, "owned_by": "default",
        "kind": "fine-tuned", "base_model": BASE_MODEL, "fine_tuning_job_id": done["id"], "engine": "tuneforge",
    }
    assert_error(client.get("/v1/models/ft:should-not-show"), 404, code="model_not_found")
