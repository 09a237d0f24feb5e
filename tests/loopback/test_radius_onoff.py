"""Accounting-On and -Off (RFC 2866 Acct-Status-Type 7 and 8) from a real gateway with the
RADIUS plugin to a real FreeRADIUS on loopback (contrib/freeradius, its detail file): On before
the gateway reports ready, a session's Start and Stop, then Off on a clean stop; every request
names the gateway (NAS-Identifier, NAS-IP-Address). And what a server-side pool keyed on the
session needs from every request of it: one Acct-Session-Id through phase 1 rekeys, the
Calling-Station-Id of the login after a roam. The fleet test (tests/interop/test_fleet.py)
shows what FreeRADIUS's sql and sqlippool make of them."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from tests.helpers import radius_fixture
from tests.helpers.loopback import (
    CLIENT,
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    loopback_available,
    wait_until,
)
from tests.helpers.radius_fixture import FreeRadius
from tunvpn.client.daemon import Client, Progress
from tunvpn.gateway.daemon import Gateway
from tunvpn.ike.proposals import Phase1Policy

freeradius_server = radius_fixture.freeradius_server  # the fixtures
radius = radius_fixture.radius

pytest.importorskip("tunvpn_radius", reason="pip install -e plugins/tunvpn-radius")


def _records(detail: str) -> list[str]:
    """The detail file's records (each starts with a timestamp line, "%t")."""
    return [r for r in re.split(r"\n(?=\S)", detail) if "Acct-Status-Type" in r]


def _status(record: str) -> str:
    match = re.search(r"Acct-Status-Type = (\S+)", record)
    assert match, record
    return match.group(1)


@pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")
def test_accounting_on_before_ready_and_off_after_the_stops(radius: FreeRadius, tmp_path: Path) -> None:
    secret = str(radius.secret_file(tmp_path))
    radius_settings = {
        "servers": [
            {
                "host": "127.0.0.1",
                "port": radius.auth_port,
                "acct_port": radius.acct_port,
                "secret_file": secret,
            }
        ],
        "timeout": 1,
        "retries": 1,
        "nas_identifier": "gw-onoff",
    }
    before = len(_records(radius.detail_text()))
    seen_at_ready: list[str] = []

    async def scenario() -> None:
        ike, natt = free_port_pair()
        gateway = Gateway(
            gateway_options(
                ike, natt, RULES, plugins=("radius",), plugin_settings={"radius": radius_settings}
            )
        )
        ready = asyncio.Event()

        def on_ready() -> None:
            seen_at_ready.extend(_status(r) for r in _records(radius.detail_text())[before:])
            ready.set()

        server = asyncio.ensure_future(gateway.run(ready=on_ready, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 15)
        client = Client(
            client_options(ike, natt, "bob", "b-pass-2718"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: "Acct-Status-Type = Start" in radius.detail_text(), 15)
        finally:
            gateway.stop()  # the session ends with the gateway: its Stop, then Off
            await asyncio.wait_for(server, 20)
            client._finish(0, "done")
            await asyncio.wait_for(run, 10)

    asyncio.run(scenario())
    radius.wait_for_detail("Acct-Status-Type = Accounting-Off")
    records = _records(radius.detail_text())[before:]
    assert seen_at_ready == ["Accounting-On"]  # answered before the gateway said it was ready
    assert [_status(r) for r in records] == ["Accounting-On", "Start", "Stop", "Accounting-Off"], records
    for record in records:
        assert 'NAS-Identifier = "gw-onoff"' in record, record
        assert "NAS-IP-Address = 127.0.0.1" in record, record  # the source towards the server
    start = records[1]
    assert "Framed-IP-Address = 10.99.0.42" in start and 'User-Name = "bob"' in start, start


LIFETIME = 4  # phase 1 lifetime: the client rekeys it every few seconds


@pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")
def test_a_phase1_rekey_keeps_the_accounting_session(radius: FreeRadius, tmp_path: Path) -> None:
    """RFC 2866 5.5: one Acct-Session-Id from Start to Stop. A phase 1 rekey moves the session
    to a new ISAKMP SA; its Interim-Updates and Stop still name the session the Start named (a
    server-side pool keyed on it, sqlippool, would otherwise let the lease lapse)."""
    secret = str(radius.secret_file(tmp_path))
    radius_settings = {
        "servers": [
            {
                "host": "127.0.0.1",
                "port": radius.auth_port,
                "acct_port": radius.acct_port,
                "secret_file": secret,
            }
        ],
        "timeout": 1,
        "retries": 1,
    }
    before = len(_records(radius.detail_text()))
    rekeys: list[bytes] = []

    async def scenario() -> None:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike,
            natt,
            RULES,
            plugins=("radius",),
            plugin_settings={"radius": radius_settings},
            accounting_interval=1,
            phase1=Phase1Policy(lifetime=LIFETIME),
        )
        gateway = Gateway(options)
        ready = asyncio.Event()
        server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 15)
        client = Client(
            client_options(ike, natt, "bob", "b-pass-2718"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: client.established, 15)
            first = client.sa_id
            assert first is not None
            await wait_until(lambda: client.sa_id not in (None, first), 3 * LIFETIME)
            rekeys.append(first)
            await asyncio.sleep(2)  # Interim-Updates after the rekey
        finally:
            client.stop("test over")
            await asyncio.wait_for(run, 10)
            gateway.stop()
            await asyncio.wait_for(server, 20)

    asyncio.run(scenario())
    radius.wait_for_detail("Acct-Status-Type = Accounting-Off")
    records = [r for r in _records(radius.detail_text())[before:] if "Accounting-O" not in r]
    statuses = [_status(r) for r in records]
    assert rekeys and statuses[0] == "Start" and statuses[-1] == "Stop", statuses
    assert statuses.count("Start") == 1 and statuses.count("Stop") == 1, statuses
    assert "Interim-Update" in statuses
    ids = {m.group(1) for r in records if (m := re.search(r'Acct-Session-Id = "([^"]+)"', r))}
    assert ids == {rekeys[0].hex()}, (ids, statuses)


def test_accounting_keeps_the_calling_station_of_the_login(radius: FreeRadius, tmp_path: Path) -> None:
    """A client that roams (NAT-T float to a new outer address) is still the session that logged
    in: its Accounting-Requests carry the Calling-Station-Id of the Access-Request, which
    sqlippool's alive_update and stop_clear match the lease on (docs/scale-out.md)."""
    from tunvpn.plugins import CredentialRequest, GatewayContext, PluginHost
    from tunvpn.plugins.accounting import AccountingRecord

    secret = str(radius.secret_file(tmp_path))
    context = GatewayContext(
        plugin_settings={
            "radius": {
                "servers": [
                    {
                        "host": "127.0.0.1",
                        "port": radius.auth_port,
                        "acct_port": radius.acct_port,
                        "secret_file": secret,
                    }
                ],
                "timeout": 1,
                "retries": 1,
            }
        }
    )
    host = PluginHost(["radius"])
    request = CredentialRequest("bob", "b-pass-2718", peer=("198.51.100.7", 500), session_id="roam-1")
    assert asyncio.run(host.verify_credentials(request, context)).accepted
    before = len(_records(radius.detail_text()))

    async def account() -> None:
        for kind in ("start", "interim", "stop"):
            record = AccountingRecord(kind, "roam-1", user="bob", peer=("203.0.113.9", 4500))  # roamed
            task = host.broadcast("tunvpn_accounting", record=record, context=context)
            assert task is not None
            await task

    asyncio.run(account())
    host.close()
    records = _records(radius.wait_for_detail('Acct-Session-Id = "roam-1"'))[before:]
    assert [_status(r) for r in records] == ["Start", "Interim-Update", "Stop"], records
    for record in records:
        assert 'Calling-Station-Id = "198.51.100.7"' in record, record
