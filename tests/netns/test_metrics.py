"""The Prometheus endpoint of a running gateway (issue 20): ``[gateway] metrics`` on the
gateway's loopback, scraped after one login and 20 pings of 1,000 octets through the tunnel.
Real ``tunvpn gateway`` / ``tunvpn connect`` processes, TUN devices::

    client c 10.95.0.2 ------ 10.95.0.1 gateway g (10.78.0.1 on its lo; metrics 127.0.0.1:9477)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, popen_in, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import private_file, read_text, tunvpn_argv, tunvpn_env, wait_for_line

pytest.importorskip("prometheus_client")

PINGS, SIZE = 20, 1000
PING_OCTETS = PINGS * (SIZE + 28)  # IPv4 and ICMP headers: what one SA carries each way, at least
SCRAPE = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())"
)


@pytest.fixture
def namespaces() -> Iterator[tuple[Topology, str, str]]:
    with Topology() as topo:
        c, g = topo.add_ns("c"), topo.add_ns("g")
        topo.link(c, "10.95.0.2/24", g, "10.95.0.1/24", names=(topo.tag + "cg", topo.tag + "gc"))
        topo.add_addr(g, "10.78.0.1/32")
        yield topo, c, g


def scrape(g: str) -> dict[str, float]:
    text = run_in(g, [sys.executable, "-c", SCRAPE]).stdout
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_count_the_login_and_the_pings(namespaces: tuple[Topology, str, str], tmp_path: Path) -> None:
    _topo, c, g = namespaces
    private_file(tmp_path / "psk", "metrics-test-psk-0123456789abcdef\n")
    private_file(tmp_path / "users", "alice:wonderland\n")
    private_file(tmp_path / "pw", "wonderland\n")
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nlisten = "10.95.0.1"\npsk_file = "psk"\nusers_file = "users"\ntun = "tvgw%d"\n'
        'control_socket = "gw.sock"\nmetrics = "127.0.0.1:9477"\n\n'
        '[network]\npool = "10.79.0.10-10.79.0.20"\n\n[[policy]]\nname = "lan"\nlocal = "10.78.0.0/24"\n'
    )
    gw_log = tmp_path / "gateway.log"
    gateway = popen_in(
        g, tunvpn_argv("gateway", "-c", str(tmp_path / "gateway.toml"), "-v"), gw_log, env=tunvpn_env()
    )
    procs = [gateway]
    try:
        wait_for_line(gw_log, "metrics on http://127.0.0.1:9477/metrics", gateway, 30, "the metrics endpoint")
        before = scrape(g)
        assert before["tunvpn_logins_total"] == 0 and before["tunvpn_sessions"] == 0, before
        profile = private_file(
            tmp_path / "client.toml",
            'gateway = "10.95.0.1"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n',
        )
        log = tmp_path / "client.log"
        argv = [
            "connect",
            "-c",
            str(profile),
            "--tun",
            "tvcl%d",
            "--json",
            "--control",
            "none",
            "--dns-backend",
            "none",
        ]
        env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(tmp_path / "run")}
        client = popen_in(c, tunvpn_argv(*argv), log, env=env)
        procs.append(client)
        wait_for_line(log, "IPsec SA pair(s) up", client, 30, "the client's tunnel")
        ping = run_in(
            c,
            ["ping", "-q", "-c", str(PINGS), "-i", "0.05", "-s", str(SIZE), "-W", "2", "10.78.0.1"],
            check=False,
        )
        assert ping.returncode == 0 and f"{PINGS} received" in ping.stdout, (
            ping.stdout + read_text(log)[-2000:]
        )
        wait_for(
            lambda: scrape(g)['tunvpn_sa_bytes_total{direction="out"}'] >= PING_OCTETS, 10, "the counters"
        )
        after = scrape(g)
        assert after["tunvpn_logins_total"] == 1, after
        assert after["tunvpn_sessions"] == 1 and after["tunvpn_users"] == 1 and after["tunvpn_ipsec_sas"] == 1
        assert after['tunvpn_sa_bytes_total{direction="in"}'] >= PING_OCTETS, after
        assert after['tunvpn_sa_bytes_total{direction="out"}'] >= PING_OCTETS, after
        assert after['tunvpn_sa_packets_total{direction="in"}'] >= PINGS, after
        assert not any(re.search(r"spi|user=", key) for key in after), "no SPI, no user label by default"
        stop_process(client)
        wait_for(lambda: scrape(g)["tunvpn_logouts_total"] == 1, 15, "the logout")
        gone = scrape(g)
        assert gone["tunvpn_sessions"] == 0 and gone["tunvpn_ipsec_sas"] == 0
        # the totals keep what the SA carried after it went (counters only grow)
        assert gone['tunvpn_sa_bytes_total{direction="in"}'] >= after['tunvpn_sa_bytes_total{direction="in"}']
    finally:
        for proc in reversed(procs):
            stop_process(proc)
