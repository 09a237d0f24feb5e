"""Gateway and client over real UDP sockets on loopback, in one asyncio loop (no root needed).

127.0.0.1 is the gateway, 127.0.0.2 the client; both bind the same two unprivileged ports
(the engine floats to the same NAT-T port number on both sides, as with 500/4500).
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from tests.helpers.loopback import GATEWAY, PSK, connect, free_port_pair, needs_loopback
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.gateway.daemon import AddressPool, GatewayOptions
from tunvpn.ike.config import PskTable
from tunvpn.ike.identity import Identity
from tunvpn.keylog import ESP_TABLE, IKEV1_TABLE, read_table, table_path

pytestmark = needs_loopback


def test_main_mode_xauth_mode_config_split_networks_nat_t(tmp_path: Path) -> None:
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        users=UserTable({"alice": b"wonderland"}),
        require_xauth=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        dns=(IPv4Address("10.78.0.53"),),
        split=(IPv4Network("10.78.0.0/24"), IPv4Network("10.78.1.0/24")),
        banner="hello",
        keylog=str(tmp_path / "keys"),
    )
    client_options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user="alice",
        password="wonderland",
        password_prompt=False,
        exit_after_established=True,
        force_encap=True,
        timeout=20,
    )
    client, gateway, records = asyncio.run(connect(gateway_options, client_options))

    assert client.result == 0, records
    steps = [(r["event"], r["state"]) for r in records]
    assert ("xauth", "ok") in steps and ("modecfg", "received") in steps
    modecfg = next(r for r in records if r["event"] == "modecfg" and r["state"] == "received")
    assert modecfg["address"] == "10.79.0.10"
    assert modecfg["split_include"] == ["10.78.0.0/24", "10.78.1.0/24"]
    up = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
    assert sorted(r["remote_ts"] for r in up) == ["10.78.0.0/24", "10.78.1.0/24"]
    assert all(r["local_ts"] == "10.79.0.10/32" for r in up)
    assert all(r["encapsulation"] == 3 for r in up)  # UDP tunnel: NAT-T was forced
    # the gateway saw the same SAs, and gave the address back when the client left
    assert not client.established and not gateway.children  # deleted on both sides when the client left
    assert gateway.options.pool is not None and not gateway.options.pool.leased()
    # --keylog: one ISAKMP SA, two ESP SA pairs (both directions each), files private
    assert len(read_table(table_path(tmp_path / "keys", IKEV1_TABLE))) == 1
    esp_lines = read_table(table_path(tmp_path / "keys", ESP_TABLE))
    assert len(esp_lines) == 4 and all('"IPv4","127.0.0.' in line for line in esp_lines)
    assert table_path(tmp_path / "keys", ESP_TABLE).stat().st_mode & 0o777 == 0o600


def test_aggressive_mode_with_group_identity_and_no_pfs() -> None:
    """The gateway's policy says "no PFS"; the client follows it whatever its own default."""
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"keyid:team": PSK}),
        ike_port=ike,
        natt_port=natt,
        allow_aggressive_psk=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        pfs_groups=(),
    )
    client_options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        mode="aggressive",
        local_id=Identity.parse("keyid:team"),
        exit_after_established=True,
        timeout=20,
    )
    client, _, records = asyncio.run(connect(gateway_options, client_options))
    assert client.result == 0, records
    [up] = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
    assert (up["local_ts"], up["remote_ts"], up["pfs_group"]) == ("10.79.0.10/32", "0.0.0.0/0", None)


def test_wrong_xauth_password_fails_with_a_message() -> None:
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        users=UserTable({"alice": b"wonderland"}),
        require_xauth=True,
    )
    client_options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user="alice",
        password="looking-glass",
        password_prompt=False,
        exit_after_established=True,
        timeout=20,
    )
    client, _, records = asyncio.run(connect(gateway_options, client_options))
    assert client.result == 1
    assert "rejected user 'alice'" in client.message
    assert not [r for r in records if r["event"] == "quick"]


def test_wrong_psk_fails_phase_1() -> None:
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(listen=GATEWAY, psks=PskTable({"*": PSK}), ike_port=ike, natt_port=natt)
    client_options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": b"not-the-psk"}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        exit_after_established=True,
        timeout=20,
    )
    client, _, records = asyncio.run(connect(gateway_options, client_options))
    assert client.result == 1
    assert "AUTHENTICATION_FAILED" in client.message, records
