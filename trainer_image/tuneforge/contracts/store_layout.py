"""Where everything lives in the object store: the same keys in a local directory and in S3.

    files/{file_id}                          an uploaded training file
    jobs/{job_id}/                           everything a job writes
    jobs/{job_id}/checkpoints/step-{n}/      a resumable checkpoint (``manifest.json`` written last)
    jobs/{job_id}/model/                     the tuned model (``manifest.json`` with sizes and sha256, last)
    jobs/{job_id}/metrics.jsonl              every metrics row of the run
    models/{name}/                           a base model pushed by an operator (``tuneforge models push``)
"""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def checkpoints_prefix(job_prefix_: str) -> str:
    return f"{job_prefix_.rstrip('/')}/checkpoints"


def checkpoint_prefix(job_prefix_: str, step: int) -> str:
    return f"{checkpoints_prefix(job_prefix_)}/step-{step}"


def model_prefix(job_prefix_: str) -> str:
    return f"{job_prefix_.rstrip('/')}/model"


def metrics_key(job_prefix_: str) -> str:
    return f"{job_prefix_.rstrip('/')}/metrics.jsonl"


def job_model_prefix(job_id: str) -> str:
    return model_prefix(job_prefix(job_id))


def base_model_prefix(name: str) -> str:
    return f"models/{name}"
