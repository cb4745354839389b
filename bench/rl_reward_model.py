"""PPO vs GRPO vs RLOO against the same reward model, on the same prompts with the same sampling budget.

Each algorithm runs as a tuneforge job (``python -m tuneforge.trainer`` on a JobSpec with a ``reward_model``
grader) from the same base model with the same LoRA, learning rate, prompts per step, responses per prompt,
response length, temperature, KL coefficient (PPO's initial beta) and number of steps: the settings of the PPO
stage of ``examples/trainer_methods.py ppo`` (its ``HYPERPARAMETERS["ppo"]``), so all three sample the same number
of responses (the generated tokens are counted from their metrics). All three get the raw reward-model score
(PPO without its missing-EOS penalty). Then ONE evaluator scores the base model and each tuned adapter the same
way: ``--samples`` responses to each held-out prompt, sampled with a fixed seed at the training temperature, scored
by the reward model, and the KL to the base per response (``sum_t log pi_tuned(y_t) - log pi_base(y_t)`` over the
sampled tokens, both at that temperature).

The classic setting, on the pipeline's SFT model and reward model, adopting its PPO job (its settings are checked):

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python examples/trainer_methods.py ppo \\
      --keep /tmp/rlhf --steps 16
    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python bench/rl_reward_model.py \\
      --store /tmp/rlcmp --pipeline /tmp/rlhf --steps 16

Without ``--pipeline`` it runs all three from ``--model`` against ``--reward-store``'s reward model (default: trains
one with ``examples/trainer_methods.py reward``). Prompts: first human turns of HH-RLHF harmless-base dialogues the
reward model did not see (training rows 300+, held-out 2100+), as in the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))
sys.path.insert(0, str(REPO / "examples"))

import trainer_methods as example  # noqa: E402

RM_JOB = "ftjob-cmp-reward"
PIPELINE_PPO = example.PPO_STAGES[2]


def run_trainer(spec: dict[str, Any], root: Path) -> tuple[float, list[dict[str, Any]]]:
    path = root / f"{spec['job_id']}.spec.json"
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


def rl_hyperparameters(algorithm: str) -> dict[str, Any]:
    """The pipeline's PPO settings; GRPO and RLOO take the shared ones (sampling, KL coefficient, batch), not PPO's
    own fields, which the contract refuses for them."""
    from tuneforge.contracts.hyperparameters import PPO_DEFAULTS

    hp = dict(example.HYPERPARAMETERS["ppo"])
    return hp if algorithm == "ppo" else {k: v for k, v in hp.items() if k not in PPO_DEFAULTS}


def rl_spec(algorithm: str, ns: argparse.Namespace, store: Path, rows: int) -> dict[str, Any]:
    hp: dict[str, Any] = {**rl_hyperparameters(algorithm), "max_steps": ns.steps, "checkpoint_every_steps": 0}
    if algorithm == "ppo" and ns.kl_horizon:
        hp["kl_horizon"] = ns.kl_horizon
    if algorithm == "ppo" and ns.kl_coef is not None:
        hp["kl_coef"] = ns.kl_coef
    job_id = f"ftjob-cmp-{algorithm}"
    return {
        "job_id": job_id, "tenant_id": "bench",
        "method": {"type": "reinforcement", "algorithm": algorithm,
                   "grader": {"type": "reward_model", "model_prefix": f"jobs/{RM_JOB}/model"}},
        "base_model": ns.model,
        "training_file": {"file_id": "prompts", "key": "files/prompts", "format": "prompt_only", "rows": rows},
        "hyperparameters": hp, "storage_url": store.as_uri(), "output_prefix": f"jobs/{job_id}", "seed": 42,
    }  # fmt: skip


def summarise(events: list[dict[str, Any]], wall_s: float | None, ns: argparse.Namespace) -> dict[str, Any]:
    common = rl_hyperparameters("ppo")
    steps = [e["data"] for e in events if e["kind"] == "metrics" and "mean_reward" in e["data"]]
    (result,) = [e["data"] for e in events if e["kind"] == "result"]
    responses = common["batch_size"] * common["num_generations"]
    return {
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "train_runtime_s": result["train_runtime_s"],
        "steps": len(steps),
        "generated_tokens": round(sum(m.get("completions_mean_length", 0.0) * responses for m in steps)),
        "train_mean_reward_first4": sum(m["mean_reward"] for m in steps[:4]) / max(1, len(steps[:4])),
        "train_mean_reward_last4": sum(m["mean_reward"] for m in steps[-4:]) / max(1, len(steps[-4:])),
        "train_kl_last4": (sum(m["kl"] for m in steps[-4:]) / 4) if steps and "kl" in steps[-1] else None,
    }


def pipeline_ppo_matches(pipeline: Path, store: Path, ns: argparse.Namespace) -> bool:
    """Whether the pipeline's PPO job ran with this comparison's PPO settings (then it is adopted, not re-run)."""
    spec = json.loads((pipeline / f"{PIPELINE_PPO}.spec.json").read_text())
    mine = rl_spec("ppo", ns, store, 0)
    return bool(spec["hyperparameters"] == mine["hyperparameters"] and spec["base_model"] == ns.model)


def adopt_pipeline_ppo(pipeline: Path, store: Path) -> list[dict[str, Any]]:
    """The pipeline's PPO job as this comparison's PPO run (``pipeline_ppo_matches`` checked its settings)."""
    target = store / "jobs" / "ftjob-cmp-ppo"
    if not target.exists():
        shutil.copytree(pipeline / "store" / "jobs" / PIPELINE_PPO, target)
    return [json.loads(x) for x in (pipeline / f"{PIPELINE_PPO}.events.jsonl").read_text().splitlines() if x.strip()]


def evaluate(ns: argparse.Namespace, store: Path, adapters: dict[str, Path | None],
             prompts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:  # fmt: skip
    """Mean reward-model score, KL to the base and length of sampled responses, for each model."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    from tuneforge.contracts.graders import RewardModelGrader
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
    grader = RewardModelGrader(model=RM_JOB, model_prefix=f"jobs/{RM_JOB}/model")
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
    parser.add_argument("--pipeline", help="the --keep directory of `examples/trainer_methods.py ppo`: its SFT model "
                        "is the base, its reward model the grader, its PPO job the PPO run")  # fmt: skip
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="base model (without --pipeline)")
    parser.add_argument("--reward-store", help="a --keep directory of `examples/trainer_methods.py reward` "
                        "(without --pipeline; default: train one)")  # fmt: skip
    parser.add_argument("--algorithms", default="ppo,grpo,rloo")
    parser.add_argument("--rows", type=int, default=example.DEFAULT_ROWS["ppo"][0], help="training prompts")
    parser.add_argument("--valid-rows", type=int, default=example.DEFAULT_ROWS["ppo"][1], help="held-out prompts")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2, help="evaluation responses per held-out prompt")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--kl-horizon", type=int, help="PPO's adaptive-KL horizon in responses (default: the "
                        "contract's 10,000)")  # fmt: skip
    parser.add_argument("--kl-coef", type=float, help="PPO's initial beta (default: the shared KL coefficient, "
                        "0.05). With --pipeline, the pipeline's PPO job is adopted when it ran with exactly these "
                        "settings (e.g. `trainer_methods.py ppo --set kl_coef=0.2`), else PPO is trained here")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the jobs already in --store")
    parser.add_argument("--no-eval", action="store_true",
                        help="only train (to run the algorithms as parallel processes on one --store)")  # fmt: skip
    ns = parser.parse_args()
    sys.path[:0] = [p for p in PYTHONPATH.split(os.pathsep) if p not in sys.path]
    from tuneforge.contracts.hyperparameters import PPO_DEFAULTS
    root = Path(ns.store).resolve()
    store = root / "store"
    pipeline = Path(ns.pipeline).resolve() if ns.pipeline else None
    if pipeline is not None:
        ns.model = str(pipeline / "sft-model")
        reward_source = pipeline / "store" / "jobs" / example.PPO_STAGES[1]
    else:
        reward_root = Path(ns.reward_store or root / "reward").resolve()
        reward_source = reward_root / "store" / "jobs" / "ftjob-example-reward"
        if not (reward_source / "model" / "manifest.json").is_file():
            subprocess.run([sys.executable, str(REPO / "examples" / "trainer_methods.py"), "reward", "--model",
                            ns.model, "--keep", str(reward_root)], check=True,
                           env=dict(os.environ, PYTHONPATH=PYTHONPATH, HF_HUB_OFFLINE="1"))  # fmt: skip
    if not (store / "jobs" / RM_JOB).exists():
        shutil.copytree(reward_source, store / "jobs" / RM_JOB)
    common = rl_hyperparameters("ppo")
    ns.temperature, ns.length = common["temperature"], common["max_completion_length"]
    train = example.hh_first_turns(ns.rows, 300)
    valid = example.hh_first_turns(ns.valid_rows, 2100)
    (store / "files").mkdir(parents=True, exist_ok=True)
    (store / "files" / "prompts").write_text("".join(json.dumps(r) + "\n" for r in train))
    report: dict[str, Any] = {}
    report["settings"] = {
        "model": ns.model, "steps": ns.steps, "rows": ns.rows, "valid_rows": ns.valid_rows, "samples": ns.samples,
        "seed": ns.seed, "hyperparameters": common, "ppo_kl_horizon": ns.kl_horizon or PPO_DEFAULTS["kl_horizon"],
        "ppo_kl_coef": ns.kl_coef if ns.kl_coef is not None else common["kl_coef"],
    }  # fmt: skip
    algorithms = [a for a in ns.algorithms.split(",") if a]
    for algorithm in algorithms:
        if ns.eval_only:
            break
        if algorithm == "ppo" and pipeline is not None and pipeline_ppo_matches(pipeline, store, ns):
            print("adopting the pipeline's PPO job (same settings)", flush=True)
            summary = summarise(adopt_pipeline_ppo(pipeline, store), None, ns)
        else:
            print(f"training {algorithm}", flush=True)
            seconds, events = run_trainer(rl_spec(algorithm, ns, store, len(train)), root)
            summary = summarise(events, seconds, ns)
        (root / f"{algorithm}.summary.json").write_text(json.dumps(summary, indent=2))
    if ns.no_eval:
        return 0
    for algorithm in algorithms:
        report[algorithm] = json.loads((root / f"{algorithm}.summary.json").read_text())
    report_path = root / "report.json"
    adapters: dict[str, Path | None] = {"base": None}
    adapters.update({a: store / "jobs" / f"ftjob-cmp-{a}" / "model" for a in algorithms})
    report["eval"] = evaluate(ns, store, adapters, valid)
    report_path.write_text(json.dumps(report, indent=2))
    base = report["eval"]["base"]
    print(f"\nheld-out ({len(valid)} prompts x {ns.samples}), reward-model score and KL to the base per response:")
    print(f"{'':6}{'score':>9}{'vs base':>9}{'KL':>8}{'length':>8}{'train s':>9}{'gen tokens':>12}")
    for name, res in report["eval"].items():
        run = report.get(name, {})
        print(f"{name:6}{res['score']:>+9.3f}{res['score'] - base['score']:>+9.3f}{res['kl']:>8.2f}"
              f"{res['length']:>8.1f}{run.get('train_runtime_s', 0):>9.0f}{run.get('generated_tokens', 0):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
