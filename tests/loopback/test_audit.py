"""The audit log (tunvpn/gateway/audit.py): one key=value line per login, failed login, SA up/down
and policy change, on ``tunvpn.audit``, checked on a real gateway and client over UDP."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.helpers.logins import PasswordBackend, attempt, client_options, gateway_options, serve
from tests.helpers.loopback import PSK, free_port_pair, needs_loopback
from tunvpn.gateway.audit import format_line
from tunvpn.gateway.daemon import SimpleRule
from tunvpn.ike.policies import Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector

INTRANET = Phase2Policy("intranet", TrafficSelector.parse("10.78.0.0/24"))
MAIL = Phase2Policy("mail", TrafficSelector.parse("10.78.5.0/24"))


def test_format_is_stable_and_a_peer_cannot_forge_a_line() -> None:
    assert format_line(
        "login", {"result": "ok", "user": "alice", "reason": None, "peer": "192.0.2.1:500"}
    ) == ("event=login result=ok user=alice peer=192.0.2.1:500")
    forged = format_line("login", {"result": "fail", "user": "x\nevent=login result=ok user=root"})
    assert "\n" not in forged
    assert forged == 'event=login result=fail user="x\\nevent=login result=ok user=root"'
    assert (
        format_line("policy", {"changes": "added policy mail"}) == 'event=policy changes="added policy mail"'
    )


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


@needs_loopback
def test_audit_lines_for_a_failed_login_a_login_its_sas_and_a_policy_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ike, natt = free_port_pair()

    async def scenario() -> None:
        options = gateway_options(
            ike, natt, plugin_objects=(PasswordBackend(),), rules=(SimpleRule(INTRANET),)
        )
        gateway, server = await serve(options)
        try:
            assert (await attempt(gateway, client_options(ike, natt, "alice", "wrong-guess")))[0] == 1
            assert (await attempt(gateway, client_options(ike, natt, "alice", "a-pass")))[0] == 0
            new = gateway_options(
                ike, natt, plugin_objects=(PasswordBackend(),), rules=(SimpleRule(INTRANET), SimpleRule(MAIL))
            )
            gateway.apply_options(new)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)

    with caplog.at_level(logging.INFO, logger="tunvpn.audit"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "tunvpn.audit"]
    records = [_fields(line) for line in lines]
    assert all(line.startswith("event=") and "\n" not in line for line in lines)

    logins = [r for r in records if r["event"] == "login"]
    assert [(r["result"], r["user"]) for r in logins] == [("fail", "alice"), ("ok", "alice")]
    fail, ok = logins
    assert fail["peer"].startswith("127.0.0.2:") and fail["reason"] and fail["id"] == "127.0.0.2"
    assert ok["sa"] != fail["sa"] and len(ok["sa"]) == 16

    session = [r for r in records if r.get("sa") == ok["sa"]]
    kinds = [(r["event"], r.get("state") or r.get("result")) for r in session]
    assert kinds[:2] == [("ike_sa", "up"), ("login", "ok")]
    assert ("child_sa", "up") in kinds and ("child_sa", "down") in kinds and kinds[-1] == ("ike_sa", "down")
    child_up = next(r for r in session if r["event"] == "child_sa" and r["state"] == "up")
    assert child_up["user"] == "alice" and child_up["policy"] == "intranet"
    assert child_up["local"] == "10.78.0.0/24" and child_up["spi_in"].startswith("0x")
    down = session[-1]
    assert down["user"] == "alice" and down["by"] == "peer"

    [change] = [r for r in records if r["event"] == "policy"]
    assert change["action"] == "reload" and "added policy mail" in change["changes"]

    text = "\n".join(lines)
    assert "a-pass" not in text and "wrong-guess" not in text and PSK.decode() not in text
