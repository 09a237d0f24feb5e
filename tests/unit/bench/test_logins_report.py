"""The verdicts and the table of ``tunvpn bench logins`` (tunvpn/bench/logins.py), on figures
given by hand: when the measured rate is only a lower bound, and what the table then says
(issue 14: "if the generator is saturated, the figure is only a lower bound and must say so")."""

from __future__ import annotations

import json

from tunvpn.bench.logins import LOWER_BOUND, LoginReport, format_report, judge, percentile, source_address


def test_a_busy_generator_makes_the_rate_a_lower_bound() -> None:
    lower, notes = judge(
        generator_pct=97.0, generator_core_busy=98.0, gateway_pct=60.0, gateway_core_busy=61.0
    )
    assert lower and notes[0].startswith(LOWER_BOUND)


def test_a_generator_starved_by_other_work_on_its_core_while_the_gateway_idles() -> None:
    lower, notes = judge(
        generator_pct=40.0, generator_core_busy=96.0, gateway_pct=36.0, gateway_core_busy=50.0
    )
    assert lower and LOWER_BOUND in notes[0]


def test_a_gateway_using_its_whole_core_is_the_limit_not_the_generator() -> None:
    lower, notes = judge(
        generator_pct=20.0, generator_core_busy=67.0, gateway_pct=94.0, gateway_core_busy=99.0
    )
    assert not lower and not any(LOWER_BOUND in n for n in notes)


def test_both_cores_full_of_other_work_is_said_but_not_blamed_on_the_generator() -> None:
    lower, notes = judge(
        generator_pct=17.0, generator_core_busy=98.0, gateway_pct=86.0, gateway_core_busy=100.0
    )
    assert not lower
    assert any("full too" in n for n in notes)
    assert any("14 points of it not the gateway" in n for n in notes)


def test_the_table_says_lower_bound_next_to_the_rate_and_at_the_end() -> None:
    report = LoginReport(
        setup={"exchange": "main mode", "suite": "ecp256", "concurrency": 20},
        logins={"per_second": 110.1, "completed": 10, "failed": 1, "started": 11, "latency_ms": {"p50": 5.0}},
        lower_bound=True,
        warmup={"failures": {}},
    )
    report.logins["failures"] = {"xauth: rejected": 1}
    text = format_report(report)
    assert "| logins/s | 110.1 (lower bound) |" in text
    assert text.rstrip().endswith(LOWER_BOUND)
    assert "- 1 x xauth: rejected" in text
    assert json.loads(report.to_json())["lower_bound"] is True
    report.lower_bound = False
    assert LOWER_BOUND not in format_report(report)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (
        percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    )
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_source_addresses_are_distinct_loopback_addresses() -> None:
    addresses = [source_address(i) for i in range(5000)]
    assert len(set(addresses)) == 5000
    assert all(a.startswith("127.77.") and not a.endswith((".0", ".255")) for a in addresses)
