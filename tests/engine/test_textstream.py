"""Incremental detokenizing and stop sequences (pure functions; the byte-level tokenizer of the tiny model)."""

from __future__ import annotations

import random

import pytest

from tests.support.tiny_model import build_tokenizer
from tuneforge.engine.textstream import Detokenizer, StopText


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


@pytest.mark.parametrize("text", ["plain words, and more", "naïve café — 東京 🚀 done", "  leading  spaces\n\nlines"])
def test_pieces_add_up_to_the_decoded_text(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tokenizer, tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    pieces = [detok.add(t) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # multi-byte characters come out whole


def test_an_incomplete_character_at_the_end_is_flushed(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("ab🚀", add_special_tokens=False)["input_ids"][:-1]  # cut inside the emoji's bytes
    detok = Detokenizer(tokenizer)
    text = "".join(detok.add(t) for t in ids)
    assert text == "ab"
    assert detok.flush() == tokenizer.decode(ids)[2:]


@pytest.mark.parametrize(("stops", "pieces", "released", "stopped"), [
    (("END",), ["hello E", "N", "D and more"], "hello ", True),
    (("END",), ["hello E", "N", "x"], "hello ENx", False),
    (("\n\n", "###"), ["a\n", "\nb"], "a", True),
    (("ab", "abc"), ["xa", "bc"], "x", True),
    ((), ["anything"], "anything", False),
])
def test_stop_sequences_across_pieces(stops: tuple[str, ...], pieces: list[str], released: str,
                                      stopped: bool) -> None:
    st = StopText(stops)
    out = "".join(st.add(p) for p in pieces)
    if not st.stopped:
        out += st.finish()
    assert out == released and st.stopped is stopped and st.text == released


def test_stop_sequences_random_splits() -> None:
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice("abc ") for _ in range(30))
        stop = "".join(rng.choice("abc") for _ in range(rng.randint(1, 3)))
        st = StopText((stop,))
        out, i = "", 0
        while i < len(text) and not st.stopped:
            j = i + rng.randint(1, 4)
            out += st.add(text[i:j])
            i = j
        if not st.stopped:
            out += st.finish()
        expected = text[: text.index(stop)] if stop in text else text
        assert out == expected, (text, stop)
