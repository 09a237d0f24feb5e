"""``tunvpn bench``: throughput and RTT of tunvpn next to plain veth, OpenVPN, wireguard-go and
strongSwan (kernel-libipsec), measured in one run between two network namespaces.

API::

    from tunvpn.bench import BenchOptions, run_bench
    report = run_bench(BenchOptions(paths=["veth", "openvpn", "tunvpn"], duration=10))
    print(report.to_markdown())

Paths are ``TunnelProvider`` objects (``setup(ns_a, ns_b, ip_a, ip_b) -> (tunnel_ip_a,
tunnel_ip_b)`` and ``teardown()``); pass ``providers={"tunvpn": MyProvider}`` to run_bench to
add or replace one. This package does I/O (subprocesses, namespaces) and needs root.
"""

from tunvpn.bench.providers import (
    DEFAULT_PATHS,
    PROVIDERS,
    BenchContext,
    NotAvailable,
    OpenVPNProvider,
    StrongSwanProvider,
    TunnelProvider,
    TunvpnProvider,
    VethProvider,
    WireGuardProvider,
)
from tunvpn.bench.report import BenchReport, PathResult, RunResult
from tunvpn.bench.runner import BenchError, BenchInterrupted, BenchOptions, run_bench

__all__ = [
    "DEFAULT_PATHS",
    "PROVIDERS",
    "BenchContext",
    "BenchError",
    "BenchInterrupted",
    "BenchOptions",
    "BenchReport",
    "NotAvailable",
    "OpenVPNProvider",
    "PathResult",
    "RunResult",
    "StrongSwanProvider",
    "TunnelProvider",
    "TunvpnProvider",
    "VethProvider",
    "WireGuardProvider",
    "run_bench",
]
