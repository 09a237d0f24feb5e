"""Pure packet logic of the TUN data path: IP headers, GSO split and GRO coalesce.

No I/O here; ``tun_linux`` does the reads and writes. The behaviour follows the Linux TUN
offload contract as wireguard-go uses it (``shared/reference/batched-io.md``):

* :func:`gso_split` turns what one ``read()`` of a TUN with TSO/USO returned (a virtio_net_hdr
  and a "super-packet" up to 64 KiB) into ordinary packets of at most ``gso_size`` payload
  octets each, with complete checksums.
* :func:`gro_coalesce` does the reverse for a batch about to be written: consecutive segments of
  one TCP flow (and, if asked, equal-size UDP datagrams of one flow) become one super-packet
  with ``NEEDS_CSUM`` and the pseudo-header sum in the checksum field (CHECKSUM_PARTIAL in the
  kernel), so the kernel's TCP stack takes the whole batch in one write.

Checksums and the virtio_net_hdr codec live in :mod:`.checksum` and :mod:`.virtio`; their
public names are re-exported here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple, final

from .checksum import (
    HAVE_NUMPY,
    checksum,
    fold,
    l4_checksum,
    ones_sum,
    partial_sum,
    pseudo_header_sum,
    segment_sums,
)
from .virtio import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_OFFLOAD_HDR,
    VIRTIO_NET_HDR_LEN,
    GsoType,
    VirtioFlag,
    VirtioNetHdr,
)

__all__ = [
    "HAVE_NUMPY",
    "checksum",
    "fold",
    "l4_checksum",
    "ones_sum",
    "partial_sum",
    "pseudo_header_sum",
    "segment_sums",
    "GsoType",
    "VirtioFlag",
    "VirtioNetHdr",
    "VIRTIO_NET_HDR_LEN",
    "NO_OFFLOAD_HDR",
    "PacketError",
    "IPHeader",
    "ip_version",
    "parse_ip_header",
    "complete_checksum",
    "gso_split",
    "gro_coalesce",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "TCP_FIN",
    "TCP_SYN",
    "TCP_RST",
    "TCP_PSH",
    "TCP_ACK",
    "MAX_IP_PACKET",
    "UDP_MAX_SEGMENTS",
]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
TCP_MIN_HEADER = 20
UDP_HEADER = 8
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

MAX_IP_PACKET = 65535
"""Largest super-packet :func:`gro_coalesce` builds (the IPv4 total length field)."""
UDP_MAX_SEGMENTS = 64
"""Most datagrams in one UDP GSO super-packet (include/linux/udp.h UDP_MAX_SEGMENTS)."""

# Fields gro_coalesce reads, in one unpack each ("x" skips what it does not need):
# IPv4+TCP: TOS, total length, flags/fragment offset, TTL | seq, ack, data offset, flags.
_TCP4 = struct.Struct("!xBH2xHB11x4xIIBB")
# IPv4+UDP: TOS, total length, flags/fragment offset, TTL | UDP length.
_UDP4 = struct.Struct("!xBH2xHB11x4xH")
# IPv6+TCP: version/class/flow label, payload length, hop limit | seq, ack, data offset, flags.
_TCP6 = struct.Struct("!IHxB32x4xIIBB")
# IPv6+UDP: version/class/flow label, payload length, hop limit | UDP length.
_UDP6 = struct.Struct("!IHxB32x4xH")
# IPv4 (no options) + TCP, gro_coalesce's fast path: TOS, total length, flags/fragment offset/TTL/
# protocol as one word | addresses and ports as one key | seq, ack, data offset, flags.
_FAST4 = struct.Struct("!xBH2xI2x12sIIBB")
_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_I = struct.Struct(">I")


class PacketError(ValueError):
    """A packet (or a virtio header with it) that cannot be processed; drop it and count."""


# --------------------------------------------------------------------------- IP headers


class IPHeader(NamedTuple):
    """The fields of an IPv4 or IPv6 header the data path looks at."""

    version: int
    """4 or 6."""
    header_len: int
    """Octets before the next header: IHL*4 for IPv4, 40 for IPv6 (extension headers not walked)."""
    total_len: int
    """IPv4 total length, or 40 + IPv6 payload length."""
    protocol: int
    """IPv4 protocol, or the IPv6 Next Header of the fixed header."""
    src: bytes
    """Source address, 4 or 16 octets."""
    dst: bytes
    """Destination address, 4 or 16 octets."""


def ip_version(packet: bytes | bytearray | memoryview) -> int:
    """The IP version nibble (0 for an empty packet)."""
    return packet[0] >> 4 if len(packet) else 0


def parse_ip_header(packet: bytes | bytearray | memoryview) -> IPHeader:
    """Decode the IPv4 (RFC 791) or IPv6 (RFC 8200) header; PacketError if it is not one."""
    n = len(packet)
    version = ip_version(packet)
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < IPV4_MIN_HEADER or n < ihl:
            raise PacketError(f"IPv4 header length {ihl} with {n} octets")
        return IPHeader(
            4, ihl, _H.unpack_from(packet, 2)[0], packet[9], bytes(packet[12:16]), bytes(packet[16:20])
        )
    if version == 6:
        if n < IPV6_HEADER:
            raise PacketError(f"IPv6 packet of {n} octets")
        return IPHeader(
            6,
            IPV6_HEADER,
            IPV6_HEADER + _H.unpack_from(packet, 4)[0],
            packet[6],
            bytes(packet[8:24]),
            bytes(packet[24:40]),
        )
    raise PacketError(f"IP version {version}")


# --------------------------------------------------------------------------- GSO split


def complete_checksum(packet: bytes | bytearray | memoryview, csum_start: int, csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet (NEEDS_CSUM): the field already holds the pseudo-header sum."""
    at = csum_start + csum_offset
    if csum_start < IPV4_MIN_HEADER or at + 2 > len(packet):
        raise PacketError(f"checksum at {csum_start}+{csum_offset} outside a {len(packet)}-octet packet")
    value = checksum(memoryview(packet)[csum_start:])
    if value == 0 and csum_offset == UDP_CSUM_OFFSET:
        value = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    out = bytearray(packet)
    _H.pack_into(out, at, value)
    return bytes(out)


def gso_split(
    hdr: VirtioNetHdr, packet: bytes | bytearray | memoryview, *, vectorized: bool | None = None
) -> list[bytes]:
    """The ordinary packets in what one read of a TUN with offloads returned.

    ``packet`` is the data after the 10-octet header. GSO_NONE comes back as one packet (its
    checksum completed if NEEDS_CSUM); TCPV4/TCPV6 and UDP_L4 super-packets are cut into
    ``gso_size`` payloads with fixed IP lengths, IPv4 IDs and checksums, TCP sequence numbers
    (FIN and PSH only on the last) or UDP lengths, and recomputed L4 checksums. ``hdr_len`` is
    not trusted (the kernel does not check it): the headers end at ``csum_start`` plus the
    TCP data offset or plus 8 for UDP. ``vectorized`` picks numpy for the payload sums (see
    :func:`segment_sums`). PacketError for anything malformed or not offered by us (UFO, ECN).
    """
    gso_type = hdr.gso_type
    if gso_type == GSO_NONE:
        if hdr.flags & F_NEEDS_CSUM:
            return [complete_checksum(packet, hdr.csum_start, hdr.csum_offset)]
        return [bytes(packet)]
    if gso_type & GSO_ECN:
        raise PacketError("GSO with ECN, but TUN_F_TSO_ECN was never requested")
    if gso_type == GSO_TCPV4:
        return _split(hdr, packet, 4, IPPROTO_TCP, vectorized)
    if gso_type == GSO_TCPV6:
        return _split(hdr, packet, 6, IPPROTO_TCP, vectorized)
    if gso_type == GSO_UDP_L4:
        return _split(hdr, packet, ip_version(packet), IPPROTO_UDP, vectorized)
    raise PacketError(f"unsupported gso_type {gso_type}")


def _split(
    hdr: VirtioNetHdr,
    packet: bytes | bytearray | memoryview,
    version: int,
    protocol: int,
    vectorized: bool | None,
) -> list[bytes]:
    n = len(packet)
    iphl = hdr.csum_start
    gso_size = hdr.gso_size
    if not n or packet[0] >> 4 != version:
        raise PacketError(f"gso_type {hdr.gso_type} on an IP version {ip_version(packet)} packet")
    if version == 4:
        if iphl != (packet[0] & 0x0F) * 4 or iphl < IPV4_MIN_HEADER:
            raise PacketError(f"csum_start {iphl} is not the IPv4 header length")
        addr_sum = int.from_bytes(packet[12:20], "big")
    elif version == 6:
        if iphl < IPV6_HEADER:
            raise PacketError(f"csum_start {iphl} inside the IPv6 header")
        addr_sum = int.from_bytes(packet[8:40], "big")
    else:
        raise PacketError(f"IP version {version}")
    if protocol == IPPROTO_TCP:
        if n < iphl + TCP_MIN_HEADER:
            raise PacketError("super-packet shorter than its TCP header")
        l4hl = (packet[iphl + 12] >> 4) * 4
        if l4hl < TCP_MIN_HEADER:
            raise PacketError(f"TCP data offset {l4hl}")
    else:
        l4hl = UDP_HEADER
    hl = iphl + l4hl
    if gso_size == 0 or n <= hl:
        raise PacketError(f"GSO packet of {n} octets, headers {hl}, gso_size {gso_size}")
    count = (n - hl + gso_size - 1) // gso_size

    ip = bytearray(packet[:iphl])
    l4 = bytearray(packet[iphl:hl])
    view = memoryview(packet)
    pseudo = addr_sum + protocol
    if version == 4:
        ip_id = _H.unpack_from(ip, 4)[0]
        ip[2:6] = b"\0\0\0\0"  # total length and ID: added per segment below
        ip[10:12] = b"\0\0"
        ip_static = partial_sum(ip)
    if protocol == IPPROTO_TCP:
        seq = _I.unpack_from(l4, 4)[0]
        flags = l4[13]
        l4[4:8] = b"\0\0\0\0"  # sequence number: added per segment
        l4[13] = 0  # flags: added per segment
        l4[16:18] = b"\0\0"
        l4_static = partial_sum(l4) + pseudo
        middle_flags = flags & ~(TCP_FIN | TCP_PSH)
    else:
        l4[4:8] = b"\0\0\0\0"  # length and checksum
        l4_static = partial_sum(l4) + pseudo

    sums = segment_sums(packet, hl, gso_size, count, vectorized=vectorized)
    l4_static %= 0xFFFF  # small ints keep the per-segment "% 0xFFFF" cheap
    if version == 4:
        ip_static %= 0xFFFF

    out: list[bytes] = []
    append = out.append
    last = count - 1
    start = hl
    # fold() is inlined below: these sums are never of all-zero data, so "r or 0xFFFF" is the fold.
    for i in range(count):
        end = start + gso_size if i != last else n
        l4_len = l4hl + end - start
        if version == 4:
            total = iphl + l4_len
            seg_id = (ip_id + i) & 0xFFFF
            _HH.pack_into(ip, 2, total, seg_id)
            _H.pack_into(ip, 10, ((ip_static + total + seg_id) % 0xFFFF or 0xFFFF) ^ 0xFFFF)
        else:
            _H.pack_into(ip, 4, iphl - IPV6_HEADER + l4_len)
        if protocol == IPPROTO_TCP:
            seg_seq = (seq + i * gso_size) & 0xFFFFFFFF
            seg_flags = flags if i == last else middle_flags
            _I.pack_into(l4, 4, seg_seq)
            l4[13] = seg_flags
            total_sum = l4_static + l4_len + (seg_seq >> 16) + (seg_seq & 0xFFFF) + seg_flags + sums[i]
            _H.pack_into(l4, 16, (total_sum % 0xFFFF or 0xFFFF) ^ 0xFFFF)
        else:
            _H.pack_into(l4, 4, l4_len)
            # ~fold(x) is 0xFFFF - x % 0xFFFF, except 0 for x = 0 (mod 0xFFFF); UDP sends that 0 as 0xFFFF.
            _H.pack_into(l4, 6, 0xFFFF - (l4_static + l4_len + l4_len + sums[i]) % 0xFFFF)
        append(b"".join((ip, l4, view[start:end])))
        start = end
    return out


# --------------------------------------------------------------------------- GRO coalesce


_SEQ_SHIFT = {hl: (hl - 28) * 8 for hl in range(40, 81, 4)}
"""Where the TCP sequence number sits in an IPv4 (no options) + TCP header of ``hl`` octets read as an int."""
_RUN_MASKS: dict[int, int] = {}


def _run_mask(hl: int) -> int:
    """The bits of an IPv4 + TCP header of ``hl`` octets (read as a big-endian int) that every
    segment of one coalesced run shares, the sequence number included (it advances by a known
    step): all but the IPv4 ID and checksum and the TCP window, checksum and urgent pointer."""
    mask = _RUN_MASKS.get(hl)
    if mask is None:
        template = bytearray(b"\xff" * hl)
        for start, stop in ((4, 6), (10, 12), (34, 40)):
            template[start:stop] = bytes(stop - start)
        mask = _RUN_MASKS[hl] = int.from_bytes(template, "big")
    return mask


@final
class _Flow:
    """Segments gathered for one super-packet (internal to gro_coalesce)."""

    __slots__ = ("gso_size", "headers", "length", "next_seq", "packets", "protocol", "psh", "signature")

    def __init__(
        self,
        packet: bytes | bytearray | memoryview,
        protocol: int,
        headers: int,
        size: int,
        next_seq: int,
        signature: object,
    ):
        self.packets = [packet]
        self.protocol = protocol
        self.headers = headers  # IP + L4 header octets
        self.gso_size = size
        self.length = size  # payload octets so far
        self.next_seq = next_seq
        self.signature = signature
        self.psh = 0


def gro_coalesce(
    packets: Sequence[bytes | bytearray | memoryview],
    *,
    udp: bool = False,
    max_packet: int = MAX_IP_PACKET,
) -> list[tuple[VirtioNetHdr, bytes | bytearray | memoryview]]:
    """Merge same-flow segments of a batch into super-packets for one TUN write each.

    A TCP segment is a candidate if it is IPv4 without options and not a fragment, or IPv6
    whose fixed header's Next Header is TCP; its lengths agree with the buffer; its flags are
    ACK or ACK|PSH; and it carries payload. It joins the open super-packet of its flow
    (addresses and ports) if the headers are compatible (IPv4 TOS, DF and TTL, or IPv6
    traffic class, flow label and hop limit; TCP ack number, data offset and options all
    equal), its sequence number follows, its payload is no larger than the first one's and
    the result stays within ``max_packet`` octets. A payload shorter than the first's, or PSH,
    closes the super-packet after it; any other packet of the flow closes it before it.
    With ``udp`` (only if the TUN accepted USO) UDP datagrams of one flow with the same IP
    header fields merge the same way, up to 64.

    Super-packets of two or more segments get a header with NEEDS_CSUM, GSO_TCPV4/TCPV6 or
    GSO_UDP_L4, ``gso_size`` = the first payload length, ``csum_start`` = the IP header length,
    and the folded pseudo-header sum in the L4 checksum field. Everything else is returned
    unchanged with an all-zero header. Packets of one flow keep their order; packets of
    different flows may be reordered relative to each other.
    """
    order: list[_Flow | tuple[VirtioNetHdr, bytes | bytearray | memoryview]] = []
    add = order.append
    open_flows: dict[bytes, _Flow] = {}
    get_flow = open_flows.get
    single = NO_OFFLOAD_HDR
    unpack4 = _FAST4.unpack_from
    from_bytes = int.from_bytes
    count = len(packets)
    index = -1
    while index + 1 < count:
        index += 1
        packet = packets[index]
        n = len(packet)
        first = packet[0] if n else 0
        # Fast path: IPv4 without options carrying TCP, the bulk of a tunnel's traffic.
        if first == 0x45 and n >= IPV4_MIN_HEADER + TCP_MIN_HEADER and packet[9] == IPPROTO_TCP:
            tos, total, frag_ttl, key, seq, ack, offset, flags = unpack4(packet)
            hl = IPV4_MIN_HEADER + ((offset >> 4) << 2)
            size = n - hl
            # Lengths agree, DF is the only IP flag, a real TCP header, payload, ACK or ACK|PSH.
            if total != n or frag_ttl & 0xBFFF0000 or offset < 0x50 or size <= 0 or flags & 0xF7 != TCP_ACK:
                open_flows.pop(key, None)  # keeps the flow's order: nothing later joins an earlier packet
                add((single, packet))
                continue
            signature: tuple[object, ...] = (ack, frag_ttl, tos, offset, packet[40:hl] if hl > 40 else b"")
            flow = get_flow(key)
            if (
                flow is not None
                and flow.next_seq == seq
                and size <= flow.gso_size
                and flow.signature == signature
                and hl + flow.length + size <= max_packet
            ):
                flow.packets.append(packet)
                flow.length += size
                if size < flow.gso_size or flags & TCP_PSH:
                    flow.psh = flags & TCP_PSH
                    del open_flows[key]
                else:
                    flow.next_seq = (seq + size) & 0xFFFFFFFF
                continue
            flow = _Flow(packet, IPPROTO_TCP, hl, size, (seq + size) & 0xFFFFFFFF, signature)
            add(flow)
            if flags & TCP_PSH:
                open_flows.pop(key, None)
                continue
            open_flows[key] = flow
            # The packets right behind it are, in a bulk transfer, full-size segments of the same
            # flow: take them with one masked compare of their headers each.
            end = index + (max_packet - hl) // size
            if end > count:
                end = count
            if index + 1 >= end:
                continue
            mask = _run_mask(hl)
            step = size << _SEQ_SHIFT[hl]
            if seq + size * (end - index) > 0xFFFFFFFF:
                continue  # the sequence number wraps in this run: the general path handles it
            expect = (from_bytes(packet[:hl]) & mask) + step
            taken = flow.packets
            after = index + 1
            while after < end:
                nxt = packets[after]
                if len(nxt) != n or from_bytes(nxt[:hl]) & mask != expect:
                    break
                taken.append(nxt)
                expect += step
                after += 1
            joined = after - index - 1
            if joined:
                flow.length += joined * size
                flow.next_seq = (seq + (joined + 1) * size) & 0xFFFFFFFF
                index = after - 1
            continue
        # One struct call per packet pulls every field the decision needs (see the _TCP*/_UDP* layouts).
        if first == 0x45 and n >= IPV4_MIN_HEADER + UDP_HEADER:
            iphl = IPV4_MIN_HEADER
            protocol = packet[9]
            if protocol == IPPROTO_UDP:
                tos, total, frag, ttl, udp_len = _UDP4.unpack_from(packet)
            else:
                add((single, packet))
                continue
            # DF is the only flag allowed: no MF, no fragment offset, no reserved bit.
            ok = total == n and not frag & 0xBFFF
            ip_fields: tuple[int, ...] = (tos, frag, ttl)
            key = packet[12:24]  # addresses and ports
            if key.__class__ is not bytes:
                key = bytes(key)
        elif first >> 4 == 6 and n >= IPV6_HEADER + UDP_HEADER:
            iphl = IPV6_HEADER
            protocol = packet[6]
            if protocol == IPPROTO_TCP and n >= IPV6_HEADER + TCP_MIN_HEADER:
                flow_word, total, hop, seq, ack, offset, flags = _TCP6.unpack_from(packet)
            elif protocol == IPPROTO_UDP:
                flow_word, total, hop, udp_len = _UDP6.unpack_from(packet)
            else:
                add((single, packet))
                continue
            ok = total + IPV6_HEADER == n
            ip_fields = (flow_word, hop)  # version, traffic class, flow label; hop limit
            key = bytes(packet[8:44])
        else:
            add((single, packet))
            continue

        if protocol == IPPROTO_TCP:
            l4hl = (offset >> 4) * 4
            hl = iphl + l4hl
            size = n - hl
            if not ok or l4hl < TCP_MIN_HEADER or size <= 0 or flags & ~TCP_PSH != TCP_ACK:
                open_flows.pop(key, None)  # keeps the flow's order: nothing later joins an earlier packet
                add((single, packet))
                continue
            signature = (ip_fields, ack, offset, bytes(packet[iphl + TCP_MIN_HEADER : hl]))
            flow = get_flow(key)
            if (
                flow is not None
                and flow.next_seq == seq
                and size <= flow.gso_size
                and flow.signature == signature
                and hl + flow.length + size <= max_packet
            ):
                flow.packets.append(packet)
                flow.length += size
                flow.next_seq = (seq + size) & 0xFFFFFFFF
                if size < flow.gso_size or flags & TCP_PSH:
                    flow.psh = flags & TCP_PSH
                    del open_flows[key]
                continue
            flow = _Flow(packet, IPPROTO_TCP, hl, size, (seq + size) & 0xFFFFFFFF, signature)
            add(flow)
            if flags & TCP_PSH:
                open_flows.pop(key, None)
            else:
                open_flows[key] = flow
        else:
            hl = iphl + UDP_HEADER
            size = n - hl
            if not udp or not ok or size <= 0 or udp_len != n - iphl:
                open_flows.pop(key, None)
                add((single, packet))
                continue
            flow = get_flow(key)
            if (
                flow is not None
                and size <= flow.gso_size
                and flow.signature == ip_fields
                and len(flow.packets) < UDP_MAX_SEGMENTS
                and hl + flow.length + size <= max_packet
            ):
                flow.packets.append(packet)
                flow.length += size
                if size < flow.gso_size:
                    del open_flows[key]
                continue
            flow = _Flow(packet, IPPROTO_UDP, hl, size, 0, ip_fields)
            add(flow)
            open_flows[key] = flow
    return [_build(item) if type(item) is _Flow else item for item in order]  # _Flow is final: narrows


def _build(flow: _Flow) -> tuple[VirtioNetHdr, bytes | bytearray | memoryview]:
    """One super-packet (or the lone packet) of a gathered flow."""
    first = flow.packets[0]
    if len(flow.packets) == 1:
        return NO_OFFLOAD_HDR, first
    hl = flow.headers
    total = hl + flow.length
    ip_header = bytearray(first[:hl])
    if first[0] >> 4 == 4:
        iphl = IPV4_MIN_HEADER
        _H.pack_into(ip_header, 2, total)
        ip_header[10:12] = b"\0\0"
        _H.pack_into(ip_header, 10, checksum(memoryview(ip_header)[:iphl]))
        addr_sum = int.from_bytes(first[12:20], "big")
        gso_type = GSO_TCPV4 if flow.protocol == IPPROTO_TCP else GSO_UDP_L4
    else:
        iphl = IPV6_HEADER
        _H.pack_into(ip_header, 4, total - IPV6_HEADER)
        addr_sum = int.from_bytes(first[8:40], "big")
        gso_type = GSO_TCPV6 if flow.protocol == IPPROTO_TCP else GSO_UDP_L4
    l4_len = total - iphl
    pseudo = fold(addr_sum + flow.protocol + l4_len)
    if flow.protocol == IPPROTO_TCP:
        ip_header[iphl + 13] |= flow.psh
        csum_offset = TCP_CSUM_OFFSET
    else:
        _H.pack_into(ip_header, iphl + 4, l4_len)  # the kernel trims a GSO skb to the UDP length
        csum_offset = UDP_CSUM_OFFSET
    _H.pack_into(ip_header, iphl + csum_offset, pseudo)
    parts: list[bytes | bytearray | memoryview] = [ip_header]
    parts += [p[hl:] for p in flow.packets]  # a bytes slice copies, yet costs less than a memoryview
    hdr = VirtioNetHdr(F_NEEDS_CSUM, gso_type, hl, flow.gso_size, iphl, csum_offset)
    return hdr, b"".join(parts)
