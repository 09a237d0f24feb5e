"""IKE and ESP over IPv6 (issue 19, "IPv6 outer"): a gateway listening on an IPv6 address and
a client reaching it over an IPv6-only network, by address and by a name with only an AAAA
record. The tunnel carries IPv4 (the pool). Real ``tunvpn gateway`` / ``tunvpn connect``
processes, TUN devices::

    client c 2001:db8:93:1::2 --- router r --- 2001:db8:93:2::2 gateway g (10.78.0.1 on its lo)

Shown: the client's tunnel comes up over IPv6 (phase 1, XAUTH, Mode Config, Quick Mode, ESP in
UDP), pings 10.78.0.1 and moves 16 MiB to it checked by SHA-256; a capture on the client's
link sees only UDP 500/4500 between the two (nothing in clear); ``tunvpn status`` names the
IPv6 endpoint. With a full tunnel the client blocks the host's other IPv6 (it would go around
the tunnel) but pins the gateway's IPv6 address outside the block first, so the tunnel's own
IKE and ESP keep flowing.
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
    private_file,
    read_text,
    run_tunvpn,
    tunvpn_argv,
    tunvpn_env,
    wait_for_line,
)

CLIENT6, ROUTER_C6 = "2001:db8:93:1::2", "2001:db8:93:1::1"
ROUTER_G6, GATEWAY6 = "2001:db8:93:2::1", "2001:db8:93:2::2"
PROTECTED = "10.78.0.1"
POOL = "10.79.0.10-10.79.0.20"
PSK = "ipv6-outer-test-psk-0123456789abcdef"
SIZE = 16 << 20


@dataclass
class Net:
    topo: Topology
    c: str
    g: str
    if_c: str
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if not (shutil.which("dumpcap") and shutil.which("tshark")):
        pytest.skip("needs dumpcap and tshark (wireshark-common, tshark)")
    with Topology() as topo:
        c, r, g = topo.add_ns("c"), topo.add_ns("r"), topo.add_ns("g")
        for ns in (c, r, g):
            enable_ipv6(ns)
        t = topo.tag
        # IPv4 addresses on the links only because Topology.link wants them: no IPv4 route
        # leads from the client to the gateway
        if_c, if_rc = topo.link(c, "192.0.2.2/30", r, "192.0.2.1/30", names=(t + "cr", t + "rc"))
        if_rg, if_g = topo.link(r, "192.0.2.5/30", g, "192.0.2.6/30", names=(t + "rg", t + "gr"))
        for ns, ifname, addr in (
            (c, if_c, CLIENT6),
            (r, if_rc, ROUTER_C6),
            (r, if_rg, ROUTER_G6),
            (g, if_g, GATEWAY6),
        ):
            run_in(ns, ["ip", "-6", "addr", "add", f"{addr}/64", "dev", ifname, "nodad"])
        run_in(r, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        run_in(c, ["ip", "-6", "route", "add", "default", "via", ROUTER_C6])
        run_in(g, ["ip", "-6", "route", "add", "default", "via", ROUTER_G6])
        topo.add_addr(g, f"{PROTECTED}/32")
        hosts = Path("/etc/netns") / c
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{GATEWAY6} gw6.tunvpn.test\n")
        try:
            yield Net(topo, c, g, if_c, tmp_path)
        finally:
            shutil.rmtree(hosts, ignore_errors=True)


def _gateway(net: Net, log: Path, full: bool) -> subprocess.Popen[bytes]:
    psk = private_file(net.tmp / "psk", PSK + "\n")
    users = private_file(net.tmp / "users", "alice:wonderland\n")
    argv = ["gateway", "--listen", GATEWAY6, "--psk-file", str(psk), "--users", str(users)]
    argv += ["--require-xauth", "--pool", POOL, "--tun", "tvgw%d"]
    argv += [] if full else ["--split", f"{PROTECTED}/32"]
    argv += ["--control", str(net.tmp / "gw.sock"), "--id", "@gw6.tunvpn.test"]
    proc = popen_in(net.g, tunvpn_argv(*argv), log, env=tunvpn_env())
    wait_for_line(log, "gateway ready", proc, 30, "the gateway")
    return proc


def _client(net: Net, log: Path, gateway: str) -> subprocess.Popen[bytes]:
    private_file(net.tmp / "psk", PSK + "\n")
    private_file(net.tmp / "pw", "wonderland\n")
    # the client expects the name it connects to as the gateway's identity (remote_id)
    profile = private_file(
        net.tmp / "client.toml",
        f'gateway = "{gateway}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n'
        'remote_id = "@gw6.tunvpn.test"\n',
    )
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "-v"]
    argv += ["--control", str(net.tmp / "client.sock"), "--dns-backend", "none"]
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / "run")}
    proc = popen_in(net.c, tunvpn_argv(*argv), log, env=env)
    wait_for_line(log, "IPsec SA pair(s) up", proc, 30, "the client's tunnel over IPv6")
    return proc


def _udp_peers(pcap: Path) -> set[tuple[str, str, str]]:
    """(source, destination, protocol) of every frame in the capture."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {tuple(line.split("\t")[:3]) for line in out.splitlines() if line.strip()}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("gateway", "full"),
    [(GATEWAY6, False), ("gw6.tunvpn.test", False), (GATEWAY6, True)],
    ids=["address", "aaaa-name", "full-tunnel"],
)
def test_a_tunnel_over_ipv6_carries_16_mib(net: Net, gateway: str, full: bool) -> None:
    procs = [_gateway(net, net.tmp / "gateway.log", full)]
    try:
        log = net.tmp / "client.log"
        procs.append(_client(net, log, gateway))
        assert (
            run_in(net.c, ["ping", "-c", "2", "-i", "0.2", "-W", "2", PROTECTED], check=False).returncode == 0
        ), read_text(log)[-3000:]
        sink = popen_in(net.g, [sys.executable, "-c", SINK, PROTECTED], net.tmp / "sink.log")
        procs.append(sink)
        wait_for(lambda: "listening" in read_text(net.tmp / "sink.log"), 10, "the sink")
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip6 and not icmp6"):
            sent = run_in(
                net.c, [sys.executable, "-c", SOURCE, PROTECTED, str(SIZE)], check=False, timeout=120
            )
        assert sent.returncode == 0, sent.stderr
        size, digest, got_size, got_digest = sent.stdout.split()
        assert (size, digest) == (got_size, got_digest) == (str(SIZE), digest), sent.stdout
        seen = _udp_peers(pcap)
        assert seen, "the capture saw the tunnel's packets"
        strays = {p for p in seen if {p[0], p[1]} != {CLIENT6, GATEWAY6} or p[2] not in ("500", "4500", "")}
        assert not strays, f"not IKE/ESP between client and gateway: {sorted(strays)[:5]}"
        routes = run_in(net.c, ["ip", "-6", "route", "show"]).stdout
        if full:  # the rest of IPv6 blocked, the gateway pinned outside the block
            assert "unreachable ::/1" in routes and f"{GATEWAY6} via {ROUTER_C6}" in routes, routes
        else:
            assert "unreachable" not in routes, routes
        shown = run_tunvpn(net.g, ["status", "--socket", str(net.tmp / "gw.sock"), "--json"])
        [tunnel] = json.loads(shown.stdout)["tunnels"]
        assert CLIENT6 in json.dumps(tunnel), tunnel
    finally:
        for proc in reversed(procs):
            stop_process(proc)
