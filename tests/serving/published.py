"""Succeeded jobs as training leaves them, without training: a job row marked succeeded and its model (here a
random PEFT adapter) published under the job's prefix. For the tests of what happens after training."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.service.helpers import chat_file, create_job, update_job, upload
from tests.support.live_server import ThreadServer
from tuneforge.contracts.store_layout import job_model_prefix
from tuneforge.service.db.models import now
from tuneforge.storage.manifest import publish_dir


def succeeded_job(server: ThreadServer, client: httpx.Client, adapter: Path, base: str,
                  method: str = "supervised") -> tuple[str, str]:
    """(job id, ft: model name) of a succeeded job whose model is ``adapter``; ``method`` is recorded on the job
    (a reward model's file would be a preference file; only its method matters to what reads it)."""
    job = create_job(client, upload(client, chat_file(4))["id"], model=base)
    if method != "supervised":
        update_job(server, job["id"], method={"type": method, method: {}})
    publish_dir(server.state.store, adapter, job_model_prefix(job["id"]), base_model=base)
    name = f"ft:{base}:default:{method}:{job['id'][6:18]}"
    update_job(server, job["id"], status="succeeded", fine_tuned_model=name, finished_at=now())
    return job["id"], name
