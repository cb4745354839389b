"""Reward functions for ``reinforcement`` jobs, built from the job's grader (:mod:`tuneforge.contracts.graders`;
never user code), scored by :mod:`tuneforge.graders` (the same implementation evals use).

- ``string_check``, ``regex``, ``text_similarity``: one reward function whose score is the grader's;
- ``reward_model``: a ``reward_model`` job's output (sequence classifier) scores prompt + completion;
- ``multi``: sub-graders combined by the ``calculate_output`` formula into ONE reward function, so GRPO/RLOO
  advantages use the combined score; each sub-grader's batch mean is reported through TRL's ``log_metric`` as
  ``reward_<name>`` (``valid_reward_<name>`` on the validation set).

Judge graders (``score_model``, ``label_model``) need the serving engines; the contract refuses them for
reinforcement jobs. Each row of the batch is the grader's ``item`` (the data columns TRL passes), the
completion its ``sample.output_text``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.contracts.grader_templates import TemplateError
from tuneforge.contracts.graders import (
    AnyGrader,
    MultiGrader,
    RegexGrader,
    RewardModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from tuneforge.graders import GraderError, compile_grader
from tuneforge.graders import normalise as normalise
from tuneforge.graders.grading import Graded
from tuneforge.storage import MANIFEST_NAME, ObjectNotFound, ObjectStore
from tuneforge.trainer.errors import BadInput

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as message lists and plain ones as strings."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def _compiled(spec: AnyGrader) -> Graded:
    try:
        return compile_grader(spec)
    except GraderError as exc:
        raise BadInput(str(exc)) from None


def _rows(count: int, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's data rows from TRL's column lists (other keyword arguments are TRL's own)."""
    lists = {k: v for k, v in columns.items() if isinstance(v, list) and len(v) == count}
    return [{k: v[i] for k, v in lists.items()} for i in range(count)]


def _scores(graded: Graded, completions: list[Any], columns: dict[str, Any]) -> list[Any]:
    try:
        return [graded(item, {"output_text": completion_text(c)})
                for item, c in zip(_rows(len(completions), columns), completions, strict=True)]
    except TemplateError as exc:
        raise BadInput(f"the grader cannot read the data: {exc}") from None


def make_match_reward(spec: StringCheckGrader | RegexGrader | TextSimilarityGrader) -> RewardFunc:
    """A single grader as a TRL reward function (string_check / regex: 1.0 match, 0.0 otherwise)."""
    graded = _compiled(spec)

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return [g.score for g in _scores(graded, completions, columns)]

    reward.__name__ = f"{spec.type}_{getattr(spec, 'reference_field', None) or 'search'}"
    return reward


def make_multi_reward(spec: MultiGrader) -> RewardFunc:
    """``multi`` grader: ONE reward function whose score is ``calculate_output`` over the sub-grader scores.

    Each sub-grader's batch mean goes to TRL's ``log_metric`` (when TRL passes it) as ``reward_<name>``; TRL
    logs it next to ``reward`` (``eval_`` prefixed during evaluation), so the progress events carry
    ``reward_<name>`` and ``valid_reward_<name>``. A completion whose formula fails (division by zero, math
    domain error) scores 0.0.
    """
    graded = _compiled(spec)

    def reward(
        prompts: list[Any], completions: list[Any], log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        grades = _scores(graded, completions, columns)
        if log_metric is not None and grades:
            for name in spec.graders:
                log_metric(f"reward_{name}", sum(g.sub_scores[name] for g in grades) / len(grades))
        return [g.score for g in grades]

    reward.__name__ = "multi"
    return reward


def make_reward(spec: AnyGrader) -> RewardFunc:
    """The reward function of a rule-based grader (everything but ``reward_model``); raises :class:`BadInput`."""
    if isinstance(spec, MultiGrader):
        return make_multi_reward(spec)
    if isinstance(spec, StringCheckGrader | RegexGrader | TextSimilarityGrader):
        return make_match_reward(spec)
    raise BadInput(f"a {spec.type} grader cannot score completions in training")


def check_grader(spec: AnyGrader) -> None:
    """Build the grader before anything is downloaded: its patterns compile with the ``regex`` module."""
    if isinstance(spec, RewardModelGrader):
        if not (spec.model_prefix or "").strip("/"):
            raise BadInput("a reward_model grader needs 'model_prefix' (a succeeded reward_model job's model)")
        return
    make_reward(spec)


def download_reward_model(spec: RewardModelGrader, store: ObjectStore, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A published ``reward_model`` job's files in a local directory, and its manifest."""
    prefix = (spec.model_prefix or "").strip("/")
    if not prefix:
        raise BadInput("a reward_model grader needs 'model_prefix' (a succeeded reward_model job's model)")
    try:
        manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST_NAME}"))
    except ObjectNotFound:
        raise BadInput(f"no published model at {prefix}/ (manifest.json missing)") from None
    if manifest.get("task") != "sequence_classification":
        raise BadInput(f"the model at {prefix}/ is not a reward model (train it with method reward_model)")
    local = workdir / "reward-model"
    for entry in manifest["files"]:
        store.download_file(f"{prefix}/{entry['name']}", local / entry["name"])
    return local, manifest


def load_reward_model(spec: RewardModelGrader, store: ObjectStore, workdir: Path, dtype: Any) -> tuple[Any, Any]:
    """A published ``reward_model`` job's model (adapter merged) and its tokenizer."""
    from tuneforge.trainer.models import load_tokenizer

    local, manifest = download_reward_model(spec, store, workdir)
    return load_downloaded_reward_model(local, manifest, store, dtype), load_tokenizer(local)


def load_downloaded_reward_model(local: Path, manifest: dict[str, Any], store: ObjectStore | None,
                                 dtype: Any) -> Any:
    """The sequence classifier in ``local`` (from :func:`download_reward_model`), its LoRA adapter merged."""
    from tuneforge.trainer.models import load_sequence_classifier, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(local)
    if (local / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_sequence_classifier(resolve_model(manifest["base_model"], store), dtype, tokenizer.pad_token_id)
        model = PeftModel.from_pretrained(base, str(local)).merge_and_unload()
    else:
        model = load_sequence_classifier(local, dtype, tokenizer.pad_token_id)
    model.eval()
    return model
