"""Live job progress in the terminal: a bar with step, loss and ETA, plus the job's messages.

Progress comes from the job's Server-Sent Events stream (``…/events/stream``): each event once, as it
happens, resuming with ``Last-Event-ID`` after a dropped connection. Against a server without the stream
it falls back to polling the JSON routes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.service.cli.client import Client

TERMINAL = ("succeeded", "failed", "cancelled")


def _fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class StreamUnavailable(Exception):
    """The server has no event stream (an older version): poll instead."""


def iter_stream(client: Client, job_id: str, *, heartbeat: float = 5.0, max_retries: int = 30,
                status: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every event of the job once, oldest first, until the job ends (then ``status["final"]`` is set).
    Reconnects with ``Last-Event-ID`` when the connection drops, after the delay the server suggests."""
    last_id: str | None = None
    retries = 0
    delay = 0.5
    path = f"/v1/fine_tuning/jobs/{job_id}/events/stream"
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(client.http, "GET", path, headers=headers, params={"heartbeat": heartbeat},
                             timeout=httpx.Timeout(30, read=max(30.0, heartbeat * 4))) as source:
                response = source.response
                if response.status_code in (404, 405) and last_id is None:
                    response.read()
                    client.get(f"/v1/fine_tuning/jobs/{job_id}")  # raises for a job that does not exist
                    raise StreamUnavailable()
                if response.status_code >= 400:
                    response.read()
                    client._json(response)  # raises APIError
                for sse in source.iter_sse():
                    if sse.retry is not None:
                        delay = sse.retry / 1000
                    if not sse.data:
                        continue  # the retry hint
                    if sse.event == "end":
                        if status is not None:
                            status["final"] = sse.json().get("status")
                        return
                    last_id = sse.id or last_id
                    retries = 0
                    yield sse.json()
        except httpx.TransportError:
            pass
        retries += 1  # the connection dropped (or closed without the end): resume after the last event
        if retries > max_retries:
            raise RuntimeError(f"lost the event stream of {job_id} {max_retries} times in a row")
        time.sleep(min(5.0, delay * retries))


def follow(client: Client, job_id: str, console: Console, poll: float = 1.0) -> dict[str, Any]:
    """Show progress until the job ends; returns the final job object."""
    progress = _progress(console)
    task = progress.add_task("queued", total=None, loss="-", tps="-", eta="--:--")
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}")
    progress.update(task, description=job["status"])
    state: dict[str, Any] = {}
    try:
        with progress:
            for event in iter_stream(client, job_id, status=state):
                data = event.get("data") or {}
                if event.get("type") == "metrics":
                    _apply_metrics(progress, task, data)
                    if not console.is_terminal:  # no live bar in a log file: one line per report
                        progress.console.print(_metrics_line(data))
                    continue
                if isinstance(data.get("status"), str):
                    progress.update(task, description=data["status"])
                    if data["status"] != "running":
                        progress.update(task, eta="--:--")
                style = "red" if event["level"] == "error" else "yellow" if event["level"] == "warn" else "dim"
                progress.console.print(f"[{style}]{event['message']}")
    except StreamUnavailable:
        return _follow_polling(client, job_id, console, poll)
    return dict(client.get(f"/v1/fine_tuning/jobs/{job_id}"))


def trainer_throughput(client: Client, job_id: str) -> tuple[float, int] | None:
    """The median of the trainer's tokens/s reports and how many there were (None before the first).

    Each report measures one logging window of training steps only (evaluation, checkpoint uploads and
    model loading excluded), so their median is the trainer's steady throughput. The job object's
    ``progress.tokens_per_second`` (what the closing line used to print) is only the *last* report: the
    epoch's last, short step (the demo's 260 examples in batches of 8 leave 4), which trains half the
    tokens of a step in about a step's time: 60 tokens/s against a median of 153 over 33 reports in a
    tiny-model run of the demo's job, 15 against 50-100 in a user's run of the demo."""
    rates = [event["data"]["tokens_per_second"] for event in client.iter_events(job_id)
             if event.get("type") == "metrics" and isinstance((event.get("data") or {}).get("tokens_per_second"),
                                                              int | float)]
    return (float(statistics.median(rates)), len(rates)) if rates else None


def throughput_text(client: Client, job_id: str) -> str:
    """``", 137 tokens/s (median of 33 trainer reports)"`` or ``""``."""
    found = trainer_throughput(client, job_id)
    if found is None:
        return ""
    rate, count = found
    return f", {rate:.0f} tokens/s (median of {count} trainer report{'s' if count != 1 else ''})"


def _apply_metrics(progress: Progress, task: Any, data: dict[str, Any]) -> None:
    fields: dict[str, Any] = {}
    if isinstance(data.get("total_steps"), int | float):
        fields["total"] = data["total_steps"]
    if isinstance(data.get("step"), int | float):
        fields["completed"] = data["step"]
    if isinstance(data.get("train_loss"), int | float):
        fields["loss"] = f"{data['train_loss']:.4f}"
    if isinstance(data.get("tokens_per_second"), int | float):
        fields["tps"] = f"{data['tokens_per_second']:.0f}"
    if isinstance(data.get("eta_seconds"), int | float):
        fields["eta"] = _fmt_eta(data["eta_seconds"])
    progress.update(task, description="running", **fields)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _follow_polling(client: Client, job_id: str, console: Console, poll: float = 1.0) -> dict[str, Any]:
    """For servers without the event stream: poll the job and its events."""
    seen: set[str] = set()
    progress = _progress(console)
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
                return dict(job)
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
