"""Identification payload contents as Python objects (RFC 2407 section 4.6.2).

Two views of the same payload:

* :class:`Identity` names a peer in phase 1 (RFC 2409 section 5.1): an address, a
  FQDN, a user FQDN, a key ID or a distinguished name.  ``str()`` and
  :meth:`Identity.parse` use strongSwan-like text (``10.0.0.1``, ``@vpn.example``,
  ``user@example``, ``keyid:group``, ``CN=moon,O=example``).
* a :class:`~tunvpn.ipsec.selectors.TrafficSelector` (in :mod:`tunvpn.ipsec`, as ESP
  needs it too) is a phase 2 client identity (RFC 2409 section 5.5): an address range plus
  an IP protocol and port, each 0 for "any"; :func:`selector_to_id_payload` and
  :func:`selector_from_id_payload` are its ID payloads.

Distinguished names are kept as their DER bytes, so a received ID is compared and
hashed exactly as sent (RFC 2409 section 5 hashes IDii_b).  The text form is that of
RFC 4514 (``x509.Name.rfc4514_string``): the *last* RDN comes first, so
``CN=moon,O=strongSwan,C=CH`` is encoded as C, O, CN.  Note that strongSwan's own
configuration syntax lists RDNs in encoding order (``C=CH, O=strongSwan, CN=moon``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ..ipsec.selectors import (
    AddressRange,
    IPAddress,
    IPNetwork,
    TrafficSelector,
    ordered_range,
    parse_address_text,
)
from .constants import IdType, NotifyType
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import IDPayload

IdValue = str | bytes | IPAddress | IPNetwork | AddressRange

_INVALID_ID = NotifyType.INVALID_ID_INFORMATION

# Attribute names accepted in DN text besides the RFC 4514 ones, as strongSwan spells them.
_DN_NAMES: dict[str, ObjectIdentifier] = {
    spelling: oid
    for names, oid in (
        (("E", "Email", "email", "emailAddress", "EMAIL"), NameOID.EMAIL_ADDRESS),
        (("SN", "surname"), NameOID.SURNAME),
        (("serialNumber", "SERIALNUMBER"), NameOID.SERIAL_NUMBER),
        (("GN", "G", "givenName"), NameOID.GIVEN_NAME),
        (("T", "title"), NameOID.TITLE),
    )
    for spelling in names
}
_DN_SHORT: dict[ObjectIdentifier, str] = {NameOID.EMAIL_ADDRESS: "E", NameOID.SERIAL_NUMBER: "serialNumber"}


def _bad_id(message: str, field_name: str = "ID.data") -> RemoteProtocolError:
    return RemoteProtocolError(message, _INVALID_ID, field_name)


# --------------------------------------------------------------------------- DER names


def _der_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, start of contents, end of contents)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("DER length overruns")
    return tag, pos, pos + length


def _der_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise ValueError("bad OID")
    arcs: list[int] = []
    value = 0
    for b in body:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


# UTF8String, BMPString and UniversalString are strict; the "ASCII" types (Printable,
# IA5, Visible, Numeric) and T61 are read as UTF-8, falling back to Latin-1, as peers vary.
_STRING_CODECS = {0x0C: "utf-8", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}
_LOOSE_STRINGS = frozenset({0x12, 0x13, 0x14, 0x16, 0x1A})


def der_to_name(der: bytes) -> x509.Name:
    """Parse a DER ``Name`` (RFC 5280 section 4.1.2.4) into a :class:`x509.Name`.

    Raises ValueError when ``der`` is not a well-formed Name.
    """
    tag, pos, end = _der_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("a Name is one SEQUENCE")
    rdns: list[x509.RelativeDistinguishedName] = []
    while pos < end:
        tag, spos, pos = _der_tlv(der, pos)
        if tag != 0x31 or spos == pos:
            raise ValueError("an RDN is a non-empty SET")
        attrs: list[x509.NameAttribute[str]] = []
        while spos < pos:
            tag, apos, spos = _der_tlv(der, spos)
            if tag != 0x30:
                raise ValueError("an attribute is a SEQUENCE")
            otag, opos, oend = _der_tlv(der, apos)
            vtag, vpos, vend = _der_tlv(der, oend)
            if otag != 0x06 or vend != spos or not (vtag in _STRING_CODECS or vtag in _LOOSE_STRINGS):
                raise ValueError("an attribute is an OID and a string")
            raw = der[vpos:vend]
            if vtag in _STRING_CODECS:
                value = raw.decode(_STRING_CODECS[vtag])
            else:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    value = raw.decode("latin-1")
            attrs.append(x509.NameAttribute(ObjectIdentifier(_der_oid(der[opos:oend])), value))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def _strip(text: str) -> str:
    """Strip surrounding blanks but keep an escaped trailing space (RFC 4514 section 2.4)."""
    return re.sub(r"(?<!\\) +$", "", text.lstrip(" \t\n").rstrip("\t\n"))


def parse_dn(text: str) -> bytes:
    """RFC 4514 text (``CN=x,O=y``; spaces after commas allowed) to DER."""
    text = re.sub(r"(?<!\\), +", ",", _strip(text))
    try:
        return x509.Name.from_rfc4514_string(text, _DN_NAMES).public_bytes()
    except ValueError as exc:
        raise LocalProtocolError(f"not a distinguished name: {text!r}") from exc


def dn_to_text(der: bytes) -> str:
    """RFC 4514 text of a DER name, or ``dn:#<hex>`` when it cannot be represented."""
    try:
        return der_to_name(der).rfc4514_string(_DN_SHORT)
    except (ValueError, UnicodeDecodeError):
        return f"dn:#{der.hex()}"


# --------------------------------------------------------------------------- addresses


def _mask_prefix(mask: bytes, bits: int) -> int | None:
    """Prefix length of a contiguous netmask, or None (RFC 2407 section 4.6.2.1)."""
    value = int.from_bytes(mask, "big")
    inverted = value ^ ((1 << bits) - 1)
    if inverted & (inverted + 1):
        return None
    return bits - inverted.bit_length()


def _addr(data: bytes) -> IPAddress:
    return IPv4Address(data) if len(data) == 4 else IPv6Address(data)


_ADDR_LEN = {
    IdType.IPV4_ADDR: 4, IdType.IPV4_ADDR_SUBNET: 8, IdType.IPV4_ADDR_RANGE: 8,
    IdType.IPV6_ADDR: 16, IdType.IPV6_ADDR_SUBNET: 32, IdType.IPV6_ADDR_RANGE: 32,
}  # fmt: skip


def _decode_address_id(id_type: IdType, data: bytes) -> IPAddress | IPNetwork | AddressRange:
    """The address, network or range carried by an address ID (RFC 2407 4.6.2.2-4.6.2.12)."""
    if len(data) != _ADDR_LEN[id_type]:
        raise _bad_id(f"{id_type.name} is {len(data)} bytes, expected {_ADDR_LEN[id_type]}")
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return _addr(data)
    half = len(data) // 2
    first, second = _addr(data[:half]), _addr(data[half:])
    if id_type in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        prefix = _mask_prefix(data[half:], 8 * half)
        if prefix is None:
            raise _bad_id(f"non-contiguous netmask {second}")
        # Host bits set below the mask are cleared, as racoon and strongSwan do.
        return ipaddress.ip_network((first, prefix), strict=False)
    rng = ordered_range(first, second)
    if rng is None:
        raise _bad_id(f"range start {first} > end {second}")
    return rng


def _encode_address_id(value: IPAddress | IPNetwork | AddressRange) -> tuple[IdType, bytes]:
    if isinstance(value, IPv4Address):
        return IdType.IPV4_ADDR, value.packed
    if isinstance(value, IPv6Address):
        return IdType.IPV6_ADDR, value.packed
    if isinstance(value, IPv4Network):
        return IdType.IPV4_ADDR_SUBNET, value.network_address.packed + value.netmask.packed
    if isinstance(value, IPv6Network):
        return IdType.IPV6_ADDR_SUBNET, value.network_address.packed + value.netmask.packed
    start, end = value
    kind = IdType.IPV4_ADDR_RANGE if start.version == 4 else IdType.IPV6_ADDR_RANGE
    return kind, start.packed + end.packed


# --------------------------------------------------------------------------- Identity

_EXPECTED: dict[IdType, tuple[type, ...]] = {
    IdType.IPV4_ADDR: (IPv4Address,),
    IdType.IPV6_ADDR: (IPv6Address,),
    IdType.IPV4_ADDR_SUBNET: (IPv4Network,),
    IdType.IPV6_ADDR_SUBNET: (IPv6Network,),
    IdType.IPV4_ADDR_RANGE: (tuple,),
    IdType.IPV6_ADDR_RANGE: (tuple,),
    IdType.FQDN: (str,),
    IdType.USER_FQDN: (str,),
    IdType.KEY_ID: (bytes,),
    IdType.DER_ASN1_DN: (bytes,),
    IdType.DER_ASN1_GN: (bytes,),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """A phase 1 identity (RFC 2407 section 4.6.2.1, RFC 2409 section 5.1).

    ``value`` by type: IPv4Address/IPv6Address for *_ADDR, IPv4Network/IPv6Network for
    *_ADDR_SUBNET, a (start, end) tuple for *_ADDR_RANGE, ``str`` for FQDN and USER_FQDN,
    and ``bytes`` for KEY_ID, DER_ASN1_DN (DER of the Name) and DER_ASN1_GN.
    """

    id_type: IdType
    value: IdValue

    def __post_init__(self) -> None:
        try:
            kind = IdType(self.id_type)
        except ValueError:
            raise LocalProtocolError(f"unknown ID type {self.id_type}") from None
        object.__setattr__(self, "id_type", kind)
        if not isinstance(self.value, _EXPECTED[kind]):
            raise LocalProtocolError(f"{kind.name} needs a {_EXPECTED[kind][0].__name__}, not {self.value!r}")
        if kind in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
            family = IPv4Address if kind == IdType.IPV4_ADDR_RANGE else IPv6Address
            rng = self.value
            if not (
                isinstance(rng, tuple)
                and len(rng) == 2
                and all(isinstance(a, family) for a in rng)
                and ordered_range(rng[0], rng[1]) is not None
            ):
                raise LocalProtocolError(f"bad {kind.name} value {rng!r}")

    def to_payload(self, protocol: int = 0, port: int = 0) -> IDPayload:
        """The ID payload; phase 1 uses protocol 0/port 0 or UDP/500 (RFC 2407 4.6.2)."""
        kind, value = self.id_type, self.value
        if isinstance(value, str):
            return IDPayload(kind, value.encode("utf-8"), protocol, port)
        if isinstance(value, bytes):
            return IDPayload(kind, value, protocol, port)
        _kind, data = _encode_address_id(value)
        return IDPayload(kind, data, protocol, port)

    @classmethod
    def from_payload(cls, p: IDPayload) -> Identity:
        """Decode an ID payload; bad contents raise INVALID_ID_INFORMATION (RFC 2408 5.5)."""
        try:
            kind = IdType(p.id_type)
        except ValueError:
            raise _bad_id(f"unknown ID type {p.id_type}", "ID.id_type") from None
        data = p.data
        if kind in _ADDR_LEN:
            return cls(kind, _decode_address_id(kind, data))
        if kind in (IdType.FQDN, IdType.USER_FQDN):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad_id(f"{kind.name} is not UTF-8") from None
            if not text or "\x00" in text:
                raise _bad_id(f"empty or NUL in {kind.name}")
            return cls(kind, text)
        if kind == IdType.DER_ASN1_DN:
            try:
                der_to_name(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _bad_id(f"DER_ASN1_DN does not parse: {exc}") from None
        return cls(kind, bytes(data))

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan-like text to an identity.

        ``10.0.0.1``, ``fe80::1``, ``10.0.0.0/24``, ``10.0.0.1-10.0.0.9``; ``@fqdn`` or a
        bare host name (FQDN); ``@@user@fqdn`` or ``user@fqdn`` (USER_FQDN);
        ``keyid:text``, ``keyid:#hex`` or ``@#hex`` (KEY_ID); ``dn:CN=..,O=..``,
        ``dn:#hex`` or any text with ``=`` (DER_ASN1_DN, RFC 4514 order); ``gn:#hex``.
        """
        text = _strip(text)
        if not text:
            raise LocalProtocolError("empty identity")
        lowered = text.lower()
        if lowered.startswith("keyid:"):
            return cls(IdType.KEY_ID, _text_or_hex(text[6:]))
        if text.startswith("@#"):
            return cls(IdType.KEY_ID, _text_or_hex(text[1:]))
        if lowered.startswith("gn:"):
            return cls(IdType.DER_ASN1_GN, _text_or_hex(text[3:]))
        if lowered.startswith("dn:"):
            rest = text[3:].strip()
            return cls(IdType.DER_ASN1_DN, _hex(rest[1:]) if rest.startswith("#") else parse_dn(rest))
        if text.startswith("@@"):
            return cls(IdType.USER_FQDN, text[2:])
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:])
        address = parse_address_text(text)
        if address is not None:
            return cls(_encode_address_id(address)[0], address)
        if "=" in text:
            return cls(IdType.DER_ASN1_DN, parse_dn(text))
        if "/" in text:
            # no host or user name has one: a mistyped network (10.0.0.0/33) must not become
            # a name that matches nothing (write @text for such an FQDN identity on purpose)
            raise LocalProtocolError(f"{text!r} is not an address, network or name")
        if "@" in text:
            return cls(IdType.USER_FQDN, text)
        return cls(IdType.FQDN, text)

    def matches(self, other: Identity) -> bool:
        """The same identity as a configured one would be compared: DNs by their attributes
        (the ASN.1 string types ignored), FQDN and USER_FQDN case-insensitively (RFC 4343)."""
        if self.id_type != other.id_type:
            return False
        if (
            self.id_type == IdType.DER_ASN1_DN
            and isinstance(self.value, bytes)
            and isinstance(other.value, bytes)
        ):
            try:
                return der_to_name(self.value) == der_to_name(other.value)
            except ValueError:
                return self.value == other.value
        if isinstance(self.value, str) and isinstance(other.value, str):
            return self.value.lower() == other.value.lower()
        return self.value == other.value

    def __str__(self) -> str:
        kind, value = self.id_type, self.value
        if isinstance(value, str):  # FQDN, USER_FQDN
            return f"@{value}" if kind == IdType.FQDN else value
        if isinstance(value, bytes):  # KEY_ID, DER_ASN1_DN, DER_ASN1_GN
            if kind == IdType.KEY_ID:
                return f"keyid:{_show_bytes(value)}"
            if kind == IdType.DER_ASN1_DN:
                return dn_to_text(value)
            return f"gn:#{value.hex()}"
        if isinstance(value, tuple):
            return f"{value[0]}-{value[1]}"
        return str(value)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise LocalProtocolError(f"not hex: {text!r}") from None


def _text_or_hex(text: str) -> bytes:
    return _hex(text[1:]) if text.startswith("#") else text.encode("utf-8")


def _show_bytes(data: bytes) -> str:
    """Printable ASCII as is, anything else as ``#hex`` (strongSwan's keyid syntax)."""
    if data and all(0x21 <= b < 0x7F for b in data) and not data.startswith(b"#"):
        return data.decode("ascii")
    return f"#{data.hex()}"


# --------------------------------------------------------------------------- traffic selectors


def selector_to_id_payload(ts: TrafficSelector) -> IDPayload:
    """IDci/IDcr of a selector: IPV4_ADDR for one host, *_SUBNET for a CIDR block, *_RANGE
    otherwise (RFC 2407 section 4.6.2)."""
    net = ts.network
    value: IPAddress | IPNetwork | AddressRange
    if ts.start == ts.end:
        value = ts.start
    elif net is not None:
        value = net
    else:
        value = ts.address_range
    kind, data = _encode_address_id(value)
    return IDPayload(kind, data, ts.protocol, ts.port)


def selector_from_id_payload(p: IDPayload) -> TrafficSelector:
    """Decode IDci/IDcr; non-address IDs and bad contents raise INVALID_ID_INFORMATION."""
    kind: IdType | None
    try:
        kind = IdType(p.id_type)
    except ValueError:
        kind = None
    if kind is None or kind not in _ADDR_LEN:
        raise _bad_id(f"ID type {p.id_type} is not an address", "ID.id_type")
    value = _decode_address_id(kind, p.data)
    if isinstance(value, tuple):
        return TrafficSelector(value[0], value[1], p.protocol, p.port)
    if isinstance(value, (IPv4Network, IPv6Network)):
        return TrafficSelector(value.network_address, value.broadcast_address, p.protocol, p.port)
    return TrafficSelector(value, value, p.protocol, p.port)
