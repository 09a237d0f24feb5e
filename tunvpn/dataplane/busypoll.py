"""When the data thread polls without sleeping after a lone packet, and for how long (issue 21).

A lone packet sent into the tunnel (a ping, a keystroke, a DNS query, a small RPC) is often a
request whose answer comes back within a fraction of a millisecond on a LAN or a data centre
path. If the data thread sleeps in ``poll()`` meanwhile, the answer pays two costs: waking the
thread (on a virtual machine whose idle vCPU halted, 150-200 us), and running the data path on
a CPU whose caches went cold while it slept (docs/datapath.md "Latency"). Polling without
sleeping for a little while after such a packet avoids both, as the kernel's own
``net.core.busy_poll`` and KVM's halt-polling do, at the price of CPU time.

:class:`BusyPoll` decides, without a clock or any I/O of its own (time comes in as ``now``
in nanoseconds): the data thread calls :meth:`BusyPoll.start` after it sent a lone packet
and, if a deadline comes back, polls with a zero timeout until something is ready or the
deadline passes, then calls :meth:`BusyPoll.stop`. The price stays bounded three ways:

* **the window adapts**: the first polls last at most ``limit_ns``; once answers were seen,
  twice the smoothed time they took plus a margin, never more than ``limit_ns``;
* **polls that see no answer back off**: after a miss, the next ``2**misses`` lone packets
  (at most ``MAX_SKIP``) are sent without polling, so a path whose answers come later than
  ``limit_ns`` (the Internet, a slow server) or never (the far side's own replies) soon costs
  nothing;
* **a budget**: polling never takes more than ``share`` of one CPU over time (a token bucket
  of at most ``burst_ns``), however the traffic looks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_LIMIT_US = 1000
"""The longest busy poll, in microseconds (``busy-poll`` in gateway.toml, ``--busy-poll``)."""
DEFAULT_SHARE = 0.05
"""At most this share of one CPU goes to busy polling, over time."""
BURST_NS = 20_000_000
"""The budget saved up while idle, at most (20 ms of polling)."""
MARGIN_NS = 100_000
"""Added to twice the smoothed answer time to make the window."""
MAX_SKIP = 256
"""After misses, at most this many lone packets go by without a poll before the next try."""


@dataclass
class BusyPollStats:
    """What the policy did (the data thread's counters show them)."""

    polls: int = 0
    """Busy polls started."""
    answered: int = 0
    """Busy polls that saw an ESP datagram arrive."""
    missed: int = 0
    """Busy polls that ran to their deadline with nothing."""
    interrupted: int = 0
    """Busy polls ended by something else (more packets to send, a command)."""
    skipped: int = 0
    """Lone packets sent without a poll: backing off after misses."""
    over_budget: int = 0
    """Lone packets sent without a poll: the CPU budget was spent."""
    polled_ns: int = 0
    """Nanoseconds spent polling in all."""


@dataclass
class BusyPoll:
    """The busy-poll policy of one data thread (sans-I/O: ``now`` is nanoseconds, monotonic).

    :param limit_ns: the longest poll (0 turns polling off).
    :param share: the share of one CPU polling may take over time (0 < share <= 1).
    :param burst_ns: the most budget saved up while idle.
    """

    limit_ns: int = DEFAULT_LIMIT_US * 1000
    share: float = DEFAULT_SHARE
    burst_ns: int = BURST_NS
    stats: BusyPollStats = field(default_factory=BusyPollStats)
    answer_ns: int = 0
    """The smoothed time answers took (0: none seen yet)."""
    _misses: int = 0
    _skip: int = 0
    _tokens: float = 0.0
    _refilled: int | None = None
    _started: int = 0

    def __post_init__(self) -> None:
        if self.limit_ns < 0:
            raise ValueError("the busy-poll limit must be >= 0")
        if not 0.0 < self.share <= 1.0:
            raise ValueError("the busy-poll CPU share must be in (0, 1]")
        self._tokens = float(self.burst_ns)

    @property
    def enabled(self) -> bool:
        return self.limit_ns > 0

    def window_ns(self) -> int:
        """How long the next poll may last."""
        if not self.answer_ns:
            return self.limit_ns
        return min(self.limit_ns, 2 * self.answer_ns + MARGIN_NS)

    def start(self, now: int) -> int:
        """A lone packet was just sent: the deadline to poll until, or 0 not to poll."""
        if not self.limit_ns:
            return 0
        self._refill(now)
        if self._skip:
            self._skip -= 1
            self.stats.skipped += 1
            return 0
        window = self.window_ns()
        if self._tokens < window:
            self.stats.over_budget += 1
            return 0
        self.stats.polls += 1
        self._started = now
        return now + window

    def stop(self, now: int, *, answered: bool, expired: bool) -> None:
        """The poll begun by :meth:`start` ended at ``now``: an ESP datagram arrived
        (``answered``), the deadline passed with nothing (``expired``), or neither (something
        else needs the thread)."""
        spent = max(0, now - self._started)
        self.stats.polled_ns += spent
        self._refill(now)
        self._tokens -= spent
        if answered:
            self.stats.answered += 1
            self._misses = 0
            # smoothed as TCP smooths its RTT (RFC 6298: 1/8 of the new sample)
            self.answer_ns = spent if not self.answer_ns else (7 * self.answer_ns + spent) // 8
        elif expired:
            self.stats.missed += 1
            self._misses += 1
            self._skip = min(MAX_SKIP, 1 << min(self._misses, 16))
        else:
            self.stats.interrupted += 1

    def _refill(self, now: int) -> None:
        if self._refilled is not None and now > self._refilled:
            self._tokens = min(float(self.burst_ns), self._tokens + (now - self._refilled) * self.share)
        self._refilled = now if self._refilled is None else max(self._refilled, now)


def default_limit_us(cpus: int | None) -> int:
    """The default longest poll: :data:`DEFAULT_LIMIT_US`, or 0 (off) on a single CPU, where
    polling would hold back the very process that is to answer."""
    return DEFAULT_LIMIT_US if cpus is None or cpus >= 2 else 0


def busy_poll_limit_us(configured: int | None) -> int:
    """The longest poll to use: ``configured`` (``busy-poll``, ``--busy-poll``), or when that
    is None the default for the CPUs this process may run on."""
    if configured is not None:
        return configured
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else os.cpu_count()
    return default_limit_us(cpus)


__all__ = [
    "DEFAULT_LIMIT_US",
    "DEFAULT_SHARE",
    "BusyPoll",
    "BusyPollStats",
    "busy_poll_limit_us",
    "default_limit_us",
]
