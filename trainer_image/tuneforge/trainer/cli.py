"""``python -m tuneforge.trainer --spec jobspec.json``: run one job and exit with a contract exit code.

The spec comes from ``--spec PATH`` or the environment variable ``TUNEFORGE_JOBSPEC`` (a path, or the JSON
itself). Exit codes (``tuneforge.contracts.exit_codes``): 0 success; 65 bad spec/data/model (do not retry);
75 preempted with a checkpoint saved (run again to resume); 1 any other failure. Every failure is reported as
one ``error`` event with a one-line message; tracebacks go to stderr only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.contracts.validation import first_problem
from tuneforge.trainer.errors import BadInput, TrainerError
from tuneforge.trainer.launch import LaunchPlan, is_main_process, launch_plan
from tuneforge.trainer.metrics_server import start_from_env as start_metrics_server
from tuneforge.trainer.preempt import PreemptFlag
from tuneforge.trainer.progress import ProgressReporter
from tuneforge.trainer.settings import trainer_settings

MAX_MESSAGE = 500
#: a distributed launch's rank 0 writes its exit code here (torchrun itself only says 0 or 1)
EXIT_CODE_ENV = "TUNEFORGE_EXIT_CODE_FILE"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def load_spec(value: str) -> JobSpec:
    """``value`` is a path to a JSON file or the JSON itself."""
    text = value if value.lstrip().startswith("{") else None
    if text is None:
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise BadInput(f"cannot read the job spec {value!r}: {exc.strerror}") from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"invalid job spec: not JSON: {exc}") from exc
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as exc:
        raise BadInput(f"invalid job spec: {first_problem(exc.errors(), body)}") from exc
    return with_progress_token(spec, trainer_settings().progress_token)


def with_progress_token(spec: JobSpec, token: str) -> JobSpec:
    """In cluster mode the spec travels in a ConfigMap without the progress token, which comes from a
    Secret as ``TUNEFORGE_PROGRESS_TOKEN``; a token in the spec (local executor) wins."""
    if spec.progress is None or spec.progress.token or not token:
        return spec
    return spec.model_copy(update={"progress": spec.progress.model_copy(update={"token": token})})


def _set_env_defaults() -> None:
    # quiet the libraries (their own variables; nothing of ours is passed this way)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _failure_message(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out_of_memory", "out of memory: lower batch_size or max_length, or use a larger GPU"
    detail = _one_line(str(exc)) or "no details"
    return "training_error", f"training failed: {name}: {detail}"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the trainer image
        return False
    return bool(torch.cuda.is_available())


def _run_launcher(plan: LaunchPlan) -> int:
    """Run torchrun for a multi-GPU job and return its exit code (the workers report progress themselves).

    SIGTERM/SIGINT are forwarded so the workers checkpoint and exit 75 (torchrun passes them on). torchrun
    turns any worker failure into exit 1, so rank 0 leaves its contract exit code (65, 75, …) in a file."""
    print(f"tuneforge: launching {plan.nproc} workers: {' '.join(plan.command)}", file=sys.stderr)
    fd, code_file = tempfile.mkstemp(prefix="tuneforge-exit-")
    os.close(fd)
    proc = subprocess.Popen(plan.command, env={**os.environ, **plan.env, EXIT_CODE_ENV: code_file})

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    try:
        written = Path(code_file).read_text().strip()
        os.unlink(code_file)
    except OSError:
        written = ""
    if code != 0 and written.isdigit() and int(written) != 0:
        return int(written)
    return int(ExitCode.FAILURE) if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", help="path to the JobSpec JSON (default: $TUNEFORGE_JOBSPEC)")
    parser.add_argument("spec_path", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _set_env_defaults()
    source = args.spec or args.spec_path or trainer_settings().jobspec
    if not source:
        parser.error("no job spec: pass --spec PATH or set TUNEFORGE_JOBSPEC")

    try:
        spec = load_spec(source)
    except BadInput as exc:
        ProgressReporter("unknown", None).emit("error", exc.message, level="error", code=exc.code)
        print(f"tuneforge: {exc.message}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)

    try:
        plan = launch_plan(spec, source, python=sys.executable, env=os.environ, cuda=_cuda_available())
    except ValueError as exc:
        ProgressReporter(spec.job_id, spec.progress).emit("error", str(exc), level="error", code="invalid_input")
        return int(ExitCode.BAD_INPUT)
    if plan is not None:
        return _run_launcher(plan)

    if is_main_process():
        reporter = ProgressReporter(spec.job_id, spec.progress)
    else:  # the other workers of a distributed launch stay silent: rank 0 reports for the job
        reporter = ProgressReporter(spec.job_id, None, stream=open(os.devnull, "w"))  # noqa: SIM115
    # only with TUNEFORGE_TRAINER_METRICS_PORT
    metrics_server = start_metrics_server(spec.job_id, reporter) if is_main_process() else None
    preempt = PreemptFlag()
    preempt.install()
    code = ExitCode.OK
    try:
        from tuneforge.trainer.runner import run

        run(spec, reporter, preempt)
    except TrainerError as exc:
        code = exc.exit_code
        if code == ExitCode.PREEMPTED:
            reporter.status("preempted", exc.message)
        else:
            if code != ExitCode.BAD_INPUT:
                traceback.print_exc()
            reporter.emit("error", _one_line(exc.message), level="error", code=exc.code)
        print(f"tuneforge: {exc.message}", file=sys.stderr)
    except BaseException as exc:
        traceback.print_exc()
        error_code, message = _failure_message(exc)
        reporter.emit("error", message, level="error", code=error_code)
        code = ExitCode.FAILURE
    finally:
        reporter.close()
        if metrics_server is not None:
            metrics_server.stop()
    code_file = trainer_settings().exit_code_file
    if code_file and is_main_process():
        Path(code_file).write_text(str(int(code)))
    return int(code)
