"""The security association database of the data path: inbound SAs by SPI, outbound SAs by
the destination they protect (RFC 4301 section 4.4.2, reduced to what tunnel mode needs).

- Inbound: a dict keyed by the four SPI octets as they sit on the wire, O(1) per packet.
- Outbound: a longest-prefix index over the peers' traffic selectors. Each selector is
  split into CIDR blocks; a block of full length (a host, the usual case for a client's
  virtual IP) is one dict lookup on the four or sixteen destination octets, shorter blocks
  one dict per prefix length present, tried longest first. So a packet costs O(number of
  distinct prefix lengths), whatever the number of SAs. Where the destination alone does
  not decide (a gateway's SAs to one client differ only by their source selector; selectors
  with a protocol or port) each candidate SA's test is tried, newest first; a route cache
  keyed on the source and destination addresses makes that a dict lookup again unless
  protocol or ports are involved.
- Make-before-break rekeying: a new inbound SA is installed beside the old one (both SPIs
  are accepted until the old one is removed); :meth:`SadTable.replace` moves every route
  of an old outbound SA to the new one, one atomic dict store per route.

The table is mutated by the control plane and read by the data path; under the GIL each
dict store is atomic and lists that are iterated are replaced, never changed in place.
Lifetime events of installed SAs go to one queue drained with :meth:`SadTable.next_event`;
time limits are driven by :meth:`SadTable.get_timer` / :meth:`SadTable.handle_timer`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, final

from mypy_extensions import mypyc_attr

from ..ipsec.selectors import TrafficSelector
from .constants import DROP_REASON_COUNT, DropReason
from .events import SaLifetimeEvent
from .policy import PacketTest, compile_outbound_test
from .ratelimit import DropLog
from .sa import InboundSA, OutboundSA
from .transforms import Packet

_ADDRESS_BITS = {4: 32, 6: 128}
_ROUTE_CACHE_SIZE = 16384


@final
@mypyc_attr(native_class=False)  # mypyc compiles no subclass of tuple: this one stays a Python class
class _Choices(tuple[tuple[PacketTest | None, OutboundSA], ...]):
    """Routes of one block when the destination alone does not decide: ``(test, sa)``
    pairs, newest first, ending at the first SA without a test. ``uses_ports``: some test
    looks at protocol or ports (not only at the source address)."""

    uses_ports = False

    def pick(self, packet: Packet) -> OutboundSA | None:
        for test, sa in self:
            if test is None or test(packet):
                return sa
        return None


class _RouteIndex:
    """Longest-prefix index of one address family."""

    __slots__ = ("bits", "choices", "hosts", "port_tests", "prefixes", "stacks")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.hosts: dict[bytes, OutboundSA | _Choices] = {}
        """Full-length blocks by packed address."""
        self.prefixes: list[tuple[int, dict[int, OutboundSA | _Choices]]] = []
        """``(shift, {address >> shift: route})``, longest prefix first; replaced on change."""
        self.stacks: dict[tuple[int, int], list[tuple[PacketTest | None, OutboundSA]]] = {}
        """Every SA routed over a block, oldest first: ``(prefix length, key) -> [...]``."""
        self.choices = 0
        """How many published routes are :class:`_Choices` whose tests look at protocol or
        ports (then the addresses alone do not decide, and the table's route cache stays out
        of this family)."""
        self.port_tests: set[PacketTest] = set()
        """The tests (of installed SAs) that look at protocol or ports."""

    def _table(self, length: int, create: bool) -> dict[int, OutboundSA | _Choices] | None:
        shift = self.bits - length
        for existing_shift, table in self.prefixes:
            if existing_shift == shift:
                return table
        if not create:
            return None
        table = {}
        self.prefixes = sorted([*self.prefixes, (shift, table)], key=lambda item: item[0])
        return table

    def _publish(self, length: int, key: int) -> None:
        """Point the lookup structure at the newest route(s) of one block."""
        stack = self.stacks.get((length, key))
        table: dict[Any, OutboundSA | _Choices] | None
        if length == self.bits:
            table = self.hosts
            lookup_key: Any = key.to_bytes(self.bits // 8, "big")  # bytes for hosts, int for prefixes
        else:
            table = self._table(length, create=bool(stack))
            lookup_key = key
        if table is None:
            return
        old = table.get(lookup_key)
        if isinstance(old, _Choices) and old.uses_ports:
            self.choices -= 1
        if not stack:
            table.pop(lookup_key, None)
            if length != self.bits and not table:
                self.prefixes = [item for item in self.prefixes if item[1] is not table]
            return
        test, sa = stack[-1]
        if test is None:
            table[lookup_key] = sa
            return
        choices = []
        for test, sa in reversed(stack):
            choices.append((test, sa))
            if test is None:
                break
        route = _Choices(choices)
        route.uses_ports = any(test in self.port_tests for test, _ in choices)
        table[lookup_key] = route
        if route.uses_ports:
            self.choices += 1

    def add(
        self, ts: TrafficSelector, test: PacketTest | None, sa: OutboundSA, *, uses_ports: bool = False
    ) -> list[tuple[int, int]]:
        if test is not None and uses_ports:
            self.port_tests.add(test)
        blocks = []
        for net in ts.networks():
            length = net.prefixlen
            key = int(net.network_address) >> (self.bits - length)
            self.stacks.setdefault((length, key), []).append((test, sa))
            self._publish(length, key)
            blocks.append((length, key))
        return blocks

    def discard(self, blocks: list[tuple[int, int]], sa: OutboundSA) -> None:
        for length, key in blocks:
            stack = self.stacks.get((length, key))
            if stack is None:
                continue
            for entry in stack:
                if entry[1] is sa and entry[0] is not None:
                    self.port_tests.discard(entry[0])
            stack[:] = [entry for entry in stack if entry[1] is not sa]
            if not stack:
                del self.stacks[(length, key)]
            self._publish(length, key)

    def swap(self, blocks: list[tuple[int, int]], old: OutboundSA, new: OutboundSA) -> None:
        for length, key in blocks:
            stack = self.stacks.get((length, key))
            if stack is None:
                continue
            stack[:] = [(test, new if sa is old else sa) for test, sa in stack]
            self._publish(length, key)

    def lookup(self, packet: Packet, address: bytes) -> OutboundSA | None:
        """Longest prefix first; a block whose protocol/port routes all miss falls through."""
        route = self.hosts.get(address)
        if route is not None:
            if type(route) is not _Choices:  # final: so route is an OutboundSA
                return route
            sa = route.pick(packet)
            if sa is not None:
                return sa
        prefixes = self.prefixes
        if not prefixes:
            return None
        value = int.from_bytes(address, "big")
        for shift, table in prefixes:
            route = table.get(value >> shift)
            if route is not None:
                if type(route) is not _Choices:
                    return route
                sa = route.pick(packet)
                if sa is not None:
                    return sa
        return None


class SadTable:
    """All SAs of one data path.

    :param drop_log: where drops get a rate-limited log line (default: 1 a second).
    """

    def __init__(self, *, drop_log: DropLog | None = None) -> None:
        self._inbound: dict[bytes, InboundSA] = {}
        self._outbound: dict[OutboundSA, tuple[int, list[tuple[int, int]]]] = {}
        """Installed outbound SAs -> (IP version routed, blocks in the route index)."""
        self._outbound_by_spi: dict[int, list[OutboundSA]] = {}
        self._routes = {4: _RouteIndex(32), 6: _RouteIndex(128)}
        self._route_cache: dict[bytes, OutboundSA] = {}
        """Destination address -> SA, for routes that depend on the address alone; replaced
        (never cleared in place) by every change of the routes, see :meth:`encrypt_batch`."""
        self._events: deque[SaLifetimeEvent] = deque()
        self._timers: list[tuple[float, int, InboundSA | OutboundSA]] = []
        self._timer_order = itertools.count()
        self._drops = [0] * DROP_REASON_COUNT
        """Drops not owned by an SA (unknown SPI, no route) plus those of removed SAs."""
        self.drop_log = drop_log if drop_log is not None else DropLog()

    # ------------------------------------------------------------------ installation

    def install(self, sa: InboundSA | OutboundSA) -> None:
        """Add an SA. An inbound SPI must be new; an outbound SA without a remote traffic
        selector is kept (for :meth:`replace`) but routes nothing.

        :raises ValueError: an inbound SPI that is already installed.
        """
        if isinstance(sa, InboundSA):
            if sa._spi_bytes in self._inbound:
                raise ValueError(f"inbound SPI {sa.spi:#010x} is already installed")
            self._inbound[sa._spi_bytes] = sa
        else:
            if sa in self._outbound:
                raise ValueError(f"outbound SA {sa.spi:#010x} is already installed")
            version, blocks = 0, []
            if sa.remote_ts is not None:
                version = sa.remote_ts.version
                test, uses_ports = compile_outbound_test(sa.remote_ts, sa.local_ts)
                blocks = self._routes[version].add(sa.remote_ts, test, sa, uses_ports=uses_ports)
                self._route_cache = {}
            self._outbound[sa] = (version, blocks)
            self._outbound_by_spi.setdefault(sa.spi, []).append(sa)
        self._adopt(sa)

    def install_pair(self, inbound: InboundSA, outbound: OutboundSA) -> None:
        """Install both halves of a child SA, inbound first (make-before-break)."""
        self.install(inbound)
        self.install(outbound)

    def _adopt(self, sa: InboundSA | OutboundSA) -> None:
        pending = sa._events
        if pending:
            self._events.extend(pending)
        sa._events = self._events
        deadline = sa.deadline()
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._timer_order), sa))

    def _resolve_outbound(self, sa_or_spi: OutboundSA | int) -> OutboundSA:
        if isinstance(sa_or_spi, OutboundSA):
            if sa_or_spi not in self._outbound:
                raise ValueError(f"outbound SA {sa_or_spi.spi:#010x} is not installed")
            return sa_or_spi
        candidates = self._outbound_by_spi.get(sa_or_spi, [])
        if len(candidates) != 1:
            problem = "is not installed" if not candidates else "is ambiguous: pass the SA object"
            raise ValueError(f"outbound SPI {sa_or_spi:#010x} {problem}")
        return candidates[0]

    def replace(self, old: OutboundSA | int, new: OutboundSA) -> None:
        """Switch traffic from ``old`` (an SA or its SPI) to ``new`` and remove ``old``.

        Each route changes with one dict store, so every packet is sealed by one SA or the
        other, never lost. ``new`` takes over ``old``'s routes; if its own remote selector
        differs, it is routed by that instead.

        :raises ValueError: ``old`` is not installed, its SPI is ambiguous, or ``new`` is.
        """
        old_sa = self._resolve_outbound(old)
        if new in self._outbound:
            raise ValueError(f"outbound SA {new.spi:#010x} is already installed")
        version, blocks = self._outbound[old_sa]
        if new.remote_ts is not None and new.remote_ts != old_sa.remote_ts:
            self.install(new)
            self.remove(old_sa)
            return
        if version:
            self._routes[version].swap(blocks, old_sa, new)
            self._route_cache = {}
        self._outbound[new] = (version, blocks)
        self._outbound_by_spi.setdefault(new.spi, []).append(new)
        self._adopt(new)
        self._forget_outbound(old_sa)

    def remove(self, sa: InboundSA | OutboundSA) -> None:
        """Remove an installed SA; its drop counts stay in the table's totals.

        :raises ValueError: the SA is not installed.
        """
        if isinstance(sa, InboundSA):
            if self._inbound.get(sa._spi_bytes) is not sa:
                raise ValueError(f"inbound SA {sa.spi:#010x} is not installed")
            del self._inbound[sa._spi_bytes]
        else:
            version, blocks = self._outbound.get(sa, (None, None))
            if blocks is None:
                raise ValueError(f"outbound SA {sa.spi:#010x} is not installed")
            if version:
                self._routes[version].discard(blocks, sa)
                self._route_cache = {}
            self._forget_outbound(sa)
            return
        self._retire(sa)

    def remove_inbound(self, spi: int) -> InboundSA | None:
        """Remove the inbound SA with this SPI; returns it, or None if there was none."""
        sa = self.lookup(spi)
        if sa is not None:
            self.remove(sa)
        return sa

    def remove_outbound(self, spi: int) -> OutboundSA:
        """Remove the only outbound SA with this SPI.

        :raises ValueError: none or several have it (peers choose outbound SPIs).
        """
        sa = self._resolve_outbound(spi)
        self.remove(sa)
        return sa

    def _forget_outbound(self, sa: OutboundSA) -> None:
        del self._outbound[sa]
        same_spi = [other for other in self._outbound_by_spi.get(sa.spi, []) if other is not sa]
        if same_spi:
            self._outbound_by_spi[sa.spi] = same_spi
        else:
            self._outbound_by_spi.pop(sa.spi, None)
        self._retire(sa)

    def _retire(self, sa: InboundSA | OutboundSA) -> None:
        if sa.drops is not None:
            for reason, count in enumerate(sa.drops):
                self._drops[reason] += count
            sa.drops = None
        sa._events = None

    # ------------------------------------------------------------------ lookups

    def lookup(self, spi: int) -> InboundSA | None:
        """The inbound SA with this SPI, or None."""
        return self._inbound.get(spi.to_bytes(4, "big")) if 0 <= spi <= 0xFFFF_FFFF else None

    def select(self, packet: Packet) -> OutboundSA | None:
        """The outbound SA for an inner packet: longest prefix match of its destination
        against the installed remote selectors (the newest SA on a tie), or None."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4:
            return self._routes[4].lookup(packet, bytes(packet[16:20])) if len(packet) >= 20 else None
        if version == 6:
            return self._routes[6].lookup(packet, bytes(packet[24:40])) if len(packet) >= 40 else None
        return None

    def outbound_sas(self) -> list[OutboundSA]:
        """Every installed outbound SA."""
        return list(self._outbound)

    def has_inbound(self, spi: Packet) -> bool:
        """Whether an inbound SA with this 4-byte SPI is installed."""
        return bytes(spi) in self._inbound

    def inbound_sas(self) -> list[InboundSA]:
        """Every installed inbound SA."""
        return list(self._inbound.values())

    def __len__(self) -> int:
        return len(self._inbound) + len(self._outbound)

    # ------------------------------------------------------------------ data path

    def _table_drop(self, reason: DropReason, count: int, now: float, spi: Packet = b"") -> None:
        self._drops[reason] += count
        self.drop_log.record(reason, int.from_bytes(spi, "big") if len(spi) == 4 else None, now)

    def decrypt(self, datagram: Packet, now: float = 0.0) -> bytes | DropReason:
        """The inner packet of one ESP packet, or why it was dropped (counted and logged)."""
        sa = self._inbound.get(bytes(datagram[:4]))
        if sa is None:
            reason = DropReason.UNKNOWN_SPI if len(datagram) >= 8 else DropReason.MALFORMED
            self._table_drop(reason, 1, now, bytes(datagram[:4]) if reason is DropReason.UNKNOWN_SPI else b"")
            return reason
        return sa.decrypt(datagram, self.drop_log, now)

    def decrypt_batch(self, datagrams: Sequence[Packet], now: float = 0.0) -> list[bytes]:
        """The inner packets of a batch of ESP packets, in order; drops are counted and
        logged at a rate limit. Runs of one SPI go to that SA's batch call together."""
        out: list[bytes] = []
        run: list[Packet] = []
        run_spi: Packet = b""  # matching it only adds to the empty run, as a new run would
        for datagram in datagrams:
            spi = datagram[:4]
            if spi == run_spi:
                run.append(datagram)
                continue
            if run:
                self._decrypt_run(run_spi, run, out, now)
            run = [datagram]
            run_spi = spi
        if run:
            self._decrypt_run(run_spi, run, out, now)
        return out

    def decrypt_buffer(
        self, buffer: bytes, segment: int, out: list[bytes], now: float = 0.0, rest: list[bytes] | None = None
    ) -> list[bytes]:
        """Decrypt a UDP GRO buffer (``segment``-octet ESP datagrams back to back, the last
        possibly shorter) into ``out``. Datagrams not handled here (not of the first one's
        SA, or not ESP at all: IKE, keepalives) are appended to ``rest``, which is returned,
        for the caller to sort out (:meth:`decrypt_batch` takes the ESP ones)."""
        if rest is None:
            rest = []
        sa = self._inbound.get(buffer[:4])
        if sa is None:
            if segment <= 0 or segment >= len(buffer):
                rest.append(buffer)
            else:
                rest += [buffer[start : start + segment] for start in range(0, len(buffer), segment)]
            return rest
        return sa.decrypt_buffer(buffer, segment, out, self.drop_log, now, rest)

    def _decrypt_run(self, spi: Packet, run: list[Packet], out: list[bytes], now: float) -> None:
        sa = self._inbound.get(bytes(spi))
        if sa is not None:
            sa.decrypt_batch(run, out, self.drop_log, now)
        elif len(spi) == 4:
            self._table_drop(DropReason.UNKNOWN_SPI, len(run), now, bytes(spi))
        else:
            self._table_drop(DropReason.MALFORMED, len(run), now)

    def encrypt(self, packet: Packet) -> tuple[OutboundSA, bytes] | DropReason:
        """Route and seal one inner packet: ``(sa, esp_packet)``, or why it was dropped."""
        sa = self.select(packet)
        if sa is None:
            self._drops[DropReason.NO_ROUTE] += 1
            return DropReason.NO_ROUTE
        result = sa.encrypt(packet)
        if isinstance(result, DropReason):
            return result
        return sa, result

    def encrypt_batch(self, packets: Sequence[Packet]) -> list[tuple[OutboundSA, list[bytes]]]:
        """Route and seal a batch of inner packets.

        Returns one ``(sa, esp_packets)`` per SA used, packets in their original order
        within each SA (so per-peer order is kept), ready for one GSO send per peer.
        """
        groups: dict[OutboundSA, list[Packet]] = {}
        cache = self._route_cache
        # looked up by whatever slice the packet gives: None or an unhashable one is a miss
        cached: Mapping[Any, OutboundSA] = cache
        sa: OutboundSA | None
        last_sa: OutboundSA | None = None
        last_group: list[Packet] = []
        no_route = 0
        for packet in packets:
            # The source and destination addresses (IPv4 or IPv6) looked up in the route cache first.
            try:
                version = packet[0] >> 4
                sa = cached[packet[12:20] if version == 4 else packet[8:40] if version == 6 else None]
            except (KeyError, IndexError, TypeError):
                sa = self._route(packet, cache)
                if sa is None:
                    no_route += 1
                    continue
            if sa is last_sa:
                last_group.append(packet)
                continue
            group = groups.get(sa)
            if group is None:
                group = groups[sa] = []
            group.append(packet)
            last_sa, last_group = sa, group
        if no_route:
            self._drops[DropReason.NO_ROUTE] += no_route
        out = []  # a loop, not a list comprehension: one frame less for a lone packet (issue 21)
        for sa, group in groups.items():
            out.append((sa, sa.encrypt_batch(group)))
        return out

    def _route(self, packet: Packet, cache: dict[bytes, OutboundSA]) -> OutboundSA | None:
        """:meth:`select`, remembering the answer in ``cache`` when the source and destination
        addresses alone decide it (no protocol/port selectors involved)."""
        sa = self.select(packet)
        if sa is None or packet.__class__ is not bytes:
            return sa
        version = packet[0] >> 4
        if self._routes[version].choices:
            return sa
        if len(cache) >= _ROUTE_CACHE_SIZE:
            cache.clear()
        cache[packet[12:20] if version == 4 else packet[8:40]] = sa
        return sa

    def drop_counts(self) -> dict[DropReason, int]:
        """Every drop so far, by reason: the table's own plus those of all SAs, live or removed."""
        totals = list(self._drops)
        for sa in itertools.chain(self._inbound.values(), self._outbound):
            if sa.drops is not None:
                for reason, count in enumerate(sa.drops):
                    totals[reason] += count
        return {DropReason(i): n for i, n in enumerate(totals) if n}

    # ------------------------------------------------------------------ time and events

    def _installed(self, sa: InboundSA | OutboundSA) -> bool:
        if isinstance(sa, InboundSA):
            return self._inbound.get(sa._spi_bytes) is sa
        return sa in self._outbound

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None."""
        timers = self._timers
        while timers and not self._installed(timers[0][2]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        """Emit the time-lifetime events due at ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, sa = heapq.heappop(timers)
            if not self._installed(sa):
                continue
            sa.poll(now)
            deadline = sa.deadline()
            if deadline is not None:
                heapq.heappush(timers, (deadline, next(self._timer_order), sa))

    def next_event(self) -> SaLifetimeEvent | None:
        """Pop the oldest soft/hard lifetime event, or None."""
        events = self._events
        return events.popleft() if events else None
