"""Direct tunnels to the peers the gateway introduced (issue 17, seed paragraph 0043).

The gateway's phase 1a introductions (:mod:`tunvpn.ike.peers`) name each peer, the endpoint it
saw it at, the pair's secret and who starts. :class:`PeerLinks` turns the current list into
direct tunnels on the client's own IKE engine and NAT-T socket:

* the engine learns the pairs (:meth:`IkeEngine.set_pairs`), so it answers a Main Mode first
  message from an announced endpoint, and only from one;
* the side that answers sends NAT-keepalives to the other's endpoint until the phase 1 is up,
  with a small IP TTL (:data:`PUNCH_TTL`): they open its own NAT toward the other side (which
  then lets that side's messages in) and die before they reach the other side's NAT. One that
  arrived there first would make that NAT (Linux conntrack does) map the other side's own
  first message to another port, which our NAT would not let in;
* the side that starts waits :data:`START_AFTER` (the other side's first keepalive is on its
  way) and starts Main Mode on the NAT-T port with the pair's key, then the pair's Quick Mode
  (its address to the peer's), and starts again after a failure, later each time;
* an SA pair up is installed in the data path and the peer's address routed into the TUN
  device; a peer no longer introduced (it left, lost its group, a reload changed the rules)
  loses its SAs at once;
* when no direct tunnel is up :data:`RELAY_AFTER` seconds after the introduction (a NAT that
  maps each destination to another port, a firewall), each side makes a Quick Mode with its
  gateway for the same selectors (``relay:NAME``, which the gateway accepts for introduced
  peers only) and the gateway forwards between the two; the starting side keeps trying the
  direct path, and once it is up the relay SA is deleted (the direct SA, newer, already
  carries the traffic).

It holds no socket, thread or clock: the client calls :meth:`PeerLinks.sync` with each new
list, :meth:`PeerLinks.handle` with the engine events of SAs that are not its gateway's, and
:meth:`PeerLinks.tick` every :data:`TICK` seconds, and flushes the engine afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, PeerPair
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.peers import Introduction, PeerList, Role
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

log = logging.getLogger(__name__)

Address = tuple[str, int]
Report = Callable[..., None]

TICK = 0.5
"""Seconds between :meth:`PeerLinks.tick` calls (the client's timer)."""
START_AFTER = 1.5
"""Seconds the starting side waits after an introduction (or a peer's new endpoint) before
its first message: longer than :data:`PUNCH_EVERY`, so the answering side's NAT-keepalive has
opened its NAT by then. A first message that came before would leave that NAT an entry for it
which maps the answering side's own keepalive to another port (Linux conntrack does)."""
PUNCH_TTL = 2
"""IP TTL of the answering side's NAT-keepalives: through the first router (our NAT, for a
home network) and dropped at the next, long before the other side's NAT (an unsolicited
packet arriving there first would make it map the other side's first message to another
port, which our NAT would not let in). Behind a second NAT (carrier-grade NAT) the keepalive
does not open that one: the direct path fails there and the relay carries the traffic."""
PUNCH_EVERY = 1.0
"""Seconds between the answering side's NAT-keepalives while no phase 1 is up."""
PUNCH_SLOWLY_AFTER = 30.0
"""After this long without a phase 1, keepalives every :data:`PUNCH_SLOWLY_EVERY` only (they
keep our NAT's entry toward the peer: an unanswered one lives 30 s in Linux conntrack)."""
PUNCH_SLOWLY_EVERY = 10.0
RELAY_AFTER = 4.0
"""Seconds without a direct tunnel after which traffic to the peer goes through the gateway."""
RELAY_RETRY = 10.0
"""Seconds before a refused or lost relay Quick Mode is tried again."""
RELAY_PREFIX = "relay:"
"""The name of a relay Quick Mode (``relay:`` and the peer's name), as the gateway's."""
RETRY_FIRST = 2.0
"""Seconds before the starting side tries again after a failed phase 1 (doubled each time)."""
RETRY_MAX = 60.0


class LinkState:
    """Where a direct tunnel is (shown by ``tunvpn status``)."""

    INTRODUCED = "introduced"
    CONNECTING = "connecting"
    PHASE1 = "phase 1 up"
    DIRECT = "direct"
    RELAYED = "relayed"


@dataclass
class Link:
    """One introduced peer and our SAs with it."""

    intro: Introduction
    since: float
    sa_id: bytes | None = None
    """Our ISAKMP SA with the peer (started or answered)."""
    child: ev.ChildSAEstablished | None = None
    state: str = LinkState.INTRODUCED
    next_at: float = 0.0
    """Initiator: when to start (again); responder: when to send the next keepalive."""
    failures: int = 0
    last_error: str = ""
    punches: int = 0
    """NAT-keepalives the answering side sent since the link went down."""
    relay: ev.ChildSAEstablished | None = None
    """Our relay SA pair through the gateway, while no direct one is up."""
    relay_at: float = 0.0
    """When to start the relay Quick Mode (if no direct tunnel is up by then)."""
    relay_pending: bool = False
    children: set[int] = field(default_factory=set)
    """Inbound SPIs of the SA pairs up with the peer."""

    @property
    def name(self) -> str:
        return f"peer:{self.intro.name}"

    @property
    def relay_name(self) -> str:
        return f"{RELAY_PREFIX}{self.intro.name}"


def pair_policies(
    intro: Introduction, own: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[ChildPolicy, ...]:
    """The pair's phase 2 policies from this side: our address to the peer's (another client)
    or to each network behind it (a site's gateway, issue 18), with the ESP suite, PFS group
    and lifetime the gateway set for the pair."""
    proposal = ChildProposal(
        esp=(intro.esp,), pfs_group=intro.pfs_group, lifetime_seconds=intro.lifetime_seconds
    )
    ours = TrafficSelector.from_network(f"{own}/{own.max_prefixlen}")
    theirs = intro.networks or (ipaddress.ip_network(intro.address),)
    return tuple(
        ChildPolicy(f"peer:{intro.name}", ours, TrafficSelector.from_network(str(net)), proposal)
        for net in theirs
    )


def pair_policy(intro: Introduction, own: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ChildPolicy:
    """The pair's first phase 2 policy (its proposal is every one's)."""
    return pair_policies(intro, own)[0]


def _same_pair(a: Introduction, b: Introduction) -> bool:
    """Whether ``b`` introduces the same pair as ``a`` (it may have moved: another endpoint)."""
    return (
        a.name,
        a.identity,
        a.secret,
        a.role,
        a.local_id,
        a.esp,
        a.pfs_group,
        a.lifetime_seconds,
        a.networks,
    ) == (
        b.name,
        b.identity,
        b.secret,
        b.role,
        b.local_id,
        b.esp,
        b.pfs_group,
        b.lifetime_seconds,
        b.networks,
    )


class PeerLinks:
    """The client's direct tunnels (module docstring).

    :param engine: the client's IKE engine (the one that talks to the gateway).
    :param local: our address and NAT-T port (direct tunnels start there: the gateway saw that
        socket's mapping through our NAT and announced it).
    :param report: the client's progress reporter (``report(step, text, **fields)``).
    :param punch: sends a NAT-keepalive from our NAT-T socket to an endpoint with an IP TTL
        (:meth:`tunvpn.shell.udp.UdpDriver.punch`).
    :param gateway_sa: our ISAKMP SA with the gateway now (relay Quick Modes go there).
    :param on_child: an SA pair with a peer is up (the client installs it in the data path).
    :param on_child_deleted: one is gone.
    """

    def __init__(
        self,
        engine: IkeEngine,
        local: Address,
        report: Report,
        *,
        punch: Callable[[Address, int], None] | None = None,
        gateway_sa: Callable[[], bytes | None] | None = None,
        on_child: Callable[[ev.ChildSAEstablished], None] | None = None,
        on_child_deleted: Callable[[ev.ChildSADeleted], None] | None = None,
    ) -> None:
        self.engine = engine
        self.local = local
        self.report = report
        self.punch = punch
        self.gateway_sa = gateway_sa or (lambda: None)
        self.on_child = on_child
        self.on_child_deleted = on_child_deleted
        self.links: dict[str, Link] = {}
        """By the peer's inner address (as text)."""
        self.own: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    # ------------------------------------------------------------------ the gateway's list

    def sync(
        self, peers: PeerList, own: ipaddress.IPv4Address | ipaddress.IPv6Address | None, now: float
    ) -> None:
        """The gateway's complete list now, and our own inner address: new peers are
        prepared, moved ones followed, peers no longer listed lose their SAs at once."""
        self.own = own
        wanted = {str(p.address): p for p in peers.peers} if own is not None else {}
        for address, link in list(self.links.items()):
            intro = wanted.get(address)
            if intro is None or not _same_pair(link.intro, intro):
                self._drop(link, now, "no longer introduced" if intro is None else "introduced again")
                del self.links[address]
            elif intro.endpoint != link.intro.endpoint:
                log.info("peer %s moved to %s:%d", intro.name, *intro.endpoint)
                link.intro = intro
                if link.state not in (LinkState.PHASE1, LinkState.DIRECT):
                    # what we sent to the old endpoint will not be answered: start over there
                    if link.sa_id is not None and intro.role is Role.INITIATOR:
                        self._forget_attempt(link, now)
                    starts = intro.role is Role.INITIATOR
                    link.next_at, link.punches, link.since = now + (START_AFTER if starts else 0.0), 0, now
        for address, intro in wanted.items():
            if address in self.links:
                continue
            if intro.local_id is None:
                log.warning("peer %s: the gateway did not say which identity to present to it", intro.name)
                continue
            link = Link(intro, now, relay_at=now + RELAY_AFTER)
            link.next_at = now + START_AFTER if intro.role is Role.INITIATOR else now
            self.links[address] = link
        self._tell_engine()

    def _tell_engine(self) -> None:
        pairs: dict[Address, PeerPair] = {}
        if self.own is not None:
            for link in self.links.values():
                intro = link.intro
                assert intro.local_id is not None
                pairs[intro.endpoint] = PeerPair(
                    intro.identity, intro.local_id, intro.secret, pair_policies(intro, self.own)
                )
        self.engine.set_pairs(pairs)

    def _forget_attempt(self, link: Link, now: float) -> None:
        """Give up our phase 1 in progress with ``link``'s peer (it never answered)."""
        assert link.sa_id is not None
        try:
            self.engine.delete_ike_sa(link.sa_id, now, reason="the peer moved")
        except LocalProtocolError:
            pass
        link.sa_id, link.state = None, LinkState.CONNECTING

    def _drop(self, link: Link, now: float, reason: str) -> None:
        """Delete our SAs with ``link``'s peer (it is told, if it still listens)."""
        self._end_relay(link, now)
        if link.sa_id is not None:
            try:
                self.engine.delete_ike_sa(link.sa_id, now, reason=f"peer {reason}")
            except LocalProtocolError:
                pass
        for spi in sorted(link.children):
            if self.on_child_deleted is not None:
                self.on_child_deleted(ev.ChildSADeleted(link.sa_id or bytes(16), spi, 0, False))
        link.children.clear()
        if link.state != LinkState.INTRODUCED or link.sa_id is not None:
            self.report(
                "peer",
                f"direct tunnel to {link.intro.name} ({link.intro.address}) closed: {reason}",
                state="closed",
                name=link.intro.name,
            )

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Start what is due: the starting side's phase 1, the answering side's keepalives."""
        if self.own is None:
            return
        for link in self.links.values():
            relay_due = link.relay is None and not link.relay_pending and now >= link.relay_at
            if link.state != LinkState.DIRECT and relay_due and not link.intro.networks:
                # (a site's gateway needs no relay: our gateway's own SAs reach its networks)
                self._start_relay(link, now)
            if link.state in (LinkState.PHASE1, LinkState.DIRECT) or now < link.next_at:
                continue
            if link.intro.role is Role.RESPONDER:
                slow = now - link.since > PUNCH_SLOWLY_AFTER
                if self.punch is not None:
                    self.punch(link.intro.endpoint, PUNCH_TTL)
                link.punches += 1
                link.next_at = now + (PUNCH_SLOWLY_EVERY if slow else PUNCH_EVERY)
            elif link.sa_id is None:
                self._start(link, now)

    def _start(self, link: Link, now: float) -> None:
        intro = link.intro
        assert self.own is not None and intro.local_id is not None
        pair = self.engine.pairs().get(intro.endpoint)
        if pair is None:
            return
        link.sa_id = self.engine.initiate(intro.endpoint, self.local, now, mode="main", pair=pair)
        link.state = LinkState.CONNECTING
        link.next_at = float("inf")
        self.report(
            "peer",
            f"starting a direct tunnel to {intro.name} at {intro.endpoint[0]}:{intro.endpoint[1]}",
            state="connecting",
            name=intro.name,
        )

    # ------------------------------------------------------------------ the relay

    def _start_relay(self, link: Link, now: float) -> None:
        """Our own address to the peer's through the gateway (it forwards to the peer's relay)."""
        gateway = self.gateway_sa()
        if gateway is None or self.own is None:
            return
        policy = pair_policy(link.intro, self.own)
        assert policy.remote_ts is not None
        try:
            self.engine.start_child(
                gateway, now, policy.local_ts, policy.remote_ts, policy.proposal, name=link.relay_name
            )
        except LocalProtocolError as exc:
            link.relay_at = now + RELAY_RETRY
            log.info("cannot relay to %s through the gateway: %s", link.intro.name, exc)
            return
        link.relay_pending = True
        self.report(
            "peer",
            f"no direct tunnel to {link.intro.name} yet: relaying through the gateway",
            state="relaying",
            name=link.intro.name,
        )

    def _end_relay(self, link: Link, now: float) -> None:
        """The direct tunnel carries the traffic (or the peer is gone): delete the relay SA."""
        gateway = self.gateway_sa()
        if link.relay is not None and gateway is not None:
            try:
                self.engine.delete_child(gateway, link.relay.spi_in, now)
            except LocalProtocolError:
                pass

    def handle_relay(self, event: ev.Event, now: float) -> bool:
        """An event of a Quick Mode on the gateway's SA: True when it was one of our relays."""
        link: Link | None = None
        if isinstance(event, (ev.ChildSAEstablished, ev.ChildSAFailed)):
            link = next((k for k in self.links.values() if k.relay_name == event.policy_name), None)
        elif isinstance(event, ev.ChildSADeleted):
            link = next(
                (k for k in self.links.values() if k.relay is not None and k.relay.spi_in == event.spi_in),
                None,
            )
        if link is None:
            return isinstance(
                event, (ev.ChildSAEstablished, ev.ChildSAFailed)
            ) and event.policy_name.startswith(RELAY_PREFIX)
        if isinstance(event, ev.ChildSAEstablished):
            replaced = link.relay
            link.relay, link.relay_pending = event, False
            if self.on_child is not None:
                self.on_child(event)
            if replaced is not None and replaced.spi_in != event.spi_in:
                return True  # a rekey: the data path retires the old pair
            if link.state == LinkState.DIRECT:
                self._end_relay(link, now)  # the direct tunnel came up meanwhile
                return True
            self.report(
                "peer",
                f"traffic to {link.intro.name} ({link.intro.address}) relayed by the gateway",
                state="relayed",
                name=link.intro.name,
                spi_in=f"0x{event.spi_in:08x}",
            )
        elif isinstance(event, ev.ChildSADeleted):
            if self.on_child_deleted is not None:
                self.on_child_deleted(event)
            if link.relay is not None and link.relay.spi_in == event.spi_in:
                link.relay = None
                link.relay_at = now + (0.0 if link.state != LinkState.DIRECT else RELAY_AFTER)
        elif isinstance(event, ev.ChildSAFailed):
            link.relay_pending = False
            link.relay_at = now + RELAY_RETRY
            log.info("relay to %s refused: %s", link.intro.name, event.reason)
        return True

    # ------------------------------------------------------------------ engine events

    def _link_of(self, event: ev.Event) -> Link | None:
        for link in self.links.values():
            if link.sa_id is not None and link.sa_id[:8] == event.sa_id[:8]:
                return link
        if isinstance(event, ev.Phase1Established) and event.role == "responder":
            for link in self.links.values():
                if link.intro.endpoint == event.peer and link.intro.role is Role.RESPONDER:
                    return link
        return None

    def handle(self, event: ev.Event, now: float) -> bool:
        """An engine event of an SA that is not the gateway's: True when it was a peer's."""
        link = self._link_of(event)
        if link is None:
            return False
        if isinstance(event, ev.Phase1Established):
            self._phase1_up(link, event, now)
        elif isinstance(event, ev.ChildSAEstablished):
            link.children.add(event.spi_in)
            link.child, link.state, link.failures = event, LinkState.DIRECT, 0
            if self.on_child is not None:
                self.on_child(event)
            self._end_relay(link, now)
            reached = event.remote_ts if link.intro.networks else link.intro.address
            self.report(
                "peer",
                f"direct tunnel to {link.intro.name} ({reached}) up at {event.remote[0]}:{event.remote[1]}",
                state="direct",
                name=link.intro.name,
                address=str(link.intro.address),
                spi_in=f"0x{event.spi_in:08x}",
                spi_out=f"0x{event.spi_out:08x}",
            )
        elif isinstance(event, ev.ChildSADeleted):
            link.children.discard(event.spi_in)
            if self.on_child_deleted is not None:
                self.on_child_deleted(event)
            if not link.children and link.state == LinkState.DIRECT:
                link.state, link.child = LinkState.PHASE1, None
        elif isinstance(event, (ev.Phase1Failed, ev.IkeSADeleted, ev.ChildSAFailed)):
            self._down(link, event, now)
        return True

    def _phase1_up(self, link: Link, event: ev.Phase1Established, now: float) -> None:
        link.sa_id, link.state = event.sa_id, LinkState.PHASE1
        if link.intro.role is not Role.INITIATOR or self.own is None:
            return  # the peer starts the Quick Mode
        for policy in pair_policies(link.intro, self.own):
            assert policy.remote_ts is not None
            try:
                self.engine.start_child(
                    event.sa_id, now, policy.local_ts, policy.remote_ts, policy.proposal, name=policy.name
                )
            except LocalProtocolError as exc:
                self._down(link, ev.ChildSAFailed(event.sa_id, str(exc), None, policy.name), now)
                return

    def _down(self, link: Link, event: ev.Event, now: float) -> None:
        reason = getattr(event, "reason", "failed")
        if isinstance(event, ev.ChildSAFailed) and link.sa_id is not None:
            try:
                self.engine.delete_ike_sa(link.sa_id, now, reason="the pair's Quick Mode failed")
            except LocalProtocolError:
                pass
        for spi in sorted(link.children):
            if self.on_child_deleted is not None:
                self.on_child_deleted(ev.ChildSADeleted(event.sa_id, spi, 0, True))
        link.children.clear()
        link.sa_id, link.child = None, None
        link.state, link.last_error = LinkState.CONNECTING, str(reason)
        link.failures += 1
        link.punches, link.since = 0, now
        link.relay_at = min(link.relay_at, now + RELAY_AFTER) if link.relay is None else link.relay_at
        delay = min(RETRY_FIRST * 2 ** (link.failures - 1), RETRY_MAX)
        link.next_at = now + (delay if link.intro.role is Role.INITIATOR else 0.0)
        self.report(
            "peer",
            f"direct tunnel to {link.intro.name}: {reason}",
            state="down",
            name=link.intro.name,
        )

    # ------------------------------------------------------------------ status

    def status(self, address: str, counters: dict[int, tuple[int, int]] | None = None) -> dict[str, object]:
        """The ``tunvpn status`` fields of the peer at inner ``address``: its path, the SA pair
        that carries its traffic now and, from ``counters`` (SPI -> bytes, packets), what it
        carried."""
        link = self.links.get(address)
        if link is None:
            return {"path": LinkState.INTRODUCED}
        carrying = link.child if link.state == LinkState.DIRECT else link.relay
        if carrying is not None and counters is not None:
            bytes_in, packets_in = counters.get(carrying.spi_in, (0, 0))
            bytes_out, packets_out = counters.get(carrying.spi_out, (0, 0))
            traffic: dict[str, object] = {
                "bytes_in": bytes_in,
                "packets_in": packets_in,
                "bytes_out": bytes_out,
                "packets_out": packets_out,
            }
        else:
            traffic = {}
        state = LinkState.RELAYED if link.state != LinkState.DIRECT and link.relay is not None else link.state
        out: dict[str, object] = {"path": state}
        if link.relay is not None and state == LinkState.RELAYED:
            out["spi_in"] = f"0x{link.relay.spi_in:08x}"
            out["spi_out"] = f"0x{link.relay.spi_out:08x}"
            out["remote"] = f"{link.relay.remote[0]}:{link.relay.remote[1]}"
        if link.child is not None:
            out["spi_in"] = f"0x{link.child.spi_in:08x}"
            out["spi_out"] = f"0x{link.child.spi_out:08x}"
            out["remote"] = f"{link.child.remote[0]}:{link.child.remote[1]}"
        if link.last_error and link.state != LinkState.DIRECT:
            out["error"] = link.last_error
        return {**out, **traffic}

    def close(self, now: float) -> None:
        """Delete every direct tunnel (the client is going away)."""
        for link in self.links.values():
            self._end_relay(link, now)
            if link.sa_id is not None:
                try:
                    self.engine.delete_ike_sa(link.sa_id, now, reason="client closing")
                except LocalProtocolError:
                    pass
        self.links.clear()
        self.engine.set_pairs({})


__all__ = ["Link", "LinkState", "PeerLinks", "pair_policies", "pair_policy"]
