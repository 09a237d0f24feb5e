"""The running ESP data path: TUN <-> ESP (tunvpn.esp) <-> UDP 4500, in its own thread.

The IKE control plane (asyncio, main thread) and the data path meet through a narrow
interface: :meth:`DataPlane.install` (a negotiated child SA), :meth:`DataPlane.remove`
(by inbound SPI) and :meth:`DataPlane.replace` (make-before-break rekeying); lifetime
events and "the peer is alive" notes come back through callbacks that the shell marshals
into its event loop.

The data thread owns the NAT-T socket (RFC 3948: ESP and IKE share UDP 4500): IKE messages
(non-ESP marker) it receives are handed to the control plane, and the control plane sends its
own IKE messages on port 4500 through :meth:`send_ike` (``sendto`` is thread-safe).

One thread does both directions: the GIL allows no more, and it keeps every SA owned by a
single thread as the ESP core requires. The loop works on batches: one TUN read returns a
TSO super-packet split into segments, one UDP GSO ``sendmsg`` carries a run of ESP datagrams,
one GRO ``recvmsg`` returns many.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from tunvpn.esp import SadTable, sa_pair_from_child
from tunvpn.esp.events import SaLifetimeEvent
from tunvpn.esp.ratelimit import DropLog
from tunvpn.ike.events import ChildSAEstablished
from tunvpn.ike.udpencap import DatagramKind, classify_datagram

log = logging.getLogger(__name__)

Address = tuple[str, int]
BATCH = 128
ACTIVITY_EVERY = 1.0
"""Seconds between "peer alive" notes to the control plane (DPD, RFC 3706 section 5.3)."""


@dataclass(frozen=True)
class PeerActivity:
    """Authenticated ESP arrived on these inbound SPIs since the last note."""

    spis: frozenset[int]
    sources: tuple[tuple[int, Address], ...] = ()
    """(inbound SPI, outer source address) of the last ESP that passed its ICV and replay
    check on each SPI: a NAT that rebinds shows here first (RFC 3948 section 4)."""


class DataPlane:
    """Moves packets between a TUN device and the NAT-T UDP socket through the SAD.

    :param tun: an object with ``read_batch(n)``, ``write_batch(packets)``, ``fileno()``
        and ``close()`` (:mod:`tunvpn.dataplane`).
    :param on_event: called from the data thread with :class:`SaLifetimeEvent` and
        :class:`PeerActivity` objects; it must hand them to the control plane thread-safely.
    """

    def __init__(
        self,
        tun: object,
        *,
        on_event: Callable[[object], None] | None = None,
        replay_window: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tun = tun
        self.on_event = on_event
        self.replay_window = replay_window
        self.clock = clock
        self.sad = SadTable(drop_log=DropLog(rate=5.0, burst=20.0))
        self.counters: Counter[str] = Counter()
        self._udp: object | None = None
        self._deliver_ike: Callable[[bytes, Address], None] | None = None
        self._commands: deque[tuple[str, object]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._running = False
        self._active: set[int] = set()
        self._sources: dict[int, Address] = {}  # inbound SPI -> source of its last authenticated ESP
        self._next_activity = 0.0
        self._pairs: dict[int, int] = {}  # inbound SPI -> outbound SPI
        self._pending_out: dict[int, tuple[int, object]] = {}  # new inbound SPI -> (old, outbound)

    # ------------------------------------------------------------------ wiring

    def attach(self, sock: socket.socket, deliver_ike: Callable[[bytes, Address], None]) -> None:
        """Take over the bound NAT-T socket; IKE datagrams received go to ``deliver_ike``."""
        from tunvpn.dataplane.udp_linux import UdpSocket

        _grow_buffers(sock)
        self._udp = UdpSocket(sock)
        self._deliver_ike = deliver_ike

    def send_ike(self, data: bytes, remote: Address) -> None:
        """Send an IKE message (with its non-ESP marker) from the NAT-T socket."""
        if self._udp is None:
            raise RuntimeError("no NAT-T socket attached")
        self._udp.send(data, remote)  # type: ignore[attr-defined]

    def start(self) -> None:
        if self._udp is None:
            raise RuntimeError("attach() the NAT-T socket before start()")
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tunvpn-datapath", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ control interface

    def install(self, child: ChildSAEstablished) -> None:
        """Install the inbound and outbound SA of a finished Quick Mode (thread-safe)."""
        inbound, outbound = sa_pair_from_child(child, self.clock(), replay_window=self.replay_window)
        self._command("install", (inbound, outbound))

    def replace(self, old_spi_in: int, child: ChildSAEstablished, *, switch_outbound: bool = True) -> None:
        """Make-before-break: the new inbound SA is accepted at once; outbound traffic moves to
        the new SA now, or at :meth:`switch_outbound` (a Quick Mode responder waits until the
        initiator surely holds the keys); the old inbound SA stays valid until :meth:`remove`
        is called for it (thread-safe)."""
        inbound, outbound = sa_pair_from_child(child, self.clock(), replay_window=self.replay_window)
        self._command("replace", (old_spi_in, inbound, outbound if switch_outbound else None))
        if not switch_outbound:
            self._pending_out[inbound.spi] = (old_spi_in, outbound)

    def switch_outbound(self, new_spi_in: int) -> None:
        """Move outbound traffic to the SA installed by ``replace(..., switch_outbound=False)``."""
        pending = self._pending_out.pop(new_spi_in, None)
        if pending is not None:
            self._command("switch", (new_spi_in, *pending))

    def remove(self, spi_in: int) -> None:
        """Remove a pair by its inbound SPI (thread-safe)."""
        self._command("remove", spi_in)

    def set_peer(self, spi_in: int, peer: Address) -> None:
        """Send the outbound SA paired with ``spi_in`` to ``peer`` from now on (the IKE engine
        followed the peer behind its NAT; thread-safe)."""
        self._command("peer", (spi_in, peer))

    def stats(self) -> dict[str, object]:
        drops = {reason.name.lower(): n for reason, n in self.sad.drop_counts().items() if n}
        out: dict[str, object] = dict(self.counters)
        out["drops"] = drops
        out["sas"] = len(self.sad)
        return out

    def _command(self, kind: str, arg: object) -> None:
        self._commands.append((kind, arg))
        if self._thread is None:  # not started yet (tests, or before the socket exists)
            self._apply_commands()
        else:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _apply_commands(self) -> None:
        while self._commands:
            kind, arg = self._commands.popleft()
            try:
                if kind == "install":
                    inbound, outbound = arg  # type: ignore[misc]
                    self.sad.install_pair(inbound, outbound)
                    self._pairs[inbound.spi] = outbound.spi
                elif kind == "replace" or kind == "switch":
                    if kind == "replace":
                        old_in, inbound, outbound = arg  # type: ignore[misc]
                        self.sad.install(inbound)
                        if outbound is None:
                            continue
                        new_in = inbound.spi
                    else:
                        new_in, old_in, outbound = arg  # type: ignore[misc]
                    old_out = self._pairs.get(old_in)
                    if old_out is not None and self.sad_has_outbound(old_out):
                        self.sad.replace(old_out, outbound)
                    else:
                        self.sad.install(outbound)
                    self._pairs[new_in] = outbound.spi
                elif kind == "peer":
                    spi_in, peer = arg  # type: ignore[misc]
                    spi_out = self._pairs.get(spi_in)
                    for sa in self.sad.outbound_sas():
                        if sa.spi == spi_out:
                            sa.peer = peer
                elif kind == "remove":
                    spi_in = int(arg)  # type: ignore[call-overload]
                    self.sad.remove_inbound(spi_in)
                    old_out = self._pairs.pop(spi_in, None)
                    if old_out is not None and self.sad_has_outbound(old_out):
                        self.sad.remove_outbound(old_out)
            except (KeyError, ValueError) as exc:
                log.warning("data path: %s of an SA failed: %s", kind, exc)
                self.counters[f"{kind} failed"] += 1

    def sad_has_outbound(self, spi: int) -> bool:
        return any(sa.spi == spi for sa in self.sad.outbound_sas())

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        poller = select.poll()
        tun_fd = self.tun.fileno()  # type: ignore[attr-defined]
        udp_fd = self._udp.fileno()  # type: ignore[attr-defined]
        poller.register(tun_fd, select.POLLIN)
        poller.register(udp_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while self._running:
            timeout = self._timeout_ms()
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            if self._commands:  # SAs first: a packet of this poll may need one just installed
                self._apply_commands()
            for fd, _ in ready:
                try:
                    if fd == tun_fd:
                        self._from_tun()
                    elif fd == udp_fd:
                        self._from_udp()
                    else:
                        self._drain_wake()
                except Exception:  # never let one bad batch stop the data path
                    self.counters["loop exception"] += 1
                    if self.counters["loop exception"] <= 5:
                        log.exception("data path: error while handling a batch")
            self._timers()

    def _timeout_ms(self) -> int:
        deadline = self.sad.get_timer()
        if deadline is None:
            return 1000
        return max(0, min(1000, int((deadline - self.clock()) * 1000) + 1))

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass
        self._apply_commands()

    def _from_tun(self) -> None:
        packets = self.tun.read_batch(BATCH)  # type: ignore[attr-defined]
        if not packets:
            return
        self.counters["tun packets in"] += len(packets)
        self.counters["tun batches"] += 1
        for sa, datagrams in self.sad.encrypt_batch(packets):
            self._send_all(datagrams, sa.peer)
            self.counters["esp out"] += len(datagrams)

    def _send_all(self, datagrams: list[bytes], peer: Address) -> None:
        """Send every datagram; when the socket buffer is full, wait briefly for room."""
        udp = self._udp
        for _ in range(50):
            sent = udp.send_batch(datagrams, peer)  # type: ignore[attr-defined]
            if sent >= len(datagrams):
                return
            datagrams = datagrams[sent:]
            select.select([], [udp], [], 0.01)  # type: ignore[list-item]
        self.counters["esp dropped: send buffer full"] += len(datagrams)

    def _from_udp(self) -> None:
        udp = self._udp
        received = udp.recv_buffers(BATCH)  # type: ignore[attr-defined]
        if not received:
            return
        now = self.clock()
        inner: list[bytes] = []
        decrypt_buffer = self.sad.decrypt_buffer
        datagrams = 0
        for data, segment, addr in received:
            datagrams += -(-len(data) // segment) if segment else 1
            before = len(inner)
            rest = decrypt_buffer(data, segment, inner, now)
            if len(inner) > before:
                # authenticated ESP (ICV and replay window passed) arrived on this SA from addr
                spi = int.from_bytes(data[:4], "big")
                self._active.add(spi)
                self._sources[spi] = addr
            if rest:
                self._sort_out(rest, addr, inner, now)
        self.counters["udp datagrams in"] += datagrams
        self.counters["udp batches"] += 1
        if inner:
            self.tun.write_batch(inner)  # type: ignore[attr-defined]
            self.counters["tun packets out"] += len(inner)

    def _sort_out(self, received: list[bytes], addr: Address, inner: list[bytes], now: float) -> None:
        """Datagrams the fast path left: IKE (non-ESP marker), NAT-T keepalives, ESP of
        other SAs or needing the careful path."""
        esp: list[bytes] = []
        for data in received:
            kind = classify_datagram(data)  # RFC 3948 section 2
            if kind is DatagramKind.ESP:
                esp.append(data)
            elif kind is DatagramKind.IKE:
                if self._deliver_ike is not None:
                    self._deliver_ike(data, addr)
            elif kind is DatagramKind.KEEPALIVE:
                self.counters["nat-t keepalive"] += 1
            else:
                self.counters["invalid on nat-t port"] += 1
        if esp:
            self.counters["esp in (careful path)"] += len(esp)
            # one at a time: what opened tells which SA's ESP authenticated from addr (a forged
            # packet of another SA next to a good one must not move that SA's peer here)
            decrypt_batch = self.sad.decrypt_batch
            for packet in esp:
                opened = decrypt_batch([packet], now)
                if opened:
                    inner += opened
                    spi = int.from_bytes(packet[:4], "big")
                    self._active.add(spi)
                    self._sources[spi] = addr

    def _timers(self) -> None:
        now = self.clock()
        deadline = self.sad.get_timer()
        if deadline is not None and deadline <= now:
            self.sad.handle_timer(now)
        while (event := self.sad.next_event()) is not None:
            self._emit(event)
        if self._active and now >= self._next_activity:
            self._next_activity = now + ACTIVITY_EVERY
            sources = tuple(self._sources.items())
            self._emit(PeerActivity(frozenset(self._active), sources))
            self._active.clear()
            self._sources.clear()

    def _emit(self, event: SaLifetimeEvent | PeerActivity) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("data path: event callback failed")

    # ------------------------------------------------------------------ not used by the loop

    def __del__(self) -> None:  # pragma: no cover - best effort
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


SOCKET_BUFFER = 8 << 20
"""UDP socket buffers: TCP through the tunnel sends bursts of 64 GSO segments; a default
208 KiB receive buffer overflows (UdpRcvbufErrors) and costs retransmissions."""


# Linux <asm-generic/socket.h>; the socket module does not export them
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def _grow_buffers(sock: socket.socket) -> None:
    """Ask for SOCKET_BUFFER bytes both ways; root may exceed net.core.[rw]mem_max (*FORCE)."""
    for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
                continue
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        except OSError:
            pass


__all__ = ["DataPlane", "PeerActivity"]
