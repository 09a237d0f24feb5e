"""The benchmark's results: per-run figures, per-path medians, ratios, goals, markdown and JSON.

Pure data and formatting (no I/O), so that the report can be built and checked without root.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATUS_OK = "ok"
STATUS_NOT_AVAILABLE = "not available"
STATUS_FAILED = "failed"

TUNVPN = "tunvpn"
VETH = "veth"

# (path name or prefix, minimum tunvpn/path throughput ratio, aim, what the issue asks for)
THROUGHPUT_GOALS: tuple[tuple[str, float, float | None, str], ...] = (
    ("openvpn", 1.0, 1.5, "tunvpn >= 1.0x OpenVPN (aim 1.5x)"),
    ("strongswan", 1.5, None, "tunvpn >= 1.5x strongSwan kernel-libipsec with the same transform"),
)
LATENCY_GOAL_PATHS = ("openvpn", "wireguard")
"""Issue 21: under load tunvpn's average ping RTT is no worse than these paths' (and variants')."""


@dataclass
class RunResult:
    """One measurement of one path: one iperf3 TCP test (+ optional -P N test) and one ping series."""

    tcp_sender_mbps: float | None = None
    tcp_receiver_mbps: float | None = None
    retransmits: int | None = None
    parallel_receiver_mbps: float | None = None
    """iperf3 -P N (N = options.parallel) receiver Mbit/s; None when not measured."""
    ping_avg_ms: float | None = None
    ping_min_ms: float | None = None
    ping_max_ms: float | None = None
    ping_loss_pct: float | None = None
    ping_p50_ms: float | None = None
    ping_p95_ms: float | None = None
    # Latency under load (issue 21): pings from A to B while one iperf3 TCP flow fills the tunnel
    # A -> B (the iperf3 client in A sends), and again while one flow runs B -> A (-R). The first
    # second of each flow (slow start) is left out; ``load_*_mbps`` is that flow's receiver rate.
    load_ab_mbps: float | None = None
    load_ab_ping_avg_ms: float | None = None
    load_ab_ping_min_ms: float | None = None
    load_ab_ping_max_ms: float | None = None
    load_ab_ping_p50_ms: float | None = None
    load_ab_ping_p95_ms: float | None = None
    load_ab_ping_loss_pct: float | None = None
    load_ab_pings: int | None = None
    """Replies counted (the sample size of the figures above)."""
    load_ba_mbps: float | None = None
    load_ba_ping_avg_ms: float | None = None
    load_ba_ping_min_ms: float | None = None
    load_ba_ping_max_ms: float | None = None
    load_ba_ping_p50_ms: float | None = None
    load_ba_ping_p95_ms: float | None = None
    load_ba_ping_loss_pct: float | None = None
    load_ba_pings: int | None = None
    cpu_busy_pct: float | None = None
    """Whole box during the 1-stream TCP test: 100 = every core busy (from /proc/stat)."""
    cpu_steal_pct: float | None = None
    cpu_background_pct: float | None = None
    """Box busy % over one second before the tests, tunnel idle: other load on the machine."""
    daemon_cpu_pct: dict[str, float] = field(default_factory=dict)
    """Per VPN daemon, % of one core during the 1-stream TCP test."""
    daemon_idle_cpu_pct: dict[str, float] = field(default_factory=dict)
    """Per VPN daemon, % of one core during the idle pings: what its latency costs at rest
    (tunvpn's busy polling, issue 21)."""
    udp_drops: int | None = None
    """Datagrams dropped by the UDP sockets in both namespaces over this run (``ss -m`` ``d``,
    read after the tests): receive buffers that overflowed."""
    via_tunnel: bool | None = None
    """Did the tunnel device carry at least 95% of the bytes iperf3 sent?"""
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things that went wrong but were recovered from (e.g. a retried iperf3 test)."""

    @property
    def ok(self) -> bool:
        return self.tcp_receiver_mbps is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_MEDIAN_FIELDS = (
    "tcp_sender_mbps",
    "tcp_receiver_mbps",
    "retransmits",
    "parallel_receiver_mbps",
    "ping_avg_ms",
    "ping_min_ms",
    "ping_max_ms",
    "ping_loss_pct",
    "ping_p50_ms",
    "ping_p95_ms",
    *(
        f"load_{d}_{what}"
        for d in ("ab", "ba")
        for what in (
            "mbps",
            "ping_avg_ms",
            "ping_min_ms",
            "ping_max_ms",
            "ping_p50_ms",
            "ping_p95_ms",
            "ping_loss_pct",
            "pings",
        )
    ),
    "cpu_busy_pct",
    "cpu_steal_pct",
    "cpu_background_pct",
    "udp_drops",
)


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def median_run(runs: Sequence[RunResult]) -> RunResult | None:
    """Field-by-field median over the successful runs (None if there is none)."""
    good = [r for r in runs if r.ok]
    if not good:
        return None
    out = RunResult()
    for name in _MEDIAN_FIELDS:
        value = _median(getattr(r, name) for r in good)
        if name in ("retransmits", "load_ab_pings", "load_ba_pings", "udp_drops") and value is not None:
            value = round(value)
        setattr(out, name, value)
    for name in ("daemon_cpu_pct", "daemon_idle_cpu_pct"):
        per_run: list[dict[str, float]] = [getattr(r, name) for r in good]
        daemons = sorted({d for counts in per_run for d in counts})
        setattr(
            out,
            name,
            {d: v for d in daemons if (v := _median(counts.get(d) for counts in per_run)) is not None},
        )
    vias = [r.via_tunnel for r in good if r.via_tunnel is not None]
    out.via_tunnel = all(vias) if vias else None
    return out


@dataclass
class PathResult:
    """Everything measured for one path (veth, openvpn, ...) over all repetitions."""

    name: str
    status: str = STATUS_OK
    reason: str = ""
    program: str = ""
    cipher: str = ""
    tunnel: tuple[str, str] | None = None
    """(address in namespace A, address in namespace B) that the traffic went to."""
    device: str = ""
    """The device in namespace A that routes to the tunnel address of B."""
    mtu: int | None = None
    """That device's MTU (``ip -j link show`` in namespace A)."""
    device_b: str = ""
    """The device in namespace B that routes to the tunnel address of A."""
    mtu_b: int | None = None
    udp_buffers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per namespace ("a", "b"): the UDP sockets of the path's daemons once the tunnel is up,
    ``{"local": "addr:port", "rcvbuf": octets, "sndbuf": octets}`` as ``ss -m`` shows them (the
    kernel's accounting: twice what a program asked for with SO_RCVBUF/SO_SNDBUF)."""
    runs: list[RunResult] = field(default_factory=list)

    @property
    def median(self) -> RunResult | None:
        return median_run(self.runs)

    @property
    def throughput(self) -> float | None:
        """Median iperf3 TCP 1-stream receiver Mbit/s: the figure the ratios use."""
        med = self.median
        return med.tcp_receiver_mbps if med is not None else None

    @property
    def label(self) -> str:
        """``"ok"`` or ``"not available: why"`` / ``"failed: why"``."""
        if self.status == STATUS_OK:
            return STATUS_OK
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tunnel"] = list(self.tunnel) if self.tunnel else None
        med = self.median
        data["median"] = asdict(med) if med is not None else None
        if data["median"] is not None:
            del data["median"]["errors"], data["median"]["notes"]
        data["runs_ok"] = sum(1 for r in self.runs if r.ok)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PathResult:
        tunnel = data.get("tunnel")
        return cls(
            name=data["name"],
            status=data.get("status", STATUS_OK),
            reason=data.get("reason", ""),
            program=data.get("program", ""),
            cipher=data.get("cipher", ""),
            tunnel=(tunnel[0], tunnel[1]) if tunnel else None,
            device=data.get("device", ""),
            mtu=data.get("mtu"),
            device_b=data.get("device_b", ""),
            mtu_b=data.get("mtu_b"),
            udp_buffers={k: list(v) for k, v in (data.get("udp_buffers") or {}).items()},
            runs=[RunResult.from_dict(r) for r in data.get("runs", [])],
        )


@dataclass
class Ratio:
    """``numerator / denominator`` of the median TCP 1-stream receiver throughput."""

    numerator: str
    denominator: str
    value: float | None


@dataclass
class Goal:
    text: str
    value: str
    met: bool | None
    """None: cannot be judged (a path is missing)."""


@dataclass
class BenchReport:
    paths: list[PathResult] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    command: str = ""
    wire: dict[str, Any] = field(default_factory=dict)
    """The veth pair's offload setting: ``{"setting": "on"|"off"|"gro", "a": {feature: "on"|"off"},
    "b": {...}}`` (the features as ``ethtool -k`` read them back; empty without ethtool)."""

    # ------------------------------------------------------------------ lookups

    def path(self, name: str) -> PathResult | None:
        return next((p for p in self.paths if p.name == name), None)

    def throughput(self, name: str) -> float | None:
        p = self.path(name)
        return p.throughput if p is not None and p.status == STATUS_OK else None

    def ping_avg(self, name: str) -> float | None:
        p = self.path(name)
        med = p.median if p is not None and p.status == STATUS_OK else None
        return med.ping_avg_ms if med is not None else None

    def load_ping(self, name: str, direction: str, what: str = "avg") -> float | None:
        """Median ping RTT (``what``: avg, min, max, p50, p95) under load ``direction`` ("ab": a TCP
        flow A -> B, "ba": B -> A) through path ``name``, ms."""
        p = self.path(name)
        med = p.median if p is not None and p.status == STATUS_OK else None
        value = getattr(med, f"load_{direction}_ping_{what}_ms") if med is not None else None
        return float(value) if value is not None else None

    def has_load_pings(self) -> bool:
        """Whether any path was pinged under load (reports before issue 21 were not)."""
        return any(
            med is not None and (med.load_ab_ping_avg_ms is not None or med.load_ba_ping_avg_ms is not None)
            for med in (p.median for p in self.paths if p.status == STATUS_OK)
        )

    def ratio(self, numerator: str, denominator: str) -> float | None:
        a, b = self.throughput(numerator), self.throughput(denominator)
        if a is None or b is None or b <= 0:
            return None
        return a / b

    def added_rtt(self, name: str) -> float | None:
        """Median ping avg through ``name`` minus plain veth's (what the tunnel adds), ms."""
        a, b = self.ping_avg(name), self.ping_avg(VETH)
        return a - b if a is not None and b is not None else None

    # ------------------------------------------------------------------ ratios and goals

    def ratios(self) -> list[Ratio]:
        """Each VPN against tunvpn (``X / tunvpn``), then tunvpn against each VPN (``tunvpn / X``)."""
        others = [p.name for p in self.paths if p.name not in (TUNVPN, VETH)]
        out = [Ratio(name, TUNVPN, self.ratio(name, TUNVPN)) for name in others]
        out += [Ratio(TUNVPN, name, self.ratio(TUNVPN, name)) for name in others]
        return out

    def goals(self) -> list[Goal]:
        """The issue's goals, judged on this report; strongSwan goals name both ESP transforms."""
        out = []
        ours = self.path(TUNVPN)
        for prefix, minimum, aim, text in THROUGHPUT_GOALS:
            for p in self.paths:
                if p.name != prefix and not p.name.startswith(prefix + "-"):
                    continue
                goal_text = text
                if prefix == "strongswan":
                    theirs = p.cipher.split(";")[0] or "?"
                    mine = (ours.cipher.split(";")[0] if ours is not None else "") or "?"
                    goal_text += f" ({p.name}: {theirs}; tunvpn: {mine})"
                value = self.ratio(TUNVPN, p.name)
                if value is None:
                    why = self._why_missing(TUNVPN, p.name)
                    out.append(Goal(goal_text, f"tunvpn / {p.name} = n/a ({why})", None))
                    continue
                note = f"{value:.2f}x"
                if aim is not None:
                    note += f" (aim {aim:.1f}x {'reached' if value >= aim else 'not reached'})"
                out.append(Goal(goal_text, f"tunvpn / {p.name} = {note}", value >= minimum))
        if self.path("openvpn") is not None:
            text = "added ping RTT (over plain veth) no worse than OpenVPN's"
            our_rtt, their_rtt = self.added_rtt(TUNVPN), self.added_rtt("openvpn")
            if our_rtt is None or their_rtt is None:
                out.append(Goal(text, f"n/a ({self._why_missing(TUNVPN, 'openvpn', VETH)})", None))
            else:
                out.append(
                    Goal(
                        text,
                        f"tunvpn +{our_rtt:.3f} ms, openvpn +{their_rtt:.3f} ms",
                        our_rtt <= their_rtt + 1e-9,
                    )
                )
        if self.has_load_pings():
            out += self._load_goals()
        return out

    def _load_goals(self) -> list[Goal]:
        """Issue 21: under load (one TCP flow each way) tunvpn's average ping RTT is no higher
        than OpenVPN's and WireGuard's (every OpenVPN variant measured)."""
        out = []
        for prefix in LATENCY_GOAL_PATHS:
            for p in self.paths:
                if p.name != prefix and not p.name.startswith(prefix + "-"):
                    continue
                text = f"ping RTT under load (avg, A->B and B->A flows) no worse than {p.name}'s"
                parts, verdicts = [], []
                for direction, arrow in (("ab", "A->B"), ("ba", "B->A")):
                    ours, theirs = self.load_ping(TUNVPN, direction), self.load_ping(p.name, direction)
                    if ours is None or theirs is None:
                        parts.append(f"{arrow} n/a")
                        continue
                    parts.append(f"{arrow} tunvpn {ours:.2f} ms, {p.name} {theirs:.2f} ms")
                    verdicts.append(ours <= theirs + 1e-9)
                met: bool | None = None
                if len(verdicts) == 2:
                    met = all(verdicts)
                elif verdicts and not verdicts[0]:
                    met = False  # one direction missing, the other already lost
                out.append(Goal(text, "; ".join(parts), met))
        return out

    def _why_missing(self, *names: str) -> str:
        parts = []
        for name in names:
            p = self.path(name)
            if p is None:
                parts.append(f"{name} not measured")
            elif p.status != STATUS_OK or p.throughput is None:
                parts.append(f"{name} {p.status if p.status != STATUS_OK else 'has no result'}")
        return "; ".join(parts) or "no data"

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "started": self.started,
            "finished": self.finished,
            "host": self.host,
            "options": self.options,
            "wire": self.wire,
            "paths": [p.to_dict() for p in self.paths],
            "ratios": [asdict(r) for r in self.ratios()],
            "goals": [asdict(g) for g in self.goals()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchReport:
        return cls(
            paths=[PathResult.from_dict(p) for p in data.get("paths", [])],
            options=dict(data.get("options", {})),
            host=dict(data.get("host", {})),
            started=data.get("started", ""),
            finished=data.get("finished", ""),
            command=data.get("command", ""),
            wire=dict(data.get("wire") or {}),
        )

    def to_markdown(self) -> str:
        return format_markdown(self)


# --------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _load_cell(med: RunResult, direction: str) -> str:
    avg = getattr(med, f"load_{direction}_ping_avg_ms")
    if avg is None:
        return "n/a"
    p95 = getattr(med, f"load_{direction}_ping_p95_ms")
    top = getattr(med, f"load_{direction}_ping_max_ms")
    text = f"{avg:.3f} (p95 {_num(p95, 3)}, max {_num(top, 3)})"
    loss = getattr(med, f"load_{direction}_ping_loss_pct")
    if loss:
        text += f", {loss:.0f}% lost"
    return text


def mtu_text(path: PathResult) -> str:
    """The tunnel MTU: ``"1400"``, or ``"1400 / 1420"`` if the devices in A and B differ."""
    if path.mtu is None:
        return "" if path.mtu_b is None else f"? / {path.mtu_b}"
    if path.mtu_b is None or path.mtu_b == path.mtu:
        return str(path.mtu)
    return f"{path.mtu} / {path.mtu_b}"


WIRE_SETTINGS = {
    "on": "the veth pair's offloads as the kernel sets them (UDP segmentation offload on: a UDP GSO "
    "batch crosses the veth as one buffer)",
    "off": "UDP segmentation offload and GRO off on the veth pair (ethtool -K tx-udp-segmentation off "
    "gro off rx-gro-list off rx-udp-gro-forwarding off, in both namespaces): every ESP datagram "
    "crosses the wire and reaches the receiving socket one by one, as from a NIC without USO or GRO",
    "gro": "UDP segmentation offload off, GRO on, on the veth pair (ethtool -K tx-udp-segmentation off "
    "gro on, in both namespaces): datagrams cross the wire one by one and are coalesced again on "
    "receipt, as on a NIC without USO whose driver does GRO",
}
"""``--wire-gso`` settings and what they mean (the ethtool calls are in system.py)."""

WIRE_FEATURES = (
    "tx-udp-segmentation",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "rx-gro-list",
    "rx-udp-gro-forwarding",
)
"""The veth features the report records (``ethtool -k``)."""


def describe_wire(wire: Mapping[str, Any]) -> str:
    """One sentence: the ``--wire-gso`` setting, what it means, and the features read back."""
    setting = str(wire.get("setting", "on"))
    text = f"--wire-gso {setting}: {WIRE_SETTINGS.get(setting, setting)}"
    sides = []
    for side in ("a", "b"):
        features = wire.get(side)
        if isinstance(features, Mapping) and features:
            shown = ", ".join(f"{k} {features[k]}" for k in WIRE_FEATURES if k in features)
            sides.append(f"veth in {side.upper()}: {shown}")
    if sides:
        text += "; " + "; ".join(sides)
    elif "error" in wire:
        text += f"; features not read: {wire['error']}"
    return text


def describe_buffers(buffers: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """``UDP sockets ...`` from ``PathResult.udp_buffers``: program, address, rcv/snd buffer, drops."""
    parts = []
    for side in sorted(buffers):
        socks = ", ".join(
            f"{b.get('program') or '?'} {b.get('local', '?')} "
            f"{int(b.get('rcvbuf', 0)) // 1024}/{int(b.get('sndbuf', 0)) // 1024} KiB"
            + (f" ({b['drops']} dropped)" if b.get("drops") else "")
            for b in buffers[side]
        )
        parts.append(f"{side.upper()}: {socks or 'none'}")
    return (
        "UDP sockets after the last run, rcv/snd buffer (ss -m: the kernel's accounting, 2x what was "
        "asked for): " + "; ".join(parts)
    )


def short_cipher(cipher: str) -> str:
    """The data channel cipher without the control channel: ``"ESP aes256gcm16 TUNNEL-in-UDP"``."""
    return cipher.split(";")[0].split(" (")[0].strip()


def direction_mbps(report: BenchReport, name: str, direction: str) -> float | None:
    """Median receiver Mbit/s of path ``name``'s TCP flow A -> B (``"ab"``) or B -> A (``"ba"``)."""
    p = report.path(name)
    med = p.median if p is not None and p.status == STATUS_OK else None
    if med is None:
        return None
    value = getattr(med, f"load_{direction}_mbps")
    main = "ba" if report.options.get("reverse") else "ab"
    if value is None and direction == main:
        value = med.tcp_receiver_mbps
    return float(value) if value is not None else None


def readme_table(report: BenchReport) -> str:
    """The README's table (section "Measuring") for one report: throughput both ways, tunvpn's
    ratio, idle RTT, RTT under load both ways, tunnel MTU, data cipher. A unit test checks that
    the README holds exactly this rendering of the committed JSON report."""
    columns = [
        "path",
        "TCP A->B Mbit/s",
        "TCP B->A Mbit/s",
        "tunvpn / path (A->B, B->A)",
        "ping idle ms avg (p95)",
        "ping under load A->B ms avg / p95 / max",
        "ping under load B->A ms avg / p95 / max",
        "tunnel MTU",
        "data cipher",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in report.paths:
        med = p.median if p.status == STATUS_OK else None
        if med is None:
            label = p.label if p.status != STATUS_OK else "no successful run"
            lines.append("| " + " | ".join([p.name, _cell(label[:120])] + [""] * (len(columns) - 2)) + " |")
            continue
        ratios = ""
        if p.name not in (TUNVPN, VETH):
            pair = []
            for d in ("ab", "ba"):
                ours, theirs = direction_mbps(report, TUNVPN, d), direction_mbps(report, p.name, d)
                pair.append(_ratio(ours / theirs if ours is not None and theirs else None))
            ratios = ", ".join(pair)
        loads = []
        for d in ("ab", "ba"):
            avg = getattr(med, f"load_{d}_ping_avg_ms")
            if avg is None:
                loads.append("n/a")
                continue
            cell = (
                f"{avg:.2f} / {_num(getattr(med, f'load_{d}_ping_p95_ms'), 2)} / "
                f"{_num(getattr(med, f'load_{d}_ping_max_ms'), 2)}"
            )
            loss = getattr(med, f"load_{d}_ping_loss_pct")
            if loss:
                cell += f" ({loss:.0f}% lost)"
            loads.append(cell)
        idle = "n/a" if med.ping_avg_ms is None else f"{med.ping_avg_ms:.3f} ({_num(med.ping_p95_ms, 3)})"
        cells = [
            p.name,
            _num(direction_mbps(report, p.name, "ab"), 0),
            _num(direction_mbps(report, p.name, "ba"), 0),
            ratios,
            idle,
            *loads,
            mtu_text(p),
            _cell(short_cipher(p.cipher)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(report: BenchReport) -> str:
    opts = report.options
    parallel = int(opts.get("parallel") or 0)
    repeat = int(opts.get("repeat") or 1)
    lines: list[str] = []
    head = "## tunvpn bench"
    if report.started:
        head += f" {report.started}"
    lines.append(head)
    lines.append("")
    host = report.host
    if host:
        lines.append(
            f"Host: {host.get('kernel', '?')}, {host.get('cores', '?')} cores; iperf3 TCP 1 stream "
            f"{opts.get('duration', '?')} s{f', -P {parallel}' if parallel else ''}"
            f"{', reverse (-R)' if opts.get('reverse') else ''}"
            f"{'; IPv6 variant: IPv6 underlay and IPv6 inside every tunnel' if opts.get('ipv6') else ''}; "
            f"{opts.get('pings', '?')} pings at "
            f"{opts.get('ping_interval', '?')} s; "
            + (f"median of {repeat} runs per path" if repeat > 1 else "1 run per path")
            + "."
        )
        lines.append("")
    if report.wire:
        lines.append(f"Wire: {describe_wire(report.wire)}.")
        lines.append("")
    loaded = report.has_load_pings()
    main_way, other_way = ("B->A", "A->B") if opts.get("reverse") else ("A->B", "B->A")
    columns = ["path", "TCP 1 stream Mbit/s (rx)", "tx Mbit/s", "retr"]
    if parallel:
        columns.append(f"TCP -P {parallel} Mbit/s")
    if loaded:
        columns.append(f"TCP {other_way} Mbit/s (rx)")
    columns += ["ping avg ms (min-max)"]
    if loaded:
        columns += ["ping under load A->B avg ms (p95, max)", "ping under load B->A avg ms (p95, max)"]
    columns += [
        "box CPU busy % (before)",
        "x tunvpn",
        "% of veth",
        "runs",
        "cipher",
        "MTU",
    ]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for p in report.paths:
        med = p.median if p.status == STATUS_OK else None
        if med is None:
            label = p.label if p.status != STATUS_OK else "no successful run"
            cells = [p.name, _cell(label if len(label) <= 200 else label[:197] + "...")]
            cells += [""] * (len(columns) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        ping = (
            f"{_num(med.ping_avg_ms, 3)} ({_num(med.ping_min_ms, 3)}-{_num(med.ping_max_ms, 3)})"
            if med.ping_avg_ms is not None
            else "n/a"
        )
        if med.ping_loss_pct:
            ping += f", {med.ping_loss_pct:.0f}% lost"
        cells = [
            p.name,
            _num(med.tcp_receiver_mbps),
            _num(med.tcp_sender_mbps),
            "n/a" if med.retransmits is None else str(int(med.retransmits)),
        ]
        if parallel:
            cells.append(_num(med.parallel_receiver_mbps))
        if loaded:
            cells.append(_num(med.load_ab_mbps if opts.get("reverse") else med.load_ba_mbps))
        cells.append(ping)
        if loaded:
            cells += [_load_cell(med, "ab"), _load_cell(med, "ba")]
        veth = report.throughput(VETH)
        share = (
            f"{100 * med.tcp_receiver_mbps / veth:.1f}"
            if veth and med.tcp_receiver_mbps is not None and p.name != VETH
            else ""
        )
        cells += [
            f"{_num(med.cpu_busy_pct, 0)} ({_num(med.cpu_background_pct, 0)})",
            "" if p.name in (TUNVPN, VETH) else _ratio(report.ratio(p.name, TUNVPN)),
            share,
            f"{sum(1 for r in p.runs if r.ok)}/{len(p.runs)}",
            _cell(p.cipher),
            mtu_text(p),
        ]
        if med.via_tunnel is False:
            cells[0] += " (NOT via tunnel!)"
        lines.append("| " + " | ".join(cells) + " |")
    cores = host.get("cores", "?")
    lines.append(
        f"rx/tx: iperf3 receiver/sender; box CPU busy %: all {cores} cores = 100, from /proc/stat during "
        "the 1-stream test, (before): the second before the tests, tunnel idle (other load on the box); "
        "x tunvpn: this path's throughput / tunvpn's."
        + (
            f" TCP {other_way}: a second 1-stream test the other way ({main_way} is the main one); "
            "ping under load: pings from A to B every "
            f"{opts.get('load_ping_interval', '?')} s during the {main_way} test and during the "
            f"{other_way} one, the flow's first second (slow start) left out; avg, p95 and max are "
            "per run, the table shows their medians. MTU: the tunnel device in A (/ in B if it differs)."
            if loaded
            else ""
        )
    )
    lines.append("")

    ratios = [r for r in report.ratios() if r.numerator == TUNVPN]
    if ratios:
        tunvpn = report.path(TUNVPN)
        if tunvpn is None or tunvpn.status != STATUS_OK:
            why = tunvpn.status if tunvpn is not None else "not measured"
            lines.append(f"Ratios to tunvpn: n/a (tunvpn {why}).")
        else:
            lines.append(
                "Ratios (median TCP 1-stream receiver throughput): "
                + ", ".join(f"tunvpn / {r.denominator} = {_ratio(r.value)}" for r in ratios)
                + "."
            )
        lines.append("")
    goals = report.goals()
    if goals:
        lines.append("Goals (issues 3 and 21):" if loaded else "Goals (issue 3):")
        for g in goals:
            verdict = {True: "met", False: "NOT met", None: "not judged"}[g.met]
            lines.append(f"- {g.text}: {g.value}: {verdict}")
        lines.append("")
    programs = [p for p in report.paths if p.program]
    source = host.get("tunvpn_source") if report.path(TUNVPN) is not None else None
    if programs or source:
        lines.append("Programs:")
        for p in programs:
            lines.append(f"- {p.name}: {p.program}")
        if programs and host.get("iperf3"):
            lines.append(f"- load: {host['iperf3']}")
        if source:
            lines.append(f"- tunvpn source: {source}")
        lines.append("")
    notes = []
    for p in report.paths:
        med = p.median if p.status == STATUS_OK else None
        if med is not None and med.daemon_cpu_pct:
            daemons = ", ".join(f"{d} {v:.0f}%" for d, v in med.daemon_cpu_pct.items())
            steal = f"; CPU steal {med.cpu_steal_pct:.0f}%" if med.cpu_steal_pct is not None else ""
            notes.append(f"- {p.name}: daemons (% of one core) {daemons}{steal}")
        if med is not None and med.daemon_idle_cpu_pct:
            idle = ", ".join(f"{d} {v:.1f}%" for d, v in med.daemon_idle_cpu_pct.items())
            notes.append(f"- {p.name}: daemons during the idle pings (% of one core) {idle}")
        if any(p.udp_buffers.values()):
            notes.append(f"- {p.name}: {describe_buffers(p.udp_buffers)}")
        for i, run in enumerate(p.runs, 1):
            for err in run.errors:
                notes.append(f"- {p.name} run {i}: {err}")
            for note in run.notes:
                notes.append(f"- {p.name} run {i}: {note}")
    if notes:
        lines.append("Notes:")
        lines.extend(notes)
        lines.append("")
    if report.command:
        lines.append(f"Command: `{report.command}`")
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "STATUS_FAILED",
    "STATUS_NOT_AVAILABLE",
    "STATUS_OK",
    "BenchReport",
    "Goal",
    "PathResult",
    "Ratio",
    "RunResult",
    "describe_buffers",
    "describe_wire",
    "direction_mbps",
    "format_markdown",
    "median_run",
    "mtu_text",
    "readme_table",
    "short_cipher",
]
