"""Webhooks: endpoints per organization through ``/v1/webhooks``, job events delivered to a real receiver on
loopback, signed as Standard Webhooks says (checked with the official `openai` client's ``webhooks.unwrap``),
retried with back-off, and every attempt visible through the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error, chat_file, create_job, update_job, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port, wait_for


class Receiver:
    """A webhook receiver on loopback that answers ``fail_first`` requests with 500, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 500 if len(receiver.received) < receiver.fail_first else 200
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try later")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(tmp_path) -> Iterator[ThreadServer]:  # type: ignore[no-untyped-def]
    groups = {"webhooks": {"webhook_allow_private_urls": True, "webhook_backoff_seconds": 0.2,
                           "webhook_max_attempts": 3, "webhook_poll_interval_seconds": 0.1}}
    srv = ThreadServer(make_settings(tmp_path / "home", free_port(), groups=groups), start_executor=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ThreadServer) -> httpx.Client:
    return server.client()


def _endpoint(client: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/webhooks", json={"url": url, **body})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _deliveries(client: httpx.Client, endpoint_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def test_endpoint_crud_and_the_secret_is_shown_once(client: httpx.Client) -> None:
    created = _endpoint(client, "https://hooks.example.com/tuneforge", description="ops")
    assert created["secret"].startswith("whsec_") and created["events"] == [
        "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
    got = client.get(f"/v1/webhooks/{created['id']}").json()
    assert got["secret"] is None and got["url"] == created["url"]
    assert [e["id"] for e in client.get("/v1/webhooks").json()["data"]] == [created["id"]]
    updated = client.post(f"/v1/webhooks/{created['id']}", json={"enabled": False,
                                                                  "events": ["fine_tuning.job.paused"]}).json()
    assert updated["enabled"] is False and updated["events"] == ["fine_tuning.job.paused"]
    assert updated["secret"] is None
    assert client.delete(f"/v1/webhooks/{created['id']}").json() == {"id": created["id"],
                                                                     "object": "webhook_endpoint", "deleted": True}
    assert_error(client.get(f"/v1/webhooks/{created['id']}"), 404)


@pytest.mark.parametrize(("body", "param"), [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "https://user:pw@example.com/x"}, "url"),
    ({"url": "https://example.com/x", "events": ["fine_tuning.job.exploded"]}, "events"),
    ({"url": "https://example.com/x", "events": []}, "events"),
    ({"url": "https://example.com/x", "secret": "mine"}, "secret"),
    ({}, "url"),
])
def test_bad_endpoints_are_refused(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_error(client.post("/v1/webhooks", json=body), 400, param=param)


def test_private_addresses_are_refused_unless_the_deployment_allows_them(api_server: ThreadServer) -> None:
    client = api_server.client()  # the default settings: public addresses only
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.0.0.1/x", "http://[::1]/x",
                "http://169.254.169.254/latest"):
        assert_error(client.post("/v1/webhooks", json={"url": url}), 400, param="url")


def test_another_organizations_endpoints_are_missing(server: ThreadServer, client: httpx.Client) -> None:
    mine = _endpoint(client, "https://hooks.example.com/a")
    other = add_tenant(server, "org-other", "tf-other-key")
    assert other.get("/v1/webhooks").json()["data"] == []
    for method, path in (("GET", ""), ("POST", ""), ("DELETE", ""), ("GET", "/deliveries")):
        foreign = other.request(method, f"/v1/webhooks/{mine['id']}{path}", json={} if method == "POST" else None)
        missing = other.request(method, f"/v1/webhooks/wh-000000000000000000000000{path}",
                                json={} if method == "POST" else None)
        assert_error(foreign, 404)
        assert foreign.content == missing.content.replace(b"wh-000000000000000000000000", mine["id"].encode())
    assert client.get(f"/v1/webhooks/{mine['id']}").status_code == 200


def test_job_events_are_signed_and_delivered(server: ThreadServer, client: httpx.Client) -> None:
    import openai

    receiver = Receiver()
    try:
        endpoint = _endpoint(client, receiver.url, events=["fine_tuning.job.cancelled", "fine_tuning.job.paused",
                                                           "fine_tuning.job.resumed"])
        other = add_tenant(server, "org-other", "tf-other-key")  # its jobs never reach this endpoint
        other_job = create_job(other, upload(other, chat_file())["id"])
        other.post(f"/v1/fine_tuning/jobs/{other_job['id']}/cancel")

        job = create_job(client, upload(client, chat_file())["id"])
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        wait_for("three deliveries", lambda: len(receiver.received) >= 3, 30)

        unwrapper = openai.OpenAI(api_key="unused", webhook_secret=endpoint["secret"])
        kinds = []
        for headers, body, _ in receiver.received:
            event = unwrapper.webhooks.unwrap(body, headers)  # raises unless the signature is right
            payload = json.loads(body)
            assert payload["data"] == {"id": job["id"]} and payload["object"] == "event"
            assert headers["webhook-id"] == payload["id"]
            kinds.append(payload["type"])
            if payload["type"] == "fine_tuning.job.cancelled":
                assert event.type == "fine_tuning.job.cancelled" and event.data.id == job["id"]
        assert kinds == ["fine_tuning.job.paused", "fine_tuning.job.resumed", "fine_tuning.job.cancelled"]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            openai.OpenAI(api_key="unused", webhook_secret="whsec_" + "A" * 32).webhooks.unwrap(
                receiver.received[0][1], receiver.received[0][0])

        deliveries = _deliveries(client, endpoint["id"])
        assert {d["status"] for d in deliveries} == {"succeeded"} and len(deliveries) == 3
        assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 200 for d in deliveries)
    finally:
        receiver.close()


def test_a_failing_receiver_is_retried_until_it_recovers(server: ThreadServer, client: httpx.Client) -> None:
    receiver = Receiver(fail_first=2)
    try:
        endpoint = _endpoint(client, receiver.url)
        job = create_job(client, upload(client, chat_file())["id"])
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        (delivery,) = wait_for("the delivery to succeed", lambda: [
            d for d in _deliveries(client, endpoint["id"]) if d["status"] == "succeeded"], 30)
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
        assert "HTTP 500" in delivery["attempts"][0]["error"]
        # the same event id every time: a receiver can drop duplicates
        assert len({h["webhook-id"] for h, _, _ in receiver.received}) == 1
        assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3]
    finally:
        receiver.close()


def test_a_receiver_that_is_down_for_good_fails_after_the_last_attempt(server: ThreadServer,
                                                                        client: httpx.Client) -> None:
    endpoint = _endpoint(client, f"http://127.0.0.1:{free_port()}/nobody-listens")
    job = create_job(client, upload(client, chat_file())["id"])
    update_job(server, job["id"], status="running")
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    (delivery,) = wait_for("the delivery to fail", lambda: [
        d for d in _deliveries(client, endpoint["id"]) if d["status"] == "failed"], 30)
    assert len(delivery["attempts"]) == 3 and all(a["status_code"] is None for a in delivery["attempts"])
    assert "ConnectError" in delivery["attempts"][-1]["error"]
    assert delivery["finished_at"] is not None and delivery["next_attempt_at"] is None


def test_disabled_and_unsubscribed_endpoints_get_nothing(server: ThreadServer, client: httpx.Client) -> None:
    receiver = Receiver()
    try:
        disabled = _endpoint(client, receiver.url)
        client.post(f"/v1/webhooks/{disabled['id']}", json={"enabled": False})
        unsubscribed = _endpoint(client, receiver.url, events=["fine_tuning.job.succeeded"])
        job = create_job(client, upload(client, chat_file())["id"])
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        assert _deliveries(client, disabled["id"]) == [] and _deliveries(client, unsubscribed["id"]) == []
    finally:
        receiver.close()
    assert receiver.received == []


def test_retry_delays_grow_exponentially_up_to_the_cap() -> None:
    import random

    from tuneforge.service.core.config import WebhookSettings
    from tuneforge.service.domain.webhook_sender import retry_delay

    settings = WebhookSettings(webhook_backoff_seconds=10, webhook_max_backoff_seconds=300)
    rng = random.Random(0)
    for attempt, nominal in ((1, 10), (2, 20), (3, 40), (4, 80)):
        assert 0.8 * nominal <= retry_delay(attempt, settings, rng) <= 1.2 * nominal
    assert retry_delay(20, settings, rng) == 300
