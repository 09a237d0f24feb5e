"""``tunvpn bench``: report maths and formatting (no root), and one real short run in namespaces.

The real run measures plain veth and wireguard-go for 2 seconds each and checks the report's
structure and that something flowed; speeds are never asserted (the box is shared and noisy).
"""

from __future__ import annotations

import argparse
import base64
import json
import re

import pytest

from tunvpn.bench import cli as bench_cli
from tunvpn.bench.measure import IperfError, parse_iperf, parse_ping
from tunvpn.bench.providers import TunnelProvider, self_signed_ec_cert, wg_keypair
from tunvpn.bench.report import (
    STATUS_NOT_AVAILABLE,
    BenchReport,
    PathResult,
    RunResult,
    median_run,
)
from tunvpn.bench.runner import resolve_paths
from tunvpn.bench.system import cpu_busy, cpu_sample

# --------------------------------------------------------------------------- parsers

PING_OUTPUT = """\
PING 10.80.0.2 (10.80.0.2) 56(84) bytes of data.

--- 10.80.0.2 ping statistics ---
20 packets transmitted, 19 received, 5% packet loss, time 3805ms
rtt min/avg/max/mdev = 0.301/0.452/0.912/0.101 ms
"""


def iperf_json(sent_bps: float, received_bps: float, retr: int = 7, nbytes: int = 1000) -> str:
    return json.dumps(
        {
            "start": {},
            "intervals": [],
            "end": {
                "sum_sent": {"bits_per_second": sent_bps, "retransmits": retr, "bytes": nbytes},
                "sum_received": {"bits_per_second": received_bps, "bytes": nbytes - 10},
            },
        }
    )


def test_parse_ping() -> None:
    stats = parse_ping(PING_OUTPUT)
    assert (stats.min_ms, stats.avg_ms, stats.max_ms, stats.loss_pct) == (0.301, 0.452, 0.912, 5.0)
    lost = parse_ping("3 packets transmitted, 0 received, 100% packet loss, time 2002ms\n")
    assert lost.avg_ms is None and lost.loss_pct == 100.0


def test_parse_iperf() -> None:
    result = parse_iperf(iperf_json(1_000_500_000, 990_000_000, retr=12, nbytes=5000))
    assert result.sender_mbps == pytest.approx(1000.5)
    assert result.receiver_mbps == pytest.approx(990.0)
    assert (result.retransmits, result.sent_bytes, result.received_bytes) == (12, 5000, 4990)
    with pytest.raises(IperfError, match="unable to connect"):
        parse_iperf(json.dumps({"start": {}, "error": "unable to connect to server"}))
    with pytest.raises(IperfError, match="no JSON"):
        parse_iperf("iperf3: error - something")


def test_cpu_busy_from_proc_stat_samples() -> None:
    sample = cpu_sample()
    assert sample.total > 0 and 0 <= sample.idle <= sample.total
    assert cpu_busy(sample, sample) == (None, None)
    before = type(sample)(total=1000, idle=600, steal=10)
    after = type(sample)(total=1200, idle=650, steal=30)
    busy, steal = cpu_busy(before, after)
    assert busy == pytest.approx(75.0) and steal == pytest.approx(10.0)


# --------------------------------------------------------------------------- report


def run(rx: float, ping: float = 0.5, retr: int = 10, **kw: object) -> RunResult:
    return RunResult(
        tcp_sender_mbps=rx + 5,
        tcp_receiver_mbps=rx,
        retransmits=retr,
        ping_avg_ms=ping,
        ping_min_ms=ping - 0.1,
        ping_max_ms=ping + 0.2,
        ping_loss_pct=0.0,
        cpu_busy_pct=90.0,
        cpu_background_pct=2.0,
        via_tunnel=True,
        **kw,  # type: ignore[arg-type]
    )


def sample_report(tunvpn_ok: bool = True) -> BenchReport:
    paths = [
        PathResult("veth", program="kernel veth (no VPN)", cipher="none", mtu=1500, runs=[run(30000, 0.03)]),
        PathResult(
            "openvpn",
            cipher="AES-256-GCM (TLS p2p)",
            mtu=1500,
            runs=[
                run(900, 0.3),
                run(1000, 0.25, notes=["TCP 1 stream retried: iperf3: the server has terminated"]),
                run(1100, 0.35, daemon_cpu_pct={"openvpn-a": 80.0}),
            ],
        ),
        PathResult(
            "wireguard", status=STATUS_NOT_AVAILABLE, reason="missing wireguard-go (Debian package x)"
        ),
        PathResult("strongswan", cipher="ESP AES_GCM_16-128 TUNNEL-in-UDP; IKEv1 x", runs=[run(500, 0.6)]),
    ]
    if tunvpn_ok:
        paths.append(PathResult("tunvpn", cipher="ESP aes128gcm16 TUNNEL-in-UDP", runs=[run(1200, 0.2)]))
    else:
        paths.append(
            PathResult(
                "tunvpn",
                status=STATUS_NOT_AVAILABLE,
                reason="the tunnel did not pass ping tvbx -> 10.83.0.10 within 15 s",
            )
        )
    return BenchReport(
        paths=paths,
        options={"duration": 10.0, "parallel": 0, "pings": 20, "ping_interval": 0.2, "repeat": 3},
        host={"kernel": "Linux 6.1", "cores": 2, "iperf3": "iperf 3.12"},
        started="2026-01-01T00:00Z",
        command="tunvpn bench --repeat 3",
    )


def test_median_over_runs_ignores_failed_ones() -> None:
    runs = [run(900, 0.3, retr=1), run(1100, 0.5, retr=4), RunResult(errors=["boom"]), run(1000, 0.4, retr=2)]
    med = median_run(runs)
    assert med is not None
    assert med.tcp_receiver_mbps == 1000 and med.ping_avg_ms == pytest.approx(0.4) and med.retransmits == 2
    assert med.via_tunnel is True
    assert median_run([RunResult(errors=["x"])]) is None


def test_ratios_and_goals() -> None:
    report = sample_report()
    assert report.throughput("openvpn") == 1000  # median of 900, 1000, 1100
    assert report.ratio("tunvpn", "openvpn") == pytest.approx(1.2)
    assert report.ratio("tunvpn", "strongswan") == pytest.approx(2.4)
    assert report.ratio("wireguard", "tunvpn") is None
    ratios = {(r.numerator, r.denominator): r.value for r in report.ratios()}
    assert ratios[("openvpn", "tunvpn")] == pytest.approx(1000 / 1200)
    assert ratios[("tunvpn", "strongswan")] == pytest.approx(2.4)
    assert ratios[("tunvpn", "wireguard")] is None
    assert report.added_rtt("tunvpn") == pytest.approx(0.17)
    goals = report.goals()
    assert [g.met for g in goals] == [True, True, True]
    assert "1.20x (aim 1.5x not reached)" in goals[0].value
    assert "AES_GCM_16-128 TUNNEL-in-UDP" in goals[1].text and "aes128gcm16" in goals[1].text
    assert "IKEv1" not in goals[1].text


def test_markdown_table() -> None:
    text = sample_report().to_markdown()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| path |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in lines
        if line.startswith("| ") and not line.startswith("| path")
    }
    assert set(rows) == {"veth", "openvpn", "wireguard", "strongswan", "tunvpn"}
    assert all(len(cells) == len(columns) for cells in rows.values())
    openvpn = dict(zip(columns, rows["openvpn"]))
    assert openvpn["TCP 1 stream Mbit/s (rx)"] == "1000.0"
    assert openvpn["x tunvpn"] == "0.83x"
    assert openvpn["% of veth"] == "3.3"
    assert openvpn["runs"] == "3/3"
    assert openvpn["ping avg ms (min-max)"] == "0.300 (0.200-0.500)"
    assert rows["wireguard"][1] == "not available: missing wireguard-go (Debian package x)"
    assert "tunvpn / openvpn = 1.20x" in text and "tunvpn / strongswan = 2.40x" in text
    assert "median of 3 runs per path" in text
    assert "openvpn-a 80%" in text
    assert "- openvpn run 2: TCP 1 stream retried: iperf3: the server has terminated" in text


def test_markdown_when_tunvpn_is_not_available() -> None:
    report = sample_report(tunvpn_ok=False)
    text = report.to_markdown()
    assert "| tunvpn | not available: the tunnel did not pass ping" in text
    assert "Ratios to tunvpn: n/a (tunvpn not available)." in text
    assert all(g.met is None for g in report.goals())
    assert "not judged" in text


def test_json_round_trip() -> None:
    report = sample_report()
    data = json.loads(report.to_json())
    assert [p["name"] for p in data["paths"]] == ["veth", "openvpn", "wireguard", "strongswan", "tunvpn"]
    assert data["paths"][1]["median"]["tcp_receiver_mbps"] == 1000
    assert data["paths"][1]["runs_ok"] == 3
    assert {"numerator": "tunvpn", "denominator": "openvpn", "value": pytest.approx(1.2)} in data["ratios"]
    again = BenchReport.from_dict(data)
    assert again.to_markdown() == report.to_markdown()


def test_path_names_and_cli_options() -> None:
    assert resolve_paths(["veth", "wireguard-go", "strongswan-gcm", "veth", " tunvpn "]) == [
        "veth",
        "wireguard",
        "strongswan",
        "tunvpn",
    ]
    with pytest.raises(ValueError, match="unknown path 'ipsec'"):
        resolve_paths(["ipsec"])
    assert resolve_paths(["mine"], {"mine": TunnelProvider}) == ["mine"]
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    args = parser.parse_args(["--paths", "veth,openvpn", "-t", "2", "-P", "4", "--repeat", "3", "--install"])
    options = bench_cli.options_from_args(args)
    assert options.paths == ["veth", "openvpn"] and options.duration == 2.0 and options.parallel == 4
    assert options.repeat == 3 and options.install and options.pings == 20 and options.ping_interval == 0.2
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeat", "0"])


def test_generated_credentials() -> None:
    key_pem, cert_pem, fingerprint = self_signed_ec_cert("bench-test")
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert re.fullmatch(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    private, public = wg_keypair()
    assert len(base64.b64decode(private)) == 32 and len(base64.b64decode(public)) == 32


def test_the_daemons_cpu_during_idle_pings_is_a_median_and_a_note() -> None:
    """Issue 21: what a path's latency costs at rest (tunvpn's busy polling) is in the report."""
    runs = [
        run(900, 0.3, daemon_idle_cpu_pct={"tunvpn-gateway": 0.4, "tunvpn-client": 0.2}),
        run(950, 0.3, daemon_idle_cpu_pct={"tunvpn-gateway": 0.2, "tunvpn-client": 0.1}),
        run(990, 0.3, daemon_idle_cpu_pct={"tunvpn-gateway": 0.3}),
    ]
    med = median_run(runs)
    assert med is not None
    assert med.daemon_idle_cpu_pct == pytest.approx({"tunvpn-client": 0.15, "tunvpn-gateway": 0.3})
    report = sample_report()
    report.paths[-1].runs = runs
    text = report.to_markdown()
    note = "- tunvpn: daemons during the idle pings (% of one core) tunvpn-client 0.2%, tunvpn-gateway 0.3%"
    assert note in text
    # a report written before the field existed renders as before: no such line
    assert "idle pings (%" not in BenchReport.from_dict(sample_report().to_dict()).to_markdown()
