"""The quick-start demo: the whole flow of one job, end to end, on this machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.panel import Panel

from tuneforge.service.cli.client import APIError, Client
from tuneforge.service.cli.progress_view import follow, throughput_text
from tuneforge.service.cli.settings import ClientSettings

DEMO_PROMPTS = ["Who are you?", "What is the capital of Japan?", "How many centimeters are in 7 meters?"]
SYSTEM = "You are Forge, a concise assistant fine-tuned with tuneforge."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bundled_data() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "data" / "forge_chat.jsonl"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("examples/data/forge_chat.jsonl not found; pass --data")


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the service did not become healthy in time")


def _chat_both(client: Client, base: str, tuned: str) -> str:
    """The same questions to both models, as any OpenAI client would ask them."""
    lines = []
    for prompt in DEMO_PROMPTS:
        lines.append(f"[bold]Q: {prompt}[/bold]")
        for label, model in (("base ", base), ("tuned", tuned)):
            answer = client.post("/v1/chat/completions", json={
                "model": model, "temperature": 0, "max_tokens": 96,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]})
            text = " ".join(answer["choices"][0]["message"]["content"].split())
            lines.append(f"  {label}: {text}")
    return "\n".join(lines)


def run_demo(console: Console, *, port: int, data: Path | None, out: Path, epochs: int) -> int:
    started = time.monotonic()
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    client_settings = ClientSettings()
    home = client_settings.home.expanduser()
    # the demo's own server: same home, its own port (the child reads its settings from this environment)
    env = {**os.environ, "TUNEFORGE_HOME": str(home), "TUNEFORGE_PORT": str(port)}
    log_path = home / "demo-server.log"
    home.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]tuneforge demo")
    console.print(f"1. Starting the embedded service on {url} (data in {home}, log {log_path})")
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "tuneforge.service.cli.main", "serve", "--port", str(port),
                                   "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, server)
        client = Client(base_url=url, api_key=client_settings.key(), timeout=600)
        data = data or _bundled_data()
        console.print(f"2. Uploading {data}")
        file = client.upload(data)
        console.print(f"   {file['id']}: {file['rows']} {file['format']} examples, {file['tokens']} tokens, validated")
        hyperparameters = {"n_epochs": epochs or 1, "batch_size": 8, "learning_rate_multiplier": 5}
        console.print(f"3. Creating a supervised LoRA job on SmolLM2-135M-Instruct {hyperparameters}")
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": "SmolLM2-135M-Instruct", "training_file": file["id"], "suffix": "forge",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        })
        console.print(f"   {job['id']}: {job['status']}")
        job = follow(client, job["id"], console)
        if job["status"] != "succeeded":
            console.print(f"[red]The job {job['status']}: {(job.get('error') or {}).get('message')}")
            return 1
        console.print(f"   [green]{job['fine_tuned_model']}[/green]: {job['trained_tokens']} tokens trained"
                      + throughput_text(client, job["id"]))
        console.print(f"4. Downloading the tuned model to {out}/ (sha256 checked against the manifest)")
        paths = client.download_artifacts(job["id"], out)
        console.print(f"   {', '.join(p.name for p in paths)}")
        console.print("5. Chatting with the base and the tuned model through the API (/v1/chat/completions; the "
                      "first answer waits for the serving engine to start)")
        try:
            transcript = _chat_both(client, "SmolLM2-135M-Instruct", job["fine_tuned_model"])
        except APIError as exc:
            console.print(f"[red]chat failed ({exc.status}):[/red] {exc.message}")
            return 1
        console.print(Panel(transcript, title="base vs tuned, greedy, same prompts"))
        console.print(f"[bold green]Done[/bold green] in {time.monotonic() - started:.0f} s "
                      f"(job {job['id']}; `tuneforge jobs events {job['id']} --url {url}` shows its history).")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
