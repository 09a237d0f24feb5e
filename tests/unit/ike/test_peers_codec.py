"""Introductions over phase 1a (issue 17; tunvpn/ike/peers.py): the CFG_PEER_ attributes, in
both directions, with the limits a client puts on what a gateway sends."""

from __future__ import annotations

import ipaddress

import pytest

from tunvpn.ike.constants import DHGroup
from tunvpn.ike.errors import RemoteProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import DataAttribute, decode_attributes, encode_attributes
from tunvpn.ike.peers import Introduction, PeerAttr, PeerList, Role, decode_peers, encode_peers
from tunvpn.ike.policies import PolicyPush, decode_policies, encode_policies
from tunvpn.ike.proposals import DEFAULT_ESP

SECRET = bytes(range(32))


def bob(**kw: object) -> Introduction:
    base: dict[str, object] = dict(
        name="bob",
        identity=Identity.parse("keyid:tunvpn-peer-7"),
        address=ipaddress.ip_address("10.79.0.11"),
        endpoint=("198.51.100.7", 40123),
        secret=SECRET,
        role=Role.RESPONDER,
    )
    base.update(kw)
    return Introduction(**base)  # type: ignore[arg-type]


def test_an_introduction_goes_through_the_wire_and_back() -> None:
    carol = bob(
        name="carol",
        address=ipaddress.ip_address("10.79.0.12"),
        endpoint=("203.0.113.9", 4500),
        lan_endpoint=("192.168.1.20", 4500),
        role=Role.INITIATOR,
        esp=DEFAULT_ESP[-1],
        pfs_group=None,
        lifetime_seconds=7200,
        local_id=Identity.parse("keyid:tunvpn-peer:alice@10.79.0.10"),
    )
    peers = PeerList((bob(), carol))
    attrs = encode_peers(peers)
    wire = encode_attributes(attrs)
    assert decode_peers(decode_attributes(wire)) == peers


def test_zero_values_are_omitted_and_an_empty_list_revokes_all() -> None:
    attrs = encode_peers(PeerList((bob(pfs_group=None),)))
    types = {a.type for a in attrs}
    assert PeerAttr.PEER_PFS_GROUP not in types and PeerAttr.PEER_LAN_ENDPOINT not in types
    assert PeerAttr.PEER_ESP_AUTH not in types  # the default suite is AEAD
    assert encode_peers(PeerList()) == (DataAttribute(PeerAttr.PEERS, 0),)
    assert decode_peers(encode_peers(PeerList())) == PeerList()
    assert decode_peers([]) is None  # the gateway says nothing about peers


def test_peers_ride_next_to_the_policy_sets_and_neither_reads_the_others() -> None:
    push = PolicyPush(3)
    attrs = encode_policies(push) + encode_peers(PeerList((bob(),)))
    assert decode_policies(attrs) == push
    assert decode_peers(attrs) == PeerList((bob(),))


def test_the_secret_never_shows() -> None:
    intro = bob()
    assert SECRET.hex() not in repr(intro) and str(SECRET) not in repr(intro)
    secret_attr = next(a for a in encode_peers(PeerList((intro,))) if a.type == PeerAttr.PEER_SECRET)
    assert "redacted" in repr(secret_attr)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda attrs: attrs[1:], "peers without the count"),
        (lambda attrs: [DataAttribute(PeerAttr.PEERS, 2), *attrs[1:]], "says 2 peers, 1 follow"),
        (lambda attrs: [a for a in attrs if a.type != PeerAttr.PEER_SECRET], "CFG_PEER_SECRET: missing"),
        (
            lambda attrs: [
                DataAttribute(PeerAttr.PEER_SECRET, b"short") if a.type == PeerAttr.PEER_SECRET else a
                for a in attrs
            ],
            "32 octets",
        ),
        (
            lambda attrs: [
                DataAttribute(PeerAttr.PEER_ENDPOINT, bytes(4) + b"\x00\x00")
                if a.type == PeerAttr.PEER_ENDPOINT
                else a
                for a in attrs
            ],
            "is not an endpoint",
        ),
        (lambda attrs: [*attrs, DataAttribute(PeerAttr.PEER_ROLE, 1)], "repeated"),
        (lambda attrs: [attrs[0], attrs[2], *attrs[1:]], "outside a peer"),
        (
            lambda attrs: [
                DataAttribute(PeerAttr.PEER_ROLE, 3) if a.type == PeerAttr.PEER_ROLE else a for a in attrs
            ],
            "peer 1",
        ),
    ],
)
def test_malformed_introductions_are_refused_naming_the_attribute(change, message: str) -> None:  # type: ignore[no-untyped-def]
    attrs = list(encode_peers(PeerList((bob(),))))
    with pytest.raises(RemoteProtocolError, match=message):
        decode_peers(change(attrs))


def test_unknown_attributes_of_our_range_inside_a_group_are_skipped() -> None:
    attrs = list(encode_peers(PeerList((bob(),))))
    assert decode_peers([*attrs, DataAttribute(20600, b"later")]) == PeerList((bob(),))


def test_pfs_and_roles_are_kept() -> None:
    [peer] = decode_peers(
        encode_peers(PeerList((bob(pfs_group=DHGroup.ECP_384, role=Role.INITIATOR),)))
    ).peers  # type: ignore[union-attr]
    assert peer.pfs_group == DHGroup.ECP_384 and peer.role is Role.INITIATOR


def site_gateway(**kw: object) -> Introduction:
    """A site's gateway introduced to a client (issue 18): the networks behind it."""
    base: dict[str, object] = dict(
        name="branch",
        address=ipaddress.ip_address("198.18.2.2"),
        endpoint=("198.18.2.2", 4500),
        role=Role.INITIATOR,
        networks=(ipaddress.ip_network("10.88.0.0/24"), ipaddress.ip_network("2001:db8:88::/48")),
    )
    base.update(kw)
    return bob(**base)


def test_a_site_gateway_carries_the_networks_behind_it() -> None:
    peers = PeerList((bob(), site_gateway()))
    attrs = encode_peers(peers)
    [nets] = [a for a in attrs if a.type == PeerAttr.PEER_NETWORKS]
    assert nets.value == bytes([4, 24, 10, 88, 0, 0]) + bytes([6, 48]) + bytes.fromhex(
        "20010db80088"
    ) + bytes(10)
    assert decode_peers(decode_attributes(encode_attributes(attrs))) == peers
    assert "gateway of 10.88.0.0/24, 2001:db8:88::/48" in site_gateway().describe()


def test_a_client_always_starts_the_tunnel_to_a_site_gateway() -> None:
    with pytest.raises(ValueError, match="always starts"):
        site_gateway(role=Role.RESPONDER)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty"),
        (bytes([5, 24, 10, 88, 0, 0]), "IP version"),
        (bytes([4, 24, 10, 88, 0]), "cut short"),
        (bytes([4, 33, 10, 88, 0, 0]), "octet 0"),
        (bytes([4, 16, 10, 88, 0, 1]), "host bits"),
        (bytes([4, 24, 10, 88, 0, 0]) * 33, "more than 32"),
    ],
)
def test_malformed_networks_are_refused(value: bytes, message: str) -> None:
    attrs = [
        DataAttribute(PeerAttr.PEER_NETWORKS, value) if a.type == PeerAttr.PEER_NETWORKS else a
        for a in encode_peers(PeerList((site_gateway(),)))
    ]
    with pytest.raises(RemoteProtocolError, match=message):
        decode_peers(attrs)
