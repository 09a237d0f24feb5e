"""The data path: TUN devices and UDP sockets read and written in batches, the data thread, the tunnel.

* :func:`open_tun` gives a :class:`PacketDevice`: on Linux a ``tun_linux.TunDevice`` (virtio-net
  header, TSO/USO offloads, GSO split on read and GRO coalesce on write, with a plain
  per-packet fallback), on macOS a ``utun_darwin.UtunDevice``.
* ``udp_linux.UdpSocket`` sends with UDP GSO and receives with UDP GRO.
* ``packets``, ``checksum``, ``virtio`` and ``utun_framing`` are the pure packet logic (no I/O).
* :func:`off_loop` runs a blocking netlink call (pyroute2) from a coroutine.
* ``thread`` is the data thread (TUN <-> ESP <-> UDP 4500), ``tunnel`` joins it to the IKE
  engine (SAs in, routes, rekeying).

This module imports no platform code until :func:`open_tun` is called, so importing the pure
modules stays cheap and I/O-free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

__all__ = ["PacketDevice", "off_loop", "open_tun"]


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

    def configure(
        self,
        *,
        mtu: int | None = None,
        addresses: Iterable[str] = (),
        routes: Iterable[str] = (),
        up: bool = True,
    ) -> None:
        """Set the MTU, add addresses (CIDR), bring the link up, add routes; idempotent."""
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


def off_loop(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run ``fn`` in a helper thread and wait for it.

    pyroute2 runs its own asyncio loop internally, which fails inside a running loop; netlink
    calls are short, so blocking the control loop for them is fine.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()
