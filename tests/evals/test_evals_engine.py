"""Eval runs that generate through the serving engine (the real engine process): a base and a tuned model
through the official `openai` client, a judge whose replies are not scores and one whose replies are (the tiny
model fitted to answer "7"), and a model that dies mid-run.

One server and one engine for the module; few items and few tokens (the engine shares two cores)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.service.helpers import chat_file, chat_row, create_job, update_job, upload
from tests.support.engine_models import make_judge_model, make_lora, make_peaked_model, make_reward_model
from tests.support.live_server import ThreadServer, make_settings
from tests.support.models import register_model
from tests.support.waiting import free_port, wait_for
from tuneforge.contracts.store_layout import job_model_prefix
from tuneforge.service.db.models import now
from tuneforge.storage.manifest import publish_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
BASE = "tiny-peaked"
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"]}
ITEMS = [{"item": {"question": q, "answer": a}} for q, a in
         (("hello there", "hi"), ("what is two plus two", "4"), ("name a colour", "blue"))]
TEMPLATE = {"type": "template", "template": [{"role": "system", "content": "Answer briefly."},
                                             {"role": "user", "content": "{{item.question}}"}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny base model and a LoRA adapter of it."""
    root = Path(os.environ.get("TUNEFORGE_TEST_MODEL_DIR") or tmp_path_factory.mktemp("eval-models"))
    model = make_peaked_model(root)
    return model, make_lora(model, root, seed=5)


@pytest.fixture(scope="module")
def served(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadServer, str]]:
    model, adapter = models
    server = ThreadServer(make_settings(tmp_path_factory.mktemp("evals-engine") / "home", free_port()),
                          start_executor=False).start()
    try:
        register_model(server, model, BASE)
        with server.client() as client:
            job = create_job(client, upload(client, chat_file(4))["id"], model=BASE)
        publish_dir(server.state.store, adapter, job_model_prefix(job["id"]), base_model=BASE)
        tuned = f"ft:{BASE}:default:evals:{job['id'][6:18]}"
        update_job(server, job["id"], status="succeeded", fine_tuned_model=tuned, finished_at=now())
        yield server, tuned
    finally:
        server.stop()


def _client(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=600)


def _finished(client: openai.OpenAI, eval_id: str, run_id: str) -> Any:
    def done() -> Any:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        return run if run.status in ("completed", "failed", "canceled") else None
    return wait_for(f"run {run_id}", done, timeout=900, interval=0.2)


def _completions(model: str, max_tokens: int = 8, items: list[dict[str, Any]] = ITEMS, **sampling: Any) -> Any:
    return {"type": "completions", "model": model, "input_messages": TEMPLATE,
            "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens, **sampling},
            "source": {"type": "file_content", "content": items}}


def test_base_and_tuned_model_runs_through_the_openai_client(served: tuple[ThreadServer, str]) -> None:
    server, tuned = served
    client = _client(server)
    created = client.evals.create(
        name="tiny", data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
        testing_criteria=[  # type: ignore[list-item]
            {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"},
            {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.99}])
    outputs: dict[str, list[str]] = {}
    for model in (BASE, tuned):
        run = client.evals.runs.create(created.id, name=model, data_source=_completions(model))  # type: ignore[arg-type]
        done = _finished(client, created.id, run.id)
        assert done.status == "completed", done.error
        assert done.model == model and done.result_counts.total == 3 and done.result_counts.errored == 0
        usage = {u.run_model_name: u for u in done.per_model_usage}
        assert usage[model].invocation_count == 3 and usage[model].completion_tokens > 0
        # paged two at a time; items are listed in the order they were graded
        items = sorted(client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=2),
                       key=lambda i: i.datasource_item_id)
        assert [i.datasource_item_id for i in items] == [0, 1, 2]
        for item in items:
            assert item.sample.model == model and item.sample.usage.completion_tokens <= 8
            assert item.sample.input[-1].content == item.datasource_item["question"]
            assert [r.name for r in item.results] == ["exact", "fuzzy"]
        outputs[model] = [i.sample.output[0].content or "" for i in items]
    assert outputs[BASE] != outputs[tuned]  # the adapter answers


def test_a_judge_that_does_not_reply_with_a_score_errs_the_item_not_the_run(
        served: tuple[ThreadServer, str]) -> None:
    """The tiny random model as a judge: its replies are not numbers, so each item is `errored` with the reply
    quoted, the run still completes, and /graders/run reports a parse error."""
    server, _ = served
    client = _client(server)
    judge = {"type": "score_model", "name": "judge", "model": BASE, "range": [0, 10], "pass_threshold": 5,
             "sampling_params": {"max_completions_tokens": 6, "temperature": 0},
             "input": [{"role": "user", "content": "Rate the answer {{sample.output_text}} to {{item.question}}"}]}
    created = client.evals.create(name="judged", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                  testing_criteria=[judge])  # type: ignore[list-item]
    run = client.evals.runs.create(created.id, data_source=_completions(BASE, items=ITEMS[:2]))  # type: ignore[arg-type]
    done = _finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.errored == 2
    usage = {u.run_model_name: u.invocation_count for u in done.per_model_usage}
    assert usage[BASE] == 2  # the answers; the judge's calls errored before they were counted
    item = client.evals.runs.output_items.list(run.id, eval_id=created.id).data[0]
    assert item.status == "error" and "not a score" in item.results[0].error
    result = client.fine_tuning.alpha.graders.run(grader=judge, model_sample="4",  # type: ignore[arg-type]
                                                  item={"question": "2+2"})
    assert result.reward == 0.0 and result.metadata.errors.api_model_grader_parse_error


def test_a_judge_that_replies_with_a_score_grades_every_item(served: tuple[ThreadServer, str],
                                                            models: tuple[Path, Path]) -> None:
    """A served model that answers "7" (the tiny model fitted to it) as a `score_model` judge: every item gets
    the score 7, passes a threshold of 5 and fails one of 8, and /graders/run returns the same score."""
    server, _ = served
    register_model(server, make_judge_model(models[0], models[0].parent), "tiny-judge")
    client = _client(server)
    criteria = [{"type": "score_model", "name": name, "model": "tiny-judge", "range": [0, 10],
                 "pass_threshold": threshold, "sampling_params": {"max_completions_tokens": 4, "temperature": 0},
                 "input": [{"role": "user", "content": "Rate the answer {{sample.output_text}} to {{item.question}}"}]}
                for name, threshold in (("lenient", 5), ("strict", 8))]
    created = client.evals.create(name="scored", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                  testing_criteria=criteria)  # type: ignore[arg-type]
    run = client.evals.runs.create(created.id, data_source=_completions(BASE, items=ITEMS[:2]))  # type: ignore[arg-type]
    done = _finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.errored == 0 and done.result_counts.total == 2
    per = {c.testing_criteria: (c.passed, c.failed) for c in done.per_testing_criteria_results}
    assert per == {"lenient": (2, 0), "strict": (0, 2)}
    for item in client.evals.runs.output_items.list(run.id, eval_id=created.id).data:
        assert [(r.name, r.score, r.passed) for r in item.results] == [("lenient", 7.0, True), ("strict", 7.0, False)]
    result = client.fine_tuning.alpha.graders.run(grader=criteria[0], model_sample="4",  # type: ignore[arg-type]
                                                  item={"question": "2+2"})
    assert result.reward == 7.0 and not result.metadata.errors.api_model_grader_parse_error


def test_a_model_that_fails_mid_run_fails_the_run_and_keeps_the_graded_items(
        served: tuple[ThreadServer, str]) -> None:
    server, _ = served
    client = _client(server)
    created = client.evals.create(name="doomed", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                  testing_criteria=[{"type": "regex", "name": "any", "pattern": ".",  # type: ignore[list-item]
                                                     "reference": None}])
    items = ITEMS * 20
    run = client.evals.runs.create(created.id, data_source=_completions(  # type: ignore[arg-type]
        BASE, max_tokens=200, items=items, ignore_eos=True))
    wait_for("a first graded item", lambda: client.evals.runs.retrieve(
        run.id, eval_id=created.id).result_counts.total >= 1, timeout=600, interval=0.05)
    # one crash is survived (the request in flight goes once to a fresh engine), so the model here keeps failing:
    # every engine started for the base is killed until the run ends
    stop = threading.Event()

    def keep_killing() -> None:
        while not stop.is_set():
            for engine in server.state.serving.engines():
                if engine["base_model"] == BASE and engine.get("pid"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(engine["pid"], signal.SIGKILL)
            stop.wait(0.05)

    killer = threading.Thread(target=keep_killing, daemon=True)
    killer.start()
    try:
        done = _finished(client, created.id, run.id)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert done.status == "failed"
    assert done.error is not None and f"the model '{BASE}' failed on item" in done.error.message
    kept = list(client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=100))
    assert 1 <= len(kept) == done.result_counts.total < len(items)


def test_a_succeeded_job_compares_its_base_and_tuned_models(served: tuple[ThreadServer, str],
                                                             models: tuple[Path, Path]) -> None:
    """A job names an eval at creation; when it succeeds, the eval runs on its base and its tuned model, the job's
    events say so, and the report (API and the job's page in Chromium) compares the two runs' items."""
    server, _ = served
    client = _client(server)
    created = client.evals.create(
        name="compared", data_source_config={"type": "custom", "item_schema": SCHEMA},
        testing_criteria=[  # type: ignore[list-item]
            {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"},
            {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.3}])
    source = {k: v for k, v in _completions(BASE).items() if k != "model"}
    with server.client() as http:
        job = create_job(http, upload(http, chat_file(4))["id"], model=BASE,
                         evals=[{"eval_id": created.id, "data_source": source}])
    publish_dir(server.state.store, models[1], job_model_prefix(job["id"]), base_model=BASE)
    tuned = f"ft:{BASE}:default:compared:{job['id'][6:18]}"
    update_job(server, job["id"], status="succeeded", fine_tuned_model=tuned, finished_at=now())
    server.state.evals.wake_threadsafe()
    with server.client() as http:
        entry = wait_for("the job's runs", lambda: next(iter(
            e for e in http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["evals"] if e["tuned_run_id"]), None),
            timeout=60, interval=0.1)
        runs = {role: _finished(client, created.id, entry[f"{role}_run_id"]) for role in ("base", "tuned")}
        assert {role: (r.status, r.model) for role, r in runs.items()} == {
            "base": ("completed", BASE), "tuned": ("completed", tuned)}
        report = wait_for("the comparison", lambda: http.get(f"/v1/fine_tuning/jobs/{job['id']}/eval_report").json()[
            "evals"][0]["comparison"], timeout=30, interval=0.1)
        events = [e["message"] for e in http.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                                                   params={"limit": 100}).json()["data"]]
    assert sum(f"Eval {created.id} started on the base model" in m for m in events) == 1, events
    assert sum(m.startswith("Eval run") and "completed" in m for m in events) == 2, events
    # every figure comes from the two runs' stored items
    items = {role: sorted(client.evals.runs.output_items.list(run.id, eval_id=created.id, limit=100),
                          key=lambda i: i.datasource_item_id) for role, run in runs.items()}
    assert report["items"] == 3 and report["unpaired"] == 0
    assert report["pass_rate"]["base"] == pytest.approx(runs["base"].result_counts.passed / 3)
    assert report["pass_rate"]["tuned"] == pytest.approx(runs["tuned"].result_counts.passed / 3)
    for position, name in enumerate(("exact", "fuzzy")):
        scores = {role: [i.results[position].score for i in items[role]] for role in items}
        measured = report["per_testing_criteria"][position]
        assert measured["testing_criteria"] == name and measured["items"] == 3
        for role in ("base", "tuned"):
            assert measured["mean_score"][role] == pytest.approx(sum(scores[role]) / 3, abs=1e-6)
        assert measured["mean_score"]["ci_low"] <= measured["mean_score"]["difference"] <= measured[
            "mean_score"]["ci_high"]
    outputs = {role: [i.sample.output[0].content for i in items[role]] for role in items}
    assert outputs["base"] != outputs["tuned"]
    for shown in report["most_different_items"]:
        assert shown["base"]["output_text"] == outputs["base"][shown["index"]]
        assert shown["tuned"]["output_text"] == outputs["tuned"][shown["index"]]
        assert shown["item"] == ITEMS[shown["index"]]["item"]
    _check_the_page(server, job["id"])


def test_jobs_evaluate_their_validation_files_on_base_and_tuned(served: tuple[ThreadServer, str],
                                                               models: tuple[Path, Path]) -> None:
    """``evals: ["validation_file"]``: a supervised job's eval grades the answers to its validation prompts by
    ROUGE-L against the rows' answers; a reinforcement job's grades them with its own grader. Both eval and runs
    are made when the job succeeds, and compared like any named eval."""
    server, _ = served
    grader = {"type": "string_check", "name": "says", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "ilike"}
    with server.client() as http:
        train = upload(http, chat_file(4))["id"]
        valid = upload(http, chat_file(3), "valid.jsonl")["id"]
        sft = create_job(http, train, model=BASE, validation_file=valid, evals=[
            {"type": "validation_file", "sampling_params": {"max_completion_tokens": 6}}])
        rows = [{"messages": [{"role": "user", "content": f"say {w}"}], "answer": w} for w in ("hi", "yes", "blue")]
        prompts = upload(http, "".join(json.dumps(r) + "\n" for r in rows).encode(), "prompts.jsonl")["id"]
        rl = create_job(http, prompts, model=BASE, validation_file=prompts, evals=["validation_file"], method={
            "type": "reinforcement", "reinforcement": {"grader": grader,
                                                       "hyperparameters": {"max_completion_length": 5}}})
    for job in (sft, rl):
        publish_dir(server.state.store, models[1], job_model_prefix(job["id"]), base_model=BASE)
        update_job(server, job["id"], status="succeeded", fine_tuned_model=f"ft:{BASE}:default:v:{job['id'][6:18]}",
                   finished_at=now())
    server.state.evals.wake_threadsafe()
    client = _client(server)
    with server.client() as http:
        for job, criterion, tokens in ((sft, "rouge_l", 6), (rl, "says", 5)):
            report = wait_for("the comparison", lambda job=job: http.get(  # type: ignore[misc]
                f"/v1/fine_tuning/jobs/{job['id']}/eval_report").json()["evals"][0]["comparison"],
                timeout=600, interval=0.2)
            (entry,) = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["evals"]
            assert entry["type"] == "validation_file" and entry["eval_id"] and entry["error"] is None
            assert report["items"] == 3 and [c["testing_criteria"] for c in report["per_testing_criteria"]] == [
                criterion]
            made = client.evals.retrieve(entry["eval_id"])
            assert made.metadata == {"validation_file": job["validation_file"]}
            run = client.evals.runs.retrieve(entry["base_run_id"], eval_id=made.id)
            source = run.data_source.model_dump()
            assert source["sampling_params"]["max_completion_tokens"] == tokens
            items = [r["item"] for r in source["source"]["content"]]
            if job is sft:
                assert made.testing_criteria[0].type == "text_similarity"
                assert items == [{"messages": chat_row(i)["messages"][:2], "reference": chat_row(i)["messages"][2][
                    "content"]} for i in range(3)]
            else:  # the job's own grader, over its prompt rows with their other fields
                assert made.testing_criteria[0].type == "string_check"
                assert items == rows


def _check_the_page(server: ThreadServer, job_id: str) -> None:
    """The job's page shows the comparison table (Chromium, as a user sees it)."""
    from tests.observability.support import ROOT
    from tests.support.browser import chromium_page, sign_in

    with chromium_page(1280, 900, 120_000) as (page, errors):
        sign_in(page, server.url, server.api_key)
        page.evaluate(f"location.hash = '#/jobs/{job_id}'")
        page.wait_for_selector("#eval-report .eval-table tbody tr")
        table = page.inner_text("#eval-report .eval-table")
        for row in ("all criteria (pass rate)", "exact (pass rate)", "fuzzy (mean score)"):
            assert row in table, table
        assert "95% CI" in table
        shots = ROOT / "test-artifacts"
        shots.mkdir(exist_ok=True)
        page.screenshot(path=shots / "ui-job-eval-report.png", full_page=True)
        assert not errors, errors


def _direct_scores(reward_dir: Path, pairs: list[tuple[list[dict[str, str]], str]]) -> list[float]:
    """The reference: the classifier called with transformers directly, as TRL's reward path calls it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(reward_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(reward_dir)).eval()
    scores = []
    with torch.no_grad():
        for messages, answer in pairs:
            text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
            batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            scores.append(float(model(**batch).logits[0, 0]))
    return scores


def test_a_reward_model_grades_an_eval_and_a_grader_test(served: tuple[ThreadServer, str],
                                                         models: tuple[Path, Path]) -> None:
    """A ``reward_model`` testing criterion: a succeeded reward-model job's model, served for scoring, scores each
    answer exactly as the classifier called directly does; it passes at or above ``pass_threshold``."""
    server, tuned = served
    reward_dir = make_reward_model(models[0], models[0].parent)
    with server.client() as http:
        job = create_job(http, upload(http, chat_file(4))["id"], model=BASE)
    publish_dir(server.state.store, reward_dir, job_model_prefix(job["id"]), base_model=BASE,
                extra={"task": "sequence_classification", "method": "reward_model"})
    rm_name = f"ft:{BASE}:default:rm:{job['id'][6:18]}"
    update_job(server, job["id"], status="succeeded", fine_tuned_model=rm_name, finished_at=now(),
               method={"type": "reward_model", "reward_model": {"hyperparameters": {}}}, adapter={"type": "full"})
    client = _client(server)
    created = client.evals.create(name="rewarded", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                  testing_criteria=[{"type": "reward_model", "name": "rm",  # type: ignore[list-item]
                                                     "model": rm_name, "pass_threshold": 0.0}])
    run = client.evals.runs.create(created.id, data_source=_completions(BASE))  # type: ignore[arg-type]
    done = _finished(client, created.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.total == 3 and done.result_counts.errored == 0, done.result_counts
    items = sorted(client.evals.runs.output_items.list(run.id, eval_id=created.id),
                   key=lambda i: i.datasource_item_id)
    pairs = [([{"role": m.role, "content": m.content} for m in i.sample.input], i.sample.output[0].content or "")
             for i in items]
    expected = _direct_scores(reward_dir, pairs)
    for item, want in zip(items, expected, strict=True):
        assert item.results[0].score == pytest.approx(want, abs=1e-4)
        assert item.results[0].passed == (want >= 0.0)
    usage = {u.model_name: u for u in done.per_model_usage}
    assert usage[rm_name].invocation_count == 3 and usage[rm_name].prompt_tokens > 0

    # the grader test route scores the same way (its sample has no conversation: the answer alone)
    result = client.fine_tuning.alpha.graders.run(grader={"type": "reward_model", "name": "rm",  # type: ignore[arg-type]
                                                          "model": rm_name}, model_sample="blue")
    assert result.reward == pytest.approx(_direct_scores(reward_dir, [([], "blue")])[0], abs=1e-4)

    # what a reward_model criterion refuses at creation
    with server.client() as http:
        for criterion, status, param in (
                ({"model": tuned}, 400, "testing_criteria.0.model"),  # a language model, not a reward model
                ({"model": "ft:nothing:here"}, 404, "testing_criteria.0.model"),
                ({"model": rm_name, "model_prefix": "jobs/x/model"}, 400, "testing_criteria.0.model_prefix")):
            resp = http.post("/v1/evals", json={"name": "bad", "data_source_config": {
                "type": "custom", "item_schema": SCHEMA}, "testing_criteria": [
                {"type": "reward_model", "name": "rm", **criterion}]})
            assert resp.status_code == status, resp.text
            assert resp.json()["error"]["param"] == param, resp.text
