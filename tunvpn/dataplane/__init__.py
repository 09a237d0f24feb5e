"""The I/O layer of the data path: TUN devices and UDP sockets, read and written in batches.

* :func:`open_tun` gives a :class:`PacketDevice`: on Linux a ``tun_linux.TunDevice`` (virtio-net
  header, TSO/USO offloads, GSO split on read and GRO coalesce on write, with a plain
  per-packet fallback), on macOS a ``utun_darwin.UtunDevice``.
* ``udp_linux.UdpSocket`` sends with UDP GSO and receives with UDP GRO.
* ``packets``, ``checksum``, ``virtio`` and ``utun_framing`` are the pure packet logic (no I/O).

This module imports no platform code until :func:`open_tun` is called, so importing the pure
modules stays cheap and I/O-free.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["PacketDevice", "open_tun"]


@runtime_checkable
class PacketDevice(Protocol):
    """What the data path needs of a TUN-like device (Linux TUN or macOS utun)."""

    name: str
    offload: bool
    """True if reads may return packets split from super-packets and writes are coalesced."""

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        """IP packets ready now, without blocking (empty list if none)."""
        ...

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write IP packets; returns how many the kernel accepted (errors are counted, not raised)."""
        ...

    def fileno(self) -> int:
        """The non-blocking descriptor to wait on for readability."""
        ...

    def close(self) -> None: ...


def open_tun(
    name: str | None = None,
    *,
    mtu: int | None = None,
    addresses: Sequence[str] = (),
    routes: Sequence[str] = (),
    up: bool = True,
    offload: bool = True,
    uso: bool = True,
    read_offload: bool = False,
    platform: str | None = None,
) -> PacketDevice:
    """Open and configure the TUN device of this platform.

    ``name``: on Linux an interface name or template ("tunvpn%d" by default); on macOS
    "utunN" or None/"utun" for the next free unit. ``addresses`` and ``routes`` are CIDR
    strings. ``offload`` (virtio header, coalesced writes), ``uso`` (UDP too) and
    ``read_offload`` (TSO/USO super-packets on reads, split in Python; off by default, it
    costs more than it saves) only matter on Linux; the returned device's attributes of
    the same names tell what the kernel granted.
    """
    platform = platform or sys.platform
    if platform == "darwin":
        from .utun_darwin import UtunDevice

        utun = UtunDevice(name or "utun")
        try:
            utun.configure(mtu=mtu, addresses=addresses, routes=routes, up=up)
        except BaseException:
            utun.close()
            raise
        return utun
    if platform.startswith("linux"):
        from .tun_linux import open_linux_tun

        return open_linux_tun(
            name or "tunvpn%d",
            offload=offload,
            uso=uso,
            read_offload=read_offload,
            mtu=mtu,
            addresses=addresses,
            routes=routes,
            up=up,
        )
    raise OSError(f"no TUN backend for platform {platform!r} (Linux and macOS are supported)")
