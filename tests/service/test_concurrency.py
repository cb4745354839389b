"""Many clients at once, on loopback and bounded: creates with and without ``Idempotency-Key`` make exactly the
right jobs and never a 5xx (issue 13: concurrent creates with one key answered 500 on the unique constraint, and
the same key with another body silently returned the first job)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, assert_error, chat_file, upload
from tests.support.live_server import ThreadServer

pytestmark = [pytest.mark.timeout(300), pytest.mark.limits(max_active_jobs_per_tenant=1000)]

CONCURRENT = 200


async def _create_all(server: ThreadServer, bodies: list[tuple[dict[str, Any], str | None]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=httpx.Timeout(120),
                                 headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        start = asyncio.Event()

        async def one(body: dict[str, Any], key: str | None) -> httpx.Response:
            await start.wait()  # every request is ready before the first is sent
            return await client.post("/v1/fine_tuning/jobs", json=body,
                                      headers={"Idempotency-Key": key} if key else None)

        tasks = [asyncio.create_task(one(body, key)) for body, key in bodies]
        await asyncio.sleep(0.1)
        start.set()
        return list(await asyncio.gather(*tasks))


def _all_jobs(client: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.get("/v1/fine_tuning/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
        jobs += page["data"]
        if not page["has_more"]:
            return jobs
        after = page["last_id"]


def test_one_key_sent_by_many_at_once_answers_one_job(api_server: ThreadServer, client: httpx.Client) -> None:
    file_id = upload(client, chat_file())["id"]
    body = {"model": BASE_MODEL, "training_file": file_id, "suffix": "once"}
    responses = asyncio.run(_create_all(api_server, [(body, "the-one-key")] * 50))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200][:3]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(_all_jobs(client)) == 1


def test_the_same_key_with_another_body_is_a_conflict(client: httpx.Client) -> None:
    file_id = upload(client, chat_file())["id"]
    body = {"model": BASE_MODEL, "training_file": file_id, "seed": 1}
    first = client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 200
    # the same request again (an explicit null is the same request): the same job
    again = client.post("/v1/fine_tuning/jobs", json={**body, "suffix": None}, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/fine_tuning/jobs", json={**body, "seed": 2}, headers={"Idempotency-Key": "k-1"})
    error = assert_error(other, 409, code="idempotency_key_reused", param="Idempotency-Key")
    assert "k-1" in error["message"] and first.json()["id"] in error["message"]
    assert "different request" in error["message"]
    assert len(_all_jobs(client)) == 1


def test_concurrent_different_bodies_with_one_key_make_one_job_and_conflicts(api_server: ThreadServer,
                                                                            client: httpx.Client) -> None:
    file_id = upload(client, chat_file())["id"]
    bodies: list[tuple[dict[str, Any], str | None]] = [
        ({"model": BASE_MODEL, "training_file": file_id, "seed": i % 2}, "contested") for i in range(40)]
    responses = asyncio.run(_create_all(api_server, bodies))
    assert {r.status_code for r in responses} <= {200, 409}, {r.status_code for r in responses}
    winners = {r.json()["id"] for r in responses if r.status_code == 200}
    assert len(winners) == 1
    seed = client.get(f"/v1/fine_tuning/jobs/{next(iter(winners))}").json()["seed"]
    # exactly the requests with the winner's body got it; the others a 409 naming it
    for (body, _), response in zip(bodies, responses, strict=True):
        assert response.status_code == (200 if body["seed"] == seed else 409), response.text
    assert len(_all_jobs(client)) == 1
