"""OpenAI's ``POST /v1/fine_tuning/alpha/graders/run`` and ``/validate``: try a grader before paying for it.

``validate`` checks a grader as a job or an eval would (400 naming the field; a judge's model must exist for
this organization). ``run`` grades one ``model_sample`` against one ``item`` with the same implementation evals
and reinforcement training use; judges ask the serving engines.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Body

from tuneforge.graders import compile_grader
from tuneforge.service.api.deps import StateDep
from tuneforge.service.api.routing import Router
from tuneforge.service.api.short_sessions import ShortRepoDep
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.domain.grading import ServingJudge, judge_targets, parse_grader, run_grader

router = Router(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"])

_GRADER_DOC = ("A grader object as in OpenAI's API: string_check, text_similarity, regex, multi, score_model or "
               "label_model (python graders are refused: no sandbox).")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if "grader" not in body:
        raise InvalidRequest("Missing required parameter: 'grader'.", param="grader")
    return body


def _body_schema(*required: str, **properties: Any) -> dict[str, Any]:
    # the body is read as plain JSON (graders are parsed with their own field paths); this documents its shape
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["grader", *required],
        "properties": {"grader": {"type": "object", "description": "a grader object, as in a job or an eval"},
                       **properties}}}}}}


@router.post("/validate", summary="Validate a grader", description=_GRADER_DOC, openapi_extra=_body_schema())
def validate(repo: ShortRepoDep, state: StateDep, body: Any = Body(...)) -> dict[str, Any]:
    raw = _object(body)["grader"]
    grader = parse_grader(raw, "grader")
    judge_targets(repo, state.store, {"grader": grader})
    return {"grader": raw}


@router.post("/run", summary="Run a grader on one sample",
             description=_GRADER_DOC + " `model_sample` is the answer graded (`{{sample.output_text}}`), `item` the "
             "data row (`{{item.<field>}}`).",
             openapi_extra=_body_schema("model_sample",
                                        model_sample={"type": "string", "description": "the answer graded"},
                                        item={"type": "object", "description": "the data row"}))
async def run(repo: ShortRepoDep, state: StateDep, body: Any = Body(...)) -> dict[str, Any]:
    request = _object(body)
    grader = parse_grader(request["grader"], "grader")
    sample = request.get("model_sample")
    if not isinstance(sample, str):
        raise InvalidRequest("'model_sample' is required: the model's answer, as a string", param="model_sample")
    item = request.get("item", {})
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise InvalidRequest("'item' must be a JSON object (the data row)", param="item")
    targets = judge_targets(repo, state.store, {"grader": grader})
    graded = compile_grader(grader, ServingJudge(state.serving, targets, asyncio.get_running_loop()))
    return await asyncio.to_thread(run_grader, graded, grader, sample, item)
