"""The four networks of PPO on ONE copy of the base weights.

- policy: the LoRA adapter ``default`` (the name PEFT publishes at the top of a saved adapter), trained;
- critic: the LoRA adapter ``critic`` plus a value head (hidden -> 1) on the final hidden states, trained;
- reference: the same base with every adapter disabled (the starting model, frozen);
- reward model: when the grader is a LoRA reward model trained on the same base, its adapter is attached as
  ``reward`` (frozen) with its score head; otherwise it is loaded once on its own (:class:`SeparateRewardModel`).

Keeping separate copies (policy, reference, critic, reward model: four bases) is what PPO implementations
usually do; ``bench/trainer_ppo_memory.py`` measures the difference.

Only the transformer body runs for the critic and the reward model (no LM head over the vocabulary), and the
policy's LM head runs only on the response positions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

POLICY = "default"
CRITIC = "critic"
REWARD = "reward"
#: LoRA settings copied from a reward model's adapter_config.json when its adapter is attached or copied
_LORA_FIELDS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias", "fan_in_fan_out")


@dataclass
class Batch:
    """Prompt (left-padded, ``context_length`` columns) followed by the response (right-padded)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    context_length: int

    def rows(self, index: torch.Tensor) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.context_length)

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.context_length :]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at position 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio must be exactly 1 on the first minibatch: no dropout anywhere (N implementation details)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def lora_config_from(adapter_dir: Path) -> Any:
    """A causal-LM LoraConfig with the rank, alpha and target modules of a saved adapter (no dropout, no
    ``modules_to_save``: its score head is handled here)."""
    from peft import LoraConfig

    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    kwargs = {k: saved[k] for k in _LORA_FIELDS if saved.get(k) is not None}
    return LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kwargs)


def split_reward_adapter(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(LoRA tensors, score-head weight [1, hidden]) of a reward model saved by the ``reward_model`` method."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    heads = [k for k in tensors if k.endswith("score.weight")]
    if len(heads) != 1:
        raise ValueError(f"expected one score head in the reward model's adapter, found {len(heads)}")
    head = tensors.pop(heads[0])
    return tensors, head


class SharedBaseModels:
    """Policy, critic, reference (and possibly the reward model) as adapters on one base causal LM."""

    def __init__(self, lm: Any, policy_config: Any) -> None:
        from peft import get_peft_model

        self.lm = lm
        self.peft = get_peft_model(lm, policy_config, adapter_name=POLICY)
        self.body = lm.base_model  # the transformer without its LM head (LlamaModel for Llama)
        self.lm_head = lm.get_output_embeddings()
        hidden = int(lm.config.get_text_config().hidden_size)
        device = next(lm.parameters()).device
        self.value_head = nn.Linear(hidden, 1).to(device=device, dtype=torch.float32)
        self.reward_head: nn.Linear | None = None
        self._active: str | None = POLICY
        self._layers: list[Any] | None = None

    # -- building --

    def add_critic(self, critic_config: Any, init: dict[str, torch.Tensor] | None = None,
                   head: torch.Tensor | None = None) -> None:  # fmt: skip
        """The critic adapter: fresh (LoRA B = 0: the base itself) with a zero value head (lm-human-preferences
        starts its value head at zero), or a copy of the reward model's adapter and score head (TRL's PPO
        initialised its value model from the reward model)."""
        from peft import set_peft_model_state_dict

        self.peft.add_adapter(CRITIC, critic_config)
        if init is not None:
            _load_adapter_weights(self.peft, init, CRITIC, set_peft_model_state_dict)
        with torch.no_grad():
            self.value_head.bias.zero_()
            if head is None:
                self.value_head.weight.zero_()
            else:
                self.value_head.weight.copy_(head.to(self.value_head.weight))
        self._after_adding()

    def add_reward(self, reward_config: Any, weights: dict[str, torch.Tensor], head: torch.Tensor) -> None:
        from peft import set_peft_model_state_dict

        self.peft.add_adapter(REWARD, reward_config)
        _load_adapter_weights(self.peft, weights, REWARD, set_peft_model_state_dict)
        self._after_adding()
        hidden = head.shape[-1]
        device = next(self.lm.parameters()).device
        self.reward_head = nn.Linear(hidden, 1, bias=False).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            self.reward_head.weight.copy_(head.to(self.reward_head.weight))
        self.reward_head.requires_grad_(False)

    def scale_value_head(self, gain: float, bias: float) -> None:
        """Map the value head onto normalised scores (``gain * score + bias``) when it starts from the reward model."""
        with torch.no_grad():
            self.value_head.weight.mul_(gain)
            self.value_head.bias.mul_(gain).add_(bias)

    # -- adapters --

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run with one adapter active (None: the reference, every adapter off).

        PEFT's public switches (``set_adapter``, ``disable_adapter``) walk every module and rewrite requires_grad
        (only the active adapter trainable); PPO switches some twenty times per step and trains two adapters, so
        the LoRA layers are switched here directly: their active adapter and their on/off flag, nothing else."""
        layers = self._lora_layers()
        previous = self._active
        self._switch(layers, name)
        try:
            yield
        finally:
            self._switch(layers, previous)

    def _lora_layers(self) -> list[Any]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._layers is None:
            self._layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
            if not all(hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters") for m in self._layers):
                raise RuntimeError("this PEFT version's LoRA layers cannot be switched in place")  # pragma: no cover
        return self._layers

    def _after_adding(self) -> None:
        """A new adapter: policy and critic trainable, the reward model frozen, the policy active."""
        trained = [n for n in (POLICY, CRITIC) if n in self.peft.peft_config]
        self.peft.set_requires_grad(trained, True)
        if REWARD in self.peft.peft_config:
            self.peft.set_requires_grad([REWARD], False)
        self._layers = None
        self._active = "?"  # forces the switch below
        self._switch(self._lora_layers(), POLICY)

    def _switch(self, layers: list[Any], name: str | None) -> None:
        if name == self._active:
            return
        for layer in layers:
            if name is None:
                layer._disable_adapters = True
            else:
                layer._disable_adapters = False
                layer._active_adapter = [name]
        self._active = name

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for n, p in self.peft.named_parameters() if p.requires_grad and f".{REWARD}." not in n]
        return params + list(self.value_head.parameters())

    # -- forward passes --

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        out = self.body(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    def response_logits(self, batch: Batch) -> torch.Tensor:
        """Logits that predicted each response token ([B, R, V]), from the active adapter (or the reference)."""
        hidden = self.hidden_states(batch)
        start = batch.context_length - 1
        return self.lm_head(hidden[:, start : start + batch.responses.shape[1]])

    def values(self, batch: Batch) -> torch.Tensor:
        """V(prompt + response[:t]) for every response position t ([B, R]), critic adapter active."""
        with self.adapter(CRITIC):
            hidden = self.hidden_states(batch)
        start = batch.context_length - 1
        states = hidden[:, start : start + batch.responses.shape[1]]
        return self.value_head(states.float()).squeeze(-1)

    def reward_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None
    ) -> torch.Tensor:
        """The attached reward model's score of each right-padded sequence, pooled where its sequence classifier
        pools: the last token that is not the pad token."""
        assert self.reward_head is not None
        with self.adapter(REWARD):
            hidden = self.hidden_states(Batch(input_ids, attention_mask, 1))
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_non_pad(input_ids, pad_token_id)]
        return self.reward_head(pooled.float()).squeeze(-1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: Any) -> torch.Tensor:
        with self.adapter(POLICY):
            out = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        return out[:, input_ids.shape[1] :]

    # -- state --

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(self.peft, adapter_name=name).items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        _load_adapter_weights(self.peft, state, name, set_peft_model_state_dict)

    def save_policy(self, directory: Path) -> None:
        """The tuned model as PEFT publishes any LoRA adapter: adapter_model.safetensors + adapter_config.json."""
        self.peft.save_pretrained(str(directory), selected_adapters=[POLICY])


def last_non_pad(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Index of the rightmost token that is not ``pad_token_id`` (transformers' sequence-classification pooling)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    indices = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (indices * (input_ids != pad_token_id).long()).argmax(dim=-1)


def _load_adapter_weights(peft: Any, state: dict[str, torch.Tensor], name: str, setter: Any) -> None:
    result = setter(peft, state, adapter_name=name)
    missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k and "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"adapter {name!r}: weights do not fit the base model "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
        )


class SeparateRewardModel:
    """A reward model that cannot share the policy's base (another base model, or fully fine-tuned): its own
    sequence classifier, loaded once and frozen."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
