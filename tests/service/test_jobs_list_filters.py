"""``GET /v1/fine_tuning/jobs?metadata=…``: anything but a JSON object is a 400 naming the parameter (it was an
``assert``, which ``python -O`` removes)."""

from __future__ import annotations

import httpx
import pytest

from tests.service.helpers import assert_error


@pytest.mark.parametrize("metadata", ["[1]", "null", "3", '"team"', "{not json", "{'team': 'a'}"])
def test_metadata_that_is_not_a_json_object_is_400(client: httpx.Client, metadata: str) -> None:
    error = assert_error(client.get("/v1/fine_tuning/jobs", params={"metadata": metadata}), 400,
                         param="metadata", code="invalid_value")
    assert "JSON object" in error["message"]


def test_an_empty_object_matches_every_job(client: httpx.Client) -> None:
    response = client.get("/v1/fine_tuning/jobs", params={"metadata": "{}"})
    assert response.status_code == 200 and response.json()["data"] == []
