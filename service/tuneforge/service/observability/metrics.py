"""Metric definitions.

Two kinds of metrics:

* request metrics, updated by the HTTP middleware as requests are served, in :attr:`ServiceMetrics.registry`;
* fleet metrics, read from the database at scrape time by :class:`FleetCollector`. The database is the
  source of truth, so these are right after a restart and with several replicas, and the per-job series
  of a job disappear by construction once it stops running (its ``job_id`` label is then never exported
  again: the only unbounded label value, bounded in practice by the number of *running* jobs).

A scrape costs a few small queries whatever the size of the jobs table: the jobs that have not ended (bounded by
quotas, found through the status index) and ``job_usage``, the per-tenant totals of finished jobs that the ending
transition maintains. Nothing reads every job.

Fleet metrics come in two parts: the fleet-wide ones (jobs by status and method, the queue) for anyone who can
reach ``/metrics``, and the ones that name organizations and jobs (``tuneforge_tenant_*``, the per-job
``tuneforge_job_*``) only for a scrape with the metrics token.

Every label is bounded: ``route`` is the route template (``/v1/fine_tuning/jobs/{job_id}``), never the raw
path; ``status`` and ``method`` come from fixed sets; ``tenant`` from the set of tenants with API keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.orm import Session

from tuneforge.contracts.methods import METHOD_TYPES
from tuneforge.contracts.status import TERMINAL_STATUSES, JobStatus
from tuneforge.service.db.repo import SystemRepo
from tuneforge.service.domain.usage import gpu_count, method_type

JOB_STATUSES = tuple(JobStatus)
METHODS = METHOD_TYPES

#: job.progress key → (metric suffix, help). Exported per running job, labelled by job_id/tenant/method.
JOB_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("step", "step", "Optimizer steps done"),
    ("total_steps", "total_steps", "Optimizer steps planned"),
    ("epoch", "epoch", "Epochs done (fractional)"),
    ("train_loss", "train_loss", "Latest training loss"),
    ("valid_loss", "valid_loss", "Latest validation loss"),
    ("learning_rate", "learning_rate", "Current learning rate"),
    ("tokens_per_second", "tokens_per_second", "Training throughput in tokens per second"),
    ("eta_seconds", "eta_seconds", "Estimated seconds until training ends"),
    ("trained_tokens", "trained_tokens", "Tokens trained on so far"),
    ("gpu_memory_bytes", "gpu_memory_bytes", "Peak accelerator memory of the trainer (CUDA only)"),
    ("mfu", "mfu", "Model FLOPs utilisation, 0..1 (CUDA only)"),
    ("mean_reward", "mean_reward", "Mean reward (reinforcement jobs)"),
    ("kl", "kl", "KL divergence to the reference model per response (PPO)"),
    ("kl_coef", "kl_coef", "KL penalty coefficient beta (PPO)"),
    ("policy_loss", "policy_loss", "Clipped policy loss (PPO)"),
    ("value_loss", "value_loss", "Clipped value loss of the critic (PPO)"),
    ("value_explained_variance", "value_explained_variance", "Variance of the returns the critic explains (PPO)"),
)

#: request latency buckets (seconds): API calls are fast; uploads and downloads are not
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class FleetCollector:
    """The fleet's metrics, read from the database at every scrape: a few small queries in ONE session (each
    session is a pool checkout and, on PostgreSQL, a pre-ping round trip)."""

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]],
                 clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.clock = clock

    def families(self, *, private: bool) -> list[Metric]:
        """Everything, or (``private=False``) only what names no organization and no job."""
        with self.sessions() as session:
            repo = SystemRepo(session)
            unfinished = repo.unfinished_jobs()
            finished = repo.finished_usage()
            running = repo.running_progress() if private else []
            eval_runs = repo.eval_runs_by_status()
            campaigns = repo.feedback_campaigns_by_status()
        now = self.clock()
        out = [*self._fleet(unfinished, finished, now),
               _by_status("tuneforge_eval_runs", "Eval runs by status", EVAL_RUN_STATUSES, eval_runs),
               _by_status("tuneforge_feedback_campaigns", "Feedback campaigns by status", FEEDBACK_CAMPAIGN_STATUSES,
                          campaigns)]
        if private:
            out += self._running_jobs(running, now) + self._tenants(unfinished, finished, now)
        return out

    @staticmethod
    def _fleet(unfinished: list[tuple[str, str, Any, Any, int, int | None]],
               finished: list[tuple[str, str, str, int, int, int]], now: float) -> list[Metric]:
        counts: dict[tuple[str, str], int] = {(s, m): 0 for s in JOB_STATUSES for m in METHODS}
        for _, status, method, _, _, _ in unfinished:
            key = (status, method_type(method))
            counts[key] = counts.get(key, 0) + 1
        for _, status, method, n, _, _ in finished:
            counts[(status, method)] = counts.get((status, method), 0) + n

        jobs = GaugeMetricFamily("tuneforge_jobs", "Jobs by status and method (terminal statuses: every job that "
                                 "reached it, deleted ones included)", labels=["status", "method"])
        created = CounterMetricFamily("tuneforge_jobs_created", "Jobs created, by method", labels=["method"])
        ended = CounterMetricFamily("tuneforge_jobs_finished", "Jobs that reached a terminal status",
                                    labels=["status", "method"])
        by_method: dict[str, int] = {}
        for (status, method), n in sorted(counts.items()):
            jobs.add_metric([status, method], n)
            by_method[method] = by_method.get(method, 0) + n
            if status in TERMINAL_STATUSES:
                ended.add_metric([status, method], n)
        for method, n in sorted(by_method.items()):
            created.add_metric([method], n)

        queued = [created_at for _, status, _, _, created_at, _ in unfinished if status == JobStatus.QUEUED]
        depth = GaugeMetricFamily("tuneforge_queue_depth", "Jobs waiting for a trainer slot (status queued)")
        depth.add_metric([], len(queued))
        oldest = GaugeMetricFamily("tuneforge_queue_oldest_age_seconds",
                                   "Age of the oldest queued job (0 when the queue is empty)")
        oldest.add_metric([], max(0.0, now - min(queued)) if queued else 0.0)
        return [jobs, created, ended, depth, oldest]

    @staticmethod
    def _running_jobs(running: list[tuple[str, str, Any, dict[str, Any], int | None]], now: float) -> list[Metric]:
        labels = ["job_id", "tenant", "method"]
        families = {
            key: GaugeMetricFamily(f"tuneforge_job_{suffix}", help_, labels=labels)
            for key, suffix, help_ in JOB_GAUGES
        }
        seconds = GaugeMetricFamily("tuneforge_job_running_seconds", "Seconds since the running job started",
                                    labels=labels)
        ratio = GaugeMetricFamily("tuneforge_job_progress_ratio", "step / total_steps of the running job, 0..1",
                                  labels=labels)
        for job_id, tenant, method, progress, started_at in running:
            values = [job_id, tenant, method_type(method)]
            for key, family in families.items():
                if _finite(progress.get(key)):
                    family.add_metric(values, float(progress[key]))
            if started_at:
                seconds.add_metric(values, max(0.0, now - started_at))
            step, total = progress.get("step"), progress.get("total_steps")
            ratio.add_metric(values, min(1.0, step / total) if _finite(step) and _finite(total) and total else 0.0)
        return [*families.values(), seconds, ratio]

    @staticmethod
    def _tenants(unfinished: list[tuple[str, str, Any, Any, int, int | None]],
                 finished: list[tuple[str, str, str, int, int, int]], now: float) -> list[Metric]:
        created = CounterMetricFamily("tuneforge_tenant_jobs", "Jobs created per tenant", labels=["tenant"])
        active = GaugeMetricFamily("tuneforge_tenant_active_jobs",
                                   "Jobs validating, queued or running per tenant", labels=["tenant"])
        job_seconds = CounterMetricFamily(
            "tuneforge_tenant_job_seconds", "Wall-clock seconds of training per tenant (from first start to end)",
            labels=["tenant"])
        gpu_seconds = CounterMetricFamily(
            "tuneforge_tenant_gpu_seconds", "GPU-seconds per tenant: training seconds x GPUs requested",
            labels=["tenant"])
        per: dict[str, list[float]] = {}
        for tenant, _, _, n, done_seconds, done_gpu in finished:
            acc = per.setdefault(tenant, [0.0, 0.0, 0.0, 0.0])
            acc[0] += n
            acc[2] += done_seconds
            acc[3] += done_gpu
        for tenant, _, _, resources, _, started_at in unfinished:
            acc = per.setdefault(tenant, [0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += 1
            if started_at:
                running = max(0.0, now - started_at)
                acc[2] += running
                acc[3] += running * gpu_count(resources)
        for tenant, (total, n_active, total_seconds, total_gpu) in sorted(per.items()):
            created.add_metric([tenant], total)
            active.add_metric([tenant], n_active)
            job_seconds.add_metric([tenant], total_seconds)
            gpu_seconds.add_metric([tenant], total_gpu)
        return [created, active, job_seconds, gpu_seconds]


class _Families:
    """Metric families in the shape ``generate_latest`` encodes (anything with ``collect``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class ServiceMetrics:
    """All metrics of one app, in their own registry."""

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]] | None = None) -> None:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "tuneforge_http_requests", "API requests by route template, HTTP method and status code",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "tuneforge_http_request_duration_seconds",
            "Time to the response's first byte, by route template, HTTP method and status code "
            "(for event streams: the time to open the stream)",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("tuneforge_http_requests_in_flight", "Requests being served (streams included)",
                               registry=self.registry)
        self.streams = Gauge("tuneforge_event_streams_open", "Open server-sent event streams",
                             registry=self.registry)
        self.serving = ServingMetrics(self.registry)
        self.evals = EvalMetrics(self.registry)
        self.feedback = FeedbackMetrics(self.registry)
        self.fleet = FleetCollector(sessions) if sessions is not None else None

    def exposition(self, *, private: bool) -> bytes:
        """The text exposition of a scrape: request metrics, then the fleet's (private: every part of them)."""
        from prometheus_client import generate_latest

        text = generate_latest(self.registry)
        if self.fleet is not None:
            text += generate_latest(_Families(self.fleet.families(private=private)))
        return text


#: time to the first token of a completion (seconds): engine starts make the slow tail
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServingMetrics:
    """Completions per base model (the label stays bounded: tuned models are counted under their base)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["base_model", "route", "status"]
        self.requests = Counter("tuneforge_serving_requests", "Completion requests by base model, route (chat or "
                                "text) and status", labels, registry=registry)
        self.ttft = Histogram("tuneforge_serving_time_to_first_token_seconds", "Time from the request to the "
                              "first token (to the whole answer when not streaming)", ["base_model", "route"],
                              buckets=TTFT_BUCKETS, registry=registry)
        self.output_tokens = Counter("tuneforge_serving_output_tokens", "Tokens generated, by base model",
                                     ["base_model"], registry=registry)
        self.generation_seconds = Counter("tuneforge_serving_generation_seconds", "Seconds spent answering "
                                          "(output tokens / this = tokens per second)", ["base_model"],
                                          registry=registry)
        self.engine_events = Counter("tuneforge_serving_engine_events", "Engine starts, stops, crashes, failed "
                                     "starts, cut streams and adapter loads", ["base_model", "event"],
                                     registry=registry)
        self.in_flight = Gauge("tuneforge_serving_requests_in_flight", "Completions being answered (queued in "
                               "an engine or generating)", ["base_model"], registry=registry)
        self.engines = Gauge("tuneforge_serving_engines", "Engine processes running", registry=registry)
        self.loaded_adapters = Gauge("tuneforge_serving_loaded_adapters", "Adapters loaded in running engines",
                                     ["base_model"], registry=registry)


#: an eval run's statuses, each reported (zero included) so dashboards see every series
EVAL_RUN_STATUSES = ("queued", "in_progress", "completed", "canceled", "failed")


class EvalMetrics:
    """Eval items graded, by outcome, and grader errors, by grader type (counted by the service's runner)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter("tuneforge_eval_items_graded", "Eval run items graded, by status (pass, fail, error)",
                             ["status"], registry=registry)
        self.grader_errors = Counter("tuneforge_eval_grader_errors", "Testing criteria that could not grade an "
                                     "item (a judge's reply that is not a grade, a missing item field), by grader "
                                     "type", ["grader"], registry=registry)
        for status in ("pass", "fail", "error"):
            self.items.labels(status)
        # every grader type's series exists from the start (at 0), so the dashboard's rate shows a flat line
        for grader in ("string_check", "regex", "text_similarity", "score_model", "label_model", "multi",
                       "reward_model"):
            self.grader_errors.labels(grader)

    def item(self, status: str, errored_graders: list[str]) -> None:
        self.items.labels(status).inc()
        for grader in errored_graders:
            self.grader_errors.labels(grader).inc()


def _by_status(name: str, documentation: str, statuses: Iterable[str], rows: Iterable[tuple[str, int]]
               ) -> GaugeMetricFamily:
    """A gauge of counts by status, every known status shown (zero included)."""
    counts = dict.fromkeys(statuses, 0) | dict(rows)
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status, n in sorted(counts.items()):
        family.add_metric([status], n)
    return family


#: a feedback campaign's statuses, each reported (zero included)
FEEDBACK_CAMPAIGN_STATUSES = ("pending", "sampling", "collecting", "completed", "cancelled", "failed")


class FeedbackMetrics:
    """Feedback campaigns' sampling and labels (counted by the sampler and the rating route)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter("tuneforge_feedback_samples", "Answers asked of the models for feedback campaigns, "
                               "by outcome (ok, error)", ["outcome"], registry=registry)
        self.prompts = Counter("tuneforge_feedback_prompts_sampled", "Prompts of feedback campaigns answered and "
                               "stored as items", registry=registry)
        self.labels = Counter("tuneforge_feedback_labels", "Labels submitted by raters, by campaign kind (a "
                              "resubmission counts again)", ["kind"], registry=registry)
        for outcome in ("ok", "error"):
            self.samples.labels(outcome)
        for kind in ("score", "pairwise", "ranking", "ab"):
            self.labels.labels(kind)

    def sample(self, outcome: str) -> None:
        self.samples.labels(outcome).inc()

    def prompt(self) -> None:
        self.prompts.inc()

    def label(self, kind: str) -> None:
        self.labels.labels(kind).inc()
