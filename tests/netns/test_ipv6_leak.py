"""No IPv6 around a full tunnel (issue 19, the classic VPN leak).

The client's network is dual-stack; the gateway offers IPv4 only. Without protection, a full
tunnel carries IPv4 while every IPv6 connection still leaves on the plain network, in clear.
Real ``tunvpn gateway`` / ``tunvpn connect`` processes, TUN devices::

    client c 10.92.1.2, 2001:db8:92:1::2 --- router r --- 10.92.2.2 gateway g
                                               |
                                               +--- 2001:db8:92:9::2 "IPv6 Internet" i

* before connecting, the client reaches the IPv6 host (the path exists);
* connected with a full tunnel (the gateway pushes 0.0.0.0/0): ping6 and a TCP connection to
  the IPv6 host fail at once ("unreachable"), while the router's link-local address still
  answers; a capture on the client's underlay sees no IPv6 packet from it but link-local and
  multicast ones (neighbour discovery);
* SIGTERM: IPv6 works again, no route of ours is left;
* SIGKILL: the block stays (a crash must not open the leak while the host still believes it is
  connected... nor leave the host without IPv6 for good): the next ``tunvpn connect`` lifts it
  first (crash recovery), then blocks anew while connected;
* a split tunnel (the gateway pushes one network) leaves IPv6 alone.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, capture, enable_ipv6, popen_in, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import json_records, private_file, tunvpn_argv, tunvpn_env, wait_for_line

CLIENT, ROUTER_C = "10.92.1.2", "10.92.1.1"
CLIENT6, ROUTER_C6 = "2001:db8:92:1::2", "2001:db8:92:1::1"
ROUTER_G, GATEWAY = "10.92.2.1", "10.92.2.2"
ROUTER_I6, INTERNET6 = "2001:db8:92:9::1", "2001:db8:92:9::2"
POOL = "10.79.0.10-10.79.0.20"
PSK = "ipv6-leak-test-psk-0123456789abcdef"
CONNECT_TCP = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 80), timeout=3)
except OSError as exc:
    print(type(exc).__name__, exc.errno)
else:
    print("connected")
"""


@dataclass
class Net:
    topo: Topology
    c: str
    r: str
    g: str
    i: str
    if_c: str
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if not (shutil.which("dumpcap") and shutil.which("tshark")):
        pytest.skip("needs dumpcap and tshark (wireshark-common, tshark) for the leak capture")
    with Topology() as topo:
        c, r, g, i = (topo.add_ns(role) for role in "crgi")
        for ns in (c, r, i):  # a dual-stack home network; the gateway's side is IPv4 only
            enable_ipv6(ns)
        t = topo.tag
        if_c, if_rc = topo.link(c, f"{CLIENT}/24", r, f"{ROUTER_C}/24", names=(t + "cr", t + "rc"))
        topo.link(r, f"{ROUTER_G}/24", g, f"{GATEWAY}/24", names=(t + "rg", t + "gr"))
        if_ri, if_i = topo.link(r, "10.92.9.1/24", i, "10.92.9.2/24", names=(t + "ri", t + "ir"))
        for ns, ifname, addr in (
            (c, if_c, CLIENT6),
            (r, if_rc, ROUTER_C6),
            (r, if_ri, ROUTER_I6),
            (i, if_i, INTERNET6),
        ):
            run_in(ns, ["ip", "-6", "addr", "add", f"{addr}/64", "dev", ifname, "nodad"])
        run_in(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        run_in(c, ["ip", "route", "add", "default", "via", ROUTER_C])
        run_in(c, ["ip", "-6", "route", "add", "default", "via", ROUTER_C6])
        run_in(i, ["ip", "-6", "route", "add", "default", "via", ROUTER_I6])
        run_in(g, ["ip", "route", "add", "default", "via", ROUTER_G])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield Net(topo, c, r, g, i, if_c, tmp_path)


def _gateway(net: Net, log: Path, *split: str) -> subprocess.Popen[bytes]:
    psk = private_file(net.tmp / "psk", PSK + "\n")
    users = private_file(net.tmp / "users", "alice:wonderland\n")
    argv = ["gateway", "--listen", GATEWAY, "--psk-file", str(psk), "--users", str(users)]
    argv += ["--require-xauth", "--pool", POOL, "--tun", "tvgw%d", "--control", "none"]
    argv += [a for network in split for a in ("--split", network)]
    proc = popen_in(net.g, tunvpn_argv(*argv), log, env=tunvpn_env())
    wait_for_line(log, "gateway ready", proc, 30, "the gateway")
    return proc


def _client(net: Net, log: Path) -> subprocess.Popen[bytes]:
    private_file(net.tmp / "psk", PSK + "\n")
    private_file(net.tmp / "pw", "wonderland\n")
    profile = private_file(
        net.tmp / "client.toml",
        f'gateway = "{GATEWAY}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
    )
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"]
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / "run")}
    proc = popen_in(net.c, tunvpn_argv(*argv), log, env=env)
    wait_for_line(log, "IPsec SA pair(s) up", proc, 30, "the client's tunnel")
    return proc


def _ping6(net: Net, address: str) -> bool:
    return run_in(net.c, ["ping", "-6", "-c", "1", "-W", "2", address], check=False).returncode == 0


def _our_routes(net: Net) -> list[str]:
    out = run_in(net.c, ["ip", "-6", "route", "show", "table", "main"]).stdout
    return [line for line in out.splitlines() if line.startswith("unreachable")]


def _router_link_local(net: Net) -> str:
    out = run_in(
        net.r, ["ip", "-6", "-o", "addr", "show", "dev", net.topo.tag + "rc", "scope", "link"]
    ).stdout
    return out.split("inet6 ")[1].split("/")[0]


def _ipv6_from_client(pcap: Path) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "ipv6.src", "-e", "ipv6.dst", "-Y", "ipv6"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = [tuple(line.split("\t")[:2]) for line in out.splitlines() if "\t" in line]
    return [(src, dst) for src, dst in pairs if src == CLIENT6 or ipaddress.ip_address(src).is_link_local]


def _allowed(dst: str) -> bool:
    address = ipaddress.ip_address(dst)
    return address.is_link_local or address.is_multicast


def test_a_full_tunnel_without_ipv6_blocks_ipv6_and_lifts_the_block_on_exit(net: Net) -> None:
    gateway = _gateway(net, net.tmp / "gateway.log")
    procs = [gateway]
    try:
        assert _ping6(net, INTERNET6), "the IPv6 path exists before connecting"
        log = net.tmp / "client.log"
        client = _client(net, log)
        procs.append(client)
        wait_for(
            lambda: any(r.get("state") == "ipv6-blocked" for r in json_records(log)), 10, "the IPv6 block"
        )
        assert sorted(r.split()[1] for r in _our_routes(net)) == ["8000::/1", "::/1"]
        router_ll = _router_link_local(net)
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip6"):
            assert not _ping6(net, INTERNET6), "IPv6 to the Internet went around the tunnel"
            tcp = run_in(net.c, [sys.executable, "-c", CONNECT_TCP, INTERNET6], check=False)
            assert tcp.stdout.split()[-1] in ("101", "113"), f"not refused at once: {tcp.stdout}"
            assert _ping6(net, f"{router_ll}%{net.if_c}"), "link-local IPv6 stays"
        leaked = [(s, d) for s, d in _ipv6_from_client(pcap) if not _allowed(d)]
        assert not leaked, f"IPv6 from the client on its underlay: {leaked[:5]}"
        assert any(d == router_ll for _, d in _ipv6_from_client(pcap)), "the capture saw the link-local ping"

        stop_process(client)  # SIGTERM: everything lifted
        assert not _our_routes(net)
        assert _ping6(net, INTERNET6), "IPv6 works again after the client exited"

        # a crash leaves the block (and the state file); the next client lifts it first
        client = _client(net, log)
        procs.append(client)
        wait_for(lambda: len(_our_routes(net)) == 2, 10, "the block again")
        client.kill()
        client.wait(10)
        assert len(_our_routes(net)) == 2, "a crash keeps the block until the next run"
        client = _client(net, net.tmp / "client-2.log")
        procs.append(client)
        records = json_records(net.tmp / "client-2.log")
        assert any(r["event"] == "cleanup" and "unreachable ::/1" in r.get("message", "") for r in records), [
            r for r in records if r["event"] == "cleanup"
        ]
        assert len(_our_routes(net)) == 2
        stop_process(client)
        assert not _our_routes(net) and _ping6(net, INTERNET6)
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def test_a_split_tunnel_leaves_ipv6_alone(net: Net) -> None:
    gateway = _gateway(net, net.tmp / "gateway.log", "10.78.0.0/16")
    procs = [gateway]
    try:
        log = net.tmp / "client.log"
        client = _client(net, log)
        procs.append(client)
        assert not _our_routes(net)
        assert _ping6(net, INTERNET6), "a split tunnel must not take the host's IPv6"
        assert not any(r.get("state") == "ipv6-blocked" for r in json_records(log))
    finally:
        for proc in reversed(procs):
            stop_process(proc)
