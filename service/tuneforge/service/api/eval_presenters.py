"""Evals, runs and output items as OpenAI's Evals API shows them."""

from __future__ import annotations

from typing import Any

from tuneforge.service.db.models import Eval, EvalOutputItem, EvalRun

#: what a sample offers graders, in the eval's schema (OpenAI's ``include_sample_schema``)
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "choices": {"type": "array"}, "output_text": {"type": "string"},
                   "output_json": {"type": "object"}},
    "required": ["model", "output_text"],
}


def _criterion(stored: dict[str, Any]) -> dict[str, Any]:
    # unset fields are left out, but a reference-free regex keeps its 'reference: null'
    return {k: v for k, v in stored.items() if v is not None or k == "reference"}


def eval_object(row: Eval) -> dict[str, Any]:
    config = row.data_source_config
    properties: dict[str, Any] = {"item": config.get("item_schema") or {}}
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
    return {
        "object": "eval", "id": row.id, "name": row.name, "created_at": row.created_at,
        "metadata": row.eval_metadata or {},
        "data_source_config": {"type": "custom", "schema": {"type": "object", "properties": properties,
                                                            "required": list(properties)}},
        "testing_criteria": [_criterion(c) for c in row.testing_criteria],
    }


def run_object(row: EvalRun, base_url: str) -> dict[str, Any]:
    return {
        "object": "eval.run", "id": row.id, "eval_id": row.eval_id, "name": row.name, "model": row.model,
        "status": row.status, "created_at": row.created_at, "data_source": row.data_source,
        "metadata": row.run_metadata or {}, "error": row.error,
        "result_counts": row.result_counts, "per_testing_criteria_results": row.per_testing_criteria_results,
        "per_model_usage": row.per_model_usage,
        "report_url": f"{base_url.rstrip('/')}/v1/evals/{row.eval_id}/runs/{row.id}/output_items",
        # extensions
        "total_items": row.total_items, "finished_at": row.finished_at,
    }


def output_item_object(row: EvalOutputItem) -> dict[str, Any]:
    sample = {k: v for k, v in row.sample.items() if not k.startswith("_")}
    return {
        "object": "eval.run.output_item", "id": row.id, "run_id": row.run_id, "eval_id": row.eval_id,
        "created_at": row.created_at, "status": row.status, "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item, "results": row.results, "sample": sample,
    }


def page_of(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
