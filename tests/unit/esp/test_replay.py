"""Anti-replay window (RFC 4303 section 3.4.3 and appendix A), against a set-based model.

Both implementations (bytearray and int bitmaps) must behave exactly like the model: a
number is accepted at most once, numbers left of the window are refused, the window slides
with the highest accepted number. Appendix A2.2's inference of the ESN high half is checked
against the true number over the whole range where the RFC says it is right.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunvpn.esp import DropReason, IntReplayWindow, ReplayWindow
from tunvpn.esp.constants import SEQ32_MAX

WINDOWS = [ReplayWindow, IntReplayWindow]


class ModelWindow:
    """RFC 4303 section 3.4.3 spelled out with a set."""

    def __init__(self, size: int, top: int = 0) -> None:
        self.size = size
        self.top = top
        self.seen: set[int] = set()

    def check(self, seq: int) -> bool:
        if seq > self.top:
            return True
        return seq != 0 and self.top - seq < self.size and seq not in self.seen

    def update(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


@st.composite
def traffic(draw: st.DrawFn) -> tuple[int, list[tuple[int, bool]]]:
    """A window size and a stream of (sequence number, ICV verified?) events: in-order
    runs, jumps, duplicates and stale numbers mixed."""
    size = draw(st.sampled_from([32, 64, 100, 1024, 4096]))
    events = []
    top = 0
    for _ in range(draw(st.integers(1, 120))):
        kind = draw(st.sampled_from(["next", "next", "jump", "old", "dup", "far"]))
        if kind == "next":
            seq = top + 1
        elif kind == "jump":
            seq = top + draw(st.integers(1, 3 * size))
        elif kind == "old":
            seq = max(0, top - draw(st.integers(0, 2 * size)))
        elif kind == "dup":
            seq = top
        else:
            seq = top + draw(st.integers(size, 20 * size))
        verified = draw(st.booleans()) or kind == "next"
        events.append((seq, verified))
        if verified:
            top = max(top, seq)
    return size, events


@pytest.mark.parametrize("cls", WINDOWS)
@settings(max_examples=200, deadline=None)
@given(data=traffic())
def test_window_matches_the_set_model(cls: type, data: tuple[int, list[tuple[int, bool]]]) -> None:
    size, events = data
    window, model = cls(size), ModelWindow(size)
    accepted: set[int] = set()
    for seq, verified in events:
        ok = window.check(seq)
        assert ok == model.check(seq), (seq, window.top)
        if ok and verified:  # update only after the ICV verified
            window.update(seq)
            model.update(seq)
            assert seq not in accepted  # each number accepted at most once
            accepted.add(seq)
        assert window.top == model.top


@pytest.mark.parametrize("cls", WINDOWS)
def test_window_edges(cls: type) -> None:
    window = cls(1024)
    assert not window.check(0)  # sequence numbers start at 1 (RFC 4303 section 3.3.3)
    for seq in range(1, 2001):
        assert window.check(seq)
        window.update(seq)
    assert not window.check(2000)
    assert not window.check(2000 - 1023)  # inside, but seen
    assert not window.check(2000 - 1024)  # the first number left of the window
    window.update(5000)
    assert window.check(5000 - 1023)  # inside the window and never seen
    assert not window.check(5000 - 1024)
    assert not window.check(3000)


@pytest.mark.parametrize("cls", WINDOWS)
def test_window_slides_across_many_rebases(cls: type) -> None:
    window = cls(64)
    for seq in range(1, 100_000, 3):
        assert window.check(seq)
        window.update(seq)
        assert not window.check(seq)
    assert window.check(99_998)
    assert not window.check(99_997)


def test_bitmap_is_allocated_lazily() -> None:
    window = ReplayWindow(4096)
    assert window._bits is None
    assert window.check(17)
    window.update(17)
    assert window._bits is not None
    assert len(window._bits) * 8 >= 4096


def test_window_size_is_validated() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(16)


@pytest.mark.parametrize("cls", WINDOWS)
@settings(max_examples=500, deadline=None)
@given(
    top=st.integers(1, (1 << 40)),
    size=st.sampled_from([32, 1024, 4096]),
    offset=st.integers(0, (1 << 32) - 1),
)
def test_esn_inference_recovers_the_true_number(cls: type, top: int, size: int, offset: int) -> None:
    """RFC 4303 appendix A2.2: for a true number S in [T - W + 1, T - W + 1 + 2^32) the low
    half on the wire determines S."""
    true_seq = top - size + 1 + offset
    if true_seq < 1:
        return
    window = cls(size, top=top)
    assert window.infer_esn(true_seq & SEQ32_MAX) == true_seq


@pytest.mark.parametrize("cls", WINDOWS)
def test_esn_inference_cases_of_the_appendix(cls: type) -> None:
    window = cls(4096, top=(7 << 32) | 10_000)  # case A: the window is inside block 7
    assert window.infer_esn(9_000) == (7 << 32) | 9_000
    assert window.infer_esn(10_000 - 4095) == (7 << 32) | (10_000 - 4095)
    assert window.infer_esn(10_000 - 4096) == (8 << 32) | (10_000 - 4096)  # behind: next block
    window = cls(4096, top=(7 << 32) | 100)  # case B: the window straddles 7 << 32
    assert window.infer_esn(50) == (7 << 32) | 50
    assert window.infer_esn(SEQ32_MAX - 10) == (6 << 32) | (SEQ32_MAX - 10)
    assert window.infer_esn(5000) == (7 << 32) | 5000
    assert cls(4096, top=100).infer_esn(SEQ32_MAX) == 0  # would be block -1: refused


def test_esn_sa_keeps_accepting_across_a_2_32_boundary() -> None:
    from tests.helpers.esp_helpers import ipv4, sa_pair

    outbound, inbound = sa_pair(esn=True)
    outbound.seq = SEQ32_MAX - 5
    inbound.replay = ReplayWindow(4096, top=SEQ32_MAX - 10)
    packets = outbound.encrypt_batch([ipv4()] * 12)
    assert [int.from_bytes(p[4:8], "big") for p in packets][3:7] == [SEQ32_MAX - 1, SEQ32_MAX, 0, 1]
    reordered = packets[:5] + packets[7:] + packets[5:7]
    assert len(inbound.decrypt_batch(reordered)) == 12
    assert inbound.replay.top == SEQ32_MAX + 7
    assert inbound.decrypt(packets[6]) is DropReason.REPLAY
