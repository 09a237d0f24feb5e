"""The state of one ISAKMP SA: cookies, chosen suite, keys and the CBC IV chains.

RFC 2409 appendix B: phase 1 messages chain their IV from message to message; each
exchange with a non-zero message ID starts from hash(last phase 1 CBC block | M-ID) and
then chains on its own.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ipsec.selectors import TrafficSelector
from ..ipsec.udpencap import NON_ESP_MARKER
from . import crypto
from .constants import HEADER_SIZE, AuthMethod, DHGroup, HeaderFlag, NotifyType, PayloadType
from .errors import RemoteProtocolError
from .identity import Identity
from .messages import (
    HashPayload,
    Header,
    Payload,
    RawPayload,
    Transform,
    decode_payloads,
    encode_header,
    encode_payloads,
)
from .proposals import ChildProposal, Phase1Suite
from .retransmit import Retransmission

if TYPE_CHECKING:
    from .config import ChildPolicy, PeerPair

Address = tuple[str, int]


def message_digest(data: bytes) -> bytes:
    """What a phase 1 SA keeps of the last message it took, to know a retransmission."""
    return hashlib.sha256(data).digest()


def find_payloads(payloads: list[RawPayload], kind: type) -> list[RawPayload]:
    """Every payload of one class, in order."""
    return [p for p in payloads if isinstance(p.payload, kind)]


def one_payload(payloads: list[RawPayload], kind: type, what: str) -> RawPayload:
    """The single payload of one class; anything else is PAYLOAD-MALFORMED."""
    found = find_payloads(payloads, kind)
    if len(found) != 1:
        raise RemoteProtocolError(
            f"expected exactly one {what} payload, got {len(found)}", NotifyType.PAYLOAD_MALFORMED, what
        )
    return found[0]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class P1State(enum.Enum):
    """Phase 1 progress (the table of legal messages per state is in phase1.py)."""

    # initiator
    I_SENT_SA = "i-sent-sa"  # MM1 / AM1 / BM1 sent
    I_SENT_KE = "i-sent-ke"  # MM3 / BM3 sent
    I_SENT_AUTH = "i-sent-auth"  # MM5 sent
    # responder
    R_SENT_SA = "r-sent-sa"  # MM2 / BM2 sent
    R_SENT_KE = "r-sent-ke"  # MM4 / AM2 sent
    # both
    ESTABLISHED = "established"
    DEAD = "dead"


class ExchangeKind(enum.StrEnum):
    """The kinds of exchange under an established ISAKMP SA (RFC 2408 section 4)."""

    TRANSACTION = "transaction"  # XAUTH and Mode Config (draft-dukes-ike-mode-cfg-02)
    QUICK = "quick"  # RFC 2409 section 5.5
    INFORMATIONAL = "informational"  # RFC 2408 section 4.8
    UNKNOWN = "?"  # a message ID seen (decrypted) before its exchange is known


class ExState(enum.StrEnum):
    """Progress of one exchange with a non-zero message ID (the legal moves: states.py)."""

    NEW = "new"  # nothing exchanged yet
    SENT_REQUEST = "sent-request"  # Transaction: our CFG_REQUEST is out
    SENT_SET = "sent-set"  # Transaction: our CFG_SET is out
    AWAIT_USER = "await-user"  # Transaction: an XAUTH request waits for the user's answer
    AWAIT_CONFIG = "await-config"  # Transaction: a CFG_REQUEST waits for the shell's answer
    SENT_1 = "sent-1"  # Quick Mode: message 1 is out
    SENT_2 = "sent-2"  # Quick Mode: message 2 is out
    DONE = "done"


class Access(enum.IntEnum):
    """What a peer may do on one ISAKMP SA (XAUTH is a second step after phase 1)."""

    LOGIN_PENDING = 1  # phase 1 done, the login (XAUTH, extra protocols) is not
    XAUTH_PASSED = 2  # XAUTH accepted: Mode Config may run, nothing is granted yet
    GRANTED = 3  # login finished (or none required): Quick Mode, INITIAL-CONTACT, ...


class TransactionPurpose(enum.StrEnum):
    """Why we started a Transaction exchange (what its answer means)."""

    PEER = ""  # the peer started it
    XAUTH = "xauth"  # our XAUTH REQUEST (gateway)
    XAUTH_STATUS = "xauth-status"  # our XAUTH-STATUS SET (gateway)
    MODECFG = "modecfg"  # our CFG_REQUEST (client)
    MODECFG_PUSH = "modecfg-push"  # our CFG_SET (gateway)


@dataclass
class TransactionData:
    """What one Transaction exchange remembers between its messages."""

    purpose: TransactionPurpose = TransactionPurpose.PEER
    identifier: int = 0
    """The Attribute payload's identifier (the answer repeats it)."""
    asked: tuple[int, ...] = ()
    """Client: the attribute types of the gateway's XAUTH request."""
    xauth_type: int = 0
    """XAUTH-TYPE of the request (draft-beaulieu-ike-xauth-02 section 6.2)."""
    challenge: bytes | None = field(default=None, repr=False)
    """XAUTH-CHALLENGE of the request."""
    ok: bool = False
    """Gateway: the XAUTH-STATUS we sent."""


@dataclass
class QuickModeData:
    """What one Quick Mode remembers between its messages (RFC 2409 section 5.5)."""

    ni: bytes = field(default=b"", repr=False)
    nr: bytes = field(default=b"", repr=False)
    spi_in: int = 0
    spi_out: int = 0
    name: str = ""
    dh: crypto.DiffieHellman | None = field(default=None, repr=False)
    proposal: ChildProposal | None = None
    transforms: tuple[Transform, ...] = ()
    local_ts: TrafficSelector | None = None
    remote_ts: TrafficSelector | None = None
    lifetime_s: int = 0
    lifetime_kb: int = 0
    inbound_local: tuple[TrafficSelector, ...] = ()


@dataclass
class Exchange:
    """One exchange with a non-zero message ID (Transaction, Quick Mode, Informational)."""

    message_id: int
    kind: ExchangeKind
    iv: bytes
    state: ExState = ExState.NEW
    last_in: bytes = b""
    sent: Retransmission = field(default_factory=Retransmission)
    """Our last message and its retransmission (retransmit.py)."""
    answered: bool = False
    """Whether ``sent`` answers ``last_in`` (a copy of ``last_in`` is answered with it). Not
    after the peer's last message (Quick Mode 3, CFG_ACK, ...): answering a copy of that
    with our earlier message made both sides answer each other's copies for ever."""
    tx: TransactionData = field(default_factory=TransactionData)
    """Transaction exchanges: what the next message needs."""
    quick: QuickModeData = field(default_factory=QuickModeData)
    """Quick Mode exchanges: nonces, SPIs, selectors."""


@dataclass
class IkeSA:
    """Everything known about one ISAKMP SA (phase 1) and its child exchanges."""

    role: Role
    exchange: int
    icookie: bytes
    rcookie: bytes
    local: Address
    remote: Address
    created: float
    state: P1State = P1State.I_SENT_SA
    suite: Phase1Suite | None = None
    offered: list[Phase1Suite] = field(default_factory=list)
    pair: PeerPair | None = None
    """A direct tunnel to a peer the gateway introduced (issue 17): its key and identities."""
    later_offers: list[list[Phase1Suite]] = field(default_factory=list)
    """Initiator, Main and Base Mode: the offers still to send, each after a NO-PROPOSAL-CHOSEN
    to the one before, when the first message carried only the strongest suites that fit one
    datagram (issue 16): the whole offer one auth method at a time, each a first message of
    at most :data:`~tunvpn.ike.fragments.FIRST_MESSAGE_PIECES` IKE fragments."""
    sa_body: bytes = b""  # SAi_b
    dh: crypto.DiffieHellman | None = None
    gxi: bytes = b""
    gxr: bytes = b""
    ni: bytes = b""
    nr: bytes = b""
    g_xy: bytes = b""
    psk: bytes | None = field(default=None, repr=False)
    keys: crypto.Phase1Keys | None = None
    p1_iv: bytes = b""
    p1_last_block: bytes = b""
    local_id: Identity | None = None
    local_id_body: bytes = b""
    peer_id: Identity | None = None
    peer_id_body: bytes = b""
    peer_vendor_ids: set[str] = field(default_factory=set)
    natt_draft: bool = False  # peer only knows the draft NAT-T numbers
    natt: bool = False  # both sides support NAT-T
    nat_local: bool = False
    nat_remote: bool = False
    floated: bool = False
    xauth_expected: bool = False
    xauth_done: bool = False
    xauth_user: str | None = None
    modecfg_done: bool = False
    tunvpn_peer: bool = False
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    # phase 1 duplicate detection and retransmission (retransmit.py)
    last_in: bytes = b""
    """:func:`message_digest` of the last phase 1 message taken (not the message: a half-open
    SA keeps only what it needs, issue 14)."""
    sent: Retransmission = field(default_factory=Retransmission)
    # liveness
    last_heard: float = 0.0
    dpd_seq: int = 0
    dpd_sent_at: float | None = None
    next_keepalive: float | None = None
    expires: float | None = None
    aggressive_groups: list[DHGroup] = field(default_factory=list)  # remaining AM groups to try
    auth_method: AuthMethod | None = None
    children: dict[int, ChildSA] = field(default_factory=dict)
    assigned_address: str | None = None
    assigned_address6: str | None = None
    """The IPv6 address Mode Config assigned (issue 19): the remote end of IPv6 policies whose
    remote selector is the client's own address."""
    child_policies: tuple[ChildPolicy, ...] | None = None  # per-client override of the gateway's policies
    # the login gate (responder): what the peer may do, and until when it may log in
    access: Access = Access.LOGIN_PENDING
    login_deadline: float | None = None
    initial_contact: bool = False  # the peer sent INITIAL-CONTACT (acted on once GRANTED)
    held: list[tuple[Callable[..., None], Payload]] = field(
        default_factory=list
    )  # (handler, payload) of Informationals held until GRANTED
    completed: set[int] = field(default_factory=set)  # message IDs of finished exchanges (RFC 2408 3.1)
    # phase 1 rekeying (rekey.py)
    rekey_at: float | None = None
    """Initiator: when to start the new phase 1 (None: never, or already started)."""
    rekey_of: bytes | None = None
    """A new SA: the id of the SA it rekeys (initiator: from the start; responder: once bound)."""
    rekeying: bytes | None = None
    """An old SA (initiator): our cookie of the new phase 1 in progress."""
    moved_to: bytes | None = None
    """An old SA: our cookie of the SA its IPsec SAs were handed to."""
    reauth: bool = False
    """A bound new SA (responder): its user must log in again (``reauth_interval``)."""
    continued_of: bytes | None = None
    """A new SA that took over: the old SA's id. A responder (tunvpn peer) sends
    N(SESSION-CONTINUED) again at ``continued_at`` until the peer deleted the old SA (a lost
    one would leave the peer on the old SA until it expired); an initiator ignores those."""
    continued_at: float | None = None
    continued_sent: int = 0
    handover_at: float | None = None
    """A new SA (initiator, tunvpn peer) that logged in again: when to hand over even if
    N(SESSION-CONTINUED) does not come (the peer then adopts on our Delete)."""
    announced: bytes | None = field(default=None, repr=False)
    """Responder: the initiator cookie announced for this SA's rekey, usable until ``announced_until``."""
    announced_until: float = 0.0
    login_at: float = 0.0
    """When this session's user last logged in (kept across rekeys without XAUTH)."""

    @property
    def sa_id(self) -> bytes:
        return self.icookie + self.rcookie

    @property
    def local_cookie(self) -> bytes:
        return self.icookie if self.role is Role.INITIATOR else self.rcookie

    @property
    def established(self) -> bool:
        return self.state is P1State.ESTABLISHED

    @property
    def dead(self) -> bool:
        """Deleted (a handler or a retransmission may end the SA while the engine holds it)."""
        return self.state is P1State.DEAD

    # ------------------------------------------------------------------ wire helpers

    def wrap(self, data: bytes) -> bytes:
        """Prefix the non-ESP marker once we talk on the NAT-T port (RFC 3948 section 2.2)."""
        return NON_ESP_MARKER + data if self.floated else data

    def build(self, exchange: int, message_id: int, payloads: list[Payload], *, encrypt: bool) -> bytes:
        """Serialize (and, when ``encrypt``, encrypt and chain the IV of) one message."""
        first, body = encode_payloads(payloads)
        flags = 0
        if encrypt:
            assert self.suite is not None and self.keys is not None
            flags |= HeaderFlag.ENCRYPTION
            block = crypto.cipher_block_size(self.suite.encryption)
            iv = self._iv_for(message_id)
            body = crypto.cbc_encrypt(
                self.suite.encryption, self.keys.enc_key, iv, crypto.pad_to_block(body, block)
            )
            self._set_iv(message_id, body[-block:])
        header = Header(
            self.icookie, self.rcookie, first, exchange, int(flags), message_id, HEADER_SIZE + len(body)
        )
        return encode_header(header) + body

    def open(self, header: Header, data: bytes) -> list[RawPayload]:
        """Decrypt (when flagged) and decode the payloads of a received message."""
        body = data[HEADER_SIZE : header.length]
        if header.flags & HeaderFlag.ENCRYPTION:
            if self.keys is None or self.suite is None:
                raise RemoteProtocolError(
                    "encrypted message before keys exist", field="header.flags", offset=19
                )
            block = crypto.cipher_block_size(self.suite.encryption)
            iv = self._iv_for(header.message_id)
            plain = crypto.cbc_decrypt(self.suite.encryption, self.keys.enc_key, iv, body)
            payloads = decode_payloads(header.next_payload, plain, allow_trailing=True)
            # only advance the IV chain once the message decoded (a forged one leaves it as is)
            self._set_iv(header.message_id, body[-block:])
            return payloads
        return decode_payloads(header.next_payload, body)

    def _iv_for(self, message_id: int) -> bytes:
        assert self.suite is not None
        if message_id == 0:
            return self.p1_iv
        ex = self.exchanges.get(message_id)
        if ex is not None and ex.iv:
            return ex.iv
        return crypto.phase2_iv(
            self.suite.hash, self.p1_last_block, message_id, crypto.cipher_block_size(self.suite.encryption)
        )

    def _set_iv(self, message_id: int, iv: bytes) -> None:
        if message_id == 0:
            self.p1_iv = iv
            self.p1_last_block = iv
            return
        ex = self.exchanges.get(message_id)
        if ex is None:
            ex = self.exchanges[message_id] = Exchange(message_id, ExchangeKind.UNKNOWN, iv)
        ex.iv = iv

    # ------------------------------------------------------------------ HASH(n) of phase 2

    def prf_a(self, data: bytes) -> bytes:
        assert self.suite is not None and self.keys is not None
        return crypto.prf(self.suite.hash, self.keys.skeyid_a, data)

    def hash_payload(self, message_id: int, following: bytes, extra: bytes = b"") -> HashPayload:
        """HASH(1)/HASH(2): prf(SKEYID_a, M-ID | [extra |] following payloads)."""
        return HashPayload(self.prf_a(struct.pack("!I", message_id) + extra + following))

    def check_hash(self, message_id: int, payloads: list[RawPayload], extra: bytes = b"") -> list[RawPayload]:
        """Verify the leading HASH payload of a protected message; return the rest.

        RFC 2409 section 5.5 and draft-dukes-ike-mode-cfg-02 section 3.1: the hash covers the
        message ID and every payload after the HASH payload, including their generic headers
        (``extra`` is Ni_b for Quick Mode's HASH(2)).
        """
        if not payloads or not isinstance(payloads[0].payload, HashPayload):
            raise RemoteProtocolError(
                "protected message does not start with a HASH payload",
                NotifyType.INVALID_HASH_INFORMATION,
                "HASH",
            )
        rest = payloads[1:]
        expected = self.prf_a(struct.pack("!I", message_id) + extra + b"".join(p.raw for p in rest))
        if not crypto.constant_time_equal(expected, payloads[0].payload.data):
            raise RemoteProtocolError(
                "HASH payload does not verify", NotifyType.INVALID_HASH_INFORMATION, "HASH"
            )
        return rest


@dataclass
class ChildSA:
    """One pair of IPsec SAs made by a Quick Mode, as the IKE engine remembers it."""

    spi_in: int
    spi_out: int
    name: str
    message_id: int


def raw_after_first(payload_bytes: bytes) -> bytes:
    """The payload chain after the first payload, as produced by ``encode_payloads``."""
    length = struct.unpack_from("!H", payload_bytes, 2)[0]
    return payload_bytes[length:]


def payload_kind(p: RawPayload) -> PayloadType | int:
    from .messages import payload_type_of

    t = payload_type_of(p.payload)
    try:
        return PayloadType(t)
    except ValueError:
        return t
