"""Policies per peer identity (issue 18, seed paragraph 0023): a ``[[policy]]`` limited to
phase 1 identities (``peers``, the patterns ``peer_id_patterns`` uses) goes to a client whose
certificate proves such an identity, and not to a client that only claims it over the group
key. Real shells on loopback (IKE only)."""

from __future__ import annotations

import asyncio

from tests.helpers.gateway_pki import pki
from tests.helpers.loopback import GATEWAY, PSK, connect, free_port_pair, needs_loopback, policy
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.gateway.daemon import AddressPool, GatewayOptions, SimpleRule
from tunvpn.ike.certs import IdentityPattern
from tunvpn.ike.config import PskTable
from tunvpn.ike.identity import Identity

pytestmark = needs_loopback

OPEN = policy("open", "10.98.0.0/24")
ALICE_DESK = policy("alice-desk", "10.98.7.0/24")
ALICE_DN = "CN=alice,O=tunvpn test"


def gateway(ike: int, natt: int) -> GatewayOptions:
    p = pki(GATEWAY)
    return GatewayOptions(
        listen=GATEWAY,
        ike_port=ike,
        natt_port=natt,
        psks=PskTable({"*": PSK}),
        credential=p.gateway,
        trusted_cas=(p.ca,),
        users=UserTable({"alice": b"a-pass", "mallory": b"m-pass"}),
        require_xauth=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        rules=(SimpleRule(OPEN), SimpleRule(ALICE_DESK, peers=(IdentityPattern.parse("CN=alice*,O=*"),))),
    )


def client(ike: int, natt: int, user: str, password: str, **kw: object) -> ClientOptions:
    return ClientOptions(
        gateway=GATEWAY,
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user=user,
        password=password,
        password_prompt=False,
        exit_after_established=True,
        timeout=20,
        **kw,  # type: ignore[arg-type]
    )


def test_a_policy_for_a_certificate_subject_goes_to_that_certificate_only() -> None:
    p = pki(GATEWAY)
    ike, natt = free_port_pair()
    with_cert = client(
        ike, natt, "alice", "a-pass", psks=PskTable(), credential=p.client, trusted_cas=(p.ca,)
    )
    alice, _, records = asyncio.run(connect(gateway(ike, natt), with_cert))
    assert alice.result == 0, alice.message
    got = {r["remote_ts"] for r in records if r["event"] == "quick" and r["state"] == "established"}
    assert got == {"10.98.0.0/24", "10.98.7.0/24"}, records[-5:]

    # mallory holds the group key and claims alice's DN as her phase 1 identity: a group key
    # proves no identity, so she gets the open policy only
    ike, natt = free_port_pair()
    claiming = client(
        ike, natt, "mallory", "m-pass", psks=PskTable({"*": PSK}), local_id=Identity.parse(ALICE_DN)
    )
    mallory, _, records = asyncio.run(connect(gateway(ike, natt), claiming))
    assert mallory.result == 0, mallory.message
    got = {r["remote_ts"] for r in records if r["event"] == "quick" and r["state"] == "established"}
    assert got == {"10.98.0.0/24"}, records[-5:]
