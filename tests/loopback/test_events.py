"""``tunvpn events`` with the real shells (issue 20): a gateway on loopback with its control
socket, read by :func:`tunvpn.control.server.stream` as ``tunvpn events`` reads it, while alice
logs in, her phase 1 is rekeyed, the gateway reloads, bob fails to log in and alice leaves.
The stream shows those, in that order."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.helpers.loopback import (
    CLIENT,
    INTRANET,
    MAIL,
    client_options,
    free_port_pair,
    gateway_options,
    needs_loopback,
    serve,
    stop,
    wait_until,
)
from tunvpn.client.daemon import Client, Progress
from tunvpn.control import server as control
from tunvpn.gateway.daemon import SimpleRule
from tunvpn.ike.proposals import Phase1Policy

pytestmark = needs_loopback


def test_the_event_stream_shows_a_login_a_rekey_a_reload_a_failed_login_and_a_logout(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    sock = tmp_path / "run" / "gateway.sock"

    def follow() -> None:
        for record in control.stream(sock, "events", timeout=10):
            assert isinstance(record, dict)
            records.append(record)
            if record["event"] == "logout":
                return

    async def main() -> None:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike, natt, (SimpleRule(INTRANET),), phase1=Phase1Policy(lifetime=4), control_socket=str(sock)
        )
        gateway, server = await serve(options)
        reader = threading.Thread(target=follow, daemon=True)
        try:
            await wait_until(lambda: sock.exists(), 10)
            reader.start()
            cli = subprocess.Popen(  # the command itself, as an admin runs it
                [sys.executable, "-m", "tunvpn", "events", "--json", "--socket", str(sock)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            await wait_until(lambda: len(gateway.events.subscribers) == 2, 20)
            alice = Client(
                client_options(ike, natt, "alice", "a-pass"),
                CLIENT,
                progress=Progress(json_lines=True, out=io.StringIO()),
            )
            alice_task = asyncio.ensure_future(alice.run(handle_signals=False))
            await wait_until(lambda: alice.established, 20)
            await wait_until(lambda: any(r["event"] == "rekey" for r in records), 15)  # lifetime 4 s
            gateway.apply_options(
                dataclasses.replace(options, rules=(SimpleRule(INTRANET), SimpleRule(MAIL)))
            )
            await wait_until(lambda: any(r["event"] == "reload" for r in records), 10)
            bob = Client(
                client_options(ike, natt, "bob", "not-his-password", reconnect=False),
                "127.0.0.3",
                progress=Progress(json_lines=True, out=io.StringIO()),
            )
            await asyncio.wait_for(bob.run(handle_signals=False), 20)
            await wait_until(lambda: any(r["event"] == "login-failed" for r in records), 10)
            alice.stop("test over")
            await asyncio.wait_for(alice_task, 10)
            await wait_until(lambda: any(r["event"] == "logout" for r in records), 10)
        finally:
            await stop(gateway, server)
            await asyncio.to_thread(reader.join, 5)
            # the gateway went: its stream ends, and so does the command
            out, err = await asyncio.to_thread(cli.communicate, timeout=10)
            printed.extend(json.loads(line) for line in out.decode().splitlines())
            assert cli.returncode == 1 and b"closed the event stream" in err, err

    printed: list[dict[str, Any]] = []
    asyncio.run(main())
    assert printed[: len(records)] == records, (printed, records)
    kinds = [r["event"] for r in records if r["event"] != "sa-up" and r["event"] != "sa-down"]
    assert kinds == ["login", "rekey", "reload", "login-failed", "logout"], records
    login, rekey, reload, failed, logout = (next(r for r in records if r["event"] == k) for k in kinds)
    assert (login["user"], login["address"]) == ("alice", "10.79.0.10"), login
    assert rekey["user"] == "alice" and rekey["reauthenticated"] is False, rekey
    assert reload["changes"] and reload["generation"] == 2, reload
    assert (failed["user"], failed["result"]) == ("bob", "fail") and failed["peer"].startswith(
        "127.0.0.3:"
    ), failed
    assert logout["user"] == "alice" and logout["by_peer"] is True, logout
    ups = [r for r in records if r["event"] == "sa-up"]
    assert ups and ups[0]["user"] == "alice" and ups[0]["policy"] == "intranet", ups
    assert any(r["event"] == "sa-down" for r in records)
    assert all(isinstance(r["time"], float) for r in records)
