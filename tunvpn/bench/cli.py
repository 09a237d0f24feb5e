"""Command line of the benchmark: ``python -m tunvpn.bench`` (and ``tunvpn bench`` via tunvpn/cli.py).

To wire it into another argparse parser::

    sub = subparsers.add_parser("bench", help=..., description=bench_cli.DESCRIPTION)
    bench_cli.add_arguments(sub)
    ...
    return bench_cli.run_from_args(args)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tunvpn.bench.providers import DEFAULT_PATHS, PROVIDERS, ProviderFactory
from tunvpn.bench.report import WIRE_SETTINGS, BenchReport
from tunvpn.bench.runner import BenchError, BenchInterrupted, BenchOptions, resolve_paths, run_bench

DESCRIPTION = (
    "As root: build two network namespaces joined by a veth pair and measure, in one run, "
    "iperf3 TCP throughput and ping RTT, idle and under load (one TCP flow each way), through each path "
    "(plain veth, OpenVPN 2.6, wireguard-go, strongSwan kernel-libipsec, tunvpn); print a markdown "
    "table and tunvpn's ratios to the others."
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench options (no -h; no positional arguments)."""
    known = ", ".join(PROVIDERS)
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        metavar="LIST",
        help=f"comma-separated paths to measure, in order (default {','.join(DEFAULT_PATHS)}; "
        f"known: {known})",
    )
    parser.add_argument(
        "-t", "--duration", type=_positive_float, default=10.0, metavar="SECONDS", help="per iperf3 test (10)"
    )
    parser.add_argument(
        "-P",
        "--parallel",
        type=_count(0),
        default=0,
        metavar="N",
        help="also measure iperf3 -P N (e.g. 4; default 0: only one stream)",
    )
    parser.add_argument("--pings", type=_count(1), default=20, metavar="N", help="pings per path (20)")
    parser.add_argument(
        "--ping-interval", type=_positive_float, default=0.2, metavar="SECONDS", help="between pings (0.2)"
    )
    parser.add_argument(
        "--repeat",
        type=_count(1),
        default=1,
        metavar="N",
        help="measure every path N times, round-robin, and report medians (the box is noisy)",
    )
    parser.add_argument("--reverse", action="store_true", help="iperf3 -R: namespace B sends to namespace A")
    parser.add_argument(
        "--load-ping-interval",
        type=_non_negative_float,
        default=0.05,
        metavar="SECONDS",
        help="latency under load: ping every SECONDS while the TCP test runs, and during a second "
        "TCP test the other way (default 0.05; 0: no pings under load and no second test)",
    )
    parser.add_argument(
        "--wire-gso",
        choices=sorted(WIRE_SETTINGS),
        default="on",
        help="the veth pair's offloads: on (the kernel's defaults: a UDP GSO batch crosses it as one "
        "buffer), off (UDP segmentation offload and GRO off: every datagram on its own, as a NIC "
        "without USO or GRO), gro (USO off, GRO on); off and gro need ethtool (default on)",
    )
    parser.add_argument(
        "--ipv6",
        action="store_true",
        help="the IPv6 variant: every path over an IPv6 underlay, carrying IPv6 inside (tunvpn: IKE, "
        "ESP and the inner traffic over IPv6)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the full report as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the markdown table")
    parser.add_argument(
        "--install",
        action="store_true",
        help="apt-get the missing Debian packages first (iperf3, openvpn, wireguard-go, wireguard-tools, "
        "strongSwan with its plugins); without it a path whose tools are missing is 'not available'",
    )
    parser.add_argument(
        "--setup-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="for a tunnel to come up (30)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=_positive_float,
        default=15.0,
        metavar="SECONDS",
        help="for the first ping through a tunnel that is up; else the path is 'not available' (15)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to SECONDS for other load on the box to stop (default 0)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (configs, daemon logs, iperf3 JSON)"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more progress output")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output, only the table")
    # `tunvpn bench logins ...`: the login capacity of a gateway (tunvpn/bench/logins.py)
    from tunvpn.bench import logins

    sub = parser.add_subparsers(dest="bench_command", metavar="{logins}")
    logins_parser = sub.add_parser("logins", help="logins/s and memory per client of a gateway")
    logins_parser.description = logins.DESCRIPTION
    logins.add_arguments(logins_parser)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        paths=[p for p in args.paths.split(",") if p.strip()],
        duration=args.duration,
        parallel=args.parallel,
        pings=args.pings,
        ping_interval=args.ping_interval,
        repeat=args.repeat,
        install=args.install,
        keep=args.keep,
        setup_timeout=args.setup_timeout,
        ping_timeout=args.ping_timeout,
        reverse=args.reverse,
        wait_idle=max(0.0, args.wait_idle),
        ipv6=args.ipv6,
        wire_gso=args.wire_gso,
        load_ping_interval=args.load_ping_interval,
    )


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("tunvpn.bench")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[bench %(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


def write_outputs(report: BenchReport, args: argparse.Namespace) -> None:
    text = report.to_markdown()
    print(text, flush=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(report.to_json() + "\n")


def run_from_args(
    args: argparse.Namespace,
    providers: Mapping[str, ProviderFactory] | None = None,
    argv: Sequence[str] | None = None,
    prog: str = "tunvpn bench",
) -> int:
    """Run the benchmark for parsed ``args``; print the table; exit status (0 ok, 1 harness error,
    2 usage, 130 interrupted). A path that is not available does not make the status non-zero."""
    _setup_logging(args.verbose, args.quiet)
    if getattr(args, "bench_command", None) == "logins":
        from tunvpn.bench import logins

        if argv is None:
            argv = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
        return logins.run_from_args(args, argv, prog)
    try:
        resolve_paths(args.paths.split(","), providers)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    options = options_from_args(args)
    if argv is None:  # `tunvpn bench ...`: sys.argv[1] is the sub-command itself
        argv = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    command = " ".join([prog, *map(shlex.quote, argv)])
    try:
        report = run_bench(options, providers)
    except BenchInterrupted as exc:
        exc.report.command = command + "  (interrupted)"
        print(exc.report.to_markdown(), flush=True)
        print(f"{prog}: interrupted; everything it started was removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if "root" not in str(exc) else EXIT_USAGE
    report.command = command
    write_outputs(report, args)
    return EXIT_OK


def build_parser(prog: str = "python -m tunvpn.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args, argv=argv, prog="python -m tunvpn.bench")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
