"""Phase 1a: the gateway's phase 2 policies as sets of ``CFG_`` Mode Config attributes.

The client's CFG_REQUEST carries an empty ``CFG_PHASE2_POLICIES`` attribute ("send me every
phase 2 policy"); the gateway's CFG_REPLY (and a later CFG_SET, when its configuration
changes) carries ``CFG_PHASE2_POLICIES`` with the policy generation, then one set of
attributes per IPsec SA, each set opened by ``CFG_SA_BEGIN``. Attributes whose value would
be zero are omitted (no PFS group, no authentication algorithm for AEAD, no volume
lifetime). The numbers come from the Mode Config private-use range (16384-32767) and avoid
XAUTH (16520-16529), Microsoft (23456-23457) and Cisco Unity (28672-28683); they are sent
only to peers that sent the tunvpn vendor ID. ``docs/protocol.md`` specifies the format.

Pure data in, pure data out: no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from ..ipsec.algorithms import AuthAlgorithm, EspTransform
from ..ipsec.selectors import TrafficSelector
from .constants import DHGroup, IdType
from .errors import RemoteProtocolError
from .identity import selector_from_id_payload, selector_to_id_payload
from .messages import DataAttribute, IDPayload
from .proposals import DEFAULT_ESP, ChildProposal, EspSuite


class PolicyAttr(IntEnum):
    """tunvpn's private Mode Config attributes (docs/protocol.md, "Phase 1a")."""

    PHASE2_POLICIES = 20480
    """REQUEST: empty, asks for every policy. REPLY/SET: TV, the policy generation (1-65535)."""
    SA_BEGIN = 20481
    """TV, the set's number (1, 2, ...): the attributes after it, up to the next SA_BEGIN, define one SA."""
    SA_NAME = 20482
    """UTF-8, the policy's name (stable across changes; a client keys its SAs by it)."""
    ESP_TRANSFORM = 20483
    """TV, the ESP transform ID (RFC 2407 section 4.4.4; IANA "IPsec ESP Transform Identifiers")."""
    ESP_KEY_LENGTH = 20484
    """TV, key length in bits (omitted for fixed-length ciphers)."""
    ESP_AUTH = 20485
    """TV, Authentication Algorithm (RFC 2407 section 4.5); omitted for AEAD transforms."""
    PFS_GROUP = 20486
    """TV, Group Description of the Quick Mode KE (RFC 2407 section 4.5); omitted: no PFS."""
    LIFE_SECONDS = 20487
    """4 octets, SA lifetime in seconds."""
    LIFE_KILOBYTES = 20488
    """4 octets, SA lifetime in kilobytes; omitted: no volume limit."""
    GATEWAY_TS = 20489
    """Traffic selector of the gateway's side (Quick Mode IDcr): ID type, protocol, port, data."""
    CLIENT_TS = 20490
    """Traffic selector of the client's side (IDci); omitted: the client's assigned address."""
    EXTRA_PROTOCOL = 20491
    """UTF-8 ``name`` or ``name;key=value;...``: a protocol the client must run before Quick
    Mode (RADIUS, OTP, L2TP ...); one attribute per protocol, in the order to run them."""


POLICY_ATTRS = frozenset(int(a) for a in PolicyAttr)
_SET_ATTRS = POLICY_ATTRS - {PolicyAttr.PHASE2_POLICIES, PolicyAttr.EXTRA_PROTOCOL}
MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class Phase2Policy:
    """One IPsec SA the gateway defines: selectors and how to protect them.

    ``esp`` lists the suites the gateway accepts, strongest first; the first one is the one
    pushed to tunvpn clients. ``client_ts`` ``None`` means "the client's assigned address".
    """

    name: str
    gateway_ts: TrafficSelector
    client_ts: TrafficSelector | None = None
    esp: tuple[EspSuite, ...] = (DEFAULT_ESP[0],)
    pfs_group: DHGroup | None = DHGroup.ECP_256
    lifetime_seconds: int = 3600
    lifetime_kilobytes: int = 0

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > MAX_NAME:
            raise ValueError(f"policy name {self.name!r}: 1 to {MAX_NAME} octets")
        if not self.esp:
            raise ValueError(f"policy {self.name!r}: no ESP suite")
        if not 0 < self.lifetime_seconds < 1 << 32 or not 0 <= self.lifetime_kilobytes < 1 << 32:
            raise ValueError(f"policy {self.name!r}: lifetimes must fit in 32 bits (seconds > 0)")

    @property
    def suite(self) -> EspSuite:
        return self.esp[0]

    def wire(self) -> Phase2Policy:
        """What the client learns: the pushed suite only."""
        return Phase2Policy(
            self.name,
            self.gateway_ts,
            self.client_ts,
            (self.suite,),
            self.pfs_group,
            self.lifetime_seconds,
            self.lifetime_kilobytes,
        )

    def initiator_proposal(self) -> ChildProposal:
        """The Quick Mode proposal a client offers for this set: the pushed suite with ESN,
        then without (``ChildProposal.esn``); the gateway's default takes ESN (RFC 4304)."""
        return ChildProposal(
            esp=(self.suite,),
            pfs_group=self.pfs_group,
            lifetime_seconds=self.lifetime_seconds,
            lifetime_kilobytes=self.lifetime_kilobytes,
        )

    def responder_proposal(self, extra_pfs: Iterable[DHGroup | None] = ()) -> ChildProposal:
        """What the gateway accepts for this policy: any of its suites, its PFS group
        (and ``extra_pfs`` for standard clients that pick their own), lifetimes up to its own."""
        return ChildProposal(
            esp=self.esp,
            pfs_group=self.pfs_group,
            lifetime_seconds=self.lifetime_seconds,
            lifetime_kilobytes=self.lifetime_kilobytes,
            accept_pfs=frozenset(extra_pfs),
        )

    def describe(self) -> str:
        client = str(self.client_ts) if self.client_ts is not None else "(assigned address)"
        pfs = self.pfs_group.name if self.pfs_group is not None else "no PFS"
        life = f"{self.lifetime_seconds}s"
        if self.lifetime_kilobytes:
            life += f"/{self.lifetime_kilobytes}KB"
        return f"{self.name}: {client} === {self.gateway_ts} {self.suite} {pfs} {life}"


@dataclass(frozen=True, slots=True)
class ExtraProtocol:
    """A protocol the gateway requires after phase 1a and before Quick Mode."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for text in (self.name, *(k for k, _ in self.params)):
            if not text or any(c in text for c in ";=") or not text.isprintable():
                raise ValueError(f"extra protocol name/key {text!r}: non-empty, printable, no ';' or '='")
        for _, value in self.params:
            if ";" in value or not value.isprintable():
                raise ValueError(f"extra protocol {self.name}: value {value!r} must be printable without ';'")

    def encode(self) -> bytes:
        return ";".join([self.name, *(f"{k}={v}" for k, v in self.params)]).encode()

    @classmethod
    def decode(cls, data: bytes) -> ExtraProtocol:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise _bad(PolicyAttr.EXTRA_PROTOCOL, "not UTF-8") from None
        name, *rest = text.split(";")
        params = []
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep:
                raise _bad(PolicyAttr.EXTRA_PROTOCOL, f"parameter {item!r} lacks '='")
            params.append((key, value))
        try:
            return cls(name, tuple(params))
        except ValueError as exc:
            raise _bad(PolicyAttr.EXTRA_PROTOCOL, str(exc)) from None

    def param(self, key: str, default: str | None = None) -> str | None:
        return dict(self.params).get(key, default)


@dataclass(frozen=True, slots=True)
class PolicyPush:
    """Everything of phase 1a that is tunvpn's: the generation, the SA sets and the extra
    protocols. ``None`` from :func:`decode_policies` means the gateway sent none of it."""

    generation: int
    policies: tuple[Phase2Policy, ...] = ()
    protocols: tuple[ExtraProtocol, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= self.generation <= 0xFFFF:
            raise ValueError("policy generation must be 1-65535")
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names repeat: {names}")


def _bad(attr: int, message: str) -> RemoteProtocolError:
    name = PolicyAttr(attr).name if attr in POLICY_ATTRS else str(attr)
    return RemoteProtocolError(f"CFG_{name}: {message}", field=f"ATTR.CFG_{name}")


# --------------------------------------------------------------------------- selectors


def encode_selector(ts: TrafficSelector) -> bytes:
    """ID type (1), protocol (1), port (2), then the ID data, as in an RFC 2407 4.6.2 ID payload."""
    p = selector_to_id_payload(ts)
    return struct.pack("!BBH", p.id_type, p.protocol, p.port) + p.data


def decode_selector(attr: int, data: bytes) -> TrafficSelector:
    if len(data) < 4:
        raise _bad(attr, f"{len(data)} octets, a selector needs at least 4")
    id_type, protocol, port = struct.unpack_from("!BBH", data)
    if id_type not in (
        IdType.IPV4_ADDR,
        IdType.IPV4_ADDR_SUBNET,
        IdType.IPV4_ADDR_RANGE,
        IdType.IPV6_ADDR,
        IdType.IPV6_ADDR_SUBNET,
        IdType.IPV6_ADDR_RANGE,
    ):
        raise _bad(attr, f"ID type {id_type} is not an address type")
    try:
        return selector_from_id_payload(IDPayload(id_type, data[4:], protocol, port))
    except (RemoteProtocolError, ValueError) as exc:
        raise _bad(attr, str(exc)) from None


# --------------------------------------------------------------------------- encode


def request_attribute() -> DataAttribute:
    """The CFG_REQUEST attribute that asks for every phase 2 policy."""
    return DataAttribute(PolicyAttr.PHASE2_POLICIES, b"")


def encode_policies(push: PolicyPush) -> tuple[DataAttribute, ...]:
    """The attributes of a CFG_REPLY/CFG_SET: generation, protocols, then one set per SA."""
    out = [DataAttribute(PolicyAttr.PHASE2_POLICIES, push.generation)]
    out += [DataAttribute(PolicyAttr.EXTRA_PROTOCOL, p.encode()) for p in push.protocols]
    for number, policy in enumerate(push.policies, 1):
        suite = policy.suite
        out.append(DataAttribute(PolicyAttr.SA_BEGIN, number))
        out.append(DataAttribute(PolicyAttr.SA_NAME, policy.name.encode()))
        out.append(DataAttribute(PolicyAttr.ESP_TRANSFORM, int(suite.transform)))
        if suite.wire_key_length:
            out.append(DataAttribute(PolicyAttr.ESP_KEY_LENGTH, suite.wire_key_length))
        if suite.auth is not None:
            out.append(DataAttribute(PolicyAttr.ESP_AUTH, int(suite.auth)))
        if policy.pfs_group is not None:
            out.append(DataAttribute(PolicyAttr.PFS_GROUP, int(policy.pfs_group)))
        out.append(DataAttribute.tlv_int(PolicyAttr.LIFE_SECONDS, policy.lifetime_seconds))
        if policy.lifetime_kilobytes:
            out.append(DataAttribute.tlv_int(PolicyAttr.LIFE_KILOBYTES, policy.lifetime_kilobytes))
        out.append(DataAttribute(PolicyAttr.GATEWAY_TS, encode_selector(policy.gateway_ts)))
        if policy.client_ts is not None:
            out.append(DataAttribute(PolicyAttr.CLIENT_TS, encode_selector(policy.client_ts)))
    return tuple(out)


# --------------------------------------------------------------------------- decode


def _tv(a: DataAttribute) -> int:
    if isinstance(a.value, int):
        return a.value
    if len(a.value) > 4:
        raise _bad(a.type, f"{len(a.value)}-octet integer")
    return int.from_bytes(a.value, "big")


def _set_from(number: int, values: dict[int, DataAttribute]) -> Phase2Policy:
    def need(attr: PolicyAttr) -> DataAttribute:
        if attr not in values:
            raise _bad(attr, f"missing from SA set {number}")
        return values[attr]

    name_attr = need(PolicyAttr.SA_NAME)
    try:
        name = bytes(name_attr.value).decode() if isinstance(name_attr.value, bytes) else ""
    except UnicodeDecodeError:
        raise _bad(PolicyAttr.SA_NAME, "not UTF-8") from None
    try:
        transform = EspTransform(_tv(need(PolicyAttr.ESP_TRANSFORM)))
    except ValueError:
        raise _bad(PolicyAttr.ESP_TRANSFORM, f"unknown ESP transform in SA set {number}") from None
    key_length = _tv(values[PolicyAttr.ESP_KEY_LENGTH]) if PolicyAttr.ESP_KEY_LENGTH in values else None
    auth = None
    if PolicyAttr.ESP_AUTH in values:
        try:
            auth = AuthAlgorithm(_tv(values[PolicyAttr.ESP_AUTH]))
        except ValueError:
            raise _bad(PolicyAttr.ESP_AUTH, f"unknown authentication algorithm in set {number}") from None
    pfs = None
    if PolicyAttr.PFS_GROUP in values:
        try:
            pfs = DHGroup(_tv(values[PolicyAttr.PFS_GROUP]))
        except ValueError:
            raise _bad(PolicyAttr.PFS_GROUP, f"unknown group in set {number}") from None
    seconds = _tv(need(PolicyAttr.LIFE_SECONDS))
    kilobytes = _tv(values[PolicyAttr.LIFE_KILOBYTES]) if PolicyAttr.LIFE_KILOBYTES in values else 0
    gateway_ts = decode_selector(PolicyAttr.GATEWAY_TS, bytes(need(PolicyAttr.GATEWAY_TS).value))
    client_ts = None
    if PolicyAttr.CLIENT_TS in values:
        client_ts = decode_selector(PolicyAttr.CLIENT_TS, bytes(values[PolicyAttr.CLIENT_TS].value))
    try:
        return Phase2Policy(
            name,
            gateway_ts,
            client_ts,
            (EspSuite.from_wire(transform, key_length, auth),),
            pfs,
            seconds,
            kilobytes,
        )
    except ValueError as exc:
        raise _bad(PolicyAttr.SA_BEGIN, f"set {number}: {exc}") from None


def decode_policies(attrs: Sequence[DataAttribute]) -> PolicyPush | None:
    """Read tunvpn's attributes out of a CFG_REPLY/CFG_SET (others are skipped).

    Malformed sets raise :class:`RemoteProtocolError` naming the attribute. Unknown
    attributes of our range inside a set are ignored (a later version may add some)."""
    generation: int | None = None
    protocols: list[ExtraProtocol] = []
    sets: list[tuple[int, dict[int, DataAttribute]]] = []
    for a in attrs:
        t = a.type
        if t == PolicyAttr.PHASE2_POLICIES:
            if isinstance(a.value, bytes) and not a.value:
                continue  # an echo of our request
            if generation is not None:
                raise _bad(t, "sent twice")
            generation = _tv(a)
        elif t == PolicyAttr.EXTRA_PROTOCOL:
            protocols.append(ExtraProtocol.decode(bytes(a.value) if isinstance(a.value, bytes) else b""))
        elif t == PolicyAttr.SA_BEGIN:
            sets.append((_tv(a), {}))
        elif t in _SET_ATTRS:
            if not sets:
                raise _bad(t, "outside an SA set (no CFG_SA_BEGIN before it)")
            number, values = sets[-1]
            if t in values:
                raise _bad(t, f"repeated in SA set {number}")
            values[t] = a
    if generation is None:
        if sets or protocols:
            raise _bad(PolicyAttr.PHASE2_POLICIES, "SA sets without the generation attribute")
        return None
    if generation == 0:
        raise _bad(PolicyAttr.PHASE2_POLICIES, "generation 0")
    policies = tuple(_set_from(number, values) for number, values in sets)
    try:
        return PolicyPush(generation, policies, tuple(protocols))
    except ValueError as exc:
        raise _bad(PolicyAttr.PHASE2_POLICIES, str(exc)) from None


def is_policy_attribute(attr_type: int) -> bool:
    return attr_type in POLICY_ATTRS


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """How a client's SA set changes when the gateway pushes a new generation."""

    added: tuple[Phase2Policy, ...]
    removed: tuple[Phase2Policy, ...]
    changed: tuple[Phase2Policy, ...]
    """New versions of policies whose name stayed but whose content changed."""
    unchanged: tuple[Phase2Policy, ...]


def diff_policies(old: Sequence[Phase2Policy], new: Sequence[Phase2Policy]) -> PolicyDiff:
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    return PolicyDiff(
        added=tuple(p for n, p in after.items() if n not in before),
        removed=tuple(p for n, p in before.items() if n not in after),
        changed=tuple(p for n, p in after.items() if n in before and before[n] != p),
        unchanged=tuple(p for n, p in after.items() if n in before and before[n] == p),
    )


def assigned_selector(address: str | ipaddress.IPv4Address) -> TrafficSelector:
    return TrafficSelector.from_address(str(address))


__all__ = [
    "POLICY_ATTRS",
    "ExtraProtocol",
    "Phase2Policy",
    "PolicyAttr",
    "PolicyDiff",
    "PolicyPush",
    "assigned_selector",
    "decode_policies",
    "decode_selector",
    "diff_policies",
    "encode_policies",
    "encode_selector",
    "is_policy_attribute",
    "request_attribute",
]
