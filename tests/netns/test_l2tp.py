"""Issue 5, L2TP: our client against our gateway, end to end in three network namespaces with
real TUN devices, through the real tunvpn-l2tp plugin on both sides:

    client (10.77.0.2) --veth-- gateway (10.77.0.1 | 10.78.0.1, 10.78.1.1; LNS on 10.78.9.1)
                                        --veth-- server (10.78.0.10, 10.78.1.10)

The gateway announces ``l2tp`` in phase 1a; the client's plugin adds the SA for UDP 1701 to
its Quick Mode set, then runs the L2TP control connection and a session, PPP (LCP, CHAP or
PAP against the gateway's users file, IPCP) and a second TUN device. 10.78.1.0/24 is reached
only through PPP (no pushed SA covers it); 10.78.0.0/24 through the pushed SA as usual.
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

from tests.helpers.netns import Topology, run_in, stop_process, wait_for
from tests.helpers.transfer import SINK, SOURCE
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    wait_for_line,
)

pytest.importorskip("tunvpn_l2tp.lac", reason="pip install -e plugins/tunvpn-l2tp")

GATEWAY = "10.77.0.1"
CLIENT = "10.77.0.2"
LNS = "10.78.9.1"
PSK = "e2e-l2tp-psk-41c9d2"

GATEWAY_TOML = """\
[gateway]
listen = "10.77.0.1"
psk_file = "gw.psk"
users_file = "users"
tun = "tvgw%d"
plugins = ["l2tp"]

[network]
pool = "10.79.0.10-10.79.0.50"

[[policy]]
name = "net-a"
local = "10.78.0.0/24"

[[protocol]]
name = "l2tp"

[plugin.l2tp]
server = "10.78.9.1"
pool = "10.80.0.10-10.80.0.20"
local = "10.80.0.1"
networks = ["10.78.1.0/24"]
dns = ["10.78.0.53"]
auth = "{auth}"
hello = 2
"""


GARBAGE = r"""
import os, random, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 0))
rng = random.Random(1701)
for i in range(300):
    kind = i % 4
    if kind == 0:
        data = os.urandom(rng.randrange(0, 200))
    elif kind == 1:  # a control header, then noise
        data = struct.pack("!HHHHHH", 0xC802, 12 + 20, rng.randrange(65536), 0, 0, 0) + os.urandom(20)
    elif kind == 2:  # a data message for IDs that are not ours
        data = struct.pack("!HHH", 0x0002, rng.randrange(65536), rng.randrange(65536)) + os.urandom(40)
    else:  # a truncated header
        data = bytes([0xC8, 0x02, 0x00])
    s.sendto(data, (sys.argv[1], 1701))
print("sent")
"""


@dataclass
class Net:
    topo: Topology
    client: str
    gateway: str
    server: str
    tmp: Path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        topo.link(g, "10.78.0.1/24", s, "10.78.0.10/24", names=(g + "s", s + "g"))
        topo.add_addr(g, "10.78.1.1/24", g + "s")
        topo.add_addr(s, "10.78.1.10/24", s + "g")
        topo.add_addr(g, f"{LNS}/32")  # on lo: the LNS's address
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        private_file(tmp_path / "gw.psk", PSK + "\n")
        private_file(tmp_path / "users", "alice:alice-pw\n")
        private_file(tmp_path / "alice.pw", "alice-pw\n")
        private_file(tmp_path / "wrong.pw", "not-alice-pw\n")
        private_file(tmp_path / "client.psk", PSK + "\n")
        yield Net(topo, c, g, s, tmp_path)


def start_gateway(net: Net, auth: str) -> subprocess.Popen[bytes]:
    (net.tmp / "gateway.toml").write_text(GATEWAY_TOML.format(auth=auth))
    log = net.tmp / "gateway.log"
    gw = popen_tunvpn(
        net.gateway,
        ["gateway", "-c", str(net.tmp / "gateway.toml"), "--control", str(net.tmp / "gw.sock"), "-v"],
        log,
    )
    wait_for_line(log, "gateway ready", gw, 20, "the gateway")
    wait_for_line(log, "L2TP network server on", gw, 10, "the LNS")
    return gw


def start_client(
    net: Net, *, ppp_password_file: str | None = None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], Path]:
    path = net.tmp / "alice.toml"
    table = f'\n[plugin.l2tp]\npassword_file = "{ppp_password_file}"\n' if ppp_password_file else ""
    path.write_text(
        f'gateway = "{GATEWAY}"\npsk_file = "client.psk"\nuser = "alice"\nplugins = ["l2tp"]\n{table}'
    )
    log = net.tmp / "alice.log"
    cl = popen_tunvpn(
        net.client,
        [
            "connect",
            "-c",
            str(path),
            "--password-file",
            str(net.tmp / "alice.pw"),
            "--json",
            "--tun",
            "tvcl%d",
            "--control",
            str(net.tmp / "client.sock"),
            "--dns-backend",
            "none",
            "-v",
            *extra,
        ],
        log,
    )
    return cl, log


def wait_ppp_up(cl: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_for(lambda: records(log, "ppp", "up") or cl.poll() is not None, 40, "PPP up on the client")
    except TimeoutError:
        raise TimeoutError(f"no PPP after 40 s; client log:\n{read_text(log)[-4000:]}") from None
    assert records(log, "ppp", "up"), f"the client exited {cl.returncode}:\n{read_text(log)[-4000:]}"


def records(log: Path, event: str, state: str | None = None) -> list[dict]:
    return [r for r in json_records(log) if r["event"] == event and (state is None or r["state"] == state)]


def ping(net: Net, address: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return run_in(
        net.client, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address], check=False, timeout=60
    )


@pytest.mark.parametrize("auth", ["chap", "pap"])
def test_l2tp_session_carries_ip_through_ppp(net: Net, auth: str) -> None:
    gw = start_gateway(net, auth)
    cl, log = start_client(net)
    try:
        wait_ppp_up(cl, log)
        sas = {r["name"]: r for r in records(log, "quick", "established")}
        assert set(sas) == {"net-a", "l2tp (UDP 1701)"}
        assert sas["l2tp (UDP 1701)"]["remote_ts"] == f"{LNS}/32[udp/1701]"
        [up] = records(log, "ppp", "up")
        assert up["address"] == "10.80.0.10" and up["peer"] == "10.80.0.1"
        assert up["auth"] == auth and up["dns"] == ["10.78.0.53"]
        assert up["networks"] == ["10.78.1.0/24"]

        # through PPP (only the L2TP SA carries it) and through the pushed SA
        for host in ("10.78.1.10", "10.78.0.10"):
            result = ping(net, host)
            assert result.returncode == 0, f"{host}: {result.stdout}{result.stderr}"
        route = run_in(net.client, ["ip", "route", "get", "10.78.1.10"]).stdout
        assert "dev tvl2tp" in route, route

        # garbage through the SA to the LNS (random bytes, control and data headers with
        # nonsense after them, other tunnel/session IDs): dropped; the session goes on
        [modecfg] = records(log, "modecfg", "received")  # the IPsec address: the L2TP SA's source
        run_in(net.client, [sys.executable, "-c", GARBAGE, LNS, modecfg["address"]])
        result = ping(net, "10.78.1.10")
        assert result.returncode == 0, f"after garbage: {result.stdout}{result.stderr}"
        assert gw.poll() is None

        sink = subprocess.Popen(
            ["ip", "netns", "exec", net.server, sys.executable, "-c", SINK, "10.78.1.10"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sink.stdout is not None and "listening" in sink.stdout.readline()
            source = run_in(
                net.client, [sys.executable, "-c", SOURCE, "10.78.1.10", str(2 << 20)], timeout=90
            )
            sent, digest, received, echoed = source.stdout.split()
            assert int(sent) == int(received) == 2 << 20 and digest == echoed
        finally:
            sink.wait(timeout=10)
            assert sink.stdout is not None
            sink.stdout.close()

        # tunvpn status on the client shows the protocol's state
        st = run_tunvpn(net.client, ["status", "--socket", str(net.tmp / "client.sock"), "--json"])
        assert st.returncode == 0, st.stderr
        [tunnel] = json.loads(st.stdout)["tunnels"]
        assert tunnel["protocols"] == [{"name": "l2tp", "state": "up", "message": up["message"]}]
        human = run_tunvpn(net.client, ["status", "--socket", str(net.tmp / "client.sock")]).stdout
        assert "l2tp: up (PPP up" in human, human

        # the gateway logged the PPP login and address
        gw_log = read_text(net.tmp / "gateway.log")
        assert f"PPP user 'alice' ({auth.upper()}) accepted" in gw_log, gw_log[-3000:]
        assert "10.80.0.10" in gw_log
    finally:
        stop_process(cl)
    wait_for(
        lambda: (
            "L2TP tunnel" in read_text(net.tmp / "gateway.log")
            and "closed" in read_text(net.tmp / "gateway.log").split("L2TP tunnel")[-1]
        ),
        10,
        "the gateway to see the L2TP tunnel go",
    )
    stop_process(gw)
    gw_log = read_text(net.tmp / "gateway.log")
    client_log = read_text(log)
    for secret in ("alice-pw", PSK):
        assert secret not in gw_log and secret not in client_log


def test_wrong_ppp_password_is_refused_with_a_clear_message(net: Net) -> None:
    gw = start_gateway(net, "chap")
    cl, log = start_client(net, ppp_password_file="wrong.pw")
    try:
        cl.wait(timeout=60)
    finally:
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode != 0
    failed = records(log, "protocols", "failed")
    assert failed and "PPP authentication" in failed[-1]["message"], read_text(log)[-3000:]
    assert "PPP user 'alice' (CHAP) rejected" in read_text(net.tmp / "gateway.log")


def test_a_gateway_that_stops_tells_the_client_through_l2tp_and_ike(net: Net) -> None:
    gw = start_gateway(net, "chap")
    # the client would reconnect (issue 15): this test is about the goodbyes and the exit
    cl, log = start_client(net, extra=("--no-reconnect",))
    try:
        wait_ppp_up(cl, log)
        assert ping(net, "10.78.1.10", count=1).returncode == 0
        stop_process(gw)  # SIGTERM: the LNS sends StopCCN, then the gateway deletes the SAs
        cl.wait(timeout=20)
    finally:
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode != 0
    failed = records(log, "protocols", "failed") + records(log, "closed")
    assert failed, read_text(log)[-3000:]
    said = " ".join(r["message"] for r in failed)
    # whichever goodbye arrives first: PPP's Terminate-Request, L2TP's StopCCN, IKE's Delete
    assert any(word in said for word in ("Terminate-Request", "StopCCN", "ISAKMP SA deleted")), said
    gw_log = read_text(net.tmp / "gateway.log")
    assert re.search(r"L2TP session \d+/\d+ \(user 'alice'\) ended", gw_log), gw_log[-3000:]
    # nothing left behind on either side
    assert "tvl2tp" not in run_in(net.client, ["ip", "-o", "link"]).stdout
    assert "tvlns" not in run_in(net.gateway, ["ip", "-o", "link"]).stdout


def test_a_reload_that_restarts_the_lns_is_followed_by_the_client(net: Net) -> None:
    """An admin changes ``[plugin.l2tp]``: the gateway restarts its LNS (its sessions end with
    StopCCN); the client, whose SAs are still up, sets L2TP and PPP up again by itself."""
    gw = start_gateway(net, "chap")
    cl, log = start_client(net)
    try:
        wait_ppp_up(cl, log)
        assert ping(net, "10.78.1.10", count=1).returncode == 0
        (net.tmp / "gateway.toml").write_text(
            GATEWAY_TOML.format(auth="pap").replace("hello = 2", "hello = 3")
        )
        reload = run_tunvpn(net.gateway, ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert reload.returncode == 0, reload.stdout + reload.stderr
        try:
            wait_for(lambda: len(records(log, "ppp", "up")) >= 2 or cl.poll() is not None, 40, "PPP up again")
        except TimeoutError:
            raise TimeoutError(f"no second PPP session; client log:\n{read_text(log)[-4000:]}") from None
        assert cl.poll() is None, read_text(log)[-4000:]
        [again] = records(log, "l2tp", "reconnecting")[:1]
        assert "StopCCN" in again["message"] or "Terminate-Request" in again["message"], again
        assert "try 1 of 5" in again["message"], again
        second = records(log, "ppp", "up")[-1]
        assert second["auth"] == "pap" and second["networks"] == ["10.78.1.0/24"]
        result = ping(net, "10.78.1.10")
        assert result.returncode == 0, f"after the reconnect: {result.stdout}{result.stderr}"
        # the IPsec side never went down: the same two SAs, no second phase 1
        assert len(records(log, "phase1", "established")) == 1
        st = json.loads(
            run_tunvpn(net.client, ["status", "--socket", str(net.tmp / "client.sock"), "--json"]).stdout
        )
        [tunnel] = st["tunnels"]
        assert tunnel["protocols"][0]["state"] == "up", tunnel
    finally:
        stop_process(cl)
        stop_process(gw)
    assert "tvl2tp" not in run_in(net.client, ["ip", "-o", "link"]).stdout
