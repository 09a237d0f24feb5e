"""Sans-I/O L2TP control connections, both roles, and the data-message codec (RFC 2661).

No sockets, threads or clocks: the caller passes datagrams and ``now`` (seconds, any
monotonic origin) in and gets datagrams and events out.

* codec: the control message header (section 3.1: T/L/S/O/P bits, Ns/Nr) and AVPs
  (section 4.1: M/H bits, vendor 0) with the AVP and message type numbers of section 4.4/3.2;
  data messages (section 3.1): :func:`encode_data`, :func:`decode_data`, :func:`is_control`;
* reliable delivery (section 5.8): Ns/Nr, a send window of the peer's Receive Window Size,
  retransmission with exponential back-off, ZLB ACKs, duplicate re-ACK (also for a while after
  the tunnel closed, section 5.7);
* :class:`Tunnel`, one control connection in either :class:`Role`: the LAC initiates the
  tunnel (SCCRQ -> SCCRP -> SCCCN) and incoming calls (ICRQ -> ICRP -> ICCN); the LNS answers
  both. CDN and StopCCN both ways; OCRQ is answered with CDN (no outgoing calls). All legal
  ``(role, state, message)`` triples are in :data:`TRANSITIONS`;
* HELLO keepalives of our own (section 6.5) after ``hello_interval`` seconds of silence;
* tunnel authentication (section 5.1.1) with an optional shared secret: Challenge and
  Challenge Response AVPs, a failed or missing response is StopCCN result 4;
* :class:`Lns`: the gateway's dispatcher over many tunnels from many peers, with limits.

Not here (yet): hidden AVPs (H bit: kept as opaque bytes; a hidden AVP we need to read is
malformed input), outgoing calls (OCRQ/OCRP/OCCN), WEN/SLI, tie breakers, data-message
sequencing (Ns/Nr of data messages are skipped on receive, never sent), and a timeout for a
session whose ICCN never comes.

Malformed input raises a :class:`L2tpError` subclass from the decoders; :meth:`Tunnel.receive`
and :meth:`Lns.receive` never raise: they count the datagram in ``stats`` and drop it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "AvpType",
    "MessageType",
    "ResultCode",
    "StopCcnResult",
    "CdnResult",
    "L2tpError",
    "MalformedHeader",
    "MalformedAvp",
    "MissingAvp",
    "UnknownMessageType",
    "NotControl",
    "NotData",
    "Avp",
    "ControlMessage",
    "decode",
    "encode",
    "encode_data",
    "decode_data",
    "is_control",
    "challenge_response",
    "Role",
    "Tunnel",
    "TunnelState",
    "Session",
    "SessionState",
    "Stats",
    "TRANSITIONS",
    "Output",
    "Event",
    "TunnelEstablished",
    "TunnelClosed",
    "SessionEstablished",
    "SessionClosed",
    "Acked",
    "Received",
    "Address",
    "Lns",
    "LnsEvent",
    "LnsOutput",
    "LnsStats",
]

VERSION = 2
T_BIT, L_BIT, S_BIT, O_BIT, P_BIT = 0x8000, 0x4000, 0x0800, 0x0200, 0x0100
CONTROL_FLAGS = T_BIT | L_BIT | S_BIT | VERSION
HEADER_LEN = 12
DATA_HEADER_LEN = 6  # flags, Tunnel ID, Session ID: what encode_data() sends
M_BIT, H_BIT = 0x8000, 0x4000
AVP_HEADER_LEN = 6
MAX_AVP_LEN = 0x3FF
CHALLENGE_LEN = 16
PROTOCOL_VERSION_1_0 = b"\x01\x00"


class MessageType(enum.IntEnum):
    """Control message types (RFC 2661 section 3.2)."""

    SCCRQ = 1
    SCCRP = 2
    SCCCN = 3
    StopCCN = 4
    HELLO = 6
    OCRQ = 7
    OCRP = 8
    OCCN = 9
    ICRQ = 10
    ICRP = 11
    ICCN = 12
    CDN = 14
    WEN = 15
    SLI = 16


class AvpType(enum.IntEnum):
    """Attribute types, vendor 0 (RFC 2661 section 4.4)."""

    MESSAGE_TYPE = 0
    RESULT_CODE = 1
    PROTOCOL_VERSION = 2
    FRAMING_CAPABILITIES = 3
    BEARER_CAPABILITIES = 4
    TIE_BREAKER = 5
    FIRMWARE_REVISION = 6
    HOST_NAME = 7
    VENDOR_NAME = 8
    ASSIGNED_TUNNEL_ID = 9
    RECEIVE_WINDOW_SIZE = 10
    CHALLENGE = 11
    Q931_CAUSE_CODE = 12
    CHALLENGE_RESPONSE = 13
    ASSIGNED_SESSION_ID = 14
    CALL_SERIAL_NUMBER = 15
    MINIMUM_BPS = 16
    MAXIMUM_BPS = 17
    BEARER_TYPE = 18
    FRAMING_TYPE = 19
    CALLED_NUMBER = 21
    CALLING_NUMBER = 22
    SUB_ADDRESS = 23
    TX_CONNECT_SPEED = 24
    PHYSICAL_CHANNEL_ID = 25
    PROXY_AUTHEN_TYPE = 29
    RX_CONNECT_SPEED = 38
    SEQUENCING_REQUIRED = 39


class ResultCode(enum.IntEnum):
    """StopCCN (section 4.4.2) result codes 1-2 and CDN result codes 1-3 share these numbers."""

    GENERAL_CLEAR = 1  # StopCCN: general request to clear control connection
    GENERAL_ERROR = 2
    ADMIN = 3  # CDN: session disconnected for administrative reasons


class StopCcnResult(enum.IntEnum):
    """Result codes of StopCCN (RFC 2661 section 4.4.2)."""

    GENERAL_CLEAR = 1
    GENERAL_ERROR = 2  # the Error Code says more
    CHANNEL_EXISTS = 3
    NOT_AUTHORIZED = 4  # requester is not authorized to establish a control channel
    UNSUPPORTED_VERSION = 5
    SHUTTING_DOWN = 6
    FSM_ERROR = 7


class CdnResult(enum.IntEnum):
    """Result codes of CDN (RFC 2661 section 4.4.2)."""

    LOST_CARRIER = 1
    GENERAL_ERROR = 2
    ADMIN = 3
    TEMPORARY_NO_RESOURCES = 4
    PERMANENT_NO_FACILITIES = 5
    INVALID_DESTINATION = 6
    NO_CARRIER = 7
    BUSY = 8
    NO_DIAL_TONE = 9
    TIMEOUT = 10
    NO_FRAMING = 11


FRAMING_SYNC, FRAMING_ASYNC = 1, 2

REQUIRED: dict[MessageType, frozenset[AvpType]] = {
    MessageType.SCCRQ: frozenset(
        {
            AvpType.PROTOCOL_VERSION,
            AvpType.HOST_NAME,
            AvpType.FRAMING_CAPABILITIES,
            AvpType.ASSIGNED_TUNNEL_ID,
        }
    ),
    MessageType.SCCRP: frozenset(
        {
            AvpType.PROTOCOL_VERSION,
            AvpType.HOST_NAME,
            AvpType.FRAMING_CAPABILITIES,
            AvpType.ASSIGNED_TUNNEL_ID,
        }
    ),
    MessageType.SCCCN: frozenset(),
    MessageType.StopCCN: frozenset({AvpType.ASSIGNED_TUNNEL_ID, AvpType.RESULT_CODE}),
    MessageType.HELLO: frozenset(),
    MessageType.OCRQ: frozenset({AvpType.ASSIGNED_SESSION_ID}),  # only what we need to refuse it
    MessageType.ICRQ: frozenset({AvpType.ASSIGNED_SESSION_ID, AvpType.CALL_SERIAL_NUMBER}),
    MessageType.ICRP: frozenset({AvpType.ASSIGNED_SESSION_ID}),
    MessageType.ICCN: frozenset({AvpType.TX_CONNECT_SPEED, AvpType.FRAMING_TYPE}),
    MessageType.CDN: frozenset({AvpType.RESULT_CODE, AvpType.ASSIGNED_SESSION_ID}),
}

# AVPs whose value is a 32-bit integer (section 4.4); the other numeric ones are 16-bit.
U32_AVPS = frozenset(
    {
        AvpType.FRAMING_CAPABILITIES,
        AvpType.BEARER_CAPABILITIES,
        AvpType.CALL_SERIAL_NUMBER,
        AvpType.MINIMUM_BPS,
        AvpType.MAXIMUM_BPS,
        AvpType.BEARER_TYPE,
        AvpType.FRAMING_TYPE,
        AvpType.TX_CONNECT_SPEED,
        AvpType.PHYSICAL_CHANNEL_ID,
        AvpType.RX_CONNECT_SPEED,
    }
)

# The sender's own ID, which must not be 0 (sections 4.4.3, 4.4.4): 0 means "not assigned yet".
NONZERO_ID: dict[MessageType, AvpType] = {
    MessageType.SCCRQ: AvpType.ASSIGNED_TUNNEL_ID,
    MessageType.SCCRP: AvpType.ASSIGNED_TUNNEL_ID,
    MessageType.ICRQ: AvpType.ASSIGNED_SESSION_ID,
    MessageType.ICRP: AvpType.ASSIGNED_SESSION_ID,
}


# ------------------------------------------------------------------ errors


class L2tpError(ValueError):
    """Malformed or unacceptable L2TP input."""


class NotControl(L2tpError):
    """A data message (T bit clear): not for the control connection."""


class NotData(L2tpError):
    """A control message (T bit set) handed to the data-message decoder."""


class MalformedHeader(L2tpError):
    pass


class MalformedAvp(L2tpError):
    pass


class MissingAvp(L2tpError):
    pass


class UnknownMessageType(L2tpError):
    pass


# ------------------------------------------------------------------ codec


@dataclass(frozen=True)
class Avp:
    """One attribute-value pair (section 4.1). ``value`` is raw; hidden values stay encrypted."""

    attr_type: int
    value: bytes
    mandatory: bool = True
    hidden: bool = False
    vendor_id: int = 0

    def encode(self) -> bytes:
        length = AVP_HEADER_LEN + len(self.value)
        if length > MAX_AVP_LEN:
            raise MalformedAvp(f"AVP {self.attr_type} too long ({length} octets)")
        bits = (M_BIT if self.mandatory else 0) | (H_BIT if self.hidden else 0) | length
        return struct.pack("!HHH", bits, self.vendor_id, self.attr_type) + self.value

    @classmethod
    def u16(cls, attr_type: AvpType, value: int, mandatory: bool = True) -> Avp:
        return cls(attr_type, struct.pack("!H", value), mandatory)

    @classmethod
    def u32(cls, attr_type: AvpType, value: int, mandatory: bool = True) -> Avp:
        return cls(attr_type, struct.pack("!I", value), mandatory)

    @classmethod
    def result(cls, result: int, error: int | None = None, message: str = "") -> Avp:
        value = struct.pack("!H", result)
        if error is not None or message:
            value += struct.pack("!H", error or 0) + message.encode()
        return cls(AvpType.RESULT_CODE, value)


@dataclass(frozen=True)
class ControlMessage:
    """A control message; no AVPs means a ZLB (zero-length body) ACK."""

    tunnel_id: int
    session_id: int
    ns: int
    nr: int
    avps: tuple[Avp, ...] = ()

    @classmethod
    def build(
        cls, msg_type: MessageType, tunnel_id: int, session_id: int, avps: tuple[Avp, ...] | list[Avp] = ()
    ) -> ControlMessage:
        """A message with Ns/Nr 0: the reliable-delivery layer fills them in."""
        return cls(tunnel_id, session_id, 0, 0, (Avp.u16(AvpType.MESSAGE_TYPE, msg_type), *avps))

    @property
    def is_zlb(self) -> bool:
        return not self.avps

    @property
    def message_type(self) -> MessageType | None:
        if not self.avps:
            return None
        return MessageType(struct.unpack("!H", self.avps[0].value)[0])

    def find(self, attr_type: AvpType) -> Avp | None:
        for avp in self.avps[1:]:
            if avp.vendor_id == 0 and avp.attr_type == attr_type:
                return avp
        return None

    def raw(self, attr_type: AvpType) -> bytes:
        avp = self.find(attr_type)
        if avp is None:
            raise MissingAvp(f"{self.message_type!r} without {attr_type.name}")
        if avp.hidden:
            raise MalformedAvp(f"{attr_type.name} is hidden; we hold no shared secret")
        return avp.value

    def u16(self, attr_type: AvpType) -> int:
        value = self.raw(attr_type)
        if len(value) != 2:
            raise MalformedAvp(f"{attr_type.name}: {len(value)} octets, not 2")
        return struct.unpack("!H", value)[0]

    def u32(self, attr_type: AvpType) -> int:
        value = self.raw(attr_type)
        if len(value) != 4:
            raise MalformedAvp(f"{attr_type.name}: {len(value)} octets, not 4")
        return struct.unpack("!I", value)[0]

    def text(self, attr_type: AvpType) -> str:
        return self.raw(attr_type).decode("utf-8", "replace")

    def result_code(self) -> tuple[int, int | None, str]:
        """(result, error or None, message) from the Result Code AVP (section 4.4.2)."""
        value = self.raw(AvpType.RESULT_CODE)
        if len(value) < 2 or len(value) == 3:
            raise MalformedAvp(f"RESULT_CODE: {len(value)} octets")
        result = struct.unpack("!H", value[:2])[0]
        if len(value) == 2:
            return result, None, ""
        return result, struct.unpack("!H", value[2:4])[0], value[4:].decode("utf-8", "replace")

    def validate(self) -> None:
        """Raise MissingAvp/MalformedAvp unless the mandatory AVPs of its type are there and sized."""
        msg_type = self.message_type
        if msg_type is None:
            return
        for attr in REQUIRED.get(msg_type, frozenset()):
            if attr is AvpType.HOST_NAME:
                self.raw(attr)
            elif attr is AvpType.RESULT_CODE:
                self.result_code()
            elif attr in U32_AVPS:
                self.u32(attr)
            else:
                self.u16(attr)
        nonzero = NONZERO_ID.get(msg_type)
        if nonzero is not None and self.u16(nonzero) == 0:
            raise MalformedAvp(f"{msg_type.name} with {nonzero.name} 0")


def encode(msg: ControlMessage) -> bytes:
    body = b"".join(avp.encode() for avp in msg.avps)
    length = HEADER_LEN + len(body)
    if length > 0xFFFF:
        raise MalformedHeader("message too long")
    return struct.pack("!HHHHHH", CONTROL_FLAGS, length, msg.tunnel_id, msg.session_id, msg.ns, msg.nr) + body


def decode(data: bytes) -> ControlMessage:
    """Parse one control message; raises an L2tpError subclass on anything malformed."""
    if len(data) < 2:
        raise MalformedHeader("shorter than the flags word")
    (flags,) = struct.unpack("!H", data[:2])
    if not flags & T_BIT:
        raise NotControl("data message (T bit clear)")
    if flags & 0x000F != VERSION:
        raise MalformedHeader(f"version {flags & 0x000F}, not 2")
    if not flags & L_BIT or not flags & S_BIT or flags & (O_BIT | P_BIT):
        raise MalformedHeader(f"control message flags {flags:#06x}: need L and S, no O or P")
    if len(data) < HEADER_LEN:
        raise MalformedHeader(f"{len(data)} octets, header needs {HEADER_LEN}")
    _, length, tunnel_id, session_id, ns, nr = struct.unpack("!HHHHHH", data[:HEADER_LEN])
    if length < HEADER_LEN or length > len(data):
        raise MalformedHeader(f"length field {length} for a {len(data)}-octet datagram")
    avps: list[Avp] = []
    pos = HEADER_LEN
    while pos < length:
        if length - pos < AVP_HEADER_LEN:
            raise MalformedAvp(f"{length - pos} trailing octets, too short for an AVP")
        bits, vendor_id, attr_type = struct.unpack("!HHH", data[pos : pos + AVP_HEADER_LEN])
        avp_len = bits & MAX_AVP_LEN
        if avp_len < AVP_HEADER_LEN or pos + avp_len > length:
            raise MalformedAvp(f"AVP length {avp_len} at offset {pos}")
        avps.append(
            Avp(
                attr_type,
                bytes(data[pos + AVP_HEADER_LEN : pos + avp_len]),
                bool(bits & M_BIT),
                bool(bits & H_BIT),
                vendor_id,
            )
        )
        pos += avp_len
    if avps:
        first = avps[0]
        if first.vendor_id != 0 or first.attr_type != AvpType.MESSAGE_TYPE or first.hidden:
            raise MalformedAvp("first AVP is not an unhidden Message Type")
        if len(first.value) != 2:
            raise MalformedAvp(f"Message Type AVP with {len(first.value)} octets")
        (value,) = struct.unpack("!H", first.value)
        try:
            MessageType(value)
        except ValueError:
            raise UnknownMessageType(f"message type {value}") from None
    return ControlMessage(tunnel_id, session_id, ns, nr, tuple(avps))


def seq_lt(a: int, b: int) -> bool:
    """a comes before b in 16-bit sequence space (section 5.8)."""
    return a != b and ((b - a) & 0xFFFF) < 0x8000


# ------------------------------------------------------------------ data messages


def is_control(datagram: bytes) -> bool:
    """The T bit (section 3.1): a control message, not data. False for an empty datagram."""
    return bool(datagram) and bool(datagram[0] & 0x80)


def encode_data(tunnel_id: int, session_id: int, payload: bytes) -> bytes:
    """A data message with the 6-octet header (no L, S, O or P bits): the peer's IDs, then PPP."""
    return struct.pack("!HHH", VERSION, tunnel_id, session_id) + payload


def decode_data(datagram: bytes) -> tuple[int, int, bytes]:
    """(tunnel ID, session ID, payload) of a data message (section 3.1).

    Honours the L bit (Length), skips Ns/Nr (S bit) and the offset padding (O bit). Raises
    NotData for a control message and MalformedHeader for anything that does not fit.
    """
    end = len(datagram)
    if end < DATA_HEADER_LEN:
        raise MalformedHeader(f"{end} octets, a data header needs {DATA_HEADER_LEN}")
    (flags,) = struct.unpack_from("!H", datagram)
    if flags & T_BIT:
        raise NotData("control message (T bit set)")
    if flags & 0x000F != VERSION:
        raise MalformedHeader(f"version {flags & 0x000F}, not 2")
    pos = 2
    if flags & L_BIT:
        (length,) = struct.unpack_from("!H", datagram, pos)
        if length > end:
            raise MalformedHeader(f"length field {length} for a {end}-octet datagram")
        end = length
        pos = 4
    if pos + 4 > end:
        raise MalformedHeader("datagram ends inside the header")
    tunnel_id, session_id = struct.unpack_from("!HH", datagram, pos)
    pos += 4
    if flags & S_BIT:
        pos += 4  # Ns, Nr: we do not sequence data messages
        if pos > end:
            raise MalformedHeader("datagram ends inside Ns/Nr")
    if flags & O_BIT:
        if pos + 2 > end:
            raise MalformedHeader("datagram ends inside the Offset Size")
        (offset,) = struct.unpack_from("!H", datagram, pos)
        pos += 2 + offset
        if pos > end:
            raise MalformedHeader(f"offset size {offset} runs past the message")
    return tunnel_id, session_id, datagram[pos:end]


def challenge_response(message_type: MessageType, secret: bytes, challenge: bytes) -> bytes:
    """Section 5.1.1: MD5 over the message type octet of the message carrying the response
    (SCCRP 2, SCCCN 3), the shared secret and the peer's challenge."""
    return hashlib.md5(bytes((message_type,)) + secret + challenge).digest()


# ------------------------------------------------------------------ events and output


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Received(Event):
    """Every in-order non-ZLB message, after the state machine has seen it."""

    message: ControlMessage


@dataclass(frozen=True)
class Acked(Event):
    """The peer acknowledged one of our messages."""

    message_type: MessageType
    ns: int
    session_id: int  # the Session ID in the header of the acknowledged message


@dataclass(frozen=True)
class TunnelEstablished(Event):
    """The control connection is up (SCCCN sent by the LAC, received by the LNS)."""

    peer_tunnel_id: int
    peer_host_name: str


@dataclass(frozen=True)
class TunnelClosed(Event):
    """The tunnel is gone; sent at most once per tunnel."""

    reason: str
    result: int | None = None  # the StopCCN result code sent or received, if any


@dataclass(frozen=True)
class SessionEstablished(Event):
    """An incoming call is up (ICCN sent by the LAC, received by the LNS)."""

    local_session_id: int
    peer_session_id: int


@dataclass(frozen=True)
class SessionClosed(Event):
    """A session is gone (CDN either way, or its tunnel closed)."""

    local_session_id: int
    reason: str
    result: int | None = None  # the CDN result code, if any


@dataclass(frozen=True)
class Output:
    """What one call on a Tunnel produced: datagrams for the peer, events for the caller."""

    datagrams: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


# ------------------------------------------------------------------ state machines


class Role(enum.Enum):
    """Which end of the tunnel we are: the LAC sends SCCRQ and ICRQ, the LNS answers them."""

    LAC = "lac"
    LNS = "lns"


class TunnelState(enum.Enum):
    IDLE = "idle"  # LAC: before start(); LNS: waiting for the SCCRQ
    WAIT_CTL_REPLY = "wait-ctl-reply"  # LAC: SCCRQ sent
    WAIT_CTL_CONN = "wait-ctl-conn"  # LNS: SCCRP sent
    ESTABLISHED = "established"
    CLOSING = "closing"  # our StopCCN is out, waiting for its ACK
    CLOSED = "closed"


class SessionState(enum.Enum):
    WAIT_REPLY = "wait-reply"  # LAC: ICRQ sent
    WAIT_CONNECT = "wait-connect"  # LNS: ICRP sent
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass
class Session:
    local_id: int
    call_serial: int
    state: SessionState = SessionState.WAIT_REPLY
    peer_id: int = 0


@dataclass
class _Pending:
    msg: ControlMessage  # Ns set; Nr re-stamped at each (re)transmission
    deadline: float = 0.0
    tries: int = 0


@dataclass
class Stats:
    malformed: int = 0
    not_control: int = 0
    wrong_tunnel: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    retransmits: int = 0
    unexpected: int = 0
    hellos_sent: int = 0
    auth_failures: int = 0


_LIVE_STATES = (
    TunnelState.WAIT_CTL_REPLY,
    TunnelState.WAIT_CTL_CONN,
    TunnelState.ESTABLISHED,
    TunnelState.CLOSING,
)
_SETUP_STATES = (TunnelState.WAIT_CTL_REPLY, TunnelState.WAIT_CTL_CONN)


@dataclass
class Tunnel:
    """One control connection and the incoming-call sessions in it, as LAC or LNS.

    LAC: ``start()`` sends SCCRQ, ``open_session()`` sends ICRQ. LNS: construct it with
    ``role=Role.LNS`` and feed it the peer's SCCRQ (or let :class:`Lns` do that).
    """

    local_tunnel_id: int
    host_name: str = "tunvpn"
    receive_window: int = 4
    initial_timeout: float = 1.0
    max_timeout: float = 8.0
    max_retries: int = 5
    role: Role = Role.LAC
    secret: bytes | None = field(default=None, repr=False)  # tunnel authentication (5.1.1)
    hello_interval: float = 60.0  # section 6.5; 0 turns our HELLOs off
    setup_timeout: float = 60.0  # give up on a tunnel not established by then; 0 = never
    max_sessions: int = 256  # LNS: open sessions per tunnel; more ICRQs get CDN
    random_bytes: Callable[[int], bytes] = field(default=secrets.token_bytes, repr=False)
    state: TunnelState = TunnelState.IDLE
    peer_tunnel_id: int = 0
    peer_host_name: str = ""
    peer_window: int = 4
    sessions: dict[int, Session] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    ns: int = 0  # next Ns to send
    nr: int = 0  # next Ns expected from the peer
    _unacked: list[_Pending] = field(default_factory=list)
    _queued: list[ControlMessage] = field(default_factory=list)
    _ack_owed: bool = False
    _challenge: bytes | None = field(default=None, repr=False)  # the one we sent the peer
    _started: float = 0.0
    _last_received: float = 0.0
    _closed_reported: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.local_tunnel_id <= 0xFFFF:
            raise ValueError("local tunnel ID must be 1..65535")
        if self.secret is not None and not self.secret:
            raise ValueError("an empty secret: pass None for no tunnel authentication")
        if not 0 < self.max_sessions < 0xFFFF:
            raise ValueError("max_sessions must be 1..65534")

    # -- the caller's actions

    def start(self, now: float) -> Output:
        """LAC: send SCCRQ."""
        if self.role is not Role.LAC or self.state is not TunnelState.IDLE:
            raise RuntimeError(f"start() as {self.role.value} in state {self.state.value}")
        self.state = TunnelState.WAIT_CTL_REPLY
        self._started = now
        if self.secret is not None:
            self._challenge = self.random_bytes(CHALLENGE_LEN)
        return self._send(now, self.sccrq())

    def sccrq(self) -> ControlMessage:
        avps = [
            Avp(AvpType.PROTOCOL_VERSION, PROTOCOL_VERSION_1_0),
            Avp(AvpType.HOST_NAME, self.host_name.encode()),
            Avp.u32(AvpType.FRAMING_CAPABILITIES, FRAMING_SYNC | FRAMING_ASYNC),
            Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id),
            Avp.u16(AvpType.RECEIVE_WINDOW_SIZE, self.receive_window),
        ]
        if self._challenge is not None:
            avps.append(Avp(AvpType.CHALLENGE, self._challenge))
        return ControlMessage.build(MessageType.SCCRQ, 0, 0, avps)

    def open_session(self, now: float, local_session_id: int, call_serial: int = 1) -> Output:
        """LAC: send ICRQ for a new incoming call."""
        if self.role is not Role.LAC or self.state is not TunnelState.ESTABLISHED:
            raise RuntimeError(f"open_session() as {self.role.value} in tunnel state {self.state.value}")
        if not 0 < local_session_id <= 0xFFFF or local_session_id in self.sessions:
            raise ValueError(f"bad or used session ID {local_session_id}")
        self.sessions[local_session_id] = Session(local_session_id, call_serial)
        icrq = ControlMessage.build(
            MessageType.ICRQ,
            self.peer_tunnel_id,
            0,
            [
                Avp.u16(AvpType.ASSIGNED_SESSION_ID, local_session_id),
                Avp.u32(AvpType.CALL_SERIAL_NUMBER, call_serial),
            ],
        )
        return self._send(now, icrq)

    def close_session(self, now: float, local_session_id: int, result: int = ResultCode.ADMIN) -> Output:
        """Send CDN; the session is closed at once (CDN needs no reply beyond the ACK)."""
        session = self.sessions.get(local_session_id)
        if session is None or session.state is SessionState.CLOSED:
            return Output()
        session.state = SessionState.CLOSED
        out = self._send(now, self._cdn(session.peer_id, local_session_id, result))
        return Output(out.datagrams, (*out.events, SessionClosed(local_session_id, "closed by us", result)))

    def close(self, now: float, result: int = ResultCode.GENERAL_CLEAR, message: str = "") -> Output:
        """Send StopCCN; TunnelClosed comes when the peer acknowledges it (or retries run out)."""
        if self.state in (TunnelState.CLOSING, TunnelState.CLOSED, TunnelState.IDLE):
            return Output()
        return self._send_stopccn(now, result, message)

    def data_message(self, local_session_id: int, payload: bytes) -> bytes:
        """A data message carrying ``payload`` (a PPP frame) to the peer's end of the session."""
        session = self.sessions.get(local_session_id)
        if session is None or session.state is not SessionState.ESTABLISHED:
            raise ValueError(f"session {local_session_id} is not established")
        return encode_data(self.peer_tunnel_id, session.peer_id, payload)

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        deadlines = [p.deadline for p in self._unacked]
        for due in (self._hello_due(), self._setup_due()):
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def poll(self, now: float) -> Output:
        """Retransmit what is due, send a HELLO after silence; give up after max_retries."""
        datagrams: list[bytes] = []
        for pending in self._unacked:
            if pending.deadline > now:
                continue
            if pending.tries > self.max_retries:
                return self._fail("peer stopped acknowledging (retransmissions exhausted)")
            datagrams.append(self._transmit(pending, now))
            self.stats.retransmits += 1
        events: list[Event] = []
        setup_due = self._setup_due()
        if setup_due is not None and now >= setup_due:
            out = self._stop_for("tunnel setup timed out", now, StopCcnResult.GENERAL_ERROR)
            datagrams += out.datagrams
            events += out.events
        hello_due = self._hello_due()
        if hello_due is not None and now >= hello_due:
            self.stats.hellos_sent += 1
            datagrams += self._send(
                now, ControlMessage.build(MessageType.HELLO, self.peer_tunnel_id, 0)
            ).datagrams
        return Output(tuple(datagrams), tuple(events))

    # -- the receive path

    def receive(self, data: bytes, now: float) -> Output:
        """One datagram from the peer. Never raises on bad input: counts and drops it."""
        try:
            msg = decode(data)
            msg.validate()
        except NotControl:
            self.stats.not_control += 1
            return Output()
        except L2tpError:
            self.stats.malformed += 1
            return Output()
        return self.receive_message(msg, now)

    def receive_message(self, msg: ControlMessage, now: float) -> Output:
        """A message already through decode() and validate() (what Lns uses)."""
        if self.state is TunnelState.IDLE and (
            self.role is Role.LAC or msg.message_type is not MessageType.SCCRQ or msg.ns != 0
        ):
            self.stats.unexpected += 1
            return Output()
        expected_tunnel_id = 0 if self.state is TunnelState.IDLE else self.local_tunnel_id
        if msg.tunnel_id != expected_tunnel_id:
            self.stats.wrong_tunnel += 1
            return Output()
        if self.state is TunnelState.CLOSED:
            # Section 5.7: keep acknowledging retransmissions (of StopCCN, say) for a while.
            if not msg.is_zlb and seq_lt(msg.ns, self.nr):
                self.stats.duplicates += 1
                return Output((self._zlb(),))
            self.stats.unexpected += 1
            return Output()
        self._last_received = now
        events: list[Event] = list(self._process_nr(msg.nr))
        datagrams: list[bytes] = []
        if not msg.is_zlb:
            if msg.ns == self.nr:
                self.nr = (self.nr + 1) & 0xFFFF
                self._ack_owed = True
                try:
                    out = self._handle(msg, now)
                except L2tpError:
                    self.stats.malformed += 1
                    out = Output()
                datagrams += out.datagrams
                events += out.events
                events.append(Received(msg))
            elif seq_lt(msg.ns, self.nr):
                self.stats.duplicates += 1  # our ACK was lost: ACK again
                self._ack_owed = True
            else:
                self.stats.out_of_order += 1  # not queued: the peer retransmits it
        datagrams += self._flush(now)
        if self._ack_owed and self.state is not TunnelState.IDLE:
            datagrams.append(self._zlb())
        return Output(tuple(datagrams), tuple(events))

    # -- the state machine: TRANSITIONS (below the class) picks one of these

    def _handle(self, msg: ControlMessage, now: float) -> Output:
        msg_type = msg.message_type
        assert msg_type is not None
        handler = TRANSITIONS.get((self.role, self.state, msg_type))
        if handler is None:
            self.stats.unexpected += 1
            return Output()
        return handler(self, msg, now)

    def _on_sccrq(self, msg: ControlMessage, now: float) -> Output:
        """LNS: answer with SCCRP (section 5.1), challenging the LAC if we hold a secret."""
        self._started = now
        self._take_peer_parameters(msg)
        if msg.raw(AvpType.PROTOCOL_VERSION) != PROTOCOL_VERSION_1_0:
            return self._stop_for("peer speaks another L2TP version", now, StopCcnResult.UNSUPPORTED_VERSION)
        avps = [
            Avp(AvpType.PROTOCOL_VERSION, PROTOCOL_VERSION_1_0),
            Avp.u32(AvpType.FRAMING_CAPABILITIES, FRAMING_SYNC | FRAMING_ASYNC),
            Avp.u32(AvpType.BEARER_CAPABILITIES, 0),
            Avp(AvpType.HOST_NAME, self.host_name.encode()),
            Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id),
            Avp.u16(AvpType.RECEIVE_WINDOW_SIZE, self.receive_window),
        ]
        if msg.find(AvpType.CHALLENGE) is not None:
            if self.secret is None:
                return self._refuse_challenge(now)
            response = challenge_response(MessageType.SCCRP, self.secret, self._peer_challenge(msg))
            avps.append(Avp(AvpType.CHALLENGE_RESPONSE, response))
        if self.secret is not None:
            self._challenge = self.random_bytes(CHALLENGE_LEN)
            avps.append(Avp(AvpType.CHALLENGE, self._challenge))
        self.state = TunnelState.WAIT_CTL_CONN
        return self._send(now, ControlMessage.build(MessageType.SCCRP, self.peer_tunnel_id, 0, avps))

    def _on_sccrp(self, msg: ControlMessage, now: float) -> Output:
        """LAC: check the LNS's answer to our challenge, answer its own, send SCCCN."""
        self._take_peer_parameters(msg)
        if not self._response_ok(msg, MessageType.SCCRP):
            return self._auth_failed(now)
        avps: list[Avp] = []
        if msg.find(AvpType.CHALLENGE) is not None:
            if self.secret is None:
                return self._refuse_challenge(now)
            response = challenge_response(MessageType.SCCCN, self.secret, self._peer_challenge(msg))
            avps.append(Avp(AvpType.CHALLENGE_RESPONSE, response))
        self.state = TunnelState.ESTABLISHED
        out = self._send(now, ControlMessage.build(MessageType.SCCCN, self.peer_tunnel_id, 0, avps))
        return Output(
            out.datagrams, (TunnelEstablished(self.peer_tunnel_id, self.peer_host_name), *out.events)
        )

    def _on_scccn(self, msg: ControlMessage, now: float) -> Output:
        """LNS: the tunnel is up once the LAC has answered our challenge (if we sent one)."""
        if not self._response_ok(msg, MessageType.SCCCN):
            return self._auth_failed(now)
        self.state = TunnelState.ESTABLISHED
        return Output((), (TunnelEstablished(self.peer_tunnel_id, self.peer_host_name),))

    def _on_stopccn(self, msg: ControlMessage, now: float) -> Output:
        result = msg.result_code()[0]
        self._unacked.clear()
        self._queued.clear()
        events: list[Event] = self._close_sessions("tunnel stopped by peer")
        self.state = TunnelState.CLOSED
        # ACK it now: after CLOSED the ZLB at the end of receive() is still sent.
        zlb = self._zlb()
        self._ack_owed = False
        return Output((zlb,), (*events, *self._closed("StopCCN from peer", result)))

    def _on_hello(self, msg: ControlMessage, now: float) -> Output:
        return Output()  # section 6.5: the ZLB that receive() sends is the whole answer

    def _on_icrq(self, msg: ControlMessage, now: float) -> Output:
        """LNS: a new incoming call; answer with ICRP carrying our Session ID (section 5.6)."""
        peer_session_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        call_serial = msg.u32(AvpType.CALL_SERIAL_NUMBER)
        for sid in [s.local_id for s in self.sessions.values() if s.state is SessionState.CLOSED]:
            del self.sessions[sid]
        if len(self.sessions) >= self.max_sessions:
            return self._send(now, self._cdn(peer_session_id, 0, CdnResult.TEMPORARY_NO_RESOURCES))
        session = Session(self._new_session_id(), call_serial, SessionState.WAIT_CONNECT, peer_session_id)
        self.sessions[session.local_id] = session
        icrp = ControlMessage.build(
            MessageType.ICRP,
            self.peer_tunnel_id,
            peer_session_id,
            [Avp.u16(AvpType.ASSIGNED_SESSION_ID, session.local_id)],
        )
        return self._send(now, icrp)

    def _on_icrp(self, msg: ControlMessage, now: float) -> Output:
        """LAC: the LNS took the call; send ICCN."""
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is not SessionState.WAIT_REPLY:
            self.stats.unexpected += 1
            return Output()
        session.peer_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        session.state = SessionState.ESTABLISHED
        iccn = ControlMessage.build(
            MessageType.ICCN,
            self.peer_tunnel_id,
            session.peer_id,
            [
                Avp.u32(AvpType.TX_CONNECT_SPEED, 100_000_000),
                Avp.u32(AvpType.FRAMING_TYPE, FRAMING_SYNC),
            ],
        )
        out = self._send(now, iccn)
        return Output(out.datagrams, (SessionEstablished(session.local_id, session.peer_id), *out.events))

    def _on_iccn(self, msg: ControlMessage, now: float) -> Output:
        """LNS: the call is connected."""
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is not SessionState.WAIT_CONNECT:
            self.stats.unexpected += 1
            return Output()
        session.state = SessionState.ESTABLISHED
        return Output((), (SessionEstablished(session.local_id, session.peer_id),))

    def _on_cdn(self, msg: ControlMessage, now: float) -> Output:
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is SessionState.CLOSED:
            self.stats.unexpected += 1
            return Output()
        session.state = SessionState.CLOSED
        result = msg.result_code()[0]
        return Output((), (SessionClosed(session.local_id, "CDN from peer", result),))

    def _on_ocrq(self, msg: ControlMessage, now: float) -> Output:
        """Outgoing calls are not supported: refuse at once with CDN (section 5.6)."""
        peer_session_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        cdn = self._cdn(peer_session_id, 0, CdnResult.PERMANENT_NO_FACILITIES, "outgoing calls not supported")
        return self._send(now, cdn)

    # -- authentication (section 5.1.1)

    def _peer_challenge(self, msg: ControlMessage) -> bytes:
        challenge = msg.raw(AvpType.CHALLENGE)
        if not challenge:
            raise MalformedAvp("empty Challenge")
        return challenge

    def _response_ok(self, msg: ControlMessage, carrier: MessageType) -> bool:
        """True if we sent no challenge, or the peer's response to it is right."""
        if self._challenge is None:
            return True
        assert self.secret is not None
        response = msg.find(AvpType.CHALLENGE_RESPONSE)
        if response is None or response.hidden:
            return False
        expected = challenge_response(carrier, self.secret, self._challenge)
        return hmac.compare_digest(response.value, expected)

    def _auth_failed(self, now: float) -> Output:
        self.stats.auth_failures += 1
        reason = "peer failed tunnel authentication (Challenge Response missing or wrong)"
        return self._stop_for(reason, now, StopCcnResult.NOT_AUTHORIZED)

    def _refuse_challenge(self, now: float) -> Output:
        reason = "peer demands tunnel authentication and we hold no secret"
        return self._stop_for(reason, now, StopCcnResult.GENERAL_ERROR, "no shared secret configured")

    # -- internals

    def _take_peer_parameters(self, msg: ControlMessage) -> None:
        self.peer_tunnel_id = msg.u16(AvpType.ASSIGNED_TUNNEL_ID)
        self.peer_host_name = msg.text(AvpType.HOST_NAME)
        if msg.find(AvpType.RECEIVE_WINDOW_SIZE) is not None:
            self.peer_window = max(1, msg.u16(AvpType.RECEIVE_WINDOW_SIZE))

    def _new_session_id(self) -> int:
        for _ in range(16):
            session_id = int.from_bytes(self.random_bytes(2), "big")
            if session_id and session_id not in self.sessions:
                return session_id
        return next(i for i in range(1, 0x10000) if i not in self.sessions)  # max_sessions < 65535

    def _cdn(
        self, peer_session_id: int, local_session_id: int, result: int, message: str = ""
    ) -> ControlMessage:
        return ControlMessage.build(
            MessageType.CDN,
            self.peer_tunnel_id,
            peer_session_id,
            [Avp.result(result, None, message), Avp.u16(AvpType.ASSIGNED_SESSION_ID, local_session_id)],
        )

    def _hello_due(self) -> float | None:
        if (
            self.state is not TunnelState.ESTABLISHED
            or self.hello_interval <= 0
            or self._unacked  # a message in flight already tells us whether the peer lives
            or self._queued
        ):
            return None
        return self._last_received + self.hello_interval

    def _setup_due(self) -> float | None:
        if self.state not in _SETUP_STATES or self.setup_timeout <= 0:
            return None
        return self._started + self.setup_timeout

    def _close_sessions(self, reason: str) -> list[Event]:
        events: list[Event] = []
        for session in self.sessions.values():
            if session.state is not SessionState.CLOSED:
                session.state = SessionState.CLOSED
                events.append(SessionClosed(session.local_id, reason))
        return events

    def _closed(self, reason: str, result: int | None = None) -> tuple[Event, ...]:
        """The TunnelClosed event, the first time only."""
        if self._closed_reported:
            return ()
        self._closed_reported = True
        return (TunnelClosed(reason, result),)

    def _send_stopccn(self, now: float, result: int, message: str) -> Output:
        events = self._close_sessions("tunnel closing")
        self.state = TunnelState.CLOSING
        stop = ControlMessage.build(
            MessageType.StopCCN,
            self.peer_tunnel_id,
            0,
            [Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id), Avp.result(result, None, message)],
        )
        out = self._send(now, stop)
        return Output(out.datagrams, (*events, *out.events))

    def _stop_for(self, reason: str, now: float, result: int, message: str = "") -> Output:
        """Tear the tunnel down for a reason of ours: StopCCN now, TunnelClosed now."""
        out = self._send_stopccn(now, result, message)
        return Output(out.datagrams, (*out.events, *self._closed(reason, result)))

    def _fail(self, reason: str) -> Output:
        self._unacked.clear()
        self._queued.clear()
        events = self._close_sessions(reason)
        self.state = TunnelState.CLOSED
        return Output((), (*events, *self._closed(reason)))

    def _process_nr(self, nr: int) -> list[Event]:
        events: list[Event] = []
        keep: list[_Pending] = []
        for pending in self._unacked:
            if seq_lt(pending.msg.ns, nr):
                msg_type = pending.msg.message_type
                assert msg_type is not None
                events.append(Acked(msg_type, pending.msg.ns, pending.msg.session_id))
                if msg_type is MessageType.StopCCN and self.state is TunnelState.CLOSING:
                    self.state = TunnelState.CLOSED
                    events += self._closed("our StopCCN was acknowledged", None)
            else:
                keep.append(pending)
        self._unacked = keep
        return events

    def _send(self, now: float, msg: ControlMessage) -> Output:
        self._queued.append(msg)
        return Output(tuple(self._flush(now)))

    def _flush(self, now: float) -> list[bytes]:
        datagrams: list[bytes] = []
        while self._queued and len(self._unacked) < self.peer_window:
            msg = self._queued.pop(0)
            pending = _Pending(ControlMessage(msg.tunnel_id, msg.session_id, self.ns, 0, msg.avps))
            self.ns = (self.ns + 1) & 0xFFFF
            self._unacked.append(pending)
            datagrams.append(self._transmit(pending, now))
        return datagrams

    def _transmit(self, pending: _Pending, now: float) -> bytes:
        msg = pending.msg
        pending.deadline = now + min(self.initial_timeout * (2**pending.tries), self.max_timeout)
        pending.tries += 1
        self._ack_owed = False  # Nr rides on this message
        return encode(ControlMessage(msg.tunnel_id, msg.session_id, msg.ns, self.nr, msg.avps))

    def _zlb(self) -> bytes:
        self._ack_owed = False
        return encode(ControlMessage(self.peer_tunnel_id, 0, self.ns, self.nr))


Handler = Callable[[Tunnel, ControlMessage, float], Output]


def _transitions() -> dict[tuple[Role, TunnelState, MessageType], Handler]:
    """Every legal (role, tunnel state, message) triple; anything else is counted as unexpected."""
    lac, lns, up = Role.LAC, Role.LNS, TunnelState.ESTABLISHED
    table: dict[tuple[Role, TunnelState, MessageType], Handler] = {
        (lns, TunnelState.IDLE, MessageType.SCCRQ): Tunnel._on_sccrq,
        (lac, TunnelState.WAIT_CTL_REPLY, MessageType.SCCRP): Tunnel._on_sccrp,
        (lns, TunnelState.WAIT_CTL_CONN, MessageType.SCCCN): Tunnel._on_scccn,
        (lns, up, MessageType.ICRQ): Tunnel._on_icrq,
        (lac, up, MessageType.ICRP): Tunnel._on_icrp,
        (lns, up, MessageType.ICCN): Tunnel._on_iccn,
    }
    for role in Role:
        table[(role, up, MessageType.CDN)] = Tunnel._on_cdn
        table[(role, up, MessageType.OCRQ)] = Tunnel._on_ocrq
        for state in _LIVE_STATES:
            table[(role, state, MessageType.StopCCN)] = Tunnel._on_stopccn
            table[(role, state, MessageType.HELLO)] = Tunnel._on_hello
    return table


TRANSITIONS = _transitions()


# ------------------------------------------------------------------ the LNS dispatcher

Address = tuple[str, int]


@dataclass(frozen=True)
class LnsEvent:
    """An event of one of the Lns's tunnels."""

    peer: Address  # the LAC's UDP address
    local_tunnel_id: int  # our Tunnel ID: Lns.tunnel() finds the Tunnel
    event: Event


@dataclass(frozen=True)
class LnsOutput:
    """What one call on an Lns produced: addressed datagrams and tunnel events."""

    datagrams: tuple[tuple[Address, bytes], ...] = ()
    events: tuple[LnsEvent, ...] = ()

    def __add__(self, other: LnsOutput) -> LnsOutput:
        return LnsOutput(self.datagrams + other.datagrams, self.events + other.events)


@dataclass
class LnsStats:
    """Datagrams the dispatcher dropped, by reason, and tunnels it made and forgot."""

    malformed: int = 0
    not_control: int = 0
    unknown_tunnel: int = 0
    wrong_peer: int = 0  # right Tunnel ID, other address: not the tunnel's peer
    duplicate_sccrq: int = 0
    refused_total_limit: int = 0
    refused_peer_limit: int = 0
    tunnels_created: int = 0
    tunnels_forgotten: int = 0


@dataclass
class _Entry:
    tunnel: Tunnel
    peer: Address
    peer_tunnel_id: int
    closed_at: float | None = None


class Lns:
    """Sans-I/O LNS for many LACs: one socket's control messages in, addressed datagrams out.

    A new (peer address, peer Assigned Tunnel ID) with an SCCRQ makes a tunnel; a retransmitted
    SCCRQ goes to the tunnel it made. Everything else is routed by our Tunnel ID and must come
    from that tunnel's peer. A closed tunnel lingers ``linger`` seconds to re-ACK
    retransmissions, then it is forgotten. Over ``max_tunnels`` (live tunnels in total) or
    ``max_tunnels_per_peer`` (per peer IP address) an SCCRQ is dropped unanswered.

    Data messages are not handled here: use :func:`is_control` / :func:`decode_data` on the
    fast path, and :meth:`data_message` to send.
    """

    def __init__(
        self,
        host_name: str = "tunvpn-lns",
        secret: bytes | None = None,
        max_tunnels: int = 1024,
        max_tunnels_per_peer: int = 4,
        max_sessions_per_tunnel: int = 256,
        hello_interval: float = 60.0,
        receive_window: int = 4,
        linger: float = 31.0,  # a LAC's full retransmission cycle (1+2+4+8+8+8 s)
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError("an empty secret: pass None for no tunnel authentication")
        self.host_name = host_name
        self._secret = secret
        self.max_tunnels = max_tunnels
        self.max_tunnels_per_peer = max_tunnels_per_peer
        self.max_sessions_per_tunnel = max_sessions_per_tunnel
        self.hello_interval = hello_interval
        self.receive_window = receive_window
        self.linger = linger
        self.random_bytes = random_bytes
        self.stats = LnsStats()
        self._entries: dict[int, _Entry] = {}
        self._by_peer_tunnel: dict[tuple[Address, int], int] = {}

    def __repr__(self) -> str:
        secret = "<set>" if self._secret else None  # never the secret itself
        return f"Lns(host_name={self.host_name!r}, tunnels={len(self._entries)}, secret={secret})"

    # -- lookups

    def tunnel(self, local_tunnel_id: int) -> Tunnel | None:
        entry = self._entries.get(local_tunnel_id)
        return entry.tunnel if entry else None

    def peer_of(self, local_tunnel_id: int) -> Address | None:
        entry = self._entries.get(local_tunnel_id)
        return entry.peer if entry else None

    def live_tunnels(self) -> list[Tunnel]:
        """Tunnels not closed yet (the lingering closed ones are left out)."""
        return [e.tunnel for e in self._entries.values() if e.closed_at is None]

    def data_message(
        self, local_tunnel_id: int, local_session_id: int, payload: bytes
    ) -> tuple[Address, bytes]:
        """Where to send ``payload`` for one of our sessions, and the data message to send."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            raise ValueError(f"no tunnel {local_tunnel_id}")
        return entry.peer, entry.tunnel.data_message(local_session_id, payload)

    # -- I/O-free entry points

    def receive(self, datagram: bytes, peer: Address, now: float) -> LnsOutput:
        """One control datagram from ``peer``. Never raises on bad input: counts and drops it."""
        if not is_control(datagram):
            self.stats.not_control += 1
            return LnsOutput()
        try:
            msg = decode(datagram)
            msg.validate()
        except L2tpError:
            self.stats.malformed += 1
            return LnsOutput()
        if msg.tunnel_id == 0:
            if msg.message_type is MessageType.SCCRQ:
                return self._on_sccrq(msg, peer, now)
            self.stats.unknown_tunnel += 1
            return LnsOutput()
        entry = self._entries.get(msg.tunnel_id)
        if entry is None:
            self.stats.unknown_tunnel += 1
            return LnsOutput()
        if entry.peer != peer:
            self.stats.wrong_peer += 1
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.receive_message(msg, now), now)

    def poll(self, now: float) -> LnsOutput:
        """Retransmissions, HELLOs and timeouts of every tunnel; forget closed ones after linger."""
        out = LnsOutput()
        for local_id, entry in list(self._entries.items()):
            if entry.closed_at is None:
                out += self._wrap(entry, entry.tunnel.poll(now), now)
            elif now >= entry.closed_at + self.linger:
                self._forget(local_id)
        return out

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for entry in self._entries.values():
            due = entry.tunnel.next_deadline() if entry.closed_at is None else entry.closed_at + self.linger
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def close_session(
        self, now: float, local_tunnel_id: int, local_session_id: int, result: int = ResultCode.ADMIN
    ) -> LnsOutput:
        """CDN for one of our sessions; nothing if the tunnel or session is unknown or closed."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.close_session(now, local_session_id, result), now)

    def close_tunnel(
        self, now: float, local_tunnel_id: int, result: int = ResultCode.GENERAL_CLEAR, message: str = ""
    ) -> LnsOutput:
        """StopCCN for one tunnel; TunnelClosed comes when the LAC acknowledges it."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.close(now, result, message), now)

    def close_all(self, now: float) -> LnsOutput:
        """StopCCN (result 6, shutting down) to every live tunnel."""
        out = LnsOutput()
        for entry in list(self._entries.values()):
            if entry.closed_at is None:
                out += self._wrap(entry, entry.tunnel.close(now, StopCcnResult.SHUTTING_DOWN), now)
        return out

    # -- internals

    def _on_sccrq(self, msg: ControlMessage, peer: Address, now: float) -> LnsOutput:
        peer_tunnel_id = msg.u16(AvpType.ASSIGNED_TUNNEL_ID)  # validate() checked it, non-zero
        known = self._by_peer_tunnel.get((peer, peer_tunnel_id))
        if known is not None:
            self.stats.duplicate_sccrq += 1  # our SCCRP or its ACK got lost: the tunnel re-ACKs
            entry = self._entries[known]
            return self._wrap(entry, entry.tunnel.receive_message(msg, now), now)
        live = [e for e in self._entries.values() if e.closed_at is None]
        if len(live) >= self.max_tunnels:
            self.stats.refused_total_limit += 1
            return LnsOutput()
        if sum(1 for e in live if e.peer[0] == peer[0]) >= self.max_tunnels_per_peer:
            self.stats.refused_peer_limit += 1
            return LnsOutput()
        local_id = self._new_tunnel_id()
        if local_id is None:
            self.stats.refused_total_limit += 1
            return LnsOutput()
        tunnel = Tunnel(
            local_id,
            host_name=self.host_name,
            receive_window=self.receive_window,
            role=Role.LNS,
            secret=self._secret,
            hello_interval=self.hello_interval,
            max_sessions=self.max_sessions_per_tunnel,
            random_bytes=self.random_bytes,
        )
        out = tunnel.receive_message(msg, now)
        if tunnel.state is TunnelState.IDLE:  # the SCCRQ did not get through the state machine
            self.stats.malformed += 1
            return LnsOutput()
        entry = _Entry(tunnel, peer, peer_tunnel_id)
        self._entries[local_id] = entry
        self._by_peer_tunnel[(peer, peer_tunnel_id)] = local_id
        self.stats.tunnels_created += 1
        return self._wrap(entry, out, now)

    def _new_tunnel_id(self) -> int | None:
        for _ in range(16):
            local_id = int.from_bytes(self.random_bytes(2), "big")
            if local_id and local_id not in self._entries:
                return local_id
        return next((i for i in range(1, 0x10000) if i not in self._entries), None)

    def _wrap(self, entry: _Entry, out: Output, now: float) -> LnsOutput:
        if entry.closed_at is None and entry.tunnel.state is TunnelState.CLOSED:
            entry.closed_at = now
        local_id = entry.tunnel.local_tunnel_id
        return LnsOutput(
            tuple((entry.peer, d) for d in out.datagrams),
            tuple(LnsEvent(entry.peer, local_id, e) for e in out.events),
        )

    def _forget(self, local_id: int) -> None:
        entry = self._entries.pop(local_id)
        self._by_peer_tunnel.pop((entry.peer, entry.peer_tunnel_id), None)
        self.stats.tunnels_forgotten += 1
