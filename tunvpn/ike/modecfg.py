"""Typed Mode Config, XAUTH and Cisco Unity attribute values.

Wire formats:

* draft-dukes-ike-mode-cfg-02 section 3.4: INTERNAL_IP4_* are 4 octets, INTERNAL_IP4_SUBNET
  address + netmask (8), INTERNAL_ADDRESS_EXPIRY 4 octets of seconds, APPLICATION_VERSION a
  string, SUPPORTED_ATTRIBUTES a list of 2-octet types, INTERNAL_IP6_SUBNET address + prefix
  length (17).  INTERNAL_IP6_ADDRESS is 16 octets in the draft; strongSwan sends 17 (with a
  prefix length, as IKEv2 does) and Libreswan accepts both, so we send 17 and accept both.
  All of these are variable-length (TLV) attributes.
* draft-beaulieu-ike-xauth-02 section 6.2: XAUTH-TYPE and XAUTH-STATUS are Basic (TV), the
  others variable-length ASCII strings.
* Cisco Unity, as vpnc (``do_config_to_env``), racoon (``isakmp_unity.c``, replies through
  ``isakmp_cfg_short``) and strongSwan's unity plugin encode them: SAVE_PASSWD, PFS and
  NATT_PORT are TV; BANNER, DEF_DOMAIN, SPLITDNS_NAME (comma-separated), BACKUP_SERVERS and
  DDNS_HOSTNAME are strings; SPLIT_INCLUDE and LOCAL_LAN hold 14-octet entries (address 4,
  mask 4, protocol 2, source port 2, destination port 2), several in one attribute.

Requests carry empty TLV attributes (draft-dukes section 3.4; vpnc requests the Unity TV
attributes as empty TLV too).  Decoders accept TV or TLV for every integer attribute.  A
value of the wrong length raises :class:`RemoteProtocolError` (PAYLOAD_MALFORMED) naming the
attribute.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TypeVar

from .constants import CfgAttr, NotifyType, XauthStatus
from .errors import RemoteProtocolError
from .messages import DataAttribute

_T = TypeVar("_T")

# Attributes sent in the TV (basic) format when they carry a value (see module docstring).
TV_ATTRIBUTES = frozenset(
    {
        CfgAttr.XAUTH_TYPE,
        CfgAttr.XAUTH_STATUS,
        CfgAttr.UNITY_SAVE_PASSWD,
        CfgAttr.UNITY_PFS,
        CfgAttr.UNITY_NATT_PORT,
    }
)


def attr_name(attr_type: int) -> str:
    """The registry name of a Mode Config attribute type, or its number."""
    try:
        return CfgAttr(attr_type).name
    except ValueError:
        return str(attr_type)


def _bad(attr_type: int, message: str) -> RemoteProtocolError:
    name = attr_name(attr_type)
    return RemoteProtocolError(f"{name}: {message}", NotifyType.PAYLOAD_MALFORMED, f"ATTR.{name}")


def _value_bytes(a: DataAttribute) -> bytes:
    if isinstance(a.value, int):
        raise _bad(a.type, "expected a variable-length (TLV) value, got a basic (TV) one")
    return a.value


# --------------------------------------------------------------------------- value codecs


def encode_ip4(address: IPv4Address) -> bytes:
    """INTERNAL_IP4_ADDRESS / NETMASK / DNS / NBNS / DHCP: 4 octets."""
    return address.packed


def decode_ip4(a: DataAttribute) -> IPv4Address:
    data = _value_bytes(a)
    if len(data) != 4:
        raise _bad(a.type, f"{len(data)} octets, expected 4")
    return IPv4Address(data)


def encode_ip6(address: IPv6Address) -> bytes:
    """INTERNAL_IP6_DNS / NBNS / DHCP / NETMASK: 16 octets."""
    return address.packed


def decode_ip6(a: DataAttribute) -> IPv6Address:
    data = _value_bytes(a)
    if len(data) != 16:
        raise _bad(a.type, f"{len(data)} octets, expected 16")
    return IPv6Address(data)


def _mask_prefix(a: DataAttribute, mask: bytes) -> int:
    value = int.from_bytes(mask, "big")
    bits = 8 * len(mask)
    inverted = value ^ ((1 << bits) - 1)
    if inverted & (inverted + 1):
        raise _bad(a.type, f"non-contiguous netmask {mask.hex()}")
    return bits - inverted.bit_length()


def encode_ip4_subnet(network: IPv4Network) -> bytes:
    """INTERNAL_IP4_SUBNET: address then netmask (8 octets)."""
    return network.network_address.packed + network.netmask.packed


def decode_ip4_subnet(a: DataAttribute) -> IPv4Network:
    data = _value_bytes(a)
    if len(data) != 8:
        raise _bad(a.type, f"{len(data)} octets, expected 8")
    return IPv4Network((IPv4Address(data[:4]), _mask_prefix(a, data[4:])), strict=False)


def encode_ip6_prefixed(value: IPv6Interface | IPv6Network) -> bytes:
    """INTERNAL_IP6_ADDRESS / INTERNAL_IP6_SUBNET: 16-octet address + 1-octet prefix length."""
    if isinstance(value, IPv6Interface):
        return value.ip.packed + bytes([value.network.prefixlen])
    return value.network_address.packed + bytes([value.prefixlen])


def _decode_prefixed(a: DataAttribute, allow_bare: bool) -> tuple[IPv6Address, int]:
    data = _value_bytes(a)
    if len(data) == 16 and allow_bare:
        return IPv6Address(data), 128
    if len(data) != 17:
        raise _bad(a.type, f"{len(data)} octets, expected 17")
    if data[16] > 128:
        raise _bad(a.type, f"prefix length {data[16]} > 128")
    return IPv6Address(data[:16]), data[16]


def decode_ip6_address(a: DataAttribute) -> IPv6Interface:
    """INTERNAL_IP6_ADDRESS: 17 octets (strongSwan), or the draft's bare 16 (as /128)."""
    address, prefix = _decode_prefixed(a, allow_bare=True)
    return IPv6Interface((address, prefix))


def decode_ip6_subnet(a: DataAttribute) -> IPv6Network:
    """INTERNAL_IP6_SUBNET: 17 octets (draft-dukes-ike-mode-cfg-02 section 3.4)."""
    address, prefix = _decode_prefixed(a, allow_bare=False)
    return IPv6Network((address, prefix), strict=False)


def encode_string(text: str) -> bytes:
    """Strings are sent as UTF-8, not NUL-terminated (draft-dukes section 3.4)."""
    return text.encode("utf-8")


def decode_string(a: DataAttribute) -> str:
    """Lenient: invalid UTF-8 is replaced, a trailing NUL some peers send is dropped."""
    return _value_bytes(a).decode("utf-8", errors="replace").rstrip("\x00")


def decode_int(a: DataAttribute) -> int:
    """An integer sent TV or as a TLV of at most 8 octets."""
    if isinstance(a.value, bytes) and not 1 <= len(a.value) <= 8:
        raise _bad(a.type, f"{len(a.value)}-octet integer")
    return a.as_int()


def encode_expiry(seconds: int) -> DataAttribute:
    """INTERNAL_ADDRESS_EXPIRY: 4 octets of seconds."""
    return DataAttribute.tlv_int(CfgAttr.INTERNAL_ADDRESS_EXPIRY, seconds, 4)


def encode_supported(types: Iterable[int]) -> bytes:
    """SUPPORTED_ATTRIBUTES: 2 octets per attribute type."""
    return b"".join(struct.pack("!H", t) for t in types)


def decode_supported(a: DataAttribute) -> tuple[int, ...]:
    data = _value_bytes(a)
    if len(data) % 2:
        raise _bad(a.type, f"{len(data)} octets, not a multiple of 2")
    return tuple(struct.unpack(f"!{len(data) // 2}H", data))


@dataclass(frozen=True, slots=True)
class UnitySplitEntry:
    """One 14-octet Cisco Unity SPLIT_INCLUDE / LOCAL_LAN entry (vpnc ``acl_ent``)."""

    network: IPv4Network
    protocol: int = 0
    sport: int = 0
    dport: int = 0


def encode_unity_split(entries: Iterable[UnitySplitEntry | IPv4Network]) -> bytes:
    """Concatenated entries: address, mask, protocol, source port, destination port."""
    out = bytearray()
    for e in entries:
        entry = e if isinstance(e, UnitySplitEntry) else UnitySplitEntry(e)
        out += encode_ip4_subnet(entry.network) + struct.pack(
            "!HHH", entry.protocol, entry.sport, entry.dport
        )
    return bytes(out)


def decode_unity_split(a: DataAttribute) -> tuple[UnitySplitEntry, ...]:
    data = _value_bytes(a)
    if len(data) % 14:
        raise _bad(a.type, f"{len(data)} octets, not a multiple of 14")
    entries = []
    for pos in range(0, len(data), 14):
        network = decode_ip4_subnet(DataAttribute(a.type, data[pos : pos + 8]))
        protocol, sport, dport = struct.unpack_from("!HHH", data, pos + 8)
        entries.append(UnitySplitEntry(network, protocol, sport, dport))
    return tuple(entries)


def encode_split_dns(domains: Iterable[str]) -> bytes:
    """UNITY_SPLITDNS_NAME: comma-separated domain names (strongSwan unity plugin)."""
    return ",".join(domains).encode("utf-8")


def decode_split_dns(a: DataAttribute) -> tuple[str, ...]:
    return tuple(d.strip() for d in decode_string(a).split(",") if d.strip())


def request_attributes(types: Iterable[int]) -> tuple[DataAttribute, ...]:
    """Empty-valued TLV attributes asking for ``types`` (draft-dukes section 3.4)."""
    return tuple(DataAttribute(t, b"") for t in types)


def requested_types(attrs: Iterable[DataAttribute]) -> tuple[int, ...]:
    """The attribute types of a CFG_REQUEST, in order, without repeats."""
    return tuple(dict.fromkeys(a.type for a in attrs))


def _is_empty(a: DataAttribute) -> bool:
    return a.value == b""


# --------------------------------------------------------------------------- ModeConfig


@dataclass(frozen=True, slots=True)
class ModeConfig:
    """The configuration a gateway hands a client in a CFG_REPLY or CFG_SET.

    Standard attributes come from draft-dukes-ike-mode-cfg-02 section 3.4, the ``unity_*``
    / split ones from Cisco Unity.  ``unknown`` keeps the attributes we do not interpret
    (and repeats of single-valued ones) in order; they are not lost on a round trip.
    """

    address: IPv4Address | None = None
    netmask: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    nbns: tuple[IPv4Address, ...] = ()
    address_expiry: int | None = None
    ip6_address: IPv6Interface | None = None
    ip6_dns: tuple[IPv6Address, ...] = ()
    subnets: tuple[IPv4Network, ...] = ()
    ip6_subnets: tuple[IPv6Network, ...] = ()
    banner: str | None = None
    default_domain: str | None = None
    split_include: tuple[IPv4Network, ...] = ()
    split_dns: tuple[str, ...] = ()
    local_lan: tuple[IPv4Network, ...] = ()
    unity_pfs: int | None = None
    save_password: bool | None = None
    application_version: str | None = None
    natt_port: int | None = None
    supported_attributes: tuple[int, ...] = ()
    unknown: tuple[DataAttribute, ...] = ()

    def to_attributes(self) -> tuple[DataAttribute, ...]:
        """The attributes of a reply, omitting unset fields; unknown ones last."""
        out: list[DataAttribute] = []

        def add(kind: CfgAttr, value: bytes) -> None:
            out.append(DataAttribute(kind, value))

        if self.address is not None:
            add(CfgAttr.INTERNAL_IP4_ADDRESS, encode_ip4(self.address))
        if self.netmask is not None:
            add(CfgAttr.INTERNAL_IP4_NETMASK, encode_ip4(self.netmask))
        for a in self.dns:
            add(CfgAttr.INTERNAL_IP4_DNS, encode_ip4(a))
        for a in self.nbns:
            add(CfgAttr.INTERNAL_IP4_NBNS, encode_ip4(a))
        if self.address_expiry is not None:
            out.append(encode_expiry(self.address_expiry))
        if self.application_version is not None:
            add(CfgAttr.APPLICATION_VERSION, encode_string(self.application_version))
        if self.ip6_address is not None:
            add(CfgAttr.INTERNAL_IP6_ADDRESS, encode_ip6_prefixed(self.ip6_address))
        for a6 in self.ip6_dns:
            add(CfgAttr.INTERNAL_IP6_DNS, encode_ip6(a6))
        for net in self.subnets:
            add(CfgAttr.INTERNAL_IP4_SUBNET, encode_ip4_subnet(net))
        if self.supported_attributes:
            add(CfgAttr.SUPPORTED_ATTRIBUTES, encode_supported(self.supported_attributes))
        for net6 in self.ip6_subnets:
            add(CfgAttr.INTERNAL_IP6_SUBNET, encode_ip6_prefixed(net6))
        if self.banner is not None:
            add(CfgAttr.UNITY_BANNER, encode_string(self.banner))
        if self.save_password is not None:
            out.append(DataAttribute(CfgAttr.UNITY_SAVE_PASSWD, int(self.save_password)))
        if self.default_domain is not None:
            add(CfgAttr.UNITY_DEF_DOMAIN, encode_string(self.default_domain))
        if self.split_dns:
            add(CfgAttr.UNITY_SPLITDNS_NAME, encode_split_dns(self.split_dns))
        if self.split_include:
            add(CfgAttr.UNITY_SPLIT_INCLUDE, encode_unity_split(self.split_include))
        if self.natt_port is not None:
            out.append(DataAttribute(CfgAttr.UNITY_NATT_PORT, self.natt_port))
        if self.local_lan:
            add(CfgAttr.UNITY_LOCAL_LAN, encode_unity_split(self.local_lan))
        if self.unity_pfs is not None:
            out.append(DataAttribute(CfgAttr.UNITY_PFS, self.unity_pfs))
        return (*out, *self.unknown)

    @classmethod
    def from_attributes(cls, attrs: Iterable[DataAttribute]) -> ModeConfig:
        """Read a CFG_REPLY / CFG_SET.  Empty values (which a reply MUST NOT carry,
        draft-dukes section 3.4) are ignored; unknown types are kept in ``unknown``."""
        unknown: list[DataAttribute] = []

        def once(a: DataAttribute, old: _T | None, new: _T) -> _T:
            """A value attribute counts the first time; a repeat is kept in ``unknown``."""
            if old is None:
                return new
            unknown.append(a)
            return old

        address: IPv4Address | None = None
        netmask: IPv4Address | None = None
        address_expiry: int | None = None
        application_version: str | None = None
        ip6_address: IPv6Interface | None = None
        banner: str | None = None
        save_password: bool | None = None
        default_domain: str | None = None
        natt_port: int | None = None
        unity_pfs: int | None = None
        dns: list[IPv4Address] = []
        nbns: list[IPv4Address] = []
        ip6_dns: list[IPv6Address] = []
        subnets: list[IPv4Network] = []
        supported_attributes: list[int] = []
        ip6_subnets: list[IPv6Network] = []
        split_dns: list[str] = []
        split_include: list[IPv4Network] = []
        local_lan: list[IPv4Network] = []
        for a in attrs:
            if _is_empty(a):
                continue
            t = a.type
            if t == CfgAttr.INTERNAL_IP4_ADDRESS:
                address = once(a, address, decode_ip4(a))
            elif t == CfgAttr.INTERNAL_IP4_NETMASK:
                netmask = once(a, netmask, decode_ip4(a))
            elif t in (CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP4_NBNS):
                (dns if t == CfgAttr.INTERNAL_IP4_DNS else nbns).append(decode_ip4(a))
            elif t == CfgAttr.INTERNAL_ADDRESS_EXPIRY:
                address_expiry = once(a, address_expiry, decode_int(a))
            elif t == CfgAttr.APPLICATION_VERSION:
                application_version = once(a, application_version, decode_string(a))
            elif t == CfgAttr.INTERNAL_IP6_ADDRESS:
                ip6_address = once(a, ip6_address, decode_ip6_address(a))
            elif t == CfgAttr.INTERNAL_IP6_DNS:
                ip6_dns.append(decode_ip6(a))
            elif t == CfgAttr.INTERNAL_IP4_SUBNET:
                subnets.append(decode_ip4_subnet(a))
            elif t == CfgAttr.SUPPORTED_ATTRIBUTES:
                supported_attributes.extend(decode_supported(a))
            elif t == CfgAttr.INTERNAL_IP6_SUBNET:
                ip6_subnets.append(decode_ip6_subnet(a))
            elif t == CfgAttr.UNITY_BANNER:
                banner = once(a, banner, decode_string(a))
            elif t == CfgAttr.UNITY_SAVE_PASSWD:
                save_password = once(a, save_password, bool(decode_int(a)))
            elif t == CfgAttr.UNITY_DEF_DOMAIN:
                default_domain = once(a, default_domain, decode_string(a))
            elif t == CfgAttr.UNITY_SPLITDNS_NAME:
                split_dns.extend(decode_split_dns(a))
            elif t in (CfgAttr.UNITY_SPLIT_INCLUDE, CfgAttr.UNITY_LOCAL_LAN):
                networks = split_include if t == CfgAttr.UNITY_SPLIT_INCLUDE else local_lan
                networks.extend(e.network for e in decode_unity_split(a))
            elif t == CfgAttr.UNITY_NATT_PORT:
                natt_port = once(a, natt_port, decode_int(a))
            elif t == CfgAttr.UNITY_PFS:
                unity_pfs = once(a, unity_pfs, decode_int(a))
            else:
                unknown.append(a)
        return cls(
            address=address,
            netmask=netmask,
            dns=tuple(dns),
            nbns=tuple(nbns),
            address_expiry=address_expiry,
            ip6_address=ip6_address,
            ip6_dns=tuple(ip6_dns),
            subnets=tuple(subnets),
            ip6_subnets=tuple(ip6_subnets),
            banner=banner,
            default_domain=default_domain,
            split_include=tuple(split_include),
            split_dns=tuple(split_dns),
            local_lan=tuple(local_lan),
            unity_pfs=unity_pfs,
            save_password=save_password,
            application_version=application_version,
            natt_port=natt_port,
            supported_attributes=tuple(supported_attributes),
            unknown=tuple(unknown),
        )


# --------------------------------------------------------------------------- XAUTH


def _opt_str(a: DataAttribute) -> str:
    return decode_string(a) if isinstance(a.value, bytes) else str(a.value)


@dataclass(frozen=True, slots=True)
class XauthRequest:
    """What an edge device asks for in an XAUTH CFG_REQUEST (draft-beaulieu-ike-xauth-02 6.2).

    Booleans say which empty attributes were sent ("fill this in"); ``message`` and
    ``challenge`` carry the server's text; ``domain`` is None when absent, ``""`` when
    asked for, else the server's value.  ``xauth_type`` None means absent (Generic, 6.3).
    """

    xauth_type: int | None = None
    user_name: bool = False
    password: bool = False
    passcode: bool = False
    message: str | None = None
    challenge: bytes | None = None
    domain: str | None = None
    next_pin: bool = False
    answer: bool = False
    unknown: tuple[DataAttribute, ...] = ()

    def to_attributes(self) -> tuple[DataAttribute, ...]:
        out: list[DataAttribute] = []
        if self.xauth_type is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_TYPE, self.xauth_type))
        asked = ((self.user_name, CfgAttr.XAUTH_USER_NAME), (self.password, CfgAttr.XAUTH_USER_PASSWORD),
                 (self.passcode, CfgAttr.XAUTH_PASSCODE))  # fmt: skip
        out += [DataAttribute(kind, b"") for wanted, kind in asked if wanted]
        if self.message is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_MESSAGE, encode_string(self.message)))
        if self.challenge is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_CHALLENGE, self.challenge))
        if self.domain is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_DOMAIN, encode_string(self.domain)))
        if self.next_pin:
            out.append(DataAttribute(CfgAttr.XAUTH_NEXT_PIN, b""))
        if self.answer:
            out.append(DataAttribute(CfgAttr.XAUTH_ANSWER, b""))
        return (*out, *self.unknown)

    @classmethod
    def from_attributes(cls, attrs: Iterable[DataAttribute]) -> XauthRequest:
        xauth_type: int | None = None
        asked: set[CfgAttr] = set()
        message: str | None = None
        challenge: bytes | None = None
        domain: str | None = None
        unknown: list[DataAttribute] = []
        flags = (CfgAttr.XAUTH_USER_NAME, CfgAttr.XAUTH_USER_PASSWORD, CfgAttr.XAUTH_PASSCODE,
                 CfgAttr.XAUTH_NEXT_PIN, CfgAttr.XAUTH_ANSWER)  # fmt: skip
        for a in attrs:
            if a.type == CfgAttr.XAUTH_TYPE:
                xauth_type = decode_int(a) if not _is_empty(a) else 0
            elif a.type in flags:
                asked.add(CfgAttr(a.type))
            elif a.type == CfgAttr.XAUTH_MESSAGE:
                message = _opt_str(a)
            elif a.type == CfgAttr.XAUTH_CHALLENGE:
                challenge = _value_bytes(a)
            elif a.type == CfgAttr.XAUTH_DOMAIN:
                domain = _opt_str(a)
            else:
                unknown.append(a)
        return cls(
            xauth_type=xauth_type,
            user_name=CfgAttr.XAUTH_USER_NAME in asked,
            password=CfgAttr.XAUTH_USER_PASSWORD in asked,
            passcode=CfgAttr.XAUTH_PASSCODE in asked,
            message=message,
            challenge=challenge,
            domain=domain,
            next_pin=CfgAttr.XAUTH_NEXT_PIN in asked,
            answer=CfgAttr.XAUTH_ANSWER in asked,
            unknown=tuple(unknown),
        )


@dataclass(frozen=True, slots=True)
class XauthReply:
    """An IPsec host's XAUTH CFG_REPLY (draft-beaulieu-ike-xauth-02 section 6.1/6.2).

    Secrets are kept out of ``repr``.  ``status`` is only sent as FAIL, when the host
    cannot supply credentials (section 6.1).
    """

    xauth_type: int | None = None
    user_name: str | None = None
    password: str | None = field(default=None, repr=False)
    passcode: str | None = field(default=None, repr=False)
    domain: str | None = None
    next_pin: str | None = field(default=None, repr=False)
    answer: str | None = field(default=None, repr=False)
    status: int | None = None
    unknown: tuple[DataAttribute, ...] = ()

    _STRINGS = (
        ("user_name", CfgAttr.XAUTH_USER_NAME),
        ("password", CfgAttr.XAUTH_USER_PASSWORD),
        ("passcode", CfgAttr.XAUTH_PASSCODE),
        ("domain", CfgAttr.XAUTH_DOMAIN),
        ("next_pin", CfgAttr.XAUTH_NEXT_PIN),
        ("answer", CfgAttr.XAUTH_ANSWER),
    )

    @classmethod
    def failed(cls) -> XauthReply:
        """The reply of a host that cannot authenticate: XAUTH-STATUS = FAIL."""
        return cls(status=XauthStatus.FAIL)

    def to_attributes(self) -> tuple[DataAttribute, ...]:
        out: list[DataAttribute] = []
        if self.xauth_type is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_TYPE, self.xauth_type))
        for name, kind in self._STRINGS:
            value = getattr(self, name)
            if value is not None:
                out.append(DataAttribute(kind, encode_string(value)))
        if self.status is not None:
            out.append(DataAttribute(CfgAttr.XAUTH_STATUS, self.status))
        return (*out, *self.unknown)

    @classmethod
    def from_attributes(cls, attrs: Iterable[DataAttribute]) -> XauthReply:
        kinds = {kind for _, kind in cls._STRINGS}
        xauth_type: int | None = None
        status: int | None = None
        strings: dict[CfgAttr, str] = {}
        unknown: list[DataAttribute] = []
        for a in attrs:
            if a.type == CfgAttr.XAUTH_TYPE:
                xauth_type = decode_int(a)
            elif a.type == CfgAttr.XAUTH_STATUS:
                status = decode_int(a)
            elif a.type in kinds:
                strings[CfgAttr(a.type)] = _opt_str(a)
            else:
                unknown.append(a)
        return cls(
            xauth_type=xauth_type,
            user_name=strings.get(CfgAttr.XAUTH_USER_NAME),
            password=strings.get(CfgAttr.XAUTH_USER_PASSWORD),
            passcode=strings.get(CfgAttr.XAUTH_PASSCODE),
            domain=strings.get(CfgAttr.XAUTH_DOMAIN),
            next_pin=strings.get(CfgAttr.XAUTH_NEXT_PIN),
            answer=strings.get(CfgAttr.XAUTH_ANSWER),
            status=status,
            unknown=tuple(unknown),
        )


@dataclass(frozen=True, slots=True)
class XauthResult:
    """The edge device's CFG_SET: XAUTH-STATUS and an optional XAUTH-MESSAGE (section 6.1)."""

    ok: bool
    message: str | None = None

    def to_attributes(self) -> tuple[DataAttribute, ...]:
        status = DataAttribute(CfgAttr.XAUTH_STATUS, XauthStatus.OK if self.ok else XauthStatus.FAIL)
        if self.message is None:
            return (status,)
        return (status, DataAttribute(CfgAttr.XAUTH_MESSAGE, encode_string(self.message)))

    @classmethod
    def from_attributes(cls, attrs: Iterable[DataAttribute]) -> XauthResult:
        """A SET without XAUTH-STATUS is malformed (it MUST be sent, section 6.2)."""
        status: int | None = None
        message: str | None = None
        for a in attrs:
            if a.type == CfgAttr.XAUTH_STATUS and status is None:
                status = decode_int(a)
            elif a.type == CfgAttr.XAUTH_MESSAGE and message is None:
                message = _opt_str(a)
        if status is None:
            raise _bad(CfgAttr.XAUTH_STATUS, "missing from the CFG_SET")
        return cls(status == XauthStatus.OK, message)
