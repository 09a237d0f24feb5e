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
  loses its SAs at once.

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
START_AFTER = 0.5
"""Seconds the starting side waits after an introduction before its first message, so the
answering side's first NAT-keepalive has opened its NAT (both got the introduction at once)."""
PUNCH_TTL = 2
"""IP TTL of the answering side's NAT-keepalives: through the first router (our NAT, for a
home network) and dropped at the next. It grows by one every :data:`PUNCH_TTL_STEP`
keepalives up to :data:`PUNCH_TTL_MAX` (a NAT two or three routers away: carrier-grade NAT),
then the normal TTL (64) after :data:`PUNCH_SLOWLY_AFTER`."""
PUNCH_TTL_STEP = 3
PUNCH_TTL_MAX = 4
PUNCH_EVERY = 1.0
"""Seconds between the answering side's NAT-keepalives while no phase 1 is up."""
PUNCH_SLOWLY_AFTER = 30.0
"""After this long without a phase 1, keepalives every :data:`PUNCH_SLOWLY_EVERY` only."""
PUNCH_SLOWLY_EVERY = 10.0
RETRY_FIRST = 2.0
"""Seconds before the starting side tries again after a failed phase 1 (doubled each time)."""
RETRY_MAX = 60.0


class LinkState:
    """Where a direct tunnel is (shown by ``tunvpn status``)."""

    INTRODUCED = "introduced"
    CONNECTING = "connecting"
    PHASE1 = "phase 1 up"
    DIRECT = "direct"


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
    """NAT-keepalives the answering side sent since the link went down (their TTL grows)."""
    children: set[int] = field(default_factory=set)
    """Inbound SPIs of the SA pairs up with the peer."""

    @property
    def name(self) -> str:
        return f"peer:{self.intro.name}"


def pair_policy(intro: Introduction, own: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ChildPolicy:
    """The pair's phase 2 policy from this side: our address to the peer's, with the ESP suite,
    PFS group and lifetime the gateway set for the pair."""
    proposal = ChildProposal(
        esp=(intro.esp,), pfs_group=intro.pfs_group, lifetime_seconds=intro.lifetime_seconds
    )
    return ChildPolicy(
        f"peer:{intro.name}",
        TrafficSelector.from_network(f"{own}/{own.max_prefixlen}"),
        TrafficSelector.from_network(f"{intro.address}/{intro.address.max_prefixlen}"),
        proposal,
    )


def _same_pair(a: Introduction, b: Introduction) -> bool:
    """Whether ``b`` introduces the same pair as ``a`` (it may have moved: another endpoint)."""
    return (a.name, a.identity, a.secret, a.role, a.local_id, a.esp, a.pfs_group, a.lifetime_seconds) == (
        b.name,
        b.identity,
        b.secret,
        b.role,
        b.local_id,
        b.esp,
        b.pfs_group,
        b.lifetime_seconds,
    )


class PeerLinks:
    """The client's direct tunnels (module docstring).

    :param engine: the client's IKE engine (the one that talks to the gateway).
    :param local: our address and NAT-T port (direct tunnels start there: the gateway saw that
        socket's mapping through our NAT and announced it).
    :param report: the client's progress reporter (``report(step, text, **fields)``).
    :param punch: sends a NAT-keepalive from our NAT-T socket to an endpoint with an IP TTL
        (:meth:`tunvpn.shell.udp.UdpDriver.punch`).
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
        on_child: Callable[[ev.ChildSAEstablished], None] | None = None,
        on_child_deleted: Callable[[ev.ChildSADeleted], None] | None = None,
    ) -> None:
        self.engine = engine
        self.local = local
        self.report = report
        self.punch = punch
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
                if link.state in (LinkState.INTRODUCED, LinkState.CONNECTING) and link.sa_id is None:
                    link.next_at = now
        for address, intro in wanted.items():
            if address in self.links:
                continue
            if intro.local_id is None:
                log.warning("peer %s: the gateway did not say which identity to present to it", intro.name)
                continue
            link = Link(intro, now)
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
                    intro.identity, intro.local_id, intro.secret, (pair_policy(intro, self.own),)
                )
        self.engine.set_pairs(pairs)

    def _drop(self, link: Link, now: float, reason: str) -> None:
        """Delete our SAs with ``link``'s peer (it is told, if it still listens)."""
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
            if link.state in (LinkState.PHASE1, LinkState.DIRECT) or now < link.next_at:
                continue
            if link.intro.role is Role.RESPONDER:
                slow = now - link.since > PUNCH_SLOWLY_AFTER
                if self.punch is not None:
                    ttl = 64 if slow else min(PUNCH_TTL + link.punches // PUNCH_TTL_STEP, PUNCH_TTL_MAX)
                    self.punch(link.intro.endpoint, ttl)
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
            self.report(
                "peer",
                f"direct tunnel to {link.intro.name} ({link.intro.address}) up at "
                f"{event.remote[0]}:{event.remote[1]}",
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
        policy = pair_policy(link.intro, self.own)
        assert policy.remote_ts is not None
        try:
            self.engine.start_child(
                event.sa_id, now, policy.local_ts, policy.remote_ts, policy.proposal, name=policy.name
            )
        except LocalProtocolError as exc:
            self._down(link, ev.ChildSAFailed(event.sa_id, str(exc), None, policy.name), now)

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
        delay = min(RETRY_FIRST * 2 ** (link.failures - 1), RETRY_MAX)
        link.next_at = now + (delay if link.intro.role is Role.INITIATOR else 0.0)
        self.report(
            "peer",
            f"direct tunnel to {link.intro.name}: {reason}",
            state="down",
            name=link.intro.name,
        )

    # ------------------------------------------------------------------ status

    def status(self, address: str) -> dict[str, object]:
        """The ``tunvpn status`` fields of the peer at inner ``address``."""
        link = self.links.get(address)
        if link is None:
            return {"path": LinkState.INTRODUCED}
        out: dict[str, object] = {"path": link.state}
        if link.child is not None:
            out["spi_in"] = f"0x{link.child.spi_in:08x}"
            out["spi_out"] = f"0x{link.child.spi_out:08x}"
            out["remote"] = f"{link.child.remote[0]}:{link.child.remote[1]}"
        if link.last_error and link.state != LinkState.DIRECT:
            out["error"] = link.last_error
        return out

    def close(self, now: float) -> None:
        """Delete every direct tunnel (the client is going away)."""
        for link in self.links.values():
            if link.sa_id is not None:
                try:
                    self.engine.delete_ike_sa(link.sa_id, now, reason="client closing")
                except LocalProtocolError:
                    pass
        self.links.clear()
        self.engine.set_pairs({})


__all__ = ["Link", "LinkState", "PeerLinks", "pair_policy"]
