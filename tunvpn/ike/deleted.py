"""The ISAKMP SAs an engine deleted recently, so that their peers' late messages are dropped
quietly (issue 22).

When the gateway refuses a login it tells the client (XAUTH-STATUS FAIL), takes its
acknowledgement and deletes the ISAKMP SA with a Delete; the client's next message (a
retransmission, a duplicate of its acknowledgement, its own Delete) then arrives under
cookies the engine no longer holds. Answered like a message for an unknown ISAKMP SA it was
counted as bad input, summed up in a WARNING line and answered with an unprotected
INVALID-COOKIE: it read like a fault, and the peer already knew the SA was gone. The engine
remembers the cookies of such SAs for :data:`TTL` seconds (at most :data:`LIMIT` of them,
the oldest forgotten first) and drops what comes under them, counted, without an answer.

Only the engine's own deletions of an established ISAKMP SA whose peer knows it is gone are
remembered (we sent a Delete, the peer sent one, or the client acknowledged a failed XAUTH),
never anything an unauthenticated sender makes (a phase 1 that failed or timed out, a
half-open SA), and never an SA we dropped without telling the peer (a dead peer): a peer
that still uses that one gets INVALID-COOKIE as before and logs in again (issue 15).

Sans-I/O: time is the ``now`` the engine is given; no clock, no timer (expired entries go
when the engine next looks).
"""

from __future__ import annotations

__all__ = ["LIMIT", "TTL", "RecentlyDeleted"]

LIMIT = 1024
"""ISAKMP SAs remembered at most: with more deletions within :data:`TTL`, the oldest's
late messages get the answer of an unknown ISAKMP SA again (nothing worse)."""

TTL = 60.0
"""Seconds an ISAKMP SA is remembered after its deletion: longer than a peer keeps sending
under it (retransmissions of one message give up within ``retransmit_tries``)."""


class RecentlyDeleted:
    """Our cookies of recently deleted ISAKMP SAs -> (their SA id, when forgotten), oldest
    first (a dict keeps insertion order)."""

    def __init__(self, limit: int = LIMIT, ttl: float = TTL) -> None:
        if limit < 1:
            raise ValueError("remember at least one deleted ISAKMP SA")
        self.limit = limit
        self.ttl = ttl
        self._entries: dict[bytes, tuple[bytes, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, local_cookie: bytes, sa_id: bytes, now: float) -> None:
        """Remember the SA ``sa_id`` (our cookie ``local_cookie``), deleted at ``now``."""
        self.expire(now)
        self._entries.pop(local_cookie, None)  # deleted again: it moves to the end
        while len(self._entries) >= self.limit:
            del self._entries[next(iter(self._entries))]
        self._entries[local_cookie] = (sa_id, now + self.ttl)

    def holds(self, icookie: bytes, rcookie: bytes, now: float) -> bool:
        """Whether a message under these cookies belongs to an SA remembered at ``now``: our
        cookie (either one) and the peer's must both be those of the deleted SA."""
        sa_id = icookie + rcookie
        for cookie in (rcookie, icookie):
            entry = self._entries.get(cookie)
            if entry is not None and entry[0] == sa_id and now < entry[1]:
                return True
        return False

    def knows(self, cookie: bytes) -> bool:
        """Whether ``cookie`` is our cookie of a remembered SA (a dict lookup, safe to call
        from the data thread; an entry expired since the engine last looked may still count)."""
        return cookie in self._entries

    def expire(self, now: float) -> None:
        """Forget the SAs remembered longer than :attr:`ttl` at ``now`` (the oldest first)."""
        entries = self._entries
        while entries:
            cookie = next(iter(entries))
            if now < entries[cookie][1]:
                return
            del entries[cookie]
