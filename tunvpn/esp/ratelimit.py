"""Rate-limited logging of data-path drops (STYLE.md section 3: counted always, logged rarely).

A flood of forged or replayed packets must not turn into a flood of log lines, so drops
are logged through a token bucket; lines that were held back are counted and reported in
the next line that gets through. Time is passed in (``now``), as everywhere in the core.
"""

from __future__ import annotations

import logging

from ..ipsec.budget import TokenBucket
from .constants import DROP_REASON_COUNT, DropReason

logger = logging.getLogger(__name__)

__all__ = ["DropLog", "TokenBucket"]


class DropLog:
    """Logs ESP drops at most ``rate`` lines a second (bursts of ``burst``).

    Counting is the SAs' and the table's job; this only decides which drops get a line.
    """

    __slots__ = ("_bucket", "_logger", "_suppressed", "level", "suppressed_total")

    def __init__(
        self,
        rate: float = 1.0,
        burst: float = 10.0,
        *,
        log: logging.Logger | None = None,
        level: int = logging.INFO,
        now: float = 0.0,
    ) -> None:
        self._bucket = TokenBucket(rate, burst, now)
        self._logger = log or logger
        self.level = level
        self._suppressed = [0] * DROP_REASON_COUNT
        self.suppressed_total = 0
        """Drops that got no line of their own, over the log's life."""

    def record(self, reason: DropReason, spi: int | None, now: float) -> bool:
        """Log one drop if the bucket allows it; True when a line was written."""
        if not self._bucket.allow(now):
            self._suppressed[reason] += 1
            self.suppressed_total += 1
            return False
        held = sum(self._suppressed)
        where = f"SPI {spi:#010x}" if spi is not None else "unknown SPI"
        if held:
            summary = ", ".join(f"{DropReason(i).name} {n}" for i, n in enumerate(self._suppressed) if n)
            self._suppressed = [0] * DROP_REASON_COUNT
            self._logger.log(
                self.level, "ESP drop: %s on %s (%d not logged: %s)", reason.name, where, held, summary
            )
        else:
            self._logger.log(self.level, "ESP drop: %s on %s", reason.name, where)
        return True
