"""OpenAI's Evals API: ``/v1/evals``, its runs and their output items (tenant-scoped, like everything else).

Thin: the checks are in :mod:`tuneforge.service.domain.evals`, the runs execute in the background
(:mod:`tuneforge.service.executors.eval_runs`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Query

from tuneforge.service.api.deps import RepoDep, StateDep
from tuneforge.service.api.eval_presenters import eval_object, output_item_object, page_of, run_object
from tuneforge.service.api.pagination import AfterQuery, LimitQuery
from tuneforge.service.api.routing import Router
from tuneforge.service.core.errors import Conflict, Unavailable
from tuneforge.service.db.models import now
from tuneforge.service.domain import evals as domain

router = Router(prefix="/v1/evals", tags=["evals"])

OrderQuery = Annotated[str, Query(pattern="^(asc|desc)$", description="asc (OpenAI's default) or desc")]
RunStatusQuery = Annotated[str | None, Query(pattern="^(queued|in_progress|completed|canceled|failed)$")]
ItemStatusQuery = Annotated[str | None, Query(pattern="^(pass|fail|error)$")]


@router.post("", summary="Create an eval", description="`data_source_config` of type `custom` (an `item_schema`), "
             "and `testing_criteria`: graders (string_check, text_similarity, regex, multi, score_model, "
             "label_model, reward_model; python graders are refused).")
def create_eval(repo: RepoDep, state: StateDep, body: Any = Body(...)) -> dict[str, Any]:
    return eval_object(domain.create_eval(repo, state.store, body, now()))


@router.get("", summary="List evals")
def list_evals(repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20, order: OrderQuery = "asc",
               order_by: Annotated[str, Query(pattern="^(created_at|updated_at)$")] = "created_at") -> dict[str, Any]:
    rows, more = repo.list_evals(after, limit, newest_first=order == "desc")
    return page_of([eval_object(r) for r in rows], more)


@router.get("/{eval_id}", summary="Retrieve an eval")
def get_eval(eval_id: str, repo: RepoDep) -> dict[str, Any]:
    return eval_object(repo.get_eval(eval_id))


@router.post("/{eval_id}", summary="Update an eval's name or metadata")
def update_eval(eval_id: str, repo: RepoDep, body: Any = Body(...)) -> dict[str, Any]:
    return eval_object(domain.update_eval(repo, repo.get_eval(eval_id), body))


@router.delete("/{eval_id}", summary="Delete an eval, its runs and their output items")
def delete_eval(eval_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    row = repo.get_eval(eval_id)
    runs, _ = repo.list_eval_runs(row.id, None, 10_000, newest_first=False)
    repo.delete_eval(row)
    for run in runs:
        if state.evals is not None:
            state.evals.stop_threadsafe(run.id)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


@router.post("/{eval_id}/runs", summary="Create a run of an eval",
             description="`data_source` of type `completions` (a model answers each item from `input_messages`) "
             "or `jsonl` (the answers are in the rows as `sample.output_text`); rows inline (`file_content`) or "
             "from a file (`file_id`, purpose `evals`). The run executes in the background.")
def create_run(eval_id: str, repo: RepoDep, state: StateDep, body: Any = Body(...)) -> dict[str, Any]:
    if state.evals is None:
        raise Unavailable("eval runs are not enabled on this server")
    row = repo.get_eval(eval_id)
    prepared = domain.create_run(repo, state.store, row, body, now(), state.settings.limits.max_eval_items)
    state.evals.submit_threadsafe(prepared.run.id)
    return run_object(prepared.run, state.settings.server.base_url)


@router.get("/{eval_id}/runs", summary="List an eval's runs")
def list_runs(eval_id: str, repo: RepoDep, state: StateDep, after: AfterQuery = None, limit: LimitQuery = 20,
              order: OrderQuery = "asc", status: RunStatusQuery = None) -> dict[str, Any]:
    row = repo.get_eval(eval_id)
    runs, more = repo.list_eval_runs(row.id, after, limit, newest_first=order == "desc", status=status)
    return page_of([run_object(r, state.settings.server.base_url) for r in runs], more)


@router.get("/{eval_id}/runs/{run_id}", summary="Retrieve a run: status, result counts, per-criterion results, usage")
def get_run(eval_id: str, run_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    return run_object(repo.get_eval_run(eval_id, run_id), state.settings.server.base_url)


@router.post("/{eval_id}/runs/{run_id}/cancel", summary="Cancel a queued or running run (its graded items stay)")
def cancel_run(eval_id: str, run_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    run = repo.get_eval_run(eval_id, run_id)
    if not repo.cancel_eval_run(run, now()):
        raise Conflict(f"Run '{run_id}' has already finished ({run.status}); only a queued or running run can be "
                       "canceled.", code="run_not_cancelable")
    if state.evals is not None:
        state.evals.stop_threadsafe(run.id)
    return run_object(run, state.settings.server.base_url)


@router.delete("/{eval_id}/runs/{run_id}", summary="Delete a run and its output items")
def delete_run(eval_id: str, run_id: str, repo: RepoDep, state: StateDep) -> dict[str, Any]:
    run = repo.get_eval_run(eval_id, run_id)
    repo.delete_eval_run(run)
    if state.evals is not None:
        state.evals.stop_threadsafe(run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


@router.get("/{eval_id}/runs/{run_id}/output_items", summary="List a run's output items (paged)")
def list_output_items(eval_id: str, run_id: str, repo: RepoDep, after: AfterQuery = None, limit: LimitQuery = 20,
                      order: OrderQuery = "asc", status: ItemStatusQuery = None) -> dict[str, Any]:
    run = repo.get_eval_run(eval_id, run_id)
    items, more = repo.list_output_items(run, after, limit, newest_first=order == "desc", status=status)
    return page_of([output_item_object(i) for i in items], more)


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", summary="Retrieve one output item")
def get_output_item(eval_id: str, run_id: str, output_item_id: str, repo: RepoDep) -> dict[str, Any]:
    run = repo.get_eval_run(eval_id, run_id)
    return output_item_object(repo.get_output_item(run, output_item_id))
