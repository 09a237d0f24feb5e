"""``tunvpn bench`` for real: short runs over veth, WireGuard and tunvpn in namespaces (the report
maths and formatting are tested without root in tests/unit/bench/)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tunvpn.bench.providers import NotAvailable, TunnelProvider
from tunvpn.bench.report import STATUS_FAILED, STATUS_NOT_AVAILABLE, STATUS_OK, readme_table
from tunvpn.bench.runner import BenchOptions, run_bench


class _Unreachable(TunnelProvider):
    """Says it is up but hands back an address nothing answers: must end "not available"."""

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        self.program = "test provider"
        return ip_a, "10.99.0.2"


class _Broken(TunnelProvider):
    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        raise NotAvailable("no such VPN here")


def _namespaces() -> set[str]:
    return (
        {n for n in os.listdir("/run/netns") if n.startswith("tvb")} if os.path.isdir("/run/netns") else set()
    )


@pytest.mark.interop
def test_bench_veth_and_wireguard(tmp_path: Path) -> None:
    lacking = [tool for tool in ("iperf3", "wireguard-go", "wg") if shutil.which(tool) is None]
    if lacking:
        reason = f"missing {', '.join(lacking)} (bash contrib/test-all.sh installs them)"
        if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
            pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    before = _namespaces()
    options = BenchOptions(
        paths=["veth", "unreachable", "wireguard", "broken"],
        duration=2,
        pings=5,
        ping_timeout=2,
        setup_timeout=20,
        workdir_parent=tmp_path,
    )
    report = run_bench(options, {"unreachable": _Unreachable, "broken": _Broken})

    assert [p.name for p in report.paths] == ["veth", "unreachable", "wireguard", "broken"]
    for name in ("veth", "wireguard"):
        path = report.path(name)
        assert path is not None and path.status == STATUS_OK, path
        [one] = path.runs
        assert one.ok and not one.errors, one
        assert one.tcp_receiver_mbps is not None and one.tcp_receiver_mbps > 0
        assert one.tcp_sender_mbps is not None and one.tcp_sender_mbps > 0
        assert one.retransmits is not None and one.retransmits >= 0
        assert one.ping_avg_ms is not None and one.ping_avg_ms > 0 and one.ping_loss_pct == 0
        assert one.cpu_busy_pct is not None and 0 < one.cpu_busy_pct <= 100
        assert one.via_tunnel is True
    wireguard = report.path("wireguard")
    assert wireguard is not None
    assert wireguard.tunnel == ("10.80.0.1", "10.80.0.2") and wireguard.mtu == 1420
    assert wireguard.device.endswith("wa") and "ChaCha20" in wireguard.cipher
    assert set(wireguard.runs[0].daemon_cpu_pct) == {"wireguard-go-a", "wireguard-go-b"}
    unreachable = report.path("unreachable")
    assert unreachable is not None and unreachable.status == STATUS_NOT_AVAILABLE
    assert "did not pass ping" in unreachable.reason and unreachable.runs == []
    broken = report.path("broken")
    assert (
        broken is not None and broken.status == STATUS_NOT_AVAILABLE and broken.reason == "no such VPN here"
    )
    assert STATUS_FAILED not in {p.status for p in report.paths}

    text = report.to_markdown()
    assert "| veth |" in text and "| wireguard |" in text
    assert "| unreachable | not available: the tunnel did not pass ping" in text
    assert json.loads(report.to_json())["paths"][2]["median"]["tcp_receiver_mbps"] > 0
    # everything it made is gone: namespaces, wireguard-go sockets, work dir, state file
    assert _namespaces() <= before
    assert not list(Path("/run/wireguard").glob("tvb*.sock"))  # (an empty list if the dir is gone)
    assert list(tmp_path.iterdir()) == []
    assert not Path(f"/run/tunvpn-bench/{os.getpid()}.json").exists()


@pytest.mark.interop
def test_the_ipv6_variant_runs_tunvpn_and_wireguard_over_ipv6(tmp_path: Path) -> None:
    """Issue 19: ``tunvpn bench --ipv6``: the underlay and the inner traffic are IPv6 on every
    path; the same table and ratios (a short smoke run: the figures are in docs/ipv6.md)."""
    lacking = [tool for tool in ("iperf3", "wireguard-go", "wg") if shutil.which(tool) is None]
    if lacking:
        pytest.skip(f"missing {', '.join(lacking)} (bash contrib/test-all.sh installs them)")
    options = BenchOptions(
        paths=["wireguard", "tunvpn"],
        duration=2,
        pings=5,
        setup_timeout=30,
        workdir_parent=tmp_path,
        ipv6=True,
    )
    report = run_bench(options)
    wireguard, tunvpn = report.path("wireguard"), report.path("tunvpn")
    assert wireguard is not None and tunvpn is not None
    for path in (wireguard, tunvpn):
        assert path.status == STATUS_OK, path
        [one] = path.runs
        assert one.ok and one.via_tunnel is True, one
        assert one.tcp_receiver_mbps is not None and one.tcp_receiver_mbps > 0
        assert one.ping_avg_ms is not None and one.ping_loss_pct == 0
    assert wireguard.tunnel == ("fd80::1", "fd80::2")
    assert tunvpn.tunnel[0] == "fd82::1" and tunvpn.tunnel[1].startswith("fd83::"), tunvpn.tunnel
    text = report.to_markdown()
    assert "IPv6 variant" in text and "tunvpn / wireguard = " in text, text


@pytest.mark.interop
def test_latency_under_load_veth_and_tunvpn_without_wire_offloads(tmp_path: Path) -> None:
    """Issue 21, a short smoke run: pings during one TCP flow each way, per path, with
    ``--wire-gso off``; the fields are there and positive (no figure is judged here: the
    figures are in docs/bench/bench-2026-12-06-load*.json)."""
    lacking = [tool for tool in ("iperf3", "ethtool") if shutil.which(tool) is None]
    if lacking:
        reason = f"missing {', '.join(lacking)} (bash contrib/test-all.sh installs them)"
        if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
            pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    before = _namespaces()
    options = BenchOptions(
        paths=["veth", "tunvpn"],
        duration=2,
        pings=5,
        setup_timeout=30,
        workdir_parent=tmp_path,
        wire_gso="off",
    )
    report = run_bench(options)

    assert report.wire["setting"] == "off"
    for side in ("a", "b"):
        assert report.wire[side]["tx-udp-segmentation"] == "off", report.wire
        assert report.wire[side]["generic-receive-offload"] == "off", report.wire
    for name in ("veth", "tunvpn"):
        path = report.path(name)
        assert path is not None and path.status == STATUS_OK, path
        [one] = path.runs
        assert one.ok and not one.errors and one.via_tunnel is True, one
        assert path.mtu is not None and path.mtu > 0 and path.mtu_b is not None and path.mtu_b > 0
        assert one.ping_p50_ms is not None and one.ping_p95_ms is not None and one.ping_p95_ms > 0
        for way in ("ab", "ba"):
            assert (getattr(one, f"load_{way}_mbps") or 0) > 0, (name, way, one)
            assert (getattr(one, f"load_{way}_pings") or 0) > 0, (name, way, one)
            for what in ("avg", "min", "max", "p50", "p95"):
                value = getattr(one, f"load_{way}_ping_{what}_ms")
                assert value is not None and value > 0, (name, way, what, one)
            assert getattr(one, f"load_{way}_ping_loss_pct") is not None
        assert one.udp_drops is not None and one.udp_drops >= 0
    tunvpn = report.path("tunvpn")
    assert tunvpn is not None
    sockets = [s for side in ("a", "b") for s in tunvpn.udp_buffers.get(side, [])]
    assert sockets and all(s["rcvbuf"] > 0 and s["sndbuf"] > 0 for s in sockets), tunvpn.udp_buffers
    text = report.to_markdown()
    assert "ping under load A->B avg ms (p95, max)" in text and "--wire-gso off" in text
    assert "| tunvpn |" in readme_table(report)
    assert _namespaces() <= before
    assert list(tmp_path.iterdir()) == []
