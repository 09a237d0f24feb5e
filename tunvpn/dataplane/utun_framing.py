"""Framing of packets on a macOS utun socket (pure, so it is tested on any platform).

Every packet read from or written to a utun control socket starts with a 4-octet protocol
family in network byte order (xnu ``bsd/net/if_utun.c``: ``utun_output`` prepends it,
``utun_ctl_send`` reads it). The values are Darwin's: ``AF_INET`` 2, ``AF_INET6`` 30 (not
Linux's 10), so they are spelled out here instead of taken from :mod:`socket`.
"""

from __future__ import annotations

import struct

from .packets import PacketError

DARWIN_AF_INET = 2
"""AF_INET in <sys/socket.h> on Darwin."""
DARWIN_AF_INET6 = 30
"""AF_INET6 in <sys/socket.h> on Darwin."""
UTUN_HEADER_LEN = 4

_HEADER_V4 = struct.pack(">I", DARWIN_AF_INET)
_HEADER_V6 = struct.pack(">I", DARWIN_AF_INET6)
_VERSION_OF_FAMILY = {DARWIN_AF_INET: 4, DARWIN_AF_INET6: 6}


def utun_frame(packet: bytes | bytearray | memoryview) -> bytes:
    """``packet`` with the utun header for its IP version; PacketError if it is not IPv4/IPv6."""
    version = packet[0] >> 4 if len(packet) else 0
    if version == 4:
        return _HEADER_V4 + packet
    if version == 6:
        return _HEADER_V6 + packet
    raise PacketError(f"cannot frame IP version {version} for utun")


def utun_header(packet: bytes | bytearray | memoryview) -> bytes:
    """Just the 4-octet header :func:`utun_frame` would prepend (for ``sendmsg`` with two buffers)."""
    version = packet[0] >> 4 if len(packet) else 0
    if version == 4:
        return _HEADER_V4
    if version == 6:
        return _HEADER_V6
    raise PacketError(f"cannot frame IP version {version} for utun")


def utun_unframe(data: bytes | bytearray | memoryview) -> bytes:
    """The IP packet in what a utun socket returned; PacketError for an unknown family or a mismatch."""
    if len(data) <= UTUN_HEADER_LEN:
        raise PacketError(f"utun frame of {len(data)} octets")
    family = int.from_bytes(data[:UTUN_HEADER_LEN], "big")
    version = _VERSION_OF_FAMILY.get(family)
    if version is None:
        raise PacketError(f"utun frame with protocol family {family}")
    if data[UTUN_HEADER_LEN] >> 4 != version:
        raise PacketError(f"utun family {family} on an IP version {data[UTUN_HEADER_LEN] >> 4} packet")
    return bytes(data[UTUN_HEADER_LEN:])
