"""``tunvpn up NAME`` / ``tunvpn down NAME`` (issue 15, docs/service.md) with a real gateway and
TUN devices in two namespaces:

    client (10.66.0.2) --veth-- gateway (10.66.0.1; 10.67.0.1 on lo, the protected network)

The profile is ``$XDG_CONFIG_HOME/tunvpn/office.toml``. ``up`` returns once the tunnel is up (a
ping through it works at once), leaves the client running in the background with its pid file,
log and control socket in the run dir, and refuses a second ``up``; ``down`` returns once the
client has gone (its TUN device with it) and removes the pid file; a second ``down`` says it is
not up. A profile with a wrong password makes ``up`` fail with the gateway's reason, leaving
nothing running.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, run_in, stop_process
from tests.helpers.tunvpn_proc import (
    popen_tunvpn,
    private_file,
    read_text,
    tunvpn_argv,
    tunvpn_env,
    wait_for_line,
)

GATEWAY = "10.66.0.1"
CLIENT = "10.66.0.2"
PSK = "updown-test-psk-51d0"

GATEWAY_TOML = """\
[gateway]
listen = "10.66.0.1"
psk_file = "gw.psk"
users_file = "users"
tun = "tvudg%d"

[network]
pool = "10.68.0.10-10.68.0.20"

[[policy]]
name = "inside"
local = "10.67.0.0/24"
"""


@dataclass
class Net:
    topo: Topology
    client: str
    gateway: str
    tmp: Path
    env: dict[str, str]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g = topo.add_ns("c"), topo.add_ns("g")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        topo.add_addr(g, "10.67.0.1/24")
        private_file(tmp_path / "gw.psk", PSK + "\n")
        private_file(tmp_path / "users", "alice:alice-pw\n")
        (tmp_path / "gateway.toml").write_text(GATEWAY_TOML)
        config = tmp_path / "config" / "tunvpn"
        config.mkdir(parents=True)
        private_file(config / "office.psk", PSK + "\n")
        private_file(config / "alice.pw", "alice-pw\n")
        private_file(config / "wrong.pw", "not-alice-pw\n")
        for name, password in (("office", "alice.pw"), ("wrongpw", "wrong.pw")):
            profile = f'gateway = "{GATEWAY}"\npsk_file = "office.psk"\nuser = "alice"\n'
            (config / f"{name}.toml").write_text(profile + f'password_file = "{password}"\n')
        env = {
            **os.environ,
            **tunvpn_env(),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "TUNVPN_RUN_DIR": str(tmp_path / "run"),
        }
        yield Net(topo, c, g, tmp_path, env)


def tunvpn(net: Net, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return run_in(net.client, tunvpn_argv(*argv), check=False, timeout=timeout, env=net.env)


def alive(pid: int) -> bool:
    """The process runs (a zombie has exited: it waits only for whoever reaps orphans here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def client_tun(net: Net) -> str:
    return run_in(net.client, ["ip", "-o", "link", "show", "type", "tun"], check=False).stdout


def test_up_returns_once_the_tunnel_is_up_and_down_once_it_is_gone(net: Net) -> None:
    log = net.tmp / "gateway.log"
    gw = popen_tunvpn(net.gateway, ["gateway", "-c", str(net.tmp / "gateway.toml"), "--control", "none"], log)
    run = net.tmp / "run"
    try:
        wait_for_line(log, "gateway ready", gw, 20, "the gateway")
        up = tunvpn(net, "up", "office")
        assert up.returncode == 0, up.stdout + up.stderr + read_text(run / "office.log")
        assert "office is up" in up.stdout
        # at once: no waiting here, the tunnel was up when `up` returned
        ping = run_in(net.client, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "10.67.0.1"], check=False)
        assert ping.returncode == 0, ping.stdout + read_text(run / "office.log")
        pid = int((run / "office.pid").read_text().split()[0])
        assert alive(pid)
        assert "tunvpn" in client_tun(net)
        status = tunvpn(net, "status", "--socket", str(run / "office.sock"), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["role"] == "client"

        again = tunvpn(net, "up", "office")
        assert again.returncode == 1 and "already up" in again.stderr, again.stderr

        down = tunvpn(net, "down", "office")
        assert down.returncode == 0, down.stderr
        assert "office is down" in down.stdout
        assert not alive(pid)  # gone when `down` returned ...
        assert "tunvpn" not in client_tun(net)  # ... with its TUN device
        assert not (run / "office.pid").exists()
        twice = tunvpn(net, "down", "office")
        assert twice.returncode == 1 and "not up" in twice.stderr

        bad = tunvpn(net, "up", "wrongpw")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "wrongpw did not come up" in bad.stderr, bad.stderr
        assert not (run / "wrongpw.pid").exists()
        assert "tunvpn" not in client_tun(net)

        missing = tunvpn(net, "up", "nosuch")
        assert missing.returncode == 1 and "no profile 'nosuch'" in missing.stderr
    finally:
        for name in ("office", "wrongpw"):
            tunvpn(net, "down", name, timeout=30)
        stop_process(gw)
