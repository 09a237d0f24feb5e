"""The storm sender's packets (tests/helpers/storm.py), checked without root: the IPv4/UDP
packets it writes through its raw socket carry a valid UDP checksum and, above the MTU, are
fragments the receiver reassembles into the datagram; later rounds through its pool get
fresh initiator cookies where a message has one."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

from tests.helpers.storm import NON_ESP_MARKER, _checksum, _fresh_cookie, spoofed_sources, udp_packets

SRC, DST = "10.66.0.7", "10.77.0.1"


def _reassemble(packets: list[bytes]) -> tuple[bytes, list[tuple[int, bool, int]]]:
    """The IP payload put back together, and (offset, more fragments, length) per packet."""
    pieces, shape = {}, []
    for packet in packets:
        version_ihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = struct.unpack(
            "!BBHHHBBH4s4s", packet[:20]
        )
        assert version_ihl == 0x45 and proto == socket.IPPROTO_UDP
        assert socket.inet_ntoa(src) == SRC and socket.inet_ntoa(dst) == DST
        assert total == len(packet) <= 1500
        offset, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        pieces[offset] = packet[20:]
        shape.append((offset, more, len(packet) - 20))
    data = b""
    for offset in sorted(pieces):
        assert offset == len(data), "a gap or an overlap between fragments"
        data += pieces[offset]
    return data, shape


def _udp_ok(udp: bytes) -> bool:
    pseudo = (
        socket.inet_aton(SRC) + socket.inet_aton(DST) + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
    )
    return _checksum(pseudo + udp) == 0


def test_a_small_datagram_is_one_packet_with_a_valid_checksum() -> None:
    payload = bytes(range(200))
    [packet] = udp_packets(SRC, DST, 500, 500, payload, ident=7)
    udp, shape = _reassemble([packet])
    assert shape == [(0, False, 208)]
    sport, dport, length, _ = struct.unpack("!HHHH", udp[:8])
    assert (sport, dport, length, udp[8:]) == (500, 500, 208, payload)
    assert _udp_ok(udp)
    assert not _udp_ok(udp[:-1] + bytes([udp[-1] ^ 1]))  # the checksum covers the payload


def test_a_large_datagram_is_fragmented_as_the_kernel_would() -> None:
    payload = random.Random(1).randbytes(4000)
    packets = udp_packets(SRC, DST, 4500, 4500, NON_ESP_MARKER + payload, ident=99)
    udp, shape = _reassemble(packets)
    assert [more for _, more, _ in shape] == [True, True, False]
    assert all(offset % 8 == 0 for offset, _, _ in shape)
    assert all(size % 8 == 0 for _, more, size in shape if more)
    assert udp[8:] == NON_ESP_MARKER + payload and _udp_ok(udp)
    assert {struct.unpack("!H", p[4:6])[0] for p in packets} == {99}  # one datagram, one IP id


def test_later_rounds_get_fresh_initiator_cookies_where_there_is_one() -> None:
    rng = random.Random(3)
    message = bytes(range(1, 9)) + bytes(8) + b"\x01\x10\x02\x00" + bytes(12)
    renewed = _fresh_cookie(message, 500, rng)
    assert renewed[:8] != message[:8] and renewed[8:] == message[8:]
    marked = _fresh_cookie(NON_ESP_MARKER + message, 4500, rng)
    assert marked[:4] == NON_ESP_MARKER and marked[4:12] != message[:8] and marked[12:] == message[8:]
    esp = b"\x12\x34\x56\x78" + message[4:]
    assert _fresh_cookie(esp, 4500, rng) == esp  # ESP-looking: no cookie to renew
    zero = bytes(8) + message[8:]
    assert _fresh_cookie(zero, 500, rng) == zero  # the mutator's all-zero cookie stays a lie
    assert _fresh_cookie(b"short", 500, rng) == b"short"


def test_spoofed_sources_are_distinct_addresses_of_the_range() -> None:
    sources = spoofed_sources(2000)
    assert len(set(sources)) == 2000
    net = ipaddress.ip_network("10.66.0.0/16")
    assert all(ipaddress.ip_address(a) in net for a in sources) and sources[0] == "10.66.0.1"
