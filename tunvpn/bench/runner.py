"""``run_bench``: build namespaces, bring each path up, measure it, tear it down, report.

Each path run gets two fresh namespaces (``tvb<6 hex>a`` / ``...b``) joined by a veth pair
(MTU 1500, IPv6 off), so nothing one VPN leaves behind (routes, policy rules, devices) can
affect the next. With ``repeat`` > 1 the paths are measured round-robin (veth, openvpn, ...,
veth, openvpn, ...) so that slow drifts of a noisy box hit every path alike; the report shows
medians.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tunvpn.bench.measure import (
    MeasureSpec,
    link_info,
    measure_path,
    route_device,
    udp_sockets,
    wait_ping,
)
from tunvpn.bench.providers import (
    ALIASES,
    DEFAULT_PATHS,
    PROVIDERS,
    BenchContext,
    NotAvailable,
    ProviderFactory,
    TunnelProvider,
    canonical_path,
)
from tunvpn.bench.report import (
    STATUS_FAILED,
    STATUS_NOT_AVAILABLE,
    STATUS_OK,
    BenchReport,
    PathResult,
    RunResult,
)
from tunvpn.bench.system import (
    COMMON_REQUIREMENTS,
    ETHTOOL,
    WIRE_ETHTOOL,
    CommandError,
    Topology,
    Tracker,
    apt_install,
    clean_stale_runs,
    first_line,
    missing,
    set_wire_offloads,
)

log = logging.getLogger("tunvpn.bench")


class BenchError(RuntimeError):
    """The harness itself cannot run (not root, no ``ip``, namespaces cannot be made)."""


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: everything was cleaned up; ``report`` holds what was measured so far."""

    def __init__(self, report: BenchReport) -> None:
        super().__init__("interrupted")
        self.report = report


@dataclass
class BenchOptions:
    paths: Sequence[str] = DEFAULT_PATHS
    """Path names: veth, openvpn, wireguard, strongswan, strongswan-cbc, tunvpn (+ any in ``providers``)."""
    duration: float = 10.0
    """Seconds per iperf3 test."""
    parallel: int = 0
    """Also run iperf3 -P N (0: no)."""
    pings: int = 20
    ping_interval: float = 0.2
    repeat: int = 1
    """Runs per path; the report shows medians."""
    install: bool = False
    """apt-get the missing Debian packages first."""
    keep: bool = False
    """Keep the work dir (configs, daemon logs, iperf3 JSON) and print where it is."""
    setup_timeout: float = 30.0
    """Seconds for a tunnel to come up (daemons started, handshake done)."""
    ping_timeout: float = 15.0
    """Seconds for the first ping to pass once ``setup`` returned; else "not available"."""
    reverse: bool = False
    """iperf3 -R: namespace B sends to A."""
    wait_idle: float = 0.0
    """Before each measurement wait up to this many seconds for other load on the box to stop."""
    workdir_parent: Path | None = None
    """Where the temp work dir goes (default: the system temp dir)."""
    ipv6: bool = False
    """The IPv6 variant (issue 19): every path over an IPv6 underlay, carrying IPv6 inside."""
    wire_gso: str = "on"
    """The veth pair's offloads: "on" (the kernel's defaults), "off" (UDP segmentation offload and
    GRO off: per-packet, as a NIC without USO/GRO), "gro" (USO off, GRO on); needs ethtool."""
    load_ping_interval: float = 0.05
    """Latency under load (issue 21): ping every this many seconds during the TCP test, and during
    one more the other way; 0: neither."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["paths"] = list(self.paths)
        data["workdir_parent"] = str(self.workdir_parent) if self.workdir_parent else None
        return data


def known_paths(providers: Mapping[str, ProviderFactory] | None = None) -> list[str]:
    return list({**PROVIDERS, **(providers or {})})


def resolve_paths(names: Sequence[str], providers: Mapping[str, ProviderFactory] | None = None) -> list[str]:
    """Canonical names, duplicates dropped; ValueError names the unknown ones."""
    known = known_paths(providers)
    out: list[str] = []
    for raw in names:
        name = raw.strip() if raw.strip() in known else canonical_path(raw)
        if not name:
            continue
        if name not in known:
            aliases = ", ".join(f"{a} = {b}" for a, b in ALIASES.items())
            raise ValueError(f"unknown path {raw!r}; known: {', '.join(known)} (aliases: {aliases})")
        if name not in out:
            out.append(name)
    return out


def _host_info() -> dict[str, Any]:
    load: list[str] = []
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split(" ")[0:3]
    return {
        "kernel": f"Linux {platform.release()}",
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "iperf3": first_line(["iperf3", "--version"]),
        "loadavg_start": " ".join(load) if load else "",
        "tunvpn_source": tunvpn_source(),
    }


def tunvpn_source() -> str:
    """The commit tunvpn runs from, and the files under tunvpn/ (bench/ aside) that differ from
    it: what exactly the "tunvpn" path measured. ``""`` outside a git checkout."""
    import tunvpn

    root = Path(tunvpn.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "tunvpn", ":!tunvpn/bench"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    changed = sorted(line[3:].strip() for line in status.splitlines() if line[3:].strip())
    if not head:
        return ""
    return f"git {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean)")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only), restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def run_bench(
    options: BenchOptions,
    providers: Mapping[str, ProviderFactory] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every path in ``options.paths`` and return the report (as root).

    ``providers`` adds or replaces path factories by name (e.g. ``{"tunvpn": MyProvider}``);
    each factory returns a fresh ``TunnelProvider``. Paths that lack a tool, or whose tunnel
    does not come up or pass ping in time, are reported "not available: <reason>" and the run
    goes on. Raises BenchError if the harness cannot run at all, BenchInterrupted (with the
    partial report) on Ctrl-C/SIGTERM, after cleaning up in every case.
    """
    say = progress or log.info
    factories: dict[str, ProviderFactory] = {**PROVIDERS, **(providers or {})}
    names = resolve_paths(options.paths, providers)
    if os.geteuid() != 0:
        raise BenchError("tunvpn bench must run as root (network namespaces, veth, TUN)")
    if options.repeat < 1 or options.duration <= 0 or options.pings < 1:
        raise BenchError("repeat and pings must be >= 1 and duration > 0")
    if options.wire_gso not in WIRE_ETHTOOL:
        raise BenchError(f"--wire-gso must be one of {', '.join(WIRE_ETHTOOL)}, not {options.wire_gso!r}")
    if options.load_ping_interval < 0:
        raise BenchError("the load ping interval must be >= 0")

    report = BenchReport(options=options.to_dict(), started=_now())
    results = {name: PathResult(name=name) for name in names}
    report.paths = [results[name] for name in names]
    probes: dict[str, TunnelProvider] = {name: _create(factories, name) for name in names}

    # ------------------------------------------------------------------ tools
    if options.install:
        wanted = {r.package for r in missing([*COMMON_REQUIREMENTS, ETHTOOL])}
        for provider in probes.values():
            wanted.update(provider.packages())
        if wanted:
            try:
                apt_install(sorted(wanted), say)
            except CommandError as exc:
                say(f"install failed: {exc}")
    common = [r.describe() for r in missing(COMMON_REQUIREMENTS)]
    if any(r.what == "ip" for r in missing(COMMON_REQUIREMENTS)):
        raise BenchError("iproute2's `ip` is missing (apt-get install iproute2, or use --install)")
    for name, provider in probes.items():
        lacking = common + provider.missing()
        if lacking:
            results[name].status = STATUS_NOT_AVAILABLE
            results[name].reason = "missing " + ", ".join(lacking)
    if options.wire_gso != "on" and not ETHTOOL.present():
        raise BenchError(f"--wire-gso {options.wire_gso} needs {ETHTOOL.describe()} (or use --install)")
    report.host = _host_info()
    report.wire = {"setting": options.wire_gso}

    # ------------------------------------------------------------------ measuring
    for stale in clean_stale_runs():
        say(f"removed a leftover of an earlier run: {stale}")
    tracker = Tracker()
    parent = options.workdir_parent
    workdir = Path(tempfile.mkdtemp(prefix="tunvpn-bench-", dir=str(parent) if parent else None))
    tracker.add_tree(workdir)
    spec = MeasureSpec(
        duration=options.duration,
        parallel=options.parallel,
        pings=options.pings,
        ping_interval=options.ping_interval,
        reverse=options.reverse,
        wait_idle=options.wait_idle,
        load_ping_interval=options.load_ping_interval,
    )
    ever_up: set[str] = set()
    try:
        with _interruptible():
            for round_no in range(1, options.repeat + 1):
                for name in names:
                    result = results[name]
                    if result.status == STATUS_NOT_AVAILABLE or (round_no > 1 and name not in ever_up):
                        continue
                    tag = f"{name} run {round_no}/{options.repeat}" if options.repeat > 1 else name
                    say(f"=== {tag}")
                    try:
                        run = _run_path(
                            tracker, factories, name, result, spec, options, workdir, round_no, report.wire
                        )
                    except _SetupFailed as exc:
                        if name in ever_up:  # it worked before: count a failed run, keep going
                            result.runs.append(RunResult(errors=[f"set-up failed: {exc}"]))
                        else:
                            result.status, result.reason = STATUS_NOT_AVAILABLE, str(exc)
                        say(f"{name}: not available: {exc}")
                        continue
                    ever_up.add(name)
                    result.runs.append(run)
                    say(_summary(name, run))
    except KeyboardInterrupt:
        with _uninterruptible():
            _finish(report, results, tracker, workdir, options, say)
        raise BenchInterrupted(report) from None
    except BaseException:
        with _uninterruptible():
            _finish(report, results, tracker, workdir, options, say)
        raise
    with _uninterruptible():
        _finish(report, results, tracker, workdir, options, say)
    return report


class _SetupFailed(Exception):
    """The path's tunnel could not be built or passed no ping; the message says why."""


def _create(factories: Mapping[str, ProviderFactory], name: str) -> TunnelProvider:
    provider = factories[name]()
    provider.name = name
    return provider


def _run_path(
    tracker: Tracker,
    factories: Mapping[str, ProviderFactory],
    name: str,
    result: PathResult,
    spec: MeasureSpec,
    options: BenchOptions,
    workdir: Path,
    round_no: int,
    wire: dict[str, Any],
) -> RunResult:
    """One set-up, measurement and teardown of path ``name``; _SetupFailed if it does not come up.
    ``wire`` (the report's) gets the veth offloads as read back, the first time."""
    topo = Topology(tracker, ipv6=options.ipv6)
    provider = _create(factories, name)
    pathdir = workdir / (f"{name}-{round_no}" if options.repeat > 1 else name)
    pathdir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            topo.create()
        except CommandError as exc:
            raise BenchError(f"cannot build the namespaces: {exc}") from exc
        _wire_offloads(tracker, topo, options.wire_gso, wire)
        provider.bind(BenchContext(tracker, pathdir, topo.tag, options.setup_timeout, options.ipv6))
        try:
            ta, tb = provider.setup(topo.ns_a, topo.ns_b, topo.ip_a, topo.ip_b)
            result.program = provider.program or result.program
            result.cipher = provider.cipher or result.cipher
            result.tunnel = (ta, tb)
            if not wait_ping(tracker, topo.ns_a, tb, options.ping_timeout):
                raise NotAvailable(
                    f"the tunnel did not pass ping {topo.ns_a} -> {tb} within {options.ping_timeout:g} s"
                )
        except BenchError:
            raise
        except (NotAvailable, CommandError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise _SetupFailed(str(exc) or type(exc).__name__) from exc
        client_ns, server_ns = topo.ns_a, topo.ns_b
        device = route_device(tracker, client_ns, tb)
        result.device = device
        mtu = link_info(tracker, client_ns, device).get("mtu") if device else None
        result.mtu = int(mtu) if mtu is not None else None
        result.device_b = route_device(tracker, server_ns, ta)
        mtu_b = link_info(tracker, server_ns, result.device_b).get("mtu") if result.device_b else None
        result.mtu_b = int(mtu_b) if mtu_b is not None else None
        run = measure_path(
            tracker,
            spec,
            client_ns=client_ns,
            server_ns=server_ns,
            server_ip=tb,
            device=device,
            daemons=_daemons(provider),
            workdir=pathdir,
            label=name,
        )
        sockets = {side: udp_sockets(tracker, ns) for side, ns in (("a", client_ns), ("b", server_ns))}
        result.udp_buffers = {side: [asdict(sock) for sock in socks] for side, socks in sockets.items()}
        run.udp_drops = sum(sock.drops for socks in sockets.values() for sock in socks)
        return run
    finally:
        try:
            provider.teardown()
        except Exception as exc:
            log.warning("%s teardown: %s", name, exc)
        topo.destroy()


def _wire_offloads(tracker: Tracker, topo: Topology, setting: str, wire: dict[str, Any]) -> None:
    """Apply ``--wire-gso`` to both ends of the veth pair; record the features the first time.
    Without ethtool, "on" (the kernel's defaults) goes on unrecorded; anything else is a BenchError."""
    if not ETHTOOL.present():
        wire.setdefault("error", f"no {ETHTOOL.describe()}")
        return
    try:
        features = {
            side: set_wire_offloads(tracker, ns, dev, setting)
            for side, ns, dev in (("a", topo.ns_a, topo.veth_a), ("b", topo.ns_b, topo.veth_b))
        }
    except CommandError as exc:
        if setting != "on":
            raise BenchError(f"--wire-gso {setting}: {exc}") from exc
        wire.setdefault("error", str(exc))
        return
    if "a" not in wire:
        wire.update(features)
        wire.pop("error", None)


def _daemons(provider: TunnelProvider) -> dict[str, int]:
    try:
        return dict(provider.daemon_pids())
    except Exception:
        return {}


def _summary(name: str, run: RunResult) -> str:
    if not run.ok:
        return f"{name}: FAILED: {'; '.join(run.errors)}"
    text = f"{name}: {run.tcp_receiver_mbps:.1f} Mbit/s (sender {run.tcp_sender_mbps:.1f}"
    text += f", retr {run.retransmits})"
    if run.parallel_receiver_mbps is not None:
        text += f", -P: {run.parallel_receiver_mbps:.1f}"
    if run.ping_avg_ms is not None:
        text += f", ping {run.ping_avg_ms:.3f} ms"
    loaded = [
        f"{arrow} {avg:.2f} ms"
        for arrow, avg in (("A->B", run.load_ab_ping_avg_ms), ("B->A", run.load_ba_ping_avg_ms))
        if avg is not None
    ]
    if loaded:
        text += f", under load {', '.join(loaded)}"
    if run.load_ab_mbps is not None and run.load_ba_mbps is not None:
        text += f" (TCP A->B {run.load_ab_mbps:.1f}, B->A {run.load_ba_mbps:.1f} Mbit/s)"
    if run.cpu_busy_pct is not None:
        text += f", box busy {run.cpu_busy_pct:.0f}%"
    if run.errors:
        text += f" ({'; '.join(run.errors)})"
    return text


def _finish(
    report: BenchReport,
    results: Mapping[str, PathResult],
    tracker: Tracker,
    workdir: Path,
    options: BenchOptions,
    say: Callable[[str], None],
) -> None:
    if options.keep:
        tracker.keep_tree(workdir)
        say(f"work dir kept: {workdir}")
    tracker.cleanup()
    for result in results.values():
        if result.status == STATUS_OK and result.runs and not any(r.ok for r in result.runs):
            result.status = STATUS_FAILED
            result.reason = result.reason or "; ".join(e for r in result.runs for e in r.errors)
        elif result.status == STATUS_OK and not result.runs:
            result.status = STATUS_NOT_AVAILABLE
            result.reason = result.reason or "not measured (interrupted)"
    with contextlib.suppress(OSError):
        report.host["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split(" ")[0:3])
    report.finished = _now()


__all__ = [
    "BenchError",
    "BenchInterrupted",
    "BenchOptions",
    "known_paths",
    "resolve_paths",
    "run_bench",
]
