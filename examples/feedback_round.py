"""One round of the human-feedback loop on SmolLM2-135M-Instruct with HH-RLHF prompts, through the REST API.

    PYTHONPATH=service:operator:trainer_image HF_HUB_OFFLINE=1 python examples/feedback_round.py \\
        --prompts 16 --ppo-steps 8 --tokens 48 --out /tmp/feedback_round.json

It starts ``tuneforge serve`` in a temporary home (the real executor, serving engine and safety report) and then,
as a team would with its own raters:

1. uploads HH-RLHF harmless-base prompts (each dialogue without its last assistant turn);
2. opens a pairwise campaign on the base model (two answers per prompt) and assigns two rater keys;
3. the raters label through the rater API, following the data set's human choices: each prefers the answer that
   is closer (rapidfuzz's ratio) to the dialogue's *chosen* last turn than to its *rejected* one, i.e. the answer
   most like what HH-RLHF's annotators picked; the second rater is careless on a quarter of its items (a seeded
   coin), so the agreement figures have something to show;
4. ``POST /v1/feedback_campaigns/{id}/rounds``: the export of the agreed labels trains a reward model (its accuracy
   on held-out HH-RLHF pairs is in its metrics), PPO tunes the base model against it, an eval compares base and
   tuned on held-out prompts (similarity to the chosen answer), and the next campaign opens on the tuned model;
5. a blind A/B campaign (base vs tuned, held-out prompts), labelled by the careful rater: the win rate;
6. the PPO job's safety report: refusal rate on red-team prompts and leaked personal data, base -> tuned.

Figures go to stdout and, with ``--out``, to a JSON file; docs/feedback.md records a run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rapidfuzz import fuzz

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
BASE = "SmolLM2-135M-Instruct"


def hh_dialogues(count: int, offset: int) -> list[dict[str, Any]]:
    """HH-RLHF pairs as {prompt: messages, chosen: text, rejected: text}, short ones (a 135M model, 2 CPU cores)."""
    sys.path.insert(0, str(REPO / "trainer_image"))
    from tuneforge.contracts.datasets import InvalidLine, hh_rlhf_to_preference

    with gzip.open(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    out = []
    for row in rows[offset:]:
        try:
            pair = hh_rlhf_to_preference(row["chosen"], row["rejected"])
        except InvalidLine:
            continue
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        if sum(len(m["content"]) for m in pair["prompt"]) > 400 or chosen == rejected:
            continue
        out.append({"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, "raw": row})
        if len(out) == count:
            break
    return out


class Service:
    """``tuneforge serve`` on a free loopback port in its own home."""

    def __init__(self, home: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.home, self.url = home, f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        env.update({"TUNEFORGE_HOME": str(home), "TUNEFORGE_PORT": str(self.port), "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))})
        home.mkdir(parents=True, exist_ok=True)
        self.log = open(home / "serve.log", "ab")  # noqa: SIM115 - open for the process's life
        self.proc = subprocess.Popen([sys.executable, "-m", "tuneforge.service.cli.main", "serve", "--port",
                                      str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuneforge serve exited; see {home / 'serve.log'}")
            time.sleep(0.5)
        self.key = (home / "api_key").read_text().strip()

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=600)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def ok(resp: httpx.Response) -> Any:
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}")
    return resp.json()


def wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline, started = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        found = check()
        if found:
            print(f"  {what}: {time.monotonic() - started:.0f} s", flush=True)
            return found
        time.sleep(2)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def upload(client: httpx.Client, rows: list[dict[str, Any]], name: str) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return str(ok(client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"}))["id"])


def campaign_ready(client: httpx.Client, campaign_id: str) -> Callable[[], Any]:
    def check() -> Any:
        body = ok(client.get(f"/v1/feedback_campaigns/{campaign_id}"))
        if body["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"campaign {campaign_id}: {body['error']}")
        return body if body["status"] in ("collecting", "completed") else None
    return check


def job_done(client: httpx.Client, job_id: str) -> Callable[[], Any]:
    def check() -> Any:
        job = ok(client.get(f"/v1/fine_tuning/jobs/{job_id}"))
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        return job if job["status"] == "succeeded" else None
    return check


def closer_to_chosen(pairs: dict[str, dict[str, Any]]) -> Callable[[dict[str, Any]], int]:
    """The simulated annotator: the answer most like HH-RLHF's chosen reply and least like its rejected one."""
    def choose(item: dict[str, Any]) -> int:
        pair = pairs[json.dumps(item["prompt"], sort_keys=True)]

        def leaning(text: str) -> float:
            return fuzz.ratio(text, pair["chosen"]) - fuzz.ratio(text, pair["rejected"])
        return max(range(len(item["answers"])), key=lambda j: (leaning(item["answers"][j]["text"]), -j))
    return choose


def rate_all(service: Service, key: str, campaign_id: str, label: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    sent = 0
    with service.client(key) as rater:
        while (item := ok(rater.get(f"/v1/feedback_campaigns/{campaign_id}/next_item"))["item"]) is not None:
            ok(rater.post(f"/v1/feedback_campaigns/{campaign_id}/items/{item['id']}/labels", json=label(item)))
            sent += 1
    return sent


def metric(client: httpx.Client, job_id: str, name: str) -> list[tuple[int, float]]:
    events = ok(client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"order": "asc", "limit": 1000}))
    return [(e["data"]["step"], e["data"][name]) for e in events["data"]
            if e["type"] == "metrics" and name in (e.get("data") or {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="campaign prompts (and as many held out)")
    parser.add_argument("--valid-pairs", type=int, default=32, help="held-out HH-RLHF pairs for the reward model")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per sampled answer")
    parser.add_argument("--ppo-steps", type=int, default=8)
    parser.add_argument("--careless", type=float, default=0.25, help="share of the second rater's random labels")
    parser.add_argument("--home", type=Path, help="the service's home (default: a temporary directory)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # a stopped example stops its service (and the service its engines and trainers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    train = hh_dialogues(args.prompts, offset=0)
    held_out = hh_dialogues(args.prompts, offset=400)
    valid_pairs = [d["raw"] for d in hh_dialogues(args.valid_pairs, offset=800)]
    pairs = {json.dumps(d["prompt"], sort_keys=True): d for d in train + held_out}
    sampling = {"temperature": 1.0, "max_tokens": args.tokens, "seed": 7}
    started = time.monotonic()
    figures: dict[str, Any] = {"prompts": args.prompts, "tokens": args.tokens, "ppo_steps": args.ppo_steps}
    with tempfile.TemporaryDirectory(prefix="tuneforge-round-") as tmp:
        service = Service(args.home or Path(tmp) / "home")
        try:
            client = service.client()
            keys = [ok(client.post("/v1/organization/api_keys", json={"name": n, "role": "rater"}))
                    for n in ("careful", "careless")]
            prompts = upload(client, [{"messages": d["prompt"]} for d in train], "hh-prompts.jsonl")
            print("1. campaign: the base model answers each prompt twice", flush=True)
            campaign = ok(client.post("/v1/feedback_campaigns", json={
                "name": "hh round 1", "file_id": prompts, "models": [BASE], "kind": "pairwise",
                "samples_per_prompt": 2, "sampling": sampling, "raters_per_item": 2}))
            wait("sampling", campaign_ready(client, campaign["id"]), timeout=3600)
            ok(client.post(f"/v1/feedback_campaigns/{campaign['id']}/raters",
                           json={"key_ids": [k["id"] for k in keys]}))

            print("2. two raters label through the rater API", flush=True)
            choose, coin = closer_to_chosen(pairs), random.Random(11)
            rate_all(service, keys[0]["value"], campaign["id"], lambda item: {"preferred": choose(item)})
            rate_all(service, keys[1]["value"], campaign["id"], lambda item: {
                "preferred": coin.randrange(2) if coin.random() < args.careless else choose(item)})
            report = ok(client.get(f"/v1/feedback_campaigns/{campaign['id']}/report"))
            figures["agreement"] = {"krippendorff_alpha": report["krippendorff_alpha"]["value"],
                                    "raters": [{"agreement_with_majority": r["agreement_with_majority"]}
                                               for r in report["raters"]]}

            print("3. one round: export -> reward model -> PPO -> eval -> next campaign", flush=True)
            valid_file = upload(client, valid_pairs, "hh-valid-pairs.jsonl")
            eval_id = ok(client.post("/v1/evals", json={
                "name": "close to the HH-RLHF chosen answer", "data_source_config": {"type": "custom", "item_schema": {
                    "type": "object", "properties": {"messages": {"type": "array"}, "chosen": {"type": "string"}},
                    "required": ["messages", "chosen"]}},
                "testing_criteria": [{"type": "text_similarity", "name": "like_chosen",
                                      "input": "{{sample.output_text}}", "reference": "{{item.chosen}}",
                                      "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5}]}))["id"]
            rl_hp = {"max_steps": args.ppo_steps, "batch_size": 4, "num_generations": 2,
                     "max_completion_length": args.tokens, "learning_rate": 5e-5, "num_mini_batches": 2,
                     "ppo_epochs": 1, "checkpoint_every_steps": args.ppo_steps}
            made = ok(client.post(f"/v1/feedback_campaigns/{campaign['id']}/rounds", json={
                "export": {"min_agreement": 1.0},
                "reward_model": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}, "validation_file": valid_file},
                "reinforcement": {"algorithm": "ppo", "hyperparameters": rl_hp},
                "evals": [{"eval_id": eval_id, "data_source": {
                    "source": {"type": "file_content", "content": [
                        {"item": {"messages": d["prompt"], "chosen": d["chosen"]}} for d in held_out]},
                    "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                    "sampling_params": {"temperature": 0, "max_completion_tokens": args.tokens}}}],
                "next_campaign": {"name": "hh round 2"}}))
            export = ok(client.get(f"/v1/files/{made['export_file_id']}"))
            figures["export_pairs"] = export["rows"]
            rm = wait("reward model", job_done(client, made["reward_model_job_id"]), timeout=7200)
            figures["reward_model_accuracy"] = metric(client, rm["id"], "valid_preference_accuracy")
            path = f"/v1/feedback_campaigns/{campaign['id']}/rounds/{made['id']}"
            done = wait("the round", lambda: (lambda r: r if r["status"] != "running" else None)(ok(client.get(path))),
                        timeout=14400)
            if done["status"] != "succeeded":
                raise RuntimeError(f"round {done['status']}: {done['error']}")
            rl = ok(client.get(f"/v1/fine_tuning/jobs/{done['reinforcement_job_id']}"))
            figures["ppo_valid_mean_reward"] = metric(client, rl["id"], "valid_mean_reward")
            compared = ok(client.get(done["eval_report"]))["evals"][0]["comparison"]
            figures["eval_like_chosen"] = compared["per_testing_criteria"][0]

            print("4. blind A/B: base vs tuned on held-out prompts", flush=True)
            ab_prompts = upload(client, [{"messages": d["prompt"]} for d in held_out], "hh-held-out.jsonl")
            ab = ok(client.post("/v1/feedback_campaigns", json={
                "name": "base vs tuned", "file_id": ab_prompts, "models": [BASE, rl["fine_tuned_model"]],
                "kind": "ab", "samples_per_prompt": 1, "sampling": {**sampling, "temperature": 0},
                "raters_per_item": 1}))
            wait("A/B sampling", campaign_ready(client, ab["id"]), timeout=3600)
            ok(client.post(f"/v1/feedback_campaigns/{ab['id']}/raters", json={"key_ids": [keys[0]["id"]]}))

            def ab_label(item: dict[str, Any]) -> dict[str, str]:
                best = choose(item)
                return {"choice": "a" if best == 0 else "b"}
            rate_all(service, keys[0]["value"], ab["id"], ab_label)
            figures["ab"] = ok(client.get(f"/v1/feedback_campaigns/{ab['id']}/report")).get("ab")

            print("5. the PPO job's safety report", flush=True)
            figures["safety"] = wait("safety report", lambda: next(iter(
                e["data"] for e in ok(client.get(f"/v1/fine_tuning/jobs/{rl['id']}/events",
                                                 params={"limit": 100}))["data"]
                if (e.get("data") or {}).get("safety_report")), None), timeout=3600)
            figures["next_campaign"] = done["next_campaign_id"]
            figures["minutes"] = round((time.monotonic() - started) / 60, 1)
        finally:
            service.stop()
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
