"""Measuring one path: ping RTT, iperf3 TCP (1 stream, optionally -P N), CPU, tunnel device bytes.

The parsers (``parse_ping``, ``parse_iperf``) are pure, so they are tested without root.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
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


_RTT = re.compile(r"=\s*([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+\s*ms")
_LOSS = re.compile(r"([\d.]+)% packet loss")


def parse_ping(output: str) -> PingStats:
    """iputils ``ping -q`` summary: ``rtt min/avg/max/mdev = a/b/c/d ms`` and the loss line."""
    rtt = _RTT.search(output)
    loss = _LOSS.search(output)
    return PingStats(
        avg_ms=float(rtt.group(2)) if rtt else None,
        min_ms=float(rtt.group(1)) if rtt else None,
        max_ms=float(rtt.group(3)) if rtt else None,
        loss_pct=float(loss.group(1)) if loss else None,
    )


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
            out = tracker.run(
                ["ping", "-q", "-n", "-c", str(count), "-i", str(spec.ping_interval), "-W", "2", server_ip],
                ns=client_ns,
                timeout=ping_timeout,
            )
            stats = parse_ping(out.stdout + out.stderr)
            result.ping_avg_ms, result.ping_min_ms, result.ping_max_ms = (
                stats.avg_ms,
                stats.min_ms,
                stats.max_ms,
            )
            result.ping_loss_pct = stats.loss_pct
            if stats.avg_ms is None:
                result.errors.append(f"ping: no reply ({(out.stdout + out.stderr).strip()[-200:]})")
        except CommandError as exc:
            result.errors.append(str(exc))

        base = ["iperf3", "-J", "-c", server_ip, "-p", str(IPERF_PORT), "--connect-timeout", "5000"]
        if spec.reverse:
            base.append("-R")
        base += ["-t", f"{spec.duration:g}"]
        iperf_timeout = spec.duration + 30

        for attempt in (1, 2):
            problem = server.ensure()
            if problem:
                result.errors.append(f"TCP 1 stream: {problem}")
                break
            ticks0 = {name: proc_cpu_ticks(pid) for name, pid in daemons.items()}
            dev0 = device_bytes(tracker, client_ns, device) if device else (0, 0)
            cpu0 = cpu_sample()
            wall0 = time.monotonic()
            one = _iperf(tracker, client_ns, base, iperf_timeout, workdir / f"{label}.tcp1.json")
            wall = time.monotonic() - wall0
            cpu1 = cpu_sample()
            dev1 = device_bytes(tracker, client_ns, device) if device else (0, 0)
            ticks1 = {name: proc_cpu_ticks(pid) for name, pid in daemons.items()}
            if isinstance(one, str):
                if attempt == 1 and server.lost(one):
                    result.notes.append(f"TCP 1 stream retried: {one} ({server.why()})")
                    continue
                result.errors.append(f"TCP 1 stream: {one}")
                break
            result.tcp_sender_mbps = one.sender_mbps
            result.tcp_receiver_mbps = one.receiver_mbps
            result.retransmits = one.retransmits
            result.cpu_busy_pct, result.cpu_steal_pct = cpu_busy(cpu0, cpu1)
            hz = os.sysconf("SC_CLK_TCK")
            for name in daemons:
                a, b = ticks0.get(name), ticks1.get(name)
                if a is not None and b is not None and wall > 0:
                    result.daemon_cpu_pct[name] = round(100.0 * (b - a) / hz / wall, 1)
            if device:
                # client -> server: our device transmits; -R: it receives
                moved = (dev1[1] - dev0[1]) if spec.reverse else (dev1[0] - dev0[0])
                result.via_tunnel = one.sent_bytes > 0 and moved >= 0.95 * one.sent_bytes
                if not result.via_tunnel:
                    result.errors.append(
                        f"device {device} moved {moved} bytes while iperf3 sent {one.sent_bytes}"
                    )
            break

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
