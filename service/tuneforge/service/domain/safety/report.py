"""A safety report from the answers of a job's base and tuned models: refusal rates, personal data in the answers
(and what of it leaked from the training file), the difference base -> tuned; as JSON, as a page, as one line.

Answers are stored with their personal data replaced by placeholders (the findings are listed masked): the report
is a file people pass around, and must not spread what it warns about.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from tuneforge.service.domain.privacy.scanner import find, redact
from tuneforge.service.domain.safety.leaks import TrainingValues, check
from tuneforge.service.domain.safety.refusals import WINDOW, is_refusal

SETS = ("redteam", "validation")
ROLES = ("base", "tuned")
JSON_NAME, HTML_NAME = "safety_report.json", "safety_report.html"


@dataclass(frozen=True)
class Answer:
    text: str
    #: why there is no answer (the engine refused the request); None when there is one
    error: str | None = None


@dataclass(frozen=True)
class Item:
    set: str
    prompt: str
    answers: dict[str, Answer]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _diff(base: float | None, tuned: float | None) -> float | None:
    return None if base is None or tuned is None else round(tuned - base, 4)


def build(*, job_id: str, created_at: int, models: dict[str, str], items: list[Item], training: TrainingValues,
          settings: dict[str, Any], redteam_source: dict[str, Any], reward_model: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    tallies = {s: {r: {"answered": 0, "refusals": 0, "errors": 0} for r in ROLES} for s in SETS}
    pii = {r: {"found": {}, "leaked": {}} for r in ROLES}  # type: dict[str, dict[str, dict[str, int]]]
    for item in items:
        row: dict[str, Any] = {"set": item.set, "prompt": redact(item.prompt, find(item.prompt))}
        for role in ROLES:
            answer = item.answers[role]
            tally = tallies[item.set][role]
            if answer.error is not None:
                tally["errors"] += 1
                row[role] = {"error": answer.error}
                continue
            refusal = is_refusal(answer.text)
            tally["answered"] += 1
            tally["refusals"] += refusal
            found = check(answer.text, training)
            for f in found:
                pii[role]["found"][f.kind] = pii[role]["found"].get(f.kind, 0) + 1
                if f.leaked:
                    pii[role]["leaked"][f.kind] = pii[role]["leaked"].get(f.kind, 0) + 1
            row[role] = {"text": redact(answer.text, find(answer.text)), "refusal": refusal,
                         "pii": [{"kind": f.kind, "masked": f.masked, "leaked": f.leaked} for f in found]}
        rows.append(row)

    def rates(set_name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role in ROLES:
            t = tallies[set_name][role]
            out[role] = {**t, "refusal_rate": _rate(t["refusals"], t["answered"])}
        out["difference"] = {"refusal_rate": _diff(out["base"]["refusal_rate"], out["tuned"]["refusal_rate"])}
        return out

    totals = {role: {"found_total": sum(pii[role]["found"].values()),
                     "leaked_total": sum(pii[role]["leaked"].values())} for role in ROLES}
    return {
        "object": "fine_tuning.job.safety_report",
        "job_id": job_id,
        "created_at": created_at,
        "models": models,
        "settings": settings,
        "redteam": {**rates("redteam"), "source": redteam_source},
        "validation": rates("validation"),
        "pii": {
            "training_file": {"values": len(training.values), "bytes_read": training.bytes_read,
                              "complete": training.complete},
            **{role: {**pii[role], **totals[role]} for role in ROLES},
            "difference": {key: totals["tuned"][key] - totals["base"][key] for key in ("found_total", "leaked_total")},
        },
        "reward_model": reward_model,
        "classifier": {
            "refusal": "phrase patterns in the answer's first characters (tuneforge.service.domain.safety.refusals)",
            "window_chars": WINDOW,
            "pii": "the upload PII scanner (tuneforge.service.domain.privacy); answers and prompts are stored with "
                   "findings replaced by placeholders",
        },
        "items": rows,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.0f} pt"


def summary(report: dict[str, Any]) -> str:
    """One line for the job's events."""
    red, val, pii = report["redteam"], report["validation"], report["pii"]
    return (f"Safety report: refusals of harmful requests {_pct(red['base']['refusal_rate'])} (base) -> "
            f"{_pct(red['tuned']['refusal_rate'])} (tuned), {_signed(red['difference']['refusal_rate'])}; refusals "
            f"of validation prompts {_pct(val['base']['refusal_rate'])} -> {_pct(val['tuned']['refusal_rate'])}; "
            f"personal data in answers {pii['base']['found_total']} -> {pii['tuned']['found_total']}, of it from the "
            f"training file {pii['base']['leaked_total']} -> {pii['tuned']['leaked_total']}{_reward_line(report)}. "
            f"Artifacts: reports/{JSON_NAME}, reports/{HTML_NAME}")


def _reward_line(report: dict[str, Any]) -> str:
    reward = report["reward_model"]
    if not reward.get("available") or None in reward["mean_score"].values():
        return ""
    means = reward["mean_score"]
    return (f"; reward-model score of the answers to harmful requests {means['base']:.3f} -> {means['tuned']:.3f} "
            f"({reward['difference']:+.3f})")


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .5em;
vertical-align:top;text-align:left}th{background:#f3f3f3}.r{color:#1a7f37}.c{color:#b35900}.e{color:#999}
td pre{white-space:pre-wrap;margin:0;font:13px/1.4 ui-monospace,monospace}.n{text-align:right}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(report: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external resources); every value from the models is escaped."""
    red, val, pii = report["redteam"], report["validation"], report["pii"]
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Safety report {_e(report['job_id'])}"
           f"</title><style>{_STYLE}</style></head><body>",
           f"<h1>Safety report of {_e(report['job_id'])}</h1>",
           f"<p>Base <b>{_e(report['models']['base'])}</b>, tuned <b>{_e(report['models']['tuned'])}</b>; greedy "
           f"answers of at most {_e(report['settings']['max_tokens'])} tokens.</p>",
           "<h2>Summary</h2><table><tr><th></th><th>base</th><th>tuned</th><th>difference</th></tr>"]
    for label, part in (("Refusals of harmful requests", red), ("Refusals of validation prompts", val)):
        out.append(f"<tr><td>{label}</td>" + "".join(
            f"<td class=n>{_pct(part[r]['refusal_rate'])} ({part[r]['refusals']}/{part[r]['answered']}"
            f"{', ' + str(part[r]['errors']) + ' errors' if part[r]['errors'] else ''})</td>" for r in ROLES)
            + f"<td class=n>{_signed(part['difference']['refusal_rate'])}</td></tr>")
    for label, key in (("Personal data in answers", "found_total"),
                       ("... of it from the training file", "leaked_total")):
        out.append(f"<tr><td>{label}</td><td class=n>{pii['base'][key]}</td><td class=n>{pii['tuned'][key]}</td>"
                   f"<td class=n>{pii['difference'][key]:+d}</td></tr>")
    reward = report["reward_model"]
    if reward.get("available"):
        means = reward["mean_score"]
        out.append("<tr><td>Reward-model score of the answers to harmful requests (" + _e(reward["model"]) + ")</td>"
                   + "".join(f"<td class=n>{'n/a' if means[r] is None else f'{means[r]:.3f}'}</td>" for r in ROLES)
                   + "<td class=n>" + ("n/a" if reward["difference"] is None else f"{reward['difference']:+.3f}")
                   + "</td></tr></table>")
    else:
        out.append("<tr><td>Reward-model harmlessness</td><td colspan=3>" + _e(reward.get("reason", ""))
                   + "</td></tr></table>")
    training = pii["training_file"]
    out.append(f"<p>Training file: {training['values']} distinct personal values in {training['bytes_read']} bytes "
               f"read{'' if training['complete'] else ' (not the whole file)'}. Refusals are detected by phrase "
               f"patterns in the first {report['classifier']['window_chars']} characters; personal data in prompts "
               f"and answers is shown as placeholders.</p>")
    source = red["source"]
    out.append(f"<p>Harmful requests: {_e(source.get('source', ''))}; {_e(source.get('selection', ''))}.</p>")
    for set_name, title in (("redteam", "Harmful requests"), ("validation", "Validation prompts")):
        out.append(f"<h2>{title}</h2><table><tr><th>#</th><th>prompt</th><th>base</th><th>tuned</th></tr>")
        for i, row in enumerate(r for r in report["items"] if r["set"] == set_name):
            cells = []
            for role in ROLES:
                answer = row[role]
                if "error" in answer:
                    cells.append(f"<td class=e>error: {_e(answer['error'])}</td>")
                    continue
                tag = "<b class=r>refusal</b>" if answer["refusal"] else "<b class=c>answered</b>"
                leaks = "".join(f"<br>{_e(p['kind'])} {_e(p['masked'])}"
                                f"{' (from the training file)' if p['leaked'] else ''}" for p in answer["pii"])
                cells.append(f"<td>{tag}{leaks}<pre>{_e(answer['text'])}</pre></td>")
            out.append(f"<tr><td>{i + 1}</td><td><pre>{_e(row['prompt'])}</pre></td>{''.join(cells)}</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
