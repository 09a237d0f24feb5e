"""Configuration the I/O shell hands to the IKE engine (plain data, no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from ..ipsec.selectors import TrafficSelector
from .certpath import PeerCertificatePolicy
from .certs import Credential
from .constants import AuthMethod
from .errors import LocalProtocolError
from .identity import Identity
from .proposals import ChildProposal, Phase1Policy

PSK_METHODS = (AuthMethod.PRE_SHARED_KEY, AuthMethod.XAUTH_INIT_PRESHARED)
HYBRID_METHODS = frozenset({AuthMethod.HYBRID_INIT_RSA})
"""Hybrid authentication (draft-ietf-ipsec-isakmp-hybrid-auth-05): the responder (gateway)
signs, the initiator (client) sends only HASH_I and logs in with XAUTH afterwards. Only the
client-initiates RSA variant is implemented (as strongSwan does)."""
XAUTH_METHODS = frozenset(
    {
        AuthMethod.XAUTH_INIT_PRESHARED,
        AuthMethod.XAUTH_INIT_RSA,
        AuthMethod.XAUTH_INIT_DSS,
        *HYBRID_METHODS,
    }
)
SIGNATURE_METHODS = frozenset(
    {
        AuthMethod.RSA_SIGNATURES,
        AuthMethod.ECDSA_SHA256_P256,
        AuthMethod.ECDSA_SHA384_P384,
        AuthMethod.ECDSA_SHA512_P521,
        AuthMethod.XAUTH_INIT_RSA,
        *HYBRID_METHODS,
    }
)
"""Methods whose SKEYID is the signature one (RFC 2409 section 5: prf(Ni_b | Nr_b, g^xy)) and
where at least one side signs; :func:`proof_method` tells which side proves itself how."""
CLIENT_SIGNATURE_METHODS = SIGNATURE_METHODS - HYBRID_METHODS
"""Methods in which the initiator (client) signs with its certificate: its phase 1 identity
is proven by it (hybrid: only the gateway signs)."""


def base_auth_method(method: AuthMethod) -> AuthMethod:
    """The phase 1 authentication behind an XAUTH auth method (XAUTH runs afterwards)."""
    if method == AuthMethod.XAUTH_INIT_PRESHARED:
        return AuthMethod.PRE_SHARED_KEY
    if method == AuthMethod.XAUTH_INIT_RSA:
        return AuthMethod.RSA_SIGNATURES
    return method


def proof_method(method: AuthMethod, *, initiator: bool) -> AuthMethod:
    """How one side of a phase 1 with ``method`` proves itself: ``PRE_SHARED_KEY`` means a
    HASH payload, anything else a signature with that method.

    In hybrid mode (draft-ietf-ipsec-isakmp-hybrid-auth-05 section 4.2) the side XAUTH
    authenticates later sends HASH_I keyed by the signature SKEYID, the other signs (RSA).
    """
    if method in HYBRID_METHODS:
        return AuthMethod.PRE_SHARED_KEY if initiator else AuthMethod.RSA_SIGNATURES
    return base_auth_method(method)


class PskTable:
    """Pre-shared keys by peer identity, by peer address, or one for everybody ("*").

    Keys are ``str(Identity)`` (e.g. ``"keyid:group"``, ``"10.0.0.2"``, ``"@vpn.example"``).
    Values never appear in ``repr``.
    """

    def __init__(self, entries: Mapping[str, bytes] | None = None) -> None:
        self._entries = dict(entries or {})

    def __repr__(self) -> str:
        return f"PskTable({sorted(self._entries)})"

    def __bool__(self) -> bool:
        return bool(self._entries)

    def entries(self) -> list[tuple[str, bytes]]:
        """(identity, address or "*", secret) pairs, e.g. for the weak-secret warning."""
        return list(self._entries.items())

    def lookup(self, peer_id: Identity | None, peer_ip: str) -> bytes | None:
        if peer_id is not None and str(peer_id) in self._entries:
            return self._entries[str(peer_id)]
        if peer_ip in self._entries:
            return self._entries[peer_ip]
        return self._entries.get("*")


@dataclass(frozen=True)
class ChildPolicy:
    """A phase 2 policy: the selectors of one IPsec SA and how to protect it.

    ``local_ts`` is this side's network, ``remote_ts`` the peer's. On a gateway, a remote
    selector of ``None`` means "the client's assigned virtual address".
    """

    name: str
    local_ts: TrafficSelector
    remote_ts: TrafficSelector | None
    proposal: ChildProposal = field(default_factory=ChildProposal)
    inbound_local: tuple[TrafficSelector, ...] = ()
    """Where inner packets arriving on this SA may go when that is narrower than ``local_ts``:
    a gateway answers a standard client's ``0.0.0.0/0`` Quick Mode with ``local_ts`` 0.0.0.0/0
    but lets the client reach only its policies' networks. Empty: ``local_ts`` itself."""


@dataclass(frozen=True, repr=False)
class PeerPair:
    """A direct tunnel the gateway introduced (issue 17), or another site's gateway (issue 18):
    the peer's phase 1 identity, the identity we present to it, the pair's secret (its
    pre-shared key, never the group key) and the phase 2 policies it may set up with us. The
    engine takes a phase 1 with such a peer in Main Mode with that key only (no XAUTH), and
    checks both identities."""

    identity: Identity
    local_id: Identity
    secret: bytes | None
    """The pair's pre-shared key; None: both sign with their certificates (sites, issue 18),
    and the peer's certificate must name ``identity``."""
    children: tuple[ChildPolicy, ...] = ()
    start_on_natt: bool = True
    """Initiator: start on the NAT-T port (two clients: the endpoint the gateway saw is that
    socket's); False: on the IKE port, floating if NAT-T says so (a site's gateway)."""

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        auth = "secret=<redacted>" if self.secret is not None else "certificates"
        return f"PeerPair({self.identity}, local_id={self.local_id}, {auth})"


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to know; built by the shell from files and flags."""

    local_id: Identity | None = None
    """Our phase 1 identity; ``None`` means our IP address (or the certificate's DN)."""
    psks: PskTable = field(default_factory=PskTable)
    """Pre-shared keys, looked up by peer identity or address."""
    credential: Credential | None = None
    """Our certificate and private key, for signature authentication."""
    trusted_cas: tuple[x509.Certificate, ...] = ()
    """CA certificates that peers' certificates must chain to."""
    peer_certificates: PeerCertificatePolicy = field(default_factory=PeerCertificatePolicy)
    """What peers' certificates must satisfy beyond chaining to ``trusted_cas``: extended key
    usage, identity patterns, revocation mode and the CRL store the shell keeps filled."""
    phase1: Phase1Policy = field(default_factory=Phase1Policy)
    """Phase 1 algorithms we offer (initiator) or accept (responder)."""
    children: tuple[ChildPolicy, ...] = ()
    """Phase 2 policies a responder accepts (the gateway's configuration)."""
    allow_aggressive_psk: bool = False
    """Responder: accept Aggressive Mode with a pre-shared key (weak: offline dictionary attack)."""
    allow_aggressive_signatures: bool = False
    """Responder: accept Aggressive Mode with signatures (RSA certificates, hybrid). Off: its
    first message costs a Diffie-Hellman and a signature for an address nobody verified, and
    its answer is several times its size (issue 14); Main Mode does the same login."""
    allow_base_mode: bool = False
    """Responder: accept tunvpn's Base Mode (docs/protocol.md). Off: a Base Mode first message
    is answered UNSUPPORTED-EXCHANGE-TYPE, and a tunvpn client falls back to Main Mode."""
    require_xauth: bool = False
    """Responder: run XAUTH after phase 1 (and accept only XAUTH auth methods)."""
    xauth_available: bool = False
    """Responder: we can check XAUTH credentials, so XAUTH auth methods may be chosen
    (implied by ``require_xauth``). Without it an XAUTH method offered by a client is skipped."""
    peer_natt_port: int = 4500
    """The peer's NAT-T port that the initiator floats to (RFC 3947 section 4: 4500)."""
    xauth_chap: bool = False
    """Responder: ask tunvpn peers (our vendor ID) for the login password as a RADIUS-CHAP
    answer (XAUTH-TYPE 1 with an XAUTH-CHALLENGE, docs/protocol.md), so the gateway never
    sees it; other peers are asked with XAUTH-TYPE Generic, as always."""
    natt: bool = True
    """Announce and use NAT traversal (RFC 3947)."""
    force_encap: bool = False
    """Pretend to be behind a NAT so ESP goes over UDP 4500 (strongSwan's encap=yes)."""
    natt_port: int = 4500
    """Port to float to."""
    dpd_interval: float = 30.0
    """Seconds of silence before a DPD R-U-THERE (0 disables)."""
    dpd_timeout: float = 150.0
    """Seconds without an answer after which the peer is declared dead."""
    keepalive_interval: float = 20.0
    """NAT-T keepalive interval when we are behind a NAT (RFC 3948 section 4)."""
    retransmit_base: float = 1.0
    """First retransmission timeout in seconds (doubles each time)."""
    retransmit_tries: int = 5
    """Retransmissions before an exchange is given up."""
    max_half_open: int = 1000
    """Bound on phase 1 SAs that are not established yet (responder)."""
    max_half_open_per_source: int = 5
    """Bound on half-open phase 1 SAs of one source address (strongSwan's
    ``block_threshold``); first messages beyond it are dropped and counted."""
    half_open_timeout: float = 30.0
    aggressive_budget: tuple[float, float, float, float] = (2.0, 5.0, 50.0, 100.0)
    """Responder, issue 14: Aggressive Mode first messages whose Diffie-Hellman (and, with
    signatures, signature) the gateway computes for a sender nobody verified, as
    (per source a second, per source burst, in total a second, total burst). Beyond it a
    first message is dropped and counted; its sender retransmits."""
    offer_budget: tuple[float, float, float, float] = (5.0, 20.0, 200.0, 400.0)
    """Responder, issue 14: first messages whose SA payload (the offer) must be parsed because
    it is not one seen recently or one of a peer that completed a phase 1
    (:func:`~tunvpn.ike.messages.sa_body_known`): parsing a large offer costs a millisecond
    or more, a known one microseconds. As (per source a second, burst, in total a second,
    burst); beyond it the first message is dropped and counted."""
    notify_budget: tuple[float, float, float, float] = (2.0, 10.0, 50.0, 100.0)
    """Unprotected error Notifies sent to unauthenticated senders (which may be spoofed:
    reflection), as (per destination a second, burst, in total a second, burst). Beyond
    it, or when the Notify would be larger than the message it answers, none is sent."""
    """Seconds a half-open phase 1 SA may live."""
    unity: bool = True
    """Send the Cisco Unity vendor ID (vpnc and Cisco peers expect it)."""
    responder: bool = True
    """Answer phase 1 exchanges other peers start (a gateway). A client sets False: it only
    starts its own, and a first message from anyone (a holder of the group key among them) is
    dropped unread, before any state or Diffie-Hellman (counted), except from the endpoint of
    a peer its gateway introduced (:meth:`IkeEngine.set_pairs`, issue 17). Either way a first
    message from the endpoint of a pair (a site's gateway, issue 18) takes the pair's path."""
    fragmentation: str = "yes"
    """IKE fragmentation (tunvpn.ike.fragments, issue 16): ``"yes"`` announces it (a
    responder only to a peer that did), cuts messages larger than ``fragment_size`` for a peer
    that announced it, and an initiator's first message from its first retransmission on (the
    peer's announcement is not known before its answer); ``"force"`` cuts every large message,
    the first one too; ``"no"`` neither announces, sends nor accepts fragments."""
    fragment_size: int = 1280
    """The largest IP datagram a fragment may make (strongSwan's ``charon.fragment_size``),
    IP and UDP headers included."""
    tunvpn_extensions: bool = True
    """Send our own vendor ID and use tunvpn extensions with peers that send it."""
    login_required: bool = False
    """Responder: nothing is granted on an ISAKMP SA (Quick Mode, INITIAL-CONTACT, the
    ``children`` fallback) until the shell calls ``grant`` after the whole login (XAUTH and
    every extra protocol); Mode Config waits for XAUTH. False: access is granted when phase 1
    completes, or when XAUTH passes if the peer chose an XAUTH method (docs/engine-states.md)."""
    login_timeout: float = 120.0
    """Seconds after phase 1 within which a login must be granted; then the SA is deleted."""
    phase1_rekey: bool = True
    """Initiator: make a new ISAKMP SA before the old one expires and hand the IPsec SAs over
    to it (tunvpn.ike.rekey); False: the SA expires with its IPsec SAs."""
    rekey_margin: float = 540.0
    """Initiator: seconds before expiry the rekey starts (strongSwan's ``margintime``, 9 min),
    at most a tenth of the lifetime, less a random part of ``rekey_fuzz`` times it."""
    rekey_fuzz: float = 1.0
    """Initiator: fraction of ``rekey_margin`` drawn at random and taken off (``rand_time``)."""
    reauth_interval: float = 0.0
    """Responder: seconds after a user's XAUTH after which a bound rekey asks the user again
    (Cisco's re-authentication interval); 0: a bound rekey never asks again."""
    max_exchanges: int = 10000
    """Exchanges (Quick Mode, Transaction, the peer's Informationals) one ISAKMP SA may run;
    their message IDs are remembered for the SA's whole life (RFC 2408 section 3.1), so a
    replay is dropped. Reaching the cap deletes the SA (the peer starts a new phase 1)."""
    remote_id: Identity | None = None
    """Initiator: who the responder must be. A responder that authenticates with a
    certificate must hold one naming ``remote_id`` (subjectAltName or DN,
    :func:`~tunvpn.ike.certs.certificate_matches_identity`); one with a pre-shared key must
    send exactly this phase 1 identity. Checked before phase 1 completes, so no XAUTH
    password goes to another gateway. ``None``: not checked (responders, tests)."""
    remote_id_psk_any: bool = False
    """Initiator: a pre-shared-key responder may send any phase 1 identity (logged). Its
    certificate, if it signs, must still name ``remote_id``."""
    hybrid: bool = False
    """Hybrid authentication (draft-ietf-ipsec-isakmp-hybrid-auth-05, HybridInitRSA).
    Initiator: offer only it (XAUTH needed, ``trusted_cas`` check the responder's RSA
    certificate; nothing else is offered, so a pre-shared key holder cannot downgrade it).
    Responder: accept it from clients (needs an RSA ``credential`` and XAUTH)."""

    def __post_init__(self) -> None:
        if self.max_half_open < 1:
            raise LocalProtocolError("max_half_open must be at least 1")
        if self.max_half_open_per_source < 1:
            raise LocalProtocolError("max_half_open_per_source must be at least 1")
        for name in ("aggressive_budget", "offer_budget", "notify_budget"):
            rate, burst, total_rate, total_burst = getattr(self, name)
            if min(rate, total_rate) <= 0 or min(burst, total_burst) < 1:
                raise LocalProtocolError(f"{name}: rates must be positive and bursts at least 1")
        if self.retransmit_tries < 0 or self.retransmit_base <= 0:
            raise LocalProtocolError("retransmission settings must be positive")
        if self.login_timeout <= 0:
            raise LocalProtocolError("login_timeout must be positive")
        if self.rekey_margin < 0 or not 0 <= self.rekey_fuzz <= 1 or self.reauth_interval < 0:
            raise LocalProtocolError("rekey_margin and reauth_interval >= 0, rekey_fuzz in [0, 1]")
        if self.max_exchanges < 2:
            raise LocalProtocolError("max_exchanges must be at least 2")
        if self.fragmentation not in ("yes", "force", "no"):
            raise LocalProtocolError(f"fragmentation must be yes, force or no, not {self.fragmentation!r}")
        if not 576 <= self.fragment_size <= 65535:
            raise LocalProtocolError("fragment_size must be 576 to 65535")

    def auth_methods(self, *, xauth: bool, responder: bool) -> list[AuthMethod]:
        """Auth methods we can do, in preference order."""
        methods: list[AuthMethod] = []
        if self.hybrid and not responder:
            return [AuthMethod.HYBRID_INIT_RSA] if xauth and self.trusted_cas else []
        rsa_credential = (
            self.credential is not None and self.credential.auth_method == AuthMethod.RSA_SIGNATURES
        )
        if self.hybrid and xauth and rsa_credential:
            methods.append(AuthMethod.HYBRID_INIT_RSA)
        if self.credential is not None:
            sig = self.credential.auth_method
            if xauth and sig == AuthMethod.RSA_SIGNATURES:
                methods.append(AuthMethod.XAUTH_INIT_RSA)
            if not (responder and self.require_xauth):
                methods.append(sig)
        if self.psks:
            if xauth:
                methods.append(AuthMethod.XAUTH_INIT_PRESHARED)
            if not (responder and self.require_xauth):
                methods.append(AuthMethod.PRE_SHARED_KEY)
        return methods


def address_identity(ip: str) -> Identity:
    return Identity.parse(str(ipaddress.ip_address(ip)))
