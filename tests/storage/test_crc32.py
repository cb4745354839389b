"""crc32_combine: the CRC32 of a concatenation from the parts' CRC32s, as zlib computes it directly."""

from __future__ import annotations

import os
import zlib

import pytest

from tuneforge.storage.crc32 import crc32_combine


@pytest.mark.parametrize(("len_a", "len_b"), [(0, 0), (0, 7), (7, 0), (1, 1), (1000, 12_345), (3, 5 << 20)])
def test_combine_matches_zlib(len_a: int, len_b: int) -> None:
    a, b = os.urandom(len_a), os.urandom(len_b)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len_b) == zlib.crc32(a + b)


def test_folding_many_ranges_gives_the_whole_crc() -> None:
    data = os.urandom(1 << 20)
    crc = 0
    for start in range(0, len(data), 100_000):  # uneven last range
        chunk = data[start:start + 100_000]
        crc = crc32_combine(crc, zlib.crc32(chunk), len(chunk))
    assert crc == zlib.crc32(data)


def test_lengths_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        crc32_combine(0, 0, -1)
    with pytest.raises(ValueError, match="out of range"):
        crc32_combine(0, 0, 1 << 50)
