"""Issue 14: a storm of mutated ISAKMP messages (tests/helpers/mutator.py) at one gateway
engine that carries a live user's ISAKMP SA, with the clock running.

What must hold whatever arrives (STYLE.md section 3, issue 14):

* ``receive_datagram`` and ``handle_timer`` never raise; the storm makes no event but
  ``ProtocolError`` and (unauthenticated) ``Phase1Failed``;
* the state an attacker can grow stays bounded: half-open SAs (in total and per source),
  every SA besides the user's is a half-open one, the engine's bookkeeping tables;
* every bad message is counted in ``drops``;
* each datagram gets at most one answer, to its own source, and an answer to a message that
  started nothing is no bigger than a Notify;
* the user's session is untouched: its SA stays up (its DPD runs during the storm), no event
  names it, and a Quick Mode over it succeeds afterwards.

``TUNVPN_FUZZ_ITERATIONS`` sets the number of datagrams (CI: 20,000),
``TUNVPN_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.helpers.ike_pair import (
    CLIENT_IP,
    GATEWAY_IP,
    PROTECTED,
    Pair,
    client_config,
    connect,
    gateway_config,
)
from tests.helpers.mutator import NON_ESP_MARKER, fuzz_iterations, fuzz_seed, storm_datagrams
from tunvpn.ike import events as ev
from tunvpn.ike.constants import ExchangeType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

SOURCES = [f"203.0.113.{i}" for i in range(1, 26)] + [f"198.18.{i}.9" for i in range(25)]
STEP = 0.002
"""Seconds between two storm datagrams (500 a second): the CI storm lasts 40 s of engine
time, past the half-open timeout (30 s) and the user's DPD interval (30 s)."""
INFORMATIONAL = ExchangeType.INFORMATIONAL
NOTIFY_SIZE = 60 + len(NON_ESP_MARKER)
"""An unprotected Notify with the two cookies as its SPI (the answer of a refused message)."""
FIRST_REPLY_MAX = 2048
"""The largest answer a first message may get (Aggressive Mode message 2 with a PSK)."""


@dataclass
class Storm:
    pair: Pair
    user_sa: bytes
    answers: Counter[str] = field(default_factory=Counter)
    """What the gateway sent to storm sources, by kind."""
    bytes_in: int = 0
    bytes_out: int = 0
    most_half_open: int = 0
    largest_ratio: float = 0.0
    """The largest answer to a storm datagram over its size."""
    notifies_to: Counter[str] = field(default_factory=Counter)
    """Unprotected Notifies sent to each storm source."""
    other_events: list[ev.Event] = field(default_factory=list)

    @property
    def gateway(self) -> IkeEngine:
        return self.pair.gateway.engine

    def deliver_between_peers(self, stormed: list[tuple[bytes, tuple[str, int], int]]) -> None:
        """Carry the user's traffic both ways until quiet; anything the gateway sends to
        another address is put in ``stormed``."""
        pair = self.pair
        for _ in range(20):
            moved = 0
            for data, remote, port in pair.gateway.engine.datagrams_to_send():
                if remote[0] != CLIENT_IP:
                    stormed.append((data, remote, port))
                    continue
                moved += 1
                pair.client.engine.receive_datagram(
                    data, (GATEWAY_IP, port), (CLIENT_IP, remote[1]), pair.now
                )
            for data, remote, port in pair.client.engine.datagrams_to_send():
                moved += 1
                pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), remote, pair.now)
            self.drain_gateway()
            pair.client.drain()
            if not moved:
                return
        raise AssertionError("the user's engines never went quiet")

    def drain_gateway(self) -> None:
        while (e := self.gateway.next_event()) is not None:
            if isinstance(e, ev.ProtocolError):
                # a storm message under the user's cookies is refused (and may be answered
                # with a protected Notify to the user): an event, nothing else
                self.answers["refused under the user's cookies"] += e.sa_id == self.user_sa
                continue
            if isinstance(e, ev.Phase1Failed):
                assert e.sa_id != self.user_sa, f"the storm ended the user's SA: {e}"
                assert e.peer[0] in SOURCES
                continue
            self.other_events.append(e)

    def tick(self) -> None:
        """Run both engines' timers that are due (retransmissions, half-open timeouts, DPD)."""
        pair = self.pair
        for engine in (pair.gateway.engine, pair.client.engine):
            timer = engine.get_timer()
            if timer is not None and timer <= pair.now:
                engine.handle_timer(pair.now)
        stormed: list[tuple[bytes, tuple[str, int], int]] = []
        self.deliver_between_peers(stormed)
        for data, remote, _ in stormed:  # retransmissions to storm sources
            assert remote[0] in SOURCES
            self.answers["retransmitted"] += 1
            self.bytes_out += len(data)

    def check_bounds(self) -> None:
        gateway = self.gateway
        config = gateway.config
        half_open = gateway.half_open_count()
        self.most_half_open = max(self.most_half_open, half_open)
        assert half_open <= config.max_half_open
        user = [sa for sa in gateway.ike_sas() if sa.sa_id == self.user_sa]
        assert user and user[0].established, "the storm ended the user's ISAKMP SA"
        others = [sa for sa in gateway.ike_sas() if sa.sa_id != self.user_sa]
        # nothing but half-open SAs: the storm establishes nothing, keeps no dead SA around
        assert len(others) == half_open, f"{len(others)} SAs besides the user's, {half_open} half-open"
        per_source = Counter(sa.remote[0] for sa in others)
        assert max(per_source.values(), default=0) <= config.max_half_open_per_source
        # the bookkeeping behind them
        assert len(gateway._half_open) == half_open
        assert sum(len(v) for v in gateway._half_open_by_source.values()) == half_open
        assert len(gateway._phase1_drops or {}) <= half_open
        assert len(gateway._spis) <= 2 * 16  # the user's child SAs only

    def feed(self, data: bytes, port: int, source: tuple[str, int]) -> None:
        gateway = self.gateway
        before = gateway.drops.total()
        sas_before = gateway.half_open_count()
        gateway.receive_datagram(data, source, (GATEWAY_IP, port), self.pair.now)
        self.bytes_in += len(data)
        stormed: list[tuple[bytes, tuple[str, int], int]] = []
        self.deliver_between_peers(stormed)
        assert len(stormed) <= 1, f"{len(stormed)} answers to one datagram"
        started = gateway.half_open_count() > sas_before
        for reply, remote, _ in stormed:
            assert remote == source, f"answered {remote}, the datagram came from {source}"
            self.bytes_out += len(reply)
            self.largest_ratio = max(self.largest_ratio, len(reply) / len(data))
            exchange = reply[4 * (reply[:4] == NON_ESP_MARKER) + 18]
            if exchange == INFORMATIONAL:
                self.answers["notify"] += 1
                self.notifies_to[source[0]] += 1
                assert len(reply) <= min(NOTIFY_SIZE, len(data)), (
                    f"a {len(reply)}-byte notify for {len(data)}"
                )
            else:  # a phase 1 answer: with a new half-open SA, or stateless (Base Mode cookie)
                self.answers["phase 1 answer" if started else "stateless phase 1 answer"] += 1
                self.answers["aggressive mode answer"] += exchange == ExchangeType.AGGRESSIVE
                assert len(reply) <= FIRST_REPLY_MAX
        if not stormed and not started and gateway.drops.total() == before:
            self.answers["silently ignored"] += 1


GATEWAYS = {
    "everything on": {},  # tests/helpers/ike_pair: Aggressive Mode with a PSK and Base Mode accepted
    "defaults": {"allow_aggressive_psk": False, "allow_base_mode": False},
}
"""What the stormed gateway accepts: the most an attacker can reach, and the shipped defaults."""


def _user_pair(gateway: dict[str, object] | None = None) -> tuple[Pair, bytes]:
    pair = Pair(client_config(dpd_interval=10.0), gateway_config(dpd_interval=10.0, **(gateway or {})))
    connect(pair, "main")
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)
    return pair, pair.gateway.of(ev.Phase1Established)[0].sa_id


def run_storm(
    seed: int,
    count: int,
    sources: list[str] = SOURCES,
    step: float = STEP,
    hijack: float = 0.03,
    gateway: dict[str, object] | None = None,
) -> Storm:
    """``count`` storm datagrams from ``sources``, ``step`` seconds apart; a share ``hijack``
    of the ISAKMP ones carry the live user's cookies."""
    pair, user_sa = _user_pair(gateway)
    storm = Storm(pair, user_sa)
    rng = random.Random(seed)
    for i, (data, port) in enumerate(storm_datagrams(seed, count)):
        offset = 4 if data[:4] == NON_ESP_MARKER else 0
        if len(data) >= offset + 16 and rng.random() < hijack:
            data = data[:offset] + user_sa + data[offset + 16 :]
        source = (rng.choice(sources), rng.choice((500, 4500, rng.randrange(1024, 65536))))
        storm.feed(data, port, source)
        pair.now += step
        if i % 16 == 0:  # get_timer walks every SA: not after each datagram, to keep CI fast
            storm.tick()
            storm.check_bounds()
    storm.check_bounds()
    return storm


@pytest.mark.parametrize("gateway", list(GATEWAYS))
def test_storm_of_mutated_messages_leaves_the_gateway_bounded_and_the_user_served(gateway: str) -> None:
    count = fuzz_iterations(20_000) // (1 if gateway == "everything on" else 2)
    storm = run_storm(fuzz_seed(14), count, gateway=GATEWAYS[gateway])
    gateway = storm.gateway
    pair = storm.pair

    assert storm.other_events == [], storm.other_events[:5]
    # answers to sources nobody verified stay within their budgets (per source, in total)
    elapsed = count * STEP
    per_rate, per_burst, all_rate, all_burst = gateway.config.notify_budget
    assert storm.answers["notify"] <= all_burst + all_rate * elapsed
    assert max(storm.notifies_to.values(), default=0) <= per_burst + per_rate * elapsed
    _, _, am_rate, am_burst = gateway.config.aggressive_budget
    assert storm.answers["aggressive mode answer"] <= am_burst + am_rate * elapsed
    # bad input is counted: nearly every datagram is a drop (the rest were well-formed)
    assert gateway.drops.total() >= count // 2, gateway.drops.most_common()
    # the user's SA is alive and DPD kept running over it during the storm
    user = gateway.get_sa(storm.user_sa)
    assert user.established and not user.dead
    assert user.last_heard >= pair.now - 30
    # ... and it carries a new Quick Mode afterwards
    client_sa = pair.client.of(ev.Phase1Established)[0].sa_id
    pair.client.engine.start_child(
        client_sa, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    stormed: list[tuple[bytes, tuple[str, int], int]] = []
    storm.deliver_between_peers(stormed)
    assert not stormed
    assert storm.other_events and all(isinstance(e, ev.ChildSAEstablished) for e in storm.other_events)
    assert pair.client.of(ev.ChildSAEstablished)
    # once the storm is over, its half-open SAs time out and nothing of it is left
    pair.now += gateway.config.half_open_timeout + 1
    storm.tick()
    assert gateway.half_open_count() == 0
    assert [sa.sa_id for sa in gateway.ike_sas()] == [storm.user_sa]
    print(
        f"storm of {count}: half-open at most {storm.most_half_open}, answers {dict(storm.answers)}, "
        f"{storm.bytes_out} bytes out for {storm.bytes_in} in (largest answer / request "
        f"{storm.largest_ratio:.1f}); drops {len(gateway.drops)} reasons, "
        f"{gateway.drops.total()} in all"
    )


def test_storm_is_deterministic_for_a_seed() -> None:
    """A failing seed can be replayed: the same seed gives the same datagrams."""
    first = list(storm_datagrams(7, 300))
    assert list(storm_datagrams(7, 300)) == first
    assert list(storm_datagrams(8, 300)) != first


def test_storm_from_one_address_gets_answers_within_its_budget() -> None:
    """5,000 mutated datagrams a second from one address (the issue's "1,000 spoofed first
    messages from one address", with every kind of lie): what that address gets back is
    bounded by its budgets (Notifies, Aggressive Mode answers) and its half-open SAs by the
    per-source limit, and the user's session is untouched."""
    count = fuzz_iterations(20_000) // 4
    step = 0.0002
    storm = run_storm(fuzz_seed(15), count, sources=SOURCES[:1], step=step)
    config = storm.gateway.config
    elapsed = count * step
    per_rate, per_burst, _, _ = config.notify_budget
    assert storm.notifies_to[SOURCES[0]] <= per_burst + per_rate * elapsed
    am_rate, am_burst, _, _ = config.aggressive_budget
    assert storm.answers["aggressive mode answer"] <= am_burst + am_rate * elapsed
    assert storm.most_half_open <= config.max_half_open_per_source
    assert storm.other_events == []
    print(f"storm of {count} from one address: answers {dict(storm.answers)}")
