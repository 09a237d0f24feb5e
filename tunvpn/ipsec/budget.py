"""Budgets: token buckets, alone or one per source with a shared total (issue 14).

What an unauthenticated sender may cost the gateway (a DH, a signature, an answer sent to an
address nobody verified) is spent from a budget: so much a second, a small burst saved up,
per source address and for all sources together. A budget never grows without bound: it
keeps at most ``max_keys`` sources, forgetting the least recently used one (a forgotten
source starts again with a full bucket, which is what a source that was quiet for a while
deserves anyway). Time is passed in (``now``), as everywhere in the cores: no clock here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`allow` spends one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, not {rate}/{burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough at ``now``; True when spent."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def refund(self, cost: float = 1.0) -> None:
        """Give back ``cost`` tokens spent by an :meth:`allow` whose work did not happen."""
        self.tokens = min(self.burst, self.tokens + cost)

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now


class Budget:
    """A token bucket per key (a source address) and one for all keys together.

    :meth:`allow` spends from both or from neither: a source over its own budget does not
    use up the total that other sources need, and a storm from many sources is stopped by
    the total. The table of keys is bounded by ``max_keys`` (least recently used first out).
    """

    def __init__(
        self,
        per_key_rate: float,
        per_key_burst: float,
        total_rate: float,
        total_burst: float,
        *,
        max_keys: int = 4096,
        now: float = 0.0,
    ) -> None:
        if max_keys < 1:
            raise ValueError("a budget needs room for at least one key")
        TokenBucket(per_key_rate, per_key_burst)  # checks the numbers
        self.per_key_rate = per_key_rate
        self.per_key_burst = per_key_burst
        self.max_keys = max_keys
        self.total = TokenBucket(total_rate, total_burst, now)
        self._keys: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self.refused = 0
        """How many :meth:`allow` calls were refused (per key or in total)."""

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` for ``key`` at ``now`` if both its bucket and the total allow it."""
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_key_rate, self.per_key_burst, now)
            self._keys[key] = bucket
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if not bucket.allow(now, cost):
            self.refused += 1
            return False
        if not self.total.allow(now, cost):
            bucket.refund(cost)
            self.refused += 1
            return False
        return True

    def __len__(self) -> int:
        """The number of keys remembered (at most ``max_keys``)."""
        return len(self._keys)
