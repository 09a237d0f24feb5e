"""Issue 22 point 7: a refused login leaves no fault in the logs. The gateway refuses the
XAUTH credentials, the client acknowledges XAUTH-STATUS FAIL and the gateway deletes the
ISAKMP SA; what the client sends under its cookies afterwards (a duplicate of its
acknowledgement, a Delete of its own) was taken for a message for an unknown ISAKMP SA:
bad input, a WARNING summary line, a ProtocolError event and an unprotected INVALID-COOKIE.
The engine now remembers the SAs it deleted with the peer told (tunvpn.ike.deleted), for a
while and a bounded number of them, and drops their late messages quietly, counted by their
own reason; messages for cookies it never deleted get what they got before."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass

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
from tunvpn.ike import events as ev
from tunvpn.ike import exchanges
from tunvpn.ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from tunvpn.ike.deleted import LIMIT, TTL, RecentlyDeleted
from tunvpn.ike.engine import BAD_INPUT_SUMMARY_INTERVAL, RECENTLY_DELETED
from tunvpn.ike.firstlook import Verdict, first_look
from tunvpn.ike.messages import DeletePayload, NotifyPayload, decode_header, decode_message
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ike.sa import IkeSA
from tunvpn.ipsec.selectors import TrafficSelector

FROM_CLIENT = (CLIENT_IP, 500)
TO_GATEWAY = (GATEWAY_IP, 500)


@dataclass
class Refusal:
    """One refused login: the SA ids on both sides, a copy of the client's SA as it was
    before the refusal (to send what a client that deletes the SA itself sends), where on
    the wire the refusal began and the client's acknowledgement of XAUTH-STATUS FAIL."""

    client_sa_id: bytes
    gateway_sa_id: bytes
    client_sa: IkeSA
    start: int
    ack: bytes


def refuse_login(pair: Pair, mode: str = "main") -> Refusal:
    sa_id = connect(pair, mode, xauth=True)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="wrong")
    pair.run()
    client_sa = copy.copy(pair.client.engine.get_sa(sa_id))  # established, with its keys
    gateway_sa_id = pair.gateway.of(ev.Phase1Established)[-1].sa_id
    start = len(pair.wire)
    pair.gateway.engine.xauth_verdict(gateway_sa_id, pair.now, False, "bad password")
    pair.run()
    assert not pair.client.of(ev.XauthCompleted)[-1].success
    assert [e.reason for e in pair.gateway.of(ev.IkeSADeleted)][-1] == "XAUTH failed"
    assert gateway_sa_id not in {sa.sa_id for sa in pair.gateway.engine.ike_sas()}
    assert sa_id not in {sa.sa_id for sa in pair.client.engine.ike_sas()}
    ack = next(data for way, data in pair.wire[start:] if way == "c>g")
    return Refusal(sa_id, gateway_sa_id, client_sa, start, ack)


def unprotected_notifies(wire: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
    """(direction, notify type) of every unprotected Informational on ``wire``."""
    found = []
    for way, data in wire:
        header = decode_header(data)
        if header.exchange == ExchangeType.INFORMATIONAL and not header.flags & HeaderFlag.ENCRYPTION:
            for payload in decode_message(data).payloads:
                if isinstance(payload, NotifyPayload):
                    found.append((way, payload.notify_type))
    return found


def quiet(pair: Pair) -> list[ev.Event]:
    """What the gateway sent and emitted since the last call (its datagrams and events)."""
    out = pair.gateway.engine.datagrams_to_send()
    assert out == [], out
    return pair.gateway.drain()


# ------------------------------------------------------------------ (1) a refused login


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_a_refused_login_ends_without_a_protocol_error_on_either_side(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tunvpn")
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refused = refuse_login(pair, mode)
    gateway, client = pair.gateway.engine, pair.client.engine
    # the gateway's Delete reached a client that had already dropped the SA on XAUTH FAIL:
    # dropped quietly there, no INVALID-COOKIE back (it used to answer one)
    assert client.drops[RECENTLY_DELETED] == 1
    assert [way for way, _ in pair.wire[refused.start :]] == ["g>c", "c>g", "g>c"]  # FAIL, ACK, Delete
    assert unprotected_notifies(pair.wire[refused.start :]) == []

    # late messages of the client under the deleted SA's cookies: a duplicate of its
    # acknowledgement (a retransmission, a duplicated datagram), and the Delete a client
    # such as strongSwan sends after acknowledging a failed XAUTH
    gateway.receive_datagram(refused.ack, FROM_CLIENT, TO_GATEWAY, pair.now)
    assert not quiet(pair)
    exchanges.send_informational(
        client, refused.client_sa, [DeletePayload(ProtocolId.ISAKMP, (refused.client_sa_id,))], pair.now
    )
    pair.now += 1.0
    pair.transfer(pair.client)
    assert not quiet(pair)
    assert gateway.drops[RECENTLY_DELETED] == 2
    assert not [e for e in pair.gateway.events + pair.client.events if isinstance(e, ev.ProtocolError)]

    # bad input would be summed up in a WARNING line once the interval is over: there is none
    for _ in range(3):
        pair.advance(BAD_INPUT_SUMMARY_INTERVAL)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "message for an unknown ISAKMP SA" not in caplog.text
    assert "INVALID_COOKIE" not in caplog.text
    assert "late message" in caplog.text  # at DEBUG
    assert {r.levelno for r in caplog.records if "late message" in r.getMessage()} == {logging.DEBUG}
    assert not gateway._unreported and not client._unreported  # nothing waits to be summed up
    # the shell's first look lets them through to the engine (not its own "unknown SA" drop)
    assert first_look(refused.ack, gateway.knows_cookie).verdict is Verdict.FOR_KNOWN_SA


def test_a_late_message_gets_no_answer_even_within_the_notify_budget() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refused = refuse_login(pair)
    for _ in range(5):
        pair.gateway.engine.receive_datagram(refused.ack, FROM_CLIENT, TO_GATEWAY, pair.now)
        assert not quiet(pair)
    assert pair.gateway.engine.drops[RECENTLY_DELETED] == 5
    assert not pair.gateway.engine.withheld  # not answered at all: no budget spent


def test_a_client_that_logs_in_again_is_not_taken_for_a_late_message() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refuse_login(pair)
    sa_id = connect(pair, "main", xauth=True)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="right")
    pair.run()
    pair.gateway.engine.xauth_verdict(pair.gateway.of(ev.Phase1Established)[-1].sa_id, pair.now, True)
    pair.run()
    assert pair.client.of(ev.XauthCompleted)[-1].success
    assert pair.gateway.engine.drops[RECENTLY_DELETED] == 0


# ------------------------------------------------------------------ (2) unknown cookies as before


def test_a_message_under_other_cookies_gets_the_answer_of_an_unknown_sa() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refused = refuse_login(pair)
    gateway = pair.gateway.engine
    # our deleted responder cookie under another initiator cookie: not the deleted SA's pair
    forged = random.Random(22).randbytes(8) + refused.ack[8:]
    assert not gateway.recently_deleted.holds(forged[:8], forged[8:16], pair.now)
    gateway.receive_datagram(forged, FROM_CLIENT, TO_GATEWAY, pair.now)
    [(answer, to, _)] = gateway.datagrams_to_send()
    assert to == FROM_CLIENT
    [notify] = decode_message(answer).payloads
    assert isinstance(notify, NotifyPayload) and notify.notify_type == NotifyType.INVALID_COOKIE
    assert gateway.drops["encrypted message for an unknown ISAKMP SA"] == 1
    assert gateway.drops[RECENTLY_DELETED] == 0


def test_an_sa_dropped_without_telling_the_peer_still_gets_invalid_cookie() -> None:
    """A dead peer's SA (or one lost otherwise) is not remembered: a peer that still uses
    it learns at once that it must log in again (issue 15)."""
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    gateway = pair.gateway.engine
    [gateway_sa] = gateway.ike_sas()
    exchanges.drop_sa(gateway, gateway_sa, "dead peer", by_peer=False)
    pair.gateway.drain()
    assert len(gateway.recently_deleted) == 0
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal(), "net"
    )
    pair.transfer(pair.client)
    errors = pair.gateway.of(ev.ProtocolError)
    assert errors and "message for an unknown ISAKMP SA" in errors[-1].error
    assert errors[-1].notify == NotifyType.INVALID_COOKIE
    assert gateway.drops["no ISAKMP SA: INVALID_COOKIE"] == 1
    [(answer, _, _)] = gateway.datagrams_to_send()
    [notify] = decode_message(answer).payloads
    assert isinstance(notify, NotifyPayload) and notify.notify_type == NotifyType.INVALID_COOKIE
    assert gateway.drops[RECENTLY_DELETED] == 0


def test_unauthenticated_input_never_adds_a_remembered_sa() -> None:
    """Only our own deletions of established SAs are remembered: first messages that time
    out half-open, phase 1 messages and protected messages under made-up cookies add nothing."""
    pair = Pair(client_config(), gateway_config())
    gateway = pair.gateway.engine
    rng = random.Random(7)
    spare = Pair(client_config(), gateway_config())
    spare.client.engine.initiate(TO_GATEWAY, FROM_CLIENT, pair.now)
    [(first, _, _)] = spare.client.engine.datagrams_to_send()
    for i in range(300):
        source = (f"203.0.113.{i % 250 + 1}", 500)
        gateway.receive_datagram(rng.randbytes(8) + first[8:], source, TO_GATEWAY, pair.now)
        made_up = rng.randbytes(16) + bytes([8, 0x10, 32, 1]) + rng.randbytes(4) + (100).to_bytes(4, "big")
        gateway.receive_datagram(made_up + rng.randbytes(72), source, TO_GATEWAY, pair.now)
        gateway.datagrams_to_send()
    pair.advance(gateway.config.half_open_timeout + 1)  # every half-open SA times out
    pair.advance(1)
    assert not gateway.ike_sas()
    assert len(gateway.recently_deleted) == 0
    assert gateway.drops[RECENTLY_DELETED] == 0


# ------------------------------------------------------------------ (3) bounded: a cap and an expiry


def test_after_the_expiry_a_late_message_is_unknown_again() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refused = refuse_login(pair)
    gateway = pair.gateway.engine
    pair.now += TTL - 1
    gateway.receive_datagram(refused.ack, FROM_CLIENT, TO_GATEWAY, pair.now)
    assert not quiet(pair) and gateway.drops[RECENTLY_DELETED] == 1
    pair.now += 1
    gateway.receive_datagram(refused.ack, FROM_CLIENT, TO_GATEWAY, pair.now)
    assert len(gateway.recently_deleted) == 0  # forgotten, not only ignored
    assert gateway.drops[RECENTLY_DELETED] == 1
    errors = pair.gateway.drain()
    assert [e.notify for e in errors if isinstance(e, ev.ProtocolError)] == [NotifyType.INVALID_COOKIE]
    assert gateway.drops["no ISAKMP SA: INVALID_COOKIE"] == 1
    [(answer, _, _)] = gateway.datagrams_to_send()
    [notify] = decode_message(answer).payloads
    assert isinstance(notify, NotifyPayload) and notify.notify_type == NotifyType.INVALID_COOKIE


def test_the_timer_forgets_expired_sas_without_input() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    refuse_login(pair)
    assert len(pair.gateway.engine.recently_deleted) == 1
    pair.now += TTL
    pair.gateway.engine.handle_timer(pair.now)
    assert len(pair.gateway.engine.recently_deleted) == 0


def test_the_engine_remembers_at_most_its_limit_the_oldest_forgotten_first() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    gateway = pair.gateway.engine
    gateway.recently_deleted = RecentlyDeleted(limit=2)
    refusals = [refuse_login(pair) for _ in range(3)]
    assert len(gateway.recently_deleted) == 2
    for refused in refusals[1:]:
        gateway.receive_datagram(refused.ack, FROM_CLIENT, TO_GATEWAY, pair.now)
        assert not quiet(pair)
    assert gateway.drops[RECENTLY_DELETED] == 2
    gateway.receive_datagram(refusals[0].ack, FROM_CLIENT, TO_GATEWAY, pair.now)  # the oldest: forgotten
    assert gateway.drops[RECENTLY_DELETED] == 2
    assert [e.notify for e in pair.gateway.drain() if isinstance(e, ev.ProtocolError)] == [
        NotifyType.INVALID_COOKIE
    ]


def test_many_deletions_keep_the_memory_bounded() -> None:
    memory = RecentlyDeleted()
    assert memory.limit == LIMIT and memory.ttl == TTL
    rng = random.Random(1)
    now = 1000.0
    ids = []
    for _ in range(5 * LIMIT):
        sa_id = rng.randbytes(16)
        ids.append(sa_id)
        memory.add(sa_id[8:], sa_id, now)  # a responder: our cookie is the second one
        assert len(memory) <= LIMIT
        now += 0.001
    assert len(memory) == LIMIT
    assert not any(memory.holds(i[:8], i[8:], now) for i in ids[: 4 * LIMIT])
    assert all(memory.holds(i[:8], i[8:], now) for i in ids[4 * LIMIT :])
    assert all(memory.knows(i[8:]) for i in ids[4 * LIMIT :])
    # the same SA deleted again is one entry, now the newest
    memory.add(ids[4 * LIMIT][8:], ids[4 * LIMIT], now)
    assert len(memory) == LIMIT
    memory.add(rng.randbytes(8), rng.randbytes(16), now)
    assert memory.holds(ids[4 * LIMIT][:8], ids[4 * LIMIT][8:], now)
    assert not memory.holds(ids[4 * LIMIT + 1][:8], ids[4 * LIMIT + 1][8:], now)


def test_an_entry_expires_ttl_seconds_after_the_deletion() -> None:
    memory = RecentlyDeleted(limit=8, ttl=60.0)
    icookie, rcookie = bytes(range(1, 9)), bytes(range(11, 19))
    memory.add(icookie, icookie + rcookie, 100.0)  # an initiator: our cookie is the first one
    assert memory.holds(icookie, rcookie, 159.5)
    assert not memory.holds(rcookie, icookie, 159.5)  # the cookies of another SA
    assert not memory.holds(icookie, bytes(8), 159.5)
    assert not memory.holds(icookie, rcookie, 160.0)  # expired, even before it is purged
    assert memory.knows(icookie) and not memory.knows(rcookie)
    memory.expire(159.0)
    assert len(memory) == 1
    memory.expire(160.0)
    assert len(memory) == 0 and not memory.knows(icookie)
    with pytest.raises(ValueError):
        RecentlyDeleted(limit=0)
