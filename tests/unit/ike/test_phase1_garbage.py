"""Issue 12, item 10: garbage with valid cookies must not end a phase 1 in progress.

The cookies of a phase 1 travel in the clear, so an on-path sender (or one that spoofs the
peer's address) can send anything "for" the SA: random bytes, a message flagged encrypted
that decrypts to nothing, another exchange type, an unprotected AUTHENTICATION-FAILED. Before
issue 12 any of these ended the phase 1 (engine._on_remote_error called _fail_phase1). Now
they are dropped and counted, the SA stays as it was, and the real peer's messages complete
the exchange. A real authentication failure still ends it (tests/unit/ike/test_engine.py:
test_wrong_psk_fails_with_authentication_failed, test_untrusted_certificate_is_refused).
"""

from __future__ import annotations

import pytest

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, Peer, client_config, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.constants import HEADER_SIZE, ExchangeType, HeaderFlag, NotifyType, ProtocolId
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import (
    HashPayload,
    Header,
    Message,
    NotifyPayload,
    decode_header,
    encode_header,
    encode_message,
)

ATTACKER = ("203.0.113.66", 500)


def _garbage(template: bytes, *, to_gateway: bool) -> list[bytes]:
    """Messages with the cookies of ``template`` that nobody with the keys sent."""
    h = decode_header(template[4:] if template[:4] == bytes(4) else template)
    junk = bytes(range(7, 7 + 64))
    out = []
    for flags, exchange in (
        (0, h.exchange),
        (HeaderFlag.ENCRYPTION, h.exchange),
        (0, ExchangeType.QUICK_MODE),
    ):
        header = Header(h.icookie, h.rcookie, 1, exchange, int(flags), 0, HEADER_SIZE + len(junk))
        out.append(encode_header(header) + junk)
    if to_gateway:
        # the responder does not believe an unprotected refusal either
        for notify in (NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_PAYLOAD_TYPE):
            spi = h.icookie + h.rcookie
            msg = Message(
                h.icookie,
                h.rcookie,
                ExchangeType.INFORMATIONAL,
                0,
                0,
                (NotifyPayload(notify, ProtocolId.ISAKMP, spi),),
            )
            out.append(encode_message(msg))
    return out


def _inject(pair: Pair, receiver: Peer, template: bytes, source: tuple[str, int]) -> None:
    local = (receiver.ip, 500)
    for data in _garbage(template, to_gateway=receiver is pair.gateway):
        receiver.engine.receive_datagram(data, source, local, pair.now)
    receiver.drain()
    # what it answered the attacker's own address reaches the attacker, not the pair
    receiver.engine._out = [d for d in receiver.engine._out if d[1] != ATTACKER]


def handshake_under_garbage(mode: str, source: str) -> Pair:
    """Run phase 1 and, after every message, inject garbage into both sides while the
    phase 1 is in progress, with the newest cookies seen on the wire."""
    pair = Pair(client_config(), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode=mode)
    pair.client.drain()
    for _ in range(10):
        moved = 0
        for sender in (pair.client, pair.gateway):
            moved += pair.transfer(sender)
            if pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established):
                continue
            with_both = [
                d
                for _, d in pair.wire
                if decode_header(d[4:] if d[:4] == bytes(4) else d).rcookie != bytes(8)
            ]
            template = (with_both or [pair.wire[-1][1]])[-1]
            for receiver in (pair.gateway, pair.client):
                other = pair.client if receiver is pair.gateway else pair.gateway
                _inject(pair, receiver, template, (other.ip, 500) if source == "spoofed" else ATTACKER)
        if not moved:
            break
    return pair


@pytest.mark.parametrize("source", ["spoofed", "attacker"])
@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
def test_garbage_with_the_cookies_does_not_end_the_handshake(mode: str, source: str) -> None:
    pair = handshake_under_garbage(mode, source)
    c, g = pair.client.of(ev.Phase1Established), pair.gateway.of(ev.Phase1Established)
    assert c and g and c[0].exchange == mode, (pair.client.events, pair.gateway.events)
    assert not pair.client.of(ev.Phase1Failed) and not pair.gateway.of(ev.Phase1Failed)
    assert pair.gateway.of(ev.ProtocolError)  # each was seen, and counted
    # nothing unauthenticated moved the SA (the attacker's address is nowhere)
    assert all(sa.remote[0] == CLIENT_IP for sa in pair.gateway.engine.ike_sas())


def test_a_dropped_message_leaves_the_state_as_it_was() -> None:
    """A message that gets halfway through a handler must leave nothing behind: here a Main
    Mode message 5 sent in the clear by an attacker, with its own identity and a made-up
    HASH_I. The handler takes the identity before the hash fails; the real message 5 then
    completes the exchange with the client's identity."""
    pair = Pair(client_config(), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="main")
    for sender in (pair.client, pair.gateway, pair.client, pair.gateway):
        pair.transfer(sender)  # messages 1 to 4
    (gw,) = pair.gateway.engine.ike_sas()
    before = dict(vars(gw))
    forged = Message(
        gw.icookie,
        gw.rcookie,
        ExchangeType.IDENTITY_PROTECTION,
        0,
        0,
        (Identity.parse("keyid:mallory").to_payload(), HashPayload(bytes(64))),
    )
    pair.gateway.engine.receive_datagram(encode_message(forged), ATTACKER, (GATEWAY_IP, 500), pair.now)
    assert vars(gw) == before and gw.peer_id is None
    pair.gateway.engine._out = [d for d in pair.gateway.engine._out if d[1] != ATTACKER]  # the attacker's
    pair.run()
    (g,) = pair.gateway.of(ev.Phase1Established)
    assert g.peer_id == CLIENT_IP and pair.client.of(ev.Phase1Established)
