"""Host plumbing for the benchmark: bounded subprocesses, daemons tracked by PID, network
namespaces, /proc CPU counters, tool checks and the optional apt-get install.

Everything this module starts or creates is recorded twice: in memory (``Tracker``), for the
normal clean-up (also on Ctrl-C and errors), and in a state file under ``/run/tunvpn-bench/``,
so that a later run removes what a run killed with SIGKILL left behind. Daemons also get
``PR_SET_PDEATHSIG`` (SIGTERM), so they do not outlive a harness that dies hard.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("tunvpn.bench")

STATE_DIR = Path("/run/tunvpn-bench")
NS_PREFIX = "tvb"
IFNAMSIZ = 15
POLICY_RC = Path("/usr/sbin/policy-rc.d")

_PR_SET_PDEATHSIG = 1
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _pdeathsig() -> None:
    """In the child between fork and exec: SIGTERM it when the harness dies (kept across exec)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def ns_argv(ns: str | None, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    args = [os.fspath(a) for a in argv]
    return ["ip", "netns", "exec", ns, *args] if ns else args


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a PID's reuse apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if after[0] == "Z":
        return None
    return int(after[19])


def proc_cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(after[11]) + int(after[12])


@dataclass(frozen=True)
class CpuSample:
    total: int
    idle: int
    steal: int


def cpu_sample() -> CpuSample:
    """The aggregate ``cpu`` line of /proc/stat (user..steal; guest time is inside user)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:9]]
                return CpuSample(total=sum(v), idle=v[3] + v[4], steal=v[7])
    raise RuntimeError("/proc/stat has no aggregate cpu line")


def cpu_busy(before: CpuSample, after: CpuSample) -> tuple[float | None, float | None]:
    """(busy %, steal %) of the whole box between two samples; 100 = every core busy."""
    dt = after.total - before.total
    if dt <= 0:
        return None, None
    busy = 100.0 * (dt - (after.idle - before.idle)) / dt
    steal = 100.0 * (after.steal - before.steal) / dt
    return busy, steal


# --------------------------------------------------------------------------- the tracker


@dataclass
class Daemon:
    label: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    starttime: int | None


@dataclass
class Tracker:
    """What one benchmark run started and created; ``cleanup()`` undoes all of it."""

    state_dir: Path = STATE_DIR
    daemons: list[Daemon] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    """Directories to remove if empty at the end (e.g. /run/wireguard if we made it)."""
    trees: list[Path] = field(default_factory=list)
    """Directories removed with everything in them (the work dir, unless --keep)."""

    def __post_init__(self) -> None:
        self.state_path = self.state_dir / f"{os.getpid()}.json"
        self._me = proc_starttime(os.getpid())

    # ------------------------------------------------------------------ state file

    def save(self) -> None:
        data = {
            "pid": os.getpid(),
            "starttime": self._me,
            "daemons": [[d.proc.pid, d.starttime] for d in self.daemons if d.proc.returncode is None],
            "namespaces": self.namespaces,
            "files": [str(p) for p in self.files],
            "dirs": [str(p) for p in self.dirs],
            "trees": [str(p) for p in self.trees],
        }
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.state_path)
        except OSError as exc:  # best effort: the in-memory clean-up still runs
            log.debug("cannot write %s: %s", self.state_path, exc)

    # ------------------------------------------------------------------ processes

    def spawn(
        self,
        label: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        ns: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a daemon (inside ``ns``), output to ``log_path``; it must exec, not fork away."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        out: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                ns_argv(ns, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,  # a Ctrl-C reaches us, and we stop the daemons in order
                preexec_fn=_pdeathsig,
                close_fds=True,
            )
        finally:
            out.close()
        self.daemons.append(Daemon(label, proc, log_path, proc_starttime(proc.pid)))
        self.save()
        log.debug("started %s (pid %d): %s", label, proc.pid, " ".join(os.fspath(a) for a in argv))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; forget the process."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.0f s; SIGKILL", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self.daemons = [d for d in self.daemons if d.proc is not proc]
        self.save()
        return proc.returncode

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        ns: str | None = None,
        timeout: float = 30,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command to completion (killed at ``timeout``); text output captured."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            result = subprocess.run(
                ns_argv(ns, argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=full_env,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                preexec_fn=_pdeathsig,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"`{' '.join(os.fspath(a) for a in argv)}` took longer than {timeout:.0f} s"
            ) from exc
        if check and result.returncode != 0:
            raise CommandError(
                f"`{' '.join(os.fspath(a) for a in argv)}` exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )
        return result

    # ------------------------------------------------------------------ namespaces and files

    def add_namespace(self, name: str) -> None:
        self.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.save()

    def delete_namespace(self, name: str) -> None:
        kill_namespace_pids(name)
        result = self.run(["ip", "netns", "del", name])
        if result.returncode != 0 and Path(f"/run/netns/{name}").exists():
            log.warning("ip netns del %s: %s", name, result.stderr.strip())
        with contextlib.suppress(ValueError):
            self.namespaces.remove(name)
        self.save()

    def add_file(self, path: Path) -> None:
        self.files.append(path)
        self.save()

    def add_dir_if_empty(self, path: Path) -> None:
        self.dirs.append(path)
        self.save()

    def add_tree(self, path: Path) -> None:
        self.trees.append(path)
        self.save()

    def keep_tree(self, path: Path) -> None:
        with contextlib.suppress(ValueError):
            self.trees.remove(path)
        self.save()

    # ------------------------------------------------------------------ clean-up

    def cleanup(self) -> None:
        """Stop every daemon (newest first), delete namespaces, files and temp dirs."""
        for d in reversed(list(self.daemons)):
            try:
                self.stop(d.proc, timeout=10)
            except Exception as exc:  # keep cleaning
                log.warning("stopping %s (pid %d): %s", d.label, d.proc.pid, exc)
        for ns in reversed(list(self.namespaces)):
            try:
                self.delete_namespace(ns)
            except Exception as exc:
                log.warning("deleting namespace %s: %s", ns, exc)
        _remove_paths(self.files, self.dirs, self.trees)
        self.files.clear()
        self.dirs.clear()
        self.trees.clear()
        with contextlib.suppress(OSError):
            self.state_path.unlink()
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()


class CommandError(RuntimeError):
    """A helper command failed or took too long."""


def _remove_paths(files: Sequence[Path], dirs: Sequence[Path], trees: Sequence[Path]) -> None:
    for p in files:
        with contextlib.suppress(OSError):
            p.unlink()
    for p in dirs:
        with contextlib.suppress(OSError):
            p.rmdir()  # only if empty
    for p in trees:
        shutil.rmtree(p, ignore_errors=True)


def kill_namespace_pids(ns: str) -> None:
    """SIGTERM, then SIGKILL, whatever still runs in namespace ``ns`` (never ourselves)."""
    try:
        listing = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return
    pids = [int(p) for p in listing.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + 3
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if proc_starttime(p) is not None]
            time.sleep(0.05)
        if not alive:
            return
        pids = alive


def clean_stale_runs(state_dir: Path = STATE_DIR) -> list[str]:
    """Undo what earlier runs that died hard left behind (their state files name it)."""
    cleaned: list[str] = []
    if not state_dir.is_dir():
        return cleaned
    for state in sorted(state_dir.glob("*.json")):
        try:
            data = json.loads(state.read_text())
            owner = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner != os.getpid() and proc_starttime(owner) == data.get("starttime"):
            continue  # that run is still alive
        for pid, start in data.get("daemons", []):
            if start is not None and proc_starttime(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                cleaned.append(f"pid {pid}")
        for ns in data.get("namespaces", []):
            if Path(f"/run/netns/{ns}").exists() and ns.startswith(NS_PREFIX):
                kill_namespace_pids(ns)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
                cleaned.append(f"netns {ns}")
        _remove_paths(
            [Path(p) for p in data.get("files", [])],
            [Path(p) for p in data.get("dirs", [])],
            [Path(p) for p in data.get("trees", [])],
        )
        with contextlib.suppress(OSError):
            state.unlink()
    return cleaned


# --------------------------------------------------------------------------- topology


@dataclass
class Topology:
    """Two fresh namespaces ``<tag>a`` / ``<tag>b`` joined by one veth pair, IPv6 off inside."""

    tracker: Tracker
    ip_a: str = "10.77.0.1"
    ip_b: str = "10.77.0.2"
    prefix: int = 24
    mtu: int = 1500
    tag: str = field(default_factory=lambda: NS_PREFIX + secrets.token_hex(3))
    ipv6: bool = False
    """The IPv6 variant (issue 19): IPv6 on, the veth pair addressed ``fd00:77::1``/``::2`` (/64)
    instead, so every path runs over IPv6 (and carries IPv6 inside)."""

    def __post_init__(self) -> None:
        if self.ipv6:
            self.ip_a, self.ip_b, self.prefix = "fd00:77::1", "fd00:77::2", 64
        self.ns_a = self.tag + "a"
        self.ns_b = self.tag + "b"
        self.veth_a = self.ns_a + "v"
        self.veth_b = self.ns_b + "v"
        assert len(self.veth_a) <= IFNAMSIZ

    def create(self) -> None:
        t = self.tracker
        for ns in (self.ns_a, self.ns_b):
            t.add_namespace(ns)
            # No IPv6 (router solicitations on the TUN devices are only noise, interop pitfall
            # 14), except in the IPv6 variant: there without duplicate address detection
            off = "0" if self.ipv6 else "1"
            knobs = [f"net.ipv6.conf.{c}.disable_ipv6={off}" for c in ("all", "default")]
            if self.ipv6:
                knobs += ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            t.run(["sysctl", "-qw", *knobs], ns=ns, check=True)
            t.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        t.run(["ip", "link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b], check=True)
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.ip_a), (self.ns_b, self.veth_b, self.ip_b)):
            t.run(["ip", "link", "set", dev, "netns", ns], check=True)
            nodad = ["nodad"] if self.ipv6 else []
            t.run(["ip", "-n", ns, "addr", "add", f"{addr}/{self.prefix}", "dev", dev, *nodad], check=True)
            t.run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up"], check=True)

    def destroy(self) -> None:
        for ns in (self.ns_b, self.ns_a):
            if ns in self.tracker.namespaces:
                self.tracker.delete_namespace(ns)


# --------------------------------------------------------------------------- the wire's offloads


WIRE_ETHTOOL: dict[str, tuple[tuple[str, str], ...]] = {
    "on": (),
    "off": (
        ("tx-udp-segmentation", "off"),
        ("generic-receive-offload", "off"),
        ("rx-gro-list", "off"),
        ("rx-udp-gro-forwarding", "off"),
    ),
    "gro": (("tx-udp-segmentation", "off"), ("generic-receive-offload", "on")),
}
"""``--wire-gso`` setting -> the veth features it sets (``on``: the kernel's defaults, untouched).
The meaning of each is in tunvpn.bench.report.WIRE_SETTINGS."""


def parse_ethtool_features(output: str) -> dict[str, str]:
    """``ethtool -k DEV``: ``{"tx-udp-segmentation": "on", ...}`` (``[fixed]`` and the like dropped)."""
    features: dict[str, str] = {}
    for line in output.splitlines():
        name, sep, rest = line.strip().partition(":")
        words = rest.split()
        if sep and words and words[0] in ("on", "off") and " " not in name:
            features[name] = words[0]
    return features


def set_wire_offloads(tracker: Tracker, ns: str, dev: str, setting: str) -> dict[str, str]:
    """Apply ``--wire-gso setting`` to ``dev`` in ``ns`` (one feature at a time: veth refuses
    some on some kernels) and return every feature as read back. CommandError if ethtool cannot
    read them, or if a setting that turns USO off left it on."""
    for feature, state in WIRE_ETHTOOL[setting]:
        result = tracker.run(["ethtool", "-K", dev, feature, state], ns=ns, timeout=10)
        if result.returncode != 0:
            log.debug(
                "ethtool -K %s %s %s: %s", dev, feature, state, (result.stderr or result.stdout).strip()
            )
    shown = tracker.run(["ethtool", "-k", dev], ns=ns, timeout=10, check=True)
    features = parse_ethtool_features(shown.stdout)
    for feature, state in WIRE_ETHTOOL[setting]:
        if feature == "tx-udp-segmentation" and features.get(feature) not in (None, state):
            raise CommandError(f"ethtool could not turn {feature} {state} on {dev} in {ns}")
    return features


# --------------------------------------------------------------------------- tools and packages


@dataclass(frozen=True)
class Requirement:
    """A command (``which``) or a file that must exist, and the Debian package that brings it."""

    what: str
    package: str
    is_path: bool = False

    def present(self) -> bool:
        if self.is_path:
            return os.path.exists(self.what)
        return shutil.which(self.what) is not None

    def describe(self) -> str:
        return f"{self.what} (Debian package {self.package})"


COMMON_REQUIREMENTS = (
    Requirement("ip", "iproute2"),
    Requirement("ss", "iproute2"),
    Requirement("ping", "iputils-ping"),
    Requirement("iperf3", "iperf3"),
)


ETHTOOL = Requirement("ethtool", "ethtool")
"""For ``--wire-gso off|gro`` (and to record the veth's offloads with any setting)."""


def missing(requirements: Sequence[Requirement]) -> list[Requirement]:
    return [r for r in requirements if not r.present()]


def _policy_rc_forbids() -> bool:
    if not os.access(POLICY_RC, os.X_OK):
        return False
    try:
        rc = subprocess.run([str(POLICY_RC), "dummy", "start"], capture_output=True, timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired):
        return False
    return rc == 101


def apt_install(packages: Sequence[str], say: Callable[[str], None] = log.info) -> None:
    """``apt-get install --no-install-recommends`` with policy-rc.d answering 101 meanwhile.

    An existing policy-rc.d that already answers 101 is left alone; another one is moved aside
    and put back afterwards.
    """
    if not packages:
        return
    if os.geteuid() != 0:
        raise CommandError("--install needs root (apt-get)")
    if shutil.which("apt-get") is None:
        raise CommandError("--install needs apt-get (Debian/Ubuntu)")
    saved: Path | None = None
    made = False
    if not _policy_rc_forbids():
        if POLICY_RC.exists():
            saved = POLICY_RC.with_name(f"policy-rc.d.tunvpn-bench-saved.{os.getpid()}")
            POLICY_RC.replace(saved)
        POLICY_RC.write_text(
            "#!/bin/sh\n# temporary, from tunvpn bench --install: start no services\nexit 101\n"
        )
        POLICY_RC.chmod(0o755)
        made = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        say("apt-get update")
        subprocess.run(
            ["apt-get", "update", "-q"], env=env, timeout=600, check=True, stdout=subprocess.DEVNULL
        )
        say("apt-get install " + " ".join(packages))
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            timeout=1800,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        raise CommandError(f"apt-get failed (exit {exc.returncode})") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError("apt-get took too long") from exc
    finally:
        if made:
            with contextlib.suppress(OSError):
                POLICY_RC.unlink()
            if saved is not None:
                saved.replace(POLICY_RC)


def dpkg_version(package: str) -> str:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "?"


def first_line(argv: Sequence[str], timeout: float = 10) -> str:
    """First non-empty output line of a ``--version`` style command, or ``""``."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            return line.strip()
    return ""


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
