"""The ISAKMP codec: header, generic payload chain and every IKEv1 payload body.

Wire formats are those of RFC 2408 section 3 (header 3.1, generic payload header 3.2,
data attributes 3.3, SA/Proposal/Transform 3.4-3.6, KE 3.7, ID 3.8, CERT 3.9, CR 3.10,
HASH 3.11, SIG 3.12, NONCE 3.13, Notification 3.14, Delete 3.15, Vendor ID 3.16), the
IPsec DOI (RFC 2407 sections 4.6.1-4.6.3), the Attribute payload of
draft-dukes-ike-mode-cfg-02 section 3.2 and NAT-D / NAT-OA of RFC 3947 sections 3.2 and 5.1.

Decoding is strict about lengths and never raises anything but
:class:`~tunvpn.ike.errors.RemoteProtocolError`, which names the field and its absolute
byte offset in the message.  Notify types chosen for malformed input:

* a length that runs past its container, a too short payload, trailing bytes:
  ``PAYLOAD_MALFORMED`` (RFC 2408 section 5.3, "the message is malformed");
* the header Length field not matching the datagram: ``UNEQUAL_PAYLOAD_LENGTHS``
  (RFC 2408 section 3.14.1; the only notify naming a length mismatch between what the
  header claims and what arrived);
* an unknown or reserved payload type (3-127 outside the assigned values, RFC 2408
  section 3.1, or a Proposal/Transform outside an SA): ``INVALID_PAYLOAD_TYPE``
  (RFC 2408 section 5.3, step 1).  Private-use types 128-255 are skipped as
  :class:`UnknownPayload` (RFC 2408 section 3.1 reserves them for private use);
* inconsistent proposal or transform chains: ``BAD_PROPOSAL_SYNTAX`` (RFC 2408 section 5.4);
* SA DOI other than IPsec: ``DOI_NOT_SUPPORTED``; situation other than SIT_IDENTITY_ONLY:
  ``SITUATION_NOT_SUPPORTED`` (RFC 2408 section 5.4, RFC 2407 section 4.2).

The module is sans-I/O: it only turns bytes into frozen dataclasses and back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .constants import (
    DOI_IPSEC,
    HEADER_SIZE,
    ISAKMP_VERSION,
    SIT_IDENTITY_ONLY,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from .errors import LocalProtocolError, RemoteProtocolError

_AF_TV = 0x8000  # RFC 2408 section 3.3: Attribute Format bit, 1 = TV (basic)
_GENERIC = struct.Struct("!BBH")  # next payload, reserved, payload length (RFC 2408 3.2)
_HEADER = struct.Struct("!8s8sBBBBII")
_MALFORMED = NotifyType.PAYLOAD_MALFORMED
_BAD_PROPOSAL = NotifyType.BAD_PROPOSAL_SYNTAX


def _need(cond: bool, message: str, field: str, offset: int, notify: NotifyType = _MALFORMED) -> None:
    if not cond:
        raise RemoteProtocolError(message, notify, field, offset)


def _check_u(value: int, bits: int, what: str) -> None:
    if not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"{what}={value!r} does not fit in {bits} bits")


# --------------------------------------------------------------------------- attributes


# XAUTH-USER-PASSWORD, -PASSCODE, -NEXT-PIN, -ANSWER (draft-beaulieu-ike-xauth-02 6.2):
# their values never appear in a repr, so a logged payload does not leak a secret.
_SECRET_ATTRIBUTE_TYPES = frozenset({16522, 16523, 16528, 16529, 20499})
"""XAUTH passwords and passcodes, and tunvpn's CFG_PEER_SECRET (tunvpn.ike.peers): never shown."""


@dataclass(frozen=True, slots=True, repr=False)
class DataAttribute:
    """One data attribute (RFC 2408 section 3.3).

    ``type`` is the attribute type without the AF bit.  An ``int`` value is sent in the
    TV ("basic") format, so it must fit in 16 bits; ``bytes`` are sent as TLV.
    """

    type: int
    value: int | bytes

    def __post_init__(self) -> None:
        _check_u(self.type, 15, "attribute type")
        if isinstance(self.value, bytes):
            if len(self.value) > 0xFFFF:
                raise LocalProtocolError(f"attribute {self.type}: TLV value longer than 65535 bytes")
        elif isinstance(self.value, int) and not isinstance(self.value, bool):
            _check_u(self.value, 16, f"attribute {self.type} TV value")
        else:
            raise LocalProtocolError(f"attribute {self.type}: value must be int or bytes")

    def __repr__(self) -> str:
        shown = "<redacted>" if self.type in _SECRET_ATTRIBUTE_TYPES and self.value else repr(self.value)
        return f"DataAttribute(type={self.type!r}, value={shown})"

    @property
    def is_tv(self) -> bool:
        """True for the TV (basic) format."""
        return isinstance(self.value, int)

    def as_int(self) -> int:
        """The TV value, or the TLV bytes as a big-endian unsigned integer (RFC 2409 App. A)."""
        if isinstance(self.value, int):
            return self.value
        return int.from_bytes(self.value, "big")

    @classmethod
    def tlv_int(cls, type: int, value: int, size: int = 4) -> DataAttribute:
        """A TLV attribute holding ``value`` as a ``size``-byte big-endian integer."""
        if value < 0 or value >= 1 << (8 * size):
            raise LocalProtocolError(f"attribute {type}: {value} does not fit in {size} bytes")
        return cls(type, value.to_bytes(size, "big"))

    @classmethod
    def auto(cls, type: int, value: int) -> DataAttribute:
        """TV when ``value`` fits in 16 bits, else TLV of 4 bytes (8 if needed).

        RFC 2409 appendix A: variable-length attributes such as Life Duration may be sent
        either way; this is what strongSwan and racoon do.
        """
        if 0 <= value <= 0xFFFF:
            return cls(type, value)
        return cls.tlv_int(type, value, 4 if value <= 0xFFFFFFFF else 8)


def encode_attributes(attrs: Iterable[DataAttribute]) -> bytes:
    """Concatenate data attributes in wire format (RFC 2408 section 3.3)."""
    out = bytearray()
    for a in attrs:
        if isinstance(a.value, int):
            out += struct.pack("!HH", _AF_TV | a.type, a.value)
        else:
            out += struct.pack("!HH", a.type, len(a.value)) + a.value
    return bytes(out)


def decode_attributes(
    data: bytes, *, base_offset: int = 0, field: str = "attributes"
) -> tuple[DataAttribute, ...]:
    """Parse a run of data attributes that fills ``data`` exactly (RFC 2408 section 3.3).

    Errors name ``f"{field}[i]"`` and the absolute offset ``base_offset + position``.
    What the wire holds always fits (a 15-bit type, a 16-bit value or length), so the
    attributes are made without :class:`DataAttribute`'s checks: a first message offering
    every suite holds a thousand of them, and parsing them is what a spoofed one costs.
    """
    attrs: list[DataAttribute] = []
    pos = 0
    n = len(data)
    unpack = _ATTRIBUTE_HEAD.unpack_from
    while pos < n:
        if n - pos < 4:
            _need(False, f"truncated data attribute ({n - pos} bytes left)", f"{field}[{len(attrs)}]",
                  base_offset + pos)  # fmt: skip
        raw_type, word = unpack(data, pos)
        if raw_type & _AF_TV:
            attrs.append(_trusted_attribute(raw_type & 0x7FFF, word))
            pos += 4
        else:
            end = pos + 4 + word
            if end > n:
                _need(False, f"TLV attribute length {word} overruns its container", f"{field}[{len(attrs)}]",
                      base_offset + pos + 2)  # fmt: skip
            attrs.append(_trusted_attribute(raw_type, bytes(data[pos + 4 : end])))
            pos = end
    return tuple(attrs)


_ATTRIBUTE_HEAD = struct.Struct("!HH")
_set_slot = object.__setattr__


def _trusted_attribute(type: int, value: int | bytes) -> DataAttribute:
    """A :class:`DataAttribute` from fields the wire format already bounds (no checks)."""
    attr = object.__new__(DataAttribute)
    _set_slot(attr, "type", type)
    _set_slot(attr, "value", value)
    return attr


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Transform:
    """Transform payload (RFC 2408 section 3.6)."""

    number: int
    transform_id: int
    attributes: tuple[DataAttribute, ...] = ()

    def get(self, attr_type: int) -> DataAttribute | None:
        """The first attribute of type ``attr_type``, or None."""
        for a in self.attributes:
            if a.type == attr_type:
                return a
        return None


@dataclass(frozen=True, slots=True)
class Proposal:
    """Proposal payload (RFC 2408 section 3.5).

    Proposals sharing a ``number`` are AND-ed (e.g. ESP + IPCOMP); numbering is kept as sent.
    """

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SAPayload:
    """Security Association payload (RFC 2408 section 3.4, IPsec DOI per RFC 2407 4.6.1)."""

    proposals: tuple[Proposal, ...]
    doi: int = DOI_IPSEC
    situation: int = SIT_IDENTITY_ONLY


@dataclass(frozen=True, slots=True)
class KEPayload:
    """Key Exchange payload (RFC 2408 section 3.7)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class IDPayload:
    """Identification payload, IPsec DOI layout (RFC 2407 section 4.6.2)."""

    id_type: int
    data: bytes
    protocol: int = 0
    port: int = 0


@dataclass(frozen=True, slots=True)
class CertPayload:
    """Certificate payload (RFC 2408 section 3.9)."""

    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertRequestPayload:
    """Certificate Request payload (RFC 2408 section 3.10)."""

    cert_type: int
    authority: bytes = b""


@dataclass(frozen=True, slots=True)
class HashPayload:
    """Hash payload (RFC 2408 section 3.11)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SignaturePayload:
    """Signature payload (RFC 2408 section 3.12)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NoncePayload:
    """Nonce payload (RFC 2408 section 3.13)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """Notification payload (RFC 2408 section 3.14)."""

    notify_type: int
    protocol: int = ProtocolId.ISAKMP
    spi: bytes = b""
    data: bytes = b""
    doi: int = DOI_IPSEC


@dataclass(frozen=True, slots=True)
class DeletePayload:
    """Delete payload (RFC 2408 section 3.15); all SPIs have the same size.

    For ISAKMP the SPI is both cookies (16 bytes), for ESP/AH 4 bytes (RFC 2408 3.15).
    """

    protocol: int
    spis: tuple[bytes, ...]
    doi: int = DOI_IPSEC


@dataclass(frozen=True, slots=True)
class VendorIDPayload:
    """Vendor ID payload (RFC 2408 section 3.16)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AttributePayload:
    """Attribute payload, type 14 (draft-dukes-ike-mode-cfg-02 section 3.2)."""

    cfg_type: int
    identifier: int
    attributes: tuple[DataAttribute, ...]


@dataclass(frozen=True, slots=True)
class NatDPayload:
    """NAT-D payload (RFC 3947 section 3.2); type 130 when ``draft`` (NAT-T drafts 02/03)."""

    data: bytes
    draft: bool = False


@dataclass(frozen=True, slots=True)
class NatOAPayload:
    """NAT-OA payload (RFC 3947 section 5.1): ID type, 3 reserved bytes, address."""

    id_type: int
    address: bytes
    draft: bool = False


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A private-use payload (RFC 2408 section 3.1, types 128-255) we do not interpret."""

    payload_type: int
    data: bytes


Payload = (
    SAPayload
    | KEPayload
    | IDPayload
    | CertPayload
    | CertRequestPayload
    | HashPayload
    | SignaturePayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIDPayload
    | AttributePayload
    | NatDPayload
    | NatOAPayload
    | UnknownPayload
)
"""Any decoded payload (a union of the payload dataclasses)."""

_TYPE_OF: dict[type, int] = {
    SAPayload: PayloadType.SA,
    KEPayload: PayloadType.KE,
    IDPayload: PayloadType.ID,
    CertPayload: PayloadType.CERT,
    CertRequestPayload: PayloadType.CR,
    HashPayload: PayloadType.HASH,
    SignaturePayload: PayloadType.SIG,
    NoncePayload: PayloadType.NONCE,
    NotifyPayload: PayloadType.NOTIFICATION,
    DeletePayload: PayloadType.DELETE,
    VendorIDPayload: PayloadType.VENDOR_ID,
    AttributePayload: PayloadType.ATTRIBUTE,
}


def payload_type_of(p: Payload) -> int:
    """The RFC 2408 section 3.1 payload type number of ``p``."""
    if isinstance(p, NatDPayload):
        return PayloadType.NAT_D_DRAFT if p.draft else PayloadType.NAT_D
    if isinstance(p, NatOAPayload):
        return PayloadType.NAT_OA_DRAFT if p.draft else PayloadType.NAT_OA
    if isinstance(p, UnknownPayload):
        return p.payload_type
    try:
        return _TYPE_OF[type(p)]
    except KeyError:
        raise LocalProtocolError(f"not a payload: {type(p).__name__}") from None


# --------------------------------------------------------------------------- body encoders


def _encode_transform(t: Transform, next_type: int) -> bytes:
    _check_u(t.number, 8, "transform number")
    _check_u(t.transform_id, 8, "transform id")
    body = struct.pack("!BBH", t.number, t.transform_id, 0) + encode_attributes(t.attributes)
    return _generic(next_type, body)


def _encode_proposal(p: Proposal, next_type: int) -> bytes:
    _check_u(p.number, 8, "proposal number")
    _check_u(p.protocol, 8, "proposal protocol")
    _check_u(len(p.spi), 8, "SPI size")
    _check_u(len(p.transforms), 8, "transform count")
    parts = [struct.pack("!BBBB", p.number, p.protocol, len(p.spi), len(p.transforms)), p.spi]
    for i, t in enumerate(p.transforms):
        last = i == len(p.transforms) - 1
        parts.append(_encode_transform(t, PayloadType.NONE if last else PayloadType.TRANSFORM))
    return _generic(next_type, b"".join(parts))


def _delete_spi_size(p: DeletePayload) -> int:
    if p.spis:
        return len(p.spis[0])
    return 16 if p.protocol == ProtocolId.ISAKMP else 4


def _encode_body(p: Payload) -> bytes:
    if isinstance(p, SAPayload):
        _check_u(p.doi, 32, "DOI")
        _check_u(p.situation, 32, "situation")
        parts = [struct.pack("!II", p.doi, p.situation)]
        for i, prop in enumerate(p.proposals):
            last = i == len(p.proposals) - 1
            parts.append(_encode_proposal(prop, PayloadType.NONE if last else PayloadType.PROPOSAL))
        return b"".join(parts)
    if isinstance(p, (KEPayload, HashPayload, SignaturePayload, NoncePayload, VendorIDPayload)):
        return p.data
    if isinstance(p, NatDPayload):
        return p.data
    if isinstance(p, UnknownPayload):
        return p.data
    if isinstance(p, IDPayload):
        _check_u(p.id_type, 8, "ID type")
        _check_u(p.protocol, 8, "ID protocol")
        _check_u(p.port, 16, "ID port")
        return struct.pack("!BBH", p.id_type, p.protocol, p.port) + p.data
    if isinstance(p, CertPayload):
        _check_u(p.encoding, 8, "cert encoding")
        return bytes([p.encoding]) + p.data
    if isinstance(p, CertRequestPayload):
        _check_u(p.cert_type, 8, "cert type")
        return bytes([p.cert_type]) + p.authority
    if isinstance(p, NotifyPayload):
        _check_u(p.doi, 32, "DOI")
        _check_u(p.protocol, 8, "notify protocol")
        _check_u(len(p.spi), 8, "SPI size")
        _check_u(p.notify_type, 16, "notify type")
        return struct.pack("!IBBH", p.doi, p.protocol, len(p.spi), p.notify_type) + p.spi + p.data
    if isinstance(p, DeletePayload):
        size = _delete_spi_size(p)
        if any(len(s) != size for s in p.spis):
            raise LocalProtocolError("Delete payload SPIs must all have the same size")
        _check_u(p.doi, 32, "DOI")
        _check_u(p.protocol, 8, "delete protocol")
        _check_u(size, 8, "SPI size")
        _check_u(len(p.spis), 16, "SPI count")
        return struct.pack("!IBBH", p.doi, p.protocol, size, len(p.spis)) + b"".join(p.spis)
    if isinstance(p, AttributePayload):
        _check_u(p.cfg_type, 8, "CFG type")
        _check_u(p.identifier, 16, "CFG identifier")
        return struct.pack("!BBH", p.cfg_type, 0, p.identifier) + encode_attributes(p.attributes)
    if isinstance(p, NatOAPayload):
        _check_u(p.id_type, 8, "NAT-OA ID type")
        return struct.pack("!B3x", p.id_type) + p.address
    raise LocalProtocolError(f"not a payload: {type(p).__name__}")


def _generic(next_type: int, body: bytes) -> bytes:
    _check_u(next_type, 8, "next payload")
    if len(body) + 4 > 0xFFFF:
        raise LocalProtocolError(f"payload too long ({len(body) + 4} bytes)")
    return _GENERIC.pack(next_type, 0, len(body) + 4) + body


def encode_payload(p: Payload, next_type: int) -> bytes:
    """One payload with its generic header (RFC 2408 section 3.2)."""
    return _generic(next_type, _encode_body(p))


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """Chain ``payloads``; returns (type of the first payload or 0, the bytes)."""
    types = [payload_type_of(p) for p in payloads]
    out = [encode_payload(p, types[i + 1] if i + 1 < len(types) else 0) for i, p in enumerate(payloads)]
    return (types[0] if types else PayloadType.NONE), b"".join(out)


# --------------------------------------------------------------------------- body decoders


def _chain(
    body: bytes, pos: int, off: int, kind: int, name: str
) -> tuple[list[tuple[str, int, bytes]], int, int]:
    """Split a chain of Proposal (``kind`` 2) or Transform (3) substructures.

    RFC 2408 sections 3.5 and 3.6: each has a generic header whose next payload is
    ``kind``, except the last, whose next payload is 0.  Returns ``(items, last_next,
    last_offset)`` where items are ``(field, absolute body offset, body)``.
    """
    items: list[tuple[str, int, bytes]] = []
    next_type, last_off, minimum = kind, off + pos, 8
    size = len(body)
    # the checks come first and the error texts only when one fails: a first message that
    # offers every suite is a chain of 168 transforms, parsed for every spoofed copy of it
    while pos < size:
        field = f"{name}[{len(items)}]"
        if next_type != kind:
            _need(False, f"bytes after the last {name}", field, off + pos, _BAD_PROPOSAL)
        if size - pos < 4:
            _need(False, f"truncated {name} header", field, off + pos)
        nxt, _reserved, length = _GENERIC.unpack_from(body, pos)
        if nxt != 0 and nxt != kind:
            _need(False, f"next payload {nxt}, not {kind} or 0", f"{field}.next_payload", off + pos,
                  _BAD_PROPOSAL)  # fmt: skip
        if length < minimum:
            _need(False, f"length {length} < {minimum}", f"{field}.length", off + pos + 2)
        if pos + length > size:
            _need(False, f"length {length} overruns its container", f"{field}.length", off + pos + 2)
        items.append((field, off + pos + 4, body[pos + 4 : pos + length]))
        next_type, last_off = nxt, off + pos
        pos += length
    return items, next_type, last_off


def _decode_proposal(body: bytes, off: int, field: str) -> Proposal:
    """``body`` follows the proposal's generic header, at absolute offset ``off`` (RFC 2408 3.5)."""
    number, protocol, spi_size, count = struct.unpack_from("!BBBB", body)  # length >= 8 was checked
    spi_field = f"{field}.spi_size"
    _need(4 + spi_size <= len(body), f"SPI size {spi_size} overruns the proposal", spi_field, off + 2)
    if protocol in (ProtocolId.ESP, ProtocolId.AH):
        # RFC 2407 section 4.6.1 / RFC 2408 section 2.4: AH and ESP SPIs are 4 octets.
        _need(
            spi_size == 4, f"SPI size {spi_size} for protocol {protocol}", spi_field, off + 2, _BAD_PROPOSAL
        )
    elif protocol == ProtocolId.IPCOMP:
        # RFC 2407 section 4.4.1.3 / RFC 3173: a 2-byte CPI, sometimes sent in 4 bytes.
        _need(spi_size in (2, 4), f"CPI size {spi_size}", spi_field, off + 2, _BAD_PROPOSAL)
    # RFC 2408 section 3.5: a proposal offers at least one transform.
    _need(count > 0, "proposal with no transform", f"{field}.num_transforms", off + 3, _BAD_PROPOSAL)
    items, last_next, last_off = _chain(body, 4 + spi_size, off, PayloadType.TRANSFORM, f"{field}.transform")
    _need(len(items) == count, f"proposal announces {count} transforms but holds {len(items)}",
          f"{field}.num_transforms", off + 3, _BAD_PROPOSAL)  # fmt: skip
    _need(last_next == 0, "the last transform's next payload is not 0", f"{items[-1][0]}.next_payload",
          last_off, _BAD_PROPOSAL)  # fmt: skip
    transforms = []
    for tfield, toff, tbody in items:
        number_t, transform_id, _reserved = struct.unpack_from("!BBH", tbody)  # RFC 2408 section 3.6
        attrs = decode_attributes(tbody[4:], base_offset=toff + 4, field=f"{tfield}.attr")
        transforms.append(Transform(number_t, transform_id, attrs))
    return Proposal(number, protocol, bytes(body[4 : 4 + spi_size]), tuple(transforms))


SA_CACHE_SIZE = 64
"""SA payload bodies whose decoding is remembered (:func:`_decode_sa`), besides the pinned."""
SA_PINNED_SIZE = 32
"""SA payload bodies of peers that completed a phase 1 (:func:`pin_sa_body`), kept apart so a
storm of new offers cannot push them out."""

_sa_cache: dict[bytes, SAPayload] = {}
_sa_pinned: dict[bytes, SAPayload] = {}


def _remember(cache: dict[bytes, SAPayload], size: int, key: bytes, value: SAPayload) -> None:
    try:
        while len(cache) >= size:
            del cache[next(iter(cache))]  # the oldest first
    except (KeyError, RuntimeError, StopIteration):  # another thread's engine evicted it first
        pass
    cache[key] = value


def sa_body_known(body: bytes) -> bool:
    """Whether the SA payload body ``body`` (after its generic header) decodes from memory:
    the offer of a recent first message, or of a peer that completed a phase 1. Parsing a new
    offer is the expensive part of a first message (issue 14: a budget of its own)."""
    return body in _sa_pinned or body in _sa_cache


def pin_sa_body(body: bytes) -> None:
    """Keep the decoding of ``body``, the offer of a peer whose phase 1 completed, among the
    pinned (so other clients of its kind are cheap to parse whatever a storm offers)."""
    decoded = _sa_pinned.get(body) or _sa_cache.get(body)
    if decoded is not None and body not in _sa_pinned:
        _remember(_sa_pinned, SA_PINNED_SIZE, body, decoded)


def _decode_sa(body: bytes, off: int) -> SAPayload:
    """An SA payload, decoded once per distinct body: every client of one kind sends the same
    offer (ours: 168 transforms, the bulk of parsing a first message), and so does a storm
    replaying a real first message under fresh cookies (issue 14). The decoded payload is
    immutable and does not depend on ``off``; errors are not remembered. At most
    :data:`SA_CACHE_SIZE` + :data:`SA_PINNED_SIZE` bodies (about 1.5 MB at the first look's
    16 KB bound), the oldest forgotten first."""
    key = bytes(body)
    cached = _sa_pinned.get(key) or _sa_cache.get(key)
    if cached is not None:
        return cached
    decoded = _decode_sa_body(key, off)
    _remember(_sa_cache, SA_CACHE_SIZE, key, decoded)
    return decoded


def _decode_sa_body(body: bytes, off: int) -> SAPayload:
    _need(len(body) >= 8, f"SA body is {len(body)} bytes, needs at least 8", "SA", off)
    doi, situation = struct.unpack_from("!II", body)
    _need(doi == DOI_IPSEC, f"SA DOI {doi} is not IPsec (1)", "SA.doi", off, NotifyType.DOI_NOT_SUPPORTED)
    # RFC 2407 section 4.6.1: only SIT_IDENTITY_ONLY has no further situation fields.
    _need(situation == SIT_IDENTITY_ONLY, f"situation {situation:#x} is not SIT_IDENTITY_ONLY",
          "SA.situation", off + 4, NotifyType.SITUATION_NOT_SUPPORTED)  # fmt: skip
    items, last_next, last_off = _chain(body, 8, off, PayloadType.PROPOSAL, "SA.proposal")
    _need(bool(items), "SA payload holds no proposal", "SA.proposal[0]", off + 8, _BAD_PROPOSAL)
    _need(last_next == 0, "the last proposal's next payload is not 0", f"{items[-1][0]}.next_payload",
          last_off, _BAD_PROPOSAL)  # fmt: skip
    return SAPayload(tuple(_decode_proposal(b, o, f) for f, o, b in items), doi, situation)


def _decode_notify(body: bytes, off: int) -> NotifyPayload:
    _need(len(body) >= 8, f"Notify body is {len(body)} bytes, needs at least 8", "N", off)
    doi, protocol, spi_size, notify_type = struct.unpack_from("!IBBH", body)
    # RFC 2408 section 3.14: DOI 0 is allowed for ISAKMP-level notifications.
    _need(doi in (0, DOI_IPSEC), f"Notify DOI {doi}", "N.doi", off, NotifyType.DOI_NOT_SUPPORTED)
    _need(
        8 + spi_size <= len(body), f"SPI size {spi_size} overruns the Notify payload", "N.spi_size", off + 5
    )
    return NotifyPayload(
        notify_type, protocol, bytes(body[8 : 8 + spi_size]), bytes(body[8 + spi_size :]), doi
    )


def _decode_delete(body: bytes, off: int) -> DeletePayload:
    _need(len(body) >= 8, f"Delete body is {len(body)} bytes, needs at least 8", "D", off)
    doi, protocol, spi_size, count = struct.unpack_from("!IBBH", body)
    _need(doi in (0, DOI_IPSEC), f"Delete DOI {doi}", "D.doi", off, NotifyType.DOI_NOT_SUPPORTED)
    _need(
        spi_size * count == len(body) - 8,
        f"{count} SPIs of {spi_size} bytes do not fill the {len(body) - 8} bytes left",
        "D.num_spis",
        off + 6,
    )
    if count:
        _need(spi_size > 0, "Delete with SPI size 0", "D.spi_size", off + 5)
    spis = tuple(bytes(body[8 + i * spi_size : 8 + (i + 1) * spi_size]) for i in range(count))
    if not count:
        # Our DeletePayload keeps no SPI size when it holds no SPI: accept only the usual ones.
        expected = 16 if protocol == ProtocolId.ISAKMP else 4
        _need(spi_size == expected, f"SPI size {spi_size} for protocol {protocol}", "D.spi_size", off + 5)
    return DeletePayload(protocol, spis, doi)


_NAT_OA_SIZES: dict[int, int] = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}


def _decode_body(ptype: int, body: bytes, off: int) -> Payload:
    """Decode the body of a payload of type ``ptype`` found at absolute offset ``off``."""
    if ptype == PayloadType.SA:
        return _decode_sa(body, off)
    if ptype == PayloadType.KE:
        return KEPayload(body)
    if ptype == PayloadType.ID:
        _need(len(body) >= 4, f"ID body is {len(body)} bytes, needs at least 4", "ID", off)
        id_type, protocol, port = struct.unpack_from("!BBH", body)
        return IDPayload(id_type, body[4:], protocol, port)
    if ptype == PayloadType.CERT:
        _need(len(body) >= 1, "empty CERT payload", "CERT", off)
        return CertPayload(body[0], body[1:])
    if ptype == PayloadType.CR:
        _need(len(body) >= 1, "empty CR payload", "CR", off)
        return CertRequestPayload(body[0], body[1:])
    if ptype == PayloadType.HASH:
        return HashPayload(body)
    if ptype == PayloadType.SIG:
        return SignaturePayload(body)
    if ptype == PayloadType.NONCE:
        return NoncePayload(body)
    if ptype == PayloadType.NOTIFICATION:
        return _decode_notify(body, off)
    if ptype == PayloadType.DELETE:
        return _decode_delete(body, off)
    if ptype == PayloadType.VENDOR_ID:
        return VendorIDPayload(body)
    if ptype == PayloadType.ATTRIBUTE:
        _need(len(body) >= 4, f"Attribute body is {len(body)} bytes, needs at least 4", "ATTR", off)
        cfg_type, _r, identifier = struct.unpack_from("!BBH", body)
        return AttributePayload(
            cfg_type, identifier, decode_attributes(body[4:], base_offset=off + 4, field="ATTR.attr")
        )
    if ptype in (PayloadType.NAT_D, PayloadType.NAT_D_DRAFT):
        return NatDPayload(body, ptype == PayloadType.NAT_D_DRAFT)
    if ptype in (PayloadType.NAT_OA, PayloadType.NAT_OA_DRAFT):
        _need(len(body) >= 4, f"NAT-OA body is {len(body)} bytes, needs at least 4", "NAT-OA", off)
        id_type = body[0]
        size = _NAT_OA_SIZES.get(id_type)
        _need(size is not None, f"NAT-OA ID type {id_type} is not IPV4_ADDR/IPV6_ADDR", "NAT-OA.id_type", off)
        _need(
            len(body) - 4 == size,
            f"NAT-OA address is {len(body) - 4} bytes, expected {size}",
            "NAT-OA.address",
            off + 4,
        )
        return NatOAPayload(id_type, body[4:], ptype == PayloadType.NAT_OA_DRAFT)
    if ptype >= 128:
        return UnknownPayload(ptype, body)
    raise RemoteProtocolError(
        f"payload type {ptype} unknown or not allowed here",
        NotifyType.INVALID_PAYLOAD_TYPE,
        "next_payload",
        off,
    )


# Payload types that may appear in the top-level chain (RFC 2408 section 3.1, RFC 3947);
# 2 and 3 only occur nested inside an SA payload.  128-255 are private use.
_TOP_LEVEL_TYPES = frozenset(
    {PayloadType.SA, *range(PayloadType.KE, PayloadType.ATTRIBUTE + 1), PayloadType.NAT_D, PayloadType.NAT_OA}
)


@dataclass(frozen=True, slots=True)
class RawPayload:
    """A decoded payload and its exact bytes on the wire (generic header included)."""

    payload: Payload
    raw: bytes

    @property
    def body(self) -> bytes:
        """The payload without its generic header, e.g. SAi_b or IDii_b of RFC 2409 section 5."""
        return self.raw[4:]


def decode_payloads(
    first_type: int, data: bytes, *, base_offset: int = HEADER_SIZE, allow_trailing: bool = False
) -> list[RawPayload]:
    """Walk the payload chain of RFC 2408 section 3.2 starting with type ``first_type``.

    ``data`` starts at absolute offset ``base_offset`` of the message.  With
    ``allow_trailing`` bytes after the last payload (CBC padding, RFC 2409 appendix B)
    are ignored; otherwise they are an error.
    """
    data = bytes(data)
    out: list[RawPayload] = []
    ptype = first_type
    pos = 0
    while ptype != PayloadType.NONE:
        field = f"payload[{len(out)}]"
        off = base_offset + pos
        # RFC 2408 section 5.3 step 1 checks the type before anything else.
        if ptype not in _TOP_LEVEL_TYPES and ptype < 128:
            raise RemoteProtocolError(
                f"payload type {ptype} unknown or not allowed here",
                NotifyType.INVALID_PAYLOAD_TYPE,
                f"{field}.type",
                off,
            )
        _need(
            len(data) - pos >= 4,
            f"truncated generic payload header ({len(data) - pos} bytes left)",
            field,
            off,
        )
        nxt, _reserved, length = _GENERIC.unpack_from(data, pos)
        _need(length >= 4, f"payload length {length} < 4", f"{field}.length", off + 2)
        _need(
            pos + length <= len(data),
            f"payload length {length} overruns the message ({len(data) - pos} left)",
            f"{field}.length",
            off + 2,
        )
        raw = data[pos : pos + length]
        payload = _decode_body(ptype, raw[4:], off + 4)
        out.append(RawPayload(payload, raw))
        ptype = nxt
        pos += length
    if pos < len(data) and not allow_trailing:
        raise RemoteProtocolError(
            f"{len(data) - pos} bytes after the last payload",
            _MALFORMED,
            f"payload[{len(out)}]",
            base_offset + pos,
        )
    return out


# --------------------------------------------------------------------------- header / message


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed ISAKMP header (RFC 2408 section 3.1)."""

    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int
    version: int = ISAKMP_VERSION


def encode_header(h: Header) -> bytes:
    """The 28 header bytes of RFC 2408 section 3.1."""
    if len(h.icookie) != 8 or len(h.rcookie) != 8:
        raise LocalProtocolError("cookies must be 8 bytes")
    for name, bits in (
        ("next_payload", 8),
        ("version", 8),
        ("exchange", 8),
        ("flags", 8),
        ("message_id", 32),
    ):
        _check_u(getattr(h, name), bits, name)
    _check_u(h.length, 32, "length")
    return _HEADER.pack(
        h.icookie, h.rcookie, h.next_payload, h.version, h.exchange, h.flags, h.message_id, h.length
    )


def decode_header(data: bytes) -> Header:
    """Parse and check the header of the datagram ``data`` (RFC 2408 sections 3.1 and 5.2).

    Raises RemoteProtocolError: shorter than 28 bytes (PAYLOAD_MALFORMED), major version
    not 1 (INVALID_MAJOR_VERSION), Length field not equal to ``len(data)``
    (UNEQUAL_PAYLOAD_LENGTHS).  The minor version is not checked (RFC 2408 5.2 leaves
    it to the implementation; peers send 0).
    """
    _need(
        len(data) >= HEADER_SIZE,
        f"message is {len(data)} bytes, shorter than the 28-byte header",
        "header",
        len(data),
    )
    icookie, rcookie, nxt, version, exchange, flags, message_id, length = _HEADER.unpack_from(data)
    _need(
        version >> 4 == ISAKMP_VERSION >> 4,
        f"major version {version >> 4}",
        "header.version",
        17,
        NotifyType.INVALID_MAJOR_VERSION,
    )
    _need(
        length == len(data),
        f"header length {length} but {len(data)} bytes received",
        "header.length",
        24,
        NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
    )
    return Header(icookie, rcookie, nxt, exchange, flags, message_id, length, version)


@dataclass(frozen=True, slots=True)
class Message:
    """A plaintext view of a whole ISAKMP message."""

    icookie: bytes
    rcookie: bytes
    exchange: int
    flags: int
    message_id: int
    payloads: tuple[Payload, ...]


def encode_message(m: Message) -> bytes:
    """Header plus payloads, unencrypted; next_payload and length are computed."""
    first, body = encode_payloads(m.payloads)
    header = Header(m.icookie, m.rcookie, first, m.exchange, m.flags, m.message_id, HEADER_SIZE + len(body))
    return encode_header(header) + body


def decode_message(data: bytes) -> Message:
    """Parse an unencrypted message; an encrypted one (E flag) is refused."""
    h = decode_header(data)
    _need(
        not h.flags & HeaderFlag.ENCRYPTION,
        "message is encrypted",
        "header.flags",
        19,
        NotifyType.INVALID_FLAGS,
    )
    payloads = decode_payloads(h.next_payload, data[HEADER_SIZE:], base_offset=HEADER_SIZE)
    return Message(
        h.icookie, h.rcookie, h.exchange, h.flags, h.message_id, tuple(r.payload for r in payloads)
    )
