"""Issue 21: latency under load, the wire's offload setting, openvpn-bigbuf, and the report
fields and tables they add (no root; the real short run is tests/netns/test_bench.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from tunvpn.bench import cli as bench_cli
from tunvpn.bench.measure import (
    load_ping_plan,
    parse_ping,
    parse_ping_replies,
    parse_ping_window,
    parse_ss_udp,
    percentile,
)
from tunvpn.bench.providers import OPENVPN_BIG_BUFFER, PROVIDERS, OpenVPNProvider, TunvpnProvider
from tunvpn.bench.report import (
    STATUS_NOT_AVAILABLE,
    WIRE_SETTINGS,
    BenchReport,
    PathResult,
    RunResult,
    describe_wire,
    median_run,
    mtu_text,
    readme_table,
    short_cipher,
)
from tunvpn.bench.runner import BenchError, BenchOptions, resolve_paths, run_bench
from tunvpn.bench.system import WIRE_ETHTOOL, parse_ethtool_features


def ping_output(times: dict[int, float], sent: int | None = None, summary: bool = True) -> str:
    lines = ["PING 10.80.0.2 (10.80.0.2) 56(84) bytes of data."]
    lines += [f"64 bytes from 10.80.0.2: icmp_seq={seq} ttl=64 time={ms} ms" for seq, ms in times.items()]
    if summary:
        n = sent if sent is not None else max(times)
        lost = round(100 * (n - len(times)) / n)
        lines += [
            "",
            "--- 10.80.0.2 ping statistics ---",
            f"{n} packets transmitted, {len(times)} received, {lost}% packet loss, time 999ms",
            "rtt min/avg/max/mdev = 0.100/0.550/1.000/0.287 ms",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- ping parsing


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 50) == 10.0 and percentile(values, 95) == 19.0
    assert percentile(values, 100) == 20.0 and percentile(values, 0) == 1.0
    assert percentile([3.0], 95) == 3.0


def test_parse_ping_per_reply_lines() -> None:
    times = {seq: round(0.1 * seq, 3) for seq in range(1, 11)}  # 0.1 .. 1.0 ms
    text = ping_output(times)
    text += "64 bytes from 10.80.0.2: icmp_seq=3 ttl=64 time=9.9 ms (DUP!)\n"
    assert parse_ping_replies(text) == times
    stats = parse_ping(text)
    # min/avg/max from the summary line, percentiles from the replies
    assert (stats.min_ms, stats.avg_ms, stats.max_ms, stats.loss_pct) == (0.1, 0.55, 1.0, 0.0)
    assert stats.p50_ms == 0.5 and stats.p95_ms == 1.0 and stats.replies == 10
    quiet = parse_ping(
        "rtt min/avg/max/mdev = 0.301/0.452/0.912/0.101 ms\n"
        "1 packets transmitted, 1 received, 0% packet loss\n"
    )
    assert quiet.avg_ms == 0.452 and quiet.p95_ms is None and quiet.replies is None


def test_parse_ping_window_counts_only_the_loaded_part() -> None:
    # 30 pings sent; the first 10 (slow start) are left out; 25 and 26 got no reply
    times = {seq: (5.0 if seq <= 10 else 1.0 + seq / 100) for seq in range(1, 31) if seq not in (25, 26)}
    stats = parse_ping_window(ping_output(times, sent=30), 11, 30)
    assert stats.replies == 18
    assert stats.loss_pct == pytest.approx(10.0)  # 2 of 20
    assert stats.min_ms == 1.11 and stats.max_ms == 1.3 and stats.p50_ms == 1.19
    assert stats.avg_ms == pytest.approx(sum(t for s, t in times.items() if s > 10) / 18, abs=1e-3)
    # ping stopped early (deadline): only what was sent counts; no summary: the highest seq seen
    early = parse_ping_window(ping_output({s: 1.0 for s in range(1, 16)}, summary=False), 11, 30)
    assert early.replies == 5 and early.loss_pct == 0.0
    nothing = parse_ping_window(
        "PING x\n--- x ---\n30 packets transmitted, 0 received, 100% packet loss\n", 11, 30
    )
    assert nothing.avg_ms is None and nothing.replies == 0 and nothing.loss_pct == 100.0


def test_load_ping_plan() -> None:
    assert load_ping_plan(6, 0.05) == (110, 20)  # 5.5 s of pings, the first second left out
    assert load_ping_plan(2, 0.05) == (30, 10)
    count, skip = load_ping_plan(0.5, 0.05)
    assert count >= 1 and 0 <= skip < count


# --------------------------------------------------------------------------- ss and ethtool

SS_OUTPUT = (
    'UNCONN 0      0      10.77.0.1:4500 0.0.0.0:* users:(("python",pid=4242,fd=7))\n'
    "\t skmem:(r0,rb16777216,t0,tb16777216,f4096,w0,o0,bl0,d3)\n"
    'UNCONN 0      0      10.77.0.1:1194 0.0.0.0:* users:(("openvpn",pid=99,fd=5))\n'
    "\t skmem:(r0,rb8388608,t0,tb425984,f0,w0,o0,bl0,d0)\n"
)


def test_parse_ss_udp() -> None:
    first, second = parse_ss_udp(SS_OUTPUT)
    assert (first.local, first.rcvbuf, first.sndbuf, first.drops, first.program) == (
        "10.77.0.1:4500",
        16777216,
        16777216,
        3,
        "python",
    )
    assert (second.program, second.rcvbuf, second.sndbuf, second.drops) == ("openvpn", 8388608, 425984, 0)
    assert parse_ss_udp("") == []


ETHTOOL_K = """\
Features for tvb123456av:
rx-checksumming: on
tcp-segmentation-offload: on
\ttx-tcp-segmentation: on
generic-segmentation-offload: on
generic-receive-offload: off
large-receive-offload: off [fixed]
tx-udp-segmentation: on
rx-gro-list: off
rx-udp-gro-forwarding: off
"""


def test_parse_ethtool_features_and_settings() -> None:
    features = parse_ethtool_features(ETHTOOL_K)
    assert features["tx-udp-segmentation"] == "on" and features["generic-receive-offload"] == "off"
    assert features["large-receive-offload"] == "off" and features["tx-tcp-segmentation"] == "on"
    assert "Features for tvb123456av" not in features
    assert set(WIRE_ETHTOOL) == set(WIRE_SETTINGS) == {"on", "off", "gro"}
    assert WIRE_ETHTOOL["on"] == ()
    assert ("tx-udp-segmentation", "off") in WIRE_ETHTOOL["off"]
    assert ("generic-receive-offload", "off") in WIRE_ETHTOOL["off"]
    text = describe_wire({"setting": "off", "a": features, "b": features})
    assert text.startswith("--wire-gso off: UDP segmentation offload and GRO off")
    assert "veth in A: tx-udp-segmentation on" in text and "veth in B:" in text
    assert "features not read: no ethtool" in describe_wire({"setting": "on", "error": "no ethtool"})


# --------------------------------------------------------------------------- options and paths


def parsed(*argv: str) -> BenchOptions:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return bench_cli.options_from_args(parser.parse_args(list(argv)))


def test_cli_options_for_issue_21() -> None:
    default = parsed()
    assert default.wire_gso == "on" and default.load_ping_interval == 0.05
    options = parsed("--wire-gso", "off", "--load-ping-interval", "0.1", "--paths", "openvpn-bigbuf,tunvpn")
    assert options.wire_gso == "off" and options.load_ping_interval == 0.1
    assert parsed("--load-ping-interval", "0").load_ping_interval == 0.0
    assert options.to_dict()["wire_gso"] == "off" and options.to_dict()["load_ping_interval"] == 0.1
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    for bad in (["--wire-gso", "maybe"], ["--load-ping-interval", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_bad_wire_setting_is_refused_before_anything_runs() -> None:
    with pytest.raises(BenchError):
        run_bench(BenchOptions(paths=["veth"], wire_gso="maybe"))


def test_openvpn_bigbuf_path() -> None:
    assert resolve_paths(["openvpn", "openvpn-bigbuf"]) == ["openvpn", "openvpn-bigbuf"]
    no_busy = PROVIDERS["tunvpn-no-busy-poll"]()
    assert isinstance(no_busy, TunvpnProvider)
    assert no_busy.gateway_args == no_busy.client_args == ["--busy-poll", "0"]
    provider = PROVIDERS["openvpn-bigbuf"]()
    assert isinstance(provider, OpenVPNProvider) and provider.name == "openvpn-bigbuf"
    assert OPENVPN_BIG_BUFFER == 8388608
    assert provider.extra_args == ["--sndbuf", "8388608", "--rcvbuf", "8388608"]
    plain = PROVIDERS["openvpn"]()
    assert isinstance(plain, OpenVPNProvider) and plain.extra_args == [] and plain.name == "openvpn"


# --------------------------------------------------------------------------- report


def loaded_run(rx: float, back: float, ab: float, ba: float, idle: float = 0.5) -> RunResult:
    return RunResult(
        tcp_sender_mbps=rx + 3,
        tcp_receiver_mbps=rx,
        retransmits=5,
        ping_avg_ms=idle,
        ping_min_ms=idle / 2,
        ping_max_ms=idle * 2,
        ping_loss_pct=0.0,
        ping_p50_ms=idle,
        ping_p95_ms=idle * 1.5,
        load_ab_mbps=rx,
        load_ab_ping_avg_ms=ab,
        load_ab_ping_min_ms=ab / 4,
        load_ab_ping_max_ms=ab * 3,
        load_ab_ping_p50_ms=ab,
        load_ab_ping_p95_ms=ab * 2,
        load_ab_ping_loss_pct=0.0,
        load_ab_pings=90,
        load_ba_mbps=back,
        load_ba_ping_avg_ms=ba,
        load_ba_ping_min_ms=ba / 4,
        load_ba_ping_max_ms=ba * 3,
        load_ba_ping_p50_ms=ba,
        load_ba_ping_p95_ms=ba * 2,
        load_ba_ping_loss_pct=2.0,
        load_ba_pings=88,
        cpu_busy_pct=95.0,
        cpu_background_pct=1.0,
        udp_drops=4,
        via_tunnel=True,
    )


def loaded_report() -> BenchReport:
    paths = [
        PathResult(
            "veth", cipher="none", mtu=1500, mtu_b=1500, runs=[loaded_run(30000, 29000, 0.5, 0.6, 0.03)]
        ),
        PathResult(
            "openvpn",
            cipher="AES-256-GCM (TLS p2p, TLSv1.3 TLS_AES_256_GCM_SHA384)",
            mtu=1500,
            mtu_b=1500,
            udp_buffers={
                "a": [
                    {
                        "local": "10.77.0.1:1194",
                        "rcvbuf": 425984,
                        "sndbuf": 425984,
                        "drops": 7,
                        "program": "openvpn",
                    }
                ],
                "b": [],
            },
            runs=[loaded_run(1000, 900, 3.0, 4.0), loaded_run(1200, 1100, 5.0, 6.0)],
        ),
        PathResult(
            "openvpn-bigbuf",
            cipher="AES-256-GCM (TLS p2p)",
            mtu=1500,
            runs=[loaded_run(1100, 1000, 9.0, 9.0)],
        ),
        PathResult(
            "wireguard",
            cipher="ChaCha20-Poly1305 (WireGuard)",
            mtu=1420,
            runs=[loaded_run(700, 650, 2.0, 2.5)],
        ),
        PathResult("strongswan-gcm256", status=STATUS_NOT_AVAILABLE, reason="missing charon"),
        PathResult(
            "tunvpn",
            cipher="ESP aes256gcm16 TUNNEL-in-UDP",
            device="tun0",
            mtu=1400,
            device_b="tun1",
            mtu_b=1420,
            runs=[loaded_run(2200, 2000, 3.5, 2.0)],
        ),
    ]
    return BenchReport(
        paths=paths,
        options={"duration": 6.0, "pings": 20, "ping_interval": 0.2, "repeat": 2, "load_ping_interval": 0.05},
        host={"kernel": "Linux 6.1", "cores": 2, "tunvpn_source": "git 0123456789ab (clean)"},
        started="2026-12-06T16:00Z",
        command="tunvpn bench --repeat 2 -t 6",
        wire={"setting": "on", "a": {"tx-udp-segmentation": "on"}, "b": {"tx-udp-segmentation": "on"}},
    )


def test_medians_of_the_load_fields() -> None:
    report = loaded_report()
    openvpn = report.path("openvpn")
    assert openvpn is not None
    med = median_run(openvpn.runs)
    assert med is not None
    assert med.load_ab_ping_avg_ms == pytest.approx(4.0) and med.load_ba_ping_p95_ms == pytest.approx(10.0)
    assert med.load_ba_mbps == pytest.approx(1000.0) and med.load_ab_pings == 90 and med.udp_drops == 4
    assert report.load_ping("openvpn", "ab") == pytest.approx(4.0)
    assert report.load_ping("openvpn", "ba", "max") == pytest.approx(15.0)
    assert report.load_ping("strongswan-gcm256", "ab") is None
    assert report.has_load_pings()


def test_goals_under_load() -> None:
    goals = {g.text: g for g in loaded_report().goals()}
    load = {text: g for text, g in goals.items() if "under load" in text}
    assert set(load) == {
        f"ping RTT under load (avg, A->B and B->A flows) no worse than {name}'s"
        for name in ("openvpn", "openvpn-bigbuf", "wireguard")
    }
    # tunvpn 3.5 / 2.0 ms against openvpn 4.0 / 5.0: met; against wireguard 2.0 / 2.5: A->B lost
    assert load["ping RTT under load (avg, A->B and B->A flows) no worse than openvpn's"].met is True
    wg = load["ping RTT under load (avg, A->B and B->A flows) no worse than wireguard's"]
    assert (
        wg.met is False
        and wg.value == "A->B tunvpn 3.50 ms, wireguard 2.00 ms; B->A tunvpn 2.00 ms, wireguard 2.50 ms"
    )
    # the throughput goals still name every OpenVPN variant
    assert any("tunvpn / openvpn-bigbuf = 2.00x" in g.value for g in goals.values())


def test_markdown_with_load_columns() -> None:
    report = loaded_report()
    text = report.to_markdown()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| path |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for wanted in (
        "TCP B->A Mbit/s (rx)",
        "ping under load A->B avg ms (p95, max)",
        "ping under load B->A avg ms (p95, max)",
        "MTU",
    ):
        assert wanted in columns, columns
    rows = {
        line.split("|")[1].strip(): dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        for line in lines
        if line.startswith("| ") and not line.startswith("| path")
    }
    assert all(len(row) == len(columns) for row in rows.values())
    openvpn = rows["openvpn"]
    assert openvpn["TCP B->A Mbit/s (rx)"] == "1000.0"
    assert openvpn["ping under load A->B avg ms (p95, max)"] == "4.000 (p95 8.000, max 12.000)"
    assert openvpn["ping under load B->A avg ms (p95, max)"] == "5.000 (p95 10.000, max 15.000), 2% lost"
    assert rows["tunvpn"]["MTU"] == "1400 / 1420" and rows["openvpn"]["MTU"] == "1500"
    assert "Goals (issues 3 and 21):" in text
    assert "Wire: --wire-gso on: the veth pair's offloads as the kernel sets them" in text
    assert "openvpn 10.77.0.1:1194 416/416 KiB (7 dropped)" in text
    assert "- tunvpn source: git 0123456789ab (clean)" in text
    # the reverse variant names the other way
    report.options["reverse"] = True
    assert "TCP A->B Mbit/s (rx)" in report.to_markdown()


def test_json_round_trip_keeps_the_new_fields() -> None:
    report = loaded_report()
    data = json.loads(report.to_json())
    assert data["wire"]["setting"] == "on"
    tunvpn = data["paths"][-1]
    assert tunvpn["mtu"] == 1400 and tunvpn["mtu_b"] == 1420 and tunvpn["device_b"] == "tun1"
    assert tunvpn["median"]["load_ab_ping_p95_ms"] == pytest.approx(7.0)
    assert data["paths"][1]["udp_buffers"]["a"][0]["drops"] == 7
    again = BenchReport.from_dict(data)
    assert again.to_markdown() == report.to_markdown()
    assert readme_table(again) == readme_table(report)


def test_readme_table() -> None:
    table = readme_table(loaded_report())
    lines = table.splitlines()
    assert lines[0] == (
        "| path | TCP A->B Mbit/s | TCP B->A Mbit/s | tunvpn / path (A->B, B->A) | ping idle ms avg (p95) "
        "| ping under load A->B ms avg / p95 / max | ping under load B->A ms avg / p95 / max "
        "| tunnel MTU | data cipher |"
    )
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    assert rows["openvpn"] == [
        "openvpn",
        "1100",
        "1000",
        "2.00x, 2.00x",
        "0.500 (0.750)",
        "4.00 / 8.00 / 12.00",
        "5.00 / 10.00 / 15.00 (2% lost)",
        "1500",
        "AES-256-GCM",
    ]
    assert rows["tunvpn"][1:4] == ["2200", "2000", ""] and rows["tunvpn"][7:] == [
        "1400 / 1420",
        "ESP aes256gcm16 TUNNEL-in-UDP",
    ]
    assert rows["strongswan-gcm256"][1] == "not available: missing charon"
    assert (
        short_cipher("ESP AES_GCM_16-256 TUNNEL-in-UDP; IKEv1 AES_CBC-128/...")
        == "ESP AES_GCM_16-256 TUNNEL-in-UDP"
    )
    assert mtu_text(PathResult("x")) == "" and mtu_text(PathResult("x", mtu=1420, mtu_b=1420)) == "1420"


def test_old_reports_render_as_before() -> None:
    """A report from before issue 21 (no load pings) keeps its table: no new columns or goals."""
    report = loaded_report()
    for p in report.paths:
        p.runs = [
            RunResult(
                tcp_sender_mbps=r.tcp_sender_mbps,
                tcp_receiver_mbps=r.tcp_receiver_mbps,
                ping_avg_ms=r.ping_avg_ms,
                via_tunnel=True,
            )
            for r in p.runs
        ]
    report.wire = {}
    text = report.to_markdown()
    assert not report.has_load_pings()
    assert "under load" not in text and "Goals (issue 3):" in text and "Wire:" not in text
