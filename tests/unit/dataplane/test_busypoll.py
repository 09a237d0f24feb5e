"""The busy-poll policy (:mod:`tunvpn.dataplane.busypoll`, issue 21), with times given in
nanoseconds as the data thread gives them, and the data thread running it with stand-in
devices (tests/helpers/fake_devices.py): a lone packet out, the thread polls until the answer
is in, or until its deadline when none comes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.esp_helpers import ipv4
from tests.helpers.fake_devices import CLIENT, CLIENT_VIP, GATEWAY, FakeTun, FakeUdp, children
from tunvpn.control.status import busy_poll_status
from tunvpn.dataplane.busypoll import (
    BURST_NS,
    DEFAULT_LIMIT_US,
    MARGIN_NS,
    MAX_SKIP,
    BusyPoll,
    busy_poll_limit_us,
    default_limit_us,
)
from tunvpn.dataplane.thread import DataPlane

MS = 1_000_000
SERVER = "10.20.0.1"


def test_the_first_poll_lasts_the_limit_then_twice_the_answer_time() -> None:
    busy = BusyPoll(limit_ns=MS)
    assert busy.start(10 * MS) == 11 * MS
    busy.stop(10 * MS + 200_000, answered=True, expired=False)
    assert busy.answer_ns == 200_000
    assert busy.window_ns() == 400_000 + MARGIN_NS
    assert busy.start(20 * MS) == 20 * MS + 400_000 + MARGIN_NS
    # smoothed: one slow answer moves the estimate by an eighth
    busy.stop(20 * MS + 1_000_000, answered=True, expired=False)
    assert busy.answer_ns == (7 * 200_000 + 1_000_000) // 8
    assert busy.stats.polls == 2 and busy.stats.answered == 2


def test_the_window_never_exceeds_the_limit() -> None:
    busy = BusyPoll(limit_ns=MS)
    busy.start(0)
    busy.stop(900_000, answered=True, expired=False)
    assert busy.window_ns() == MS


def test_misses_back_off_exponentially_and_an_answer_resets_it() -> None:
    busy = BusyPoll(limit_ns=MS, share=1.0)
    now = 0
    polled_at = []
    for i in range(40):
        now += 10 * MS
        deadline = busy.start(now)
        if deadline:
            polled_at.append(i)
            busy.stop(deadline, answered=False, expired=True)
    # after the n-th miss, 2**n lone packets go without a poll
    assert polled_at == [0, 3, 8, 17, 34]
    assert busy.stats.missed == 5 and busy.stats.skipped == 35
    # a far side whose answers come late soon costs one poll in MAX_SKIP + 1 lone packets
    polls_before = busy.stats.polls
    for _ in range(5000):
        now += 10 * MS
        deadline = busy.start(now)
        if deadline:
            busy.stop(deadline, answered=False, expired=True)
    assert busy.stats.polls - polls_before <= 5000 // (MAX_SKIP + 1) + 3  # 3: the skips up to MAX_SKIP
    # an answer ends the back-off at once
    while not (deadline := busy.start(now)):
        now += 10 * MS
    busy.stop(deadline - 1, answered=True, expired=False)
    assert busy.start(now + 10 * MS) != 0


def test_something_else_to_do_ends_a_poll_without_counting_a_miss() -> None:
    busy = BusyPoll(limit_ns=MS)
    busy.start(0)
    busy.stop(5_000, answered=False, expired=False)
    assert busy.stats.interrupted == 1 and busy.stats.missed == 0
    assert busy.start(MS) != 0  # no back-off


def test_polling_never_takes_more_than_its_share_of_a_cpu() -> None:
    busy = BusyPoll(limit_ns=MS, share=0.05)
    now = 0
    # answers that take the whole millisecond, back to back: the saved-up budget goes first
    while (deadline := busy.start(now)) != 0:
        busy.stop(deadline, answered=True, expired=False)
        now = deadline
    assert busy.stats.polls == BURST_NS // MS
    assert busy.stats.over_budget == 1
    # then one poll per 20 ms (1 ms at 5%), however many lone packets there are
    polls_before, start = busy.stats.polls, now
    while now < start + 2000 * MS:
        deadline = busy.start(now)
        if deadline:
            busy.stop(deadline, answered=True, expired=False)
        now += MS // 10
    polled = busy.stats.polls - polls_before
    assert polled <= 2000 * 0.05 + 1
    assert busy.stats.polled_ns <= BURST_NS + 0.05 * (now - 0) + MS


def test_a_clock_that_goes_back_neither_breaks_nor_adds_budget() -> None:
    busy = BusyPoll(limit_ns=MS, share=1.0, burst_ns=2 * MS)
    busy.start(100 * MS)
    busy.stop(101 * MS, answered=True, expired=False)
    assert busy.start(50 * MS) != 0  # 1 ms left of the budget
    busy.stop(51 * MS, answered=True, expired=False)
    assert busy.start(50 * MS) == 0 and busy.stats.over_budget == 1


def test_limit_zero_never_polls_and_bad_settings_are_refused() -> None:
    busy = BusyPoll(limit_ns=0)
    assert not busy.enabled and busy.start(0) == 0 and busy.stats.polls == 0
    with pytest.raises(ValueError, match="limit"):
        BusyPoll(limit_ns=-1)
    with pytest.raises(ValueError, match="share"):
        BusyPoll(share=0.0)
    with pytest.raises(ValueError, match="share"):
        BusyPoll(share=1.5)


def test_the_default_is_off_on_a_single_cpu() -> None:
    assert default_limit_us(1) == 0
    assert default_limit_us(2) == DEFAULT_LIMIT_US
    assert default_limit_us(None) == DEFAULT_LIMIT_US
    assert busy_poll_limit_us(0) == 0 and busy_poll_limit_us(250) == 250
    assert busy_poll_limit_us(None) in (0, DEFAULT_LIMIT_US)


# ---------------------------------------------------------------------------- the data thread


class Side:
    def __init__(self, busy: BusyPoll | None) -> None:
        self.tun = FakeTun()
        self.udp = FakeUdp()
        self.dataplane = DataPlane(self.tun, busy_poll=busy)
        self.dataplane.attach_device(self.udp, lambda data, addr: None)

    def busy(self) -> dict[str, int]:
        return dict(self.dataplane.counter_snapshot().group("busy poll"))

    def close(self) -> None:
        self.dataplane.stop()
        self.tun.close()
        self.udp.close()


def wait_for(condition: Callable[[], object]) -> None:
    done = threading.Event()
    for _ in range(1000):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the data thread did not get there")


@pytest.fixture
def make_pair() -> Iterator[Callable[[BusyPoll], tuple[Side, Side]]]:
    sides: list[Side] = []

    def make(busy: BusyPoll) -> tuple[Side, Side]:
        client, gateway = Side(busy), Side(None)
        c, g = children()
        client.dataplane.install(c)
        gateway.dataplane.install(g)
        client.dataplane.start()
        gateway.dataplane.start()
        sides.extend((client, gateway))
        return client, gateway

    yield make
    for side in sides:
        side.close()


def test_the_thread_polls_after_a_lone_packet_until_its_answer_is_in(
    make_pair: Callable[[BusyPoll], tuple[Side, Side]],
) -> None:
    # a deadline far off and a budget to match: the answer surely comes while it polls
    client, gateway = make_pair(BusyPoll(limit_ns=60_000 * MS, burst_ns=120_000 * MS))
    request = ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"ping")
    client.tun.inject(request)
    wait_for(lambda: client.udp.sent)
    [(datagram, _)] = client.udp.sent
    wait_for(lambda: client.busy().get("polls") == 1)  # asking for counters does not end it
    gateway.udp.inject(datagram, CLIENT)
    wait_for(lambda: gateway.tun.written == [request])
    gateway.tun.inject(ipv4(src=SERVER, dst=CLIENT_VIP, payload=b"pong"))
    wait_for(lambda: gateway.udp.sent)
    [(answer, _)] = gateway.udp.sent
    client.udp.inject(answer, GATEWAY)
    wait_for(lambda: client.tun.written)
    stats = client.busy()
    assert stats["answered"] == 1 and stats["missed"] == 0 and stats["limit us"] == 60_000_000
    assert stats["answer us"] > 0
    assert gateway.dataplane.counter_snapshot().group("busy poll") == {}  # None: not offered
    # what `tunvpn status` shows of it
    shown = busy_poll_status(client.dataplane.counter_snapshot())
    assert shown is not None and shown["answered"] == 1 and shown["over_budget"] == 0
    assert busy_poll_status(gateway.dataplane.counter_snapshot()) is None


def test_a_poll_with_no_answer_ends_at_its_deadline_and_backs_off(
    make_pair: Callable[[BusyPoll], tuple[Side, Side]],
) -> None:
    client, _ = make_pair(BusyPoll(limit_ns=MS))
    client.tun.inject(ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"one"))
    wait_for(lambda: client.busy().get("missed") == 1)
    # the next lone packet goes out without a poll (the back-off), and the thread sleeps again
    client.tun.inject(ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"two"))
    wait_for(lambda: client.busy().get("skipped") == 1)
    assert client.busy()["polls"] == 1
    assert len(client.udp.sent) == 2
