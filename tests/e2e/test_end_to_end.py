"""The whole flow of one job against a real server process and the real trainer subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.data import write_chat_file
from tests.support.live_server import ProcessServer, wait_for_status
from tests.support.models import TINY

pytestmark = pytest.mark.slow


def _load_and_generate(base_dir: Path, adapter_dir: Path) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    model = PeftModel.from_pretrained(base, adapter_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1], "the tuned model generated nothing"
    return str(tokenizer.decode(out[0][ids["input_ids"].shape[1]:]))


def test_upload_train_download_generate(process_server: ProcessServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.support.download import download_all  # the CLI's verified download path

    client = process_server.client()
    data = write_chat_file(tmp_path / "train.jsonl")
    with open(data, "rb") as fh:
        file = client.post("/v1/files", files={"file": ("train.jsonl", fh)}, data={"purpose": "fine-tune"}).json()
    assert file["format"] == "chat" and file["rows"] == 24

    job = client.post("/v1/fine_tuning/jobs", json={
        "model": TINY, "training_file": file["id"], "suffix": "e2e",
        "seed": 3,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    }).json()
    assert job["status"] == "validating_files", job
    final = wait_for_status(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert final["status"] == "succeeded", (final, process_server.log_tail())
    assert final["fine_tuned_model"].startswith("ft:") and final["fine_tuned_model"].endswith(job["id"][6:18])
    assert final["trained_tokens"] and final["trained_tokens"] > 0
    assert final["finished_at"] >= final["created_at"]

    # the lifecycle shows up as events, in order
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"order": "asc", "limit": 100}).json()
    statuses = [e["data"]["status"] for e in events["data"] if e.get("data") and "status" in e["data"]]
    assert statuses[:3] == ["validating_files", "queued", "running"] and statuses[-1] == "succeeded"
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    assert metrics and all("train_loss" in e["data"] or "valid_loss" in e["data"] for e in metrics)

    # the tuned model is listed and downloadable, every file checked against the manifest
    models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert final["fine_tuned_model"] in models
    out = tmp_path / "download"
    names = download_all(process_server.url, process_server.api_key, job["id"], out)
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= set(names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["name"] for f in manifest["files"]} | {"manifest.json"} == set(names)

    text = _load_and_generate(tiny_model_dir, out)
    assert isinstance(text, str)


def test_tampered_link_is_refused(process_server: ProcessServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    import httpx

    client = process_server.client()
    data = write_chat_file(tmp_path / "train.jsonl", rows=8)
    with open(data, "rb") as fh:
        file = client.post("/v1/files", files={"file": ("t.jsonl", fh)}, data={"purpose": "fine-tune"}).json()
    job = client.post("/v1/fine_tuning/jobs", json={
        "model": TINY, "training_file": file["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4},
    }).json()
    final = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=300)
    assert final["status"] == "succeeded", final
    item = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"][0]
    assert httpx.get(item["url"]).status_code == 200
    bad = item["url"].replace("signature=", "signature=0")
    response = httpx.get(bad)
    assert response.status_code == 403 and response.json()["error"]["code"] == "invalid_link"
