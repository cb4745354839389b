"""PPO vs GRPO vs RLOO against the same reward model, on the same prompts with the same sampling budget.

Each algorithm runs as a tuneforge job (``python -m tuneforge.trainer`` on a JobSpec, a ``reward_model`` grader)
with the same base model, LoRA, learning rate, prompts per step, responses per prompt, response length,
temperature and number of steps, so all three sample the same number of responses (the generated tokens are
counted from their metrics). Then ONE evaluator scores the base model and each tuned adapter the same way:
``--samples`` responses to each held-out prompt, sampled with a fixed seed at the training temperature, scored by
the reward model (raw score), and the KL to the base model per response
(``sum_t log pi_tuned(y_t) - log pi_base(y_t)`` over the sampled tokens, both at that temperature).

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 \\
      python bench/rl_reward_model.py --store /tmp/rlcmp --steps 24

The reward model: ``--reward-job DIR`` reuses the store of ``examples/trainer_methods.py reward --keep DIR``;
otherwise the script trains it first with that example's settings (256 HH-RLHF pairs). Prompts are the first
human turns of HH-RLHF harmless-base dialogues the reward model did not see (training rows 300+, held-out
2100+).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))
RM_JOB = "ftjob-example-reward"


def first_turn_prompts(n: int, offset: int) -> list[dict[str, Any]]:
    out = []
    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        for i, line in enumerate(fh):
            if i < offset:
                continue
            first = json.loads(line)["chosen"].split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
            if first:
                out.append({"prompt": [{"role": "user", "content": first}]})
            if len(out) == n:
                break
    return out


def run_trainer(spec: dict[str, Any], root: Path) -> tuple[float, list[dict[str, Any]]]:
    path = root / f"{spec['job_id']}.json"
    path.write_text(json.dumps(spec, indent=2))
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.trainer", "--spec", str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    events = []
    with (root / f"{spec['job_id']}.events.jsonl").open("w") as log:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            log.write(line)
            event = json.loads(line)
            events.append(event)
            if event["kind"] in ("metrics", "error", "result"):
                print(f"  [{spec['job_id']}] {event['message']}", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"{spec['job_id']} failed ({proc.returncode})")
    return time.perf_counter() - started, events


def train_reward_model(store: Path, root: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "examples" / "trainer_methods.py"), "reward", "--keep", str(root)],
                   check=True, env=dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1"))  # fmt: skip


def rl_spec(algorithm: str, ns: argparse.Namespace, store: Path, rows: int) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "n_epochs": 1, "batch_size": ns.batch_size, "learning_rate": ns.learning_rate, "max_length": 512,
        "max_steps": ns.steps, "num_generations": ns.generations, "max_completion_length": ns.length,
        "temperature": ns.temperature, "warmup_ratio": 0.0, "checkpoint_every_steps": 0,
    }  # fmt: skip
    if algorithm == "ppo":
        hp["ppo"] = {"target_kl": ns.target_kl, "init_kl_coef": ns.kl_coef, "num_mini_batches": 2}
    else:
        hp["kl_coef"] = ns.kl_coef_critic_free
    job_id = f"ftjob-cmp-{algorithm}"
    return {
        "job_id": job_id, "tenant_id": "bench",
        "method": {"type": "reinforcement", "algorithm": algorithm,
                   "grader": {"type": "reward_model", "model_prefix": f"jobs/{RM_JOB}/model"}},
        "base_model": ns.model,
        "training_file": {"file_id": "prompts", "key": "files/prompts", "format": "prompt_only", "rows": rows},
        "hyperparameters": hp, "storage_url": store.as_uri(), "output_prefix": f"jobs/{job_id}", "seed": ns.seed,
    }  # fmt: skip


def evaluate(ns: argparse.Namespace, store: Path, adapters: dict[str, Path | None],
             prompts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:  # fmt: skip
    """Mean reward-model score, KL to the base and length of sampled responses, for each model."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    from tuneforge.contracts.jobspec import GraderSpec
    from tuneforge.storage import open_store
    from tuneforge.trainer.data import ensure_chat_template
    from tuneforge.trainer.graders import download_reward_model
    from tuneforge.trainer.methods import ppo_core as core
    from tuneforge.trainer.methods import ppo_models
    from tuneforge.trainer.methods.ppo_models import POLICY, Batch
    from tuneforge.trainer.models import load_causal_lm, load_tokenizer, resolve_model

    model_dir = resolve_model(ns.model)
    tokenizer = load_tokenizer(model_dir)
    ensure_chat_template(tokenizer)
    grader = GraderSpec(type="reward_model", model_prefix=f"jobs/{RM_JOB}/model")
    rm_dir, _ = download_reward_model(grader, open_store(store.as_uri()), store.parent / "eval")
    rm_tokenizer = load_tokenizer(rm_dir)
    lm = load_causal_lm(model_dir, torch.float32)
    models = ppo_models.SharedBaseModels(lm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                        task_type="CAUSAL_LM", lora_dropout=0.0))  # fmt: skip
    weights, head = ppo_models.split_reward_adapter(rm_dir)
    models.add_reward(ppo_models.lora_config_from(rm_dir), weights, head)
    lm.eval()
    eos = tokenizer.eos_token_id
    gen = GenerationConfig(max_new_tokens=ns.length, do_sample=True, temperature=ns.temperature, top_k=0, top_p=1.0,
                           eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    ids = [list(tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True,
                                              return_dict=False)) for p in prompts]  # fmt: skip
    results = {}
    for name, adapter in adapters.items():
        if adapter is None:
            models.load_adapter_state(POLICY, {k: torch.zeros_like(v) for k, v in models.adapter_state(POLICY).items()})
        else:
            models.load_adapter_state(POLICY, load_file(str(adapter / "adapter_model.safetensors")))
        torch.manual_seed(ns.seed)
        scores, kls, lengths = [], [], []
        for start in range(0, len(ids), ns.eval_batch):
            chunk = [x for x in ids[start : start + ns.eval_batch] for _ in range(ns.samples)]
            width = max(len(x) for x in chunk)
            query = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in chunk])
            qmask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
            with torch.no_grad():
                responses = models.generate(query, qmask, gen)
                mask, _ = core.response_mask(responses, [eos])
                batch = Batch(torch.cat([query, responses], 1), torch.cat([qmask, mask.long()], 1), width)
                with models.adapter(POLICY):
                    lp = core.logprobs_of(models.response_logits(batch), responses, ns.temperature)
                with models.adapter(None):
                    ref = core.logprobs_of(models.response_logits(batch), responses, ns.temperature)
                kls += core.per_token_kl(lp, ref, mask).sum(1).tolist()
                lengths += mask.sum(1).tolist()
                texts = [tokenizer.decode(r[: int(n)].tolist(), skip_special_tokens=True)
                         for r, n in zip(responses, mask.sum(1), strict=True)]  # fmt: skip
                msgs = [p["prompt"] for p in prompts[start : start + ns.eval_batch] for _ in range(ns.samples)]
                rm_texts = [rm_tokenizer.apply_chat_template([*m, {"role": "assistant", "content": t}], tokenize=False)
                            for m, t in zip(msgs, texts, strict=True)]  # fmt: skip
                enc = rm_tokenizer(rm_texts, return_tensors="pt", padding=True, padding_side="right",
                                   add_special_tokens=False)  # fmt: skip
                scores += models.reward_scores(enc["input_ids"], enc["attention_mask"],
                                               rm_tokenizer.pad_token_id).tolist()  # fmt: skip
        n = len(scores)
        mean = sum(scores) / n
        se = (sum((s - mean) ** 2 for s in scores) / (n - 1)) ** 0.5 / n**0.5
        results[name] = {"score": mean, "score_se": se, "kl": sum(kls) / n, "length": sum(lengths) / n, "n": n}
        print(f"  eval {name:5}: score {mean:+.4f} (se {se:.4f}), KL {results[name]['kl']:.3f}, "
              f"length {results[name]['length']:.1f}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="working directory (kept: jobs, events, report)")
    parser.add_argument("--reward-job", help="the --keep directory of `examples/trainer_methods.py reward`")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--algorithms", default="ppo,grpo,rloo")
    parser.add_argument("--rows", type=int, default=96, help="training prompts")
    parser.add_argument("--valid-rows", type=int, default=32, help="held-out prompts")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="responses per prompt")
    parser.add_argument("--length", type=int, default=64, help="most new tokens per response")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="PPO's initial beta")
    parser.add_argument("--target-kl", type=float, default=6.0, help="PPO's adaptive KL target (per response)")
    parser.add_argument("--kl-coef-critic-free", type=float, default=0.05, help="GRPO/RLOO's KL coefficient")
    parser.add_argument("--samples", type=int, default=2, help="evaluation responses per held-out prompt")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the jobs already in --store")
    ns = parser.parse_args()
    sys.path[:0] = [p for p in PYTHONPATH.split(os.pathsep) if p not in sys.path]
    root = Path(ns.store).resolve()
    store = root / "store"
    if not (store / "jobs" / RM_JOB / "model" / "manifest.json").is_file():
        if ns.reward_job:
            shutil.copytree(Path(ns.reward_job) / "store" / "jobs" / RM_JOB, store / "jobs" / RM_JOB)
        else:
            train_reward_model(store, root)
    train, valid = first_turn_prompts(ns.rows, 300), first_turn_prompts(ns.valid_rows, 2100)
    (store / "files").mkdir(parents=True, exist_ok=True)
    for name, rows in (("prompts", train), ("valid", valid)):
        (store / "files" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    report_path = root / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["settings"] = {k: v for k, v in vars(ns).items() if k not in ("store", "reward_job", "eval_only")}
    algorithms = [a for a in ns.algorithms.split(",") if a]
    for algorithm in algorithms:
        if ns.eval_only:
            break
        print(f"training {algorithm}", flush=True)
        seconds, events = run_trainer(rl_spec(algorithm, ns, store, len(train)), root)
        steps = [e["data"] for e in events if e["kind"] == "metrics" and "mean_reward" in e["data"]]
        responses = ns.batch_size * ns.generations
        report[algorithm] = {
            "wall_s": round(seconds, 1),
            "steps": len(steps),
            "generated_tokens": round(sum(m.get("completions_mean_length", 0.0) * responses for m in steps)),
            "train_mean_reward_first5": sum(m["mean_reward"] for m in steps[:5]) / max(1, len(steps[:5])),
            "train_mean_reward_last5": sum(m["mean_reward"] for m in steps[-5:]) / max(1, len(steps[-5:])),
        }
        report_path.write_text(json.dumps(report, indent=2))
    adapters: dict[str, Path | None] = {"base": None}
    adapters.update({a: store / "jobs" / f"ftjob-cmp-{a}" / "model" for a in algorithms})
    report["eval"] = evaluate(ns, store, adapters, valid)
    report_path.write_text(json.dumps(report, indent=2))
    base = report["eval"]["base"]
    print(f"\nheld-out ({len(valid)} prompts x {ns.samples}), reward-model score and KL to the base per response:")
    print(f"{'':6}{'score':>9}{'vs base':>9}{'KL':>8}{'length':>8}{'wall s':>9}{'gen tokens':>12}")
    for name, res in report["eval"].items():
        run = report.get(name, {})
        print(f"{name:6}{res['score']:>+9.3f}{res['score'] - base['score']:>+9.3f}{res['kl']:>8.2f}"
              f"{res['length']:>8.1f}{run.get('wall_s', 0):>9.0f}{run.get('generated_tokens', 0):>12}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
