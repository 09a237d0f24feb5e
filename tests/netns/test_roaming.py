"""Roaming (issue 15): the client's outer address changes and its traffic resumes.

Namespace a: the gateway (10.77.0.1) with a protected address 10.78.0.1 behind it, and a
second network 10.76.0.0/24 (10.76.0.1) standing in for another Wi-Fi's router. Namespace b:
the client (10.77.0.2). A ping runs through the tunnel at 20 packets a second; then the
client's address changes as a laptop's does when it joins another network: 10.76.0.2 comes,
10.77.0.2 goes, the default route now points at 10.76.0.1.

The client notices (netlink), moves its sockets to the new address and sends a DPD
R-U-THERE under the ISAKMP SA (authenticated by its HASH): the gateway, which sees the client
as behind a NAT (a tunvpn client with a data path forces UDP encapsulation), follows it there
(issue 12's rule), and ESP with it. No new login is needed.

Two more cases: a gateway that does not follow (IKE only, no NAT: the client logs in again
from its new address after the unanswered probe), and another network handing out the same
private address behind another NAT (only the way out changes; the gateway's own traffic to
the client comes back at once instead of after DPD's 10 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, Topology, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    wait_for_line,
)

PROTECTED = "10.78.0.1"
PROTECTED_NET = "10.78.0.0/24"
POOL = "10.79.0.10-10.79.0.20"
PSK = "roaming-test-psk-0123456789"
NEW_ROUTER = "10.76.0.1"
NEW_ADDRESS = "10.76.0.2"


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    if shutil.which("ping") is None:
        pytest.skip("needs ping")
    with NetnsPair() as net:
        net.add_addr(net.a, f"{PROTECTED}/24")
        run_in(net.a, ["ip", "addr", "add", f"{NEW_ROUTER}/24", "dev", net.if_a], check=True)
        run_in(net.b, ["ip", "route", "add", "default", "via", net.addr_a], check=True)
        yield net


def _replies(path: Path) -> list[float]:
    """Arrival times (ping -D) of the echo replies in a ping log."""
    times = []
    for line in read_text(path).splitlines():
        if line.startswith("[") and "bytes from" in line:
            times.append(float(line[1 : line.index("]")]))
    return times


def test_the_clients_address_changes_and_traffic_resumes_without_a_new_login(
    pair: NetnsPair, tmp_path: Path
) -> None:
    gw_log, cl_log, ping_log = tmp_path / "gateway.log", tmp_path / "client.log", tmp_path / "ping.log"
    control = tmp_path / "gw.sock"
    psk = private_file(tmp_path / "psk", PSK + "\n")
    users = private_file(tmp_path / "users", "alice:wonderland\n")
    gw = popen_tunvpn(
        pair.a,
        [
            "gateway", "--listen", pair.addr_a, "--psk-file", str(psk), "--users", str(users),
            "--require-xauth", "--pool", POOL, "--split", PROTECTED_NET, "--tun", "tvgw%d",
            "--control", str(control),
        ],
        gw_log,
    )  # fmt: skip
    wait_for_line(gw_log, "gateway ready", gw, 30, "the gateway")
    private_file(tmp_path / "pw", "wonderland\n")
    profile = private_file(
        tmp_path / "client.toml",
        f'gateway = "{pair.addr_a}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
    )
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"]
    cl = popen_tunvpn(pair.b, argv, cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        with ping_log.open("wb") as out:
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", pair.b, "ping", "-D", "-n", "-i", "0.05", "-W", "1", PROTECTED],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            wait_for(lambda: len(_replies(ping_log)) >= 10, 10, "pings through the tunnel")
            # another network: the new address comes, the old one goes with its routes
            run_in(pair.b, ["ip", "addr", "add", f"{NEW_ADDRESS}/24", "dev", pair.if_b], check=True)
            run_in(pair.b, ["ip", "addr", "del", f"{pair.addr_b}/24", "dev", pair.if_b], check=True)
            run_in(pair.b, ["ip", "route", "replace", "default", "via", NEW_ROUTER], check=True)
            moved = time.time()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(t > moved + 0.1 for t in _replies(ping_log)):
                if cl.poll() is not None:
                    break
                time.sleep(0.05)
            pinger.terminate()
            pinger.wait(5)
        assert cl.poll() is None, f"the client exited {cl.returncode}:\n{read_text(cl_log)[-3000:]}"
        after = [t for t in _replies(ping_log) if t > moved + 0.1]
        assert after, f"no ping came back after the move:\n{read_text(cl_log)[-4000:]}"
        took = after[0] - moved
        logins = sum(
            1 for r in json_records(cl_log) if r.get("event") == "phase1" and r.get("state") == "started"
        )
        roams = [r for r in json_records(cl_log) if r.get("event") == "roam"]
        path = "a new login (reconnect)" if logins > 1 else "NAT-T float (DPD under the ISAKMP SA)"
        print(f"client address changed: pings back after {took:.2f} s (goal 2 s) by {path}")
        assert took < 10, read_text(cl_log)[-4000:]
        assert logins == 1, f"the client logged in again instead of moving its SAs: {roams}"
        assert any(r.get("state") == "moved" for r in roams), roams
        status = run_tunvpn(pair.a, ["status", "--socket", str(control), "--json"])
        assert status.returncode == 0, status.stderr
        peers = [t["peer"] for t in json.loads(status.stdout)["tunnels"]]
        assert peers == [f"{NEW_ADDRESS}:4500"], peers  # the gateway follows the client
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]


def test_a_client_the_gateway_does_not_follow_logs_in_again_from_its_new_address(
    pair: NetnsPair, tmp_path: Path
) -> None:
    """IKE only, no NAT: the gateway does not move a peer that is not behind a NAT (issue
    12), so the R-U-THERE from the new address goes unanswered; after ``ROAM_WITHIN`` the
    client counts the gateway as dead and logs in again from the new address."""
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    control = tmp_path / "gw.sock"
    psk = private_file(tmp_path / "psk", PSK + "\n")
    users = private_file(tmp_path / "users", "alice:wonderland\n")
    gw = popen_tunvpn(
        pair.a,
        [
            "gateway", "--listen", pair.addr_a, "--psk-file", str(psk), "--users", str(users),
            "--require-xauth", "--pool", POOL, "--split", PROTECTED_NET, "--control", str(control),
        ],
        gw_log,
    )  # fmt: skip
    wait_for_line(gw_log, "gateway ready", gw, 30, "the gateway")
    private_file(tmp_path / "pw", "wonderland\n")
    profile = private_file(
        tmp_path / "client.toml",
        f'gateway = "{pair.addr_a}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
    )
    argv = ["connect", "-c", str(profile), "--ike-only", "--json", "--control", "none", "-v"]
    cl = popen_tunvpn(pair.b, argv, cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        run_in(pair.b, ["ip", "addr", "add", f"{NEW_ADDRESS}/24", "dev", pair.if_b], check=True)
        run_in(pair.b, ["ip", "addr", "del", f"{pair.addr_b}/24", "dev", pair.if_b], check=True)
        run_in(pair.b, ["ip", "route", "replace", "default", "via", NEW_ROUTER], check=True)
        moved = time.monotonic()

        def logged_in_again() -> bool:
            ups = [r for r in json_records(cl_log) if r.get("event") == "established"]
            return len(ups) >= 2 or cl.poll() is not None

        wait_for(logged_in_again, 30, "a new login from the new address")
        took = time.monotonic() - moved
        assert cl.poll() is None, read_text(cl_log)[-3000:]
        print(f"client address changed, gateway did not follow: logged in again after {took:.2f} s")
        records = json_records(cl_log)
        assert any(r.get("event") == "roam" and r.get("state") == "moved" for r in records), records
        starts = [r for r in records if r.get("event") == "phase1" and r.get("state") == "started"]
        assert f"from {NEW_ADDRESS}" in str(starts[-1]["message"]), starts
        status = run_tunvpn(pair.a, ["status", "--socket", str(control), "--json"])
        peers = [str(t["peer"]).split(":")[0] for t in json.loads(status.stdout)["tunnels"]]
        assert NEW_ADDRESS in peers, peers  # (the old session stays until the gateway's DPD)
    finally:
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]


@pytest.fixture
def two_nats() -> Iterator[tuple[Topology, dict[str, str]]]:
    """A gateway (10.77.0.1 on its lo) behind which 10.78.0.1 sits; two home routers that
    masquerade, each with the LAN 192.168.1.0/24 (router 192.168.1.1); a client with a leg on
    each LAN, the first one up with 192.168.1.23 (the second gets the same address later)."""
    if shutil.which("nft") is None:
        pytest.skip("needs nft (nftables) for the NAT routers")
    with Topology() as topo:
        ns = {role: topo.add_ns(role) for role in ("g", "r", "s", "c")}
        g, r, s, c = ns["g"], ns["r"], ns["s"], ns["c"]
        topo.link(g, "10.77.1.1/24", r, "10.77.1.11/24", names=(g + "1", r + "w"))
        topo.link(g, "10.77.2.1/24", s, "10.77.2.12/24", names=(g + "2", s + "w"))
        topo.link(r, "192.168.1.1/24", c, "192.168.1.23/24", names=(r + "l", c + "1"))
        # the second LAN: a veth with no address on the client's side yet (Topology.link
        # addresses both ends)
        for argv in (
            ["link", "add", s + "l", "type", "veth", "peer", "name", c + "2"],
            ["link", "set", s + "l", "netns", s],
            ["link", "set", c + "2", "netns", c],
        ):
            subprocess.run(["ip", *argv], check=True, capture_output=True)
        run_in(s, ["ip", "addr", "add", "192.168.1.1/24", "dev", s + "l"], check=True)
        run_in(s, ["ip", "link", "set", s + "l", "up"], check=True)
        run_in(c, ["ip", "link", "set", c + "2", "up"], check=True)
        topo.add_addr(g, "10.77.0.1/32")
        topo.add_addr(g, f"{PROTECTED}/24")
        for router, public in ((r, r + "w"), (s, s + "w")):
            run_in(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            run_in(
                router,
                ["ip", "route", "add", "default", "via", "10.77.1.1" if router == r else "10.77.2.1"],
                check=True,
            )
            run_in(router, ["nft", "add", "table", "ip", "nat"], check=True)
            chain = "{ type nat hook postrouting priority 100 ; }"
            run_in(router, ["nft", "add", "chain", "ip", "nat", "post", chain], check=True)
            run_in(
                router,
                ["nft", "add", "rule", "ip", "nat", "post", "oifname", public, "masquerade"],
                check=True,
            )
        run_in(c, ["ip", "route", "add", "default", "via", "192.168.1.1", "dev", c + "1"], check=True)
        yield topo, ns


def test_another_network_with_the_same_private_address_moves_the_sas_at_once(
    two_nats: tuple[Topology, dict[str, str]], tmp_path: Path
) -> None:
    """Two home routers both hand out 192.168.1.23: the client's address stays, the way out
    (interface, NAT) changes. Only the gateway sends (a ping from behind it to the client's
    tunnel address), so nothing from the client would move the gateway until DPD (10 s of
    silence): the client notices the new way out and sends its R-U-THERE at once."""
    _, ns = two_nats
    g, c = ns["g"], ns["c"]
    gw_log, cl_log, ping_log = tmp_path / "gateway.log", tmp_path / "client.log", tmp_path / "ping.log"
    control = tmp_path / "gw.sock"
    psk = private_file(tmp_path / "psk", PSK + "\n")
    users = private_file(tmp_path / "users", "alice:wonderland\n")
    gw = popen_tunvpn(
        g,
        [
            "gateway", "--listen", "10.77.0.1", "--psk-file", str(psk), "--users", str(users),
            "--require-xauth", "--pool", POOL, "--split", PROTECTED_NET, "--tun", "tvgw%d",
            "--control", str(control),
        ],
        gw_log,
    )  # fmt: skip
    wait_for_line(gw_log, "gateway ready", gw, 30, "the gateway")
    private_file(tmp_path / "pw", "wonderland\n")
    profile = private_file(
        tmp_path / "client.toml",
        'gateway = "10.77.0.1"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
    )
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"]
    cl = popen_tunvpn(c, argv, cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        inner = "10.79.0.10"  # the pool's first address
        with ping_log.open("wb") as out:
            pinger = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    g,
                    "ping",
                    "-D",
                    "-n",
                    "-i",
                    "0.05",
                    "-W",
                    "1",
                    "-I",
                    PROTECTED,
                    inner,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            wait_for(lambda: len(_replies(ping_log)) >= 10, 10, "pings from behind the gateway")
            run_in(c, ["ip", "addr", "del", "192.168.1.23/24", "dev", c + "1"], check=True)
            run_in(c, ["ip", "link", "set", c + "1", "down"], check=True)
            run_in(c, ["ip", "addr", "add", "192.168.1.23/24", "dev", c + "2"], check=True)
            run_in(c, ["ip", "route", "replace", "default", "via", "192.168.1.1", "dev", c + "2"], check=True)
            moved = time.time()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(t > moved + 0.1 for t in _replies(ping_log)):
                time.sleep(0.05)
            pinger.terminate()
            pinger.wait(5)
        assert cl.poll() is None, read_text(cl_log)[-3000:]
        after = [t for t in _replies(ping_log) if t > moved + 0.1]
        assert after, f"no ping came back after the move:\n{read_text(cl_log)[-4000:]}"
        took = after[0] - moved
        print(f"same address, another NAT: the gateway's pings come back after {took:.2f} s (goal 2 s)")
        records = json_records(cl_log)
        roams = [r for r in records if r.get("event") == "roam" and r.get("state") == "moved"]
        assert roams, read_text(cl_log)[-3000:]
        assert took < 5, f"{took:.1f} s: not the roam's probe but DPD moved the gateway"
        logins = [r for r in records if r.get("event") == "phase1" and r.get("state") == "started"]
        assert len(logins) == 1, logins
        status = run_tunvpn(g, ["status", "--socket", str(control), "--json"])
        peers = [t["peer"] for t in json.loads(status.stdout)["tunnels"]]
        assert [p.split(":")[0] for p in peers] == ["10.77.2.12"], peers
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)
