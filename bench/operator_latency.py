"""Operator latency: time from FineTuneJob creation to its trainer pod's creation (and to Running) on the
real test control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok; tests/support/k8s_testbed.py).

    .venv/bin/python bench/operator_latency.py                 # 50 jobs, one every 0.5 s
    .venv/bin/python bench/operator_latency.py --jobs 50 --burst   # all 50 at once
    .venv/bin/python bench/operator_latency.py --json out.json

Clock: this process's monotonic clock, from just before the create request to the first watch event that
shows the operator's Job, the pod (pod ADDED), and the pod with phase Running (kwok runs a bound pod at once, so that
adds the scheduler's binding). The operator runs as a subprocess exactly as in the tests
(``python -m tuneforge.operator --standalone``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client as k8s  # noqa: E402
from kubernetes import watch  # noqa: E402
from kubernetes.config import new_client_from_config  # noqa: E402
from tests.operator.helpers import (  # noqa: E402
    GPU_LABEL,
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    finetunejob,
    install_crds,
)
from tests.support.k8s_testbed import K8sTestbed  # noqa: E402

NAMESPACE = "tfop-bench"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p90_ms": round(percentile(values, 90) * 1000, 1), "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "mean_ms": round(statistics.fmean(values) * 1000, 1)}


class JobWatcher(threading.Thread):
    """When each FineTuneJob's batch/v1 Job appeared (the operator's share of the latency)."""

    def __init__(self, batch: k8s.BatchV1Api) -> None:
        super().__init__(daemon=True)
        self.batch = batch
        self.created: dict[str, float] = {}
        self.ready = threading.Event()
        self._watch = watch.Watch()

    def run(self) -> None:
        rv = self.batch.list_namespaced_job(NAMESPACE).metadata.resource_version
        self.ready.set()
        try:
            for event in self._watch.stream(self.batch.list_namespaced_job, NAMESPACE, resource_version=rv,
                                            timeout_seconds=600):
                self.created.setdefault(event["object"].metadata.name, time.monotonic())
        except Exception:
            pass

    def stop(self) -> None:
        self._watch.stop()


class PodWatcher(threading.Thread):
    def __init__(self, core: k8s.CoreV1Api) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.ready = threading.Event()
        self._watch = watch.Watch()

    def run(self) -> None:
        rv = self.core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        self.ready.set()
        try:
            for event in self._watch.stream(self.core.list_namespaced_pod, NAMESPACE, resource_version=rv,
                                            label_selector="tuneforge.dev/finetunejob", timeout_seconds=600):
                now = time.monotonic()
                pod = event["object"]
                owner = pod.metadata.labels["tuneforge.dev/finetunejob"]
                self.created.setdefault(owner, now)
                if pod.status.phase == "Running":
                    self.running.setdefault(owner, now)
        except Exception:  # the control plane stops at the end of the run
            pass

    def stop(self) -> None:
        self._watch.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between creations (sequential mode)")
    parser.add_argument("--burst", action="store_true", help="create all FineTuneJobs at once")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    tb = K8sTestbed(K8sTestbed.build())
    tb.start()
    operator = None
    try:
        api = new_client_from_config(config_file=str(tb.kubeconfig_path))
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        install_crds(api)
        tb.add_gpu_node("bench-gpu-0", gpus=max(64, args.jobs), labels={GPU_LABEL: "h100"}, pods=500)
        tb.create_namespace(NAMESPACE)
        log = Path(tempfile.mkdtemp(prefix="tuneforge-bench-")) / "operator.log"
        operator = OperatorProcess(tb.kubeconfig_path, log, namespace=NAMESPACE).start()
        # warm-up: the first FineTuneJob pays for the operator's first API calls and the CRD's storage init
        watcher, jobs = PodWatcher(core), JobWatcher(k8s.BatchV1Api(api))
        watcher.start()
        jobs.start()
        watcher.ready.wait(30)
        jobs.ready.wait(30)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, finetunejob("warmup"))
        deadline = time.monotonic() + 60
        while "warmup" not in watcher.running and time.monotonic() < deadline:
            time.sleep(0.05)

        started: dict[str, float] = {}
        for i in range(args.jobs):
            name = f"bench-{i:03d}"
            started[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, finetunejob(name))
            if not args.burst:
                time.sleep(args.interval)
        deadline = time.monotonic() + 120
        while len([n for n in started if n in watcher.running]) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.1)
        watcher.stop()
        jobs.stop()

        to_job = [jobs.created[n] - t for n, t in started.items() if n in jobs.created]
        to_pod = [watcher.created[n] - t for n, t in started.items() if n in watcher.created]
        to_running = [watcher.running[n] - t for n, t in started.items() if n in watcher.running]
        result: dict[str, Any] = {
            "jobs": args.jobs, "mode": "burst" if args.burst else f"sequential, one every {args.interval}s",
            "cr_to_job_created": summary(to_job), "cr_to_pod_created": summary(to_pod),
            "cr_to_pod_running": summary(to_running),
            "missing": sorted(set(started) - set(watcher.running)),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if not result["missing"] else 1
    finally:
        if operator is not None:
            operator.stop()
        tb.stop()


if __name__ == "__main__":
    raise SystemExit(main())
