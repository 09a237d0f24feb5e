"""The macOS TUN backend: a ``utun`` interface through a PF_SYSTEM kernel control socket.

``socket(PF_SYSTEM, SOCK_DGRAM, SYSPROTO_CONTROL)``, ``ioctl(CTLIOCGINFO)`` to turn the control
name "com.apple.net.utun_control" into its id, then ``connect`` with ``sc_unit`` = N + 1 for
``utunN`` (0 lets the kernel pick). Each datagram on the socket is one IP packet behind the
4-octet protocol-family header of :mod:`.utun_framing`. There are no offloads: one packet per
system call, as wireguard-go's ``tun_darwin.go`` does (its batch size is 1).

Importable everywhere (only the standard library), usable only on Darwin: the constructor
raises on other platforms. Configuration uses ``ifconfig`` and ``route`` as wg-quick does on
macOS.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType

from .packets import PacketError
from .utun_framing import UTUN_HEADER_LEN, utun_frame, utun_header, utun_unframe

__all__ = ["UtunDevice", "utun_frame", "utun_header", "utun_unframe"]

log = logging.getLogger(__name__)

# <sys/sys_domain.h>, <sys/kern_control.h>, <net/if_utun.h> (Darwin).
PF_SYSTEM = 32
SYSPROTO_CONTROL = 2
CTLIOCGINFO = 0xC0644E03
"""_IOWR('N', 3, struct ctl_info); struct ctl_info is a u32 id and a 96-octet name."""
MAX_KCTL_NAME = 96
UTUN_CONTROL_NAME = b"com.apple.net.utun_control"
UTUN_OPT_IFNAME = 2
READ_SIZE = 65535 + UTUN_HEADER_LEN


class UtunError(OSError):
    """The utun interface could not be opened or configured."""


@dataclass
class UtunStats:
    reads: int = 0
    packets_read: int = 0
    malformed: int = 0
    writes: int = 0
    packets_written: int = 0
    write_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def utun_unit(name: str) -> int:
    """``sc_unit`` for an interface name: "utun3" -> 4; "utun" or "" -> 0 (the kernel picks)."""
    if name in ("", "utun"):
        return 0
    match = re.fullmatch(r"utun(\d+)", name)
    if match is None:
        raise ValueError(f"macOS TUN interfaces are named utunN, not {name!r}")
    return int(match.group(1)) + 1


class UtunDevice:
    """One utun interface with the TunDevice batch interface (no offloads)."""

    offload = False
    uso = False
    # declared here: on any other platform a type checker sees the rest of __init__ as unreachable
    sock: socket.socket
    name: str
    stats: UtunStats

    def __init__(self, name: str = "utun") -> None:
        if sys.platform != "darwin":
            raise UtunError(errno.ENOSYS, f"utun needs macOS; this is {sys.platform}")
        unit = utun_unit(name)
        sock = socket.socket(PF_SYSTEM, socket.SOCK_DGRAM, SYSPROTO_CONTROL)
        try:
            info = fcntl.ioctl(
                sock.fileno(), CTLIOCGINFO, struct.pack(f"I{MAX_KCTL_NAME}s", 0, UTUN_CONTROL_NAME)
            )
            ctl_id = struct.unpack_from("I", info)[0]
            sock.connect((ctl_id, unit))
            raw = sock.getsockopt(SYSPROTO_CONTROL, UTUN_OPT_IFNAME, 16)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EPERM:
                raise UtunError(exc.errno, "creating a utun interface needs root") from exc
            if exc.errno == errno.EBUSY:
                raise UtunError(exc.errno, f"{name} is in use by another process") from exc
            raise UtunError(exc.errno, f"opening utun {name!r}: {exc.strerror}") from exc
        self.sock = sock
        self.name = raw.split(b"\0", 1)[0].decode()
        self.stats = UtunStats()
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        """The IP packets ready now (until EAGAIN or ``max_packets``)."""
        out: list[bytes] = []
        recv = self.sock.recv
        while len(out) < max_packets:
            try:
                data = recv(READ_SIZE)
            except BlockingIOError:
                break
            self.stats.reads += 1
            try:
                out.append(utun_unframe(data))
            except PacketError:
                self.stats.malformed += 1
        self.stats.packets_read += len(out)
        return out

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write IP packets, one send each; returns how many the kernel accepted."""
        accepted = 0
        send = self.sock.send
        for packet in packets:
            try:
                send(utun_frame(packet))
            except (OSError, PacketError) as exc:
                self.stats.write_errors += 1
                if self.stats.write_errors <= 10:
                    log.warning("%s: write refused: %s", self.name, exc)
                continue
            accepted += 1
        self.stats.writes += accepted
        self.stats.packets_written += accepted
        return accepted

    def configure(
        self,
        *,
        mtu: int | None = None,
        addresses: Iterable[str] = (),
        routes: Iterable[str] = (),
        up: bool = True,
    ) -> None:
        """MTU, addresses (CIDR), up, routes, through ifconfig(8) and route(8) as wg-quick does."""
        if mtu is not None:
            _run("ifconfig", self.name, "mtu", str(mtu))
        extra_routes: list[str] = []
        for address in addresses:
            iface = ipaddress.ip_interface(address)
            if iface.version == 4:
                # utun is point-to-point: the address is its own peer, the subnet gets a route.
                _run("ifconfig", self.name, "inet", str(iface.ip), str(iface.ip), "alias")
                if iface.network.prefixlen < 32:
                    extra_routes.append(str(iface.network))
            else:
                _run("ifconfig", self.name, "inet6", str(iface), "alias")
        if up:
            _run("ifconfig", self.name, "up")
        for network in [*extra_routes, *routes]:
            net = ipaddress.ip_network(network)
            family = "-inet" if net.version == 4 else "-inet6"
            _run("route", "-q", "-n", "add", family, str(net), "-interface", self.name)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UtunDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UtunError(errno.EINVAL, f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
