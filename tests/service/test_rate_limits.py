"""Requests per minute per API key: OpenAI's x-ratelimit-* headers on every response, 429 + Retry-After past it."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.service.helpers import add_tenant, assert_error, chat_file
from tests.support.live_server import ThreadServer
from tuneforge.service.api.rate_limit import openai_duration

DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")


@pytest.mark.limits(requests_per_minute=5)
def test_headers_count_down_then_429_with_retry_after(api_server: ThreadServer) -> None:
    with api_server.client() as client:
        seen = []
        for _ in range(5):
            response = client.get("/v1/files")
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-requests"] == "5"
            assert DURATION.match(response.headers["x-ratelimit-reset-requests"]), response.headers
            seen.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert seen == [4, 3, 2, 1, 0]
        refused = client.get("/v1/files")
        error = assert_error(refused, 429, code="rate_limit_exceeded")
        assert error["type"] == "rate_limit_error" and "5 requests per minute" in error["message"]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "5"
        # every kind of request counts, a write and an error included
        assert_error(client.post("/v1/files", files={"file": ("a.jsonl", chat_file())}), 429)
        assert_error(client.get("/v1/fine_tuning/jobs/ftjob-missing"), 429)


@pytest.mark.limits(requests_per_minute=3)
def test_the_limit_is_per_key(api_server: ThreadServer) -> None:
    with api_server.client() as first, add_tenant(api_server, "default", "tf-second-key-of-default-0123456789",
                                                  "member") as second:
        for _ in range(3):
            assert first.get("/v1/models").status_code == 200
        assert_error(first.get("/v1/models"), 429)
        assert second.get("/v1/models").status_code == 200
        assert second.get("/v1/models").headers["x-ratelimit-remaining-requests"] == "1"


def test_no_limit_no_headers_and_an_organization_can_get_its_own(api_server: ThreadServer) -> None:
    with api_server.client() as admin:
        response = admin.get("/v1/files")
        assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers
        admin.post("/v1/organizations", json={"id": "tight", "limits": {"requests_per_minute": 2}})
        key = admin.post("/v1/organizations/tight/api_keys", json={"role": "member"}).json()["value"]
        with api_server.client(key) as tight:
            assert tight.get("/v1/files").headers["x-ratelimit-limit-requests"] == "2"
            tight.get("/v1/files")
            assert_error(tight.get("/v1/files"), 429)
        assert admin.get("/v1/files").status_code == 200  # the operator's organization has no limit


@pytest.mark.limits(requests_per_minute=2)
def test_requests_without_a_valid_key_are_not_counted_against_it(api_server: ThreadServer) -> None:
    for _ in range(5):
        assert httpx.get(f"{api_server.url}/v1/files", headers={"Authorization": "Bearer tf-wrong"}).status_code == 401
    with api_server.client() as client:
        assert client.get("/v1/files").headers["x-ratelimit-remaining-requests"] == "1"


@pytest.mark.parametrize("seconds,text", [(0.0123, "13ms"), (0.999, "999ms"), (1.5, "1.5s"), (59.0, "59s"),
                                          (60, "1m0s"), (359.2, "6m0s"), (-1, "0ms")])
def test_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text
