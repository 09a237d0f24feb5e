"""tunvpn_l2tp.control: codec against known octets, xl2tpd's captured replies, the reliable-
delivery layer and the LAC state machines without a peer, and random input on the receive path.

The XL2TPD_* constants are datagrams xl2tpd 1.3.18 (Debian 12) sent to us during
`python3 -m pytest -s tests/loopback/test_l2tp_xl2tpd.py` (the test prints every datagram it received,
in hex), with our Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac") and session 77.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tunvpn_l2tp.control import (
    Acked,
    SessionClosed,
    SessionEstablished,
    Tunnel,
    TunnelClosed,
    TunnelEstablished,
    TunnelState,
)
from tunvpn_l2tp.message import (
    Avp,
    AvpType,
    ControlMessage,
    MalformedAvp,
    MalformedHeader,
    MessageType,
    MissingAvp,
    NotControl,
    UnknownMessageType,
    decode,
    encode,
)

# SCCRP: Ns 0 Nr 1; Message Type 2, Protocol Version 1.0, Framing Caps 3, Bearer Caps 0,
# Firmware Revision 0x0690, Host Name "xl2tpd-lns", Vendor Name "xelerance.com",
# Assigned Tunnel ID 0x128b, Receive Window Size 4.
XL2TPD_SCCRP = bytes.fromhex(
    "c802006b126700000000000180080000000000028008000000020100800a0000000300000003800a0000000400"
    "0000000008000000060690801000000007786c327470642d6c6e7300130000000878656c6572616e63652e636f"
    "6d800800000009128b80080000000a0004"
)
XL2TPD_ZLB_AFTER_SCCCN = bytes.fromhex("c802000c1267000000010002")
XL2TPD_ICRP = bytes.fromhex("c802001c1267004d00010003800800000000000b80080000000e8ee1")
# A ZLB with Nr 3 after ICRP: it acknowledges our ICRQ (Ns 2), not the ICCN (Ns 3) we had sent;
# xl2tpd acknowledged the ICCN only with the Nr 4 of its CDN below.
XL2TPD_ZLB_AFTER_ICCN = bytes.fromhex("c802000c1267000000020003")
# xl2tpd's CDN after pppd failed (no /dev/ppp): result 1, error 0, Assigned Session ID 0x8ee1
XL2TPD_CDN = bytes.fromhex("c80200261267004d00020004800800000000000e800a000000010001000080080000000e8ee1")
XL2TPD_ZLB_AFTER_STOPCCN = bytes.fromhex("c802000c1267000000030005")


def test_sccrq_exact_octets() -> None:
    tunnel = Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac")
    out = tunnel.start(now=0.0)
    expected = bytes.fromhex(
        "c802"
        "0046"
        "0000"
        "0000"
        "0000"
        "0000"  # T L S ver 2, length 70, tunnel 0, session 0, Ns 0 Nr 0
        "8008"
        "0000"
        "0000"
        "0001"  # M, len 8, vendor 0, Message Type = SCCRQ
        "8008"
        "0000"
        "0002"
        "0100"  # Protocol Version 1, revision 0
        "8010"
        "0000"
        "0007"
        + b"tunvpn-lac".hex()  # Host Name
        + "800a"
        "0000"
        "0003"
        "00000003"  # Framing Capabilities: sync | async
        "8008"
        "0000"
        "0009"
        "1267"  # Assigned Tunnel ID 4711
        "8008"
        "0000"
        "000a"
        "0004"  # Receive Window Size 4
    )
    assert out.datagrams == (expected,)
    assert decode(expected).message_type is MessageType.SCCRQ
    assert encode(decode(expected)) == expected


def test_parse_xl2tpd_sccrp() -> None:
    msg = decode(XL2TPD_SCCRP)
    msg.validate()
    assert msg.message_type is MessageType.SCCRP
    assert (msg.tunnel_id, msg.session_id, msg.ns, msg.nr) == (4711, 0, 0, 1)
    assert msg.u16(AvpType.ASSIGNED_TUNNEL_ID) == 0x128B
    assert msg.text(AvpType.HOST_NAME) == "xl2tpd-lns"
    assert msg.text(AvpType.VENDOR_NAME) == "xelerance.com"
    assert msg.u32(AvpType.FRAMING_CAPABILITIES) == 3
    assert msg.u16(AvpType.RECEIVE_WINDOW_SIZE) == 4
    assert msg.find(AvpType.CHALLENGE) is None
    assert encode(msg) == XL2TPD_SCCRP


def test_parse_xl2tpd_icrp_cdn_and_zlbs() -> None:
    icrp = decode(XL2TPD_ICRP)
    assert icrp.message_type is MessageType.ICRP and icrp.session_id == 77
    assert icrp.u16(AvpType.ASSIGNED_SESSION_ID) == 0x8EE1
    cdn = decode(XL2TPD_CDN)
    assert cdn.message_type is MessageType.CDN
    assert cdn.result_code() == (1, 0, "")
    for zlb in (XL2TPD_ZLB_AFTER_SCCCN, XL2TPD_ZLB_AFTER_ICCN, XL2TPD_ZLB_AFTER_STOPCCN):
        assert decode(zlb).is_zlb and decode(zlb).message_type is None


def test_replay_of_the_captured_exchange() -> None:
    t = Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac")
    t.start(0.0)
    out = t.receive(XL2TPD_SCCRP, 0.1)
    assert TunnelEstablished(0x128B, "xl2tpd-lns") in out.events
    (scccn,) = out.datagrams  # SCCCN carries the ACK: no separate ZLB
    assert decode(scccn).message_type is MessageType.SCCCN
    assert (decode(scccn).tunnel_id, decode(scccn).ns, decode(scccn).nr) == (0x128B, 1, 1)
    out = t.receive(XL2TPD_ZLB_AFTER_SCCCN, 0.2)
    assert out.datagrams == () and Acked(MessageType.SCCCN, 1, 0) in out.events
    (icrq,) = t.open_session(0.3, 77, 1).datagrams
    assert decode(icrq).u16(AvpType.ASSIGNED_SESSION_ID) == 77
    out = t.receive(XL2TPD_ICRP, 0.4)
    assert SessionEstablished(77, 0x8EE1) in out.events
    (iccn,) = out.datagrams
    assert decode(iccn).message_type is MessageType.ICCN and decode(iccn).session_id == 0x8EE1
    assert t.receive(XL2TPD_ZLB_AFTER_ICCN, 0.5) == type(out)()  # nothing new acknowledged
    out = t.receive(XL2TPD_CDN, 0.6)
    assert Acked(MessageType.ICCN, 3, 0x8EE1) in out.events
    assert SessionClosed(77, "CDN from peer", 1) in out.events
    assert decode(out.datagrams[-1]).is_zlb and decode(out.datagrams[-1]).nr == 3
    (stop,) = t.close(0.7).datagrams
    assert decode(stop).message_type is MessageType.StopCCN
    out = t.receive(XL2TPD_ZLB_AFTER_STOPCCN, 0.8)
    assert TunnelClosed("our StopCCN was acknowledged") in out.events
    assert t.state is TunnelState.CLOSED and t.stats.malformed == 0


def test_retransmission_backs_off_then_gives_up() -> None:
    t = Tunnel(local_tunnel_id=1, initial_timeout=1.0, max_timeout=4.0, max_retries=3)
    (first,) = t.start(0.0).datagrams
    assert t.next_deadline() == 1.0
    assert t.poll(0.5).datagrams == ()
    assert t.poll(1.0).datagrams == (first,)
    assert t.next_deadline() == 3.0  # 2 s
    assert t.poll(3.0).datagrams == (first,)
    assert t.next_deadline() == 7.0  # 4 s, capped
    assert t.poll(7.0).datagrams == (first,)
    out = t.poll(11.0)
    assert out.events and isinstance(out.events[0], TunnelClosed) and t.state is TunnelState.CLOSED


def test_duplicate_is_acked_again_and_future_ns_is_dropped() -> None:
    t = Tunnel(local_tunnel_id=4711)
    t.start(0.0)
    t.receive(XL2TPD_SCCRP, 0.1)
    out = t.receive(XL2TPD_SCCRP, 0.2)  # our SCCCN's ACK got lost on the way
    assert t.stats.duplicates == 1 and len(out.datagrams) == 1 and decode(out.datagrams[0]).is_zlb
    future = encode(
        ControlMessage.build(MessageType.HELLO, 4711, 0).__class__(
            4711, 0, 9, 2, decode(encode(ControlMessage.build(MessageType.HELLO, 4711, 0))).avps
        )
    )
    assert t.receive(future, 0.3).datagrams == () and t.stats.out_of_order == 1


def test_send_window_holds_messages_back() -> None:
    t = Tunnel(local_tunnel_id=4711)
    t.start(0.0)
    sccrp = bytearray(XL2TPD_SCCRP)
    sccrp[-1] = 1  # peer Receive Window Size 1
    t.receive(bytes(sccrp), 0.1)  # SCCCN is now in flight
    assert t.open_session(0.2, 5).datagrams == ()  # ICRQ waits for the window
    out = t.receive(XL2TPD_ZLB_AFTER_SCCCN, 0.3)
    assert [decode(d).message_type for d in out.datagrams] == [MessageType.ICRQ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", MalformedHeader),
        (b"\x40\x02", NotControl),
        (bytes.fromhex("c8030000"), MalformedHeader),  # version 3
        (bytes.fromhex("c802000b126700000000"), MalformedHeader),
        (bytes.fromhex("c80200ff126700000000000100"), MalformedHeader),  # length past the datagram
        (bytes.fromhex("c802000e12670000000000018008"), MalformedAvp),  # truncated AVP header
        (bytes.fromhex("c80200121267000000000001800400000000"), MalformedAvp),  # AVP length 4
        (bytes.fromhex("c8020014126700000000000180080000000700ff"), MalformedAvp),  # first not Message Type
        (bytes.fromhex("c80200141267000000000001800800000000000d"), UnknownMessageType),
    ],
)
def test_malformed_input_raises_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(data)


def test_missing_mandatory_avp() -> None:
    sccrp = ControlMessage.build(MessageType.SCCRP, 4711, 0, [Avp(AvpType.HOST_NAME, b"x")])
    with pytest.raises(MissingAvp):
        sccrp.validate()
    t = Tunnel(local_tunnel_id=4711)
    t.start(0.0)
    assert t.receive(encode(sccrp), 0.1) == type(t.receive(b"", 0.1))()
    assert t.stats.malformed == 2 and t.state is TunnelState.WAIT_CTL_REPLY


def test_challenge_is_refused_with_stopccn() -> None:
    t = Tunnel(local_tunnel_id=4711)
    t.start(0.0)
    msg = decode(XL2TPD_SCCRP)
    challenged = ControlMessage(4711, 0, 0, 1, (*msg.avps, Avp(AvpType.CHALLENGE, b"0123456789abcdef")))
    out = t.receive(encode(challenged), 0.1)
    assert decode(out.datagrams[0]).message_type is MessageType.StopCCN
    assert any(isinstance(e, TunnelClosed) for e in out.events)


def _established() -> Tunnel:
    t = Tunnel(local_tunnel_id=4711)
    t.start(0.0)
    t.receive(XL2TPD_SCCRP, 0.1)
    return t


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    _established().receive(data, 1.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bodies_behind_a_valid_header_never_raise(body: bytes) -> None:
    t = _established()
    header = struct.pack("!HHHHHH", 0xC802, 12 + len(body), 4711, 0, 1, 2)
    t.receive(header + body, 1.0)
    msgs = [
        ControlMessage(4711, 0, 1, 2, (Avp.u16(AvpType.MESSAGE_TYPE, m), Avp(a, body[:8])))
        for m in (2, 4, 11, 14)
        for a in (1, 9, 14)
    ]
    for m in msgs:
        t.receive(encode(m), 1.0)
