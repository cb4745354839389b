"""One unit of the GPU run, in its own process: ``python -m bench.gpu.worker UNIT --out DIR ...``.

The orchestrator (bench/gpu/run.py) starts one worker per unit and kills it at the unit's budget. A worker
writes each of its results the moment it is measured; a result that raises is written as an error (with the
traceback's end) and the unit goes on with its next item.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gpu.plan import Plan, Unit, make_plan
from bench.gpu.results import SKIPPED, write_result

#: packages whose versions every run records (and bench/gpu/envcheck.py checks)
VERSIONED = ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel",
             "pydantic", "pyarrow", "tokenizers", "huggingface-hub", "safetensors")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_unit(emit: Callable[..., None]) -> None:
    def probe() -> dict[str, Any]:
        import os

        import torch
        from bench.gpu.training import peak_flops

        peak, source = peak_flops()
        info: dict[str, Any] = {"versions": versions(), "peak_flops": peak, "peak_flops_source": source,
                                "cpu_count": os.cpu_count()}
        if not torch.cuda.is_available():
            return {**info, "device_name": "cpu", "measured_matmul_flops": None,
                    "note": "no CUDA device: a dry run (MFU and GPU memory are not measured)"}
        props = torch.cuda.get_device_properties(0)
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 10
        return {**info, "device_name": torch.cuda.get_device_name(0), "memory_bytes": props.total_memory,
                "multiprocessors": props.multi_processor_count, "capability": list(torch.cuda.get_device_capability(0)),
                "cuda": torch.version.cuda, "measured_matmul_flops": 2 * n**3 / seconds,
                "measured_matmul": f"{n}x{n}x{n} bf16, mean of 10 after 3 warm-ups"}

    emit("device", probe)


def models_unit(plan: Plan, emit: Callable[..., None], tokenizer_dir: Path, work: Path) -> None:
    from bench.gpu.models import build_model

    for name, shape in plan.models.items():
        emit(name, lambda s=shape: build_model(s, tokenizer_dir, work))


def run_unit(unit: Unit, plan: Plan, out: Path, data_dir: Path, tokenizer_dir: Path, work: Path) -> int:
    written: set[str] = set()

    def emit(name: str, measure: Callable[[], dict[str, Any]]) -> None:
        start = time.perf_counter()
        try:
            payload = measure()
        except Exception as exc:
            payload = {"status": "error", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"}
        payload.setdefault("unit_seconds", round(time.perf_counter() - start, 2))
        write_result(out, unit.check, name, {"unit": unit.name, "dry_run": plan.dry_run, **payload})
        written.add(name)
        print(f"[{unit.name}] {name}: {payload.get('status', 'ok')} in {payload['unit_seconds']} s", flush=True)
        gc.collect()

    def skip(name: str, reason: str, **extra: Any) -> None:
        write_result(out, unit.check, name, {"unit": unit.name, "status": SKIPPED, "reason": reason, **extra})
        written.add(name)
        print(f"[{unit.name}] {name}: skipped: {reason}", flush=True)

    paths = {"data_dir": data_dir, "tokenizer_dir": tokenizer_dir, "work": work}
    try:
        if unit.name == "device":
            device_unit(emit)
        elif unit.name == "models":
            models_unit(plan, emit, tokenizer_dir, work)
        elif unit.check in ("sft", "dpo"):
            from bench.gpu.training import run_training_unit

            run_training_unit(unit.args, plan, emit, **paths)
        elif unit.check == "options":
            from bench.gpu.training import run_options_unit

            run_options_unit(unit.args, plan, emit, skip, **paths)
        elif unit.check == "serving":
            from bench.gpu.serving import run_serving_unit

            run_serving_unit(unit.args, plan, emit, skip, **paths)
        else:
            raise ValueError(f"unknown unit {unit.name}")
    except Exception as exc:  # the unit itself broke (an import, say): its unwritten items say so
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}"
        for name in unit.items:
            if name not in written:
                write_result(out, unit.check, name, {"unit": unit.name, "status": "error", "error": error})
        print(error, flush=True)
        return 1
    return 0


def exit_with_parent() -> None:
    """End this worker when the orchestrator is gone (killed outright, it cannot kill its workers itself)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    exit_with_parent()
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.worker")
    parser.add_argument("unit")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    plan = make_plan(args.dry_run)
    (unit,) = [u for u in plan.units() if u.name == args.unit]
    return run_unit(unit, plan, args.out, args.data, args.tokenizer, args.work)


if __name__ == "__main__":
    raise SystemExit(main())
