"""Anti-replay window (RFC 4303 section 3.4.3 and appendix A).

The receiver keeps the highest sequence number it has authenticated (``top``) and one bit
for each of the ``size`` numbers up to it. A packet is checked *before* its ICV is verified
(cheap rejection of duplicates) and recorded *only after* the ICV verified, so forged
packets cannot move the window.

Two interchangeable implementations; ``python -m tunvpn.esp.bench`` measures both:

- :class:`ReplayWindow` keeps the bits in a ``bytearray`` addressed by absolute sequence
  number minus a base that is moved forward (one ``memmove``) only every ~1024 packets, so
  recording a packet is a byte update with no allocation. The default.
- :class:`IntReplayWindow` keeps them in a Python ``int`` addressed the same way; each update
  allocates a new int as wide as the window, which costs more as the window grows.

Both infer the high half of an extended sequence number from the low half on the wire
(RFC 4303 appendix A2.2), see :meth:`ReplayWindow.infer_esn`.
"""

from __future__ import annotations

from .constants import DEFAULT_REPLAY_WINDOW, MIN_REPLAY_WINDOW

_M32 = 0xFFFF_FFFF
_SLACK_BITS = 1024  # how far ``top`` may run ahead before the bitmap is rebased


def _check_size(size: int) -> int:
    if not isinstance(size, int) or size < MIN_REPLAY_WINDOW:
        raise ValueError(f"replay window must be an int of at least {MIN_REPLAY_WINDOW}, not {size!r}")
    return size


class _WindowBase:
    """What both windows share: the RFC 4303 appendix A2.2 inference."""

    __slots__ = ()
    size: int
    top: int

    def infer_esn(self, seq_low: int) -> int:
        """The 64-bit sequence number a packet carrying ``seq_low`` most likely has.

        RFC 4303 appendix A2.2: with ``Tl``/``Th`` the low/high halves of ``top`` and ``W``
        the window size, a low half inside the window (or ahead of it) belongs to the
        current high half; one "behind" the window belongs to the next high half, or, while
        the window straddles a 2^32 boundary, to the previous one. The ICV check then
        confirms the guess. Returns 0 (always rejected) when the guess would be negative.
        """
        top = self.top
        window = self.size
        top_low = top & _M32
        top_high = top >> 32
        if top_low >= window - 1:  # case A: the window lies inside one 2^32 block
            high = top_high if seq_low >= top_low - window + 1 else top_high + 1
        else:  # case B: the window's bottom is in the previous block
            high = top_high - 1 if seq_low >= ((top_low - window + 1) & _M32) else top_high
        if high < 0:
            return 0
        return (high << 32) | seq_low


class ReplayWindow(_WindowBase):
    """Sliding window over the last ``size`` sequence numbers, bits in a ``bytearray``.

    Bit ``seq - base`` of the bitmap is set once ``seq`` was authenticated. ``base`` only
    moves forward, in steps of at least ``_SLACK_BITS``, so the bitmap is ``size + 1024``
    bits wide; it is allocated on the first :meth:`update`, which keeps idle SAs small.

    :param size: window width in packets (at least 32; default 4096).
    :param top: the highest sequence number already seen (0 = none). Tests use it to
        start near a 2^32 boundary.
    """

    __slots__ = ("_base", "_bits", "_span", "size", "top")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW, top: int = 0) -> None:
        self.size = _check_size(size)
        self.top = top
        self._span = (size + _SLACK_BITS + 7) & ~7
        self._base = max(0, top - size) & ~7
        self._bits: bytearray | None = None

    def check(self, seq: int) -> bool:
        """True when ``seq`` may be new: ahead of the window, or inside it and unseen."""
        top = self.top
        if seq > top:
            return True
        if seq == 0 or top - seq >= self.size:
            return False
        bits = self._bits
        if bits is None:
            return True
        offset = seq - self._base
        return not (bits[offset >> 3] >> (offset & 7)) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` as authenticated; call only after its ICV verified and check() passed."""
        bits = self._bits
        if bits is None:
            bits = self._bits = bytearray(self._span >> 3)
        offset = seq - self._base
        if seq > self.top:
            self.top = seq
            if offset >= self._span:
                self._rebase(seq)
                offset = seq - self._base
        bits[offset >> 3] |= 1 << (offset & 7)

    def _rebase(self, seq: int) -> None:
        """Move ``base`` so that ``seq - size .. seq`` fit, shifting the kept bytes down."""
        bits = self._bits
        assert bits is not None
        new_base = max(0, seq - self.size) & ~7
        drop = (new_base - self._base) >> 3
        n = len(bits)
        if drop >= n:
            bits[:] = bytes(n)
        else:
            bits[: n - drop] = bits[drop:]
            bits[n - drop :] = bytes(drop)
        self._base = new_base

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top})"


class IntReplayWindow(_WindowBase):
    """The same window with its bits in a Python ``int`` (kept for the benchmark and tests).

    Same interface and semantics as :class:`ReplayWindow`.
    """

    __slots__ = ("_base", "_bits", "size", "top")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW, top: int = 0) -> None:
        self.size = _check_size(size)
        self.top = top
        self._base = max(0, top - size)
        self._bits = 0

    def check(self, seq: int) -> bool:
        """True when ``seq`` may be new: ahead of the window, or inside it and unseen."""
        top = self.top
        if seq > top:
            return True
        if seq == 0 or top - seq >= self.size:
            return False
        return not (self._bits >> (seq - self._base)) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` as authenticated; call only after its ICV verified and check() passed."""
        if seq > self.top:
            self.top = seq
            if seq - self._base >= self.size + _SLACK_BITS:
                new_base = seq - self.size
                self._bits >>= new_base - self._base
                self._base = new_base
        self._bits |= 1 << (seq - self._base)

    def __repr__(self) -> str:
        return f"IntReplayWindow(size={self.size}, top={self.top})"
