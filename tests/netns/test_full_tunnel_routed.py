"""A full tunnel to a gateway that is not on the client's link (issue 15).

On the Internet a client reaches its gateway through a router. A full tunnel routes
everything into the TUN device -- the gateway's own address too, unless the client pins it
outside the tunnel first: IKE and ESP to the gateway would loop into the tunnel and the
connection (and any reconnect) dies. Real ``tunvpn gateway`` / ``tunvpn connect`` processes:

    client c 10.90.1.2 --- 10.90.1.1 router r 10.90.2.1 --- 10.90.2.2 gateway g
    gateway g 10.91.0.1 --- 10.91.0.2 "Internet" i        (and 10.78.0.1 on the gateway's lo)

The client's default route goes via the router; the gateway pushes 0.0.0.0/0 (no --split).

* the client connects and pings 10.78.0.1 and the "Internet" namespace through the tunnel;
  a capture on its underlay sees nothing but IKE/ESP (UDP 500/4500) to the gateway;
* SIGTERM: the client namespace's routes are exactly as before (default via the router, no
  host route for the gateway left);
* SIGKILL: the host route stays (the TUN device and its routes go with the process); the
  next ``tunvpn connect`` removes it first (hostconfig's crash recovery), then pins anew;
* the gateway SIGKILLed and restarted: the client reconnects through the pinned route;
* roaming: the client's address and router change, the pin follows the new next hop.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, capture, popen_in, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import (
    json_records,
    private_file,
    read_text,
    tunvpn_argv,
    tunvpn_env,
    wait_for_line,
)

CLIENT, ROUTER_C = "10.90.1.2", "10.90.1.1"
CLIENT2, ROUTER_C2 = "10.90.3.2", "10.90.3.1"  # the client's address and router after a roam
ROUTER_G, GATEWAY = "10.90.2.1", "10.90.2.2"
GATEWAY2 = "10.90.2.3"  # a second gateway process in the same namespace (failover)
GATEWAY_I, INTERNET = "10.91.0.1", "10.91.0.2"
PROTECTED = "10.78.0.1"
POOL, POOL_NET = "10.79.0.10-10.79.0.20", "10.79.0.0/24"
PSK = "full-tunnel-routed-psk-0123456789"


@dataclass
class Net:
    topo: Topology
    c: str
    r: str
    g: str
    i: str
    if_c: str  # the client's underlay interface
    tmp: Path

    def routes(self) -> list[str]:
        out = run_in(self.c, ["ip", "-4", "route", "show", "table", "main"], check=True).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if shutil.which("dumpcap") is None:
        pytest.skip("needs dumpcap (wireshark-common) for the leak capture")
    with Topology() as topo:
        c, r, g, i = (topo.add_ns(role) for role in "crgi")
        t = topo.tag
        if_c, _ = topo.link(c, f"{CLIENT}/24", r, f"{ROUTER_C}/24", names=(t + "cr", t + "rc"))
        topo.link(r, f"{ROUTER_G}/24", g, f"{GATEWAY}/24", names=(t + "rg", t + "gr"))
        topo.link(g, f"{GATEWAY_I}/24", i, f"{INTERNET}/24", names=(t + "gi", t + "ig"))
        topo.add_addr(g, f"{PROTECTED}/32")
        topo.add_addr(r, f"{ROUTER_C2}/24", t + "rc")  # another Wi-Fi's router, for roaming
        for ns in (r, g):
            run_in(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run_in(c, ["ip", "route", "add", "default", "via", ROUTER_C])
        run_in(g, ["ip", "route", "add", "default", "via", ROUTER_G])
        run_in(i, ["ip", "route", "add", POOL_NET, "via", GATEWAY_I])
        # the router answers the tunnel's address through the gateway (and the client's
        # underlay address directly: a packet leaking in clear would be answered too)
        run_in(r, ["ip", "route", "add", POOL_NET, "via", GATEWAY])
        yield Net(topo, c, r, g, i, if_c, tmp_path)


def _gateway(net: Net, log: Path, listen: str = GATEWAY) -> subprocess.Popen[bytes]:
    psk = private_file(net.tmp / "psk", PSK + "\n")
    users = private_file(net.tmp / "users", "alice:wonderland\n")
    argv = ["gateway", "--listen", listen, "--psk-file", str(psk), "--users", str(users)]
    argv += ["--require-xauth", "--pool", POOL, "--tun", "tvgw%d", "--control", "none"]
    proc = popen_in(net.g, tunvpn_argv(*argv), log, env=tunvpn_env())
    wait_for_line(log, "gateway ready", proc, 30, "the gateway")
    return proc


def _client(net: Net, log: Path, gateway: str = f'"{GATEWAY}"') -> subprocess.Popen[bytes]:
    private_file(net.tmp / "psk", PSK + "\n")
    private_file(net.tmp / "pw", "wonderland\n")
    profile = private_file(
        net.tmp / "client.toml",
        f'gateway = {gateway}\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
    )
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"]
    # the crash-recovery state goes to a run directory of this test (not /run/tunvpn)
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / "run")}
    return popen_in(net.c, tunvpn_argv(*argv), log, env=env)


def _ping(net: Net, address: str) -> bool:
    return run_in(net.c, ["ping", "-c", "1", "-W", "2", address], check=False).returncode == 0


def _ip_packets(pcap: Path) -> list[str]:
    """One line per IPv4 packet of a capture (tab-separated ``FIELDS``; an ICMP error lists
    the outer header's values, then the quoted packet's, comma-separated)."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-o",
            "ip.defragment:FALSE",
            "-T",
            "fields",
            *(a for f in FIELDS for a in ("-e", f)),
            "-Y",
            "ip",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


FIELDS = ("ip.src", "ip.dst", "ip.proto", "ip.frag_offset", "udp.srcport", "udp.dstport")
IKE_PORTS = {"500", "4500"}


def _ike_or_esp_with_gateway(line: str) -> bool:
    """IKE or ESP-in-UDP between the client and the gateway: UDP 500/4500 (a later fragment
    of one: no ports), or an ICMP error about one (a dead gateway's host answers with port
    unreachable)."""
    values = [v.split(",") for v in (line.split("\t") + [""] * len(FIELDS))[: len(FIELDS)]]
    src, dst, proto, frag, sport, dport = values
    gateway = next((g for g in (GATEWAY, GATEWAY2) if g in (src[0], dst[0])), None)
    if gateway is None or not {src[0], dst[0]} & {CLIENT, CLIENT2}:
        return False
    if proto[0] == "17":
        ports_ok = {sport[0], dport[0]} <= IKE_PORTS
        return ports_ok or (sport == [""] and frag[0] not in ("", "0"))
    if proto[0] == "1" and src[0] == gateway:  # the quoted packet: ours, to the gateway's IKE port
        return proto[1:] == ["17"] and dst[1:] == [gateway] and {sport[0], dport[0]} <= IKE_PORTS
    return False


def test_full_tunnel_through_a_router_pins_the_gateway_and_leaks_nothing(net: Net) -> None:
    before = net.routes()
    assert before == [f"10.90.1.0/24 dev {net.if_c} proto kernel scope link src {CLIENT}",
                      f"default via {ROUTER_C} dev {net.if_c}"]  # fmt: skip
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        routes = net.routes()
        pin = f"{GATEWAY} via {ROUTER_C} dev {net.if_c}"
        assert pin in routes, routes
        assert f"default via {ROUTER_C} dev {net.if_c}" in routes, f"the default route was replaced: {routes}"
        assert any(r.startswith("0.0.0.0/1 dev tvcl") for r in routes), routes
        assert any(r.startswith("128.0.0.0/1 dev tvcl") for r in routes), routes
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip"):
            wait_for(lambda: _ping(net, PROTECTED) or cl.poll() is not None, 20, "a ping behind the gateway")
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            assert _ping(net, INTERNET), "no ping to the Internet namespace through the tunnel"
            # the router's far side: reachable in clear too, but it must go through the tunnel
            assert _ping(net, ROUTER_G), "no ping through the tunnel to the router's far side"
        packets = _ip_packets(pcap)
        assert packets, "the capture saw no packet at all"
        clear = [p for p in packets if not _ike_or_esp_with_gateway(p)]
        assert not clear, f"packets other than IKE/ESP with the gateway on the underlay: {clear[:10]}"
    finally:
        stop_process(cl)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]
    assert net.routes() == before, "the client's routes are not as they were before it connected"
    assert not list((net.tmp / "run").glob("client-*.json")), "crash-recovery state left after a clean exit"
    stop_process(gw)


def test_a_killed_client_leaves_the_pin_and_the_next_run_removes_it(net: Net) -> None:
    before = net.routes()
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log)
    pin = f"{GATEWAY} via {ROUTER_C} dev {net.if_c}"
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        assert pin in net.routes()
        cl.kill()  # SIGKILL: no clean-up of its own
        cl.wait(5)
        wait_for(lambda: "tvcl" not in run_in(net.c, ["ip", "link"]).stdout, 10, "the TUN device to go")
        left = net.routes()
        assert pin in left, f"expected the pin to outlive a SIGKILL (the kernel keeps it): {left}"
        assert [r for r in left if r != pin] == before, left
        # the next run undoes what the dead one recorded before it connects
        log2 = net.tmp / "client2.log"
        cl = _client(net, log2)
        wait_for_line(log2, "IPsec SA pair(s) up", cl, 30, "the second client's SAs")
        cleaned = [r for r in json_records(log2) if r.get("event") == "cleanup"]
        assert any(f"removed route {GATEWAY}/32" in str(r.get("message")) for r in cleaned), cleaned
        assert net.routes().count(pin) == 1
        assert _ping(net, INTERNET)
    finally:
        stop_process(cl)
        stop_process(gw)
    assert net.routes() == before
    assert not list((net.tmp / "run").glob("client-*.json"))


def test_gateway_killed_and_restarted_client_reconnects_through_the_pin(net: Net) -> None:
    before = net.routes()
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        assert _ping(net, PROTECTED) or _ping(net, PROTECTED), read_text(cl_log)[-3000:]
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip"):
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", net.c, "ping", "-i", "0.2", "-W", "1", INTERNET],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            gw.kill()
            gw.wait(5)
            gw = _gateway(net, gw_log)
            wait_for(
                lambda: (
                    sum(1 for r in json_records(cl_log) if r.get("event") == "established") >= 2
                    or cl.poll() is not None
                ),
                60,
                "the client to reconnect",
            )
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            wait_for(lambda: _ping(net, INTERNET) or cl.poll() is not None, 20, "a ping after the restart")
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            pinger.terminate()
            pinger.wait(5)
        clear = [p for p in _ip_packets(pcap) if not _ike_or_esp_with_gateway(p)]
        assert not clear, f"packets other than IKE/ESP with the gateway on the underlay: {clear[:10]}"
        states = [r.get("state") for r in json_records(cl_log) if r.get("event") == "reconnect"]
        assert "lost" in states, states
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]
    assert net.routes() == before


def test_the_pin_follows_the_client_to_another_network(net: Net) -> None:
    """Roaming with a full tunnel: the client's address and default route change (another
    Wi-Fi); the kernel flushes the pin with the old address. Without a new pin the kernel's
    way to the gateway would be the tunnel itself; the pin follows the new next hop and the
    traffic resumes, still only IKE/ESP on the underlay."""
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        assert f"{GATEWAY} via {ROUTER_C} dev {net.if_c}" in net.routes()
        wait_for(lambda: _ping(net, INTERNET) or cl.poll() is not None, 20, "a ping through the tunnel")
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip"):
            # the old network is gone (its router with it), the new one comes
            run_in(net.r, ["ip", "addr", "del", f"{ROUTER_C}/24", "dev", net.topo.tag + "rc"])
            run_in(net.c, ["ip", "addr", "add", f"{CLIENT2}/24", "dev", net.if_c])
            run_in(net.c, ["ip", "addr", "del", f"{CLIENT}/24", "dev", net.if_c])
            run_in(net.c, ["ip", "route", "replace", "default", "via", ROUTER_C2])
            wait_for(
                lambda: _ping(net, INTERNET) or cl.poll() is not None, 30, "a ping after the client moved"
            )
            assert cl.poll() is None, read_text(cl_log)[-3000:]
        routes = net.routes()
        assert f"{GATEWAY} via {ROUTER_C2} dev {net.if_c}" in routes, routes
        assert not any(r.startswith(f"{GATEWAY} via {ROUTER_C} ") for r in routes), routes
        clear = [p for p in _ip_packets(pcap) if not _ike_or_esp_with_gateway(p)]
        assert not clear, f"packets other than IKE/ESP with the gateway on the underlay: {clear[:10]}"
    finally:
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]
    assert net.routes() == [
        f"10.90.3.0/24 dev {net.if_c} proto kernel scope link src {CLIENT2}",
        f"default via {ROUTER_C2} dev {net.if_c}",
    ]
    assert not list((net.tmp / "run").glob("client-*.json"))


def test_a_full_tunnel_fails_over_to_the_second_gateway_through_a_new_pin(net: Net) -> None:
    """Two gateways in the profile, both pushing 0.0.0.0/0. The first is SIGKILLed and stays
    dead: the client fails over to the second while the tunnel's routes stay on the TUN device
    (so the second gateway's address is routed into the dead tunnel until the client pins it
    outside, before its first message), pings the "Internet" again, leaks nothing in clear,
    and leaves the namespace's routes as they were."""
    run_in(net.g, ["ip", "addr", "add", f"{GATEWAY2}/24", "dev", net.topo.tag + "gr"])
    before = net.routes()
    log1, log2, cl_log = net.tmp / "gateway1.log", net.tmp / "gateway2.log", net.tmp / "client.log"
    gw1 = _gateway(net, log1)
    gw2 = _gateway(net, log2, GATEWAY2)
    cl = _client(net, cl_log, f'["{GATEWAY}", "{GATEWAY2}"]')
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs through the first gateway")
        assert _ping(net, INTERNET) or _ping(net, INTERNET), read_text(cl_log)[-3000:]
        pcap = net.tmp / "underlay.pcap"
        with capture(net.c, net.if_c, pcap, bpf="ip"):
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", net.c, "ping", "-i", "0.2", "-W", "1", INTERNET],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            gw1.kill()  # and it stays dead
            gw1.wait(5)
            killed = time.monotonic()
            wait_for(
                lambda: (
                    any(
                        r.get("event") == "phase1"
                        and r.get("state") == "established"
                        and GATEWAY2 in r["message"]
                        for r in json_records(cl_log)
                    )
                    or cl.poll() is not None
                ),
                60,
                "the client to fail over",
            )
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            wait_for(lambda: _ping(net, INTERNET) or cl.poll() is not None, 20, "a ping through the second")
            took = time.monotonic() - killed
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            routes = net.routes()
            assert any(r.startswith(f"{GATEWAY2} via {ROUTER_C}") for r in routes), routes
            pinger.terminate()
            pinger.wait(5)
        print(f"full tunnel: first gateway SIGKILLed, pinging through the second {took:.1f} s later")
        records = json_records(cl_log)
        lost = next(
            n for n, r in enumerate(records) if r.get("event") == "reconnect" and r.get("state") == "lost"
        )
        started = [r for r in records[lost:] if r.get("event") == "phase1" and r.get("state") == "started"]
        assert started and GATEWAY2 in started[0]["message"], "the lost gateway was not tried last"
        clear = [p for p in _ip_packets(pcap) if not _ike_or_esp_with_gateway(p)]
        assert not clear, f"packets other than IKE/ESP with a gateway on the underlay: {clear[:10]}"
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw2)
        stop_process(gw1)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]
    assert net.routes() == before
