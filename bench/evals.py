"""Eval runs: items/s of an eval run against the same completions sent straight to the serving API, and GSM8K.

``throughput``: N items (one short chat prompt each, ``max_completion_tokens`` tokens generated with
``ignore_eos`` so every item costs the same, graded by a string_check and a rouge_l criterion) as one eval run,
at each eval concurrency (``TUNEFORGE_EVAL_CONCURRENCY``: one service per level, its engine started before the
clock runs). The named baseline, in the same service right before: the same N chat requests sent by a client
to ``/v1/chat/completions`` with the same concurrency. Printed: items/s of both and the ratio eval / baseline
(what the run's bookkeeping and grading cost on top of generation).

``compare``: base vs tuned the way a user gets it: an SFT job (``--train-rows`` rows, ``--epochs``) that names an
eval at creation; when it succeeds the service runs the eval on the base and the tuned model and
``GET /v1/fine_tuning/jobs/{id}/eval_report`` compares them (pass rates, mean scores, paired bootstrap intervals).
``--task gsm8k``: GSM8K train rows, the test split's first ``--items`` graded as in ``gsm8k``; ``--task chat``: the
demo's chat data, the last ``--items`` rows as the job's validation file and its eval built from it
(``evals: ["validation_file"]``: ROUGE-L of the answers against the rows' own).

``gsm8k``: the first ``--items`` rows of GSM8K's test split on a base model, greedy, with a numeric
``string_check`` (the last number of the answer against the reference after ``####``) and a format ``regex``
(the answer ends with ``#### <number>``).

    PYTHONPATH=service:operator:trainer_image:. HF_HUB_OFFLINE=1 .venv/bin/python bench/evals.py throughput \\
        [--model tiny|SmolLM2-135M-Instruct] [--items 48] [--concurrency 1,4,8] [--tokens 32]
    PYTHONPATH=service:operator:trainer_image:. HF_HUB_OFFLINE=1 .venv/bin/python bench/evals.py gsm8k \\
        [--model SmolLM2-135M-Instruct] [--items 50] [--tokens 256]
    PYTHONPATH=service:operator:trainer_image:. HF_HUB_OFFLINE=1 .venv/bin/python bench/evals.py compare \\
        --task gsm8k|chat [--train-rows 200] [--epochs 2] [--items 40] [--tokens 256|64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for part in ("service", "operator", "trainer_image", "."):
    if str(REPO / part) not in sys.path:
        sys.path.insert(0, str(REPO / part))

import httpx  # noqa: E402
from tests.support.engine_models import make_peaked_model  # noqa: E402
from tests.support.live_server import ThreadServer  # noqa: E402
from tests.support.models import register_model  # noqa: E402
from tests.support.waiting import free_port  # noqa: E402

from tuneforge.contracts.settings import explicit  # noqa: E402
from tuneforge.service.core.config import ServiceSettings  # noqa: E402

#: the shared data sets sit next to the clone (a worktree under wt/ looks one level further up)
GSM8K = next((p for p in (REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl",
                          REPO.parent.parent / "shared" / "data" / "gsm8k" / "test.jsonl") if p.is_file()),
             REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
QUESTIONS = ["Explain how rainbows form.", "Why is the sky blue?", "Describe the water cycle.",
             "How do airplanes fly?", "What is photosynthesis?", "Name three fruits."]


def _server(home: Path, concurrency: int) -> ThreadServer:
    settings = explicit(ServiceSettings, home=home, server={"host": "127.0.0.1", "port": free_port()},
                        executor={"trainer_python": sys.executable}, serving={"eval_concurrency": concurrency,
                                                                              "idle_seconds": 0})
    return ThreadServer(settings, start_executor=False).start()


def _model(server: ThreadServer, name: str, work: Path) -> str:
    if name != "tiny":
        return name
    return register_model(server, make_peaked_model(work), "tiny-peaked")


def _finish(client: httpx.Client, eval_id: str, run_id: str) -> dict[str, Any]:
    while True:
        run: dict[str, Any] = client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.05)


async def _baseline(url: str, key: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=3600) as client:
        async def one(body: dict[str, Any]) -> None:
            async with limit:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    items = [{"item": {"question": QUESTIONS[i % len(QUESTIONS)], "answer": "x"}} for i in range(args.items)]
    sampling = {"temperature": 0, "max_completion_tokens": args.tokens, "ignore_eos": True}
    results = []
    for level in [int(c) for c in args.concurrency.split(",")]:
        server = _server(Path(tempfile.mkdtemp(prefix="bench-evals-")) / "home", level)
        try:
            model = _model(server, args.model, work)
            bodies = [{"model": model, "messages": [{"role": "user", "content": r["item"]["question"]}],
                       "temperature": 0, "max_tokens": args.tokens, "ignore_eos": True} for r in items]
            with server.client() as client:
                client.post("/v1/chat/completions", json=bodies[0], timeout=900).raise_for_status()  # engine up
                raw = asyncio.run(_baseline(server.url, server.api_key, bodies, level))
                created = client.post("/v1/evals", json={
                    "name": "bench", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
                    "testing_criteria": [
                        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                         "reference": "{{item.answer}}", "operation": "eq"},
                        {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}",
                         "reference": "{{item.question}}", "evaluation_metric": "rouge_l", "pass_threshold": 0.5}],
                }).json()
                started = time.perf_counter()
                run = client.post(f"/v1/evals/{created['id']}/runs", json={"data_source": {
                    "type": "completions", "model": model, "sampling_params": sampling,
                    "input_messages": {"type": "template", "template": [
                        {"role": "user", "content": "{{item.question}}"}]},
                    "source": {"type": "file_content", "content": items}}}).json()
                done = _finish(client, created["id"], run["id"])
                seconds = time.perf_counter() - started
            assert done["status"] == "completed", done
            row = {"concurrency": level, "items": args.items, "baseline_items_per_s": args.items / raw,
                   "eval_items_per_s": args.items / seconds}
            row["ratio"] = row["eval_items_per_s"] / row["baseline_items_per_s"]
            results.append(row)
            print(f"concurrency {level:>3}: baseline (chat completions) {row['baseline_items_per_s']:.2f} items/s, "
                  f"eval run {row['eval_items_per_s']:.2f} items/s, ratio {row['ratio']:.2f}", flush=True)
        finally:
            server.stop()
    return {"mode": "throughput", "model": args.model, "tokens": args.tokens, "results": results}


def gsm8k(args: argparse.Namespace) -> dict[str, Any]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[: args.items]]
    server = _server(Path(tempfile.mkdtemp(prefix="bench-gsm8k-")) / "home", args.concurrency_one)
    try:
        model = _model(server, args.model, Path(args.work))
        with server.client() as client:
            created = client.post("/v1/evals", json={
                "name": "gsm8k", "data_source_config": {"type": "custom", "item_schema": {
                    "type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                    "required": ["question", "answer"]}},
                "testing_criteria": [
                    {"type": "string_check", "name": "correct", "input": "{{sample.output_text}}",
                     "pattern": r"####\s*(-?[\d,]*\.?\d+)", "reference": "{{item.answer}}",
                     "reference_pattern": r"####\s*(.+)", "operation": "eq"},
                    {"type": "regex", "name": "format", "pattern": r"####\s*-?[\d,]*\.?\d+\s*$", "reference": None}],
            }).json()
            assert "id" in created, created
            started = time.perf_counter()
            run = client.post(f"/v1/evals/{created['id']}/runs", json={"data_source": {
                "type": "completions", "model": model,
                "sampling_params": {"temperature": 0, "max_completion_tokens": args.tokens},
                "input_messages": {"type": "template", "template": [
                    {"role": "system", "content": "Solve the problem step by step. End with a line '#### <number>'."},
                    {"role": "user", "content": "{{item.question}}"}]},
                "source": {"type": "file_content", "content": [{"item": r} for r in rows]}}}).json()
            assert "id" in run, run
            done = _finish(client, created["id"], run["id"])
            seconds = time.perf_counter() - started
    finally:
        server.stop()
    per = {c["testing_criteria"]: c["passed"] / max(1, c["passed"] + c["failed"])
           for c in done["per_testing_criteria_results"]}
    result = {"mode": "gsm8k", "model": args.model, "items": args.items, "tokens": args.tokens,
              "status": done["status"], "pass_rates": per, "result_counts": done["result_counts"],
              "seconds": seconds, "items_per_s": args.items / seconds}
    print(json.dumps(result, indent=1), flush=True)
    return result


#: the instruction both models get for a GSM8K problem (the tuned model was trained on answers in this format)
GSM8K_SYSTEM = "Solve the problem step by step. End with a line '#### <number>'."
#: "correct" compares the number on the answer's '#### N' line (a bare number pattern takes the first number of the
#: text, usually one restated from the question); "format" checks that line ends the answer
GSM8K_CRITERIA = [
    {"type": "string_check", "name": "correct", "input": "{{sample.output_text}}",
     "pattern": r"####\s*(-?[\d,]*\.?\d+)", "reference": "{{item.answer}}", "reference_pattern": r"####\s*(.+)",
     "operation": "eq"},
    {"type": "regex", "name": "format", "pattern": r"####\s*-?[\d,]*\.?\d+\s*$", "reference": None}]
CHAT_DATA = REPO / "examples" / "data" / "forge_chat.jsonl"


def _compare_task(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(training chats, eval items, the eval's create body) of ``--task``: the training rows and the eval items
    never overlap."""
    if args.task == "gsm8k":
        train_rows = [json.loads(x) for x in GSM8K.with_name("train.jsonl").read_text().splitlines()[: args.train_rows]]
        chats = [{"messages": [{"role": "system", "content": GSM8K_SYSTEM},
                               {"role": "user", "content": r["question"]},
                               {"role": "assistant", "content": r["answer"]}]} for r in train_rows]
        items = [{"item": {"system": GSM8K_SYSTEM, "question": r["question"], "answer": r["answer"]}}
                 for r in map(json.loads, GSM8K.read_text().splitlines()[: args.items])]
        criteria = GSM8K_CRITERIA
    else:  # the demo's chat data: train on the first rows, evaluate ROUGE-L against the last rows' answers
        rows = [json.loads(x) for x in CHAT_DATA.read_text().splitlines() if x.strip()]
        held_out = rows[-args.items:]
        chats = rows[: min(args.train_rows, len(rows) - args.items)]
        items = [{"item": {"system": r["messages"][0]["content"], "question": r["messages"][1]["content"],
                           "answer": r["messages"][2]["content"]}} for r in held_out]
        criteria = [{"type": "text_similarity", "name": "rouge_l", "input": "{{sample.output_text}}",
                     "reference": "{{item.answer}}", "evaluation_metric": "rouge_l", "pass_threshold": 0.5}]
    schema = {"type": "object", "properties": {k: {"type": "string"} for k in ("system", "question", "answer")},
              "required": ["system", "question", "answer"]}
    body = {"name": f"{args.task} base vs tuned", "testing_criteria": criteria,
            "data_source_config": {"type": "custom", "item_schema": schema}}
    return chats, items, body


def compare_tuned(args: argparse.Namespace) -> dict[str, Any]:
    """The product's own base-vs-tuned path: an SFT job that names the eval at creation; when it succeeds the
    service runs the eval on the base and on the tuned model and ``/eval_report`` compares them."""
    chats, items, eval_body = _compare_task(args)
    home = Path(tempfile.mkdtemp(prefix=f"bench-compare-{args.task}-")) / "home"
    settings = explicit(ServiceSettings, home=home, server={"host": "127.0.0.1", "port": free_port()},
                        executor={"trainer_python": sys.executable},
                        serving={"eval_concurrency": args.concurrency_one, "idle_seconds": 0})
    server = ThreadServer(settings).start()
    try:
        model = _model(server, args.model, Path(args.work))
        with server.client() as client:
            client.timeout = httpx.Timeout(600)
            data = "".join(json.dumps(c) + "\n" for c in chats).encode()
            file = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": (f"{args.task}-train.jsonl", data)}).json()
            assert "id" in file, file
            extra: dict[str, Any] = {}
            if args.task == "chat":  # the held-out rows as the job's validation file, and the eval built from it
                held_out = "".join(json.dumps({"messages": [
                    {"role": "system", "content": i["item"]["system"]},
                    {"role": "user", "content": i["item"]["question"]},
                    {"role": "assistant", "content": i["item"]["answer"]}]}) + "\n" for i in items).encode()
                valid = client.post("/v1/files", data={"purpose": "fine-tune"},
                                    files={"file": ("chat-valid.jsonl", held_out)}).json()
                extra["validation_file"] = valid["id"]
                evals: list[Any] = [{"type": "validation_file", "max_items": len(items),
                                     "sampling_params": {"temperature": 0, "max_completion_tokens": args.tokens}}]
            else:
                created = client.post("/v1/evals", json=eval_body).json()
                assert "id" in created, created
                evals = [{"eval_id": created["id"], "data_source": {
                    "source": {"type": "file_content", "content": items},
                    "sampling_params": {"temperature": 0, "max_completion_tokens": args.tokens},
                    "input_messages": {"type": "template", "template": [
                        {"role": "system", "content": "{{item.system}}"},
                        {"role": "user", "content": "{{item.question}}"}]}}}]
            hyperparameters = {"n_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate_multiplier": 5}
            started = time.perf_counter()
            job = client.post("/v1/fine_tuning/jobs", json={
                "model": model, "training_file": file["id"], "suffix": f"bench-{args.task}", **extra,
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
                "evals": evals}).json()
            assert "id" in job, job
            while (job := client.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] not in (
                    "succeeded", "failed", "cancelled"):
                time.sleep(2)
            trained = time.perf_counter() - started
            assert job["status"] == "succeeded", job
            print(f"job {job['id']} succeeded after {trained:.0f} s: {job['fine_tuned_model']}", flush=True)
            while True:
                report = client.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report").json()
                entry = report["evals"][0]
                runs = [entry.get("base_run"), entry.get("tuned_run")]
                if entry.get("comparison") or entry.get("error") or any(
                        r and r["status"] in ("failed", "canceled") for r in runs):
                    break
                time.sleep(2)
            seconds = time.perf_counter() - started
    finally:
        server.stop()
    comparison = entry.get("comparison") or {}
    result = {"mode": "compare", "task": args.task, "model": args.model, "train_rows": len(chats),
              "epochs": args.epochs, "batch_size": args.batch_size, "items": len(items), "tokens": args.tokens,
              "job_seconds": trained,
              "total_seconds": seconds, "trained_tokens": job.get("trained_tokens"),
              "runs": runs, "error": entry.get("error"),
              "pass_rate": comparison.get("pass_rate"),
              "per_testing_criteria": comparison.get("per_testing_criteria"),
              "most_different_items": (comparison.get("most_different_items") or [])[:3]}
    print(json.dumps({k: v for k, v in result.items() if k != "most_different_items"}, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "gsm8k", "compare"])
    parser.add_argument("--task", choices=["gsm8k", "chat"], default="gsm8k",
                        help="compare: GSM8K (numeric string_check + format regex) or the demo's chat data "
                        "(ROUGE-L against held-out answers)")
    parser.add_argument("--train-rows", type=int, default=200, help="compare: SFT training rows")
    parser.add_argument("--epochs", type=int, default=2, help="compare: SFT epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="compare: SFT batch size (GSM8K-length rows at 8 "
                        "grew past 15 GB on the CPU: docs/evals.md)")
    parser.add_argument("--model", default=None, help="tiny (a random tiny Llama) or a registered base model")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--concurrency", default="1,4,8", help="throughput: eval concurrency levels")
    parser.add_argument("--concurrency-one", type=int, default=8, help="gsm8k: eval concurrency")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench-evals-models"))
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    if args.mode == "throughput":
        args.model, args.items, args.tokens = args.model or "tiny", args.items or 48, args.tokens or 32
        result = throughput(args)
    elif args.mode == "compare":
        args.model, args.items = args.model or "SmolLM2-135M-Instruct", args.items or 40
        args.tokens = args.tokens or (256 if args.task == "gsm8k" else 64)
        result = compare_tuned(args)
    else:
        args.model, args.items = args.model or "SmolLM2-135M-Instruct", args.items or 50
        args.tokens = args.tokens or 256
        result = gsm8k(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
