"""Sans-I/O L2TP control connection, LAC/initiator side (RFC 2661).

No sockets, threads or clocks: the caller passes datagrams and ``now`` (seconds, any
monotonic origin) in and gets datagrams and events out.

* codec: the control message header (section 3.1: T/L/S/O/P bits, Ns/Nr) and AVPs
  (section 4.1: M/H bits, vendor 0) with the AVP and message type numbers of section 4.4/3.2;
* reliable delivery (section 5.8): Ns/Nr, a send window of the peer's Receive Window Size,
  retransmission with exponential back-off, ZLB ACKs;
* the tunnel (SCCRQ -> SCCRP -> SCCCN, StopCCN) and incoming-call session (ICRQ -> ICRP ->
  ICCN, CDN) state machines for the side that initiates both.

Not here (yet): tunnel authentication (Challenge / Challenge Response AVPs: a peer that sends a
Challenge gets the tunnel torn down), hidden AVPs (H bit: kept as opaque bytes), outgoing calls
(OCRQ), WEN/SLI, the data channel, and our own HELLO keepalives (the peer's are acked).

Malformed input raises a :class:`L2tpError` subclass from the decoder; :meth:`Tunnel.receive`
never raises: it counts the datagram in :attr:`Tunnel.stats` and drops it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "AvpType",
    "MessageType",
    "ResultCode",
    "L2tpError",
    "MalformedHeader",
    "MalformedAvp",
    "MissingAvp",
    "UnknownMessageType",
    "NotControl",
    "Avp",
    "ControlMessage",
    "decode",
    "encode",
    "Tunnel",
    "TunnelState",
    "SessionState",
    "Output",
    "Event",
    "TunnelEstablished",
    "TunnelClosed",
    "SessionEstablished",
    "SessionClosed",
    "Acked",
    "Received",
]

VERSION = 2
T_BIT, L_BIT, S_BIT, O_BIT, P_BIT = 0x8000, 0x4000, 0x0800, 0x0200, 0x0100
CONTROL_FLAGS = T_BIT | L_BIT | S_BIT | VERSION
HEADER_LEN = 12
M_BIT, H_BIT = 0x8000, 0x4000
AVP_HEADER_LEN = 6
MAX_AVP_LEN = 0x3FF


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
    MessageType.ICRQ: frozenset({AvpType.ASSIGNED_SESSION_ID, AvpType.CALL_SERIAL_NUMBER}),
    MessageType.ICRP: frozenset({AvpType.ASSIGNED_SESSION_ID}),
    MessageType.ICCN: frozenset({AvpType.TX_CONNECT_SPEED, AvpType.FRAMING_TYPE}),
    MessageType.CDN: frozenset({AvpType.RESULT_CODE, AvpType.ASSIGNED_SESSION_ID}),
}


# ------------------------------------------------------------------ errors


class L2tpError(ValueError):
    """Malformed or unacceptable L2TP input."""


class NotControl(L2tpError):
    """A data message (T bit clear): not for the control connection."""


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
            if attr in (AvpType.HOST_NAME, AvpType.RESULT_CODE):
                self.raw(attr) if attr is AvpType.HOST_NAME else self.result_code()
            elif attr in (AvpType.FRAMING_CAPABILITIES, AvpType.TX_CONNECT_SPEED, AvpType.FRAMING_TYPE):
                self.u32(attr)
            else:
                self.u16(attr)


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
    session_id: int


@dataclass(frozen=True)
class TunnelEstablished(Event):
    peer_tunnel_id: int
    peer_host_name: str


@dataclass(frozen=True)
class TunnelClosed(Event):
    reason: str
    result: int | None = None


@dataclass(frozen=True)
class SessionEstablished(Event):
    local_session_id: int
    peer_session_id: int


@dataclass(frozen=True)
class SessionClosed(Event):
    local_session_id: int
    reason: str
    result: int | None = None


@dataclass(frozen=True)
class Output:
    datagrams: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


# ------------------------------------------------------------------ state machines


class TunnelState(enum.Enum):
    IDLE = "idle"
    WAIT_CTL_REPLY = "wait-ctl-reply"
    ESTABLISHED = "established"
    CLOSING = "closing"  # our StopCCN is out, waiting for its ACK
    CLOSED = "closed"


class SessionState(enum.Enum):
    WAIT_REPLY = "wait-reply"
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


@dataclass
class Tunnel:
    """One control connection we initiate (LAC side) and the incoming-call sessions in it."""

    local_tunnel_id: int
    host_name: str = "tunvpn"
    receive_window: int = 4
    initial_timeout: float = 1.0
    max_timeout: float = 8.0
    max_retries: int = 5
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

    def __post_init__(self) -> None:
        if not 0 < self.local_tunnel_id <= 0xFFFF:
            raise ValueError("local tunnel ID must be 1..65535")

    # -- the caller's actions

    def start(self, now: float) -> Output:
        """Send SCCRQ."""
        if self.state is not TunnelState.IDLE:
            raise RuntimeError(f"start() in state {self.state.value}")
        self.state = TunnelState.WAIT_CTL_REPLY
        return self._send(now, self.sccrq())

    def sccrq(self) -> ControlMessage:
        return ControlMessage.build(
            MessageType.SCCRQ,
            0,
            0,
            [
                Avp(AvpType.PROTOCOL_VERSION, b"\x01\x00"),
                Avp(AvpType.HOST_NAME, self.host_name.encode()),
                Avp.u32(AvpType.FRAMING_CAPABILITIES, FRAMING_SYNC | FRAMING_ASYNC),
                Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id),
                Avp.u16(AvpType.RECEIVE_WINDOW_SIZE, self.receive_window),
            ],
        )

    def open_session(self, now: float, local_session_id: int, call_serial: int = 1) -> Output:
        """Send ICRQ for a new incoming call."""
        if self.state is not TunnelState.ESTABLISHED:
            raise RuntimeError(f"open_session() in tunnel state {self.state.value}")
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
        cdn = ControlMessage.build(
            MessageType.CDN,
            self.peer_tunnel_id,
            session.peer_id,
            [Avp.result(result), Avp.u16(AvpType.ASSIGNED_SESSION_ID, local_session_id)],
        )
        out = self._send(now, cdn)
        return Output(out.datagrams, (*out.events, SessionClosed(local_session_id, "closed by us", result)))

    def close(self, now: float, result: int = ResultCode.GENERAL_CLEAR) -> Output:
        """Send StopCCN; TunnelClosed comes when the peer acknowledges it (or retries run out)."""
        if self.state in (TunnelState.CLOSING, TunnelState.CLOSED, TunnelState.IDLE):
            return Output()
        events: list[Event] = []
        for session in self.sessions.values():
            if session.state is not SessionState.CLOSED:
                session.state = SessionState.CLOSED
                events.append(SessionClosed(session.local_id, "tunnel closing"))
        self.state = TunnelState.CLOSING
        stop = ControlMessage.build(
            MessageType.StopCCN,
            self.peer_tunnel_id,
            0,
            [Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id), Avp.result(result)],
        )
        out = self._send(now, stop)
        return Output(out.datagrams, (*events, *out.events))

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        return min((p.deadline for p in self._unacked), default=None)

    def poll(self, now: float) -> Output:
        """Retransmit what is due; give up on the tunnel after max_retries."""
        datagrams: list[bytes] = []
        for pending in self._unacked:
            if pending.deadline > now:
                continue
            if pending.tries > self.max_retries:
                return self._fail("peer stopped acknowledging (retransmissions exhausted)")
            datagrams.append(self._transmit(pending, now))
            self.stats.retransmits += 1
        return Output(tuple(datagrams))

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
        if self.state in (TunnelState.IDLE, TunnelState.CLOSED):
            self.stats.unexpected += 1
            return Output()
        if msg.tunnel_id != self.local_tunnel_id:
            self.stats.wrong_tunnel += 1
            return Output()
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

    # -- internals

    def _handle(self, msg: ControlMessage, now: float) -> Output:
        msg_type = msg.message_type
        if msg_type is MessageType.SCCRP and self.state is TunnelState.WAIT_CTL_REPLY:
            if msg.find(AvpType.CHALLENGE) is not None:
                return self._stop_for("peer demands tunnel authentication, which we do not do", now)
            self.peer_tunnel_id = msg.u16(AvpType.ASSIGNED_TUNNEL_ID)
            self.peer_host_name = msg.text(AvpType.HOST_NAME)
            if msg.find(AvpType.RECEIVE_WINDOW_SIZE) is not None:
                self.peer_window = max(1, msg.u16(AvpType.RECEIVE_WINDOW_SIZE))
            self.state = TunnelState.ESTABLISHED
            out = self._send(now, ControlMessage.build(MessageType.SCCCN, self.peer_tunnel_id, 0))
            return Output(
                out.datagrams, (TunnelEstablished(self.peer_tunnel_id, self.peer_host_name), *out.events)
            )
        if msg_type is MessageType.StopCCN:
            result = msg.result_code()[0]
            self._unacked.clear()
            self._queued.clear()
            events: list[Event] = [
                SessionClosed(s.local_id, "tunnel stopped by peer")
                for s in self.sessions.values()
                if s.state is not SessionState.CLOSED
            ]
            for s in self.sessions.values():
                s.state = SessionState.CLOSED
            self.state = TunnelState.CLOSED
            # ACK it now: after CLOSED the ZLB at the end of receive() is still sent.
            zlb = self._zlb()
            self._ack_owed = False
            return Output((zlb,), (*events, TunnelClosed("StopCCN from peer", result)))
        if msg_type is MessageType.HELLO:
            return Output()
        if self.state is not TunnelState.ESTABLISHED:
            self.stats.unexpected += 1
            return Output()
        session = self.sessions.get(msg.session_id)
        if msg_type is MessageType.ICRP and session and session.state is SessionState.WAIT_REPLY:
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
        if msg_type is MessageType.CDN and session and session.state is not SessionState.CLOSED:
            session.state = SessionState.CLOSED
            result = msg.result_code()[0]
            return Output((), (SessionClosed(session.local_id, "CDN from peer", result),))
        self.stats.unexpected += 1
        return Output()

    def _stop_for(self, reason: str, now: float) -> Output:
        self.state = TunnelState.ESTABLISHED  # so close() sends StopCCN
        out = self.close(now, ResultCode.GENERAL_ERROR)
        return Output(out.datagrams, (*out.events, TunnelClosed(reason)))

    def _fail(self, reason: str) -> Output:
        self._unacked.clear()
        self._queued.clear()
        for s in self.sessions.values():
            s.state = SessionState.CLOSED
        self.state = TunnelState.CLOSED
        return Output((), (TunnelClosed(reason),))

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
                    events.append(TunnelClosed("our StopCCN was acknowledged", None))
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
