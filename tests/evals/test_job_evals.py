"""A job's evals (base vs tuned) without a model: what a job may name and how it is refused, the report before the
job succeeds, tenancy, and a run whose client-written metadata points at someone's job.

The runs themselves (base and tuned generating through the engine, then compared) are in test_evals_engine.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.helpers import BASE_MODEL, add_tenant, assert_error, chat_file, create_job, update_job, upload
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port, wait_for
from tuneforge.service.db.models import now

OTHER_KEY = "tf-other-tenant-key-for-job-evals"
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"]}
CRITERIA = [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"}]
SOURCE = {"type": "file_content", "content": [{"item": {"question": "capital of France?", "answer": "Paris"}},
                                              {"item": {"question": "two plus two?", "answer": "4"}}]}
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
DATA_SOURCE = {"source": SOURCE, "input_messages": TEMPLATE, "sampling_params": {"max_completion_tokens": 8}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    srv = ThreadServer(make_settings(tmp_path_factory.mktemp("job-evals") / "home", free_port()),
                       start_executor=False).start()
    add_tenant(srv, "acme", OTHER_KEY).close()
    yield srv
    srv.stop()


def _eval(client: httpx.Client) -> str:
    resp = client.post("/v1/evals", json={"name": "qa", "data_source_config": {"type": "custom", "item_schema": SCHEMA},
                                          "testing_criteria": CRITERIA})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _create(client: httpx.Client, file_id: str, evals: Any) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", json={"model": BASE_MODEL, "training_file": file_id, "evals": evals})


def test_a_job_names_its_evals_and_sees_them_pending(server: ThreadServer) -> None:
    with server.client() as client:
        eval_id = _eval(client)
        file_id = upload(client, chat_file())["id"]
        job = create_job(client, file_id, evals=[{"eval_id": eval_id, "data_source": DATA_SOURCE}])
        assert job["evals"] == [{"type": "eval", "eval_id": eval_id, "base_run_id": None, "tuned_run_id": None,
                                 "error": None}]
        report = client.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report").json()
        assert report["object"] == "fine_tuning.job.eval_report" and report["fine_tuning_job_id"] == job["id"]
        assert [(e["eval_id"], e["base_run"], e["tuned_run"], e["comparison"]) for e in report["evals"]] == [
            (eval_id, None, None, None)]
        # a job without evals: no entry in its object, an empty report
        plain = create_job(client, file_id)
        assert plain["evals"] is None
        assert client.get(f"/v1/fine_tuning/jobs/{plain['id']}/eval_report").json()["evals"] == []
        # the eval's id alone takes the data source of its latest completions run: none yet, so it is refused
        assert_error(_create(client, file_id, [eval_id]), 400, param="evals.0")


@pytest.mark.parametrize(("evals", "param", "words"), [
    ([{"eval_id": "eval_" + "0" * 32, "data_source": DATA_SOURCE}], "evals.0.eval_id", "eval"),
    (["eval_" + "0" * 32], "evals.0.eval_id", "eval"),
    ([{"eval_id": "EVAL", "data_source": {**DATA_SOURCE, "model": "gpt-4o"}}], "evals.0.data_source.model",
     "sets the model"),
    ([{"eval_id": "EVAL", "data_source": {**DATA_SOURCE, "type": "jsonl"}}], "evals.0.data_source.type",
     "completions"),
    ([{"eval_id": "EVAL", "data_source": {**DATA_SOURCE, "input_messages": {
        "type": "template", "template": [{"role": "user", "content": "{{item.missing}}"}]}}}],
     "evals.0.data_source.input_messages.template.0.content", "missing"),
    ([{"eval_id": "EVAL", "data_source": {**DATA_SOURCE, "source": {"type": "file_content", "content": [
        {"item": {"question": "no answer"}}]}}}], "evals.0.data_source.source", "answer"),
    ([{"eval_id": "EVAL", "data_source": DATA_SOURCE}, {"eval_id": "EVAL", "data_source": DATA_SOURCE}],
     "evals.1", "twice"),
    ([{"eval_id": "EVAL", "data_source": DATA_SOURCE}] * 6, "evals", "at most 5"),
    ([{"eval_id": "EVAL", "data_source": DATA_SOURCE, "run_now": True}], "evals.0", "run_now"),
])
def test_bad_evals_refuse_the_job(server: ThreadServer, evals: list[Any], param: str, words: str) -> None:
    with server.client() as client:
        eval_id = _eval(client)
        file_id = upload(client, chat_file())["id"]
        before = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        named = [e.replace("EVAL", eval_id) if isinstance(e, str) else {**e, "eval_id": e["eval_id"].replace(
            "EVAL", eval_id)} for e in evals]
        resp = _create(client, file_id, named)
        error = assert_error(resp, 400 if "0" * 32 not in str(evals) else 404)
        assert error["param"] is not None and error["param"].startswith(param), (error, param)
        assert words.lower() in resp.text.lower(), resp.text
        # and the estimate refuses it the same way; nothing was created
        assert client.post("/v1/fine_tuning/jobs/estimate", json={
            "model": BASE_MODEL, "training_file": file_id, "evals": named}).status_code == resp.status_code
        assert client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"] == before


def test_another_tenants_eval_and_report_do_not_exist(server: ThreadServer) -> None:
    with server.client() as mine, server.client(OTHER_KEY) as theirs:
        my_eval = _eval(mine)
        job = create_job(mine, upload(mine, chat_file())["id"], evals=[{"eval_id": my_eval,
                                                                         "data_source": DATA_SOURCE}])
        # naming my eval in their job: as unknown as an eval that never existed
        their_file = upload(theirs, chat_file())["id"]
        fake = "eval_" + "0" * 32
        foreign = _create(theirs, their_file, [{"eval_id": my_eval, "data_source": DATA_SOURCE}])
        unknown = _create(theirs, their_file, [{"eval_id": fake, "data_source": DATA_SOURCE}])
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.content == unknown.content.replace(fake.encode(), my_eval.encode())
        # my job's report: a 404 for them, byte-identical to an unknown job's
        fake_job = "ftjob-" + "0" * 24
        foreign = theirs.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report")
        unknown = theirs.get(f"/v1/fine_tuning/jobs/{fake_job}/eval_report")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.content == unknown.content.replace(fake_job.encode(), job["id"].encode())


def test_a_run_whose_metadata_names_a_job_does_not_write_to_it(server: ThreadServer) -> None:
    """A run's metadata is the client's: naming someone's job (or one's own job that did not ask for this eval)
    in ``fine_tuning_job_id`` adds no event to that job and no run to its report."""
    with server.client() as mine, server.client(OTHER_KEY) as theirs:
        my_job = create_job(mine, upload(mine, chat_file())["id"])
        their_eval = _eval(theirs)
        own_eval = _eval(mine)
        runs = []
        for client, eval_id in ((theirs, their_eval), (mine, own_eval)):
            resp = client.post(f"/v1/evals/{eval_id}/runs", json={
                "metadata": {"fine_tuning_job_id": my_job["id"], "compared_as": "tuned"},
                "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [
                    {"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}}]}}})
            assert resp.status_code == 200, resp.text
            runs.append((client, eval_id, resp.json()["id"]))
        for client, eval_id, run_id in runs:
            wait_for("the run to complete", lambda c=client, e=eval_id, r=run_id: c.get(
                f"/v1/evals/{e}/runs/{r}").json()["status"] == "completed", timeout=60, interval=0.1)
        events = mine.get(f"/v1/fine_tuning/jobs/{my_job['id']}/events", params={"limit": 100}).json()["data"]
        assert not [e for e in events if "Eval run" in e["message"]], events
        assert mine.get(f"/v1/fine_tuning/jobs/{my_job['id']}/eval_report").json()["evals"] == []


def test_a_failed_or_cancelled_job_runs_no_evals(server: ThreadServer) -> None:
    with server.client() as client:
        eval_id = _eval(client)
        file_id = upload(client, chat_file())["id"]
        cancelled = create_job(client, file_id, evals=[{"eval_id": eval_id, "data_source": DATA_SOURCE}])
        assert client.post(f"/v1/fine_tuning/jobs/{cancelled['id']}/cancel").status_code == 200
        failed = create_job(client, file_id, evals=[{"eval_id": eval_id, "data_source": DATA_SOURCE}])
        update_job(server, failed["id"], status="failed", finished_at=now())
        # one pass of the runner (as its loop makes every few seconds) starts nothing for them
        assert server.state.evals.start_pending_job_evals() == []
        assert client.get(f"/v1/evals/{eval_id}/runs").json()["data"] == []
        for job in (cancelled, failed):
            shown = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["evals"]
            assert shown == [{"type": "eval", "eval_id": eval_id, "base_run_id": None, "tuned_run_id": None,
                              "error": None}]


def test_a_deleted_eval_is_the_reports_error_not_a_crash(server: ThreadServer) -> None:
    with server.client() as client:
        eval_id = _eval(client)
        job = create_job(client, upload(client, chat_file())["id"], evals=[{"eval_id": eval_id,
                                                                           "data_source": DATA_SOURCE}])
        assert client.delete(f"/v1/evals/{eval_id}").status_code == 200
        report = client.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report")
        assert report.status_code == 200
        assert report.json()["evals"][0]["error"] == "the eval was deleted"
        # the job succeeds later: its runs cannot be made; the entry says why, and the job says so in an event
        update_job(server, job["id"], status="succeeded", fine_tuned_model=f"ft:{BASE_MODEL}:default::{job['id']}",
                   finished_at=now())
        server.state.evals.wake_threadsafe()
        shown = wait_for("the entry's error", lambda: (client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()[
            "evals"][0]["error"] or None), timeout=30, interval=0.1)
        assert "eval" in shown.lower() and eval_id in shown
        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        assert any(e["level"] == "warn" and eval_id in e["message"] for e in events), events


def _preference_file(n: int = 3) -> bytes:
    rows = [{"input": {"messages": [{"role": "user", "content": f"question {i}"}]},
             "preferred_output": [{"role": "assistant", "content": f"good answer {i}"}],
             "non_preferred_output": [{"role": "assistant", "content": f"bad answer {i}"}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_job_can_build_its_eval_from_its_validation_file(server: ThreadServer) -> None:
    """``"validation_file"`` (or the object form) is checked at creation and waits, with no eval yet, until the
    job succeeds; the report names it."""
    with server.client() as client:
        train = upload(client, chat_file())["id"]
        valid = upload(client, chat_file(5), "valid.jsonl")["id"]
        for form in ("validation_file", {"type": "validation_file", "max_items": 2,
                                         "sampling_params": {"max_completion_tokens": 16}}):
            job = create_job(client, train, validation_file=valid, evals=[form])
            assert job["evals"] == [{"type": "validation_file", "eval_id": None, "base_run_id": None,
                                     "tuned_run_id": None, "error": None}]
            report = client.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report").json()["evals"]
            assert [(e["type"], e["eval_id"], e["base_run"], e["comparison"]) for e in report] == [
                ("validation_file", None, None, None)]
            assert valid in report[0]["eval_name"]
        # next to an eval named by id; a preference (DPO) job's validation file works the same way
        eval_id = _eval(client)
        pairs = upload(client, _preference_file(), "pairs.jsonl")["id"]
        job = create_job(client, pairs, validation_file=pairs, method={"type": "dpo"},
                         evals=["validation_file", {"eval_id": eval_id, "data_source": DATA_SOURCE}])
        assert [(e["type"], e["eval_id"]) for e in job["evals"]] == [("validation_file", None), ("eval", eval_id)]


@pytest.mark.parametrize(("body", "evals", "param", "words"), [
    ({}, ["validation_file"], "evals.0.type", "validation_file"),  # the job has none
    ({"validation_file": "VALID"}, ["validation_file", "validation_file"], "evals.1", "twice"),
    ({"validation_file": "VALID"}, [{"type": "validation_file", "max_items": 0}], "evals.0.max_items", "1"),
    ({"validation_file": "VALID"}, [{"type": "validation_file", "eval_id": "x"}], "evals.0.eval_id", "eval_id"),
    ({"validation_file": "VALID"}, [{"type": "eval"}], "evals.0.eval_id", "missing"),
    ({"validation_file": "VALID"}, [{"eval_id": "eval_x", "max_items": 3}], "evals.0.max_items", "validation_file"),
    ({"validation_file": "VALID"}, [{"type": "validation_files"}], "evals.0.type", "validation_file"),
    ({"validation_file": "VALID"}, [{"type": "validation_file", "sampling_params": {"temperature": 5}}],
     "evals.0.data_source.sampling_params.temperature", "2"),
    ({"validation_file": "PAIRS", "training_file": "PAIRS", "method": {"type": "reward_model"}},
     ["validation_file"], "evals.0.type", "reward_model"),
])
def test_bad_validation_file_evals_refuse_the_job(server: ThreadServer, body: dict[str, Any], evals: list[Any],
                                                  param: str, words: str) -> None:
    with server.client() as client:
        files = {"TRAIN": upload(client, chat_file())["id"], "VALID": upload(client, chat_file(2), "v.jsonl")["id"],
                 "PAIRS": upload(client, _preference_file(), "pairs.jsonl")["id"]}
        request = {"model": BASE_MODEL, "training_file": files["TRAIN"], "evals": evals,
                   **{k: files.get(v, v) if isinstance(v, str) else v for k, v in body.items()}}
        before = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        resp = client.post("/v1/fine_tuning/jobs", json=request)
        error = assert_error(resp, 400)
        assert error["param"] == param, (error, param)
        assert words.lower() in resp.text.lower(), resp.text
        assert client.post("/v1/fine_tuning/jobs/estimate", json=request).status_code == 400
        assert client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"] == before
