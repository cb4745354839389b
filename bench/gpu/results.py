"""Results as they are measured: one JSON file each, one line each in ``results.jsonl``, and a summary.

Every result is written the moment it exists (a later failure or timeout loses nothing): ``{out}/results/
{check}/{name}.json`` and a line appended (and fsynced) to ``{out}/results.jsonl``. The summary
(``summary.json``, ``summary.md``) is rebuilt from ``results.jsonl`` whenever it grows, so it is always current.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

#: results with this status count as measured; "skipped" carries a reason; others are failures
OK = "ok"
SKIPPED = "skipped"


def write_result(out: Path, check: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    record = {**payload, "check": check, "name": name, "status": payload.get("status", OK), "written_at": time.time()}
    folder = out / "results" / check
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, folder / f"{name}.json")
    line = (json.dumps(record, default=str) + "\n").encode()
    with open(out / "results.jsonl", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":  # a line cut off by a killed writer: do not glue this record to it
                line = b"\n" + line
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return record


def read_results(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest record per (check, name)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    path = out / "results.jsonl"
    if not path.is_file():
        return latest
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut off by a kill
        latest[(record["check"], record["name"])] = record
    return latest


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def _mib(n: Any) -> str:
    return f"{n / 2**20:,.0f}" if isinstance(n, int | float) and n else "-"


def _num(x: Any, fmt: str = ",.0f") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "-"


def _x(ratio: Any) -> str:
    return f"{ratio:.2f}x" if isinstance(ratio, int | float) else "-"


def summarize(out: Path, plan: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Build ``summary.json`` and ``summary.md`` from what is measured so far; returns the summary."""
    results = read_results(out)
    summary: dict[str, Any] = {"meta": meta, "device": None, "models": {}, "train": [], "options": [],
                               "serving": [], "problems": [], "skipped": []}
    for (check, name), r in sorted(results.items()):
        if r["status"] == SKIPPED:
            summary["skipped"].append({"check": check, "name": name, "reason": r.get("reason")})
        elif r["status"] != OK:
            summary["problems"].append({"check": check, "name": name, "status": r["status"],
                                        "error": r.get("error", "")[-600:]})
    device = results.get(("device", "device"))
    if device and device["status"] == OK:
        summary["device"] = {k: device.get(k) for k in ("device_name", "peak_flops", "peak_flops_source",
                                                         "measured_matmul_flops", "versions")}
    for model in plan.models:
        r = results.get(("models", model))
        if r and r["status"] == OK:
            summary["models"][model] = {k: r.get(k) for k in ("label", "parameters", "matmul_parameters")}

    for method, configs in plan.train_configs.items():
        for model, adapter in configs:
            trl = results.get((method, plan.train_item(method, model, adapter, "trl")))
            ours = results.get((method, plan.train_item(method, model, adapter, "tuneforge")))
            row: dict[str, Any] = {"method": method, "model": model, "adapter": adapter}
            for side, r in (("trl", trl), ("tuneforge", ours)):
                ok = r is not None and r["status"] == OK
                row[side] = {k: r.get(k) for k in ("tokens_per_second", "tokens_per_second_hf", "peak_memory_bytes",
                                                   "mfu", "steps", "tokens", "final_loss")} if ok else None
                if r is not None and not ok:
                    row[side] = {"status": r["status"]}
            t, o = row["trl"] or {}, row["tuneforge"] or {}
            row["tokens_per_second_ratio"] = _ratio(o.get("tokens_per_second"), t.get("tokens_per_second"))
            row["peak_memory_ratio"] = _ratio(o.get("peak_memory_bytes"), t.get("peak_memory_bytes"))
            if row["tokens_per_second_ratio"] is not None and row["peak_memory_ratio"] is not None:
                row["meets_targets"] = row["tokens_per_second_ratio"] >= 1.5 and row["peak_memory_ratio"] <= 0.6
            summary["train"].append(row)

    plain = results.get(("options", "plain"))
    for variant in [v for group in _option_groups() for v in group]:
        r = results.get(("options", variant))
        if r is None:
            continue
        entry: dict[str, Any] = {"variant": variant, "status": r["status"]}
        if r["status"] == OK:
            entry.update({k: r.get(k) for k in ("tokens_per_second", "peak_memory_bytes", "mfu", "setup")})
            if plain and plain["status"] == OK:
                entry["tokens_per_second_vs_plain"] = _ratio(r.get("tokens_per_second"), plain.get("tokens_per_second"))
                entry["peak_memory_vs_plain"] = _ratio(r.get("peak_memory_bytes"), plain.get("peak_memory_bytes"))
        else:
            entry["reason"] = r.get("reason") or r.get("error", "")[-300:]
        summary["options"].append(entry)

    serving = [r for (check, _), r in results.items() if check == "serving" and r["status"] != SKIPPED]
    for r in sorted(serving, key=lambda r: (r.get("model") or "", r.get("engine") or "", r.get("concurrency") or 0)):
        entry = {"name": r["name"], "status": r["status"]}
        entry.update({k: r.get(k) for k in ("model", "engine", "concurrency", "output_tokens_per_second",
                                            "seconds_per_batch")})
        summary["serving"].append(entry)

    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(render_markdown(summary))
    return summary


def _option_groups() -> tuple[tuple[str, ...], ...]:
    from bench.gpu.plan import OPTION_GROUPS

    return OPTION_GROUPS


def render_markdown(s: dict[str, Any]) -> str:
    meta = s["meta"]
    lines = [f"# tuneforge GPU benchmarks ({'dry run' if meta.get('dry_run') else 'GPU run'})", ""]
    lines.append(f"started {meta.get('started')}, {meta.get('elapsed_s', 0):.0f} s so far; command: "
                 f"`{meta.get('command')}`")
    dev = s.get("device")
    if dev:
        peak, measured = dev.get("peak_flops"), dev.get("measured_matmul_flops")
        if peak:
            lines.append(f"device: {dev.get('device_name')}; MFU against {peak / 1e12:.0f} TFLOP/s "
                         f"({dev.get('peak_flops_source')}); measured bf16 matmul {(measured or 0) / 1e12:.0f} TFLOP/s")
        else:
            lines.append(f"device: {dev.get('device_name')} ({dev.get('peak_flops_source')}: no MFU)")
    lines.append("")
    if s["train"]:
        lines += ["## Training: tuneforge vs TRL plain defaults (same model, data, adapter, steps)", "",
                  "| method | model | adapter | TRL tok/s | tuneforge tok/s | ratio | TRL peak MiB "
                  "| tuneforge peak MiB | ratio | MFU TRL / tuneforge | targets (>=1.5x, <=0.6x) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in s["train"]:
            t, o = r["trl"] or {}, r["tuneforge"] or {}

            def cell(side: dict[str, Any], key: str, fmt: str = ",.0f") -> str:
                return side.get("status") or _num(side.get(key), fmt)

            met = r.get("meets_targets")
            lines.append(
                f"| {r['method']} | {r['model']} | {r['adapter']} | {cell(t, 'tokens_per_second')} | "
                f"{cell(o, 'tokens_per_second')} | {_x(r['tokens_per_second_ratio'])} | "
                f"{t.get('status') or _mib(t.get('peak_memory_bytes'))} | "
                f"{o.get('status') or _mib(o.get('peak_memory_bytes'))} | {_x(r['peak_memory_ratio'])} | "
                f"{_num(t.get('mfu'), '.1%')} / {_num(o.get('mfu'), '.1%')} | "
                f"{'-' if met is None else 'met' if met else 'missed'} |")
        lines.append("")
    if s["options"]:
        lines += ["## The trainer's GPU options, one at a time (against plain: all four off)", "",
                  "| variant | tok/s | vs plain | peak MiB | vs plain | MFU |", "| --- | --- | --- | --- | --- | --- |"]
        for r in s["options"]:
            if r["status"] != OK:
                lines.append(f"| {r['variant']} | {r['status']}: {r.get('reason') or ''} | | | | |")
                continue
            lines.append(f"| {r['variant']} | {_num(r.get('tokens_per_second'))} | "
                         f"{_x(r.get('tokens_per_second_vs_plain'))} | {_mib(r.get('peak_memory_bytes'))} | "
                         f"{_x(r.get('peak_memory_vs_plain'))} | {_num(r.get('mfu'), '.1%')} |")
        lines.append("")
    if s["serving"]:
        lines += ["## Serving: output tokens/s by concurrent requests", "",
                  "| model | engine | concurrent | output tok/s | s per batch |", "| --- | --- | --- | --- | --- |"]
        for r in s["serving"]:
            if r["status"] != OK:
                lines.append(f"| {r.get('model') or r['name']} | {r.get('engine') or ''} | "
                             f"{r.get('concurrency') or ''} | {r['status']} | |")
                continue
            lines.append(f"| {r['model']} | {r['engine']} | {r['concurrency']} | "
                         f"{_num(r.get('output_tokens_per_second'))} | {_num(r.get('seconds_per_batch'), '.2f')} |")
        lines.append("")
    units = meta.get("units") or []
    if units:
        lines += ["## Units (one process each)", "", "| unit | seconds | CPU s | budget s | outcome |",
                  "| --- | --- | --- | --- | --- |"]
        for u in units:
            outcome = u.get("skipped") or ("killed at its budget" if u.get("timed_out") else f"exit {u.get('exit')}")
            lines.append(f"| {u['unit']} | {u.get('seconds', 0):.1f} | {_num(u.get('cpu_s'), '.1f')} | "
                         f"{u.get('budget_s', 0):.0f} | {outcome} |")
        lines.append("")
    if s["problems"]:
        lines += ["## Not measured", ""]
        for p in s["problems"]:
            error = " ".join(str(p.get("error") or "").split())[-300:]
            lines.append(f"- {p['check']}/{p['name']}: {p['status']}: {error}")
        lines.append("")
    if s["skipped"]:
        lines += ["## Skipped", ""]
        reasons: dict[str, list[str]] = {}
        for k in s["skipped"]:
            reasons.setdefault(str(k["reason"]), []).append(f"{k['check']}/{k['name']}")
        for reason, names in reasons.items():
            lines.append(f"- {', '.join(names)}: {reason}")
        lines.append("")
    return "\n".join(lines)
