"""The running ESP data path: TUN <-> ESP (tunvpn.esp) <-> UDP 4500, in its own thread.

The IKE control plane (asyncio, main thread) and the data path meet through a narrow
interface. Into the data thread go *commands*, small frozen dataclasses queued in order and
applied by the data thread before the packets of its next poll (:class:`InstallSA`,
:class:`ReplaceSA`, :class:`SwitchOutbound`, :class:`RemoveSA`, :class:`SetPeer`,
:class:`TakeSnapshot`); :class:`DataPlane` has one method for each. Out of it come
:class:`~tunvpn.esp.events.SaLifetimeEvent` and :class:`PeerActivity` events through a
callback that the shell marshals into its event loop, IKE messages received on port 4500,
and counter snapshots (:class:`~tunvpn.dataplane.counters.CounterSnapshot`) copied by the data thread
itself, so the loop never reads the SA table while the data thread changes it.

The data thread owns the NAT-T socket (RFC 3948: ESP and IKE share UDP 4500): IKE messages
(non-ESP marker) it receives are handed to the control plane, and the control plane sends its
own IKE messages on port 4500 through :meth:`DataPlane.send_ike` (``sendto`` is thread-safe).

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol

from tunvpn.dataplane import PacketDevice
from tunvpn.dataplane.busypoll import BusyPoll
from tunvpn.dataplane.counters import CounterSnapshot, SaCounts
from tunvpn.dataplane.stagetrace import StageTrace
from tunvpn.esp import InboundSA, OutboundSA, SadTable, sa_pair_from_child
from tunvpn.esp.events import SaLifetimeEvent
from tunvpn.esp.ratelimit import DropLog
from tunvpn.ike.events import ChildSAEstablished
from tunvpn.ipsec.udpencap import DatagramKind, classify_datagram

log = logging.getLogger(__name__)

Address = tuple[str, int]
BATCH = 128
LONE_AFTER_NS = 1_000_000
"""A side (TUN or UDP) that had no batch for this long reads one packet (or one GRO buffer)
when it wakes, and handles it before it looks for more: a lone packet (a ping, the first of a
burst) then costs one read instead of two (the second would only find nothing: EAGAIN), on a
CPU that is cold after the idle time (issue 21, docs/datapath.md "Latency"). A busy side reads
whole batches: its batches come back to back, well within this."""
ACTIVITY_EVERY = 1.0
"""Seconds between "peer alive" notes to the control plane (DPD, RFC 3706 section 5.3)."""
UNKNOWN_SPI_NOTES = 32
"""At most this many :class:`UnknownSpi` notes a second to the control plane (a flood of
ESP with made-up SPIs costs the loop no more; the IKE side budgets its answers too)."""
STALL_AFTER = 10.0
"""Seconds without a turn of the data thread's loop (which polls for at most 1 s) after
which :meth:`DataPlane.health` reports it stuck."""
SNAPSHOT_WAIT = 0.5
"""Seconds the loop waits for the data thread to copy its counters before it falls back to
the last copy (the data thread may be stuck waiting for room in a full socket buffer)."""


class DatagramDevice(Protocol):
    """What the data thread needs of the NAT-T socket (``udp_linux.UdpSocket``)."""

    def send(self, datagram: bytes | bytearray | memoryview, addr: Address) -> bool:
        """Send one datagram (an IKE message, thread-safe); errors are counted, not raised."""
        ...

    def send_batch(self, datagrams: Sequence[bytes | bytearray | memoryview], addr: Address) -> int:
        """Send datagrams to one peer (GSO where possible); returns how many left."""
        ...

    def recv_buffers(self, max_datagrams: int = BATCH) -> list[tuple[bytes, int, Address]]:
        """``(buffer, GRO segment size or 0, source)`` ready now, without blocking."""
        ...

    def fileno(self) -> int: ...


# ---------------------------------------------------------------------- what goes between threads


@dataclass(frozen=True)
class PeerActivity:
    """Authenticated ESP arrived on these inbound SPIs since the last note."""

    spis: frozenset[int]
    sources: tuple[tuple[int, Address], ...] = ()
    """(inbound SPI, outer source address) of the last ESP that passed its ICV and replay
    check on each SPI: a NAT that rebinds shows here first (RFC 3948 section 4)."""


@dataclass(frozen=True)
class UnknownSpi:
    """ESP arrived for an inbound SPI the data path does not have (unauthenticated: anyone
    can send it). At most ``UNKNOWN_SPI_NOTES`` a second, one per source address."""

    spi: int
    source: Address
    size: int
    """The UDP payload's length (an answer must not be larger)."""


DataEvent = SaLifetimeEvent | PeerActivity | UnknownSpi
"""What the data thread tells the control plane (through ``on_event``)."""


@dataclass(frozen=True)
class InstallSA:
    """Install the pair of a finished Quick Mode."""

    name: ClassVar[str] = "install"
    inbound: InboundSA
    """The SA the peer sends on; it belongs to the data thread from now on."""
    outbound: OutboundSA
    """The SA we send on."""


@dataclass(frozen=True)
class ReplaceSA:
    """Make-before-break: accept the new inbound SA at once; move outbound traffic from the
    pair of ``old_spi_in`` to ``outbound`` now, or at a later :class:`SwitchOutbound`."""

    name: ClassVar[str] = "replace"
    old_spi_in: int
    """Inbound SPI of the pair being replaced (it stays until :class:`RemoveSA`)."""
    inbound: InboundSA
    """The new inbound SA."""
    outbound: OutboundSA | None
    """The new outbound SA, or None when it waits for :class:`SwitchOutbound`."""


@dataclass(frozen=True)
class SwitchOutbound:
    """Move outbound traffic of the pair of ``old_spi_in`` to ``outbound`` (a Quick Mode
    responder waited until the initiator surely holds the keys)."""

    name: ClassVar[str] = "switch"
    new_spi_in: int
    """Inbound SPI of the new pair (installed by :class:`ReplaceSA`)."""
    old_spi_in: int
    """Inbound SPI of the pair whose outbound SA is replaced."""
    outbound: OutboundSA
    """The new outbound SA."""


@dataclass(frozen=True)
class RemoveSA:
    """Remove a pair by its inbound SPI."""

    name: ClassVar[str] = "remove"
    spi_in: int
    """Inbound SPI of the pair."""


@dataclass(frozen=True)
class SetPeer:
    """Send the outbound SA paired with ``spi_in`` to ``peer`` (the IKE engine followed the
    peer behind its NAT)."""

    name: ClassVar[str] = "peer"
    spi_in: int
    """Inbound SPI of the pair."""
    peer: Address
    """The peer's new outer address."""


@dataclass(frozen=True)
class TakeSnapshot:
    """Copy the counters on the data thread and hand the copy to the waiting ``reply``."""

    name: ClassVar[str] = "snapshot"
    reply: SnapshotReply
    """Where the copy goes."""


@dataclass(eq=False)
class SnapshotReply:
    """One answer to :class:`TakeSnapshot`: set once by the data thread, read by the asker."""

    done: threading.Event = field(default_factory=threading.Event)
    snapshot: CounterSnapshot | None = None


Command = InstallSA | ReplaceSA | SwitchOutbound | RemoveSA | SetPeer | TakeSnapshot
"""What the control plane asks of the data thread; applied in the order given."""


class DataPlane:
    """Moves packets between a TUN device and the NAT-T UDP socket through the SAD.

    :param tun: the TUN device (:class:`~tunvpn.dataplane.PacketDevice`).
    :param on_event: called from the data thread with :class:`SaLifetimeEvent` and
        :class:`PeerActivity` objects; it must hand them to the control plane thread-safely.
    :param busy_poll: poll without sleeping for a while after sending a lone packet, as this
        policy says (:mod:`tunvpn.dataplane.busypoll`); None: never.
    """

    def __init__(
        self,
        tun: PacketDevice,
        *,
        on_event: Callable[[DataEvent], None] | None = None,
        replay_window: int = 4096,
        clock: Callable[[], float] = time.time,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self.tun = tun
        self.on_event = on_event
        self.replay_window = replay_window
        self.clock = clock
        # dropped ESP: the first few logged, then one line per ESP_DROP_LOG_INTERVAL with the
        # counts held back, as the IKE side sums up its bad input (issue 14: garbage on the
        # NAT-T port made five lines a second)
        self.sad = SadTable(drop_log=DropLog(rate=1.0 / ESP_DROP_LOG_INTERVAL, burst=3.0))
        """The SA table; only the data thread touches it once the thread runs."""
        self.counters: Counter[str] = Counter()
        """The data thread's own counts (read them through :meth:`counter_snapshot`)."""
        self._udp: DatagramDevice | None = None
        self._deliver_ike: Callable[[bytes, Address], None] | None = None
        self._commands: deque[Command] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._running = False
        self._active: set[int] = set()
        self._sources: dict[int, Address] = {}  # inbound SPI -> source of its last authenticated ESP
        self._next_activity = 0.0
        self._unknown_noted: set[str] = set()  # sources told about in this second
        self._unknown_second = 0.0
        self._pairs: dict[int, int] = {}  # inbound SPI -> outbound SPI
        self._pending_out: dict[int, tuple[int, OutboundSA]] = {}  # new inbound SPI -> (old, outbound)
        self._last_snapshot = CounterSnapshot()
        self._trace = StageTrace.from_environment()
        """Per-batch timestamps for the latency breakdown (TUNVPN_STAGE_TRACE), else None."""
        self.busy_poll = busy_poll if busy_poll is not None and busy_poll.enabled else None
        """The busy-poll policy (touched by the data thread only, once it runs), or None."""
        self._poll_until = 0
        """When set, the loop busy-polls until this ``time.monotonic_ns()`` before it sleeps."""
        self._woke = 0
        self._woke_wall = 0
        self._tun_last_ns = 0
        self._udp_last_ns = 0
        self.last_turn = time.monotonic()
        """When the data thread last went round its loop (it polls for at most a second)."""
        self.activity = 0
        """Batches of packets handled so far, either way: one int that the data thread replaces
        and any thread may read, to learn whether anything moved since it last looked without
        asking for a snapshot (which wakes the data thread: a client's once-a-second traffic
        watch on an idle tunnel would wake it for nothing)."""

    # ------------------------------------------------------------------ wiring

    def attach(self, sock: socket.socket, deliver_ike: Callable[[bytes, Address], None]) -> None:
        """Take over the bound NAT-T socket; IKE datagrams received go to ``deliver_ike``."""
        from tunvpn.dataplane.udp_linux import UdpSocket

        _grow_buffers(sock)
        self.attach_device(UdpSocket(sock), deliver_ike)

    def attach_device(self, udp: DatagramDevice, deliver_ike: Callable[[bytes, Address], None]) -> None:
        """Use ``udp`` as the NAT-T socket (:meth:`attach` wraps a bound socket; tests give a fake)."""
        self._udp = udp
        self._deliver_ike = deliver_ike

    def replace_socket(self, sock: socket.socket) -> None:
        """Use the bound ``sock`` as the NAT-T socket from now on (the client roamed to another
        address: tunvpn.client.roaming). The data thread polls the new one at its next wake-up
        and closes the old one; sends from now on leave from the new one."""
        from tunvpn.dataplane.udp_linux import UdpSocket

        _grow_buffers(sock)
        old, self._udp = self._udp, UdpSocket(sock)
        if self._thread is None:  # not polling: nothing else holds the old socket
            close = getattr(old, "close", None)
            if close is not None:
                close()
        else:
            self._wake()

    def send_ike(self, data: bytes, remote: Address) -> None:
        """Send an IKE message (with its non-ESP marker) from the NAT-T socket."""
        if self._udp is None:
            raise RuntimeError("no NAT-T socket attached")
        self._udp.send(data, remote)

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
        self.submit(InstallSA(inbound, outbound))

    def replace(self, old_spi_in: int, child: ChildSAEstablished, *, switch_outbound: bool = True) -> None:
        """Make-before-break: the new inbound SA is accepted at once; outbound traffic moves to
        the new SA now, or at :meth:`switch_outbound` (a Quick Mode responder waits until the
        initiator surely holds the keys); the old inbound SA stays valid until :meth:`remove`
        is called for it (thread-safe)."""
        inbound, outbound = sa_pair_from_child(child, self.clock(), replay_window=self.replay_window)
        self.submit(ReplaceSA(old_spi_in, inbound, outbound if switch_outbound else None))
        if not switch_outbound:
            self._pending_out[inbound.spi] = (old_spi_in, outbound)

    def switch_outbound(self, new_spi_in: int) -> None:
        """Move outbound traffic to the SA installed by ``replace(..., switch_outbound=False)``."""
        pending = self._pending_out.pop(new_spi_in, None)
        if pending is not None:
            self.submit(SwitchOutbound(new_spi_in, *pending))

    def remove(self, spi_in: int) -> None:
        """Remove a pair by its inbound SPI (thread-safe)."""
        self.submit(RemoveSA(spi_in))

    def set_peer(self, spi_in: int, peer: Address) -> None:
        """Send the outbound SA paired with ``spi_in`` to ``peer`` from now on (the IKE engine
        followed the peer behind its NAT; thread-safe)."""
        self.submit(SetPeer(spi_in, peer))

    def health(self, now: float | None = None) -> str | None:
        """Why the data path is not working (for a service watchdog), or None: its thread
        died, or has not gone round its loop for ``STALL_AFTER`` seconds (``now``:
        ``time.monotonic()`` by default)."""
        thread = self._thread
        if not self._running or thread is None:
            return None  # not started, or stopping: nothing to watch
        if not thread.is_alive():
            return "the ESP data path thread has died"
        stalled = (time.monotonic() if now is None else now) - self.last_turn
        if stalled > STALL_AFTER:
            return f"the ESP data path thread has not turned for {stalled:.0f} s"
        return None

    def counter_snapshot(self) -> CounterSnapshot:
        """The data thread's counts and every SA's bytes, packets and drops, copied by the data
        thread after the commands given before (a :data:`tunvpn.dataplane.counters.Source`). If the
        thread does not answer within :data:`SNAPSHOT_WAIT`, the last copy it made."""
        reply = SnapshotReply()
        self.submit(TakeSnapshot(reply))
        if reply.done.wait(SNAPSHOT_WAIT) and reply.snapshot is not None:
            return reply.snapshot
        return self._last_snapshot

    def stats(self) -> dict[str, object]:
        """The data thread's counts, its ESP drops by reason, the number of SAs and what busy
        polling did (logged at exit)."""
        snap = self.counter_snapshot()
        out: dict[str, object] = dict(snap.group("dataplane"))
        out["drops"] = dict(snap.group("esp drops"))
        out["sas"] = snap.get("dataplane sad", "sas")
        if snap.group("busy poll"):
            out["busy poll"] = dict(snap.group("busy poll"))
        return out

    def submit(self, command: Command) -> None:
        """Queue a command for the data thread (applied at once if the thread does not run)."""
        self._commands.append(command)
        if self._thread is None:  # not started yet (tests, or before the socket exists), or stopped
            self._apply_commands()
        else:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------------ commands (data thread)

    def _apply_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            try:
                self._apply(command)
            except (KeyError, ValueError) as exc:
                log.warning("data path: %s of an SA failed: %s", command.name, exc)
                self.counters[f"{command.name} failed"] += 1

    def _apply(self, command: Command) -> None:
        match command:
            case InstallSA(inbound=inbound, outbound=outbound):
                self.sad.install_pair(inbound, outbound)
                self._pairs[inbound.spi] = outbound.spi
            case ReplaceSA(old_spi_in=old_in, inbound=inbound, outbound=outbound):
                self.sad.install(inbound)
                if outbound is not None:
                    self._switch(inbound.spi, old_in, outbound)
            case SwitchOutbound(new_spi_in=new_in, old_spi_in=old_in, outbound=outbound):
                self._switch(new_in, old_in, outbound)
            case SetPeer(spi_in=spi_in, peer=peer):
                spi_out = self._pairs.get(spi_in)
                for sa in self.sad.outbound_sas():
                    if sa.spi == spi_out:
                        sa.peer = peer
            case RemoveSA(spi_in=spi_in):
                self.sad.remove_inbound(spi_in)
                old_out = self._pairs.pop(spi_in, None)
                if old_out is not None and self.sad_has_outbound(old_out):
                    self.sad.remove_outbound(old_out)
            case TakeSnapshot(reply=reply):
                reply.snapshot = self._last_snapshot = self._take_snapshot()
                reply.done.set()

    def _switch(self, new_in: int, old_in: int, outbound: OutboundSA) -> None:
        old_out = self._pairs.get(old_in)
        if old_out is not None and self.sad_has_outbound(old_out):
            self.sad.replace(old_out, outbound)
        else:
            self.sad.install(outbound)
        self._pairs[new_in] = outbound.spi

    def _take_snapshot(self) -> CounterSnapshot:
        """Copy every count (on the data thread, or before it runs / after it stopped)."""
        sas: dict[int, SaCounts] = {}
        for sa in self.sad.inbound_sas():
            drops = {reason.name.lower(): n for reason, n in sa.drop_counts().items() if n}
            sas[sa.spi] = SaCounts(sa.bytes, sa.packets, drops)
        for out in self.sad.outbound_sas():
            sas[out.spi] = SaCounts(out.bytes, out.seq)
        drops = {reason.name.lower(): n for reason, n in self.sad.drop_counts().items() if n}
        groups: dict[str, dict[str, int]] = {
            "dataplane": dict(self.counters),
            "esp drops": drops,
            "dataplane sad": {"sas": len(self.sad)},
        }
        if self.busy_poll is not None:
            groups["busy poll"] = {
                "limit us": self.busy_poll.limit_ns // 1000,
                **{key.replace("_", " "): n for key, n in asdict(self.busy_poll.stats).items()},
                "answer us": self.busy_poll.answer_ns // 1000,
            }
        return CounterSnapshot(groups=groups, sas=sas)

    def sad_has_outbound(self, spi: int) -> bool:
        return any(sa.spi == spi for sa in self.sad.outbound_sas())

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        poller = select.poll()
        udp = self._udp
        if udp is None:
            return
        tun_fd = self.tun.fileno()
        udp_fd = udp.fileno()
        poller.register(tun_fd, select.POLLIN)
        poller.register(udp_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        trace = self._trace
        if trace is not None:
            enable = getattr(udp, "enable_timestamps", None)
            if enable is not None:
                enable()
        try:
            self._loop(poller, udp, tun_fd, udp_fd, trace)
        finally:
            if trace is not None:
                written = trace.write()
                if written is not None:
                    log.info("data path: stage trace written to %s", written)

    def _loop(
        self, poller: select.poll, udp: DatagramDevice, tun_fd: int, udp_fd: int, trace: StageTrace | None
    ) -> None:
        while self._running:
            self.last_turn = time.monotonic()
            timeout = self._timeout_ms()
            try:
                ready = self._busy_poll(poller, udp_fd) if self._poll_until else []
                if not ready:
                    ready = poller.poll(timeout)
            except InterruptedError:
                continue
            if trace is not None:
                self._woke = time.perf_counter_ns()
                self._woke_wall = time.time_ns()
            if self._commands:  # SAs first: a packet of this poll may need one just installed
                self._apply_commands()
            if self._udp is not udp and self._udp is not None:  # replace_socket: poll the new one
                poller.unregister(udp_fd)
                old, udp = udp, self._udp
                udp_fd = udp.fileno()
                poller.register(udp_fd, select.POLLIN)
                close = getattr(old, "close", None)
                if close is not None:
                    close()
            for fd, _ in ready:
                try:
                    if fd == tun_fd:
                        self._from_tun()
                    elif fd == udp_fd:
                        self._from_udp()
                    elif fd == self._wake_r:
                        self._drain_wake()
                except Exception:  # never let one bad batch stop the data path
                    self.counters["loop exception"] += 1
                    if self.counters["loop exception"] <= 5:
                        log.exception("data path: error while handling a batch")
            self._timers()

    def _busy_poll(self, poller: select.poll, udp_fd: int) -> list[tuple[int, int]]:
        """Poll without sleeping until something is ready or ``_poll_until`` passes (a lone
        packet went out: its answer is handled at once, on a CPU that is still warm). Yields
        the CPU between polls, so another task that wants it (the one to answer, say) runs.
        Commands are applied as they come, without ending the poll."""
        deadline, self._poll_until = self._poll_until, 0
        busy = self.busy_poll
        if busy is None:
            return []
        clock = time.monotonic_ns
        poll = poller.poll
        wake_fd = self._wake_r
        while True:
            ready = poll(0)
            now = clock()
            if ready and self._running and all(fd == wake_fd for fd, _ in ready):
                self._drain_wake()  # a snapshot, an SA: no reason to stop waiting for the answer
                ready = []
            if ready:
                answered = any(fd == udp_fd for fd, _ in ready)
                busy.stop(now, answered=answered, expired=False)
                return ready
            if now >= deadline:
                busy.stop(now, answered=False, expired=True)
                return ready
            os.sched_yield()

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
        start = time.monotonic_ns()
        lone = start - self._tun_last_ns > LONE_AFTER_NS
        self._tun_last_ns = start
        packets = self.tun.read_batch(1 if lone else BATCH)
        if not packets:
            return
        read = time.perf_counter_ns() if self._trace is not None else 0
        self.activity += 1
        self.counters["tun packets in"] += len(packets)
        self.counters["tun batches"] += 1
        groups = self.sad.encrypt_batch(packets)
        core = time.perf_counter_ns() if self._trace is not None else 0
        for sa, datagrams in groups:
            if sa.peer is None:  # an SA from a Quick Mode always has one
                self.counters["esp dropped: no peer"] += len(datagrams)
                continue
            self._send_all(datagrams, sa.peer)
            self.counters["esp out"] += len(datagrams)
        if lone and self.busy_poll is not None and len(packets) == 1:
            self._poll_until = self.busy_poll.start(time.monotonic_ns())
        if self._trace is not None:
            done, woke = time.perf_counter_ns(), self._woke
            self._trace.add(
                "out", self._woke_wall, read - woke, core - woke, done - woke, len(packets), packets[0]
            )

    def _send_all(self, datagrams: list[bytes], peer: Address) -> None:
        """Send every datagram; when the socket buffer is full, wait briefly for room."""
        udp = self._udp
        if udp is None:
            return
        for _ in range(50):
            sent = udp.send_batch(datagrams, peer)
            if sent >= len(datagrams):
                return
            datagrams = datagrams[sent:]
            select.select([], [udp.fileno()], [], 0.01)
        self.counters["esp dropped: send buffer full"] += len(datagrams)

    def _from_udp(self) -> None:
        udp = self._udp
        if udp is None:
            return
        start = time.monotonic_ns()
        lone = start - self._udp_last_ns > LONE_AFTER_NS
        self._udp_last_ns = start
        received = udp.recv_buffers(1 if lone else BATCH)
        if not received:
            return
        read = time.perf_counter_ns() if self._trace is not None else 0
        self.activity += 1
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
        core = time.perf_counter_ns() if self._trace is not None else 0
        if inner:
            self.tun.write_batch(inner)
            self.counters["tun packets out"] += len(inner)
        if self._trace is not None and inner:
            done, woke = time.perf_counter_ns(), self._woke
            stamp = getattr(udp, "first_stamp_ns", 0) or None
            self._trace.add(
                "in", self._woke_wall, read - woke, core - woke, done - woke, datagrams, inner[0], stamp
            )

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
                elif len(packet) >= 8 and not self.sad.has_inbound(packet[:4]):
                    self._note_unknown_spi(packet, addr, now)

    def _note_unknown_spi(self, packet: bytes, addr: Address, now: float) -> None:
        """Tell the control plane (which may answer INVALID-SPI: a peer that still uses SAs
        we lost in a restart then logs in again at once), within ``UNKNOWN_SPI_NOTES``."""
        if now - self._unknown_second >= 1.0 or now < self._unknown_second:
            self._unknown_second = now
            self._unknown_noted.clear()
        if addr[0] in self._unknown_noted or len(self._unknown_noted) >= UNKNOWN_SPI_NOTES:
            return
        self._unknown_noted.add(addr[0])
        self._emit(UnknownSpi(int.from_bytes(packet[:4], "big"), addr, len(packet)))

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

    def _emit(self, event: DataEvent) -> None:
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


ESP_DROP_LOG_INTERVAL = 10.0
"""Seconds between two log lines about dropped ESP packets once the first few were logged."""

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


__all__ = [
    "Command",
    "DataEvent",
    "DataPlane",
    "DatagramDevice",
    "InstallSA",
    "PeerActivity",
    "RemoveSA",
    "ReplaceSA",
    "SetPeer",
    "SnapshotReply",
    "SwitchOutbound",
    "TakeSnapshot",
]
