"""Turn generated token ids into text pieces as they come, and cut the text at the first stop sequence.

Decoding every token alone breaks multi-byte characters and merged spaces; decoding the whole sequence every
step is quadratic. The detokenizer keeps a short window (the approach of HF's ``TextStreamer`` and vLLM):
the text of ``ids[prefix:]`` minus the text of ``ids[prefix:read]`` is what the new tokens added, and nothing
is released while it ends in an incomplete UTF-8 sequence (U+FFFD).

Stop sequences may span tokens and pieces, so text that could be the start of a stop sequence is held back
until the next tokens decide; a found stop sequence and everything after it are dropped.
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    def __init__(self, tokenizer: Any, prompt_tail: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        # a few prompt tokens give the first generated token its left context (leading-space handling)
        self.ids: list[int] = list(prompt_tail or [])
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        new_text = self._decode(self.ids[self.prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end), as decoded."""
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        new_text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text) :]


class StopText:
    """Accumulates text; releases what can no longer turn into a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.released = 0
        self.stopped = False

    def add(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0) + 1)
        self.text += piece
        if self.stops:
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def finish(self) -> str:
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop sequence."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte map (inverse of its bytes_to_unicode), used by byte-level BPE vocabs."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


class TokenText:
    """Text and raw bytes of single tokens, for logprobs (OpenAI's ``token`` and ``bytes``).

    A token can hold part of a multi-byte character: its text alone is U+FFFD, but its bytes are exact, so a
    client can join the bytes of consecutive tokens. Byte-level BPE vocabularies spell the bytes in the token
    string; other vocabularies fall back to the UTF-8 of the decoded text.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is None:
            text = str(self.tokenizer.decode([token]))
            piece = self.tokenizer.convert_ids_to_tokens(token)
            if token not in self.special and isinstance(piece, str) and piece and \
                    all(ch in _BYTE_DECODER for ch in piece):
                raw = [_BYTE_DECODER[ch] for ch in piece]
            else:
                raw = list(text.encode())
            hit = self._cache[token] = (text, raw)
        return hit
