"""Feedback campaigns' sampling, in the background in the service process (like eval runs).

Each campaign is one asyncio task: every prompt of its prompt file is answered ``samples_per_prompt`` times by each
of its models through the serving backend (the engines behind ``/v1/chat/completions``), and the prompt's items are
stored together with the campaign's progress, one prompt at a time, only while the campaign is ``sampling``. At most
``TUNEFORGE_EVAL_CONCURRENCY`` completion requests are in flight for all campaigns together.

- pending → sampling → collecting (every prompt answered) or failed (a model that cannot answer: the reason is
  kept; the prompts stored so far stay);
- a cancel marks the campaign ``cancelled`` in the database first, then stops the task; a prompt finishing after it
  is dropped;
- on start-up, campaigns left ``pending`` or ``sampling`` resume where they were: prompts with items are not
  asked again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import ServiceError
from tuneforge.service.db.models import FeedbackCampaign, now
from tuneforge.service.db.repo import SystemRepo, TenantRepo
from tuneforge.service.domain.feedback import Prompt, prompt_items, read_prompts
from tuneforge.service.domain.serving import CHAT, ServingBackend, Target, resolve_target
from tuneforge.service.executors.background import KeyedTasks
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)

#: told of every answer asked for (``ok`` or ``error``) and of every prompt stored (metrics)
SampleHook = Callable[[str], None]


class SamplingFailed(Exception):
    """A model could not answer: the campaign fails."""


@dataclass
class _Work:
    campaign: FeedbackCampaign
    targets: dict[str, Target]
    prompts: list[Prompt]
    failure: str | None = None
    #: prompts answered so far (those of an earlier, interrupted pass included)
    sampled: int = 0


class FeedbackSampler(KeyedTasks):
    def __init__(self, settings: ServiceSettings, sessions: sessionmaker[Session], store: ObjectStore,
                 serving: ServingBackend, on_sample: SampleHook | None = None,
                 on_prompt: Callable[[], None] | None = None) -> None:
        super().__init__(settings.serving.eval_concurrency, "feedback")
        self.settings, self.sessions, self.store, self.serving = settings, sessions, store, serving
        self.on_sample, self.on_prompt = on_sample, on_prompt

    # -- lifecycle --
    async def start(self) -> None:
        self.attach()
        with self.sessions() as session:
            unfinished = SystemRepo(session).unfinished_feedback_campaigns()
        for campaign_id in unfinished:
            log.info("resuming the sampling of feedback campaign %s", campaign_id)
            self.submit(campaign_id)

    # -- a campaign --
    def _system(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        with self.sessions() as session:
            return call(SystemRepo(session), *args, **kwargs)

    def _fail(self, campaign_id: str, code: str, message: str) -> None:
        if self._system(SystemRepo.set_feedback_campaign, campaign_id, only_if=("pending", "sampling"),
                        status="failed", finished_at=now(), error={"code": code, "message": message[:1000]}):
            self._event(campaign_id, f"Sampling failed: {message[:1000]}", level="error",
                        data={"status": "failed", "code": code})

    def _event(self, campaign_id: str, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None) -> None:
        self._system(SystemRepo.add_campaign_event, campaign_id, message, level=level, data=data)

    async def run(self, campaign_id: str) -> None:
        try:
            await self._run(campaign_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the campaign sampling forever
            log.exception("sampling of feedback campaign %s crashed", campaign_id)
            await asyncio.to_thread(self._fail, campaign_id, "internal_error", str(exc))

    def _prepare(self, campaign_id: str) -> _Work | str | None:
        with self.sessions() as session:
            system = SystemRepo(session)
            campaign = system.feedback_campaign(campaign_id)
            if campaign is None or campaign.status not in ("pending", "sampling"):
                return None
            done = system.sampled_lines(campaign_id)
            session.expunge_all()
            repo = TenantRepo(session, campaign.tenant_id)
            try:
                targets = {m: resolve_target(repo, self.store, m) for m in campaign.config["models"]}
                file = repo.get_file(campaign.file_id, param="file_id")
                prompts = read_prompts(self.store, file, "file_id")
            except ServiceError as exc:
                return exc.message
        return _Work(campaign, targets, [p for p in prompts if p.line not in done])

    async def _run(self, campaign_id: str) -> None:
        work = await asyncio.to_thread(self._prepare, campaign_id)
        if work is None:
            return
        if isinstance(work, str):
            await asyncio.to_thread(self._fail, campaign_id, "invalid_campaign", work)
            return
        if not await asyncio.to_thread(self._system, SystemRepo.set_feedback_campaign, campaign_id,
                                       only_if=("pending", "sampling"), status="sampling"):
            return  # cancelled meanwhile
        config, total = work.campaign.config, work.campaign.total_prompts
        work.sampled = total - len(work.prompts)
        await asyncio.to_thread(
            self._event, campaign_id,
            f"Sampling {'resumed' if work.sampled else 'started'}: {len(work.prompts)} of {total} prompts to answer, "
            f"{config['samples_per_prompt']} answer(s) each from {', '.join(config['models'])}",
            data={"status": "sampling", "sampled_prompts": work.sampled, "total_prompts": total})
        pending = iter(work.prompts)
        await asyncio.gather(*[self._worker(work, pending) for _ in range(self.settings.serving.eval_concurrency)])
        if work.failure is not None:
            await asyncio.to_thread(self._fail, campaign_id, "model_error", work.failure)
        elif await asyncio.to_thread(self._system, SystemRepo.set_feedback_campaign, campaign_id,
                                     only_if=("sampling",), status="collecting"):
            await asyncio.to_thread(self._event, campaign_id,
                                    f"Sampling done: {total} prompts answered; the campaign collects labels",
                                    data={"status": "collecting", "sampled_prompts": total, "total_prompts": total})

    async def _worker(self, work: _Work, pending: Iterator[Prompt]) -> None:
        for prompt in pending:
            if work.failure is not None:
                return
            answers: dict[str, list[dict[str, Any]]] = {}
            try:
                for model, target in work.targets.items():
                    answers[model] = [await self._sample(work, target, prompt, k)
                                      for k in range(int(work.campaign.config["samples_per_prompt"]))]
            except SamplingFailed as exc:
                if work.failure is None:
                    work.failure = f"the model failed on the prompt of line {prompt.line}: {exc}"
                return
            items = prompt_items(work.campaign, prompt, answers, now())
            if not await asyncio.to_thread(self._system, SystemRepo.add_feedback_items, work.campaign.id, items):
                return  # cancelled or deleted
            if self.on_prompt is not None:
                self.on_prompt()
            work.sampled += 1
            total = work.campaign.total_prompts
            # progress in tenths (a 10,000-prompt campaign gets ten events, a 5-prompt one five)
            if work.sampled < total and work.sampled * 10 // total > (work.sampled - 1) * 10 // total:
                await asyncio.to_thread(self._event, work.campaign.id,
                                        f"Sampling: {work.sampled} of {total} prompts answered",
                                        data={"status": "sampling", "sampled_prompts": work.sampled,
                                              "total_prompts": total})

    async def _sample(self, work: _Work, target: Target, prompt: Prompt, k: int) -> dict[str, Any]:
        sampling = work.campaign.config["sampling"]
        body: dict[str, Any] = {"model": target.public_id, "messages": prompt.messages,
                                "temperature": sampling["temperature"], "max_tokens": sampling["max_tokens"]}
        if sampling.get("top_p") is not None:
            body["top_p"] = sampling["top_p"]
        if sampling.get("seed") is not None:
            body["seed"] = int(sampling["seed"]) + k
        async with self.limit:
            try:
                reply = await self.serving.request(target, CHAT, body)
            except ServiceError as exc:
                self._count("error")
                raise SamplingFailed(exc.message) from None
            except Exception as exc:
                self._count("error")
                raise SamplingFailed(str(exc) or type(exc).__name__) from None
        if reply.status != 200:
            self._count("error")
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(reply.body)[:300]
            raise SamplingFailed(f"the engine answered {reply.status}: {message}")
        self._count("ok")
        choice = (reply.body.get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        usage = reply.body.get("usage") or {}
        return {"text": text, "model": target.public_id,
                "sample": {"index": k, "seed": body.get("seed"), "finish_reason": choice.get("finish_reason") or "",
                           "completion_tokens": int(usage.get("completion_tokens", 0))}}

    def _count(self, outcome: str) -> None:
        if self.on_sample is not None:
            self.on_sample(outcome)
