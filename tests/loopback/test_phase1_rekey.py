"""Issue 15: phase 1 rekeying with the real shells (gateway and client in one asyncio loop over
UDP on loopback, no TUN): the session, its address and its IPsec SAs follow the new ISAKMP SA;
``reauth_interval`` makes the gateway ask the user again, and the client answers with its
stored password; ``max_sessions_per_user = 1`` does not refuse the user's own continuation."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from tests.helpers.loopback import (
    CLIENT,
    INTRANET,
    client_options,
    free_port_pair,
    gateway_options,
    needs_loopback,
    serve,
    stop,
    wait_until,
)
from tunvpn.client.daemon import Client, Progress
from tunvpn.gateway.daemon import SimpleRule
from tunvpn.ike.proposals import Phase1Policy

pytestmark = needs_loopback

LIFETIME = 4


async def _run(seconds: float, **gateway_kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ike, natt = free_port_pair()
    options = gateway_options(
        ike,
        natt,
        (SimpleRule(INTRANET),),
        phase1=Phase1Policy(lifetime=LIFETIME),
        max_sessions_per_user=1,
        **gateway_kw,
    )
    gateway, server = await serve(options)
    out = io.StringIO()
    client = Client(
        client_options(ike, natt, "alice", "a-pass"), CLIENT, progress=Progress(json_lines=True, out=out)
    )
    task = asyncio.ensure_future(client.run(handle_signals=False))
    seen: dict[str, Any] = {}
    try:
        await wait_until(lambda: client.established, 20)
        first = dict(gateway.sessions)
        (session,) = first.values()
        seen["address"] = session.address
        seen["spis"] = {c.spi_in for c in gateway.children.values()}
        await asyncio.sleep(seconds)
        assert client.result is None, out.getvalue()
        seen["sessions"] = dict(gateway.sessions)
        seen["children"] = dict(gateway.children)
        seen["leased"] = gateway.options.pool.leased() if gateway.options.pool else {}
        seen["client_sa"] = client.sa_id
        seen["client_children"] = {c.spi_in for c in client.established.values()}
    finally:
        client.stop("test over")
        await asyncio.wait_for(task, 10)
        await stop(gateway, server)
    return [json.loads(line) for line in out.getvalue().splitlines()], seen


def _check_session_followed(seen: dict[str, Any]) -> None:
    ((sa_id, session),) = seen["sessions"].items()
    assert sa_id == seen["client_sa"] and session.sa_id == sa_id
    assert session.user == "alice" and session.address == seen["address"]
    assert seen["leased"] == {sa_id: seen["address"]}
    assert {c.spi_in for c in seen["children"].values()} == seen["spis"]
    assert all(c.sa_id == sa_id for c in seen["children"].values())
    assert seen["client_children"]


def test_rekeys_keep_the_session_without_asking_again() -> None:
    records, seen = asyncio.run(_run(3 * LIFETIME))
    rekeyed = [r for r in records if r["event"] == "phase1" and r["state"] == "rekeyed"]
    assert len(rekeyed) >= 2 and not any(r["reauthenticated"] for r in rekeyed)
    assert [r["state"] for r in records if r["event"] == "xauth" and r["state"] in ("sent", "reauth")] == [
        "sent"
    ]
    _check_session_followed(seen)


def test_reauth_interval_asks_again_and_the_stored_password_answers() -> None:
    records, seen = asyncio.run(_run(3 * LIFETIME, reauth_interval=LIFETIME / 2))
    rekeyed = [r for r in records if r["event"] == "phase1" and r["state"] == "rekeyed"]
    assert len(rekeyed) >= 2 and all(r["reauthenticated"] for r in rekeyed)
    asked = [r["state"] for r in records if r["event"] == "xauth" and r["state"] in ("sent", "reauth")]
    assert asked[0] == "sent" and len(rekeyed) <= asked.count("reauth") <= len(rekeyed) + 1
    _check_session_followed(seen)
