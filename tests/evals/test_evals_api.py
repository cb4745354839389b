"""The Evals API without a model (jsonl runs: the answers are in the rows) through the official `openai` client
and raw HTTP: shapes, counts, paging, tenancy, bad input, cancel and delete races, and the graders endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.service.helpers import add_tenant, assert_error, jsonl, upload_raw
from tests.support.live_server import ThreadServer, make_settings
from tests.support.waiting import free_port, wait_for

OTHER_KEY = "tf-other-tenant-key-for-evals-tests"
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"]}
CRITERIA = [
    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "operation": "eq"},
    {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": "rouge_l", "pass_threshold": 0.5},
]
ROWS = [  # answer, output: exact passes, rouge passes
    ("Paris", "paris"),  # both
    ("the cat sat on the mat", "the cat sat on a mat"),  # rouge only (5/6)
    ("42", "I do not know"),  # neither
    ("blue whale", "Blue whale."),  # both (eq normalises case and the final dot)
    ("seven", "seven"),  # both
]


def _content(rows: list[tuple[str, str]] = ROWS) -> list[dict[str, Any]]:
    return [{"item": {"question": f"q{i}", "answer": a}, "sample": {"output_text": o}} for i, (a, o) in enumerate(rows)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    home = tmp_path_factory.mktemp("evals") / "home"
    srv = ThreadServer(make_settings(home, free_port()), start_executor=False).start()
    add_tenant(srv, "acme", OTHER_KEY).close()
    yield srv
    srv.stop()


def _client(server: ThreadServer, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or server.api_key, max_retries=0, timeout=120)


def _eval(client: openai.OpenAI, criteria: list[dict[str, Any]] = CRITERIA) -> Any:
    return client.evals.create(name="qa", data_source_config={"type": "custom", "item_schema": SCHEMA,
                                                              "include_sample_schema": True},
                               testing_criteria=criteria, metadata={"team": "search"})  # type: ignore[arg-type]


def _finished(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 120) -> Any:
    def done() -> Any:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        return run if run.status in ("completed", "failed", "canceled") else None
    return wait_for(f"run {run_id} to finish", done, timeout=timeout, interval=0.1)


def test_a_jsonl_run_through_the_openai_client(server: ThreadServer) -> None:
    client = _client(server)
    created = _eval(client)
    assert created.object == "eval" and created.id.startswith("eval_") and created.metadata == {"team": "search"}
    assert created.data_source_config.schema_["properties"]["item"] == SCHEMA  # type: ignore[union-attr]
    assert [c.name for c in created.testing_criteria] == ["exact", "rouge"]
    assert client.evals.retrieve(created.id).name == "qa"

    run = client.evals.runs.create(created.id, name="answers",
                                   data_source={"type": "jsonl", "source": {"type": "file_content",
                                                                            "content": _content()}})
    assert run.object == "eval.run" and run.status in ("queued", "in_progress", "completed")
    done = _finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed,
            done.result_counts.errored) == (5, 3, 2, 0)
    per = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"exact": (3, 2), "rouge": (4, 1)}

    # output items, paged two at a time, in order
    first = client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=2)
    assert len(first.data) == 2 and first.has_more
    # every page, two at a time (items are listed in the order they were graded)
    items = sorted(client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=2),
                   key=lambda i: i.datasource_item_id)
    assert [i.datasource_item_id for i in items] == [0, 1, 2, 3, 4]
    second = items[1]
    assert second.status == "fail" and second.datasource_item["answer"] == "the cat sat on the mat"
    scores = {r.name: r.score for r in second.results}
    assert scores["exact"] == 0.0 and scores["rouge"] == pytest.approx(5 / 6)
    one = client.evals.runs.output_items.retrieve(second.id, eval_id=created.id, run_id=run.id)
    assert one.id == second.id
    failing = client.evals.runs.output_items.list(run.id, eval_id=created.id, status="fail")
    assert sorted(i.datasource_item_id for i in failing) == [1, 2]
    assert [r.id for r in client.evals.runs.list(created.id)] == [run.id]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tuneforge_eval_runs{status="completed"}' in metrics
    graded = 'tuneforge_eval_items_graded_total{status="pass"}'
    passed = next(line for line in metrics.splitlines() if line.startswith(graded))
    assert float(passed.split()[-1]) >= 3


def test_a_run_from_an_uploaded_file_and_its_line_numbers(server: ThreadServer) -> None:
    client = _client(server)
    created = _eval(client)
    with server.client() as http:
        good = upload_raw(http, jsonl(_content()[:2]), "rows.jsonl", purpose="evals")
        assert good.status_code == 200, good.text
        assert good.json()["purpose"] == "evals" and good.json()["rows"] == 2
        # line 2's answer is a number, line 3 lacks 'answer' (a blank line 4 is skipped)
        rows = [{"item": {"question": "a", "answer": "b"}}, {"item": {"question": "a", "answer": 3}},
                {"item": {"question": "a"}}]
        bad = upload_raw(http, jsonl(rows).replace(b"}}\n", b"}}\n\n", 1) + b"", "bad.jsonl", purpose="evals")
        assert bad.status_code == 200, bad.text
        not_json = upload_raw(http, b'{"item": {}}\nnot json\n', "broken.jsonl", purpose="evals")
        error = assert_error(not_json, 400, param="file")
        assert error["details"][0]["line"] == 2
    run = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
        "type": "file_id", "id": good.json()["id"]}})
    done = _finished(client, created.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 2
    with server.client() as http:
        resp = http.post(f"/v1/evals/{created.id}/runs", json={"data_source": {
            "type": "jsonl", "source": {"type": "file_id", "id": bad.json()["id"]}}})
    error = assert_error(resp, 400, param="data_source.source", code="invalid_file_format")
    # every row lacks the sample's answer; line 3's item has a number, line 4's lacks 'answer'
    assert [d["line"] for d in error["details"]] == [1, 3, 3, 4, 4]
    assert "line 3: item.answer: 3 is not of type 'string'" in error["message"]
    assert "line 4: item: 'answer' is a required property" in error["message"]


@pytest.mark.parametrize("criteria,param,reason", [
    ([{"type": "nope", "name": "x"}], "testing_criteria.0.type", "'nope' is not one of"),
    ([{"type": "python", "name": "x", "source": "def grade(s, i): return 1"}], "testing_criteria.0", "no sandbox"),
    ([{"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "{{item.answr}}",
       "operation": "eq"}], "testing_criteria.0", "has no field 'answr'"),
    ([{"type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
       "operation": "startswith"}], "testing_criteria.0.operation", "'ilike'"),
    ([{"type": "text_similarity", "name": "x", "reference": "{{item.answer}}", "evaluation_metric": "cosine",
       "pass_threshold": 1}], "testing_criteria.0.evaluation_metric", "embedding model"),
    ([{"type": "score_model", "name": "x", "model": "no-such-model",
       "input": [{"role": "user", "content": "{{sample.output_text}}"}]}], "testing_criteria.0.model",
     "no-such-model"),
    ([CRITERIA[0], CRITERIA[0]], "testing_criteria.1.name", "another testing criterion"),
    ([], "testing_criteria", "at least 1"),
])
def test_bad_evals_are_refused_at_creation(server: ThreadServer, criteria: Any, param: str, reason: str) -> None:
    with server.client() as http:
        resp = http.post("/v1/evals", json={"data_source_config": {"type": "custom", "item_schema": SCHEMA},
                                            "testing_criteria": criteria})
    error = assert_error(resp, 404 if "no-such-model" in reason else 400, param=param)
    assert reason in error["message"], error


def test_bad_runs_are_refused_at_creation(server: ThreadServer) -> None:
    client = _client(server)
    created = _eval(client)
    completions = {"type": "completions", "model": "SmolLM2-135M-Instruct",
                   "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]},
                   "input_messages": {"type": "template",
                                      "template": [{"role": "user", "content": "{{item.question}}"}]}}
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({**completions, "model": "no-such-model"}, 404, "data_source.model", "no-such-model"),
        ({**completions, "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{item.questoin}}"}]}}, 400, "data_source.input_messages.template.0.content",
         "has no field 'questoin'"),
        ({**completions, "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{sample.output_text}}"}]}}, 400,
         "data_source.input_messages.template.0.content", "unknown template reference"),
        ({**completions, "source": {"type": "file_content", "content": [{"item": {"question": 1}}]}}, 400,
         "data_source.source", "item 0: item: 'answer' is a required property"),
        ({**completions, "source": {"type": "file_id", "id": "file-nope"}}, 404, "data_source.source.id", "file-nope"),
        ({"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"question": "q", "answer": "a"}}]}},
         400, "data_source.source", "sample.output_text"),
        ({"type": "logs"}, 400, "data_source.type", "'logs' is not one of"),
    ]
    with server.client() as http:
        for data_source, status, param, reason in cases:
            resp = http.post(f"/v1/evals/{created.id}/runs", json={"data_source": data_source})
            error = assert_error(resp, status, param=param)
            assert reason in error["message"], (data_source, error)
        assert http.get(f"/v1/evals/{created.id}/runs").json()["data"] == []


def test_another_tenants_evals_do_not_exist(server: ThreadServer) -> None:
    client = _client(server)
    created = _eval(client)
    run = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": _content()}})
    _finished(client, created.id, run.id)
    item = client.evals.runs.output_items.list(run.id, eval_id=created.id).data[0]
    with server.client() as mine, server.client(OTHER_KEY) as theirs:
        paths = [f"/v1/evals/{created.id}", f"/v1/evals/{created.id}/runs", f"/v1/evals/{created.id}/runs/{run.id}",
                 f"/v1/evals/{created.id}/runs/{run.id}/output_items",
                 f"/v1/evals/{created.id}/runs/{run.id}/output_items/{item.id}"]
        fake = "eval_" + "0" * 32
        for path in paths:
            foreign = theirs.get(path)
            unknown = mine.get(path.replace(created.id, fake))
            assert foreign.status_code == unknown.status_code == 404, path
            assert foreign.content == unknown.content.replace(fake.encode(), created.id.encode()), path
        # their own eval with my run's id in it: the run is as missing as an unknown one
        theirs_eval = _eval(_client(server, OTHER_KEY)).id
        fake_run = "evalrun_" + "0" * 32
        for suffix in ("", "/output_items"):
            foreign = theirs.get(f"/v1/evals/{theirs_eval}/runs/{run.id}{suffix}")
            unknown = theirs.get(f"/v1/evals/{theirs_eval}/runs/{fake_run}{suffix}")
            assert foreign.status_code == 404
            assert foreign.content == unknown.content.replace(fake_run.encode(), run.id.encode())
        for method, path in (("POST", f"/v1/evals/{created.id}/runs/{run.id}/cancel"),
                             ("DELETE", f"/v1/evals/{created.id}/runs/{run.id}"), ("DELETE", f"/v1/evals/{created.id}"),
                             ("POST", f"/v1/evals/{created.id}")):
            assert theirs.request(method, path, json={"name": "x"}).status_code == 404
        assert [e["id"] for e in theirs.get("/v1/evals").json()["data"]] == [theirs_eval]
        # a run of my eval cannot read their file either
        other_file = upload_raw(theirs, jsonl(_content()), purpose="evals").json()["id"]
        resp = mine.post(f"/v1/evals/{created.id}/runs", json={"data_source": {
            "type": "jsonl", "source": {"type": "file_id", "id": other_file}}})
        assert_error(resp, 404, param="data_source.source.id")
    assert client.evals.retrieve(created.id).name == "qa"  # untouched


def test_cancel_and_delete_race_the_runner(server: ThreadServer) -> None:
    """Cancels land while items are being graded: the run ends canceled, never completed after, and its counts
    match its stored items; a finished run cannot be canceled; deleting an eval mid-run leaves nothing."""
    client = _client(server)
    created = _eval(client)
    many = _content(ROWS * 60)  # 300 items
    for _ in range(3):
        run = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
            "type": "file_content", "content": many}})
        canceled = client.evals.runs.cancel(run.id, eval_id=created.id)
        assert canceled.status == "canceled"
        time.sleep(0.3)
        after = client.evals.runs.retrieve(run.id, eval_id=created.id)
        assert after.status == "canceled"
        stored = list(client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=100))
        assert after.result_counts.total == len(stored)
    done = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": _content()}})
    _finished(client, created.id, done.id)
    with server.client() as http:
        assert_error(http.post(f"/v1/evals/{created.id}/runs/{done.id}/cancel"), 409, code="run_not_cancelable")
        running = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
            "type": "file_content", "content": many}})
        deleted = http.delete(f"/v1/evals/{created.id}").json()
        assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": created.id}
        time.sleep(0.3)
        assert http.get(f"/v1/evals/{created.id}/runs/{running.id}").status_code == 404
    with server.state.sessions() as session:
        from sqlalchemy import func, select

        from tuneforge.service.db.models import EvalOutputItem, EvalRun

        assert session.scalar(select(func.count()).select_from(EvalRun).where(EvalRun.eval_id == created.id)) == 0
        assert session.scalar(select(func.count()).select_from(EvalOutputItem)
                              .where(EvalOutputItem.eval_id == created.id)) == 0


def test_graders_run_and_validate(server: ThreadServer) -> None:
    client = _client(server)
    multi = {"type": "multi", "name": "m", "calculate_output": "0.5 * fmt + 0.5 * sim", "graders": {
        "fmt": {"type": "regex", "name": "fmt", "pattern": "^Answer:", "reference": None},
        "sim": {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}}}
    result = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="Answer: Paris",  # type: ignore[arg-type]
                                                  item={"answer": "Answer: Paris"})
    assert result.reward == pytest.approx(1.0) and result.sub_rewards == {"fmt": 1.0, "sim": 1.0}
    check = {"type": "string_check", "name": "c", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
             "operation": "ilike"}
    assert client.fine_tuning.alpha.graders.run(grader=check, model_sample="It is PARIS",  # type: ignore[arg-type]
                                                item={"answer": "paris"}).reward == 1.0
    missing = client.fine_tuning.alpha.graders.run(grader=check, model_sample="x", item={})  # type: ignore[arg-type]
    assert missing.reward == 0.0 and missing.metadata.errors.invalid_variable_error
    valid = client.fine_tuning.alpha.graders.validate(grader=check)  # type: ignore[arg-type]
    assert valid.grader is not None and valid.grader.type == "string_check"  # type: ignore[union-attr]
    with server.client() as http:
        for grader, param, reason in (
            ({"type": "python", "source": "x"}, "grader", "no sandbox"),
            ({**check, "input": "{{item.x"}, "grader.input", "malformed"),
            ({"type": "label_model", "name": "l", "model": "nope", "labels": ["a", "b"], "passing_labels": ["a"],
              "input": [{"role": "user", "content": "x"}]}, "grader.model", "nope"),
        ):
            for path in ("/v1/fine_tuning/alpha/graders/validate", "/v1/fine_tuning/alpha/graders/run"):
                resp = http.post(path, json={"grader": grader, "model_sample": "x"})
                error = assert_error(resp, 404 if reason == "nope" else 400, param=param)
                assert reason in error["message"]


def test_unfinished_runs_resume_after_a_restart(tmp_path: Path) -> None:
    """A run left in progress by a stopped service finishes when it starts again, keeping the items it had."""
    settings = make_settings(tmp_path / "home", free_port())
    first = ThreadServer(settings, start_executor=False).start()
    client = _client(first)
    created = _eval(client)
    run = client.evals.runs.create(created.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": _content(ROWS * 40)}})
    first.stop()
    with first.state.sessions() as session:
        from sqlalchemy import select

        from tuneforge.service.db.models import EvalRun

        before = session.scalar(select(EvalRun).where(EvalRun.id == run.id))
        assert before is not None and before.status in ("queued", "in_progress", "completed")
        kept = before.result_counts["total"]
    second = ThreadServer(settings, start_executor=False).start()
    try:
        done = _finished(_client(second), created.id, run.id)
        assert done.status == "completed" and done.result_counts.total == 200 >= kept
        assert done.result_counts.passed == 120
    finally:
        second.stop()
