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
from tunvpn.ike.policies import ExtraProtocol
from tunvpn.ike.proposals import Phase1Policy
from tunvpn.plugins import ClientQuestion, CredentialRequest, Verdict, hookimpl

pytestmark = needs_loopback

LIFETIME = 4


async def _run(
    seconds: float, client_kw: dict[str, Any] | None = None, **gateway_kw: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
        client_options(ike, natt, "alice", "a-pass", **(client_kw or {})),
        CLIENT,
        progress=Progress(json_lines=True, out=out),
    )
    task = asyncio.ensure_future(client.run(handle_signals=False))
    seen: dict[str, Any] = {}
    try:
        await wait_until(lambda: client.established, 20)
        first = dict(gateway.sessions)
        (session,) = first.values()
        seen["address"] = session.address
        seen["spis"] = {c.spi_in for c in gateway.children.values()}
        seen["first_phase1"] = client.phase1_at
        await asyncio.sleep(seconds)
        seen["status"] = client.status()["tunnels"][0]  # type: ignore[index]
        seen["gateway_status"] = gateway.status()["tunnels"][0]  # type: ignore[index]
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
    # tunvpn status shows the ISAKMP SA in use now, not the first one
    for status in (seen["status"], seen["gateway_status"]):
        assert status["phase1"]["established"] > seen["first_phase1"], status["phase1"]
        assert 0 < status["phase1"]["expires_in"] <= LIFETIME, status["phase1"]
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


class CounterToken:
    """An extra protocol "token" whose codes are used once each, in order (an HOTP-like
    token): the gateway side accepts only the next unused code; the client side (a soft
    token) answers with the next one. A replayed code is refused."""

    __name__ = "token"

    def __init__(self) -> None:
        self.next_expected = 0
        self.next_given = 0
        self.accepted: list[str] = []
        self.refused: list[str] = []

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        if request.protocol != "token":
            return None
        if request.passcode == f"code-{self.next_expected}":
            self.accepted.append(request.passcode)
            self.next_expected += 1
            return Verdict.accept()
        self.refused.append(str(request.passcode))
        return Verdict.reject("wrong or used code")

    @hookimpl
    def tunvpn_client_answer(self, question: ClientQuestion) -> str | None:
        if question.protocol != "token" or question.field != "passcode":
            return None
        code = f"code-{self.next_given}"
        self.next_given += 1
        return code


def test_reauth_runs_the_extra_protocols_again_and_a_soft_token_answers() -> None:
    """reauth_interval with an announced extra protocol (phase 1a): the gateway asks XAUTH,
    then runs the protocol again on the new ISAKMP SA (the client asks for no Mode Config on a
    rekey); the client's soft token answers each time with a fresh code, and the session and
    its IPsec SAs continue. Before issue 15's fix the new SA was never granted."""
    token = CounterToken()
    records, seen = asyncio.run(
        _run(
            3 * LIFETIME,
            client_kw={"plugin_objects": (token,)},
            reauth_interval=LIFETIME / 2,
            protocols=(ExtraProtocol("token"),),
            plugin_objects=(token,),
        )
    )
    rekeyed = [r for r in records if r["event"] == "phase1" and r["state"] == "rekeyed"]
    assert len(rekeyed) >= 2 and all(r["reauthenticated"] for r in rekeyed), records[-6:]
    # the first login and every re-authentication ran the protocol: fresh codes, none refused
    assert len(token.accepted) >= 1 + len(rekeyed) and not token.refused, (token.accepted, token.refused)
    passed = [r for r in records if r["event"] == "protocols" and r["state"] == "ok"]
    assert len(passed) >= 1 + len(rekeyed)
    _check_session_followed(seen)
