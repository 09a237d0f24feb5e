"""Retransmission (tunvpn/ike/retransmit.py), one path for phase 1 and for the exchanges under
an ISAKMP SA (RFC 2408 section 5, RFC 2409): a request without an answer is sent again byte for
byte, the delay doubled each time, ``retransmit_tries`` times, then the exchange is given up."""

from __future__ import annotations

import itertools

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ike.retransmit import Retransmission
from tunvpn.ipsec.selectors import TrafficSelector

PSK = PskTable({"*": b"correct horse battery staple"})
PROTECTED = TrafficSelector.from_network("10.20.0.0/16")
GATEWAY = EngineConfig(psks=PSK, children=(ChildPolicy("net", PROTECTED, None, ChildProposal()),))


def test_the_delay_doubles_and_the_tries_run_out() -> None:
    kept = Retransmission()
    kept.sent(b"request", 10.0, 1.0, expect_reply=True)
    assert kept.at == 11.0 and not kept.due(10.9) and kept.due(11.0)
    resent_at = []
    now = 11.0
    while (message := kept.again(now, 1.0, 3)) is not None:
        assert message == b"request"
        assert kept.at is not None
        resent_at.append(now)
        now = kept.at
    assert resent_at == [11.0, 13.0, 17.0] and kept.count == 3
    kept.stop()
    assert kept.at is None and not kept.due(1e12) and kept.message == b"request"
    kept.sent(b"answer", 20.0, 1.0, expect_reply=False)
    assert kept.at is None and kept.count == 0 and kept.message == b"answer"


def _unanswered(pair: Pair, seconds: int) -> list[tuple[float, bytes]]:
    """What the client sends while everything it sends is lost, second by second."""
    sent = [(pair.now, data) for data, _, _ in pair.client.engine.datagrams_to_send()]
    for _ in range(seconds):
        pair.advance(1.0)
        sent += [(pair.now, data) for data, _, _ in pair.client.engine.datagrams_to_send()]
    return sent


def _gaps(sent: list[tuple[float, bytes]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(sent)]


def test_quick_mode_is_resent_as_phase_1_is_then_given_up() -> None:
    # phase 1 without an answer: its schedule
    # (fragmentation off: this first message is over 1,280 octets, so its retransmissions
    # would go as IKE fragments: tests/unit/ike/test_fragments.py)
    lost = Pair(
        EngineConfig(psks=PSK, retransmit_tries=3, half_open_timeout=600.0, fragmentation="no"), GATEWAY
    )
    lost.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), lost.now)
    phase1 = _unanswered(lost, 60)
    assert len(phase1) == 4 and len({data for _, data in phase1}) == 1
    assert lost.client.of(ev.Phase1Failed)

    # a Quick Mode without an answer on an established ISAKMP SA: the same schedule
    pair = Pair(EngineConfig(psks=PSK, retransmit_tries=3, dpd_interval=0), GATEWAY)
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal(), "net"
    )
    quick = _unanswered(pair, 60)
    assert len(quick) == 4 and len({data for _, data in quick}) == 1  # byte for byte
    assert _gaps(quick) == _gaps(phase1) and _gaps(quick) == sorted(_gaps(quick))
    failed = pair.client.of(ev.ChildSAFailed)
    assert len(failed) == 1 and "no answer to quick exchange" in failed[0].reason
    assert pair.client.engine.get_sa(sa_id).established  # the ISAKMP SA stays


def test_a_copy_of_the_last_message_of_an_exchange_is_not_answered() -> None:
    """Quick Mode message 3 ends the exchange; a copy of it (a duplicating network, or an
    attacker replaying it) got the responder's message 2 again, which the initiator answered
    with message 3 again: both sides bounced the pair for ever (seen in issue 15's tests)."""
    pair = Pair(EngineConfig(psks=PSK, dpd_interval=0), GATEWAY)
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal(), "net"
    )
    pair.run()
    assert len(pair.gateway.of(ev.ChildSAEstablished)) == 1
    quick = [(way, data) for way, data in pair.wire if data[18] == 32]  # exchange type
    qm2 = next(data for way, data in quick if way == "g>c")
    qm3 = [data for way, data in quick if way == "c>g"][-1]
    pair.gateway.engine.receive_datagram(qm3, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    assert pair.gateway.engine.datagrams_to_send() == []
    # a copy of message 2 still gets message 3 again (the responder may have missed it)
    pair.client.engine.receive_datagram(qm2, (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    assert [data for data, _, _ in pair.client.engine.datagrams_to_send()] == [qm3]
