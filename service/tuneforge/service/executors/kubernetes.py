"""Kubernetes executor: every job becomes a ``FineTuneJob`` custom resource; the operator runs it as pods.

The service never talks to pods. It

* submits: a per-job progress-token Secret (owned by the CR) and the FineTuneJob (name = job id, labels job id
  and tenant, spec = the stored JobSpec with an empty token + scheduling), then marks the job ``queued``;
* watches FineTuneJobs (list, then watch from the list's resourceVersion; after a watch error, an expired
  resourceVersion or an apiserver restart it lists again, with back-off) and maps their status onto the job:
  ``Queued``/``Suspended`` -> queued, ``Running`` -> running, ``Succeeded`` -> :func:`finish_job` (exit 0: the
  model's manifest must be in the store), ``Failed`` -> failed with the operator's reason and message,
  ``Cancelled`` -> cancelled. Pod trouble the user should know about (unschedulable, image pull, preempted)
  becomes a warning event;
* cancels by setting ``spec.cancel: true`` (the operator deletes the Job and its pods);
* pauses by setting ``spec.suspend: true`` (the operator suspends the Job: its pod gets SIGTERM, the trainer
  checkpoints and exits) and resumes with ``spec.suspend: false`` (a new pod continues from the latest
  checkpoint). A paused job stays ``paused`` whatever non-final phase the FineTuneJob reports; the user's last
  word is re-sent when the FineTuneJob disagrees with it (e.g. paused while the cluster was unreachable);
* refuses ``DELETE /v1/fine_tuning/jobs/{id}`` (:meth:`KubernetesExecutor.running_reason`) until the
  FineTuneJob is in a final phase and its pods have stopped (``status.activePods`` is 0);
* on ``DELETE /v1/fine_tuning/jobs/{id}`` (:meth:`KubernetesExecutor.discard`) deletes the FineTuneJob and the
  token Secret (already gone: fine; cluster unreachable: retried by the control loop). The job's row is gone
  by then, so the watch's DELETED event for it changes nothing;
* mirrors the trainer's progress (``status.progress``, ``status.lastCheckpoint``) into the FineTuneJob so
  ``kubectl get finetunejobs`` shows it.

The trainer's own events still arrive over the progress channel. The token is per job (not per attempt: a
retried pod reads the same Secret), and never stored in the FineTuneJob.

Kubernetes access: ``TUNEFORGE_KUBECONFIG`` or ``KUBECONFIG`` (settings.executor.kubeconfig), else the in-cluster
service account, else ``~/.kube/config``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.finetunejob import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_JOB_ID,
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    MANAGED_BY_SERVICE,
    PLURAL,
    TERMINAL_PHASES,
    TOKEN_KEY,
    VERSION,
    ContainerResources,
    EnvVar,
    FineTuneJob,
    FineTuneJobSpec,
    Named,
    Reason,
    Scheduling,
    TokenSecretRef,
    child_names,
    label_value,
    scale_quantity,
)
from tuneforge.contracts.jobspec import JobSpec, ProgressChannel
from tuneforge.contracts.status import TERMINAL_STATUSES as TERMINAL
from tuneforge.contracts.status import JobStatus
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.security import hash_secret, new_job_token
from tuneforge.service.db.models import Job
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.executor import Executor
from tuneforge.service.domain.finish import finish_job
from tuneforge.service.domain.lifecycle import add_event, transition
from tuneforge.service.executors.base import run_until_stopped
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)
JSON = dict[str, Any]

MANAGED_BY = MANAGED_BY_SERVICE
REQUEST_TIMEOUT = 15
#: the apiserver ends each watch after this long; the executor re-watches from the last resourceVersion
WATCH_SECONDS = 60
MAX_BACKOFF = 5.0
PROGRESS_PUSH_SECONDS = 2.0
#: CR reasons worth a warning event on a queued job (the user is waiting and should know why)
NOTABLE_REASONS = frozenset({Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACK_OFF, Reason.CONTAINER_CONFIG_ERROR,
                             Reason.WAITING_FOR_ADMISSION, Reason.SUSPENDED, Reason.PREEMPTED, Reason.RETRYING,
                             Reason.JOB_RECREATED})
#: CR failure reasons -> the job's ``error.code``
ERROR_CODES: dict[str, str] = {
    Reason.BAD_INPUT: "invalid_training_file",
    Reason.OOM_KILLED: "out_of_memory",
    Reason.DEADLINE_EXCEEDED: "deadline_exceeded",
    Reason.UNSCHEDULABLE: "unschedulable",
    Reason.IMAGE_PULL_BACK_OFF: "image_pull_error",
    Reason.INVALID_SPEC: "executor_error",
}


def token_secret_name(job_id: str) -> str:
    return child_names(job_id).token_secret


def build_finetunejob(job: Job, settings: ServiceSettings) -> JSON:
    """The FineTuneJob for ``job`` (pure). The JobSpec's progress token is emptied: pods read the Secret."""
    ex = settings.executor
    jobspec = JobSpec.model_validate(job.spec)
    url = jobspec.progress.url if jobspec.progress and jobspec.progress.url else settings.server.base_url
    jobspec = jobspec.model_copy(update={"progress": ProgressChannel(url=url, token="")})
    resources = jobspec.resources
    gpus = resources.gpus or ex.kube_default_gpus
    gpu_type = resources.gpu_type or ex.kube_default_gpu_type or None
    scheduling = Scheduling(
        gpus=gpus,
        nodes=resources.nodes,
        gpu_type=gpu_type,
        node_selector=dict(ex.kube_node_selector) or None,
        tolerations=[dict(t) for t in ex.kube_tolerations] or None,
        queue_name=ex.kube_queue_name or None,
        priority_class_name=ex.kube_priority_class or None,
    )
    per_gpu = ex.kube_gpu_resources.get(gpu_type) if gpu_type else None
    container = None
    if per_gpu and gpus > 0:
        container = ContainerResources(**{k: scale_quantity(str(v), gpus) for k, v in per_gpu.items()})
    spec = FineTuneJobSpec(
        job_spec=jobspec,
        image=ex.kube_image,
        scheduling=scheduling,
        resources=container,
        progress_token_secret=TokenSecretRef(name=token_secret_name(job.id), key=TOKEN_KEY),
        # the cluster retries real failures itself; preemptions are retried without counting
        backoff_limit=max(0, ex.max_attempts - 1),
        storage_secret=ex.kube_storage_secret or None,
        service_account_name=ex.kube_service_account or None,
        image_pull_secrets=[Named(name=n) for n in ex.kube_image_pull_secrets] or None,
        env=[EnvVar(name=str(k), value=str(v)) for k, v in sorted(ex.kube_trainer_env.items())] or None,
    )
    metadata = {
        "name": job.id,
        "namespace": ex.kube_namespace,
        "labels": {LABEL_JOB_ID: label_value(job.id), LABEL_TENANT: label_value(job.tenant_id),
                   LABEL_MANAGED_BY: MANAGED_BY},
    }
    return FineTuneJob(metadata=metadata, spec=spec).dump()


def progress_text(progress: Mapping[str, Any] | None) -> str | None:
    """``120/300 (40%)`` from the job's live progress, or None before the first step."""
    progress = progress or {}
    step, total = progress.get("step"), progress.get("total_steps")
    if not isinstance(step, int):
        return None
    if isinstance(total, int) and total > 0:
        return f"{step}/{total} ({min(100, round(100 * step / total))}%)"
    return f"step {step}"


def load_api_client(kubeconfig: str = "") -> client.ApiClient:
    """``kubeconfig`` when given; else, in a pod, its service account; else ~/.kube/config."""
    if not kubeconfig:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    return client.ApiClient(cfg)


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class KubernetesExecutor(Executor):
    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore,
                 api_client: client.ApiClient | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.namespace = settings.executor.kube_namespace
        self._api_client = api_client
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._cancels: set[str] = set()
        #: job id -> the ``spec.suspend`` to send (the last word: a pause then a resume sends false)
        self._suspends: dict[str, bool] = {}
        #: deleted jobs whose FineTuneJob and token Secret are still to be deleted from the cluster
        self._deletes: set[str] = set()
        self._pushed: dict[str, tuple[Any, ...]] = {}
        self._last_push = 0.0
        self._signatures: dict[str, tuple[Any, ...]] = {}
        #: the watch thread and the submitting control loop both apply FineTuneJob statuses: one at a time
        self._applying = threading.Lock()
        #: set while a watch is open (tests wait on it); ``relists`` counts (re)connections
        self.watching = threading.Event()
        self.relists = 0
        self._response: Any = None
        self.custom: client.CustomObjectsApi | None = None
        self.core: client.CoreV1Api | None = None

    # -- lifecycle --
    def start(self) -> None:
        api = self._api_client or load_api_client(self.settings.executor.kubeconfig)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self._stop.clear()
        for target, name in ((self._loop, "tuneforge-k8s-executor"), (self._watch_loop, "tuneforge-k8s-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop watching; the jobs keep running in the cluster and are picked up again on the next start."""
        self._stop.set()
        self._wake.set()
        response = self._response
        if response is not None:  # unblock the watch thread's read
            with contextlib.suppress(Exception):
                response.shutdown()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()
        self.watching.clear()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancels.add(job_id)
        self._wake.set()

    def pause(self, job_id: str) -> None:
        with self._lock:
            self._suspends[job_id] = True
        self._wake.set()

    def resume(self, job_id: str) -> None:
        with self._lock:
            self._suspends[job_id] = False
        self._wake.set()

    def running_reason(self, job_id: str) -> str | None:
        """Why a pod of the job may still write its objects: its FineTuneJob exists, the operator has handled
        it (it has a phase), and either the phase is not final yet or pods are still stopping
        (``status.activePods``: a cancelled trainer saves a checkpoint while its pod terminates). Also when the
        cluster cannot be asked. The job's own status does not change meanwhile (a cancelled job stays
        ``cancelled``)."""
        if self.custom is None:  # not started
            return None
        unknown = "the cluster cannot be reached to check that the job's pods have stopped"
        try:
            cr: JSON = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, self.namespace, PLURAL, job_id, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            log.warning("cannot look up FineTuneJob %s: %s", job_id, _api_message(exc))
            return unknown
        except Exception as exc:
            log.warning("cannot look up FineTuneJob %s: %s", job_id, exc)
            return unknown
        status = cr.get("status") or {}
        phase = status.get("phase")
        if phase is None:
            return None
        if phase not in TERMINAL_PHASES or int(status.get("activePods") or 0) > 0:
            return "the job's pods are still stopping"
        return None

    def discard(self, job_id: str) -> None:
        """The job was deleted (its row is gone): delete its FineTuneJob and token Secret from the cluster."""
        with self._lock:
            self._deletes.add(job_id)
            self._cancels.discard(job_id)
        self._signatures.pop(job_id, None)
        self._pushed.pop(job_id, None)
        self._wake.set()

    # -- control loop: submit, cancel, mirror progress --
    def _loop(self) -> None:
        run_until_stopped(self.tick, self._stop, self._wake, self.settings.executor.poll_interval_seconds,
                          "kubernetes executor")

    def tick(self) -> None:
        # the cluster is called with no database connection held: read, close, call, then write in a new session
        with self.sessions() as session:
            pending = SystemRepo(session).jobs_with_status(JobStatus.VALIDATING_FILES)
        for job in pending:
            self._submit(job)
        self._send_cancels()
        self._send_suspends()
        self._send_deletes()
        if time.monotonic() - self._last_push >= PROGRESS_PUSH_SECONDS:
            self._last_push = time.monotonic()
            with self.sessions() as session:
                repo = SystemRepo(session)
                pushes = [(job.id, self._progress_status(repo, job))
                          for job in repo.jobs_with_status(JobStatus.RUNNING)]
            for job_id, push in pushes:
                if push is not None:
                    self._send_progress(job_id, *push)

    def _submit(self, job: Job) -> None:
        """Submit one validating job (a detached row: no session is held while the cluster is called)."""
        assert self.custom is not None and self.core is not None
        refs = [job.spec["training_file"], job.spec.get("validation_file")]
        missing = [r["file_id"] for r in refs if r and not self.store.exists(r["key"])]
        if missing:
            self._decide(job.id, JobStatus.FAILED, f"Training file {missing[0]} is no longer available",
                         error={"code": "invalid_training_file", "param": "training_file",
                                "message": f"File {missing[0]} was deleted before the job started."})
            return
        try:
            manifest = build_finetunejob(job, self.settings)
        except ValidationError as exc:
            # a job the FineTuneJob contract refuses would fail every tick (and hold up the jobs behind it)
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            message = f"The job cannot be submitted to the cluster: {where}: {problem['msg']}"
            log.error("%s: %s", job.id, message)
            self._decide(job.id, JobStatus.FAILED, message, error={"code": "executor_error", "message": message})
            return
        try:
            token = self._ensure_token_secret(job)
            try:
                created = self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, manifest, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                created = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, job.id, _request_timeout=REQUEST_TIMEOUT)
            self._own_secret(job.id, cast(JSON, created)["metadata"]["uid"])
        except ApiException as exc:
            if exc.status and 400 <= exc.status < 500 and exc.status not in (401, 403, 408, 409, 429):
                message = f"The cluster rejected the job: {_api_message(exc)}"
                self._decide(job.id, JobStatus.FAILED, message, error={"code": "executor_error", "message": message})
                return
            log.warning("cannot submit %s to Kubernetes yet (%s); will retry", job.id, _api_message(exc))
            return
        except Exception as exc:  # apiserver unreachable: stay validating_files, retry next tick
            log.warning("cannot submit %s to Kubernetes yet (%s); will retry", job.id, exc)
            return
        submitted = f"Submitted to Kubernetes as FineTuneJob {self.namespace}/{job.id}"
        if not self._decide(job.id, JobStatus.QUEUED, submitted, fields={"token_hash": hash_secret(token)}):
            self.cancel(job.id)  # cancelled while it was being submitted: its FineTuneJob must not run
            return
        # The watch ignores a FineTuneJob's status while its job is still validating_files, and the operator can
        # set Queued and Running between the create above and the queued write: read it once more now, or a
        # job whose FineTuneJob changes no further would stay queued until the next relist.
        try:
            current = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, job.id, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # the watch's next relist catches up
            log.warning("cannot read FineTuneJob %s after submitting it (%s)", job.id, _api_message(exc))
            return
        self._handle(cast(JSON, current))

    def _decide(self, job_id: str, status: str, message: str, **kwargs: Any) -> bool:
        """One compare-and-set transition of a job still ``validating_files``, in a short session."""
        with self.sessions() as session:
            job = SystemRepo(session).job(job_id)
            if job is None or job.status != JobStatus.VALIDATING_FILES:
                return False
            return transition(session, job, status, message, **kwargs)

    def _ensure_token_secret(self, job: Job) -> str:
        """Create the job's token Secret; if it exists (a submit interrupted earlier), reuse its token."""
        assert self.core is not None
        name = token_secret_name(job.id)
        token = new_job_token()
        body: Any = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {LABEL_JOB_ID: label_value(job.id), LABEL_MANAGED_BY: MANAGED_BY}},
            "stringData": {TOKEN_KEY: token},
        }
        try:
            self.core.create_namespaced_secret(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
            return token
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.core.read_namespaced_secret(name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        return base64.b64decode((existing.data or {})[TOKEN_KEY]).decode()

    def _own_secret(self, job_id: str, uid: str) -> None:
        """The Secret goes when the FineTuneJob goes (garbage collection through the owner reference)."""
        assert self.core is not None
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": job_id, "uid": uid}
        self.core.patch_namespaced_secret(token_secret_name(job_id), self.namespace,
                                          {"metadata": {"ownerReferences": [owner]}},
                                          _request_timeout=REQUEST_TIMEOUT)

    def _send_cancels(self) -> None:
        assert self.custom is not None
        with self._lock:
            pending = sorted(self._cancels)
        for job_id in pending:
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, job_id, {"spec": {"cancel": True}},
                    _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status not in (404, 422):  # gone already / finished: nothing to cancel
                    log.warning("cannot cancel %s yet: %s", job_id, _api_message(exc))
                    continue
            except Exception as exc:
                log.warning("cannot cancel %s yet: %s", job_id, exc)
                continue
            with self._lock:
                self._cancels.discard(job_id)

    def _send_suspends(self) -> None:
        assert self.custom is not None
        with self._lock:
            pending = dict(self._suspends)
        for job_id, suspend in sorted(pending.items()):
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, job_id, {"spec": {"suspend": suspend}},
                    _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status not in (404, 422):  # never submitted / finished: nothing to suspend
                    log.warning("cannot %s %s yet: %s", "pause" if suspend else "resume", job_id, _api_message(exc))
                    continue
            except Exception as exc:
                log.warning("cannot %s %s yet: %s", "pause" if suspend else "resume", job_id, exc)
                continue
            with self._lock:
                if self._suspends.get(job_id) == suspend:  # a newer word may have come meanwhile
                    del self._suspends[job_id]

    def _send_deletes(self) -> None:
        """Delete the FineTuneJobs (the operator deletes their Job and pods) and token Secrets of deleted jobs.

        The Secret is deleted explicitly: its owner reference to the FineTuneJob is set only once the FineTuneJob
        exists, so a job the cluster rejected (or one cancelled in between) leaves an unowned Secret behind."""
        custom, core = self.custom, self.core
        assert custom is not None and core is not None
        with self._lock:
            pending = sorted(self._deletes)
        for job_id in pending:
            secret = token_secret_name(job_id)
            cr_gone = self._deleted(f"FineTuneJob {job_id}", functools.partial(
                custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, job_id,
                propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT))
            if cr_gone and self._deleted(f"Secret {secret}", functools.partial(
                    core.delete_namespaced_secret, secret, self.namespace, _request_timeout=REQUEST_TIMEOUT)):
                with self._lock:
                    self._deletes.discard(job_id)

    @staticmethod
    def _deleted(what: str, delete: Callable[[], object]) -> bool:
        """Run one delete; True when the object is gone (404 included), False to try again on the next tick."""
        try:
            delete()
        except ApiException as exc:
            if exc.status == 404:
                return True
            if exc.status == 403 and what.startswith("Secret"):  # a Role from before it could delete Secrets
                log.warning("cannot delete %s: %s (an owned one goes with its FineTuneJob)", what, _api_message(exc))
                return True
            log.warning("cannot delete %s yet: %s", what, _api_message(exc))
            return False
        except Exception as exc:
            log.warning("cannot delete %s yet: %s", what, exc)
            return False
        return True

    def _progress_status(self, repo: SystemRepo, job: Job, final: bool = False
                         ) -> tuple[tuple[Any, ...], JSON] | None:
        """What to mirror onto the FineTuneJob's status (and its change key), or None when nothing changed."""
        text = progress_text(job.progress)
        if final:
            total = (job.progress or {}).get("total_steps")
            text = f"{total}/{total} (100%)" if isinstance(total, int) and total > 0 else "done"
        ckpt = repo.latest_checkpoint(job)
        last = None
        if ckpt is not None:
            last = {"step": ckpt.step_number, "prefix": ckpt.prefix,
                    "time": dt.datetime.fromtimestamp(ckpt.created_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        key = (text, last and last["step"])
        if (text is None and last is None) or self._pushed.get(job.id) == key:
            return None
        status: JSON = {"progress": text}
        if last is not None:
            status["lastCheckpoint"] = last
        return key, status

    def _send_progress(self, job_id: str, key: tuple[Any, ...], status: JSON) -> None:
        if self.custom is None:  # not started
            return
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, job_id, {"status": status}, _request_timeout=REQUEST_TIMEOUT)
            self._pushed[job_id] = key
        except Exception as exc:  # cosmetic: retried on the next push
            log.debug("cannot mirror progress of %s: %s", job_id, exc)

    # -- watch: FineTuneJob status -> job status --
    def _watch_loop(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                    backoff = 0.5
                self.watching.set()
                rv = self._watch_once(rv)
            except _Expired:
                rv = None
            except Exception as exc:
                self.watching.clear()
                rv = None
                if self._stop.is_set():
                    break
                log.warning("FineTuneJob watch interrupted (%s); reconnecting in %.1fs", _api_message(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self.watching.clear()

    def _relist(self) -> str:
        assert self.custom is not None
        listing: JSON = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, PLURAL, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
            _request_timeout=REQUEST_TIMEOUT)
        self.relists += 1
        seen = set()
        for cr in listing.get("items") or []:
            seen.add(cr["metadata"]["name"])
            self._handle(cr)
        self._check_vanished(seen)
        return str(listing["metadata"]["resourceVersion"])

    def _check_vanished(self, seen: set[str]) -> None:
        """Jobs whose FineTuneJob disappeared while nobody watched (e.g. deleted while the service was down)."""
        assert self.custom is not None
        with self.sessions() as session:
            active = [j.id for j in SystemRepo(session).jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING,
                                                                           JobStatus.PAUSED)]
        for job_id in active:
            if job_id in seen:
                continue
            try:
                self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job_id,
                                                         _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status == 404:
                    self._handle_deleted(job_id)

    def _watch_once(self, rv: str) -> str:
        """One watch request from ``rv``; returns the last resourceVersion seen when the server ends it."""
        assert self.custom is not None
        resp: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
            resource_version=rv, allow_watch_bookmarks=True, watch=True, timeout_seconds=WATCH_SECONDS,
            _preload_content=False, _request_timeout=(5, WATCH_SECONDS + 15))
        self._response = resp
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if not line or not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                kind = event.get("type")
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "DELETED":
                    self._handle_deleted(obj["metadata"]["name"])
                elif kind in ("ADDED", "MODIFIED"):
                    self._handle(obj)
        finally:
            self._response = None
            resp.release_conn()
        return rv

    def _handle(self, cr: JSON) -> None:
        try:
            with self._applying, self.sessions() as session:
                job = SystemRepo(session).job(cr["metadata"]["name"])
                final = self.apply_status(session, job, cr) if job is not None else None
            if final is not None:  # the cluster is called after the session is closed
                self._send_progress(cr["metadata"]["name"], *final)
        except Exception:
            log.exception("cannot apply the status of FineTuneJob %s", cr["metadata"].get("name"))

    def _handle_deleted(self, job_id: str) -> None:
        with self.sessions() as session:
            job = SystemRepo(session).job(job_id)
            # no row: the job was deleted through the API (discard deleted this FineTuneJob), nothing to mark
            if job is None or job.status in TERMINAL or job.status == JobStatus.VALIDATING_FILES:
                return
            message = f"The FineTuneJob {self.namespace}/{job_id} was deleted from the cluster"
            transition(session, job, JobStatus.FAILED, message,
                       error={"code": "executor_error", "message": message})

    def _signature(self, session: Session, job: Job) -> tuple[Any, ...] | None:
        if job.id not in self._signatures:
            # after a restart: the last cluster state this job's events recorded
            for event in SystemRepo(session).recent_events(job, 50):
                k8s = (event.data or {}).get("kubernetes")
                if isinstance(k8s, dict):
                    self._signatures[job.id] = (k8s.get("phase"), k8s.get("reason"), k8s.get("attempts"))
                    break
        return self._signatures.get(job.id)

    def apply_status(self, session: Session, job: Job, cr: Mapping[str, Any]
                     ) -> tuple[tuple[Any, ...], JSON] | None:
        """Map one FineTuneJob's status onto its job (idempotent: replaying a status changes nothing); returns
        the final progress to mirror onto the FineTuneJob when the job has just succeeded."""
        status = cr.get("status") or {}
        phase = status.get("phase")
        if job.status == JobStatus.VALIDATING_FILES or not phase:
            return None
        if job.status in TERMINAL:
            cancel_sent = bool((cr.get("spec") or {}).get("cancel"))
            if job.status == JobStatus.CANCELLED and phase not in TERMINAL_PHASES and not cancel_sent:
                self.cancel(job.id)  # cancelled while the service could not reach the cluster
            return None
        reason = str(status.get("reason") or phase)
        message = str(status.get("message") or phase)
        attempts = int(status.get("attempts") or 0)
        suspended = bool((cr.get("spec") or {}).get("suspend"))
        if phase not in TERMINAL_PHASES:
            wanted = job.status == JobStatus.PAUSED
            if suspended != wanted:
                with self._lock:  # the user's word did not reach the cluster (yet): say it again
                    self._suspends.setdefault(job.id, wanted)
                self._wake.set()
            if job.status == JobStatus.PAUSED:
                if phase == "Suspended" and self._signatures.get(job.id, (None,))[0] != "Suspended":
                    self._signatures[job.id] = (phase, reason, attempts)
                    add_event(session, job, "Kubernetes: the trainer pod stopped after saving a checkpoint; the job "
                              "is paused until it is resumed", data={"kubernetes": {"phase": phase, "reason": reason,
                                                                                   "attempts": attempts}})
                return None
        signature = (phase, reason, attempts)
        if self._signature(session, job) == signature and phase not in TERMINAL_PHASES:
            return None
        self._signatures[job.id] = signature
        k8s = {"kubernetes": {"phase": phase, "reason": reason, "attempts": attempts}}
        if attempts > job.attempts:
            job.attempts = attempts
            session.commit()

        if phase in ("Pending", "Queued", "Suspended"):
            if job.status == JobStatus.RUNNING:
                transition(session, job, JobStatus.QUEUED, message, level="warn")
                add_event(session, job, f"Kubernetes: {phase} ({reason})", level="info", data=k8s)
            elif reason in NOTABLE_REASONS:
                add_event(session, job, message, level="warn", data=k8s)
        elif phase == "Running":
            if job.status == JobStatus.QUEUED:
                verb = "resumed" if reason == "Resumed" else "started"
                transition(session, job, JobStatus.RUNNING, f"Fine-tuning job {verb}: {message}")
            elif reason in ("Resumed", "Retrying"):
                add_event(session, job, message, level="warn", data=k8s)
        elif phase == "Succeeded":
            self._ensure_running(session, job, message)
            finish_job(session, job, self.store, exit_code=0, cancelled=False,
                       max_attempts=self.settings.executor.max_attempts, fallback_message=None)
            if job.status == JobStatus.SUCCEEDED:
                return self._progress_status(SystemRepo(session), job, final=True)
        elif phase == "Failed":
            exit_code = status.get("exitCode")
            if isinstance(exit_code, int) and exit_code not in (ExitCode.OK, ExitCode.PREEMPTED) \
                    and reason in (Reason.BAD_INPUT, Reason.TRAINER_ERROR):
                # the trainer decided: its own error report (progress channel) is the best message
                self._ensure_running(session, job, message)
                finish_job(session, job, self.store, exit_code=exit_code, cancelled=False,
                           max_attempts=self.settings.executor.max_attempts, fallback_message=message)
            else:
                code = ERROR_CODES.get(reason, "training_error")
                transition(session, job, JobStatus.FAILED, f"Fine-tuning failed: {message}",
                           error={"code": code, "message": message})
        elif phase == "Cancelled":
            transition(session, job, JobStatus.CANCELLED, f"Cancelled in the cluster: {message}")
        return None

    @staticmethod
    def _ensure_running(session: Session, job: Job, message: str) -> None:
        if job.status == JobStatus.QUEUED:  # it ran between two looks at the cluster
            transition(session, job, JobStatus.RUNNING, f"Fine-tuning job started: {message}")


def _api_message(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            return str(json.loads(exc.body or "{}").get("message") or exc.reason)
        except ValueError:
            return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
