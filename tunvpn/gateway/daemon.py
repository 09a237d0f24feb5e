"""The gateway: an IKEv1 responder that authenticates clients (PSK, then XAUTH), hands each an
address from a pool by Mode Config, and accepts their Quick Modes.

:class:`Gateway` holds no socket: ``handle_event`` reacts to engine events with engine
commands, so it can be driven in memory by tests; :meth:`Gateway.run` puts it on UDP with
:class:`~tunvpn.shell.udp.UdpDriver`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509

from tunvpn.build import build_kind
from tunvpn.config.credentials import SecretFileError, UserTable
from tunvpn.config.errors import ConfigError
from tunvpn.config.pool import AddressPool
from tunvpn.control.events import EventHub, EventKind
from tunvpn.control.metrics import GatewayMetrics, MetricsError, MetricsSample
from tunvpn.control.status import busy_poll_status, child_status, counter_registry, sa_counters, sa_drops
from tunvpn.gateway import audit
from tunvpn.gateway.logins import (
    LoginThrottle,
    refusal_message,
    replaced_by_initial_contact,
    session_limit_refusal,
    throttle_outcome,
    wait_turn,
    xauth_required,
)
from tunvpn.gateway.peering import RELAY_PREFIX, Member, PairSecrets, introductions, relay_policies
from tunvpn.gateway.plugin_setup import check_plugin_setup
from tunvpn.gateway.sites import SiteLinks
from tunvpn.ike import events as ev
from tunvpn.ike.certpath import PeerCertificatePolicy
from tunvpn.ike.certs import Credential, IdentityPattern
from tunvpn.ike.config import CLIENT_SIGNATURE_METHODS, ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.constants import AuthMethod, CfgAttr, DHGroup
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.peers import PeerList, encode_peers
from tunvpn.ike.policies import (
    ExtraProtocol,
    Phase2Policy,
    PolicyAttr,
    PolicyPush,
    diff_policies,
    encode_policies,
)
from tunvpn.ike.proposals import (
    DEFAULT_ESP,
    LEGACY_ESP,
    LEGACY_EXTRA_ENCRYPTION,
    LEGACY_EXTRA_GROUPS,
    LEGACY_EXTRA_HASHES,
    ChildProposal,
    EspSuite,
    Phase1Policy,
)
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.plugins.accounting import AccountingRecord
from tunvpn.plugins.host import DEFAULT_WORKERS, PluginBusy, PluginError, PluginHost
from tunvpn.plugins.types import Authorization, CredentialRequest, GatewayContext, Verdict
from tunvpn.shell import sdnotify
from tunvpn.shell.crls import keep_crls_fresh
from tunvpn.shell.privileges import ServiceUser, drop_privileges
from tunvpn.shell.udp import DROP_COUNTERS, IKE_QUEUE_SIZE, NewExchangeLimit, UdpDriver

if TYPE_CHECKING:
    from tunvpn.config.gateway import GatewayConfig, PeeringRule, SiteRule, SourceText
    from tunvpn.dataplane.tunnel import Tunnel

log = logging.getLogger(__name__)

ANY_IPV4 = IPv4Network("0.0.0.0/0")


class Rule(Protocol):
    """A phase 2 policy and who gets it (``tunvpn.config.gateway.PolicyRule``): everyone when
    ``groups`` and ``users`` are both empty, else members of a listed group or listed users."""

    @property
    def policy(self) -> Phase2Policy: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def users(self) -> tuple[str, ...]: ...
    @property
    def peers(self) -> tuple[IdentityPattern, ...]: ...


@dataclass(frozen=True)
class SimpleRule:
    policy: Phase2Policy
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    peers: tuple[IdentityPattern, ...] = ()


def rule_applies(rule: Rule, user: str | None, groups: Iterable[str], peer: Identity | None = None) -> bool:
    """Whether ``rule`` gives its policy to ``user`` (of ``groups``) whose phase 1 identity a
    certificate proved to be ``peer`` (None otherwise: a group key proves no identity)."""
    if not rule.groups and not rule.users and not rule.peers:
        return True
    if (user is not None and user in rule.users) or bool(set(rule.groups) & set(groups)):
        return True
    return peer is not None and any(pattern.matches(peer) for pattern in rule.peers)


@dataclass
class GatewayOptions:
    """What the command line (or a test) configures; :func:`build_engine_config` turns it into
    an :class:`EngineConfig`."""

    listen: str
    psks: PskTable
    ike_port: int = 500
    natt_port: int = 4500
    users: UserTable | None = None
    pool: AddressPool[IPv4Address] | None = None
    pool6: AddressPool[IPv6Address] | None = None
    """Clients' IPv6 addresses (issue 19): a tunvpn or standard client that asks for one
    (INTERNAL_IP6_ADDRESS) gets one beside its IPv4 address, for the IPv6 policies."""
    dns: tuple[IPv4Address | IPv6Address, ...] = ()
    split: tuple[IPv4Network | IPv6Network, ...] = ()
    allow_aggressive_psk: bool = False
    allow_aggressive_signatures: bool = False
    """Accept Aggressive Mode with signatures (RSA, hybrid); off: each spoofed first message
    would cost a DH and a signature (issue 14)."""
    allow_base_mode: bool = False
    legacy: bool = False
    require_xauth: bool | None = None
    """Clients must log in with XAUTH. ``None``: whenever a login source is configured (the
    users file, or a plugin implementing ``tunvpn_verify_credentials``); ``False`` is an
    explicit, warned opt-out (:func:`tunvpn.gateway.logins.xauth_required`)."""
    login_timeout: float = 120.0
    """Seconds a client has after phase 1 to finish its login (XAUTH and every extra
    protocol); then its ISAKMP SA is deleted."""
    reauth_interval: float = 0.0
    """Seconds after a user's XAUTH after which a phase 1 rekey asks the user again (0: never)."""
    max_half_open: int = 1000
    """Phase 1 exchanges in progress kept in all (``EngineConfig.max_half_open``)."""
    max_half_open_per_source: int = 5
    """Phase 1 exchanges in progress kept per source address (strongSwan's ``block_threshold``)."""
    ike_queue_size: int = IKE_QUEUE_SIZE
    """IKE datagrams waiting for the event loop (``UdpDriver``); beyond, new ones are dropped
    and counted (``ike queue full``), messages of established SAs first."""
    new_exchanges_per_source: int = 5
    """New phase 1 exchanges a second one source address may start, before the engine parses
    them (``NewExchangeLimit``; 0: no limit per source)."""
    new_exchanges_per_source_burst: int = 20
    new_exchanges_total: int = 3000
    """New phase 1 exchanges a second all sources together may start (0: no total limit)."""
    new_exchanges_total_burst: int = 6000
    xauth_chap: bool = False
    """Ask tunvpn clients for the login password as a RADIUS-CHAP answer (the gateway never
    sees it; the users file and the radius plugin check it). Standard clients: Generic."""
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
    busy_poll_us: int | None = None
    """The data thread's longest busy poll after a lone packet, in microseconds (0: never);
    None: the default for this machine (:func:`tunvpn.dataplane.busypoll.default_limit_us`)."""
    rules: tuple[Rule, ...] = ()
    """Phase 2 policies and who gets them; empty: one policy per ``split`` network (or all)."""
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Group name -> members (user names)."""
    protocols: tuple[ExtraProtocol, ...] = ()
    peering: tuple[PeeringRule, ...] = ()
    """``[[peering]]``: who is introduced to whom for direct tunnels (issue 17)."""
    sites: tuple[SiteRule, ...] = ()
    """``[[site]]``: other gateways to build site-to-site tunnels with (issue 18)."""
    """Extra protocols the clients must run before Quick Mode (announced in phase 1a)."""
    domains: tuple[str, ...] = ()
    """DNS domains: the default domain first, then split-DNS domains."""
    phase1: Phase1Policy | None = None
    """Phase 1 algorithms accepted; None: every strong suite (plus legacy ones with ``legacy``)."""
    credential: Credential | None = None
    trusted_cas: tuple[x509.Certificate, ...] = ()
    hybrid: bool = False
    """Accept hybrid authentication (draft-ietf-ipsec-isakmp-hybrid-auth-05): the gateway
    signs with ``credential`` (RSA), the client has no certificate and logs in with XAUTH
    only. Needs a login source; clients' phase 1 identities are then unauthenticated."""
    peer_certificates: PeerCertificatePolicy = field(default_factory=PeerCertificatePolicy)
    """Clients' certificates: EKU, subject/SAN patterns, revocation mode and CRLs."""
    config_path: str | None = None
    """The TOML file the options came from (``tunvpn reload`` reads it again)."""
    config_source: SourceText | None = field(default=None, repr=False, compare=False)
    """Where each key of that file is written: errors found once the plugins are loaded
    (tunvpn.gateway.plugin_setup) name its line, as the file's own do."""
    control_socket: str | None = None
    """Path of the control socket (``tunvpn status``/``reload``); None: no control socket."""
    metrics: tuple[str, int] | None = None
    """The Prometheus endpoint's address and port (tunvpn.control.metrics); None: none."""
    metrics_per_user: bool = False
    """A ``user`` label on the per-session metrics (off: no user names in metrics)."""
    plugins: tuple[str, ...] = ()
    """Plugins to load by entry point name (docs/plugins.md); ``users-file`` is added by
    itself when ``users`` is set."""
    plugin_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """``[plugin.NAME]`` tables of gateway.toml."""
    accounting_interval: int = 0
    """Seconds between ``tunvpn_accounting`` "interim" records of each session (0: none)."""
    fragmentation: str = "yes"
    """IKE fragmentation toward clients that announce it (``yes``, ``force``, ``no``)."""
    max_sessions_per_user: int = 4
    """Logged-in sessions one user may hold at once; a login beyond is refused (0: no limit)."""
    plugin_objects: tuple[object, ...] = ()
    """Plugins given as objects (tests, ``tunvpn.testing``), asked before the named ones."""
    plugin_clock: Callable[[], float] | None = field(default=None, repr=False, compare=False)
    """The clock plugins read (``GatewayContext.clock``/``now()``); None: the gateway's own.
    ``tunvpn.testing``'s ``now=`` sets it, so a plugin's time rules are tested at any hour."""
    plugin_workers: int = DEFAULT_WORKERS
    """Threads blocking plugin hooks run in (tunvpn/plugins/host.py ``WorkerPool``); a call
    that finds them all busy is refused at once (the login: "busy")."""
    overrides: dict[str, object] = field(default_factory=dict)
    """Options set on the command line over the file's (``--control``, ``--keylog``,
    ``--ike-only``): a reload applies them again instead of reporting them as changes."""
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
        if self.require_xauth and self.users is None and not self.plugins and not self.plugin_objects:
            raise ConfigError("--require-xauth needs --users FILE (the XAUTH user database) or a plugin")
        if self.xauth_chap and self.users is not None and self.users.hashed_users():
            raise ConfigError(
                "xauth_chap: RADIUS-CHAP needs the clear password, but the users file holds scrypt "
                "hashes for " + ", ".join(self.users.hashed_users())
            )
        if self.hybrid:
            if self.credential is None or self.credential.auth_method != AuthMethod.RSA_SIGNATURES:
                raise ConfigError("hybrid authentication needs the gateway's RSA certificate and key")
            if self.require_xauth is False or (
                self.users is None and not self.plugins and not self.plugin_objects
            ):
                raise ConfigError(
                    "hybrid authentication logs clients in with XAUTH only: it needs a users file "
                    "or an authentication plugin, and require_xauth"
                )

    def plugin_names(self) -> tuple[str, ...]:
        """The entry points to load: the built-in users-file first (asked last), then ``plugins``."""
        names = ("users-file",) if self.users is not None else ()
        return names + tuple(n for n in self.plugins if n not in names)
        if not self.psks and self.credential is None:
            raise ConfigError("no pre-shared key or certificate configured")


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


def default_policies(options: GatewayOptions, phase1: Phase1Policy) -> tuple[Phase2Policy, ...]:
    """Without configured rules: one policy per ``--split`` network (or 0.0.0.0/0), the
    strongest ESP suites first, PFS with the strongest phase 1 group."""
    networks = options.split or (ANY_IPV4,)
    esp = DEFAULT_ESP + LEGACY_ESP if options.legacy else DEFAULT_ESP
    pfs: DHGroup | None = DHGroup.ECP_256
    if options.pfs_groups is not None:  # --pfs-groups: the first is pushed; none given: no PFS
        pfs = DHGroup(options.pfs_groups[0]) if options.pfs_groups else None
    return tuple(
        Phase2Policy(str(net), TrafficSelector.from_network(net), None, esp, pfs, options.sa_lifetime)
        for net in networks
    )


STATUS_SCHEMA = 2
"""The version of ``tunvpn status --json`` (docs/service.md "Status"): 2 has the policies as
objects (1 had them as preformatted strings)."""


def policy_status(rule: Rule) -> dict[str, object]:
    """One phase 2 policy in ``tunvpn status --json``: its selectors, ESP suites, PFS group,
    lifetimes and who gets it."""
    p = rule.policy
    return {
        "name": p.name,
        "local": str(p.gateway_ts),
        "remote": str(p.client_ts) if p.client_ts is not None else "assigned",
        "esp": [str(suite) for suite in p.esp],
        "pfs": p.pfs_group.name.lower() if p.pfs_group is not None else None,
        "lifetime": p.lifetime_seconds,
        "lifetime_kb": p.lifetime_kilobytes or None,
        "groups": list(rule.groups),
        "users": list(rule.users),
        "peers": [str(pattern) for pattern in rule.peers],
    }


def effective_rules(options: GatewayOptions, phase1: Phase1Policy) -> tuple[Rule, ...]:
    if options.rules:
        return options.rules
    return tuple(SimpleRule(p) for p in default_policies(options, phase1))


def child_policies_for(
    policies: Sequence[Phase2Policy],
    *,
    tunvpn_peer: bool,
    phase1: Phase1Policy,
    legacy: bool,
    pfs_groups: Sequence[int] | None = None,
) -> tuple[ChildPolicy, ...]:
    """The responder side of each policy. A tunvpn client was told the exact suite and PFS
    group; a standard client (vpnc) picks its own, so it may use any of the policy's suites
    (plus the legacy ones with ``legacy``) with or without PFS.

    A standard client also gets :func:`standard_client_policy` last: Cisco-style clients
    ask for their address === 0.0.0.0/0 whatever split networks they were given."""
    out = []
    groups = list(phase1.groups_by_strength()) if pfs_groups is None else list(pfs_groups)
    for policy in policies:
        if tunvpn_peer:
            proposal = policy.responder_proposal()
        else:
            esp = policy.esp + tuple(s for s in LEGACY_ESP if legacy and s not in policy.esp)
            proposal = ChildProposal(
                esp=esp,
                pfs_group=None,
                accept_pfs=frozenset(DHGroup(g) for g in groups),
                lifetime_seconds=policy.lifetime_seconds,
                lifetime_kilobytes=policy.lifetime_kilobytes,
            )
        out.append(ChildPolicy(policy.name, policy.gateway_ts, policy.client_ts, proposal))
    if not tunvpn_peer:
        extra = standard_client_policy(policies, legacy=legacy, pfs_groups=groups)
        if extra is not None:
            out.append(extra)
    return tuple(out)


STANDARD_CLIENT_POLICY = "0.0.0.0/0 (split networks)"
"""Name of the SA a standard client gets for its address === 0.0.0.0/0 Quick Mode."""


def standard_client_policy(
    policies: Sequence[Phase2Policy], *, legacy: bool, pfs_groups: Sequence[int]
) -> ChildPolicy | None:
    """What a Cisco concentrator does for vpnc: accept the client's address === 0.0.0.0/0
    (vpnc always asks for that, and routes only the Unity split networks into it), answer
    with those selectors, and let packets in only towards the networks of the client's
    policies (``inbound_local``: the data path drops and counts the rest as ``policy``).

    None when a policy already covers 0.0.0.0/0 (it matches by itself) or no policy is for
    the client's assigned address. The SA accepts the suites and PFS groups of every
    policy it stands for, and lives as long as the shortest of them."""
    assigned = [p for p in policies if p.client_ts is None and p.gateway_ts.version == 4]
    if not assigned or any(p.gateway_ts.contains(TrafficSelector.any()) for p in policies):
        return None
    esp: list[EspSuite] = []
    for policy in assigned:
        esp += [s for s in policy.esp if s not in esp]
    esp += [s for s in LEGACY_ESP if legacy and s not in esp]
    kilobytes = [p.lifetime_kilobytes for p in assigned if p.lifetime_kilobytes]
    proposal = ChildProposal(
        esp=tuple(esp),
        pfs_group=None,
        accept_pfs=frozenset(DHGroup(g) for g in pfs_groups),
        lifetime_seconds=min(p.lifetime_seconds for p in assigned),
        lifetime_kilobytes=min(kilobytes) if kilobytes else 0,
    )
    allowed = tuple(dict.fromkeys(p.gateway_ts for p in assigned))
    return ChildPolicy(STANDARD_CLIENT_POLICY, TrafficSelector.any(), None, proposal, allowed)


def child_policies(options: GatewayOptions, phase1: Phase1Policy) -> tuple[ChildPolicy, ...]:
    """What the engine accepts from a client before Mode Config picked its own policies
    (every policy, standard-client view)."""
    policies = [r.policy for r in effective_rules(options, phase1)]
    return child_policies_for(
        policies, tunvpn_peer=False, phase1=phase1, legacy=options.legacy, pfs_groups=options.pfs_groups
    )


def phase1_policy(options: GatewayOptions) -> Phase1Policy:
    if options.phase1 is not None:
        return options.phase1
    return Phase1Policy.with_legacy() if options.legacy else Phase1Policy()


def build_engine_config(options: GatewayOptions, *, require_xauth: bool | None = None) -> EngineConfig:
    """``require_xauth``: as decided from the loaded plugins (:func:`tunvpn.gateway.logins.xauth_required`);
    ``None``: ``options.require_xauth`` (unset counts as not required)."""
    phase1 = phase1_policy(options)
    if require_xauth is None:
        require_xauth = bool(options.require_xauth)
    return EngineConfig(
        local_id=options.local_id,
        psks=options.psks,
        credential=options.credential,
        trusted_cas=options.trusted_cas,
        peer_certificates=options.peer_certificates,
        phase1=phase1,
        children=child_policies(options, phase1),
        allow_aggressive_psk=options.allow_aggressive_psk,
        allow_aggressive_signatures=options.allow_aggressive_signatures,
        allow_base_mode=options.allow_base_mode,
        require_xauth=require_xauth,
        login_required=require_xauth,
        login_timeout=options.login_timeout,
        reauth_interval=options.reauth_interval,
        max_half_open=options.max_half_open,
        max_half_open_per_source=options.max_half_open_per_source,
        xauth_chap=options.xauth_chap,
        xauth_available=options.users is not None or bool(options.plugins or options.plugin_objects),
        # ESP runs in userspace over UDP 4500 (RFC 3948): with a data path, always encapsulate
        force_encap=options.force_encap or options.tun is not None,
        natt_port=options.natt_port,
        hybrid=options.hybrid,
        fragmentation=options.fragmentation,
    )


@dataclass
class Session:
    """One connected client (one ISAKMP SA) as the gateway sees it."""

    sa_id: bytes
    peer: tuple[str, int]
    exchange: str = ""
    suite: str = ""
    peer_id: str = ""
    established: float = 0.0
    authenticated: bool = False
    """``user`` passed the XAUTH login (it counts towards ``max_sessions_per_user``)."""
    tunvpn: bool = False
    user: str | None = None
    groups: frozenset[str] = frozenset()
    address: IPv4Address | None = None
    address6: IPv6Address | None = None
    """Its IPv6 address from ``pool6`` (issue 19), when it asked for one."""
    policies: tuple[Phase2Policy, ...] = ()
    generation: int = 0
    pending: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """CFG_SET identifier -> names of policies to delete once the client acknowledges."""
    auth_round: int = 0
    """XAUTH answers checked so far (a plugin's challenges add rounds)."""
    auth_state: dict[str, object] = field(default_factory=dict)
    """For the plugins between the rounds of one authentication (CredentialRequest.state)."""
    plugin_address: IPv4Address | None = None
    """The address a plugin assigned (RADIUS Framed-IP-Address), instead of the pool's."""
    protocols_pending: list[ExtraProtocol] = field(default_factory=list)
    """Extra protocols announced in phase 1a still to pass (first: running); Quick Mode is
    refused until the list is empty."""
    user_policies: tuple[Phase2Policy, ...] = ()
    """Per-user policies from ``tunvpn_authorize``."""
    routes: tuple[IPv4Network, ...] = ()
    """Networks behind the client (a plugin's ``Verdict.routes``, RADIUS Framed-Route)."""
    protocols_passed: bool = False
    """Every announced protocol passed (they run once per ISAKMP SA)."""
    accounting_started: float | None = None
    """When ``tunvpn_accounting`` got this session's "start" (None: not, or already stopped)."""
    accounting_id: str | None = None
    """The ``session_id`` of its accounting: the ISAKMP SA's at the "start", kept when a phase 1
    rekey moves the session to a new SA (RFC 2866: one Acct-Session-Id from Start to Stop)."""
    retired: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Bytes in, bytes out, packets in, packets out of the session's IPsec SAs already deleted."""
    proven_id: Identity | None = None
    """Its phase 1 identity when a certificate proved it (policies per peer, issue 18)."""
    introduced: PeerList | None = None
    """The peers last introduced to this client (issue 17); None: none sent yet."""


class Gateway:
    """Reacts to the engine's events: checks XAUTH users, leases addresses, hands each client
    its phase 2 policies (phase 1a), and pushes changed policies to connected clients."""

    def __init__(self, options: GatewayOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.started = clock()
        self.plugins = load_plugins(options)
        try:
            self.plugin_groups = check_plugin_setup(options, self.plugins, self._context_for(options))
            """Groups the plugins declared (group -> plugin): ``tunvpn_declare_groups``."""
        except ConfigError:
            self.plugins.close()
            raise
        self.config = build_engine_config(options, require_xauth=xauth_required(options, self.plugins))
        self.phase1 = phase1_policy(options)
        self.engine = IkeEngine(self.config, ike_port=options.ike_port)
        self.sites = SiteLinks(
            self.engine,
            (options.listen, options.ike_port),
            options.local_id or Identity.parse(options.listen),
            options.sites,
            on_change=self._refresh_introductions,
        )
        """Site-to-site tunnels with other gateways (tunvpn.gateway.sites, issue 18)."""
        self.children: dict[int, ev.ChildSAEstablished] = {}
        """Inbound SPI -> the Quick Mode that made it."""
        self.child_started: dict[int, float] = {}
        self.sessions: dict[bytes, Session] = {}
        """ISAKMP SA id -> the client on it."""
        self.events = EventHub(time.time)
        """What happens, for ``tunvpn events`` (tunvpn.control.events, issue 20)."""
        self.metrics: GatewayMetrics | None = None
        """The Prometheus endpoint, when configured (tunvpn.control.metrics)."""
        self._traffic_retired: dict[str, tuple[int, int, int, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pair_secrets = PairSecrets()
        """The secret of each pair introduced to each other: two clients (issue 17), a client
        and another site's gateway (issue 18)."""
        self.generation = 1
        """Policy generation: raised by every reload that changes something."""
        self.tunnel: Tunnel | None = None
        """The ESP data path (TUN device + data thread) when ``options.tun`` is set."""
        self.driver: UdpDriver | None = None
        self.counters = counter_registry(self)
        """Everything counted (tunvpn/dataplane/counters.py), read by ``status`` and accounting."""
        self.control: Any = None
        self._stop: asyncio.Event | None = None
        self._signalled: tuple[str, float] | None = None
        """The stop signal received and when (time.monotonic), for the last log line."""
        self._accounting_tasks: set[asyncio.Task[None]] = set()
        self._services: list[asyncio.Task[None]] = []
        self.announcements = self._announce(options)
        """The extra protocols of phase 1a as announced, and the policies accepted for them."""
        self.throttle = LoginThrottle()
        """Failed-login budgets per (user, source), source and user (tunvpn/gateway/logins.py)."""
        self.run_as: ServiceUser | None = None
        """Started as root: the user to become once the TUN device is open and the ports bound
        (tunvpn/shell/privileges.py), before any thread starts."""
        self._warn_weak(options)

    @staticmethod
    def _warn_weak(options: GatewayOptions) -> None:
        from tunvpn.config.pskcheck import warn_weak_psks

        warn_weak_psks(options.psks, "gateway")
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
        if options.allow_aggressive_signatures:
            log.warning(
                "Aggressive Mode with signatures enabled: every first message costs a Diffie-Hellman "
                "and a signature before the sender is verified, and identities travel in the clear"
            )
        if options.allow_base_mode:
            log.warning(
                "Base Mode enabled: identities travel in the clear and a rogue gateway can test "
                "pre-shared key guesses offline, as in Main Mode (docs/protocol.md)"
            )

    # ------------------------------------------------------------------ policies

    def groups_of(self, user: str | None) -> frozenset[str]:
        if user is None:
            return frozenset()
        return frozenset(g for g, members in self.options.groups.items() if user in members)

    def policies_for(
        self, user: str | None, groups: Iterable[str] = (), peer: Identity | None = None
    ) -> tuple[Phase2Policy, ...]:
        """The phase 2 policies of ``user`` (a member of ``groups``; ``peer``: its phase 1
        identity when a certificate proved it), in configuration order."""
        groups = frozenset(groups) | self.groups_of(user)
        return tuple(
            r.policy
            for r in effective_rules(self.options, self.phase1)
            if rule_applies(r, user, groups, peer)
        )

    def _install_policies(self, session: Session, policies: tuple[Phase2Policy, ...]) -> None:
        """The phase 2 policies the engine accepts from this client: none while an extra
        protocol it must pass first is pending."""
        session.policies = policies
        self.engine.set_child_policies(
            session.sa_id,
            ()
            if session.protocols_pending
            else child_policies_for(
                policies + (self._accepted_extra() if session.tunvpn else ()),
                tunvpn_peer=session.tunvpn,
                phase1=self.phase1,
                legacy=self.options.legacy,
                pfs_groups=self.options.pfs_groups,
            )
            + relay_policies(session.introduced or PeerList()),
        )

    def _push(self, session: Session) -> PolicyPush:
        return PolicyPush(
            self.generation, tuple(p.wire() for p in session.policies), self.announced_protocols()
        )

    # ------------------------------------------------------------------ introductions (issue 17)

    def _member(self, session: Session) -> Member | None:
        """``session`` as a peer: a tunvpn client logged in as a user, with an address, past
        every extra protocol."""
        if not (session.tunvpn and session.authenticated and session.user and session.address):
            return None
        if session.protocols_pending:
            return None
        return Member(session.sa_id, session.user, session.groups, session.address, session.peer)

    def _introduces(self) -> bool:
        """Whether clients are introduced to peers: ``[[peering]]`` rules, or ``[[site]]``
        blocks with ``introduce``."""
        return bool(self.options.peering) or any(site.introduce for site in self.options.sites)

    def _peers_for(self, session: Session) -> PeerList:
        """Every peer ``session`` is introduced to now (the whole list): other clients, then
        other sites' gateways."""
        me = self._member(session)
        if me is None or not self._introduces():
            return PeerList()
        others = [m for s in self.sessions.values() if (m := self._member(s)) is not None]
        clients = introductions(me, others, self.options.peering, self.pair_secrets).peers
        taken = {peer.address for peer in clients}
        sites = tuple(
            peer
            for peer in self.sites.client_introductions(me, self.pair_secrets)
            if peer.address not in taken
        )
        return PeerList(clients + sites)

    def _refresh_introductions(self, now: float) -> None:
        """Send each client that was introduced to peers its new list when it changed (a
        peer came, went, moved or a rule changed): a CFG_SET with its policies and peers."""
        for session in list(self.sessions.values()):
            if session.address is None:
                continue
            if session.introduced is None:
                # a tunvpn client that got its policies before any peering rule existed (a
                # reload added the first one): it takes introductions as well
                if not (session.tunvpn and session.generation and self._introduces()):
                    continue
                session.introduced = PeerList()
            peers = self._peers_for(session)
            if peers == session.introduced:
                continue
            before = {p.name for p in session.introduced.peers}
            session.introduced = peers
            self._install_policies(session, session.policies)  # its relay policies follow
            self._end_relays(session, {p.name for p in peers.peers}, now)
            config = self.mode_config_for(
                session.address, PUSHED_ATTRIBUTES, session.policies, session.address6
            )
            extra = encode_policies(self._push(session)) + encode_peers(peers)
            try:
                self.engine.push_mode_config(session.sa_id, now, config, extra)
            except LocalProtocolError as exc:
                log.warning("cannot send %s its peers: %s", session.user or session.peer[0], exc)
                continue
            after = {p.name for p in peers.peers}
            log.info(
                "introduced %s to %d peer(s)%s%s",
                session.user,
                len(peers.peers),
                f"; new: {', '.join(sorted(after - before))}" if after - before else "",
                f"; gone: {', '.join(sorted(before - after))}" if before - after else "",
            )
        if any(site.introduce for site in self.options.sites):
            members = [m for s in self.sessions.values() if (m := self._member(s)) is not None]
            self.sites.tell(members, self.pair_secrets, now)  # the sites' gateways learn them

    def _end_relays(self, session: Session, peers: set[str], now: float) -> None:
        """Delete ``session``'s relay SAs to peers it is no longer introduced to (issue 17)."""
        for child in list(self.children.values()):
            name = child.policy_name
            if child.sa_id != session.sa_id or not name.startswith(RELAY_PREFIX):
                continue
            if name[len(RELAY_PREFIX) :] not in peers:
                try:
                    self.engine.delete_child(session.sa_id, child.spi_in, now)
                except LocalProtocolError:
                    pass

    def announced_protocols(self) -> tuple[ExtraProtocol, ...]:
        """The extra protocols of phase 1a, as announced (docs/protocol.md)."""
        return tuple(protocol for protocol, _ in self.announcements)

    def _announce(
        self, options: GatewayOptions
    ) -> tuple[tuple[ExtraProtocol, tuple[Phase2Policy, ...]], ...]:
        """Each configured protocol as announced, with the policies accepted for it: a plugin's
        ``tunvpn_announce_protocol`` adds parameters (``exchange=l2tp``, ...); one that decides
        credentials and announces nothing runs as XAUTH rounds (``exchange=xauth``)."""
        context = self._context_for(options)
        out = []
        for protocol in options.protocols:
            accept: tuple[Phase2Policy, ...] = ()
            try:
                announcement = self.plugins.announce(protocol, context)
            except PluginError:
                raise
            except Exception as exc:
                raise ConfigError(f"protocol {protocol.name!r}: plugin refused it: {exc}") from exc
            if announcement is not None:
                keys = {k for k, _ in announcement.params}
                params = tuple((k, v) for k, v in protocol.params if k not in keys) + announcement.params
                protocol = ExtraProtocol(protocol.name, params)
                accept = announcement.accept
            if self.plugins.serves(protocol.name) and protocol.param("exchange") is None:
                protocol = ExtraProtocol(protocol.name, (*protocol.params, ("exchange", "xauth")))
            out.append((protocol, accept))
        return tuple(out)

    def _accepted_extra(self) -> tuple[Phase2Policy, ...]:
        return tuple(p for _, accept in self.announcements for p in accept)

    def _run_protocols(self) -> list[ExtraProtocol]:
        return [p for p in self.announced_protocols() if p.param("exchange") == "xauth"]

    def _start_protocol(self, session: Session, now: float) -> None:
        """Ask the client for the credentials of the first pending extra protocol: a new
        XAUTH REQUEST in a new Transaction exchange (draft-beaulieu-ike-xauth-02 section 6.2)."""
        protocol = session.protocols_pending[0]
        fields = tuple(f.strip() for f in (protocol.param("fields") or "passcode").split(",") if f.strip())
        message = protocol.param("prompt") or f"{protocol.name}: enter your {fields[0].replace('_', ' ')}"
        session.auth_round = 0
        session.auth_state = {}
        log.info(
            "extra protocol %s: asking %s for %s", protocol.name, session.user or session.peer[0], fields
        )
        self.engine.xauth_request(session.sa_id, now, fields=("user_name", *fields), message=message)

    # ------------------------------------------------------------------ events

    def handle_event(self, event: ev.Event) -> Coroutine[Any, Any, None] | None:
        now = self.clock()
        audit.engine_event(
            event, self.sessions.get(event.sa_id), self.children.get(getattr(event, "spi_in", -1))
        )
        if self.sites.handle(event, now):
            return None  # another site's gateway: no client session, no login
        if isinstance(event, ev.Phase1Established):
            self.sessions[event.sa_id] = Session(
                event.sa_id,
                event.peer,
                event.exchange,
                event.suite,
                event.peer_id,
                now,
                tunvpn="tunvpn" in event.peer_vendor_ids,
                proven_id=self._proven_identity(event.sa_id),
            )
        elif isinstance(event, ev.XauthCredentials):
            return self._check_user(event, now)
        elif isinstance(event, ev.ModeConfigRequested):
            self._mode_config(event, now)
        elif isinstance(event, ev.ModeConfigAcknowledged):
            self._acknowledged(event, now)
        elif isinstance(event, ev.ChildSAEstablished):
            again = any(
                c.sa_id == event.sa_id and c.policy_name == event.policy_name for c in self.children.values()
            )
            self.children[event.spi_in] = event
            self.child_started[event.spi_in] = now
            if self.tunnel is not None:
                self.tunnel.child_established(event)
            self._sa_event(EventKind.SA_UP, event, rekey=again)
        elif isinstance(event, ev.Phase1Rekeyed):
            self._phase1_rekeyed(event)
        elif isinstance(event, ev.PeerAddressChanged):
            moved = self.sessions.get(event.sa_id)
            if moved is not None:
                moved.peer = event.new
                if self._introduces():
                    self._refresh_introductions(now)  # its peers learn where it is now
            if self.tunnel is not None:
                self.tunnel.peer_moved(event)  # ESP follows the client behind its NAT
        elif isinstance(event, ev.TransactionFailed):
            session = self.sessions.get(event.sa_id)
            who = session.peer[0] if session is not None else event.sa_id.hex()[:16]
            log.warning("%s: our %s transaction was %s", who, event.purpose, event.reason)
        elif isinstance(event, ev.ChildSADeleted):
            self._retire_counters(event.spi_in)
            gone_child = self.children.pop(event.spi_in, None)
            if gone_child is not None:
                self._sa_event(EventKind.SA_DOWN, gone_child, by_peer=event.by_peer)
            self.child_started.pop(event.spi_in, None)
            if self.tunnel is not None:
                self.tunnel.child_deleted(event)
        elif isinstance(event, (ev.IkeSADeleted, ev.Phase1Failed)) or (
            isinstance(event, ev.XauthCompleted) and not event.success
        ):
            gone = self.sessions.pop(event.sa_id, None)
            if gone is not None:
                reason = getattr(event, "reason", "") or type(event).__name__
                self._account(gone, "stop", reason=reason, by_peer=bool(getattr(event, "by_peer", False)))
            self._release(event.sa_id)
            if gone is not None and self._introduces():
                self.pair_secrets.forget(event.sa_id)
                self._refresh_introductions(now)  # its peers are told it is gone
        return None

    def _sa_event(self, kind: EventKind, child: ev.ChildSAEstablished, **fields: object) -> None:
        session = self.sessions.get(child.sa_id)
        self.events.publish(
            kind,
            user=session.user if session is not None else None,
            peer=f"{child.remote[0]}:{child.remote[1]}",
            policy=child.policy_name or None,
            local_ts=str(child.local_ts),
            remote_ts=str(child.remote_ts),
            spi_in=f"0x{child.spi_in:08x}",
            spi_out=f"0x{child.spi_out:08x}",
            **fields,
        )

    def _phase1_rekeyed(self, event: ev.Phase1Rekeyed) -> None:
        """The client rekeyed phase 1 (issue 15): its session (user, address, policies,
        accounting) and IPsec SAs continue under the new ISAKMP SA; the old one's Delete
        that follows ends nothing."""
        old = self.sessions.pop(event.sa_id, None)
        if old is None:
            return
        new = self.sessions.get(event.new_sa_id)
        moved = dataclasses.replace(old, sa_id=event.new_sa_id)
        if new is not None:
            moved.peer, moved.exchange, moved.suite = new.peer, new.exchange, new.suite
            moved.established = new.established  # tunvpn status shows the current ISAKMP SA
            if event.reauthenticated:  # logged in again: what this login found counts
                moved.groups, moved.policies = new.groups, new.policies
        self.sessions[event.new_sa_id] = moved
        if self.options.pool is not None:
            self.options.pool.move(event.sa_id, event.new_sa_id)
        if self.options.pool6 is not None:
            self.options.pool6.move(event.sa_id, event.new_sa_id)
        for spi, child in list(self.children.items()):
            if child.sa_id == event.sa_id:
                self.children[spi] = dataclasses.replace(child, sa_id=event.new_sa_id)
        if self.tunnel is not None:
            self.tunnel.sa_rekeyed(event)
        self.events.publish(
            EventKind.REKEY,
            user=moved.user,
            peer=f"{moved.peer[0]}:{moved.peer[1]}",
            reauthenticated=event.reauthenticated,
        )
        log.info(
            "%s (%s) rekeyed phase 1%s",
            moved.peer[0],
            moved.user,
            ", logged in again" if event.reauthenticated else "",
        )

    # ------------------------------------------------------------------ accounting

    def _retire_counters(self, spi_in: int) -> None:
        """Keep the byte counts of an IPsec SA that goes, for its session's accounting and the
        metrics' totals (which only grow)."""
        child = self.children.get(spi_in)
        session = self.sessions.get(child.sa_id) if child is not None else None
        if child is None or self.tunnel is None or (session is None and self.metrics is None):
            return
        counters = sa_counters(self.counters.snapshot())
        b_in, p_in = counters.get(child.spi_in, (0, 0))
        b_out, p_out = counters.get(child.spi_out, (0, 0))
        if session is not None:
            r = session.retired
            session.retired = (r[0] + b_in, r[1] + b_out, r[2] + p_in, r[3] + p_out)
        if self.metrics is not None:
            key = self._traffic_key(session)
            t = self._traffic_retired.get(key, (0, 0, 0, 0))
            self._traffic_retired[key] = (t[0] + b_in, t[1] + b_out, t[2] + p_in, t[3] + p_out)

    def _traffic_key(self, session: Session | None) -> str:
        """The ``user`` label of a session's traffic ("" unless ``metrics_per_user``)."""
        if not self.options.metrics_per_user or session is None:
            return ""
        return session.user or ""

    async def _metrics_sample(self) -> MetricsSample:
        """The gateway's state for one scrape (on the gateway's loop: tunvpn.control.metrics)."""
        snapshot = self.counters.snapshot()
        counters = sa_counters(snapshot)
        traffic = dict(self._traffic_retired)
        for child in self.children.values():
            key = self._traffic_key(self.sessions.get(child.sa_id))
            b_in, p_in = counters.get(child.spi_in, (0, 0))
            b_out, p_out = counters.get(child.spi_out, (0, 0))
            t = traffic.get(key, (0, 0, 0, 0))
            traffic[key] = (t[0] + b_in, t[1] + b_out, t[2] + p_in, t[3] + p_out)
        logged_in = [s for s in self.sessions.values() if s.accounting_started is not None]
        return MetricsSample(
            sessions=len(logged_in),
            users=len({s.user for s in logged_in if s.user}),
            ike_sas=len(self.engine.ike_sas()),
            ipsec_sas=len(self.children),
            half_open=self.engine.half_open_count(),
            traffic=traffic or {"": (0, 0, 0, 0)},
            esp_drops=dict(snapshot.group("esp drops")),
            ike_drops=dict(snapshot.group("ike")),
        )

    def _metrics_sample_from_thread(self) -> MetricsSample:
        """:meth:`_metrics_sample`, asked from the metrics endpoint's thread."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._metrics_sample(), self._loop).result(METRICS_WAIT)

    def _start_metrics(self) -> None:
        """The Prometheus endpoint (``[gateway] metrics``), counting the event stream."""
        if self.options.metrics is None:
            return
        address, port = self.options.metrics
        metrics = GatewayMetrics(self._metrics_sample_from_thread)  # MetricsError: a startup error
        metrics.serve(address, port)
        self.metrics = metrics
        self.events.listeners.append(metrics.on_event)
        log.info(
            "metrics on http://%s/metrics", f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        )

    def session_counters(self, session: Session) -> tuple[int, int, int, int]:
        """Bytes in, bytes out, packets in, packets out of a session: its live IPsec SAs plus
        the ones already deleted (rekeyed)."""
        counters = sa_counters(self.counters.snapshot())
        b_in, b_out, p_in, p_out = session.retired
        for child in self.children.values():
            if child.sa_id == session.sa_id:
                bi, pi = counters.get(child.spi_in, (0, 0))
                bo, po = counters.get(child.spi_out, (0, 0))
                b_in, b_out, p_in, p_out = b_in + bi, b_out + bo, p_in + pi, p_out + po
        return b_in, b_out, p_in, p_out

    def _login_outcome(self, session: Session, user: str, result: str, **fields: str | None) -> None:
        """A login step's outcome: the audit log, and a refusal on the event stream."""
        audit.login(session, user, result, **fields)
        if result in ("fail", "refused"):
            self.events.publish(
                EventKind.LOGIN_FAILED,
                user=user,
                peer=f"{session.peer[0]}:{session.peer[1]}",
                result=result,
                reason=fields.get("reason"),
                protocol=fields.get("protocol"),
            )

    def _account(self, session: Session, kind: str, *, reason: str = "", by_peer: bool = False) -> None:
        """Tell the ``tunvpn_accounting`` plugins, without waiting for them. A session gets one
        "stop", and only after a "start" (the login and logout of the event stream)."""
        if kind == "start":
            if session.accounting_started is not None:
                return
            session.accounting_started = self.clock()
            session.accounting_id = session.accounting_id or session.sa_id.hex()
            self.events.publish(
                EventKind.LOGIN,
                user=session.user,
                peer=f"{session.peer[0]}:{session.peer[1]}",
                address=str(session.address) if session.address is not None else None,
                address6=str(session.address6) if session.address6 is not None else None,
                groups=sorted(session.groups) or None,
                policies=[p.name for p in session.policies] or None,
            )
        elif session.accounting_started is None:
            return
        started = session.accounting_started
        if kind == "stop":
            session.accounting_started = None
            self.events.publish(
                EventKind.LOGOUT,
                user=session.user,
                peer=f"{session.peer[0]}:{session.peer[1]}",
                reason=reason or None,
                by_peer=by_peer,
                seconds=round(max(0.0, self.clock() - started), 1),
            )
        if not self.plugins.implements("tunvpn_accounting"):
            return
        b_in, b_out, p_in, p_out = self.session_counters(session)
        record = AccountingRecord(
            kind,
            session.accounting_id or session.sa_id.hex(),
            user=session.user,
            peer=session.peer,
            address=session.address,
            bytes_in=b_in,
            bytes_out=b_out,
            packets_in=p_in,
            packets_out=p_out,
            seconds=max(0.0, self.clock() - started),
            reason=reason,
            by_peer=by_peer,
        )
        try:
            task = self.plugins.broadcast("tunvpn_accounting", record=record, context=self.plugin_context())
        except RuntimeError as exc:  # no event loop (a unit test driving handle_event directly)
            log.warning("accounting %s for %s not sent: %s", kind, session.peer[0], exc)
            return
        if task is not None:
            self._accounting_tasks.add(task)
            task.add_done_callback(self._accounting_tasks.discard)

    async def _interim_accounting(self) -> None:
        """Every ``accounting_interval`` seconds, an "interim" record of each accounted session
        (RADIUS Interim-Update, RFC 2866 and RFC 2869 section 2.1)."""
        while True:
            await asyncio.sleep(self.options.accounting_interval)
            for session in list(self.sessions.values()):
                if session.accounting_started is not None:
                    self._account(session, "interim")

    async def _finish_accounting(self, timeout: float = 15.0) -> None:
        """At shutdown: let the accounting calls under way (the "stop"s) finish, within reason."""
        tasks = set(self._accounting_tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("%d accounting call(s) still running at shutdown; not waiting", len(pending))

    async def _accounting_onoff(self, kind: str, timeout: float) -> None:
        """``tunvpn_accounting_onoff`` (RADIUS Accounting-On/-Off), waited for at most
        ``timeout`` seconds."""
        if not self.plugins.implements("tunvpn_accounting_onoff"):
            return
        task = self.plugins.broadcast("tunvpn_accounting_onoff", kind=kind, context=self.plugin_context())
        if task is None:
            return
        _done, pending = await asyncio.wait({task}, timeout=timeout)
        if pending:
            log.warning("accounting %s: the plugins did not finish within %g s; going on", kind, timeout)

    def plugin_context(self) -> GatewayContext:
        return self._context_for(self.options)

    def _context_for(self, options: GatewayOptions) -> GatewayContext:
        return GatewayContext(
            users=options.users,
            groups={name: frozenset(members) for name, members in options.groups.items()},
            plugin_settings={name: dict(table) for name, table in options.plugin_settings.items()},
            protocols=tuple(options.protocols),
            verify=self.verify_login,
            clock=options.plugin_clock or self.clock,
        )

    async def verify_login(self, request: CredentialRequest) -> Verdict:
        """A login through the plugins, for a plugin's own protocol (PPP PAP/CHAP in L2TP):
        the plugins of extra protocols are skipped, as for the XAUTH login; a plugin that
        raises or takes longer than PLUGIN_TIMEOUT rejects the user. The login throttle and the
        audit log cover it as they cover XAUTH."""
        skip = [p.name for p in self._run_protocols()]
        source = request.peer[0]
        admission = await wait_turn(self.throttle, request.user, source, self.clock)
        if admission.refused:
            audit.audit("login", result="refused", user=request.user, via=request.via, peer=source)
            return Verdict.reject(refusal_message(admission))
        backend_failed = False
        try:
            verdict = await asyncio.wait_for(
                self.plugins.verify_credentials(request, self.plugin_context(), skip=skip), PLUGIN_TIMEOUT
            )
        except TimeoutError:
            log.warning(
                "%s login of %r: no plugin decided within %d s", request.via, request.user, PLUGIN_TIMEOUT
            )
            verdict, backend_failed = (
                Verdict.reject("the authentication service did not answer in time"),
                True,
            )
        except PluginBusy as exc:
            log.warning("%s login of %r refused: %s", request.via, request.user, exc)
            verdict, backend_failed = Verdict.reject(BUSY_MESSAGE), True
        except Exception as exc:
            log.error("%s login of %r: a plugin failed: %s", request.via, request.user, exc)
            verdict, backend_failed = Verdict.reject("the authentication service failed"), True
        outcome = throttle_outcome(verdict, backend_failed)
        self.throttle.done(request.user, source, self.clock(), outcome)
        result = {"accepted": "ok", "rejected": "fail"}.get(outcome, verdict.outcome)
        audit.audit("login", result=result, user=request.user, via=request.via, peer=source)
        return verdict

    async def _check_user(self, event: ev.XauthCredentials, now: float) -> None:
        """One round of the XAUTH login: the throttle, the plugins
        (``tunvpn_verify_credentials``), then a challenge (a new XAUTH request), the next
        extra protocol, or authorization and the verdict (XAUTH-STATUS)."""
        session = self.sessions.get(event.sa_id)
        if session is None:  # pragma: no cover - phase 1 always comes first
            return
        session.auth_round += 1
        protocol = session.protocols_pending[0].name if session.protocols_pending else None
        if protocol is not None and event.user_name != session.user:
            log.warning(
                "extra protocol %s: %s answered as %r, not %r",
                protocol,
                event.peer[0],
                event.user_name,
                session.user,
            )
            self.engine.xauth_verdict(event.sa_id, now, False, "the user name changed")
            return
        request = CredentialRequest(
            user=event.user_name,
            password=event.password,
            chap=event.chap,
            passcode=event.passcode,
            answer=event.answer,
            next_pin=event.next_pin,
            peer=event.peer,
            session_id=event.sa_id.hex(),
            round=session.auth_round,
            state=session.auth_state,
            protocol=protocol,
        )
        if not await self._login_admitted(session, event, protocol):
            return
        verdict, outcome = await self._ask_plugins(request, event, protocol)
        if self.sessions.get(event.sa_id) is not session:
            return  # the client went away meanwhile
        now = self.clock()
        try:
            if verdict.outcome == "challenge":
                if session.auth_round < MAX_AUTH_ROUNDS:
                    self._challenge(session, event, protocol, verdict, now)
                    return
                log.warning("XAUTH: user %r from %s: too many rounds", event.user_name, event.peer[0])
                verdict = Verdict.reject("too many authentication rounds")
            if verdict.accepted and protocol is not None:
                self._extra_protocol_passed(session, event, protocol, verdict, now)
                return
            groups = self.groups_of(event.user_name) | frozenset(verdict.groups)
            authorization: Authorization | None = None
            if verdict.accepted:
                authorized = await self._authorize_login(session, event, verdict, groups)
                if authorized is None:
                    return  # the client went away meanwhile
                verdict, authorization, now = authorized
            self._xauth_verdict(session, event, protocol, verdict, outcome, groups, authorization, now)
        except LocalProtocolError as exc:
            log.warning("XAUTH verdict for %s not sent: %s", event.peer[0], exc)

    async def _login_admitted(
        self, session: Session, event: ev.XauthCredentials, protocol: str | None
    ) -> bool:
        """The login throttle (issue 12): wait for this user's and address's turn; a refusal
        is answered at once, unchecked. False if the login goes no further."""
        admission = await wait_turn(self.throttle, event.user_name, event.peer[0], self.clock)
        if self.sessions.get(event.sa_id) is not session:  # the client went away meanwhile
            if not admission.refused:
                self.throttle.done(event.user_name, event.peer[0], self.clock(), "abandoned")
            return False
        if admission.refused:
            log.warning(
                "XAUTH: user %r from %s refused unchecked: too many failed logins",
                event.user_name,
                event.peer[0],
            )
            self._login_outcome(
                session, event.user_name, "refused", reason="too many failed logins", protocol=protocol
            )
            self.engine.xauth_verdict(event.sa_id, self.clock(), False, refusal_message(admission))
            return False
        return True

    async def _ask_plugins(
        self, request: CredentialRequest, event: ev.XauthCredentials, protocol: str | None
    ) -> tuple[Verdict, str]:
        """The plugins' verdict (a plugin that raises or takes longer than PLUGIN_TIMEOUT
        rejects the user) and its outcome, told to the throttle."""
        backend_failed = False
        try:
            skip = () if protocol is not None else [p.name for p in self._run_protocols()]
            verdict = await asyncio.wait_for(
                self.plugins.verify_credentials(request, self.plugin_context(), skip=skip), PLUGIN_TIMEOUT
            )
        except TimeoutError:
            log.error(
                "XAUTH: checking user %r from %s took over %d s; rejected",
                event.user_name,
                event.peer[0],
                PLUGIN_TIMEOUT,
            )
            verdict = Verdict.reject("the gateway could not check the credentials in time")
            backend_failed = True
        except PluginBusy as exc:
            log.warning("XAUTH: user %r from %s refused: %s", event.user_name, event.peer[0], exc)
            verdict, backend_failed = Verdict.reject(BUSY_MESSAGE), True
        except Exception as exc:  # a broken plugin or backend rejects this user, nothing more
            log.error("XAUTH: checking user %r from %s failed: %s", event.user_name, event.peer[0], exc)
            verdict = Verdict.reject("the gateway could not check the credentials")
            backend_failed = True
        outcome = throttle_outcome(verdict, backend_failed)
        self.throttle.done(event.user_name, event.peer[0], self.clock(), outcome)
        return verdict, outcome

    def _challenge(
        self, session: Session, event: ev.XauthCredentials, protocol: str | None, verdict: Verdict, now: float
    ) -> None:
        """A plugin asks for more (a next PIN, an OTP): a new XAUTH request with its fields."""
        log.info(
            "XAUTH: user %r from %s challenged (round %d)",
            event.user_name,
            event.peer[0],
            session.auth_round,
        )
        self._login_outcome(session, event.user_name, "challenge", protocol=protocol)
        self.engine.xauth_request(
            event.sa_id, now, fields=("user_name", *verdict.fields), message=verdict.message
        )

    def _extra_protocol_passed(
        self, session: Session, event: ev.XauthCredentials, protocol: str, verdict: Verdict, now: float
    ) -> None:
        """An extra protocol's round accepted: start the next one, or open Quick Mode."""
        log.info("extra protocol %s: user %r from %s passed", protocol, event.user_name, event.peer[0])
        self._login_outcome(session, event.user_name, "ok", protocol=protocol)
        session.groups |= frozenset(verdict.groups)
        session.protocols_pending.pop(0)
        session.auth_state.clear()
        self.engine.xauth_verdict(event.sa_id, now, True, None)
        if session.protocols_pending:
            self._start_protocol(session, now)
        else:
            session.protocols_passed = True
            self._protocols_passed(session, now)

    async def _authorize_login(
        self, session: Session, event: ev.XauthCredentials, verdict: Verdict, groups: frozenset[str]
    ) -> tuple[Verdict, Authorization | None, float] | None:
        """Accepted credentials: ``tunvpn_authorize`` and the per-user session limit may still
        refuse. (verdict, authorization, now), or None if the client went away meanwhile."""
        authorization, denied = await self._authorize(event.user_name, groups, event.peer)
        if self.sessions.get(event.sa_id) is not session:
            return None
        if denied is not None:
            verdict = Verdict.reject(denied)
        elif self._session_limit(session, event.user_name) is not None:
            # over the limit: the user's other sessions may be dead (a laptop that moved to
            # another network and logged in again from there): ask them first (issue 15)
            await self._probe_own_sessions(session, event.user_name)
            if self.sessions.get(event.sa_id) is not session:
                return None
            if (refusal := self._session_limit(session, event.user_name)) is not None:
                verdict = Verdict.reject(refusal)
        return verdict, authorization, self.clock()

    async def _probe_own_sessions(self, session: Session, user: str) -> None:
        """DPD-probe ``user``'s other logged-in sessions (those whose peer does DPD) and wait
        up to ``LIMIT_PROBE_WITHIN`` (+ a little) for the dead ones to be removed. A live
        session answers and stays: a stolen password still cannot push the real user off."""
        now = self.clock()
        probed = []
        for other in list(self.sessions.values()):
            if other is session or not other.authenticated or other.user != user:
                continue
            try:
                sa = self.engine.get_sa(other.sa_id)
            except LocalProtocolError:
                continue
            if "dpd" in sa.peer_vendor_ids:
                self.engine.probe_peer(other.sa_id, now, LIMIT_PROBE_WITHIN)
                probed.append(other.sa_id)
        if not probed:
            return
        log.info(
            "user %r is at the session limit: asking %d older session(s) whether they are alive",
            user,
            len(probed),
        )
        if self.driver is not None:
            self.driver.flush()
        deadline = time.monotonic() + LIMIT_PROBE_WITHIN + 0.5
        while time.monotonic() < deadline and any(sa_id in self.sessions for sa_id in probed):
            await asyncio.sleep(0.1)

    def _xauth_verdict(
        self,
        session: Session,
        event: ev.XauthCredentials,
        protocol: str | None,
        verdict: Verdict,
        outcome: str,
        groups: frozenset[str],
        authorization: Authorization | None,
        now: float,
    ) -> None:
        """The end of the XAUTH login: the session takes the user (or the refusal is logged),
        XAUTH-STATUS goes out, and without extra protocols the login is granted."""
        if verdict.accepted:
            log.info("XAUTH: user %r from %s accepted", event.user_name, event.peer[0])
            self._login_outcome(session, event.user_name, "ok", protocol=protocol)
            session.user = event.user_name
            session.authenticated = True
            session.groups = groups | frozenset(authorization.groups if authorization else ())
            session.plugin_address = verdict.address
            session.routes = self._usable_routes(event.user_name, verdict.routes)
            if authorization is not None:
                session.plugin_address = authorization.address or verdict.address
                session.user_policies = authorization.policies
        else:
            log.warning(
                "XAUTH: user %r from %s rejected: %s", event.user_name, event.peer[0], verdict.message
            )
            result = "fail" if outcome == "rejected" else "refused"
            self._login_outcome(session, event.user_name, result, reason=verdict.message, protocol=protocol)
        session.auth_state.clear()
        self.engine.xauth_verdict(event.sa_id, now, verdict.accepted, verdict.message)
        if verdict.accepted and not self._run_protocols():
            self._grant(session, now)  # no extra protocol to run: the login is finished
        elif verdict.accepted and self._continues_session(session):
            # a tunvpn client logging in again on a phase 1 rekey (reauth_interval) asks for
            # no Mode Config (its address and policies carry on): the extra protocols run
            # again right after XAUTH, and the new SA takes over once they passed (issue 15)
            session.protocols_pending = self._run_protocols()
            self._start_protocol(session, now)

    def _expires_in(self, sa_id: bytes, now: float) -> float | None:
        """Seconds until the ISAKMP SA's lifetime ends (it is rekeyed before), or None."""
        try:
            expires = self.engine.get_sa(sa_id).expires
        except LocalProtocolError:
            return None
        return None if expires is None else round(max(0.0, expires - now), 1)

    def _proven_identity(self, sa_id: bytes) -> Identity | None:
        """The peer's phase 1 identity if it signed with a certificate the engine verified
        (RSA or ECDSA, with or without XAUTH); None for a pre-shared key (a group key proves
        no identity) and hybrid authentication (the client has no certificate)."""
        try:
            sa = self.engine.get_sa(sa_id)
        except LocalProtocolError:
            return None
        if sa.suite is None or sa.suite.auth not in CLIENT_SIGNATURE_METHODS:
            return None
        return sa.peer_id

    def _continues_session(self, session: Session) -> bool:
        """Whether the session's ISAKMP SA is a phase 1 rekey bound to a logged-in session
        (tunvpn.ike.rekey): its login continues that session."""
        try:
            return self.engine.get_sa(session.sa_id).rekey_of is not None
        except LocalProtocolError:
            return False

    def _session_limit(self, session: Session, user: str) -> str | None:
        """Why ``user`` may not log in on ``session`` (``max_sessions_per_user`` reached), or None.
        Sessions its INITIAL-CONTACT will replace once it is granted do not count."""
        try:
            contact = bool(getattr(self.engine.get_sa(session.sa_id), "initial_contact", False))
        except LocalProtocolError:
            contact = False
        try:  # a rekey that logs in again continues its session: that one does not count
            continues = self.engine.get_sa(session.sa_id).rekey_of
        except LocalProtocolError:
            continues = None
        others = [
            s.user
            for s in self.sessions.values()
            if s.authenticated
            and s is not session
            and s.sa_id != continues
            and not (
                contact and replaced_by_initial_contact(session.peer_id, session.peer, s.peer_id, s.peer)
            )
        ]
        return session_limit_refusal(user, others, self.options.max_sessions_per_user)

    async def _authorize(
        self, user: str, groups: frozenset[str], peer: tuple[str, int]
    ) -> tuple[Authorization | None, str | None]:
        """``tunvpn_authorize``: (the plugin's answer, None) or (None, why the user is refused)."""
        try:
            authorization = await asyncio.wait_for(
                self.plugins.authorize(user, groups, peer, self.plugin_context()), PLUGIN_TIMEOUT
            )
        except TimeoutError:
            log.error("authorizing user %r from %s took over %d s; refused", user, peer[0], PLUGIN_TIMEOUT)
            return None, "the gateway could not authorize the user in time"
        except Exception as exc:  # a broken plugin refuses this user, nothing more
            log.error("authorizing user %r from %s failed: %s", user, peer[0], exc)
            return None, "the gateway could not authorize the user"
        if authorization is not None and authorization.deny is not None:
            log.warning("user %r from %s refused by authorization: %s", user, peer[0], authorization.deny)
            return None, authorization.deny
        return authorization, None

    def _policies_of(self, session: Session) -> tuple[Phase2Policy, ...]:
        """A session's policies: those of its user and groups, then its per-user ones, then one
        per (policy, route) for the networks behind the client."""
        policies = self.policies_for(session.user, session.groups, session.proven_id)  # the rule-based part
        names = {p.name for p in policies}
        policies += tuple(p for p in session.user_policies if p.name not in names)
        routed = []
        for route in session.routes:
            selector = TrafficSelector.from_network(route)
            for policy in policies:
                if policy.client_ts is None and policy.gateway_ts.intersect(selector) is None:
                    routed.append(
                        dataclasses.replace(policy, name=f"{policy.name} <- {route}", client_ts=selector)
                    )
        return policies + tuple(routed)

    def _usable_routes(self, user: str, routes: Sequence[IPv4Network]) -> tuple[IPv4Network, ...]:
        """A plugin's routes for ``user`` without those that would capture other traffic: the
        default route, the address pool, or a network the gateway protects (each logged)."""
        protected = [r.policy.gateway_ts for r in effective_rules(self.options, self.phase1)]
        pool = self.options.pool
        out = []
        for route in routes:
            selector = TrafficSelector.from_network(route)
            why = None
            if route.prefixlen == 0:
                why = "it is the default route"
            elif (
                pool is not None
                and selector.intersect(TrafficSelector.from_range(pool.first, pool.last)) is not None
            ):
                why = "it overlaps the address pool"
            elif any(ts.intersect(selector) is not None for ts in protected):
                why = "it overlaps a protected network"
            if why is not None:
                log.warning("route %s for user %r ignored: %s", route, user, why)
                continue
            out.append(route)
        return tuple(out)

    def _grant(self, session: Session, now: float) -> None:
        """The whole login passed (XAUTH and every extra protocol): install the user's policies
        and let the engine grant the ISAKMP SA (until then it refuses Quick Mode and holds
        INITIAL-CONTACT; docs/engine-states.md)."""
        self._install_policies(session, self._policies_of(session))
        self.engine.grant(session.sa_id, now)

    def _protocols_passed(self, session: Session, now: float) -> None:
        """Every extra protocol passed: Quick Mode is allowed. Groups a protocol added may give
        the client more policies than phase 1a pushed: those follow as a CFG_SET."""
        before = session.policies
        policies = self._policies_of(session)
        continues = self._continues_session(session)
        self._grant(session, now)
        if not (policies == before or not session.tunvpn or continues):  # a continued session
            config = self.mode_config_for(
                session.address, PUSHED_ATTRIBUTES, policies, session.address6
            )  # keeps its
            identifier = self.engine.push_mode_config(  # first login's policies
                session.sa_id, now, config, encode_policies(self._push(session))
            )
            session.pending[identifier] = tuple(p.name for p in diff_policies(before, policies).removed)
            log.info("pushed %d policies to %s after its extra protocols", len(policies), session.user)
        self._refresh_introductions(now)  # a peer only now: it and its peers meet (issue 17)

    def _same_address_again(self, session: Session, event: ev.ModeConfigRequested) -> IPv4Address | None:
        """The address a client asks for again when it logs in anew while its last session is
        still up (a standard client's re-authentication: strongSwan's IKEv1 reauth keeps its
        IPsec SAs, which carry that address): the lease moves to the new session. Only the
        same user, with the same phase 1 identity, from the same address; anything else is
        leased as usual (a user cannot take another's address, nor one device another's)."""
        wanted = event.request.address
        pool = self.options.pool
        if wanted is None or pool is None or session.user is None:
            return None
        for other in self.sessions.values():
            if (
                other.sa_id != event.sa_id
                and other.address == wanted
                and other.user == session.user
                and other.peer_id == event.peer_id
                and other.peer[0] == event.peer[0]
                and pool.leased().get(other.sa_id) == wanted
            ):
                pool.move(other.sa_id, event.sa_id)
                log.info(
                    "Mode Config: %s (%s) logged in again and keeps %s", event.peer[0], session.user, wanted
                )
                return wanted
        return None

    def _mode_config(self, event: ev.ModeConfigRequested, now: float) -> None:
        session = self.sessions.get(event.sa_id)
        if session is None:  # pragma: no cover - phase 1 always comes first
            session = self.sessions.setdefault(event.sa_id, Session(event.sa_id, event.peer))
        session.tunvpn = session.tunvpn or event.tunvpn_peer
        if session.user is None and event.user_name:
            session.user = event.user_name
            session.groups = self.groups_of(event.user_name)
        address: IPv4Address | None = session.plugin_address  # e.g. RADIUS Framed-IP-Address
        if address is None and self.options.pool is not None:
            address = self._same_address_again(session, event)
        if address is None and self.options.pool is not None:
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
        session.address = address
        pool6 = self.options.pool6
        wants6 = CfgAttr.INTERNAL_IP6_ADDRESS in event.requested_types
        if pool6 is not None and address is not None and session.address6 is None and wants6:
            session.address6 = pool6.lease(event.sa_id)
            if session.address6 is None:
                log.warning(
                    "Mode Config: IPv6 pool %s-%s exhausted: %s gets IPv4 only",
                    pool6.first,
                    pool6.last,
                    event.peer[0],
                )
        if not session.protocols_passed and not session.protocols_pending:
            session.protocols_pending = self._run_protocols()
        self._install_policies(session, self._policies_of(session))
        wants_policies = session.tunvpn and PolicyAttr.PHASE2_POLICIES in event.requested_types
        config = self.mode_config_for(address, event.requested_types, session.policies, session.address6)
        extra = encode_policies(self._push(session)) if wants_policies else ()
        if wants_policies and self._introduces():
            session.introduced = self._peers_for(session)
            extra += encode_peers(session.introduced)
            self._install_policies(session, session.policies)  # with its relay policies
        if wants_policies:
            session.generation = self.generation
        log.info(
            "Mode Config: %s (id %s%s) gets %s and %d phase 2 polic%s%s",
            event.peer[0],
            event.peer_id,
            f", user {session.user!r}" if session.user else "",
            (str(address) if address is not None else "no address (no pool)")
            + (f" and {session.address6}" if session.address6 is not None else ""),
            len(session.policies),
            "y" if len(session.policies) == 1 else "ies",
            " (pushed as CFG_ sets)" if wants_policies else " (standard client: split networks)",
        )
        try:
            self.engine.mode_config_reply(event.sa_id, now, event.identifier, config, extra)
        except LocalProtocolError as exc:
            log.warning("Mode Config reply to %s not sent: %s", event.peer[0], exc)
            if address is not None:
                self._release(event.sa_id)
            return
        if session.protocols_pending:
            self._start_protocol(session, now)
        self._account(session, "start")
        self._refresh_introductions(now)  # the others meet the newcomer

    def mode_config_for(
        self,
        address: IPv4Address | None,
        requested: Sequence[int] = (),
        policies: Sequence[Phase2Policy] | None = None,
        address6: IPv6Address | None = None,
    ) -> ModeConfig:
        """What a client gets: its address (/32) and IPv6 address (/128, issue 19), DNS, and the
        protected networks as Cisco Unity SPLIT_INCLUDE and/or INTERNAL_IP4_SUBNET, whichever
        it asked for (both if it named neither), and INTERNAL_IP6_SUBNET with an IPv6 address."""
        wants_unity = CfgAttr.UNITY_SPLIT_INCLUDE in requested
        wants_subnets = CfgAttr.INTERNAL_IP4_SUBNET in requested or not wants_unity
        if policies is None:
            policies = self.policies_for(None)
        nets: list[IPv4Network] = []
        nets6: list[IPv6Network] = []
        for policy in policies:
            for net in policy.gateway_ts.networks():
                if isinstance(net, IPv4Network) and net != ANY_IPV4 and net not in nets:
                    nets.append(net)
                elif isinstance(net, IPv6Network) and net.prefixlen and net not in nets6:
                    nets6.append(net)
        domains = self.options.domains
        return ModeConfig(
            address=address,
            netmask=IPv4Address("255.255.255.255") if address is not None else None,
            dns=tuple(a for a in self.options.dns if isinstance(a, IPv4Address)),
            ip6_address=IPv6Interface(f"{address6}/128") if address6 is not None else None,
            ip6_dns=tuple(a for a in self.options.dns if isinstance(a, IPv6Address)),
            ip6_subnets=tuple(nets6) if address6 is not None and wants_subnets else (),
            subnets=tuple(nets) if wants_subnets else (),
            split_include=tuple(nets) if wants_unity else (),
            default_domain=domains[0] if domains and wants_unity else None,
            split_dns=tuple(domains[1:]) if wants_unity else (),
            banner=self.options.banner,
        )

    def _acknowledged(self, event: ev.ModeConfigAcknowledged, now: float) -> None:
        session = self.sessions.get(event.sa_id)
        if session is None:
            return
        removed = session.pending.pop(event.identifier, ())
        log.info(
            "client %s acknowledged policy generation %d", session.user or session.peer[0], session.generation
        )
        self._delete_children_named(session, removed, now)

    def _delete_children_named(self, session: Session, names: Iterable[str], now: float) -> None:
        names = set(names)
        for child in list(self.children.values()):
            if child.sa_id == session.sa_id and child.policy_name in names:
                try:
                    self.engine.delete_child(session.sa_id, child.spi_in, now)
                except LocalProtocolError:
                    continue  # the client deleted it first
                log.info("deleted SA %r of %s: the policy was removed", child.policy_name, session.peer[0])

    def _release(self, sa_id: bytes) -> None:
        for pool in (self.options.pool, self.options.pool6):
            if pool is not None:
                address = pool.release(sa_id)
                if address is not None:
                    log.info("address %s returned to the pool", address)

    # ------------------------------------------------------------------ reload

    def apply_options(self, new: GatewayOptions) -> dict[str, object]:
        """Switch to ``new`` options (a reloaded config): new clients get the new policies,
        connected tunvpn clients get them pushed (CFG_SET), standard clients keep their SAs
        until they reconnect. Settings that need a restart (addresses, ports, TUN) are kept
        and reported. Returns a summary for ``tunvpn reload``."""
        now = self.clock()
        old = self.options
        kept = _keep_restart_settings(old, new)
        # a plugin refusing the new settings (or groups it no longer declares) changes nothing
        plugin_groups = check_plugin_setup(new, self.plugins, self._context_for(new))
        announcements = self._announce(new)
        _carry_leases(old, new)
        self.options = new
        self.plugin_groups = plugin_groups
        old_announcements, self.announcements = self.announcements, announcements
        self.phase1 = phase1_policy(new)
        self.config = build_engine_config(new, require_xauth=xauth_required(new, self.plugins))
        self.engine.config = self.config
        self._warn_weak(new)
        changes = self._reload_changes(old, new, old_announcements)
        if changes:
            self.generation = self.generation % 0xFFFF + 1
        updated = sum(self._update_session(session, now) for session in list(self.sessions.values()))
        if old.peering != new.peering:
            changes.append("peering changed")
        changes += self.sites.reconfigure(new.sites, now)
        self._refresh_introductions(now)  # peering rules or group membership may have changed
        if self.driver is not None:
            self.driver.flush()
        if kept:
            changes.append("needs a restart to change: " + ", ".join(kept))
        log.info("configuration reloaded: %s", "; ".join(changes) or "no change")
        if changes:
            audit.policy_change("reload", generation=self.generation, changes="; ".join(changes))
        self.events.publish(
            EventKind.RELOAD, generation=self.generation, changes=changes, clients_updated=updated
        )
        return {"generation": self.generation, "changes": changes, "clients_updated": updated}

    def _reload_changes(
        self,
        old: GatewayOptions,
        new: GatewayOptions,
        old_announcements: tuple[tuple[ExtraProtocol, tuple[Phase2Policy, ...]], ...],
    ) -> list[str]:
        """What a reload changed, for its summary; plugin services restart if their settings
        or the extra protocols changed."""
        changes: list[str] = []
        before = [r.policy for r in effective_rules(old, phase1_policy(old))]
        after = [r.policy for r in effective_rules(new, self.phase1)]
        d = diff_policies(before, after)
        changes += [f"added policy {p.name}" for p in d.added]
        changes += [f"removed policy {p.name}" for p in d.removed]
        changes += [f"changed policy {p.name}" for p in d.changed]
        if old.groups != new.groups:
            changes.append("group membership changed")
        if old.protocols != new.protocols or old_announcements != self.announcements:
            changes.append("extra protocols changed")
        if self._services and (old.plugin_settings != new.plugin_settings or old.protocols != new.protocols):
            changes.append("plugin settings changed: plugin services restarted")
            self._restart_services()
        if (old.dns, old.domains, old.banner) != (new.dns, new.domains, new.banner):
            changes.append("DNS/banner changed")
        return changes

    def _update_session(self, session: Session, now: float) -> int:
        """After a reload: a tunvpn client gets its new policies pushed (CFG_SET); a standard
        client loses the child SAs of policies removed or changed. 1 if a push went out."""
        if session.address is None and not session.policies:
            return 0  # not through Mode Config yet: it will get the new policies
        policies = self._policies_of(session)
        if policies == session.policies and session.generation == self.generation:
            return 0
        if policies == session.policies and not session.tunvpn:
            return 0
        session_before = session.policies
        removed = [p.name for p in diff_policies(session_before, policies).removed]
        self._install_policies(session, policies)
        if not session.tunvpn:
            d = diff_policies(session_before, policies)
            if d.removed or d.changed:
                # its inbound check still admits the old networks: the client must reconnect
                removed.append(STANDARD_CLIENT_POLICY)
            self._delete_children_named(session, removed, now)
            return 0
        config = self.mode_config_for(session.address, PUSHED_ATTRIBUTES, policies, session.address6)
        extra = encode_policies(self._push(session))
        if session.introduced is not None:
            session.introduced = self._peers_for(session)
            extra += encode_peers(session.introduced)
        try:
            identifier = self.engine.push_mode_config(session.sa_id, now, config, extra)
        except LocalProtocolError as exc:
            log.warning("cannot push policies to %s: %s", session.peer[0], exc)
            return 0
        session.pending[identifier] = tuple(removed)
        session.generation = self.generation
        log.info(
            "pushed policy generation %d to %s (%d policies)",
            self.generation,
            session.user or session.peer[0],
            len(policies),
        )
        audit.policy_change(
            "push",
            user=session.user,
            peer=f"{session.peer[0]}:{session.peer[1]}",
            generation=self.generation,
            policies=",".join(p.name for p in policies),
        )
        return 1

    def reload(self) -> dict[str, object]:
        """Read the configuration file again (``tunvpn reload``, SIGHUP). A bad file changes
        nothing: the error (file, line, key, reason) is logged and raised."""
        if self.options.config_path is None:
            raise ConfigError("the gateway was started without a configuration file (-c); nothing to reload")
        from tunvpn.config.gateway import load_gateway_config

        new = options_from_config(load_gateway_config(self.options.config_path))
        for name, value in self.options.overrides.items():
            setattr(new, name, value)
        new.overrides = dict(self.options.overrides)
        return self.apply_options(new)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        """What ``tunvpn status`` shows (schema in tunvpn/control/server.py)."""
        now = self.clock()
        snapshot = self.counters.snapshot()
        counters = sa_counters(snapshot)
        drops = sa_drops(snapshot)
        tunnels = []
        children: dict[bytes, list[ev.ChildSAEstablished]] = {}  # one pass, not one per session
        for child in self.children.values():
            children.setdefault(child.sa_id, []).append(child)
        for session in self.sessions.values():
            sas = []
            for child in children.get(session.sa_id, ()):
                age = now - self.child_started.get(child.spi_in, now)
                sas.append(child_status(child, counters, age, drops))
            tunnels.append(
                {
                    "peer": f"{session.peer[0]}:{session.peer[1]}",
                    "peer_id": session.peer_id,
                    "user": session.user,
                    "groups": sorted(session.groups),
                    "address": str(session.address) if session.address is not None else None,
                    **({"address6": str(session.address6)} if session.address6 is not None else {}),
                    "routes": [str(r) for r in session.routes],
                    "tunvpn": session.tunvpn,
                    "generation": session.generation,
                    "phase1": {
                        "exchange": session.exchange,
                        "suite": session.suite,
                        "established": session.established,
                        "expires_in": self._expires_in(session.sa_id, now),
                    },
                    "sas": sas,
                }
            )
        driver_counts = snapshot.group("ike driver")
        return {
            "schema": STATUS_SCHEMA,
            "role": "gateway",
            "build": build_kind(),
            "pid": os.getpid(),
            "started": self.started,
            "config": self.options.config_path,
            "generation": self.generation,
            "listen": self.options.listen,
            "ike": {  # issue 14: the IKE side under load
                "half_open": snapshot.get("ike state", "half-open"),
                "queue_depth": driver_counts.get("ike queue depth", 0),
                "dropped": {
                    **snapshot.group("ike"),
                    **{k: v for k, v in driver_counts.items() if k in DROP_COUNTERS},
                },
                "withheld": snapshot.group("ike withheld"),
            },
            "busy_poll": busy_poll_status(snapshot),
            "policies": [policy_status(r) for r in effective_rules(self.options, self.phase1)],
            "tunnels": tunnels,
            "sites": self.sites.status(),
        }

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
            from tunvpn.dataplane.busypoll import busy_poll_limit_us
            from tunvpn.dataplane.tunnel import Tunnel

            # the gateway answers Quick Modes and its clients rekey them; it rekeys the site
            # tunnels it started (proposal_for: None for clients' SAs)
            self.tunnel = Tunnel(
                self.engine,
                name=self.options.tun,
                mtu=self.options.mtu,
                proposal_for=self.sites.proposal_for,
                busy_poll_us=busy_poll_limit_us(self.options.busy_poll_us),
            )
            log.info("ESP data path on TUN device %s", self.tunnel.name)
            if forwarding_off():
                log.warning(
                    "IPv4 forwarding is off in this network namespace (net.ipv4.ip_forward = 0): "
                    "clients reach only this host's own addresses, and neither the relay between "
                    "peers nor site-to-site tunnels carry traffic; sysctl -w net.ipv4.ip_forward=1"
                )
            if self.options.pool6 is not None and forwarding_off(IP6_FORWARD):
                log.warning(
                    "IPv6 forwarding is off in this network namespace (net.ipv6.conf.all.forwarding = 0): "
                    "clients reach only this host's own IPv6 addresses; "
                    "sysctl -w net.ipv6.conf.all.forwarding=1"
                )
        self.driver = UdpDriver(
            self.engine,
            self.options.listen,
            ike_port=self.options.ike_port,
            natt_port=self.options.natt_port,
            handler=self.handle_event,
            natt_owner=self.tunnel.dataplane if self.tunnel is not None else None,
            keylog=keylog,
            clock=self.clock,
            ike_queue_size=self.options.ike_queue_size,
            limit_new=NewExchangeLimit.of(
                self.options.new_exchanges_per_source,
                self.options.new_exchanges_per_source_burst,
                self.options.new_exchanges_total,
                self.options.new_exchanges_total_burst,
            ),
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
        await self._start_control()  # still root: the socket goes in root's /run/tunvpn
        self._loop = loop
        try:
            self._start_metrics()
        except MetricsError:
            self.shutdown()
            raise
        if self.run_as is not None:  # before the data path thread and the plugin workers
            if keylog is not None:  # made by root above, appended to after the drop
                for path in (keylog.ike_path, keylog.esp_path):
                    os.chown(path, self.run_as.uid, self.run_as.gid)
            drop_privileges(self.run_as)
        if self.tunnel is not None:
            self.tunnel.on_change = self.driver.flush
            self.tunnel.start(loop)
        self._services = self.plugins.serve(self.plugin_context())
        await self._accounting_onoff("on", ONOFF_WAIT)  # before any login: "on" clears this NAS
        interim = loop.create_task(self._interim_accounting()) if self.options.accounting_interval else None
        crls = loop.create_task(keep_crls_fresh(lambda: self.config), name="CRL distribution points")
        sites = loop.create_task(self._tick_sites(), name="site tunnels")  # a reload may add one
        watchdog = sdnotify.start_watchdog(loop, self.tunnel.dataplane if self.tunnel is not None else None)
        stop_signals = self._catch_stop_signals(loop) if handle_signals else {}
        signals: tuple[signal.Signals, ...] = ()
        if handle_signals:
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            signals += (signal.SIGHUP,)
        log.info(
            "gateway ready on %s (IKE %d, NAT-T %d); pool %s; %s",
            self.options.listen,
            self.options.ike_port,
            self.options.natt_port,
            f"{self.options.pool.first}-{self.options.pool.last}" if self.options.pool else "none",
            self._policies_summary(),
        )
        if ready is not None:
            ready()
        sdnotify.ready(f"serving on {self.options.listen}, generation {self.generation}")
        try:
            await self._stop.wait()
        finally:
            sdnotify.stopping()
            if interim is not None:
                interim.cancel()
            crls.cancel()
            sites.cancel()
            if watchdog is not None:
                watchdog.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)
            # first: the services may still tell their peers through the SAs (L2TP's StopCCN)
            await self._stop_services(STOP_GRACE)
            for session in list(self.sessions.values()):  # counters still readable: before shutdown
                self._account(session, "stop", reason="gateway shutting down")
            self.shutdown()  # Deletes out, sockets closed, logins waiting on plugins cancelled
            await self._finish_accounting(STOP_GRACE)
            await self._accounting_onoff("off", STOP_GRACE)  # after the sessions' "stop"s
            self.plugins.close()  # after the accounting "stop"s: they run on it too
            for signum, previous in stop_signals.items():
                signal.signal(signum, previous)
            if self._signalled is not None:
                name, at = self._signalled
                log.info("stopped %.2f s after %s", time.monotonic() - at, name)

    async def _tick_sites(self) -> None:
        """The site tunnels' timer: start the ones we start when they are down; look up the
        sites given by name every :data:`SITE_RESOLVE_EVERY` seconds."""
        from tunvpn.gateway.sites import TICK

        resolved_at: float | None = None
        while True:
            if self.sites.names() and (
                resolved_at is None or time.monotonic() - resolved_at > SITE_RESOLVE_EVERY
            ):
                resolved_at = time.monotonic()
                await self._resolve_sites()
            self.sites.tick(self.clock())
            if self.driver is not None:
                self.driver.flush()
            await asyncio.sleep(TICK)

    async def _resolve_sites(self) -> None:
        """Each site name's IPv4 address now (the first the resolver gives)."""
        loop = asyncio.get_running_loop()
        for name in self.sites.names():
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(
                        name,
                        self.options.ike_port,
                        family=socket.AF_INET6 if ":" in self.options.listen else socket.AF_INET,
                        type=socket.SOCK_DGRAM,
                    ),
                    SITE_RESOLVE_TIMEOUT,
                )
            except OSError as exc:  # TimeoutError is one
                log.warning("site address %s does not resolve: %s", name, exc or "lookup timed out")
                continue
            if infos:
                self.sites.set_address(name, str(infos[0][4][0]))

    def _restart_services(self) -> None:
        """A reload changed what the plugins' services run on: stop them, start them anew (their
        clients are cut off and reconnect; e.g. the LNS's L2TP sessions end)."""
        old = self._services
        self._services = []

        async def restart() -> None:
            for task in old:
                task.cancel()
            if old:
                await asyncio.wait(old, timeout=3)
            if self._stop is not None and not self._stop.is_set():
                self._services = self.plugins.serve(self.plugin_context())

        task = asyncio.get_running_loop().create_task(restart(), name="restart plugin services")
        self._accounting_tasks.add(task)
        task.add_done_callback(self._accounting_tasks.discard)

    async def _stop_services(self, timeout: float = 3.0) -> None:
        """Cancel the plugins' ``tunvpn_serve`` tasks and give them a moment to clean up."""
        services, self._services = self._services, []
        for task in services:
            task.cancel()
        if services:
            _done, pending = await asyncio.wait(services, timeout=timeout)
            for task in pending:
                log.warning("%s did not stop within %g s", task.get_name(), timeout)

    def _policies_summary(self) -> str:
        """For the "gateway ready" line: the phase 2 policies and the networks they protect."""
        rules = effective_rules(self.options, self.phase1)
        items = []
        for rule in rules:
            policy = rule.policy
            item = (
                f"{policy.name} ({policy.gateway_ts})"
                if policy.name != str(policy.gateway_ts)
                else policy.name
            )
            who = [*rule.groups, *rule.users]
            if who:
                item += " for " + ", ".join(who)
            items.append(item)
        return f"{len(items)} phase 2 polic{'y' if len(items) == 1 else 'ies'}: " + ", ".join(items)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _catch_stop_signals(self, loop: asyncio.AbstractEventLoop) -> dict[int, Any]:
        """SIGINT and SIGTERM stop the gateway; a second one ends the process at once. Plain
        Python handlers (as ``asyncio.Runner`` has for SIGINT), not the loop's: they run at the
        main thread's next bytecode, whatever the loop is busy with, and only schedule the
        stop. The previous handlers, to put back."""
        asked = False

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal asked
            if asked:
                os.write(2, f"tunvpn gateway: second {signal.Signals(signum).name}: exiting now\n".encode())
                os._exit(1)
            asked = True
            self._signalled = (signal.Signals(signum).name, time.monotonic())
            loop.call_soon_threadsafe(self.stop)

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _sighup(self) -> None:
        sdnotify.reloading()
        try:
            self.reload()
        except (ConfigError, ValueError, OSError, SecretFileError) as exc:
            log.error("reload (SIGHUP) refused, the running configuration is kept: %s", exc)
            sdnotify.ready(f"reload refused, generation {self.generation} kept: {exc}")
        else:
            sdnotify.ready(f"serving on {self.options.listen}, generation {self.generation}")

    async def _start_control(self) -> None:
        if self.options.control_socket is None:
            return
        from tunvpn.control.server import ControlError, ControlServer

        self.control = ControlServer(self.options.control_socket, self._control, events=self.events)
        try:
            await self.control.start()
        except (ControlError, OSError) as exc:
            log.warning("no control socket (tunvpn status/reload will not reach this gateway): %s", exc)
            self.control = None
        else:
            log.info("control socket %s", self.options.control_socket)

    def _control(self, command: str, args: dict[str, object]) -> object:
        from tunvpn.control.server import ControlError

        if command == "status":
            return self.status()
        if command == "reload":
            try:
                return self.reload()
            except (ConfigError, ValueError, OSError, SecretFileError) as exc:
                log.error("reload refused, the running configuration is kept: %s", exc)
                raise ControlError(f"reload refused, the running configuration is kept: {exc}") from None
        raise ControlError(f"unknown command {command!r} (the gateway knows: status, reload)")

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
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.tunnel is not None:
            log.info("data path: %s", self.tunnel.dataplane.stats())
            self.tunnel.close()
            self.tunnel = None


PLUGIN_TIMEOUT = 30

PUSHED_ATTRIBUTES = (CfgAttr.INTERNAL_IP4_SUBNET, CfgAttr.UNITY_SPLIT_INCLUDE, CfgAttr.UNITY_DEF_DOMAIN)
"""What a CFG_SET to a tunvpn client carries besides its sets: what its request asked for,
the DNS domains included, so a reload that changes them reaches it (issue 18)."""

LIMIT_PROBE_WITHIN = 2.0
"""Seconds the user's older sessions have to answer a DPD probe when a new login of theirs
would pass ``max_sessions_per_user``; those that do not are removed and the login goes on."""

METRICS_WAIT = 5.0
"""Seconds a scrape waits for the gateway's loop to take its sample."""

STOP_GRACE = 1.0
"""Seconds each step of stopping may wait: the plugins' services, then the accounting "stop"s
(together well under the 2 s a SIGTERM may take, however busy the gateway is)."""
ONOFF_WAIT = 10.0
"""Seconds a starting gateway waits for its ``tunvpn_accounting_onoff`` "on" calls."""

BUSY_MESSAGE = "the gateway is busy checking other logins; try again later"
"""The XAUTH message of a login refused because every plugin worker was busy."""

Announced = tuple[ExtraProtocol, tuple[Phase2Policy, ...]]
"""An extra protocol as announced in phase 1a, and the phase 2 policies accepted for it."""
"""Seconds a plugin may take to decide one XAUTH round (a RADIUS server with retries and
fail-over fits); then the user is rejected, and the client's XAUTH does not hang."""

RESTART_SETTINGS = (
    "listen",
    "ike_port",
    "natt_port",
    "tun",
    "mtu",
    "busy_poll_us",
    "keylog",
    "control_socket",
    "plugins",
    "plugin_objects",
    "accounting_interval",
    "plugin_workers",
    "ike_queue_size",
    "new_exchanges_per_source",
    "new_exchanges_per_source_burst",
    "new_exchanges_total",
    "new_exchanges_total_burst",
)
"""Options a reload cannot change: the new value waits for a restart (and is reported)."""


SITE_RESOLVE_EVERY = 60.0
"""Seconds between lookups of the sites given by name."""
SITE_RESOLVE_TIMEOUT = 5.0
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IP6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"


def forwarding_off(path: str = IP_FORWARD) -> bool:
    """Whether the kernel says forwarding is off (IPv4, or ``path`` for IPv6; False when it
    cannot be read: macOS)."""
    try:
        with open(path) as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def _keep_restart_settings(old: GatewayOptions, new: GatewayOptions) -> list[str]:
    """Put the running values of RESTART_SETTINGS back into ``new``; the names that differed."""
    kept = [name for name in RESTART_SETTINGS if getattr(old, name) != getattr(new, name)]
    for name in kept:
        setattr(new, name, getattr(old, name))
    return kept


def _carry_leases(old: GatewayOptions, new: GatewayOptions) -> None:
    """Connected clients keep their addresses over a reload: the same pool is kept as it is;
    a changed one takes over the leases that still fall inside it (IPv4 and IPv6 pools)."""
    if new.pool is not None and old.pool is not None:
        if (new.pool.first, new.pool.last) == (old.pool.first, old.pool.last):
            new.pool = old.pool  # keep the leases
        else:
            new.pool.adopt(old.pool)
    if new.pool6 is not None and old.pool6 is not None:
        if (new.pool6.first, new.pool6.last) == (old.pool6.first, old.pool6.last):
            new.pool6 = old.pool6
        else:
            new.pool6.adopt(old.pool6)


MAX_AUTH_ROUNDS = 8
"""XAUTH rounds (challenges, next PIN) one client may take before it is rejected."""


def load_plugins(options: GatewayOptions) -> PluginHost:
    """The gateway's plugins; a named plugin that is missing or broken is a startup error."""
    try:
        return PluginHost(options.plugin_names(), options.plugin_objects, workers=options.plugin_workers)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None


def options_from_config(cfg: GatewayConfig) -> GatewayOptions:
    """The gateway options of a parsed configuration file (``tunvpn gateway -c``)."""
    return GatewayOptions(
        listen=cfg.listen,
        psks=cfg.psks,
        ike_port=cfg.ike_port,
        natt_port=cfg.natt_port,
        users=cfg.users,
        pool=cfg.pool,
        pool6=cfg.pool6,
        dns=tuple(cfg.dns),
        allow_aggressive_psk=cfg.allow_aggressive_psk,
        allow_aggressive_signatures=cfg.allow_aggressive_signatures,
        allow_base_mode=cfg.allow_base_mode,
        legacy=cfg.legacy,
        require_xauth=cfg.require_xauth,
        xauth_chap=cfg.xauth_chap,
        banner=cfg.banner,
        local_id=cfg.local_id,
        keylog=cfg.keylog,
        tun=cfg.tun,
        mtu=cfg.mtu,
        busy_poll_us=cfg.busy_poll_us,
        rules=tuple(cfg.rules),
        groups=dict(cfg.groups),
        protocols=tuple(cfg.protocols),
        peering=tuple(cfg.peering),
        sites=tuple(cfg.sites),
        plugins=tuple(cfg.plugins),
        plugin_settings=dict(cfg.plugin_settings),
        accounting_interval=cfg.accounting_interval,
        login_timeout=cfg.login_timeout,
        reauth_interval=cfg.reauth_interval,
        max_half_open=cfg.max_half_open,
        max_half_open_per_source=cfg.max_half_open_per_source,
        ike_queue_size=cfg.ike_queue_size,
        new_exchanges_per_source=cfg.new_exchanges_per_source,
        new_exchanges_per_source_burst=cfg.new_exchanges_per_source_burst,
        new_exchanges_total=cfg.new_exchanges_total,
        new_exchanges_total_burst=cfg.new_exchanges_total_burst,
        max_sessions_per_user=cfg.max_sessions_per_user,
        fragmentation=cfg.fragmentation,
        plugin_workers=cfg.plugin_workers,
        domains=tuple(cfg.domains),
        phase1=cfg.phase1,
        credential=cfg.credential,
        trusted_cas=tuple(cfg.trusted_cas),
        hybrid=cfg.hybrid,
        peer_certificates=cfg.peer_certificates,
        config_path=None if cfg.source.startswith("<") else cfg.source,
        config_source=cfg.source_text,
        control_socket=cfg.control_socket,
        metrics=cfg.metrics,
        metrics_per_user=cfg.metrics_per_user,
    )


def _counters_text(driver: UdpDriver) -> str:
    if not driver.counters:
        return "no IKE datagrams dropped"
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
