"""Issue 15: phase 1 rekeying end to end, real ``tunvpn gateway`` and ``tunvpn connect``
processes in two network namespaces with TUN devices.

The gateway's phase 1 lifetime is 8 s (``[phase1] lifetime``; the client takes the lifetime
the gateway answers), so the client rekeys the ISAKMP SA every 6.4-7.2 s. Over ~30 s of a
ping at 20 packets a second and a 16 MiB TCP transfer checked by SHA-256: several phase 1
rekeys on both sides (client JSON lines, gateway audit lines), 0 pings lost, the data intact,
and the user asked for XAUTH once (the rekeys are bound to the logged-in session).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, run_in, stop_process
from tests.helpers.transfer import SINK, SOURCE
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    wait_for_line,
)

PROTECTED = "10.78.0.1"
LIFETIME = 8
SECONDS = 30
PPS = 20
SIZE = 16 << 20

GATEWAY_TOML = f"""\
[gateway]
listen = "10.77.0.1"
psk_file = "gw.psk"
users_file = "users"
tun = "tvgw%d"

[network]
pool = "10.79.0.10-10.79.0.20"

[phase1]
lifetime = {LIFETIME}

[[policy]]
name = "net"
local = "10.78.0.0/24"
lifetime = "1h"
"""


@dataclass
class Running:
    pair: NetnsPair
    gw_log: Path
    cl_log: Path
    control: Path


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[Running]:
    os.chmod(tmp_path, 0o700)
    with NetnsPair() as pair:
        pair.add_addr(pair.a, f"{PROTECTED}/24")
        private_file(tmp_path / "gw.psk", "phase1-rekey-psk-41c9e2\n")
        private_file(tmp_path / "users", "alice:alice-pw\n")
        private_file(tmp_path / "alice.pw", "alice-pw\n")
        (tmp_path / "gateway.toml").write_text(GATEWAY_TOML)
        profile = tmp_path / "alice.toml"
        profile.write_text(f'gateway = "{pair.addr_a}"\npsk_file = "gw.psk"\nuser = "alice"\n')
        gw_log = tmp_path / "gateway.log"
        control = tmp_path / "gw.sock"
        argv = ["gateway", "-c", str(tmp_path / "gateway.toml"), "--control", str(control), "-v"]
        gw = popen_tunvpn(pair.a, argv, gw_log)
        wait_for_line(gw_log, "gateway ready", gw, 20, "the gateway")
        cl_log = tmp_path / "client.log"
        cl = popen_tunvpn(
            pair.b,
            [
                "connect",
                "-c",
                str(profile),
                "--password-file",
                str(tmp_path / "alice.pw"),
                "--json",
                "--tun",
                "tvcl%d",
                "--control",
                "none",
                "--dns-backend",
                "none",
                "-v",
            ],
            cl_log,
        )
        try:
            wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's IPsec SAs")
            yield Running(pair, gw_log, cl_log, control)
            assert cl.poll() is None, f"the client exited; log:\n{read_text(cl_log)[-4000:]}"
            assert gw.poll() is None, f"the gateway exited; log:\n{read_text(gw_log)[-4000:]}"
        finally:
            stop_process(cl)
            stop_process(gw)


def _status(tunnel: Running) -> dict:
    out = run_tunvpn(tunnel.pair.a, ["status", "--socket", str(tunnel.control), "--json"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_phase1_rekeys_under_ping_and_tcp_lose_nothing_and_ask_once(tunnel: Running) -> None:
    pair = tunnel.pair
    (before,) = _status(tunnel)["tunnels"]
    sink = subprocess.Popen(
        ["ip", "netns", "exec", pair.a, sys.executable, "-c", SINK, PROTECTED],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None and "listening" in sink.stdout.readline()
        count = SECONDS * PPS
        interval = str(1 / PPS)
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "2", PROTECTED]
        ping = subprocess.Popen(
            ["ip", "netns", "exec", pair.b, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        transfer = run_in(
            pair.b,
            [sys.executable, "-c", SOURCE, PROTECTED, str(SIZE), str(SECONDS - 5)],
            check=True,
            timeout=120,
        )
        ping_out, _ = ping.communicate(timeout=SECONDS + 60)
    finally:
        sink.kill()
        sink.wait()
        assert sink.stdout is not None
        sink.stdout.close()
    sent, digest, received, echoed = transfer.stdout.split()
    assert int(sent) == int(received) == SIZE
    assert digest == echoed, "the data changed on its way through the tunnel"
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out)
    assert m is not None, ping_out
    assert (int(m.group(1)), int(m.group(2))) == (count, count), ping_out

    records = json_records(tunnel.cl_log)
    rekeyed = [r for r in records if r["event"] == "phase1" and r["state"] == "rekeyed"]
    assert len(rekeyed) >= 3, read_text(tunnel.cl_log)[-4000:]
    assert not any(r.get("reauthenticated") for r in rekeyed)
    asked = [r for r in records if r["event"] == "xauth" and r["state"] in ("sent", "reauth")]
    assert [r["state"] for r in asked] == ["sent"], "XAUTH asked more than once"
    gw_text = read_text(tunnel.gw_log)
    assert gw_text.count("state=rekeyed") >= 3, gw_text[-4000:]
    assert gw_text.count("event=login result=ok") == 1, gw_text[-4000:]
    assert "event=child_sa state=down" not in gw_text, "an IPsec SA went down with its ISAKMP SA"
    # tunvpn status: one session, its address and IPsec SAs kept, under the newest ISAKMP SA
    (after,) = _status(tunnel)["tunnels"]
    assert (after["user"], after["address"]) == ("alice", before["address"])
    assert [sa["spi_in"] for sa in after["sas"]] == [sa["spi_in"] for sa in before["sas"]]
    assert after["phase1"]["established"] > before["phase1"]["established"]
