"""Issue 18, first slice: two tunvpn gateways build a site-to-site tunnel from their ``[[site]]``
blocks (per-site pre-shared key, no XAUTH, net-to-net Quick Modes) and route between the
sites; a client of site A reaches a server of site B through both. Real ``tunvpn gateway`` and
``tunvpn connect`` processes, TUN devices::

    sA 10.78.0.10 -- gA 198.18.1.2 --- Internet i --- 198.18.2.2 gB -- 10.88.0.10 sB
                      | (10.78.0.1, 192.168.1.1)   |            (10.88.0.1)
    cA 192.168.1.2 ---+  pool 10.79.0.10-50        |
                         (in 10.79.0.0/24)         198.18.3.2 r (NAT) 192.168.5.1 -- 192.168.5.2 cR

gA starts the tunnel (``initiate = true``) and learns gB's networks from gB over Mode Config
(its ``[[site]]`` lists none); gB waits for it (``initiate = false``). Shown: both
gateways' site SAs (10.78.0.0/24 and 10.79.0.0/24 to 10.88.0.0/24), server-to-server pings,
alice (a client of gA, whose policy ``site-b`` gives her 10.88.0.0/24) pings sB and moves
16 MiB to it checked by SHA-256; gB killed and restarted: gA finds the tunnel gone and builds
it again, and the servers ping each other again; ``tunvpn status`` lists the site; a reload
without the site takes the tunnel down at once, one with it back builds it again.

Then the seed's introduction between gateways (paragraph 0043): gA's ``[[site]]`` gets
``introduce``, and alice connects from cR, behind a home router of her own (r, masquerading):
gA introduces her to gB (its address, gB's networks, a pair secret) and tells gB about her over
the site tunnel; she builds a tunnel to gB directly, and 16 MiB to sB pass while a capture on
gA's Internet link sees almost nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, capture, frame_bytes, popen_in, run_in, stop_process, wait_for
from tests.helpers.transfer import SINK, SOURCE
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    wait_for_line,
)

GA, GB = "198.18.1.2", "198.18.2.2"
SA, SB = "10.78.0.10", "10.88.0.10"
GROUP_PSK = "sites-e2e-group-psk-9e2d41"
SITE_PSK = "sites-e2e-site-key-only-for-a-and-b-4c1f"
SIZE = 16 << 20

GATEWAY_A = f"""\
[gateway]
listen = "{GA}"
psk_file = "gw.psk"
users_file = "users"
tun = "tvga%d"
control_socket = "ga.sock"

[network]
pool = "10.79.0.10-10.79.0.50"

[[policy]]
name = "site-a"
local = "10.78.0.0/24"

[[policy]]
name = "site-b"
local = "10.88.0.0/24"

[[site]]
name = "b"
address = "gb.sites.test"
id = "{GB}"
psk_file = "site.psk"
local = ["10.78.0.0/24", "10.79.0.0/24"]
"""
"""Site A starts the tunnel to gB by name (gA's namespace resolves it from /etc/netns/NS/hosts,
which ``ip netns exec`` puts over /etc/hosts) and lists no networks of B: it learns them from
gB over Mode Config, as a client learns its policies."""

GATEWAY_B = f"""\
[gateway]
listen = "{GB}"
psk_file = "gw.psk"
tun = "tvgb%d"
control_socket = "gb.sock"

[[site]]
name = "a"
address = "{GA}"
psk_file = "site.psk"
networks = ["10.78.0.0/24", "10.79.0.0/24"]
local = ["10.88.0.0/24"]
initiate = false
"""


HOME_NAT = """\
table ip tvnat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname "%s" masquerade
  }
}
"""
"""Alice's home router (r): a masquerading NAT, as most are."""


@dataclass
class Net:
    topo: Topology
    ns: dict[str, str]
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        ns = {role: topo.add_ns(role) for role in ("ga", "gb", "sa", "sb", "ca", "i", "r", "cr")}
        t = topo.tag
        topo.link(ns["ga"], f"{GA}/24", ns["i"], "198.18.1.1/24", names=(t + "ga", t + "ia"))
        topo.link(ns["gb"], f"{GB}/24", ns["i"], "198.18.2.1/24", names=(t + "gb", t + "ib"))
        topo.link(ns["ga"], "10.78.0.1/24", ns["sa"], f"{SA}/24", names=(t + "gas", t + "sa"))
        topo.link(ns["gb"], "10.88.0.1/24", ns["sb"], f"{SB}/24", names=(t + "gbs", t + "sb"))
        topo.link(ns["ga"], "192.168.1.1/24", ns["ca"], "192.168.1.2/24", names=(t + "gac", t + "ca"))
        topo.link(ns["r"], "198.18.3.2/24", ns["i"], "198.18.3.1/24", names=(t + "r", t + "ir"))
        topo.link(ns["r"], "192.168.5.1/24", ns["cr"], "192.168.5.2/24", names=(t + "rc", t + "cr"))
        hops = (("sa", "10.78.0.1"), ("sb", "10.88.0.1"), ("ca", "192.168.1.1"), ("cr", "192.168.5.1"))
        for host, router in (*hops, ("ga", "198.18.1.1"), ("gb", "198.18.2.1"), ("r", "198.18.3.1")):
            run_in(ns[host], ["ip", "route", "add", "default", "via", router])
        if shutil.which("nft"):
            subprocess.run(
                ["ip", "netns", "exec", ns["r"], "nft", "-f", "-"],
                input=HOME_NAT % (t + "r"),
                text=True,
                check=True,
            )
        for router in ("ga", "gb", "i", "r"):
            run_in(ns[router], ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        hosts = Path("/etc/netns") / ns["ga"]
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{GB} gb.sites.test\n")
        for side, text in (("a", GATEWAY_A), ("b", GATEWAY_B)):
            d = tmp_path / side
            d.mkdir(mode=0o700)
            private_file(d / "gw.psk", GROUP_PSK + "\n")
            private_file(d / "site.psk", SITE_PSK + "\n")
            private_file(d / "users", "alice:alice-pw\n")
            (d / "gateway.toml").write_text(text)
        private_file(tmp_path / "alice.pw", "alice-pw\n")
        private_file(tmp_path / "client.psk", GROUP_PSK + "\n")
        (tmp_path / "alice.toml").write_text(
            f'gateway = "{GA}"\npsk_file = "client.psk"\nuser = "alice"\npassword_file = "alice.pw"\n'
        )
        try:
            yield Net(topo, ns, tmp_path)
        finally:
            shutil.rmtree(hosts, ignore_errors=True)


def start_gateway(net: Net, side: str) -> tuple[subprocess.Popen[bytes], Path]:
    d = net.tmp / side
    log = d / f"gateway-{time.monotonic_ns()}.log"
    gw = popen_tunvpn(net.ns["g" + side], ["gateway", "-c", str(d / "gateway.toml"), "-v"], log)
    wait_for_line(log, "gateway ready", gw, 20, f"gateway {side}")
    return gw, log


def ping(net: Net, host: str, address: str, count: int = 2) -> bool:
    out = run_in(net.ns[host], ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address], check=False)
    return out.returncode == 0


def start_sites(net: Net, procs: list[subprocess.Popen[bytes]]) -> tuple[Path, Path]:
    """gB, then gA, which starts the site tunnel: returns their logs once gA's two site SAs are up."""
    gb, gb_log = start_gateway(net, "b")
    procs.append(gb)
    ga, ga_log = start_gateway(net, "a")
    procs.append(ga)
    wait_for(lambda: read_text(ga_log).count("site b: 10.") >= 2, 20, "gA's two site SAs")
    return ga_log, gb_log


def send_to_sb(net: Net, host: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """16 MiB from ``host`` to sB's sink, checked by SHA-256 on both ends."""
    sink_log = net.tmp / f"sink-{time.monotonic_ns()}.log"
    sink = popen_in(net.ns["sb"], [sys.executable, "-c", SINK, SB], sink_log)
    procs.append(sink)
    wait_for(lambda: "listening" in read_text(sink_log), 10, "the sink")
    sent = run_in(net.ns[host], [sys.executable, "-c", SOURCE, SB, str(SIZE)], check=False, timeout=120)
    assert sent.returncode == 0, sent.stderr
    size, digest, got_size, got_digest = sent.stdout.split()
    assert (size, digest) == (got_size, got_digest) == (str(SIZE), digest), sent.stdout


def test_two_gateways_join_their_sites_and_a_client_of_one_reaches_the_other(net: Net) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ga_log, gb_log = start_sites(net, procs)
        gb = procs[0]
        assert f"site address gb.sites.test is {GB}" in read_text(ga_log)
        assert "site a: phase 1 up" in read_text(gb_log), read_text(gb_log)[-3000:]
        assert "site a: pushed 2 sets" in read_text(gb_log), read_text(gb_log)[-3000:]
        assert "site b: learned its networks 10.88.0.0/24" in read_text(ga_log), read_text(ga_log)[-3000:]
        assert "XAUTH" not in read_text(gb_log).split("site a: phase 1 up")[0].split("ready")[-1]
        wait_for(lambda: ping(net, "sa", SB, 1), 15, "sA to sB across the sites")
        assert ping(net, "sb", SA), "sB to sA"

        # alice, a client of gA, reaches site B's server through gA and the site tunnel
        log = net.tmp / "alice.log"
        argv = ["connect", "-c", str(net.tmp / "alice.toml"), "--json", "--tun", "tvcl%d"]
        argv += ["--control", "none", "--dns-backend", "none"]
        alice = popen_tunvpn(net.ns["ca"], argv, log)
        procs.append(alice)
        wait_for_line(log, "IPsec SA pair(s) up", alice, 30, "alice's tunnel")
        assert ping(net, "ca", SB, 3), read_text(log)[-2000:]
        send_to_sb(net, "ca", procs)

        shown = run_tunvpn(net.ns["ga"], ["status", "--socket", str(net.tmp / "a" / "ga.sock"), "--json"])
        [site] = json.loads(shown.stdout)["sites"]
        assert (site["name"], site["state"], site["sas"]) == ("b", "up", 2), site
        assert site["networks"] == ["10.88.0.0/24"], site  # learned from gB
        text = run_tunvpn(net.ns["ga"], ["status", "--socket", str(net.tmp / "a" / "ga.sock")]).stdout
        assert "site b gb.sites.test (198.18.2.2): up, networks 10.88.0.0/24, 2 SA pair(s)" in text, text

        # gB dies and comes back: gA finds its site tunnel gone and builds it again
        gb.kill()
        gb.wait(5)
        gb, gb_log = start_gateway(net, "b")
        procs.append(gb)
        wait_for(lambda: ping(net, "sa", SB, 1), 60, "sA to sB after gB's restart")
        assert "site a: phase 1 up" in read_text(gb_log)

        # a reload without the site takes its tunnel down at once; with it back, it comes up
        toml = net.tmp / "a" / "gateway.toml"
        toml.write_text(GATEWAY_A.split("[[site]]")[0])
        reload = run_tunvpn(net.ns["ga"], ["reload", "--socket", str(net.tmp / "a" / "ga.sock")])
        assert reload.returncode == 0 and "site b removed" in reload.stdout, reload.stdout + reload.stderr
        assert not ping(net, "sa", SB, 1), "sB still answers without the site"
        toml.write_text(GATEWAY_A)
        reload = run_tunvpn(net.ns["ga"], ["reload", "--socket", str(net.tmp / "a" / "ga.sock")])
        assert "site b added" in reload.stdout, reload.stdout
        wait_for(lambda: ping(net, "sa", SB, 1), 20, "sA to sB after the site came back")
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    for side in ("a", "b"):
        for path in (net.tmp / side).glob("gateway-*.log"):
            assert SITE_PSK not in read_text(path) and GROUP_PSK not in read_text(path)


def test_a_client_introduced_to_site_b_reaches_it_directly_not_through_its_own_gateway(net: Net) -> None:
    if not all(shutil.which(tool) for tool in ("nft", "dumpcap", "tshark")):
        pytest.skip("needs nft (nftables), dumpcap and tshark (wireshark-common, tshark)")
    (net.tmp / "a" / "gateway.toml").write_text(GATEWAY_A + 'introduce = ["*"]\n')
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ga_log, gb_log = start_sites(net, procs)
        log = net.tmp / "alice-home.log"
        argv = ["connect", "-c", str(net.tmp / "alice.toml"), "--json", "--tun", "tvcl%d"]
        argv += ["--control", str(net.tmp / "alice.sock"), "--dns-backend", "none"]
        alice = popen_tunvpn(net.ns["cr"], argv, log)
        procs.append(alice)
        wait_for_line(log, "IPsec SA pair(s) up", alice, 30, "alice's tunnel with gA")
        wait_for_line(log, '"state": "direct"', alice, 30, "alice's direct tunnel with gB")
        [intro] = [r for r in json_records(log) if r["event"] == "peer" and r["state"] == "introduced"]
        assert intro["name"] == "b" and intro["endpoint"] == f"{GB}:4500", intro
        assert "site a: its gateway introduced 1 client(s) to us (alice)" in read_text(gb_log)
        assert "site b: its gateway knows 1 of our clients" in read_text(ga_log), read_text(ga_log)[-3000:]
        assert "of site a: 10.88.0.0/24 === 10.79.0." in read_text(gb_log), read_text(gb_log)[-3000:]
        assert ping(net, "cr", SB, 3), read_text(log)[-3000:]

        # 16 MiB from alice to sB, checked by SHA-256, while gA's Internet link is watched
        pcap = net.tmp / "ga.pcap"
        with capture(net.ns["ga"], net.topo.tag + "ga", pcap, bpf="udp"):
            send_to_sb(net, "cr", procs)
        through_a = frame_bytes(pcap)
        assert through_a < SIZE // 100, f"{through_a} octets of UDP crossed gA's Internet link"

        shown = run_tunvpn(net.ns["cr"], ["status", "--socket", str(net.tmp / "alice.sock"), "--json"])
        [peer] = json.loads(shown.stdout)["tunnels"][0]["peers"]
        assert peer["path"] == "direct" and peer["remote"] == f"{GB}:4500", peer
        assert peer["bytes_out"] >= SIZE, peer
        shown = run_tunvpn(net.ns["gb"], ["status", "--socket", str(net.tmp / "b" / "gb.sock"), "--json"])
        [site] = json.loads(shown.stdout)["sites"]
        [client] = site["clients"]
        assert (client["name"], client["state"], client["endpoint"]) == ("alice", "up", "198.18.3.2:4500"), (
            site
        )
        text = run_tunvpn(net.ns["gb"], ["status", "--socket", str(net.tmp / "b" / "gb.sock")]).stdout
        assert "  client alice 10.79.0." in text and "at 198.18.3.2:4500: up, 1 SA pair(s)" in text, text
        text = run_tunvpn(net.ns["ga"], ["status", "--socket", str(net.tmp / "a" / "ga.sock")]).stdout
        assert "1 of our clients introduced" in text, text

        # alice leaves gA: gB is told at once and forgets her
        stop_process(alice)

        def forgotten() -> bool:
            shown = run_tunvpn(net.ns["gb"], ["status", "--socket", str(net.tmp / "b" / "gb.sock"), "--json"])
            return "clients" not in json.loads(shown.stdout)["sites"][0]

        wait_for(forgotten, 15, "gB forgetting alice")
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    for side in ("a", "b"):
        for path in (net.tmp / side).glob("gateway-*.log"):
            assert SITE_PSK not in read_text(path) and GROUP_PSK not in read_text(path)
