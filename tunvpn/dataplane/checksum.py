"""The Internet checksum (RFC 1071) fast in pure Python, and per-segment sums with numpy.

Pure: no I/O. The ones' complement 16-bit sum of a buffer is congruent to the buffer read as
one big-endian integer modulo 0xFFFF, because 2**16 = 1 (mod 0xFFFF). So
``int.from_bytes(buf, "big") % 0xFFFF`` is the sum, except that the ones' complement sum of a
buffer that is not all zeros is never 0: a remainder of 0 then means 0xFFFF. An odd-length
buffer is summed as if padded with one zero octet (RFC 1071 section 4.1), i.e. shifted left 8.

CPython divides a big integer by a one-digit divisor one 30-bit digit at a time with a hardware
division, which is the slow part on long buffers; :func:`_reduce` first folds the integer onto
itself with shifts and additions (2**(16k) = 1 mod 0xFFFF too) and divides only what is left.
For many equal-size segments of one buffer (GSO split), :func:`segment_sums` sums all rows in
one numpy call when numpy is installed; ``python -m tunvpn.dataplane.bench_io`` shows why.

Sums here are "partial sums": any non-negative integer congruent to the ones' complement sum
modulo 0xFFFF. They may be added together as long as every part starts at an even offset of
the checksummed range; :func:`fold` turns a partial sum of data that is not all zeros into
the 16-bit ones' complement sum, and ``fold(x) ^ 0xFFFF`` is the checksum to store.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

# optional: vectorized per-segment sums (imported by name so the type is the same with or
# without numpy installed, for mypy too)
_np: ModuleType | None
# numpy's OpenBLAS starts a pool of worker threads when imported; the sums here use none of
# it, and a thread started before a daemon drops root would keep root's bounding set
# (tunvpn/shell/privileges.py refuses to drop then). One BLAS thread: no pool.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
try:
    _np = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - exercised where numpy is missing
    _np = None

HAVE_NUMPY = _np is not None
"""Whether :func:`segment_sums` can use numpy."""

_FOLD_ABOVE_BITS = 2048
"""Integers longer than this are folded with shifts before the one division (see module doc)."""
_masks: dict[int, int] = {}

_LITTLE_ENDIAN = sys.byteorder == "little"
VECTORIZE_MIN_BYTES = 8192
"""Below this many payload octets the per-segment integer sums beat one numpy call."""


def _reduce(value: int, nbits: int) -> int:
    """``value`` (at most ``nbits`` bits) made smaller but congruent modulo 0xFFFF."""
    while nbits > _FOLD_ABOVE_BITS:
        k = ((nbits >> 1) + 15) & ~15  # a multiple of 16 bits: 2**k = 1 (mod 0xFFFF)
        mask = _masks.get(k)
        if mask is None:
            mask = _masks[k] = (1 << k) - 1
        value = (value >> k) + (value & mask)
        nbits = k + 1
    return value


def partial_sum(data: bytes | bytearray | memoryview) -> int:
    """A partial ones' complement sum of ``data`` (zero-padded to even length), not folded."""
    n = len(data)
    value = int.from_bytes(data, "big")
    if n & 1:
        value <<= 8
        n += 1
    if n > _FOLD_ABOVE_BITS // 8:
        return _reduce(value, n << 3)
    return value


def fold(partial: int) -> int:
    """The 16-bit ones' complement sum for a partial sum of data that is not all zeros.

    0 stays 0 (all-zero data sums to 0); any other multiple of 0xFFFF is 0xFFFF ("-0").
    """
    if not partial:
        return 0
    return partial % 0xFFFF or 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The ones' complement sum of ``data`` plus the partial sum ``initial``, folded to 16 bits."""
    return fold(partial_sum(data) + initial)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``, with ``initial`` a partial sum to include.

    Computed over a header whose checksum field is zero, this is the value to store; computed
    over a header with its checksum in place, it is 0 when the checksum is right.
    """
    return fold(partial_sum(data) + initial) ^ 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, l4_length: int) -> int:
    """Partial sum of the TCP/UDP pseudo-header (RFC 793 section 3.1, RFC 8200 section 8.1).

    ``src``/``dst`` are 4 (IPv4) or 16 (IPv6) octets; the result is not folded.
    """
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + l4_length


def l4_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray | memoryview) -> int:
    """The TCP or UDP checksum of ``segment`` (its checksum field zero) between ``src`` and ``dst``.

    For UDP a computed 0 is returned as 0xFFFF (RFC 768: 0 means "no checksum").
    """
    value = checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment)))
    if value == 0 and protocol == 17:
        return 0xFFFF
    return value


def segment_sums(
    data: bytes | bytearray | memoryview, start: int, size: int, count: int, *, vectorized: bool | None = None
) -> list[int]:
    """Partial sums of ``count`` consecutive ``size``-octet segments of ``data`` from ``start``.

    The last segment may be shorter (it ends with ``data``). With numpy (and, when
    ``vectorized`` is None, at least :data:`VECTORIZE_MIN_BYTES` octets) the full segments
    are summed in one call over a 2-D view: per row, 32-bit native words, a row sum in 64
    bits, which is congruent to the byte-swapped ones' sum on a little-endian host; a byte
    swap of a 16-bit sum is a multiplication by 256 modulo 0xFFFF, so each row sum is shifted
    left by 8 there.
    """
    end = len(data)
    full = min(count, (end - start) // size) if size else 0
    if vectorized is None:
        vectorized = HAVE_NUMPY and full * size >= VECTORIZE_MIN_BYTES
    sums: list[int]
    if vectorized and _np is not None and full > 1 and size % 2 == 0:
        words, width = (_np.uint32, 4) if size % 4 == 0 else (_np.uint16, 2)
        rows = _np.frombuffer(data, dtype=words, count=full * size // width, offset=start).reshape(
            full, size // width
        )
        sums = rows.sum(axis=1, dtype=_np.uint64).tolist()
        if _LITTLE_ENDIAN:
            sums = [s << 8 for s in sums]
    else:
        full = 0
        sums = []
    view = memoryview(data)
    for i in range(full, count):
        offset = start + i * size
        sums.append(partial_sum(view[offset : min(offset + size, end)]))
    return sums
