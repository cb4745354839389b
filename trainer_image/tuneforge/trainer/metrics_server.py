"""The trainer's own Prometheus endpoint, for in-cluster scraping of trainer pods.

Off unless ``TUNEFORGE_TRAINER_METRICS_PORT`` is set. Then ``GET /metrics`` on that port (address
``TUNEFORGE_TRAINER_METRICS_ADDR``, default 127.0.0.1; set ``0.0.0.0`` in a pod) serves the text exposition
format: the latest step, losses, learning rate and tokens/s the trainer reported, the process's resident
memory, and, on CUDA, memory and utilisation per GPU. Every series carries ``job_id``.

Standard library only (``http.server``): no web framework in the trainer. A port that is taken (two
trainers on one machine) is reported on stderr and training goes on without the endpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

ENV_PORT = "TUNEFORGE_TRAINER_METRICS_PORT"
ENV_ADDR = "TUNEFORGE_TRAINER_METRICS_ADDR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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
#: how far back to look for the latest value of each key
SCAN_ROWS = 2000


class _HasMetricsRows(Protocol):
    metrics_rows: list[dict[str, Any]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None


class TrainerMetrics:
    """Renders the exposition text from the reporter's metrics rows, read at scrape time."""

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

    def render(self) -> str:
        job = f'job_id="{_escape(self.job_id)}"'
        out: list[str] = []

        def gauge(name: str, help_: str, samples: list[tuple[str, float]]) -> None:
            if not samples:
                return
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} gauge")
            out.extend(f"{name}{{{labels}}} {value!r}" for labels, value in samples)

        latest = self.latest()
        for key, name, help_ in PROGRESS_GAUGES:
            if key in latest:
                gauge(name, help_, [(job, latest[key])])
        gauge(
            "tuneforge_trainer_uptime_seconds",
            "Seconds since the trainer started",
            [(job, round(time.time() - self.started, 3))],
        )
        rss = _resident_bytes()
        if rss is not None:
            gauge(
                "tuneforge_trainer_process_resident_memory_bytes",
                "Resident memory of the trainer process",
                [(job, float(rss))],
            )
        for name, help_, samples in _cuda_samples(job):
            gauge(name, help_, samples)
        return "\n".join(out) + "\n"


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cuda_samples(job: str) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """CUDA memory and utilisation per GPU, only when the trainer already uses CUDA (never imports torch)."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return []
        allocated, reserved, peak, total, util = [], [], [], [], []
        for i in range(torch.cuda.device_count()):
            labels = f'{job},gpu="{i}"'
            allocated.append((labels, float(torch.cuda.memory_allocated(i))))
            reserved.append((labels, float(torch.cuda.memory_reserved(i))))
            peak.append((labels, float(torch.cuda.max_memory_allocated(i))))
            total.append((labels, float(torch.cuda.get_device_properties(i).total_memory)))
            with contextlib.suppress(Exception):  # needs NVML (nvidia-ml-py); absent → no utilisation series
                util.append((labels, float(torch.cuda.utilization(i)) / 100.0))
    except Exception:
        return []
    return [
        ("tuneforge_trainer_cuda_memory_allocated_bytes", "CUDA memory held by tensors", allocated),
        ("tuneforge_trainer_cuda_memory_reserved_bytes", "CUDA memory reserved by the caching allocator", reserved),
        ("tuneforge_trainer_cuda_memory_peak_bytes", "Peak CUDA memory held by tensors", peak),
        ("tuneforge_trainer_cuda_memory_total_bytes", "Total memory of the GPU", total),
        ("tuneforge_trainer_cuda_utilization_ratio", "GPU utilisation over the last sample period, 0..1", util),
    ]


class MetricsServer:
    def __init__(self, metrics: TrainerMetrics, host: str, port: int) -> None:
        render = metrics.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = render().encode()
                except Exception as exc:  # a scrape must never break training
                    self.send_error(500, explain=type(exc).__name__)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="trainer-metrics", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_from_env(job_id: str, reporter: _HasMetricsRows) -> MetricsServer | None:
    """Start the endpoint when ``TUNEFORGE_TRAINER_METRICS_PORT`` is set; never raises."""
    raw = os.environ.get(ENV_PORT, "").strip()
    if not raw:
        return None
    host = os.environ.get(ENV_ADDR, "").strip() or "127.0.0.1"
    try:
        server = MetricsServer(TrainerMetrics(job_id, reporter), host, int(raw))
    except (OSError, ValueError) as exc:
        print(f"tuneforge: trainer metrics endpoint not started on {host}:{raw}: {exc}", file=sys.stderr)
        return None
    print(f"tuneforge: trainer metrics on http://{host}:{server.port}/metrics", file=sys.stderr)
    return server
