"""The invention over real UDP on loopback (no root): the gateway pushes its phase 2 policies
in phase 1a, per user and group; the client builds one Quick Mode SA per pushed set with
exactly the pushed transform, PFS group and lifetime; a reload on the gateway reaches the
connected client (CFG_SET), which adds, rebuilds and deletes SAs and leaves the others
alone; ``status`` answers over the control socket."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from tests.helpers.loopback import (
    CLIENT,
    ENG,
    GATEWAY,
    PSK,
    RULES,
    client_options,
    connect,
    free_port_pair,
    gateway_options,
    needs_loopback,
    policy,
    serve,
    wait_until,
)
from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.control.server import request
from tunvpn.gateway.daemon import AddressPool, Gateway, GatewayOptions, SimpleRule
from tunvpn.ike import events as ev
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup, ExchangeType
from tunvpn.ike.proposals import DEFAULT_ESP

pytestmark = needs_loopback


def established(records: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in records if r["event"] == "quick" and r["state"] == "established"}


def test_group_member_gets_every_policy_with_the_pushed_parameters() -> None:
    ike, natt = free_port_pair()
    client, _, records = asyncio.run(
        connect(
            gateway_options(ike, natt, RULES),
            client_options(ike, natt, "alice", "a-pass", exit_after_established=True, pfs=DHGroup.MODP_2048),
        )
    )
    assert client.result == 0, records
    pushed = [r for r in records if r["event"] == "policy"]
    assert [r["name"] for r in pushed] == ["intranet", "mail", "eng"]
    up = established(records)
    assert set(up) == {"intranet", "mail", "eng"}
    # exactly what the gateway pushed, not the client's own --pfs
    assert (up["intranet"]["esp"], up["intranet"]["pfs_group"]) == ("aes256gcm16", DHGroup.ECP_256)
    assert (up["mail"]["esp"], up["mail"]["pfs_group"], up["mail"]["remote_ts"]) == (
        "aes128gcm16",
        None,
        "10.78.5.0/24[tcp/993]",
    )
    assert up["eng"]["pfs_group"] == DHGroup.ECP_384
    # our side of a protocol-narrowed SA names the same protocol (RFC 2407 4.6.2: IDci/IDcr)
    assert up["mail"]["local_ts"] == "10.79.0.10/32[tcp]"
    assert all(r["local_ts"] == "10.79.0.10/32" for name, r in up.items() if name != "mail")


def test_non_member_does_not_get_the_group_policy() -> None:
    ike, natt = free_port_pair()
    client, _, records = asyncio.run(
        connect(
            gateway_options(ike, natt, RULES),
            client_options(ike, natt, "bob", "b-pass", exit_after_established=True),
        )
    )
    assert client.result == 0, records
    assert set(established(records)) == {"intranet", "mail"}


def test_a_client_asking_for_a_policy_it_was_not_given_is_refused() -> None:
    """The gateway enforces per-user policies in Quick Mode, not only in what it pushes."""

    async def scenario() -> str:
        ike, natt = free_port_pair()
        gateway, server = await serve(gateway_options(ike, natt, RULES))
        client = Client(
            client_options(ike, natt, "bob", "b-pass"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            for _ in range(200):
                if len(client.established) == 2:
                    break
                await asyncio.sleep(0.05)
            assert set(client.established) == {"intranet", "mail"}
            client._start_policy(ENG, client._local_selector(client.mode_config))  # sneak the eng SA
            assert client.driver is not None
            client.driver.flush()
            await asyncio.wait_for(run, 10)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return client.message

    message = asyncio.run(scenario())
    assert message == "Quick Mode eng failed: refused by the peer (INVALID_ID_INFORMATION) (notify 18)"


def test_live_reload_reaches_the_connected_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove "mail", change "intranet", add "dns": the client acknowledges, rebuilds intranet,
    deletes mail, adds dns; the eng SA stays the very same SA (same SPIs)."""
    monkeypatch.setenv("TUNVPN_RUN_DIR", str(tmp_path))
    sock = tmp_path / "gw.sock"

    async def scenario() -> tuple[Client, Gateway, list[dict], dict, dict]:
        ike, natt = free_port_pair()
        gateway, server = await serve(gateway_options(ike, natt, RULES, control_socket=str(sock)))
        out = io.StringIO()
        client = Client(
            client_options(ike, natt, "alice", "a-pass"), CLIENT, progress=Progress(json_lines=True, out=out)
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: len(client.established) == 3)
            eng_before = client.established["eng"]
            before = await asyncio.to_thread(request, sock, "status")
            changed_intranet = policy("intranet", "10.78.0.0/23")
            dns = policy("dns", "10.78.9.53[udp/53]", pfs_group=None)
            new = gateway_options(
                ike,
                natt,
                (SimpleRule(changed_intranet), SimpleRule(ENG, groups=("eng",)), SimpleRule(dns)),
                control_socket=str(sock),
            )
            summary = gateway.apply_options(new)
            assert summary["clients_updated"] == 1, summary
            await wait_until(
                lambda: (
                    set(client.established) == {"intranet", "eng", "dns"}
                    and str(client.established["intranet"].remote_ts) == "10.78.0.0/23"
                )
            )
            await wait_until(lambda: not any(c.policy_name == "mail" for c in gateway.children.values()))
            assert client.established["eng"] is eng_before  # untouched
            after = await asyncio.to_thread(request, sock, "status")
            client.close("test done")
            client._finish(0, "done")
            await asyncio.wait_for(run, 10)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        return client, gateway, records, before, after

    _, _, records, before, after = asyncio.run(scenario())
    [update] = [r for r in records if r["event"] == "update"]
    assert (update["added"], update["changed"], update["removed"], update["unchanged"]) == (
        ["dns"],
        ["intranet"],
        ["mail"],
        ["eng"],
    )
    assert update["generation"] == 2
    # status over the control socket, before and after
    [t_before] = before["tunnels"]
    assert before["generation"] == 1 and t_before["user"] == "alice" and t_before["groups"] == ["eng"]
    assert sorted(sa["name"] for sa in t_before["sas"]) == ["eng", "intranet", "mail"]
    [t_after] = after["tunnels"]
    names = sorted(sa["name"] for sa in t_after["sas"])
    # the old intranet SA may still be retiring (make-before-break), mail is gone
    assert "mail" not in names and {"dns", "eng", "intranet"} <= set(names)
    assert after["generation"] == 2 and t_after["generation"] == 2


def test_reload_without_a_change_pushes_nothing() -> None:
    async def scenario() -> dict:
        ike, natt = free_port_pair()
        gateway, server = await serve(gateway_options(ike, natt, RULES))
        client = Client(
            client_options(ike, natt, "bob", "b-pass"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: len(client.established) == 2)
            summary = gateway.apply_options(gateway_options(ike, natt, RULES))
            client.close("done")
            client._finish(0, "done")
            await asyncio.wait_for(run, 10)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return summary

    summary = asyncio.run(scenario())
    assert summary == {"generation": 1, "changes": [], "clients_updated": 0}


def test_default_policies_without_a_config_still_push_sets() -> None:
    """`tunvpn gateway --split A --split B` (no config file): one pushed set per network."""
    ike, natt = free_port_pair()
    from ipaddress import IPv4Network

    gw = GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        split=(IPv4Network("10.78.0.0/24"), IPv4Network("10.78.1.0/24")),
    )
    cl = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        exit_after_established=True,
        timeout=20,
    )
    client, _, records = asyncio.run(connect(gw, cl))
    assert client.result == 0, records
    up = established(records)
    assert set(up) == {"10.78.0.0/24", "10.78.1.0/24"}
    assert {r["esp"] for r in up.values()} == {str(DEFAULT_ESP[0])}


def test_a_quick_mode_answer_leaves_only_after_its_sa_was_handed_on() -> None:
    """The responder's SA exists once it answers Quick Mode message 1; the driver hands the
    ChildSAEstablished event on (the gateway installs the SA in its data path) *before* the
    answer is sent, since a peer may send ESP the moment the answer arrives (vpnc does)."""
    ike, natt = free_port_pair()
    gateway = gateway_options(ike, natt, RULES)
    client = client_options(ike, natt, "alice", "a-pass", exit_after_established=True, force_encap=True)
    order: list[str] = []

    def record_order(gateway: Gateway) -> None:
        driver = gateway.driver
        assert driver is not None and driver.handler is not None
        handler = driver.handler

        def recording_handler(event: ev.Event) -> object:
            if isinstance(event, ev.ChildSAEstablished):
                order.append(f"sa handed on ({event.role})")
            return handler(event)

        driver.handler = recording_handler
        transport = driver._endpoints[natt].transport
        assert transport is not None
        send = transport.sendto

        def recording_sendto(data: bytes, addr: object = None) -> None:
            # after the non-ESP marker: the ISAKMP header, exchange type at octet 18
            if data[:4] == b"\0\0\0\0" and len(data) > 22 and data[4 + 18] == ExchangeType.QUICK_MODE:
                order.append("quick mode answer sent")
            send(data, addr)

        transport.sendto = recording_sendto  # type: ignore[method-assign]

    connected, _, records = asyncio.run(connect(gateway, client, on_ready=record_order))
    assert connected.result == 0, records
    assert order[:2] == ["sa handed on (responder)", "quick mode answer sent"], order
