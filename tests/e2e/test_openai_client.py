"""The same flow driven by the official `openai` Python package, unchanged, with base_url=<service>/v1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.data import write_chat_file
from tests.support.live_server import ProcessServer
from tests.support.models import TINY

pytestmark = pytest.mark.slow


def test_openai_client_end_to_end(process_server: ProcessServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    import time

    import openai

    client = openai.OpenAI(base_url=f"{process_server.url}/v1", api_key=process_server.api_key, max_retries=0)
    data = write_chat_file(tmp_path / "train.jsonl")
    uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == data.stat().st_size
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.content(uploaded.id).read() == data.read_bytes()

    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=uploaded.id,
        suffix="openai",
        seed=11,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued", "running")

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert job.status == "succeeded", (job.error, process_server.log_tail())
    assert job.fine_tuned_model and job.trained_tokens
    assert job.method is not None and job.method.type == "supervised"
    hp = job.method.supervised.hyperparameters  # type: ignore[union-attr]
    assert hp.n_epochs == 2 and hp.batch_size == 4

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any("successfully completed" in e.message for e in events)
    assert any(e.type == "metrics" for e in events)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data and checkpoints.data[0].step_number > 0
    assert "train_loss" in checkpoints.data[0].metrics.model_dump(exclude_none=True)

    page = client.fine_tuning.jobs.list(limit=1)
    assert page.data[0].id == job.id
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    assert job.fine_tuned_model in [m.id for m in client.models.list()]

    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert missing.value.status_code == 404
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{process_server.url}/v1", api_key="tf-wrong", max_retries=0).files.list()
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("bad.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    assert "line 1" in str(bad.value)

    assert client.files.delete(uploaded.id).deleted
