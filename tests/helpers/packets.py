"""IPv4 and IPv6 packets with TCP and UDP built for the data path's tests, with checksums computed
by ``reference_sum``, a word-by-word RFC 1071 loop that shares no code with
tunvpn.dataplane.checksum."""

from __future__ import annotations

import struct

from tunvpn.dataplane.packets import TCP_ACK, TCP_PSH, VirtioNetHdr, gso_split

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd00123456789abcdef0a1b2c3d4e501")  # no zero octets: a misplaced write shows
DST6 = bytes.fromhex("fd00123456789abcdef0a1b2c3d4e502")


def reference_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, literally: 16-bit words, end-around carry, pad an odd octet."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    return ~reference_sum(data) & 0xFFFF


def ipv4(
    proto: int, l4: bytes, *, ident: int = 0x1234, ttl: int = 64, tos: int = 0, flags: int = 0x40
) -> bytes:
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(l4), ident, flags << 8, ttl, proto, 0, SRC4, DST4)
    )
    header[10:12] = struct.pack("!H", reference_checksum(bytes(header)))
    return bytes(header) + l4


def ipv6(proto: int, l4: bytes, *, hop: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, hop, SRC6, DST6) + l4


def tcp(
    payload: bytes,
    *,
    seq: int = 1000,
    ack: int = 5000,
    flags: int = TCP_ACK,
    options: bytes = b"",
    version: int = 4,
    ident: int = 0x1234,
    sport: int = 40000,
    dport: int = 5201,
) -> bytes:
    """A TCP segment in an IP packet with correct checksums."""
    doff = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65000, 0, 0) + options
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    segment = bytearray(header + payload)
    pseudo = src + dst + struct.pack("!HH", 6, len(segment))
    segment[16:18] = struct.pack("!H", reference_checksum(pseudo + bytes(segment)))
    return ipv4(6, bytes(segment), ident=ident) if version == 4 else ipv6(6, bytes(segment))


def udp(
    payload: bytes, *, version: int = 4, ident: int = 0x1234, sport: int = 4500, dport: int = 4500
) -> bytes:
    segment = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    pseudo = src + dst + struct.pack("!HH", 17, len(segment))
    value = reference_checksum(pseudo + bytes(segment)) or 0xFFFF
    segment[6:8] = struct.pack("!H", value)
    return ipv4(17, bytes(segment), ident=ident) if version == 4 else ipv6(17, bytes(segment))


def tcp_segments(
    data: bytes,
    mss: int,
    *,
    version: int = 4,
    seq: int = 1000,
    last_flags: int = TCP_ACK | TCP_PSH,
    **kw: object,
) -> list[bytes]:
    """``data`` cut the way a sender without TSO would: IDs and sequence numbers counting up."""
    chunks = [data[i : i + mss] for i in range(0, len(data), mss)]
    return [
        tcp(
            chunk,
            seq=(seq + i * mss) & 0xFFFFFFFF,
            ident=(0x1234 + i) & 0xFFFF,
            flags=last_flags if i == len(chunks) - 1 else TCP_ACK,
            version=version,
            **kw,  # type: ignore[arg-type]
        )
        for i, chunk in enumerate(chunks)
    ]


def groups(out: list[tuple[VirtioNetHdr, bytes]]) -> list[int]:
    """How many segments each written packet holds."""
    return [len(gso_split(h, p)) if h.gso_type else 1 for h, p in out]
