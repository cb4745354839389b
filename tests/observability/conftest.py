"""One real job, watched by everything at once: a real Prometheus scraping the service (and the trainer's
own endpoint), the SSE stream, and the /ui page in headless Chromium.

The service runs in this process (uvicorn on 127.0.0.1) with its local executor; the job trains a tiny
random model for ~60 logged steps with a validation file, so every dashboard series gets data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.observability.support import PROMETHEUS, Prometheus, chat_jsonl, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.tiny_model import make_tiny_model
from tests.support.waiting import free_port

STEPS = 60


@dataclass
class ObservedJob:
    server: ThreadServer
    prometheus: Prometheus | None
    job_id: str
    started: float
    trainer_metrics_port: int
    notes: list[str] = field(default_factory=list)

    def client(self) -> Any:
        return self.server.client()


@pytest.fixture(scope="session")
def obs_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("TUNEFORGE_TEST_MODEL_DIR")
    return make_tiny_model(Path(cache) if cache else tmp_path_factory.mktemp("tiny-obs"))


@pytest.fixture(scope="package")
def observed_job(tmp_path_factory: pytest.TempPathFactory, obs_tiny_model: Path) -> Iterator[ObservedJob]:
    root = tmp_path_factory.mktemp("observed")
    trainer_port = free_port()
    saved = {k: os.environ.get(k) for k in ("TUNEFORGE_TRAINER_METRICS_PORT", "TUNEFORGE_TRAINER_METRICS_ADDR")}
    # the local executor passes its environment to the trainer: it serves its own /metrics there
    os.environ["TUNEFORGE_TRAINER_METRICS_PORT"] = str(trainer_port)
    os.environ["TUNEFORGE_TRAINER_METRICS_ADDR"] = "127.0.0.1"
    server = ThreadServer(make_settings(root / "home", free_port(), poll_interval_seconds=0.2)).start()
    prometheus = None
    try:
        if os.path.exists(PROMETHEUS):
            host = server.url.removeprefix("http://")
            prometheus = Prometheus(root / "prometheus", {
                "tuneforge": host, "tuneforge-trainer": f"127.0.0.1:{trainer_port}",
            }).start()
            time.sleep(2)  # a couple of scrapes before the job exists: counters start from their baseline
        with server.client() as client:
            train = upload(client, chat_jsonl(root / "train.jsonl", 80))
            valid = upload(client, chat_jsonl(root / "valid.jsonl", 8, offset=100))
            started = time.time()
            response = client.post("/v1/fine_tuning/jobs", json={
                "model": register_model(server, obs_tiny_model), "training_file": train, "validation_file": valid,
                "suffix": "obs", "seed": 7,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": 3, "batch_size": 4, "eval_every_steps": 10, "learning_rate": 5e-4,
                }}},
            })
            assert response.status_code == 200, response.text
            # a 4xx for the errors panels (the request of a client with a wrong id)
            assert client.get("/v1/fine_tuning/jobs/ftjob-doesnotexist").status_code == 404
        yield ObservedJob(server, prometheus, str(response.json()["id"]), started, trainer_port)
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
