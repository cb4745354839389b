"""Every GPU check in one call, each unit in its own process with its own time budget.

    bash bench/gpu/run.sh                       # on the GPU machine (installs the carried wheels first)
    .venv/bin/python bench/gpu/run.py --dry-run --out /tmp/gpu-dry   # the same on the CPU, tiny sizes

Checks, in this order (bench/gpu/plan.py has the sizes and budgets):

1. device: GPU, versions, a measured bf16 matmul rate;
2. models: the SmolLM2-135M configuration and a Llama-3.2-1B-shaped one, random weights;
3. SFT and 4. DPO: TRL's trainer at its plain defaults vs tuneforge's, 135M and 1B, LoRA and full:
   tokens/s, peak GPU memory, MFU;
5. serving: output tokens/s at 1/4/16 concurrent requests (transformers; tuneforge's engine when plugged in);
6. options: the trainer's GPU options one at a time (padding-free, gradient checkpointing, Liger, torch.compile).

Results land under ``--out`` as they are measured (``results/{check}/{name}.json``, ``results.jsonl``) with
``summary.md``/``summary.json`` rebuilt as they come; ``--publish DIR`` keeps a copy of those few files (and
this run's log) in DIR too: the GPU machine sends back at most 8 files, from ``$OUT``.
The run stops starting units when its total budget is spent; what a killed or crashed unit did not write is
recorded as ``timeout``/``crashed`` with the end of its log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu.plan import Plan, Unit, make_plan  # noqa: E402
from bench.gpu.results import OK, SKIPPED, read_results, summarize, write_result  # noqa: E402

STAGED = REPO / ".gpu-bench"
#: no unit is started when less than this is left of the run's budget
MIN_UNIT_S = 8.0
#: files kept current in --publish
PUBLISHED = ("results.jsonl", "summary.md", "summary.json", "run.log")


class Run:
    def __init__(self, out: Path, publish: Path | None, plan: Plan, meta: dict[str, Any]) -> None:
        self.out = out
        self.publish = publish
        self.plan = plan
        self.meta = meta
        self.started = time.monotonic()
        self._seen = 0

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        with open(self.out / "run.log", "a") as fh:
            fh.write(line + "\n")

    def refresh(self, force: bool = False) -> None:
        """Report new results, rebuild the summary and publish it, when results.jsonl has grown."""
        path = self.out / "results.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        if len(lines) == self._seen and not force:
            return
        for line in lines[self._seen:]:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            self.log(f"  result {r['check']}/{r['name']}: {describe(r)}")
        self._seen = len(lines)
        self.meta["elapsed_s"] = time.monotonic() - self.started
        summarize(self.out, self.plan, self.meta)
        self.copy_out()

    def copy_out(self) -> None:
        if self.publish is None:
            return
        self.publish.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            src = self.out / name
            if src.is_file():
                tmp = self.publish / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, self.publish / name)


def describe(r: dict[str, Any]) -> str:
    if r["status"] == SKIPPED:
        return f"skipped ({r.get('reason')})"
    if r["status"] != OK:
        return f"{r['status']}: {' '.join(str(r.get('error', '')).split())[:200]}"
    parts = []
    for key, fmt in (("tokens_per_second", "{:,.0f} tok/s"), ("output_tokens_per_second", "{:,.0f} output tok/s"),
                     ("peak_memory_bytes", "peak {:,.0f} B"), ("mfu", "MFU {:.1%}"), ("parameters", "{:,} params"),
                     ("device_name", "{}"), ("measured_matmul_flops", "matmul {:,.0f} FLOP/s")):
        value = r.get(key)
        if isinstance(value, int | float) or (key == "device_name" and value):
            parts.append(fmt.format(value))
    return ", ".join(parts) or "ok"


def worker_env(dry_run: bool) -> dict[str, str]:
    paths = [str(REPO), *(str(REPO / p) for p in ("service", "operator", "trainer_image"))]
    existing = os.environ.get("PYTHONPATH")
    # the dry run's models are tiny: one CPU thread each is as fast, and spares cores shared with other work
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if dry_run else {}
    return {
        **os.environ,
        **threads,
        "PYTHONPATH": os.pathsep.join(paths + ([existing] if existing else [])),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_unit(run: Run, unit: Unit, budget: float, args: argparse.Namespace) -> dict[str, Any]:
    log_path = args.out / "logs" / f"{unit.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu.worker", unit.name, "--out", str(args.out), "--data", str(args.data),
           "--tokenizer", str(args.tokenizer), "--work", str(args.work)]
    if args.dry_run:
        cmd.append("--dry-run")
    run.log(f"unit {unit.name}: starting, budget {budget:.0f} s ({len(unit.items)} results)")
    start = time.monotonic()
    cpu_before = _children_cpu()
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(args.dry_run), stdout=log_fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.append(proc)
        timed_out = False
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                run.refresh()
                if time.monotonic() - start > budget:
                    timed_out = True
                    _kill(proc)
                    break
    RUNNING.remove(proc)
    seconds = time.monotonic() - start
    written = {name for (check, name) in read_results(args.out) if check == unit.check}
    missing = [name for name in unit.items if name not in written]
    status = "timeout" if timed_out else "crashed" if proc.returncode not in (0, 1) else "error"
    for name in missing:
        reason = (f"the unit ran past its budget of {budget:g} s and was killed" if timed_out
                  else f"the unit's process exited with {proc.returncode} before writing this result")
        write_result(args.out, unit.check, name, {"unit": unit.name, "status": status,
                                                  "error": f"{reason}; end of its log:\n{log_tail(log_path)}"})
    run.refresh()
    cpu = _children_cpu() - cpu_before
    outcome = {"unit": unit.name, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1), "budget_s": round(budget, 1),
               "exit": proc.returncode, "timed_out": timed_out, "missing": missing}
    run.log(f"unit {unit.name}: {'TIMED OUT' if timed_out else f'exit {proc.returncode}'} after {seconds:.1f} s "
            f"({cpu:.1f} s CPU)" + (f"; not written: {', '.join(missing)}" if missing else ""))
    return outcome


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished worker so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: the worker running now (its own process group: a signal to the orchestrator does not reach it)
RUNNING: list[subprocess.Popen[bytes]] = []


def _stop_on_signal(signum: int, _frame: Any) -> None:
    for proc in list(RUNNING):
        _kill(proc)
    raise SystemExit(128 + signum)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The worker and anything it started (its own process group), SIGTERM then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def check_inputs(args: argparse.Namespace) -> list[str]:
    problems = []
    for rel in ("gsm8k/train.jsonl", "hh-rlhf/harmless-base-test.jsonl.gz"):
        if not (args.data / rel).is_file():
            problems.append(f"no {args.data / rel}")
    if not (args.tokenizer / "tokenizer.json").is_file() and not (args.tokenizer / "tokenizer_config.json").is_file():
        problems.append(f"no tokenizer files in {args.tokenizer}")
    return problems


def select(units: list[Unit], only: str | None) -> list[Unit]:
    if not only:
        return units
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    chosen = [u for u in units if u.name in wanted or u.check in wanted]
    # training and serving need the models
    if any(u.check in ("sft", "dpo", "options", "serving") for u in chosen):
        chosen = [u for u in units if u.name == "models" and u not in chosen] + chosen
    return [u for u in units if u in chosen]


def parse_budgets(values: list[str]) -> dict[str, float]:
    budgets = {}
    for value in values:
        name, _, seconds = value.partition("=")
        try:
            budget = float(seconds)
        except ValueError:
            budget = 0.0
        if not name.strip() or budget <= 0:
            raise ValueError(f"--unit-budget {value!r}: expected UNIT=SECONDS with SECONDS > 0")
        budgets[name.strip()] = budget
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuneforge-gpu-bench"),
                        help="results folder (its earlier results are removed)")
    parser.add_argument("--publish", type=Path, default=None,
                        help="also keep results.jsonl, summary.md/json and run.log current here (e.g. $OUT)")
    parser.add_argument("--data", type=Path, default=STAGED / "data",
                        help="a folder laid out like ../shared/data (gsm8k/, hh-rlhf/); bench/gpu/stage.py fills "
                             "the default")
    parser.add_argument("--tokenizer", type=Path, default=STAGED / "tokenizer",
                        help="tokenizer files (SmolLM2's, staged by bench/gpu/stage.py)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch space for the models and the runs (default: OUT/work; ~8 GB on the GPU plan)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models, a few steps: every check on the CPU")
    parser.add_argument("--only", default=None, help="comma-separated units or checks (e.g. sft,serving)")
    parser.add_argument("--total-budget", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--unit-budget", action="append", default=[], metavar="UNIT=SECONDS",
                        help="another budget for one unit (repeatable), e.g. --unit-budget sft-trl=120")
    args = parser.parse_args(argv)
    try:
        budgets = parse_budgets(args.unit_budget)
    except ValueError as exc:
        parser.error(str(exc))
    args.out = args.out.resolve()
    args.data, args.tokenizer = args.data.resolve(), args.tokenizer.resolve()
    args.work = (args.work or args.out / "work").resolve()

    problems = check_inputs(args)
    if problems:
        print("error: " + "; ".join(problems) + ". Stage the inputs first: "
              ".venv/bin/python bench/gpu/stage.py (see bench/README.md)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("results.jsonl", "summary.md", "summary.json", "run.log"):
        (args.out / name).unlink(missing_ok=True)
    for folder in ("results", "logs"):
        shutil.rmtree(args.out / folder, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    plan = make_plan(args.dry_run)
    total = args.total_budget or plan.total_budget_s
    meta: dict[str, Any] = {
        "dry_run": args.dry_run,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "total_budget_s": total,
        "units": [],
    }
    run = Run(args.out, args.publish, plan, meta)
    run.log(f"tuneforge GPU benchmarks ({'dry run' if args.dry_run else 'GPU plan'}), total budget {total:.0f} s, "
            f"results in {args.out}" + (f", published to {args.publish}" if args.publish else ""))
    deadline = time.monotonic() + total
    units = select(plan.units(), args.only)
    unknown = set(budgets) - {u.name for u in plan.units()}
    if unknown:
        parser.error(f"--unit-budget names no unit: {', '.join(sorted(unknown))}")
    for unit in units:
        left = deadline - time.monotonic()
        budget = min(budgets.get(unit.name, unit.budget_s), left)
        if left < MIN_UNIT_S:
            for name in unit.items:
                write_result(args.out, unit.check, name, {"unit": unit.name, "status": "not_run",
                                                          "error": "the run's total budget was spent"})
            meta["units"].append({"unit": unit.name, "seconds": 0, "budget_s": 0, "skipped": "no time left"})
            run.log(f"unit {unit.name}: not started, the run's budget is spent")
            continue
        meta["units"].append(run_unit(run, unit, budget, args))
    run.refresh(force=True)
    summary = json.loads((args.out / "summary.json").read_text())
    run.log(f"done in {time.monotonic() - run.started:.0f} s; {len(summary['problems'])} results not measured")
    print("\n" + (args.out / "summary.md").read_text())
    run.copy_out()
    failed = [p for p in summary["problems"] if p["status"] != SKIPPED]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
