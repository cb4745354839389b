"""CRC32 of a whole object from the CRC32s of its byte ranges (zlib's ``crc32_combine``, which Python lacks).

A ranged download checks each range as it arrives and the object as a whole against the server's
``FULL_OBJECT`` CRC32 without reading the file a second time. CRC32 is linear over GF(2): appending ``n`` bytes
maps the running CRC through a 32x32 bit matrix ("``n`` zero bytes") and XORs in the appended bytes' own CRC.
The matrices for 2**k zero bytes are built once by squaring; combining then costs one matrix-vector product per
set bit of ``n``.
"""

from __future__ import annotations

import functools

_REFLECTED_POLY = 0xEDB88320
#: 2**43 bytes (8 TiB) is beyond S3's 5 TiB object limit
_LEVELS = 44


def _times(matrix: tuple[int, ...], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_times(matrix, column) for column in matrix)


@functools.cache
def _zero_bytes_operators() -> tuple[tuple[int, ...], ...]:
    """``ops[k]``: the CRC register after 2**k more zero bytes, as a matrix over GF(2)."""
    one_bit = (_REFLECTED_POLY, *(1 << n for n in range(31)))
    op = one_bit
    for _ in range(3):  # 1 -> 2 -> 4 -> 8 bits
        op = _square(op)
    ops = [op]
    for _ in range(_LEVELS - 1):
        ops.append(_square(ops[-1]))
    return tuple(ops)


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """CRC32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``."""
    if length_b < 0 or length_b >> _LEVELS:
        raise ValueError(f"length {length_b} out of range")
    ops = _zero_bytes_operators()
    level = 0
    while length_b:
        if length_b & 1:
            crc_a = _times(ops[level], crc_a)
        length_b >>= 1
        level += 1
    return crc_a ^ crc_b
