"""vpnc against our gateway with two policies (``tunvpn gateway -c gateway.toml``), in three
network namespaces::

    vpnc (10.77.0.2) --veth-- gateway (10.77.0.1 | 10.78.0.1, 10.78.1.1, 10.20.0.1)
                                      --veth-- server (10.78.0.10, 10.78.1.10, 10.20.0.10)

The gateway acts as a standard XAUTH + Mode Config gateway: it sends the two policies'
networks as Cisco Unity split-include (vpnc routes them into its TUN), and accepts vpnc's
Quick Mode for 10.79.0.10/32 === 0.0.0.0/0 as a Cisco concentrator does. That SA reaches
only the policies' networks: a ping to 10.20.0.10 (routed into vpnc's TUN by hand; the
gateway itself reaches it) is dropped by the gateway's data path and counted as ``policy``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers.netns import Topology, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, run_tunvpn, wait_for_line

from . import configs
from .vpnc import Vpnc

GATEWAY = "10.77.0.1"
CLIENT = "10.77.0.2"
POOL_FIRST = "10.79.0.10"
HOSTS = ("10.78.0.10", "10.78.1.10")
OUTSIDE = "10.20.0.10"

GATEWAY_TOML = f"""\
[gateway]
listen = "{GATEWAY}"
psk_file = "gw.psk"
users_file = "users"
allow_aggressive_psk = true
legacy = true
tun = "tvgw%d"

[network]
pool = "{configs.VPNC_POOL}"

[[policy]]
name = "net-a"
local = "10.78.0.0/24"

[[policy]]
name = "net-b"
local = "10.78.1.0/24"
esp = ["aes128gcm16", "aes128-sha1"]
pfs = "none"
"""


def ping(ns: str, host: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return run_in(ns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", host], check=False, timeout=30)


def test_vpnc_reaches_both_split_networks_and_nothing_else(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        topo.link(g, "10.78.0.1/24", s, "10.78.0.10/24", names=(g + "s", s + "g"))
        topo.add_addr(g, "10.78.1.1/24", g + "s")
        topo.add_addr(s, "10.78.1.10/24", s + "g")
        topo.add_addr(g, "10.20.0.1/16", g + "s")
        topo.add_addr(s, "10.20.0.10/16", s + "g")
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        private_file(tmp_path / "gw.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
        private_file(tmp_path / "users", f"{configs.VPNC_USER}:{configs.VPNC_PASSWORD}\n")
        (tmp_path / "gateway.toml").write_text(GATEWAY_TOML)
        sock = tmp_path / "gw.sock"
        log = tmp_path / "gateway.log"
        gateway = popen_tunvpn(
            g, ["gateway", "-c", str(tmp_path / "gateway.toml"), "--control", str(sock)], log
        )
        wait_for_line(log, "gateway ready", gateway, 20, "our gateway")
        client = Vpnc(
            tmp_path / "vpnc",
            c,
            gateway=GATEWAY,
            group=configs.VPNC_GROUP,
            group_psk=configs.VPNC_GROUP_PSK,
            user=configs.VPNC_USER,
            password=configs.VPNC_PASSWORD,
            split_routes=True,
            routes=(f"{OUTSIDE}/32",),  # not a split network: sent into the tunnel on purpose
        )
        with client:
            try:
                connect = client.wait_connected(timeout=30)
            except (TimeoutError, RuntimeError) as exc:
                raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)}") from None
            wait_for(lambda: "Quick Mode SA" in read_text(log), 10, "the gateway's Quick Mode log line")
            routes = run_in(c, ["ip", "route", "show", "dev", client.ifname]).stdout
            pings = {host: ping(c, host) for host in HOSTS}
            outside = ping(c, OUTSIDE)
            direct = ping(g, OUTSIDE, count=1)  # the gateway reaches it: only the policy stops vpnc
            out = run_tunvpn(g, ["status", "--socket", str(sock), "--json"])
            client.stop(settle=0.5)
        stop_process(gateway)
        text = read_text(log)

    assert connect["INTERNAL_IP4_ADDRESS"] == POOL_FIRST
    assert connect["CISCO_SPLIT_INC"] == "2", connect
    split = {(connect[f"CISCO_SPLIT_INC_{i}_ADDR"], connect[f"CISCO_SPLIT_INC_{i}_MASKLEN"]) for i in (0, 1)}
    assert split == {("10.78.0.0", "24"), ("10.78.1.0", "24")}
    assert "10.78.0.0/24" in routes and "10.78.1.0/24" in routes, routes
    for host, result in pings.items():
        assert result.returncode == 0, f"{host}: {result.stdout}{result.stderr}\n{text[-3000:]}"
        assert "3 received" in result.stdout
    assert direct.returncode == 0, direct.stdout
    assert outside.returncode != 0 and "0 received" in outside.stdout, outside.stdout

    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    [tunnel] = status["tunnels"]
    assert (tunnel["user"], tunnel["address"], tunnel["tunvpn"]) == (configs.VPNC_USER, POOL_FIRST, False)
    [sa] = tunnel["sas"]
    assert (sa["name"], sa["local_ts"], sa["remote_ts"]) == (
        "0.0.0.0/0 (split networks)",
        "0.0.0.0/0",
        f"{POOL_FIRST}/32",
    )
    assert sa["drops_in"] == {"policy": 3}, sa
    assert sa["packets_in"] >= 6 and sa["packets_out"] >= 6, sa  # both pings, both ways

    assert "(standard client: split networks)" in text
    assert "Quick Mode SA '0.0.0.0/0 (split networks)' established (responder)" in text, text
    stats = [line for line in text.splitlines() if "data path: {" in line][-1]
    assert "'policy': 3" in stats, stats
    assert configs.VPNC_PASSWORD not in text and configs.VPNC_GROUP_PSK not in text
    assert "Traceback" not in text
