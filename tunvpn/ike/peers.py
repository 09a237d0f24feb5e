"""Introductions (issue 17, seed paragraph 0043): the gateway tells a client about a second peer
it may build a tunnel to directly, as ``CFG_`` Mode Config attributes in phase 1a.

A CFG_REPLY or CFG_SET to a tunvpn client carries, after its policy sets, ``CFG_PEERS`` with
the number of peers that follow (0: none any more: the client deletes what it had with the
peers it knew), then one group of attributes per peer, each opened by ``CFG_PEER_BEGIN``:

========================  ======  =====================================================
attribute                 number  value
========================  ======  =====================================================
CFG_PEERS                 20492   TV, how many peers follow (0-255)
CFG_PEER_BEGIN            20493   TV, the peer's number in this message (1, 2, ...)
CFG_PEER_NAME             20494   UTF-8, who it is (its XAUTH user), for logs and status
CFG_PEER_ID               20495   ID type (1 octet), then the ID data: the phase 1 identity it
                                  will present to this client
CFG_PEER_ADDRESS          20496   4 or 16 octets: its address inside the VPN
CFG_PEER_ENDPOINT         20497   4 or 16 octets and a 2-octet port: where the gateway sees
                                  it (after its NAT)
CFG_PEER_LAN_ENDPOINT     20498   the same, for the address it reports for its own network;
                                  omitted when unknown or the same
CFG_PEER_SECRET           20499   32 octets: the pre-shared key of this pair, made by the
                                  gateway for it alone (never the group key); never logged
CFG_PEER_ROLE             20500   TV, 1: this client initiates the pair's phase 1, 2: it
                                  answers (so both never race)
CFG_PEER_ESP_TRANSFORM    20501   TV, the pair's ESP transform (as CFG_ESP_TRANSFORM)
CFG_PEER_ESP_KEY_LENGTH   20502   TV, omitted for fixed-length ciphers
CFG_PEER_ESP_AUTH         20503   TV, omitted for AEAD transforms
CFG_PEER_PFS_GROUP        20504   TV, omitted: no PFS
CFG_PEER_LIFE_SECONDS     20505   4 octets
CFG_PEER_LOCAL_ID         20506   as CFG_PEER_ID: the phase 1 identity this client presents
                                  to this peer (the one the peer was told to expect)
CFG_PEER_NETWORKS         20507   the networks behind the peer, when it is another site's
                                  gateway (issue 18): per network its IP version (1 octet,
                                  4 or 6), prefix length (1 octet) and address (4 or 16
                                  octets), at most 32; the pair's phase 2 policies are then
                                  this client's address to each network (else to the peer's
                                  address), and the client always starts
========================  ======  =====================================================

Values that would be zero are omitted, as in the policy sets. Unknown attributes of our range
inside a group are ignored (a later version may add some). Sent only to peers that sent the
tunvpn vendor ID, inside the encrypted Transaction exchange. ``docs/protocol.md`` and
``docs/peers.md`` hold the specification and the trust model.

Pure data in, pure data out: no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from ..ipsec.algorithms import AuthAlgorithm, EspTransform
from .constants import DHGroup
from .errors import LocalProtocolError, RemoteProtocolError
from .identity import Identity
from .messages import DataAttribute, IDPayload
from .proposals import DEFAULT_ESP, EspSuite

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]


class PeerAttr(IntEnum):
    """tunvpn's private Mode Config attributes of an introduction (module docstring)."""

    PEERS = 20492
    PEER_BEGIN = 20493
    PEER_NAME = 20494
    PEER_ID = 20495
    PEER_ADDRESS = 20496
    PEER_ENDPOINT = 20497
    PEER_LAN_ENDPOINT = 20498
    PEER_SECRET = 20499
    PEER_ROLE = 20500
    PEER_ESP_TRANSFORM = 20501
    PEER_ESP_KEY_LENGTH = 20502
    PEER_ESP_AUTH = 20503
    PEER_PFS_GROUP = 20504
    PEER_LIFE_SECONDS = 20505
    PEER_LOCAL_ID = 20506
    PEER_NETWORKS = 20507


PEER_ATTRS = frozenset(int(a) for a in PeerAttr)
_GROUP_ATTRS = PEER_ATTRS - {PeerAttr.PEERS, PeerAttr.PEER_BEGIN}
SECRET_SIZE = 32
MAX_PEERS = 255
MAX_NAME = 64
MAX_NETWORKS = 32
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Role(IntEnum):
    """Who starts the pair's phase 1 (the gateway decides, so both never race)."""

    INITIATOR = 1
    RESPONDER = 2


@dataclass(frozen=True, slots=True, repr=False)
class Introduction:
    """One peer, as the gateway introduces it to a client."""

    name: str
    identity: Identity
    address: Address
    endpoint: Endpoint
    secret: bytes
    role: Role
    esp: EspSuite = DEFAULT_ESP[0]
    pfs_group: DHGroup | None = DHGroup.ECP_256
    lifetime_seconds: int = 3600
    lan_endpoint: Endpoint | None = None
    local_id: Identity | None = None
    """The identity this client presents to the peer (the one the peer expects)."""
    networks: tuple[Network, ...] = ()
    """A site's gateway (issue 18): the networks behind it this client reaches through it
    (empty: the peer is another client, reached at :attr:`address`)."""

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > MAX_NAME:
            raise ValueError(f"peer name {self.name!r}: 1 to {MAX_NAME} octets")
        if len(self.networks) > MAX_NETWORKS:
            raise ValueError(f"at most {MAX_NETWORKS} networks behind a peer")
        if self.networks and self.role is not Role.INITIATOR:
            raise ValueError("a client always starts the tunnel to a site's gateway")
        if len(self.secret) != SECRET_SIZE:
            raise ValueError(f"a pair secret has {SECRET_SIZE} octets")
        if not 0 < self.lifetime_seconds < 1 << 32:
            raise ValueError("the pair's lifetime must fit in 32 bits (seconds > 0)")
        for endpoint in (self.endpoint, self.lan_endpoint):
            if endpoint is not None:
                ipaddress.ip_address(endpoint[0])
                if not 0 < endpoint[1] < 1 << 16:
                    raise ValueError(f"port {endpoint[1]} out of range")

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return (
            f"Introduction(name={self.name!r}, identity={self.identity}, address={self.address}, "
            f"endpoint={self.endpoint}, role={self.role.name.lower()}, secret=<redacted>)"
        )

    def describe(self) -> str:
        """One line for logs and ``tunvpn status``: who, where, and who starts."""
        host, port = self.endpoint
        if self.networks:
            nets = ", ".join(str(n) for n in self.networks)
            return f"{self.name} (gateway of {nets}) at {host}:{port}"
        return f"{self.name} ({self.address}) at {host}:{port}, {self.role.name.lower()}"


@dataclass(frozen=True, slots=True)
class PeerList:
    """Every peer a message introduces; an empty list revokes all earlier introductions."""

    peers: tuple[Introduction, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.peers) > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers in one message")
        addresses = [p.address for p in self.peers]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"peer addresses repeat: {', '.join(str(a) for a in addresses)}")


def _bad(attr: int, message: str) -> RemoteProtocolError:
    name = PeerAttr(attr).name if attr in PEER_ATTRS else str(attr)
    return RemoteProtocolError(f"CFG_{name}: {message}", field=f"ATTR.CFG_{name}")


def _encode_endpoint(endpoint: Endpoint) -> bytes:
    return ipaddress.ip_address(endpoint[0]).packed + struct.pack("!H", endpoint[1])


def _decode_endpoint(attr: int, data: bytes) -> Endpoint:
    if len(data) not in (6, 18):
        raise _bad(attr, f"{len(data)} octets: an address (4 or 16) and a port (2)")
    address = ipaddress.ip_address(data[:-2])
    (port,) = struct.unpack("!H", data[-2:])
    if port == 0 or address.is_unspecified or address.is_multicast:
        raise _bad(attr, f"{address} port {port} is not an endpoint")
    return (str(address), port)


def _encode_networks(networks: Sequence[Network]) -> bytes:
    return b"".join(bytes([net.version, net.prefixlen]) + net.network_address.packed for net in networks)


def _decode_networks(data: bytes) -> tuple[Network, ...]:
    attr = PeerAttr.PEER_NETWORKS
    out: list[Network] = []
    at = 0
    while at < len(data):
        if len(out) == MAX_NETWORKS:
            raise _bad(attr, f"more than {MAX_NETWORKS} networks")
        if len(data) - at < 2 or data[at] not in (4, 6):
            raise _bad(attr, f"octet {at}: not an IP version (4 or 6)")
        size = 4 if data[at] == 4 else 16
        prefix, raw = data[at + 1], data[at + 2 : at + 2 + size]
        if len(raw) != size:
            raise _bad(attr, f"octet {at}: the address is cut short")
        try:
            out.append(ipaddress.ip_network((ipaddress.ip_address(raw), prefix)))
        except ValueError as exc:
            raise _bad(attr, f"octet {at}: {exc}") from None
        at += 2 + size
    if not out:
        raise _bad(attr, "empty")
    return tuple(out)


# --------------------------------------------------------------------------- encode


def encode_peers(peers: PeerList) -> tuple[DataAttribute, ...]:
    """The attributes of a CFG_REPLY/CFG_SET that introduce ``peers`` (all of them)."""
    out = [DataAttribute(PeerAttr.PEERS, len(peers.peers))]
    for number, peer in enumerate(peers.peers, 1):
        identity = peer.identity.to_payload()
        out.append(DataAttribute(PeerAttr.PEER_BEGIN, number))
        out.append(DataAttribute(PeerAttr.PEER_NAME, peer.name.encode()))
        out.append(DataAttribute(PeerAttr.PEER_ID, bytes([identity.id_type]) + identity.data))
        if peer.local_id is not None:
            own = peer.local_id.to_payload()
            out.append(DataAttribute(PeerAttr.PEER_LOCAL_ID, bytes([own.id_type]) + own.data))
        out.append(DataAttribute(PeerAttr.PEER_ADDRESS, peer.address.packed))
        out.append(DataAttribute(PeerAttr.PEER_ENDPOINT, _encode_endpoint(peer.endpoint)))
        if peer.lan_endpoint is not None and peer.lan_endpoint != peer.endpoint:
            out.append(DataAttribute(PeerAttr.PEER_LAN_ENDPOINT, _encode_endpoint(peer.lan_endpoint)))
        out.append(DataAttribute(PeerAttr.PEER_SECRET, peer.secret))
        out.append(DataAttribute(PeerAttr.PEER_ROLE, int(peer.role)))
        out.append(DataAttribute(PeerAttr.PEER_ESP_TRANSFORM, int(peer.esp.transform)))
        if peer.esp.wire_key_length:
            out.append(DataAttribute(PeerAttr.PEER_ESP_KEY_LENGTH, peer.esp.wire_key_length))
        if peer.esp.auth is not None:
            out.append(DataAttribute(PeerAttr.PEER_ESP_AUTH, int(peer.esp.auth)))
        if peer.pfs_group is not None:
            out.append(DataAttribute(PeerAttr.PEER_PFS_GROUP, int(peer.pfs_group)))
        out.append(DataAttribute.tlv_int(PeerAttr.PEER_LIFE_SECONDS, peer.lifetime_seconds))
        if peer.networks:
            out.append(DataAttribute(PeerAttr.PEER_NETWORKS, _encode_networks(peer.networks)))
    return tuple(out)


# --------------------------------------------------------------------------- decode


def _tv(a: DataAttribute) -> int:
    if isinstance(a.value, int):
        return a.value
    if len(a.value) > 4:
        raise _bad(a.type, f"{len(a.value)}-octet integer")
    return int.from_bytes(a.value, "big")


def _octets(a: DataAttribute) -> bytes:
    if not isinstance(a.value, bytes):
        raise _bad(a.type, "a TV value where octets belong")
    return a.value


def _identity(attr: PeerAttr, raw: bytes) -> Identity:
    if len(raw) < 2:
        raise _bad(attr, "no identity")
    try:
        return Identity.from_payload(IDPayload(raw[0], raw[1:]))
    except (RemoteProtocolError, LocalProtocolError, ValueError) as exc:
        raise _bad(attr, str(exc)) from None


def _peer_from(number: int, values: dict[int, DataAttribute]) -> Introduction:
    def need(attr: PeerAttr) -> DataAttribute:
        if attr not in values:
            raise _bad(attr, f"missing from peer {number}")
        return values[attr]

    try:
        name = _octets(need(PeerAttr.PEER_NAME)).decode()
    except UnicodeDecodeError:
        raise _bad(PeerAttr.PEER_NAME, "not UTF-8") from None
    identity = _identity(PeerAttr.PEER_ID, _octets(need(PeerAttr.PEER_ID)))
    local_id = None
    if PeerAttr.PEER_LOCAL_ID in values:
        local_id = _identity(PeerAttr.PEER_LOCAL_ID, _octets(values[PeerAttr.PEER_LOCAL_ID]))
    raw_address = _octets(need(PeerAttr.PEER_ADDRESS))
    if len(raw_address) not in (4, 16):
        raise _bad(PeerAttr.PEER_ADDRESS, f"{len(raw_address)} octets")
    address = ipaddress.ip_address(raw_address)
    endpoint = _decode_endpoint(PeerAttr.PEER_ENDPOINT, _octets(need(PeerAttr.PEER_ENDPOINT)))
    lan = None
    if PeerAttr.PEER_LAN_ENDPOINT in values:
        lan = _decode_endpoint(PeerAttr.PEER_LAN_ENDPOINT, _octets(values[PeerAttr.PEER_LAN_ENDPOINT]))
    secret = _octets(need(PeerAttr.PEER_SECRET))
    try:
        role = Role(_tv(need(PeerAttr.PEER_ROLE)))
        transform = EspTransform(_tv(need(PeerAttr.PEER_ESP_TRANSFORM)))
        auth = (
            AuthAlgorithm(_tv(values[PeerAttr.PEER_ESP_AUTH])) if PeerAttr.PEER_ESP_AUTH in values else None
        )
        pfs = DHGroup(_tv(values[PeerAttr.PEER_PFS_GROUP])) if PeerAttr.PEER_PFS_GROUP in values else None
    except ValueError as exc:
        raise _bad(PeerAttr.PEER_BEGIN, f"peer {number}: {exc}") from None
    key_length = _tv(values[PeerAttr.PEER_ESP_KEY_LENGTH]) if PeerAttr.PEER_ESP_KEY_LENGTH in values else None
    seconds = _tv(need(PeerAttr.PEER_LIFE_SECONDS))
    networks: tuple[Network, ...] = ()
    if PeerAttr.PEER_NETWORKS in values:
        networks = _decode_networks(_octets(values[PeerAttr.PEER_NETWORKS]))
    try:
        return Introduction(
            name,
            identity,
            address,
            endpoint,
            secret,
            role,
            EspSuite.from_wire(transform, key_length, auth),
            pfs,
            seconds,
            lan,
            local_id,
            networks,
        )
    except ValueError as exc:
        raise _bad(PeerAttr.PEER_BEGIN, f"peer {number}: {exc}") from None


def decode_peers(attrs: Sequence[DataAttribute]) -> PeerList | None:
    """The introductions of a CFG_REPLY/CFG_SET (other attributes are skipped); ``None`` when
    it carries no ``CFG_PEERS`` (the gateway says nothing about peers).

    :raises RemoteProtocolError: malformed groups, naming the attribute.
    """
    count: int | None = None
    groups: list[tuple[int, dict[int, DataAttribute]]] = []
    for a in attrs:
        t = a.type
        if t == PeerAttr.PEERS:
            if count is not None:
                raise _bad(t, "sent twice")
            count = _tv(a)
        elif t == PeerAttr.PEER_BEGIN:
            if len(groups) >= MAX_PEERS:
                raise _bad(t, f"more than {MAX_PEERS} peers")
            groups.append((_tv(a), {}))
        elif t in _GROUP_ATTRS:
            if not groups:
                raise _bad(t, "outside a peer (no CFG_PEER_BEGIN before it)")
            number, values = groups[-1]
            if t in values:
                raise _bad(t, f"repeated for peer {number}")
            values[t] = a
    if count is None:
        if groups:
            raise _bad(PeerAttr.PEERS, "peers without the count attribute")
        return None
    if count != len(groups):
        raise _bad(PeerAttr.PEERS, f"says {count} peers, {len(groups)} follow")
    peers = tuple(_peer_from(number, values) for number, values in groups)
    try:
        return PeerList(peers)
    except ValueError as exc:
        raise _bad(PeerAttr.PEERS, str(exc)) from None


def is_peer_attribute(attr_type: int) -> bool:
    return attr_type in PEER_ATTRS


__all__ = [
    "MAX_PEERS",
    "PEER_ATTRS",
    "SECRET_SIZE",
    "Introduction",
    "PeerAttr",
    "Network",
    "PeerList",
    "Role",
    "decode_peers",
    "encode_peers",
    "is_peer_attribute",
]
