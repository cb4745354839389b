"""Graders: how a completion is scored, as OpenAI's grader objects (plus tuneforge's), for ``reinforcement`` jobs
and for evals alike.

One discriminated union on ``type``; every field validated here, so the service refuses a grader nobody could
run (400 naming the field), and the trainer, the service and :mod:`tuneforge.graders` (which scores) read the
same models.

- ``string_check``: ``input`` (by default the completion; with ``pattern``, the last regex match in it) against
  ``reference``: ``eq`` / ``ne`` after normalisation (case, spaces, number formatting: ``1,000.`` equals
  ``1000``), ``like`` (the reference occurs in the input), ``ilike`` (the same, ignoring case); ``contains``
  is tuneforge's older normalised ``like``;
- ``text_similarity``: a similarity metric between input and reference (``fuzzy_match``, ``bleu``, ``gleu``,
  ``meteor``, ``rouge_1`` … ``rouge_5``, ``rouge_l``), passing at ``pass_threshold``;
- ``regex`` (tuneforge): the last ``pattern`` match (group 1 if any) equals the reference; with
  ``reference: null`` there is none, and the score is 1.0 when ``pattern`` is found (a format check);
- ``score_model`` / ``label_model``: a served model (base or tuned) judges the answer from a prompt template,
  replying a number in ``range`` or one of ``labels`` (evals and ``/graders/run`` only: training cannot call
  the serving engines);
- ``multi``: named sub-graders combined by the arithmetic formula ``calculate_output``
  (:mod:`tuneforge.contracts.grader_formula`), e.g. ``0.2 * format + 0.8 * correct``;
- ``reward_model`` (reinforcement only): the score of a succeeded ``reward_model`` job's model (``model`` is its
  ``fine_tuned_model``; the service resolves it to ``model_prefix`` in the object store, never the caller);
- ``python``: OpenAI's grader that runs user code. tuneforge has no sandbox for it, so it is refused with that
  reason wherever a grader is accepted.

``input`` and ``reference`` are OpenAI's templates (:mod:`tuneforge.contracts.grader_templates`):
``"{{item.answer}}"`` is the row's field, ``"{{sample.output_text}}"`` the completion, and they may sit in
other text. ``reference_field: "<field>"`` is accepted as a shorthand for ``reference: "{{item.<field>}}"``.
``reference_pattern`` extracts the reference from its text (GSM8K: ``####\\s*(.+)``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tuneforge.contracts.grader_formula import (
    MAX_SUB_GRADERS,
    FormulaError,
    check_grader_name,
    parse_formula,
)
from tuneforge.contracts.grader_templates import REFERENCE, TemplateError, item_fields, references

#: longest accepted regular expression
MAX_PATTERN = 500
DEFAULT_REFERENCE = "{{item.answer}}"
OUTPUT_TEXT = "{{sample.output_text}}"
SIMILARITY_METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                      "rouge_5", "rouge_l")
SimilarityMetric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                           "rouge_4", "rouge_5", "rouge_l"]
PYTHON_REFUSED = ("python graders run your code, and this tuneforge has no sandbox to run it in: use string_check, "
                  "text_similarity, regex, multi, score_model or label_model instead")


class _Grader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str | None = Field(None, max_length=256, description="A label for the grader (OpenAI's `name`)")


def _check_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_PATTERN:
        raise ValueError(f"a regular expression may be at most {MAX_PATTERN} characters long")
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


def _template(value: str | None) -> str | None:
    if value is not None:
        try:
            references(value)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
    return value


def _field_shorthand(data: Any) -> Any:
    """``reference_field: "answer"`` (tuneforge's older shorthand) means ``reference: "{{item.answer}}"``."""
    if isinstance(data, dict) and "reference" not in data:
        value = data.get("reference_field")
        if isinstance(value, str) and "{{" not in value and value.isidentifier():
            return {**data, "reference_field": f"{{{{item.{value}}}}}"}
    return data


#: a template string: text with '{{item.<field>}}' / '{{sample.output_text}}' references
Template = Annotated[str, AfterValidator(_template)]


class _ReferenceGrader(_Grader):
    """A grader that compares its input with a reference."""

    input: Template = Field(OUTPUT_TEXT, max_length=20_000,
                           description="What is graded, a template; by default the completion's text")
    reference: str | None = Field(
        DEFAULT_REFERENCE, max_length=20_000, validation_alias=AliasChoices("reference", "reference_field"),
        description="What the input is compared with, a template: '{{item.answer}}' is the row's field "
        "('reference_field': 'answer' is accepted too)")
    pattern: str | None = Field(None, description="Regular expression applied to the input; its last match "
                                "(group 1 if any) is what is compared")
    reference_pattern: str | None = Field(None, description="Regular expression extracting the reference from "
                                          "its text (last match, group 1 if any), e.g. '####\\s*(.+)'")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _field_shorthand(data)

    @field_validator("reference")
    @classmethod
    def _reference_template(cls, value: str | None) -> str | None:
        return _template(value)

    @field_validator("pattern", "reference_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_pattern(value)

    @property
    def reference_field(self) -> str | None:
        """The row field the reference is, when it is exactly one ``{{item.<field>}}`` (None otherwise)."""
        if self.reference is None:
            return None
        match = REFERENCE.fullmatch(self.reference.strip())
        if match is None or not match.group(1).startswith("item."):
            return None
        return match.group(1).split(".", 1)[1]


class StringCheckGrader(_ReferenceGrader):
    type: Literal["string_check"] = "string_check"
    operation: Literal["eq", "ne", "like", "ilike", "contains"] = Field(
        "eq", description="eq / ne: equal or not after normalisation (case, spaces, number formatting); like: the "
        "reference occurs in the input; ilike: the same ignoring case; contains: like after normalisation")

    @field_validator("reference")
    @classmethod
    def _needs_reference(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("a string_check grader compares with a reference: it cannot be null (only a regex "
                             "grader can check a pattern without one)")
        return value


class RegexGrader(_ReferenceGrader):
    type: Literal["regex"] = "regex"
    pattern: str = Field(..., description="Regular expression searched in the input")

    @field_validator("reference_pattern")
    @classmethod
    def _reference_free(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "reference" in info.data and info.data["reference"] is None:
            raise ValueError("a regex grader without a reference cannot have a 'reference_pattern'")
        return value


class TextSimilarityGrader(_Grader):
    type: Literal["text_similarity"] = "text_similarity"
    input: Template = Field(OUTPUT_TEXT, max_length=20_000, description="What is graded, a template")
    reference: Template = Field(..., max_length=20_000, validation_alias=AliasChoices("reference", "reference_field"),
                                description="The text compared with, a template such as '{{item.answer}}'")
    evaluation_metric: SimilarityMetric = Field(..., description="fuzzy_match (rapidfuzz), bleu (sacrebleu), "
                                                "gleu and meteor (nltk), rouge_1 … rouge_5 and rouge_l (rouge-score)")
    pass_threshold: float | None = Field(None, ge=0, description="A score at or above it passes")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _field_shorthand(data)

    @field_validator("evaluation_metric")
    @classmethod
    def _no_cosine(cls, value: str) -> str:
        if value == "cosine":
            raise ValueError("'cosine' needs an embedding model, and tuneforge serves none: use one of "
                             + ", ".join(SIMILARITY_METRICS))
        return value


class InputText(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    type: Literal["input_text", "output_text"] = "input_text"
    text: Template = Field(..., max_length=20_000)


class JudgeMessage(BaseModel):
    """One message of a judge's prompt; its text is a template over the item and the sample."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Template | list[InputText] = Field(..., description="Text (a template), or text parts; tuneforge's "
                                                "engines read no images or audio")
    type: Literal["message"] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JudgeSampling(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    #: accepted for OpenAI's clients; tuneforge's engines do not reason
    reasoning_effort: str | None = None


class _JudgeGrader(_Grader):
    model: str = Field(..., min_length=1, max_length=512,
                       description="A served model: a base model, an ft: model or a checkpoint of yours")
    input: list[JudgeMessage] = Field(..., min_length=1, max_length=32, description="The judge's prompt")
    sampling_params: JudgeSampling | None = None

    def templates(self) -> list[str]:
        return [m.text for m in self.input]


class ScoreModelGrader(_JudgeGrader):
    type: Literal["score_model"] = "score_model"
    range: list[float] = Field([0.0, 1.0], min_length=2, max_length=2, description="The lowest and highest score")
    pass_threshold: float | None = Field(None, description="A score at or above it passes (default: the middle "
                                         "of the range)")

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in value) or value[0] >= value[1]:
            raise ValueError("range must be [low, high] with low < high")
        return value


class LabelModelGrader(_JudgeGrader):
    type: Literal["label_model"] = "label_model"
    labels: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(..., min_length=2, max_length=64)
    passing_labels: list[str] = Field(..., min_length=1, max_length=64)

    @field_validator("passing_labels")
    @classmethod
    def _known(cls, value: list[str], info: ValidationInfo) -> list[str]:
        unknown = [label for label in value if label not in (info.data.get("labels") or [])]
        if unknown:
            raise ValueError(f"{unknown} are not among the labels")
        return value


def _no_python(value: Any) -> Any:
    """OpenAI's ``python`` grader runs user code: refused with the reason, before the union is tried."""
    if isinstance(value, dict) and value.get("type") == "python":
        raise ValueError(PYTHON_REFUSED)
    return value


SubGrader = Annotated[StringCheckGrader | RegexGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader,
                      Field(discriminator="type"), BeforeValidator(_no_python)]


def _grader_name(name: str) -> str:
    problem = check_grader_name(name)
    if problem:
        raise ValueError(problem)
    return name


#: a sub-grader's name is a variable of ``calculate_output``
GraderName = Annotated[str, AfterValidator(_grader_name)]


class MultiGrader(_Grader):
    type: Literal["multi"] = "multi"
    graders: dict[GraderName, SubGrader] = Field(
        ..., min_length=1, max_length=MAX_SUB_GRADERS,
        description="Named sub-graders (not multi, not reward_model); the names are the formula's variables")
    calculate_output: str = Field(..., description="Arithmetic over the sub-graders' scores, e.g. "
                                  "'0.2 * format + 0.8 * correct'")
    pass_threshold: float | None = Field(None, description="In an eval, a score at or above it passes (default 1)")

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_formula(value, info.data.get("graders") or {})
        except FormulaError as exc:
            raise ValueError(str(exc)) from None
        return value


class RewardModelGrader(_Grader):
    type: Literal["reward_model"] = "reward_model"
    model: str = Field(..., min_length=1, max_length=512,
                       description="The fine_tuned_model of a succeeded reward_model job")
    #: set by the service from ``model`` (tenant-scoped); a request may not name it
    model_prefix: str | None = Field(None, description="Object-store prefix of that model (set by the service)")
    pass_threshold: float | None = Field(None, description="Evals: a score (the reward model's raw output) at or "
                                         "above this passes (default 0)")


JudgeGrader = ScoreModelGrader | LabelModelGrader
RuleGrader = StringCheckGrader | RegexGrader | TextSimilarityGrader

#: a reinforcement job's grader (judges are refused there: see :func:`judges_in`)
Grader = Annotated[StringCheckGrader | RegexGrader | TextSimilarityGrader | MultiGrader | RewardModelGrader
                   | ScoreModelGrader | LabelModelGrader, Field(discriminator="type"), BeforeValidator(_no_python)]
AnyGrader = (StringCheckGrader | RegexGrader | TextSimilarityGrader | MultiGrader | RewardModelGrader
             | ScoreModelGrader | LabelModelGrader)
#: an eval's testing criterion and what ``/fine_tuning/alpha/graders/run`` takes
EvalGrader = Annotated[StringCheckGrader | RegexGrader | TextSimilarityGrader | MultiGrader | ScoreModelGrader
                       | LabelModelGrader | RewardModelGrader, Field(discriminator="type"), BeforeValidator(_no_python)]
AnyEvalGrader = (StringCheckGrader | RegexGrader | TextSimilarityGrader | MultiGrader | ScoreModelGrader
                 | LabelModelGrader | RewardModelGrader)


def reward_models_in(grader: Any) -> list[RewardModelGrader]:
    """The reward-model graders in ``grader`` (itself, or a multi grader's sub-graders)."""
    if isinstance(grader, MultiGrader):
        return [g for sub in grader.graders.values() for g in reward_models_in(sub)]
    return [grader] if isinstance(grader, RewardModelGrader) else []


def judges_in(grader: Any) -> list[JudgeGrader]:
    """The model-judged graders in ``grader`` (itself, or a multi grader's sub-graders)."""
    if isinstance(grader, MultiGrader):
        return [g for sub in grader.graders.values() for g in judges_in(sub)]
    return [grader] if isinstance(grader, ScoreModelGrader | LabelModelGrader) else []


def grader_templates(grader: Any) -> list[str]:
    """Every template a grader renders (inputs, references, judge prompts)."""
    if isinstance(grader, MultiGrader):
        return [t for sub in grader.graders.values() for t in grader_templates(sub)]
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return grader.templates()
    if isinstance(grader, StringCheckGrader | RegexGrader | TextSimilarityGrader):
        return [t for t in (grader.input, grader.reference) if t is not None]
    return []


def reference_fields(grader: Any) -> list[str]:
    """The data fields a grader reads (none for reward_model and a reference-free regex on the completion)."""
    fields = [f for template in grader_templates(grader) for f in item_fields(template)]
    return list(dict.fromkeys(fields))
