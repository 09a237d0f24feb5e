"""PPP frames and packets (RFC 1661, 1332, 1334, 1877, 1994): the numbers and the codec.

Stateless, no I/O: the protocol, code and option numbers; one frame per L2TP data message
(``FF 03`` + 2-octet protocol + information; frames without address/control and with a
1-octet protocol field are accepted, RFC 1661 sections 6.5/6.6); control packets and their
options; IP in PPP; the CHAP-MD5 digest. Malformed input raises :class:`PppError`
subclasses. The link itself (LCP, authentication, IPCP) is :mod:`tunvpn_l2tp.ppp`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

__all__ = [
    "Protocol",
    "Code",
    "LcpOption",
    "IpcpOption",
    "PapCode",
    "ChapCode",
    "CHAP_MD5",
    "AuthMethod",
    "PppError",
    "MalformedFrame",
    "MalformedPacket",
    "PppUsageError",
    "Packet",
    "decode_frame",
    "encode_frame",
    "decode_options",
    "encode_options",
    "encapsulate_ip",
    "decapsulate",
    "chap_md5_response",
    "verify_chap_md5",
    "auth_option",
    "auth_method",
    "length_prefixed",
    "message_text",
    "Option",
]


class Protocol(enum.IntEnum):
    """PPP protocol field values (IANA "PPP DLL Protocol Numbers")."""

    IPV4 = 0x0021  # RFC 1332
    IPV6 = 0x0057  # RFC 5072
    IPCP = 0x8021  # RFC 1332
    IPV6CP = 0x8057  # RFC 5072
    CCP = 0x80FD  # RFC 1962
    LCP = 0xC021  # RFC 1661
    PAP = 0xC023  # RFC 1334
    CHAP = 0xC223  # RFC 1994


class Code(enum.IntEnum):
    """LCP packet codes (RFC 1661 section 5, RFC 1570); IPCP uses 1-7 (RFC 1332 section 2)."""

    CONFIGURE_REQUEST = 1
    CONFIGURE_ACK = 2
    CONFIGURE_NAK = 3
    CONFIGURE_REJECT = 4
    TERMINATE_REQUEST = 5
    TERMINATE_ACK = 6
    CODE_REJECT = 7
    PROTOCOL_REJECT = 8
    ECHO_REQUEST = 9
    ECHO_REPLY = 10
    DISCARD_REQUEST = 11
    IDENTIFICATION = 12  # RFC 1570
    TIME_REMAINING = 13  # RFC 1570


class LcpOption(enum.IntEnum):
    """LCP configuration options (RFC 1661 section 6, RFC 1662 section 7.1)."""

    MRU = 1
    ACCM = 2  # RFC 1662: async only; accepted and ignored on our synchronous link
    AUTH_PROTOCOL = 3
    QUALITY_PROTOCOL = 4
    MAGIC_NUMBER = 5
    PFC = 7  # Protocol-Field-Compression
    ACFC = 8  # Address-and-Control-Field-Compression


class IpcpOption(enum.IntEnum):
    """IPCP configuration options (RFC 1332 section 3, RFC 1877)."""

    IP_ADDRESSES = 1  # deprecated
    IP_COMPRESSION_PROTOCOL = 2
    IP_ADDRESS = 3
    PRIMARY_DNS = 129  # RFC 1877
    PRIMARY_NBNS = 130
    SECONDARY_DNS = 131
    SECONDARY_NBNS = 132


class PapCode(enum.IntEnum):
    """RFC 1334 section 2.2."""

    AUTHENTICATE_REQUEST = 1
    AUTHENTICATE_ACK = 2
    AUTHENTICATE_NAK = 3


class ChapCode(enum.IntEnum):
    """RFC 1994 section 4."""

    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


CHAP_MD5 = 5  # RFC 1994 section 3: the Algorithm octet of the Authentication-Protocol option

ADDRESS_CONTROL = b"\xff\x03"
IP_FRAME_HEADER = b"\xff\x03\x00\x21"
DEFAULT_MRU = 1500
MIN_MRU = 128  # as pppd: a smaller MRU from the peer is Nak'd up to this
ANY_ADDRESS = IPv4Address(0)


class AuthMethod(enum.StrEnum):
    CHAP = "chap"  # CHAP with MD5 (RFC 1994)
    PAP = "pap"  # RFC 1334


# ------------------------------------------------------------------ errors


class PppError(ValueError):
    """Malformed or unacceptable PPP input from the peer (dropped and counted by receive())."""


class MalformedFrame(PppError):
    pass


class MalformedPacket(PppError):
    pass


class PppUsageError(RuntimeError):
    """The API was misused (a local error: raised)."""


# ------------------------------------------------------------------ codec

Option = tuple[int, bytes]  # (type, value without the type and length octets)


@dataclass(frozen=True)
class Packet:
    """A control packet: LCP/IPCP (RFC 1661 section 5), PAP or CHAP share this header."""

    code: int
    identifier: int
    data: bytes = b""

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.code, self.identifier, 4 + len(self.data)) + self.data

    @classmethod
    def decode(cls, info: bytes) -> Packet:
        """Octets beyond the Length field are padding and ignored (RFC 1661 section 5)."""
        if len(info) < 4:
            raise MalformedPacket(f"{len(info)} octets, header needs 4")
        code, identifier, length = struct.unpack("!BBH", info[:4])
        if length < 4 or length > len(info):
            raise MalformedPacket(f"length field {length} for {len(info)} octets")
        return cls(code, identifier, bytes(info[4:length]))


def encode_frame(protocol: int, information: bytes) -> bytes:
    """Full address/control and protocol fields: we never compress them."""
    return ADDRESS_CONTROL + struct.pack("!H", protocol) + information


def decode_frame(frame: bytes) -> tuple[int, bytes]:
    """(protocol, information) of a frame with or without FF 03, with a 1- or 2-octet protocol."""
    pos = 0
    if frame[:1] == b"\xff":
        if frame[1:2] != b"\x03":
            raise MalformedFrame("address 0xff without control 0x03")
        pos = 2
    if len(frame) <= pos:
        raise MalformedFrame("no protocol field")
    first = frame[pos]
    if first & 1:  # RFC 1661 section 6.5: a compressed (1-octet) protocol field
        return first, bytes(frame[pos + 1 :])
    if len(frame) < pos + 2 or not frame[pos + 1] & 1:
        raise MalformedFrame("protocol field must end with an odd octet")
    return (first << 8) | frame[pos + 1], bytes(frame[pos + 2 :])


def encapsulate_ip(packet: bytes) -> bytes:
    """An IPv4 packet as a PPP frame (no state check; see Ppp.send_ip)."""
    return IP_FRAME_HEADER + packet


def decapsulate(frame: bytes) -> bytes | None:
    """The IPv4 packet in a data frame, or None for any other frame (no state check)."""
    if frame[:4] == IP_FRAME_HEADER:
        return frame[4:]
    rest = frame[2:] if frame[:2] == ADDRESS_CONTROL else frame
    if rest[:1] == b"\x21":
        return rest[1:]
    if rest[:2] == b"\x00\x21":
        return rest[2:]
    return None


def decode_options(data: bytes) -> list[Option]:
    """Raise MalformedPacket unless the option lengths add up exactly (RFC 1661 section 6)."""
    options: list[Option] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2 or data[pos + 1] < 2 or pos + data[pos + 1] > len(data):
            raise MalformedPacket(f"option at offset {pos} does not fit")
        options.append((data[pos], bytes(data[pos + 2 : pos + data[pos + 1]])))
        pos += data[pos + 1]
    return options


def encode_options(options: Iterable[Option]) -> bytes:
    return b"".join(bytes((kind, 2 + len(value))) + value for kind, value in options)


def chap_md5_response(identifier: int, secret: bytes | str, challenge: bytes) -> bytes:
    """RFC 1994 section 4.1: MD5(Identifier || secret || Challenge)."""
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.md5(bytes((identifier & 0xFF,)) + secret + challenge).digest()


def verify_chap_md5(identifier: int, secret: bytes | str, challenge: bytes, response: bytes) -> bool:
    return hmac.compare_digest(chap_md5_response(identifier, secret, challenge), response)


def auth_option(method: AuthMethod) -> Option:
    if method is AuthMethod.CHAP:
        return LcpOption.AUTH_PROTOCOL, struct.pack("!HB", Protocol.CHAP, CHAP_MD5)
    return LcpOption.AUTH_PROTOCOL, struct.pack("!H", Protocol.PAP)


def auth_method(value: bytes) -> AuthMethod | None:
    if value == struct.pack("!HB", Protocol.CHAP, CHAP_MD5):
        return AuthMethod.CHAP
    if value == struct.pack("!H", Protocol.PAP):
        return AuthMethod.PAP
    return None


def length_prefixed(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data) or pos + 1 + data[pos] > len(data):
        raise MalformedPacket("length-prefixed field does not fit")
    return data[pos + 1 : pos + 1 + data[pos]], pos + 1 + data[pos]


def message_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
