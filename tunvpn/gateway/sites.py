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

No socket, thread or clock here: the gateway calls :meth:`SiteLinks.tick` every
:data:`TICK` seconds, hands it every engine event first (:meth:`SiteLinks.handle`) and flushes
the engine afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tunvpn.config.gateway import SiteRule
from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, PeerPair
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.policies import Phase2Policy, PolicyAttr, PolicyPush, decode_policies, encode_policies
from tunvpn.ike.proposals import ChildProposal

log = logging.getLogger(__name__)

Address = tuple[str, int]

TICK = 1.0
"""Seconds between :meth:`SiteLinks.tick` calls."""
RETRY_FIRST = 2.0
"""Seconds before a lost or failed site tunnel we start is started again (doubled each time)."""
RETRY_MAX = 30.0
SITE_PREFIX = "site:"
"""Names of the site's Quick Modes: ``site:NAME``."""


def pushed_policies(site: SiteRule, generation: int = 1) -> PolicyPush:
    """What we push to ``site``'s gateway when it asks (it lists no networks): one set per pair
    of our networks (the sets' gateway side) and its networks (their client side)."""
    sets = [
        Phase2Policy(f"{SITE_PREFIX}{site.name}/{i}", local, remote, (site.esp,), site.pfs, site.lifetime)
        for i, (local, remote) in enumerate(((lo, re) for lo in site.local for re in site.networks), 1)
    ]
    return PolicyPush(generation, tuple(sets))


def site_policies(site: SiteRule) -> tuple[ChildPolicy, ...]:
    """One phase 2 policy per pair of networks: ours (``site.local``) to theirs."""
    proposal = ChildProposal(esp=(site.esp,), pfs_group=site.pfs, lifetime_seconds=site.lifetime)
    return tuple(
        ChildPolicy(f"{SITE_PREFIX}{site.name}", local, remote, proposal)
        for local in site.local
        for remote in site.networks
    )


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


class SiteLinks:
    """The gateway's site-to-site tunnels (module docstring).

    :param engine: the gateway's IKE engine.
    :param local: our address and IKE port (site tunnels start there).
    :param local_id: the phase 1 identity we present to the other sites.
    """

    def __init__(
        self, engine: IkeEngine, local: Address, local_id: Identity, sites: Sequence[SiteRule]
    ) -> None:
        self.engine = engine
        self.local = local
        self.local_id = local_id
        self.links: dict[str, SiteLink] = {site.name: SiteLink(site) for site in sites}
        self.resolved: dict[str, str] = {}
        """Host name -> the IPv4 address it resolved to last (:meth:`set_address`)."""
        self._tell_engine()

    def address_of(self, site: SiteRule) -> str | None:
        """``site``'s IPv4 address: as configured, or what its name resolved to (None: not yet)."""
        if site.address.replace(".", "").isdigit():
            return site.address
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
        return changes

    def _pair(self, site: SiteRule) -> PeerPair:
        return PeerPair(site.identity, self.local_id, site.secret, site_policies(site), start_on_natt=False)

    def _tell_engine(self) -> None:
        """The sites as the engine's pairs: a first message from a site's address (any port: it
        may be behind a NAT) takes the pair's path."""
        pairs = {}
        for link in self.links.values():
            address = self.address_of(link.site)
            if address is not None:
                pairs[(address, 0)] = self._pair(link.site)
        self.engine.set_pairs(pairs)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Start the site tunnels we start that are down and due."""
        for link in self.links.values():
            due = link.site.initiate and link.sa_id is None and now >= link.next_at
            if due and self.address_of(link.site) is not None:
                self._start(link, now)

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
        """An engine event: True when it belongs to a site's ISAKMP SA and is the phase 1 coming
        up (the gateway then keeps no client session for it). Quick Mode events of a site are
        left to the gateway's usual path too (data path, counters): False."""
        link = self._link_of(event)
        if link is None:
            return False
        if isinstance(event, ev.Phase1Established):
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
            if event.role == "initiator" and not link.site.networks:
                # our side lists none of theirs: ask for them, as a client asks for its policies
                self.engine.request_mode_config(event.sa_id, now, extra_types=(PolicyAttr.PHASE2_POLICIES,))
            elif event.role == "initiator":
                self._start_children(link, event.sa_id, now)
            return True
        if isinstance(event, ev.ModeConfigRequested):
            self._answer(link, event, now)
            return True
        if isinstance(event, ev.ModeConfigReceived):
            self._learned(link, event, now)
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
        link.sa_id, link.up, link.children, link.last_error = None, False, 0, reason
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
            }
            for link in self.links.values()
        ]


__all__ = ["SITE_PREFIX", "SiteLink", "SiteLinks", "pushed_policies", "site_policies"]
