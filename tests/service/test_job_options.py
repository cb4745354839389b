"""OpenAI's job options a migrating client sends: metadata and suffix limits, integrations, and continuing
from an ft: model or a checkpoint (tenant-scoped), through the API (no executor)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error, chat_file, create_job, load_job, update_job, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port
from tuneforge.service.db.models import Checkpoint
from tuneforge.service.domain.job_requests import fine_tuned_model_name

MLFLOW = "http://127.0.0.1:5999"


@pytest.fixture
def server(tmp_path) -> Iterator[ThreadServer]:  # type: ignore[no-untyped-def]
    groups = {"integrations": {"mlflow_tracking_uri": MLFLOW,
                               "mlflow_allowed_tracking_uris": ["https://mlflow.example.com"]}}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), groups=groups), start_executor=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ThreadServer) -> httpx.Client:
    return server.client()


@pytest.fixture
def file_id(client: httpx.Client) -> str:
    return str(upload(client, chat_file())["id"])


def _create(client: httpx.Client, file_id: str, **body: object) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct", "training_file": file_id,
                                                     **body})


# -- metadata, suffix, seed --


def test_metadata_at_openais_limits_is_kept(client: httpx.Client, file_id: str) -> None:
    metadata = {f"k{i:02d}" + "x" * 61: "v" * 512 for i in range(16)}
    job = create_job(client, file_id, metadata=metadata, suffix="s" * 64, seed=2**31 - 1)
    assert job["metadata"] == metadata and job["suffix"] == "s" * 64 and job["seed"] == 2**31 - 1


@pytest.mark.parametrize(("metadata", "says"), [
    ({f"k{i}": "v" for i in range(17)}, "at most 16 keys"),
    ({"k" * 65: "v"}, "1 to 64 characters"),
    ({"": "v"}, "1 to 64 characters"),
    ({"team": "v" * 513}, "at most 512 characters"),
    ({"team": 5}, "string"),
    ("not an object", "dictionary"),
])
def test_metadata_over_the_limits_is_a_clear_400(client: httpx.Client, file_id: str, metadata: object,
                                                 says: str) -> None:
    error = assert_error(_create(client, file_id, metadata=metadata), 400)
    assert error["param"].startswith("metadata") and says in error["message"], error


@pytest.mark.parametrize(("field", "value"), [("suffix", "s" * 65), ("suffix", "bad suffix!"), ("seed", -1),
                                              ("seed", 2**31)])
def test_suffix_and_seed_outside_their_limits(client: httpx.Client, file_id: str, field: str, value: object) -> None:
    assert_error(_create(client, file_id, **{field: value}), 400, param=field)


# -- integrations --


def test_wandb_integration_as_openai_defines_it(client: httpx.Client, file_id: str, server: ThreadServer) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "tuning", "name": "run-1", "entity": "team", "tags": ["a"]}}
    job = create_job(client, file_id, integrations=[wandb])
    assert job["integrations"] == [wandb]
    assert load_job(server, job["id"]).spec["integrations"] == [wandb]


def test_mlflow_gets_the_deployments_tracking_server(client: httpx.Client, file_id: str, server: ThreadServer) -> None:
    job = create_job(client, file_id, integrations=[{"type": "mlflow", "mlflow": {"experiment_name": "exp"}}])
    (shown,) = job["integrations"]
    assert shown["mlflow"]["tracking_uri"] == MLFLOW
    allowed = create_job(client, file_id, integrations=[
        {"type": "mlflow", "mlflow": {"experiment_name": "exp", "tracking_uri": "https://mlflow.example.com/"}}])
    assert allowed["integrations"][0]["mlflow"]["tracking_uri"] == "https://mlflow.example.com/"


@pytest.mark.parametrize(("integrations", "param"), [
    ([{"type": "wandb", "wandb": {"project": "p", "api_key": "secret"}}], "integrations.0.wandb.api_key"),
    ([{"type": "wandb", "wandb": {}}], "integrations.0.wandb.project"),
    ([{"type": "comet"}], "integrations.0"),
    ([{"type": "mlflow", "mlflow": {"experiment_name": "e", "tracking_uri": "http://169.254.169.254"}}],
     "integrations.0.mlflow.tracking_uri"),
    ([{"type": "wandb", "wandb": {"project": "p"}}] * 6, "integrations"),
])
def test_bad_integrations_are_refused(client: httpx.Client, file_id: str, integrations: list,
                                      param: str) -> None:
    error = assert_error(_create(client, file_id, integrations=integrations), 400)
    assert error["param"].startswith(param), error


# -- continuing from a tuned model or a checkpoint --


def _succeeded(server: ThreadServer, client: httpx.Client, file_id: str, **body: object) -> dict:
    job = create_job(client, file_id, **body)
    stored = load_job(server, job["id"])
    name = fine_tuned_model_name(stored)
    update_job(server, job["id"], status="succeeded", fine_tuned_model=name)
    with server.state.sessions() as session:
        session.add(Checkpoint(id=f"ftckpt-{job['id'][-8:]}", job_id=job["id"], tenant_id=stored.tenant_id,
                               step_number=3, metrics={"step": 3}, prefix=f"jobs/{job['id']}/checkpoints/step-3",
                               fine_tuned_model_checkpoint=f"{name}:ckpt-step-3"))
        session.commit()
    return {**job, "fine_tuned_model": name}


def test_continue_from_a_tuned_model_and_from_a_checkpoint(server: ThreadServer, client: httpx.Client,
                                                           file_id: str) -> None:
    source = _succeeded(server, client, file_id, adapter={"type": "lora", "r": 8, "alpha": 16}, suffix="one")
    continued = create_job(client, file_id, model=source["fine_tuned_model"], suffix="two")
    assert continued["model"] == source["fine_tuned_model"]
    assert continued["adapter"]["r"] == 8  # the source's adapter, trained further
    spec = load_job(server, continued["id"]).spec
    assert spec["base_model"] == "SmolLM2-135M-Instruct"
    assert spec["initial_weights"] == {"prefix": f"jobs/{source['id']}/model", "kind": "adapter",
                                       "source": source["fine_tuned_model"]}
    # named after the base model, like OpenAI's (never ft:ft:...)
    name = fine_tuned_model_name(load_job(server, continued["id"]))
    assert name.startswith("ft:SmolLM2-135M-Instruct:") and ":two:" in name

    checkpoint = f"{source['fine_tuned_model']}:ckpt-step-3"
    from_checkpoint = create_job(client, file_id, model=checkpoint)
    assert load_job(server, from_checkpoint["id"]).spec["initial_weights"]["prefix"] == \
        f"jobs/{source['id']}/checkpoints/step-3"


def test_continuing_keeps_the_adapter_and_the_kind_of_model(server: ThreadServer, client: httpx.Client,
                                                            file_id: str) -> None:
    source = _succeeded(server, client, file_id, adapter={"type": "lora", "r": 8, "alpha": 16})
    assert_error(_create(client, file_id, model=source["fine_tuned_model"], adapter={"type": "lora", "r": 32}), 400,
                 param="adapter")
    full = _succeeded(server, client, file_id, adapter={"type": "full"})
    job = create_job(client, file_id, model=full["fine_tuned_model"])
    assert load_job(server, job["id"]).spec["initial_weights"]["kind"] == "full"


def test_another_tenants_model_and_checkpoint_do_not_exist(server: ThreadServer, client: httpx.Client,
                                                          file_id: str) -> None:
    source = _succeeded(server, client, file_id)
    other = add_tenant(server, "org-other", "tf-other-key")
    other_file = upload(other, chat_file())["id"]
    missing = "ft:SmolLM2-135M-Instruct:default::000000000000"
    for name in (source["fine_tuned_model"], f"{source['fine_tuned_model']}:ckpt-step-3"):
        foreign = _create(other, other_file, model=name)
        unknown = _create(other, other_file, model=missing)
        assert_error(foreign, 400, param="model", code="model_not_available")
        assert foreign.json()["error"]["message"].replace(name, "X") == \
            unknown.json()["error"]["message"].replace(missing, "X")
    # a job that has not succeeded has no model to continue
    running = create_job(client, file_id)
    update_job(server, running["id"], status="running", fine_tuned_model="ft:x:default::running")
    assert_error(_create(client, file_id, model="ft:x:default::running"), 400, param="model")
