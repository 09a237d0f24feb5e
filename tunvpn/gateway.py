"""The gateway: an IKEv1 responder that authenticates clients (PSK, then XAUTH), hands each an
address from a pool by Mode Config, and accepts their Quick Modes.

:class:`Gateway` holds no socket: ``handle_event`` reacts to engine events with engine
commands, so it can be driven in memory by tests; :meth:`Gateway.run` puts it on UDP with
:class:`~tunvpn.shell.udp.UdpDriver`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.constants import CfgAttr, DHGroup
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity, TrafficSelector
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.proposals import (
    DEFAULT_ESP,
    LEGACY_ESP,
    LEGACY_EXTRA_ENCRYPTION,
    LEGACY_EXTRA_GROUPS,
    LEGACY_EXTRA_HASHES,
    ChildProposal,
    Phase1Policy,
)
from tunvpn.shell.credentials import UserTable
from tunvpn.shell.udp import UdpDriver

if TYPE_CHECKING:
    from tunvpn.tunnel import Tunnel

log = logging.getLogger(__name__)

ANY_IPV4 = IPv4Network("0.0.0.0/0")


class ConfigError(ValueError):
    """The gateway or client options do not make sense (the message says what to change)."""


class AddressPool:
    """Client addresses ``first``-``last`` (inclusive), lowest free address first."""

    def __init__(self, first: IPv4Address, last: IPv4Address) -> None:
        if last < first:
            raise ConfigError(f"address pool {first}-{last}: the end is before the start")
        if int(last) - int(first) >= 1 << 16:
            raise ConfigError(f"address pool {first}-{last}: more than 65536 addresses")
        self.first = first
        self.last = last
        self._leases: dict[bytes, IPv4Address] = {}

    def __repr__(self) -> str:
        return f"AddressPool({self.first}-{self.last}, {len(self._leases)} leased)"

    @classmethod
    def parse(cls, text: str) -> AddressPool:
        """``10.79.0.10-10.79.0.20`` or a CIDR block (its host addresses)."""
        try:
            if "-" in text:
                start, _, end = text.partition("-")
                first, last = IPv4Address(start.strip()), IPv4Address(end.strip())
            else:
                net = IPv4Network(text.strip(), strict=False)
                first, last = (net[1], net[-2]) if net.num_addresses > 2 else (net[0], net[-1])
        except ValueError as exc:
            raise ConfigError(f"address pool {text!r}: {exc} (expected FIRST-LAST or a CIDR block)") from None
        return cls(first, last)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def lease(self, owner: bytes) -> IPv4Address | None:
        """The address of ``owner`` (an ISAKMP SA id): the same one again if it asks twice."""
        if owner in self._leases:
            return self._leases[owner]
        used = set(self._leases.values())
        for n in range(int(self.first), int(self.last) + 1):
            address = IPv4Address(n)
            if address not in used:
                self._leases[owner] = address
                return address
        return None

    def release(self, owner: bytes) -> IPv4Address | None:
        return self._leases.pop(owner, None)

    def leased(self) -> dict[bytes, IPv4Address]:
        return dict(self._leases)


@dataclass
class GatewayOptions:
    """What the command line (or a test) configures; :func:`build_engine_config` turns it into
    an :class:`EngineConfig`."""

    listen: str
    psks: PskTable
    ike_port: int = 500
    natt_port: int = 4500
    users: UserTable | None = None
    pool: AddressPool | None = None
    dns: tuple[IPv4Address, ...] = ()
    split: tuple[IPv4Network, ...] = ()
    allow_aggressive_psk: bool = False
    legacy: bool = False
    require_xauth: bool = False
    banner: str | None = None
    local_id: Identity | None = None
    force_encap: bool = False
    keylog: str | None = None
    pfs_groups: tuple[int, ...] | None = None
    """PFS groups accepted in Quick Mode besides "no PFS"; None means every phase 1 group."""
    tun: str | None = None
    """TUN device name (template) for the ESP data path; None: negotiate IKE only."""
    sa_lifetime: int = 3600
    """Longest IPsec SA lifetime in seconds the gateway grants (lower offers are kept)."""
    mtu: int = 1400
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            raise ConfigError(f"--listen {self.listen!r} is not an IP address") from None
        if ipaddress.ip_address(self.listen).is_unspecified:
            raise ConfigError(
                f"--listen {self.listen}: give the gateway's own address, not a wildcard "
                "(IKE hashes the real address into NAT-D and uses it as the default identity)"
            )
        if self.require_xauth and self.users is None:
            raise ConfigError("--require-xauth needs --users FILE (the XAUTH user database)")
        if not self.psks:
            raise ConfigError("no pre-shared key configured")


def legacy_algorithm_names() -> list[str]:
    """The weak algorithms that ``--legacy`` enables, for the warning."""
    names = [enc.name for enc, _ in LEGACY_EXTRA_ENCRYPTION]
    names += [h.name for h in LEGACY_EXTRA_HASHES]
    names += [g.name for g in LEGACY_EXTRA_GROUPS]
    names += sorted({str(s) for s in LEGACY_ESP})
    return names


def child_proposal(
    phase1: Phase1Policy, legacy: bool, pfs_groups: Sequence[int] | None, lifetime: int = 3600
) -> ChildProposal:
    """The Quick Mode proposal the gateway accepts: its ESP suites, with no PFS or any
    allowed PFS group (``pfs_groups``, default: the phase 1 groups)."""
    esp = DEFAULT_ESP + LEGACY_ESP if legacy else DEFAULT_ESP
    groups = list(phase1.groups_by_strength()) if pfs_groups is None else list(pfs_groups)
    accept = frozenset(DHGroup(g) for g in groups)
    return ChildProposal(esp=esp, pfs_group=None, accept_pfs=accept, lifetime_seconds=lifetime)


def child_policies(options: GatewayOptions, phase1: Phase1Policy) -> tuple[ChildPolicy, ...]:
    """One ChildPolicy per split network (or 0.0.0.0/0); the remote selector is the client's
    assigned address."""
    networks = options.split or (ANY_IPV4,)
    proposal = child_proposal(phase1, options.legacy, options.pfs_groups, options.sa_lifetime)
    return tuple(ChildPolicy(str(net), TrafficSelector.from_network(net), None, proposal) for net in networks)


def build_engine_config(options: GatewayOptions) -> EngineConfig:
    phase1 = Phase1Policy.with_legacy() if options.legacy else Phase1Policy()
    return EngineConfig(
        local_id=options.local_id,
        psks=options.psks,
        phase1=phase1,
        children=child_policies(options, phase1),
        allow_aggressive_psk=options.allow_aggressive_psk,
        require_xauth=options.require_xauth,
        xauth_available=options.users is not None,
        # ESP runs in userspace over UDP 4500 (RFC 3948): with a data path, always encapsulate
        force_encap=options.force_encap or options.tun is not None,
        natt_port=options.natt_port,
    )


class Gateway:
    """Reacts to the engine's events: checks XAUTH users, leases addresses, logs SAs."""

    def __init__(self, options: GatewayOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.config = build_engine_config(options)
        self.engine = IkeEngine(self.config, ike_port=options.ike_port)
        self.children: dict[int, ev.ChildSAEstablished] = {}
        self.tunnel: Tunnel | None = None
        """The ESP data path (TUN device + data thread) when ``options.tun`` is set."""
        """Inbound SPI -> the Quick Mode that made it (what the data path will need)."""
        self.driver: UdpDriver | None = None
        self._stop: asyncio.Event | None = None
        if options.legacy:
            log.warning(
                "legacy algorithms enabled (--legacy): %s; use them only for peers that "
                "offer nothing stronger (vpnc offers only MODP_1024)",
                ", ".join(legacy_algorithm_names()),
            )
        if options.allow_aggressive_psk:
            log.warning(
                "Aggressive Mode with pre-shared keys enabled: the PSK hash can be attacked offline; "
                "use long random group secrets"
            )

    # ------------------------------------------------------------------ events

    def handle_event(self, event: ev.Event) -> None:
        now = self.clock()
        if isinstance(event, ev.XauthCredentials):
            self._check_user(event, now)
        elif isinstance(event, ev.ModeConfigRequested):
            self._mode_config(event, now)
        elif isinstance(event, ev.ChildSAEstablished):
            self.children[event.spi_in] = event
            if self.tunnel is not None:
                self.tunnel.child_established(event)
        elif isinstance(event, ev.ChildSADeleted):
            self.children.pop(event.spi_in, None)
            if self.tunnel is not None:
                self.tunnel.child_deleted(event)
        elif isinstance(event, (ev.IkeSADeleted, ev.Phase1Failed)) or (
            isinstance(event, ev.XauthCompleted) and not event.success
        ):
            self._release(event.sa_id)

    def _check_user(self, event: ev.XauthCredentials, now: float) -> None:
        users = self.options.users
        if users is None:
            ok, why = False, "no users file configured (--users)"
        elif event.passcode is not None and event.password is None:
            ok, why = False, "passcodes are not supported"
        else:
            ok = users.check(event.user_name, event.password)
            why = "" if ok else "bad user name or password"
        if ok:
            log.info("XAUTH: user %r from %s accepted", event.user_name, event.peer[0])
        else:
            log.warning("XAUTH: user %r from %s rejected: %s", event.user_name, event.peer[0], why)
        try:
            self.engine.xauth_verdict(event.sa_id, now, ok)
        except LocalProtocolError as exc:
            log.warning("XAUTH verdict for %s not sent: %s", event.peer[0], exc)

    def _mode_config(self, event: ev.ModeConfigRequested, now: float) -> None:
        address: IPv4Address | None = None
        if self.options.pool is not None:
            address = self.options.pool.lease(event.sa_id)
            if address is None:
                log.warning(
                    "Mode Config: address pool %s-%s exhausted; closing the SA of %s",
                    self.options.pool.first,
                    self.options.pool.last,
                    event.peer[0],
                )
                self.engine.delete_ike_sa(event.sa_id, now, reason="address pool exhausted")
                return
        config = self.mode_config_for(address, event.requested_types)
        log.info(
            "Mode Config: %s (id %s%s) gets %s",
            event.peer[0],
            event.peer_id,
            f", user {event.user_name!r}" if event.user_name else "",
            address if address is not None else "no address (no pool)",
        )
        try:
            self.engine.mode_config_reply(event.sa_id, now, event.identifier, config)
        except LocalProtocolError as exc:
            log.warning("Mode Config reply to %s not sent: %s", event.peer[0], exc)
            if address is not None:
                self._release(event.sa_id)

    def mode_config_for(self, address: IPv4Address | None, requested: Sequence[int] = ()) -> ModeConfig:
        """What a client gets: its address (/32), DNS, and the protected networks as Cisco Unity
        SPLIT_INCLUDE and/or INTERNAL_IP4_SUBNET, whichever it asked for (both if it named neither)."""
        wants_unity = CfgAttr.UNITY_SPLIT_INCLUDE in requested
        wants_subnets = CfgAttr.INTERNAL_IP4_SUBNET in requested or not wants_unity
        split = tuple(self.options.split)
        return ModeConfig(
            address=address,
            netmask=IPv4Address("255.255.255.255") if address is not None else None,
            dns=tuple(self.options.dns),
            split_include=split if wants_unity else (),
            subnets=split if wants_subnets else (),
            banner=self.options.banner,
        )

    def _release(self, sa_id: bytes) -> None:
        if self.options.pool is not None:
            address = self.options.pool.release(sa_id)
            if address is not None:
                log.info("address %s returned to the pool", address)

    # ------------------------------------------------------------------ running

    async def run(self, *, ready: Callable[[], None] | None = None, handle_signals: bool = True) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`); then delete every SA and return."""
        keylog = None
        if self.options.keylog:
            from tunvpn.keylog import KeyLog

            keylog = KeyLog(self.options.keylog)
            log.warning(
                "writing IKE and ESP keys to %s.* (for Wireshark; keep it private)", self.options.keylog
            )
        if self.options.tun is not None and self.tunnel is None:
            from tunvpn.tunnel import Tunnel

            # the gateway answers Quick Modes; its clients rekey them (proposal_for=None)
            self.tunnel = Tunnel(self.engine, name=self.options.tun, mtu=self.options.mtu)
            log.info("ESP data path on TUN device %s", self.tunnel.name)
        self.driver = UdpDriver(
            self.engine,
            self.options.listen,
            ike_port=self.options.ike_port,
            natt_port=self.options.natt_port,
            handler=self.handle_event,
            natt_owner=self.tunnel.dataplane if self.tunnel is not None else None,
            keylog=keylog,
            clock=self.clock,
        )
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            await self.driver.start()
        except BaseException:
            if self.tunnel is not None:
                self.tunnel.close()
                self.tunnel = None
            raise
        if self.tunnel is not None:
            self.tunnel.on_change = self.driver.flush
            self.tunnel.start(loop)
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        log.info(
            "gateway ready on %s (IKE %d, NAT-T %d); pool %s; %s",
            self.options.listen,
            self.options.ike_port,
            self.options.natt_port,
            f"{self.options.pool.first}-{self.options.pool.last}" if self.options.pool else "none",
            "networks " + ", ".join(str(n) for n in self.options.split)
            if self.options.split
            else "0.0.0.0/0",
        )
        if ready is not None:
            ready()
        try:
            await self._stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            self.shutdown()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def shutdown(self) -> None:
        """Tell every peer we are going (Delete), then close the sockets."""
        now = self.clock()
        for sa in self.engine.ike_sas():
            try:
                self.engine.delete_ike_sa(sa.sa_id, now, reason="gateway shutting down")
            except LocalProtocolError:
                pass
        if self.driver is not None:
            self.driver.flush()
            self.driver.close()
            log.info("gateway stopped (%s)", _counters_text(self.driver))
        if self.tunnel is not None:
            log.info("data path: %s", self.tunnel.dataplane.stats())
            self.tunnel.close()
            self.tunnel = None


def _counters_text(driver: UdpDriver) -> str:
    if not driver.counters:
        return "no packets dropped"
    return ", ".join(f"{k}: {v}" for k, v in sorted(driver.counters.items()))


__all__ = [
    "AddressPool",
    "ConfigError",
    "Gateway",
    "GatewayOptions",
    "build_engine_config",
    "child_policies",
    "child_proposal",
    "legacy_algorithm_names",
]
