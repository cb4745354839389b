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


@pytest.mark.parametrize("length", [(1 << 32) + 5, 5 << 40, (1 << 62) + 3])
def test_lengths_beyond_32_bits_combine_consistently(length: int) -> None:
    # no buffer that large here: combining is associative, whatever the lengths, exactly when it is right
    a, b, c = 0x1234_5678, 0x9ABC_DEF0, 0x0F0F_0F0F
    left = crc32_combine(crc32_combine(a, b, length), c, 3)
    right = crc32_combine(a, crc32_combine(b, c, 3), length + 3)
    assert left == right
    assert crc32_combine(a, b, length) != crc32_combine(a, b, length + 1)


def test_lengths_out_of_range_are_refused() -> None:
    # zlib-ng itself would loop forever on a negative length
    with pytest.raises(ValueError, match="out of range"):
        crc32_combine(0, 0, -1)
    with pytest.raises(ValueError, match="out of range"):
        crc32_combine(0, 0, 1 << 63)
