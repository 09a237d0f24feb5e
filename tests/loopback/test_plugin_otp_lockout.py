"""The OTP lockout attack over real UDP (issue 12, point 10): a holder of the group PSK, at
127.0.0.3, finishes phase 1 again and again and answers XAUTH for carol with wrong passcodes.
Before the fix the fifth locked carol's token: carol, at 127.0.0.2 with her right PIN and
tokencode, was refused for five minutes. Now only the attacker's address is locked out.

One real gateway (``plugins = ["otp"]``) and real clients over loopback, as in
tests/loopback/test_plugin_otp.py; the gateway's own login throttle (tunvpn/gateway/logins.py) is on too."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from tests.helpers.loopback import (
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    loopback_available,
    serve,
)

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

from tunvpn_otp import core
from tunvpn_otp.core import Kind, Record
from tunvpn_otp.store import Store

from tunvpn.client.daemon import Client, Progress

PIN = "4711"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
CAROL_AT = "127.0.0.2"
ATTACKER_AT = "127.0.0.3"

pytestmark = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


def code(n: int) -> str:
    return Record(Kind.HOTP, SECRET).code(n)


async def login(ike: int, natt: int, source: str, passcode: str) -> tuple[int, str]:
    """One client from ``source`` logging in as carol; (exit status, failure message)."""
    out = io.StringIO()
    options = dataclasses.replace(client_options(ike, natt, "carol", passcode), exit_after_established=True)
    client = Client(options, source, progress=Progress(json_lines=True, out=out))
    status = await asyncio.wait_for(client.run(handle_signals=False), 30)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [r["message"] for r in records if r.get("state") == "failed"]
    return status, failed[-1] if failed else ""


def test_wrong_passcodes_for_carol_from_a_psk_holder_do_not_lock_carol_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "otp.json")
    with store.edit(create=True) as users:
        users["carol"] = Record(Kind.HOTP, SECRET, pin_hash=core.hash_pin(PIN))

    async def scenario() -> tuple[list[tuple[int, str]], tuple[int, str]]:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike, natt, RULES, plugins=("otp",), plugin_settings={"otp": {"store": str(store.path)}}
        )
        gateway, server = await serve(options)
        try:
            attacker = [await login(ike, natt, ATTACKER_AT, "0000" + f"{n:06d}") for n in range(6)]
            carol = await login(ike, natt, CAROL_AT, PIN + code(0))
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return attacker, carol

    attacker, carol = asyncio.run(scenario())
    assert carol == (0, ""), carol  # carol logs in from her own address, at once
    assert all(status == 1 for status, _ in attacker)
    assert "PIN or tokencode not accepted" in attacker[0][1]
    assert "too many failed attempts from this address" in attacker[-1][1], attacker
    record = store.get("carol")
    assert record is not None and record.locked_until == 0.0 and record.familiar == (CAROL_AT,)
