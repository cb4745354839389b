"""Pause and resume in cluster mode, on the real control plane with the operator: ``spec.suspend`` stops the
pod and keeps the job ``paused``; resuming starts a new pod and the job runs again; a cancel wins over both."""

from __future__ import annotations

import pytest

from tests.operator.test_cluster_executor import get_cr, messages, pods_of, running_pod, submit
from tests.support.live_server import wait_for_status
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("running_operator", "gpu_pool")


def test_pause_suspends_the_pod_and_resume_starts_a_new_one(make_service, core, custom, namespace):
    server = make_service()
    client, job = submit(server)
    job_id = job["id"]
    first = running_pod(core, namespace, job_id)
    wait_for_status(client, job_id, {"running"}, timeout=30)

    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    wait_for("spec.suspend true", lambda: get_cr(custom, namespace, job_id)["spec"].get("suspend") is True, 20)
    wait_for("the pod deleted", lambda: not [p for p in pods_of(core, namespace, job_id)
                                             if not p.metadata.deletion_timestamp], 40)
    wait_for("the Suspended phase", lambda: get_cr(custom, namespace, job_id)["status"]["phase"] == "Suspended", 30)
    wait_for("the paused event", lambda: "stopped after saving a checkpoint" in messages(client, job_id), 20)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "paused"

    resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    wait_for("spec.suspend false", lambda: get_cr(custom, namespace, job_id)["spec"].get("suspend") is False, 20)
    second = running_pod(core, namespace, job_id, exclude=frozenset({first.metadata.name}), timeout=40)
    assert second.metadata.name != first.metadata.name
    wait_for_status(client, job_id, {"running"}, timeout=30)


def test_pause_then_cancel_ends_cancelled(make_service, core, custom, namespace):
    server = make_service()
    client, job = submit(server)
    job_id = job["id"]
    running_pod(core, namespace, job_id)
    wait_for_status(client, job_id, {"running"}, timeout=30)
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["status"] == "paused"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").status_code == 409
    wait_for("the Cancelled phase", lambda: get_cr(custom, namespace, job_id)["status"]["phase"] == "Cancelled", 40)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
