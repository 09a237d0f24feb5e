"""Site-to-site tunnels between gateways (issue 18): the ``[[site]]`` blocks of gateway.toml.

For each other site the gateway knows its address and phase 1 identity, the pre-shared key of
this pair of gateways (never the group key), the networks behind it and ours it may reach.
:class:`SiteLinks` puts that into the gateway's own IKE engine as pairs
(:meth:`tunvpn.ike.engine.IkeEngine.set_pairs`): a first message from a site's address takes
the pair's path (Main Mode with the site's key, its identity checked, no XAUTH, only the site's
selectors), and a site marked ``initiate`` (the default) is started by us: Main Mode from our IKE
port, then one Quick Mode per pair of networks (ours, theirs), again after any loss with a
back-off. The SAs go into the gateway's data path like its clients' (the site's networks are
routed into the TUN device); the gateway rekeys the Quick Modes it started.

A site that lists no ``networks`` learns them from the other gateway the way a client learns
its policies: after phase 1 it sends a CFG_REQUEST with ``CFG_PHASE2_POLICIES``, and the other
gateway (a tunvpn one) answers with one ``CFG_`` set per pair of networks (its side, ours), from
which the Quick Modes are made.

A site with ``introduce`` (issue 18, seed paragraph 0043) has its gateway (a tunvpn one) meet
our clients of those groups: each such client is introduced to it as a peer with the networks
behind it (:func:`client_introductions`, in the client's phase 1a list), and the other gateway
is told about each client over the site's ISAKMP SA with a CFG_SET carrying the same
``CFG_PEERS`` groups (:meth:`SiteLinks.tell`; always the whole list, so a client that leaves
is revoked). The other gateway takes them as pairs of its engine: a first message from the
client's endpoint, with the pair's secret and the client's identity, gets a phase 1 with no
XAUTH and only Quick Modes between its own networks (``local`` of its ``[[site]]`` for us) and
the client's address, which must lie in our networks as it knows them. The client's traffic
to that site then goes to its gateway directly, not through us.

No socket, thread or clock here: the gateway calls :meth:`SiteLinks.tick` every
:data:`TICK` seconds, hands it every engine event first (:meth:`SiteLinks.handle`) and flushes
the engine afterwards.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tunvpn.config.gateway import SiteRule
from tunvpn.gateway.peering import Member, PairSecrets, peer_identity
from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, PeerPair
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.peers import MAX_PEERS, Introduction, Network, PeerList, Role, decode_peers, encode_peers
from tunvpn.ike.policies import Phase2Policy, PolicyAttr, PolicyPush, decode_policies, encode_policies
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

log = logging.getLogger(__name__)

Address = tuple[str, int]

TICK = 1.0
"""Seconds between :meth:`SiteLinks.tick` calls."""
RETRY_FIRST = 2.0
"""Seconds before a lost or failed site tunnel we start is started again (doubled each time)."""
RETRY_MAX = 30.0
SITE_PREFIX = "site:"
"""Names of the site's Quick Modes: ``site:NAME``."""
NATT_PORT = 4500
"""The port an introduced client starts its direct tunnel to the site's gateway on (NAT-T)."""
TELL_RETRY = 5.0
"""Seconds before a CFG_SET of introductions the other gateway did not acknowledge is sent again."""
MAX_SITE_NETWORKS = 32
"""At most this many networks of a site go into a client's introduction (CFG_PEER_NETWORKS)."""


def pushed_policies(site: SiteRule, generation: int = 1) -> PolicyPush:
    """What we push to ``site``'s gateway when it asks (it lists no networks): one set per pair
    of our networks (the sets' gateway side) and its networks (their client side)."""
    pairs = ((lo, re) for lo in site.local for re in site.networks if lo.version == re.version)
    sets = [
        Phase2Policy(f"{SITE_PREFIX}{site.name}/{i}", local, remote, (site.esp,), site.pfs, site.lifetime)
        for i, (local, remote) in enumerate(pairs, 1)
    ]
    return PolicyPush(generation, tuple(sets))


def site_policies(site: SiteRule) -> tuple[ChildPolicy, ...]:
    """One phase 2 policy per pair of networks of one family: ours (``site.local``) to theirs."""
    proposal = ChildProposal(esp=(site.esp,), pfs_group=site.pfs, lifetime_seconds=site.lifetime)
    return tuple(
        ChildPolicy(f"{SITE_PREFIX}{site.name}", local, remote, proposal)
        for local in site.local
        for remote in site.networks
        if local.version == remote.version
    )


@dataclass
class IntroducedClient:
    """A client of another site's gateway that it introduced to us (we answer its tunnel)."""

    intro: Introduction
    sa_id: bytes | None = None
    children: int = 0


@dataclass
class SiteLink:
    """One other site and our ISAKMP SA with it."""

    site: SiteRule
    sa_id: bytes | None = None
    up: bool = False
    next_at: float = 0.0
    failures: int = 0
    last_error: str = ""
    children: int = 0
    learned: tuple[Phase2Policy, ...] = ()
    """The sets the other gateway pushed (a site that lists no networks of its own)."""
    tunvpn: bool = False
    """The other gateway sent tunvpn's vendor ID (it takes introductions)."""
    wanted: PeerList = field(default_factory=PeerList)
    """Our clients the other gateway should know now (``introduce``)."""
    told: PeerList | None = None
    """What it acknowledged last on the current ISAKMP SA (None: nothing yet)."""
    telling: tuple[int, PeerList] | None = None
    """The CFG_SET on its way: its identifier and list."""
    tell_at: float = 0.0
    clients: dict[Address, IntroducedClient] = field(default_factory=dict)
    """The other gateway's clients it introduced to us, by their endpoint."""
    refused: int = 0
    """Introductions from it we refused (an address outside its networks, ...)."""

    def their_networks(self) -> tuple[TrafficSelector, ...]:
        """The other site's networks: configured, or as it pushed them."""
        return self.site.networks or tuple(dict.fromkeys(p.gateway_ts for p in self.learned))


def _client_key(site: SiteRule) -> bytes:
    """The other side of the pair secret of a client and ``site`` (:class:`PairSecrets`)."""
    return f"{SITE_PREFIX}{site.name}".encode()


def _networks(selectors: Sequence[TrafficSelector]) -> tuple[Network, ...]:
    return tuple(dict.fromkeys(net for ts in selectors for net in ts.networks()))


class SiteLinks:
    """The gateway's site-to-site tunnels (module docstring).

    :param engine: the gateway's IKE engine.
    :param local: our address and IKE port (site tunnels start there).
    :param local_id: the phase 1 identity we present to the other sites.
    """

    def __init__(
        self,
        engine: IkeEngine,
        local: Address,
        local_id: Identity,
        sites: Sequence[SiteRule],
        on_change: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.local = local
        self.local_id = local_id
        self.links: dict[str, SiteLink] = {site.name: SiteLink(site) for site in sites}
        self.resolved: dict[str, str] = {}
        """Host name -> the IPv4 address it resolved to last (:meth:`set_address`)."""
        self.on_change = on_change
        """Called when a site our clients are introduced to comes up, goes or learns its
        networks (the gateway then sends its clients their new lists)."""
        self._tell_engine()

    def address_of(self, site: SiteRule) -> str | None:
        """``site``'s address: as configured (IPv4 or IPv6), or what its name resolved to (None:
        not yet)."""
        try:
            return str(ipaddress.ip_address(site.address))
        except ValueError:
            pass
        return self.resolved.get(site.address)

    def names(self) -> list[str]:
        """The host names of the sites given by name (the gateway resolves them)."""
        return sorted(
            {
                link.site.address
                for link in self.links.values()
                if self.address_of(link.site) != link.site.address
            }
        )

    def set_address(self, name: str, address: str) -> None:
        """``name`` resolved to ``address`` (the gateway looks the names up, every minute)."""
        if self.resolved.get(name) == address:
            return
        log.info("site address %s is %s", name, address)
        self.resolved[name] = address
        self._tell_engine()

    def reconfigure(self, sites: Sequence[SiteRule], now: float) -> list[str]:
        """A reload: sites removed or changed lose their tunnel at once (a Delete to them),
        changed and new ones are started (or awaited) anew; unchanged ones keep their SAs.
        Returns what changed, for ``tunvpn reload``."""
        wanted = {site.name: site for site in sites}
        changes = []
        for name, link in list(self.links.items()):
            if wanted.get(name) == link.site:
                continue
            self._drop_clients(link, set(link.clients), now, "site changed by a reload")
            if link.sa_id is not None:
                try:
                    self.engine.delete_ike_sa(link.sa_id, now, reason="site changed by a reload")
                except LocalProtocolError:
                    pass
            del self.links[name]
            changes.append(f"site {name} {'removed' if name not in wanted else 'changed'}")
        for name, site in wanted.items():
            if name not in self.links:
                self.links[name] = SiteLink(site)
                if not any(c == f"site {name} changed" for c in changes):
                    changes.append(f"site {name} added")
        self._tell_engine()
        if changes:
            self._changed(now)
        return changes

    def _pair(self, site: SiteRule) -> PeerPair:
        return PeerPair(site.identity, self.local_id, site.secret, site_policies(site), start_on_natt=False)

    def _tell_engine(self) -> None:
        """The sites as the engine's pairs: a first message from a site's address (any port: it
        may be behind a NAT) takes the pair's path; so does one from the exact endpoint of a
        client another site's gateway introduced to us."""
        pairs = {}
        for link in self.links.values():
            for endpoint, client in link.clients.items():
                pairs[endpoint] = self._client_pair(link, client.intro)
        for link in self.links.values():
            address = self.address_of(link.site)
            if address is not None:
                pairs[(address, 0)] = self._pair(link.site)
        self.engine.set_pairs(pairs)

    def _client_pair(self, link: SiteLink, intro: Introduction) -> PeerPair:
        """An introduced client's pair: its identity and secret, our networks for that site to
        its address."""
        proposal = ChildProposal(
            esp=(intro.esp,), pfs_group=intro.pfs_group, lifetime_seconds=intro.lifetime_seconds
        )
        theirs = TrafficSelector.from_network(f"{intro.address}/{intro.address.max_prefixlen}")
        children = tuple(
            ChildPolicy(f"peer:{intro.name}@{link.site.name}", local, theirs, proposal)
            for local in link.site.local
        )
        return PeerPair(intro.identity, self.local_id, intro.secret, children)

    def _changed(self, now: float) -> None:
        if self.on_change is not None and any(link.site.introduce for link in self.links.values()):
            self.on_change(now)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Start the site tunnels we start that are down and due; send introductions the other
        gateway has not acknowledged."""
        for link in self.links.values():
            due = link.site.initiate and link.sa_id is None and now >= link.next_at
            if due and self.address_of(link.site) is not None:
                self._start(link, now)
            self._send_introductions(link, now)

    def _start(self, link: SiteLink, now: float) -> None:
        site = link.site
        address = self.address_of(site)
        assert address is not None
        try:
            link.sa_id = self.engine.initiate(
                (address, self.local[1]), self.local, now, mode="main", pair=self._pair(site)
            )
        except (LocalProtocolError, ValueError) as exc:
            self._failed(link, str(exc), now)
            return
        log.info("site %s: starting the tunnel to %s", site.name, address)

    # ------------------------------------------------------------------ engine events

    def _link_of(self, event: ev.Event) -> SiteLink | None:
        for link in self.links.values():
            if link.sa_id is not None and link.sa_id[:8] == event.sa_id[:8]:
                return link
        if isinstance(event, ev.Phase1Established) and event.role == "responder":
            for link in self.links.values():
                if self.address_of(link.site) == event.peer[0]:
                    return link
        return None

    def handle(self, event: ev.Event, now: float) -> bool:
        """An engine event: True when it belongs to a site's ISAKMP SA (or an introduced
        client's) and is the phase 1 coming up or a Transaction (the gateway then keeps no
        client session for it). Quick Mode events are left to the gateway's usual path too
        (data path, counters): False."""
        found = self._client_of(event)
        if found is not None:
            return self._client_event(*found, event, now)
        link = self._link_of(event)
        if link is None:
            return False
        if isinstance(event, ev.Phase1Established):
            link.tunvpn = "tunvpn" in event.peer_vendor_ids
            link.told, link.telling, link.tell_at = None, None, now
            if link.site.introduce and not link.tunvpn:
                log.warning(
                    "site %s: its gateway is not tunvpn: our clients are not introduced to it",
                    link.site.name,
                )
            if link.sa_id is not None and link.sa_id[:8] != event.sa_id[:8]:
                log.info(
                    "site %s: a second ISAKMP SA (both sides started); keeping the new one", link.site.name
                )
            link.sa_id, link.up, link.failures, link.last_error = event.sa_id, True, 0, ""
            try:
                self.engine.grant(event.sa_id, now)  # no XAUTH between gateways
            except LocalProtocolError as exc:
                log.warning("site %s: %s", link.site.name, exc)
            log.info("site %s: phase 1 up with %s (%s)", link.site.name, event.peer[0], event.suite)
            self._changed(now)  # our clients meet its gateway
            if event.role == "initiator" and not link.site.networks:
                # our side lists none of theirs: ask for them, as a client asks for its policies
                self.engine.request_mode_config(event.sa_id, now, extra_types=(PolicyAttr.PHASE2_POLICIES,))
            elif event.role == "initiator":
                self._start_children(link, event.sa_id, now)
            return True
        if isinstance(event, ev.ModeConfigRequested):
            self._answer(link, event, now)
            return True
        if isinstance(event, ev.ModeConfigReceived) and event.pushed:
            self._introduced(link, event, now)
            return True
        if isinstance(event, ev.ModeConfigReceived):
            self._learned(link, event, now)
            self._changed(now)
            return True
        if isinstance(event, ev.ModeConfigAcknowledged):
            if link.telling is not None and link.telling[0] == event.identifier:
                link.told, link.telling = link.telling[1], None
                log.info("site %s: its gateway knows %d of our clients", link.site.name, len(link.told.peers))
            return True
        if isinstance(event, ev.TransactionFailed):
            if event.purpose == "modecfg-push":
                link.telling, link.tell_at = None, now + TELL_RETRY
                log.warning("site %s: introductions not taken: %s", link.site.name, event.reason)
            return True
        if isinstance(event, ev.ChildSAEstablished):
            link.children += 1
            log.info(
                "site %s: %s === %s up (spi in 0x%08x)",
                link.site.name,
                event.local_ts,
                event.remote_ts,
                event.spi_in,
            )
        elif isinstance(event, ev.ChildSADeleted):
            link.children = max(0, link.children - 1)
        elif isinstance(event, ev.ChildSAFailed):
            log.warning("site %s: Quick Mode %s failed: %s", link.site.name, event.policy_name, event.reason)
        elif isinstance(event, (ev.IkeSADeleted, ev.Phase1Failed)):
            self._failed(link, event.reason, now)
        return False

    # ------------------------------------------------------------------ introductions (issue 18)

    def client_introductions(self, member: Member, pair_secrets: PairSecrets) -> tuple[Introduction, ...]:
        """The sites' gateways ``member`` is introduced to (its ``introduce`` groups), each
        with the networks behind it: only tunvpn gateways whose tunnel with us is up, so they
        know the client by the time it starts."""
        out = []
        for link in self.links.values():
            site, address = link.site, self.address_of(link.site)
            if not (site.introduce and site.introduces(member.groups)):
                continue
            networks = _networks(link.their_networks())[:MAX_SITE_NETWORKS]
            if not (link.up and link.tunvpn and address is not None and networks):
                continue
            out.append(
                Introduction(
                    name=site.name,
                    identity=site.identity,
                    address=ipaddress.ip_address(address),
                    endpoint=(address, NATT_PORT),
                    secret=pair_secrets.of(member.sa_id, _client_key(site)),
                    role=Role.INITIATOR,
                    esp=site.esp,
                    pfs_group=site.pfs,
                    lifetime_seconds=site.lifetime,
                    local_id=peer_identity(member),
                    networks=networks,
                )
            )
        return tuple(out)

    def tell(self, members: Sequence[Member], pair_secrets: PairSecrets, now: float) -> None:
        """Our logged-in clients now: each site with ``introduce`` is told (CFG_SET) which of
        them may start a tunnel to its gateway, when that changed."""
        for link in self.links.values():
            site = link.site
            if not site.introduce:
                continue
            chosen = sorted((m for m in members if site.introduces(m.groups)), key=lambda m: m.address)
            if len(chosen) > MAX_PEERS:
                log.warning(
                    "site %s: %d clients to introduce, only the first %d are",
                    site.name,
                    len(chosen),
                    MAX_PEERS,
                )
                chosen = chosen[:MAX_PEERS]
            link.wanted = PeerList(
                tuple(
                    Introduction(
                        name=member.user,
                        identity=peer_identity(member),
                        address=member.address,
                        endpoint=member.endpoint,
                        secret=pair_secrets.of(member.sa_id, _client_key(site)),
                        role=Role.RESPONDER,
                        esp=site.esp,
                        pfs_group=site.pfs,
                        lifetime_seconds=site.lifetime,
                        local_id=site.identity,
                    )
                    for member in chosen
                )
            )
            self._send_introductions(link, now)

    def _send_introductions(self, link: SiteLink, now: float) -> None:
        if not (link.site.introduce and link.up and link.tunvpn and link.sa_id is not None):
            return
        if link.telling is not None or link.wanted == link.told or now < link.tell_at:
            return
        try:
            identifier = self.engine.push_mode_config(
                link.sa_id, now, ModeConfig(), encode_peers(link.wanted)
            )
        except LocalProtocolError as exc:
            link.tell_at = now + TELL_RETRY
            log.warning("site %s: cannot send it our clients: %s", link.site.name, exc)
            return
        link.telling = (identifier, link.wanted)

    def _introduced(self, link: SiteLink, event: ev.ModeConfigReceived, now: float) -> None:
        """The other gateway's list of its clients that may start a tunnel to us: each must be
        one we answer (role), at an address in its networks, from an endpoint no site uses."""
        try:
            peers = decode_peers(event.config.unknown)
        except RemoteProtocolError as exc:
            link.refused += 1
            log.warning("site %s: its introductions are malformed: %s", link.site.name, exc)
            return
        if peers is None:
            return
        theirs = _networks(link.their_networks())
        sites = {self.address_of(other.site) for other in self.links.values()}
        elsewhere = {e for other in self.links.values() if other is not link for e in other.clients}
        taken: dict[Address, Introduction] = {}
        for intro in peers.peers:
            problem = None
            if intro.role is not Role.RESPONDER or intro.networks:
                problem = "not a client we answer"
            elif not any(intro.address in net for net in theirs):
                problem = f"{intro.address} is not in its networks"
            elif intro.endpoint[0] in sites or intro.endpoint in elsewhere:
                problem = f"endpoint {intro.endpoint[0]}:{intro.endpoint[1]} belongs to another peer"
            elif intro.local_id is not None and intro.local_id != self.local_id:
                problem = f"it expects us as {intro.local_id}, we are {self.local_id}"
            if problem is not None:
                link.refused += 1
                log.warning("site %s: introduction of %s refused: %s", link.site.name, intro.name, problem)
                continue
            taken[intro.endpoint] = intro
        gone = {e for e, c in link.clients.items() if taken.get(e) != c.intro}
        self._drop_clients(link, gone, now, "no longer introduced")
        for endpoint, intro in taken.items():
            if endpoint not in link.clients:
                link.clients[endpoint] = IntroducedClient(intro)
        self._tell_engine()
        log.info(
            "site %s: its gateway introduced %d client(s) to us%s",
            link.site.name,
            len(link.clients),
            f" ({', '.join(sorted(c.intro.name for c in link.clients.values()))})" if link.clients else "",
        )

    def _drop_clients(self, link: SiteLink, endpoints: set[Address], now: float, reason: str) -> None:
        """Forget introduced clients (their tunnels with us are deleted)."""
        for endpoint in endpoints:
            client = link.clients.pop(endpoint, None)
            if client is not None and client.sa_id is not None:
                try:
                    self.engine.delete_ike_sa(client.sa_id, now, reason=reason)
                except LocalProtocolError:
                    pass
        if endpoints:
            self._tell_engine()

    def _client_of(self, event: ev.Event) -> tuple[SiteLink, IntroducedClient] | None:
        for link in self.links.values():
            for endpoint, client in link.clients.items():
                if client.sa_id is not None and client.sa_id[:8] == event.sa_id[:8]:
                    return link, client
                if (
                    isinstance(event, ev.Phase1Established)
                    and event.role == "responder"
                    and event.peer == endpoint
                ):
                    return link, client
        return None

    def _client_event(self, link: SiteLink, client: IntroducedClient, event: ev.Event, now: float) -> bool:
        """An introduced client's ISAKMP SA: its phase 1 is granted (no XAUTH: the pair's
        secret and identity are the login), its Quick Modes go the gateway's usual way."""
        who = f"{client.intro.name} ({client.intro.address}) of site {link.site.name}"
        if isinstance(event, ev.Phase1Established):
            client.sa_id = event.sa_id
            try:
                self.engine.grant(event.sa_id, now)
            except LocalProtocolError as exc:
                log.warning("%s: %s", who, exc)
            log.info("%s: direct tunnel phase 1 up from %s:%d", who, *event.peer)
            return True
        if isinstance(event, ev.ChildSAEstablished):
            client.children += 1
            log.info("%s: %s === %s up", who, event.local_ts, event.remote_ts)
        elif isinstance(event, ev.ChildSADeleted):
            client.children = max(0, client.children - 1)
        elif isinstance(event, (ev.IkeSADeleted, ev.Phase1Failed)):
            client.sa_id, client.children = None, 0
        elif isinstance(event, (ev.ModeConfigRequested, ev.XauthCredentials)):
            return True  # no login, no configuration on a direct tunnel
        return False

    def _answer(self, link: SiteLink, event: ev.ModeConfigRequested, now: float) -> None:
        """The other gateway asks for our networks: its sets, no address."""
        if PolicyAttr.PHASE2_POLICIES not in event.requested_types:
            log.info(
                "site %s: a Mode Config request without CFG_PHASE2_POLICIES: answered empty", link.site.name
            )
        push = pushed_policies(link.site)
        self.engine.mode_config_reply(event.sa_id, now, event.identifier, ModeConfig(), encode_policies(push))
        log.info("site %s: pushed %d sets (our networks to theirs)", link.site.name, len(push.policies))

    def _learned(self, link: SiteLink, event: ev.ModeConfigReceived, now: float) -> None:
        """The other gateway's sets: one Quick Mode each (their side, ours)."""
        try:
            push = decode_policies(event.config.unknown)
        except RemoteProtocolError as exc:
            log.warning("site %s: the other gateway's sets are malformed: %s", link.site.name, exc)
            return
        if push is None or not push.policies:
            log.warning(
                "site %s: the other gateway pushed no networks (is it tunvpn, with [[site]]?)", link.site.name
            )
            return
        # named as we name this site (the other gateway's names are its own: rekeys look ours up)
        link.learned = tuple(
            dataclasses.replace(policy, name=f"{SITE_PREFIX}{link.site.name}/{i}")
            for i, policy in enumerate(push.policies, 1)
        )
        for policy in link.learned:
            if policy.client_ts is None:
                continue  # a set for a client's assigned address: not for a site
            try:
                self.engine.start_child(
                    event.sa_id,
                    now,
                    policy.client_ts,
                    policy.gateway_ts,
                    policy.initiator_proposal(),
                    name=policy.name,
                )
            except LocalProtocolError as exc:
                log.warning("site %s: cannot start %s: %s", link.site.name, policy.name, exc)
        log.info(
            "site %s: learned its networks %s",
            link.site.name,
            ", ".join(sorted({str(p.gateway_ts) for p in push.policies})),
        )

    def _start_children(self, link: SiteLink, sa_id: bytes, now: float) -> None:
        for policy in site_policies(link.site):
            assert policy.remote_ts is not None
            try:
                self.engine.start_child(
                    sa_id, now, policy.local_ts, policy.remote_ts, policy.proposal, name=policy.name
                )
            except LocalProtocolError as exc:
                log.warning(
                    "site %s: cannot start %s === %s: %s",
                    link.site.name,
                    policy.local_ts,
                    policy.remote_ts,
                    exc,
                )

    def _failed(self, link: SiteLink, reason: str, now: float) -> None:
        was_up = link.up
        link.sa_id, link.up, link.children, link.last_error = None, False, 0, reason
        link.told, link.telling = None, None
        # whom it introduced is vouched for by its tunnel only: they go with it
        self._drop_clients(link, set(link.clients), now, f"site {link.site.name} down")
        if was_up:
            self._changed(now)  # our clients no longer meet its gateway
        link.failures += 1
        if link.site.initiate:
            delay = min(RETRY_FIRST * 2 ** (link.failures - 1), RETRY_MAX)
            link.next_at = now + delay
            log.warning("site %s: tunnel down (%s); starting again in %g s", link.site.name, reason, delay)
        else:
            log.warning("site %s: tunnel down (%s); the other side starts it", link.site.name, reason)

    # ------------------------------------------------------------------ the gateway's other duties

    def proposal_for(self, name: str) -> ChildProposal | None:
        """The proposal to rekey a site's Quick Mode with (the gateway's data path asks for
        every SA near its end: None for its clients', which they rekey themselves)."""
        if not name.startswith(SITE_PREFIX):
            return None
        link = self.links.get(name[len(SITE_PREFIX) :].split("/")[0])
        if link is None:
            return None
        for policy in link.learned:
            if policy.name == name:
                return policy.initiator_proposal()
        policies = site_policies(link.site)
        return policies[0].proposal if policies else None

    def status(self) -> list[dict[str, object]]:
        """The ``sites`` of ``tunvpn status``."""
        return [
            {
                "name": link.site.name,
                "address": link.site.address
                + (
                    ""
                    if self.address_of(link.site) in (link.site.address, None)
                    else f" ({self.address_of(link.site)})"
                ),
                "state": "up" if link.up else "down",
                "initiate": link.site.initiate,
                "networks": [str(n) for n in link.site.networks]
                or sorted({str(p.gateway_ts) for p in link.learned}),
                "sas": link.children,
                **({"error": link.last_error} if link.last_error and not link.up else {}),
                **(
                    {"introduced": len(link.told.peers) if link.told is not None else 0}
                    if link.site.introduce
                    else {}
                ),
                **(
                    {
                        "clients": [
                            {
                                "name": client.intro.name,
                                "address": str(client.intro.address),
                                "endpoint": f"{endpoint[0]}:{endpoint[1]}",
                                "state": "up" if client.sa_id is not None else "introduced",
                                "sas": client.children,
                            }
                            for endpoint, client in sorted(link.clients.items())
                        ]
                    }
                    if link.clients
                    else {}
                ),
                **({"refused": link.refused} if link.refused else {}),
            }
            for link in self.links.values()
        ]


__all__ = ["SITE_PREFIX", "IntroducedClient", "SiteLink", "SiteLinks", "pushed_policies", "site_policies"]
