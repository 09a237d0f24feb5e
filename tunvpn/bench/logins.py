"""``tunvpn bench logins``: how many complete logins per second a real gateway takes, and the
memory one connected client costs it (issue 14, "Capacity for real logins").

The gateway is a real ``tunvpn gateway -c FILE`` process (IKE only: ``tun = false``, so no root
is needed), pinned to one core; this process is the load generator, pinned to another core. It
runs many :class:`tunvpn.client.daemon.Client` objects (the client shell of ``tunvpn connect``,
with the real IKE engine) in one asyncio loop, without a TUN device. Each client has its own UDP
sockets on its own loopback address (127.77.x.y: all of 127/8 is local on Linux), so the
gateway's per-source limits (half-open SAs, login throttle) see one user per address, as they
would on the Internet.

One login is: phase 1 (Main Mode, pre-shared key, one DH group: ECP-256 or X25519), XAUTH (a
users file, clear or scrypt lines), Mode Config, one Quick Mode (with PFS in the same group
unless ``--pfs none``); then the client deletes its SAs.

Phases of a run:

1. warm-up: a few logins (not counted) so that the gateway has imported and built what it builds
   lazily;
2. memory: the gateway's VmRSS with no client, then with ``--hold`` clients logged in and
   held up (each holds its ISAKMP SA and one IPsec SA pair); (RSS_N - RSS_0) / N; they are
   released before the throughput window, unless ``--hold-during`` keeps them connected through
   it (what costs the gateway per message in proportion to its clients then shows);
3. throughput: ``--concurrency`` logins in flight at all times, for ``--duration`` seconds (or
   ``--logins`` logins); logins/s, latency percentiles, failures, the gateway's CPU time
   (utime + stime of /proc/PID/stat, all its threads) and the generator's own CPU time. When
   the generator's core is more than 90 % busy, the rate is only a lower bound and the report
   says so.

Nothing here asserts a speed; the smoke test (tests/loopback/test_bench_logins.py) checks only
that the logins complete and the counts add up.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunvpn.bench.system import proc_cpu_ticks

log = logging.getLogger("tunvpn.bench")

SUITE_NAMES = {"ecp256": "ecp256", "x25519": "curve25519"}
"""``--suite``: the one phase 1 DH group offered and accepted (and the PFS group), as
gateway.toml spells it."""
PSK = "tunvpn-bench-logins-psk-0123456789abcdef"
GATEWAY_IP = "127.0.0.1"
SOURCE_NET = "127.77.0.0/16"
"""The clients' addresses: 127.77.A.B, one per client alive at once."""
SATURATED_PCT = 90.0
LOWER_BOUND = "LOWER BOUND: generator saturated"
CLK_TCK = os.sysconf("SC_CLK_TCK")

DESCRIPTION = (
    "Start a real gateway (IKE only, no root) pinned to one core and, pinned to another, many "
    "clients in one process, each from its own loopback address; measure complete logins per "
    "second (Main Mode PSK + XAUTH + Mode Config + one Quick Mode), their latency, the CPU of "
    "both sides, and the gateway's memory per connected client."
)


class LoginBenchError(RuntimeError):
    """The bench could not run (the gateway did not start, no free port, ...)."""


@dataclass
class LoginBenchOptions:
    """What ``tunvpn bench logins`` is asked to do."""

    suite: str = "ecp256"
    """Phase 1 DH group: ``ecp256`` or ``x25519``."""
    pfs: bool = True
    """Quick Mode with PFS in the phase 1 group (one more DH each side)."""
    passwords: str = "clear"
    """Users-file lines: ``clear`` (``user:password``) or ``scrypt`` (``tunvpn passwd`` hashes)."""
    concurrency: int = 20
    """Logins in flight at once during the throughput window."""
    duration: float = 20.0
    """Seconds of the throughput window (no new login starts after it)."""
    logins: int | None = None
    """Instead of ``duration``: this many logins."""
    warmup: int = 10
    hold: int = 1000
    """Clients logged in and held for the memory figure (0: skip it)."""
    hold_during: bool = False
    """Keep the held clients connected during the throughput window."""
    gateway_core: int | None = 0
    generator_core: int | None = 1
    """CPU cores to pin to (None: not pinned)."""
    timeout: float = 30.0
    """Seconds one client has for its whole login."""
    profile: Path | None = None
    """Run the gateway under cProfile and write its stats here."""
    gateway_args: tuple[str, ...] = ()
    """Extra ``[gateway]`` lines for the generated gateway.toml (``key = value``)."""
    keep: bool = False
    """Keep the work directory (gateway.toml, users file, the gateway's log)."""


@dataclass
class LoginReport:
    """Everything measured, as written to JSON (``--json``)."""

    command: str = ""
    started: str = ""
    host: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    logins: dict[str, Any] = field(default_factory=dict)
    gateway_cpu: dict[str, Any] = field(default_factory=dict)
    generator_cpu: dict[str, Any] = field(default_factory=dict)
    lower_bound: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def to_markdown(self) -> str:
        return format_report(self)


@dataclass
class Outcome:
    """One login as the generator saw it."""

    ok: bool
    latency: float | None
    """Seconds from the client's start to its IPsec SA being up."""
    failure: str | None = None


# --------------------------------------------------------------------------- measuring helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` percentile (0..100) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None: gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def core_ticks(core: int | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks of one core (``cpuN`` of /proc/stat); None: unknown core."""
    if core is None:
        return None
    prefix = f"cpu{core} "
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(prefix):
                    v = [int(x) for x in line.split()[1:9]]
                    total = sum(v)
                    return total - v[3] - v[4], total
    except OSError:
        return None
    return None


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def source_address(index: int) -> str:
    """The ``index``-th client address in 127.77.0.0/16 (127.77.0.1, ..., 127.77.0.254, 127.77.1.1, ...)."""
    index %= 254 * 256
    return f"127.77.{index // 254}.{index % 254 + 1}"


def free_port_pair() -> tuple[int, int]:
    """Two consecutive UDP ports free on 127.0.0.1 (the gateway's IKE and NAT-T ports; the
    clients bind the same numbers on their own addresses, as 500/4500 would be)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((GATEWAY_IP, 0))
            port = probe.getsockname()[1]
        if port >= 65000:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
                a.bind((GATEWAY_IP, port))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind((GATEWAY_IP, port + 1))
        except OSError:
            continue
        return port, port + 1
    raise LoginBenchError("no two consecutive free UDP ports on 127.0.0.1")


def pin(core: int | None, pid: int = 0) -> str | None:
    """Pin ``pid`` (0: this thread, and the threads it starts later) to ``core``; why not, if not."""
    if core is None:
        return "not pinned (asked)"
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned: no sched_setaffinity on this system"
    if core not in os.sched_getaffinity(0) and core >= (os.cpu_count() or 1):
        return f"not pinned: no core {core}"
    try:
        os.sched_setaffinity(pid, {core})
    except OSError as exc:
        return f"not pinned to core {core}: {exc}"
    return None


# --------------------------------------------------------------------------- the gateway


def gateway_toml(options: LoginBenchOptions, ike: int, natt: int, pool_size: int, control: Path) -> str:
    group = SUITE_NAMES[options.suite]
    pfs = f'"{group}"' if options.pfs else '"none"'
    extra = "\n".join(options.gateway_args)
    last = pool_size + 10
    return f"""# written by tunvpn bench logins
[gateway]
listen = "{GATEWAY_IP}"
ike_port = {ike}
natt_port = {natt}
psk_file = "psk"
users_file = "users"
tun = false
control_socket = "{control}"
{extra}

[phase1]
groups = ["{group}"]

[network]
pool = "10.96.0.10-10.96.{last // 256}.{last % 256}"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
pfs = {pfs}
"""


def user_name(index: int) -> str:
    return f"u{index:05d}"


def password_of(index: int) -> str:
    return f"bench-password-{index:05d}"


def write_users(path: Path, count: int, scheme: str) -> None:
    """``count`` users; with ``scrypt`` all lines share one hash of one password (the check costs
    the same as with distinct salts, and hashing 1,000 passwords would take a minute)."""
    if scheme == "scrypt":
        from tunvpn.config.passwords import hash_password

        line = hash_password("bench-password-shared")
        text = "".join(f"{user_name(i)}:{line}\n" for i in range(count))
    else:
        text = "".join(f"{user_name(i)}:{password_of(i)}\n" for i in range(count))
    path.write_text(text)
    path.chmod(0o600)


class GatewayProcess:
    """``python -m tunvpn gateway -c FILE`` in a work directory, pinned to a core."""

    def __init__(self, options: LoginBenchOptions, workdir: Path, ike: int, natt: int, users: int) -> None:
        self.options = options
        self.workdir = workdir
        self.ike = ike
        self.natt = natt
        self.config = workdir / "gateway.toml"
        self.log_path = workdir / "gateway.log"
        self.control = workdir / "gateway.sock"
        self.config.write_text(gateway_toml(options, ike, natt, users, self.control))
        (workdir / "psk").write_text(PSK + "\n")
        (workdir / "psk").chmod(0o600)
        write_users(workdir / "users", users, options.passwords)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pin_note: str | None = None

    @property
    def argv(self) -> list[str]:
        profile = ["-m", "cProfile", "-o", str(self.options.profile)] if self.options.profile else []
        return [sys.executable, *profile, "-m", "tunvpn", "gateway", "-c", str(self.config)]

    @property
    def env(self) -> dict[str, str]:
        """Our environment, with this tunvpn first on the module path."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def start(self, timeout: float = 20.0) -> None:
        core = self.options.gateway_core

        def in_child() -> None:  # between fork and exec: pin the gateway (its threads inherit it)
            if core is not None and hasattr(os, "sched_setaffinity"):
                try:
                    os.sched_setaffinity(0, {core})
                except OSError:
                    pass

        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=in_child,
            )
        if core is not None:
            got = os.sched_getaffinity(self.proc.pid)
            if got != {core}:
                self.pin_note = f"gateway not pinned to core {core} (runs on {sorted(got)})"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoginBenchError(f"the gateway exited ({self.proc.returncode}):\n{self.log_tail()}")
            if "gateway ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise LoginBenchError(f"the gateway was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        ticks = proc_cpu_ticks(self.pid)
        if ticks is None:
            raise LoginBenchError(f"the gateway is gone:\n{self.log_tail()}")
        return ticks / CLK_TCK

    def rss_kib(self) -> int:
        rss = vm_rss_kib(self.pid)
        if rss is None:
            raise LoginBenchError(f"the gateway is gone:\n{self.log_tail()}")
        return rss

    def status(self) -> dict[str, Any] | None:
        """``tunvpn status --json`` of the gateway (None: it did not answer)."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tunvpn", "status", "--json", "--socket", str(self.control)],
                capture_output=True,
                timeout=60,
                env=self.env,
                check=False,
            )
            answer = json.loads(done.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return None
        return answer if isinstance(answer, dict) else None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# --------------------------------------------------------------------------- the clients


# --------------------------------------------------------------------------- the run


def _reason(text: str) -> str:
    """A failure message without what varies per client (addresses, user names), for counting."""
    words = [w for w in text.split() if not any(c.isdigit() for c in w)]
    return " ".join(words)[:120]


def _latency_ms(outcomes: Sequence[Outcome]) -> dict[str, float | None]:
    values = [o.latency * 1000 for o in outcomes if o.ok and o.latency is not None]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
        "mean": r(statistics.fmean(values) if values else None),
    }


def judge(
    generator_pct: float | None,
    generator_core_busy: float | None,
    gateway_pct: float | None,
    gateway_core_busy: float | None,
) -> tuple[bool, list[str]]:
    """Whether the measured rate is only a lower bound because of the generator, and the notes
    that go with it. The generator limits the figure when its process is busy (> 90 % of a core),
    or when its core is full (of other work too) while the gateway's core still had time to
    spare (the gateway under 90 % of a core and its core under 90 % busy)."""
    notes: list[str] = []
    busy = generator_pct is not None and generator_pct > SATURATED_PCT
    spare = (gateway_pct or 0) < SATURATED_PCT and (
        gateway_core_busy is None or gateway_core_busy < SATURATED_PCT
    )
    starved = generator_core_busy is not None and generator_core_busy > SATURATED_PCT and spare
    lower = busy or starved
    if lower:
        notes.append(
            f"{LOWER_BOUND} (its process {generator_pct} % of a core, its core {generator_core_busy} % "
            f"busy, the gateway {gateway_pct} % of a core): the gateway may take more logins per "
            "second than measured"
        )
    elif generator_core_busy is not None and generator_core_busy > SATURATED_PCT:
        notes.append(
            f"the generator's core was {generator_core_busy} % busy (other work), but the gateway's "
            f"core was full too ({gateway_core_busy} % busy, {gateway_pct} % of a core the gateway): "
            "not a lower bound because of the generator"
        )
    if gateway_core_busy is not None and gateway_pct is not None and gateway_core_busy - gateway_pct > 10:
        notes.append(
            f"the gateway's core was {gateway_core_busy} % busy, {gateway_core_busy - gateway_pct:.0f} "
            "points of it not the gateway: on a shared machine 'logins per gateway CPU-second' is the "
            "figure to read"
        )
    return lower, notes


async def _drained(gateway: GatewayProcess, timeout: float = 20.0) -> int | None:
    """Wait until the gateway holds no session (its clients' Deletes arrived); how many it still
    holds then (None: it did not answer ``tunvpn status``)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await asyncio.to_thread(gateway.status)
        if status is None:
            return None
        left = len(status.get("tunnels") or [])
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


def _busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Busy % of a core between two :func:`core_ticks` samples."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def _counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    failures = Counter(_reason(o.failure or "unknown") for o in outcomes if not o.ok)
    return {
        "started": len(outcomes),
        "completed": sum(1 for o in outcomes if o.ok),
        "failed": sum(1 for o in outcomes if not o.ok),
        "failures": dict(failures.most_common()),
    }


async def _measure(options: LoginBenchOptions, gateway: GatewayProcess, report: LoginReport) -> None:
    from tunvpn.bench.login_clients import Generator

    users = report.setup["users"]
    gen = Generator(options, gateway.ike, gateway.natt, users)

    # 1. warm-up
    outcomes, wall = await gen.run_many(
        min(options.concurrency, max(1, options.warmup)), options.warmup, None
    )
    report.warmup = {**_counts(outcomes), "seconds": round(wall, 2)}
    await asyncio.sleep(0.5)

    # 2. memory: RSS with no client, then with options.hold clients held up
    if options.hold:
        rss_0 = gateway.rss_kib()
        log.info("holding %d clients (%d at a time connecting)", options.hold, options.concurrency)
        outcomes, wall = await gen.run_many(options.concurrency, options.hold, None, hold=True)
        await asyncio.sleep(1.0)
        rss_n = gateway.rss_kib()
        up = len(gen.held)
        report.memory = {
            **_counts(outcomes),
            "clients_requested": options.hold,
            "clients_up": up,
            "connect_seconds": round(wall, 2),
            "rss_0_kib": rss_0,
            "rss_n_kib": rss_n,
            "per_client_kib": round((rss_n - rss_0) / up, 1) if up else None,
        }
        status = gateway.status()
        if status is not None:  # what the gateway itself holds
            tunnels = status.get("tunnels") or []
            report.memory["gateway_sessions"] = len(tunnels)
            report.memory["gateway_ipsec_sas"] = sum(len(t.get("sas") or []) for t in tunnels)
        if not options.hold_during:
            log.info("releasing the held clients")
            await gen.release(options.concurrency)
            report.memory["gateway_sessions_after_release"] = await _drained(gateway)
            report.memory["rss_after_release_kib"] = gateway.rss_kib()

    # 3. throughput
    log.info(
        "throughput: %d in flight, %s",
        options.concurrency,
        f"{options.logins} logins" if options.logins is not None else f"{options.duration:g} s",
    )
    gw_before = gateway.cpu_seconds()
    me_before = self_cpu_seconds()
    core_before = core_ticks(options.generator_core)
    gw_core_before = core_ticks(options.gateway_core)
    outcomes, wall = await gen.run_many(
        options.concurrency, options.logins, None if options.logins is not None else options.duration
    )
    gw_used = gateway.cpu_seconds() - gw_before
    me_used = self_cpu_seconds() - me_before
    core_after = core_ticks(options.generator_core)
    gw_core_after = core_ticks(options.gateway_core)
    if gen.held:
        report.logins["clients_held_during"] = len(gen.held)
        await gen.release(options.concurrency)
    report.logins["gateway_sessions_after"] = await _drained(gateway)
    counts = _counts(outcomes)
    completed = counts["completed"]
    report.logins = {
        **report.logins,
        **counts,
        "window_seconds": round(wall, 3),
        "per_second": round(completed / wall, 1) if wall > 0 else None,
        "latency_ms": _latency_ms(outcomes),
    }
    gw_pct = round(100 * gw_used / wall, 1) if wall > 0 else None
    report.gateway_cpu = {
        "seconds": round(gw_used, 2),
        "percent_of_core": gw_pct,
        "core": options.gateway_core,
        "core_busy_percent": _busy(gw_core_before, gw_core_after),
        "ms_per_login": round(1000 * gw_used / completed, 2) if completed else None,
        "logins_per_core_second": round(completed / gw_used, 1) if gw_used > 0 else None,
    }
    core_busy = _busy(core_before, core_after)
    me_pct = round(100 * me_used / wall, 1) if wall > 0 else None
    report.generator_cpu = {
        "seconds": round(me_used, 2),
        "percent_of_core": me_pct,
        "core": options.generator_core,
        "core_busy_percent": core_busy,
    }
    report.lower_bound, notes = judge(me_pct, core_busy, gw_pct, report.gateway_cpu["core_busy_percent"])
    report.notes.extend(notes)


def run_logins(options: LoginBenchOptions, command: str = "") -> LoginReport:
    """Run the whole bench (see the module docstring); the report. Raises :class:`LoginBenchError`."""
    if options.suite not in SUITE_NAMES:
        raise LoginBenchError(f"suite {options.suite!r}: one of {', '.join(SUITE_NAMES)}")
    if options.passwords not in ("clear", "scrypt"):
        raise LoginBenchError(f"passwords {options.passwords!r}: clear or scrypt")
    report = LoginReport(
        command=command, started=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    users = max(options.hold + 2 * options.concurrency, 4 * options.concurrency, 100)
    limit = raise_file_limit(4 * (options.hold + options.concurrency) + 256)
    if limit < 2 * (options.hold + options.concurrency) + 64:
        raise LoginBenchError(
            f"RLIMIT_NOFILE is {limit}: {options.hold} held clients need two sockets each; "
            "raise it (ulimit -n)"
        )
    note = pin(options.generator_core)
    if note:
        report.notes.append(f"generator {note}")
    report.host = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    report.setup = {
        "suite": options.suite,
        "pfs": SUITE_NAMES[options.suite] if options.pfs else None,
        "exchange": "main mode, psk + xauth, mode config, one quick mode",
        "passwords": options.passwords,
        "users": users,
        "concurrency": options.concurrency,
        "duration": None if options.logins is not None else options.duration,
        "logins": options.logins,
        "warmup": options.warmup,
        "hold": options.hold,
        "hold_during": options.hold_during,
        "gateway_core": options.gateway_core,
        "generator_core": options.generator_core,
        "sources": f"one address of {SOURCE_NET} per client",
        "gateway": "tunvpn gateway -c gateway.toml (tun = false; log level INFO to a file)",
        "gateway_args": list(options.gateway_args),
        "profile": str(options.profile) if options.profile else None,
        "nofile_limit": limit,
    }
    workdir = Path(tempfile.mkdtemp(prefix="tunvpn-bench-logins-"))
    ike, natt = free_port_pair()
    gateway = GatewayProcess(options, workdir, ike, natt, users)
    try:
        gateway.start()
        if gateway.pin_note:
            report.notes.append(gateway.pin_note)
        log.info("gateway pid %d on 127.0.0.1:%d, work dir %s", gateway.pid, ike, workdir)
        # the clients' own log lines (a warning per refused login) would drown the table:
        # failures are counted in the report instead
        quiet = logging.getLogger("tunvpn")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            asyncio.run(_measure(options, gateway, report))
        finally:
            quiet.setLevel(level)
    finally:
        code = gateway.stop()
        if code not in (0, None):
            report.notes.append(f"the gateway exited with status {code}")
        if options.keep:
            report.notes.append(f"work directory kept: {workdir}")
        else:
            for name in ("gateway.toml", "gateway.log", "psk", "users"):
                (workdir / name).unlink(missing_ok=True)
            try:
                workdir.rmdir()
            except OSError:
                pass
    report.host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


# --------------------------------------------------------------------------- output


def _fmt(value: object, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def format_report(report: LoginReport) -> str:
    s, lg, gw, me, mem = report.setup, report.logins, report.gateway_cpu, report.generator_cpu, report.memory
    lat = lg.get("latency_ms", {})
    lines = [
        f"## tunvpn bench logins {report.started}",
        "",
        f"{s.get('exchange')}; phase 1 {s.get('suite')}, PFS {s.get('pfs') or 'none'}, "
        f"{s.get('passwords')} users-file lines; {s.get('concurrency')} logins in flight; "
        f"gateway on core {s.get('gateway_core')}, generator on core {s.get('generator_core')}"
        + (
            f"; {lg['clients_held_during']} clients held up meanwhile"
            if lg.get("clients_held_during")
            else ""
        ),
        "",
        "| figure | value |",
        "|---|---|",
        f"| logins/s | {_fmt(lg.get('per_second'))}{' (lower bound)' if report.lower_bound else ''} |",
        f"| logins completed / failed / started | {lg.get('completed')} / {lg.get('failed')} / "
        f"{lg.get('started')} |",
        f"| window | {_fmt(lg.get('window_seconds'), ' s')} |",
        f"| login latency p50 / p90 / p99 / max | {_fmt(lat.get('p50'))} / {_fmt(lat.get('p90'))} / "
        f"{_fmt(lat.get('p99'))} / {_fmt(lat.get('max'))} ms |",
        f"| gateway CPU | {_fmt(gw.get('percent_of_core'), ' % of a core')}, "
        f"{_fmt(gw.get('ms_per_login'), ' ms per login')} (its core "
        f"{_fmt(gw.get('core_busy_percent'), ' % busy')}) |",
        f"| logins per gateway CPU-second | {_fmt(gw.get('logins_per_core_second'))} |",
        f"| generator CPU | {_fmt(me.get('percent_of_core'), ' % of a core')} "
        f"(its core {_fmt(me.get('core_busy_percent'), ' % busy')}) |",
    ]
    if mem:
        lines += [
            f"| clients held up | {mem.get('clients_up')} of {mem.get('clients_requested')} (the gateway "
            f"shows {_fmt(mem.get('gateway_sessions'))} sessions, {_fmt(mem.get('gateway_ipsec_sas'))} "
            "IPsec SAs) |",
            f"| gateway RSS, 0 clients / held | {_fmt(mem.get('rss_0_kib'), ' KiB')} / "
            f"{_fmt(mem.get('rss_n_kib'), ' KiB')} |",
            f"| memory per connected client | {_fmt(mem.get('per_client_kib'), ' KiB')} |",
        ]
    failures = {**report.warmup.get("failures", {}), **mem.get("failures", {}), **lg.get("failures", {})}
    if failures:
        lines += ["", "Failures:"] + [f"- {n} x {reason}" for reason, n in failures.items()]
    if report.notes:
        lines += ["", *(f"- {note}" for note in report.notes)]
    if report.lower_bound:
        lines += ["", LOWER_BOUND]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return parse


def _core(text: str) -> int | None:
    if text in ("none", "-"):
        return None
    return int(_count(0)(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tunvpn bench logins``."""
    parser.add_argument(
        "--suite", choices=sorted(SUITE_NAMES), default="ecp256", help="phase 1 DH group (ecp256)"
    )
    parser.add_argument(
        "--pfs",
        choices=("same", "none"),
        default="same",
        help="Quick Mode PFS: the phase 1 group (same) or none",
    )
    parser.add_argument(
        "--passwords",
        choices=("clear", "scrypt"),
        default="clear",
        help="users-file lines: clear passwords or scrypt hashes (tunvpn passwd; ~tens of ms each)",
    )
    parser.add_argument(
        "-c", "--concurrency", type=_count(1), default=20, metavar="N", help="logins in flight (20)"
    )
    parser.add_argument(
        "-t", "--duration", type=float, default=20.0, metavar="SECONDS", help="throughput window (20)"
    )
    parser.add_argument(
        "-n", "--logins", type=_count(1), default=None, metavar="N", help="instead of --duration: N logins"
    )
    parser.add_argument("--warmup", type=_count(0), default=10, metavar="N", help="logins not counted (10)")
    parser.add_argument(
        "--hold",
        type=_count(0),
        default=1000,
        metavar="N",
        help="clients held up for the memory figure (1000; 0: skip)",
    )
    parser.add_argument(
        "--hold-during",
        action="store_true",
        help="keep the held clients connected during the throughput window",
    )
    parser.add_argument("--gateway-core", type=_core, default=0, metavar="CORE", help="(0; none: not pinned)")
    parser.add_argument(
        "--generator-core", type=_core, default=1, metavar="CORE", help="(1; none: not pinned)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per login (30)")
    parser.add_argument(
        "--gateway-option",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="an extra [gateway] line of the generated gateway.toml (repeatable)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="FILE", help="run the gateway under cProfile, stats to FILE"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw report as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (gateway.toml, users, gateway.log)"
    )


def options_from_args(args: argparse.Namespace) -> LoginBenchOptions:
    return LoginBenchOptions(
        suite=args.suite,
        pfs=args.pfs == "same",
        passwords=args.passwords,
        concurrency=args.concurrency,
        duration=args.duration,
        logins=args.logins,
        warmup=args.warmup,
        hold=args.hold,
        hold_during=args.hold_during,
        gateway_core=args.gateway_core,
        generator_core=args.generator_core,
        timeout=args.timeout,
        profile=args.profile.resolve() if args.profile else None,
        gateway_args=tuple(args.gateway_option),
        keep=args.keep,
    )


def run_from_args(
    args: argparse.Namespace, argv: Sequence[str] | None = None, prog: str = "tunvpn bench"
) -> int:
    """``tunvpn bench logins ...``: run, print the table (and write ``--json``); exit status 0 when
    every login completed, 1 when some failed or the bench could not run."""
    if argv is None:
        argv = sys.argv[1:]
    command = " ".join([prog, *map(shlex.quote, argv)])
    try:
        report = run_logins(options_from_args(args), command)
    except LoginBenchError as exc:
        print(f"{prog} logins: error: {exc}", file=sys.stderr)
        return 1
    print(report.to_markdown(), flush=True)
    if args.json:
        args.json.write_text(report.to_json() + "\n")
    failed = report.logins.get("failed", 0) + report.warmup.get("failed", 0) + report.memory.get("failed", 0)
    return 0 if not failed else 1


__all__ = [
    "LOWER_BOUND",
    "GatewayProcess",
    "LoginBenchError",
    "LoginBenchOptions",
    "LoginReport",
    "Outcome",
    "format_report",
    "judge",
    "percentile",
    "run_logins",
]
