"""A stand-in for ``python -m tuneforge.trainer`` where no training can run (several replicas, cluster mode).

Run as ``python fake_trainer.py -m tuneforge.trainer --spec SPEC`` (the local executor's command line after the
interpreter). It speaks the real progress protocol to the service and leaves a trace in ``$FAKE_TRAINER_DIR``:

- ``<job id>.starts``: one line per start (``<pid> <progress url>``): a job started twice has two;
- it posts a ``status`` event, then a ``metrics`` event every 0.3 s (``data.t`` is the wall clock when sent)
  until ``<job id>.release`` exists (or 120 s passed);
- then it publishes a model manifest in the object store, posts a ``result`` and exits 0;
- on SIGINT (the executor's cancel) it appends ``SIGINT`` to ``<job id>.signals`` and exits 130.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from tuneforge.contracts.store_layout import MANIFEST_NAME, job_model_prefix
from tuneforge.storage import open_store


def main() -> int:
    spec = json.loads(Path(sys.argv[sys.argv.index("--spec") + 1]).read_text())
    job_id, progress = spec["job_id"], spec["progress"]
    traces = Path(os.environ["FAKE_TRAINER_DIR"])
    with open(traces / f"{job_id}.starts", "a") as fh:
        fh.write(f"{os.getpid()} {progress['url']}\n")

    def on_sigint(*_: object) -> None:
        with open(traces / f"{job_id}.signals", "a") as fh:
            fh.write("SIGINT\n")
        os._exit(130)

    signal.signal(signal.SIGINT, on_sigint)
    client = httpx.Client(base_url=progress["url"], headers={"Authorization": f"Bearer {progress['token']}"},
                          timeout=10)

    def post(kind: str, message: str, data: dict[str, object]) -> None:
        event = {"kind": kind, "message": message, "data": data, "seq": time.time_ns() // 1000}
        client.post(f"/internal/v1/jobs/{job_id}/progress", json={"events": [event]}).raise_for_status()

    post("status", "fake trainer started", {"phase": "running", "total_steps": 1000})
    step, deadline = 0, time.monotonic() + 120
    while not (traces / f"{job_id}.release").exists() and time.monotonic() < deadline:
        step += 1
        post("metrics", f"Step {step}", {"step": step, "total_steps": 1000, "t": time.time()})
        time.sleep(0.3)
    store = open_store(spec["storage_url"])
    store.put_bytes(f"{job_model_prefix(job_id)}/{MANIFEST_NAME}",
                    json.dumps({"files": [{"name": "model.safetensors", "bytes": 0}]}).encode())
    post("result", "fake model published", {"trained_tokens": step})
    return 0


if __name__ == "__main__":
    sys.exit(main())
