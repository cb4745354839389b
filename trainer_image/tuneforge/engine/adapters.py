"""LoRA adapters by name: which ones the engine knows, which are loaded into the model, least recently used out.

Known adapters (given at start with ``--adapter`` or added at run time) are checked when they are registered,
without touching the model: a PEFT LoRA config, safetensors weights, and every tensor's shape against the base
model's layer, so a wrong adapter is a clear 400 instead of a half-patched model. At most ``max_loaded`` are
in the model at once; loading one more evicts the least recently used adapter that no running sequence uses
(an evicted adapter stays known and is loaded again on its next request).

Every change to the model happens on the generation thread (the batcher calls :meth:`AdapterSet.ensure` and
:meth:`AdapterSet.drop` between two steps), so a forward pass never sees an adapter come or go.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.engine.errors import BadRequest, NotFound

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    chat_template: str | None  # the adapter's own template, when it ships one that differs from the base's


def _read_chat_template(path: Path) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("chat_template")
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    return None


def _check_shapes(path: Path, modules: dict[str, Any]) -> None:
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
            shape = fh.get_slice(key).get_shape()
            # base_model.model.<module path>.lora_A.weight (PEFT strips the adapter name when saving)
            module_path, _, kind = key.rpartition(".lora_")
            module_path = module_path.removeprefix("base_model.model.")
            if not kind or module_path not in modules:
                continue
            layer = modules[module_path]
            in_f = getattr(layer, "in_features", None) or getattr(layer, "num_embeddings", None)
            out_f = getattr(layer, "out_features", None) or getattr(layer, "embedding_dim", None)
            if kind.startswith("A.") and in_f is not None and len(shape) == 2 and shape[1] != in_f:
                raise BadRequest(f"adapter tensor {key} has shape {shape}; the base model's {module_path} takes "
                                 f"{in_f} inputs: this adapter was trained on another base model", param="lora_path")
            if kind.startswith("B.") and out_f is not None and len(shape) == 2 and shape[0] != out_f:
                raise BadRequest(f"adapter tensor {key} has shape {shape}; the base model's {module_path} has "
                                 f"{out_f} outputs: this adapter was trained on another base model", param="lora_path")


class AdapterSet:
    def __init__(self, model: Any, max_loaded: int, base_template: str | None) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.model = model  # a PeftModel once the first adapter is loaded
        self.max_loaded = max_loaded
        self.base_template = base_template
        self.known: dict[str, AdapterInfo] = {}
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.in_use: Counter[str] = Counter()
        self.evictions = 0
        self._base_modules = {name: mod for name, mod in model.named_modules() if name}
        self._lock = threading.Lock()  # guards `known` between the HTTP thread and the generation thread

    # -- any thread --

    def validate(self, name: str, path_str: str) -> AdapterInfo:
        if not name or name == BASE:
            raise BadRequest(f"invalid adapter name {name!r}", param="lora_name")
        path = Path(path_str).expanduser()
        if not path.is_dir():
            raise BadRequest(f"adapter {name!r}: no such directory {path_str!r}", param="lora_path")
        config_path = path / "adapter_config.json"
        if not config_path.is_file():
            raise BadRequest(f"adapter {name!r}: {path_str} has no adapter_config.json; it is not a PEFT adapter (a "
                             "fully fine-tuned model is served as its own --model)", param="lora_path")
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise BadRequest(f"adapter {name!r}: unreadable adapter_config.json: {exc}", param="lora_path") from None
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise BadRequest(f"adapter {name!r}: peft_type {config.get('peft_type')!r}; this engine serves LoRA "
                             "adapters only", param="lora_path")
        if config.get("use_dora"):
            raise BadRequest(f"adapter {name!r}: DoRA adapters cannot share a batch with others; merge it into the "
                             "base model and serve that", param="lora_path")
        if not (path / WEIGHTS).is_file():
            found = "adapter_model.bin (pickle) found; " if (path / "adapter_model.bin").is_file() else ""
            raise BadRequest(f"adapter {name!r}: {found}no {WEIGHTS} in {path_str}; weights load from safetensors "
                             "only", param="lora_path")
        _check_shapes(path, self._base_modules)
        template = _read_chat_template(path)
        return AdapterInfo(name, path.resolve(), template if template != self.base_template else None)

    def register(self, info: AdapterInfo) -> bool:
        """Add a known adapter; False when the same name already names the same directory."""
        with self._lock:
            old = self.known.get(info.name)
            if old is not None:
                if old.path == info.path:
                    return False
                raise BadRequest(f"adapter {info.name!r} is already loaded from {old.path}; unload it first",
                                 param="lora_name", code="adapter_exists")
            self.known[info.name] = info
            return True

    def forget(self, name: str) -> None:
        with self._lock:
            if name not in self.known:
                raise NotFound(f"adapter {name!r} is not loaded", param="lora_name", code="adapter_not_found")
            del self.known[name]

    def info(self, name: str) -> AdapterInfo | None:
        with self._lock:
            return self.known.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self.known)

    # -- generation thread only --

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def can_admit(self, names: set[str]) -> bool:
        """Whether ``names`` can all be in the model at once besides the adapters running rows use."""
        busy = {n for n, c in self.in_use.items() if c > 0}
        return len(busy | {n for n in names if n != BASE}) <= self.max_loaded

    def ensure(self, names: set[str]) -> None:
        """Load the adapters in ``names`` that are not loaded, then evict down to the cap (LRU, idle ones)."""
        for name in names:
            if name == BASE:
                continue
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            info = self.info(name)
            if info is None:
                raise NotFound(f"The model `{name}` does not exist.", param="model", code="model_not_found")
            self._load(info)
            self.loaded[name] = None
        for name in list(self.loaded):
            if len(self.loaded) <= self.max_loaded:
                break
            if name in names or self.in_use[name] > 0:
                continue
            self._unload(name)
            self.evictions += 1

    def drop_forgotten(self) -> None:
        """Remove from the model the loaded adapters that were unloaded by name and that nothing uses now."""
        for name in list(self.loaded):
            if name not in self.known and self.in_use[name] == 0:
                self._unload(name)

    def _load(self, info: AdapterInfo) -> None:
        from peft import PeftModel

        try:
            if not self.is_peft:
                self.model = PeftModel.from_pretrained(self.model, str(info.path), adapter_name=info.name,
                                                       is_trainable=False)
            else:
                self.model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
        except Exception as exc:
            # PEFT injects the layers before it loads the weights: take a half-loaded adapter out again
            if self.is_peft and info.name in self.model.peft_config:
                self._unload(info.name)
            raise BadRequest(f"adapter {info.name!r} does not load into this base model: {exc}",
                             param="lora_path") from None
        self.model.eval()

    def _unload(self, name: str) -> None:
        self.loaded.pop(name, None)
        if len(self.model.peft_config) <= 1:
            # the last adapter: back to the plain base model (PEFT keeps no adapter-less PeftModel)
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(name)
