"""Live job progress in the terminal: a bar with step, loss and ETA, plus the job's messages."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.service.cli.client import Client

TERMINAL = ("succeeded", "failed", "cancelled")


def _fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def follow(client: Client, job_id: str, console: Console, poll: float = 1.0) -> dict[str, Any]:
    """Show progress until the job ends; returns the final job object."""
    seen: set[str] = set()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("queued", total=None, loss="-", tps="-", eta="--:--")
    with progress:
        while True:
            for event in client.iter_events(job_id) if not seen else _new_events(client, job_id, seen):
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                if event.get("type") == "metrics":
                    if not console.is_terminal:  # no live bar in a log file: one line per report
                        progress.console.print(_metrics_line(event.get("data") or {}))
                else:
                    style = "red" if event["level"] == "error" else "yellow" if event["level"] == "warn" else "dim"
                    progress.console.print(f"[{style}]{event['message']}")
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}")
            p = job.get("progress") or {}
            loss = p.get("train_loss")
            progress.update(
                task,
                description=job["status"],
                total=p.get("total_steps"),
                completed=p.get("step", 0),
                loss=f"{loss:.4f}" if isinstance(loss, int | float) else "-",
                tps=f"{p['tokens_per_second']:.0f}" if isinstance(p.get("tokens_per_second"), int | float) else "-",
                eta=_fmt_eta(p.get("eta_seconds")) if job["status"] == "running" else "--:--",
            )
            if job["status"] in TERMINAL:
                for event in _new_events(client, job_id, seen):
                    if event["id"] not in seen and event.get("type") != "metrics":
                        seen.add(event["id"])
                        progress.console.print(f"[dim]{event['message']}")
                return job
            time.sleep(poll)


def _metrics_line(data: dict[str, Any]) -> str:
    parts = [f"step {data.get('step', '?')}/{data.get('total_steps', '?')}"]
    if isinstance(data.get("train_loss"), int | float):
        parts.append(f"loss {data['train_loss']:.4f}")
    if isinstance(data.get("valid_loss"), int | float):
        parts.append(f"valid loss {data['valid_loss']:.4f}")
    if isinstance(data.get("tokens_per_second"), int | float):
        parts.append(f"{data['tokens_per_second']:.0f} tok/s")
    if isinstance(data.get("eta_seconds"), int | float):
        parts.append(f"ETA {_fmt_eta(data['eta_seconds'])}")
    return "  " + ", ".join(parts)


def _new_events(client: Client, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
    # newest first until we reach what we have already shown, then oldest first for printing
    fresh: list[dict[str, Any]] = []
    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", limit=100)
    for event in page["data"]:
        if event["id"] in seen:
            break
        fresh.append(event)
    return list(reversed(fresh))
