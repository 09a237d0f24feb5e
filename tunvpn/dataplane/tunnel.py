"""The data path of a gateway or client process: a TUN device, the :class:`DataPlane`, the
routes of every IPsec SA, and rekeying.

The shell (client or gateway) calls :meth:`Tunnel.child_established` and
:meth:`Tunnel.child_deleted` with the IKE engine's events; the tunnel installs the SAs in
the data path, routes the peer's traffic selector into the TUN device, and, when the data
path says an SA nears the end of its life, starts a new Quick Mode with the same
selectors (make-before-break: the new pair carries traffic at once, the old one is deleted
a few seconds later so packets in flight are not lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tunvpn.dataplane import PacketDevice, off_loop
from tunvpn.dataplane.busypoll import BusyPoll
from tunvpn.dataplane.thread import DataEvent, DataPlane, PeerActivity, UnknownSpi
from tunvpn.esp.events import SaHardExpired, SaLifetimeEvent, SaSoftExpired
from tunvpn.ike import events as ev
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.proposals import ChildProposal

log = logging.getLogger(__name__)

DEFAULT_MTU = 1400
"""Inner MTU: 1500 minus outer IPv4 (20) + UDP (8) + ESP (8 + IV 8 + ICV 16 + pad/trailer)."""
RETIRE_AFTER = 5.0
"""Seconds an old SA pair stays installed after its replacement is up."""
SWITCH_AFTER = 1.0
"""Seconds a Quick Mode responder keeps sending on the old SA after answering a rekey."""


@dataclass
class _Pair:
    event: ev.ChildSAEstablished
    routes: tuple[str, ...]
    rekeying: bool = False


class Tunnel:
    """Owns the TUN device and the data thread of one process.

    :param engine: the IKE engine (for rekeying Quick Modes and DPD liveness notes).
    :param proposal_for: the Quick Mode proposal to rekey a child with (by policy name);
        ``None`` means this side does not rekey (a gateway leaves it to its clients).
    :param busy_poll_us: the longest busy poll of the data thread after a lone packet, in
        microseconds (:mod:`tunvpn.dataplane.busypoll`); 0: never.
    """

    def __init__(
        self,
        engine: IkeEngine,
        *,
        name: str = "tunvpn%d",
        mtu: int = DEFAULT_MTU,
        offload: bool = True,
        proposal_for: Callable[[str], ChildProposal | None] | None = None,
        tun: PacketDevice | None = None,
        busy_poll_us: int = 0,
    ) -> None:
        if tun is None:
            from tunvpn.dataplane import open_tun

            tun = off_loop(open_tun, name, offload=offload, mtu=mtu)
        self.tun: PacketDevice = tun
        self.engine = engine
        self.proposal_for = proposal_for
        busy = BusyPoll(limit_ns=busy_poll_us * 1000) if busy_poll_us > 0 else None
        self.dataplane = DataPlane(tun, on_event=self._from_data_thread, busy_poll=busy)
        self.pairs: dict[int, _Pair] = {}  # by inbound SPI
        self._routes: dict[str, int] = {}  # route -> number of SA pairs using it
        self._addresses: dict[int, str] = {}
        """IP version -> the "address/prefixlen" given to the TUN device (one per family)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_change: Callable[[], None] | None = None
        """Called after the engine was given a command (the shell flushes it)."""
        self.before_routes: Callable[[list[str]], None] | None = None
        """Called with networks about to be routed into the TUN device, before they are (a
        client pins its gateway's own address outside the tunnel: issue 15)."""

    @property
    def name(self) -> str:
        return self.tun.name

    def routed(self) -> list[str]:
        """The networks routed into the TUN device now (by at least one SA pair)."""
        return list(self._routes)

    # ------------------------------------------------------------------ life cycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.dataplane.start()

    def close(self) -> None:
        self.dataplane.stop()
        self.tun.close()  # the kernel removes the device, its addresses and its routes

    def set_address(self, address: str, prefixlen: int | None = None) -> None:
        """Give the TUN device its (Mode Config) address of one family (/32 or /128 unless
        ``prefixlen``); a pushed configuration that repeats it changes nothing, one with a new
        address of that family replaces the old one."""
        iface = ipaddress.ip_interface(address if prefixlen is None else f"{address}/{prefixlen}")
        wanted = str(iface)
        old = self._addresses.get(iface.version)
        if wanted == old:
            return
        self._addresses[iface.version] = wanted
        self._configure(addresses=[wanted])
        if old is not None:
            off_loop(self._unaddress_now, old)

    # ------------------------------------------------------------------ IKE events

    def child_established(self, event: ev.ChildSAEstablished) -> None:
        replaced = self._pair_rekeyed_by(event) if event.policy_name else None
        routes = tuple(route for n in _networks(event.remote_ts) for route in tun_routes(n))
        if replaced is not None and replaced.event.spi_in != event.spi_in:
            # make-before-break: the new pair takes the traffic, the old one retires later; a
            # responder sends on the new SA only once the initiator surely has its keys
            # (our Quick Mode answer is on its way when this event fires)
            responder = event.role == "responder"
            self.dataplane.replace(replaced.event.spi_in, event, switch_outbound=not responder)
            if responder:
                self._later(SWITCH_AFTER, self.dataplane.switch_outbound, event.spi_in)
            self.pairs[event.spi_in] = _Pair(event, replaced.routes)
            for route in replaced.routes:
                self._routes[route] = self._routes.get(route, 0) + 1
            self._later(RETIRE_AFTER, self._retire, replaced.event.sa_id, replaced.event.spi_in)
            log.info(
                "rekeyed %r: spi_in 0x%08x -> 0x%08x", event.policy_name, replaced.event.spi_in, event.spi_in
            )
            return
        try:
            self.dataplane.install(event)
        except ValueError as exc:
            log.warning("cannot carry traffic of SA spi_in=0x%08x: %s", event.spi_in, exc)
            return
        self.pairs[event.spi_in] = _Pair(event, routes)
        new_routes = [r for r in routes if self._routes.get(r, 0) == 0]
        for route in routes:
            self._routes[route] = self._routes.get(route, 0) + 1
        if new_routes:
            if self.before_routes is not None:
                self.before_routes(new_routes)
            self._configure(routes=new_routes)

    def peer_moved(self, event: ev.PeerAddressChanged) -> None:
        """The IKE engine followed a peer behind a NAT to a new address (a verified IKE
        message, or authenticated ESP): its outbound SAs go there too."""
        for pair in self.pairs.values():
            if pair.event.sa_id == event.sa_id:
                self.dataplane.set_peer(pair.event.spi_in, event.new)

    def sa_rekeyed(self, event: ev.Phase1Rekeyed) -> None:
        """Phase 1 was rekeyed: the pairs of the old ISAKMP SA (same SPIs, same keys) now
        belong to the new one, under which their Quick Mode rekeys and Deletes go."""
        for pair in self.pairs.values():
            if pair.event.sa_id == event.sa_id:
                pair.event = dataclasses.replace(pair.event, sa_id=event.new_sa_id)

    def child_deleted(self, event: ev.ChildSADeleted) -> None:
        pair = self.pairs.pop(event.spi_in, None)
        self.dataplane.remove(event.spi_in)
        if pair is None:
            return
        gone = []
        for route in pair.routes:
            left = self._routes.get(route, 0) - 1
            if left <= 0:
                self._routes.pop(route, None)
                gone.append(route)
            else:
                self._routes[route] = left
        if gone:
            self._unroute(gone)

    def _pair_rekeyed_by(self, event: ev.ChildSAEstablished) -> _Pair | None:
        """The pair ``event`` replaces: same policy *and* same selectors. A gateway holds one
        pair of a policy per client (each with the client's own address as its selector), so
        the name alone would let a second client's SA replace the first one's (issue 12)."""
        for pair in self.pairs.values():
            old = pair.event
            if (old.policy_name, old.local_ts, old.remote_ts) == (
                event.policy_name,
                event.local_ts,
                event.remote_ts,
            ):
                return pair
        return None

    def _retire(self, sa_id: bytes, spi_in: int) -> None:
        try:
            self.engine.delete_child(sa_id, spi_in, _now())
        except LocalProtocolError:
            self.child_deleted(ev.ChildSADeleted(sa_id, spi_in, 0, False))
        self._changed()

    # ------------------------------------------------------------------ data path events

    def _from_data_thread(self, event: DataEvent) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._data_event, event)

    def _data_event(self, event: DataEvent) -> None:
        if isinstance(event, PeerActivity):
            for spi in event.spis:
                pair = self.pairs.get(spi)
                if pair is not None:
                    self.engine.note_peer_activity(pair.event.sa_id, _now())
            moved = False
            for spi, source in event.sources:
                pair = self.pairs.get(spi)
                if pair is not None:  # the engine decides whether the peer may move (NAT)
                    moved = self.engine.esp_peer_seen(pair.event.sa_id, source, _now()) or moved
            if moved:
                self._changed()  # the shell drains the engine's PeerAddressChanged
            return
        if isinstance(event, UnknownSpi):
            if event.spi not in self.pairs:  # else being installed: the data thread lags
                self.engine.unknown_spi(event.spi, event.source, event.size, _now())
                self._changed()
            return
        if not isinstance(event, SaLifetimeEvent):
            return
        pair = self.pairs.get(event.spi) or next(
            (p for p in self.pairs.values() if p.event.spi_out == event.spi), None
        )
        if pair is None:
            return
        if isinstance(event, SaSoftExpired) and not pair.rekeying:
            self._rekey(pair)
        elif isinstance(event, SaHardExpired):
            log.info("SA spi_in=0x%08x reached its hard lifetime", pair.event.spi_in)
            self._retire(pair.event.sa_id, pair.event.spi_in)

    def _rekey(self, pair: _Pair) -> None:
        child = pair.event
        if self.proposal_for is None or child.role != "initiator":
            return  # the Quick Mode initiator rekeys (avoids both sides doing it at once)
        proposal = self.proposal_for(child.policy_name)
        if proposal is None:
            return
        pair.rekeying = True
        try:
            self.engine.start_child(
                child.sa_id, _now(), child.local_ts, child.remote_ts, proposal, child.policy_name
            )
        except LocalProtocolError as exc:
            log.warning("cannot rekey %r: %s", child.policy_name, exc)
            return
        log.info("rekeying %r (spi_in 0x%08x) before it expires", child.policy_name, child.spi_in)
        self._changed()

    # ------------------------------------------------------------------ helpers

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        if self._loop is None:
            fn(*args)
        else:
            self._loop.call_later(delay, fn, *args)

    def _configure(self, *, addresses: list[str] | None = None, routes: list[str] | None = None) -> None:
        configure = getattr(self.tun, "configure", None)
        if configure is None:
            return
        try:
            off_loop(configure, addresses=addresses or (), routes=routes or (), up=True)
        except Exception as exc:  # OSError, or pyroute2's NetlinkError (not an OSError)
            log.warning("%s: configuring %s failed: %s", self.name, addresses or routes, exc)

    def _unaddress_now(self, address: str) -> None:
        try:
            from pyroute2 import IPRoute
        except ImportError:  # pragma: no cover - macOS: addresses go with the utun device
            return
        iface = ipaddress.ip_interface(address)
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                return
            try:
                ipr.addr("del", index=int(found[0]), address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except Exception as exc:
                log.debug("removing address %s: %s", address, exc)

    def _unroute(self, routes: list[str]) -> None:
        off_loop(self._unroute_now, routes)

    def _unroute_now(self, routes: list[str]) -> None:
        try:
            from pyroute2 import IPRoute
        except ImportError:  # pragma: no cover - macOS: routes go with the utun device
            return
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.name)
            if not found:
                return
            for route in routes:
                try:
                    ipr.route("del", dst=route, oif=int(found[0]))
                except Exception as exc:
                    log.debug("removing route %s: %s", route, exc)


def tun_routes(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, ...]:
    """The routes that carry ``network`` into the TUN device. A default route (a full tunnel)
    becomes its two halves, 0.0.0.0/1 + 128.0.0.0/1 (``::/1`` + ``8000::/1``), as OpenVPN's
    ``redirect-gateway def1`` does: more specific than the host's default route, which stays
    as it is (nothing to restore, and nothing leaks if the process dies: the kernel removes
    the halves with the TUN device)."""
    if network.prefixlen == 0:
        return tuple(str(half) for half in network.subnets(prefixlen_diff=1))
    return (str(network),)


def _networks(ts: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = getattr(ts, "networks", None)
    if callable(networks):
        return list(networks())
    return []


def _now() -> float:
    import time

    return time.time()
