"""Graders: how a ``reinforcement`` job scores a completion, as OpenAI's grader objects (plus tuneforge's).

One discriminated union on ``type``; every field validated here, so the service refuses a grader the trainer
could not build (400 naming the field) and the trainer reads the same models.

- ``string_check``: the completion (or, with ``pattern``, the last regex match in it) compared with the
  reference: ``eq`` after normalisation (case, spaces, number formatting), or ``contains``;
- ``regex`` (tuneforge): the last ``pattern`` match (group 1 if any) equals the reference; with
  ``reference: null`` there is none, and the score is 1.0 when ``pattern`` is found (a format check);
- ``multi``: named ``string_check`` / ``regex`` sub-graders combined by the arithmetic formula
  ``calculate_output`` (:mod:`tuneforge.contracts.grader_formula`), e.g. ``0.2 * format + 0.8 * correct``;
- ``reward_model``: the score of a succeeded ``reward_model`` job's model (``model`` is its
  ``fine_tuned_model``; the service resolves it to ``model_prefix`` in the object store, never the caller).

A reference is OpenAI's template ``"{{item.<field>}}"``: the row's field; ``reference_field: "<field>"`` is
accepted as a shorthand. ``reference_pattern`` extracts the reference from that field (GSM8K:
``####\\s*(.+)``).
"""

from __future__ import annotations

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
)

from tuneforge.contracts.grader_formula import (
    MAX_SUB_GRADERS,
    FormulaError,
    check_grader_name,
    parse_formula,
)

#: longest accepted regular expression
MAX_PATTERN = 500
_ITEM_TEMPLATE = re.compile(r"\{\{\s*item\.(\w+)\s*\}\}")
DEFAULT_REFERENCE = "{{item.answer}}"


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


def _as_template(value: Any) -> Any:
    """``reference_field: "answer"`` (tuneforge's older shorthand) means ``reference: "{{item.answer}}"``."""
    if isinstance(value, str) and "{{" not in value and value.isidentifier():
        return f"{{{{item.{value}}}}}"
    return value


class _ReferenceGrader(_Grader):
    """A grader that compares with a field of the data row."""

    reference: Annotated[str | None, BeforeValidator(_as_template)] = Field(
        DEFAULT_REFERENCE, max_length=256, validation_alias=AliasChoices("reference", "reference_field"),
        description="The row field holding the reference answer, as OpenAI's template '{{item.answer}}' "
        "('reference_field': 'answer' is accepted too)")
    pattern: str | None = Field(None, description="Regular expression applied to the completion; its last match "
                                "(group 1 if any) is what is compared")
    reference_pattern: str | None = Field(None, description="Regular expression extracting the reference from "
                                          "the field (last match, group 1 if any), e.g. '####\\s*(.+)'")

    @field_validator("reference")
    @classmethod
    def _item_template(cls, value: str | None) -> str | None:
        if value is not None and not _ITEM_TEMPLATE.fullmatch(value.strip()):
            raise ValueError("must name a field of the data row as '{{item.<field>}}', e.g. '{{item.answer}}'")
        return value

    @field_validator("pattern", "reference_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_pattern(value)

    @property
    def reference_field(self) -> str | None:
        """The row field the reference comes from (None: reference-free)."""
        if self.reference is None:
            return None
        match = _ITEM_TEMPLATE.fullmatch(self.reference.strip())
        return match.group(1) if match else None


class StringCheckGrader(_ReferenceGrader):
    type: Literal["string_check"] = "string_check"
    input: str = Field("{{sample.output_text}}", description="What is graded: the completion's text")
    operation: Literal["eq", "contains"] = Field("eq", description="eq: equal after normalisation; contains: the "
                                                 "reference occurs in the answer")

    @field_validator("input")
    @classmethod
    def _completion_text(cls, value: str) -> str:
        if value.replace(" ", "") != "{{sample.output_text}}":
            raise ValueError("only '{{sample.output_text}}' (the completion's text) can be graded")
        return value

    @field_validator("reference")
    @classmethod
    def _needs_reference(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("a string_check grader compares with a reference: it cannot be null (only a regex "
                             "grader can check a pattern without one)")
        return value


class RegexGrader(_ReferenceGrader):
    type: Literal["regex"] = "regex"
    pattern: str = Field(..., description="Regular expression searched in the completion")

    @field_validator("reference_pattern")
    @classmethod
    def _reference_free(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "reference" in info.data and info.data["reference"] is None:
            raise ValueError("a regex grader without a reference cannot have a 'reference_pattern'")
        return value


SubGrader = Annotated[StringCheckGrader | RegexGrader, Field(discriminator="type")]


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
        description="Named sub-graders (string_check or regex); the names are the formula's variables")
    calculate_output: str = Field(..., description="Arithmetic over the sub-graders' scores, e.g. "
                                  "'0.2 * format + 0.8 * correct'")

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


Grader = Annotated[StringCheckGrader | RegexGrader | MultiGrader | RewardModelGrader, Field(discriminator="type")]
AnyGrader = StringCheckGrader | RegexGrader | MultiGrader | RewardModelGrader


def reference_fields(grader: AnyGrader) -> list[str]:
    """The data fields a grader compares against (none for reward_model and a reference-free regex)."""
    if isinstance(grader, RewardModelGrader):
        return []
    if isinstance(grader, MultiGrader):
        fields = [f for sub in grader.graders.values() for f in reference_fields(sub)]
        return list(dict.fromkeys(fields))
    return [grader.reference_field] if grader.reference_field is not None else []
