"""A non-blocking UDP socket that sends with UDP GSO and receives with UDP GRO (Linux).

Python has no ``sendmmsg``/``recvmmsg``; the kernel's segmentation offloads give the batching
instead (``shared/reference/batched-io.md``):

* :meth:`UdpSocket.send_batch` packs up to 64 datagrams of equal size (the last may be
  shorter) into one ``sendmsg`` with a ``SOL_UDP/UDP_SEGMENT`` control message carrying the
  segment size as a native u16; the kernel (or the NIC) cuts them apart again. The datagrams
  are passed as separate iovecs, so nothing is copied in Python.
* :meth:`UdpSocket.recv_batch` turns on ``UDP_GRO``; the kernel then queues runs of same-size
  datagrams from one sender as one buffer, and a ``SOL_UDP/UDP_GRO`` control message gives the
  segment size to cut it at.

Either offload falls back to one datagram per syscall when the kernel lacks it; GSO also turns
itself off on ``EIO`` (the egress device cannot checksum). ``UDP_ENCAP`` is never set: ESP stays
in userspace.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

SOL_UDP = 17
MSG_TRUNC = int(socket.MSG_TRUNC)
"""A plain int: ``flags & socket.MSG_TRUNC`` runs three Python functions of enum.IntFlag on
every ``recvmsg`` (issue 21: a lone packet on a cold CPU pays for each)."""
UDP_SEGMENT = 103
"""include/uapi/linux/udp.h: send-side segment size (u16 cmsg or int sockopt)."""
UDP_GRO = 104
"""include/uapi/linux/udp.h: receive coalesced datagrams; the cmsg carries the segment size."""
UDP_MAX_SEGMENTS = 64
"""include/linux/udp.h: most segments in one GSO send."""
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
"""include/uapi/asm-generic/socket.h: set the buffer size past the sysctl limit (needs CAP_NET_ADMIN)."""
MAX_GSO_BYTES_V4 = 65535 - 20 - 8
MAX_GSO_BYTES_V6 = 65535 - 8
RECV_BUFFER = 65536 + 64
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; SCM_TIMESTAMPNS is the same number
_STAMP_CMSG_SPACE = socket.CMSG_SPACE(16)  # struct timespec
_TIMESPEC = struct.Struct("=qq")
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")

Address = tuple[Any, ...]


@dataclass
class UdpStats:
    """Counters of one UdpSocket; each ``*_calls`` counter is one system call."""

    sendmsg_calls: int = 0
    """sendmsg/sendto calls that sent something."""
    gso_sends: int = 0
    """Of those, sends carrying two or more datagrams (UDP_SEGMENT)."""
    datagrams_sent: int = 0
    send_would_block: int = 0
    """Sends that hit EAGAIN (the rest of the batch was left to the caller)."""
    send_errors: int = 0
    """Datagrams dropped because the kernel refused them (ENETUNREACH, EMSGSIZE, ...)."""
    recvmsg_calls: int = 0
    """recvmsg calls that returned data."""
    recv_empty: int = 0
    """recvmsg calls that found nothing (EAGAIN): how a batch ends."""
    gro_receives: int = 0
    """Receives that held two or more datagrams (UDP_GRO)."""
    datagrams_received: int = 0
    truncated: int = 0
    """Datagrams dropped because they did not fit the buffer."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _has_option(sock: socket.socket, option: int) -> bool:
    try:
        sock.getsockopt(SOL_UDP, option)
    except OSError:
        return False
    return True


class UdpSocket:
    """A UDP socket for batches of datagrams.

    Wraps ``sock`` or makes one of ``family``, bound to ``bind`` if given, and makes it
    non-blocking. ``gso`` / ``gro`` ask for the offloads; the attributes of the same names
    tell what the kernel granted (``gso`` can turn False later, on EIO). ``rcvbuf`` /
    ``sndbuf`` size the socket buffers (past the sysctl limits when running as root).
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        family: int = socket.AF_INET,
        bind: Address | None = None,
        gso: bool = True,
        gro: bool = True,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
    ):
        self.sock = sock if sock is not None else socket.socket(family, socket.SOCK_DGRAM)
        self.family = self.sock.family
        self.stats = UdpStats()
        self._max_gso_bytes = MAX_GSO_BYTES_V6 if self.family == socket.AF_INET6 else MAX_GSO_BYTES_V4
        if rcvbuf:
            self._set_buffer(SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self._set_buffer(SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        if bind is not None:
            self.sock.bind(bind)
        self.sock.setblocking(False)
        self.gso = gso and _has_option(self.sock, UDP_SEGMENT)
        self.gro = False
        if gro:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError as exc:
                log.info("UDP_GRO not available (%s): one datagram per recvmsg", exc)
        self._buffer = bytearray(RECV_BUFFER if self.gro else 65536)
        self._view = memoryview(self._buffer)
        self.timestamps = False
        """The kernel's receive time is asked for (:meth:`enable_timestamps`)."""
        self.first_stamp_ns = 0
        """The receive time (wall clock, ns) of the first datagram of the last
        :meth:`recv_buffers`, with :attr:`timestamps`; else 0."""

    def enable_timestamps(self) -> bool:
        """Ask the kernel for each datagram's receive time (``SO_TIMESTAMPNS``), for the
        latency breakdown (tunvpn.dataplane.stagetrace); whether it was granted."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            return False
        self.timestamps = True
        return True

    def _set_buffer(self, force: int, option: int, size: int) -> None:
        """Ask for ``size`` octets; beyond net.core.[rw]mem_max only with CAP_NET_ADMIN (*FORCE)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, option, size)

    # ------------------------------------------------------------------ sending

    def send_batch(self, datagrams: Sequence[bytes | bytearray | memoryview], addr: Address) -> int:
        """Send ``datagrams`` to ``addr``, equal-size runs in one GSO ``sendmsg`` each.

        Returns how many datagrams from the front of the list were consumed: sent, or dropped
        because the kernel refused them (counted in ``stats.send_errors``). Fewer than
        ``len(datagrams)`` means the socket buffer is full (EAGAIN): wait until the socket is
        writable and send the rest.
        """
        n = len(datagrams)
        i = 0
        sock = self.sock
        stats = self.stats
        if n > 1 and self.gso:
            # The usual batch: datagrams of one size. Cut it into GSO sends without a look at each.
            size = len(datagrams[0])
            if size and list(map(len, datagrams)).count(size) == n:
                step = min(UDP_MAX_SEGMENTS, self._max_gso_bytes // size)
                control = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
                while n - i > 1 and step > 1:
                    j = min(n, i + step)
                    try:
                        sock.sendmsg(datagrams[i:j], control, 0, addr)
                    except OSError:
                        break  # EAGAIN or an error: the general loop below sorts it out from here
                    stats.sendmsg_calls += 1
                    stats.gso_sends += 1
                    stats.datagrams_sent += j - i
                    i = j
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            if self.gso and size:
                total = size
                limit = min(n, i + UDP_MAX_SEGMENTS)
                while j < limit:
                    length = len(datagrams[j])
                    if length > size or total + length > self._max_gso_bytes:
                        break
                    total += length
                    j += 1
                    if length < size:
                        break  # only the last may be shorter
            if j - i == 1:
                sent = self._send_one(datagrams[i], addr)
                if sent < 0:
                    return i
                i += 1
                continue
            try:
                sock.sendmsg(datagrams[i:j], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
            except BlockingIOError:
                stats.send_would_block += 1
                return i
            except OSError as exc:
                if exc.errno == errno.EIO:
                    # wireguard-go's errShouldDisableUDPGSO: the device cannot checksum segments.
                    log.warning("UDP GSO send failed with EIO; segmentation offload off for this socket")
                    self.gso = False
                elif exc.errno not in (errno.EINVAL, errno.EMSGSIZE):
                    self._send_failed(exc, j - i)
                    i = j
                    continue
                # EINVAL/EMSGSIZE: e.g. segments larger than the path MTU; send them one by one.
                for k in range(i, j):
                    if self._send_one(datagrams[k], addr) < 0:
                        return k
                i = j
                continue
            stats.sendmsg_calls += 1
            stats.gso_sends += 1
            stats.datagrams_sent += j - i
            i = j
        return n

    def _send_one(self, datagram: bytes | bytearray | memoryview, addr: Address) -> int:
        """1 if sent, 0 if dropped on an error, -1 on EAGAIN."""
        try:
            self.sock.sendto(datagram, addr)
        except BlockingIOError:
            self.stats.send_would_block += 1
            return -1
        except OSError as exc:
            self._send_failed(exc, 1)
            return 0
        self.stats.sendmsg_calls += 1
        self.stats.datagrams_sent += 1
        return 1

    def _send_failed(self, exc: OSError, count: int) -> None:
        self.stats.send_errors += count
        if self.stats.send_errors <= 10 or self.stats.send_errors % 1000 == 0:
            log.warning(
                "UDP send of %d datagram(s) failed: %s (%d dropped so far)",
                count,
                exc,
                self.stats.send_errors,
            )

    def send(self, datagram: bytes | bytearray | memoryview, addr: Address) -> bool:
        """Send one datagram without GSO; False if the socket buffer is full (EAGAIN)."""
        return self._send_one(datagram, addr) >= 0

    # ------------------------------------------------------------------ receiving

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Address]]:
        """The datagrams ready now (until EAGAIN or ``max_datagrams``), coalesced ones split.

        A GRO receive counts as all of its datagrams, so the list can end up to 63 longer
        than ``max_datagrams``.
        """
        out: list[tuple[bytes, Address]] = []
        sock = self.sock
        stats = self.stats
        buffer = [self._buffer]
        view = self._view
        ancsize = _GRO_CMSG_SPACE if self.gro else 0
        while len(out) < max_datagrams:
            try:
                nbytes, ancdata, flags, addr = sock.recvmsg_into(buffer, ancsize)
            except BlockingIOError:
                stats.recv_empty += 1
                break
            except OSError as exc:
                # An ICMP error queued for an earlier send (ECONNREFUSED and the like): not ours to raise.
                log.debug("recvmsg: %s", exc)
                stats.recv_empty += 1
                break
            stats.recvmsg_calls += 1
            if flags & MSG_TRUNC:
                stats.truncated += 1
                continue
            segment = 0
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = _I32.unpack(data)[0] if len(data) >= 4 else _U16.unpack(data[:2])[0]
            if segment and nbytes > segment:
                stats.gro_receives += 1
                for start in range(0, nbytes, segment):
                    out.append((bytes(view[start : min(start + segment, nbytes)]), addr))
            else:
                out.append((bytes(view[:nbytes]), addr))
        stats.datagrams_received += len(out)
        return out

    def recv_buffers(self, max_datagrams: int = 128) -> list[tuple[bytes, int, Address]]:
        """What :meth:`recv_batch` returns, without cutting GRO buffers apart: one
        ``(data, segment, addr)`` per ``recvmsg``, ``data`` holding datagrams of ``segment``
        octets back to back (the last may be shorter; ``segment == len(data)`` for a lone
        datagram). Saves an object and a copy per datagram for callers that walk the buffer.
        """
        out: list[tuple[bytes, int, Address]] = []
        recvmsg = self.sock.recvmsg
        stats = self.stats
        ancsize = (_GRO_CMSG_SPACE if self.gro else 0) + (_STAMP_CMSG_SPACE if self.timestamps else 0)
        size = len(self._buffer)
        count = 0
        self.first_stamp_ns = 0
        while count < max_datagrams:
            try:
                data, ancdata, flags, addr = recvmsg(size, ancsize)
            except BlockingIOError:
                stats.recv_empty += 1
                break
            except OSError as exc:
                log.debug("recvmsg: %s", exc)
                stats.recv_empty += 1
                break
            stats.recvmsg_calls += 1
            if flags & MSG_TRUNC:
                stats.truncated += 1
                continue
            nbytes = len(data)
            segment = nbytes
            if ancdata:
                for level, kind, cdata in ancdata:
                    if level == SOL_UDP and kind == UDP_GRO:
                        segment = _I32.unpack(cdata)[0] if len(cdata) >= 4 else _U16.unpack(cdata[:2])[0]
                    elif kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and not self.first_stamp_ns:
                        seconds, nanos = _TIMESPEC.unpack(cdata[:16])
                        self.first_stamp_ns = seconds * 1_000_000_000 + nanos
                if 0 < segment < nbytes:
                    stats.gro_receives += 1
                    count += (nbytes + segment - 1) // segment
                    out.append((data, segment, addr))
                    continue
                segment = nbytes
            count += 1
            out.append((data, segment, addr))
        stats.datagrams_received += count
        return out

    # ------------------------------------------------------------------ plumbing

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> Address:
        return tuple(self.sock.getsockname())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UdpSocket {self.sock.getsockname()} gso={self.gso} gro={self.gro}>"
