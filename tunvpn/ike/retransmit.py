"""Retransmission of our last message, the one path for phase 1 and for the exchanges under an
ISAKMP SA (Transaction, Quick Mode).

RFC 2408 section 5 / RFC 2409: a request whose answer does not come is sent again, byte for
byte, with a doubling delay, a bounded number of times; the last message is also what answers
a retransmitted request of the peer. The engine owns the timer and the datagram queue: this
object only keeps the message, the tries and the time of the next one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Retransmission:
    """Our last message of one exchange and when to send it again."""

    message: bytes = b""
    """The last message we sent, as built (before the NAT-T marker), resent byte for byte."""
    at: float | None = None
    """When to send it again; ``None`` while no answer is awaited."""
    count: int = 0
    """How many times it has been sent again."""

    def sent(self, message: bytes, now: float, base: float, *, expect_reply: bool) -> None:
        """``message`` was just sent: wait ``base`` seconds for an answer if one is expected."""
        self.message = message
        self.count = 0
        self.at = now + base if expect_reply else None

    def stop(self) -> None:
        """The answer came (or none is awaited any more): no further sending."""
        self.at = None

    def due(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def again(self, now: float, base: float, tries: int) -> bytes | None:
        """The message to send again now, the delay doubled; ``None`` once all ``tries``
        are used (the caller gives the exchange up)."""
        if self.count >= tries:
            return None
        self.count += 1
        self.at = now + base * (2**self.count)
        return self.message
