"""Feedback campaigns (issue #16): ``/v1/feedback_campaigns``, their raters, the rating routes, report and export.

Thin: the checks are in :mod:`tuneforge.service.domain.feedback` (requests, items, labels),
:mod:`~tuneforge.service.domain.feedback_report` and :mod:`~tuneforge.service.domain.feedback_export`; sampling
runs in the background (:mod:`tuneforge.service.executors.feedback_sampling`). The two rating routes need the
``rate`` permission (rater keys only) and answer only for campaigns the key is assigned to: any other campaign is
the same 404 as a missing one.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import Body, Query

from tuneforge.service.api.deps import PrincipalDep, RepoDep, StateDep, limits_of
from tuneforge.service.api.eval_presenters import page_of
from tuneforge.service.api.feedback_presenters import campaign_object, event_object, label_object, round_object
from tuneforge.service.api.pagination import AfterQuery, LimitQuery
from tuneforge.service.api.presenters import file_object
from tuneforge.service.api.routing import Router
from tuneforge.service.core.errors import Conflict, Unavailable
from tuneforge.service.core.roles import Permission, requires
from tuneforge.service.db.models import now
from tuneforge.service.domain import feedback as domain
from tuneforge.service.domain import feedback_rounds as rounds
from tuneforge.service.domain import jobs as job_actions
from tuneforge.service.domain.feedback_export import export_campaign
from tuneforge.service.domain.feedback_report import report
from tuneforge.service.domain.upload_validation import token_counter
from tuneforge.service.schemas import FileObject

router = Router(prefix="/v1/feedback_campaigns", tags=["feedback"])
RATE = requires(Permission.RATE)
OrderQuery = Annotated[str, Query(pattern="^(asc|desc)$", description="asc (oldest first) or desc")]


@router.post("", summary="Create a feedback campaign",
             description="A prompt file (`file_id`), `models` (base or `ft:`), `samples_per_prompt`, `sampling`, a "
             "`kind` (score, pairwise, ranking, ab), `raters_per_item` and optional `gold_items`. The models answer "
             "in the background; the campaign then collects labels.")
def create_campaign(repo: RepoDep, state: StateDep, body: Any = Body(...)) -> dict[str, Any]:
    if state.feedback is None:
        raise Unavailable("feedback campaigns are not enabled on this server")
    row = domain.create_campaign(repo, state.store, body, now(), state.settings.limits.max_eval_items)
    state.feedback.submit_threadsafe(row.id)
    return campaign_object(repo, row)


@router.get("", summary="List feedback campaigns")
def list_campaigns(repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
                   order: OrderQuery = "asc") -> dict[str, Any]:
    rows, more = repo.list_campaigns(after, limit, newest_first=order == "desc")
    return page_of([campaign_object(repo, r) for r in rows], more)


@router.get("/{campaign_id}", summary="Retrieve a feedback campaign: status, progress, raters")
def get_campaign(campaign_id: str, repo: RepoDep) -> dict[str, Any]:
    return campaign_object(repo, repo.get_campaign(campaign_id))


@router.post("/{campaign_id}/cancel", summary="Cancel a campaign (its items and labels stay)")
def cancel_campaign(campaign_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    row = repo.get_campaign(campaign_id)
    if not repo.cancel_campaign(row, now()):
        raise Conflict(f"Feedback campaign '{campaign_id}' has already finished ({row.status}).",
                       code="campaign_not_cancelable")
    repo.add_campaign_event(row, "Cancelled by the user; its items and labels stay", data={"status": "cancelled"})
    if state.feedback is not None:
        state.feedback.stop_threadsafe(row.id)
    return campaign_object(repo, row)


@router.delete("/{campaign_id}", summary="Delete a campaign, its items and labels")
def delete_campaign(campaign_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    row = repo.get_campaign(campaign_id)
    repo.delete_campaign(row)
    if state.feedback is not None:
        state.feedback.stop_threadsafe(campaign_id)
    return {"object": "feedback_campaign.deleted", "id": campaign_id, "deleted": True}


@router.post("/{campaign_id}/raters", summary="Assign rater API keys to a campaign",
             description="`key_ids`: ids of this organization's keys with the `rater` role.")
def add_raters(campaign_id: str, repo: RepoDep, body: Any = Body(...)) -> dict[str, Any]:
    row = repo.get_campaign(campaign_id)
    domain.assign_raters(repo, row, body, now())
    return campaign_object(repo, row)


@router.get("/{campaign_id}/report", summary="Agreement and quality: Krippendorff's alpha, per-rater agreement and "
            "gold accuracy, blind A/B win rate with a confidence interval")
def get_report(campaign_id: str, repo: RepoDep) -> dict[str, Any]:
    row = repo.get_campaign(campaign_id)
    return report(row, repo.campaign_items(row.id), repo.campaign_labels(row.id), repo.campaign_raters(row.id))


@router.post("/{campaign_id}/export", response_model=FileObject,
             summary="Export the agreed labels as a training file (purpose fine-tune)",
             description="Preference rows (dpo, reward_model) or scored rows (score campaigns); options "
             "`min_agreement`, `min_rater_accuracy`, `filename`.")
def export(campaign_id: str, repo: RepoDep, state: StateDep, principal: PrincipalDep,
           body: Any = Body(None)) -> FileObject:
    row = repo.get_campaign(campaign_id)
    limits = state.settings.limits
    counter = token_counter(state.settings.executor.model_cache, state.settings.default_base_model)
    return file_object(export_campaign(repo, state.store, row, body, quota=limits_of(state, principal),
                                       max_tokens=limits.max_example_tokens, max_errors=limits.max_reported_errors,
                                       count_tokens=counter))


@router.get("/{campaign_id}/events", summary="List a campaign's events (sampling progress, cancel, completion)")
def list_events(campaign_id: str, repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
                order: Annotated[str, Query(pattern="^(asc|desc)$", description="desc (newest first) or asc")]
                = "desc") -> dict[str, Any]:
    row = repo.get_campaign(campaign_id)
    rows, more = repo.list_campaign_events(row.id, after, limit, newest_first=order == "desc")
    return page_of([event_object(e) for e in rows], more)


# -- rounds of the loop --
@router.post("/{campaign_id}/rounds", summary="Run one round of the feedback loop from this campaign",
             description="Exports the agreed labels (`export`: min_agreement, min_rater_accuracy), trains a "
             "reward model on them (`reward_model`: model, hyperparameters), then a `reinforcement` job (algorithm "
             "ppo or grpo, model, hyperparameters, training_file: default the campaign's prompts) graded by it with "
             "the round's `evals` on its base and tuned model, and opens the next campaign on the tuned model "
             "(`next_campaign`: name, file_id; null for none). Each step is an ordinary file, job, eval run or "
             "campaign; the round links them.")
def create_round(campaign_id: str, repo: RepoDep, state: StateDep, principal: PrincipalDep,
                 body: Any = Body(None)) -> dict[str, Any]:
    campaign = repo.get_campaign(campaign_id)
    limits = state.settings.limits
    counter = token_counter(state.settings.executor.model_cache, state.settings.default_base_model)

    def export_file(repo: Any, store: Any, row: Any, options: Any) -> Any:
        return export_campaign(repo, store, row, options, quota=limits_of(state, principal),
                               max_tokens=limits.max_example_tokens, max_errors=limits.max_reported_errors,
                               count_tokens=counter)

    made, _ = rounds.create_round(repo, state.store, state.settings, campaign, body, export_file=export_file)
    if state.executor:
        state.executor.wake()
    return round_object(made)


@router.get("/{campaign_id}/rounds", summary="List the rounds of the loop started from this campaign")
def list_rounds(campaign_id: str, repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
                order: OrderQuery = "asc") -> dict[str, Any]:
    campaign = repo.get_campaign(campaign_id)
    rows, more = repo.list_rounds(campaign.id, after, limit, newest_first=order == "desc")
    return page_of([round_object(r) for r in rows], more)


@router.get("/{campaign_id}/rounds/{round_id}", summary="Retrieve a round: its step, status and what it made")
def get_round(campaign_id: str, round_id: str, repo: RepoDep) -> dict[str, Any]:
    return round_object(repo.get_round(campaign_id, round_id))


@router.post("/{campaign_id}/rounds/{round_id}/cancel", summary="Cancel a running round and its running job",
             description="What it made stays (the export, finished jobs and their models).")
def cancel_round(campaign_id: str, round_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    row = repo.get_round(campaign_id, round_id)
    for job_id in rounds.cancel_round(repo, row):
        with contextlib.suppress(Conflict):  # it finished meanwhile
            job_actions.cancel(repo, state.executor, job_id)
    return round_object(repo.get_round(campaign_id, round_id))


# -- raters --
@router.get("/{campaign_id}/next_item", openapi_extra=RATE, summary="The next item for this rater to label",
            description="Rater keys assigned to the campaign only. The answers are in an order shuffled per item; "
            "`item` is null when this rater has nothing left.")
def get_next_item(campaign_id: str, repo: RepoDep, principal: PrincipalDep) -> dict[str, Any]:
    row = repo.get_assigned_campaign(campaign_id, principal.key_id)
    found = domain.next_item(repo, row, principal.key_id)
    return {"object": "feedback_campaign.next_item", "campaign_id": row.id, "campaign_name": row.name,
            "status": row.status, "kind": row.kind,
            "item": domain.shown_item(row, found.item, None) if found.item is not None else None,
            "progress": found.progress}


@router.post("/{campaign_id}/items/{item_id}/labels", openapi_extra=RATE, summary="Label an item",
             description="`score`, `preferred` (index of the better shown answer), `ranking` (shown indices, best "
             "first) or `choice` (`a`, `b` or `tie`), and an optional `comment`. A resubmission replaces this "
             "rater's label (the history keeps every one); the same label and comment again is a 409 "
             "`duplicate_label`.")
def post_label(campaign_id: str, item_id: str, repo: RepoDep, state: StateDep, principal: PrincipalDep,
               body: Any = Body(...)) -> dict[str, Any]:
    row = repo.get_assigned_campaign(campaign_id, principal.key_id)
    item = repo.get_item(row.id, item_id)
    if row.status != "collecting":
        raise Conflict(f"Feedback campaign '{row.id}' is {row.status}, not collecting: it takes no labels.",
                       param="campaign_id", code="campaign_not_collecting")
    value, sent, comment = domain.parse_label(row, item, body)
    label = repo.save_label(row, item, principal.key_id, value, sent, comment, now(),
                            int(row.config["raters_per_item"]))
    state.metrics.feedback.label(row.kind)
    return label_object(label)
