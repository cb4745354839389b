"""``/v1/fine_tuning/jobs`` without an executor: creation, validation, idempotency, listing, cancel, events."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.helpers import (
    BASE_MODEL,
    assert_error,
    chat_file,
    create_job,
    jsonl,
    load_job,
    pc_row,
    pref_row,
    update_job,
    upload,
)
from tests.support.live_server import ThreadServer

OPENAI_JOB_FIELDS = {
    "id", "object", "created_at", "finished_at", "estimated_finish", "model", "fine_tuned_model",
    "organization_id", "status", "error", "method", "hyperparameters", "training_file", "validation_file",
    "result_files", "trained_tokens", "seed", "suffix", "metadata",
}


@pytest.fixture
def chat_id(client: httpx.Client) -> str:
    return str(upload(client, chat_file(40), "chat.jsonl")["id"])


@pytest.fixture
def pref_id(client: httpx.Client) -> str:
    return str(upload(client, jsonl([pref_row(i) for i in range(4)]), "pref.jsonl")["id"])


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


def test_create_job_resolves_everything(client: httpx.Client, api_server: ThreadServer, chat_id: str) -> None:
    job = create_job(client, chat_id, hyperparameters={"n_epochs": "auto", "batch_size": "auto",
                                                       "learning_rate_multiplier": "auto"},
                     suffix="my-run", metadata={"team": "nlp"})
    assert set(job) >= OPENAI_JOB_FIELDS
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "validating_files"
    assert job["model"] == BASE_MODEL
    assert job["training_file"] == chat_id
    assert job["validation_file"] is None
    assert job["fine_tuned_model"] is None and job["finished_at"] is None and job["error"] is None
    assert job["result_files"] == [] and job["trained_tokens"] is None
    assert job["suffix"] == "my-run" and job["metadata"] == {"team": "nlp"}
    assert isinstance(job["seed"], int)
    assert job["organization_id"] == "default"

    hp = job["hyperparameters"]
    for key in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        assert isinstance(hp[key], int | float) and not isinstance(hp[key], bool), (key, hp)
        assert hp[key] > 0
    assert job["method"]["type"] == "supervised"
    assert job["method"]["supervised"]["hyperparameters"] == hp
    # the only "auto" left is the one the trainer resolves per device
    assert hp["gradient_checkpointing"] == "auto"
    assert [v for v in _walk(job) if v == "auto"] == ["auto", "auto"], job  # here and under method
    assert job["adapter"]["type"] == "lora"

    # the stored JobSpec is resolved too: gradient_checkpointing stays "auto", for the trainer to decide
    spec = load_job(api_server, job["id"]).spec
    assert [v for v in _walk(spec) if v == "auto"] == ["auto"]
    assert spec["method"]["supervised"]["hyperparameters"]["gradient_checkpointing"] == "auto"
    assert spec["training_file"]["file_id"] == chat_id


def test_explicit_hyperparameters_are_kept(client: httpx.Client, chat_id: str) -> None:
    job = create_job(client, chat_id, seed=7, method={"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}})
    hp = job["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (2, 4, 0.5)
    assert job["seed"] == 7


def test_prompt_completion_file_trains_supervised(client: httpx.Client) -> None:
    file_id = upload(client, jsonl([pc_row(i) for i in range(3)]))["id"]
    assert create_job(client, file_id)["status"] == "validating_files"


def test_dpo_job_on_a_preference_file(client: httpx.Client, pref_id: str) -> None:
    job = create_job(client, pref_id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert [v for v in _walk(job) if v == "auto"] == ["auto", "auto"]  # gradient_checkpointing, shown twice
    assert job["hyperparameters"]["gradient_checkpointing"] == "auto"


def test_validation_file_is_recorded(client: httpx.Client, chat_id: str) -> None:
    valid_id = upload(client, chat_file(5), "valid.jsonl")["id"]
    job = create_job(client, chat_id, validation_file=valid_id)
    assert job["validation_file"] == valid_id


@pytest.mark.parametrize("model", ["no-such-model", "/definitely/not/a/model/dir", "ft:SmolLM2:default::abc"])
def test_unknown_model_is_400(client: httpx.Client, chat_id: str, model: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": chat_id})
    error = assert_error(resp, 400, param="model", code="model_not_available")
    assert model in error["message"] or "fine-tuned" in error["message"]


def test_model_alias_is_accepted(client: httpx.Client, chat_id: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs",
                       json={"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "training_file": chat_id})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_unknown_file_is_404(client: httpx.Client, chat_id: str, param: str) -> None:
    body = {"model": BASE_MODEL, "training_file": chat_id, param: "file-doesnotexist"}
    error = assert_error(client.post("/v1/fine_tuning/jobs", json=body), 404, code="file_not_found", param=param)
    assert "file-doesnotexist" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_preference_file_with_supervised_is_400(client: httpx.Client, pref_id: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": pref_id})
    error = assert_error(resp, 400, code="invalid_file_format", param="training_file")
    assert "preference" in error["message"] and "supervised" in error["message"]


def test_chat_file_with_dpo_is_400(client: httpx.Client, chat_id: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs",
                       json={"model": BASE_MODEL, "training_file": chat_id, "method": {"type": "dpo"}})
    error = assert_error(resp, 400, code="invalid_file_format", param="training_file")
    assert "chat" in error["message"] and "dpo" in error["message"]


def test_validation_file_in_wrong_format_is_400(client: httpx.Client, chat_id: str, pref_id: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs",
                       json={"model": BASE_MODEL, "training_file": chat_id, "validation_file": pref_id})
    assert_error(resp, 400, code="invalid_file_format", param="validation_file")


@pytest.mark.parametrize("hp,param,reason", [
    ({"n_epochs": 0}, "n_epochs", "greater than or equal to 1, or 'auto'"),
    ({"n_epochs": 51}, "n_epochs", "less than or equal to 50"),
    ({"n_epochs": 1.5}, "n_epochs", "valid integer"),
    ({"batch_size": "x"}, "batch_size", "valid integer, or 'auto'"),
    ({"batch_size": True}, "batch_size", "valid integer"),
    ({"learning_rate_multiplier": -1}, "learning_rate_multiplier", "greater than 0"),
    ({"not_a_knob": 3}, "not_a_knob", "Unknown parameter"),
    ({"lr_scheduler": "bogus"}, "lr_scheduler", "'linear', 'cosine'"),
    ({"packing": "maybe"}, "packing", "valid boolean"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing", "valid boolean, or 'auto'"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing", "valid boolean"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "do not reason"),
    ({"beta": 0.1}, "beta", "Unknown parameter"),  # a DPO knob on a supervised job
])
@pytest.mark.parametrize("where", ["top-level", "method"])
def test_bad_hyperparameter_is_400_with_param(client: httpx.Client, chat_id: str, hp: dict[str, Any], param: str,
                                              reason: str, where: str) -> None:
    body: dict[str, Any] = {"model": BASE_MODEL, "training_file": chat_id}
    if where == "top-level":
        body["hyperparameters"] = hp
        expected_param = f"hyperparameters.{param}"
    else:
        body["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
        expected_param = f"method.supervised.hyperparameters.{param}"
    error = assert_error(client.post("/v1/fine_tuning/jobs", json=body), 400, param=expected_param)
    assert reason in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_flags_and_scheduler_are_accepted(client: httpx.Client, chat_id: str) -> None:
    job = create_job(client, chat_id, hyperparameters={"lr_scheduler": "cosine", "packing": True,
                                                       "gradient_checkpointing": "auto"})
    hp = job["hyperparameters"]
    assert (hp["lr_scheduler"], hp["packing"], hp["gradient_checkpointing"]) == ("cosine", True, "auto")


@pytest.mark.parametrize("given,in_spec,shown", [
    ({}, "auto", "auto"),
    ({"gradient_checkpointing": "auto"}, "auto", "auto"),
    ({"gradient_checkpointing": True}, True, True),
    ({"gradient_checkpointing": False}, False, False),
])
def test_gradient_checkpointing_auto_is_left_to_the_trainer(client: httpx.Client, api_server: ThreadServer,
                                                            chat_id: str, given: dict[str, Any], in_spec: bool | str,
                                                            shown: bool | str) -> None:
    job = create_job(client, chat_id, hyperparameters=given)
    assert job["hyperparameters"]["gradient_checkpointing"] == shown
    assert job["method"]["supervised"]["hyperparameters"]["gradient_checkpointing"] == shown
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["hyperparameters"]["gradient_checkpointing"] == shown
    spec = load_job(api_server, job["id"]).spec
    assert spec["method"]["supervised"]["hyperparameters"]["gradient_checkpointing"] == in_spec


@pytest.mark.parametrize("body,param", [
    ({"unexpected_field": 1}, "unexpected_field"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": "x"}}}, "method.supervised.hyperparameters"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": [1]}}}, "method.supervised.hyperparameters"),
    ({"seed": -1}, "seed"),
    ({"suffix": "has spaces!"}, "suffix"),
    ({"method": {"type": "magic"}}, "method.type"),
    ({"adapter": {"type": "lora", "r": 0}}, "adapter.r"),
])
def test_bad_request_fields_are_400(client: httpx.Client, chat_id: str, body: dict[str, Any], param: str) -> None:
    resp = client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": chat_id, **body})
    assert_error(resp, 400, param=param)


def test_missing_required_field_and_bad_json_are_400(client: httpx.Client) -> None:
    assert_error(client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL}), 400, param="training_file")
    resp = client.post("/v1/fine_tuning/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(resp, 400)


def test_idempotency_key_returns_the_same_job(client: httpx.Client, chat_id: str) -> None:
    first = create_job(client, chat_id, headers={"Idempotency-Key": "run-42"})
    again = create_job(client, chat_id, headers={"Idempotency-Key": "run-42"})
    assert again["id"] == first["id"]
    other = create_job(client, chat_id, headers={"Idempotency-Key": "run-43"})
    plain = create_job(client, chat_id)
    assert len({first["id"], other["id"], plain["id"]}) == 3
    listed = [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]]
    assert sorted(listed) == sorted([first["id"], other["id"], plain["id"]])


def test_list_newest_first_with_cursor(client: httpx.Client, chat_id: str) -> None:
    ids = [create_job(client, chat_id)["id"] for _ in range(5)]
    newest_first = ids[::-1]
    everything = client.get("/v1/fine_tuning/jobs").json()
    assert everything["object"] == "list"
    assert [j["id"] for j in everything["data"]] == newest_first
    assert everything["has_more"] is False

    page1 = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page1["data"]] == newest_first[:2] and page1["has_more"] is True
    page2 = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page1["data"][-1]["id"]}).json()
    assert [j["id"] for j in page2["data"]] == newest_first[2:4] and page2["has_more"] is True
    page3 = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page2["data"][-1]["id"]}).json()
    assert [j["id"] for j in page3["data"]] == newest_first[4:] and page3["has_more"] is False


def test_list_filters_by_metadata(client: httpx.Client, chat_id: str) -> None:
    a = create_job(client, chat_id, metadata={"team": "a"})["id"]
    create_job(client, chat_id, metadata={"team": "b"})
    resp = client.get("/v1/fine_tuning/jobs", params={"metadata": '{"team": "a"}'})
    assert [j["id"] for j in resp.json()["data"]] == [a]
    assert_error(client.get("/v1/fine_tuning/jobs", params={"metadata": "[1]"}), 400, param="metadata")


def test_get_job(client: httpx.Client, chat_id: str) -> None:
    job = create_job(client, chat_id)
    got = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json() == job


@pytest.mark.parametrize("method,suffix", [
    ("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/checkpoints"), ("GET", "/artifacts"),
])
def test_unknown_job_is_404(client: httpx.Client, method: str, suffix: str) -> None:
    error = assert_error(client.request(method, f"/v1/fine_tuning/jobs/ftjob-doesnotexist{suffix}"), 404,
                         code="fine_tuning_job_not_found")
    assert "ftjob-doesnotexist" in error["message"]


@pytest.mark.parametrize("status", ["validating_files", "queued"])
def test_cancel_a_pending_job(client: httpx.Client, api_server: ThreadServer, chat_id: str, status: str) -> None:
    job = create_job(client, chat_id)
    update_job(api_server, job["id"], status=status)
    resp = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert resp.status_code == 200, resp.text
    cancelled = resp.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert "cancelled" in events[0]["message"].lower()
    assert events[0]["data"] == {"status": "cancelled"}

    again = assert_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409, code="job_not_cancellable")
    assert "cancelled" in again["message"]


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_a_finished_job_is_409(client: httpx.Client, api_server: ThreadServer, chat_id: str,
                                      status: str) -> None:
    job = create_job(client, chat_id)
    update_job(api_server, job["id"], status=status)
    assert_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409, code="job_not_cancellable")
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == status


def test_events_newest_first_by_default_and_ascending_on_request(client: httpx.Client, chat_id: str) -> None:
    job_id = create_job(client, chat_id)["id"]
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    desc = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()
    assert desc["object"] == "list" and desc["has_more"] is False
    assert len(desc["data"]) == 2
    for event in desc["data"]:
        assert event["object"] == "fine_tuning.job.event"
        assert event["id"].startswith("ftevent-")
        assert {"created_at", "level", "message", "type", "data"} <= set(event)
        assert event["type"] == "message"
    assert "Created fine-tuning job" in desc["data"][1]["message"]
    assert "cancelled" in desc["data"][0]["message"].lower()

    asc = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc"}).json()
    assert [e["id"] for e in asc["data"]] == [e["id"] for e in reversed(desc["data"])]

    first = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1}).json()
    assert first["has_more"] is True and first["data"][0]["id"] == desc["data"][0]["id"]
    rest = client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                      params={"limit": 1, "after": first["data"][0]["id"]}).json()
    assert rest["has_more"] is False and rest["data"][0]["id"] == desc["data"][1]["id"]

    assert_error(client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "sideways"}), 400,
                 param="order")


def test_checkpoints_of_a_new_job_are_empty(client: httpx.Client, chat_id: str) -> None:
    job_id = create_job(client, chat_id)["id"]
    resp = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
    assert resp.status_code == 200
    assert resp.json() == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


def test_artifacts_before_success_are_409(client: httpx.Client, api_server: ThreadServer, chat_id: str) -> None:
    job_id = create_job(client, chat_id)["id"]
    error = assert_error(client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts"), 409, code="artifacts_not_ready")
    assert "validating_files" in error["message"]
    update_job(api_server, job_id, status="running")
    assert_error(client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts"), 409, code="artifacts_not_ready")


@pytest.mark.limits(max_active_jobs_per_tenant=2)
def test_quota_of_active_jobs(client: httpx.Client, api_server: ThreadServer, chat_id: str) -> None:
    first = create_job(client, chat_id)
    second = create_job(client, chat_id, headers={"Idempotency-Key": "k2"})
    resp = client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": chat_id})
    error = assert_error(resp, 429, code="quota_exceeded")
    assert error["type"] == "rate_limit_error"
    assert "2" in error["message"]
    # a retry of an already-created job is not a new job: idempotency wins over the quota
    assert create_job(client, chat_id, headers={"Idempotency-Key": "k2"})["id"] == second["id"]
    # finished jobs do not count
    client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel")
    create_job(client, chat_id)
    assert_error(client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": chat_id}), 429)
    assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == 3
