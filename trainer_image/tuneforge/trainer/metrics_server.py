"""The trainer's own Prometheus endpoint, for in-cluster scraping of trainer pods.

Off unless ``TUNEFORGE_TRAINER_METRICS_PORT`` is set. Then ``GET /metrics`` on that port (address
``TUNEFORGE_TRAINER_METRICS_ADDR``, default 127.0.0.1; set ``0.0.0.0`` in a pod) serves the latest step,
losses, learning rate and tokens/s the trainer reported, the process's resident memory, and, on CUDA,
memory and utilisation per GPU. Every series carries ``job_id``.

prometheus-client renders the exposition (and negotiates OpenMetrics with Prometheus): a custom collector
reads the reporter's latest values at scrape time, in a registry of its own, served by prometheus-client's
WSGI app on the standard library's WSGI server (no web framework in the trainer). prometheus-client is
imported only when the endpoint starts. A port that is taken (two trainers on one machine) is reported on
stderr and training goes on without the endpoint.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client.core import Metric

ENV_PORT = "TUNEFORGE_TRAINER_METRICS_PORT"
ENV_ADDR = "TUNEFORGE_TRAINER_METRICS_ADDR"
PATH = "/metrics"

#: progress key → (metric name, help)
PROGRESS_GAUGES = (
    ("step", "tuneforge_trainer_step", "Optimizer steps done"),
    ("total_steps", "tuneforge_trainer_total_steps", "Optimizer steps planned"),
    ("epoch", "tuneforge_trainer_epoch", "Epochs done (fractional)"),
    ("train_loss", "tuneforge_trainer_train_loss", "Latest training loss"),
    ("valid_loss", "tuneforge_trainer_valid_loss", "Latest validation loss"),
    ("learning_rate", "tuneforge_trainer_learning_rate", "Current learning rate"),
    ("tokens_per_second", "tuneforge_trainer_tokens_per_second", "Training tokens per second"),
    ("eta_seconds", "tuneforge_trainer_eta_seconds", "Estimated seconds until training ends"),
    ("trained_tokens", "tuneforge_trainer_trained_tokens", "Tokens trained on so far"),
    ("mfu", "tuneforge_trainer_mfu", "Model FLOPs utilisation, 0..1"),
    ("mean_reward", "tuneforge_trainer_mean_reward", "Mean reward (reinforcement jobs)"),
    ("kl", "tuneforge_trainer_kl", "KL divergence to the reference model per response (PPO)"),
    ("kl_coef", "tuneforge_trainer_kl_coef", "KL penalty coefficient beta (PPO)"),
    ("policy_loss", "tuneforge_trainer_policy_loss", "Clipped policy loss (PPO)"),
    ("value_loss", "tuneforge_trainer_value_loss", "Clipped value loss of the critic (PPO)"),
)
#: per-GPU gauges: (name, help, value of device i from torch.cuda)
CUDA_GAUGES: tuple[tuple[str, str, Callable[[Any, int], float]], ...] = (
    ("tuneforge_trainer_cuda_memory_allocated_bytes", "CUDA memory held by tensors",
     lambda cuda, i: cuda.memory_allocated(i)),
    ("tuneforge_trainer_cuda_memory_reserved_bytes", "CUDA memory reserved by the caching allocator",
     lambda cuda, i: cuda.memory_reserved(i)),
    ("tuneforge_trainer_cuda_memory_peak_bytes", "Peak CUDA memory held by tensors",
     lambda cuda, i: cuda.max_memory_allocated(i)),
    ("tuneforge_trainer_cuda_memory_total_bytes", "Total memory of the GPU",
     lambda cuda, i: cuda.get_device_properties(i).total_memory),
    # needs NVML (nvidia-ml-py); without it the series is left out
    ("tuneforge_trainer_cuda_utilization_ratio", "GPU utilisation over the last sample period, 0..1",
     lambda cuda, i: cuda.utilization(i) / 100.0),
)
#: how far back to look for the latest value of each key
SCAN_ROWS = 2000


class _HasMetricsRows(Protocol):
    metrics_rows: list[dict[str, Any]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


class TrainerCollector:
    """A prometheus-client collector: the reporter's latest values, read at scrape time."""

    def __init__(self, job_id: str, reporter: _HasMetricsRows) -> None:
        self.job_id = job_id
        self.reporter = reporter
        self.started = time.time()

    def latest(self) -> dict[str, float]:
        wanted = {key for key, _, _ in PROGRESS_GAUGES}
        found: dict[str, float] = {}
        rows = list(self.reporter.metrics_rows[-SCAN_ROWS:])
        for row in reversed(rows):
            for key in wanted - found.keys():
                number = _number(row.get(key))
                if number is not None:
                    found[key] = number
            if len(found) == len(wanted):
                break
        return found

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_, labels=["job_id"])
            family.add_metric([self.job_id], value)
            return family

        latest = self.latest()
        for key, name, help_ in PROGRESS_GAUGES:
            if key in latest:
                yield gauge(name, help_, latest[key])
        yield gauge("tuneforge_trainer_uptime_seconds", "Seconds since the trainer started",
                    round(time.time() - self.started, 3))
        rss = _resident_bytes()
        if rss is not None:
            yield gauge("tuneforge_trainer_process_resident_memory_bytes", "Resident memory of the trainer process",
                        float(rss))
        yield from _cuda_families(self.job_id)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cuda_families(job_id: str) -> Iterable[Metric]:
    """CUDA memory and utilisation per GPU, only when the trainer already uses CUDA (never imports torch)."""
    from prometheus_client.core import GaugeMetricFamily

    torch: Any = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return []
        devices = range(torch.cuda.device_count())
    except Exception:
        return []
    families = []
    for name, help_, read in CUDA_GAUGES:
        family = GaugeMetricFamily(name, help_, labels=["job_id", "gpu"])
        for i in devices:
            try:
                family.add_metric([job_id, str(i)], float(read(torch.cuda, i)))
            except Exception:  # e.g. no NVML for utilisation: that series is left out
                continue
        if family.samples:
            families.append(family)
    return families


class MetricsServer:
    """prometheus-client's WSGI app for one registry on a threaded WSGI server; other paths are 404."""

    def __init__(self, collector: TrainerCollector, host: str, port: int) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != PATH:
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [f"not found; metrics are at {PATH}\n".encode()]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # scrapes must not flood the job log
                pass

        self.httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=QuietHandler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="trainer-metrics", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_from_env(job_id: str, reporter: _HasMetricsRows) -> MetricsServer | None:
    """Start the endpoint when ``TUNEFORGE_TRAINER_METRICS_PORT`` is set; never raises (training goes on)."""
    from pydantic import ValidationError

    from tuneforge.trainer.settings import TrainerSettings

    try:
        settings = TrainerSettings()
    except ValidationError as exc:
        print(f"tuneforge: trainer metrics endpoint not started: {exc.errors()[0].get('msg')}", file=sys.stderr)
        return None
    if settings.trainer_metrics_port is None:
        return None
    host, raw = settings.trainer_metrics_addr or "127.0.0.1", settings.trainer_metrics_port
    try:
        server = MetricsServer(TrainerCollector(job_id, reporter), host, int(raw))
    except (OSError, ValueError, OverflowError) as exc:
        print(f"tuneforge: trainer metrics endpoint not started on {host}:{raw}: {exc}", file=sys.stderr)
        return None
    print(f"tuneforge: trainer metrics on http://{host}:{server.port}{PATH}", file=sys.stderr)
    return server
