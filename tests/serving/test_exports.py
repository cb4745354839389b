"""Exports of tuned models (``POST /v1/models/{id}/export``): the LoRA adapter merged into full weights that
compute what base + adapter compute, a GGUF file whose tensors are the merged weights, failures that say why,
and the usual tenancy and bad input. Real trainer-environment export processes, real PEFT adapters."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import add_tenant
from tests.serving.published import succeeded_job
from tests.support.engine_models import make_lora, make_peaked_model
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.waiting import free_port

pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parents[2]
BASE = "tiny-peaked"
OTHER_KEY = "tf-other-tenant-key-for-export-tests"


def gguf_converter() -> str:
    """The converter directory when infra/engines/gguf/install.sh has run (CI's system-deps runs it)."""
    directory = subprocess.run(["bash", str(ROOT / "infra/engines/gguf/install.sh"), "--print-dir"],
                               capture_output=True, text=True, check=True).stdout.strip()
    return directory if (Path(directory) / "convert_hf_to_gguf.py").is_file() else ""


class Exports:
    def __init__(self, server: ThreadServer, model_dir: Path, adapter: Path, tuned: str, reward: str) -> None:
        self.server, self.model_dir, self.adapter, self.tuned, self.reward = server, model_dir, adapter, tuned, reward


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exports]:
    root = Path(os.environ.get("TUNEFORGE_TEST_MODEL_DIR") or tmp_path_factory.mktemp("export-models"))
    model = make_peaked_model(root)
    adapter = make_lora(model, root, seed=7)
    home = tmp_path_factory.mktemp("exports") / "home"
    server = ThreadServer(make_settings(home, free_port(), gguf_converter=gguf_converter()),
                          start_executor=False).start()
    try:
        register_model(server, model, BASE)
        with server.client() as client:
            _, tuned = succeeded_job(server, client, adapter, BASE)
            _, reward = succeeded_job(server, client, adapter, BASE, method="reward_model")
        add_tenant(server, "acme", OTHER_KEY).close()
        yield Exports(server, model, adapter, tuned, reward)
    finally:
        server.stop()


def finished(client: httpx.Client, model: str, fmt: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = client.get(f"/v1/models/{model}/export", params={"format": fmt}).json()
        if export["status"] in ("succeeded", "failed"):
            return export
        time.sleep(0.5)
    raise AssertionError(f"the {fmt} export of {model} did not finish in {timeout} s")


def download(export: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for entry in export["files"]:
        answer = httpx.get(entry["url"], timeout=120)  # the signed link is the credential: no API key
        assert answer.status_code == 200, answer.text
        (directory / entry["name"]).write_bytes(answer.content)
        assert len(answer.content) == entry["bytes"]
    return directory


def test_merged_export_computes_what_base_plus_adapter_compute(exports: Exports, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with exports.server.client() as client:
        assert client.get(f"/v1/models/{exports.tuned}/export").json()["status"] == "not_started"
        started = client.post(f"/v1/models/{exports.tuned}/export", json={"format": "safetensors"})
        assert started.status_code == 202, started.text
        assert started.json()["status"] in ("running", "succeeded")
        export = finished(client, exports.tuned, "safetensors")
        assert export["status"] == "succeeded", export
        names = {f["name"] for f in export["files"]}
        assert {"model.safetensors", "config.json", "tokenizer_config.json", "manifest.json"} <= names
        assert not any(n.startswith("adapter_") for n in names)
        # asking again neither restarts nor rewrites it
        again = client.post(f"/v1/models/{exports.tuned}/export", json={"format": "safetensors"}).json()
        assert again["status"] == "succeeded" and {f["sha256"] for f in again["files"]} == {
            f["sha256"] for f in export["files"]}

    merged = AutoModelForCausalLM.from_pretrained(str(download(export, tmp_path / "merged")))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(exports.model_dir)),
                                          str(exports.adapter))
    base = AutoModelForCausalLM.from_pretrained(str(exports.model_dir))
    ids = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))("hello there, merged model",
                                                                  return_tensors="pt").input_ids
    with torch.no_grad():
        got, want, plain = (m(ids).logits for m in (merged, reference, base))
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-2)  # the adapter did change the model


def test_gguf_export_of_a_tokenizer_the_converter_does_not_know_fails_with_the_reason(exports: Exports) -> None:
    with exports.server.client() as client:
        assert client.post(f"/v1/models/{exports.tuned}/export", json={"format": "gguf"}).status_code == 202
        export = finished(client, exports.tuned, "gguf")
    assert export["status"] == "failed" and export["files"] == []
    # the tiny test model's byte-level tokenizer is not one llama.cpp knows (or the converter is missing)
    assert "GGUF" in export["error"]["message"], export


def test_bad_input_is_a_clear_4xx(exports: Exports) -> None:
    with exports.server.client() as client:
        wrong = client.post(f"/v1/models/{exports.tuned}/export", json={"format": "onnx"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "format"
        wrong = client.get(f"/v1/models/{exports.tuned}/export", params={"format": "onnx"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "format"
        reward = client.post(f"/v1/models/{exports.reward}/export", json={})
        assert reward.status_code == 400 and reward.json()["error"]["code"] == "model_not_supported"
        # a base model is already downloadable as it is; not exportable, and a missing model is a 404
        assert client.post(f"/v1/models/{BASE}/export", json={}).status_code == 404
        missing = client.post("/v1/models/ft:tiny-peaked:default:supervised:000000000000/export", json={})
        assert missing.status_code == 404


def test_another_tenants_export_is_a_404_like_a_missing_model(exports: Exports) -> None:
    missing_name = exports.tuned[:-12] + "000000000000"
    with httpx.Client(base_url=exports.server.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}) as other:
        theirs = other.post(f"/v1/models/{exports.tuned}/export", json={})
        nothing = other.post(f"/v1/models/{missing_name}/export", json={})
        assert theirs.status_code == nothing.status_code == 404
        assert theirs.content == nothing.content.replace(missing_name.encode(), exports.tuned.encode())
        assert other.get(f"/v1/models/{exports.tuned}/export").status_code == 404


def test_export_links_cannot_be_forged_or_bent(exports: Exports) -> None:
    with exports.server.client() as client:
        client.post(f"/v1/models/{exports.tuned}/export", json={})
        export = finished(client, exports.tuned, "safetensors")
    url = next(f["url"] for f in export["files"] if f["name"] == "config.json")
    assert httpx.get(url, timeout=30).status_code == 200
    forged = url.replace("signature=", "signature=0")
    assert httpx.get(forged, timeout=30).status_code == 403
    # another file under the same signature, or a climb out of the export's folder
    for bent in (url.replace("config.json", "model.safetensors"), url.replace("config.json", "../../model/x")):
        assert httpx.get(bent, timeout=30).status_code in (403, 404)


@pytest.mark.slow
def test_gguf_export_of_the_bundled_model_holds_the_merged_weights(tmp_path: Path) -> None:
    """SmolLM2's tokenizer is one llama.cpp knows: the GGUF file's value projection is the merged one."""
    converter = gguf_converter()
    if not converter:
        pytest.skip("the GGUF converter is not installed (bash infra/engines/gguf/install.sh)")
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from tuneforge.trainer.models import convert_bundled

    base_dir = convert_bundled("SmolLM2-135M-Instruct")
    adapter = make_lora(base_dir, tmp_path / "adapters", seed=3, target_modules=["v_proj"])
    server = ThreadServer(make_settings(tmp_path / "home", free_port(), gguf_converter=converter),
                          start_executor=False).start()
    try:
        with server.client() as client:
            _, tuned = succeeded_job(server, client, adapter, "SmolLM2-135M-Instruct")
            assert client.post(f"/v1/models/{tuned}/export", json={"format": "gguf"}).status_code == 202
            export = finished(client, tuned, "gguf", timeout=1500)
            assert export["status"] == "succeeded", export
        files = download(export, tmp_path / "gguf")
    finally:
        server.stop()
    reader = gguf.GGUFReader(str(next(files.glob("*.gguf"))))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    assert "blk.0.attn_v.weight" in tensors and "token_embd.weight" in tensors
    base_v = load_file(str(base_dir / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"]
    got = np.asarray(tensors["blk.0.attn_v.weight"].data, dtype=np.float32).reshape(base_v.shape)
    assert not np.allclose(got, base_v.astype(np.float32), atol=1e-3)  # merged, not the base's
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter)) \
        .merge_and_unload().state_dict()["model.layers.0.self_attn.v_proj.weight"].float().numpy()
    assert np.allclose(got, want, atol=2e-3)  # f16 of the merged weights
