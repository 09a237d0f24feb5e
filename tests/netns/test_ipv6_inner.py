"""IPv6 inside the tunnel (issue 19, "IPv6 inner"): a gateway with an IPv6 pool and an IPv6
policy beside the IPv4 ones hands its client an IPv6 address and IPv6 DNS (INTERNAL_IP6_ADDRESS,
INTERNAL_IP6_DNS) and pushes the IPv6 policy as a ``CFG_`` set; the client builds one Quick Mode
per family and carries both through the ESP data path. Over an IPv4 outer and over an IPv6
outer. Real ``tunvpn gateway`` / ``tunvpn connect`` processes, TUN devices::

    client c 10.94.1.2, 2001:db8:94:1::2 --- gateway g --- 10.78.0.10, fd78::10 server s
                                             pool 10.79.0.10-20, pool6 fd79::10-fd79::20

Shown: the client gets fd79::10 on its TUN device and two SA pairs (10.78.0.0/24 and
fd78::/64), pings the server over IPv4 and IPv6, and moves 16 MiB to it over IPv6 (TCP,
SHA-256 checked on both ends, through the batched data path with TCPv6 segmentation); the
gateway's status lists the client's IPv6 address; the capture on the underlay has nothing in
clear.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, capture, enable_ipv6, popen_in, run_in, stop_process, wait_for
from tests.helpers.transfer import SINK, SOURCE
from tests.helpers.tunvpn_proc import (
    json_records,
    private_file,
    read_text,
    run_tunvpn,
    tunvpn_argv,
    tunvpn_env,
    wait_for_line,
)

CLIENT, GATEWAY = "10.94.1.2", "10.94.1.1"
CLIENT6, GATEWAY6 = "2001:db8:94:1::2", "2001:db8:94:1::1"
SERVER, SERVER6 = "10.78.0.10", "fd78::10"
PSK = "ipv6-inner-test-psk-0123456789abcdef"
SIZE = 16 << 20

GATEWAY_TOML = """\
[gateway]
listen = "{listen}"
psk_file = "psk"
users_file = "users"
tun = "tvgw%d"
control_socket = "gw.sock"

[network]
pool = "10.79.0.10-10.79.0.20"
pool6 = "fd79::10-fd79::20"
dns = ["10.78.0.53", "fd78::53"]

[[policy]]
name = "lan4"
local = "10.78.0.0/24"

[[policy]]
name = "lan6"
local = "{lan6}"
"""


@dataclass
class Net:
    topo: Topology
    c: str
    g: str
    s: str
    if_c: str
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if not (shutil.which("dumpcap") and shutil.which("tshark")):
        pytest.skip("needs dumpcap and tshark (wireshark-common, tshark)")
    with Topology() as topo:
        c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
        for ns in (c, g, s):
            enable_ipv6(ns)
        t = topo.tag
        if_c, if_gc = topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24", names=(t + "cg", t + "gc"))
        if_gs, if_s = topo.link(g, "10.78.0.1/24", s, f"{SERVER}/24", names=(t + "gs", t + "sg"))
        for ns, ifname, addr in (
            (c, if_c, f"{CLIENT6}/64"),
            (g, if_gc, f"{GATEWAY6}/64"),
            (g, if_gs, "fd78::1/64"),
            (s, if_s, f"{SERVER6}/64"),
        ):
            run_in(ns, ["ip", "-6", "addr", "add", addr, "dev", ifname, "nodad"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(s, ["ip", "-6", "route", "add", "default", "via", "fd78::1"])
        yield Net(topo, c, g, s, if_c, tmp_path)


@pytest.mark.parametrize(
    ("outer", "lan6"),
    [(GATEWAY, "fd78::/64"), (GATEWAY6, "fd78::/64"), (GATEWAY6, "::/0")],
    ids=["ipv4-outer", "ipv6-outer", "ipv6-outer-full-ipv6-tunnel"],
)
def test_a_dual_stack_tunnel_carries_ipv6_and_ipv4(net: Net, outer: str, lan6: str) -> None:
    private_file(net.tmp / "psk", PSK + "\n")
    private_file(net.tmp / "users", "alice:wonderland\n")
    private_file(net.tmp / "pw", "wonderland\n")
    (net.tmp / "gateway.toml").write_text(GATEWAY_TOML.format(listen=outer, lan6=lan6))
    gw_log = net.tmp / "gateway.log"
    gateway = popen_in(
        net.g, tunvpn_argv("gateway", "-c", str(net.tmp / "gateway.toml"), "-v"), gw_log, env=tunvpn_env()
    )
    procs = [gateway]
    try:
        wait_for_line(gw_log, "gateway ready", gateway, 30, "the gateway")
        profile = private_file(
            net.tmp / "client.toml",
            f'gateway = "{outer}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
        )
        log = net.tmp / "client.log"
        argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "-v", "--dns-backend", "none"]
        argv += ["--control", "none"]
        env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / "run")}
        client = popen_in(net.c, tunvpn_argv(*argv), log, env=env)
        procs.append(client)
        wait_for_line(log, "2 IPsec SA pair(s) up", client, 30, "both families' SAs")
        [received] = [r for r in json_records(log) if r["event"] == "modecfg" and r["state"] == "received"]
        assert (received["address"], received["address6"]) == ("10.79.0.10", "fd79::10"), received
        assert received["dns6"] == ["fd78::53"] and received["dns"] == ["10.78.0.53"], received
        spis = [r for r in json_records(log) if r["event"] == "quick" and r["state"] == "established"]
        assert sorted((r["local_ts"], r["remote_ts"]) for r in spis) == [
            ("10.79.0.10/32", "10.78.0.0/24"),
            ("fd79::10/128", lan6),
        ], spis
        addresses = run_in(net.c, ["ip", "-6", "addr", "show", "scope", "global"]).stdout
        assert "inet6 fd79::10/128" in addresses, addresses
        routes = run_in(net.c, ["ip", "-6", "route", "show"]).stdout
        assert "unreachable" not in routes, routes  # IPv6 goes into the tunnel: nothing to block
        if lan6 == "::/0":  # all of IPv6 into the tunnel, the gateway's own address pinned outside
            assert "::/1 dev tvcl" in routes and "8000::/1 dev tvcl" in routes, routes
            assert f"{GATEWAY6} dev" in routes, routes
        for address in (SERVER6, SERVER):
            ping = run_in(net.c, ["ping", "-c", "2", "-i", "0.2", "-W", "2", address], check=False)
            assert ping.returncode == 0, ping.stdout + read_text(log)[-3000:]

        sink = popen_in(net.s, [sys.executable, "-c", SINK, SERVER6], net.tmp / "sink.log")
        procs.append(sink)
        wait_for(lambda: "listening" in read_text(net.tmp / "sink.log"), 10, "the sink")
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="tcp"):
            sent = run_in(net.c, [sys.executable, "-c", SOURCE, SERVER6, str(SIZE)], check=False, timeout=120)
        assert sent.returncode == 0, sent.stderr
        size, digest, got_size, got_digest = sent.stdout.split()
        assert (size, digest) == (got_size, got_digest) == (str(SIZE), digest), sent.stdout
        clear = subprocess.run(
            ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert not clear.stdout.split(), "TCP in clear on the underlay"

        shown = run_tunvpn(net.g, ["status", "--socket", str(net.tmp / "gw.sock"), "--json"])
        [tunnel] = json.loads(shown.stdout)["tunnels"]
        assert "fd79::10" in json.dumps(tunnel), tunnel
    finally:
        for proc in reversed(procs):
            stop_process(proc)
