"""The eval a job builds from its own validation file (``evals: ["validation_file"]``): what a user who did not
write an eval still wants to know after training, whether the tuned model answers the held-out prompts better.

- items: the first N validation rows as ``{messages, reference}`` (the prompt turns, and the answer the data
  holds: a chat row's last assistant turn, a completion, a preference row's preferred output); a reinforcement
  job's prompt rows keep their other fields, which its grader reads;
- testing criteria: the method's graders: ROUGE-L against the reference (``pass_threshold`` 0.5) for supervised
  and DPO jobs, the job's own grader for a reinforcement job; a reward-model job has no answers to evaluate (its
  validation accuracy is measured while it trains), so it is refused;
- the data source: those items inline (``file_content``), the prompt as ``item.messages``, greedy sampling.

Everything is built and checked when the job is created (a run of the base model would pass every check), and
stored on the job's entry; the eval itself is created when the job succeeds, like the runs.
"""

from __future__ import annotations

from typing import Any

from tuneforge.contracts.datasets import LOOKAHEAD, InvalidLine, read_rows
from tuneforge.contracts.methods import ReinforcementMethod
from tuneforge.service.core.errors import InvalidRequest
from tuneforge.service.db.models import File
from tuneforge.service.schemas import DEFAULT_VALIDATION_EVAL_ITEMS, JobEvalRequest
from tuneforge.storage import ObjectNotFound, ObjectStore

#: a generated answer at least this ROUGE-L F-measure away from the reference passes
ROUGE_PASS = 0.5
DEFAULT_MAX_TOKENS = 256


def _without_model_prefix(value: Any) -> Any:
    """A grader as the user wrote it: ``model_prefix`` is the service's to fill in, in evals as in jobs."""
    if isinstance(value, dict):
        return {k: _without_model_prefix(v) for k, v in value.items() if k != "model_prefix"}
    if isinstance(value, list):
        return [_without_model_prefix(v) for v in value]
    return value


def _item(fmt: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """One validation row as an eval item, or None when it has no prompt or no text answer to compare with."""
    if fmt == "chat":
        *prompt, answer = row["messages"]
        reference = answer.get("content")
        if not prompt or not isinstance(reference, str):
            return None
        return {"messages": prompt, "reference": reference}
    if fmt == "prompt_completion":
        return {"messages": [{"role": "user", "content": row["prompt"]}], "reference": row["completion"]}
    if fmt == "preference":
        reference = row["chosen"][-1].get("content")
        return {"messages": row["prompt"], "reference": reference} if isinstance(reference, str) else None
    return {**{k: v for k, v in row.items() if k != "prompt"}, "messages": row["prompt"]}  # prompt_only


def build_validation_eval(store: ObjectStore, validation: File | None, method: Any, job_name: str,
                          request: JobEvalRequest, max_items: int, param: str
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The eval's create body and the completions data source (without ``model``) built from ``validation``."""
    if validation is None:
        raise InvalidRequest("An eval built from the validation file needs the job's 'validation_file'",
                             param=f"{param}.type")
    if method.type == "reward_model":
        raise InvalidRequest("A reward_model job does not generate answers: its validation accuracy is measured "
                             "while it trains (valid_preference_accuracy); name no validation_file eval",
                             param=f"{param}.type")
    limit = min(request.max_items or DEFAULT_VALIDATION_EVAL_ITEMS, max_items)
    try:
        raw = store.get_bytes(validation.key)
        # only the rows the eval can use are parsed (with room for the few a row without a text answer skips,
        # and for the format's look-ahead), not a whole large validation file at every job creation
        fmt, rows = read_rows(raw.splitlines()[: 2 * limit + LOOKAHEAD])
    except ObjectNotFound:
        raise InvalidRequest(f"File '{validation.id}' has no content any more", param="validation_file") from None
    except InvalidLine as exc:  # it was validated at upload: only a file of another method could get here
        raise InvalidRequest(f"File '{validation.id}' cannot be read as validation rows: {exc.message}",
                             param="validation_file") from None
    items = [item for item in (_item(fmt, r) for r in rows) if item is not None][:limit]
    if not items:
        raise InvalidRequest(f"File '{validation.id}' has no row with a prompt and a text answer to evaluate",
                             param="validation_file")
    fields = sorted({k for item in items for k in item})
    schema = {"type": "object", "properties": {k: {"type": "array"} if k == "messages" else {} for k in fields},
              "required": ["messages"]}
    max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(method, ReinforcementMethod):
        criteria = [{"name": "grader",
                     **_without_model_prefix(method.grader.model_dump(mode="json", exclude_none=True))}]
        length = method.reinforcement.hyperparameters.max_completion_length
        max_tokens = length if isinstance(length, int) else DEFAULT_MAX_TOKENS
    else:
        criteria = [{"type": "text_similarity", "name": "rouge_l", "input": "{{sample.output_text}}",
                     "reference": "{{item.reference}}", "evaluation_metric": "rouge_l", "pass_threshold": ROUGE_PASS}]
    body = {"name": f"{job_name}: validation file {validation.id}"[:256],
            "data_source_config": {"type": "custom", "item_schema": schema}, "testing_criteria": criteria,
            "metadata": {"validation_file": validation.id}}
    sampling = {"temperature": 0, "max_completion_tokens": max_tokens, **(request.sampling_params or {})}
    source = {"type": "completions", "source": {"type": "file_content", "content": [{"item": i} for i in items]},
              "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
              "sampling_params": sampling}
    return body, source
