"""Feedback campaigns (issue #16): what a campaign request must satisfy, the items raters see, and their labels.

A campaign names a prompt file (rows of ``{"messages": [...]}`` or ``{"prompt": "..."}``), one or more models
(base or ``ft:``, resolved like chat completions and evals), ``samples_per_prompt`` K with sampling settings, and
a feedback kind. Sampling (:mod:`tuneforge.service.executors.feedback_sampling`) turns each prompt's answers into
items:

- ``score``: one item per answer; a label is ``{"score": x}`` within the campaign's scale;
- ``pairwise``: one item per pair of a prompt's answers; a label is ``{"preferred": 0 | 1}``;
- ``ranking``: one item per prompt with all its answers; a label is ``{"ranking": [best, ..., worst]}``;
- ``ab``: blind A/B between exactly two models, one item per sample pair; a label is
  ``{"choice": "a" | "b" | "tie"}`` (``a``: the answer shown first).

Raters see the answers in an order shuffled per item (deterministically, from the campaign's and the item's id)
and never the model that wrote them; labels are stored both as sent and against the answers' stored order
("canonical"), which is what the report and the export read.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneforge.contracts.datasets import InvalidLine, normalise
from tuneforge.service.core.errors import InvalidRequest, ServiceError
from tuneforge.service.core.ids import new_id
from tuneforge.service.core.roles import Role
from tuneforge.service.db.models import FeedbackCampaign, FeedbackItem, FeedbackLabel, File
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.grading import invalid
from tuneforge.service.domain.serving import resolve_target
from tuneforge.storage import ObjectNotFound, ObjectStore

KINDS = ("score", "pairwise", "ranking", "ab")
STATUSES = ("pending", "sampling", "collecting", "completed", "cancelled", "failed")
#: answers on one item at most: the rating page's keys 1-9 choose them
MAX_ANSWERS = 9
SHOWN_PROBLEMS = 5
MAX_PROBLEMS = 50
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Request):
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=8192)
    #: sample k of a prompt uses seed + k, so a campaign's samples can be drawn again
    seed: int | None = None


class Scale(_Request):
    min: float = 1
    max: float = 5

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.min >= self.max:
            raise ValueError("the scale's 'min' must be below its 'max'")
        return self


class GoldItem(_Request):
    """An item with a known label, mixed among the sampled ones to measure each rater's accuracy."""

    prompt: str | list[dict[str, Any]] = Field(..., description="a user prompt, or chat messages")
    answers: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(..., min_length=1,
                                                                                   max_length=MAX_ANSWERS)
    #: the right label, as a rater would send it with the answers shown in the order given here
    label: dict[str, Any]


class CampaignCreate(_Request):
    name: str | None = Field(None, max_length=256)
    file_id: str = Field(..., min_length=1, max_length=64)
    models: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(..., min_length=1, max_length=4)
    samples_per_prompt: int = Field(2, ge=1, le=MAX_ANSWERS)
    sampling: Sampling = Field(default_factory=Sampling)
    kind: Literal["score", "pairwise", "ranking", "ab"]
    scale: Scale | None = None
    raters_per_item: int = Field(1, ge=1, le=20)
    gold_items: list[GoldItem] = Field(default_factory=list, max_length=200)
    metadata: Metadata | None = None


class RatersAdd(_Request):
    key_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(..., min_length=1, max_length=100)


class LabelBody(_Request):
    score: float | None = None
    preferred: int | None = None
    ranking: list[int] | None = None
    choice: Literal["a", "b", "tie"] | None = None
    comment: str | None = Field(None, max_length=4000)


#: the label field each kind takes
LABEL_FIELD = {"score": "score", "pairwise": "preferred", "ranking": "ranking", "ab": "choice"}


def _validated(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc, body) from None


def answers_per_item(kind: str, candidates: int) -> int:
    return {"score": 1, "pairwise": 2, "ab": 2}.get(kind, candidates)


# -- the prompt file --
@dataclass(frozen=True)
class Prompt:
    line: int
    messages: list[dict[str, Any]]


def read_prompts(store: ObjectStore, file: File, param: str) -> list[Prompt]:
    """The prompt file's rows, each a prompt; any bad row is a 400 naming its line."""
    try:
        raw = store.get_bytes(file.key)
    except ObjectNotFound:
        raise InvalidRequest(f"File '{file.id}' has no content any more", param=param) from None
    prompts: list[Prompt] = []
    problems: list[dict[str, Any]] = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append({"line": number, "message": f"not valid JSON: {exc}"})
            continue
        if not isinstance(obj, dict) or not ({"messages", "prompt"} & set(obj)):
            problems.append({"line": number, "message": "a prompt row is {\"messages\": [...]} or "
                                                        "{\"prompt\": \"...\"}"})
            continue
        try:
            fmt, row = normalise(obj)
        except InvalidLine as exc:
            where = f"field '{exc.field}': " if exc.field else ""
            problems.append({"line": number, "message": f"{where}{exc.message}"})
            continue
        if fmt != "prompt_only":
            problems.append({"line": number, "message": "a prompt row must not end with the assistant's answer "
                                                        "(the campaign's models write the answers)"})
            continue
        prompts.append(Prompt(number, row["prompt"]))
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        shown = "; ".join(f"line {p['line']}: {p['message']}" for p in problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise InvalidRequest(f"File '{file.id}' ({file.filename}) is not a prompt file: {len(problems)} problem(s): "
                             f"{shown}{more}", param=param, code="invalid_file_format", details=problems)
    if not prompts:
        raise InvalidRequest(f"File '{file.id}' has no prompts.", param=param)
    return prompts


# -- creating a campaign --
def create_campaign(repo: TenantRepo, store: ObjectStore, body: Any, created_at: int,
                    max_prompts: int) -> FeedbackCampaign:
    request: CampaignCreate = _validated(CampaignCreate, body)
    kind = request.kind
    if len(set(request.models)) != len(request.models):
        raise InvalidRequest("Invalid value for 'models': a model is named twice", param="models")
    if kind == "ab" and len(request.models) != 2:
        raise InvalidRequest(f"Invalid value for 'models': a blind A/B campaign compares exactly two models, "
                             f"got {len(request.models)}", param="models")
    candidates = len(request.models) * request.samples_per_prompt
    if kind in ("pairwise", "ranking") and not 2 <= candidates <= MAX_ANSWERS:
        raise InvalidRequest(f"Invalid value for 'samples_per_prompt': a {kind} campaign needs 2 to {MAX_ANSWERS} "
                             f"answers per prompt (models x samples_per_prompt), got {candidates}",
                             param="samples_per_prompt")
    if request.scale is not None and kind != "score":
        raise InvalidRequest(f"Invalid value for 'scale': only a score campaign has a scale, not a {kind} one",
                             param="scale")
    scale = (request.scale or Scale()) if kind == "score" else None
    for i, model in enumerate(request.models):
        try:
            resolve_target(repo, store, model)
        except ServiceError as exc:
            exc.param = f"models.{i}"
            raise
    file = repo.get_file(request.file_id, param="file_id")
    prompts = read_prompts(store, file, "file_id")
    if len(prompts) > max_prompts:
        raise InvalidRequest(f"File '{file.id}' has {len(prompts)} prompts; a campaign may have at most "
                             f"{max_prompts}.", param="file_id")
    config = {"models": request.models, "samples_per_prompt": request.samples_per_prompt,
              "sampling": request.sampling.model_dump(), "scale": scale.model_dump() if scale else None,
              "raters_per_item": request.raters_per_item}
    campaign = FeedbackCampaign(
        id=new_id("fbc"), name=request.name or "feedback", status="pending", kind=kind, file_id=file.id,
        config=config, campaign_metadata=request.metadata, total_prompts=len(prompts), sampled_prompts=0,
        created_at=created_at)
    campaign.config = {**config, "gold_items": [_gold(campaign, g, f"gold_items.{i}", candidates)
                                                for i, g in enumerate(request.gold_items)]}
    campaign.tenant_id = repo.tenant_id
    return repo.add_campaign(campaign, gold_items(campaign))


def _gold(campaign: FeedbackCampaign, gold: GoldItem, param: str, candidates: int) -> dict[str, Any]:
    expected = answers_per_item(campaign.kind, candidates)
    if campaign.kind in ("ranking",) and not 2 <= len(gold.answers) <= MAX_ANSWERS:
        raise InvalidRequest(f"Invalid value for '{param}.answers': a ranking item has 2 to {MAX_ANSWERS} answers",
                             param=f"{param}.answers")
    if campaign.kind != "ranking" and len(gold.answers) != expected:
        raise InvalidRequest(f"Invalid value for '{param}.answers': a {campaign.kind} item has {expected} "
                             f"answer(s), got {len(gold.answers)}", param=f"{param}.answers")
    if isinstance(gold.prompt, str):
        messages = [{"role": "user", "content": gold.prompt}]
    else:
        try:
            _, row = normalise({"messages": gold.prompt})
        except InvalidLine as exc:
            raise InvalidRequest(f"Invalid value for '{param}.prompt': {exc}", param=f"{param}.prompt") from None
        messages = row.get("prompt") or row.get("messages") or []
    label = _validated(LabelBody, gold.label)
    value, _ = canonical_label(campaign, label, list(range(len(gold.answers))), f"{param}.label")
    return {"prompt": messages, "answers": gold.answers, "label": value}


def gold_items(campaign: FeedbackCampaign) -> list[FeedbackItem]:
    """The campaign's gold items as rows (the sampler stores them with the first prompt's items)."""
    return [FeedbackItem(id=new_id("fbitem"), campaign_id=campaign.id, tenant_id=campaign.tenant_id, line=0,
                         prompt=g["prompt"], answers=[{"text": t, "model": None} for t in g["answers"]],
                         gold=g["label"]) for g in campaign.config.get("gold_items") or []]


def prompt_items(campaign: FeedbackCampaign, prompt: Prompt, answers: dict[str, list[dict[str, Any]]],
                 created_at: int) -> list[FeedbackItem]:
    """One prompt's items from its answers (per model, K each: ``{"text", "model", "sample"}``)."""
    models: list[str] = campaign.config["models"]
    flat = [a for m in models for a in answers[m]]
    groups: list[list[dict[str, Any]]]
    if campaign.kind == "score":
        groups = [[a] for a in flat]
    elif campaign.kind == "pairwise":
        groups = [[flat[i], flat[j]] for i in range(len(flat)) for j in range(i + 1, len(flat))]
    elif campaign.kind == "ranking":
        groups = [flat]
    else:  # ab: sample k of model A against sample k of model B
        groups = [[a, b] for a, b in zip(answers[models[0]], answers[models[1]], strict=True)]
    return [FeedbackItem(id=new_id("fbitem"), campaign_id=campaign.id, tenant_id=campaign.tenant_id,
                         line=prompt.line, prompt=prompt.messages, answers=group, gold=None, created_at=created_at)
            for group in groups]


# -- raters --
def assign_raters(repo: TenantRepo, campaign: FeedbackCampaign, body: Any, at: int) -> list[str]:
    request: RatersAdd = _validated(RatersAdd, body)
    keys = repo.rater_keys(request.key_ids)
    for i, key_id in enumerate(request.key_ids):
        key = keys.get(key_id)
        if key is None:
            raise InvalidRequest(f"Invalid value for 'key_ids.{i}': no API key '{key_id}' in this organization",
                                 param=f"key_ids.{i}", code="api_key_not_found")
        if key.role != Role.RATER.value:
            raise InvalidRequest(f"Invalid value for 'key_ids.{i}': key '{key_id}' has the role '{key.role}'; only "
                                 "keys with the 'rater' role rate", param=f"key_ids.{i}", code="not_a_rater_key")
        if key.revoked_at is not None:
            raise InvalidRequest(f"Invalid value for 'key_ids.{i}': key '{key_id}' is revoked",
                                 param=f"key_ids.{i}", code="api_key_revoked")
    repo.add_raters(campaign, request.key_ids, at)
    return repo.campaign_raters(campaign.id)


def display_order(campaign_id: str, item_id: str, n: int) -> list[int]:
    """The order a rater sees an item's answers in: ``order[j]`` is the stored index of the j-th shown answer.
    Random per item, the same for every rater and every request (a hash of the two ids seeds it)."""
    order = list(range(n))
    seed = int.from_bytes(hashlib.sha256(f"{campaign_id}/{item_id}".encode()).digest()[:8], "big")
    random.Random(seed).shuffle(order)
    return order


def canonical_label(campaign: FeedbackCampaign, label: LabelBody, order: list[int],
                    param: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the label against the stored answer order, the label as sent); a 400 naming the field when it does not fit
    the campaign's kind or the item."""
    prefix = f"{param}." if param else ""
    wanted = LABEL_FIELD[campaign.kind]
    sent = label.model_dump(exclude_none=True, exclude={"comment"})
    for field in sent:
        if field != wanted:
            raise InvalidRequest(f"Invalid value for '{prefix}{field}': a {campaign.kind} campaign's label is "
                                 f"'{wanted}', not '{field}'", param=f"{prefix}{field}")
    if wanted not in sent:
        raise InvalidRequest(f"Missing '{prefix}{wanted}': a {campaign.kind} campaign's label",
                             param=f"{prefix}{wanted}")
    n = len(order)
    name = f"{prefix}{wanted}"
    if campaign.kind == "score":
        scale = campaign.config["scale"]
        score = float(label.score)  # type: ignore[arg-type]
        if not scale["min"] <= score <= scale["max"]:
            raise InvalidRequest(f"Invalid value for '{name}': {score:g} is outside the scale "
                                 f"{scale['min']:g} to {scale['max']:g}", param=name, code="score_out_of_range")
        return {"score": score}, sent
    if campaign.kind == "pairwise":
        if label.preferred not in range(n):
            raise InvalidRequest(f"Invalid value for '{name}': the index of the better answer, 0 to {n - 1}, "
                                 f"got {label.preferred}", param=name)
        return {"preferred": order[label.preferred]}, sent  # type: ignore[index]
    if campaign.kind == "ranking":
        ranking = label.ranking or []
        if sorted(ranking) != list(range(n)):
            raise InvalidRequest(f"Invalid value for '{name}': a ranking lists every answer's index once, best "
                                 f"first (a permutation of 0 to {n - 1}), got {ranking}", param=name,
                                 code="not_a_permutation")
        return {"ranking": [order[j] for j in ranking]}, sent
    choice = label.choice
    return {"winner": None if choice == "tie" else order[0 if choice == "a" else 1]}, sent


def parse_label(campaign: FeedbackCampaign, item: FeedbackItem, body: Any) -> tuple[dict[str, Any], dict[str, Any],
                                                                                    str | None]:
    label: LabelBody = _validated(LabelBody, body)
    value, sent = canonical_label(campaign, label, display_order(campaign.id, item.id, len(item.answers)))
    return value, sent, label.comment


# -- what a rater sees --
def shown_item(campaign: FeedbackCampaign, item: FeedbackItem, own: FeedbackLabel | None) -> dict[str, Any]:
    """An item for a rater: the prompt and the answers in the item's shown order; never a model, a sample's
    settings, or a gold label."""
    order = display_order(campaign.id, item.id, len(item.answers))
    prompt = [{"role": m["role"], "content": m.get("content") or ""} for m in item.prompt]
    return {"object": "feedback_item", "id": item.id, "campaign_id": campaign.id, "kind": campaign.kind,
            "prompt": prompt,
            "answers": [{"index": j, "text": item.answers[i]["text"]} for j, i in enumerate(order)],
            "scale": campaign.config.get("scale"), "label_field": LABEL_FIELD[campaign.kind],
            "your_label": ({**own.submitted, "comment": own.comment, "revision": own.revision}
                           if own is not None else None)}


@dataclass(frozen=True)
class NextItem:
    item: FeedbackItem | None
    progress: dict[str, int]


def next_item(repo: TenantRepo, campaign: FeedbackCampaign, key_id: str) -> NextItem:
    """The next item for this rater: one it has not labelled that still lacks raters, its own share first.

    Item ``p`` (in stored order) is shared out to the raters ``(p + t) mod n`` for ``t < raters_per_item`` (``n``:
    the assigned raters, in assignment order), so each item gets its raters and each rater a fair share; a
    rater whose share is done helps with the items others left."""
    items = repo.campaign_items(campaign.id)
    labels = repo.campaign_labels(campaign.id)
    raters = repo.campaign_raters(campaign.id)
    wanted = int(campaign.config["raters_per_item"])
    counts: dict[str, int] = {}
    mine: set[str] = set()
    for label in labels:
        counts[label.item_id] = counts.get(label.item_id, 0) + 1
        if label.rater_key_id == key_id:
            mine.add(label.item_id)
    me, n = raters.index(key_id), len(raters)
    share = [item for p, item in enumerate(items) if any((p + t) % n == me for t in range(min(wanted, n)))]
    open_items = [i for i in items if i.id not in mine and counts.get(i.id, 0) < wanted]
    share_ids = {i.id for i in share}
    chosen = None
    if campaign.status == "collecting":
        chosen = next((i for i in open_items if i.id in share_ids), None) or (
            min(open_items, key=lambda i: counts.get(i.id, 0)) if open_items else None)
    full = sum(1 for i in items if counts.get(i.id, 0) >= wanted)
    progress = {"labelled_by_you": len(mine), "your_share": len(share), "items": len(items),
                "fully_labelled_items": full}
    return NextItem(chosen, progress)
