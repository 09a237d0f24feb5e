"""Where a packet's time goes in the data thread: the latency breakdown of issue 21.

With ``TUNVPN_STAGE_TRACE=DIR`` in its environment, every data thread keeps a record of each
batch it handles (the last :data:`MAX_RECORDS`) and writes them to ``DIR/stages-PID-N.jsonl``
when it stops. Off (the default), the loop pays one ``is None`` test per batch.

A record splits one traversal of the data thread into

* **wake**: from when the kernel had the packet to when ``poll()`` returned in the thread. The
  kernel's time is the UDP socket's receive timestamp (``SO_TIMESTAMPNS``) for ESP, and for a
  ping leaving through the TUN device the time ``ping`` wrote into its payload (the two ends
  share one clock in a bench; the payload is only trusted for this measurement);
* **read**: the ``read``/``recvmsg`` calls, up to the one that found nothing more;
* **core**: the ESP core (routing, SA lookup, AES-GCM, replay window) and the Python around it;
* **write**: the ``sendmsg``/``writev`` that hands the result to the kernel.

``python -m tunvpn.dataplane.stagetrace DIR`` pairs the records of a client and a gateway by
the pings they carried and prints the breakdown of each ping's four traversals, for pings
that found the threads idle (cold) and the others (hot). This module reads the clock only
through the values the loop gives it: it is the loop (the shell) that takes the timestamps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ENV = "TUNVPN_STAGE_TRACE"
MAX_RECORDS = 20_000
COLD_AFTER_NS = 50_000_000
"""A batch that comes after at least this long without one found the thread idle (cold)."""
HOT_WITHIN_NS = 5_000_000

_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch of the data thread; times in ns, ``woke`` a wall-clock time, the others
    offsets from it."""

    direction: str
    """``out`` (TUN -> ESP -> UDP) or ``in`` (UDP -> ESP -> TUN)."""
    woke: int
    """``time.time_ns()`` when ``poll()`` returned."""
    read: int
    core: int
    done: int
    packets: int
    idle: int
    """Since the previous batch of this thread was done."""
    kernel: int | None = None
    """When the kernel had the first packet (wall clock), if known."""
    icmp: tuple[int, int, int] | None = None
    """(type, identifier, sequence) of the first inner packet when it is an ICMP echo."""


def icmp_echo(packet: bytes | bytearray | memoryview) -> tuple[tuple[int, int, int], int | None] | None:
    """``((type, id, seq), ping's timestamp in wall ns or None)`` of an IPv4 ICMP echo
    request or reply, else None. Linux ``ping`` puts a ``struct timeval`` (16 octets, native
    order) at the start of the echo data."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 15) * 4
    if len(packet) < ihl + 8 or packet[ihl] not in (0, 8):
        return None
    key = (
        packet[ihl],
        int.from_bytes(packet[ihl + 4 : ihl + 6], "big"),
        int.from_bytes(packet[ihl + 6 : ihl + 8], "big"),
    )
    stamp = None
    if len(packet) >= ihl + 24:
        seconds = int.from_bytes(packet[ihl + 8 : ihl + 16], sys.byteorder)
        micros = int.from_bytes(packet[ihl + 16 : ihl + 24], sys.byteorder)
        if micros < 1_000_000:
            stamp = seconds * 1_000_000_000 + micros * 1000
    return key, stamp


class StageTrace:
    """The records of one data thread (see the module docstring)."""

    def __init__(self, directory: str, limit: int = MAX_RECORDS) -> None:
        self.directory = directory
        self.records: deque[BatchRecord] = deque(maxlen=limit)
        self._last_done = 0

    @classmethod
    def from_environment(cls) -> StageTrace | None:
        directory = os.environ.get(ENV)
        return cls(directory) if directory else None

    def add(
        self,
        direction: str,
        woke: int,
        read: int,
        core: int,
        done: int,
        packets: int,
        first: bytes | bytearray | memoryview | None,
        kernel: int | None = None,
    ) -> None:
        """One batch: ``woke`` (wall ns) and the three offsets; ``first`` its first inner
        packet (for the ping it belongs to); ``kernel`` the socket's receive time, if any."""
        idle = woke - self._last_done if self._last_done else 0
        self._last_done = woke + done
        echo = icmp_echo(first) if first is not None else None
        key = None
        if echo is not None:
            key, stamp = echo
            if kernel is None and direction == "out" and key[0] == 8:
                kernel = stamp
        self.records.append(BatchRecord(direction, woke, read, core, done, packets, idle, kernel, key))

    def write(self) -> Path | None:
        """Write the records to the directory; the file, or None when there is nothing."""
        if not self.records:
            return None
        path = Path(self.directory) / f"stages-{os.getpid()}-{next(_counter)}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for record in self.records:
                out.write(json.dumps(asdict(record)) + "\n")
        return path


# --------------------------------------------------------------------------- the analysis


def load(path: Path) -> list[BatchRecord]:
    out = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        icmp = data.pop("icmp")
        out.append(BatchRecord(**data, icmp=tuple(icmp) if icmp else None))
    return out


STAGES = ("wake", "read", "core", "write")
TRAVERSALS = ("client out", "gateway in", "gateway out", "client in")


@dataclass(frozen=True)
class PingBreakdown:
    """The four traversals of one ping, each split into :data:`STAGES` (ns)."""

    seq: int
    cold: bool
    stages: dict[str, dict[str, int]]

    def total(self, traversal: str) -> int:
        return sum(self.stages[traversal].values())


def _split(record: BatchRecord, kernel: int | None) -> dict[str, int] | None:
    if kernel is None:
        return None
    return {
        "wake": record.woke - kernel,
        "read": record.read,
        "core": record.core - record.read,
        "write": record.done - record.core,
    }


def breakdown(files: Iterable[Sequence[BatchRecord]]) -> list[PingBreakdown]:
    """Pair the records of a client and a gateway (any order) by ping; a ping is kept when
    each of its four traversals was a batch of its own with a known start."""
    client: list[BatchRecord] = []
    gateway: list[BatchRecord] = []
    for records in files:
        sends_requests = any(r.direction == "out" and r.icmp and r.icmp[0] == 8 for r in records)
        (client if sends_requests else gateway).extend(records)

    def index(records: list[BatchRecord], direction: str, kind: int) -> dict[tuple[int, int], BatchRecord]:
        return {
            (r.icmp[1], r.icmp[2]): r
            for r in records
            if r.direction == direction and r.icmp and r.icmp[0] == kind and r.packets == 1
        }

    c_out, g_in = index(client, "out", 8), index(gateway, "in", 8)
    g_out, c_in = index(gateway, "out", 0), index(client, "in", 0)
    out = []
    for key, first in sorted(c_out.items(), key=lambda item: item[1].woke):
        if key not in g_in or key not in g_out or key not in c_in:
            continue
        second, third, fourth = g_in[key], g_out[key], c_in[key]
        # the server's reply exists once the gateway wrote the request to its TUN device
        parts = (
            _split(first, first.kernel),
            _split(second, second.kernel),
            _split(third, second.woke + second.done),
            _split(fourth, fourth.kernel),
        )
        if any(p is None for p in parts):
            continue
        cold = first.idle >= COLD_AFTER_NS
        stages = {name: part for name, part in zip(TRAVERSALS, parts) if part is not None}
        out.append(PingBreakdown(key[1], cold, stages))
    return out


def summary(pings: Sequence[PingBreakdown]) -> str:
    """A table of medians (us) per traversal and stage, cold pings and hot ones."""
    lines = []
    for label, chosen in (
        ("cold (idle >= 50 ms)", [p for p in pings if p.cold]),
        ("hot", [p for p in pings if not p.cold]),
    ):
        lines.append(f"{label}: {len(chosen)} pings")
        if not chosen:
            continue
        lines.append(f"  {'traversal':<12} " + " ".join(f"{s:>8}" for s in (*STAGES, "total")))
        grand = 0.0
        for traversal in TRAVERSALS:
            medians = [statistics.median(p.stages[traversal][s] for p in chosen) / 1000 for s in STAGES]
            total = statistics.median(p.total(traversal) for p in chosen) / 1000
            grand += total
            lines.append(f"  {traversal:<12} " + " ".join(f"{m:8.1f}" for m in (*medians, total)))
        lines.append(f"  sum of the four traversals' medians: {grand:.1f} us")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunvpn.dataplane.stagetrace",
        description="The latency breakdown of pings from the data threads' stage traces.",
    )
    parser.add_argument("directory", type=Path, help=f"where {ENV} pointed the daemons")
    parser.add_argument("--json", action="store_true", help="every ping's breakdown as JSON lines")
    args = parser.parse_args(argv)
    files = [load(path) for path in sorted(args.directory.glob("stages-*.jsonl"))]
    pings = breakdown(files)
    if args.json:
        for ping in pings:
            print(json.dumps(asdict(ping)))
        return 0
    print(summary(pings))
    return 0 if pings else 1


if __name__ == "__main__":
    sys.exit(main())
