"""Long preference prompts lose their oldest turns, never the responses that differ (TRL truncates the end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.trainer.methods.preference import chat_token_counter, fit_prompt, fit_rows


def words(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"].split()) + 1 for m in messages)  # +1: a role marker per message


def msg(role: str, n: int) -> dict[str, str]:
    return {"role": role, "content": " ".join(["w"] * n)}


def pair(prompt: list[dict[str, str]]) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": [msg("assistant", 4)], "rejected": [msg("assistant", 9)]}


def test_a_pair_that_fits_is_untouched() -> None:
    row = pair([msg("user", 5)])
    assert fit_prompt(row, words, 100) == (row, False, False)


def test_oldest_exchanges_go_first_and_the_prompt_still_starts_with_a_user_turn() -> None:
    prompt = [msg("user", 30), msg("assistant", 30), msg("user", 10), msg("assistant", 10), msg("user", 5)]
    row = pair(prompt)
    fitted, shortened, too_long = fit_prompt(row, words, 50)
    assert shortened and not too_long
    assert fitted["prompt"] == prompt[2:]
    assert fitted["chosen"] == row["chosen"] and fitted["rejected"] == row["rejected"]
    # the longer response decides: 10 + 1 + ... must fit with the 9-word rejected answer
    assert max(words(fitted["prompt"] + row["chosen"]), words(fitted["prompt"] + row["rejected"])) <= 50


def test_a_system_message_is_kept() -> None:
    prompt = [msg("system", 3), msg("user", 40), msg("assistant", 40), msg("user", 5)]
    fitted, shortened, _ = fit_prompt(pair(prompt), words, 30)
    assert shortened
    assert fitted["prompt"] == [prompt[0], prompt[3]]


def test_the_last_turn_is_never_dropped() -> None:
    prompt = [msg("user", 10), msg("assistant", 10), msg("user", 80)]
    fitted, shortened, too_long = fit_prompt(pair(prompt), words, 40)
    assert shortened and too_long
    assert fitted["prompt"] == [prompt[2]]


def test_fit_rows_counts() -> None:
    rows = [pair([msg("user", 5)]), pair([msg("user", 30), msg("assistant", 30), msg("user", 5)]),
            pair([msg("user", 90)])]
    fitted, stats = fit_rows(rows, words, 40)
    assert stats.shortened == 2 and stats.still_too_long == 1
    assert [len(r["prompt"]) for r in fitted] == [1, 1, 1]


def test_token_counter_uses_the_chat_template(tiny_model: Path) -> None:
    from tuneforge.trainer.data import ensure_chat_template
    from tuneforge.trainer.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    ensure_chat_template(tokenizer)
    count = chat_token_counter(tokenizer)
    short = count([{"role": "user", "content": "hi"}])
    longer = count([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there, friend"}])
    assert isinstance(short, int) and 0 < short < longer
