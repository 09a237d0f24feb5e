"""The data path's fast paths agree with its careful paths: the inbound loop over a UDP GRO
buffer (replay window, AEAD open, trailer and IPv4 policy inlined), the outbound route cache,
the batched seal, and the run-of-segments shortcut in gro_coalesce (the equal-size GSO send
and the GRO buffers handed over whole, over a real socket: tests/loopback/test_dataplane_udp.py)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.esp_helpers import ALL_SUITES, GCM128, ipv4, make_keys, sa_pair, udp
from tests.helpers.packets import groups, tcp, tcp_segments
from tunvpn.dataplane.packets import TCP_ACK, TCP_PSH, gro_coalesce, gso_split
from tunvpn.esp import DropReason, InboundSA, OutboundSA, SadTable
from tunvpn.esp.policy import compile_inbound_ranges
from tunvpn.ipsec.selectors import TrafficSelector as TS

CLIENT = TS.parse("10.1.0.2")
PROTECTED = TS.parse("10.2.0.0/24")


def pair(**kwargs: object) -> tuple[OutboundSA, InboundSA]:
    return sa_pair(GCM128, remote_ts=CLIENT, local_ts=PROTECTED, **kwargs)


def packets(count: int, size: int = 600, **kwargs: str) -> list[bytes]:
    return [ipv4(payload=udp(1000, 2000, bytes([i & 0xFF]) * (size - 28)), **kwargs) for i in range(count)]


def drops(sa: InboundSA) -> dict[DropReason, int]:
    return sa.drop_counts()


# --------------------------------------------------------------------------- inbound GRO buffer


def test_buffer_matches_batch_and_counts() -> None:
    out_sa, in_sa = pair()
    inner = packets(40)
    esp = out_sa.encrypt_batch(inner)
    got: list[bytes] = []
    rest = in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), got)
    assert rest == []
    assert got == inner
    assert in_sa.packets == 40
    assert in_sa.bytes == sum(map(len, inner))
    # the same buffer again: every packet is a replay
    assert in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), got) == []
    assert len(got) == 40
    assert drops(in_sa) == {DropReason.REPLAY: 40}


def test_buffer_drops_in_the_middle_and_hands_back_what_is_not_its_own() -> None:
    out_sa, in_sa = pair()
    esp = out_sa.encrypt_batch(packets(6))
    size = len(esp[0])
    forged = bytearray(esp[2])
    forged[-1] ^= 1
    ike = b"\x00\x00\x00\x00" + bytes(size - 4)
    other_spi = b"\x00\x00\x99\x99" + esp[4][4:]
    buffer = b"".join([esp[0], esp[1], bytes(forged), ike, other_spi, esp[5], esp[0]])
    got: list[bytes] = []
    rest = in_sa.decrypt_buffer(buffer, size, got)
    assert rest == [ike, other_spi]
    assert len(got) == 3  # esp 0, 1, 5; the second esp 0 is a replay
    assert drops(in_sa) == {DropReason.BAD_ICV: 1, DropReason.REPLAY: 1}
    # a forged packet does not move the window: its genuine twin still passes
    assert in_sa.decrypt_buffer(esp[2], size, got) == []
    assert len(got) == 4


def test_buffer_short_last_datagram_and_runts_go_back() -> None:
    out_sa, in_sa = pair()
    esp = out_sa.encrypt_batch(packets(3) + packets(1, size=100))
    size = len(esp[0])
    got: list[bytes] = []
    rest = in_sa.decrypt_buffer(b"".join(esp), size, got)
    assert len(got) == 3
    assert rest == [esp[3]]  # shorter: the caller gives it to the careful path
    assert in_sa.decrypt_batch(rest) == packets(1, size=100)
    keepalive = b"\xff"
    assert in_sa.decrypt_buffer(keepalive, 1, got) == [keepalive]


def test_buffer_policy_is_checked() -> None:
    out_sa, in_sa = pair()
    good = packets(2)
    spoofed = packets(1, src="10.1.0.3")  # another client's address
    elsewhere = packets(1, dst="10.3.0.1")
    esp = out_sa.encrypt_batch([good[0], *spoofed, *elsewhere, good[1]])
    got: list[bytes] = []
    assert in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), got) == []
    assert got == good
    assert drops(in_sa) == {DropReason.POLICY: 2}


def test_buffer_unusual_inner_packets_take_the_careful_checks() -> None:
    out_sa, in_sa = pair()
    dummy = ipv4(payload=bytes(100))
    esp = out_sa.encrypt_batch([dummy])
    # Next Header 59 (dummy), hand-made with the engine: dropped silently as DUMMY
    engine = out_sa.engine
    plain = dummy + b"\x01\x02\x02\x3b"
    tfc = engine.seal(out_sa._spi_bytes, 2, plain)
    got: list[bytes] = []
    in_sa.decrypt_buffer(esp[0], len(esp[0]), got)
    in_sa.decrypt_buffer(tfc, len(tfc), got)
    assert got == [dummy]
    assert drops(in_sa) == {DropReason.DUMMY: 1}


def test_buffer_window_rebases_over_long_runs() -> None:
    out_sa, in_sa = pair(window=64)
    got: list[bytes] = []
    for _ in range(40):  # 4000 packets: the bitmap is rebased many times
        esp = out_sa.encrypt_batch(packets(100, size=60))
        assert in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), got) == []
    assert len(got) == 4000
    assert in_sa.replay is not None and in_sa.replay.top == 4000
    late = out_sa.encrypt_batch(packets(1, size=60))
    assert in_sa.decrypt_buffer(late[0], len(late[0]), got) == []
    assert len(got) == 4001
    assert not drops(in_sa)


@pytest.mark.parametrize("suite", [ALL_SUITES[3], ALL_SUITES[5]], ids=lambda s: s.name)
def test_buffer_by_suite(suite: object) -> None:
    """ChaCha20-Poly1305 takes the fast path too; AES-CBC hands everything back."""
    out_sa, in_sa = sa_pair(suite)  # type: ignore[arg-type]
    esp = out_sa.encrypt_batch(packets(3))
    got: list[bytes] = []
    rest = in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), got)
    if in_sa.suite.aead:
        assert (rest, got) == ([], packets(3))
    else:
        assert (rest, got) == (esp, [])
        assert in_sa.decrypt_batch(rest) == packets(3)


def test_buffer_of_sas_without_the_fast_path() -> None:
    """ESN, or selectors with ports: everything goes back for decrypt_batch."""
    out_esn, in_esn = sa_pair(GCM128, esn=True)
    esp = out_esn.encrypt_batch(packets(3))
    assert in_esn.decrypt_buffer(b"".join(esp), len(esp[0]), []) == esp
    assert in_esn.decrypt_batch(esp) == packets(3)
    ported = TS(PROTECTED.start, PROTECTED.end, 17, 2000)
    out_sa, in_sa = sa_pair(GCM128, remote_ts=CLIENT, local_ts=ported)
    assert in_sa._ranges is None
    esp = out_sa.encrypt_batch(packets(3))
    assert in_sa.decrypt_buffer(b"".join(esp), len(esp[0]), []) == esp
    assert in_sa.decrypt_batch(esp) == packets(3)


def test_table_buffer_with_unknown_spi() -> None:
    out_sa, in_sa = pair()
    table = SadTable()
    table.install(in_sa)
    esp = out_sa.encrypt_batch(packets(2))
    got: list[bytes] = []
    assert table.decrypt_buffer(b"".join(esp), len(esp[0]), got) == []
    assert got == packets(2)
    stranger = b"\x00\x00\x77\x77" + esp[0][4:]
    assert table.decrypt_buffer(stranger * 2, len(stranger), got) == [stranger, stranger]
    assert table.decrypt_batch([stranger]) == []
    assert table.drop_counts() == {DropReason.UNKNOWN_SPI: 1}


def test_inbound_ranges() -> None:
    assert compile_inbound_ranges(None, None) == (0, 0xFFFFFFFF, 0, 0xFFFFFFFF)
    assert compile_inbound_ranges(CLIENT, PROTECTED) == (0x0A010002, 0x0A010002, 0x0A020000, 0x0A0200FF)
    assert compile_inbound_ranges(TS.parse("fd00::/64"), None) is None
    assert compile_inbound_ranges(CLIENT, TS(PROTECTED.start, PROTECTED.end, 6, 0)) is None


# --------------------------------------------------------------------------- outbound


def test_route_cache_follows_replace_and_remove() -> None:
    key, _ = make_keys(GCM128)
    table = SadTable()
    old = OutboundSA(0x100, GCM128, key, remote_ts=PROTECTED)
    table.install(old)
    inner = packets(3, dst="10.2.0.9")
    [(sa, esp)] = table.encrypt_batch(inner)
    assert sa is old and len(esp) == 3
    new = OutboundSA(0x101, GCM128, key, remote_ts=PROTECTED)
    table.replace(old, new)
    [(sa, _)] = table.encrypt_batch(inner)
    assert sa is new
    host = OutboundSA(0x102, GCM128, key, remote_ts=TS.parse("10.2.0.9"))
    table.install(host)  # a longer prefix now wins for this destination
    [(sa, _)] = table.encrypt_batch(inner)
    assert sa is host
    table.remove(host)
    table.remove(new)
    assert table.encrypt_batch(inner) == []
    assert table.drop_counts() == {DropReason.NO_ROUTE: 3}


def test_route_cache_stays_out_of_port_selectors() -> None:
    key, _ = make_keys(GCM128)
    table = SadTable()
    web = OutboundSA(0x200, GCM128, key, remote_ts=TS(PROTECTED.start, PROTECTED.end, 17, 80))
    rest = OutboundSA(0x201, GCM128, key, remote_ts=PROTECTED)
    table.install(rest)
    table.install(web)
    to_web = ipv4(dst="10.2.0.5", payload=udp(1000, 80))
    to_dns = ipv4(dst="10.2.0.5", payload=udp(1000, 53))
    result = table.encrypt_batch([to_web, to_dns, to_web, to_dns])
    assert [(sa, len(esp)) for sa, esp in result] == [(web, 2), (rest, 2)]


def test_seal_batch_near_the_end_of_the_sequence_space() -> None:
    key, _ = make_keys(GCM128)
    engine = GCM128.make_engine(key)
    spi = b"\x00\x00\x12\x34"
    trailers = OutboundSA(0x1234, GCM128, key)._trailers
    inner = packets(4, size=100)
    out: list[bytes] = []
    seq, sealed, skipped = engine.seal_batch(spi, 0xFFFF_FFFE, inner, out, trailers)
    assert (seq, sealed, skipped) == (0xFFFF_FFFE + 4, 400, 0)
    for i, (packet, esp) in enumerate(zip(inner, out)):
        number = 0xFFFF_FFFF + i
        plain = packet + trailers[4][len(packet) & 3]
        assert esp == engine.seal(spi, number, plain)
    out = []
    assert engine.seal_batch(spi, 7, [b"", b"\x10" * 30, *inner], out, trailers) == (11, 400, 2)
    assert len(out) == 4


# --------------------------------------------------------------------------- gro_coalesce runs


def test_run_of_segments_with_a_sequence_wrap_and_changing_windows() -> None:
    data = os.urandom(1000 * 20)
    seg = tcp_segments(data, 1000, seq=0xFFFF_FFFF - 5500, last_flags=TCP_ACK)
    windows = [bytearray(s) for s in seg]
    for i, s in enumerate(windows):
        s[34:36] = struct.pack("!H", 1000 + i)  # the window may change (checksum not rechecked here)
    out = gro_coalesce([bytes(s) for s in windows])
    assert sum(groups(out)) == 20
    assert all(h.gso_type for h, _ in out)
    assert b"".join(p[40:] for h, p in out) == data


def test_run_ends_where_the_headers_change() -> None:
    opts = [b"\x01\x01\x08\x0a" + struct.pack("!II", ts, 1) for ts in (1, 1, 1, 2, 2)]
    seg = [
        tcp(bytes([i]) * 800, seq=1000 + 800 * i, ident=i, options=opts[i], flags=TCP_ACK) for i in range(5)
    ]
    assert groups(gro_coalesce(seg)) == [3, 2]  # a new timestamp: a new super-packet
    psh = tcp(b"p" * 800, seq=1000 + 800 * 5, ident=5, options=opts[4], flags=TCP_ACK | TCP_PSH)
    after = tcp(b"q" * 800, seq=1000 + 800 * 6, ident=6, options=opts[4], flags=TCP_ACK)
    assert groups(gro_coalesce([*seg, psh, after])) == [3, 3, 1]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1111, 2222]), st.integers(1, 1400), st.sampled_from(["ok", "gap", "psh", "ack"])
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 0xFFFF_FFFF),
)
def test_coalesced_flows_split_back_in_order(spec: list[tuple[int, int, str]], start: int) -> None:
    """Whatever is merged, splitting it again gives every flow's packets back in order."""
    seqs = {1111: start, 2222: (start + 12345) & 0xFFFF_FFFF}
    sent: dict[int, list[bytes]] = {1111: [], 2222: []}
    batch = []
    for sport, size, kind in spec:
        seq = seqs[sport]
        if kind == "gap":
            seq = (seq + 1) & 0xFFFF_FFFF
        packet = tcp(
            os.urandom(size),
            seq=seq,
            sport=sport,
            ack=5000 if kind != "ack" else 5001,
            flags=TCP_ACK | TCP_PSH if kind == "psh" else TCP_ACK,
        )
        seqs[sport] = (seq + size) & 0xFFFF_FFFF
        sent[sport].append(packet)
        batch.append(packet)
    out = gro_coalesce(batch)
    back: dict[int, list[bytes]] = {1111: [], 2222: []}
    for hdr, packet in out:
        segments = gso_split(hdr, packet) if hdr.gso_type else [packet]
        sport = struct.unpack_from("!H", segments[0], 20)[0]
        back[sport] += segments
        assert len(packet) <= 65535
    for sport in sent:
        # payloads and sequence numbers survive; headers of merged segments are rebuilt
        assert [(s[24:28], s[40:]) for s in back[sport]] == [(s[24:28], s[40:]) for s in sent[sport]]


def test_empty_and_odd_buffers_are_handed_back() -> None:
    out_sa, in_sa = pair()
    table = SadTable()
    table.install(in_sa)
    assert table.decrypt_buffer(b"", 0, []) == [b""]
    assert in_sa.decrypt_buffer(b"", 0, []) == [b""]
    esp = out_sa.encrypt_batch(packets(2))
    got: list[bytes] = []
    assert table.decrypt_buffer(esp[0], 0, got) == []  # no segment size: one datagram
    assert table.decrypt_buffer(esp[1], 10**6, got) == []
    assert got == packets(2)
