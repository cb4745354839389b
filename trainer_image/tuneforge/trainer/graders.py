"""Reward functions for ``reinforcement`` jobs, built from the job's grader (:mod:`tuneforge.contracts.graders`;
never user code).

- ``string_check``: the completion (or, with ``pattern``, the last regex match in it) compared with the row's
  reference field: ``eq`` after normalisation, or ``contains``;
- ``regex``: ``pattern`` is searched in the completion, the last match (group 1 if present) must equal the
  reference; with ``reference_field=None`` there is no reference: 1.0 when ``pattern`` is found at all
  (a format check), else 0.0;
- ``reward_model``: a ``reward_model`` job's output (sequence classifier) scores prompt + completion;
- ``multi``: string_check / regex sub-graders combined by the ``calculate_output`` formula into ONE reward
  function, so GRPO/RLOO advantages use the combined score; each sub-grader's batch mean is reported through
  TRL's ``log_metric`` as ``reward_<name>`` (``valid_reward_<name>`` on the validation set).

The reference may itself be extracted with ``reference_pattern`` (GSM8K: ``####\\s*(.+)``). User patterns are
run with the ``regex`` module under a time limit, on completions capped in length, so a pathological pattern
costs a zero reward, not a hung job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.contracts.grader_formula import FormulaError, parse_formula
from tuneforge.contracts.graders import (
    AnyGrader,
    MultiGrader,
    RegexGrader,
    RewardModelGrader,
    StringCheckGrader,
)
from tuneforge.storage import MANIFEST_NAME, ObjectNotFound, ObjectStore
from tuneforge.trainer.errors import BadInput

MAX_PATTERN = 500
MAX_TEXT = 20_000
REGEX_TIMEOUT_S = 0.05
_NUMBER_JUNK = re.compile(r"[,$\s]")

RewardFunc = Callable[..., list[float]]


def _compile(pattern: str, what: str) -> Any:
    if len(pattern) > MAX_PATTERN:
        raise BadInput(f"grader {what} is longer than {MAX_PATTERN} characters")
    try:
        import regex

        return regex.compile(pattern)
    except ImportError:  # pragma: no cover - transformers depends on regex
        return re.compile(pattern)
    except Exception as exc:
        raise BadInput(f"grader {what} is not a valid regular expression: {exc}") from exc


def _timeout(compiled: Any) -> dict[str, float]:
    return {"timeout": REGEX_TIMEOUT_S} if compiled.__class__.__module__.startswith("regex") else {}


def _found(compiled: Any, text: str) -> bool:
    try:
        return compiled.search(text[:MAX_TEXT], **_timeout(compiled)) is not None
    except TimeoutError:
        return False


def _last_match(compiled: Any, text: str) -> str | None:
    kwargs = _timeout(compiled)
    try:
        matches = list(compiled.finditer(text[:MAX_TEXT], **kwargs))
    except TimeoutError:
        return None
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.groups() else last.group(0)


def normalise(text: str) -> str:
    """Case-, space- and number-format-insensitive form (``1,000.`` == ``1000``)."""
    value = text.strip().lower().rstrip(".")
    squashed = _NUMBER_JUNK.sub("", value)
    try:
        number = float(squashed)
    except ValueError:
        return " ".join(value.split())
    return str(int(number)) if number.is_integer() else str(number)


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as message lists and plain ones as strings."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def _reference(row_value: Any, ref_pattern: Any) -> str | None:
    if row_value is None:
        return None
    text = row_value if isinstance(row_value, str) else json.dumps(row_value)
    if ref_pattern is not None:
        return _last_match(ref_pattern, text)
    return text


def make_match_reward(spec: StringCheckGrader | RegexGrader) -> RewardFunc:
    """``string_check`` or ``regex`` grader as a TRL reward function (1.0 match, 0.0 otherwise).

    The contract has validated the grader (patterns compile, a reference-free grader is a regex); here the
    patterns are compiled with the ``regex`` module, which can time out."""
    pattern = _compile(spec.pattern, "pattern") if spec.pattern else None
    field = spec.reference_field
    if field is None:
        assert pattern is not None  # a reference-free grader is a regex grader (contract)
        return _make_search_reward(pattern)
    ref_pattern = _compile(spec.reference_pattern, "reference_pattern") if spec.reference_pattern else None
    contains = isinstance(spec, StringCheckGrader) and spec.operation == "contains"

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        refs = columns.get(field)
        if refs is None:
            raise BadInput(f"the grader's reference_field {field!r} is missing from the data")
        scores = []
        for completion, raw_ref in zip(completions, refs, strict=True):
            reference = _reference(raw_ref, ref_pattern)
            text = completion_text(completion)
            answer = _last_match(pattern, text) if pattern is not None else text
            if reference is None or answer is None:
                scores.append(0.0)
            elif contains:
                scores.append(1.0 if normalise(reference) in normalise(answer) else 0.0)
            else:
                scores.append(1.0 if normalise(answer) == normalise(reference) else 0.0)
        return scores

    reward.__name__ = f"{spec.type}_{field}"
    return reward


def _make_search_reward(pattern: Any) -> RewardFunc:
    """Reference-free ``regex``: 1.0 when the pattern is found anywhere in the completion."""

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return [1.0 if _found(pattern, completion_text(c)) else 0.0 for c in completions]

    reward.__name__ = "regex_search"
    return reward


def make_multi_reward(spec: MultiGrader) -> RewardFunc:
    """``multi`` grader: ONE reward function whose score is ``calculate_output`` over the sub-grader scores.

    Each sub-grader's batch mean goes to TRL's ``log_metric`` (when TRL passes it) as ``reward_<name>``; TRL
    logs it next to ``reward`` (``eval_`` prefixed during evaluation), so the progress events carry
    ``reward_<name>`` and ``valid_reward_<name>``. A completion whose formula fails (division by zero, math
    domain error) scores 0.0.
    """
    subs: dict[str, RewardFunc] = {}
    for name, sub in spec.graders.items():
        try:
            subs[name] = make_match_reward(sub)
        except BadInput as exc:
            raise BadInput(f"multi grader: sub-grader {name!r}: {exc}") from None
    try:
        formula = parse_formula(spec.calculate_output, subs)
    except FormulaError as exc:
        raise BadInput(f"multi grader: {exc}") from None

    def reward(
        prompts: list[Any], completions: list[Any], log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        scores = {name: func(prompts, completions, **columns) for name, func in subs.items()}
        if log_metric is not None and completions:
            for name, values in scores.items():
                log_metric(f"reward_{name}", sum(values) / len(values))
        return [formula.evaluate({name: values[i] for name, values in scores.items()})
                for i in range(len(completions))]

    reward.__name__ = "multi"
    return reward


def make_reward(spec: AnyGrader) -> RewardFunc:
    """The reward function of a rule-based grader (everything but ``reward_model``); raises :class:`BadInput`."""
    if isinstance(spec, MultiGrader):
        return make_multi_reward(spec)
    if isinstance(spec, RewardModelGrader):
        raise BadInput("a reward_model grader is a model, not a rule")  # pragma: no cover - callers check
    return make_match_reward(spec)


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


def load_downloaded_reward_model(local: Path, manifest: dict[str, Any], store: ObjectStore, dtype: Any) -> Any:
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
