"""The asyncio shell of one :class:`~tunvpn.ike.engine.IkeEngine`: two UDP sockets, one timer.

The engine is sans-I/O; this module is the only place where its datagrams meet sockets and
its ``now`` meets the clock (aioquic's ``asyncio/protocol.py`` plays the same part):

* one socket on ``(local_ip, ike_port)`` and one on ``(local_ip, natt_port)``; every IKE
  payload goes to ``engine.receive_datagram(data, remote, (local_ip, port), time.time())``.
  On the NAT-T port the 4-byte non-ESP marker stays on (the engine strips it). What else
  arrives there (:func:`tunvpn.ipsec.udpencap.classify_datagram`, RFC 3948 section 2) is
  counted and dropped: NAT-keepalives, and ESP when no data path owns the socket (with a
  data path, :class:`NattOwner` receives on 4500 and hands over only the IKE messages).
* the IKE datagrams of both ports pass :class:`IkeInbox` on their way to the engine: a
  first look at the header (:func:`tunvpn.ike.firstlook.first_look`) drops garbage and
  messages for unknown ISAKMP SAs, counted by reason; on a gateway new exchanges are
  budgeted per source and in total (:class:`NewExchangeLimit`); the queue is bounded, and
  messages of known ISAKMP SAs are served first (issue 14).
* after every input the driver sends ``engine.datagrams_to_send()``, drains
  ``engine.next_event()``, logs each event once, hands it to the handler and re-arms the one
  timer from ``engine.get_timer()``.
* whatever the handler commands the engine to do is flushed as soon as it returns (for an
  async handler: as soon as its coroutine finishes).

Secrets never reach the log: events hide keys and passwords from ``repr`` and nothing here
formats them.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import inspect
import logging
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tunvpn.ike import events as ev
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.firstlook import ALL_DROPS, Verdict, first_look
from tunvpn.ike.proposals import EspSuite
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform
from tunvpn.ipsec.budget import Budget
from tunvpn.ipsec.udpencap import NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify_datagram

log = logging.getLogger(__name__)

Address = tuple[str, int]


class KeyLogger(Protocol):
    """What the driver needs of a key log (:class:`tunvpn.keylog.KeyLog`, which the daemons pass)."""

    def log_ike_sa(self, icookie: bytes, enc_key: bytes) -> None: ...

    def log_esp_sa(
        self,
        src: str,
        dst: str,
        spi: int,
        transform: EspTransform,
        enc_key: bytes,
        auth: AuthAlgorithm | None,
        auth_key: bytes,
    ) -> None: ...


EventHandler = Callable[[ev.Event], Awaitable[None] | None]


class NattOwner(Protocol):
    """The ESP data path, when it owns the NAT-T socket (:class:`tunvpn.dataplane.thread.DataPlane`)."""

    def attach(self, sock: socket.socket, deliver_ike: Callable[[bytes, Address], None]) -> None: ...

    def send_ike(self, data: bytes, remote: Address) -> None: ...

    def replace_socket(self, sock: socket.socket) -> None: ...


IKE_QUEUE_SIZE = 1024
"""IKE datagrams the data thread may hand to the loop before it drops (issue 14)."""
QUEUE_FULL = "ike queue full"
"""The counter of datagrams dropped because the IKE queue was full."""
RATE_LIMITED = "new exchange rate limit"
"""The counter of first messages dropped by the :class:`NewExchangeLimit` budget."""
DROP_COUNTERS = frozenset({QUEUE_FULL, RATE_LIMITED, *(look.reason for look in ALL_DROPS)})
"""The names of :meth:`UdpDriver.counts` that count dropped IKE datagrams (``tunvpn status``)."""
TIMER_RETRY = 0.05
"""Seconds before handle_timer runs again when the engine did not move a past deadline."""
DROP_SUMMARY_INTERVAL = 10.0
"""Seconds between the summary lines of what the inbox dropped (as the engine's bad input)."""


def send_with_ttl(sock: socket.socket, data: bytes, remote: Address, ttl: int) -> bool:
    """Send one datagram with IP TTL (IPv6: hop limit) ``ttl``, per packet (ancillary data: the
    socket's other sends keep theirs). False where the system takes no per-packet TTL."""
    level, option = (
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)
        if sock.family == socket.AF_INET6
        else (socket.IPPROTO_IP, socket.IP_TTL)
    )
    try:
        sock.sendmsg([data], [(level, option, ttl.to_bytes(4, sys.byteorder))], 0, remote)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            return False
        raise
    return True


class BindError(OSError):
    """A socket could not be bound; the message says why in words a user can act on."""


def esp_suite_name(transform: int, key_length: int | None, integrity: int | None) -> str:
    """``aes256gcm16``, ``aes256-sha1``… for a ChildSAEstablished event."""
    try:
        suite = EspSuite(
            EspTransform(transform), key_length, AuthAlgorithm(integrity) if integrity is not None else None
        )
    except ValueError:
        return f"esp-transform-{transform}"
    return str(suite)


def describe_event(event: ev.Event) -> str | None:
    """The one INFO/WARNING log line of an event (``None`` for events not worth a line)."""
    if isinstance(event, ev.Phase1Established):
        return (
            f"phase 1 established with {event.peer[0]}:{event.peer[1]} ({event.exchange} mode, {event.role}) "
            f"suite {event.suite}, local id {event.local_id}, peer id {event.peer_id}, "
            f"NAT local={'yes' if event.nat_local else 'no'} remote={'yes' if event.nat_remote else 'no'}"
        )
    if isinstance(event, ev.Phase1Failed):
        notify = f" (notify {event.notify})" if event.notify is not None else ""
        return f"phase 1 with {event.peer[0]}:{event.peer[1]} failed: {event.reason}{notify}"
    if isinstance(event, ev.XauthRequested):
        text = f" message {event.message!r}" if event.message else ""
        return (
            f"XAUTH: gateway asks for {', '.join(event.fields) or 'nothing'} (type {event.xauth_type}){text}"
        )
    if isinstance(event, ev.XauthCredentials):
        return f"XAUTH: credentials of user {event.user_name!r} from {event.peer[0]}:{event.peer[1]}"
    if isinstance(event, ev.XauthCompleted):
        user = f" for user {event.user_name!r}" if event.user_name else ""
        return f"XAUTH {'succeeded' if event.success else 'FAILED'}{user}"
    if isinstance(event, ev.ModeConfigRequested):
        user = f" user {event.user_name!r}" if event.user_name else ""
        return (
            f"Mode Config: request from {event.peer[0]}:{event.peer[1]} (id {event.peer_id}{user}, "
            f"{len(event.requested_types)} attributes)"
        )
    if isinstance(event, ev.ModeConfigReceived):
        kind = "pushed" if event.pushed else "reply"
        return f"Mode Config: {kind} received: {describe_mode_config(event.config)}"
    if isinstance(event, ev.ChildSAEstablished):
        pfs = f"pfs {event.pfs_group}" if event.pfs_group is not None else "no pfs"
        name = f" {event.policy_name!r}" if event.policy_name else ""
        return (
            f"Quick Mode SA{name} established ({event.role}) "
            f"{esp_suite_name(event.transform, event.key_length, event.integrity)} "
            f"spi_in=0x{event.spi_in:08x} spi_out=0x{event.spi_out:08x} "
            f"ts {event.local_ts} === {event.remote_ts}, {pfs}, lifetime {event.lifetime_seconds}s, "
            f"encap {event.encapsulation}, peer {event.remote[0]}:{event.remote[1]}"
        )
    if isinstance(event, ev.ChildSAFailed):
        name = f" {event.policy_name!r}" if event.policy_name else ""
        notify = f" (notify {event.notify})" if event.notify is not None else ""
        return f"Quick Mode{name} failed: {event.reason}{notify}"
    if isinstance(event, ev.ChildSADeleted):
        who = "by peer" if event.by_peer else "by us"
        return f"Quick Mode SA deleted {who}: spi_in=0x{event.spi_in:08x} spi_out=0x{event.spi_out:08x}"
    if isinstance(event, ev.IkeSADeleted):
        return f"ISAKMP SA with {event.peer[0]}:{event.peer[1]} deleted: {event.reason}"
    if isinstance(event, ev.NotifyReceived):
        return f"notify {event.notify_type} received ({len(event.data)} bytes of data)"
    if isinstance(event, ev.PeerAddressChanged):
        return f"peer moved from {event.old[0]}:{event.old[1]} to {event.new[0]}:{event.new[1]}"
    return None


def describe_mode_config(config: object) -> str:
    """The non-empty fields of a ModeConfig, for humans (no secrets are in Mode Config)."""
    parts = []
    for name in ("address", "netmask", "dns", "ip6_address", "ip6_dns", "split_include", "banner"):
        value = getattr(config, name, None)
        if value in (None, (), [], ""):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        parts.append(f"{name.replace('_', ' ')} {value}")
    return "; ".join(parts) if parts else "no attributes"


_UNLIMITED = 1e12
"""A rate and burst no sender reaches: a budget of this size never refuses."""
FIRSTS_REMEMBERED = 16384
"""Admitted first messages whose digest the inbox keeps (least recently admitted forgotten),
to know an exact retransmission of one (about 100 bytes each)."""


@dataclass(frozen=True, slots=True)
class NewExchangeLimit:
    """How many new phase 1 exchanges (first messages) a gateway starts, per source address
    and in all, before the engine parses them (issue 14: parsing one costs milliseconds).

    A token bucket per source and one for all sources (:class:`tunvpn.ipsec.budget.Budget`):
    ``*_rate`` first messages a second, up to ``*_burst`` at once. A retransmission of a first
    message the engine holds half-open (the same bytes from the same source) is not charged:
    the engine answers it from its stored reply."""

    per_source_rate: float = 5.0
    """First messages a second from one source address."""
    per_source_burst: float = 20.0
    """First messages one source address may send at once (many users behind one NAT)."""
    total_rate: float = 3000.0
    """First messages a second from all sources together. A first message whose offer the
    engine knows costs it about 0.1-0.15 ms (a new offer is budgeted by the engine itself,
    ``EngineConfig.offer_budget``), so this is about half a core: high enough that a storm
    of a few thousand spoofed first messages a second rarely crowds out a real user's."""
    total_burst: float = 6000.0
    """First messages all sources may send at once (every client reconnecting after a restart)."""
    max_sources: int = 4096
    """Source addresses remembered (least recently used forgotten: :class:`Budget`)."""

    @classmethod
    def of(
        cls, per_source: float, per_source_burst: float, total: float, total_burst: float
    ) -> NewExchangeLimit | None:
        """The limit of the gateway's settings, where a rate of 0 means no limit of that
        kind (``None``: no limit at all)."""
        if per_source <= 0 and total <= 0:
            return None
        return cls(
            per_source if per_source > 0 else _UNLIMITED,
            per_source_burst if per_source > 0 else _UNLIMITED,
            total if total > 0 else _UNLIMITED,
            total_burst if total > 0 else _UNLIMITED,
        )

    def budget(self, now: float) -> Budget:
        return Budget(
            self.per_source_rate,
            self.per_source_burst,
            self.total_rate,
            self.total_burst,
            max_keys=self.max_sources,
            now=now,
        )


class IkeInbox:
    """The bounded hand-over of IKE datagrams from where they are received (the data thread,
    which owns the NAT-T socket, and the event loop's socket on the IKE port) to the engine
    on the event loop (issue 14: it was one unbounded ``call_soon_threadsafe`` per datagram,
    so a storm grew memory and a backlog real users waited behind).

    :meth:`put` (any thread) never blocks. It first looks at the header
    (:func:`~tunvpn.ike.firstlook.first_look`): garbage and messages for ISAKMP SAs the engine
    does not know (``known``) are dropped and counted by reason in :attr:`drops`. With a
    ``limit_new`` budget, a new exchange's first message is charged to its source (not a
    repeat of a first message the engine holds half-open: ``held``) and dropped when over
    budget (``clock``: monotonic seconds). When ``limit`` datagrams wait, a new one is
    dropped and counted (``ike queue full``). Messages of known ISAKMP SAs wait in their own
    queue, served first, and may push out the oldest waiting new first message. The loop is
    woken once per batch, not once per datagram. :meth:`take` (loop) returns everything
    waiting, known SAs first, each with the port it came in on.
    """

    def __init__(
        self,
        limit: int,
        known: Callable[[bytes], bool],
        *,
        ike_port: int = 500,
        held: Callable[[bytes, Address], bool] | None = None,
        limit_new: NewExchangeLimit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("the IKE queue needs room for at least one datagram")
        self.limit = limit
        self._known = known
        self._ike_port = ike_port
        self._held = held
        self._clock = clock
        self._budget = limit_new.budget(clock()) if limit_new is not None else None
        self._firsts: OrderedDict[tuple[bytes, Address], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._for_sas: deque[tuple[bytes, Address, int]] = deque()
        self._new: deque[tuple[bytes, Address, int]] = deque()
        self._woken = False
        self.dropped = 0
        """Datagrams dropped because the queue was full."""
        self.drops: Counter[str] = Counter()
        """Datagrams the first look or the new exchange budget dropped, by reason (read with
        :meth:`counts`: the data thread writes it)."""

    def put(self, data: bytes, remote: Address, port: int) -> bool:
        """Look at one datagram received on ``port`` (on the NAT-T port with its non-ESP
        marker, which the engine strips) and queue it; True if the loop must be woken."""
        offset = 4 if port != self._ike_port or data[:4] == NON_ESP_MARKER else 0  # as the engine
        look = first_look(data, self._known, offset=offset)
        if look.verdict is Verdict.DROP:
            with self._lock:
                self.drops[look.reason] += 1
            return False
        for_sa = look.verdict is Verdict.FOR_KNOWN_SA
        with self._lock:
            if len(self._for_sas) + len(self._new) >= self.limit:
                if not (for_sa and self._new):
                    self.dropped += 1
                    return False
                self._new.popleft()  # real users first: an unauthenticated first message goes
                self.dropped += 1
            if not (for_sa or self._admitted(data, offset, remote)):
                self.drops[RATE_LIMITED] += 1
                return False
            (self._for_sas if for_sa else self._new).append((data, remote, port))
            wake, self._woken = not self._woken, True
        return wake

    def _admitted(self, data: bytes, offset: int, remote: Address) -> bool:
        """Whether a new exchange's first message is within the budget (under the lock).

        An exact retransmission (the same bytes, from the same address and port) of a first
        message admitted before, whose exchange the engine still holds half-open (``held``),
        is not charged: the engine answers it from its stored reply. Any other message under
        that cookie would be parsed, so it is charged like a new one."""
        if self._budget is None:
            return True
        message = memoryview(data)[offset:]
        key = (bytes(message[:8]), remote)
        seen = self._firsts.get(key)
        held = seen is not None and self._held is not None and self._held(key[0], remote)
        if held and seen is not None and hmac.compare_digest(seen, _digest(message)):
            return True
        if not self._budget.allow(remote[0], self._clock()):
            return False
        self._firsts[key] = _digest(message)
        self._firsts.move_to_end(key)
        while len(self._firsts) > FIRSTS_REMEMBERED:
            self._firsts.popitem(last=False)
        return True

    def take(self) -> list[tuple[bytes, Address, int]]:
        with self._lock:
            items = [*self._for_sas, *self._new]
            self._for_sas.clear()
            self._new.clear()
            self._woken = False
        return items

    def depth(self) -> int:
        with self._lock:
            return len(self._for_sas) + len(self._new)

    def counts(self) -> dict[str, int]:
        """What was dropped, by reason (``ike queue full`` included), and the depth now."""
        with self._lock:
            counts = dict(self.drops)
            if self.dropped:
                counts[QUEUE_FULL] = self.dropped
            counts["ike queue depth"] = len(self._for_sas) + len(self._new)
        return counts


READ_BURST = 256
"""Datagrams an IKE socket of the loop reads in one go (:class:`_Endpoint`)."""


class _Endpoint:
    """One bound UDP socket of the event loop, read in bursts: up to :data:`READ_BURST`
    datagrams per readiness callback, each through the inbox's first look, then one pass of
    the engine over the batch, known ISAKMP SAs first (issue 14). asyncio's datagram
    transport reads one datagram per loop iteration: 14 us each against 1.2 us here (20,000
    datagrams queued, one run), and a burst could not be put in order. Sends go straight to
    the socket; one the kernel cannot take now is counted and left to IKE's retransmission."""

    def __init__(
        self, driver: UdpDriver, port: int, sock: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.driver = driver
        self.port = port
        self.sock = sock
        self._loop = loop
        self._closed = False
        self.transport = self
        """What the driver sends through (this endpoint; tests may wrap its ``sendto``)."""
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(READ_BURST):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self.driver._received(data, (addr[0], addr[1]), self.port)

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sock.sendto(data, addr)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the peer is not there (yet); retransmission copes.
        self.driver.counters[f"socket error {type(exc).__name__}"] += 1
        log.debug("UDP port %d: %s", self.port, exc)


class UdpDriver:
    """Runs one :class:`IkeEngine` on two UDP sockets of ``local_ip``.

    ``handler(event)`` sees every engine event (after it was logged); it may return an
    awaitable. Engine commands it issues are flushed when it returns, or when its awaitable
    finishes. Commands issued from elsewhere must be followed by :meth:`flush`.
    """

    def __init__(
        self,
        engine: IkeEngine,
        local_ip: str,
        *,
        ike_port: int = 500,
        natt_port: int = 4500,
        handler: EventHandler | None = None,
        natt_owner: NattOwner | None = None,
        keylog: KeyLogger | None = None,
        clock: Callable[[], float] = time.time,
        ike_queue_size: int = IKE_QUEUE_SIZE,
        limit_new: NewExchangeLimit | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if engine.ike_port != ike_port:
            raise ValueError(f"engine expects IKE on port {engine.ike_port}, driver binds {ike_port}")
        if ike_port == natt_port:
            raise ValueError("the IKE port and the NAT-T port must differ")
        self.engine = engine
        self.local_ip = local_ip
        self.ike_port = ike_port
        self.natt_port = natt_port
        self.handler = handler
        self.natt_owner = natt_owner
        """When set, the data path owns the NAT-T socket (ESP and IKE share UDP 4500)."""
        self.keylog = keylog
        self.clock = clock
        self.counters: Counter[str] = Counter()
        """What the driver dropped or handed on, by reason (never raised into the loop)."""
        self.inbox = IkeInbox(
            ike_queue_size,
            engine.knows_cookie,
            ike_port=ike_port,
            held=engine.holds_half_open,
            limit_new=limit_new,
            clock=monotonic,
        )
        """IKE datagrams of both ports waiting for the loop, after a first look (a gateway
        passes ``limit_new``: its budget of new exchanges, on the ``monotonic`` clock so a
        step of the wall clock cannot stop refills; a client talks to its gateway only)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._endpoints: dict[int, _Endpoint] = {}
        self._natt_sock: socket.socket | None = None
        """The NAT-T socket when the data path owns it (for :meth:`punch`)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._fired_at: float | None = None  # the deadline handle_timer last ran for
        self._pumping = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False
        self.summary_interval = DROP_SUMMARY_INTERVAL
        """Seconds between the summary lines of the inbox's drops (one line, never one each)."""
        self._summary: asyncio.TimerHandle | None = None
        self._reported: dict[str, int] = {}

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Bind both sockets (raises :class:`BindError` with a readable message)."""
        loop = self._loop = asyncio.get_running_loop()
        for port in (self.ike_port, self.natt_port):
            sock = bind_udp(self.local_ip, port)
            if port == self.natt_port and self.natt_owner is not None:

                def deliver(data: bytes, remote: Address) -> None:
                    if self.inbox.put(data, (remote[0], remote[1]), self.natt_port):
                        loop.call_soon_threadsafe(self._drain_inbox)

                self.natt_owner.attach(sock, deliver)
                self._natt_sock = sock
                log.info("listening on %s:%d/udp (NAT-T, owned by the ESP data path)", self.local_ip, port)
                continue
            self._endpoints[port] = _Endpoint(self, port, sock, loop)
            actual = sock.getsockname()[1]
            log.info(
                "listening on %s:%d/udp (%s)",
                self.local_ip,
                actual,
                "IKE" if port == self.ike_port else "NAT-T",
            )
        self._arm_timer()
        self._summary = loop.call_later(self.summary_interval, self._summarize_drops)

    def rebind(self, local_ip: str) -> None:
        """Move both sockets to ``local_ip`` (the client roamed: its old address is gone or no
        longer the way to the gateway). Both new sockets are bound before anything changes (a
        :class:`BindError` leaves the old ones); the data path gets its new NAT-T socket."""
        if self._loop is None or self._closed:
            raise RuntimeError("the driver is not running")
        socks: dict[int, socket.socket] = {}
        try:
            for port in (self.ike_port, self.natt_port):
                socks[port] = bind_udp(local_ip, port)
        except BindError:
            for sock in socks.values():
                sock.close()
            raise
        for port, sock in socks.items():
            if port == self.natt_port and self.natt_owner is not None:
                self.natt_owner.replace_socket(sock)
                self._natt_sock = sock
                continue
            old = self._endpoints.pop(port, None)
            if old is not None:
                old.close()
            self._endpoints[port] = _Endpoint(self, port, sock, self._loop)
        log.info("moved the IKE and NAT-T sockets from %s to %s", self.local_ip, local_ip)
        self.local_ip = local_ip

    def punch(self, remote: Address, ttl: int) -> None:
        """A NAT-keepalive (RFC 3948 section 4) from the NAT-T socket to ``remote`` with IP TTL
        ``ttl`` (issue 17): it opens our own NAT toward a peer about to start a phase 1 with
        us, and dies a hop or two later, before it reaches the peer's NAT (an unsolicited
        packet there would make that NAT map the peer's own first message to another port:
        Linux conntrack does). Where no per-packet TTL can be set, it goes with the normal one."""
        if self._closed:
            return
        endpoint = self._endpoints.get(self.natt_port)
        sock = self._natt_sock if self.natt_owner is not None else endpoint.sock if endpoint else None
        if sock is None:
            return
        try:
            # from the loop thread, as IKE goes out of the data path's socket (send_ike)
            if not send_with_ttl(sock, NAT_KEEPALIVE, remote, ttl):
                if not self.counters["punch without ttl"]:
                    log.info("no per-packet TTL here: NAT-keepalives toward peers go with the normal TTL")
                self.counters["punch without ttl"] += 1
                sock.sendto(NAT_KEEPALIVE, remote)
        except OSError as exc:
            self.counters[f"socket error {type(exc).__name__}"] += 1
            log.debug("NAT-keepalive to %s:%d: %s", remote[0], remote[1], exc)

    def close(self) -> None:
        """Close the sockets and the timer (the engine's SAs are left as they are)."""
        if self._closed:
            return
        self._send_pending()  # what the engine said before (a Delete) still goes out
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        for task in list(self._tasks):
            task.cancel()
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        self._endpoints.clear()

    def now(self) -> float:
        return self.clock()

    # ------------------------------------------------------------------ input

    def _received(self, data: bytes, remote: Address, port: int) -> None:
        """A datagram from one of the driver's own sockets (on the loop): what is not IKE on
        the NAT-T port is counted; IKE goes through the inbox like the data thread's."""
        if self._closed:
            return
        if port == self.natt_port:
            kind = classify_datagram(data)
            if kind is not DatagramKind.IKE:
                self._not_ike(kind, remote)
                return
        if self.inbox.put(data, remote, port) and self._loop is not None:
            self._loop.call_soon(self._drain_inbox)

    def _datagram_received(self, data: bytes, remote: Address, port: int) -> None:
        """Hand one datagram to the engine (after the inbox) and flush what it did."""
        if self._closed:
            return
        if port == self.natt_port:
            kind = classify_datagram(data)
            if kind is not DatagramKind.IKE:
                self._not_ike(kind, remote)
                return
        try:
            self.engine.receive_datagram(data, remote, (self.local_ip, port), self.now())
        except Exception:  # the engine promises never to raise on input; if it does, say so loudly
            log.exception("IKE engine raised on a %d-byte datagram from %s:%d", len(data), *remote)
            self.counters["engine exception"] += 1
        self.flush()

    def _drain_inbox(self) -> None:
        """The IKE datagrams queued in the :class:`IkeInbox`, known SAs first."""
        for data, remote, port in self.inbox.take():
            self._datagram_received(data, remote, port)

    def counts(self) -> dict[str, int]:
        """The driver's counters with the IKE queue's depth and its drops by reason (the
        names in :data:`DROP_COUNTERS`; read on the loop)."""
        return {**self.counters, **self.inbox.counts()}

    def _summarize_drops(self) -> None:
        """One WARNING line per interval with what the inbox dropped since the last one, by
        reason (issue 14: a storm must not write a line per datagram); nothing when quiet."""
        if self._closed or self._loop is None:
            return
        counts = self.inbox.counts()
        new = Counter(
            {
                reason: counts[reason] - self._reported.get(reason, 0)
                for reason in DROP_COUNTERS & counts.keys()
                if counts[reason] > self._reported.get(reason, 0)
            }
        )
        if new:
            log.warning(
                "dropped %d IKE datagrams before the engine in the last %g s: %s",
                new.total(),
                self.summary_interval,
                ", ".join(f"{reason} x {n}" for reason, n in new.most_common()),
            )
            self._reported = {reason: counts[reason] for reason in DROP_COUNTERS & counts.keys()}
        self._summary = self._loop.call_later(self.summary_interval, self._summarize_drops)

    def _not_ike(self, kind: DatagramKind, remote: Address) -> None:
        """Count what the NAT-T port received that is not for the engine."""
        if kind is DatagramKind.KEEPALIVE:
            self.counters["nat-t keepalive"] += 1
        elif kind is DatagramKind.ESP:
            if not self.counters["esp without data path"]:
                log.debug("ESP-in-UDP from %s:%d dropped: no ESP data path attached", *remote)
            self.counters["esp without data path"] += 1
        else:
            self.counters["invalid on nat-t port"] += 1

    def _on_timer(self) -> None:
        self._fired_at = self._timer_at
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        try:
            self.engine.handle_timer(self.now())
        except Exception:
            log.exception("IKE engine raised in handle_timer")
            self.counters["engine exception"] += 1
        self.flush()

    # ------------------------------------------------------------------ output

    def flush(self) -> None:
        """Dispatch the engine's events, then send what it wants sent, re-arm the timer.

        Events go first: the SA a Quick Mode answer creates is then in the data path before
        the answer leaves (a peer may send ESP the moment it has our answer: vpnc does). The
        datagrams still leave in the engine's order, those of handlers' commands after them."""
        if self._closed:
            return
        if self._pumping:  # a handler issued a command: the outer loop picks it up
            return
        self._pumping = True
        try:
            while (event := self.engine.next_event()) is not None:
                self._log_event(event)
                self._dispatch(event)
            if not self._closed:
                self._send_pending()  # sending makes no events: one pass is all
        finally:
            self._pumping = False
        self._arm_timer()

    def _send_pending(self) -> None:
        for data, remote, local_port in self.engine.datagrams_to_send():
            if local_port == self.natt_port and self.natt_owner is not None:
                try:
                    self.natt_owner.send_ike(data, remote)
                except OSError as exc:
                    self.counters[f"send error {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                continue
            endpoint = self._endpoints.get(local_port)
            if endpoint is None or endpoint.transport is None:
                log.warning("engine asked to send from port %d, which is not bound; dropped", local_port)
                self.counters["send from unbound port"] += 1
                continue
            try:
                endpoint.transport.sendto(data, remote)
            except OSError as exc:
                self.counters[f"send error {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                log.debug("send to %s:%d failed: %s", remote[0], remote[1], exc)

    def _arm_timer(self) -> None:
        if self._closed:
            return
        when = self.engine.get_timer()
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is None:
            return
        delay = max(0.0, when - self.now())
        if when == self._fired_at:
            # handle_timer ran for this deadline and left it in place: do not spin on it
            delay = max(delay, TIMER_RETRY)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    # ------------------------------------------------------------------ events

    def _log_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ProtocolError):
            self._log_protocol_error(event)
            return
        line = describe_event(event)
        if line is None:
            return
        if isinstance(event, ev.Phase1Failed) and event.unauthenticated:
            log.debug("%s", line)  # the engine counts these and sums them up (issue 14)
            return
        failed = isinstance(event, (ev.Phase1Failed, ev.ChildSAFailed)) or (
            isinstance(event, ev.XauthCompleted) and not event.success
        )
        log.log(logging.WARNING if failed else logging.INFO, "%s", line)
        if self.keylog is not None:
            self._log_keys(event)

    def _log_protocol_error(self, event: ev.ProtocolError) -> None:
        """Counted, and logged only at DEBUG: the engine counts bad input by reason and sums it
        up in one line per interval (issue 14: a line per bad message floods the log)."""
        self.counters["protocol error"] += 1
        notify = f", answered with notify {event.notify}" if event.notify is not None else ""
        log.debug("protocol error from %s:%d: %s%s", event.peer[0], event.peer[1], event.error, notify)

    def _log_keys(self, event: ev.Event) -> None:
        keylog = self.keylog
        if keylog is None:
            return
        try:
            if isinstance(event, ev.Phase1Established):
                sa = self.engine.get_sa(event.sa_id)
                if sa.keys is not None:
                    keylog.log_ike_sa(sa.icookie, sa.keys.enc_key)
            elif isinstance(event, ev.ChildSAEstablished):
                transform = EspTransform(event.transform)
                auth = AuthAlgorithm(event.integrity) if event.integrity is not None else None
                local, remote = event.local[0], event.remote[0]
                keylog.log_esp_sa(
                    remote, local, event.spi_in, transform, event.enc_key_in, auth, event.auth_key_in
                )
                keylog.log_esp_sa(
                    local, remote, event.spi_out, transform, event.enc_key_out, auth, event.auth_key_out
                )
        except Exception as exc:  # a key log is a debugging aid: never let it break the daemon
            log.warning("key log: %s", exc)

    def _dispatch(self, event: ev.Event) -> None:
        if self.handler is None:
            return
        try:
            result = self.handler(event)
        except Exception:
            log.exception("event handler failed on %s", type(event).__name__)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event handler failed", exc_info=task.exception())
        self.flush()


def _digest(message: memoryview) -> bytes:
    return hashlib.blake2b(message, digest_size=16).digest()


MAX_DATAGRAM = 65535
"""The largest UDP payload read."""

IKE_RECEIVE_BUFFER = 4 << 20
"""Receive buffer of the IKE sockets (issue 14). The default (about 208 KB) holds only some
150 small datagrams: a burst of spoofed first messages filled it and the kernel dropped
a real user's first message with the rest, which then waited a whole retransmission
interval. 4 MB holds a few thousand, which the first look clears in milliseconds."""

SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>: root may exceed net.core.rmem_max


def _grow_receive_buffer(sock: socket.socket) -> None:
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, IKE_RECEIVE_BUFFER)
            return
        except OSError:  # not root (FORCE), or not Linux: the plain option, capped by the system
            continue


def bind_udp(local_ip: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``(local_ip, port)``, with errors a user can act on,
    and a receive buffer for bursts (:data:`IKE_RECEIVE_BUFFER`)."""
    family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    _grow_receive_buffer(sock)
    try:
        sock.setblocking(False)
        sock.bind((local_ip, port))
    except PermissionError as exc:
        sock.close()
        raise BindError(
            exc.errno,
            f"cannot bind UDP {local_ip}:{port}: permission denied "
            f"(ports below 1024, such as IKE's 500, need root or CAP_NET_BIND_SERVICE)",
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "the port is in use (is another IKE daemon, e.g. charon, running?)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{local_ip} is not an address of this host"
        else:
            why = exc.strerror or str(exc)
        raise BindError(exc.errno, f"cannot bind UDP {local_ip}:{port}: {why}") from None
    return sock


__all__ = [
    "DROP_COUNTERS",
    "BindError",
    "IkeInbox",
    "NewExchangeLimit",
    "UdpDriver",
    "bind_udp",
    "describe_event",
    "esp_suite_name",
]
