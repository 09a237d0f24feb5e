"""Issue 15: a gateway that restarted answers our ESP or IKE with an unprotected INVALID-SPI or
INVALID-COOKIE. Nobody can verify it (anyone may send one), so it must not end the SA; it
makes the client ask R-U-THERE at once instead of after the idle interval, and only the
missed answers (``dpd_timeout``) declare the gateway dead."""

from __future__ import annotations

import struct

import pytest

from tests.helpers.ike_pair import GATEWAY_IP, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunvpn.ike.messages import Message, NotifyPayload, encode_message


def _unprotected(sa_id: bytes, notify: NotifyType, spi: bytes) -> bytes:
    return encode_message(
        Message(
            sa_id[:8],
            sa_id[8:],
            ExchangeType.INFORMATIONAL,
            0,
            0x1234_5678,
            (
                NotifyPayload(
                    notify, ProtocolId.ESP if notify == NotifyType.INVALID_SPI else ProtocolId.ISAKMP, spi
                ),
            ),
        )
    )


@pytest.mark.parametrize(
    ("notify", "spi"),
    [(NotifyType.INVALID_SPI, struct.pack("!I", 0xDEADBEEF)), (NotifyType.INVALID_COOKIE, b"")],
)
def test_an_unverifiable_invalid_spi_or_cookie_makes_a_probe_now_never_a_teardown(
    notify: NotifyType, spi: bytes
) -> None:
    pair = Pair(client_config(dpd_interval=10, dpd_timeout=25), gateway_config(dpd_interval=0))
    connect(pair)
    sa_id = pair.client.of(ev.Phase1Established)[0].sa_id  # both cookies
    pair.advance(1)  # one second after the last message: DPD is not due for 9 more
    pair.client.engine.datagrams_to_send()
    pair.client.engine.receive_datagram(
        _unprotected(sa_id, notify, spi), (GATEWAY_IP, 500), ("192.0.2.10", 500), pair.now
    )
    pair.client.drain()
    out = pair.client.engine.datagrams_to_send()
    timer = pair.client.engine.get_timer()
    if not out and timer is not None and timer <= pair.now:
        pair.client.engine.handle_timer(pair.now)
        out = pair.client.engine.datagrams_to_send()
    assert out, "no R-U-THERE sent at once"
    assert not pair.client.of(ev.IkeSADeleted), "an unprotected notify ended the SA"
    # the probe reaches the (live) gateway, which answers R-U-THERE-ACK: the SA stays
    for data, remote, port in out:
        pair.gateway.engine.receive_datagram(data, ("192.0.2.10", port), (GATEWAY_IP, remote[1]), pair.now)
    pair.gateway.drain()
    pair.run()
    for _ in range(10):
        pair.advance(5)
        pair.run()
    assert not pair.client.of(ev.IkeSADeleted)
    assert pair.client.engine.ike_sas()


def test_a_probe_after_an_invalid_spi_that_nobody_answers_declares_the_gateway_dead() -> None:
    pair = Pair(client_config(dpd_interval=10, dpd_timeout=25), gateway_config(dpd_interval=0))
    connect(pair)
    sa_id = pair.client.of(ev.Phase1Established)[0].sa_id  # both cookies
    pair.advance(1)
    bogus = _unprotected(sa_id, NotifyType.INVALID_SPI, struct.pack("!I", 1))
    pair.client.engine.receive_datagram(bogus, (GATEWAY_IP, 500), ("192.0.2.10", 500), pair.now)
    for _ in range(6):  # the gateway is gone: nothing comes back
        pair.advance(5)
        pair.client.engine.datagrams_to_send()
    deleted = pair.client.of(ev.IkeSADeleted)
    assert deleted and deleted[0].reason == "dead peer", deleted


def test_a_shell_that_sent_traffic_without_answer_probes_now_and_waits_only_within() -> None:
    """RFC 3706 section 5.5 (the client's traffic watch): ``probe_peer`` sends R-U-THERE at
    once; a live gateway answers and stays; a dead one is declared so ``within`` seconds
    later, not after the idle timeout."""
    pair = Pair(client_config(dpd_interval=10, dpd_timeout=25), gateway_config(dpd_interval=0))
    connect(pair)
    sa_id = pair.client.of(ev.Phase1Established)[0].sa_id
    pair.advance(1)
    pair.client.engine.probe_peer(sa_id, pair.now, 3.0)
    assert pair.client.engine.datagrams_to_send(), "no R-U-THERE at once"
    pair.advance(1)
    pair.client.engine.probe_peer(sa_id, pair.now, 3.0)  # one outstanding: nothing more
    assert not pair.client.engine.datagrams_to_send()
    pair.advance(2.5)
    deleted = pair.client.of(ev.IkeSADeleted)
    assert deleted and deleted[0].reason == "dead peer", "not dead 3 s after an unanswered probe"

    alive = Pair(client_config(dpd_interval=10, dpd_timeout=25), gateway_config(dpd_interval=0))
    connect(alive)
    alive_id = alive.client.of(ev.Phase1Established)[0].sa_id
    alive.advance(1)
    alive.client.engine.probe_peer(alive_id, alive.now, 3.0)
    alive.run()  # the gateway answers R-U-THERE-ACK
    for _ in range(4):
        alive.advance(1)
        alive.run()
    assert not alive.client.of(ev.IkeSADeleted)
