"""The client: phase 1 to a gateway, XAUTH if the gateway asks, Mode Config, then one Quick Mode
per network the gateway announces (seed FIG. 6: the gateway pushes the configuration, the client
extracts it and negotiates phase 2 with it).

:class:`Client` holds no socket: ``handle_event`` turns engine events into engine commands and
progress reports, so tests can drive it in memory; :meth:`Client.run` puts it on UDP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import TYPE_CHECKING, TextIO

from cryptography import x509

from tunvpn.build import build_kind
from tunvpn.client import p1rekey, peerlinks
from tunvpn.client.peerlinks import PeerLinks, pair_policy
from tunvpn.client.reconnect import NO_ANSWER_AFTER, GatewayResolver, round_delay
from tunvpn.client.roaming import AddressWatcher, RoutePath, route_path
from tunvpn.config.hosts import check_gateway, is_address
from tunvpn.control.status import busy_poll_status, child_status, counter_registry, sa_counters, sa_drops
from tunvpn.ike import events as ev
from tunvpn.ike.certpath import PeerCertificatePolicy
from tunvpn.ike.certs import Credential
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import DHGroup, NotifyType, XauthType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.peers import PeerList, decode_peers
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy, PolicyPush, decode_policies, diff_policies
from tunvpn.ike.proposals import (
    DEFAULT_ESP,
    DEFAULT_GROUPS,
    GROUP_STRENGTH,
    LEGACY_ESP,
    ChildProposal,
    Phase1Policy,
)
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.plugins.host import PluginError, PluginHost, install_advice
from tunvpn.plugins.types import ClientProtocol, ClientQuestion, ClientSession
from tunvpn.shell import sdnotify
from tunvpn.shell.crls import keep_crls_fresh
from tunvpn.shell.privileges import ServiceUser, drop_privileges
from tunvpn.shell.udp import UdpDriver, describe_mode_config, esp_suite_name
from tunvpn.untrusted import for_terminal, quoted

if TYPE_CHECKING:
    from tunvpn.client.holdtunnel import HoldingTunnel
    from tunvpn.client.hostconfig import HostConfig
    from tunvpn.client.privhelper import PrivHelper
    from tunvpn.control.server import ControlServer
    from tunvpn.dataplane.tunnel import Tunnel
    from tunvpn.keylog import KeyLog

log = logging.getLogger(__name__)

ANY_IPV4 = IPv4Network("0.0.0.0/0")
CHALLENGE_FIELDS = {"answer": "the answer to the challenge", "next_pin": "a new PIN"}
"""XAUTH fields of a gateway's later rounds (draft-beaulieu-ike-xauth-02 section 6.2)."""
EXIT_OK = 0
EXIT_FAILED = 1
DPD_INTERVAL = 10.0
"""Client default: seconds without hearing the gateway before a DPD R-U-THERE (RFC 3706)."""
DPD_TIMEOUT = 25.0
"""Client default: seconds without hearing the gateway after which it is dead (the probes at
10, 15 and 20 s went unanswered: the engine repeats an R-U-THERE every 5 s)."""
REFUSALS = frozenset(
    {
        NotifyType.AUTHENTICATION_FAILED,
        NotifyType.INVALID_ID_INFORMATION,
        NotifyType.INVALID_HASH_INFORMATION,
        NotifyType.INVALID_SIGNATURE,
        NotifyType.INVALID_CERTIFICATE,
        NotifyType.NO_PROPOSAL_CHOSEN,
    }
)
"""Phase 1 failures that mean "this configuration cannot work" (a wrong secret, the wrong
gateway identity, no common algorithm). A client that never got connected in this run and
meets only these in a whole round of attempts exits (exit 1, as before) instead of retrying."""
WORRY_AFTER = 2
"""Seconds (ticks of one second) of ESP sent with nothing received before a DPD probe goes
out at once (RFC 3706 section 5.5: worry when traffic gets no answer)."""
WORRY_WITHIN = 3.0
"""Seconds that probe waits for any answer before the gateway counts as dead: with traffic
flowing, a gateway that restarted is found within about 5 s instead of 25."""
NO_RETRY_STEPS = frozenset({"xauth", "protocols"})
"""Failures a reconnecting client does not retry: the gateway refused the stored password,
or a login step needs an answer nobody can give (retrying would lock the account)."""
ROAM_WITHIN = 1.5
"""Seconds the gateway has to answer the DPD probe sent from our new address after a roam;
unanswered, the gateway counts as dead and (reconnect mode) a new login follows."""


@dataclass
class ClientOptions:
    """What the command line (or a test) configures."""

    gateway: str
    """The gateway: an IP address or a host name (the first of ``gateways``)."""
    psks: PskTable
    gateways: tuple[str, ...] = ()
    """Every gateway to try, in order (addresses or names); default: ``(gateway,)``."""
    reconnect: bool = False
    """Stay connected: a lost or failed connection is retried with back-off, failing over
    between ``gateways`` (the command line turns this on unless ``--once``)."""
    block_ipv6: bool = True
    """While the tunnel's routes cover all of IPv4 and none carries IPv6, the host's IPv6
    beyond its links is made unreachable (issue 19: no IPv6 around a full tunnel)."""
    dpd_interval: float = DPD_INTERVAL
    """Seconds of silence from the gateway before a DPD R-U-THERE (0: no DPD)."""
    dpd_timeout: float = DPD_TIMEOUT
    """Seconds of silence after which the gateway is declared dead."""
    local_ip: str | None = None
    """Our address; None: the address the kernel would use towards the gateway."""
    gateway_port: int = 500
    gateway_natt_port: int = 4500
    """The gateway's NAT-T port (RFC 3947: 4500), where IKE moves when a NAT is found."""
    ike_port: int = 500
    natt_port: int = 4500
    mode: str = "main"
    local_id: Identity | None = None
    user: str | None = None
    password: str | None = None
    """XAUTH password; None: ask on the terminal when the gateway wants it."""
    password_prompt: bool = True
    legacy: bool = False
    ike_groups: tuple[DHGroup, ...] | None = None
    pfs: DHGroup | None = DHGroup.ECP_256
    pfs_auto: bool = False
    """A gateway that pushes no policies (the fallback path): offer ``pfs`` first, then every
    other group strongest first, then no PFS (unless ``pfs_required``), one choice at a time
    (a Quick Mode carries one KE), moving on at a hash-verified NO-PROPOSAL-CHOSEN; what worked
    is kept for the next SAs and the rekeys (issue 16). The command line's default."""
    pfs_required: bool = False
    """With ``pfs_auto``: never fall back to no PFS."""
    pfs_min: DHGroup | None = None
    """A floor (issue 16): never offer a PFS group weaker than this one (by its security
    strength, ``tunvpn.ike.proposals.GROUP_STRENGTH``), nor no PFS; whatever a gateway says."""
    fragmentation: str = "yes"
    """IKE fragmentation (``yes``, ``force``, ``no``; tunvpn.ike.config.EngineConfig)."""
    mode_config: bool = True
    exit_after_established: bool = False
    timeout: float = 60.0
    """Seconds to get every Quick Mode up before giving up (0: wait forever)."""
    keylog: str | None = None
    json: bool = False
    force_encap: bool = False
    tun: str | None = None
    """TUN device name (template) for the ESP data path; None: negotiate IKE only."""
    mtu: int = 1400
    busy_poll_us: int | None = None
    """The data thread's longest busy poll after a lone packet, in microseconds (0: never);
    None: the default for this machine (:func:`tunvpn.dataplane.busypoll.default_limit_us`)."""
    """Inner MTU of the TUN device."""
    sa_lifetime: int = 3600
    """IPsec SA lifetime in seconds we offer (the gateway may lower it); rekeyed at 90 %."""
    dns_backend: str | None = "auto"
    """How to apply the gateway's DNS servers (tunvpn.client.hostconfig); None: leave DNS alone."""
    control_socket: str | None = None
    """Path of the control socket (``tunvpn status``); "auto": client-IFACE.sock in the run directory."""
    credential: Credential | None = None
    """Our certificate and key (signature authentication instead of a PSK)."""
    trusted_cas: tuple[x509.Certificate, ...] = ()
    """CA certificates the gateway's certificate must chain to. Without ``credential``: hybrid
    authentication (the gateway signs, we log in with XAUTH only; no pre-shared key)."""
    peer_certificates: PeerCertificatePolicy | None = None
    """Revocation mode and CRLs for the gateway's certificate (the profile's ``revocation``,
    ``crl_files``); None: relaxed, no CRL files."""
    remote_id: Identity | None = None
    """Who the gateway must be (its certificate names it, or its pre-shared-key phase 1
    identity is it); None: ``gateway``, the address we connect to."""
    remote_id_any: bool = False
    """``remote_id = "any"``: a pre-shared-key gateway may use any phase 1 identity (warned).
    A gateway that signs must still have a certificate naming ``remote_id``."""
    plugins: tuple[str, ...] = ()
    """Plugins to load by entry point name (``tunvpn_client_answer``: soft tokens and the like)."""
    plugin_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """The profile's ``[plugin.NAME]`` tables."""
    plugin_objects: tuple[object, ...] = ()
    """Plugins given as objects (tests)."""
    roaming: bool = False
    """Follow our outer address (Linux netlink): when the way to the gateway leaves from
    another address, move the sockets there and the SAs with them (the command line turns
    this on unless ``--local`` pins the address)."""

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return f"ClientOptions(gateway={self.gateway!r}, mode={self.mode!r}, user={self.user!r})"

    def __post_init__(self) -> None:
        if self.mode not in ("main", "aggressive", "base"):
            raise ValueError(f"mode {self.mode!r}: one of main, aggressive, base")
        if self.pfs_min is not None and not pfs_choices(self):
            chosen = self.pfs.name.lower() if self.pfs is not None else "none"
            raise ValueError(f"pfs {chosen} is below the floor pfs_min = {self.pfs_min.name.lower()}")
        if not self.gateways:
            self.gateways = (self.gateway,)
        self.gateways = tuple(check_gateway(g) for g in self.gateways)
        self.gateway = check_gateway(self.gateway)
        if self.hybrid:
            if self.psks:
                raise ValueError(
                    "a CA without a client certificate means hybrid authentication (the gateway "
                    "proves itself by its certificate, the user by XAUTH), which uses no "
                    "pre-shared key: drop the pre-shared key, or add a client certificate"
                )
            if self.user is None:
                raise ValueError("hybrid authentication logs in with XAUTH only: give a user name")
            if self.mode == "base":
                raise ValueError("hybrid authentication runs in main or aggressive mode, not base")

    @property
    def hybrid(self) -> bool:
        """Hybrid authentication: a CA to check the gateway, no certificate of our own."""
        return self.credential is None and bool(self.trusted_cas)

    @property
    def expected_gateway(self) -> Identity:
        """The identity the gateway must prove (``remote_id``, else the gateway's address)."""
        return self.expected_for(self.gateway)

    def expected_for(self, gateway: str) -> Identity:
        """The identity ``gateway`` (an entry of ``gateways``) must prove: ``remote_id``,
        else the entry as written (its address, or the name: an FQDN identity)."""
        return self.remote_id if self.remote_id is not None else Identity.parse(gateway)


class Progress:
    """Per-phase lines for humans (stdout), or JSON objects one per line with ``--json``.

    Texts carry what the gateway chose (its banner, XAUTH messages, reject reasons, names):
    human lines escape control characters (:func:`tunvpn.untrusted.for_terminal`); a
    ``banner`` keeps its newlines and tabs, each further line indented under the first. JSON
    escapes them by itself."""

    def __init__(self, *, json_lines: bool = False, out: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.out = out if out is not None else sys.stdout

    def report(self, step: str, text: str, **fields: object) -> None:
        if self.json_lines:
            record = {"event": step, "message": text, **{k: _jsonable(v) for k, v in fields.items()}}
            print(json.dumps(record, sort_keys=False), file=self.out, flush=True)
        elif step == "banner":
            lines = for_terminal(text, keep_lines=True).split("\n")
            print(f"[{step}] " + ("\n" + " " * (len(step) + 3)).join(lines), file=self.out, flush=True)
        else:
            print(f"[{step}] {for_terminal(text)}", file=self.out, flush=True)


def _jsonable(value: object) -> object:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def build_engine_config(options: ClientOptions) -> EngineConfig:
    return EngineConfig(
        local_id=options.local_id,
        psks=options.psks,
        credential=options.credential,
        trusted_cas=options.trusted_cas,
        peer_certificates=options.peer_certificates or PeerCertificatePolicy(),
        phase1=Phase1Policy.with_legacy() if options.legacy else Phase1Policy(),
        natt_port=options.natt_port,
        peer_natt_port=options.gateway_natt_port,
        # ESP runs in userspace over UDP 4500 (RFC 3948): with a data path, always encapsulate
        force_encap=options.force_encap or options.tun is not None,
        remote_id=options.expected_gateway,
        remote_id_psk_any=options.remote_id_any,
        hybrid=options.hybrid,
        dpd_interval=options.dpd_interval,
        dpd_timeout=options.dpd_timeout,
        fragmentation=options.fragmentation,
        responder=False,  # nobody may start a phase 1 with a client (a group-key holder neither)
    )


def child_proposal(options: ClientOptions, pfs: DHGroup | str | None = "options") -> ChildProposal:
    """Our Quick Mode proposal for a gateway that pushes none: every ESP suite, PFS ``pfs``
    (by default the options' first choice)."""
    esp = DEFAULT_ESP + LEGACY_ESP if options.legacy else DEFAULT_ESP
    group = options.pfs if isinstance(pfs, str) else pfs
    return ChildProposal(esp=esp, pfs_group=group, lifetime_seconds=options.sa_lifetime)


def pfs_choices(options: ClientOptions) -> tuple[DHGroup | None, ...]:
    """The PFS choices of the fallback path, in the order they are offered (issue 16), none
    below ``pfs_min``."""
    if not options.pfs_auto:
        choices: tuple[DHGroup | None, ...] = (options.pfs,)
    else:
        first = () if options.pfs is None else (options.pfs,)
        rest = tuple(g for g in DEFAULT_GROUPS if g != options.pfs)
        choices = first + rest + (() if options.pfs_required else (None,))
    if options.pfs_min is None:
        return choices
    floor = GROUP_STRENGTH[options.pfs_min]
    return tuple(g for g in choices if g is not None and GROUP_STRENGTH.get(g, 0) >= floor)


def protected_networks(config: ModeConfig | None) -> list[IPv4Network]:
    """The networks behind the gateway: Unity split-include, else INTERNAL_IP4_SUBNET, else all."""
    if config is None:
        return [ANY_IPV4]
    nets = list(config.split_include) or list(config.subnets)
    return list(dict.fromkeys(nets)) or [ANY_IPV4]


class Client:
    """One connection to one gateway; ``result`` is set (an exit code) when it is over."""

    def __init__(
        self,
        options: ClientOptions,
        local_ip: str | None = None,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        ask_password: Callable[[str], str] | None = None,
    ) -> None:
        self.options = options
        own_ip = local_ip or options.local_ip
        if own_ip is None:
            raise ValueError("the client needs its own address (local_ip)")
        self.local_ip: str = own_ip
        self.progress = progress or Progress(json_lines=options.json)
        self.clock = clock
        self.ask_password = ask_password or getpass.getpass
        self._xauth_rounds = 0
        self._rekeying: bytes | None = None
        """Our cookie of the new ISAKMP SA while a phase 1 rekey runs (client.p1rekey)."""
        self._stage_rounds = 0
        """XAUTH requests of the login, or of the extra protocol now running."""
        try:
            self.plugins = PluginHost(options.plugins, options.plugin_objects)
            self.plugins.check_settings(options.plugin_settings, "client")
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        self._protocols_waiting: list[str] = []
        """Extra protocols (XAUTH rounds after Mode Config) still to pass, in order."""
        self.phase1_at: float | None = None
        """When the ISAKMP SA we follow was established (its rekey's, after a hand-over)."""
        self._rekey_phase1: ev.Phase1Established | None = None
        self._login_protocols: tuple[str, ...] = ()
        """The XAUTH-round protocols of the last login: a re-authentication runs them again."""
        self.peers = PeerList()
        """The peers the gateway introduced this client to (issue 17)."""
        self._links_wanted = asyncio.Event()
        """Set when the gateway introduced a peer: the direct tunnels' timer has work (without
        one it sleeps, so an idle client does not wake twice a second for nothing)."""
        self._handlers: list[tuple[ExtraProtocol, ClientProtocol]] = []
        """Announced protocols that a client plugin runs itself (L2TP), with their handlers."""
        self._resolving = False
        """The client plugins are still being asked who handles the announced protocols."""
        self._protocol_tasks: list[asyncio.Task[None]] = []
        self._protocol_status: dict[str, dict[str, str]] = {}
        """Protocol name -> its state and last progress line, for ``tunvpn status``."""
        self.engine = IkeEngine(build_engine_config(options), ike_port=options.ike_port)
        self.links = PeerLinks(
            self.engine,
            (self.local_ip, options.natt_port),
            self.progress.report,
            punch=self._punch,
            gateway_sa=lambda: self.sa_id if self.phase1 is not None else None,
            on_child=self._peer_child_up,
            on_child_deleted=self._peer_child_gone,
        )
        """Direct tunnels to the introduced peers (tunvpn.client.peerlinks, issue 17)."""
        self.sa_id: bytes | None = None
        self.mode_config: ModeConfig | None = None
        self.pending: dict[str, TrafficSelector] = {}
        """Quick Mode name -> remote selector, while it runs."""
        self.established: dict[str, ev.ChildSAEstablished] = {}
        self._fallback_selectors: dict[str, tuple[TrafficSelector, TrafficSelector]] = {}
        """Fallback Quick Modes (a gateway that pushes no policies): name -> selectors."""
        self._pfs_tried: dict[str, int] = {}
        """Fallback Quick Mode name -> how many PFS choices the gateway refused."""
        self._pfs_worked: tuple[DHGroup | None] | None = None
        """The PFS choice a standard gateway took, offered alone from then on (issue 16)."""
        self.policies: tuple[Phase2Policy, ...] | None = None
        """The phase 2 policies the gateway pushed (None: a standard gateway, which pushes none)."""
        self.generation = 0
        self.phase1: ev.Phase1Established | None = None
        self.started = clock()
        self.child_started: dict[int, float] = {}
        self.hostconfig: HostConfig | PrivHelper | None = None
        """DNS and the gateway's pin: in this process, or through the privileged helper
        (tunvpn.client.privhelper) once root is dropped."""
        self.run_as: ServiceUser | None = None
        """Started as root: the user to become once the TUN device is open and the ports are
        bound (``--run-as``); root-only host configuration then goes through a helper."""
        self._privhelper: PrivHelper | None = None
        self.driver: UdpDriver | None = None
        self.counters = counter_registry(self)
        """Everything counted (tunvpn/dataplane/counters.py), read by ``status``."""
        self.tunnel: Tunnel | None = None
        """The ESP data path (TUN device + data thread) when ``options.tun`` is set."""
        self.result: int | None = None
        self.message = ""
        self._quick_modes_started = False
        self.stage = "phase 1"
        """Where the negotiation is, for the timeout message."""
        self._on_finish: Callable[[], None] | None = None
        self._on_up: Callable[[], None] | None = None
        self.gateway_entry = options.gateway
        """The gateway tried now, as the user wrote it (an address or a name)."""
        self.gateway_ip = options.gateway if is_address(options.gateway) else ""
        """Its address tried now (a name resolves at each attempt)."""
        self.resolver = GatewayResolver(
            family=socket.AF_INET6 if ":" in (options.local_ip or "") else socket.AF_INET
        )
        self._lost: asyncio.Event | None = None
        """Set (reconnect mode) when the connection is over and another attempt should follow."""
        self._lost_reason: str | None = None
        self._refused = False
        """This attempt's phase 1 failed with one of ``REFUSALS``."""
        self._silent = False
        """This attempt got no answer at all (tunvpn.client.reconnect.SILENT_ROUND_DELAY)."""
        self._ever_up = False
        """Some attempt of this run came up (then no failure ends the reconnecting)."""
        self._typed_password: str | None = None
        """The XAUTH password typed at the first login (no password file), for reconnecting."""
        self._replayed = False
        """This attempt's XAUTH answer is a secret of an earlier login, given again."""
        self._removing: set[int] = set()
        """Inbound SPIs of SA pairs we delete because the gateway's push removed their policy."""
        self._route_path: tuple[str, RoutePath] | None = None
        """The gateway and the way to it when roaming last looked (tunvpn.client.roaming)."""
        self._peer_pins: set[str] = set()
        self._ipv6_blocked = False
        """The host's IPv6 beyond its links is unreachable now (:meth:`_guard_ipv6`, issue 19)."""
        """Introduced peers' endpoint addresses pinned outside a full tunnel (issue 17)."""
        self._dns_applied: tuple[object, ...] | None = None
        """The DNS settings in effect (servers, domains, split): a reconnect that gets the
        same ones leaves the resolver alone."""

    # ------------------------------------------------------------------ commands

    def start(self) -> bytes:
        now = self.clock()
        if self.options.remote_id_any and not self.options.hybrid and self.options.credential is None:
            log.warning(
                "remote_id = any: the gateway's identity is not checked; anyone holding the "
                "pre-shared key can pose as the gateway and read the XAUTH password"
            )
        if not self.gateway_ip:
            raise ValueError(f"{self.gateway_entry}: a name must be resolved first (Client.run does)")
        self.sa_id = self.engine.initiate(
            (self.gateway_ip, self.options.gateway_port),
            (self.local_ip, self.options.ike_port),
            now,
            mode=self.options.mode,
            local_id=self.options.local_id,
            xauth=self.options.user is not None,
            groups=list(self.options.ike_groups) if self.options.ike_groups else None,
        )
        shown = self.gateway_ip
        if self.gateway_entry != self.gateway_ip:
            shown = f"{self.gateway_entry} ({self.gateway_ip})"
        self.progress.report(
            "phase1",
            f"{self.options.mode} mode to {shown} from {self.local_ip}",
            state="started",
            gateway=self.gateway_ip,
            name=self.gateway_entry,
        )
        return self.sa_id

    def close(self, reason: str = "closed") -> None:
        """Delete our SAs (the peer is told); the driver must flush afterwards."""
        self.links.close(self.clock())
        if self.sa_id is None:
            return
        try:
            self.engine.delete_ike_sa(self.sa_id, self.clock(), reason=reason)
        except LocalProtocolError:
            pass

    def _finish(self, code: int, message: str) -> None:
        if self.result is not None:
            return
        self.result = code
        self.message = for_terminal(message)  # it may quote the gateway (a reject reason)
        if self._on_finish is not None:
            self._on_finish()

    def fail(self, step: str, message: str) -> None:
        self.progress.report(step, message, state="failed")
        self.close("client giving up")
        if self._may_retry(step):
            self._connection_lost(message)
            return
        self._finish(EXIT_FAILED, message)

    def _may_retry(self, step: str) -> bool:
        """Reconnect mode: whether a failure at ``step`` ends this attempt only (another one
        follows) rather than the client."""
        return (
            self.options.reconnect and self.result is None and self._lost is not None
            and step not in NO_RETRY_STEPS
        )  # fmt: skip

    def _connection_lost(self, reason: str) -> None:
        """This connection (or attempt) is over; the reconnect loop tries again."""
        if self._lost_reason is None:
            self._lost_reason = reason
        if self._lost is not None:
            self._lost.set()

    # ------------------------------------------------------------------ events

    def handle_event(self, event: ev.Event) -> Awaitable[None] | None:
        if self._rekeying is not None and event.sa_id[:8] == self._rekeying:
            return p1rekey.new_sa_event(self, event)  # the new ISAKMP SA of a phase 1 rekey
        if not self._ours(event):
            self.links.handle(event, self.clock())  # a direct tunnel's, or nobody's
            return None
        if isinstance(event, (ev.Phase1RekeyStarted, ev.Phase1Rekeyed)):
            p1rekey.rekey_event(self, event)  # from now on, maybe, we follow another SA
            return None
        if event.sa_id[8:] != bytes(8):
            self.sa_id = event.sa_id  # the responder cookie is known from the second message on
        relay_kinds = (ev.ChildSAEstablished, ev.ChildSADeleted, ev.ChildSAFailed)
        if isinstance(event, relay_kinds) and self.links.handle_relay(event, self.clock()):
            return None  # a relay to an introduced peer (tunvpn.client.peerlinks)
        if isinstance(event, ev.Phase1Established):
            self._phase1_established(event)
            return None
        if isinstance(event, ev.Phase1Failed):
            self._refused = event.notify in REFUSALS
            notify = f" (notify {event.notify})" if event.notify is not None else ""
            peer = (
                event.peer[0]
                if self.gateway_entry == event.peer[0]
                else f"{self.gateway_entry} ({event.peer[0]})"
            )
            self.fail("phase1", f"phase 1 with {peer} failed: {event.reason}{notify}")
        elif isinstance(event, ev.XauthRequested):
            return self._xauth_requested(event)
        elif isinstance(event, ev.XauthCompleted):
            if event.success and self._protocols_waiting:
                self._protocol_passed()
            elif event.success:
                self.progress.report("xauth", f"user {event.user_name} accepted", state="ok")
                self._request_mode_config()
            else:
                said = f": {event.message}" if event.message else ""
                self._xauth_rejected(f"the gateway rejected user {event.user_name!r}{said}")
        elif isinstance(event, ev.ModeConfigReceived):
            if self.tunnel is not None and isinstance(event.config.address, IPv4Address):
                self.tunnel.set_address(str(event.config.address))
            if self.tunnel is not None and event.config.ip6_address is not None:
                self.tunnel.set_address(str(event.config.ip6_address.ip), 128)  # issue 19
            self._mode_config_received(event)
            self._apply_dns()
            if self.mode_config is not None:
                self.links.sync(self.peers, self.mode_config.address, self.clock())
                if self.links.links:
                    self._links_wanted.set()
                self._pin_peers()
        elif isinstance(event, ev.ChildSAEstablished):
            self.child_started[event.spi_in] = self.clock()
            if self.tunnel is not None:
                self.tunnel.child_established(event)
            self._child_established(event)
        elif isinstance(event, ev.PeerAddressChanged):
            if self.tunnel is not None:
                self.tunnel.peer_moved(event)  # ESP follows a gateway behind a NAT that moved
        elif isinstance(event, ev.ChildSADeleted):
            self.child_started.pop(event.spi_in, None)
            for name, child in list(self.established.items()):
                if child.spi_in == event.spi_in:
                    del self.established[name]
            if self.tunnel is not None:
                self._tunnel_child_deleted(event)
        elif isinstance(event, ev.ChildSAFailed):
            self._child_failed(event)
        elif isinstance(event, ev.TransactionFailed) and event.purpose == "modecfg":
            # a refused Mode Config request ends the login at once with what was refused,
            # instead of retransmitting until "stuck in Mode Config" (issue 16)
            self.fail("modecfg", f"{self.gateway_entry}: the Mode Config request was {event.reason}")
        elif isinstance(event, ev.IkeSADeleted) and self.result is None:
            self.progress.report("closed", f"ISAKMP SA deleted: {event.reason}", state="closed")
            if self._may_retry("closed"):
                self._connection_lost(f"ISAKMP SA deleted: {event.reason}")
                return None
            self._finish(EXIT_FAILED if event.by_peer else EXIT_OK, f"ISAKMP SA deleted: {event.reason}")
        return None

    def _plugin_settings(self) -> dict[str, dict[str, object]]:
        """A copy of the profile's ``[plugin.NAME]`` tables, for a plugin to read."""
        return {name: dict(table) for name, table in self.options.plugin_settings.items()}

    def _ours(self, event: ev.Event) -> bool:
        """Events of our ISAKMP SA (matched by our initiator cookie)."""
        return self.sa_id is not None and event.sa_id[:8] == self.sa_id[:8]

    def _phase1_established(self, event: ev.Phase1Established) -> None:
        self.phase1, self.phase1_at = event, self.clock()
        auth = event.suite.rsplit("/", 1)[-1]
        self.progress.report(
            "phase1",
            f"established with {event.peer[0]} ({event.exchange} mode) suite {event.suite}, "
            f"peer id {event.peer_id}",
            state="established",
            suite=event.suite,
            peer_id=event.peer_id,
            nat_local=event.nat_local,
            nat_remote=event.nat_remote,
        )
        if auth.startswith(("xauth", "hybrid")):
            self.stage = "XAUTH"
            self.progress.report("xauth", "waiting for the gateway's XAUTH request", state="waiting")
            return
        self._request_mode_config()

    async def _xauth_requested(self, event: ev.XauthRequested) -> None:
        assert self.sa_id is not None
        if event.message:
            self.progress.report("xauth", f"gateway says: {event.message}", state="message")
        if self.options.user is None:
            self.fail("xauth", "the gateway asks for XAUTH credentials but no --user was given")
            return
        if event.xauth_type not in (XauthType.GENERIC, XauthType.RADIUS_CHAP):
            known = event.xauth_type in set(XauthType)
            kind = XauthType(event.xauth_type).name if known else str(event.xauth_type)
            self.fail(
                "xauth",
                f"the gateway asks for XAUTH-TYPE {kind} (RFC 2289 one-time passwords), which tunvpn "
                "does not implement; a gateway can ask for a tokencode with XAUTH-TYPE Generic",
            )
            return
        if event.xauth_type == XauthType.RADIUS_CHAP:
            self.progress.report(
                "xauth", "RADIUS-CHAP: the password is answered with a CHAP response", state="chap"
            )
        self._xauth_rounds += 1
        self._stage_rounds += 1
        secret_fields = [f for f in event.fields if f in ("password", "passcode")]
        # the stored password answers the first round only: a later round (next tokencode,
        # a RADIUS challenge) asks for something new, which only the user knows
        secret = self.options.password if self._xauth_rounds == 1 and not self._protocols_waiting else None
        if self._rekeying is not None and "passcode" in event.fields:
            secret = None  # asked again: a one-time passcode is not the one stored (issue 15)
        first = self._xauth_rounds == 1 and not self._protocols_waiting
        secret = self._reconnect_secret(event, first, secret)
        if secret_fields and secret is None:
            label = event.message or f"XAUTH {secret_fields[0]} for {self.options.user}@{self.gateway_entry}"
            prompt = f"{label}: " if first or not event.message else f"{label} [{secret_fields[0]}]: "
            what = "a password" if first else f"a new {secret_fields[0]}"
            hint = (
                "give --password-file or set TUNVPN_PASSWORD"
                if first
                else f"({event.message or 'another round'}): run interactively"
            )
            if self._ever_up and "passcode" in event.fields:
                what, hint = (
                    "a new one-time passcode to reconnect",
                    "run interactively, or use a soft-token plugin",
                )
            secret = await self._answer(event, secret_fields[0], prompt, what, hint)
            if secret is None:
                return
            if first and secret_fields[0] == "password":
                self._typed_password = secret  # kept in memory: a reconnect logs in by itself
        unsupported = [
            f
            for f in event.fields
            if f not in ("user_name", "password", "passcode", "domain", *CHALLENGE_FIELDS)
        ]
        if unsupported:
            self.fail(
                "xauth", f"the gateway asks for {', '.join(unsupported)}, which tunvpn cannot answer yet"
            )
            return
        kwargs: dict[str, str | None] = {}
        if "password" in event.fields:
            kwargs["password"] = secret
        if "passcode" in event.fields:
            kwargs["passcode"] = secret
        for name in (f for f in event.fields if f in CHALLENGE_FIELDS):
            # a challenge (next tokencode, new PIN, a RADIUS Access-Challenge)
            what = CHALLENGE_FIELDS[name]
            prompt = f"{event.message or 'XAUTH'} [{what}]: "
            hint = f"({event.message or 'no message'}): run interactively"
            answer = await self._answer(event, name, prompt, what, hint)
            if answer is None:
                return
            kwargs[name] = answer
        try:
            self.engine.xauth_reply(event.sa_id, self.clock(), user_name=self.options.user, **kwargs)
        except LocalProtocolError as exc:
            self.fail("xauth", f"cannot answer XAUTH: {exc}")
            return
        self.progress.report("xauth", f"credentials of {self.options.user} sent", state="sent")

    async def _answer(
        self, event: ev.XauthRequested, name: str, prompt: str, what: str, hint: str
    ) -> str | None:
        """A plugin's answer (``tunvpn_client_answer``), else the user's at a prompt; None (and
        the client gives up, saying why) when neither can answer."""
        question = ClientQuestion(
            field=name,
            message=event.message,
            protocol=self._protocols_waiting[0] if self._protocols_waiting else None,
            user=self.options.user,
            gateway=self.gateway_entry,
            round=self._stage_rounds,
            plugin_settings=self._plugin_settings(),
        )
        try:
            answer = await self.plugins.client_answer(question)
        except Exception as exc:  # a broken plugin: the user can still answer
            log.error("a plugin failed to answer the gateway's %s: %s", name, exc)
            answer = None
        if answer is not None:
            self.progress.report("xauth", f"{what} given by a plugin", state="answered", field=name)
            return answer
        if not self.options.password_prompt:
            self.fail("xauth", f"the gateway asks for {what}: {hint}")
            return None
        try:
            # the prompt may be the gateway's XAUTH message: no control characters to the terminal
            safe_prompt = for_terminal(prompt)
            return await asyncio.get_running_loop().run_in_executor(None, self.ask_password, safe_prompt)
        except (EOFError, OSError) as exc:
            self.fail("xauth", f"cannot read {what}: {exc or 'no terminal'}")
            return None

    def _request_mode_config(self) -> None:
        assert self.sa_id is not None
        if not self.options.mode_config:
            self._start_quick_modes(None)
            return
        self.stage = "Mode Config"
        self.engine.request_mode_config(self.sa_id, self.clock())
        self.progress.report("modecfg", "requesting configuration", state="requested")

    def _mode_config_received(self, event: ev.ModeConfigReceived) -> None:
        config = event.config
        try:
            push = decode_policies(config.unknown)
            peers = decode_peers(config.unknown)
        except RemoteProtocolError as exc:
            self.fail("modecfg", f"the gateway's phase 2 policies are malformed: {exc}")
            return
        if peers is not None:
            self._peers_introduced(peers)
        if event.pushed and push is not None and self.mode_config is not None:
            self._network_attributes_pushed(config)
            self._policies_pushed(push, config)
            return
        self.mode_config = config
        self.progress.report(
            "modecfg",
            describe_mode_config(dataclasses.replace(config, banner=None)),
            state="received",
            address=config.address,
            split_include=config.split_include,
            subnets=config.subnets,
            dns=config.dns,
            **(
                {"address6": config.ip6_address.ip, "dns6": config.ip6_dns, "subnets6": config.ip6_subnets}
                if config.ip6_address is not None
                else {}
            ),
            pushed=event.pushed,
        )
        if config.banner:
            self.progress.report("banner", config.banner, state="received")
        if push is not None:
            self.policies = push.policies
            self.generation = push.generation
            for policy in push.policies:
                self.progress.report(
                    "policy",
                    policy.describe(),
                    state="received",
                    name=policy.name,
                    generation=self.generation,
                )
            if push.protocols and not self._extra_protocols(push):
                return
        if not self._quick_modes_started:
            self._start_quick_modes(event.config)

    def _apply_dns(self) -> None:
        """Point the resolver at the gateway's DNS servers (restored on exit, or by the next
        run after a crash)."""
        config = self.mode_config
        if self.tunnel is None or config is None or self.options.dns_backend is None:
            return
        from tunvpn.client.hostconfig import HostConfig, HostConfigError

        domains = tuple(d for d in (config.default_domain, *config.split_dns) if d)
        full = any(p.gateway_ts == TrafficSelector.any() for p in self.policies or ()) or (
            self.policies is None and ANY_IPV4 in protected_networks(config)
        )
        servers: tuple[IPv4Address | IPv6Address, ...] = (*config.dns, *config.ip6_dns)  # and IPv6 (issue 19)
        if not servers:
            return
        wanted = (tuple(servers), domains, not full)
        if wanted == self._dns_applied and self.hostconfig is not None:
            return  # a reconnect that got the same settings: the resolver stays as it is
        try:
            if self.hostconfig is None:
                self.hostconfig = HostConfig(self.tunnel.name, dns_backend=self.options.dns_backend)
            backend = self.hostconfig.apply_dns(servers, domains, split=not full)
            self._dns_applied = wanted
        except (HostConfigError, OSError) as exc:
            self.progress.report("dns", f"DNS not configured: {exc}", state="failed")
            return
        shown = ", ".join(map(str, servers)) + (f"; domains {', '.join(domains)}" if domains else "")
        self.progress.report(
            "dns",
            f"DNS {shown} via {backend}",
            state="configured",
            servers=servers,
            domains=domains,
            backend=backend,
        )

    def status(self) -> dict[str, object]:
        """What ``tunvpn status`` shows (schema in tunvpn/control/server.py)."""
        now = self.clock()
        snapshot = self.counters.snapshot()
        counters = sa_counters(snapshot)
        drops = sa_drops(snapshot)
        sas = [
            child_status(child, counters, now - self.child_started.get(child.spi_in, now), drops)
            for child in self.established.values()
        ]
        p1 = self.phase1
        config = self.mode_config
        tunnel = {
            "peer": f"{self.gateway_ip or self.gateway_entry}:"
            f"{p1.peer[1] if p1 else self.options.gateway_port}",
            "peer_id": p1.peer_id if p1 else None,
            "user": self.options.user,
            "groups": [],
            "address": str(config.address) if config is not None and config.address is not None else None,
            **(
                {"address6": str(config.ip6_address.ip)}
                if config is not None and config.ip6_address is not None
                else {}
            ),
            "tunvpn": p1 is not None and "tunvpn" in p1.peer_vendor_ids,
            "generation": self.generation,
            "stage": self.stage,
            "phase1": {
                "exchange": p1.exchange if p1 else self.options.mode,
                "suite": p1.suite if p1 else None,
                "established": self.phase1_at if p1 else None,
                "expires_in": self._expires_in(now),
            },
            "sas": sas,
            "protocols": [{"name": name, **state} for name, state in self._protocol_status.items()],
            "peers": [
                {
                    "name": p.name,
                    "address": str(p.address),
                    "endpoint": f"{p.endpoint[0]}:{p.endpoint[1]}",
                    "role": p.role.name.lower(),
                    **self.links.status(str(p.address), counters),
                }
                for p in self.peers.peers
            ],
        }
        return {
            "schema": 2,  # as the gateway's (tunvpn.gateway.daemon.STATUS_SCHEMA; docs/service.md)
            "role": "client",
            "build": build_kind(),
            "pid": os.getpid(),
            "started": self.started,
            "config": None,
            "generation": self.generation,
            "listen": self.local_ip,
            "busy_poll": busy_poll_status(snapshot),
            "policies": [p.describe() for p in self.policies or ()],
            "tunnels": [tunnel],
        }

    def _network_attributes_pushed(self, config: ModeConfig) -> None:
        """A CFG_SET's DNS servers, domains and banner replace ours (issue 18: a reload that
        changes them reaches connected clients; the handler then points the resolver at the
        new servers). Our address stays: a SET does not move it."""
        assert self.mode_config is not None
        old = self.mode_config
        new = dataclasses.replace(
            old,
            dns=config.dns,
            default_domain=config.default_domain,
            split_dns=config.split_dns,
            banner=config.banner,
        )
        if new == old:
            return
        self.mode_config = new
        changed = [
            name
            for name in ("dns", "default_domain", "split_dns", "banner")
            if getattr(new, name) != getattr(old, name)
        ]
        self.progress.report(
            "modecfg", f"gateway pushed new {', '.join(changed)}", state="updated", dns=new.dns
        )
        if new.banner and new.banner != old.banner:
            self.progress.report("banner", new.banner, state="received")

    def _peers_introduced(self, peers: PeerList) -> None:
        """The gateway's complete list of peers this client may reach directly (issue 17):
        kept for the direct tunnels and ``tunvpn status``; peers no longer listed are gone."""
        before = {p.address: p for p in self.peers.peers}
        after = {p.address: p for p in peers.peers}
        self.peers = peers
        for address, peer in after.items():
            if address not in before:
                self.progress.report(
                    "peer",
                    f"introduced to {peer.describe()}",
                    state="introduced",
                    name=peer.name,
                    address=str(peer.address),
                    endpoint=f"{peer.endpoint[0]}:{peer.endpoint[1]}",
                    role=peer.role.name.lower(),
                )
        for address, peer in before.items():
            if address not in after:
                self.progress.report(
                    "peer",
                    f"{peer.name} ({peer.address}) is no longer introduced",
                    state="gone",
                    name=peer.name,
                )

    def _expires_in(self, now: float) -> float | None:
        """Seconds until our ISAKMP SA's lifetime ends (it is rekeyed before), or None."""
        if self.sa_id is None:
            return None
        try:
            expires = self.engine.get_sa(self.sa_id).expires
        except LocalProtocolError:
            return None
        return None if expires is None else round(max(0.0, expires - now), 1)

    def _drop_root(self, keylog: KeyLog | None, control_socket: str | None = None) -> None:
        """Become ``run_as`` keeping CAP_NET_ADMIN (routes on the TUN device) and
        CAP_NET_BIND_SERVICE (IKE's port 500 bound again); with a TUN device, a helper started
        first stays root for DNS, the gateway's pin and the crash-recovery state
        (tunvpn.client.privhelper). No thread may run yet (drop_privileges checks)."""
        from tunvpn.client.hostconfig import default_resolv_conf, default_run_dir
        from tunvpn.client.privhelper import start_helper

        assert self.run_as is not None
        if keylog is not None:  # made by root above, appended to after the drop
            for path in (keylog.ike_path, keylog.esp_path):
                os.chown(path, self.run_as.uid, self.run_as.gid)
        if self.tunnel is not None:
            backend = self.options.dns_backend or "none"
            helper = start_helper(
                self.tunnel.name,
                backend,
                default_run_dir(),
                default_resolv_conf(),
                control_socket=control_socket,  # root's directory: the helper removes it at the end
            )
            self._privhelper = helper
            self.hostconfig = helper
        try:
            drop_privileges(self.run_as)
        except BaseException:
            if self._privhelper is not None:
                self._privhelper.close()
                self._privhelper = self.hostconfig = None
            raise
        if self._privhelper is not None:
            self.progress.report(
                "privileges",
                f"running as {self.run_as.name}; DNS and the gateway's pin through the privileged "
                f"helper (pid {self._privhelper.pid})",
                state="dropped",
                user=self.run_as.name,
                helper=self._privhelper.pid,
            )

    def _cleanup_stale(self) -> None:
        """Undo what an earlier run that crashed left behind (DNS, routes)."""
        from tunvpn.client.hostconfig import HostConfigError, cleanup_stale

        try:
            undone = cleanup_stale()
        except (HostConfigError, OSError) as exc:
            log.warning("cannot check for leftovers of an earlier run: %s", exc)
            return
        for line in undone:
            self.progress.report("cleanup", line, state="restored")

    async def _start_control(self) -> ControlServer | None:
        path = self.options.control_socket
        if path is None:
            return None
        from tunvpn.control.server import ControlError, ControlServer, default_socket_path

        if path == "auto":
            name = self.tunnel.name if self.tunnel is not None else None
            path = str(default_socket_path("client", name))
        server = ControlServer(path, self._control)
        try:
            await server.start()
        except (ControlError, OSError, ValueError) as exc:
            log.warning("no control socket (tunvpn status will not reach this client): %s", exc)
            return None
        return server

    def _control(self, command: str, args: dict[str, object]) -> object:
        from tunvpn.control.server import ControlError

        if command == "status":
            return self.status()
        raise ControlError(f"unknown command {command!r} (a client knows: status)")

    def _extra_protocols(self, push: PolicyPush) -> bool:
        """Protocols the gateway requires (seed paragraph 0030). Those it announces with
        ``exchange=xauth`` are XAUTH rounds after Mode Config, answered by a plugin or the user
        at a prompt; Quick Mode waits until the gateway accepted the last of them. The others
        (``exchange=l2tp``, ...) need a client plugin (``tunvpn_client_protocol``): it adds its
        phase 2 policies to the Quick Mode set and runs once they are up.
        Returns True when Quick Mode may start now."""
        names = ", ".join(p.name for p in push.protocols)
        self._protocols_waiting = [p.name for p in push.protocols if p.param("exchange") == "xauth"]
        self._login_protocols = tuple(self._protocols_waiting)
        other = [p for p in push.protocols if p.param("exchange") != "xauth"]
        self._stage_rounds = 0
        self.stage = "extra protocols"
        self.progress.report(
            "protocols",
            f"the gateway requires {names}",
            state="required",
            protocols=[p.name for p in push.protocols],
        )
        if other:
            self._resolving = True
            task = asyncio.get_running_loop().create_task(self._resolve_protocols(other))
            self._protocol_tasks.append(task)
            return False
        return not self._protocols_waiting

    async def _resolve_protocols(self, protocols: list[ExtraProtocol]) -> None:
        """Ask the client plugins who handles each protocol that is not an XAUTH round."""
        for protocol in protocols:
            try:
                handler = await self.plugins.client_protocol(protocol, self._plugin_settings())
            except Exception as exc:
                self.fail("protocols", f"the plugin for {protocol.name!r} failed: {exc}")
                return
            if handler is None:
                loaded = f" (loaded: {', '.join(self.plugins.names)})" if self.plugins.names else ""
                advice = install_advice(protocol.name, "the profile's plugins")  # no pip for unknown names
                self.fail(
                    "protocols",
                    f"the gateway requires {quoted(protocol.name)}; no loaded plugin handles it: "
                    f"{advice}{loaded}",
                )
                return
            self._handlers.append((protocol, handler))
            extra = ", ".join(p.name for p in handler.policies) or "none"
            self.progress.report(
                "protocols",
                f"{protocol.name}: handled by plugin {handler.name} (adds SAs: {extra})",
                state="handled",
                name=protocol.name,
            )
        self._resolving = False
        if not self._protocols_waiting and not self._quick_modes_started and self.result is None:
            self._start_quick_modes(self.mode_config)
            if self.driver is not None:
                self.driver.flush()

    def _protocol_policies(self) -> tuple[Phase2Policy, ...]:
        return tuple(p for _, handler in self._handlers for p in handler.policies)

    def _run_protocols(self) -> None:
        """Every SA is up: start the protocols that client plugins run (once)."""
        if not self._handlers or any(t.get_name().startswith("protocol ") for t in self._protocol_tasks):
            return
        config = self.mode_config
        address = config.address if config is not None and isinstance(config.address, IPv4Address) else None
        loop = asyncio.get_running_loop()
        for protocol, handler in self._handlers:
            if handler.run is None:
                continue
            self._protocol_status[protocol.name] = {"state": "starting", "message": ""}
            session = ClientSession(
                protocol=protocol,
                gateway=self.gateway_ip,
                address=address,
                user=self.options.user,
                password=self.options.password,
                plugin_settings=self._plugin_settings(),
                report=self._protocol_reporter(protocol.name),
                prompt=self._prompt,
            )
            task = loop.create_task(
                self._run_protocol(protocol, handler, session), name=f"protocol {protocol.name}"
            )
            self._protocol_tasks.append(task)

    async def _run_protocol(
        self, protocol: ExtraProtocol, handler: ClientProtocol, session: ClientSession
    ) -> None:
        assert handler.run is not None
        try:
            await handler.run(session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._protocol_status[protocol.name] = {"state": "failed", "message": str(exc)}
            self.fail("protocols", f"{protocol.name}: {exc}")
            if self.driver is not None:
                self.driver.flush()
            return
        if self.result is None:
            self.progress.report("protocols", f"{protocol.name} ended", state="closed", name=protocol.name)

    def _protocol_reporter(self, name: str) -> Callable[..., None]:
        """A plugin's ``report``: a progress line, also kept as the protocol's status."""

        def report(step: str, text: str, **fields: object) -> None:
            self._protocol_status[name] = {"state": str(fields.get("state", step)), "message": text}
            self.progress.report(step, text, **fields)

        return report

    async def _prompt(self, text: str, secret: bool = True) -> str:
        return await asyncio.to_thread(self.ask_password, text)

    async def _stop_protocols(self) -> None:
        """Cancel the plugins' protocols and let them say goodbye while the SAs are still up."""
        tasks, self._protocol_tasks = self._protocol_tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)

    def _protocol_passed(self) -> None:
        name = self._protocols_waiting.pop(0)
        self._stage_rounds = 0
        self.progress.report("protocols", f"{name} passed", state="ok", name=name)
        if not self._protocols_waiting and not self._resolving and not self._quick_modes_started:
            self._start_quick_modes(self.mode_config)

    def _policies_pushed(self, push: PolicyPush, config: ModeConfig) -> None:
        """The gateway changed its configuration (CFG_SET, already acknowledged): build the
        added SAs, rebuild the changed ones (make-before-break), delete the removed ones,
        and leave the unchanged ones and their traffic alone."""
        assert self.sa_id is not None
        old = self.policies or ()
        d = diff_policies(old, push.policies)
        self.policies = push.policies
        self.generation = push.generation
        self.progress.report(
            "update",
            f"gateway pushed policy generation {push.generation}: {len(d.added)} added, "
            f"{len(d.changed)} changed, {len(d.removed)} removed, {len(d.unchanged)} unchanged",
            state="received",
            generation=push.generation,
            added=[p.name for p in d.added],
            changed=[p.name for p in d.changed],
            removed=[p.name for p in d.removed],
            unchanged=[p.name for p in d.unchanged],
        )
        for policy in d.removed:
            child = self.established.pop(policy.name, None)
            self.pending.pop(policy.name, None)
            if child is None:
                continue
            self._removing.add(child.spi_in)  # its route goes with it (no hold)
            try:
                self.engine.delete_child(self.sa_id, child.spi_in, self.clock())
            except LocalProtocolError:
                pass  # the gateway deleted it already
            self.progress.report("quick", f"{policy.name} removed", state="deleted", name=policy.name)
        for policy in (*d.added, *d.changed):
            self._start_policy(policy, self._local_selector(self.mode_config))

    def _local_selector(self, config: ModeConfig | None) -> TrafficSelector:
        address = config.address if config is not None else None
        own = str(address) if isinstance(address, IPv4Address) else self.local_ip
        return TrafficSelector.from_address(own)

    def _start_policy(self, policy: Phase2Policy, assigned: TrafficSelector) -> bool:
        assert self.sa_id is not None
        remote = policy.gateway_ts
        if policy.client_ts is None and remote.version != assigned.version:
            # an IPv6 policy (issue 19): our end is the IPv6 address Mode Config gave us
            own6 = self.mode_config.ip6_address if self.mode_config is not None else None
            if own6 is None or remote.version != 6:
                self.progress.report(
                    "quick",
                    f"{policy.name}: {remote} is IPv{remote.version} and the gateway gave us no address "
                    "of that family: skipped",
                    state="skipped",
                    name=policy.name,
                )
                return True
            assigned = TrafficSelector.from_address(str(own6.ip))
        local = policy.client_ts or assigned
        if policy.client_ts is None and remote.protocol:
            # a protocol-narrowed SA (L2TP's UDP 1701): our side names the same protocol
            local = TrafficSelector(assigned.start, assigned.end, remote.protocol, 0)
        self.pending[policy.name] = remote
        try:
            self.engine.start_child(
                self.sa_id, self.clock(), local, remote, policy.initiator_proposal(), name=policy.name
            )
        except LocalProtocolError as exc:
            self.fail("quick", f"cannot start Quick Mode {policy.name}: {exc}")
            return False
        self.progress.report(
            "quick",
            f"{policy.name}: {local} === {remote} ({policy.suite})",
            state="started",
            name=policy.name,
            local_ts=local,
            remote_ts=remote,
        )
        return True

    def proposal_for(self, name: str) -> ChildProposal:
        """The Quick Mode proposal of a policy (to rekey it); on the fallback path the PFS
        choice the gateway took."""
        for policy in (*(self.policies or ()), *self._protocol_policies()):
            if policy.name == name:
                return policy.initiator_proposal()
        for link in self.links.links.values():
            if name in (link.name, link.relay_name) and self.links.own is not None:
                return pair_policy(link.intro, self.links.own).proposal
        return child_proposal(self.options, self._fallback_pfs(name))

    def _fallback_pfs(self, name: str) -> DHGroup | None:
        """The PFS choice to offer for fallback Quick Mode ``name``: the one that worked for an
        earlier SA, else the next untried one (issue 16)."""
        if self._pfs_worked is not None:
            return self._pfs_worked[0]
        choices = pfs_choices(self.options)
        return choices[min(self._pfs_tried.get(name, 0), len(choices) - 1)]

    def _start_fallback(self, name: str, local: TrafficSelector, remote: TrafficSelector) -> bool:
        assert self.sa_id is not None
        proposal = child_proposal(self.options, self._fallback_pfs(name))
        self.pending[name] = remote
        try:
            self.engine.start_child(self.sa_id, self.clock(), local, remote, proposal, name=name)
        except LocalProtocolError as exc:
            self.fail("quick", f"cannot start Quick Mode {local} === {remote}: {exc}")
            return False
        pfs = proposal.pfs_group.name.lower() if proposal.pfs_group is not None else "none"
        self.progress.report(
            "quick", f"{local} === {remote} (pfs {pfs})", state="started", local_ts=local, remote_ts=remote
        )
        return True

    def _retry_fallback(self, event: ev.ChildSAFailed) -> bool:
        """A fallback Quick Mode refused with a verified NO-PROPOSAL-CHOSEN: offer the next PFS
        choice (True), unless none is left or one already worked for another SA."""
        name = event.policy_name
        if (
            event.notify != NotifyType.NO_PROPOSAL_CHOSEN
            or name not in self._fallback_selectors
            or self._pfs_worked is not None
        ):
            return False
        tried = self._pfs_tried.get(name, 0) + 1
        choices = pfs_choices(self.options)
        if tried >= len(choices):
            return False
        self._pfs_tried[name] = tried
        refused, offered = choices[tried - 1], choices[tried]
        log.info(
            "Quick Mode %s: the gateway refused PFS %s; offering %s",
            name,
            refused.name.lower() if refused is not None else "none",
            offered.name.lower() if offered is not None else "none",
        )
        local, remote = self._fallback_selectors[name]
        return self._start_fallback(name, local, remote)

    def _start_quick_modes(self, config: ModeConfig | None) -> None:
        assert self.sa_id is not None
        self._quick_modes_started = True
        self.stage = "Quick Mode"
        local = self._local_selector(config)
        if self.policies is not None:
            wanted = (*self.policies, *self._protocol_policies())
            if not wanted:
                self.fail("quick", "the gateway pushed no phase 2 policy for this user")
                return
            for policy in wanted:
                if not self._start_policy(policy, local):
                    return
            return
        for net in protected_networks(config):
            remote = TrafficSelector.from_network(net)
            name = f"{local}==={remote}"
            self._fallback_selectors[name] = (local, remote)
            if not self._start_fallback(name, local, remote):
                return

    def _child_established(self, event: ev.ChildSAEstablished) -> None:
        name = event.policy_name or f"{event.local_ts}==={event.remote_ts}"
        self.pending.pop(name, None)
        if name in self._fallback_selectors and self._pfs_worked is None:
            self._pfs_worked = (DHGroup(event.pfs_group) if event.pfs_group else None,)
        self.established[name] = event
        suite = esp_suite_name(event.transform, event.key_length, event.integrity)
        self.progress.report(
            "quick",
            f"{event.local_ts} === {event.remote_ts} established: {suite} "
            f"spi_in=0x{event.spi_in:08x} spi_out=0x{event.spi_out:08x}",
            state="established",
            name=name,
            local_ts=event.local_ts,
            remote_ts=event.remote_ts,
            esp=suite,
            spi_in=f"0x{event.spi_in:08x}",
            spi_out=f"0x{event.spi_out:08x}",
            pfs_group=event.pfs_group,
            encapsulation=event.encapsulation,
            esn=event.esn,
        )
        if not self.pending:
            self.progress.report(
                "established",
                f"{len(self.established)} IPsec SA pair(s) up",
                state="up",
                count=len(self.established),
            )
            if self._on_up is not None:
                self._on_up()
            sdnotify.ready(f"tunnel up: {len(self.established)} IPsec SA pair(s)")
            self._run_protocols()
            if self.options.exit_after_established:
                self.close("client done (--exit-after-established)")
                self._finish(EXIT_OK, "established")

    def _child_failed(self, event: ev.ChildSAFailed) -> None:
        name = event.policy_name
        self.pending.pop(name, None)
        if self._retry_fallback(event):
            return
        notify = f" (notify {event.notify})" if event.notify is not None else ""
        if name in self._fallback_selectors and event.notify == NotifyType.NO_PROPOSAL_CHOSEN:
            tried = ", ".join(g.name.lower() if g is not None else "none" for g in pfs_choices(self.options))
            self.fail(
                "quick",
                f"the gateway refused Quick Mode {name} (NO_PROPOSAL_CHOSEN): none of our ESP suites "
                f"with any of the PFS choices we offer (tried {tried}) is allowed there",
            )
            return
        self.fail("quick", f"Quick Mode {name or ''} failed: {event.reason}{notify}".replace("  ", " "))

    # ------------------------------------------------------------------ running

    async def run(self, *, handle_signals: bool = True) -> int:
        """Connect, keep the SAs until a signal (or until established with --exit-after-established)."""
        keylog = None
        if self.options.keylog:
            from tunvpn.keylog import KeyLog

            keylog = KeyLog(self.options.keylog)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        up = asyncio.Event()
        self._on_finish = done.set
        self._on_up = up.set
        if self.options.tun is not None:  # DNS and the gateway's pinned route (issue 15)
            self._cleanup_stale()
        if self.options.tun is not None and self.tunnel is None:
            from tunvpn.client.holdtunnel import HoldingTunnel
            from tunvpn.dataplane.busypoll import busy_poll_limit_us

            self.tunnel = HoldingTunnel(
                self.engine,
                name=self.options.tun,
                mtu=self.options.mtu,
                proposal_for=self.proposal_for,
                busy_poll_us=busy_poll_limit_us(self.options.busy_poll_us),
            )
            self.tunnel.before_routes = self._pin_gateway
            self.progress.report("tunnel", f"TUN device {self.tunnel.name} ready", state="ready")
        driver = UdpDriver(
            self.engine,
            self.local_ip,
            ike_port=self.options.ike_port,
            natt_port=self.options.natt_port,
            handler=self.handle_event,
            natt_owner=self.tunnel.dataplane if self.tunnel is not None else None,
            keylog=keylog,
            clock=self.clock,
        )
        self.driver = driver
        try:
            await driver.start()
        except BaseException:
            if self.tunnel is not None:
                self.tunnel.close()
            raise
        control = await self._start_control()  # still root: the socket goes in root's /run/tunvpn
        if self.run_as is not None:  # before the data thread, asyncio's executor and the plugins
            try:
                self._drop_root(keylog, str(control.path) if control is not None else None)
            except BaseException:
                driver.close()
                if control is not None:
                    control.close()
                if self.tunnel is not None:
                    self.tunnel.close()
                raise
        if self.tunnel is not None:
            self.tunnel.on_change = driver.flush
            self.tunnel.start(loop)
        watcher = AddressWatcher(self._address_changed) if self.options.roaming else None
        if watcher is not None and watcher.start(loop) and self.gateway_ip:
            path = await asyncio.to_thread(route_path, self.gateway_ip)
            self._route_path = (self.gateway_ip, path) if path is not None else None
        crls = loop.create_task(keep_crls_fresh(lambda: self.engine.config), name="CRL distribution points")
        links = loop.create_task(self._tick_links(driver), name="direct tunnels")
        watchdog = sdnotify.start_watchdog(loop, self.tunnel.dataplane if self.tunnel is not None else None)

        async def stop(signame: str) -> None:
            await self._stop_protocols()  # first: an L2TP StopCCN still goes through the SAs
            if self.result is None:
                self.progress.report("closed", f"{signame}: deleting the SAs", state="closing")
                self.close(f"client stopped ({signame})")
                driver.flush()
                self._finish(EXIT_OK, signame)

        stopping: list[asyncio.Task[None]] = []

        def on_signal(signame: str) -> None:
            if self.result is None and not stopping:
                sdnotify.stopping(f"{signame}: deleting the SAs")
                stopping.append(loop.create_task(stop(signame)))

        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            if self.options.reconnect:
                self._lost = asyncio.Event()
                await self._stay_connected(up, done)
                return self._result_after_run()
            if not self.gateway_ip:
                try:
                    self.gateway_ip = (
                        await self.resolver.addresses(self.gateway_entry, self.options.gateway_port)
                    )[0]
                except OSError as exc:
                    self.fail("phase1", str(exc))
                    return self._result_after_run()
            self.start()
            driver.flush()
            up_waiter = asyncio.ensure_future(up.wait())
            done_waiter = asyncio.ensure_future(done.wait())
            finished, _ = await asyncio.wait(
                {up_waiter, done_waiter},
                timeout=self.options.timeout or None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            up_waiter.cancel()
            done_waiter.cancel()
            if not finished:
                self.fail("timeout", f"no tunnel after {self.options.timeout:.0f}s (stuck in {self.stage})")
            if self.result is None:
                await done.wait()
        finally:
            crls.cancel()
            links.cancel()
            if watchdog is not None:
                watchdog.cancel()
            if watcher is not None:
                watcher.close()
            await self._stop_protocols()
            driver.flush()
            for sig in signals:
                loop.remove_signal_handler(sig)
            driver.close()
            if control is not None:
                try:
                    control.close()
                except PermissionError:  # dropped root: the socket file stays in root's /run/tunvpn
                    pass
            if self.hostconfig is not None:
                try:
                    self.hostconfig.restore()
                except Exception as exc:  # the tunnel must still go away
                    log.warning("restoring DNS failed: %s", exc)
                self.hostconfig = None
            if self._privhelper is not None:
                self._privhelper.close()  # it undoes anything left, then exits
                self._privhelper = None
            if self.tunnel is not None:
                self.tunnel.close()
        return self._result_after_run()

    async def _tick_links(self, driver: UdpDriver) -> None:
        """The direct tunnels' timer (tunvpn.client.peerlinks): keepalives toward a peer that
        will start, our own start, retries. Asleep while no peer is introduced."""
        while True:
            if not self.links.links:
                self._links_wanted.clear()
                await self._links_wanted.wait()
            await asyncio.sleep(peerlinks.TICK)
            self.links.tick(self.clock())
            driver.flush()

    def _punch(self, remote: tuple[str, int], ttl: int) -> None:
        if self.driver is not None:
            self.driver.punch(remote, ttl)

    def _peer_child_up(self, event: ev.ChildSAEstablished) -> None:
        """An SA pair with an introduced peer: into the data path, its address into the TUN."""
        self.child_started[event.spi_in] = self.clock()
        if self.tunnel is not None:
            self.tunnel.child_established(event)

    def _peer_child_gone(self, event: ev.ChildSADeleted) -> None:
        self.child_started.pop(event.spi_in, None)
        if self.tunnel is not None:
            self.tunnel.child_deleted(event)

    def _result_after_run(self) -> int:
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ staying connected

    async def _stay_connected(self, up: asyncio.Event, done: asyncio.Event) -> None:
        """Reconnect mode: rounds of attempts over every gateway and every address its name
        has (in order) until one is up; hold it until it is lost (DPD found the gateway dead,
        it deleted our ISAKMP SA, the SA expired), then start over at once. A round in which
        every gateway failed is followed by a back-off (``backoff_delay``). Ends when the
        client is stopped or a failure that a retry cannot mend (``NO_RETRY_STEPS``)."""
        assert self._lost is not None
        watcher = asyncio.get_running_loop().create_task(self._watch_traffic(), name="traffic watch")
        try:
            await self._reconnect_rounds(up, done)
        finally:
            watcher.cancel()

    async def _watch_traffic(self) -> None:
        """Once a second: if ESP went out and nothing came in for ``WORRY_AFTER`` seconds, ask
        R-U-THERE now and give the gateway ``WORRY_WITHIN`` seconds to answer (anything heard
        counts: IKE or authenticated ESP). An idle tunnel keeps the slower DPD defaults."""
        last: tuple[int, int] | None = None
        seen = -1
        silent = 0
        while True:
            await asyncio.sleep(1.0)
            tunnel, sa_id = self.tunnel, self.sa_id
            if tunnel is None or sa_id is None or not self.established or self.pending:
                last, silent = None, 0
                continue
            activity = tunnel.dataplane.activity
            if last is not None and activity == seen:
                silent = 0  # nothing moved either way: idle, not unanswered (no snapshot needed)
                continue
            seen = activity
            counters = sa_counters(await asyncio.to_thread(tunnel.dataplane.counter_snapshot))
            sent = sum(counters.get(c.spi_out, (0, 0))[1] for c in self.established.values())
            received = sum(counters.get(c.spi_in, (0, 0))[1] for c in self.established.values())
            if last is not None and sent > last[0] and received == last[1]:
                silent += 1
            else:
                silent = 0
            last = (sent, received)
            if silent >= WORRY_AFTER and self.sa_id == sa_id:
                silent = 0
                log.info("traffic to %s gets no answer: DPD probe now", self.gateway_entry)
                self.engine.probe_peer(sa_id, self.clock(), WORRY_WITHIN)
                if self.driver is not None:
                    self.driver.flush()

    async def _reconnect_rounds(self, up: asyncio.Event, done: asyncio.Event) -> None:
        assert self._lost is not None
        failures = 0
        order = list(self.options.gateways)
        while self.result is None:
            errors: list[str] = []
            connected = False
            refusals = attempts = silent = 0
            for entry in list(order):
                try:
                    addresses = await self.resolver.addresses(
                        entry, self.options.gateway_port, cached_only=self._dns_into_tunnel()
                    )
                except OSError as exc:
                    errors.append(str(exc))
                    self.progress.report("reconnect", str(exc), state="failed", name=entry)
                    continue
                for address in addresses:
                    reason = await self._attempt(entry, address, up, done)
                    attempts += 1
                    refusals += self._refused
                    silent += self._silent
                    if self.result is not None:
                        return
                    if reason is None:
                        connected = True
                        break
                    where = address if entry == address else f"{entry} ({address})"
                    errors.append(f"{where}: {reason}")
                if connected:
                    break
            if self.result is not None:
                return
            if connected:
                failures = 0
                self._ever_up = True
                await _first_set((self._lost, done))
                if self.result is not None:
                    return
                if len(order) > 1 and self.gateway_entry in order:
                    # the gateway we lost is tried last: most often it is down (failover)
                    order.remove(self.gateway_entry)
                    order.append(self.gateway_entry)
                self.progress.report(
                    "reconnect",
                    f"connection to {self.gateway_entry} lost ({self._lost_reason}); reconnecting, "
                    "the tunnel's routes stay on the TUN device meanwhile",
                    state="lost",
                    name=self.gateway_entry,
                    reason=self._lost_reason,
                )
                continue
            if attempts and refusals == attempts and not self._ever_up:
                # every gateway refused this configuration: say so and exit, as before
                self._finish(EXIT_FAILED, "; ".join(errors))
                return
            failures += 1
            delay = round_delay(failures, silent=silent == attempts)
            self.stage = f"reconnecting: no gateway reachable, next round in {delay:.0f} s"
            self.progress.report(
                "reconnect",
                f"no gateway reachable ({'; '.join(errors)}); next round in {delay:.1f} s",
                state="waiting",
                delay=round(delay, 3),
                errors=errors,
            )
            await _first_set((done,), timeout=delay)

    async def _attempt(self, entry: str, address: str, up: asyncio.Event, done: asyncio.Event) -> str | None:
        """One login to ``address`` (of gateway ``entry``): None when every SA is up, else why
        it failed (its SAs are deleted by then)."""
        assert self._lost is not None and self.driver is not None
        await self._end_attempt()
        self._reset_connection(entry, address)
        if self.tunnel is not None:  # held routes may cover this gateway: the pin follows it
            self._pin_gateway(self.tunnel.routed())
        up.clear()
        try:
            self.start()
        except (LocalProtocolError, ValueError) as exc:  # e.g. an address of the other family
            self.progress.report("reconnect", f"{entry} ({address}): {exc}", state="failed", name=entry)
            return str(exc)
        self.driver.flush()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if self.result is not None:
                return "stopped"
            if up.is_set():
                if isinstance(self.tunnel, _holding_tunnel_type()):
                    stale = self.tunnel.release_held()
                    self._guard_ipv6()
                    if stale:
                        self.progress.report(
                            "reconnect",
                            f"routes no longer pushed removed: {', '.join(stale)}",
                            state="routes",
                        )
                return None
            if self._lost.is_set():
                return self._lost_reason or "failed"
            elapsed = loop.time() - started
            unanswered = self.sa_id is None or self.sa_id[8:] == bytes(8)
            if unanswered and elapsed >= NO_ANSWER_AFTER:
                self._silent = True
                self._give_up_attempt(f"no answer within {NO_ANSWER_AFTER:.0f} s")
            elif self.options.timeout and elapsed >= self.options.timeout:
                self._give_up_attempt(f"no tunnel after {self.options.timeout:.0f} s (stuck in {self.stage})")
            else:
                await _first_set((up, self._lost, done), timeout=0.25)

    def _reconnect_secret(self, event: ev.XauthRequested, first: bool, secret: str | None) -> str | None:
        """The first round's secret when reconnecting: a password typed at the first login is
        given again; a one-time passcode is never replayed (asked again: plugin or user)."""
        if self._ever_up and "passcode" in event.fields:
            return None
        if first and secret is None and "password" in event.fields:
            secret = self._typed_password
        self._replayed = self._ever_up and first and secret is not None
        return secret

    def _xauth_rejected(self, message: str) -> None:
        """The gateway refused our XAUTH answer. Not retried (the account would lock), except
        once when reconnecting gave the first login's typed password again (a PIN and
        tokencode cannot be used twice): the next attempt asks the user."""
        if self._replayed and self._typed_password is not None and self.options.password_prompt:
            self._typed_password = None
            self.fail(
                "reconnect", f"{message} (the first login's password, given again): asking for a new one"
            )
            return
        if self._replayed:
            message += (
                " (the password of the first login, given again to reconnect: a one-time code "
                "cannot be used twice; run interactively, or use a soft-token plugin)"
            )
        self.fail("xauth", message)

    def stop(self, reason: str = "stopped") -> None:
        """End the client and its reconnecting: delete the SAs; :meth:`run` returns 0."""
        self._finish(EXIT_OK, reason)  # first: the Delete then starts no reconnect
        self.close(reason)
        if self.driver is not None:
            self.driver.flush()

    def _give_up_attempt(self, reason: str) -> None:
        self.progress.report(
            "reconnect", f"{self.gateway_entry}: {reason}", state="failed", name=self.gateway_entry
        )
        self.close(reason)
        if self.driver is not None:
            self.driver.flush()
        self._connection_lost(reason)

    async def _end_attempt(self) -> None:
        """Before the next attempt: the plugins' protocols stopped, the old ISAKMP SA gone."""
        await self._stop_protocols()
        if self.sa_id is not None and self._sa_alive(self.sa_id):
            self.close("reconnecting")
        if self.driver is not None:
            self.driver.flush()

    def _reset_connection(self, entry: str, address: str) -> None:
        """Forget the last connection's state (not the TUN device, its routes or DNS)."""
        self.gateway_entry, self.gateway_ip = entry, address
        expected = self.options.expected_for(entry)
        if self.engine.config.remote_id != expected:  # remote_id defaults to the entry as written
            self.engine.config = dataclasses.replace(self.engine.config, remote_id=expected)
        self.sa_id = None
        self.phase1 = self._rekey_phase1 = None
        self.mode_config = None
        self.policies = None
        self.generation = 0
        self.pending.clear()
        self.established.clear()
        self._fallback_selectors.clear()
        self._pfs_tried.clear()
        self.child_started.clear()
        self._quick_modes_started = False
        self._xauth_rounds = self._stage_rounds = 0
        self._protocols_waiting = []
        self._handlers = []
        self._resolving = False
        self._protocol_status = {}
        self.stage = "phase 1"
        self._rekeying = None  # a phase 1 rekey of the lost connection is over too
        self._replayed = False
        self._lost_reason = None
        self._refused = False
        self._silent = False
        if self._lost is not None:
            self._lost.clear()

    async def _address_changed(self) -> None:
        """Addresses or routes changed (tunvpn.client.roaming): if the way to the gateway now
        leaves from another address of ours, move both sockets there; if it leaves through
        another next hop or interface (another network, maybe behind another NAT, with the
        same address), keep them. Either way, with SAs up, send a DPD R-U-THERE at once. The
        gateway sees us behind a NAT (a data path forces UDP encapsulation) and follows an
        authenticated message to a new address (issue 12), ESP with it; our next ESP packet
        leaves from the new address too. No answer within ``ROAM_WITHIN``: the gateway
        counts as dead and the reconnect loop logs in again."""
        gateway = self.gateway_ip
        if self.driver is None or self.result is not None or not gateway:
            return
        if not self._refresh_pin():  # a full tunnel's gateway: no way to it outside the tunnel now
            return
        path = await asyncio.to_thread(route_path, gateway)
        if path is None or self.driver is None or self.result is not None or gateway != self.gateway_ip:
            return  # no route now (the old address went first): the next change tells
        before, self._route_path = self._route_path, (gateway, path)
        old, new = self.local_ip, path.source
        if new == old and (before is None or before == (gateway, path)):
            return  # nothing that matters (our own TUN device and routes, say)
        if new != old:
            try:
                self.driver.rebind(new)
            except OSError as exc:
                self.progress.report("roam", f"cannot move from {old} to {new}: {exc}", state="failed")
                self._route_path = before
                return
            self.local_ip = new
            self.links.local = (new, self.options.natt_port)
        sa_id = self.sa_id
        probe = sa_id is not None and bool(self.established) and self._sa_alive(sa_id)
        what = f"our address changed from {old} to {new}" if new != old else f"another way out from {new}"
        self.progress.report(
            "roam",
            what + (": DPD R-U-THERE from there moves the SAs" if probe else ""),
            state="moved",
            old=old,
            new=new,
            via=path.via,
        )
        if probe and sa_id is not None:
            self.engine.probe_peer(sa_id, self.clock(), ROAM_WITHIN)
        self.driver.flush()

    def _sa_alive(self, sa_id: bytes) -> bool:
        try:
            self.engine.get_sa(sa_id)
        except LocalProtocolError:
            return False
        return True

    def _tunnel_child_deleted(self, event: ev.ChildSADeleted) -> None:
        """An SA pair is gone. A reconnecting client keeps its routes on the TUN device (the
        gateway is dead, going away, or the SA ended without a rekey): the tunnel's traffic is
        dropped there instead of leaving on the plain network (no leak while down). The next
        connection that is up removes those it does not use; a policy the gateway's push
        removed loses its route at once."""
        assert self.tunnel is not None
        # a gateway going away deletes each IPsec SA, then the ISAKMP SA, in separate messages:
        # every deletion holds its routes, except the ones a pushed policy change removed
        removed = event.spi_in in self._removing
        self._removing.discard(event.spi_in)
        hold = self.options.reconnect and self.result is None and not removed
        if isinstance(self.tunnel, _holding_tunnel_type()):
            self.tunnel.child_deleted(event, hold=hold)
        else:
            self.tunnel.child_deleted(event)
        self._guard_ipv6()  # a full tunnel's routes gone: IPv6 is the host's again

    def _pin_peers(self, networks: list[str] | None = None) -> None:
        """Keep the introduced peers' endpoints outside the tunnel where its routes (or
        ``networks``, about to be routed) cover them: a full tunnel would send our direct
        IKE and ESP to them into the TUN device (issue 17). Gone peers' pins are removed."""
        from tunvpn.client.hostconfig import HostConfig, HostConfigError, routes_cover

        if self.tunnel is None:
            return
        routed = [*self.tunnel.routed(), *(networks or [])]
        wanted = {link.intro.endpoint[0] for link in self.links.links.values()}
        try:
            for address in sorted(self._peer_pins - wanted):
                if self.hostconfig is not None:
                    self.hostconfig.unpin_peer(address)
                self._peer_pins.discard(address)
            for address in sorted(wanted - self._peer_pins):
                if address == self.gateway_ip or not routes_cover(routed, address):
                    continue
                if self.hostconfig is None:
                    self.hostconfig = HostConfig(
                        self.tunnel.name, dns_backend=self.options.dns_backend or "none"
                    )
                pinned = self.hostconfig.pin_peer(address, avoid_dev=self.tunnel.name)
                self._peer_pins.add(address)
                if pinned is not None:
                    self.progress.report(
                        "routes", f"{pinned}: a peer stays outside the tunnel", state="pinned"
                    )
        except (HostConfigError, OSError) as exc:
            self.progress.report("routes", f"cannot keep peers outside the tunnel: {exc}", state="failed")

    def _ipv6_block_wanted(self, networks: Sequence[str] = ()) -> bool:
        """Whether the tunnel's routes (and ``networks``, about to be routed) cover all of IPv4
        and none carries IPv6: then the host's IPv6 would go around the tunnel (issue 19)."""
        if self.tunnel is None or not self.options.block_ipv6:
            return False
        routed = [ipaddress.ip_network(n, strict=False) for n in (*self.tunnel.routed(), *networks)]
        v4 = [n for n in routed if n.version == 4]
        full = sum(n.num_addresses for n in ipaddress.collapse_addresses(v4)) == 1 << 32
        return full and not any(n.version == 6 for n in routed)

    def _guard_ipv6(self, networks: Sequence[str] = ()) -> None:
        """No IPv6 around a full tunnel (issue 19): while :meth:`_ipv6_block_wanted`, the host's
        IPv6 beyond its own links is made unreachable (:meth:`HostConfig.block_ipv6`; a
        gateway reached over IPv6 is pinned outside it first, by :meth:`_pin_gateway`); lifted
        when that stops (a policy change, the exit; a crash: by the next run)."""
        from tunvpn.client.hostconfig import HostConfig, HostConfigError

        if self.tunnel is None:
            return
        want = self._ipv6_block_wanted(networks)
        if want == self._ipv6_blocked:
            return
        try:
            if self.hostconfig is None:
                self.hostconfig = HostConfig(self.tunnel.name, dns_backend=self.options.dns_backend or "none")
            blocked = self.hostconfig.block_ipv6(want)
        except (HostConfigError, OSError) as exc:
            self.progress.report(
                "routes", f"cannot keep IPv6 from going around the tunnel: {exc}", state="failed"
            )
            return
        self._ipv6_blocked = want
        if blocked:
            self.progress.report(
                "routes",
                "IPv6 blocked while connected: the tunnel carries all of IPv4 and the gateway offers no "
                "IPv6 (link-local, on-link and the gateway stay; --no-block-ipv6 to allow)",
                state="ipv6-blocked",
            )
        elif not want:
            self.progress.report("routes", "IPv6 no longer blocked", state="ipv6-allowed")

    def _pin_gateway(self, networks: list[str]) -> None:
        """Before ``networks`` are routed into the TUN device (or at a new attempt, while they
        are): if one covers the gateway's own address (a full tunnel), a host route keeps IKE
        and ESP to it on the underlay, else they would loop into the tunnel (issue 15). The
        introduced peers' endpoints likewise (issue 17); and IPv6 blocked around a full
        tunnel (issue 19)."""
        from tunvpn.client.hostconfig import HostConfig, HostConfigError, routes_cover

        self._pin_peers(networks)
        # a gateway reached over IPv6 is pinned before IPv6 is blocked around a full tunnel
        blocked6 = ":" in self.gateway_ip and self._ipv6_block_wanted(networks)
        if self.tunnel is None or not (routes_cover(networks, self.gateway_ip) or blocked6):
            self._guard_ipv6(networks)
            return
        try:
            if self.hostconfig is None:
                self.hostconfig = HostConfig(self.tunnel.name, dns_backend=self.options.dns_backend or "none")
            pinned = self.hostconfig.pin_host(self.gateway_ip, avoid_dev=self.tunnel.name)
        except (HostConfigError, OSError) as exc:
            self.progress.report(
                "routes", f"cannot keep {self.gateway_ip} outside the tunnel: {exc}", state="failed"
            )
            return
        if pinned is not None:
            self.progress.report("routes", f"{pinned}: the gateway stays outside the tunnel", state="pinned")
        self._guard_ipv6(networks)

    def _refresh_pin(self) -> bool:
        """Addresses or routes changed: the gateway's pin (if any) follows the new way to it,
        before the kernel is asked which address leads there (without the pin a full tunnel's
        routes would name the TUN device). False when there is no way to it outside the tunnel."""
        from tunvpn.client.hostconfig import HostConfigError

        if self.hostconfig is None or self.tunnel is None:
            return True
        try:
            pinned = self.hostconfig.refresh_pin(avoid_dev=self.tunnel.name)
        except (HostConfigError, OSError) as exc:
            log.info("the gateway's pin cannot follow yet: %s", exc)  # the next change retries
            return False
        if pinned is not None:
            self.progress.report("routes", f"{pinned}: the gateway's pin follows the network", state="pinned")
        return True

    def _dns_into_tunnel(self) -> bool:
        """Whether the host's resolver now asks the tunnel's DNS servers for every name (a full
        tunnel): a gateway's name then comes from the cache while the tunnel is down."""
        return self._dns_applied is not None and self._dns_applied[2] is False


def _holding_tunnel_type() -> type[HoldingTunnel]:
    from tunvpn.client.holdtunnel import HoldingTunnel

    return HoldingTunnel


async def _first_set(events: tuple[asyncio.Event, ...], timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set (or ``timeout`` seconds passed)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = [
    "Client",
    "ClientOptions",
    "Progress",
    "build_engine_config",
    "child_proposal",
    "protected_networks",
]
