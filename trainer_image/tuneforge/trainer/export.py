"""Export a tuned model for use elsewhere: the LoRA adapter merged into full weights (safetensors, with the
tokenizer and its chat template), and optionally a GGUF file for llama.cpp and Ollama.

``python -m tuneforge.trainer.export --store URL --base MODEL --model-prefix jobs/ID/model --out-prefix P
[--format safetensors|gguf]`` reads the adapter and the base model from the object store (or the catalogue),
writes the export under ``P/`` with its ``manifest.json`` last, and exits 0; 65 when the input is wrong (a
reward model, a missing adapter), 1 otherwise, with a one-line reason on stderr.

GGUF: llama.cpp's own converter (``convert_hf_to_gguf.py``) from the ``llama-cpp-python`` source release on
PyPI, unpacked once by ``infra/engines/gguf/install.sh``; its directory is ``TUNEFORGE_GGUF_CONVERTER``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.storage import ObjectStore, open_store
from tuneforge.storage.manifest import publish_dir, read_manifest
from tuneforge.trainer.errors import BadInput, TrainerError
from tuneforge.trainer.models import load_causal_lm, load_tokenizer, resolve_model
from tuneforge.trainer.settings import trainer_settings


def _download_model(store: ObjectStore, prefix: str, directory: Path) -> dict[str, object]:
    found = read_manifest(store, prefix)
    if found is None:
        raise BadInput(f"no published model under {prefix}/ (manifest.json missing)")
    manifest, _ = found
    raw = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
    if raw.get("task") == "sequence_classification":
        raise BadInput("a reward model scores text; it has no language-model head to export")
    for entry in manifest.files:
        store.download_file(f"{prefix}/{entry.name}", directory / entry.name)
    problems = manifest.mismatches(directory)
    if problems:
        raise BadInput(f"the model under {prefix}/ does not match its manifest: {problems[0]}")
    return raw


def merged_model(store: ObjectStore, base: str, model_prefix: str, work: Path) -> Path:
    """The tuned model as full weights in ``work/merged`` (a LoRA adapter merged into its base)."""
    import torch

    tuned = work / "tuned"
    manifest = _download_model(store, model_prefix, tuned)
    out = work / "merged"
    if not (tuned / "adapter_config.json").is_file():
        shutil.copytree(tuned, out)  # a full fine-tune: its weights are the export already
        (out / "manifest.json").unlink(missing_ok=True)
        return out
    from peft import PeftModel

    base_dir = resolve_model(str(manifest.get("base_model") or base), store)
    model = load_causal_lm(base_dir, torch.float32)
    merged = PeftModel.from_pretrained(model, str(tuned)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    # the tuned tokenizer carries the chat template the model was trained with; else the base's
    tokenizer = load_tokenizer(tuned if (tuned / "tokenizer_config.json").is_file() else base_dir)
    tokenizer.save_pretrained(str(out))
    return out


def to_gguf(model_dir: Path, out: Path) -> Path:
    converter = trainer_settings().gguf_converter
    script = Path(converter) / "convert_hf_to_gguf.py" if converter else None
    if script is None or not script.is_file():
        raise TrainerError("GGUF export is not installed here: run infra/engines/gguf/install.sh and set "
                           "TUNEFORGE_GGUF_CONVERTER to the directory it prints")
    target = out / "model-f16.gguf"
    out.mkdir(parents=True, exist_ok=True)
    env_path = f"{Path(converter) / 'gguf-py'}"
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), "--outfile", str(target), "--outtype", "f16"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": env_path})
    if result.returncode != 0 or not target.is_file():
        raise TrainerError(f"the GGUF converter failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return out


def export(store_url: str, base: str, model_prefix: str, out_prefix: str, fmt: str) -> list[str]:
    store = open_store(store_url)
    with tempfile.TemporaryDirectory(prefix="tuneforge-export-") as tmp:
        work = Path(tmp)
        merged = merged_model(store, base, model_prefix, work)
        directory = to_gguf(merged, work / "gguf") if fmt == "gguf" else merged
        manifest = publish_dir(store, directory, out_prefix, base_model=base, extra={
            "format": fmt, "merged_from": model_prefix})
    return [entry.name for entry in manifest.files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.trainer.export", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--model-prefix", required=True)
    parser.add_argument("--out-prefix", required=True)
    parser.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors")
    args = parser.parse_args(argv)
    try:
        files = export(args.store, args.base, args.model_prefix, args.out_prefix, args.format)
    except TrainerError as exc:
        print(f"tuneforge: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except Exception as exc:  # one line for the service; the traceback is of no use to a user
        print(f"tuneforge: export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    print(json.dumps({"files": files}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
