"""Pause and resume with the real trainer, driven by the official `openai` client: the paused trainer saves a
checkpoint and exits, its slot runs another job meanwhile, and the resumed job ends with the same steps and
per-step losses as an uninterrupted run.

Tolerance: every per-step training loss within 1e-3 of the uninterrupted run's (the trainer's own resume test
observes ~1e-6 on the CPU: optimizer, scheduler, RNG and data position are restored).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.data import write_chat_file
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.tiny_model import make_tiny_model
from tests.support.waiting import free_port

pytestmark = pytest.mark.slow
LOSS_TOLERANCE = 1e-3
HP = {"n_epochs": 2, "batch_size": 2, "learning_rate": 1e-3, "max_length": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    return make_tiny_model(Path(cache) if cache else tmp_path_factory.mktemp("tiny"))


def _wait(check, timeout: float = 240, what: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _losses(server: ThreadServer, job_id: str) -> dict[int, float]:
    rows = [json.loads(line) for line in server.state.store.get_bytes(f"jobs/{job_id}/metrics.jsonl").decode()
            .splitlines()]
    return {int(r["step"]): float(r["train_loss"]) for r in rows if "train_loss" in r}


def test_pause_frees_the_slot_and_resume_continues_exactly(tmp_path: Path, tiny: Path) -> None:
    import openai

    server = ThreadServer(make_settings(tmp_path / "home", free_port(), poll_interval_seconds=0.2,
                                        max_concurrent_jobs=1)).start()
    try:
        model = register_model(server, tiny)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        data = write_chat_file(tmp_path / "train.jsonl", rows=10)
        file_id = client.files.create(file=data.open("rb"), purpose="fine-tune").id
        method = {"type": "supervised", "supervised": {"hyperparameters": HP}}
        paused_job = client.fine_tuning.jobs.create(model=model, training_file=file_id, seed=5, method=method)

        def stepped() -> bool:
            job = client.fine_tuning.jobs.retrieve(paused_job.id)
            return job.status == "running" and (job.model_extra or {}).get("progress", {}).get("step", 0) >= 3

        _wait(stepped, what="the first job to train 3 steps")
        assert client.fine_tuning.jobs.pause(paused_job.id).status == "paused"
        executor = server.state.executor
        _wait(lambda: paused_job.id not in executor.running, 60, "the paused trainer to exit")
        job = client.fine_tuning.jobs.retrieve(paused_job.id)
        assert job.status == "paused" and job.estimated_finish is None
        checkpoints = client.fine_tuning.jobs.checkpoints.list(paused_job.id).data
        assert checkpoints, "pausing saves a checkpoint"
        paused_at = max(c.step_number for c in checkpoints)
        assert 3 <= paused_at < 10
        messages = [e.message for e in client.fine_tuning.jobs.list_events(paused_job.id, limit=100).data]
        assert any("stopped after saving a checkpoint" in m for m in messages)

        # the freed slot runs the uninterrupted reference job while the first one is paused
        reference = client.fine_tuning.jobs.create(model=model, training_file=file_id, seed=5, method=method)
        _wait(lambda: client.fine_tuning.jobs.retrieve(reference.id).status == "running", 60, "the reference job")
        assert client.fine_tuning.jobs.resume(paused_job.id).status == "queued"
        # one slot: the resumed job waits for the reference to finish
        _wait(lambda: client.fine_tuning.jobs.retrieve(reference.id).status == "succeeded", 300, "the reference")
        final = _wait(lambda: (j := client.fine_tuning.jobs.retrieve(paused_job.id)).status in
                      ("succeeded", "failed") and j, 300, "the resumed job")
        assert final.status == "succeeded", final.error
        assert final.fine_tuned_model

        resumed, uninterrupted = _losses(server, paused_job.id), _losses(server, reference.id)
        assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 11))
        worst = max(abs(resumed[s] - uninterrupted[s]) for s in resumed)
        assert worst <= LOSS_TOLERANCE, worst
        assert final.trained_tokens == client.fine_tuning.jobs.retrieve(reference.id).trained_tokens
        events = [e.message for e in client.fine_tuning.jobs.list_events(paused_job.id, limit=100).data]
        assert any(f"Resuming from the checkpoint at step {paused_at}" in m for m in events)
    finally:
        server.stop()
