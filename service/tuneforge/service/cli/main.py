"""``tuneforge`` command line: serve, files, jobs, models, download, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.service.cli.client import APIError, Client
from tuneforge.service.cli.db import db_app
from tuneforge.service.cli.progress_view import follow, throughput_text
from tuneforge.service.cli.settings import service_settings

app = typer.Typer(help="tuneforge: fine-tune language models (SFT, DPO, reward models, RL).", no_args_is_help=True)
files_app = typer.Typer(help="Training files.", no_args_is_help=True)
jobs_app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Base and fine-tuned models.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (run on the server's machine).", no_args_is_help=True)
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="Service URL (default: TUNEFORGE_URL)")]


def _client(url: str | None) -> Client:
    return Client(base_url=url)


def _fail(exc: APIError) -> None:
    err_console.print(f"[red]Error ({exc.status}):[/red] {exc.message}")
    for detail in (exc.details or [])[:20]:
        if "line" in detail:
            where = f"line {detail['line']}" + (f", {detail['field']}" if detail.get("field") else "")
            err_console.print(f"  {where}: {detail['message']}")
    raise typer.Exit(1)


def _print_json(obj: Any) -> None:
    console.print_json(json.dumps(obj))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: TUNEFORGE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: TUNEFORGE_PORT or 8000")] = None,
    log_level: str = "info",
) -> None:
    """Start the service (embedded mode by default: SQLite, local store, local trainer)."""
    import uvicorn

    from tuneforge.service.api.app import create_app
    from tuneforge.service.db.migrate import SchemaError

    settings = service_settings(host, port)
    server = settings.server
    console.print(f"tuneforge on http://{server.host}:{server.port}  (data in {settings.home}, store "
                  f"{settings.storage.url})")
    try:
        application = create_app(settings)
    except SchemaError as exc:  # a schema that is behind (auto-upgrade off) or one this version cannot use
        typer.echo(f"Not starting: {exc}", err=True)
        raise typer.Exit(1) from exc
    uvicorn.run(application, host=server.host, port=server.port, log_level=log_level)


# -- files --


@files_app.command("upload")
def files_upload(path: Path, url: UrlOpt = None, purpose: str = "fine-tune") -> None:
    """Upload a JSONL training file; every invalid line is reported with its number."""
    try:
        obj = _client(url).upload(path, purpose)
    except APIError as exc:
        _fail(exc)
    console.print(f"[green]Uploaded[/green] {obj['id']}  ({obj['format']}, {obj['rows']} rows, {obj['bytes']} bytes)")


@files_app.command("list")
def files_list(url: UrlOpt = None) -> None:
    table = Table("id", "filename", "format", "rows", "bytes")
    for f in _client(url).get("/v1/files", limit=100)["data"]:
        table.add_row(f["id"], f["filename"], f.get("format") or "", str(f.get("rows", "")), str(f["bytes"]))
    console.print(table)


@files_app.command("delete")
def files_delete(file_id: str, url: UrlOpt = None) -> None:
    try:
        _client(url).delete(f"/v1/files/{file_id}")
    except APIError as exc:
        _fail(exc)
    console.print(f"Deleted {file_id}")


# -- jobs --


def _parse_set(values: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@jobs_app.command("create")
def jobs_create(
    training_file: Annotated[str, typer.Option("--training-file", "-t", help="file id, or a path to upload")],
    model: Annotated[str, typer.Option("--model", "-m")] = "SmolLM2-135M-Instruct",
    method: Annotated[str, typer.Option(help="supervised | dpo | reward_model | reinforcement")] = "supervised",
    validation_file: Annotated[str | None, typer.Option("--validation-file", "-v")] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="hyperparameter KEY=VALUE (repeatable)")] = None,
    adapter: Annotated[str, typer.Option(help="lora | qlora | full")] = "lora",
    suffix: str | None = None,
    seed: int | None = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow progress until the job ends")] = False,
    url: UrlOpt = None,
) -> None:
    """Create a fine-tuning job (uploads local files first)."""
    client = _client(url)
    try:
        ids = []
        for ref in (training_file, validation_file):
            if ref and Path(ref).is_file():
                uploaded = client.upload(Path(ref))
                console.print(f"Uploaded {ref} as {uploaded['id']} ({uploaded['rows']} rows)")
                ids.append(uploaded["id"])
            else:
                ids.append(ref)
        body: dict[str, Any] = {
            "model": model, "training_file": ids[0], "validation_file": ids[1],
            "method": {"type": method, method: {"hyperparameters": _parse_set(hp or [])}},
            "adapter": {"type": adapter}, "suffix": suffix, "seed": seed,
        }
        job = client.post("/v1/fine_tuning/jobs", json={k: v for k, v in body.items() if v is not None})
    except APIError as exc:
        _fail(exc)
    console.print(f"Created job [bold]{job['id']}[/bold] ({job['status']})")
    if wait:
        _wait(client, job["id"])


def _wait(client: Client, job_id: str) -> dict[str, Any]:
    job = follow(client, job_id, console)
    if job["status"] == "succeeded":
        console.print(f"[green]Succeeded[/green]: {job['fine_tuned_model']}  ({job.get('trained_tokens')} tokens"
                      f"{throughput_text(client, job_id)})")
    else:
        message = (job.get("error") or {}).get("message", "")
        console.print(f"[red]{job['status']}[/red] {message}")
        raise typer.Exit(1)
    return job


@jobs_app.command("follow")
def jobs_follow(job_id: str, url: UrlOpt = None) -> None:
    """Show live progress of a job until it ends."""
    _wait(_client(url), job_id)


@jobs_app.command("list")
def jobs_list(url: UrlOpt = None, limit: int = 20) -> None:
    table = Table("id", "status", "model", "method", "fine_tuned_model", "created_at")
    for j in _client(url).get("/v1/fine_tuning/jobs", limit=limit)["data"]:
        table.add_row(j["id"], j["status"], j["model"], j["method"]["type"], j.get("fine_tuned_model") or "",
                      str(j["created_at"]))
    console.print(table)


@jobs_app.command("get")
def jobs_get(job_id: str, url: UrlOpt = None) -> None:
    try:
        _print_json(_client(url).get(f"/v1/fine_tuning/jobs/{job_id}"))
    except APIError as exc:
        _fail(exc)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = None) -> None:
    try:
        job = _client(url).post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    except APIError as exc:
        _fail(exc)
    console.print(f"{job['id']}: {job['status']}")


@jobs_app.command("events")
def jobs_events(job_id: str, url: UrlOpt = None) -> None:
    try:
        for event in _client(url).iter_events(job_id):
            console.print(f"[dim]{event['created_at']}[/dim] {event['level']:5} {event['message']}")
    except APIError as exc:
        _fail(exc)


@jobs_app.command("checkpoints")
def jobs_checkpoints(job_id: str, url: UrlOpt = None) -> None:
    try:
        _print_json(_client(url).get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"])
    except APIError as exc:
        _fail(exc)


# -- models --


@models_app.command("list")
def models_list(url: UrlOpt = None) -> None:
    table = Table("id", "kind", "owned_by")
    for m in _client(url).get("/v1/models")["data"]:
        table.add_row(m["id"], m.get("kind", ""), m["owned_by"])
    console.print(table)


@models_app.command("prepare")
def models_prepare(name: str = "SmolLM2-135M-Instruct") -> None:
    """Convert a bundled base model to safetensors in the local model cache (done once)."""
    import subprocess

    raise typer.Exit(subprocess.call([sys.executable, "-m", "tuneforge.trainer.models", "prepare", name]))


@models_app.command("push")
def models_push(
    name: Annotated[str, typer.Argument(help="A bundled model (SmolLM2-135M-Instruct) or a cached Hub id")],
    store: Annotated[str | None, typer.Option("--store", help="Object store: s3://bucket/prefix (AWS_* variables "
                                              "pick the endpoint and credentials) or file:///dir; default: "
                                              "TUNEFORGE_STORAGE_URL")] = None,
) -> None:
    """Upload a base model to models/{name}/ in the object store, so cluster pods load it from the bucket.

    The files go first and manifest.json (sizes and sha256) last: jobs use the model once the manifest is there."""
    import subprocess

    url = store or service_settings().storage.url
    raise typer.Exit(subprocess.call(
        [sys.executable, "-m", "tuneforge.trainer.models", "prepare", name, "--publish", url]))


@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="A directory with config.json, *.safetensors and the tokenizer")],
    name: Annotated[str, typer.Option("--name", help="The model id jobs will name")],
    store: Annotated[str | None, typer.Option("--store", help="Object store (default: TUNEFORGE_STORAGE_URL)")]
    = None,
) -> None:
    """Register a local model directory as a base model (run by an operator on the server's machine): it is
    published to models/{name}/ in the object store, manifest last; jobs then name it by `name`, never by path."""
    from tuneforge.service.domain.model_registry import register_directory
    from tuneforge.storage import open_store

    try:
        register_directory(open_store(store or service_settings().storage.url), path, name)
    except ValueError as exc:
        err_console.print(f"[red]Error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]Registered[/green] {name} from {path}")


@app.command()
def download(
    job_id: str,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("tuned-model"),
    url: UrlOpt = None,
) -> None:
    """Download a succeeded job's model; every file is checked against the manifest's sha256."""
    try:
        paths = _client(url).download_artifacts(job_id, out)
    except APIError as exc:
        _fail(exc)
    total = sum(p.stat().st_size for p in paths)
    console.print(f"[green]Downloaded[/green] {len(paths)} files ({total / 1e6:.1f} MB) to {out} (sha256 verified)")


# -- keys --


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option("--tenant")] = "default", name: str = "") -> None:
    """Create an API key for a tenant directly in the service's database; prints it once."""
    from tuneforge.service.core.security import hash_secret, new_api_key
    from tuneforge.service.db.repo import SystemRepo
    from tuneforge.service.db.session import init_db, make_engine, make_session_factory

    settings = service_settings()
    engine = make_engine(settings.database_url)
    init_db(engine, auto_upgrade=settings.db_auto_upgrade)
    key = new_api_key()
    with make_session_factory(engine)() as session:
        SystemRepo(session).add_api_key(tenant, hash_secret(key), name=name)
    print(key)


@app.command()
def demo(
    port: int = 0,
    data: Annotated[Path | None, typer.Option(help="chat JSONL to fine-tune on")] = None,
    out: Path = Path("tuneforge-demo-model"),
    epochs: int = 0,
) -> None:
    """The quick start: serve, upload the sample data, fine-tune SmolLM2, download it, compare answers."""
    from tuneforge.service.cli.demo import run_demo

    raise typer.Exit(run_demo(console, port=port, data=data, out=out, epochs=epochs))


if __name__ == "__main__":
    app()
