"""``struct virtio_net_hdr``: the 10 octets before every packet on a TUN opened with IFF_VNET_HDR.

Pure: no I/O. Layout and numbers from ``include/uapi/linux/virtio_net.h``::

    struct virtio_net_hdr {
        __u8  flags;        /* VIRTIO_NET_HDR_F_* */
        __u8  gso_type;     /* VIRTIO_NET_HDR_GSO_* */
        __virtio16 hdr_len;     /* Ethernet + IP + TCP/UDP headers */
        __virtio16 gso_size;    /* bytes to append to hdr_len per frame */
        __virtio16 csum_start;  /* position to start checksumming from */
        __virtio16 csum_offset; /* offset after that to place the checksum */
    };

The 16-bit fields are in host byte order on a TUN device unless TUNSETVNETBE/LE says otherwise
(we never do), so the codec uses native order.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

VIRTIO_NET_HDR_LEN = 10
"""sizeof(struct virtio_net_hdr) without mergeable buffers (TUNSETVNETHDRSZ default)."""


class VirtioFlag(IntFlag):
    """``flags`` bits (include/uapi/linux/virtio_net.h)."""

    NEEDS_CSUM = 1
    """VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum from csum_start, store at csum_start + csum_offset."""
    DATA_VALID = 2
    """VIRTIO_NET_HDR_F_DATA_VALID: the kernel already validated the checksum (read side only)."""
    RSC_INFO = 4
    """VIRTIO_NET_HDR_F_RSC_INFO: not used with TUN."""


class GsoType(IntEnum):
    """``gso_type`` values (include/uapi/linux/virtio_net.h)."""

    NONE = 0
    """VIRTIO_NET_HDR_GSO_NONE: one ordinary packet."""
    TCPV4 = 1
    """VIRTIO_NET_HDR_GSO_TCPV4: TCP over IPv4 segmentation (TSO)."""
    UDP = 3
    """VIRTIO_NET_HDR_GSO_UDP: UDP fragmentation offload (UFO, obsolete; never requested)."""
    TCPV6 = 4
    """VIRTIO_NET_HDR_GSO_TCPV6: TCP over IPv6 segmentation (TSO)."""
    UDP_L4 = 5
    """VIRTIO_NET_HDR_GSO_UDP_L4: UDP segmentation offload (USO, Linux >= 6.2 on TUN)."""


GSO_ECN = 0x80
"""VIRTIO_NET_HDR_GSO_ECN: or-ed into gso_type when TSO_ECN is on (we never request it)."""

# Plain ints for the hot paths (an IntEnum attribute lookup costs more than a global int).
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5

_STRUCT = struct.Struct("=BBHHHH")


class VirtioNetHdr(NamedTuple):
    """One decoded ``struct virtio_net_hdr``; all zero means a plain packet, checksum complete."""

    flags: int = 0
    """VirtioFlag bits."""
    gso_type: int = GSO_NONE
    """GsoType, possibly or-ed with GSO_ECN."""
    hdr_len: int = 0
    """Length of the IP plus TCP/UDP headers (the kernel recomputes it; we distrust it on read)."""
    gso_size: int = 0
    """Payload octets per segment (the MSS for TCP)."""
    csum_start: int = 0
    """Offset of the TCP/UDP header, where checksumming starts."""
    csum_offset: int = 0
    """Offset of the checksum field from csum_start: 16 for TCP, 6 for UDP."""

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Decode the first 10 octets of ``data`` (ValueError if shorter)."""
        if len(data) < VIRTIO_NET_HDR_LEN:
            raise ValueError(f"virtio_net_hdr needs {VIRTIO_NET_HDR_LEN} octets, got {len(data)}")
        return cls._make(_STRUCT.unpack_from(data))

    def serialize(self) -> bytes:
        """The 10 octets in host byte order."""
        return _STRUCT.pack(*self)


NO_OFFLOAD_HDR = VirtioNetHdr()
"""A plain packet with its checksums complete."""
NO_OFFLOAD_HDR_BYTES = NO_OFFLOAD_HDR.serialize()
