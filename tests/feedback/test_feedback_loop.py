"""The human-feedback loop through the REST API on the tiny model, as far as the export: a campaign samples through
the real serving engine, simulated raters label through the rater API (two careful ones that follow a known
preference, the longer answer, and a random one), the report shows who is careful, and the export is a preference
file a ``reward_model`` job accepts. Then blind A/B, scores and rankings, and every bad input.

One server and one engine per database for the module; few prompts, few tokens (the engine shares two cores)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from typing import Any

import httpx
import pytest

from tests.feedback.conftest import Served
from tests.service.helpers import assert_error, jsonl, upload_raw
from tests.support.waiting import wait_for
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.feedback import display_order

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
PROMPTS = [{"prompt": f"Say something about the number {i}."} for i in range(5)] + [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]}]
SAMPLING = {"temperature": 1.0, "max_tokens": 8, "seed": 11}
LONG, SHORT = "A long, careful and helpful answer that explains itself.", "No."
#: gold items: the longer answer is the better one, on alternating sides
GOLD = [{"prompt": f"Gold question {i}?", "answers": [LONG, SHORT] if i % 2 else [SHORT, LONG],
         "label": {"preferred": 0 if i % 2 else 1}} for i in range(10)]


def _upload_prompts(client: httpx.Client, rows: list[dict[str, Any]] = PROMPTS) -> str:
    resp = upload_raw(client, jsonl(rows), "prompts.jsonl")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _collecting(client: httpx.Client, campaign_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/feedback_campaigns/{campaign_id}").json()
        return body if body["status"] not in ("pending", "sampling") else None
    found = wait_for(f"campaign {campaign_id} to sample", done, timeout=900, interval=0.3)
    assert found["status"] == "collecting", found["error"]
    return found


def _campaign(served: Served, **body: Any) -> dict[str, Any]:
    names = body.pop("_raters", ("careful", "careful2", "random"))
    with served.server.client() as client:
        request = {"file_id": _upload_prompts(client, body.pop("prompts", PROMPTS)), "models": [served.base],
                   "samples_per_prompt": 2, "sampling": SAMPLING, **body}
        resp = client.post("/v1/feedback_campaigns", json=request)
        assert resp.status_code == 200, resp.text
        created = resp.json()
        assert created["object"] == "feedback_campaign" and created["status"] in ("pending", "sampling", "collecting")
        done = _collecting(client, created["id"])
        raters = [served.raters[n][0] for n in names]
        assigned = client.post(f"/v1/feedback_campaigns/{created['id']}/raters", json={"key_ids": raters})
        assert assigned.status_code == 200, assigned.text
        assert assigned.json()["raters"] == raters
        return done


def _longer(item: dict[str, Any]) -> int:
    """The careful raters' known preference: the longer answer (then the one that sorts first)."""
    answers = item["answers"]
    return min(range(len(answers)), key=lambda j: (-len(answers[j]["text"]), answers[j]["text"]))


def _rate_all(served: Served, name: str, campaign_id: str, choose: Any) -> int:
    """Label until the rater has nothing left; returns how many labels it sent."""
    sent = 0
    with served.rater(name) as rater:
        while True:
            resp = rater.get(f"/v1/feedback_campaigns/{campaign_id}/next_item")
            assert resp.status_code == 200, resp.text
            item = resp.json()["item"]
            if item is None:
                return sent
            posted = rater.post(f"/v1/feedback_campaigns/{campaign_id}/items/{item['id']}/labels",
                                json={**choose(item), "comment": f"{name} #{sent}"})
            assert posted.status_code == 200, posted.text
            sent += 1
            assert sent < 500


@pytest.fixture(scope="module")
def pairwise(served: Served) -> dict[str, Any]:
    """A pairwise campaign (one model, two samples a prompt: one pair each), three raters an item, ten gold items,
    labelled by the two careful raters and the random one."""
    campaign = _campaign(served, kind="pairwise", raters_per_item=3, gold_items=GOLD, name="pairs")
    assert campaign["progress"]["items"] == len(PROMPTS) + len(GOLD)
    assert campaign["progress"]["sampled_prompts"] == len(PROMPTS)
    coin = random.Random(3)
    counts = {"careful": _rate_all(served, "careful", campaign["id"], lambda i: {"preferred": _longer(i)}),
              "careful2": _rate_all(served, "careful2", campaign["id"], lambda i: {"preferred": _longer(i)}),
              "random": _rate_all(served, "random", campaign["id"], lambda i: {"preferred": coin.randrange(2)})}
    assert counts == dict.fromkeys(counts, len(PROMPTS) + len(GOLD))
    return campaign


def test_the_loop_campaign_raters_report_export_and_a_reward_model_job(served: Served,
                                                                      pairwise: dict[str, Any]) -> None:
    campaign_id = pairwise["id"]
    with served.server.client() as client:
        done = client.get(f"/v1/feedback_campaigns/{campaign_id}").json()
        assert done["status"] == "completed" and done["progress"]["labels"] == 3 * (len(PROMPTS) + len(GOLD))
        report = client.get(f"/v1/feedback_campaigns/{campaign_id}/report").json()
        assert report["object"] == "feedback_campaign.report" and report["fully_labelled_items"] == 16
        alpha = report["krippendorff_alpha"]
        assert alpha["level_of_measurement"] == "nominal" and alpha["raters"] == 3
        assert alpha["value"] is not None and alpha["value"] < 1
        by = {r["rater"]: r for r in report["raters"]}
        careful, careful2, rand = (by[served.raters[n][0]] for n in ("careful", "careful2", "random"))
        assert careful["gold_accuracy"] == careful2["gold_accuracy"] == 1.0 and careful["gold_items"] == 10
        assert rand["gold_accuracy"] < 1.0
        assert careful["agreement_with_majority"] == 1.0 > rand["agreement_with_majority"]
        # alpha without the random rater: the careful pair agrees on everything
        assert rand["alpha_without"] == 1.0 and careful["alpha_without"] < 1.0

        # the campaign's events: sampling started, its progress in tenths, done, and the last label completing it
        events = client.get(f"/v1/feedback_campaigns/{campaign_id}/events", params={"order": "asc",
                                                                                 "limit": 100}).json()["data"]
        messages = [e["message"] for e in events]
        assert messages[0].startswith("Sampling started: 6 of 6 prompts") and events[0]["object"] == (
            "feedback_campaign.event"), messages
        progress = [e["data"]["sampled_prompts"] for e in events if e["message"].startswith("Sampling: ")]
        assert sorted(progress) == [1, 2, 3, 4, 5], messages  # two prompts answered at once may land either way
        assert messages[-2].startswith("Sampling done: 6 prompts answered") and events[-2]["data"]["status"] == (
            "collecting")
        assert messages[-1] == "Every item has its raters: the campaign is completed"
        newest = client.get(f"/v1/feedback_campaigns/{campaign_id}/events", params={"limit": 1}).json()
        assert newest["has_more"] is True and newest["data"][0]["id"] == events[-1]["id"]
        # another organization: the events are as missing as an unknown campaign's
        foreign = served.other.get(f"/v1/feedback_campaigns/{campaign_id}/events")
        unknown = served.other.get("/v1/feedback_campaigns/fbc-000000000000000000000000/events")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.text.replace(campaign_id, "X") == unknown.text.replace("fbc-000000000000000000000000", "X")

        files_before = client.get("/v1/files").json()["data"]
        # only raters perfect on gold, and a consensus of all their votes
        exported = client.post(f"/v1/feedback_campaigns/{campaign_id}/export",
                               json={"min_agreement": 1.0, "min_rater_accuracy": 1.0})
        assert exported.status_code == 200, exported.text
        file = exported.json()
        assert file["purpose"] == "fine-tune" and file["format"] == "preference" and file["rows"] >= 1
        rows = [json.loads(line) for line in client.get(f"/v1/files/{file['id']}/content").text.splitlines()]
        assert len(rows) == file["rows"] and len(client.get("/v1/files").json()["data"]) == len(files_before) + 1
        for row in rows:  # what the careful raters preferred: the longer answer; no gold item is exported
            chosen, rejected = row["preferred_output"][0]["content"], row["non_preferred_output"][0]["content"]
            assert (-len(chosen), chosen) < (-len(rejected), rejected)
            assert LONG not in (chosen, rejected)
        job = client.post("/v1/fine_tuning/jobs", json={"model": served.base, "training_file": file["id"],
                                                        "method": {"type": "reward_model"}})
        assert job.status_code == 200, job.text
        assert job.json()["method"]["type"] == "reward_model"

        metrics = httpx.get(f"{served.server.url}/metrics").text
        assert 'tuneforge_feedback_campaigns{status="completed"}' in metrics
        assert next(line for line in metrics.splitlines()
                    if line.startswith('tuneforge_feedback_samples_total{outcome="ok"}')).split()[-1] != "0.0"
        assert 'tuneforge_feedback_labels_total{kind="pairwise"} 48.0' in metrics


def test_blind_ab_never_shows_the_models_and_reports_a_win_rate(served: Served) -> None:
    prompts = PROMPTS[:3]
    campaign = _campaign(served, kind="ab", models=[served.base, served.tuned], prompts=prompts, raters_per_item=1,
                         _raters=("careful",))
    assert campaign["progress"]["items"] == 3 * 2
    seen: list[dict[str, Any]] = []
    with served.rater("careful") as rater:
        while True:
            first = rater.get(f"/v1/feedback_campaigns/{campaign['id']}/next_item")
            again = rater.get(f"/v1/feedback_campaigns/{campaign['id']}/next_item")
            assert first.text == again.text  # the same item in the same order until it is labelled
            text = first.text
            assert served.base not in text and "ft:" not in text and '"model"' not in text, text
            item = first.json()["item"]
            if item is None:
                break
            seen.append(item)
            order = display_order(campaign["id"], item["id"], 2)
            choice = "tie" if len(seen) == 1 else "a"
            posted = rater.post(f"/v1/feedback_campaigns/{campaign['id']}/items/{item['id']}/labels",
                                json={"choice": choice})
            assert posted.status_code == 200, posted.text
            assert served.base not in posted.text and "ft:" not in posted.text
            item["_order"] = order
    assert len(seen) == 6
    with served.server.client() as client:
        ab = client.get(f"/v1/feedback_campaigns/{campaign['id']}/report").json()["ab"]
    # "a" is the answer shown first: model A's when the item's order kept it first
    wins_a = sum(1 for i in seen[1:] if i["_order"][0] == 0)
    assert (ab["model_a"], ab["model_b"], ab["ties"], ab["wins_a"], ab["wins_b"]) == (
        served.base, served.tuned, 1, wins_a, 5 - wins_a)
    low, high = ab["confidence_interval"]
    assert 0 <= low <= ab["win_rate_a"] <= high <= 1 and ab["interval_method"] == "wilson"


def test_scores_export_scored_rows_and_bad_scores_change_nothing(served: Served) -> None:
    campaign = _campaign(served, kind="score", samples_per_prompt=1, prompts=PROMPTS[:2], raters_per_item=1,
                         scale={"min": 1, "max": 7}, _raters=("careful",))
    cid = campaign["id"]
    with served.rater("careful") as rater, served.server.client() as client:
        item = rater.get(f"/v1/feedback_campaigns/{cid}/next_item").json()["item"]
        assert item["scale"] == {"min": 1, "max": 7} and len(item["answers"]) == 1
        url = f"/v1/feedback_campaigns/{cid}/items/{item['id']}/labels"
        assert_error(rater.post(url, json={"score": 8}), 400, code="score_out_of_range", param="score")
        assert_error(rater.post(url, json={"score": 0.5}), 400, code="score_out_of_range", param="score")
        assert_error(rater.post(url, json={"preferred": 0}), 400, param="preferred")
        assert_error(rater.post(url, json={"comment": "no score"}), 400, param="score")
        assert_error(rater.post(url, json={"score": "high"}), 400, param="score")
        assert client.get(f"/v1/feedback_campaigns/{cid}").json()["progress"]["labels"] == 0
        # no label yet: nothing to export, and nothing is written
        files = client.get("/v1/files").json()["data"]
        assert_error(client.post(f"/v1/feedback_campaigns/{cid}/export", json={}), 400, code="no_agreed_labels")
        assert client.get("/v1/files").json()["data"] == files
        first = rater.post(url, json={"score": 2, "comment": "meh"})
        replaced = rater.post(url, json={"score": 6})
        assert (first.json()["revision"], replaced.json()["revision"]) == (1, 2)
        assert replaced.json()["label"] == {"score": 6.0} and replaced.json()["comment"] is None
        # the same label again is a duplicate: refused, and neither the label nor its history changes
        assert_error(rater.post(url, json={"score": 6}), 409, code="duplicate_label", param="item_id")
        assert_error(rater.post(url, json={"score": 6.0, "comment": None}), 409, code="duplicate_label")
        second = rater.get(f"/v1/feedback_campaigns/{cid}/next_item").json()["item"]
        assert second["id"] != item["id"]
        assert rater.post(f"/v1/feedback_campaigns/{cid}/items/{second['id']}/labels",
                          json={"score": 3}).status_code == 200
        assert client.get(f"/v1/feedback_campaigns/{cid}").json()["status"] == "completed"
        exported = client.post(f"/v1/feedback_campaigns/{cid}/export", json={"min_agreement": 1})
        assert exported.status_code == 200, exported.text
        assert exported.json()["format"] == "prompt_completion"
        rows = [json.loads(line) for line in client.get(f"/v1/files/{exported.json()['id']}/content").text.splitlines()]
        assert sorted(r["score"] for r in rows) == [3.0, 6.0]
        assert {r["prompt"] for r in rows} == {p["prompt"] for p in PROMPTS[:2]}
    with served.server.state.sessions() as session:
        history = TenantRepo(session, "default").label_history(cid, item["id"], served.raters["careful"][0])
        assert [(h.revision, h.submitted, h.comment) for h in history] == [(1, {"score": 2.0}, "meh"),
                                                                           (2, {"score": 6.0}, None)]


def test_rankings_must_be_permutations_and_export_as_pairs(served: Served) -> None:
    campaign = _campaign(served, kind="ranking", samples_per_prompt=3, prompts=PROMPTS[:1], raters_per_item=1,
                         _raters=("careful",))
    cid = campaign["id"]
    with served.rater("careful") as rater, served.server.client() as client:
        item = rater.get(f"/v1/feedback_campaigns/{cid}/next_item").json()["item"]
        assert len(item["answers"]) == 3
        url = f"/v1/feedback_campaigns/{cid}/items/{item['id']}/labels"
        for bad in ([0, 0, 1], [0, 1], [0, 1, 3], [2, 1, 0, 3], []):
            error = assert_error(rater.post(url, json={"ranking": bad}), 400, param="ranking")
            assert error["code"] in ("not_a_permutation", "invalid_value"), error
        assert client.get(f"/v1/feedback_campaigns/{cid}").json()["progress"]["labels"] == 0
        texts = [a["text"] for a in item["answers"]]
        ranking = sorted(range(3), key=lambda j: (-len(texts[j]), texts[j]))
        assert rater.post(url, json={"ranking": ranking}).status_code == 200
        report = client.get(f"/v1/feedback_campaigns/{cid}/report").json()
        assert report["krippendorff_alpha"] == {"value": None, "level_of_measurement": "ordinal", "raters": 1}
        exported = client.post(f"/v1/feedback_campaigns/{cid}/export", json={"min_agreement": 1})
        assert len(set(texts)) >= 2, texts  # three samples at temperature 1 with three seeds
        assert exported.status_code == 200, exported.text
        rows = [json.loads(line) for line in client.get(f"/v1/files/{exported.json()['id']}/content").text.splitlines()]
        # three answers: three pairs, less those of identical answers
        assert len(rows) == sum(1 for a in range(3) for b in range(a + 1, 3) if texts[a] != texts[b])
        for row in rows:
            assert ranking.index(texts.index(row["preferred_output"][0]["content"])) < ranking.index(
                texts.index(row["non_preferred_output"][0]["content"]))


def test_labels_on_unknown_foreign_or_closed_items_are_refused(served: Served, pairwise: dict[str, Any]) -> None:
    cid = pairwise["id"]
    other = _campaign(served, kind="pairwise", prompts=PROMPTS[:1], raters_per_item=1, _raters=("careful",))
    with served.rater("careful") as rater, served.server.client() as client:
        item = rater.get(f"/v1/feedback_campaigns/{other['id']}/next_item").json()["item"]
        # an item of another campaign is as unknown as a made-up one (the id aside)
        foreign = rater.post(f"/v1/feedback_campaigns/{cid}/items/{item['id']}/labels", json={"preferred": 0})
        missing = rater.post(f"/v1/feedback_campaigns/{cid}/items/fbitem-000000000000000000000000/labels",
                             json={"preferred": 0})
        assert_error(foreign, 404, param="item_id")
        assert foreign.text.replace(item["id"], "X") == missing.text.replace("fbitem-000000000000000000000000", "X")
        url = f"/v1/feedback_campaigns/{other['id']}/items/{item['id']}/labels"
        assert_error(rater.post(url, json={"preferred": 2}), 400, param="preferred")
        assert_error(rater.post(url, json={"ranking": [1, 0]}), 400, param="ranking")
        assert_error(rater.post(url, json={"preferred": 0, "extra": 1}), 400)
        assert_error(rater.post(url, content=b"not json", headers={"content-type": "application/json"}), 400)
        # a campaign that is no longer collecting takes no labels, and nothing is written
        assert client.post(f"/v1/feedback_campaigns/{other['id']}/cancel").json()["status"] == "cancelled"
        assert_error(rater.post(url, json={"preferred": 0}), 409, code="campaign_not_collecting",
                     param="campaign_id")
        assert client.get(f"/v1/feedback_campaigns/{other['id']}").json()["progress"]["labels"] == 0
        last = client.get(f"/v1/feedback_campaigns/{other['id']}/events", params={"limit": 1}).json()["data"][0]
        assert last["message"].startswith("Cancelled by the user") and last["data"] == {"status": "cancelled"}
        assert_error(client.post(f"/v1/feedback_campaigns/{other['id']}/cancel"), 409,
                     code="campaign_not_cancelable")
        assert_error(client.post(f"/v1/feedback_campaigns/{other['id']}/export", json={}), 400,
                     code="campaign_not_exportable")
        # a completed campaign too (every item has its three raters)
        done_item = client.get(f"/v1/feedback_campaigns/{cid}").json()
        assert done_item["status"] == "completed"
        assert rater.get(f"/v1/feedback_campaigns/{cid}/next_item").json()["item"] is None
        # the export's filters: nothing reaches full agreement with the random rater's votes counted alone
        assert_error(client.post(f"/v1/feedback_campaigns/{cid}/export", json={"min_agreement": 2}), 400,
                     param="min_agreement")
        deleted = client.delete(f"/v1/feedback_campaigns/{other['id']}")
        assert deleted.json() == {"object": "feedback_campaign.deleted", "id": other["id"], "deleted": True}
        assert_error(client.get(f"/v1/feedback_campaigns/{other['id']}"), 404, code="feedback_campaign_not_found")


def test_raters_see_only_their_campaigns_and_only_the_rating_routes(served: Served,
                                                                    pairwise: dict[str, Any]) -> None:
    cid = pairwise["id"]
    missing_id = "fbc-000000000000000000000000"
    with served.rater("idle") as idle, served.rater("careful") as careful:
        # not assigned: the same 404 as a campaign that does not exist
        for path in ("/next_item", "/items/fbitem-x/labels"):
            method = "GET" if path == "/next_item" else "POST"
            unassigned = idle.request(method, f"/v1/feedback_campaigns/{cid}{path}", json={"preferred": 0})
            missing = idle.request(method, f"/v1/feedback_campaigns/{missing_id}{path}", json={"preferred": 0})
            assert_error(unassigned, 404, code="feedback_campaign_not_found")
            assert unassigned.text.replace(cid, "X") == missing.text.replace(missing_id, "X")
        # no other route: campaigns, reports, exports, files, jobs, models
        for method, path in [("GET", "/v1/feedback_campaigns"), ("GET", f"/v1/feedback_campaigns/{cid}"),
                             ("GET", f"/v1/feedback_campaigns/{cid}/report"),
                             ("POST", f"/v1/feedback_campaigns/{cid}/export"),
                             ("POST", f"/v1/feedback_campaigns/{cid}/raters"), ("GET", "/v1/files"),
                             ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
            assert_error(careful.request(method, path, json={}), 403, code="insufficient_permissions")
    # another organization's admin: the campaign does not exist, whatever the route
    for method, path in [("GET", ""), ("GET", "/report"), ("POST", "/export"), ("POST", "/cancel"),
                         ("POST", "/raters"), ("DELETE", "")]:
        foreign = served.other.request(method, f"/v1/feedback_campaigns/{cid}{path}", json={})
        missing = served.other.request(method, f"/v1/feedback_campaigns/{missing_id}{path}", json={})
        assert_error(foreign, 404, code="feedback_campaign_not_found")
        assert foreign.text.replace(cid, "X") == missing.text.replace(missing_id, "X")
    assert served.other.get("/v1/feedback_campaigns").json()["data"] == []
    with served.server.client() as client:
        # only rater keys of this organization can be assigned
        admin_key = client.get("/v1/organization/api_keys").json()["data"]
        not_rater = next(k["id"] for k in admin_key if k["role"] != "rater")
        assert_error(client.post(f"/v1/feedback_campaigns/{cid}/raters", json={"key_ids": [not_rater]}), 400,
                     code="not_a_rater_key", param="key_ids.0")
        assert_error(client.post(f"/v1/feedback_campaigns/{cid}/raters",
                                 json={"key_ids": [served.raters["idle"][0], "key_nope"]}), 400,
                     code="api_key_not_found", param="key_ids.1")
        assert served.raters["idle"][0] not in client.get(f"/v1/feedback_campaigns/{cid}").json()["raters"]
        # paging
        page = client.get("/v1/feedback_campaigns", params={"limit": 1}).json()
        assert page["object"] == "list" and len(page["data"]) == 1 and page["has_more"]
        rest = client.get("/v1/feedback_campaigns", params={"after": page["last_id"], "limit": 100}).json()
        assert page["data"][0]["id"] not in [c["id"] for c in rest["data"]]


def test_bad_campaigns_are_refused_with_the_field_named(served: Served) -> None:
    with served.server.client() as client:
        good = _upload_prompts(client)
        base = {"file_id": good, "models": [served.base], "kind": "pairwise", "samples_per_prompt": 2}
        # a prompt file whose rows are not prompts: each bad line named
        bad_rows = b'{"prompt": "fine"}\n{"nope": 1}\n' + jsonl([{"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
        bad = upload_raw(client, bad_rows, "bad.jsonl", purpose="evals")  # any JSON object per line
        assert bad.status_code == 200, bad.text
        error = assert_error(client.post("/v1/feedback_campaigns", json={**base, "file_id": bad.json()["id"]}), 400,
                             code="invalid_file_format", param="file_id")
        assert "line 2" in error["message"] and "line 3" in error["message"]
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"models": ["no-such-model"]}, 404, "models.0"),
            ({"models": ["ft:tiny-peaked:acme:x:123"]}, 404, "models.0"),
            ({"kind": "ab"}, 400, "models"),
            ({"kind": "ab", "models": [served.base, served.base]}, 400, "models"),
            ({"samples_per_prompt": 1}, 400, "samples_per_prompt"),
            ({"kind": "ranking", "samples_per_prompt": 10}, 400, "samples_per_prompt"),
            ({"kind": "vote"}, 400, "kind"),
            ({"scale": {"min": 1, "max": 5}}, 400, "scale"),
            ({"kind": "score", "scale": {"min": 5, "max": 1}}, 400, "scale"),
            ({"sampling": {"temperature": 3}}, 400, "sampling.temperature"),
            ({"raters_per_item": 0}, 400, "raters_per_item"),
            ({"file_id": "file-000000000000000000000000"}, 404, "file_id"),
            ({"gold_items": [{"prompt": "q", "answers": ["a"], "label": {"preferred": 0}}]}, 400,
             "gold_items.0.answers"),
            ({"gold_items": [{"prompt": "q", "answers": ["a", "b"], "label": {"ranking": [0, 1]}}]}, 400,
             "gold_items.0.label.ranking"),
            ({"gold_items": [{"prompt": "q", "answers": ["a", "b"], "label": {"preferred": 5}}]}, 400,
             "gold_items.0.label.preferred"),
        ]
        before = client.get("/v1/feedback_campaigns", params={"limit": 100}).json()["data"]
        for change, status, param in cases:
            assert_error(client.post("/v1/feedback_campaigns", json={**base, **change}), status, param=param)
        # another organization's file does not exist here
        foreign = _upload_prompts(served.other)
        assert_error(client.post("/v1/feedback_campaigns", json={**base, "file_id": foreign}), 404, param="file_id")
        assert client.get("/v1/feedback_campaigns", params={"limit": 100}).json()["data"] == before


def test_the_rating_page_in_headless_chromium(served: Served) -> None:
    """A person's view: the key and campaign in the URL fragment, one item at a time, 1-9 to choose, 0 for a tie,
    a comment, Enter to submit, progress, and 'All done' at the end; the labels arrive through the rating API."""
    from tests.observability.support import ARTIFACTS
    from tests.support.browser import chromium_page, require_chromium

    require_chromium()
    campaign = _campaign(served, kind="ab", models=[served.base, served.tuned], prompts=PROMPTS[5:], raters_per_item=1,
                         sampling={**SAMPLING, "max_tokens": 24}, name="colours, blind", _raters=("idle",))
    key_id, secret = served.raters["idle"]
    page_response = httpx.get(f"{served.server.url}/ui/rate")
    assert page_response.status_code == 200 and "script-src 'self'" in page_response.headers["content-security-policy"]
    with chromium_page(1100, 720, 60_000) as (page, errors):
        page.goto(f"{served.server.url}/ui/rate#key={secret}&campaign={campaign['id']}")
        page.wait_for_selector("#rate-answers .answer")
        assert secret not in page.url  # the key leaves the address bar
        assert page.inner_text("#rate-title") == "colours, blind · ab"
        body = page.inner_text("body")
        assert served.base not in body and "ft:" not in body
        assert "Name a colour." in page.inner_text("#rate-prompt")
        first = page.get_attribute("#rate-answers .answer", "data-index")
        page.keyboard.press("2")
        assert page.inner_text("#rate-choice") == "Answer 2"
        page.fill("#rate-comment", "The second one at least names something.")
        progress = page.inner_text("#rate-progress")
        assert "0 rated by you" in progress
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "ui-rating.png", full_page=True)
        page.click("#rate-help")  # leave the comment box: Enter submits
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('rate-progress').textContent"
                               ".startsWith('1 rated by you')")
        page.keyboard.press("0")
        assert page.inner_text("#rate-choice") == "Tie"
        page.keyboard.press("Enter")
        page.wait_for_selector("#rate-done", state="visible")
        assert first is not None and not errors, errors
    with served.server.client() as client:
        report = client.get(f"/v1/feedback_campaigns/{campaign['id']}/report").json()
        assert report["labels"] == 2 and report["ab"]["ties"] == 1
        assert [r["rater"] for r in report["raters"]] == [key_id]
    with served.server.state.sessions() as session:
        labels = TenantRepo(session, "default").campaign_labels(campaign["id"])
        assert sorted((lb.submitted["choice"], lb.comment) for lb in labels) == [
            ("b", "The second one at least names something."), ("tie", None)]


def test_raters_racing_for_the_last_slots_of_an_item(served: Served) -> None:
    """Three raters label the one item of a campaign that wants two, at the same moment: two labels are stored, the
    third is a 409, and the campaign completes."""
    campaign = _campaign(served, kind="pairwise", prompts=PROMPTS[:1], raters_per_item=2)
    cid = campaign["id"]
    clients = [served.rater(n) for n in ("careful", "careful2", "random")]
    items = [c.get(f"/v1/feedback_campaigns/{cid}/next_item").json()["item"] for c in clients]
    assert len({i["id"] for i in items}) == 1
    barrier = threading.Barrier(len(clients))
    results: list[httpx.Response] = []

    def post(client: httpx.Client) -> None:
        barrier.wait(timeout=30)
        results.append(client.post(f"/v1/feedback_campaigns/{cid}/items/{items[0]['id']}/labels",
                                   json={"preferred": 0}))

    threads = [threading.Thread(target=post, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert sorted(r.status_code for r in results) == [200, 200, 409], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 409)
    assert refused.json()["error"]["code"] in ("item_fully_rated", "campaign_not_collecting")
    with served.server.client() as client:
        done = client.get(f"/v1/feedback_campaigns/{cid}").json()
        assert done["status"] == "completed" and done["progress"]["labels"] == 2


def test_a_cancel_while_sampling_stops_the_campaign(served: Served) -> None:
    prompts = [{"prompt": f"Tell a long story about {i}."} for i in range(20)]
    with served.server.client() as client:
        created = client.post("/v1/feedback_campaigns", json={
            "file_id": _upload_prompts(client, prompts), "models": [served.base], "kind": "ranking",
            "samples_per_prompt": 3, "sampling": {**SAMPLING, "max_tokens": 48}}).json()
        cancelled = client.post(f"/v1/feedback_campaigns/{created['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"] is not None
        seen = cancelled.json()["progress"]["items"]
        wait_for("the sampler to stop", lambda: created["id"] not in served.server.state.feedback.tasks,
                 timeout=60, interval=0.1)
        after = client.get(f"/v1/feedback_campaigns/{created['id']}").json()
        assert after["status"] == "cancelled" and after["progress"]["items"] == seen
        assert after["progress"]["sampled_prompts"] < len(prompts)


def test_sampling_interrupted_midway_resumes_without_asking_twice(served: Served) -> None:
    """The sampler's task dies mid-campaign (as in a service stop: the campaign stays `sampling`); the start-up path
    resumes it, prompts that have items are not asked again, and every prompt ends with exactly its items."""
    prompts = [{"prompt": f"Count the letters of word {i}."} for i in range(24)]
    sampler = served.server.state.feedback
    with served.server.client() as client:
        created = client.post("/v1/feedback_campaigns", json={
            "file_id": _upload_prompts(client, prompts), "models": [served.base], "kind": "pairwise",
            "samples_per_prompt": 2, "sampling": {**SAMPLING, "max_tokens": 32}}).json()
        cid = created["id"]
        wait_for("a few prompts", lambda: client.get(f"/v1/feedback_campaigns/{cid}").json()["progress"]
                 ["sampled_prompts"] >= 2, timeout=600, interval=0.05)
        sampler.stop_threadsafe(cid)
        wait_for("the task to stop", lambda: cid not in sampler.tasks, timeout=60, interval=0.05)
        stopped = client.get(f"/v1/feedback_campaigns/{cid}").json()
        assert stopped["status"] == "sampling" and stopped["progress"]["sampled_prompts"] < len(prompts)
        asyncio.run_coroutine_threadsafe(sampler.start(), sampler._loop).result(timeout=60)
        done = _collecting(client, cid)
        assert done["progress"]["sampled_prompts"] == len(prompts) and done["progress"]["items"] == len(prompts)
    with served.server.state.sessions() as session:
        lines = [i.line for i in TenantRepo(session, "default").campaign_items(cid)]
    assert sorted(lines) == list(range(1, len(prompts) + 1))
