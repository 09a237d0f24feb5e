"""The Prometheus endpoint's content (issue 20): counters from the event stream, the gateway's
sample at each scrape, every documented name exported, a user label only when asked for; and
the Grafana dashboard in contrib/ names exported metrics only."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tunvpn.control.events import EventHub, EventKind
from tunvpn.control.metrics import METRIC_NAMES, GatewayMetrics, MetricsSample

pytest.importorskip("prometheus_client")

DASHBOARD = Path(__file__).parents[3] / "contrib" / "grafana" / "tunvpn-gateway.json"


def sample(per_user: bool = False) -> MetricsSample:
    traffic = {"alice": (100, 200, 1, 2), "bob": (5, 6, 1, 1)} if per_user else {"": (105, 206, 2, 3)}
    return MetricsSample(
        sessions=2,
        users=2,
        ike_sas=3,
        ipsec_sas=4,
        half_open=1,
        traffic=traffic,
        esp_drops={"replay": 7},
        ike_drops={"bad hash": 2},
    )


def values(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_counters_follow_the_event_stream_and_gauges_the_sample() -> None:
    metrics = GatewayMetrics(sample)
    hub = EventHub(lambda: 0.0)
    hub.listeners.append(metrics.on_event)
    hub.publish(EventKind.LOGIN, user="alice")
    hub.publish(EventKind.LOGIN_FAILED, user="bob", result="fail")
    hub.publish(EventKind.LOGIN_FAILED, user="bob", result="refused")
    hub.publish(EventKind.SA_UP, rekey=False)
    hub.publish(EventKind.SA_UP, rekey=True)
    hub.publish(EventKind.REKEY)
    hub.publish(EventKind.RELOAD, generation=2)
    got = values(metrics.text().decode())
    assert got["tunvpn_logins_total"] == 1
    assert got['tunvpn_login_failures_total{result="fail"}'] == 1
    assert got['tunvpn_login_failures_total{result="refused"}'] == 1
    assert got["tunvpn_ipsec_sas_established_total"] == 2
    assert got['tunvpn_rekeys_total{kind="ipsec"}'] == 1 and got['tunvpn_rekeys_total{kind="ike"}'] == 1
    assert got["tunvpn_reloads_total"] == 1 and got["tunvpn_logouts_total"] == 0
    assert (
        got["tunvpn_sessions"],
        got["tunvpn_ike_sas"],
        got["tunvpn_ipsec_sas"],
        got["tunvpn_half_open"],
    ) == (
        2,
        3,
        4,
        1,
    )
    assert got['tunvpn_sa_bytes_total{direction="in"}'] == 105
    assert got['tunvpn_sa_packets_total{direction="out"}'] == 3
    assert got['tunvpn_drops_total{layer="esp",reason="replay"}'] == 7
    assert got['tunvpn_drops_total{layer="ike",reason="bad hash"}'] == 2
    names = {re.split(r"[{ ]", key)[0] for key in got}
    assert names == set(METRIC_NAMES), names ^ set(METRIC_NAMES)


def test_a_user_label_only_when_asked_for_and_never_an_spi() -> None:
    text = GatewayMetrics(lambda: sample(per_user=True)).text().decode()
    assert 'tunvpn_sa_bytes_total{direction="in",user="alice"} 100.0' in text
    assert "spi" not in text.lower()
    plain = GatewayMetrics(sample).text().decode()
    assert "user=" not in plain


def test_the_endpoint_serves_metrics_over_http() -> None:
    metrics = GatewayMetrics(sample)
    metrics.serve("127.0.0.1", 0)
    try:
        port = metrics.port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert "tunvpn_sessions 2.0" in body


def test_the_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 8, exprs
    for expr in exprs:
        named = set(re.findall(r"\btunvpn_[a-z0-9_]+", expr))
        assert named and named <= set(METRIC_NAMES), (expr, named - set(METRIC_NAMES))
    assert {n for e in exprs for n in re.findall(r"\btunvpn_[a-z0-9_]+", e)} >= {
        "tunvpn_sessions",
        "tunvpn_logins_total",
        "tunvpn_login_failures_total",
        "tunvpn_sa_bytes_total",
        "tunvpn_drops_total",
        "tunvpn_half_open",
    }
