"""Log a run to the trackers its JobSpec names: hyperparameters at the start, metrics at every log step, the
tuned model at the end. Weights & Biases through the ``wandb`` package (online, or offline with
``WANDB_MODE=offline``); MLflow through its REST API with the standard library (no MLflow client in the trainer
image: the full client pins half of the ecosystem).

A tracker that fails never fails the job: the trainer warns once and stops using it. A job that is paused or
preempted and resumed logs into the same run (W&B: run id = job id; MLflow: the run tagged with the job id).
Credentials come from the environment only (``WANDB_API_KEY``; ``MLFLOW_TRACKING_TOKEN`` or
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuneforge.contracts.integrations import MlflowIntegration, WandbIntegration
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.trainer.callbacks import rename_metrics
from tuneforge.trainer.progress import ProgressReporter

TIMEOUT_S = 15.0
JOB_TAG = "tuneforge.job_id"


def run_params(spec: JobSpec) -> dict[str, str]:
    """Flat hyperparameters and setup, as tracker parameters."""
    params: dict[str, Any] = {"method": spec.method.type, "base_model": spec.base_model, "seed": spec.seed,
                              "adapter.type": spec.adapter.type, "job_id": spec.job_id,
                              "training_file": spec.training_file.file_id}
    if spec.adapter.type != "full":
        params.update({"adapter.r": spec.adapter.r, "adapter.alpha": spec.adapter.alpha})
    if spec.initial_weights is not None:
        params["continued_from"] = spec.initial_weights.source or spec.initial_weights.prefix
    for key, value in spec.hyperparameters.model_dump(mode="json", exclude_none=True).items():
        params[f"hp.{key}"] = value
    return {k: str(v)[:500] for k, v in params.items()}


class _Tracker:
    name = "tracker"

    def start(self, params: dict[str, str]) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_model(self, directory: Path, summary: dict[str, Any]) -> None: ...
    def finish(self, status: str) -> None: ...


class MlflowTracker(_Tracker):
    """MLflow's REST API (``/api/2.0/mlflow/...``; artifacts through the server's proxy,
    ``/api/2.0/mlflow-artifacts/artifacts/...``, as ``mlflow server`` serves them by default)."""

    name = "mlflow"

    def __init__(self, spec: JobSpec, config: MlflowIntegration) -> None:
        settings = config.mlflow
        assert settings.tracking_uri, "the service fills in the tracking server"
        self.base = settings.tracking_uri.rstrip("/")
        self.spec = spec
        self.settings = settings
        self.run_id = ""
        self.artifact_uri = ""
        self.experiment_id = ""

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return headers

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            raw = response.read()
        return json.loads(raw) if raw else {}

    def _experiment(self) -> str:
        try:
            found = self._call("GET", "experiments/get-by-name",
                               query={"experiment_name": self.settings.experiment_name})
            return str(found["experiment"]["experiment_id"])
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        created = self._call("POST", "experiments/create", {"name": self.settings.experiment_name})
        return str(created["experiment_id"])

    def start(self, params: dict[str, str]) -> None:
        self.experiment_id = self._experiment()
        found = self._call("POST", "runs/search", {
            "experiment_ids": [self.experiment_id], "filter": f"tags.`{JOB_TAG}` = '{self.spec.job_id}'",
            "max_results": 1})
        runs = found.get("runs") or []
        if runs:  # resumed after a pause or a preemption: the same run goes on
            info = runs[0]["info"]
            self.run_id, self.artifact_uri = info["run_id"], info.get("artifact_uri", "")
            self._call("POST", "runs/update", {"run_id": self.run_id, "status": "RUNNING"})
            return
        tags = [{"key": JOB_TAG, "value": self.spec.job_id}, {"key": "mlflow.source.name", "value": "tuneforge"}]
        tags += [{"key": k, "value": v} for k, v in (self.settings.tags or {}).items()]
        run = self._call("POST", "runs/create", {
            "experiment_id": self.experiment_id, "run_name": self.settings.run_name or self.spec.job_id,
            "start_time": int(time.time() * 1000), "tags": tags})["run"]["info"]
        self.run_id, self.artifact_uri = run["run_id"], run.get("artifact_uri", "")
        items = [{"key": k, "value": v} for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._call("POST", "runs/log-batch", {"run_id": self.run_id, "params": items[i:i + 100]})

    def log(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        batch = [{"key": k, "value": float(v), "timestamp": stamp, "step": step} for k, v in metrics.items()]
        if batch:
            self._call("POST", "runs/log-batch", {"run_id": self.run_id, "metrics": batch})

    def _artifact_url(self, relative: str) -> str:
        # mlflow-artifacts:/1/<run>/artifacts (or mlflow-artifacts://host/...) -> the server's artifact proxy
        path = urllib.parse.urlsplit(self.artifact_uri).path.lstrip("/")
        return f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{path}/{urllib.parse.quote(relative)}"

    def log_model(self, directory: Path, summary: dict[str, Any]) -> None:
        headers = {k: v for k, v in self._headers().items() if k != "Content-Type"}
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            relative = "model/" + path.relative_to(directory).as_posix()
            request = urllib.request.Request(self._artifact_url(relative), data=path.read_bytes(), method="PUT",
                                             headers=headers)
            with urllib.request.urlopen(request, timeout=max(TIMEOUT_S, 120.0)) as response:
                response.read()
        tags = [{"key": "tuneforge.model_prefix", "value": str(summary.get("model_prefix", ""))},
                {"key": "tuneforge.trained_tokens", "value": str(summary.get("trained_tokens", ""))}]
        self._call("POST", "runs/log-batch", {"run_id": self.run_id, "tags": tags})

    def finish(self, status: str) -> None:
        if self.run_id:
            self._call("POST", "runs/update", {"run_id": self.run_id, "status": status,
                                               "end_time": int(time.time() * 1000)})


class WandbTracker(_Tracker):
    name = "wandb"

    def __init__(self, spec: JobSpec, config: WandbIntegration) -> None:
        self.spec = spec
        self.settings = config.wandb
        self.run: Any = None

    def start(self, params: dict[str, str]) -> None:
        import wandb

        tags = [*(self.settings.tags or []), self.spec.job_id]
        self.run = wandb.init(project=self.settings.project, entity=self.settings.entity,
                              name=self.settings.name or self.spec.job_id, id=self.spec.job_id, resume="allow",
                              tags=tags, config=params, reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_model(self, directory: Path, summary: dict[str, Any]) -> None:
        import wandb

        artifact = wandb.Artifact(f"{self.spec.job_id}-model", type="model",
                                  metadata={k: v for k, v in summary.items() if k != "files"})
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact)
        self.run.summary.update({"trained_tokens": summary.get("trained_tokens"),
                                 "model_prefix": summary.get("model_prefix")})

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None


class Trackers:
    """Every tracker of a job; a failing one is dropped with one warning."""

    def __init__(self, spec: JobSpec, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self.trackers: list[_Tracker] = []
        for item in spec.integrations:
            self.trackers.append(MlflowTracker(spec, item) if isinstance(item, MlflowIntegration)
                                 else WandbTracker(spec, item))
        self.params = run_params(spec)

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                self.reporter.warn(f"{tracker.name} integration disabled: cannot {what}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}")

    def start(self) -> None:
        self._each("start the run", lambda t: t.start(self.params))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._each("log metrics", lambda t: t.log(metrics, step))

    def log_model(self, directory: Path, summary: dict[str, Any]) -> None:
        self._each("log the model", lambda t: t.log_model(directory, summary))

    def finish(self, status: str) -> None:
        self._each("finish the run", lambda t: t.finish(status))


class TrackerCallback(TrainerCallback):
    """Starts the runs when training starts and sends every trainer log's metrics."""

    def __init__(self, trackers: Trackers) -> None:
        self.trackers = trackers

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.trackers.start()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        if "train_loss" in logs and "loss" not in logs:
            return  # the end-of-training summary (an average over the run), not a step's metrics
        train, valid = rename_metrics(logs)
        metrics = {k: float(v) for k, v in {**train, **valid}.items() if isinstance(v, int | float)}
        self.trackers.log(metrics, state.global_step)
