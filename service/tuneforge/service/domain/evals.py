"""Evals (OpenAI's Evals API): what a request to create an eval or a run must satisfy, and the data a run reads.

An eval holds the item schema (``data_source_config`` of type ``custom``: a JSON Schema of one data item) and
its testing criteria (graders, :mod:`tuneforge.contracts.graders`). A run names a data source: ``completions``
(a model, base or ``ft:``, answers each item from ``input_messages``, a template over the item) or ``jsonl``
(the answers are in the rows, as ``sample.output_text``); its rows come inline (``file_content``) or from an
uploaded file (``file_id``). Everything that can be checked before a run starts is checked at creation, as a
400 naming the field (a row's line number for files) or a 404 for an unknown model or file.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneforge.contracts.grader_templates import TemplateError, item_fields, references
from tuneforge.contracts.graders import AnyEvalGrader, InputText, Template, grader_templates
from tuneforge.service.core.errors import InvalidRequest, ServiceError
from tuneforge.service.db.models import Eval, EvalRun, File
from tuneforge.service.db.repo import TenantRepo
from tuneforge.service.domain.grading import EVAL_GRADER, invalid, judge_targets, parse_grader
from tuneforge.service.domain.serving import Target, resolve_target
from tuneforge.storage import ObjectNotFound, ObjectStore

RUN_STATUSES = ("queued", "in_progress", "completed", "canceled", "failed")
UNFINISHED = ("queued", "in_progress")
#: problems listed in a 400's message (all of them, up to the limit, are in ``details``)
SHOWN_PROBLEMS = 5
MAX_PROBLEMS = 50
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


def new_eval_id(kind: str) -> str:
    """OpenAI's id style for evals: ``eval_…``, ``evalrun_…``, ``outputitem_…``."""
    return f"{kind}_{secrets.token_hex(16)}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- creating an eval --
class CustomDataSourceConfig(_Request):
    type: Literal["custom"]
    item_schema: dict[str, Any] = Field(..., description="JSON Schema of one data item")
    include_sample_schema: bool = Field(False, description="Graders may read the sample ({{sample.output_text}})")

    @field_validator("item_schema")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if value.get("type", "object") != "object":
            raise ValueError("an item is a JSON object: the schema's type must be 'object'")
        return value


class EvalCreate(_Request):
    name: str | None = Field(None, max_length=256)
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[dict[str, Any]] = Field(..., min_length=1, max_length=32)
    metadata: Metadata | None = None


class EvalUpdate(_Request):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


def _validated(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc, body) from None


def _schema_fields(schema: dict[str, Any]) -> set[str] | None:
    """The item fields the schema declares (None: it declares none and allows any)."""
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        return set(properties)
    return None


def _check_fields(templates: list[str], declared: set[str] | None, param: str) -> None:
    if declared is None:
        return
    for template in templates:
        for name in item_fields(template):
            if name not in declared:
                raise InvalidRequest(f"Invalid value for '{param}': the template names '{{{{item.{name}}}}}', but "
                                     f"the item schema has no field '{name}' (it has {', '.join(sorted(declared))})",
                                     param=param)


def criteria_of(row: Eval) -> list[AnyEvalGrader]:
    return [EVAL_GRADER.validate_python(c) for c in row.testing_criteria]


def create_eval(repo: TenantRepo, store: ObjectStore, body: Any, created_at: int) -> Eval:
    return repo.add_eval(build_eval(repo, store, body, created_at))


def build_eval(repo: TenantRepo, store: ObjectStore, body: Any, created_at: int) -> Eval:
    """Every check of an eval's creation; the row, not yet stored."""
    request: EvalCreate = _validated(EvalCreate, body)
    config = request.data_source_config
    declared = _schema_fields(config.item_schema)
    criteria, names = [], set()
    for i, raw in enumerate(request.testing_criteria):
        param = f"testing_criteria.{i}"
        grader = parse_grader(raw, param)
        _check_fields(grader_templates(grader), declared, param)
        judge_targets(repo, store, {param: grader})
        name = grader.name or f"{grader.type}-{i + 1}"
        if name in names:
            raise InvalidRequest(f"Invalid value for '{param}.name': another testing criterion is named {name!r}",
                                 param=f"{param}.name")
        names.add(name)
        criteria.append(grader.model_copy(update={"name": name}).model_dump(mode="json"))
    return Eval(
        id=new_eval_id("eval"), name=request.name or "eval", created_at=created_at, testing_criteria=criteria,
        data_source_config=config.model_dump(mode="json"), eval_metadata=request.metadata)


def update_eval(repo: TenantRepo, row: Eval, body: Any) -> Eval:
    request: EvalUpdate = _validated(EvalUpdate, body)
    if request.name is not None:
        row.name = request.name
    if request.metadata is not None:
        row.eval_metadata = request.metadata
    repo.save()
    return row


# -- creating a run --
class TemplateMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Template | list[InputText]
    type: Literal["message"] | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TemplateInput(_Request):
    type: Literal["template"]
    template: list[TemplateMessage] = Field(..., min_length=1, max_length=64)


class ItemReferenceInput(_Request):
    type: Literal["item_reference"]
    item_reference: str = Field(..., pattern=r"^item\.\w+(\.\w+)*$",
                                description="The item field holding the chat messages, e.g. 'item.messages'")


class SamplingParams(_Request):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    max_completions_tokens: int | None = Field(None, ge=1, le=8192)
    #: vLLM's extension (tuneforge's engine has it too): generate through end-of-turn tokens, for benchmarks
    ignore_eos: bool | None = None


class ContentRow(_Request):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Request):
    type: Literal["file_content"]
    content: list[ContentRow] = Field(..., min_length=1)


class FileIdSource(_Request):
    type: Literal["file_id"]
    id: str = Field(..., min_length=1, max_length=64)


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class CompletionsDataSource(_Request):
    type: Literal["completions"]
    source: Source
    model: str = Field(..., min_length=1, max_length=512)
    input_messages: Annotated[TemplateInput | ItemReferenceInput, Field(discriminator="type")]
    sampling_params: SamplingParams | None = None


class JsonlDataSource(_Request):
    type: Literal["jsonl"]
    source: Source


class RunCreate(_Request):
    name: str | None = Field(None, max_length=256)
    data_source: Annotated[CompletionsDataSource | JsonlDataSource, Field(discriminator="type")]
    metadata: Metadata | None = None


@dataclass(frozen=True)
class Row:
    item: dict[str, Any]
    sample: dict[str, Any] | None
    #: where it came from: the file's line number, or the index in ``content`` (from 0)
    where: str


def _file_rows(raw: bytes, file: File) -> tuple[list[Row], list[dict[str, Any]]]:
    rows, problems = [], []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append({"line": number, "message": f"not valid JSON: {exc}"})
            continue
        if not isinstance(obj, dict):
            problems.append({"line": number, "message": "a row must be a JSON object"})
            continue
        # OpenAI's rows are {"item": {...}, "sample": {...}}; a bare object is the item itself
        wrapped = isinstance(obj.get("item"), dict) and set(obj) <= {"item", "sample"}
        item = obj["item"] if wrapped else obj
        sample = obj.get("sample") if wrapped else None
        rows.append(Row(item, sample if isinstance(sample, dict) else None, f"line {number}"))
    return rows, problems


def source_rows(repo: TenantRepo, store: ObjectStore, source: FileContentSource | FileIdSource,
                param: str) -> list[Row]:
    """The run's data rows; a file that is gone or unreadable is a 4xx naming ``param``."""
    if isinstance(source, FileContentSource):
        return [Row(r.item, r.sample, f"item {i}") for i, r in enumerate(source.content)]
    file = repo.get_file(source.id, param=f"{param}.id")
    try:
        raw = store.get_bytes(file.key)
    except ObjectNotFound:
        raise InvalidRequest(f"File '{file.id}' has no content any more", param=f"{param}.id") from None
    rows, problems = _file_rows(raw, file)
    if problems:
        raise _bad_rows(f"File '{file.id}' ({file.filename})", [
            {"line": p["line"], "message": p["message"]} for p in problems], f"{param}.id")
    return rows


def _bad_rows(what: str, problems: list[dict[str, Any]], param: str) -> InvalidRequest:
    shown = "; ".join(f"{p.get('where') or 'line ' + str(p['line'])}: {p['message']}"
                      for p in problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return InvalidRequest(f"{what} does not match the eval: {len(problems)} problem(s): {shown}{more}",
                          param=param, code="invalid_file_format", details=problems[:MAX_PROBLEMS])


def _check_rows(rows: list[Row], schema: dict[str, Any], needs_sample: bool, param: str, what: str) -> None:
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    problems: list[dict[str, Any]] = []
    for row in rows:
        for error in sorted(validator.iter_errors(row.item), key=lambda e: list(e.absolute_path))[:3]:
            field = ".".join(str(p) for p in error.absolute_path)
            problems.append({"where": row.where, "field": f"item.{field}" if field else "item",
                             "message": f"item{'.' + field if field else ''}: {error.message}"})
        if needs_sample and not isinstance((row.sample or {}).get("output_text"), str):
            problems.append({"where": row.where, "field": "sample.output_text",
                             "message": "a jsonl run's rows need the answer as sample.output_text"})
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        for p in problems:
            if p["where"].startswith("line "):
                p["line"] = int(p["where"].split()[1])
        raise _bad_rows(what, problems, param)


@dataclass(frozen=True)
class PreparedRun:
    run: EvalRun
    target: Target | None


def _samples_needed(criteria: list[AnyEvalGrader]) -> bool:
    return any(p.startswith("sample.") for g in criteria for t in grader_templates(g) for p in references(t))


def check_run(repo: TenantRepo, store: ObjectStore, row: Eval, body: Any, max_items: int) -> tuple[
        RunCreate, Target | None, list[Row]]:
    """Every check of a run's creation, nothing stored: the request, its model's target and its rows."""
    request: RunCreate = _validated(RunCreate, body)
    source = request.data_source
    schema = row.data_source_config.get("item_schema") or {}
    criteria = criteria_of(row)
    target: Target | None = None
    if isinstance(source, CompletionsDataSource):
        try:
            target = resolve_target(repo, store, source.model)
        except ServiceError as exc:
            exc.param = "data_source.model"
            raise
        if isinstance(source.input_messages, TemplateInput):
            for i, message in enumerate(source.input_messages.template):
                param = f"data_source.input_messages.template.{i}.content"
                try:
                    references(message.text, allow_sample=False)
                except TemplateError as exc:
                    raise InvalidRequest(f"Invalid value for '{param}': {exc}", param=param) from None
                _check_fields([message.text], _schema_fields(schema), param)
        else:
            field = source.input_messages.item_reference.split(".")[1]
            declared = _schema_fields(schema)
            if declared is not None and field not in declared:
                param = "data_source.input_messages.item_reference"
                raise InvalidRequest(f"Invalid value for '{param}': the item schema has no field '{field}'",
                                     param=param)
    judge_targets(repo, store, {f"testing_criteria.{i}": g for i, g in enumerate(criteria)})
    rows = source_rows(repo, store, source.source, "data_source.source")
    if len(rows) > max_items:
        raise InvalidRequest(f"The data source has {len(rows)} items; a run may have at most {max_items}.",
                             param="data_source.source")
    if not rows:
        raise InvalidRequest("The data source has no items.", param="data_source.source")
    what = ("The data source's content" if isinstance(source.source, FileContentSource)
            else f"File '{source.source.id}'")
    _check_rows(rows, schema, isinstance(source, JsonlDataSource) and _samples_needed(criteria),
                "data_source.source", what)
    return request, target, rows


def create_run(repo: TenantRepo, store: ObjectStore, row: Eval, body: Any, created_at: int,
               max_items: int) -> PreparedRun:
    request, target, rows = check_run(repo, store, row, body, max_items)
    source = request.data_source
    criteria = criteria_of(row)
    run = repo.add_eval_run(EvalRun(
        id=new_eval_id("evalrun"), eval_id=row.id, name=request.name or f"run-{created_at}",
        model=source.model if isinstance(source, CompletionsDataSource) else "", status="queued",
        data_source=source.model_dump(mode="json", exclude_none=True), run_metadata=request.metadata,
        total_items=len(rows), result_counts={"total": 0, "passed": 0, "failed": 0, "errored": 0},
        per_testing_criteria_results=[{"testing_criteria": g.name, "passed": 0, "failed": 0} for g in criteria],
        per_model_usage=[], created_at=created_at))
    return PreparedRun(run, target)


def parse_data_source(stored: dict[str, Any]) -> CompletionsDataSource | JsonlDataSource:
    """A stored run's data source, as the request model (it was validated when the run was created)."""
    return RunCreate.model_validate({"data_source": stored}).data_source
