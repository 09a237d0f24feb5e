"""Network-namespace test topologies (a helper module for the tests, not a test).

Every name made here is unique per run: namespaces are called ``tv<6 hex><role>`` and veth
ends ``tv<6 hex><role>v``, so both stay within the kernel's 15-character interface-name limit
and parallel or left-over runs never collide. Leaving the ``with`` block (also on an exception)
kills every process started in the namespaces, then deletes them.

Typical use::

    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as pair:
        pair.run_in(pair.a, ["ping", "-c1", pair.addr_b])
        proc = pair.popen_in(pair.b, ["some-daemon"], tmp_path / "daemon.log")
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

IFNAMSIZ = 15  # Linux IFNAMSIZ (16) minus the terminating NUL
NAME_PREFIX = "tv"

# namespace name -> processes started in it through popen_in(); cleaned up by the Topology.
_tracked: dict[str, list[subprocess.Popen[Any]]] = {}


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, TUN)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (modprobe tun, or mknod /dev/net/tun c 10 200)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns list` failed: {probe.stderr.strip()}"
    return None


def _ns_argv(ns: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    return ["ip", "netns", "exec", ns, *map(os.fspath, argv)]


def run_in(
    ns: str, argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion inside namespace ``ns``; text output captured by default."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    result: subprocess.CompletedProcess[str] = subprocess.run(
        _ns_argv(ns, argv), check=False, timeout=timeout, **kw
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def popen_in(
    ns: str,
    argv: Sequence[str | os.PathLike[str]],
    log_path: str | os.PathLike[str],
    *,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background inside ``ns``, stdout+stderr to ``log_path``.

    ``ip netns exec`` execs the command, so the returned process *is* the daemon (as long as
    ``prefix`` wrappers exec too). The process is tracked and killed by the Topology on exit.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - owned by the child, closed below
    try:
        proc = subprocess.Popen(
            _ns_argv(ns, [*prefix, *argv]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # our Ctrl-C must not reach daemons before cleanup does
        )
    finally:
        log.close()
    _tracked.setdefault(ns, []).append(proc)
    return proc


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 5.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d (%s) ignored SIGTERM for %.0fs; SIGKILL", proc.pid, proc.args, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Topology:
    """A set of uniquely named namespaces joined by veth pairs; cleaned up on exit."""

    def __init__(self) -> None:
        self.tag = NAME_PREFIX + secrets.token_hex(3)  # "tv" + 6 hex = 8 characters
        self.namespaces: list[str] = []
        self.links: list[tuple[str, str, str, str]] = []  # (ns_a, if_a, ns_b, if_b)
        self._closed = False

    # ------------------------------------------------------------------ building

    def add_ns(self, role: str) -> str:
        """Create namespace ``<tag><role>`` with lo up and IPv6 off; return its name."""
        name = self.tag + role
        if len(name) + 1 > IFNAMSIZ:  # +1 for the veth suffix, which reuses the name
            raise ValueError(f"role {role!r} too long: {name!r}v would exceed {IFNAMSIZ} chars")
        _ip("netns", "add", name)
        self.namespaces.append(name)
        # No IPv6: router solicitations on TUN devices only add noise (interop pitfall 14).
        run_in(
            name,
            ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        )
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(
        self,
        ns_a: str,
        addr_a: str,
        ns_b: str,
        addr_b: str,
        *,
        mtu: int | None = None,
        names: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair; addresses in CIDR form ("10.77.0.1/24").
        ``names``: the two interface names (default: each namespace's name + "v")."""
        if_a, if_b = names or (ns_a + "v", ns_b + "v")
        if any(if_a in (a, b) or if_b in (a, b) for _, a, _, b in self.links):
            raise ValueError("one veth per namespace: name clash")
        _ip("link", "add", if_a, "type", "veth", "peer", "name", if_b)
        _ip("link", "set", if_a, "netns", ns_a)
        _ip("link", "set", if_b, "netns", ns_b)
        self.links.append((ns_a, if_a, ns_b, if_b))
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            ipaddress.ip_interface(addr)  # validate before handing to ip(8)
            _ip("-n", ns, "addr", "add", addr, "dev", ifname)
            if mtu is not None:
                _ip("-n", ns, "link", "set", ifname, "mtu", str(mtu))
            _ip("-n", ns, "link", "set", ifname, "up")
        return if_a, if_b

    def add_addr(self, ns: str, addr: str, dev: str = "lo") -> None:
        """Add an extra address (e.g. an "inner" /32 on lo)."""
        _ip("-n", ns, "addr", "add", addr, "dev", dev)

    # ------------------------------------------------------------------ processes

    def run_in(
        self, ns: str, argv: Sequence[str | os.PathLike[str]], **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run_in(ns, argv, **kw)

    def popen_in(
        self, ns: str, argv: Sequence[str | os.PathLike[str]], log_path: str | os.PathLike[str], **kw: Any
    ) -> subprocess.Popen[bytes]:
        return popen_in(ns, argv, log_path, **kw)

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self.namespaces):
            for proc in reversed(_tracked.pop(ns, [])):
                stop_process(proc)
            self._kill_leftovers(ns)
        for ns in reversed(self.namespaces):
            result = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                logger.warning("ip netns del %s: %s", ns, result.stderr.strip())
        self.namespaces.clear()

    @staticmethod
    def _kill_leftovers(ns: str) -> None:
        """Kill what still runs in our namespace (children of our daemons, e.g. vpnc scripts)."""
        listing = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
        pids = [int(p) for p in listing.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    alive.append(pid)
            if not alive:
                return
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(_pid_alive(p) for p in alive):
                time.sleep(0.05)
            pids = [p for p in alive if _pid_alive(p)]

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


class NetnsPair(Topology):
    """Two namespaces ``a`` and ``b`` joined by one veth pair ("underlay" addresses /24)."""

    def __init__(self, addr_a: str = "10.77.0.1/24", addr_b: str = "10.77.0.2/24", *, mtu: int | None = None):
        super().__init__()
        try:
            self.a = self.add_ns("a")
            self.b = self.add_ns("b")
            self.if_a, self.if_b = self.link(self.a, addr_a, self.b, addr_b, mtu=mtu)
        except BaseException:
            self.close()
            raise
        self.addr_a = str(ipaddress.ip_interface(addr_a).ip)
        self.addr_b = str(ipaddress.ip_interface(addr_b).ip)

    def __enter__(self) -> NetnsPair:
        return self


def enable_ipv6(ns: str, *ifnames: str) -> None:
    """Turn IPv6 back on in ``ns`` (:meth:`Topology.add_ns` turns it off), without duplicate
    address detection (addresses usable at once), for new interfaces and for ``ifnames``."""
    confs = ("all", "default", *ifnames)
    knobs = [f"net.ipv6.conf.{c}.{k}=0" for c in confs for k in ("disable_ipv6", "accept_dad")]
    run_in(ns, ["sysctl", "-qw", *knobs])


def frame_bytes(pcap: Path, display_filter: str = "") -> int:
    """The octets of the frames in ``pcap`` (those ``display_filter`` keeps), read by tshark."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "frame.len",
            *(["-Y", display_filter] * bool(display_filter)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(n) for n in out.split())


@contextlib.contextmanager
def capture(ns: str, ifname: str, pcap: Path, bpf: str = "udp port 500 or udp port 4500") -> Iterator[Path]:
    """Run dumpcap in ``ns`` on ``ifname`` (classic pcap format) for the duration of the block."""
    log = pcap.with_suffix(".dumpcap.log")
    proc = popen_in(ns, ["dumpcap", "-q", "-P", "-i", ifname, "-f", bpf, "-w", str(pcap)], log)
    try:
        # dumpcap writes the pcap header once the capture is live.
        wait_for(
            lambda: (pcap.exists() and pcap.stat().st_size >= 24) or proc.poll() is not None,
            15,
            f"dumpcap on {ns}/{ifname}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"dumpcap exited {proc.returncode}: {log.read_text(errors='replace')}")
        yield pcap
    finally:
        time.sleep(0.3)  # let the last packets reach the ring
        stop_process(proc)
        with contextlib.suppress(ValueError):
            _tracked.get(ns, []).remove(proc)
