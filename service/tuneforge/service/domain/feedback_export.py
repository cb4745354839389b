"""A feedback campaign's labels as a training file (``purpose: fine-tune``), stored like an upload.

- ``pairwise``, ``ranking`` and ``ab`` campaigns: OpenAI's preference rows (``input``, ``preferred_output``,
  ``non_preferred_output``), what ``dpo`` and ``reward_model`` jobs train on. Every label is read as pairs of
  answers (a ranking of K is K(K-1)/2 pairs, an A/B tie is a tie of its pair); each pair's direction is the
  majority of its raters' votes, and the pair is kept only when that majority is a preference (ties and split
  votes are dropped), reaches ``min_agreement``, and the two answers differ.
- ``score`` campaigns: one row per answer with its mean score (``prompt``/``completion``/``score`` when every
  prompt is a single user turn, else ``messages``/``score``), kept when ``min_agreement`` of its raters are within
  half a point of the median.

``min_rater_accuracy`` keeps only the labels of raters whose accuracy on gold items reaches it (a rater that
labelled no gold item is then left out too). Gold items are never exported. The rows are validated exactly as an
upload would be; an export with no rows is a 400 and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.contracts.store_layout import file_key
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import FeedbackCampaign, FeedbackItem, FeedbackLabel, File, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.feedback_report import SCORE_TOLERANCE, rater_quality
from tuneforge.service.domain.grading import invalid
from tuneforge.service.domain.quotas import Limits, admit_file
from tuneforge.service.domain.upload_validation import validate_upload
from tuneforge.storage import ObjectStore


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(0.5, ge=0, le=1, description="share of an item's votes its consensus needs")
    min_rater_accuracy: float | None = Field(None, ge=0, le=1, description="keep raters this accurate on gold")
    filename: str | None = Field(None, min_length=1, max_length=200)


def _pairs(kind: str, value: dict[str, Any], n: int) -> dict[tuple[int, int], str]:
    """A label's votes on pairs (i < j): "i" (i better), "j", or "tie"."""
    if kind == "pairwise":
        return {(0, 1): "i" if value["preferred"] == 0 else "j"}
    if kind == "ab":
        return {(0, 1): "tie" if value["winner"] is None else ("i" if value["winner"] == 0 else "j")}
    rank = {answer: r for r, answer in enumerate(value["ranking"])}
    return {(i, j): "i" if rank[i] < rank[j] else "j" for i in range(n) for j in range(i + 1, n)}


def _messages(item: FeedbackItem) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in item.prompt]


def preference_rows(campaign: FeedbackCampaign, items: list[FeedbackItem], labels: list[FeedbackLabel],
                    min_agreement: float) -> list[dict[str, Any]]:
    by_item: dict[str, list[FeedbackLabel]] = {}
    for label in labels:
        by_item.setdefault(label.item_id, []).append(label)
    rows = []
    for item in items:
        if item.gold is not None or item.id not in by_item:
            continue
        votes: dict[tuple[int, int], Counter[str]] = {}
        for label in by_item[item.id]:
            for pair, vote in _pairs(campaign.kind, label.value, len(item.answers)).items():
                votes.setdefault(pair, Counter())[vote] += 1
        for (i, j), counted in sorted(votes.items()):
            (top, n), *rest = counted.most_common()
            if top == "tie" or (rest and rest[0][1] == n) or n / sum(counted.values()) < min_agreement:
                continue
            better, worse = (i, j) if top == "i" else (j, i)
            chosen, rejected = item.answers[better]["text"], item.answers[worse]["text"]
            if not chosen.strip() or not rejected.strip() or chosen == rejected:
                continue
            rows.append({"input": {"messages": _messages(item)},
                         "preferred_output": [{"role": "assistant", "content": chosen}],
                         "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return rows


def scored_rows(items: list[FeedbackItem], labels: list[FeedbackLabel], min_agreement: float) -> list[dict[str, Any]]:
    by_item: dict[str, list[float]] = {}
    for label in labels:
        by_item.setdefault(label.item_id, []).append(float(label.value["score"]))
    plain = all(len(i.prompt) == 1 and i.prompt[0]["role"] == "user" for i in items if i.gold is None)
    rows = []
    for item in items:
        scores = sorted(by_item.get(item.id, []))
        text = item.answers[0]["text"]
        if item.gold is not None or not scores or not text.strip():
            continue
        median = scores[len(scores) // 2] if len(scores) % 2 else (scores[len(scores) // 2 - 1]
                                                                    + scores[len(scores) // 2]) / 2
        close = sum(1 for s in scores if abs(s - median) <= SCORE_TOLERANCE)
        if close / len(scores) < min_agreement:
            continue
        score = round(sum(scores) / len(scores), 6)
        if plain:
            rows.append({"prompt": item.prompt[0]["content"], "completion": text, "score": score})
        else:
            rows.append({"messages": [*_messages(item), {"role": "assistant", "content": text}], "score": score})
    return rows


def export_campaign(repo: TenantRepo, store: ObjectStore, campaign: FeedbackCampaign, body: Any, *,
                    quota: Limits, max_tokens: int, max_errors: int, count_tokens: Callable[[str], int]) -> File:
    try:
        request = ExportRequest.model_validate(body if body is not None else {})
    except ValidationError as exc:
        raise invalid(exc, body) from None
    if campaign.status not in ("collecting", "completed"):
        raise InvalidRequest(f"Feedback campaign '{campaign.id}' is {campaign.status}: only a collecting or "
                             "completed campaign has labels to export.", param="campaign_id",
                             code="campaign_not_exportable")
    items = repo.campaign_items(campaign.id)
    labels = repo.campaign_labels(campaign.id)
    if request.min_rater_accuracy is not None:
        by_id = {i.id: i for i in items}
        kept = {q.rater for q in rater_quality(campaign.kind, by_id, labels, repo.campaign_raters(campaign.id))
                if q.gold_accuracy is not None and q.gold_accuracy >= request.min_rater_accuracy}
        labels = [label for label in labels if label.rater_key_id in kept]
    rows = (scored_rows(items, labels, request.min_agreement) if campaign.kind == "score"
            else preference_rows(campaign, items, labels, request.min_agreement))
    if not rows:
        raise InvalidRequest(f"Feedback campaign '{campaign.id}' has no agreed labels to export (min_agreement "
                             f"{request.min_agreement:g}" + (f", min_rater_accuracy {request.min_rater_accuracy:g}"
                                                             if request.min_rater_accuracy is not None else "")
                             + "): nothing was written.", param="min_agreement", code="no_agreed_labels")
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    report = validate_upload(data.splitlines(), max_tokens=max_tokens, max_errors=max_errors,
                             count_tokens=count_tokens)
    if not report.ok:
        first = report.errors[0] if report.errors else None
        raise InvalidRequest(f"The export of '{campaign.id}' would not be a valid training file: {first}",
                             param="campaign_id", code="invalid_export")
    file_id = new_id("file")
    key = file_key(file_id)
    store.put_bytes(key, data)
    row = File(id=file_id, filename=request.filename or f"{campaign.id}-{campaign.kind}.jsonl", purpose="fine-tune",
               bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), key=key, format=report.format,
               rows=report.rows, tokens=report.tokens, created_at=now())
    try:
        admit_file(repo, quota, row)
    except BaseException:
        store.delete(key)
        raise
    return row
