"""Pure tests of the TUN data path's packet logic: checksums, virtio_net_hdr, GSO split, GRO coalesce.

Every checksum is verified with ``reference_sum`` (tests/helpers/packets.py), a word-by-word RFC
1071 loop that shares no code with tunvpn.dataplane.checksum.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.packets import (
    DST4,
    DST6,
    SRC4,
    SRC6,
    groups,
    ipv4,
    reference_checksum,
    reference_sum,
    tcp,
    tcp_segments,
    udp,
)
from tests.helpers.source import forbidden_imports
from tunvpn.dataplane import checksum as cks
from tunvpn.dataplane.packets import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    GsoType,
    PacketError,
    VirtioFlag,
    VirtioNetHdr,
    checksum,
    gro_coalesce,
    gso_split,
    l4_checksum,
    ones_sum,
    parse_ip_header,
    partial_sum,
    pseudo_header_sum,
    segment_sums,
)

# --------------------------------------------------------------------------- the reference


def ip_header_ok(packet: bytes) -> bool:
    ihl = (packet[0] & 15) * 4
    return reference_sum(packet[:ihl]) == 0xFFFF


def l4_ok(packet: bytes) -> bool:
    """The TCP/UDP checksum of an IPv4 or IPv6 packet verifies (sums to all ones)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        src, dst, proto = packet[12:16], packet[16:20], packet[9]
    else:
        ihl = 40
        src, dst, proto = packet[8:24], packet[24:40], packet[6]
    segment = packet[ihl:]
    pseudo = src + dst + struct.pack("!HH", proto, len(segment))
    return reference_sum(pseudo + segment) == 0xFFFF


def kernel_super_packet(segments: list[bytes], mss: int, version: int) -> tuple[VirtioNetHdr, bytes]:
    """What the kernel would hand to a TUN with TSO for these segments (built independently)."""
    first = segments[0]
    ihl = 20 if version == 4 else 40
    thl = (first[ihl + 12] >> 4) * 4
    hl = ihl + thl
    payload = b"".join(s[hl:] for s in segments)
    header = bytearray(first[:hl])
    total = hl + len(payload)
    if version == 4:
        header[2:4] = struct.pack("!H", total)
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", reference_checksum(bytes(header[:20])))
        src, dst = SRC4, DST4
    else:
        header[4:6] = struct.pack("!H", total - 40)
        src, dst = SRC6, DST6
    header[ihl + 13] = segments[-1][ihl + 13]  # flags of the last segment (FIN/PSH)
    pseudo = reference_sum(src + dst + struct.pack("!HH", 6, total - ihl))
    header[ihl + 16 : ihl + 18] = struct.pack("!H", pseudo)
    gso = GsoType.TCPV4 if version == 4 else GsoType.TCPV6
    return VirtioNetHdr(VirtioFlag.NEEDS_CSUM, gso, hl, mss, ihl, 16), bytes(header) + payload


# --------------------------------------------------------------------------- checksums


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


def test_known_ipv4_header() -> None:
    # The IPv4 header of a UDP datagram 192.168.0.1 -> 192.168.0.199 (a common textbook example,
    # e.g. Wikipedia "Internet checksum"); its checksum field is b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(header) == 0xB861
    with_csum = header[:10] + bytes.fromhex("b861") + header[12:]
    assert checksum(with_csum) == 0


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", 0),
        (b"\0\0\0", 0),
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\xff\xff", 0xFFFF),
        (b"\x01", 0x0100),
        (b"\x80\x00\x80\x00", 1),
    ],
)
def test_edge_sums(data: bytes, expected: int) -> None:
    assert ones_sum(data) == reference_sum(data) == expected


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=9000) | st.binary(max_size=8).map(lambda b: b * 600) | st.just(b"\xff" * 3001))
def test_sum_matches_reference(data: bytes) -> None:
    assert ones_sum(data) == reference_sum(data)
    assert checksum(data) == (~reference_sum(data) & 0xFFFF)


@settings(deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_partial_sums_add(a: bytes, b: bytes) -> None:
    if len(a) % 2:
        a += b"\0"
    assert cks.fold(partial_sum(a) + partial_sum(b)) == reference_sum(a + b)


def test_big_buffer_folds() -> None:
    data = os.urandom(65535)
    assert ones_sum(data) == reference_sum(data)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 3),
    st.integers(1, 3000),
    st.integers(1, 70),
    st.booleans(),
    st.data(),
)
def test_segment_sums_vectorized_or_not(
    start: int, size: int, count: int, vectorized: bool, data: st.DataObject
) -> None:
    start *= 2
    payload_len = size * (count - 1) + data.draw(st.integers(1, size))
    buf = os.urandom(start + payload_len)
    sums = segment_sums(buf, start, size, count, vectorized=vectorized)
    assert len(sums) == count
    for i, s in enumerate(sums):
        chunk = buf[start + i * size : start + (i + 1) * size]
        assert cks.fold(s) == reference_sum(chunk)


def test_pseudo_header_and_l4_checksum() -> None:
    packet = udp(b"hello")
    segment = bytearray(packet[20:])
    value = struct.unpack("!H", segment[6:8])[0]
    segment[6:8] = b"\0\0"
    assert l4_checksum(SRC4, DST4, 17, segment) == value
    assert cks.fold(pseudo_header_sum(SRC4, DST4, 17, 13)) == reference_sum(SRC4 + DST4 + b"\0\x11\0\x0d")


# --------------------------------------------------------------------------- headers


def test_virtio_hdr_codec() -> None:
    hdr = VirtioNetHdr(VirtioFlag.NEEDS_CSUM, GsoType.TCPV4, 52, 1448, 20, 16)
    raw = hdr.serialize()
    assert len(raw) == 10
    # Native byte order; on x86-64 (little endian) this is what the kernel writes.
    if struct.pack("=H", 1) == b"\x01\x00":
        assert raw == bytes.fromhex("01013400a80514001000")
    assert VirtioNetHdr.parse(raw) == hdr
    assert VirtioNetHdr.parse(raw + b"rest") == hdr
    assert VirtioNetHdr().serialize() == bytes(10)
    with pytest.raises(ValueError):
        VirtioNetHdr.parse(b"\0" * 9)


@given(st.tuples(*[st.integers(0, 255)] * 2, *[st.integers(0, 65535)] * 4))
def test_virtio_hdr_round_trip(fields: tuple[int, ...]) -> None:
    hdr = VirtioNetHdr(*fields)
    assert VirtioNetHdr.parse(hdr.serialize()) == hdr


def test_parse_ip_header() -> None:
    h4 = parse_ip_header(tcp(b"x" * 10))
    assert (h4.version, h4.header_len, h4.total_len, h4.protocol, h4.src, h4.dst) == (
        4,
        20,
        50,
        6,
        SRC4,
        DST4,
    )
    h6 = parse_ip_header(udp(b"y", version=6))
    assert (h6.version, h6.header_len, h6.total_len, h6.protocol, h6.src, h6.dst) == (
        6,
        40,
        49,
        17,
        SRC6,
        DST6,
    )
    for bad in (b"", b"\x45" + b"\0" * 10, b"\x60" + b"\0" * 20, b"\x50" * 40, b"\x44" + b"\0" * 30):
        with pytest.raises(PacketError):
            parse_ip_header(bad)


# --------------------------------------------------------------------------- GSO split


def check_segments(segments: list[bytes], data: bytes, mss: int, version: int, seq: int) -> None:
    ihl = 20 if version == 4 else 40
    assert len(segments) == (len(data) + mss - 1) // mss
    got = b""
    for i, seg in enumerate(segments):
        assert l4_ok(seg)
        if version == 4:
            assert ip_header_ok(seg)
            assert struct.unpack("!H", seg[2:4])[0] == len(seg)
            assert struct.unpack("!H", seg[4:6])[0] == (0x1234 + i) & 0xFFFF
        else:
            assert struct.unpack("!H", seg[4:6])[0] + 40 == len(seg)
        thl = (seg[ihl + 12] >> 4) * 4
        assert struct.unpack("!I", seg[ihl + 4 : ihl + 8])[0] == (seq + i * mss) & 0xFFFFFFFF
        got += seg[ihl + thl :]
    assert got == data


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("vectorized", [False, True])
def test_split_tcp_super_packet(version: int, vectorized: bool) -> None:
    data = os.urandom(60000)
    segments = tcp_segments(data, 1448, version=version, last_flags=TCP_ACK | TCP_PSH | TCP_FIN)
    hdr, packet = kernel_super_packet(segments, 1448, version)
    out = gso_split(hdr, packet, vectorized=vectorized)
    check_segments(out, data, 1448, version, 1000)
    assert out == segments
    ihl = 20 if version == 4 else 40
    assert all(s[ihl + 13] == TCP_ACK for s in out[:-1])
    assert out[-1][ihl + 13] == TCP_ACK | TCP_PSH | TCP_FIN


def test_split_trusts_csum_start_not_hdr_len() -> None:
    segments = tcp_segments(os.urandom(5000), 1000, options=b"\x01\x01\x08\x0a" + bytes(8))
    hdr, packet = kernel_super_packet(segments, 1000, 4)
    assert gso_split(hdr._replace(hdr_len=0), packet) == segments
    assert gso_split(hdr._replace(hdr_len=999), packet) == segments


def test_split_sequence_wraps() -> None:
    data = os.urandom(4000)
    segments = tcp_segments(data, 1000, seq=0xFFFFFE00)
    hdr, packet = kernel_super_packet(segments, 1000, 4)
    out = gso_split(hdr, packet)
    check_segments(out, data, 1000, 4, 0xFFFFFE00)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("vectorized", [False, True])
def test_split_udp_l4(version: int, vectorized: bool) -> None:
    datagrams = [udp(os.urandom(1200), version=version, ident=0x1234 + i) for i in range(5)]
    datagrams.append(udp(os.urandom(7), version=version, ident=0x1239))
    hdr, packet = gro_coalesce(datagrams, udp=True)[0]
    assert hdr.gso_type == GsoType.UDP_L4 and hdr.gso_size == 1200 and hdr.csum_offset == 6
    assert len(packet) == (20 if version == 4 else 40) + 8 + 5 * 1200 + 7
    assert gso_split(hdr, packet, vectorized=vectorized) == datagrams
    assert all(l4_ok(d) for d in datagrams)


def test_gso_none_needs_csum_is_completed() -> None:
    for packet, offset in (
        (tcp(os.urandom(333)), 16),
        (udp(os.urandom(100)), 6),
        (tcp(b"z" * 9, version=6), 16),
    ):
        ihl = 20 if packet[0] >> 4 == 4 else 40
        partial = bytearray(packet)
        hdr_info = parse_ip_header(packet)
        pseudo = reference_sum(
            hdr_info.src + hdr_info.dst + struct.pack("!HH", hdr_info.protocol, len(packet) - ihl)
        )
        partial[ihl + offset : ihl + offset + 2] = struct.pack("!H", pseudo)
        hdr = VirtioNetHdr(VirtioFlag.NEEDS_CSUM, GsoType.NONE, 0, 0, ihl, offset)
        assert gso_split(hdr, bytes(partial)) == [packet]
    plain = tcp(b"abc")
    assert gso_split(VirtioNetHdr(), plain) == [plain]


def test_udp_zero_checksum_becomes_all_ones() -> None:
    # Find a payload whose UDP checksum computes to 0: it must be sent as 0xFFFF (RFC 768).
    base = udp(b"\0\0")
    segment = bytearray(base[20:])
    segment[6:8] = b"\0\0"
    want = reference_sum(SRC4 + DST4 + b"\0\x11\0\x0a" + bytes(segment))
    payload = struct.pack("!H", 0xFFFF - want)  # makes the total sum 0xFFFF, checksum 0
    packet = bytearray(udp(payload))
    ihl = 20
    pseudo = reference_sum(SRC4 + DST4 + b"\0\x11\0\x0a")
    packet[ihl + 6 : ihl + 8] = struct.pack("!H", pseudo)
    out = gso_split(VirtioNetHdr(VirtioFlag.NEEDS_CSUM, 0, 0, 0, ihl, 6), bytes(packet))[0]
    assert out[ihl + 6 : ihl + 8] == b"\xff\xff"
    assert l4_ok(out)


@pytest.mark.parametrize("vectorized", [False, True])
def test_split_udp_segment_with_zero_checksum_sends_all_ones(vectorized: bool) -> None:
    # A 2-octet payload chosen so that the UDP checksum computes to 0 (sent as 0xFFFF, RFC 768).
    segment = struct.pack("!HHHH", 4500, 4500, 10, 0)
    want = reference_sum(SRC4 + DST4 + b"\0\x11\0\x0a" + segment)
    datagram = udp(struct.pack("!H", 0xFFFF - want))
    assert datagram[26:28] == b"\xff\xff"
    hdr, packet = gro_coalesce([datagram, datagram], udp=True)[0]
    out = gso_split(hdr, packet, vectorized=vectorized)
    assert [d[20:] for d in out] == [datagram[20:]] * 2
    assert all(l4_ok(d) and ip_header_ok(d) for d in out)


@pytest.mark.parametrize(
    "hdr, packet",
    [
        (VirtioNetHdr(0, GsoType.TCPV4 | 0x80, 0, 1000, 20, 16), tcp(b"x" * 3000)),
        (VirtioNetHdr(0, GsoType.UDP, 0, 1000, 20, 6), udp(b"x" * 3000)),
        (VirtioNetHdr(0, 9, 0, 1000, 20, 16), tcp(b"x" * 3000)),
        (VirtioNetHdr(0, GsoType.TCPV4, 0, 1000, 24, 16), tcp(b"x" * 3000)),
        (VirtioNetHdr(0, GsoType.TCPV4, 0, 0, 20, 16), tcp(b"x" * 3000)),
        (VirtioNetHdr(0, GsoType.TCPV6, 0, 1000, 40, 16), tcp(b"x" * 3000)),
        (VirtioNetHdr(0, GsoType.TCPV4, 0, 1000, 20, 16), tcp(b"")),
        (VirtioNetHdr(0, GsoType.TCPV4, 0, 1000, 20, 16), tcp(b"x" * 3000)[:30]),
        (VirtioNetHdr(1, GsoType.NONE, 0, 0, 20, 16), tcp(b"")[:30]),
        (VirtioNetHdr(0, GsoType.TCPV4, 0, 1000, 20, 16), b""),
    ],
)
def test_split_rejects(hdr: VirtioNetHdr, packet: bytes) -> None:
    with pytest.raises(PacketError):
        gso_split(hdr, packet)


# --------------------------------------------------------------------------- GRO coalesce


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_then_split_round_trips(version: int) -> None:
    data = os.urandom(30000)
    segments = tcp_segments(data, 1448, version=version)
    [(hdr, packet)] = gro_coalesce(segments)
    ihl = 20 if version == 4 else 40
    gso = GsoType.TCPV4 if version == 4 else GsoType.TCPV6
    assert hdr == VirtioNetHdr(VirtioFlag.NEEDS_CSUM, gso, ihl + 20, 1448, ihl, 16)
    assert (hdr, packet) == kernel_super_packet(segments, 1448, version)
    assert packet[ihl + 13] == TCP_ACK | TCP_PSH  # PSH of the last segment kept
    if version == 4:
        assert ip_header_ok(packet)
    assert gso_split(hdr, packet) == segments


def test_coalesce_leaves_singles_and_non_candidates_alone() -> None:
    zero = VirtioNetHdr()
    lone = tcp(b"x" * 100)
    syn = tcp(b"", flags=TCP_SYN)
    pure_ack = tcp(b"")
    icmp = ipv4(1, b"\x08\x00" + bytes(30))
    junk = b"\x00\x01\x02"
    out = gro_coalesce([lone, syn, pure_ack, icmp, junk, udp(b"a" * 10), udp(b"b" * 10)])
    assert out == [(zero, p) for p in (lone, syn, pure_ack, icmp, junk, udp(b"a" * 10), udp(b"b" * 10))]


def test_coalesce_conditions() -> None:
    seg = tcp_segments(os.urandom(1000 * 6), 1000, last_flags=TCP_ACK)
    assert groups(gro_coalesce(seg)) == [6]
    # A gap in sequence numbers starts a new super-packet.
    assert groups(gro_coalesce(seg[:2] + seg[3:])) == [2, 3]
    # PSH ends a super-packet after the segment carrying it.
    psh = tcp(seg[2][40:], seq=3000, ident=0x1236, flags=TCP_ACK | TCP_PSH)
    assert groups(gro_coalesce([*seg[:2], psh, *seg[3:]])) == [3, 3]
    # A shorter segment ends it too; a longer one starts a new one.
    short = tcp(b"s" * 10, seq=4000)
    assert groups(gro_coalesce([*seg[:3], short, tcp(b"t" * 10, seq=4010)])) == [4, 1]
    long = tcp(b"l" * 1200, seq=4000)
    assert groups(gro_coalesce([*seg[:3], long])) == [3, 1]
    # A different ack number, TTL or options: not the same headers.
    other_ack = tcp(seg[1][40:], seq=2000, ack=5001)
    assert groups(gro_coalesce([seg[0], other_ack])) == [1, 1]
    ttl = bytearray(seg[1])
    ttl[8] = 63
    assert groups(gro_coalesce([seg[0], bytes(ttl)])) == [1, 1]
    opt = tcp_segments(os.urandom(2000), 1000, options=b"\x01\x01\x01\x01", last_flags=TCP_ACK)
    assert groups(gro_coalesce([seg[0], opt[1]])) == [1, 1]
    # FIN/SYN/RST are never merged and close the flow's super-packet before them.
    fin = tcp(seg[2][40:], seq=3000, flags=TCP_ACK | TCP_FIN)
    assert groups(gro_coalesce([*seg[:2], fin, *seg[3:]])) == [2, 1, 3]
    # The IP total length is bounded.
    many = tcp_segments(os.urandom(1400 * 60), 1400, last_flags=TCP_ACK)
    out = gro_coalesce(many)
    assert groups(out) == [46, 14]
    assert all(len(p) <= 65535 for _, p in out)
    assert b"".join(s for h, p in out for s in gso_split(h, p)) == b"".join(many)


def test_coalesce_ipv4_options_and_fragments_are_not_candidates() -> None:
    seg = tcp_segments(os.urandom(3000), 1000, last_flags=TCP_ACK)
    with_options = [bytearray(s) for s in seg]
    for s in with_options:
        s[0] = 0x46  # claims 24 octets of header: not a candidate
    assert groups(gro_coalesce([bytes(s) for s in with_options])) == [1, 1, 1]
    more_fragments = [bytearray(s) for s in seg]
    for s in more_fragments:
        s[6] |= 0x20
    assert groups(gro_coalesce([bytes(s) for s in more_fragments])) == [1, 1, 1]
    truncated = [s[:-1] for s in seg]  # IP length no longer matches the buffer
    assert groups(gro_coalesce(truncated)) == [1, 1, 1]


def test_coalesce_interleaved_flows() -> None:
    a = tcp_segments(os.urandom(4000), 1000, sport=1111, last_flags=TCP_ACK)
    b = tcp_segments(os.urandom(4000), 1000, sport=2222, last_flags=TCP_ACK)
    interleaved = [p for pair in zip(a, b) for p in pair]
    out = gro_coalesce(interleaved)
    assert groups(out) == [4, 4]
    assert gso_split(*out[0]) == a
    assert gso_split(*out[1]) == b


def test_coalesce_udp_only_when_asked() -> None:
    datagrams = [udp(os.urandom(1000), ident=0x1234 + i) for i in range(70)]
    assert groups(gro_coalesce(datagrams)) == [1] * 70
    out = gro_coalesce(datagrams, udp=True)
    assert groups(out) == [64, 6]
    assert [s for h, p in out for s in gso_split(h, p)] == datagrams


# --------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 66000 - 100),
    st.integers(1, 9000),
    st.sampled_from([4, 6]),
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
    st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)
def test_tcp_split_coalesce_properties(
    length: int, mss: int, version: int, seq: int, vectorized: bool, options: bytes
) -> None:
    hl = (20 if version == 4 else 40) + 20 + len(options)
    length = min(length, 65535 - hl)
    mss = min(mss, length) if length > 1 else 1
    data = os.urandom(length)
    segments = tcp_segments(data, mss, version=version, seq=seq, options=options)
    hdr, packet = kernel_super_packet(segments, mss, version)
    if len(segments) == 1:
        hdr = VirtioNetHdr()
        packet = segments[0]
    out = gso_split(hdr, packet, vectorized=vectorized)
    check_segments(out, data, mss, version, seq)
    assert out == segments
    coalesced = gro_coalesce(out)
    assert len(coalesced) == 1
    assert [s for h, p in coalesced for s in gso_split(h, p)] == segments


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 1500), min_size=1, max_size=80), st.sampled_from([4, 6]), st.booleans())
def test_udp_coalesce_properties(sizes: list[int], version: int, vectorized: bool) -> None:
    datagrams = [
        udp(os.urandom(n), version=version, ident=(0x1234 + i) & 0xFFFF) for i, n in enumerate(sizes)
    ]
    out = gro_coalesce(datagrams, udp=True)
    split = [s for h, p in out for s in gso_split(h, p, vectorized=vectorized)]
    assert split == datagrams  # IPv4 IDs count up within each super-packet, as they did
    assert all(l4_ok(s) for s in split)
    for h, p in out:
        if h.gso_type:
            assert len(p) <= 65535


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["checksum", "virtio", "packets", "utun_framing"])
def test_pure_modules_have_no_io_imports(module: str) -> None:
    path = Path(cks.__file__).parent / f"{module}.py"
    assert forbidden_imports(path.read_text(), str(path)) == []
