"""Issue 15: a client that reconnects logs in again by itself, but never replays a one-time
code. A real gateway on loopback with the ``otp`` plugin (PIN + HOTP tokencode), a client
that typed its first code at the prompt; the gateway stops (it deletes our SAs) and starts
again: the client reconnects, its first code given again is refused ("used already"), and it
asks the user for a new one instead of giving up or locking the account."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from tests.helpers.loopback import (
    CLIENT,
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    loopback_available,
    serve,
    stop,
)

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

from tunvpn_otp import core
from tunvpn_otp.core import Kind, Record
from tunvpn_otp.store import Store

from tunvpn.client.daemon import Client, Progress

PIN = "4711"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


def code(n: int) -> str:
    return Record(Kind.HOTP, SECRET).code(n)


@needs_loopback
def test_a_reconnect_asks_for_a_new_tokencode_instead_of_replaying_the_old_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "otp.json")
    with store.edit(create=True) as users:
        users["carol"] = Record(Kind.HOTP, SECRET, pin_hash=core.hash_pin(PIN))
    answers = [PIN + code(0), PIN + code(1)]
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return answers.pop(0)

    out = io.StringIO()

    def records() -> list[dict[str, object]]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def established() -> int:
        return sum(1 for r in records() if r["event"] == "established")

    async def until(predicate: object, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not predicate():  # type: ignore[operator]
            assert loop.time() < deadline, out.getvalue()[-3000:]
            await asyncio.sleep(0.05)

    async def scenario() -> int | None:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike, natt, RULES, plugins=("otp",), plugin_settings={"otp": {"store": str(store.path)}}
        )
        gateway, server = await serve(options)
        client_opts = dataclasses.replace(
            client_options(ike, natt, "carol", None),  # type: ignore[arg-type]  # typed at the prompt
            password_prompt=True,
            reconnect=True,
        )
        client = Client(client_opts, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=prompt)
        task = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await until(lambda: established() == 1, 30)
            await stop(gateway, server)  # the gateway deletes our SAs as it goes
            gateway, server = await serve(options)
            await until(lambda: established() == 2 or task.done(), 60)
        finally:
            client.stop("test over")
            await asyncio.wait_for(task, 10)
            await stop(gateway, server)
        return client.result

    result = asyncio.run(scenario())
    assert result == 0, out.getvalue()[-3000:]
    assert established() == 2, out.getvalue()[-3000:]
    assert len(asked) == 2, asked  # the first login, then once more for the reconnect
    failed = [r for r in records() if r["event"] == "reconnect" and r["state"] == "failed"]
    assert any(
        "used already" in str(r["message"]) and "asking for a new one" in str(r["message"]) for r in failed
    ), failed
