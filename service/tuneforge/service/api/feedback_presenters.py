"""Feedback campaigns, their labels and rater-facing items as API objects (OpenAI-style ``object`` fields)."""

from __future__ import annotations

from typing import Any

from tuneforge.service.db.models import FeedbackCampaign, FeedbackEvent, FeedbackLabel, FeedbackRound
from tuneforge.service.db.repo import TenantRepo


def campaign_object(repo: TenantRepo, row: FeedbackCampaign) -> dict[str, Any]:
    config = row.config
    labels, labelled = repo.count_labels(row.id)
    return {
        "object": "feedback_campaign", "id": row.id, "name": row.name, "created_at": row.created_at,
        "status": row.status, "kind": row.kind, "file_id": row.file_id, "models": config["models"],
        "samples_per_prompt": config["samples_per_prompt"], "sampling": config["sampling"],
        "scale": config.get("scale"), "raters_per_item": config["raters_per_item"],
        "gold_items": len(config.get("gold_items") or []), "raters": repo.campaign_raters(row.id),
        "progress": {"prompts": row.total_prompts, "sampled_prompts": row.sampled_prompts,
                     "items": repo.count_items(row.id), "labelled_items": labelled, "labels": labels},
        "error": row.error, "finished_at": row.finished_at, "metadata": row.campaign_metadata,
    }


def label_object(row: FeedbackLabel) -> dict[str, Any]:
    return {"object": "feedback_label", "id": row.id, "campaign_id": row.campaign_id, "item_id": row.item_id,
            "rater": row.rater_key_id, "label": row.submitted, "comment": row.comment, "revision": row.revision,
            "created_at": row.created_at}


def round_object(row: FeedbackRound) -> dict[str, Any]:
    """A round of the loop, with the id of every job, file and campaign it made (each opens on its own route)."""
    rl = row.reinforcement_job_id
    return {"object": "feedback_campaign.round", "id": row.id, "campaign_id": row.campaign_id,
            "status": row.status, "step": row.step, "created_at": row.created_at, "finished_at": row.finished_at,
            "export_file_id": row.export_file_id, "reward_model_job_id": row.reward_model_job_id,
            "reinforcement_job_id": rl,
            "eval_report": f"/v1/fine_tuning/jobs/{rl}/eval_report" if rl and row.options.get("evals") else None,
            "next_campaign_id": row.next_campaign_id, "error": row.error,
            "reward_model": row.options["reward_model"], "reinforcement": row.options["reinforcement"],
            "evals": [e["eval_id"] for e in row.options.get("evals") or []],
            "next_campaign": row.options.get("next_campaign")}


def event_object(row: FeedbackEvent) -> dict[str, Any]:
    return {"object": "feedback_campaign.event", "id": row.id, "created_at": row.created_at, "level": row.level,
            "message": row.message, "data": row.data}
