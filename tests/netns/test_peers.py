"""Issue 17 end to end: the gateway introduces two clients behind two different NATs, and they
build a direct tunnel that carries their traffic without the gateway. Real ``tunvpn gateway``
and ``tunvpn connect`` processes, TUN devices, nftables masquerade::

    alice a 192.168.1.2 -- 192.168.1.1 NAT-A na 198.18.1.2 --+
    carol k 192.168.3.2 --/ (192.168.3.1)                      |
                                                    Internet i 198.18.{1,2,3}.1
    bob   b 192.168.2.2 -- 192.168.2.1 NAT-B nb 198.18.2.2 --+
                                                               |
                                    gateway g 198.18.3.2 -----+   (10.78.0.1 on its lo)

Both NATs masquerade (endpoint-independent mapping, address- and port-dependent filtering:
what Linux does by default, as most home routers). ``[[peering]]`` pairs group eng (alice and
bob); carol is outside it.

Shown: alice and bob are introduced, build a direct tunnel (phase 1 with the pair's secret,
the pair's Quick Mode), ping each other by their assigned addresses and move 16 MiB checked by
SHA-256, while a capture on the gateway's link sees almost nothing (keepalives and DPD, not the
16 MiB); carol gets no introduction (a client answers nobody it was not introduced to:
tests/loopback/test_introductions.py); a reload without the rule takes both direct tunnels
down at once (SAs and routes), with it back they meet again; when bob leaves, alice's direct
SAs and the route to bob go at once.

The answering side's NAT-keepalives carry a small IP TTL (tunvpn.client.peerlinks.PUNCH_TTL):
with the normal TTL the first of them reaches NAT-A before alice's first message leaves, and
NAT-A then maps alice's message to another port, which NAT-B drops (seen before that change).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    tunvpn_argv,
    tunvpn_env,
    wait_for_line,
)

GATEWAY = "198.18.3.2"
PROTECTED = "10.78.0.1"
PSK = "peers-e2e-group-psk-5d1c0b7a"
SIZE = 16 << 20

GATEWAY_TOML = f"""\
[gateway]
listen = "{GATEWAY}"
psk_file = "gw.psk"
users_file = "users"
tun = "tvgw%d"

[network]
pool = "10.79.0.10-10.79.0.50"

[groups]
eng = ["alice", "bob"]
ops = ["carol"]

[[policy]]
name = "intranet"
local = "{PROTECTED}/32"

[[peering]]
name = "eng"
from = "eng"
to = "eng"
esp = "aes128gcm16"
pfs = "ecp256"
lifetime = "1h"
"""

NAT = """\
table ip tvnat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname "%s" masquerade
  }
}
"""
RANDOM_NAT = NAT.replace("masquerade", "masquerade fully-random")
"""A NAT that maps each new flow to a random port (iptables' --random-fully): the port the
gateway saw is not the one a peer would have to send to."""


@dataclass
class Net:
    topo: Topology
    ns: dict[str, str]
    gw_if: str
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    os.chmod(tmp_path, 0o700)
    if not all(shutil.which(tool) for tool in ("nft", "dumpcap", "conntrack")):
        pytest.skip("needs nft (nftables), dumpcap (wireshark-common) and conntrack")
    with Topology() as topo:
        ns = {role: topo.add_ns(role) for role in ("a", "k", "na", "b", "nb", "i", "g")}
        t = topo.tag
        topo.link(ns["a"], "192.168.1.2/24", ns["na"], "192.168.1.1/24", names=(t + "a", t + "naa"))
        topo.link(ns["k"], "192.168.3.2/24", ns["na"], "192.168.3.1/24", names=(t + "k", t + "nak"))
        topo.link(ns["b"], "192.168.2.2/24", ns["nb"], "192.168.2.1/24", names=(t + "b", t + "nbb"))
        topo.link(ns["na"], "198.18.1.2/24", ns["i"], "198.18.1.1/24", names=(t + "nap", t + "ia"))
        topo.link(ns["nb"], "198.18.2.2/24", ns["i"], "198.18.2.1/24", names=(t + "nbp", t + "ib"))
        gw_if, _ = topo.link(ns["g"], f"{GATEWAY}/24", ns["i"], "198.18.3.1/24", names=(t + "g", t + "ig"))
        topo.add_addr(ns["g"], f"{PROTECTED}/32")
        for host, router in (("a", "192.168.1.1"), ("k", "192.168.3.1"), ("b", "192.168.2.1")):
            run_in(ns[host], ["ip", "route", "add", "default", "via", router])
        run_in(ns["na"], ["ip", "route", "add", "default", "via", "198.18.1.1"])
        run_in(ns["nb"], ["ip", "route", "add", "default", "via", "198.18.2.1"])
        run_in(ns["g"], ["ip", "route", "add", "default", "via", "198.18.3.1"])
        for router in ("na", "nb", "i", "g"):
            run_in(ns[router], ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for router, public in (("na", t + "nap"), ("nb", t + "nbp")):
            subprocess.run(
                ["ip", "netns", "exec", ns[router], "nft", "-f", "-"],
                input=NAT % public,
                text=True,
                check=True,
            )
        private_file(tmp_path / "gw.psk", PSK + "\n")
        private_file(tmp_path / "client.psk", PSK + "\n")
        private_file(tmp_path / "users", "alice:alice-pw\nbob:bob-pw\ncarol:carol-pw\n")
        for user in ("alice", "bob", "carol"):
            private_file(tmp_path / f"{user}.pw", f"{user}-pw\n")
            (tmp_path / f"{user}.toml").write_text(
                f'gateway = "{GATEWAY}"\npsk_file = "client.psk"\nuser = "{user}"\n'
                f'password_file = "{user}.pw"\n'
            )
        (tmp_path / "gateway.toml").write_text(GATEWAY_TOML)
        yield Net(topo, ns, gw_if, tmp_path)


def set_nat(net: Net, router: str, rules: str) -> None:
    """Replace ``router``'s NAT rules and forget its mappings (conntrack)."""
    public = net.topo.tag + router + "p"
    run_in(net.ns[router], ["nft", "delete", "table", "ip", "tvnat"], check=False)
    subprocess.run(
        ["ip", "netns", "exec", net.ns[router], "nft", "-f", "-"], input=rules % public, text=True, check=True
    )
    run_in(net.ns[router], ["conntrack", "-F"], check=False)


def start_gateway(net: Net) -> subprocess.Popen[bytes]:
    log = net.tmp / "gateway.log"
    argv = ["gateway", "-c", str(net.tmp / "gateway.toml"), "--control", str(net.tmp / "gw.sock"), "-v"]
    gw = popen_tunvpn(net.ns["g"], argv, log)
    wait_for_line(log, "gateway ready", gw, 20, "the gateway")
    return gw


def start_client(net: Net, user: str, host: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = net.tmp / f"{user}.log"
    argv = ["connect", "-c", str(net.tmp / f"{user}.toml"), "--json", "--tun", "tvcl%d"]
    argv += ["--control", str(net.tmp / f"{user}.sock"), "--dns-backend", "none", "-v"]
    # each client its own run directory: both use TUN name tvcl0 (in their own namespaces), and
    # the crash-recovery state of a full tunnel is kept per TUN name
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / f"{user}-run")}
    return popen_in(net.ns[host], tunvpn_argv(*argv), log, env=env), log


def records(log: Path, event: str, state: str | None = None) -> list[dict]:
    return [r for r in json_records(log) if r["event"] == event and (state is None or r["state"] == state)]


def address_of(log: Path) -> str:
    [received] = [r for r in records(log, "modecfg", "received") if r.get("address")][:1]
    return str(received["address"])


def test_two_clients_behind_two_nats_talk_directly(net: Net) -> None:
    gw = start_gateway(net)
    procs = [gw]
    try:
        alice, alice_log = start_client(net, "alice", "a")
        procs.append(alice)
        wait_for_line(alice_log, "IPsec SA pair(s) up", alice, 30, "alice's tunnel")
        bob, bob_log = start_client(net, "bob", "b")
        procs.append(bob)
        wait_for_line(bob_log, "IPsec SA pair(s) up", bob, 30, "bob's tunnel")
        for proc, log in ((alice, alice_log), (bob, bob_log)):
            wait_for_line(log, '"state": "direct"', proc, 30, "a direct tunnel")
        a_addr, b_addr = address_of(alice_log), address_of(bob_log)
        [intro] = records(alice_log, "peer", "introduced")
        assert intro["name"] == "bob" and intro["endpoint"] == "198.18.2.2:4500", intro
        [direct] = records(alice_log, "peer", "direct")
        assert direct["name"] == "bob" and direct["address"] == b_addr

        ping = run_in(net.ns["a"], ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", b_addr], check=False)
        assert ping.returncode == 0 and "3 received" in ping.stdout, (
            ping.stdout + read_text(alice_log)[-3000:]
        )
        back = run_in(net.ns["b"], ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", a_addr], check=False)
        assert back.returncode == 0, back.stdout

        # 16 MiB from alice to bob, checked by SHA-256, while the gateway's link is watched
        pcap = net.tmp / "gateway.pcap"
        with capture(net.ns["g"], net.gw_if, pcap, bpf="udp"):
            sent, got = _transfer(net, "a", b_addr, SIZE, "sink")
        assert sent == got and sent.startswith(f"{SIZE} "), (sent, got)
        through_gateway = frame_bytes(pcap)
        assert through_gateway < SIZE // 100, f"{through_gateway} octets of UDP reached the gateway's link"
        # tunvpn status: the peer, its path and what its SA pair carried
        shown = run_tunvpn(net.ns["a"], ["status", "--socket", str(net.tmp / "alice.sock"), "--json"])
        assert shown.returncode == 0, shown.stderr
        [peer] = json.loads(shown.stdout)["tunnels"][0]["peers"]
        assert peer["path"] == "direct" and peer["remote"] == "198.18.2.2:4500", peer
        assert peer["bytes_out"] >= SIZE and peer["packets_in"] > 0, peer
        text = run_tunvpn(net.ns["a"], ["status", "--socket", str(net.tmp / "alice.sock")]).stdout
        assert f"peer bob {b_addr} at 198.18.2.2:4500: direct (initiator) via 198.18.2.2:4500" in text, text

        # carol (outside the peering rule, behind the same NAT as alice) meets nobody, and a
        # phase 1 she starts toward alice's public endpoint gets nothing
        carol, carol_log = start_client(net, "carol", "k")
        procs.append(carol)
        wait_for_line(carol_log, "IPsec SA pair(s) up", carol, 30, "carol's tunnel")
        assert not records(carol_log, "peer")
        assert [r["name"] for r in records(alice_log, "peer", "introduced")] == ["bob"]

        # the peering rule removed by a reload: both lose their direct SAs and routes at once;
        # put back, they meet again with a new pair secret
        (net.tmp / "gateway.toml").write_text(GATEWAY_TOML.split("[[peering]]")[0])
        reload = run_tunvpn(net.ns["g"], ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert reload.returncode == 0, reload.stderr
        for log in (alice_log, bob_log):
            wait_for(lambda log=log: records(log, "peer", "closed"), 15, "the direct tunnel closed")
        for host, peer in (("a", b_addr), ("b", a_addr)):
            left = run_in(net.ns[host], ["ip", "-4", "route", "show", peer], check=True).stdout
            assert not left.strip(), f"a route to {peer} is left in {host}: {left}"
        lost = run_in(net.ns["a"], ["ping", "-n", "-c", "1", "-W", "1", b_addr], check=False)
        assert lost.returncode != 0, "bob still answers without a peering rule"
        (net.tmp / "gateway.toml").write_text(GATEWAY_TOML)
        reload = run_tunvpn(net.ns["g"], ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert reload.returncode == 0, reload.stderr
        wait_for(lambda: len(records(alice_log, "peer", "direct")) == 2, 20, "the direct tunnel again")
        again = run_in(net.ns["a"], ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", b_addr], check=False)
        assert again.returncode == 0, again.stdout

        # bob leaves: alice's direct SAs and her route to him go at once
        stop_process(bob)
        wait_for(lambda: len(records(alice_log, "peer", "gone")) == 2, 15, "alice told that bob left")
        wait_for(lambda: len(records(alice_log, "peer", "closed")) == 2, 15, "alice's direct tunnel closed")
        routes = run_in(net.ns["a"], ["ip", "-4", "route", "show", b_addr], check=True).stdout
        assert not routes.strip(), f"a route to bob is left: {routes}"
        assert alice.poll() is None, read_text(alice_log)[-3000:]
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    for log in (alice_log, bob_log, net.tmp / "gateway.log"):
        text = read_text(log)
        assert PSK not in text and "alice-pw" not in text and "bob-pw" not in text


def _transfer(net: Net, src: str, dst_addr: str, size: int, name: str) -> tuple[str, str]:
    sink = popen_in(
        net.ns[{"a": "b", "b": "a"}[src]], [sys.executable, "-c", SINK, dst_addr], net.tmp / f"{name}.log"
    )
    try:
        wait_for(lambda: "listening" in read_text(net.tmp / f"{name}.log"), 10, "the sink")
        sent = run_in(
            net.ns[src], [sys.executable, "-c", SOURCE, dst_addr, str(size)], check=False, timeout=120
        )
    finally:
        stop_process(sink)
    assert sent.returncode == 0, sent.stderr
    size_sent, digest, got_size, got_digest = sent.stdout.split()
    return f"{size_sent} {digest}", f"{got_size} {got_digest}"


def test_behind_a_nat_that_maps_each_flow_anew_traffic_is_relayed_then_goes_direct(net: Net) -> None:
    """bob's NAT maps every flow to a random port: alice's messages to the port the gateway saw
    never get in. After RELAY_AFTER both make a relay Quick Mode with the gateway, which
    forwards between them: pings and 4 MiB (SHA-256 checked) arrive, through the gateway. When
    the NAT is relaxed (plain masquerade, its mappings flushed), bob's next packet to the
    gateway shows his new endpoint, the gateway tells alice, the direct tunnel comes up and
    the relay SAs go: the next 4 MiB do not pass the gateway."""
    set_nat(net, "nb", RANDOM_NAT)
    size = 4 << 20
    gw = start_gateway(net)
    procs = [gw]
    try:
        alice, alice_log = start_client(net, "alice", "a")
        procs.append(alice)
        wait_for_line(alice_log, "IPsec SA pair(s) up", alice, 30, "alice's tunnel")
        bob, bob_log = start_client(net, "bob", "b")
        procs.append(bob)
        for proc, log in ((alice, alice_log), (bob, bob_log)):
            wait_for_line(log, '"state": "relayed"', proc, 30, "a relay through the gateway")
        a_addr, b_addr = address_of(alice_log), address_of(bob_log)
        assert not records(alice_log, "peer", "direct")
        ping = run_in(net.ns["a"], ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", b_addr], check=False)
        assert ping.returncode == 0, ping.stdout + read_text(alice_log)[-3000:]
        pcap = net.tmp / "relayed.pcap"
        with capture(net.ns["g"], net.gw_if, pcap, bpf="udp"):
            sent, got = _transfer(net, "a", b_addr, size, "relayed-sink")
        assert sent == got, (sent, got)
        assert frame_bytes(pcap) > 2 * size, "the relayed transfer did not pass the gateway (in and out)"

        set_nat(net, "nb", NAT)  # relaxed, its mappings forgotten
        run_in(net.ns["b"], ["ping", "-n", "-c", "2", "-W", "2", PROTECTED], check=False)  # bob's ESP remaps
        for proc, log in ((alice, alice_log), (bob, bob_log)):
            wait_for_line(log, '"state": "direct"', proc, 40, "the direct tunnel after the NAT was relaxed")
        moved = [r for r in records(alice_log, "peer", "connecting")]
        assert moved, "alice never started toward bob's new endpoint"
        pcap = net.tmp / "direct.pcap"
        with capture(net.ns["g"], net.gw_if, pcap, bpf="udp"):
            sent, got = _transfer(net, "a", b_addr, size, "direct-sink")
        assert sent == got, (sent, got)
        assert frame_bytes(pcap) < size // 20, (
            "the transfer still passed the gateway after the direct tunnel came up"
        )
        back = run_in(net.ns["b"], ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", a_addr], check=False)
        assert back.returncode == 0, back.stdout
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def test_full_tunnel_clients_keep_their_peers_outside_the_tunnel_and_talk_directly(net: Net) -> None:
    """A gateway that pushes 0.0.0.0/0: each client pins the gateway (issue 15) and its
    introduced peer's endpoint outside the TUN device, so the direct tunnel still goes on the
    underlay (else it would loop into the tunnel to the gateway and only the relay would work);
    the pins go when the peer does."""
    (net.tmp / "gateway.toml").write_text(
        GATEWAY_TOML.replace(f'local = "{PROTECTED}/32"', 'local = "0.0.0.0/0"')
    )
    gw = start_gateway(net)
    procs = [gw]
    try:
        alice, alice_log = start_client(net, "alice", "a")
        procs.append(alice)
        wait_for_line(alice_log, "IPsec SA pair(s) up", alice, 30, "alice's tunnel")
        bob, bob_log = start_client(net, "bob", "b")
        procs.append(bob)
        for proc, log in ((alice, alice_log), (bob, bob_log)):
            wait_for_line(log, '"state": "direct"', proc, 30, "a direct tunnel under a full tunnel")
        b_addr = address_of(bob_log)
        pin = run_in(net.ns["a"], ["ip", "-4", "route", "show", "198.18.2.2"], check=True).stdout
        assert "via 192.168.1.1" in pin, pin
        assert any(r["state"] == "pinned" and "peer" in r["message"] for r in records(alice_log, "routes"))
        ping = run_in(net.ns["a"], ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", b_addr], check=False)
        assert ping.returncode == 0, ping.stdout
        assert not records(alice_log, "peer", "relayed")
        stop_process(bob)
        wait_for(lambda: records(alice_log, "peer", "gone"), 15, "alice told that bob left")
        wait_for(
            lambda: (
                not run_in(
                    net.ns["a"], ["ip", "-4", "route", "show", "198.18.2.2"], check=True
                ).stdout.strip()
            ),
            10,
            "bob's pin removed",
        )
    finally:
        for proc in reversed(procs):
            stop_process(proc)
