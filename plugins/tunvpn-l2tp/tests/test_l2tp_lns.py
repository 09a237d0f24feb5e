"""tunvpn_l2tp.dispatch and .control, LNS side: our LAC ``Tunnel`` against our ``Lns`` in memory, the data
message codec, HELLO keepalives, tunnel authentication, the dispatcher's limits, fuzzing; and
real xl2tpd 1.3.18 as the LAC against our ``Lns`` over UDP on 127.0.0.1.

The XL2TPD_AUTH_* constants were captured from the xl2tpd interop run below
(``test_xl2tpd_lac_with_tunnel_authentication``, xl2tpd ``challenge = yes``, l2tp-secrets
``* * s3cret``), with ``Lns(host_name="tunvpn-lns", secret=b"s3cret",
random_bytes=lambda n: bytes(range(n)))``, printing every datagram received and sent in hex.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tunvpn_l2tp.control import (
    Event,
    Output,
    SessionClosed,
    SessionEstablished,
    SessionState,
    Tunnel,
    TunnelClosed,
    TunnelEstablished,
    TunnelState,
)
from tunvpn_l2tp.dispatch import (
    Address,
    Lns,
    LnsEvent,
    LnsOutput,
)
from tunvpn_l2tp.message import (
    Avp,
    AvpType,
    CdnResult,
    ControlMessage,
    L2tpError,
    MalformedHeader,
    MessageType,
    NotData,
    StopCcnResult,
    challenge_response,
    decode,
    decode_data,
    encode,
    encode_data,
    is_control,
)

LAC_ADDR: Address = ("192.0.2.2", 1701)
SECRET = b"s3cret"

# xl2tpd's SCCRQ: ... Host Name "xl2tpd-lac", Assigned Tunnel ID 0x5774, RWS 4,
# Challenge 47c96ff34f1172be86f8e58f61f663f7 (16 octets).
XL2TPD_AUTH_SCCRQ = bytes.fromhex(
    "c8020081000000000000000080080000000000018008000000020100800a0000000300000003800a000000040000"
    "00000008000000060690801000000007786c327470642d6c616300130000000878656c6572616e63652e636f6d80"
    "0800000009577480080000000a000480160000000b47c96ff34f1172be86f8e58f61f663f7"
)
# Our SCCRP to it (xl2tpd accepted its Challenge Response and sent the SCCCN below).
XL2TPD_AUTH_SCCRP = bytes.fromhex(
    "c802007c577400000000000180080000000000028008000000020100800a0000000300000003800a000000040000"
    "000080100000000774756e76706e2d6c6e73800800000009000180080000000a000480160000000d5c1e16c29115"
    "d3fbf1800d6fa873dbc180160000000b000102030405060708090a0b0c0d0e0f"
)
# xl2tpd's SCCCN: Challenge Response 643b6ad81fd3825766d396d21886acb3 to our challenge 00..0f.
XL2TPD_AUTH_SCCCN = bytes.fromhex(
    "c802002a0001000000010001800800000000000380160000000d643b6ad81fd3825766d396d21886acb3"
)


def counting_bytes() -> Callable[[int], bytes]:
    """Deterministic 'random' bytes for IDs and challenges."""
    return random.Random(2661).randbytes


class Pair:
    """Our LAC Tunnel and our Lns, joined by two in-memory queues."""

    def __init__(self, lac: Tunnel | None = None, lns: Lns | None = None) -> None:
        self.lac = lac or Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac")
        self.lns = lns or Lns(host_name="tunvpn-lns", random_bytes=counting_bytes())
        self.to_lns: list[bytes] = []
        self.to_lac: list[bytes] = []
        self.lac_events: list[Event] = []
        self.lns_events: list[Event] = []
        self.now = 0.0
        self.lossy: Callable[[str, bytes], bool] = lambda direction, data: False  # True: drop
        self.wire: list[tuple[str, bytes]] = []  # every datagram put in flight, dropped or not

    def from_lac(self, out: Output) -> None:
        self.to_lns += out.datagrams
        self.lac_events += out.events

    def from_lns(self, out: LnsOutput) -> None:
        for addr, data in out.datagrams:
            assert addr == LAC_ADDR
            self.to_lac.append(data)
        self.lns_events += [e.event for e in out.events]

    def transfer(self) -> None:
        """Deliver until both queues are empty (each datagram may be dropped by ``lossy``)."""
        while self.to_lns or self.to_lac:
            batch, self.to_lns = self.to_lns, []
            for data in batch:
                self.wire.append(("to_lns", data))
                if not self.lossy("to_lns", data):
                    self.from_lns(self.lns.receive(data, LAC_ADDR, self.now))
            batch, self.to_lac = self.to_lac, []
            for data in batch:
                self.wire.append(("to_lac", data))
                if not self.lossy("to_lac", data):
                    self.from_lac(self.lac.receive(data, self.now))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.from_lac(self.lac.poll(self.now))
        self.from_lns(self.lns.poll(self.now))
        self.transfer()

    def establish(self) -> Tunnel:
        self.from_lac(self.lac.start(self.now))
        self.transfer()
        assert self.lac.state is TunnelState.ESTABLISHED
        (tunnel,) = self.lns.live_tunnels()
        assert tunnel.state is TunnelState.ESTABLISHED
        return tunnel

    def open_session(self, local_session_id: int = 77) -> int:
        """Open a call from the LAC; returns the LNS's session ID for it."""
        self.from_lac(self.lac.open_session(self.now, local_session_id))
        self.transfer()
        lac_up = [e for e in self.lac_events if isinstance(e, SessionEstablished)]
        assert lac_up and lac_up[-1].local_session_id == local_session_id
        return lac_up[-1].peer_session_id


def events_of(events: list[Event], cls: type) -> list[Event]:
    return [e for e in events if isinstance(e, cls)]


def message_types(datagrams: list[bytes]) -> list[MessageType | None]:
    return [decode(d).message_type for d in datagrams]


# ------------------------------------------------------------------ tunnel and sessions


def test_tunnel_and_session_come_up() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    assert pair.lac_events.count(TunnelEstablished(lns_tunnel.local_tunnel_id, "tunvpn-lns")) == 1
    assert pair.lns_events.count(TunnelEstablished(4711, "tunvpn-lac")) == 1
    lns_sid = pair.open_session(77)
    assert lns_sid != 0
    assert SessionEstablished(lns_sid, 77) in pair.lns_events
    assert lns_tunnel.sessions[lns_sid].state is SessionState.ESTABLISHED
    assert pair.lac.stats.malformed == lns_tunnel.stats.malformed == pair.lns.stats.malformed == 0
    assert pair.lac.stats.unexpected == lns_tunnel.stats.unexpected == 0
    assert pair.lns.next_deadline() == pair.now + 60.0  # nothing in flight: the next HELLO


def test_lns_events_carry_the_peer_and_tunnel_id() -> None:
    lns = Lns(random_bytes=counting_bytes())
    lac = Tunnel(local_tunnel_id=9)
    out = lns.receive(lac.start(0.0).datagrams[0], LAC_ADDR, 0.0)
    ((addr, sccrp),) = out.datagrams
    assert addr == LAC_ADDR and decode(sccrp).message_type is MessageType.SCCRP
    local_id = decode(sccrp).u16(AvpType.ASSIGNED_TUNNEL_ID)
    assert all(isinstance(e, LnsEvent) and e.peer == LAC_ADDR for e in out.events)
    assert {e.local_tunnel_id for e in out.events} == {local_id}
    assert lns.peer_of(local_id) == LAC_ADDR and lns.tunnel(local_id) is not None


def test_sessions_get_unique_nonzero_ids() -> None:
    pair = Pair(lns=Lns(random_bytes=lambda n: b"\x00" * n))  # the worst random source
    pair.establish()
    ids = [pair.open_session(sid) for sid in (1, 2, 3)]
    assert len(set(ids)) == 3 and 0 not in ids


def test_data_messages_round_trip() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    lns_sid = pair.open_session(77)
    tunnel_id, session_id, payload = decode_data(pair.lac.data_message(77, b"\xff\x03\xc0\x21 LCP"))
    assert (tunnel_id, session_id, payload) == (lns_tunnel.local_tunnel_id, lns_sid, b"\xff\x03\xc0\x21 LCP")
    addr, datagram = pair.lns.data_message(lns_tunnel.local_tunnel_id, lns_sid, b"reply")
    assert addr == LAC_ADDR and not is_control(datagram)
    assert decode_data(datagram) == (4711, 77, b"reply")
    with pytest.raises(ValueError):
        pair.lac.data_message(78, b"")  # no such session


def test_cdn_from_the_lac() -> None:
    pair = Pair()
    pair.establish()
    lns_sid = pair.open_session(77)
    pair.from_lac(pair.lac.close_session(pair.now, 77))
    pair.transfer()
    assert SessionClosed(77, "closed by us", 3) in pair.lac_events
    assert SessionClosed(lns_sid, "CDN from peer", 3) in pair.lns_events


def test_cdn_from_the_lns() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    lns_sid = pair.open_session(77)
    pair.from_lns(pair.lns.close_session(pair.now, lns_tunnel.local_tunnel_id, lns_sid, CdnResult.ADMIN))
    pair.transfer()
    assert SessionClosed(lns_sid, "closed by us", 3) in pair.lns_events
    assert SessionClosed(77, "CDN from peer", 3) in pair.lac_events
    assert pair.lac.sessions[77].state is SessionState.CLOSED
    assert pair.lns.close_session(pair.now, 999, 1) == LnsOutput()  # unknown tunnel: nothing


def test_stopccn_from_the_lac_and_the_closed_tunnel_is_forgotten() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    lns_sid = pair.open_session(77)
    pair.from_lac(pair.lac.close(pair.now))
    pair.transfer()
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed("our StopCCN was acknowledged")]
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 1)]
    assert SessionClosed(lns_sid, "tunnel stopped by peer") in pair.lns_events
    local_id = lns_tunnel.local_tunnel_id
    assert pair.lns.tunnel(local_id) is lns_tunnel and pair.lns.live_tunnels() == []
    assert pair.lns.next_deadline() == pair.now + pair.lns.linger
    pair.advance(pair.lns.linger)
    assert pair.lns.tunnel(local_id) is None and pair.lns.stats.tunnels_forgotten == 1
    assert pair.lns.next_deadline() is None


def test_stopccn_from_the_lns() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    pair.open_session(77)
    pair.from_lns(pair.lns.close_tunnel(pair.now, lns_tunnel.local_tunnel_id))
    pair.transfer()
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed("our StopCCN was acknowledged")]
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 1)]
    assert SessionClosed(77, "tunnel stopped by peer") in pair.lac_events
    assert pair.lac.state is TunnelState.CLOSED


def test_close_all() -> None:
    pair = Pair()
    pair.establish()
    pair.from_lns(pair.lns.close_all(pair.now))
    pair.transfer()
    assert TunnelClosed("StopCCN from peer", StopCcnResult.SHUTTING_DOWN) in pair.lac_events
    assert pair.lns.live_tunnels() == []


def test_ocrq_is_refused_with_cdn() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    avps = (
        Avp.u16(AvpType.MESSAGE_TYPE, MessageType.OCRQ),
        Avp.u16(AvpType.ASSIGNED_SESSION_ID, 99),
        Avp.u32(AvpType.CALL_SERIAL_NUMBER, 1),
    )
    ocrq = encode(ControlMessage(lns_tunnel.local_tunnel_id, 0, pair.lac.ns, pair.lac.nr, avps))
    out = pair.lns.receive(ocrq, LAC_ADDR, pair.now)
    (cdn,) = (decode(d) for _, d in out.datagrams)
    assert cdn.message_type is MessageType.CDN and cdn.session_id == 99
    assert cdn.result_code() == (CdnResult.PERMANENT_NO_FACILITIES, 0, "outgoing calls not supported")


def test_too_many_sessions_get_cdn() -> None:
    pair = Pair(lns=Lns(max_sessions_per_tunnel=1, random_bytes=counting_bytes()))
    pair.establish()
    pair.open_session(77)
    pair.from_lac(pair.lac.open_session(pair.now, 78))
    pair.transfer()
    assert SessionClosed(78, "CDN from peer", CdnResult.TEMPORARY_NO_RESOURCES) in pair.lac_events


# ------------------------------------------------------------------ loss and retransmission


def test_lost_sccrq_is_retransmitted() -> None:
    pair = Pair()
    pair.from_lac(pair.lac.start(pair.now))
    pair.to_lns.clear()
    pair.advance(1.0)
    assert pair.lac.state is TunnelState.ESTABLISHED and pair.lac.stats.retransmits == 1


def test_lost_sccrp_the_retransmitted_sccrq_makes_no_second_tunnel() -> None:
    pair = Pair()
    pair.from_lac(pair.lac.start(pair.now))
    (sccrq,) = pair.to_lns
    pair.from_lns(pair.lns.receive(pair.to_lns.pop(), LAC_ADDR, pair.now))
    pair.to_lac.clear()  # the SCCRP is lost
    pair.now += 1.0
    pair.from_lac(pair.lac.poll(pair.now))  # SCCRQ again
    assert pair.to_lns == [sccrq]
    pair.transfer()  # the LNS re-ACKs it with a ZLB, and retransmits SCCRP on its own timer
    assert pair.lns.stats.duplicate_sccrq == 1 and pair.lns.stats.tunnels_created == 1
    assert pair.lac.state is TunnelState.WAIT_CTL_REPLY
    pair.advance(0.0)  # the SCCRP's retransmission is due at 1.0 too
    assert pair.lac.state is TunnelState.ESTABLISHED
    assert len(pair.lns.live_tunnels()) == 1
    assert pair.lns.live_tunnels()[0].state is TunnelState.ESTABLISHED


def test_a_lossy_link_still_gets_everything_up_and_down() -> None:
    pair = Pair()
    counter = {"n": 0}

    def every_third(direction: str, data: bytes) -> bool:
        counter["n"] += 1
        return counter["n"] % 3 == 0

    pair.lossy = every_third
    pair.from_lac(pair.lac.start(pair.now))
    pair.transfer()
    for _ in range(20):
        if (
            pair.lac.state is TunnelState.ESTABLISHED
            and pair.lns.live_tunnels()[0].state is TunnelState.ESTABLISHED
        ):
            break
        pair.advance(1.0)
    pair.from_lac(pair.lac.open_session(pair.now, 77))
    pair.transfer()
    for _ in range(20):
        if events_of(pair.lns_events, SessionEstablished):
            break
        pair.advance(1.0)
    assert events_of(pair.lac_events, SessionEstablished) and events_of(pair.lns_events, SessionEstablished)
    pair.from_lac(pair.lac.close(pair.now))
    pair.transfer()
    for _ in range(20):
        pair.advance(1.0)
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed("our StopCCN was acknowledged")]
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 1)]
    assert pair.lac.stats.retransmits > 0
    assert pair.lns.stats.tunnels_created == 1


def test_closed_tunnel_still_acknowledges_a_retransmitted_stopccn() -> None:
    pair = Pair()
    pair.establish()
    pair.from_lac(pair.lac.close(pair.now))
    pair.lossy = lambda direction, data: direction == "to_lac"  # the LNS's ZLB is lost
    pair.transfer()
    assert pair.lns.live_tunnels() == [] and pair.lac.state is TunnelState.CLOSING
    pair.lossy = lambda direction, data: False
    pair.advance(1.0)  # StopCCN again: the lingering tunnel re-ACKs it
    assert pair.lac.state is TunnelState.CLOSED
    assert TunnelClosed("our StopCCN was acknowledged") in pair.lac_events
    assert len(events_of(pair.lns_events, TunnelClosed)) == 1


def test_setup_times_out_when_scccn_never_comes() -> None:
    lns = Lns(random_bytes=counting_bytes())
    out = lns.receive(Tunnel(local_tunnel_id=5).start(0.0).datagrams[0], LAC_ADDR, 0.0)
    sccrp = decode(out.datagrams[0][1])
    zlb = encode(ControlMessage(sccrp.u16(AvpType.ASSIGNED_TUNNEL_ID), 0, 1, 1))  # ACK, no SCCCN
    assert lns.receive(zlb, LAC_ADDR, 0.5).datagrams == ()
    assert lns.next_deadline() == 60.0
    out = lns.poll(60.0)
    assert [decode(d).message_type for _, d in out.datagrams] == [MessageType.StopCCN]
    assert TunnelClosed("tunnel setup timed out", StopCcnResult.GENERAL_ERROR) in [
        e.event for e in out.events
    ]


# ------------------------------------------------------------------ HELLO keepalives


@pytest.mark.parametrize(
    ("lac_interval", "lns_interval", "sender"), [(20.0, 10.0, "lns"), (10.0, 20.0, "lac")]
)
def test_hello_after_silence_is_acknowledged(lac_interval: float, lns_interval: float, sender: str) -> None:
    pair = Pair(
        lac=Tunnel(local_tunnel_id=4711, hello_interval=lac_interval),
        lns=Lns(hello_interval=lns_interval, random_bytes=counting_bytes()),
    )
    pair.establish()
    pair.wire.clear()
    pair.advance(9.9)
    assert pair.wire == []
    pair.advance(0.1)
    towards = "to_lac" if sender == "lns" else "to_lns"
    hello, zlb = pair.wire
    assert hello[0] == towards and decode(hello[1]).message_type is MessageType.HELLO
    assert zlb[0] != towards and decode(zlb[1]).is_zlb
    pair.advance(30.0)
    assert not events_of(pair.lac_events, TunnelClosed) and not events_of(pair.lns_events, TunnelClosed)
    assert pair.lac.state is TunnelState.ESTABLISHED and pair.lns.live_tunnels()


def test_lns_detects_a_dead_lac() -> None:
    pair = Pair(lns=Lns(hello_interval=10.0, random_bytes=counting_bytes()))
    pair.establish()
    pair.open_session(77)
    pair.lossy = lambda direction, data: direction == "to_lac"  # the LAC is gone
    sent: list[bytes] = []
    for _ in range(60):
        pair.now += 1.0
        out = pair.lns.poll(pair.now)
        sent += [d for _, d in out.datagrams]
        pair.lns_events += [e.event for e in out.events]
    assert message_types(sent) == [MessageType.HELLO] * 6  # 1 + max_retries
    (closed,) = events_of(pair.lns_events, TunnelClosed)
    assert closed == TunnelClosed("peer stopped acknowledging (retransmissions exhausted)")
    assert events_of(pair.lns_events, SessionClosed)


def test_lac_detects_a_dead_lns() -> None:
    pair = Pair(lac=Tunnel(local_tunnel_id=4711, hello_interval=5.0))
    pair.establish()
    for _ in range(60):
        pair.now += 1.0
        pair.lac_events += pair.lac.poll(pair.now).events  # nothing is delivered any more
    assert TunnelClosed("peer stopped acknowledging (retransmissions exhausted)") in pair.lac_events
    assert pair.lac.stats.hellos_sent == 1


def test_hello_interval_zero_sends_none() -> None:
    pair = Pair(lac=Tunnel(local_tunnel_id=4711, hello_interval=0), lns=Lns(hello_interval=0))
    pair.establish()
    assert pair.lac.next_deadline() is None and pair.lns.next_deadline() is None
    pair.advance(1000.0)
    assert pair.lac.stats.hellos_sent == 0 and pair.lns.live_tunnels()[0].stats.hellos_sent == 0


# ------------------------------------------------------------------ tunnel authentication


def test_authentication_with_the_same_secret() -> None:
    pair = Pair(
        lac=Tunnel(local_tunnel_id=4711, secret=SECRET, random_bytes=lambda n: b"L" * n),
        lns=Lns(secret=SECRET, random_bytes=lambda n: b"N" * n),
    )
    pair.establish()
    sccrq, sccrp, scccn = (decode(d) for _, d in pair.wire[:3])
    assert sccrq.raw(AvpType.CHALLENGE) == b"L" * 16
    assert sccrp.raw(AvpType.CHALLENGE_RESPONSE) == hashlib.md5(b"\x02" + SECRET + b"L" * 16).digest()
    assert sccrp.raw(AvpType.CHALLENGE) == b"N" * 16
    assert scccn.message_type is MessageType.SCCCN
    assert scccn.raw(AvpType.CHALLENGE_RESPONSE) == hashlib.md5(b"\x03" + SECRET + b"N" * 16).digest()
    assert SECRET.decode() not in repr(pair.lac) and SECRET.decode() not in repr(pair.lns)


def test_wrong_secret_the_lac_refuses_the_sccrp() -> None:
    pair = Pair(lac=Tunnel(local_tunnel_id=4711, secret=b"one"), lns=Lns(secret=b"two"))
    pair.from_lac(pair.lac.start(pair.now))
    pair.transfer()
    assert not events_of(pair.lac_events, TunnelEstablished) and not events_of(
        pair.lns_events, TunnelEstablished
    )
    reason = "peer failed tunnel authentication (Challenge Response missing or wrong)"
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed(reason, StopCcnResult.NOT_AUTHORIZED)]
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 4)]
    assert pair.lac.stats.auth_failures == 1


@pytest.mark.parametrize("tamper", ["wrong", "missing"])
def test_the_lns_refuses_a_bad_response_in_scccn(tamper: str) -> None:
    pair = Pair(lac=Tunnel(local_tunnel_id=4711, secret=SECRET), lns=Lns(secret=SECRET))
    pair.from_lac(pair.lac.start(pair.now))
    pair.from_lns(pair.lns.receive(pair.to_lns.pop(), LAC_ADDR, pair.now))
    pair.from_lac(pair.lac.receive(pair.to_lac.pop(), pair.now))
    scccn = decode(pair.to_lns.pop())
    assert scccn.message_type is MessageType.SCCCN
    avps = scccn.avps[:1] + ((Avp(AvpType.CHALLENGE_RESPONSE, b"\x00" * 16),) if tamper == "wrong" else ())
    pair.to_lns.append(encode(ControlMessage(scccn.tunnel_id, 0, scccn.ns, scccn.nr, avps)))
    pair.transfer()
    reason = "peer failed tunnel authentication (Challenge Response missing or wrong)"
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed(reason, StopCcnResult.NOT_AUTHORIZED)]
    assert TunnelClosed("StopCCN from peer", 4) in pair.lac_events
    assert not events_of(pair.lns_events, TunnelEstablished)


def test_secret_only_on_the_lns() -> None:
    pair = Pair(lns=Lns(secret=SECRET))
    pair.from_lac(pair.lac.start(pair.now))
    pair.transfer()
    reason = "peer demands tunnel authentication and we hold no secret"
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed(reason, StopCcnResult.GENERAL_ERROR)]
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 2)]


def test_secret_only_on_the_lac() -> None:
    pair = Pair(lac=Tunnel(local_tunnel_id=4711, secret=SECRET))
    pair.from_lac(pair.lac.start(pair.now))
    pair.transfer()
    reason = "peer demands tunnel authentication and we hold no secret"
    assert events_of(pair.lns_events, TunnelClosed) == [TunnelClosed(reason, StopCcnResult.GENERAL_ERROR)]
    assert events_of(pair.lac_events, TunnelClosed) == [TunnelClosed("StopCCN from peer", 2)]


def test_replay_of_xl2tpd_with_tunnel_authentication() -> None:
    lns = Lns(host_name="tunvpn-lns", secret=SECRET, random_bytes=lambda n: bytes(range(n)))
    challenge = decode(XL2TPD_AUTH_SCCRQ).raw(AvpType.CHALLENGE)
    expected = challenge_response(MessageType.SCCRP, SECRET, challenge)
    assert decode(XL2TPD_AUTH_SCCRP).raw(AvpType.CHALLENGE_RESPONSE) == expected
    assert lns.receive(XL2TPD_AUTH_SCCRQ, LAC_ADDR, 0.0).datagrams == ((LAC_ADDR, XL2TPD_AUTH_SCCRP),)
    # xl2tpd's answer to our challenge 00..0f, known-answer for challenge_response():
    response = decode(XL2TPD_AUTH_SCCCN).raw(AvpType.CHALLENGE_RESPONSE)
    assert response == challenge_response(MessageType.SCCCN, SECRET, bytes(range(16)))
    out = lns.receive(XL2TPD_AUTH_SCCCN, LAC_ADDR, 0.1)
    assert LnsEvent(LAC_ADDR, 1, TunnelEstablished(0x5774, "xl2tpd-lac")) in out.events
    wrong = Lns(host_name="tunvpn-lns", secret=b"other", random_bytes=lambda n: bytes(range(n)))
    wrong.receive(XL2TPD_AUTH_SCCRQ, LAC_ADDR, 0.0)
    out = wrong.receive(XL2TPD_AUTH_SCCCN, LAC_ADDR, 0.1)
    assert [decode(d).message_type for _, d in out.datagrams] == [MessageType.StopCCN]
    assert decode(out.datagrams[0][1]).result_code()[0] == StopCcnResult.NOT_AUTHORIZED


# ------------------------------------------------------------------ the dispatcher


def test_limits_per_peer_and_in_total() -> None:
    lns = Lns(max_tunnels=2, max_tunnels_per_peer=1, random_bytes=counting_bytes())

    def sccrq(tunnel_id: int) -> bytes:
        return Tunnel(local_tunnel_id=tunnel_id).start(0.0).datagrams[0]

    assert lns.receive(sccrq(1), ("192.0.2.2", 1701), 0.0).datagrams
    assert lns.receive(sccrq(2), ("192.0.2.2", 1702), 0.0) == LnsOutput()  # same IP, other port
    assert lns.stats.refused_peer_limit == 1
    assert lns.receive(sccrq(3), ("192.0.2.3", 1701), 0.0).datagrams
    assert lns.receive(sccrq(4), ("192.0.2.4", 1701), 0.0) == LnsOutput()
    assert lns.stats.refused_total_limit == 1 and lns.stats.tunnels_created == 2
    lns.close_all(0.0)
    for second in range(1, 100):  # the StopCCNs go unacknowledged: the tunnels fail, then are forgotten
        lns.poll(float(second))
    assert lns.stats.tunnels_forgotten == 2
    assert lns.live_tunnels() == []
    assert lns.receive(sccrq(5), ("192.0.2.4", 1701), 100.0).datagrams


def test_tunnel_ids_are_unique_and_nonzero() -> None:
    lns = Lns(max_tunnels_per_peer=100, random_bytes=lambda n: b"\x00\x07" * (n // 2))  # always 7
    ids = set()
    for n in range(1, 6):
        out = lns.receive(Tunnel(local_tunnel_id=n).start(0.0).datagrams[0], LAC_ADDR, 0.0)
        ids.add(decode(out.datagrams[0][1]).u16(AvpType.ASSIGNED_TUNNEL_ID))
    assert len(ids) == 5 and 0 not in ids and 7 in ids


def test_routing_checks_tunnel_id_and_peer() -> None:
    pair = Pair()
    lns_tunnel = pair.establish()
    hello = encode(ControlMessage.build(MessageType.HELLO, lns_tunnel.local_tunnel_id, 0))
    assert pair.lns.receive(hello, ("198.51.100.9", 1701), 1.0) == LnsOutput()
    assert pair.lns.stats.wrong_peer == 1
    other = encode(ControlMessage.build(MessageType.HELLO, lns_tunnel.local_tunnel_id ^ 1, 0))
    assert pair.lns.receive(other, LAC_ADDR, 1.0) == LnsOutput()
    assert pair.lns.stats.unknown_tunnel == 1
    assert pair.lns.receive(encode_data(lns_tunnel.local_tunnel_id, 1, b"x"), LAC_ADDR, 1.0) == LnsOutput()
    assert pair.lns.stats.not_control == 1


def test_bad_sccrqs_make_no_tunnel() -> None:
    lns = Lns()
    good = decode(Tunnel(local_tunnel_id=1).start(0.0).datagrams[0])

    def variant(attr: AvpType, value: bytes) -> bytes:
        avps = tuple(Avp(a.attr_type, value) if a.attr_type == attr else a for a in good.avps)
        return encode(ControlMessage(0, 0, 0, 0, avps))

    assert lns.receive(variant(AvpType.ASSIGNED_TUNNEL_ID, b"\x00\x00"), LAC_ADDR, 0.0) == LnsOutput()
    assert lns.receive(variant(AvpType.FRAMING_CAPABILITIES, b"\x03"), LAC_ADDR, 0.0) == LnsOutput()
    assert lns.stats.malformed == 2 and lns.live_tunnels() == []
    out = lns.receive(variant(AvpType.PROTOCOL_VERSION, b"\x02\x00"), LAC_ADDR, 0.0)
    (stop,) = (decode(d) for _, d in out.datagrams)
    assert stop.message_type is MessageType.StopCCN
    assert stop.result_code()[0] == StopCcnResult.UNSUPPORTED_VERSION


# ------------------------------------------------------------------ exact octets


def test_sccrp_exact_octets() -> None:
    lac = Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac")
    lns = Lns(host_name="tunvpn-lns", random_bytes=lambda n: b"\xab\xcd" * (n // 2))
    ((addr, sccrp),) = lns.receive(lac.start(0.0).datagrams[0], LAC_ADDR, 0.0).datagrams
    expected = bytes.fromhex(
        "c802 0050 1267 0000 0000 0001"  # T L S ver 2, length 80, tunnel 4711, session 0, Ns 0, Nr 1
        "8008 0000 0000 0002"  # Message Type = SCCRP
        "8008 0000 0002 0100"  # Protocol Version 1, revision 0
        "800a 0000 0003 00000003"  # Framing Capabilities: sync | async
        "800a 0000 0004 00000000"  # Bearer Capabilities: none
        "8010 0000 0007" + b"tunvpn-lns".hex() + ""  # Host Name
        "8008 0000 0009 abcd"  # Assigned Tunnel ID 0xabcd
        "8008 0000 000a 0004"  # Receive Window Size 4
    )
    assert addr == LAC_ADDR and sccrp == expected
    assert encode(decode(expected)) == expected


def test_data_message_exact_octets() -> None:
    # RFC 2661 section 3.1: flags 0x0002 (T L S O P clear, version 2), Tunnel ID, Session ID.
    assert encode_data(0x1234, 0x5678, b"\xff\x03\xc0\x21") == bytes.fromhex("0002 1234 5678 ff03c021")


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (bytes.fromhex("0002 1234 5678 ff03"), (0x1234, 0x5678, b"\xff\x03")),
        (bytes.fromhex("4002 000a 1234 5678 ff03 ffff"), (0x1234, 0x5678, b"\xff\x03")),  # L: length 10
        (bytes.fromhex("0802 1234 5678 0001 0002 ff03"), (0x1234, 0x5678, b"\xff\x03")),  # S: Ns, Nr
        (bytes.fromhex("0202 1234 5678 0003 eeeeee ff03"), (0x1234, 0x5678, b"\xff\x03")),  # O: 3 pad
        (bytes.fromhex("4a02 0010 1234 5678 0001 0002 0000 ff03"), (0x1234, 0x5678, b"\xff\x03")),
        (bytes.fromhex("0102 0001 0002"), (1, 2, b"")),  # P bit: priority, nothing to skip
    ],
)
def test_decode_data_header_bits(datagram: bytes, expected: tuple[int, int, bytes]) -> None:
    assert decode_data(datagram) == expected
    assert not is_control(datagram)


@pytest.mark.parametrize(
    ("datagram", "error"),
    [
        (b"", MalformedHeader),
        (bytes.fromhex("0002 1234"), MalformedHeader),
        (bytes.fromhex("0003 1234 5678"), MalformedHeader),  # version 3
        (bytes.fromhex("4002 0020 1234 5678"), MalformedHeader),  # length past the end
        (bytes.fromhex("4002 0004 1234 5678"), MalformedHeader),  # length inside the header
        (bytes.fromhex("0802 1234 5678 0001"), MalformedHeader),  # ends inside Ns/Nr
        (bytes.fromhex("0202 1234 5678 00ff ff03"), MalformedHeader),  # offset past the end
        (bytes.fromhex("c802000c1267000000010002"), NotData),  # a ZLB
    ],
)
def test_decode_data_rejects(datagram: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_data(datagram)


def test_is_control() -> None:
    assert is_control(bytes.fromhex("c802000c1267000000010002"))
    assert not is_control(b"") and not is_control(b"\x00\x02")


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100))
def test_data_round_trip_property(tunnel_id: int, session_id: int, payload: bytes) -> None:
    assert decode_data(encode_data(tunnel_id, session_id, payload)) == (tunnel_id, session_id, payload)


@given(st.binary(max_size=40))
def test_decode_data_parses_or_raises_l2tp_error(datagram: bytes) -> None:
    try:
        tunnel_id, session_id, payload = decode_data(datagram)
    except L2tpError:
        return
    assert 0 <= tunnel_id <= 0xFFFF and 0 <= session_id <= 0xFFFF and len(payload) <= len(datagram)


# ------------------------------------------------------------------ fuzzing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_lns_receive_random_bytes_never_raises(data: bytes) -> None:
    Lns().receive(data, LAC_ADDR, 0.0)


def _established_pair() -> tuple[Pair, int]:
    pair = Pair()
    return pair, pair.establish().local_tunnel_id


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0, 1]),
    st.sampled_from(sorted(MessageType)),
    st.lists(st.tuples(st.sampled_from(sorted(AvpType)), st.binary(max_size=20)), max_size=6),
    st.integers(0, 4),
)
def test_lns_receive_random_messages_never_raises(
    to_tunnel: int, msg_type: MessageType, avps: list[tuple[AvpType, bytes]], ns: int
) -> None:
    pair, local_id = _established_pair()
    body = (Avp.u16(AvpType.MESSAGE_TYPE, msg_type), *(Avp(a, v) for a, v in avps))
    msg = ControlMessage(local_id if to_tunnel else 0, 0, ns, pair.lac.ns, body)
    pair.from_lns(pair.lns.receive(encode(msg), LAC_ADDR, 1.0))
    pair.from_lns(pair.lns.poll(100.0))
    pair.lns.next_deadline()


# ------------------------------------------------------------------ the core stays sans-I/O


@pytest.mark.parametrize("module", ["message", "control", "dispatch", "pppframe", "ppp"])
def test_core_modules_import_no_io(module: str) -> None:
    """The sans-I/O cores import no sockets, event loops, threads, processes or clocks."""
    forbidden = {"socket", "asyncio", "threading", "select", "selectors", "subprocess", "time"}
    path = Path(importlib.import_module(f"tunvpn_l2tp.{module}").__file__ or "")
    tree = ast.parse(path.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert imported, path  # the walk found the imports at all
    assert not imported & forbidden, f"{path}: {sorted(imported & forbidden)}"


# ------------------------------------------------------------------ interop: xl2tpd as the LAC

XL2TPD = "/usr/sbin/xl2tpd"


def _skip_or_fail(reason: str) -> None:
    """As tests/conftest.py: a skip, or a failure under TUNVPN_REQUIRE_ALL=1 (CI)."""
    if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
        pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LnsLoop:
    """Our Lns on a UDP socket on 127.0.0.1: the small I/O shell a gateway would have."""

    def __init__(self, lns: Lns) -> None:
        self.lns = lns
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.lns_events: list[LnsEvent] = []
        self.events: list[Event] = []
        self.received: list[bytes] = []

    def emit(self, out: LnsOutput) -> None:
        for addr, datagram in out.datagrams:
            self.sock.sendto(datagram, addr)
        self.lns_events += out.events
        self.events += [e.event for e in out.events]

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now > end:
                raise AssertionError(f"timed out; events so far: {self.events}")
            self.emit(self.lns.poll(now))
            deadline = self.lns.next_deadline()
            wait = min(end - now, 0.2 if deadline is None else max(0.0, deadline - now))
            self.sock.settimeout(max(wait, 0.01))
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received.append(data)
            self.emit(self.lns.receive(data, addr, time.monotonic()))

    def has(self, cls: type, **attrs: object) -> bool:
        return any(
            isinstance(e, cls) and all(getattr(e, k) == v for k, v in attrs.items()) for e in self.events
        )


XlStarter = Callable[..., Path]


@pytest.fixture
def xl2tpd_lac(tmp_path: Path) -> Iterator[XlStarter]:
    """Start xl2tpd as a LAC that autodials our LNS; always stopped at the end."""
    binary = shutil.which("xl2tpd") or (XL2TPD if Path(XL2TPD).exists() else None)
    if binary is None:
        _skip_or_fail("xl2tpd is not installed (bash contrib/test-all.sh installs it)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(lns_port: int, secret: str | None = None, challenge: bool = False) -> Path:
        options = tmp_path / "options.l2tpd.lac"
        options.write_text("noauth\nnodefaultroute\nnodetach\n")
        secrets_file = tmp_path / "l2tp-secrets"
        secrets_file.write_text(f"# us them secret\n* * {secret}\n" if secret else "")
        secrets_file.chmod(0o600)
        conf = tmp_path / "xl2tpd.conf"
        conf.write_text(
            "[global]\n"
            "listen-addr = 127.0.0.1\n"
            f"port = {free_udp_port()}\n"
            f"auth file = {secrets_file}\n"
            "debug tunnel = yes\n"
            "debug state = yes\n"
            "debug avp = yes\n"
            "\n[lac tunvpn]\n"
            f"lns = 127.0.0.1:{lns_port}\n"
            "autodial = yes\n"
            "redial = no\n"
            f"challenge = {'yes' if challenge else 'no'}\n"
            "hostname = xl2tpd-lac\n"
            "ppp debug = no\n"
            f"pppoptfile = {options}\n"
        )
        log_path = tmp_path / "xl2tpd.log"
        with log_path.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        str(binary),
                        "-D",
                        "-c",
                        str(conf),
                        "-p",
                        str(tmp_path / "xl2tpd.pid"),
                        "-C",
                        str(tmp_path / "l2tp-control"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return log_path

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = tmp_path / "xl2tpd.log"
    if log.exists():
        print(log.read_text(errors="replace"))


def _run_against_xl2tpd(xl2tpd_lac: XlStarter, lns: Lns, **xl2tpd: object) -> tuple[LnsLoop, Path]:
    loop = LnsLoop(lns)
    try:
        log = xl2tpd_lac(loop.port, **xl2tpd)
    except BaseException:
        loop.sock.close()
        raise
    return loop, log


def test_xl2tpd_lac_against_our_lns(xl2tpd_lac: XlStarter) -> None:
    loop, log = _run_against_xl2tpd(xl2tpd_lac, Lns(host_name="tunvpn-lns"))
    with loop.sock:
        loop.run_until(lambda: loop.has(SessionEstablished))
        (up,) = events_of(loop.events, TunnelEstablished)
        assert up.peer_host_name == "xl2tpd-lac" and up.peer_tunnel_id != 0
        (sess,) = events_of(loop.events, SessionEstablished)
        assert sess.local_session_id != 0 and sess.peer_session_id != 0
        # pppd cannot start here (no /dev/ppp): xl2tpd then sends CDN for the call.
        loop.run_until(lambda: loop.has(SessionClosed))
        assert SessionClosed(sess.local_session_id, "CDN from peer", 1) in loop.events
        loop.emit(loop.lns.close_all(time.monotonic()))
        loop.run_until(lambda: loop.has(TunnelClosed))
        assert loop.has(TunnelClosed, reason="our StopCCN was acknowledged")
        (local_id,) = {e.local_tunnel_id for e in loop.lns_events}
        tunnel = loop.lns.tunnel(local_id)
        assert tunnel is not None and tunnel.state is TunnelState.CLOSED
        assert tunnel.stats.malformed == tunnel.stats.unexpected == 0
        assert loop.lns.stats.malformed == 0
        for data in loop.received:
            print(data.hex())
    text = log.read_text(errors="replace")
    assert "Connection established" in text and "Call established" in text, text


def test_xl2tpd_lac_with_tunnel_authentication(xl2tpd_lac: XlStarter) -> None:
    lns = Lns(host_name="tunvpn-lns", secret=SECRET, random_bytes=lambda n: bytes(range(n)))
    loop, log = _run_against_xl2tpd(xl2tpd_lac, lns, secret=SECRET.decode(), challenge=True)
    with loop.sock:
        loop.run_until(lambda: loop.has(SessionEstablished))
        assert loop.has(TunnelEstablished, peer_host_name="xl2tpd-lac")
        sccrq = decode(loop.received[0])
        assert sccrq.message_type is MessageType.SCCRQ and sccrq.find(AvpType.CHALLENGE) is not None
        for data in loop.received[:2]:
            print(data.hex())
    assert "Connection established" in log.read_text(errors="replace")


@pytest.mark.parametrize("xl2tpd_challenges", [True, False], ids=["xl2tpd-challenges", "only-we-challenge"])
def test_xl2tpd_lac_with_the_wrong_secret(xl2tpd_lac: XlStarter, xl2tpd_challenges: bool) -> None:
    lns = Lns(host_name="tunvpn-lns", secret=SECRET)
    loop, log = _run_against_xl2tpd(xl2tpd_lac, lns, secret="not-the-secret", challenge=xl2tpd_challenges)
    with loop.sock:
        loop.run_until(lambda: loop.has(TunnelClosed))
        loop.run_until(lambda: not loop.lns.live_tunnels(), timeout=5)
        assert not loop.has(TunnelEstablished)
        (closed,) = events_of(loop.events, TunnelClosed)
        if xl2tpd_challenges:  # xl2tpd finds our response wrong first and sends StopCCN
            assert closed.reason == "StopCCN from peer"
        else:  # xl2tpd answers our challenge in SCCCN, wrongly: we send StopCCN result 4
            assert closed.result == StopCcnResult.NOT_AUTHORIZED
    text = log.read_text(errors="replace")
    if not xl2tpd_challenges:
        assert "Requester is not authorized" in text, text
