"""One round of the feedback loop as one call, end to end through the REST API on the tiny model (`tuneforge serve`
with its real executor and serving engine): a campaign samples, a careful and a random rater label through the
rater API, and ``POST …/rounds`` exports the agreed labels, trains a reward model, runs PPO graded by it with a
base-vs-tuned eval, and opens the next campaign on the tuned model with the same raters.

Then what a round refuses at once (and that nothing is left behind when it does), tenancy, and a cancel."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import assert_error, jsonl
from tests.support.live_server import ProcessServer, wait_for_status
from tests.support.models import TINY, register_model
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
PROMPTS = [{"prompt": f"Tell me about the number {i}."} for i in range(8)]
SAMPLING = {"temperature": 1.0, "max_tokens": 8, "seed": 11}
RM_HP = {"max_steps": 2, "batch_size": 2, "checkpoint_every_steps": 2}
RL_HP = {"max_steps": 2, "batch_size": 2, "num_generations": 2, "max_completion_length": 8,
         "checkpoint_every_steps": 2, "learning_rate": 1e-4, "num_mini_batches": 2, "ppo_epochs": 1}
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
OTHER_KEY = "tf-feedback-round-other-tenant-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ProcessServer]:
    srv = ProcessServer(tmp_path_factory.mktemp("round") / "home").start()
    register_model(srv, tiny_model_dir, TINY)
    yield srv
    srv.stop()


def _upload(client: httpx.Client, rows: list[dict[str, Any]], name: str) -> str:
    resp = client.post("/v1/files", files={"file": (name, jsonl(rows))}, data={"purpose": "fine-tune"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _rater(client: httpx.Client, name: str) -> tuple[str, str]:
    made = client.post("/v1/organization/api_keys", json={"name": name, "role": "rater"})
    assert made.status_code == 200, made.text
    return made.json()["id"], made.json()["value"]


def _collecting(client: httpx.Client, campaign_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/feedback_campaigns/{campaign_id}").json()
        return body if body["status"] not in ("pending", "sampling") else None
    found = wait_for(f"campaign {campaign_id} to sample", done, timeout=900, interval=0.5)
    assert found["status"] == "collecting", found["error"]
    return found


def _rate_all(server: ProcessServer, key: str, campaign_id: str, choose: Any) -> int:
    sent = 0
    with server.client(key) as rater:
        while (item := rater.get(f"/v1/feedback_campaigns/{campaign_id}/next_item").json()["item"]) is not None:
            posted = rater.post(f"/v1/feedback_campaigns/{campaign_id}/items/{item['id']}/labels", json=choose(item))
            assert posted.status_code == 200, posted.text
            sent += 1
            assert sent < 100
    return sent


def _longer(item: dict[str, Any]) -> dict[str, int]:
    answers = item["answers"]
    return {"preferred": min(range(len(answers)), key=lambda j: (-len(answers[j]["text"]), answers[j]["text"]))}


@pytest.fixture(scope="module")
def labelled(server: ProcessServer) -> dict[str, Any]:
    """A pairwise campaign on the tiny model labelled by a careful rater (the longer answer) and a random one."""
    with server.client() as client:
        careful, rand = _rater(client, "careful"), _rater(client, "random")
        resp = client.post("/v1/feedback_campaigns", json={
            "name": "round one", "file_id": _upload(client, PROMPTS, "prompts.jsonl"), "models": [TINY],
            "kind": "pairwise", "samples_per_prompt": 2, "sampling": SAMPLING, "raters_per_item": 2})
        assert resp.status_code == 200, resp.text
        campaign = _collecting(client, resp.json()["id"])
        assigned = client.post(f"/v1/feedback_campaigns/{campaign['id']}/raters",
                               json={"key_ids": [careful[0], rand[0]]})
        assert assigned.status_code == 200, assigned.text
    coin = random.Random(5)
    assert _rate_all(server, careful[1], campaign["id"], _longer) == len(PROMPTS)
    assert _rate_all(server, rand[1], campaign["id"], lambda i: {"preferred": coin.randrange(2)}) == len(PROMPTS)
    with server.client() as client:
        report = client.get(f"/v1/feedback_campaigns/{campaign['id']}/report").json()
    by = {r["rater"]: r for r in report["raters"]}
    assert by[careful[0]]["agreement_with_majority"] is not None
    return {"campaign": campaign, "raters": [careful[0], rand[0]]}


def _eval(client: httpx.Client) -> str:
    resp = client.post("/v1/evals", json={
        "name": "any answer", "data_source_config": {"type": "custom", "item_schema": SCHEMA},
        "testing_criteria": [{"type": "regex", "name": "answered", "input": "{{sample.output_text}}",
                              "pattern": ".", "reference": None}]})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def test_one_round_from_labels_to_the_next_campaign(server: ProcessServer, labelled: dict[str, Any]) -> None:
    campaign = labelled["campaign"]
    with server.client() as client:
        eval_id = _eval(client)
        files_before = {f["id"] for f in client.get("/v1/files", params={"limit": 100}).json()["data"]}
        resp = client.post(f"/v1/feedback_campaigns/{campaign['id']}/rounds", json={
            "reward_model": {"hyperparameters": RM_HP},
            "reinforcement": {"algorithm": "ppo", "hyperparameters": RL_HP},
            "evals": [{"eval_id": eval_id, "data_source": {
                "source": {"type": "file_content", "content": [{"item": {"question": "Name a colour."}},
                                                               {"item": {"question": "Count to three."}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                "sampling_params": {"temperature": 0, "max_completion_tokens": 8}}}],
            "next_campaign": {"name": "round two"}})
        assert resp.status_code == 200, resp.text
        made = resp.json()
        assert made["object"] == "feedback_campaign.round" and made["status"] == "running"
        assert made["step"] == "reward_model" and made["reinforcement_job_id"] is None
        # the export is an ordinary file: the agreed labels as preference rows
        export = client.get(f"/v1/files/{made['export_file_id']}").json()
        assert export["format"] == "preference" and export["purpose"] == "fine-tune" and export["rows"] >= 1
        assert {f["id"] for f in client.get("/v1/files", params={"limit": 100}).json()["data"]} == files_before | {
            export["id"]}
        rows = [json.loads(line) for line in client.get(f"/v1/files/{export['id']}/content").text.splitlines()]
        for row in rows:  # both raters agreed on each exported pair, so the careful rater's choice won
            chosen, rejected = row["preferred_output"][0]["content"], row["non_preferred_output"][0]["content"]
            assert (-len(chosen), chosen) < (-len(rejected), rejected)

        rm = wait_for_status(client, made["reward_model_job_id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        assert rm["status"] == "succeeded", (rm, server.log_tail())
        assert rm["method"]["type"] == "reward_model" and rm["training_file"] == export["id"]
        assert rm["metadata"] == {"feedback_round": made["id"], "feedback_campaign": campaign["id"]}
        rl_id = wait_for("the reinforcement job", lambda: client.get(
            f"/v1/feedback_campaigns/{campaign['id']}/rounds/{made['id']}").json()["reinforcement_job_id"],
            timeout=60, interval=0.5)
        rl = wait_for_status(client, rl_id, {"succeeded", "failed", "cancelled"}, timeout=600)
        assert rl["status"] == "succeeded", (rl, server.log_tail())
        section = rl["method"]["reinforcement"]
        assert section["algorithm"] == "ppo"
        assert (section["grader"]["type"], section["grader"]["model"]) == ("reward_model", rm["fine_tuned_model"])
        assert rl["training_file"] == campaign["file_id"] and rl["model"] == TINY

        final = wait_for("the round to end", lambda: (lambda r: r if r["status"] != "running" else None)(
            client.get(f"/v1/feedback_campaigns/{campaign['id']}/rounds/{made['id']}").json()),
            timeout=600, interval=0.5)
        assert final["status"] == "succeeded" and final["step"] == "done", final
        # the evals ran on the policy before and after, and their report is linked
        report = client.get(final["eval_report"]).json()
        compared = report["evals"][0]
        assert compared["base_run"]["status"] == compared["tuned_run"]["status"] == "completed"
        assert compared["base_run"]["model"] == TINY and compared["tuned_run"]["model"] == rl["fine_tuned_model"]
        assert compared["comparison"]["items"] == 2
        # the next campaign: the same prompts and raters on the tuned model, sampling on its own
        following = _collecting(client, final["next_campaign_id"])
        assert following["name"] == "round two" and following["models"] == [rl["fine_tuned_model"]]
        assert following["file_id"] == campaign["file_id"] and following["raters"] == labelled["raters"]
        assert following["kind"] == "pairwise" and following["progress"]["items"] == len(PROMPTS)
        listed = client.get(f"/v1/feedback_campaigns/{campaign['id']}/rounds").json()["data"]
        assert [r["id"] for r in listed] == [made["id"]]
        # finished: nothing left to cancel
        assert_error(client.post(f"/v1/feedback_campaigns/{campaign['id']}/rounds/{made['id']}/cancel"), 409)
    _check_the_pages(server, campaign["id"], made["id"], rm["id"], rl["id"])


def _check_the_pages(server: ProcessServer, campaign_id: str, round_id: str, rm_id: str, rl_id: str) -> None:
    """The built-in page (Chromium): the campaign lists its round; the round's page links its jobs."""
    from tests.observability.support import ROOT
    from tests.support.browser import chromium_page, sign_in

    with chromium_page(1280, 800, 60_000) as (page, errors):
        sign_in(page, server.url, server.api_key)
        page.evaluate("location.hash = '#/feedback'")
        page.wait_for_selector(f'[data-campaign-id="{campaign_id}"] a[href$="{round_id}"]')
        page.click(f'[data-campaign-id="{campaign_id}"] a[href$="{round_id}"]')
        page.wait_for_selector('tr[data-step="next_campaign"] code')
        assert page.inner_text("#round-status") == "succeeded"
        for step, job_id in (("reward_model", rm_id), ("reinforcement", rl_id)):
            assert page.get_attribute(f'tr[data-step="{step}"] a', "href") == f"#/jobs/{job_id}"
        shots = ROOT / "test-artifacts"
        shots.mkdir(exist_ok=True)
        page.screenshot(path=shots / "ui-feedback-round.png", full_page=True)
        # from the round to the tuned model's page, with its base-vs-tuned report
        page.click('tr[data-step="evaluation"] a')
        page.wait_for_selector("#eval-report .eval-table tbody tr")
        assert not errors, errors


@pytest.mark.parametrize(("body", "param"), [
    ({"reinforcement": {"algorithm": "dqn"}}, "reinforcement.algorithm"),
    ({"reinforcement": {"hyperparameters": {"learning_rate": -1}}}, "reinforcement.hyperparameters.learning_rate"),
    ({"reinforcement": {"hyperparameters": {"warp_factor": 9}}}, "reinforcement.hyperparameters.warp_factor"),
    ({"reward_model": {"hyperparameters": {"n_epochs": 0}}}, "reward_model.hyperparameters.n_epochs"),
    # refused by the reward-model job's own checks, after the export was written: the export goes again
    ({"reward_model": {"model": "no-such-model"}}, "reward_model.model"),
    ({"reinforcement": {"training_file": "file-nope"}}, "reinforcement.training_file"),
    ({"reward_model": {"validation_file": "file-nope"}}, "reward_model.validation_file"),
    ({"evals": ["eval_" + "0" * 32]}, "evals.0.eval_id"),
    ({"evals": ["validation_file"]}, "evals.0.type"),  # a round's reinforcement job names its evals by id
    ({"export": {"min_agreement": 2}}, "export.min_agreement"),
    ({"next_campaign": {"file_id": "file-nope"}}, "next_campaign.file_id"),
    ({"rounds": 3}, "rounds"),
])
def test_a_bad_round_is_refused_at_once_and_leaves_nothing(server: ProcessServer, labelled: dict[str, Any],
                                                           body: dict[str, Any], param: str) -> None:
    campaign_id = labelled["campaign"]["id"]
    with server.client() as client:
        files = client.get("/v1/files", params={"limit": 100}).json()["data"]
        jobs = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        rounds = client.get(f"/v1/feedback_campaigns/{campaign_id}/rounds").json()["data"]
        resp = client.post(f"/v1/feedback_campaigns/{campaign_id}/rounds", json=body)
        error = assert_error(resp, 404 if "nope" in str(body) or "0" * 32 in str(body) else 400)
        assert error["param"] == param, error
        assert client.get("/v1/files", params={"limit": 100}).json()["data"] == files
        assert client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"] == jobs
        assert client.get(f"/v1/feedback_campaigns/{campaign_id}/rounds").json()["data"] == rounds


def test_rounds_of_another_tenant_do_not_exist_and_a_cancel_stops_the_job(server: ProcessServer,
                                                                          labelled: dict[str, Any]) -> None:
    campaign_id = labelled["campaign"]["id"]
    with server.client() as client:
        made = client.post(f"/v1/feedback_campaigns/{campaign_id}/rounds", json={
            "reward_model": {"hyperparameters": {**RM_HP, "max_steps": 500}}})
        assert made.status_code == 200, made.text
        round_id = made.json()["id"]
        # another organization with a key of its own, made through the operator's admin routes
        assert client.post("/v1/organizations", json={"id": "acme-rounds"}).status_code == 200
        key = client.post("/v1/organizations/acme-rounds/api_keys", json={"name": "theirs", "role": "admin"})
        assert key.status_code == 200, key.text
    with server.client(key.json()["value"]) as theirs:
        fake = "fbround-" + "0" * 24
        for method, suffix in (("GET", ""), ("POST", "/cancel")):
            foreign = theirs.request(method, f"/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}{suffix}")
            unknown = theirs.request(method, f"/v1/feedback_campaigns/{campaign_id}/rounds/{fake}{suffix}")
            assert foreign.status_code == unknown.status_code == 404
            assert foreign.content == unknown.content.replace(fake.encode(), round_id.encode())
        foreign = theirs.post(f"/v1/feedback_campaigns/{campaign_id}/rounds", json={})
        assert foreign.status_code == 404 and campaign_id in foreign.text
        assert theirs.get(f"/v1/feedback_campaigns/{campaign_id}/rounds").status_code == 404
    with server.client() as client:
        assert client.get(f"/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}").json()["status"] == "running"
        cancelled = client.post(f"/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        job = wait_for_status(client, made.json()["reward_model_job_id"], {"cancelled", "succeeded", "failed"},
                              timeout=120)
        assert job["status"] == "cancelled"
        assert_error(client.post(f"/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}/cancel"), 409)
        # a cancelled round stays cancelled: the runner never moves it on
        assert client.get(f"/v1/feedback_campaigns/{campaign_id}/rounds/{round_id}").json()["status"] == "cancelled"
