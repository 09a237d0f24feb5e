"""Budgets (tunvpn/ipsec/budget.py): what an unauthenticated source may cost, per source and
in total, with a bounded table of sources."""

from __future__ import annotations

import pytest

from tunvpn.ipsec.budget import Budget, TokenBucket


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(100.5)  # one token back after half a second at 2/s
    assert not bucket.allow(100.5)
    bucket.refund()
    assert bucket.allow(100.5)


def test_one_source_cannot_spend_the_total_of_the_others() -> None:
    budget = Budget(per_key_rate=1, per_key_burst=5, total_rate=10, total_burst=20, now=0.0)
    spent = sum(budget.allow("203.0.113.9", 0.0) for _ in range(1000))
    assert spent == 5
    # the total lost only what the greedy source really spent
    assert sum(budget.allow(f"198.51.100.{i}", 0.0) for i in range(1, 16)) == 15
    assert budget.refused == 995


def test_many_sources_are_stopped_by_the_total() -> None:
    budget = Budget(per_key_rate=1, per_key_burst=5, total_rate=10, total_burst=20, now=0.0)
    spent = sum(budget.allow(f"10.{i >> 8}.{i & 255}.1", 0.0) for i in range(2000))
    assert spent == 20
    assert sum(budget.allow(f"10.9.{i}.1", 1.0) for i in range(50)) == 10  # one second: 10 more


def test_refused_total_does_not_cost_the_source() -> None:
    budget = Budget(per_key_rate=1, per_key_burst=2, total_rate=1, total_burst=1, now=0.0)
    assert budget.allow("a", 0.0)
    assert not budget.allow("b", 0.0)  # total empty: b's own bucket is refunded
    assert budget.allow("b", 1.0) and budget.allow("b", 1.0) is False
    assert budget.allow("b", 2.0)  # b still had its second token


def test_the_table_of_sources_is_bounded() -> None:
    budget = Budget(per_key_rate=1, per_key_burst=1, total_rate=1e9, total_burst=1e9, max_keys=100)
    for i in range(100_000):
        budget.allow(i, 0.0)
    assert len(budget) == 100


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0.5), (-1, 5)])
def test_nonsense_numbers_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Budget(rate, burst, 10, 10)
