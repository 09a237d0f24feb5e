"""Measuring one path: ping RTT, iperf3 TCP (1 stream, optionally -P N), CPU, tunnel device bytes.

The parsers (``parse_ping``, ``parse_iperf``) are pure, so they are tested without root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunvpn.bench.report import RunResult
from tunvpn.bench.system import (
    CommandError,
    Tracker,
    cpu_busy,
    cpu_sample,
    proc_cpu_ticks,
    read_text,
    wait_until,
)

log = logging.getLogger("tunvpn.bench")

IPERF_PORT = 5201


@dataclass
class PingStats:
    avg_ms: float | None
    min_ms: float | None
    max_ms: float | None
    loss_pct: float | None
    p50_ms: float | None = None
    p95_ms: float | None = None
    replies: int | None = None
    """Replies the figures come from (None: only the summary line was there)."""


_RTT = re.compile(r"=\s*([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+\s*ms")
_LOSS = re.compile(r"([\d.]+)% packet loss")
_SENT = re.compile(r"(\d+) packets transmitted")
_REPLY = re.compile(r"icmp_seq=(\d+)\b.*?\btime[=<]\s*([\d.]+)\s*ms")


def parse_ping_replies(output: str) -> dict[int, float]:
    """Per-reply RTTs of iputils ``ping`` (without -q): ``{icmp_seq: ms}``, duplicates ignored."""
    replies: dict[int, float] = {}
    for line in output.splitlines():
        if "DUP!" in line:
            continue
        match = _REPLY.search(line)
        if match:
            replies.setdefault(int(match.group(1)), float(match.group(2)))
    return replies


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _stats(times: Sequence[float], loss_pct: float | None) -> PingStats:
    if not times:
        return PingStats(None, None, None, loss_pct, replies=0)
    return PingStats(
        avg_ms=round(statistics.fmean(times), 3),
        min_ms=min(times),
        max_ms=max(times),
        loss_pct=loss_pct,
        p50_ms=percentile(times, 50),
        p95_ms=percentile(times, 95),
        replies=len(times),
    )


def parse_ping(output: str) -> PingStats:
    """iputils ``ping``: min/avg/max and loss from its summary (``rtt min/avg/max/mdev = a/b/c/d
    ms``, ``N% packet loss``); p50/p95 from the per-reply lines if it printed them (not -q)."""
    rtt = _RTT.search(output)
    loss = _LOSS.search(output)
    replies = parse_ping_replies(output)
    times = list(replies.values())
    return PingStats(
        avg_ms=float(rtt.group(2)) if rtt else None,
        min_ms=float(rtt.group(1)) if rtt else None,
        max_ms=float(rtt.group(3)) if rtt else None,
        loss_pct=float(loss.group(1)) if loss else None,
        p50_ms=percentile(times, 50) if times else None,
        p95_ms=percentile(times, 95) if times else None,
        replies=len(times) if times else None,
    )


def parse_ping_window(output: str, first: int, last: int) -> PingStats:
    """The replies to pings ``first``..``last`` (icmp_seq, 1-based) only: every figure from the
    per-reply lines; loss over the pings of that window that were sent (the summary's
    "N packets transmitted", else the highest sequence number seen)."""
    replies = parse_ping_replies(output)
    sent_match = _SENT.search(output)
    sent = int(sent_match.group(1)) if sent_match else max(replies, default=0)
    top = min(last, sent)
    times = [ms for seq, ms in sorted(replies.items()) if first <= seq <= top]
    expected = top - first + 1
    loss = round(100.0 * (expected - len(times)) / expected, 1) if expected > 0 else None
    return _stats(times, loss)


def load_ping_plan(duration: float, interval: float) -> tuple[int, int]:
    """(count, skip) of the pings sent during a TCP flow of ``duration`` seconds: they stop half
    a second before the flow ends; the first ``skip`` (its first second or quarter, slow start
    and iperf3's own start) are not counted."""
    count = max(1, int((duration - 0.5) / interval))
    skip = min(count - 1, math.ceil(min(1.0, duration / 4) / interval))
    return count, skip


@dataclass
class UdpSocket:
    local: str
    rcvbuf: int
    sndbuf: int
    drops: int
    """Datagrams the socket dropped (receive buffer full, ...): ``skmem`` field ``d``."""
    program: str = ""


_SKMEM = re.compile(r"skmem:\(([^)]*)\)")
_USER = re.compile(r'users:\(\("([^"]+)"')


def parse_ss_udp(output: str) -> list[UdpSocket]:
    """``ss -H -u -a -n -m -p``: each UDP socket's local address, rb/tb (buffer sizes), d (drops)
    and the program holding it."""
    out: list[UdpSocket] = []
    local, program = "", ""
    for line in output.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            local = fields[3] if len(fields) >= 5 else ""
            user = _USER.search(line)
            program = user.group(1) if user else ""
        match = _SKMEM.search(line)
        if match and local:
            values = {m.group(1): int(m.group(2)) for m in re.finditer(r"([a-z]+)(\d+)", match.group(1))}
            out.append(
                UdpSocket(local, values.get("rb", 0), values.get("tb", 0), values.get("d", 0), program)
            )
            local = ""
    return out


@dataclass
class IperfResult:
    sender_mbps: float
    receiver_mbps: float
    retransmits: int | None
    sent_bytes: int
    received_bytes: int


class IperfError(RuntimeError):
    pass


def parse_iperf(text: str) -> IperfResult:
    """The ``end`` section of ``iperf3 -J`` output (TCP): Mbit/s both sides, retransmits, bytes."""
    try:
        data: dict[str, Any] = json.loads(text)
    except ValueError:
        raise IperfError(f"iperf3 printed no JSON: {text.strip()[-300:]!r}") from None
    if data.get("error"):
        raise IperfError(f"iperf3: {data['error']}")
    end = data.get("end") or {}
    sent, received = end.get("sum_sent"), end.get("sum_received")
    if not sent or not received:
        raise IperfError("iperf3 JSON has no end.sum_sent / end.sum_received")
    retr = sent.get("retransmits")
    return IperfResult(
        sender_mbps=float(sent["bits_per_second"]) / 1e6,
        receiver_mbps=float(received["bits_per_second"]) / 1e6,
        retransmits=int(retr) if retr is not None else None,
        sent_bytes=int(sent.get("bytes", 0)),
        received_bytes=int(received.get("bytes", 0)),
    )


# --------------------------------------------------------------------------- probes in namespaces


def ping_once(tracker: Tracker, ns: str, dst: str) -> bool:
    try:
        return tracker.run(["ping", "-q", "-n", "-c", "1", "-W", "1", dst], ns=ns, timeout=5).returncode == 0
    except CommandError:
        return False


def wait_ping(tracker: Tracker, ns: str, dst: str, timeout: float) -> bool:
    """Ping ``dst`` from ``ns`` once a second or so until it answers or ``timeout`` passes."""
    return wait_until(lambda: ping_once(tracker, ns, dst), timeout, interval=0.2)


def route_device(tracker: Tracker, ns: str, dst: str) -> str:
    """The device ``ns`` routes ``dst`` through (policy rules included), or ``""``."""
    result = tracker.run(["ip", "-j", "route", "get", dst], ns=ns, timeout=10)
    try:
        routes = json.loads(result.stdout or "[]")
    except ValueError:
        return ""
    return str(routes[0].get("dev", "")) if routes else ""


def link_info(tracker: Tracker, ns: str, dev: str) -> dict[str, Any]:
    result = tracker.run(["ip", "-j", "-s", "link", "show", "dev", dev], ns=ns, timeout=10)
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return {}
    return links[0] if links else {}


def device_bytes(tracker: Tracker, ns: str, dev: str) -> tuple[int, int]:
    """(tx bytes, rx bytes) of ``dev`` in ``ns``; (0, 0) if unknown."""
    stats = link_info(tracker, ns, dev).get("stats64", {})
    return int(stats.get("tx", {}).get("bytes", 0)), int(stats.get("rx", {}).get("bytes", 0))


def wait_listening(tracker: Tracker, ns: str, port: int, timeout: float = 10) -> bool:
    def listening() -> bool:
        out = tracker.run(["ss", "-Hltn", f"sport = :{port}"], ns=ns, timeout=5).stdout
        return bool(out.strip())

    return wait_until(listening, timeout, interval=0.1)


# --------------------------------------------------------------------------- one measurement


@dataclass
class MeasureSpec:
    duration: float = 10.0
    parallel: int = 0
    pings: int = 20
    ping_interval: float = 0.2
    reverse: bool = False
    wait_idle: float = 0.0
    """Up to this many seconds, wait for the box to be idle (< IDLE_BUSY_PCT busy) before measuring."""
    load_ping_interval: float = 0.05
    """Latency under load: ping every this many seconds during the 1-stream TCP test, and during
    a second one the other way; 0: neither (no second test)."""


IDLE_BUSY_PCT = 15.0


def measure_path(
    tracker: Tracker,
    spec: MeasureSpec,
    *,
    client_ns: str,
    server_ns: str,
    server_ip: str,
    device: str,
    daemons: dict[str, int],
    workdir: Path,
    label: str,
) -> RunResult:
    """Ping, then iperf3 TCP 1 stream (with CPU and device counters), then optionally -P N.

    iperf3's client runs in ``client_ns`` and sends to its server at ``server_ip`` in
    ``server_ns`` (the other way with ``spec.reverse``). Failures land in ``RunResult.errors``.
    A test whose server went away (it was signalled, or it crashed) is retried once with a
    fresh server; the first failure is kept in ``RunResult.notes``.
    """
    result = RunResult()
    server = _IperfServer(tracker, server_ns, server_ip, workdir / f"{label}.iperf3-server.log")
    try:
        problem = server.ensure()
        if problem:
            result.errors.append(problem)
            return result

        # what else keeps the box busy while our tunnel idles (other jobs skew every figure)
        deadline = time.monotonic() + spec.wait_idle
        while True:
            idle0 = cpu_sample()
            time.sleep(1.0)
            result.cpu_background_pct = cpu_busy(idle0, cpu_sample())[0]
            busy = result.cpu_background_pct or 0.0
            if busy < IDLE_BUSY_PCT or time.monotonic() >= deadline:
                break
            log.info("%s: the box is %.0f%% busy with other work; waiting for it to calm down", label, busy)

        # idle RTT first, so that the bulk transfer's queues do not inflate it
        count = max(1, spec.pings)
        ping_timeout = count * spec.ping_interval + 10
        try:
            idle_ticks0 = _daemon_ticks(daemons)
            idle_wall0 = time.monotonic()
            out = tracker.run(
                ["ping", "-n", "-c", str(count), "-i", f"{spec.ping_interval:g}", "-W", "2", server_ip],
                ns=client_ns,
                timeout=ping_timeout,
            )
            result.daemon_idle_cpu_pct = _cpu_pct(
                idle_ticks0, _daemon_ticks(daemons), time.monotonic() - idle_wall0, digits=2
            )
            stats = parse_ping(out.stdout + out.stderr)
            result.ping_avg_ms, result.ping_min_ms, result.ping_max_ms = (
                stats.avg_ms,
                stats.min_ms,
                stats.max_ms,
            )
            result.ping_loss_pct = stats.loss_pct
            result.ping_p50_ms, result.ping_p95_ms = stats.p50_ms, stats.p95_ms
            if stats.avg_ms is None:
                result.errors.append(f"ping: no reply ({(out.stdout + out.stderr).strip()[-200:]})")
        except CommandError as exc:
            result.errors.append(str(exc))

        def iperf_argv(reverse: bool) -> list[str]:
            argv = ["iperf3", "-J", "-c", server_ip, "-p", str(IPERF_PORT), "--connect-timeout", "5000"]
            return [*argv, *(["-R"] if reverse else []), "-t", f"{spec.duration:g}"]

        base = iperf_argv(spec.reverse)
        iperf_timeout = spec.duration + 30
        main_way, other_way = ("ba", "ab") if spec.reverse else ("ab", "ba")
        pinger = _LoadPinger(tracker, spec, client_ns, server_ip, workdir, label)

        for attempt in (1, 2):
            problem = server.ensure()
            if problem:
                result.errors.append(f"TCP 1 stream: {problem}")
                break
            ticks0 = _daemon_ticks(daemons)
            dev0 = device_bytes(tracker, client_ns, device) if device else (0, 0)
            cpu0 = cpu_sample()
            wall0 = time.monotonic()
            pinger.start(main_way)
            one = _iperf(tracker, client_ns, base, iperf_timeout, workdir / f"{label}.tcp1.json")
            loaded = pinger.finish()
            wall = time.monotonic() - wall0
            cpu1 = cpu_sample()
            dev1 = device_bytes(tracker, client_ns, device) if device else (0, 0)
            ticks1 = _daemon_ticks(daemons)
            if isinstance(one, str):
                if attempt == 1 and server.lost(one):
                    result.notes.append(f"TCP 1 stream retried: {one} ({server.why()})")
                    continue
                result.errors.append(f"TCP 1 stream: {one}")
                break
            result.tcp_sender_mbps = one.sender_mbps
            result.tcp_receiver_mbps = one.receiver_mbps
            result.retransmits = one.retransmits
            _store_load(result, main_way, one.receiver_mbps, loaded)
            result.cpu_busy_pct, result.cpu_steal_pct = cpu_busy(cpu0, cpu1)
            result.daemon_cpu_pct.update(_cpu_pct(ticks0, ticks1, wall, digits=1))
            if device:
                # client -> server: our device transmits; -R: it receives
                moved = (dev1[1] - dev0[1]) if spec.reverse else (dev1[0] - dev0[0])
                result.via_tunnel = one.sent_bytes > 0 and moved >= 0.95 * one.sent_bytes
                if not result.via_tunnel:
                    result.errors.append(
                        f"device {device} moved {moved} bytes while iperf3 sent {one.sent_bytes}"
                    )
            break

        if result.ok and spec.load_ping_interval > 0:
            # latency under load the other way: one more 1-stream test, pinged the same way
            for attempt in (1, 2):
                problem = server.ensure()
                if problem:
                    result.errors.append(f"TCP {_ARROW[other_way]}: {problem}")
                    break
                pinger.start(other_way)
                back = _iperf(
                    tracker,
                    client_ns,
                    iperf_argv(not spec.reverse),
                    iperf_timeout,
                    workdir / f"{label}.tcp1-{other_way}.json",
                )
                loaded = pinger.finish()
                if isinstance(back, str):
                    if attempt == 1 and server.lost(back):
                        result.notes.append(f"TCP {_ARROW[other_way]} retried: {back} ({server.why()})")
                        continue
                    result.errors.append(f"TCP {_ARROW[other_way]}: {back}")
                else:
                    _store_load(result, other_way, back.receiver_mbps, loaded)
                break
        for way in ("ab", "ba"):
            if getattr(result, f"load_{way}_mbps") is not None and getattr(result, f"load_{way}_pings") == 0:
                result.errors.append(f"ping under load {_ARROW[way]}: no reply")

        if spec.parallel > 1:
            for attempt in (1, 2):
                problem = server.ensure()
                if problem:
                    result.errors.append(f"TCP -P {spec.parallel}: {problem}")
                    break
                many = _iperf(
                    tracker,
                    client_ns,
                    [*base, "-P", str(spec.parallel)],
                    iperf_timeout,
                    workdir / f"{label}.tcp{spec.parallel}.json",
                )
                if isinstance(many, str):
                    if attempt == 1 and server.lost(many):
                        result.notes.append(f"TCP -P {spec.parallel} retried: {many} ({server.why()})")
                        continue
                    result.errors.append(f"TCP -P {spec.parallel}: {many}")
                else:
                    result.parallel_receiver_mbps = many.receiver_mbps
                break
    finally:
        server.stop()
    return result


_ARROW = {"ab": "A->B", "ba": "B->A"}


def _daemon_ticks(daemons: dict[str, int]) -> dict[str, int | None]:
    """Each daemon's CPU ticks so far (None: it is gone)."""
    return {name: proc_cpu_ticks(pid) for name, pid in daemons.items()}


def _cpu_pct(
    before: dict[str, int | None], after: dict[str, int | None], wall: float, *, digits: int
) -> dict[str, float]:
    """% of one core each daemon used over ``wall`` seconds between two readings of its ticks."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, a in before.items():
        b = after.get(name)
        if a is not None and b is not None and wall > 0:
            out[name] = round(100.0 * (b - a) / hz / wall, digits)
    return out


def _store_load(result: RunResult, way: str, mbps: float, stats: PingStats | None) -> None:
    setattr(result, f"load_{way}_mbps", mbps)
    if stats is None:
        return
    for what in ("avg", "min", "max", "p50", "p95"):
        setattr(result, f"load_{way}_ping_{what}_ms", getattr(stats, f"{what}_ms"))
    setattr(result, f"load_{way}_ping_loss_pct", stats.loss_pct)
    setattr(result, f"load_{way}_pings", stats.replies)


class _LoadPinger:
    """``ping -i <load_ping_interval>`` from the client namespace, started with a TCP test; its
    per-reply lines go to a file in the work dir and are read when the test is over."""

    def __init__(
        self, tracker: Tracker, spec: MeasureSpec, ns: str, dst: str, workdir: Path, label: str
    ) -> None:
        self.tracker, self.spec, self.ns, self.dst = tracker, spec, ns, dst
        self.workdir, self.label = workdir, label
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{label}.ping-load.txt"
        self.count, self.skip = load_ping_plan(spec.duration, spec.load_ping_interval or 1.0)

    def start(self, way: str) -> None:
        if self.spec.load_ping_interval <= 0:
            return
        self.log_path = self.workdir / f"{self.label}.ping-load-{way}.txt"
        self.log_path.unlink(missing_ok=True)  # a retried test starts a fresh series
        argv = [
            "ping", "-n",
            "-c", str(self.count),
            "-i", f"{self.spec.load_ping_interval:g}",
            "-W", "1",
            self.dst,
        ]  # fmt: skip
        self.proc = self.tracker.spawn(f"ping-load-{way}", argv, self.log_path, ns=self.ns)

    def finish(self) -> PingStats | None:
        """Wait (briefly) for ping to end, stop it, and parse the replies of the counted window."""
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.tracker.stop(self.proc)
        self.proc = None
        return parse_ping_window(read_text(self.log_path), self.skip + 1, self.count)


def udp_sockets(tracker: Tracker, ns: str) -> list[UdpSocket]:
    """The UDP sockets in ``ns`` with their buffer sizes and drops; empty if ``ss`` fails."""
    try:
        out = tracker.run(["ss", "-H", "-u", "-a", "-n", "-m", "-p"], ns=ns, timeout=10)
    except CommandError:
        return []
    return parse_ss_udp(out.stdout)


class _IperfServer:
    """``iperf3 -s`` in the server namespace, restarted when it went away."""

    def __init__(self, tracker: Tracker, ns: str, ip: str, log_path: Path) -> None:
        self.tracker, self.ns, self.ip, self.log_path = tracker, ns, ip, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> str:
        """Start the server unless it runs; ``""`` when it listens, else the reason."""
        if self.proc is not None and self.proc.poll() is None:
            return ""
        if self.proc is not None:
            self.tracker.stop(self.proc)
        self.proc = self.tracker.spawn(
            "iperf3-server", ["iperf3", "-s", "-B", self.ip, "-p", str(IPERF_PORT)], self.log_path, ns=self.ns
        )
        if not wait_listening(self.tracker, self.ns, IPERF_PORT):
            return f"iperf3 server did not listen: {read_text(self.log_path).strip()[-300:]}"
        return ""

    def lost(self, error: str) -> bool:
        """Did this failure come from the server going away (not from the tunnel)?"""
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(0.5)  # a signalled server needs a moment to exit
        gone = self.proc is None or self.proc.poll() is not None
        return gone or "server has terminated" in error

    def why(self) -> str:
        if self.proc is None:
            return "no server"
        code = self.proc.poll()
        if code is None:
            return "the server still runs"
        return f"server exited {code}" + (f" (signal {-code})" if code < 0 else "")

    def stop(self) -> None:
        if self.proc is not None:
            self.tracker.stop(self.proc)
            self.proc = None


def _iperf(tracker: Tracker, ns: str, argv: list[str], timeout: float, save: Path) -> IperfResult | str:
    """Run one iperf3 client; the parsed result, or a one-line reason."""
    try:
        out = tracker.run(argv, ns=ns, timeout=timeout)
    except CommandError as exc:
        return str(exc)
    save.write_text(out.stdout)
    try:
        return parse_iperf(out.stdout)
    except IperfError as exc:
        return f"{exc} {out.stderr.strip()[-200:]}".strip()
