"""Issue 15: a gateway that restarted answers our ESP or IKE with an unprotected INVALID-SPI or
INVALID-COOKIE. Nobody can verify it (anyone may send one), so it must not end the SA; it
makes the client ask R-U-THERE at once instead of after the idle interval, and only the
missed answers (``dpd_timeout``) declare the gateway dead."""

from __future__ import annotations

import struct

import pytest

from tests.helpers.ike_pair import (
    CLIENT_IP,
    GATEWAY_IP,
    Pair,
    client_config,
    connect,
    full_tunnel,
    gateway_config,
)
from tunvpn.ike import events as ev
from tunvpn.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.exchanges import HINT_PROBE_WITHIN, INVALID_SPI_NOTIFY_SIZE
from tunvpn.ike.firstlook import Verdict, first_look
from tunvpn.ike.messages import Message, NotifyPayload, encode_message
from tunvpn.ipsec.udpencap import NON_ESP_MARKER


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


# ------------------------------------------------- a restarted gateway says INVALID-SPI


def _with_child() -> tuple[Pair, bytes, int]:
    pair = Pair(
        client_config(dpd_interval=10, dpd_timeout=25), gateway_config(dpd_interval=0, require_xauth=True)
    )
    full_tunnel(pair)
    sa_id = pair.client.of(ev.Phase1Established)[0].sa_id
    [child] = pair.client.of(ev.ChildSAEstablished)
    pair.client.engine.datagrams_to_send()
    return pair, sa_id, child.spi_out


def _restarted_gateway_answers(spi: int, size: int = 120, now: float = 0.0) -> list[bytes]:
    restarted = IkeEngine(gateway_config())
    restarted.unknown_spi(spi, (CLIENT_IP, 4500), size, now)
    return [data for data, remote, port in restarted.datagrams_to_send() if remote == (CLIENT_IP, 4500)]


def test_a_restarted_gateway_answers_esp_of_a_lost_sa_and_the_client_probes_for_two_seconds() -> None:
    pair, _, spi_out = _with_child()
    pair.advance(1)
    [answer] = _restarted_gateway_answers(spi_out, now=pair.now)
    assert answer[:4] == NON_ESP_MARKER and len(answer) == INVALID_SPI_NOTIFY_SIZE  # no larger than ESP
    assert first_look(answer, lambda cookie: False, offset=4).verdict is Verdict.NEW_EXCHANGE  # budgeted
    hinted = pair.now
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, 4500), (CLIENT_IP, 4500), pair.now)
    probes = len(pair.client.engine.datagrams_to_send())
    assert probes == 1, "no R-U-THERE at once"
    while not pair.client.of(ev.IkeSADeleted) and pair.now < hinted + 30:
        pair.advance(0.25)  # the restarted gateway knows nothing of the SA: no answer
        probes += len(pair.client.engine.datagrams_to_send())
    [deleted] = pair.client.of(ev.IkeSADeleted)
    assert deleted.reason == "dead peer"
    assert pair.now - hinted == pytest.approx(HINT_PROBE_WITHIN, abs=0.25)  # not DPD's 25 s
    # at least three R-U-THEREs before giving up (and the Deletes that follow)
    assert probes >= 3


def test_a_live_gateway_answers_the_probe_an_invalid_spi_started() -> None:
    """Anyone may send INVALID-SPI (it is unprotected): it never ends the SA by itself."""
    pair, _, spi_out = _with_child()
    pair.advance(1)
    [answer] = _restarted_gateway_answers(spi_out, now=pair.now)
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, 4500), (CLIENT_IP, 4500), pair.now)
    pair.client.drain()
    pair.run()  # the real gateway answers R-U-THERE-ACK
    for _ in range(12):
        pair.advance(0.5)
        pair.run()
    assert not pair.client.of(ev.IkeSADeleted)


def test_an_invalid_spi_for_an_spi_we_do_not_send_there_is_counted_not_acted_on() -> None:
    pair, _, spi_out = _with_child()
    [answer] = _restarted_gateway_answers(spi_out ^ 1, now=pair.now)
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, 4500), (CLIENT_IP, 4500), pair.now)
    [from_elsewhere] = _restarted_gateway_answers(spi_out, now=pair.now)
    pair.client.engine.receive_datagram(from_elsewhere, ("203.0.113.9", 4500), (CLIENT_IP, 4500), pair.now)
    assert not pair.client.engine.datagrams_to_send()
    assert pair.client.engine.drops["INVALID-SPI Notify for an SPI we do not send to that address"] == 2


def test_unknown_spi_answers_are_never_larger_than_the_esp_and_stay_within_the_budget() -> None:
    restarted = IkeEngine(gateway_config())
    restarted.unknown_spi(0x1234, (CLIENT_IP, 4500), INVALID_SPI_NOTIFY_SIZE - 1, 0.0)
    assert not restarted.datagrams_to_send()
    assert restarted.withheld["notify larger than the message it answers"] == 1
    for _ in range(100):  # a flood from one address in one instant
        restarted.unknown_spi(0x1234, (CLIENT_IP, 4500), 1400, 0.0)
    sent = len(restarted.datagrams_to_send())
    assert 0 < sent <= restarted.config.notify_budget[1]  # the per-source burst
    assert restarted.withheld["notify over budget"] == 100 - sent


def test_a_probe_outstanding_is_brought_forward_by_a_shorter_one() -> None:
    """DPD's idle probe is out (25 s to answer); an INVALID-SPI then makes it 2 s."""
    pair, _, spi_out = _with_child()
    pair.advance(10.5)  # the idle-time R-U-THERE went out
    assert pair.client.engine.datagrams_to_send()
    [answer] = _restarted_gateway_answers(spi_out, now=pair.now)
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, 4500), (CLIENT_IP, 4500), pair.now)
    hinted = pair.now
    while not pair.client.of(ev.IkeSADeleted) and pair.now < hinted + 30:
        pair.advance(0.25)
        pair.client.engine.datagrams_to_send()
    assert pair.now - hinted <= HINT_PROBE_WITHIN + 0.25


def test_an_idle_clients_r_u_there_to_a_restarted_gateway_gets_invalid_cookie_and_a_short_probe() -> None:
    """An idle tunnel sends nothing but DPD: the restarted gateway cannot read the R-U-THERE
    (it lost the keys) and answers INVALID-COOKIE in the clear, budgeted and no larger than
    the message; the client then gives it 2 s, not the rest of DPD's 25 s."""
    pair, _, _ = _with_child()
    restarted = IkeEngine(gateway_config())
    start = pair.now
    while not (out := pair.client.engine.datagrams_to_send()):
        pair.advance(0.5)  # idle: the R-U-THERE after dpd_interval
    [(probe, remote, port)] = out
    assert pair.now - start == pytest.approx(10.0, abs=0.5)
    restarted.receive_datagram(probe, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
    [(answer, to, _)] = restarted.datagrams_to_send()
    assert to == (CLIENT_IP, port) and len(answer) <= len(probe)
    asked = pair.now
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, remote[1]), (CLIENT_IP, port), pair.now)
    while not pair.client.of(ev.IkeSADeleted) and pair.now < asked + 30:
        pair.advance(0.25)
        for data, remote, port in pair.client.engine.datagrams_to_send():
            restarted.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
    [deleted] = pair.client.of(ev.IkeSADeleted)
    assert deleted.reason == "dead peer"
    assert pair.now - asked == pytest.approx(HINT_PROBE_WITHIN, abs=0.25)


def test_nothing_answers_a_message_smaller_than_the_answer_or_over_the_budget() -> None:
    restarted = IkeEngine(gateway_config())
    header = Message(bytes(range(8)), bytes(range(8, 16)), ExchangeType.QUICK_MODE, 1, 7, ())
    small = encode_message(header)  # 28 bytes, encrypted flag set: smaller than INVALID-COOKIE
    restarted.receive_datagram(small, (CLIENT_IP, 500), (GATEWAY_IP, 500), 0.0)
    assert not restarted.datagrams_to_send()
    big = small[:24] + (28 + 64).to_bytes(4, "big") + bytes(64)
    for _ in range(100):
        restarted.receive_datagram(big, (CLIENT_IP, 500), (GATEWAY_IP, 500), 0.0)
    sent = len(restarted.datagrams_to_send())
    assert 0 < sent <= restarted.config.notify_budget[1]
