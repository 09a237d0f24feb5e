"""Events the ESP core queues for the control plane (drained by ``SadTable.next_event``).

Small frozen dataclasses with no live objects inside, as the IKE engine's events are. The
shell maps the SPI back to the child SA it negotiated and starts a rekey (soft) or deletes
the SA (hard).
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import Direction, LifetimeTrigger


@dataclass(frozen=True, slots=True)
class SaLifetimeEvent:
    """Base class: an SA crossed one of its lifetime limits."""

    spi: int
    """The SA's SPI (inbound: ours; outbound: the peer's)."""
    direction: Direction
    """Which of the pair it is."""
    trigger: LifetimeTrigger
    """The limit that was crossed: time, bytes, packets or sequence-number space."""


@dataclass(frozen=True, slots=True)
class SaSoftExpired(SaLifetimeEvent):
    """Time to rekey: the SA still works, a new one should replace it (make-before-break)."""


@dataclass(frozen=True, slots=True)
class SaHardExpired(SaLifetimeEvent):
    """The SA is dead: it drops every further packet with ``DropReason.EXPIRED``."""
