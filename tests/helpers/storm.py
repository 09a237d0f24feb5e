"""An ISAKMP storm from many (spoofed) source addresses, for issue 14 (a helper, not a test).

The sender runs in its own network namespace (the "attacker") and writes whole IPv4 packets
through a raw socket (``IPPROTO_RAW``, which implies ``IP_HDRINCL``), so each datagram can carry
any source address: ``--sources 50`` spreads the storm over 50 addresses of 10.66.0.0/16 (none
of them exists; the target's answers to them are routed back to the attacker's namespace, where
the kernel drops them, so they can be counted on the wire). It is rate-controlled, seeded, and
aimed at any address: the same storm hits tunvpn or strongSwan.

What is sent (``--kind``):

- ``mutated``: the structure-aware mutator of ``tests/helpers/mutator.py`` (malformed and
  well-formed first messages, lies in every length field, random cookies, port 4500 with and
  without the non-ESP marker).
- ``first``: a real first message of tunvpn's client (Main Mode, XAUTH offered: what a real
  user sends) under a fresh random initiator cookie each time: the spoofed-first-message cases.

Run in a namespace::

    ip netns exec ATTACKER python3 -m tests.helpers.storm --target 10.77.0.1 --rate 5000 \
        --seconds 120 --sources 50 --seed 14

It prints one JSON line when it ends (after ``--seconds``/``--count``, or on SIGTERM/SIGINT):
what it sent, by port, the achieved rate and the send errors. :class:`StormNet` builds the
three namespaces (gateway, client, attacker) the smoke test and the benchmark share.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ipaddress
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.netns import Topology, popen_in, run_in, stop_process, wait_for

# --------------------------------------------------------------------------- the addresses

GATEWAY = "10.77.0.1"  # the target's address (namespace g), on its link to the client
CLIENT = "10.77.0.2"  # the live tunnel's client (namespace c)
NEW_USERS = tuple(f"10.77.0.{n}" for n in range(3, 9))  # more addresses of namespace c
ATTACKER_LINK = ("10.76.0.1", "10.76.0.2")  # gateway side, attacker side (namespace x)
SPOOFED_NET = ipaddress.ip_network("10.66.0.0/16")  # the storm's source addresses
PROTECTED = "10.78.0.1"  # an address behind the gateway, reached through the tunnel
PROTECTED_NET = "10.78.0.0/24"
POOL = "10.79.0.10-10.79.0.60"


def spoofed_sources(count: int, net: ipaddress.IPv4Network = SPOOFED_NET) -> list[str]:
    """``count`` distinct addresses of ``net``, spread over it (10.66.0.1, 10.66.0.2, ...)."""
    hosts = net.num_addresses - 2
    if not 1 <= count <= hosts:
        raise ValueError(f"1..{hosts} sources in {net}, not {count}")
    base = int(net.network_address) + 1
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


# --------------------------------------------------------------------------- what is sent

NON_ESP_MARKER = b"\x00\x00\x00\x00"
MAX_UDP_PAYLOAD = 65535 - 20 - 8
Datagrams = Iterator[tuple[bytes, int]]  # (UDP payload, destination port 500/4500)


def first_message(*, mode: str = "main", xauth: bool = True) -> bytes:
    """A real first message of tunvpn's client engine (the proposals ``tunvpn connect`` offers
    by default; Main Mode message 1 carries no address, so it fits any source)."""
    from tunvpn.ike.config import EngineConfig, PskTable
    from tunvpn.ike.engine import IkeEngine

    engine = IkeEngine(EngineConfig(psks=PskTable({"*": "storm-not-a-secret"})))
    engine.initiate(("192.0.2.1", 500), ("192.0.2.2", 500), time.time(), mode=mode, xauth=xauth)
    [(data, _remote, _port)] = engine.datagrams_to_send()
    return bytes(data)


def first_messages(seed: int) -> Datagrams:
    """The real first message under a fresh random initiator cookie each time (port 500)."""
    rng = random.Random(seed)
    message = first_message()
    while True:
        yield rng.randbytes(8) + message[8:], 500


def mutated_datagrams(seed: int, count: int) -> tuple[Datagrams, str]:
    """The mutator's storm (tests/helpers/mutator.py ``storm_datagrams``), and its name."""
    from tests.helpers.mutator import storm_datagrams

    return iter(storm_datagrams(seed, count)), "tests/helpers/mutator.py storm_datagrams"


# --------------------------------------------------------------------------- raw IPv4/UDP


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    words = array.array("H", data)
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packets(
    src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int = 0, mtu: int = 1500
) -> list[bytes]:
    """A UDP datagram as whole IPv4 packets: one, or fragments of at most ``mtu`` bytes, as the
    kernel would make them (IP_HDRINCL leaves fragmenting to us). The UDP checksum is computed,
    the IP header checksum left to the kernel."""
    src_b, dst_b = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = src_b + dst_b + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    step = (mtu - 20) // 8 * 8
    packets = []
    for offset in range(0, len(udp), step):
        chunk = udp[offset : offset + step]
        more = 0x2000 if offset + step < len(udp) else 0
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(chunk),
            ident & 0xFFFF,
            more | (offset // 8),
            64,
            socket.IPPROTO_UDP,
            0,
            src_b,
            dst_b,
        )
        packets.append(header + chunk)
    return packets


@dataclass
class StormStats:
    sent: int = 0
    bytes: int = 0
    by_port: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sources: int = 0
    source: str = ""
    pregenerated: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "bytes": self.bytes,
            "by_port": {str(k): v for k, v in sorted(self.by_port.items())},
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rate": round(self.sent / self.seconds, 1) if self.seconds else 0.0,
            "sources": self.sources,
            "source": self.source,
            "pregenerated": self.pregenerated,
            "truncated_to_65507": self.truncated,
        }


def _fresh_cookie(payload: bytes, dport: int, rng: random.Random) -> bytes:
    """``payload`` with a new random initiator cookie, unless it has none to replace (too
    short, an all-zero cookie the mutator chose, or ESP-looking data on port 4500)."""
    at = 0
    if dport == 4500:
        if not payload.startswith(NON_ESP_MARKER):
            return payload
        at = 4
    cookie = payload[at : at + 8]
    if len(cookie) < 8 or cookie == bytes(8):
        return payload
    return payload[:at] + rng.randbytes(8) + payload[at + 8 :]


def send_storm(
    target: str,
    datagrams: Datagrams,
    *,
    sources: list[str],
    rate: float,
    seconds: float | None = None,
    count: int | None = None,
    seed: int = 14,
    pool: int = 20000,
    stop: threading.Event | None = None,
    raw: bool = True,
    on_start: Callable[[], None] | None = None,
) -> StormStats:
    """Send ``datagrams`` to ``target`` at ``rate`` per second (0: as fast as possible) until
    ``seconds`` pass, ``count`` are sent, the iterator ends or ``stop`` is set.

    Up to ``pool`` datagrams are made before the clock starts (so the generator's own cost does
    not limit the rate), then sent in turn (again from the start if the storm is longer, then
    under fresh initiator cookies); each
    goes from a source address picked at random (seeded) from ``sources``, from its
    destination port (an IKE peer's) or, one time in eight, a random high port. ``raw=False``
    sends from an ordinary UDP socket (one source: the sender's own address) instead.
    ``on_start`` is called when the first datagram is about to go."""
    rng = random.Random(seed ^ 0x5707)
    stop = stop or threading.Event()
    want = count if count is not None else pool
    made = list(itertools.islice(datagrams, min(want, pool)))
    stats = StormStats(sources=len(sources), pregenerated=len(made))
    if not made:
        return stats
    if raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if on_start is not None:
        on_start()
    start = time.monotonic()
    batch = 64
    try:
        for n in itertools.count():
            if count is not None and n >= count:
                break
            if n % batch == 0:
                now = time.monotonic()
                if stop.is_set() or (seconds is not None and now - start >= seconds):
                    break
                if rate > 0:
                    ahead = n / rate - (now - start)
                    if ahead > 0:
                        time.sleep(ahead)
            payload, dport = made[n % len(made)]
            if len(payload) > MAX_UDP_PAYLOAD:  # what no UDP socket could send either
                payload = payload[:MAX_UDP_PAYLOAD]
                stats.truncated += 1
            if n >= len(made):  # a later round through the pool: fresh initiator cookies
                payload = _fresh_cookie(payload, dport, rng)
            sport = dport if rng.random() >= 0.125 else rng.randrange(1024, 65536)
            try:
                if raw:
                    src = sources[rng.randrange(len(sources))]
                    for packet in udp_packets(src, target, sport, dport, payload, n + 1):
                        sock.sendto(packet, (target, 0))
                else:
                    sock.sendto(payload, (target, dport))
            except OSError as exc:
                name = type(exc).__name__ if exc.errno is None else os.strerror(exc.errno)
                stats.errors[name] = stats.errors.get(name, 0) + 1
                if exc.errno == 105:  # ENOBUFS: let the queue drain a little
                    time.sleep(0.001)
                continue
            stats.sent += 1
            stats.bytes += len(payload)
            stats.by_port[dport] = stats.by_port.get(dport, 0) + 1
    finally:
        stats.seconds = time.monotonic() - start
        sock.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.helpers.storm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", required=True, help="the address under attack")
    parser.add_argument("--kind", choices=("mutated", "first"), default="mutated")
    parser.add_argument("--rate", type=float, default=5000, help="datagrams per second (0: flat out)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--count", type=int, default=None, help="stop after this many datagrams")
    parser.add_argument("--sources", type=int, default=50, help="source addresses (of --net)")
    parser.add_argument("--net", default=str(SPOOFED_NET), help="where the sources come from")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--pool", type=int, default=20000, help="datagrams made before the clock starts")
    parser.add_argument("--no-raw", action="store_true", help="an ordinary UDP socket: our own address")
    args = parser.parse_args(argv)
    if args.seconds is None and args.count is None:
        parser.error("give --seconds or --count (or both)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.kind == "first":
        datagrams, source = first_messages(args.seed), "tunvpn client's Main Mode message 1, random cookie"
    else:
        datagrams, source = mutated_datagrams(args.seed, args.count if args.count is not None else 1 << 40)
    sources = spoofed_sources(args.sources, ipaddress.ip_network(args.net))
    print(json.dumps({"event": "start", "source": source, "sources": len(sources)}), flush=True)
    stats = send_storm(
        args.target,
        datagrams,
        sources=sources,
        rate=args.rate,
        seconds=args.seconds,
        count=args.count,
        seed=args.seed,
        pool=args.pool,
        stop=stop,
        raw=not args.no_raw,
        on_start=lambda: print(json.dumps({"event": "sending"}), flush=True),
    )
    stats.source = source
    print(json.dumps({"event": "done", **stats.as_dict()}), flush=True)
    return 0


# --------------------------------------------------------------------------- the namespaces


class StormNet(Topology):
    """Three namespaces: ``g`` the gateway (10.77.0.1 towards the client, 10.76.0.1 towards the
    attacker, 10.78.0.1 behind it), ``c`` the client (10.77.0.2 and the new users' 10.77.0.3-8),
    ``x`` the attacker (10.76.0.2). The gateway routes 10.66.0.0/16 (the spoofed sources) to the
    attacker, so its answers to them leave on the attacker link, where they are counted."""

    def __init__(self) -> None:
        super().__init__()
        try:
            self.g, self.c, self.x = self.add_ns("g"), self.add_ns("c"), self.add_ns("x")
            self.if_gc, self.if_cg = self.link(self.g, f"{GATEWAY}/24", self.c, f"{CLIENT}/24")
            self.if_gx, self.if_xg = self.link(
                self.g,
                f"{ATTACKER_LINK[0]}/24",
                self.x,
                f"{ATTACKER_LINK[1]}/24",
                names=(self.g + "x", self.x + "g"),
            )
            for addr in NEW_USERS:
                self.add_addr(self.c, f"{addr}/24", self.if_cg)
            self.add_addr(self.g, f"{PROTECTED}/32")
            run_in(self.g, ["ip", "route", "add", str(SPOOFED_NET), "via", ATTACKER_LINK[1]])
            run_in(self.x, ["ip", "route", "add", "default", "via", ATTACKER_LINK[0]])
        except BaseException:
            self.close()
            raise

    def link_counters(self, ns: str, ifname: str) -> dict[str, int]:
        """The interface's packet and byte counters (``ip -s -j link``)."""
        out = run_in(ns, ["ip", "-s", "-j", "link", "show", "dev", ifname]).stdout
        stats = json.loads(out)[0]["stats64"]
        return {
            "tx_packets": stats["tx"]["packets"],
            "tx_bytes": stats["tx"]["bytes"],
            "rx_packets": stats["rx"]["packets"],
            "rx_bytes": stats["rx"]["bytes"],
        }

    def udp_counters(self, ns: str) -> dict[str, int]:
        """The namespace's UDP counters (/proc/net/snmp): InDatagrams, RcvbufErrors (datagrams the
        kernel dropped because a socket's receive buffer was full), OutDatagrams, ..."""
        text = run_in(ns, ["cat", "/proc/net/snmp"]).stdout
        names, values = (line.split()[1:] for line in text.splitlines() if line.startswith("Udp:"))
        return dict(zip(names, map(int, values), strict=True))

    def answers_to_attacker(self) -> dict[str, int]:
        """What the gateway sent towards the spoofed sources (its attacker-side interface)."""
        return self.link_counters(self.g, self.if_gx)


STORM_ARGV = [sys.executable, "-m", "tests.helpers.storm"]


def storm_env() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}


def start_storm(net: StormNet, log: Path, *args: str, target: str = GATEWAY) -> subprocess.Popen[bytes]:
    """Start the sender in the attacker namespace; it writes its JSON lines to ``log``."""
    return popen_in(net.x, [*STORM_ARGV, "--target", target, *args], log, env=storm_env())


def wait_sending(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Wait until the sender has made its datagrams and starts sending."""
    wait_for(
        lambda: '"sending"' in log.read_text(errors="replace") or proc.poll() is not None,
        timeout,
        "the storm sender to start sending",
    )


def finish_storm(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> dict[str, Any]:
    """Stop the sender (SIGTERM; it stops at once if it has not already) and return its summary."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"done"' in line:
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(
        f"the storm sender ended without a summary:\n{log.read_text(errors='replace')[-3000:]}"
    )


def run_storm(
    net: StormNet, log: Path, *args: str, target: str = GATEWAY, timeout: float = 300
) -> dict[str, Any]:
    """Run the sender to its end (``--count``/``--seconds`` among ``args``)."""
    proc = start_storm(net, log, *args, target=target)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    return finish_storm(proc, log)


# --------------------------------------------------------------------------- a process's costs


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB), threads, and CPU time (utime+stime, clock ticks) of ``pid``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_ticks"] = int(fields[11]) + int(fields[12])
    return out


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                rss = proc_status(self.pid)["VmRSS"]
                self.peak_kb = max(self.peak_kb, rss)
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- a user who connects


@dataclass
class Connect:
    """One ``tunvpn connect --once --ike-only`` run: did it establish, and how long it took from
    its first message ("phase1 started") to its Quick Mode ("established"), timed here as the
    client's JSON lines arrive (so the client's own start-up does not count)."""

    ok: bool
    seconds: float | None
    exit_code: int | None
    log: str


def connect_user(
    ns: str,
    gateway: str,
    local: str,
    psk_file: Path,
    user: str,
    password_file: Path,
    *,
    timeout: float = 30,
    extra: tuple[str, ...] = (),
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> Connect:
    """Log ``user`` in from ``local`` (ports 500/4500 of that address), Main Mode + XAUTH + Mode
    Config + Quick Mode, no TUN device; delete the SAs and exit once up."""
    from tests.helpers.tunvpn_proc import tunvpn_argv, tunvpn_env

    argv = tunvpn_argv(
        "connect",
        gateway,
        "--local",
        local,
        "--psk-file",
        str(psk_file),
        "--user",
        user,
        "--password-file",
        str(password_file),
        "--ike-only",
        "--once",
        "--json",
        "--timeout",
        str(int(timeout)),
        "--control",
        "none",
        "--dns-backend",
        "none",
        *extra,
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **tunvpn_env()},
        text=True,
    )
    started = established = None
    lines: list[str] = []
    assert proc.stdout is not None
    killer = threading.Timer(timeout + 10, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            now = time.monotonic()
            lines.append(line)
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if on_line is not None:
                    on_line(record)
                if record.get("event") == "phase1" and record.get("state") == "started" and started is None:
                    started = now
                if record.get("event") == "established" and established is None:
                    established = now
        code = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    ok = established is not None and code == 0
    seconds = established - started if ok and started is not None and established is not None else None
    return Connect(ok, seconds, code, "".join(lines))


if __name__ == "__main__":
    sys.exit(main())
