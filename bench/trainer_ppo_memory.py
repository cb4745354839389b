"""PPO peak memory: tuneforge's one shared base (policy and critic as LoRA adapters, the reference = adapters off,
the reward model's LoRA attached as a frozen adapter) against the usual four separate copies (policy + LoRA,
reference, critic + LoRA + value head, reward model), on the SAME PPO loop (``PPOTrainer``) with the same data,
batch, response length and steps; each side in its own process.

Peak memory = ``torch.cuda.max_memory_allocated()`` on a GPU, the process's peak RSS on the CPU (which includes
the Python/torch runtime, the same on both sides). Also printed: memory once the models are built (weights
only) and the time per PPO step.

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python bench/trainer_ppo_memory.py --steps 2

The reward model is a LoRA sequence classifier on the same base with a random score head (its weights do not
change the memory), or ``--reward-model DIR`` (a published reward_model job's model directory).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))


def hh_prompts(n: int) -> list[list[dict[str, str]]]:
    """First human turns of HH-RLHF harmless-base dialogues, as chat prompts."""
    out = []
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        for line in fh:
            text = json.loads(line)["chosen"]
            first = text.split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
            if first:
                out.append([{"role": "user", "content": first}])
            if len(out) == n:
                break
    return out


def make_reward_model(model_path: str, directory: Path, r: int) -> Path:
    """A LoRA sequence classifier on the base, saved as the reward_model method saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.trainer.models import load_sequence_classifier, load_tokenizer

    tokenizer = load_tokenizer(Path(model_path))
    torch.manual_seed(0)
    model = load_sequence_classifier(Path(model_path), torch.float32, tokenizer.pad_token_id)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                            task_type="SEQ_CLS", modules_to_save=["score"]))  # fmt: skip
    peft.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def _peak_bytes() -> tuple[str, int]:
    import torch

    if torch.cuda.is_available():
        return "GPU", int(torch.cuda.max_memory_allocated())
    return "RSS", int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _Group:
    def __init__(self, *models: Any) -> None:
        self.models = models

    def train(self) -> None:
        for m in self.models:
            m.train()

    def eval(self) -> None:
        for m in self.models:
            m.eval()


class SeparateModels:
    """The baseline layout: policy, reference and critic each on their own copy of the base (the reward model is
    a fourth, loaded by the caller). Same interface as ``SharedBaseModels`` for ``PPOTrainer``."""

    def __init__(self, model_path: str, dtype: Any, policy_config: Any, critic_config: Any, device: Any) -> None:
        import torch
        from peft import get_peft_model

        from tuneforge.trainer.methods.ppo_models import POLICY
        from tuneforge.trainer.models import load_causal_lm

        self.policy_lm = load_causal_lm(Path(model_path), dtype).to(device)
        self.peft = get_peft_model(self.policy_lm, policy_config)
        self.reference = load_causal_lm(Path(model_path), dtype).to(device).eval().requires_grad_(False)
        self.critic_lm = load_causal_lm(Path(model_path), dtype).to(device)
        self.critic = get_peft_model(self.critic_lm, critic_config)
        hidden = int(self.policy_lm.config.get_text_config().hidden_size)
        self.value_head = torch.nn.Linear(hidden, 1).to(device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.lm = _Group(self.policy_lm, self.reference, self.critic_lm)
        self._active: str | None = POLICY

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        previous, self._active = self._active, name
        try:
            yield
        finally:
            self._active = previous

    def trainable_parameters(self) -> list[Any]:
        params = [p for p in self.peft.parameters() if p.requires_grad]
        params += [p for p in self.critic.parameters() if p.requires_grad]
        return params + list(self.value_head.parameters())

    def _hidden(self, lm: Any, batch: Any) -> Any:
        from tuneforge.trainer.methods.ppo_models import position_ids

        return lm.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state

    def response_logits(self, batch: Any) -> Any:
        from tuneforge.trainer.methods.ppo_models import POLICY

        lm = self.policy_lm if self._active == POLICY else self.reference
        start = batch.context_length - 1
        hidden = self._hidden(lm, batch)[:, start : start + batch.responses.shape[1]]
        return lm.get_output_embeddings()(hidden)

    def values(self, batch: Any) -> Any:
        start = batch.context_length - 1
        hidden = self._hidden(self.critic_lm, batch)[:, start : start + batch.responses.shape[1]]
        return self.value_head(hidden.float()).squeeze(-1)

    def generate(self, input_ids: Any, attention_mask: Any, config: Any) -> Any:
        import torch

        with torch.no_grad():
            out = self.policy_lm.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        return out[:, input_ids.shape[1] :]

    def scale_value_head(self, gain: float, bias: float) -> None:
        pass


def worker(ns: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig
    from transformers import TrainingArguments

    from tuneforge.trainer.data import ensure_chat_template
    from tuneforge.trainer.graders import load_downloaded_reward_model
    from tuneforge.trainer.methods import ppo_models
    from tuneforge.trainer.methods.ppo import PPOConfig
    from tuneforge.trainer.methods.ppo_rewards import ModelScorer
    from tuneforge.trainer.methods.ppo_trainer import PPOTrainer, Prompts, Settings
    from tuneforge.trainer.models import load_causal_lm, load_tokenizer

    torch.manual_seed(ns.seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = load_tokenizer(Path(ns.model_path))
    ensure_chat_template(tokenizer)
    rm_dir = Path(ns.reward_model)
    rm_tokenizer = load_tokenizer(rm_dir)

    def lora() -> Any:
        return LoraConfig(r=ns.lora_r, lora_alpha=2 * ns.lora_r, target_modules="all-linear", lora_dropout=0.0,
                          task_type="CAUSAL_LM")  # fmt: skip

    micro = ns.batch_size * ns.samples
    models: Any
    if ns.worker == "shared":
        lm = load_causal_lm(Path(ns.model_path), dtype).to(device)
        models = ppo_models.SharedBaseModels(lm, lora())
        weights, head = ppo_models.split_reward_adapter(rm_dir)
        models.add_reward(ppo_models.lora_config_from(rm_dir), weights, head)
        models.add_critic(lora())
        pad = rm_tokenizer.pad_token_id
        scorer = ModelScorer(lambda i, m: models.reward_scores(i, m, pad), rm_tokenizer, device, micro)
    else:
        models = SeparateModels(ns.model_path, dtype, lora(), lora(), device)
        manifest = {"base_model": ns.model_path}
        rm = ppo_models.SeparateRewardModel(load_downloaded_reward_model(rm_dir, manifest, None, dtype).to(device))
        scorer = ModelScorer(rm.scores, rm_tokenizer, device, micro)
    ppo_models.disable_dropout(models.peft)
    kind, built = _peak_bytes()

    messages = hh_prompts(ns.batch_size * ns.steps)
    ids = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False))[-256:]
           for m in messages]  # fmt: skip
    config = PPOConfig(response_length=ns.response_length, ppo_epochs=ns.ppo_epochs, missing_eos_penalty=None)
    settings = Settings(batch_size=ns.batch_size, samples_per_prompt=ns.samples, gradient_accumulation_steps=1,
                        total_steps=ns.steps, seed=ns.seed, learning_rate=1e-5, weight_decay=0.0,
                        lr_scheduler="constant", warmup_steps=0, eos_token_ids=[tokenizer.eos_token_id],
                        pad_token_id=int(tokenizer.pad_token_id))  # fmt: skip
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-ppo-"), save_strategy="no",
                             eval_strategy="no", report_to="none", use_cpu=not cuda, disable_tqdm=True)  # fmt: skip
    trainer = PPOTrainer(models=models, scorer=scorer, tokenizer=tokenizer, config=config, settings=settings,
                         args=args, train=Prompts(messages, ids, {}), valid=None, device=device)  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = trainer.train()
    elapsed = time.perf_counter() - started
    _, peak = _peak_bytes()
    return {"side": ns.worker, "memory_kind": kind, "built_bytes": built, "peak_bytes": max(peak, built),
            "steps": output.global_step, "seconds_per_step": elapsed / max(1, output.global_step),
            "tokens": int(trainer.state.num_input_tokens_seen or 0)}  # fmt: skip


def run_side(side: str, passthrough: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, "--worker", side, *passthrough], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"the {side} side failed ({proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    return dict(json.loads(line[len("BENCH_RESULT ") :]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    parser.add_argument("--samples", type=int, default=2, help="responses per prompt")
    parser.add_argument("--response-length", type=int, default=48)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reward-model", help="a reward_model job's published model directory")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    sys.path[:0] = [p for p in PYTHONPATH.split(os.pathsep) if p not in sys.path]
    if ns.worker:
        print("BENCH_RESULT " + json.dumps(worker(ns)), flush=True)
        return 0
    from tuneforge.trainer.models import resolve_model

    model_path = str(resolve_model(ns.model))
    with tempfile.TemporaryDirectory(prefix="bench-ppo-rm-") as tmp:
        rm = ns.reward_model or str(make_reward_model(model_path, Path(tmp) / "rm", ns.lora_r))
        passthrough = ["--model-path", model_path, "--reward-model", rm, "--batch-size", str(ns.batch_size),
                       "--samples", str(ns.samples), "--response-length", str(ns.response_length),
                       "--ppo-epochs", str(ns.ppo_epochs), "--steps", str(ns.steps), "--lora-r", str(ns.lora_r),
                       "--seed", str(ns.seed)]  # fmt: skip
        separate = run_side("separate", passthrough)
        shared = run_side("shared", passthrough)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
    kind = shared["memory_kind"]
    report = {
        "benchmark": "ppo_memory", "device": device, "model": ns.model, "separate": separate, "shared": shared,
        "peak_ratio": round(shared["peak_bytes"] / separate["peak_bytes"], 3),
        "built_ratio": round(shared["built_bytes"] / separate["built_bytes"], 3),
        "step_time_ratio": round(shared["seconds_per_step"] / separate["seconds_per_step"], 3),
    }  # fmt: skip
    print(f"\nPPO memory on {device}: {ns.model}, {ns.batch_size} prompts x {ns.samples} responses of up to "
          f"{ns.response_length} tokens, {ns.ppo_epochs} PPO epochs, {ns.steps} steps, LoRA r={ns.lora_r}")
    print(f"{'':28}{'built ' + kind + ' MiB':>18}{'peak ' + kind + ' MiB':>18}{'s/step':>9}")
    for label, side in (("four copies (baseline)", separate), ("one shared base (tuneforge)", shared)):
        print(f"{label:28}{side['built_bytes'] / 2**20:>18.0f}{side['peak_bytes'] / 2**20:>18.0f}"
              f"{side['seconds_per_step']:>9.1f}")  # fmt: skip
    print(f"peak memory ratio (shared / separate): {report['peak_ratio']:.2f}x; after loading: "
          f"{report['built_ratio']:.2f}x; time per step: {report['step_time_ratio']:.2f}x")  # fmt: skip
    if ns.out:
        Path(ns.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
