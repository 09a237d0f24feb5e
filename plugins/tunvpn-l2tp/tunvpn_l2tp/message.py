"""L2TP messages (RFC 2661): the IANA numbers, the control message and AVP codec, data messages.

Sans-I/O and stateless: bytes in, frozen dataclasses out, and back.

* control messages (section 3.1: T/L/S/O/P bits, Ns/Nr) and AVPs (section 4.1: M/H bits,
  vendor 0) with the AVP and message type numbers of sections 4.4 and 3.2, the AVPs each
  message requires, and 16-bit sequence-number order (section 5.8);
* data messages (section 3.1): :func:`encode_data`, :func:`decode_data`, :func:`is_control`;
* the tunnel authentication digest (section 5.1.1): :func:`challenge_response`.

Hidden AVPs (H bit) are kept as opaque bytes. Malformed input raises a :class:`L2tpError`
subclass. The state machines are :mod:`tunvpn_l2tp.control` (one tunnel) and
:mod:`tunvpn_l2tp.dispatch` (the gateway's many tunnels).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

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
