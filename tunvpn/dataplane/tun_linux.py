"""A Linux TUN device with the virtio-net header and TSO/USO offloads, read and written in batches.

Opened through python-pytun (``IFF_TUN | IFF_NO_PI | IFF_VNET_HDR``), then the offloads are
asked for with ``TUNSETOFFLOAD`` as wireguard-go does (``shared/reference/batched-io.md``):
``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`` is required for the offload mode, ``TUN_F_USO4 |
TUN_F_USO6`` (Linux >= 6.2) is optional. With them the kernel takes coalesced super-packets
(up to 64 KiB) in one ``write()``, and, with ``read_offload=True``, hands us TCP (and UDP GSO)
super-packets in one ``read()``; :mod:`.packets` does the merging and splitting. Reads are
plain by default because splitting in Python costs more than the syscalls it saves (the
flags only govern reads: writes with a GSO header are accepted either way). Without offloads
(constructor flag, or automatically when ``TUNSETOFFLOAD`` fails) the device is a plain
one-packet-per-syscall TUN.

The file descriptor is non-blocking: :meth:`TunDevice.read_batch` returns what is ready.
Interface configuration (MTU, addresses, up) goes through pyroute2.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from .packets import PacketError, gro_coalesce, gso_split
from .virtio import GSO_NONE, NO_OFFLOAD_HDR_BYTES, VIRTIO_NET_HDR_LEN, VirtioNetHdr

log = logging.getLogger(__name__)

# include/uapi/linux/if_tun.h (ikev1-numbers.md section 4.10); ioctl numbers for x86-64/arm64.
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

TSO_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
USO_OFFLOADS = TUN_F_USO4 | TUN_F_USO6
DEV_NET_TUN = "/dev/net/tun"
READ_SIZE = VIRTIO_NET_HDR_LEN + 65535 + 64
"""One read: header plus the largest super-packet (64 KiB of IP; a little slack for IPv6)."""
PLAIN_READ_SIZE = 65535
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")


class TunError(OSError):
    """The TUN device could not be opened or configured; the message says what is missing."""


@dataclass
class TunStats:
    """Counters of one TunDevice (plain ints; read them any time)."""

    reads: int = 0
    """read() calls that returned a packet."""
    super_packets: int = 0
    """Reads that returned a GSO super-packet (gso_type not NONE)."""
    largest_read: int = 0
    """Largest IP packet one read returned, in octets (> MTU only with TSO/USO)."""
    checksums_completed: int = 0
    """GSO_NONE packets with NEEDS_CSUM whose checksum we finished."""
    packets_read: int = 0
    """Packets read_batch returned (after splitting)."""
    malformed: int = 0
    """Reads dropped because their virtio header or super-packet could not be processed."""
    writes: int = 0
    """write() calls the kernel accepted."""
    coalesced_writes: int = 0
    """Accepted writes that carried a super-packet of two or more segments."""
    packets_written: int = 0
    """Packets given to write_batch that went out in an accepted write."""
    write_errors: int = 0
    """Writes the kernel refused (their packets are dropped, or resent one by one, see below)."""
    coalesce_refused: int = 0
    """Super-packets the kernel refused; their segments were then written one by one."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _explain(exc: OSError, what: str, name: str, dev_path: str) -> TunError:
    """A TunError whose message names what is missing on this machine."""
    code = exc.errno
    if code == errno.ENOENT:
        text = (
            f"{dev_path} does not exist: load the TUN driver (modprobe tun) "
            f"or create the node (mknod {dev_path} c 10 200)"
        )
    elif code == errno.EPERM:
        text = f"{what} {name!r} needs CAP_NET_ADMIN: run as root (or grant the capability)"
    elif code == errno.EACCES:
        text = f"no permission to open {dev_path}: run as root or make it accessible"
    elif code == errno.EBUSY:
        text = f"TUN device {name!r} is already in use by another process"
    elif code == errno.ENODEV:
        text = f"the kernel has no TUN support ({dev_path} exists but the driver is missing)"
    elif code == errno.EINVAL:
        text = f"{what} {name!r} was refused (EINVAL): an existing device of another type or flags?"
    else:
        text = f"{what} {name!r}: {exc.strerror or exc}"
    return TunError(code, text)


class TunDevice:
    """One Linux TUN interface, batched.

    ``TunDevice("tun0")`` opens (creating if needed) the device with offloads; ``offload=False``
    opens a plain one. ``offload`` then tells what was obtained (False if the kernel refused
    TUNSETOFFLOAD): writes are coalesced. ``read_offload`` tells whether reads return
    super-packets (TSO/USO; ``read_offload=False`` keeps the virtio header and coalesced
    writes but has the kernel segment before we read, see :attr:`read_offload`), and ``uso``
    whether UDP is segmented/coalesced as well. Use :meth:`configure` (or :meth:`set_mtu`,
    :meth:`add_address`, :meth:`up`) to set it up.
    """

    def __init__(
        self,
        name: str = "tunvpn%d",
        *,
        offload: bool = True,
        uso: bool = True,
        read_offload: bool = False,
        dev_path: str = DEV_NET_TUN,
    ):
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} longer than {IFNAMSIZ - 1} characters")
        self._dev_path = dev_path
        self.offload = False
        self.read_offload = False
        """True if reads may return TSO/USO super-packets (split in Python by read_batch).

        Off by default: splitting in Python costs more per segment than the read() it saves
        (``python -m tunvpn.dataplane.bench_io`` and the reflector test show the numbers).
        Writes accept GSO super-packets whatever the TUNSETOFFLOAD flags say (those only say
        what we can take on reads), so with ``read_offload=False`` the kernel segments in C
        before we read while our writes stay coalesced.
        """
        self.uso = False
        self.offload_error: str | None = None
        """Why offloads are off although they were asked for (None otherwise)."""
        self.stats = TunStats()
        self._closed = False
        self.name = name
        if offload:
            self._tun = self._open(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            try:
                self._enable_offloads(uso, read_offload)
            except OSError as exc:
                self.offload_error = f"TUNSETOFFLOAD refused ({exc.strerror}); plain per-packet mode"
                log.warning("%s: %s", self.name, self.offload_error)
                # The virtio header stays on a device opened with IFF_VNET_HDR: reopen without it.
                self._tun.close()
                self._tun = self._open(name, IFF_TUN | IFF_NO_PI)
        else:
            self._tun = self._open(name, IFF_TUN | IFF_NO_PI)
        self._fd: int = self._tun.fileno()
        os.set_blocking(self._fd, False)
        log.debug("opened %s (offload=%s, uso=%s)", self.name, self.offload, self.uso)

    # ------------------------------------------------------------------ opening

    def _open(self, name: str, flags: int) -> Any:
        if not os.path.exists(self._dev_path):
            raise _explain(OSError(errno.ENOENT, "No such file"), "opening", name, self._dev_path)
        try:
            import pytun
        except ImportError as exc:  # pragma: no cover - a dependency on Linux
            raise TunError(errno.ENOSYS, "python-pytun is not installed (pip install python-pytun)") from exc
        try:
            tun = pytun.TunTapDevice(name=name, flags=flags, dev=self._dev_path)
        except pytun.Error as exc:
            code = exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], int) else errno.EIO
            text = exc.args[-1] if exc.args else str(exc)
            raise _explain(OSError(code, text), "creating TUN device", name, self._dev_path) from exc
        self.name = tun.name.decode() if isinstance(tun.name, bytes) else str(tun.name)
        return tun

    def _enable_offloads(self, uso: bool, read_offload: bool) -> None:
        fd = self._tun.fileno()
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
        if not _IFREQ.unpack(ifr)[1] & IFF_VNET_HDR:
            raise OSError(errno.EOPNOTSUPP, "IFF_VNET_HDR did not take")
        fcntl.ioctl(fd, TUNSETOFFLOAD, TSO_OFFLOADS)
        self.offload = True
        if uso:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TSO_OFFLOADS | USO_OFFLOADS)
                self.uso = True  # the kernel knows VIRTIO_NET_HDR_GSO_UDP_L4 (Linux >= 6.2)
            except OSError as exc:
                log.info("%s: no UDP segmentation offload (%s; Linux >= 6.2 has it)", self.name, exc)
        if read_offload:
            self.read_offload = True
        else:
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)  # the kernel segments and checksums before we read

    # ------------------------------------------------------------------ configuration

    def set_mtu(self, mtu: int) -> None:
        self.configure(mtu=mtu, up=False)

    def up(self) -> None:
        self.configure(up=True)

    def add_address(self, address: str) -> None:
        """Add an address in CIDR form ("10.0.0.1/24", "fd00::1/64"; IPv6 without DAD)."""
        self.configure(addresses=[address], up=False)

    def add_route(self, network: str) -> None:
        """Route ``network`` (CIDR) into this device."""
        self.configure(routes=[network], up=False)

    def configure(
        self,
        *,
        mtu: int | None = None,
        addresses: Iterable[str] = (),
        routes: Iterable[str] = (),
        up: bool = True,
    ) -> None:
        """Set the MTU, add addresses, bring the link up, then add routes (one netlink session).
        Idempotent: an address or route that is already there is left as it is."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                raise TunError(errno.ENODEV, f"interface {self.name} vanished")
            index = int(found[0])
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            for address in addresses:
                iface = ipaddress.ip_interface(address)
                extra: dict[str, Any] = {}
                if iface.version == 6:
                    extra["flags"] = 0x02  # IFA_F_NODAD: a TUN has no neighbours to probe
                ipr.addr(
                    "replace", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra
                )
            if up:
                ipr.link("set", index=index, state="up")
            for network in routes:
                ipr.route("replace", dst=str(ipaddress.ip_network(network)), oif=index)

    # ------------------------------------------------------------------ data

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        """The IP packets ready now, reading until EAGAIN or until ``max_packets`` are collected.

        With offloads each read may yield many packets (a super-packet is split), so the list
        can end up to one super-packet's segments longer than ``max_packets``. Malformed reads
        are dropped and counted in ``stats.malformed``.
        """
        out: list[bytes] = []
        fd = self._fd
        stats = self.stats
        if not self.offload:
            while len(out) < max_packets:
                try:
                    data = os.read(fd, PLAIN_READ_SIZE)
                except BlockingIOError:
                    break
                stats.reads += 1
                if len(data) > stats.largest_read:
                    stats.largest_read = len(data)
                out.append(data)
            stats.packets_read += len(out)
            return out
        read = os.read
        append = out.append
        reads = 0
        while reads < max_packets:
            try:
                data = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            reads += 1
            if not data[1] and not data[0] & 1 and len(data) > VIRTIO_NET_HDR_LEN:
                append(data[VIRTIO_NET_HDR_LEN:])  # GSO_NONE, checksum complete: the usual case
                continue
            size = len(data) - VIRTIO_NET_HDR_LEN
            if size > stats.largest_read:
                stats.largest_read = size
            try:
                hdr = VirtioNetHdr.parse(data)
                if hdr.gso_type == GSO_NONE:
                    if hdr.flags & 1:
                        stats.checksums_completed += 1
                        out += gso_split(hdr, memoryview(data)[VIRTIO_NET_HDR_LEN:])
                    else:
                        out.append(data[VIRTIO_NET_HDR_LEN:])
                else:
                    stats.super_packets += 1
                    out += gso_split(hdr, memoryview(data)[VIRTIO_NET_HDR_LEN:])
            except (PacketError, ValueError) as exc:
                stats.malformed += 1
                if stats.malformed <= 10 or stats.malformed % 1000 == 0:
                    log.warning(
                        "%s: dropped a malformed read (%s; %d so far)", self.name, exc, stats.malformed
                    )
            if len(out) >= max_packets:
                break
        stats.reads += reads
        if out:
            stats.packets_read += len(out)
            largest = max(map(len, out))
            if largest > stats.largest_read:
                stats.largest_read = largest
        return out

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write IP packets; with offloads, same-flow TCP (and UDP if USO) segments go out coalesced.

        Returns how many of ``packets`` the kernel accepted; refused writes are counted in
        ``stats.write_errors`` and logged at a rate limit, never raised.
        """
        fd = self._fd
        stats = self.stats
        accepted = 0
        if not self.offload:
            for packet in packets:
                try:
                    os.write(fd, packet)
                except OSError as exc:
                    self._write_failed(exc, len(packet))
                    continue
                accepted += 1
            stats.writes += accepted
            stats.packets_written += accepted
            return accepted
        zero = NO_OFFLOAD_HDR_BYTES
        if len(packets) == 1:  # a lone packet (a ping, an ACK): nothing to coalesce
            try:
                os.writev(fd, (zero, packets[0]))
            except OSError as exc:
                self._write_failed(exc, len(packets[0]))
                return 0
            stats.writes += 1
            stats.packets_written += 1
            return 1
        for hdr, packet in gro_coalesce(packets, udp=self.uso):
            if hdr.gso_type == GSO_NONE:
                try:
                    os.writev(fd, (zero, packet))
                except OSError as exc:
                    self._write_failed(exc, len(packet))
                    continue
                stats.writes += 1
                accepted += 1
                continue
            try:
                os.writev(fd, (hdr.serialize(), packet))
            except OSError as exc:
                # Refused as a super-packet: give the kernel its segments one by one instead.
                stats.coalesce_refused += 1
                self._write_failed(exc, len(packet))
                accepted += self._write_segments(gso_split(hdr, packet))
                continue
            stats.writes += 1
            stats.coalesced_writes += 1
            accepted += -(-(len(packet) - hdr.hdr_len) // hdr.gso_size)
        stats.packets_written += accepted
        return accepted

    def _write_segments(self, segments: list[bytes]) -> int:
        accepted = 0
        for segment in segments:
            try:
                os.writev(self._fd, (NO_OFFLOAD_HDR_BYTES, segment))
            except OSError as exc:
                self._write_failed(exc, len(segment))
                continue
            self.stats.writes += 1
            accepted += 1
        return accepted

    def _write_failed(self, exc: OSError, size: int) -> None:
        self.stats.write_errors += 1
        n = self.stats.write_errors
        if n <= 10 or n % 1000 == 0:
            log.warning("%s: write of %d octets refused: %s (%d so far)", self.name, size, exc, n)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tun.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TunDevice {self.name} offload={self.offload} read_offload={self.read_offload} uso={self.uso}>"
        )


def open_linux_tun(
    name: str,
    *,
    offload: bool = True,
    uso: bool = True,
    read_offload: bool = False,
    mtu: int | None = None,
    addresses: Sequence[str] = (),
    routes: Sequence[str] = (),
    up: bool = True,
    **kw: Any,
) -> TunDevice:
    """Open and configure a TunDevice (closes it again if configuring fails)."""
    dev = TunDevice(name, offload=offload, uso=uso, read_offload=read_offload, **kw)
    try:
        dev.configure(mtu=mtu, addresses=addresses, routes=routes, up=up)
    except BaseException:
        dev.close()
        raise
    return dev
