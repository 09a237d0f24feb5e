"""Events the IKE engine emits, drained by the I/O shell through ``next_event()``.

Each event is a small frozen dataclass with no live objects inside. Events that carry key
material hide it from ``repr`` so it never reaches a log by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ipsec.selectors import TrafficSelector
from .modecfg import ModeConfig

Address = tuple[str, int]


@dataclass(frozen=True)
class Event:
    """Base class of all engine events."""

    sa_id: bytes
    """Initiator cookie followed by responder cookie (16 octets) of the ISAKMP SA."""


@dataclass(frozen=True)
class Phase1Established(Event):
    peer: Address
    """The peer's current address and port."""
    role: str
    """"initiator" or "responder"."""
    exchange: str
    """"main", "aggressive" or "base"."""
    suite: str
    """The chosen phase 1 suite, e.g. "aes256-sha512-ecp_521/pre_shared_key"."""
    local_id: str
    """Our identity as sent."""
    peer_id: str
    """The peer's authenticated identity."""
    nat_local: bool
    """True when NAT-D shows that we are behind a NAT (or NAT-T was forced)."""
    nat_remote: bool
    """True when NAT-D shows that the peer is behind a NAT."""
    peer_vendor_ids: tuple[str, ...]
    """Names of the vendor IDs the peer sent that we know (xauth, unity, dpd, nat-t, tunvpn)."""
    local: Address = ("", 0)
    """Our address and port for this SA (port 4500 after the NAT-T float)."""
    enc_key: bytes = field(repr=False, default=b"")
    """The ISAKMP SA's encryption key, for ``--keylog`` only (never logged)."""


@dataclass(frozen=True)
class Phase1Failed(Event):
    peer: Address
    """The peer's address."""
    reason: str
    """What went wrong, for the log."""
    notify: int | None
    """The Notify type that was sent or received, if any."""
    unauthenticated: bool = False
    """True for a responder phase 1 that heard only a first message (refused, or timed out
    waiting for the next): anyone can send one from any address, so it is counted in
    ``IkeEngine.drops`` and summed up, not logged or audited one by one (issue 14)."""


@dataclass(frozen=True)
class Phase1RekeyStarted(Event):
    """Initiator: a new phase 1 replacing this ISAKMP SA started (its events carry
    ``new_sa_id``; the old SA keeps working until :class:`Phase1Rekeyed`)."""

    new_sa_id: bytes
    """The new ISAKMP SA's id (responder cookie still zero)."""


@dataclass(frozen=True)
class Phase1Rekeyed(Event):
    """This (old) ISAKMP SA's IPsec SAs now belong to ``new_sa_id`` (same SPIs); later Quick
    Modes and Deletes of them go under the new SA. The initiator deletes the old ISAKMP SA
    next (an :class:`IkeSADeleted` without any :class:`ChildSADeleted`)."""

    new_sa_id: bytes
    """The ISAKMP SA that took over."""
    reauthenticated: bool
    """The user logged in again (XAUTH) on the new SA; False: the old login counts."""


@dataclass(frozen=True)
class XauthRequested(Event):
    """Client side: the gateway asks for user credentials (draft-beaulieu-ike-xauth-02)."""

    fields: tuple[str, ...]
    """What is asked, e.g. ("user_name", "password") or ("user_name", "passcode")."""
    message: str | None
    """XAUTH-MESSAGE text from the gateway, to show to the user."""
    challenge: bytes | None
    """XAUTH-CHALLENGE data, if any."""
    xauth_type: int
    """XAUTH-TYPE (0 generic, 1 RADIUS-CHAP, 2 OTP, 3 S/KEY)."""


@dataclass(frozen=True)
class XauthCredentials(Event):
    """Gateway side: the client answered an XAUTH request; call ``xauth_verdict``."""

    peer: Address
    """The client's address."""
    user_name: str
    """XAUTH-USER-NAME."""
    password: str | None = field(repr=False)
    """XAUTH-USER-PASSWORD (never logged)."""
    passcode: str | None = field(repr=False)
    """XAUTH-PASSCODE (never logged)."""
    answer: str | None = field(repr=False, default=None)
    """XAUTH-ANSWER, the reply to a challenge (never logged)."""
    next_pin: str | None = field(repr=False, default=None)
    """XAUTH-NEXT-PIN (never logged)."""
    chap: tuple[int, bytes, bytes] | None = field(repr=False, default=None)
    """A RADIUS-CHAP round's answer instead of ``password``: (CHAP Identifier, the challenge
    we sent, the 16-octet response), as :class:`tunvpn.plugins.CredentialRequest` takes it."""


@dataclass(frozen=True)
class AccessGranted(Event):
    """The login of an ISAKMP SA is finished (or none was required): its peer may now make
    IPsec SAs (docs/engine-states.md)."""

    user_name: str | None
    """The XAUTH user, if the peer logged in with XAUTH."""


@dataclass(frozen=True)
class XauthCompleted(Event):
    """Both sides: the XAUTH SET(STATUS)/ACK round finished."""

    success: bool
    """XAUTH-STATUS was OK."""
    user_name: str | None
    """The user, when known."""
    message: str | None = None
    """XAUTH-MESSAGE sent with the status (the gateway's reason for a rejection)."""


@dataclass(frozen=True)
class ModeConfigRequested(Event):
    """Gateway side: the client sent a CFG_REQUEST; answer with ``mode_config_reply``."""

    peer: Address
    """The client's address."""
    user_name: str | None
    """The XAUTH user of this SA, if XAUTH ran."""
    peer_id: str
    """The phase 1 identity of the client."""
    request: ModeConfig
    """The attributes asked for (values are usually empty)."""
    requested_types: tuple[int, ...]
    """The raw attribute types asked for, in order."""
    identifier: int
    """The transaction identifier, to be echoed in the reply."""
    tunvpn_peer: bool = False
    """The client sent the tunvpn vendor ID (it understands pushed phase 2 policies)."""


@dataclass(frozen=True)
class ModeConfigReceived(Event):
    """Client side: the gateway's CFG_REPLY (or CFG_SET) arrived and was acknowledged."""

    config: ModeConfig
    """Decoded attributes (unknown ones are kept in ``config.unknown``)."""
    pushed: bool
    """True for a gateway-initiated CFG_SET, False for a reply to our request."""


@dataclass(frozen=True)
class ModeConfigAcknowledged(Event):
    """Gateway side: the client acknowledged a pushed CFG_SET (CFG_ACK)."""

    identifier: int
    """The transaction identifier of the CFG_SET."""
    types: tuple[int, ...]
    """The attribute types the client acknowledged."""


@dataclass(frozen=True)
class ChildSAEstablished(Event):
    """A Quick Mode finished: one pair of ESP SAs with their keys (RFC 2409 section 5.5)."""

    spi_in: int
    """SPI of the inbound SA (chosen by us)."""
    spi_out: int
    """SPI of the outbound SA (chosen by the peer)."""
    transform: int
    """ESP transform ID (EspTransform)."""
    key_length: int | None
    """Encryption key length in bits."""
    integrity: int | None
    """Authentication algorithm (AuthAlgorithm) for non-AEAD transforms."""
    enc_key_in: bytes = field(repr=False)
    """Inbound encryption key (including the 4-byte salt for AEAD transforms)."""
    auth_key_in: bytes = field(repr=False)
    """Inbound integrity key (empty for AEAD)."""
    enc_key_out: bytes = field(repr=False)
    """Outbound encryption key."""
    auth_key_out: bytes = field(repr=False)
    """Outbound integrity key."""
    local_ts: TrafficSelector
    """Our side's traffic selector."""
    remote_ts: TrafficSelector
    """The peer's side's traffic selector."""
    lifetime_seconds: int
    """Negotiated lifetime in seconds (after RESPONDER-LIFETIME)."""
    lifetime_kilobytes: int
    """Negotiated volume lifetime, 0 = none."""
    encapsulation: int
    """Encapsulation mode (EncapsulationMode), 3 = UDP tunnel."""
    local: Address
    """Our outer address and port for ESP (port 4500 when UDP-encapsulated)."""
    remote: Address
    """The peer's outer address and port for ESP."""
    pfs_group: int | None
    """DH group used for PFS, or None."""
    role: str
    """"initiator" or "responder" of this Quick Mode."""
    policy_name: str = ""
    """Name of the child policy this SA implements (empty when unnamed)."""
    inbound_local_ts: tuple[TrafficSelector, ...] = ()
    """Destinations inbound inner packets may have when narrower than ``local_ts`` (a
    standard client's 0.0.0.0/0 SA, ``ChildPolicy.inbound_local``); empty: ``local_ts``."""
    esn: bool = False
    """64-bit extended sequence numbers were negotiated (RFC 4304); False: 32-bit."""


@dataclass(frozen=True)
class ChildSAFailed(Event):
    reason: str
    """Why the Quick Mode failed."""
    notify: int | None
    """The Notify type sent or received, if any."""
    policy_name: str = ""
    """Name of the child policy, when known."""


@dataclass(frozen=True)
class TransactionFailed(Event):
    """A Transaction exchange we started (Mode Config request, XAUTH request or status, a
    CFG_SET) ended without its answer: the peer refused it with a hash-verified error Notify
    (issue 16), or never answered."""

    purpose: str
    """What it was for: ``modecfg``, ``modecfg-push``, ``xauth``, ``xauth-status``."""
    reason: str
    """What happened, as a sentence fragment ("refused by the peer (ATTRIBUTES-NOT-SUPPORTED)")."""
    notify: int | None
    """The peer's error Notify type, if it sent one."""


@dataclass(frozen=True)
class ChildSADeleted(Event):
    spi_in: int
    """Our inbound SPI of the pair."""
    spi_out: int
    """The outbound SPI of the pair."""
    by_peer: bool
    """True when the peer sent the Delete."""


@dataclass(frozen=True)
class IkeSADeleted(Event):
    peer: Address
    """The peer's address."""
    reason: str
    """Why: "deleted by peer", "dead peer", "expired", "closed"."""
    by_peer: bool
    """True when the peer sent the Delete."""


@dataclass(frozen=True)
class NotifyReceived(Event):
    """An Informational Notify arrived (errors and status we do not act on ourselves)."""

    notify_type: int
    """The Notify message type."""
    data: bytes
    """Notification data."""


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    """NAT-T: the peer's address or port changed (the float to 4500, or a NAT rebinding)."""

    old: Address
    """The previous address."""
    new: Address
    """The new address."""


@dataclass(frozen=True)
class ProtocolError(Event):
    """Bad input from the network: logged once by the shell; nothing crashed."""

    peer: Address
    """Where the bad message came from."""
    error: str
    """What was wrong (names the field and offset)."""
    notify: int | None
    """The Notify type answered, if one was sent."""
