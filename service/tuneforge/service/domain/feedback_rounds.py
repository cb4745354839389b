"""One round of the feedback loop as one call: from a campaign's labels to the next campaign on a better model.

``POST /v1/feedback_campaigns/{id}/rounds`` checks everything it can at once (the request, the reinforcement
hyperparameters, the files, the evals), exports the campaign's agreed labels as a preference file and creates
the reward-model job on it; the rest happens as the jobs finish (:mod:`..executors.feedback_rounds` calls
:func:`advance_round`):

1. ``reward_model``: when the reward-model job succeeds, a ``reinforcement`` job (PPO or GRPO) on the campaign's
   prompt file, graded by that reward model, with the round's evals (base vs tuned, :mod:`.job_evals`);
2. ``reinforcement``: when that job succeeds, its evals start (the job's own, see :mod:`.job_evals`);
3. ``evaluation``: when every eval run of the job has ended;
4. ``next_campaign``: a campaign like this one (same prompts, kind, sampling, raters and gold items) on the tuned
   model (a blind A/B campaign compares the policy before and after), and the round has ``succeeded``.

Every step is an ordinary job, eval run or campaign the tenant can open; the round links them. A job that fails
or is cancelled ends the round ``failed`` with the reason. Jobs are created with an ``Idempotency-Key`` of the
round, so two replicas advancing the same round create one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tuneforge.contracts.datasets import METHOD_FORMATS
from tuneforge.contracts.methods import Method
from tuneforge.contracts.status import JobStatus
from tuneforge.contracts.validation import describe
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import Conflict, InvalidRequest, NotFound, ServiceError
from tuneforge.service.core.ids import new_id
from tuneforge.service.db.models import FeedbackCampaign, FeedbackRound, File, Job, now
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.feedback import create_campaign, read_prompts
from tuneforge.service.domain.job_evals import check_job_evals
from tuneforge.service.domain.job_requests import create_job
from tuneforge.service.domain.quotas import effective_limits
from tuneforge.service.schemas import MAX_JOB_EVALS, JobCreate, JobEval
from tuneforge.storage import ObjectStore

_METHOD = TypeAdapter(Method)
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
_RUN_TERMINAL = {"completed", "failed", "canceled"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoundRewardModel(_Request):
    model: str | None = Field(None, min_length=1, max_length=512, description="The base model the reward model "
                              "is trained from (default: the campaign's first model)")
    hyperparameters: dict[str, Any] | None = Field(None, description="The reward_model method's hyperparameters")
    validation_file: str | None = Field(None, min_length=1, max_length=64, description="Held-out preference pairs: "
                                        "the job reports the reward model's accuracy on them")


class RoundReinforcement(_Request):
    model: str | None = Field(None, min_length=1, max_length=512, description="The policy to tune (default: the "
                              "campaign's first model)")
    algorithm: Literal["ppo", "grpo"] = "ppo"
    hyperparameters: dict[str, Any] | None = Field(None, description="The reinforcement method's hyperparameters")
    training_file: str | None = Field(None, min_length=1, max_length=64,
                                      description="Prompts to train on (default: the campaign's prompt file)")
    validation_file: str | None = Field(None, min_length=1, max_length=64)


class RoundNextCampaign(_Request):
    name: str | None = Field(None, max_length=256)
    file_id: str | None = Field(None, min_length=1, max_length=64,
                                description="Prompts of the next campaign (default: this campaign's)")


class RoundCreate(_Request):
    export: dict[str, Any] | None = Field(None, description="The export's options (min_agreement, "
                                          "min_rater_accuracy, filename)")
    reward_model: RoundRewardModel = Field(default_factory=RoundRewardModel)
    reinforcement: RoundReinforcement = Field(default_factory=RoundReinforcement)
    evals: list[JobEval] | None = Field(None, max_length=MAX_JOB_EVALS, description="Evals the reinforcement job "
                                        "runs on its base and its tuned model (as a job's `evals`)")
    next_campaign: RoundNextCampaign | None = Field(default_factory=RoundNextCampaign, description="The next "
                                                    "campaign's name and prompts; null: open none")


def _invalid(exc: ValidationError, body: Any, rename: Any = str) -> InvalidRequest:
    details = describe(exc.errors(), body, rename=rename)
    return InvalidRequest(details[0]["message"], param=details[0]["param"] or None, details=list(details))


def _renamed(exc: ServiceError, params: dict[str, str]) -> ServiceError:
    """A job's or export's error with its ``param`` named as the round's request names it."""
    if exc.param is not None:
        for theirs, ours in params.items():
            if exc.param == theirs or exc.param.startswith(theirs + "."):
                renamed = ours + exc.param[len(theirs):]
                exc.message = exc.message.replace(f"'{exc.param}'", f"'{renamed}'")
                exc.param = renamed
                break
    return exc


def _method(kind: str, section: dict[str, Any], param: str) -> dict[str, Any]:
    """The job's method, checked against the contract now (so a bad hyperparameter is refused by this call)."""
    raw = {"type": kind, kind: section}
    try:
        _METHOD.validate_python(raw)
    except ValidationError as exc:
        raise _invalid(exc, raw, rename=lambda path: param + path.removeprefix(kind)) from None
    return raw


def _reinforcement_method(options: dict[str, Any], reward_model: str) -> dict[str, Any]:
    section = {"algorithm": options["algorithm"], "hyperparameters": options.get("hyperparameters") or {},
               "grader": {"type": "reward_model", "model": reward_model}}
    return _method("reinforcement", section, "reinforcement")


def _prompt_file(repo: TenantRepo, file_id: str, param: str) -> File:
    file = repo.get_file(file_id, param=param)
    if file.format not in METHOD_FORMATS["reinforcement"]:
        raise InvalidRequest(f"File '{file.id}' ({file.filename}) is not a prompt file (it is {file.format}): a "
                             "reinforcement job trains on prompts", param=param, code="invalid_file_format")
    return file


def _job_body(model: str, training_file: str, method: dict[str, Any], round_id: str, campaign_id: str,
              **extra: Any) -> dict[str, Any]:
    return {"model": model, "training_file": training_file, "method": method, "suffix": "round",
            "metadata": {"feedback_round": round_id, "feedback_campaign": campaign_id}, **extra}


def _create_job(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, body: dict[str, Any],
                key: str) -> Job:
    try:
        request = JobCreate.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, body) from None
    limits = effective_limits(settings.limits, repo.organization().limits)
    return create_job(repo, store, settings, request, key, limits)


def create_round(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, campaign: FeedbackCampaign,
                 body: Any, *, export_file: Any) -> tuple[FeedbackRound, Job]:
    """Checks the round, exports the campaign and creates the reward-model job; nothing stays when one fails.
    ``export_file(repo, store, campaign, options)`` is the export (the route passes the tenant's quota in it)."""
    try:
        request = RoundCreate.model_validate(body if body is not None else {})
    except ValidationError as exc:
        raise _invalid(exc, body) from None
    first = str(campaign.config["models"][0])
    policy = request.reinforcement.model or first
    _method("reward_model", {"hyperparameters": request.reward_model.hyperparameters or {}}, "reward_model")
    rl_options = {"algorithm": request.reinforcement.algorithm,
                  "hyperparameters": request.reinforcement.hyperparameters or {}}
    _reinforcement_method(rl_options, "the reward model this round trains")
    training = _prompt_file(repo, request.reinforcement.training_file or campaign.file_id,
                            "reinforcement.training_file")
    validation = (_prompt_file(repo, request.reinforcement.validation_file, "reinforcement.validation_file")
                  if request.reinforcement.validation_file else None)
    evals = check_job_evals(repo, store, request.evals or [], policy, settings.limits.max_eval_items)
    next_campaign = None
    if request.next_campaign is not None:
        next_file = request.next_campaign.file_id or campaign.file_id
        read_prompts(store, repo.get_file(next_file, param="next_campaign.file_id"), "next_campaign.file_id")
        next_campaign = {"name": request.next_campaign.name, "file_id": next_file}
    round_id = new_id("fbround")
    try:
        exported = export_file(repo, store, campaign, request.export)
    except ServiceError as exc:
        raise _renamed(exc, {"min_agreement": "export.min_agreement", "min_rater_accuracy":
                             "export.min_rater_accuracy", "filename": "export.filename"}) from None
    rm_base = request.reward_model.model or first
    method = _method("reward_model", {"hyperparameters": request.reward_model.hyperparameters or {}},
                     "reward_model")
    rm_extra = ({"validation_file": request.reward_model.validation_file}
                if request.reward_model.validation_file else {})
    try:
        job = _create_job(repo, store, settings, _job_body(rm_base, exported.id, method, round_id, campaign.id,
                                                           **rm_extra), f"{round_id}:reward_model")
    except ServiceError as exc:
        repo.delete_file(exported)
        store.delete(exported.key)
        raise _renamed(exc, {"model": "reward_model.model", "method.reward_model": "reward_model",
                             "validation_file": "reward_model.validation_file"}) from None
    options = {"reward_model": {"model": rm_base, **request.reward_model.model_dump(exclude={"model"})},
               "reinforcement": {**rl_options, "model": policy, "training_file": training.id,
                                 "validation_file": validation.id if validation else None},
               "evals": evals, "next_campaign": next_campaign}
    row = repo.add_round(FeedbackRound(
        id=round_id, campaign_id=campaign.id, status="running", step="reward_model", options=options,
        export_file_id=exported.id, reward_model_job_id=job.id, created_at=now()))
    return row, job


@dataclass
class Advanced:
    """What a step did that someone must be told of."""

    #: a job was created: the executor should look now
    new_job: bool = False
    #: a campaign was opened: its sampling starts
    new_campaign_id: str | None = None


def _fail(repo: TenantRepo, row: FeedbackRound, code: str, message: str) -> None:
    repo.set_round(row.id, status="failed", error={"code": code, "message": message}, finished_at=now())


def _ended_badly(job: Job, what: str) -> str:
    reason = f": {job.error.get('message')}" if job.error and job.error.get("message") else ""
    return f"the {what} job {job.id} ended {job.status}{reason}"


def _job_or_none(repo: TenantRepo, job_id: str | None) -> Job | None:
    if job_id is None:
        return None
    try:
        return repo.get_job(job_id)
    except NotFound:
        return None


def _succeeded(repo: TenantRepo, row: FeedbackRound, job_id: str | None, what: str, code: str) -> Job | None:
    """The step's job once it has succeeded with a model; None while it runs, or when it is gone or ended
    otherwise (then the round has failed, with the reason)."""
    job = _job_or_none(repo, job_id)
    if job is None:
        _fail(repo, row, "job_deleted", f"the {what} job {job_id} was deleted")
        return None
    if job.status not in _TERMINAL:
        return None
    if job.status != JobStatus.SUCCEEDED or not job.fine_tuned_model:
        _fail(repo, row, code, _ended_badly(job, what))
        return None
    return job


def _evals_ended(repo: TenantRepo, job: Job) -> bool:
    if job.evals_state != "started":
        return False
    for entry in job.evals or []:
        for role in ("base", "tuned"):
            run_id = entry.get(f"{role}_run_id")
            if not run_id:
                continue
            try:
                if repo.get_eval_run(entry["eval_id"], run_id).status not in _RUN_TERMINAL:
                    return False
            except NotFound:
                continue  # deleted: nothing to wait for
    return True


def _next_campaign_body(campaign: FeedbackCampaign, options: dict[str, Any], policy: str,
                        tuned: str) -> dict[str, Any]:
    config = campaign.config
    models = [policy, tuned] if campaign.kind == "ab" else [tuned]
    return {"name": options.get("name") or f"{campaign.name} (next round)", "file_id": options["file_id"],
            "models": models, "samples_per_prompt": config["samples_per_prompt"], "sampling": config["sampling"],
            "kind": campaign.kind, "raters_per_item": config["raters_per_item"],
            **({"scale": config["scale"]} if config.get("scale") else {}),
            "gold_items": [{"prompt": g["prompt"], "answers": g["answers"], "label": g["label"]}
                           for g in config.get("gold_items") or []]}


def advance_round(repo: TenantRepo, store: ObjectStore, settings: ServiceSettings, row: FeedbackRound) -> Advanced:
    """Moves a running round on as far as its jobs allow (called every few seconds)."""
    done = Advanced()
    options = row.options
    if row.step == "reward_model":
        rm = _succeeded(repo, row, row.reward_model_job_id, "reward model", "reward_model_failed")
        if rm is None or rm.fine_tuned_model is None:
            return done
        rl_options = options["reinforcement"]
        extra: dict[str, Any] = {"evals": options["evals"]} if options.get("evals") else {}
        if rl_options.get("validation_file"):
            extra["validation_file"] = rl_options["validation_file"]
        try:
            body = _job_body(rl_options["model"], rl_options["training_file"],
                             _reinforcement_method(rl_options, rm.fine_tuned_model), row.id, row.campaign_id, **extra)
            created = _create_job(repo, store, settings, body, f"{row.id}:reinforcement")
        except ServiceError as exc:
            _fail(repo, row, "reinforcement_not_created", f"the reinforcement job could not be created: {exc.message}")
            return done
        if not repo.set_round(row.id, step="reinforcement", reinforcement_job_id=created.id):
            return done  # cancelled meanwhile (the job stays: it is the tenant's to cancel or keep)
        row.step, row.reinforcement_job_id, done.new_job = "reinforcement", created.id, True
    if row.step == "reinforcement":
        rl = _succeeded(repo, row, row.reinforcement_job_id, "reinforcement", "reinforcement_failed")
        if rl is None:
            return done
        step = "evaluation" if rl.evals else "next_campaign"
        if not repo.set_round(row.id, step=step):
            return done
        row.step = step
    if row.step == "evaluation":
        evaluated = _job_or_none(repo, row.reinforcement_job_id)
        if evaluated is not None and not _evals_ended(repo, evaluated):
            return done
        if not repo.set_round(row.id, step="next_campaign"):
            return done
        row.step = "next_campaign"
    if row.step == "next_campaign":
        if options.get("next_campaign") is None:
            repo.set_round(row.id, step="done", status="succeeded", finished_at=now())
            return done
        tuned = _job_or_none(repo, row.reinforcement_job_id)
        campaign = repo.get_campaign(row.campaign_id)
        if tuned is None or not tuned.fine_tuned_model:
            _fail(repo, row, "job_deleted", f"the reinforcement job {row.reinforcement_job_id} was deleted")
            return done
        body = _next_campaign_body(campaign, options["next_campaign"], options["reinforcement"]["model"],
                                   tuned.fine_tuned_model)
        try:
            opened = create_campaign(repo, store, body, now(), settings.limits.max_eval_items)
        except ServiceError as exc:
            _fail(repo, row, "next_campaign_not_created", f"the next campaign could not be opened: {exc.message}")
            return done
        raters = repo.campaign_raters(campaign.id)
        if raters:
            repo.add_raters(opened, raters, now())
        if not repo.set_round(row.id, step="done", status="succeeded", next_campaign_id=opened.id,
                              finished_at=now()):
            repo.delete_campaign(opened)  # another replica (or a cancel) got there first
            return done
        done.new_campaign_id = opened.id
    return done


def cancel_round(repo: TenantRepo, row: FeedbackRound) -> list[str]:
    """Marks the round cancelled; the ids of its jobs still running (the caller cancels them)."""
    if not repo.set_round(row.id, status="cancelled", finished_at=now()):
        raise Conflict(f"Feedback round '{row.id}' has already {row.status}.", code="round_not_cancelable")
    active = []
    for job_id in (row.reward_model_job_id, row.reinforcement_job_id):
        job = _job_or_none(repo, job_id)
        if job is not None and job.status not in _TERMINAL:
            active.append(job.id)
    return active
