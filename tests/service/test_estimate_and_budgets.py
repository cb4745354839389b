"""``POST /v1/fine_tuning/jobs/estimate`` and GPU-hour budgets (set with the CLI, spent budgets pause jobs)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from tests.service.helpers import add_tenant, assert_error, chat_file, create_job, load_job, update_job, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port, wait_for
from tuneforge.service.cli.main import app as cli
from tuneforge.service.domain.estimate import CPU_SFT_TOKENS_PER_SECOND


@pytest.fixture
def server(tmp_path) -> Iterator[ThreadServer]:  # type: ignore[no-untyped-def]
    groups = {"estimate": {"gpu_hour_prices": {"cpu": 0.5, "NVIDIA-H100-80GB-HBM3": 4.0, "default": 2.0},
                           "throughput_overrides": {"NVIDIA-L4": 1000.0}, "budget_check_seconds": 0.2}}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), groups=groups), start_executor=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ThreadServer) -> httpx.Client:
    return server.client()


@pytest.fixture
def file(client: httpx.Client) -> dict:
    return upload(client, chat_file(10))


def _estimate(client: httpx.Client, file_id: str, **body: object) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs/estimate", json={"model": "SmolLM2-135M-Instruct",
                                                                "training_file": file_id, **body})


def test_estimate_on_the_cpu_from_the_measured_throughput(client: httpx.Client, file: dict) -> None:
    resp = _estimate(client, file["id"], method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": 4}}})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "fine_tuning.job.estimate" and out["device"] == "cpu"
    assert out["steps"] == math.ceil(10 / 4) * 3 and out["examples"] == out["steps"] * 4
    assert out["tokens_per_epoch"] == file["tokens"] > 0
    assert out["total_tokens"] == round(file["tokens"] / 10 * out["examples"])
    assert out["tokens_per_second"] == pytest.approx(CPU_SFT_TOKENS_PER_SECOND, rel=0.01)
    assert "measured" in out["throughput_source"]
    assert out["estimated_seconds"] == pytest.approx(out["total_tokens"] / out["tokens_per_second"], rel=0.01)
    assert out["cost"] == {"amount": pytest.approx(out["gpu_hours"] * 0.5, abs=1e-4), "currency": "USD",
                           "price_per_gpu_hour": 0.5}
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []  # nothing was created


def test_estimate_on_requested_gpus_is_modelled_or_overridden(client: httpx.Client, file: dict) -> None:
    h100 = _estimate(client, file["id"], resources={"gpus": 8, "gpu_type": "NVIDIA-H100-80GB-HBM3"}).json()
    assert h100["devices"] == 8 and "modelled" in h100["throughput_source"]
    assert h100["cost"]["price_per_gpu_hour"] == 4.0
    one = _estimate(client, file["id"], resources={"gpus": 1, "gpu_type": "NVIDIA-H100-80GB-HBM3"}).json()
    assert h100["estimated_seconds"] == pytest.approx(one["estimated_seconds"] / 8, rel=0.02)
    assert h100["gpu_hours"] == pytest.approx(one["gpu_hours"], rel=0.02)
    l4 = _estimate(client, file["id"], resources={"gpus": 1, "gpu_type": "NVIDIA-L4"}).json()
    assert l4["tokens_per_second"] == 1000.0 and "OVERRIDES" in l4["throughput_source"]
    assert l4["cost"]["price_per_gpu_hour"] == 2.0  # no price for it: the default
    dpo_file = upload(client, b'{"input": {"messages": [{"role": "user", "content": "hi"}]}, '
                      b'"preferred_output": [{"role": "assistant", "content": "Hello!"}], '
                      b'"non_preferred_output": [{"role": "assistant", "content": "Go."}]}\n')
    dpo = _estimate(client, dpo_file["id"], method={"type": "dpo"}).json()
    assert dpo["tokens_per_second"] < CPU_SFT_TOKENS_PER_SECOND


def test_estimate_refuses_what_a_create_refuses(server: ThreadServer, client: httpx.Client, file: dict) -> None:
    assert_error(_estimate(client, "file-nope"), 404, param="training_file")
    assert_error(_estimate(client, file["id"], model="no-such-model"), 400, param="model")
    assert_error(client.post("/v1/fine_tuning/jobs/estimate", json={"training_file": file["id"]}), 400,
                 param="model")
    assert_error(_estimate(client, file["id"], metadata={"k" * 65: "v"}), 400)
    other = add_tenant(server, "org-other", "tf-other-key")
    foreign = _estimate(other, file["id"])
    assert_error(foreign, 404, param="training_file")
    assert foreign.content == _estimate(other, "file-nope").content.replace(b"file-nope", file["id"].encode())


def _cli(server: ThreadServer, *args: str) -> str:
    env = {"TUNEFORGE_HOME": str(server.settings.home), "TUNEFORGE_DATABASE_URL": server.settings.database_url}
    result = CliRunner().invoke(cli, ["budgets", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_spent_budget_pauses_jobs_and_refuses_new_ones(server: ThreadServer, client: httpx.Client,
                                                         file: dict) -> None:
    running = create_job(client, file["id"], resources={"gpus": 2})
    waiting = create_job(client, file["id"])
    other = add_tenant(server, "org-other", "tf-other-key")
    other_job = create_job(other, upload(other, chat_file())["id"])
    # 2 GPUs for the last 36 s: 0.02 GPU-hours
    update_job(server, running["id"], status="running", running_since=time.time() - 36, token_hash="x" * 64)
    assert client.get("/v1/organization/budget").json()["gpu_hours"] is None

    assert "Budget of default: 0.01 GPU-hours" in _cli(server, "set", "default", "0.01")
    wait_for("the running job to be paused", lambda: load_job(server, running["id"]).status == "paused", 20)
    wait_for("the waiting job to be paused", lambda: load_job(server, waiting["id"]).status == "paused", 20)
    assert load_job(server, other_job["id"]).status == "validating_files"  # another organization's: untouched
    budget = client.get("/v1/organization/budget").json()
    assert budget["exhausted"] and budget["gpu_hours"] == 0.01 and budget["spent_gpu_hours"] >= 0.02
    # the running time is counted once, when the job stops running
    assert 72 <= load_job(server, running["id"]).gpu_seconds < 72 + 2 * 30
    events = client.get(f"/v1/fine_tuning/jobs/{running['id']}/events").json()["data"]
    assert any("budget is spent" in e["message"] for e in events)

    assert_error(client.post("/v1/fine_tuning/jobs", json={"model": "SmolLM2-135M-Instruct",
                                                           "training_file": file["id"]}), 429, code="budget_exceeded")
    assert_error(client.post(f"/v1/fine_tuning/jobs/{running['id']}/resume"), 429, code="budget_exceeded")
    assert "spent: jobs paused" in _cli(server, "show")

    _cli(server, "set", "default", "1")
    assert client.post(f"/v1/fine_tuning/jobs/{running['id']}/resume").json()["status"] == "queued"
    estimate = _estimate(client, file["id"]).json()
    assert estimate["budget"]["gpu_hours"] == 1 and estimate["budget"]["remaining_gpu_hours"] < 1
    _cli(server, "clear", "default")
    assert client.get("/v1/organization/budget").json()["gpu_hours"] is None


def test_budget_cli_refuses_bad_numbers(server: ThreadServer) -> None:
    env = {"TUNEFORGE_HOME": str(server.settings.home), "TUNEFORGE_DATABASE_URL": server.settings.database_url}
    for value in ("-1", "nan", "inf"):
        result = CliRunner().invoke(cli, ["budgets", "set", "default", "--", value], env=env)
        assert result.exit_code != 0
