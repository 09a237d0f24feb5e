"""Base Mode (tunvpn's ISAKMP Base Exchange, docs/protocol.md) between the real client and gateway
over UDP on loopback: `tunvpn connect --mode base` against a gateway with and without
allow_base_mode (the exchange itself is tested in tests/unit/ike/test_base_mode.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.loopback import GATEWAY, connect, free_port_pair, needs_loopback
from tunvpn.client.daemon import ClientOptions
from tunvpn.gateway.daemon import GatewayOptions
from tunvpn.ike.config import PskTable

PSK = b"correct horse battery staple"

pytestmark = needs_loopback


@pytest.mark.parametrize("allowed", [True, False], ids=["allow_base_mode", "default"])
def test_client_asking_for_base_mode_over_udp(allowed: bool) -> None:
    """The shells: `tunvpn connect --mode base` against a gateway with and without
    allow_base_mode (loopback UDP); without it the client ends up in Main Mode."""
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(
        listen=GATEWAY, psks=PskTable({"*": PSK}), ike_port=ike, natt_port=natt, allow_base_mode=allowed
    )
    client_options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        mode="base",
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        exit_after_established=True,
        timeout=20,
    )
    client, _, records = asyncio.run(connect(gateway_options, client_options))
    assert client.result == 0, (client.message, records)
    (up,) = [r for r in records if r["event"] == "phase1" and r["state"] == "established"]
    assert f"({'base' if allowed else 'main'} mode)" in up["message"], up
