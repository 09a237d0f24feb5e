"""Issue 14: the engine's timers scale with the SAs that change, not with all SAs. Each ISAKMP
SA's next deadline is kept in a heap and recomputed only for the SAs an input, a command or a
timer touched; a full pass over every SA at least once a second catches what one SA's handling
changes in another. Checked against the plain formula (the earliest of every SA's deadlines)."""

from __future__ import annotations

import pytest

from tests.helpers.ike_pair import Pair, Peer, client_config, connect, gateway_config
from tunvpn.ike.engine import FULL_PASS_INTERVAL, IkeEngine
from tunvpn.ike.sa import IkeSA


def plain_deadline(engine: IkeEngine) -> float | None:
    """The earliest deadline of any SA, computed the old way (every SA, every time)."""
    times = [t for sa in engine.ike_sas() if (t := engine._sa_deadline(sa.local_cookie, sa)) is not None]
    half_open = [
        sa.created + engine.config.half_open_timeout for sa in engine.ike_sas() if not sa.established
    ]
    return min(times + half_open, default=None)


@pytest.fixture
def crowded() -> tuple[Pair, IkeEngine]:
    """A gateway engine with 60 connected clients (DPD on), the last one's pair returned."""
    gateway = IkeEngine(gateway_config(require_xauth=False, max_half_open_per_source=1000))
    for i in range(60):
        pair = Pair(client_config(), gateway_config())
        pair.gateway = Peer(gateway, pair.gateway.ip)
        pair.client.ip = f"10.30.{i}.2"  # 60 clients (one address: INITIAL-CONTACT replaces)
        pair.now += i * 0.37  # deadlines spread out
        connect(pair)
    return pair, gateway


def test_the_timer_is_the_earliest_deadline_of_all_sas(crowded: tuple[Pair, IkeEngine]) -> None:
    _, gateway = crowded
    assert len(gateway.ike_sas()) == 60
    expected = plain_deadline(gateway)
    timer = gateway.get_timer()
    assert timer is not None and expected is not None
    assert timer <= expected  # never later than a real deadline
    # and not earlier than the next full pass or a real deadline
    assert timer == expected or timer == gateway._next_full_pass


def test_a_command_moves_the_timer_at_once(crowded: tuple[Pair, IkeEngine]) -> None:
    """A Quick Mode started by a command waits for its answer: its retransmission time is the
    next deadline at once, though no other SA changed."""
    pair, gateway = crowded
    gateway.get_timer()
    sa = gateway.ike_sas()[17]
    policy = gateway.config.children[0]
    gateway.start_child(sa.sa_id, pair.now, policy.local_ts, policy.local_ts, policy.proposal)
    waiting = [ex.sent.at for ex in sa.exchanges.values() if ex.sent.at is not None]
    assert waiting and gateway.get_timer() == min(waiting)


def test_after_one_datagram_one_sa_is_looked_at(
    crowded: tuple[Pair, IkeEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last client deletes its ISAKMP SA: the gateway's next timer looks at that SA only,
    not at the 60 (the plain formula looked at every SA after every datagram)."""
    pair, gateway = crowded
    gateway.get_timer()
    looked: list[bytes] = []
    original = IkeEngine._sa_deadline

    def counting(self: IkeEngine, cookie: bytes, sa: IkeSA) -> float | None:
        looked.append(cookie)
        return original(self, cookie, sa)

    monkeypatch.setattr(IkeEngine, "_sa_deadline", counting)
    [client_sa] = pair.client.engine.ike_sas()
    pair.client.engine.delete_ike_sa(client_sa.sa_id, pair.now)
    pair.run()
    assert len(gateway.ike_sas()) == 59
    gateway.get_timer()
    assert len(looked) <= 1, len(looked)


def test_timers_still_fire_for_every_sa(crowded: tuple[Pair, IkeEngine]) -> None:
    """Past every SA's lifetime, the timer passes expire all of them, as before."""
    pair, gateway = crowded
    now = pair.now
    for _ in range(400):
        timer = gateway.get_timer()
        if timer is None:
            break
        now = max(now, timer) + FULL_PASS_INTERVAL / 4
        gateway.handle_timer(now)
        gateway.datagrams_to_send()
        while gateway.next_event() is not None:
            pass
        if now > pair.now + 30_000:
            break
    assert not [sa for sa in gateway.ike_sas() if sa.established and sa.expires and sa.expires < now]
