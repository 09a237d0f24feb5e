"""Hybrid authentication (draft-ietf-ipsec-isakmp-hybrid-auth-05) with the real client and gateway
over UDP on loopback: a hybrid login goes through, and a group member's gateway gets no
password. The engines and the configuration keys are tested in tests/unit/ike/test_hybrid_auth.py."""

from __future__ import annotations

import asyncio

from tests.helpers.gateway_pki import pki
from tests.helpers.loopback import GATEWAY, PSK, connect, free_port_pair, needs_loopback
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.gateway.daemon import AddressPool, GatewayOptions
from tunvpn.ike.config import PskTable

PASSWORD = "alice-secret-password"

pytestmark = needs_loopback


def gateway_options(ike: int, natt: int, credential, **kw: object) -> GatewayOptions:
    return GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        users=UserTable({"alice": PASSWORD.encode()}),
        require_xauth=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        credential=credential,
        trusted_cas=(pki(GATEWAY).ca,),
        **kw,  # type: ignore[arg-type]
    )


def client_options(ike: int, natt: int) -> ClientOptions:
    """A profile with ``ca`` and no ``cert``/``key``: hybrid."""
    return ClientOptions(
        gateway=GATEWAY,
        psks=PskTable(),
        trusted_cas=(pki(GATEWAY).ca,),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user="alice",
        password=PASSWORD,
        password_prompt=False,
        exit_after_established=True,
        timeout=20,
    )


def password_sent(records: list[dict]) -> bool:
    return any(r["event"] == "xauth" and r["state"] in ("sent", "ok") for r in records)


def test_client_and_gateway_over_udp() -> None:
    ike, natt = free_port_pair()
    gw = gateway_options(ike, natt, pki(GATEWAY).gateway, hybrid=True)
    client, _, records = asyncio.run(connect(gw, client_options(ike, natt)))
    assert client.result == 0, client.message
    phase1 = next(r for r in records if r["event"] == "phase1" and r["state"] == "established")
    assert phase1["suite"].endswith("/hybrid_init_rsa")
    assert password_sent(records) and any(
        r["event"] == "quick" and r["state"] == "established" for r in records
    )


def test_client_refuses_a_group_member_gateway_over_udp() -> None:
    """A group member runs our gateway with the group PSK and users file: nothing to steal."""
    ike, natt = free_port_pair()
    gw = gateway_options(ike, natt, None)
    client, _, records = asyncio.run(connect(gw, client_options(ike, natt)))
    assert client.result == 1 and not password_sent(records), records
    assert "NO_PROPOSAL_CHOSEN" in client.message or "14" in client.message, client.message
