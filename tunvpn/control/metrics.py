"""The gateway's Prometheus endpoint (issue 20): ``[gateway] metrics = "127.0.0.1:9477"``.

What it exports (docs/service.md "Metrics" has the table):

* counters from the event stream (:mod:`tunvpn.control.events`): logins, refused logins by
  result, logouts, IPsec SAs established, rekeys (``ike`` / ``ipsec``), reloads;
* at each scrape, a :class:`MetricsSample` the gateway takes on its own event loop: sessions
  and users logged in, ISAKMP and IPsec SAs, half-open phase 1 SAs, the bytes and packets its
  IPsec SAs carried (kept when an SA goes, so they only grow), drops by reason (ESP and IKE).

Labels stay few: ``direction``, ``result``, ``reason``, ``kind``; a ``user`` label only with
``metrics_per_user = true`` (a label per user is a time series per user); never an SPI.

Needs ``prometheus_client`` (``pip install 'tunvpn[metrics]'``); it serves ``/metrics`` from
its own thread, which asks the gateway's loop for the sample, so the gateway's state is read
on one thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunvpn.control.events import Event, EventKind

Traffic = tuple[int, int, int, int]
"""Bytes in, bytes out, packets in, packets out."""

PREFIX = "tunvpn_"


@dataclass(frozen=True)
class MetricsSample:
    """The gateway's state at one scrape."""

    sessions: int = 0
    users: int = 0
    ike_sas: int = 0
    ipsec_sas: int = 0
    half_open: int = 0
    traffic: Mapping[str, Traffic] = field(default_factory=dict)
    """By user (``""``: no user, or per-user labels off); totals that only grow."""
    esp_drops: Mapping[str, int] = field(default_factory=dict)
    ike_drops: Mapping[str, int] = field(default_factory=dict)


class MetricsError(Exception):
    """The endpoint cannot run (prometheus_client missing, the address taken)."""


class GatewayMetrics:
    """Counters fed by :meth:`on_event`, gauges and totals from ``sample`` at each scrape.

    :param sample: returns the gateway's :class:`MetricsSample` (called on the HTTP thread; it
        must hand the work to the gateway's loop itself).
    """

    def __init__(self, sample: Callable[[], MetricsSample]) -> None:
        try:
            import prometheus_client
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise MetricsError("metrics need prometheus_client: pip install 'tunvpn[metrics]'") from None
        self._prom = prometheus_client
        self._counter_family = CounterMetricFamily
        self._gauge_family = GaugeMetricFamily
        self._sample = sample
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None

    # ------------------------------------------------------------------ from the event stream

    def on_event(self, event: Event) -> None:
        """Count one event (an :class:`~tunvpn.control.events.EventHub` listener)."""
        kind = event.kind
        if kind is EventKind.LOGIN:
            self._add("logins_total")
        elif kind is EventKind.LOGIN_FAILED:
            self._add("login_failures_total", result=str(event.fields.get("result", "fail")))
        elif kind is EventKind.LOGOUT:
            self._add("logouts_total")
        elif kind is EventKind.SA_UP:
            self._add("ipsec_sas_established_total")
            if event.fields.get("rekey"):
                self._add("rekeys_total", kind="ipsec")
        elif kind is EventKind.REKEY:
            self._add("rekeys_total", kind="ike")
        elif kind is EventKind.RELOAD:
            self._add("reloads_total")

    def _add(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    # ------------------------------------------------------------------ a scrape

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol."""
        counter, gauge = self._counter_family, self._gauge_family
        with self._lock:
            counts = dict(self._counts)
        help_of = {
            "logins_total": "Logins completed (phase 1, XAUTH, extra protocols, Mode Config).",
            "login_failures_total": "Logins refused after phase 1, by result (fail: bad credentials).",
            "logouts_total": "Logged-in sessions that ended.",
            "ipsec_sas_established_total": "IPsec SA pairs established (rekeys included).",
            "rekeys_total": "Rekeys, by kind (ike: ISAKMP SA; ipsec: IPsec SA pair).",
            "reloads_total": "Configuration reloads applied.",
        }
        label_names = {"login_failures_total": ["result"], "rekeys_total": ["kind"]}
        for name, text in help_of.items():
            family = counter(PREFIX + name.removesuffix("_total"), text, labels=label_names.get(name, []))
            found = [(labels, n) for (metric, labels), n in counts.items() if metric == name]
            if not found and name not in label_names:
                found = [((), 0)]
            for labels, n in found:
                family.add_metric([v for _, v in labels], n)
            yield family
        sample = self._sample()
        for name, text, value in (
            ("sessions", "Sessions logged in now.", sample.sessions),
            ("users", "Distinct users logged in now.", sample.users),
            ("ike_sas", "ISAKMP SAs now (half-open included).", sample.ike_sas),
            ("ipsec_sas", "IPsec SA pairs installed now.", sample.ipsec_sas),
            ("half_open", "Phase 1 SAs not finished yet.", sample.half_open),
        ):
            now = gauge(PREFIX + name, text)
            now.add_metric([], value)
            yield now
        per_user = any(user for user in sample.traffic)
        traffic_labels = ["direction", "user"] if per_user else ["direction"]
        octets = counter(PREFIX + "sa_bytes", "Octets the IPsec SAs carried.", labels=traffic_labels)
        packets = counter(PREFIX + "sa_packets", "Packets the IPsec SAs carried.", labels=traffic_labels)
        for user, (b_in, b_out, p_in, p_out) in sorted(sample.traffic.items()):
            extra = [user] if per_user else []
            octets.add_metric(["in", *extra], b_in)
            octets.add_metric(["out", *extra], b_out)
            packets.add_metric(["in", *extra], p_in)
            packets.add_metric(["out", *extra], p_out)
        yield octets
        yield packets
        drops = counter(PREFIX + "drops", "Packets dropped, by layer and reason.", labels=["layer", "reason"])
        for layer, table in (("esp", sample.esp_drops), ("ike", sample.ike_drops)):
            for reason, n in sorted(table.items()):
                drops.add_metric([layer, reason], n)
        yield drops

    def text(self) -> bytes:
        """The exposition text (what ``/metrics`` serves)."""
        return bytes(self._prom.generate_latest(self.registry))

    # ------------------------------------------------------------------ the endpoint

    def serve(self, address: str, port: int) -> None:
        """Serve ``/metrics`` on ``address:port`` from a thread of prometheus_client."""
        try:
            self._server, _thread = self._prom.start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on (the one the OS chose for port 0), or None."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


METRIC_NAMES = (
    "tunvpn_logins_total",
    "tunvpn_login_failures_total",
    "tunvpn_logouts_total",
    "tunvpn_ipsec_sas_established_total",
    "tunvpn_rekeys_total",
    "tunvpn_reloads_total",
    "tunvpn_sessions",
    "tunvpn_users",
    "tunvpn_ike_sas",
    "tunvpn_ipsec_sas",
    "tunvpn_half_open",
    "tunvpn_sa_bytes_total",
    "tunvpn_sa_packets_total",
    "tunvpn_drops_total",
)
"""Every series name the endpoint exports (docs/service.md; the Grafana dashboard in contrib/
may name only these: a test checks)."""


__all__ = ["METRIC_NAMES", "GatewayMetrics", "MetricsError", "MetricsSample"]
