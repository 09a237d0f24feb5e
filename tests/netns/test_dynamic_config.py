"""Issue 4 end to end: a client that knows only the gateway, a secret and a user gets its whole
configuration from the gateway, in three network namespaces with real TUN devices:

    client (10.77.0.2) --veth-- gateway (10.77.0.1 | 10.78.0.1, 10.78.1.1, 10.78.2.1, 10.20.0.1)
                                        --veth-- server (10.78.0.10, 10.78.1.10, 10.78.2.10, 10.20.0.10)

The gateway runs ``tunvpn gateway -c gateway.toml``; the client ``tunvpn connect -c profile.toml``
with a three-line profile. Shown: two protected subnets (plus a group's subnet) reached
through pushed SAs; a non-member does not get the group's subnet; a live policy change
(``tunvpn reload``) reaches the connected client while traffic on an unchanged SA goes on
without loss; a wrong PSK and an unknown user get a clear message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, popen_in, run_in, stop_process, wait_for
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

GATEWAY = "10.77.0.1"
CLIENT = "10.77.0.2"
SERVER_NETS = {"a": "10.78.0", "b": "10.78.1", "c": "10.78.2"}
ENG = "10.20.0"
PSK = "e2e-dynamic-config-psk-7f3a9c"

GATEWAY_TOML = """\
[gateway]
listen = "10.77.0.1"
psk_file = "gw.psk"
users_file = "users"
tun = "tvgw%d"

[network]
pool = "10.79.0.10-10.79.0.50"
dns = ["10.78.0.53"]
domains = ["corp.example"]

[groups]
eng = ["alice"]
{policies}
"""

POLICY = """
[[policy]]
name = "{name}"
local = "{net}"
esp = "{esp}"
pfs = "{pfs}"
lifetime = "1h"
{extra}
"""


def policy(name: str, net: str, *, esp: str = "aes256gcm16", pfs: str = "ecp256", extra: str = "") -> str:
    return POLICY.format(name=name, net=net, esp=esp, pfs=pfs, extra=extra)


def config(*policies: str) -> str:
    return GATEWAY_TOML.format(policies="".join(policies))


INITIAL = config(
    policy("net-a", "10.78.0.0/24"),
    policy("net-b", "10.78.1.0/24", esp="aes128gcm16", pfs="none"),
    policy("eng", "10.20.0.0/16", pfs="ecp384", extra='groups = ["eng"]'),
)
CHANGED = config(
    policy("net-a", "10.78.0.0/24"),
    policy("net-c", "10.78.2.0/24", esp="aes256-sha256"),
    policy("eng", "10.20.0.0/16", pfs="ecp384", extra='groups = ["eng"]'),
)


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
        for prefix in ("10.78.1", "10.78.2"):
            topo.add_addr(g, f"{prefix}.1/24", g + "s")
            topo.add_addr(s, f"{prefix}.10/24", s + "g")
        topo.add_addr(g, "10.20.0.1/16", g + "s")
        topo.add_addr(s, "10.20.0.10/16", s + "g")
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        private_file(tmp_path / "gw.psk", PSK + "\n")
        private_file(tmp_path / "users", "alice:alice-pw\nbob:bob-pw\n")
        private_file(tmp_path / "alice.pw", "alice-pw\n")
        private_file(tmp_path / "bob.pw", "bob-pw\n")
        private_file(tmp_path / "client.psk", PSK + "\n")
        (tmp_path / "gateway.toml").write_text(INITIAL)
        yield Net(topo, c, g, s, tmp_path)


def profile(net: Net, user: str, psk_file: str = "client.psk") -> Path:
    """The whole client configuration: three lines."""
    path = net.tmp / f"{user}.toml"
    path.write_text(f'gateway = "{GATEWAY}"\npsk_file = "{psk_file}"\nuser = "{user}"\n')
    assert len(path.read_text().splitlines()) == 3
    return path


def start_gateway(net: Net) -> subprocess.Popen[bytes]:
    log = net.tmp / "gateway.log"
    gw = popen_tunvpn(
        net.gateway,
        ["gateway", "-c", str(net.tmp / "gateway.toml"), "--control", str(net.tmp / "gw.sock"), "-v"],
        log,
    )
    wait_for_line(log, "gateway ready", gw, 20, "the gateway")
    return gw


def start_client(net: Net, user: str, log_name: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = net.tmp / (log_name or f"{user}.log")
    cl = popen_tunvpn(
        net.client,
        [
            "connect",
            "-c",
            str(profile(net, user)),
            "--password-file",
            str(net.tmp / f"{user}.pw"),
            "--json",
            "--tun",
            "tvcl%d",
            "--control",
            "none",
            "--dns-backend",
            "none",
            "-v",
        ],
        log,
    )
    return cl, log


def records(log: Path, event: str, state: str | None = None) -> list[dict]:
    return [r for r in json_records(log) if r["event"] == event and (state is None or r["state"] == state)]


def ping(net: Net, address: str, count: int = 2, interval: str = "0.2") -> subprocess.CompletedProcess[str]:
    return run_in(
        net.client,
        ["ping", "-n", "-c", str(count), "-i", interval, "-W", "2", address],
        check=False,
        timeout=60,
    )


def status(net: Net) -> dict:
    out = run_tunvpn(net.gateway, ["status", "--socket", str(net.tmp / "gw.sock"), "--json"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def spis(st: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for tunnel in st["tunnels"]:
        for sa in tunnel["sas"]:
            out.setdefault(sa["name"], set()).add(sa["spi_in"])
    return out


def test_three_line_profile_gets_every_sa_and_follows_a_live_change(net: Net) -> None:
    gw = start_gateway(net)
    cl, log = start_client(net, "alice")
    try:
        wait_for_line(log, '"state": "up"', cl, 40, "alice's SAs")
        up = {r["name"]: r for r in records(log, "quick", "established")}
        assert set(up) == {"net-a", "net-b", "eng"}
        assert (up["net-a"]["esp"], up["net-a"]["pfs_group"]) == ("aes256gcm16", 19)
        assert (up["net-b"]["esp"], up["net-b"]["pfs_group"]) == ("aes128gcm16", None)
        assert up["eng"]["pfs_group"] == 20
        assert all(r["esn"] is False for r in up.values())  # 32-bit preferred (docs/proposals.md)
        [modecfg] = records(log, "modecfg", "received")
        assert modecfg["address"] == "10.79.0.10"
        for host in ("10.78.0.10", "10.78.1.10", "10.20.0.10"):
            result = ping(net, host)
            assert result.returncode == 0, f"{host}: {result.stdout}{result.stderr}"
        before = spis(status(net))
        assert set(before) == {"net-a", "net-b", "eng"}

        # a paced transfer and a steady ping on the unchanged SA (net-a) across the reload
        sink = subprocess.Popen(
            ["ip", "netns", "exec", net.server, sys.executable, "-c", SINK, "10.78.0.10"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None and "listening" in sink.stdout.readline()
        source = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                net.client,
                sys.executable,
                "-c",
                SOURCE,
                "10.78.0.10",
                str(16 << 20),
                "6",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        pinger = subprocess.Popen(
            ["ip", "netns", "exec", net.client, "ping", "-n", "-c", "60", "-i", "0.1", "10.78.0.10"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        (net.tmp / "gateway.toml").write_text(CHANGED)
        reload = run_tunvpn(net.gateway, ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "net-c" in reload.stdout and "net-b" in reload.stdout
        assert "needs a restart" not in reload.stdout, reload.stdout  # --control is not a change
        wait_for(lambda: records(log, "update"), 10, "the client's update record")
        wait_for(
            lambda: any(r["name"] == "net-c" for r in records(log, "quick", "established")),
            20,
            "the net-c SA",
        )
        out, _ = source.communicate(timeout=90)
        sent, digest, received, echoed = out.split()
        assert int(sent) == int(received) == 16 << 20 and digest == echoed
        ping_out, _ = pinger.communicate(timeout=60)
        assert " 0% packet loss" in ping_out, ping_out
        sink.wait(timeout=10)
        assert sink.stdout is not None
        sink.stdout.close()

        [update] = records(log, "update")
        assert update["added"] == ["net-c"] and update["removed"] == ["net-b"]
        assert sorted(update["unchanged"]) == ["eng", "net-a"] and update["changed"] == []
        after = spis(status(net))
        assert after["net-a"] == before["net-a"], "the unchanged SA was replaced"
        assert after["eng"] == before["eng"]
        assert "net-b" not in after and "net-c" in after
        assert ping(net, "10.78.2.10").returncode == 0
        assert ping(net, "10.78.1.10", count=1).returncode != 0  # no SA, no route any more
        assert status(net)["generation"] == 2

        # a broken file is refused with its line and key; the running configuration stays
        (net.tmp / "gateway.toml").write_text(
            CHANGED.replace('esp = "aes256-sha256"', 'esp = "aes256-rot13"')
        )
        bad = run_tunvpn(net.gateway, ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert bad.returncode != 0
        message = bad.stdout + bad.stderr
        assert re.search(r"gateway\.toml line \d+, key policy\[1\]\.esp: unknown ESP suite", message), message
        assert "running configuration is kept" in message, message
        assert status(net)["generation"] == 2
        assert ping(net, "10.78.2.10").returncode == 0
    finally:
        stop_process(cl)
        stop_process(gw)
    gw_log = read_text(net.tmp / "gateway.log")
    assert "pushed policy generation 2" in gw_log
    assert PSK not in gw_log and "alice-pw" not in gw_log and "alice-pw" not in read_text(log)


def test_a_non_member_does_not_get_the_group_subnet(net: Net) -> None:
    gw = start_gateway(net)
    cl, log = start_client(net, "bob")
    try:
        wait_for_line(log, '"state": "up"', cl, 40, "bob's SAs")
        assert {r["name"] for r in records(log, "quick", "established")} == {"net-a", "net-b"}
        assert ping(net, "10.78.0.10").returncode == 0
        unreachable = ping(net, "10.20.0.10", count=1)
        assert unreachable.returncode != 0
    finally:
        stop_process(cl)
        stop_process(gw)


def test_wrong_psk_and_unknown_user_are_refused_clearly(net: Net) -> None:
    gw = start_gateway(net)
    try:
        private_file(net.tmp / "wrong.psk", "not-the-right-secret\n")
        bad = profile(net, "alice", psk_file="wrong.psk")
        out = run_tunvpn(
            net.client,
            [
                "connect",
                "-c",
                str(bad),
                "--password-file",
                str(net.tmp / "alice.pw"),
                "--ike-only",
                "--timeout",
                "20",
            ],
        )
        assert out.returncode == 1
        assert re.search(
            r"pre-shared key|AUTHENTICATION[-_]FAILED|authentication failed", out.stderr, re.I
        ), out.stderr

        private_file(net.tmp / "mallory.pw", "whatever\n")
        out = run_tunvpn(
            net.client,
            [
                "connect",
                "-c",
                str(profile(net, "mallory")),
                "--password-file",
                str(net.tmp / "mallory.pw"),
                "--ike-only",
                "--timeout",
                "20",
            ],
        )
        assert out.returncode == 1
        assert "the gateway rejected user 'mallory'" in out.stderr, out.stderr
    finally:
        stop_process(gw)
    assert "whatever" not in read_text(net.tmp / "gateway.log")


def test_a_dns_change_by_reload_reaches_the_connected_clients_resolver(net: Net) -> None:
    """Issue 18: new DNS servers and domains in gateway.toml reach a connected client by the
    reload's CFG_SET, and its resolver configuration (here the file backend) follows at once;
    its SAs stay."""
    resolv = net.tmp / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    gw = start_gateway(net)
    log = net.tmp / "alice-dns.log"
    argv = ["connect", "-c", str(profile(net, "alice")), "--password-file", str(net.tmp / "alice.pw")]
    argv += ["--json", "--tun", "tvcl%d", "--control", "none", "--dns-backend", "file", "-v"]
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.tmp / "run"), "TUNVPN_RESOLV_CONF": str(resolv)}
    cl = popen_in(net.client, tunvpn_argv(*argv), log, env=env)
    try:
        wait_for_line(log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        wait_for(lambda: "10.78.0.53" in resolv.read_text(), 10, "the first DNS server")
        assert "corp.example" in resolv.read_text()
        before = spis(status(net))
        (net.tmp / "gateway.toml").write_text(
            INITIAL.replace('dns = ["10.78.0.53"]', 'dns = ["10.78.0.54"]').replace(
                'domains = ["corp.example"]', 'domains = ["corp2.example"]'
            )
        )
        reload = run_tunvpn(net.gateway, ["reload", "--socket", str(net.tmp / "gw.sock")])
        assert reload.returncode == 0 and "DNS/banner changed" in reload.stdout, reload.stdout
        wait_for(lambda: "10.78.0.54" in resolv.read_text(), 10, "the new DNS server in the resolver")
        text = resolv.read_text()
        assert "10.78.0.53" not in text and "corp2.example" in text, text
        assert spis(status(net)) == before  # the SAs and their traffic were left alone
        assert [r for r in records(log, "modecfg", "updated")], read_text(log)[-3000:]
    finally:
        stop_process(cl)
        stop_process(gw)
    assert resolv.read_text() == "nameserver 192.0.2.53\n"  # restored at exit
