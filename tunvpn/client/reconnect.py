"""Staying connected (issue 15): the gateways a client may use, how their names are resolved,
and how long it waits between rounds of attempts.

The pure pieces (:func:`backoff_delay`, :func:`round_delay`) are tested alone
(tests/unit/client/test_reconnect.py); :class:`GatewayResolver` runs ``getaddrinfo`` in the
event loop's executor and keeps what it found for the times the tunnel's own DNS is all the
host has (a full tunnel whose gateway is gone).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable

from tunvpn.config.hosts import check_gateway, is_address

log = logging.getLogger(__name__)

RECONNECT_FIRST_DELAY = 1.0
"""Seconds before the second round of attempts (the first starts at once)."""
RECONNECT_MAX_DELAY = 30.0
"""The back-off doubles up to this many seconds between rounds."""
RECONNECT_JITTER = 0.2
"""Each delay is shortened by up to this fraction at random, so that the clients of a
restarted gateway do not all come back in the same second."""
NO_ANSWER_AFTER = 4.0
"""An attempt whose first message got no answer at all for this long is given up (the next
address or gateway is tried): phase 1 retransmits at 1 and 3 s before that. A live gateway
answers a first message at once (it costs it no Diffie-Hellman), even under a storm."""
SILENT_ROUND_DELAY = 1.0
"""After a round in which no gateway answered at all, the next round starts within this many
seconds however long the outage lasts: such a round costs one small datagram a second or
two (phase 1's first message and its retransmits), and a gateway that is back must be found
at once (issue 15: reconnect within 5 s of it being back; the widest gap between two first
messages is then 2 s: retransmits at 1 and 3 s, give-up at NO_ANSWER_AFTER, this). A round in which a gateway
answered and still failed (refused, wrong key, a plugin's error) backs off with
:func:`backoff_delay`: each of those costs a gateway a Diffie-Hellman."""
RESOLVE_TIMEOUT = 5.0
"""Seconds a name lookup may take before the cached addresses (if any) are used."""


def backoff_delay(
    failures: int,
    *,
    first: float = RECONNECT_FIRST_DELAY,
    cap: float = RECONNECT_MAX_DELAY,
    jitter: float = RECONNECT_JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``failures`` failed rounds in a row (``failures`` >= 1): ``first``
    doubled each time, at most ``cap``, shortened by up to ``jitter`` of itself at random
    (``rand`` returns a number in [0, 1))."""
    if failures < 1:
        raise ValueError("backoff_delay is for one failed round or more")
    base = min(cap, first * 2 ** min(failures - 1, 32))
    return base * (1.0 - jitter * rand())


def round_delay(failures: int, *, silent: bool, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next round after ``failures`` failed rounds in a row; ``silent``:
    no gateway of the last round answered at all (see :data:`SILENT_ROUND_DELAY`)."""
    delay = backoff_delay(failures, rand=rand)
    if silent:
        return min(delay, SILENT_ROUND_DELAY * (1.0 - RECONNECT_JITTER * rand()))
    return delay


class GatewayResolver:
    """Resolves gateway names at each attempt (every address of ``family`` returned, in
    order: AAAA records for a client on IPv6, A records on IPv4) and remembers the last answer
    per name."""

    def __init__(self, *, timeout: float = RESOLVE_TIMEOUT, family: int = socket.AF_INET) -> None:
        self.timeout = timeout
        self.family = family
        self.cache: dict[str, list[str]] = {}

    async def addresses(self, name: str, port: int, *, cached_only: bool = False) -> list[str]:
        """The addresses to try for ``name``. ``cached_only``: the host's resolver now points
        into a tunnel that is down (a full tunnel's DNS), so the last answer is used instead
        of asking it; a name never resolved is still looked up.

        :raises OSError: the name does not resolve (and nothing is cached), with the reason.
        """
        if is_address(name):
            return [name]
        if cached_only and self.cache.get(name):
            return list(self.cache[name])
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, family=self.family, type=socket.SOCK_DGRAM),
                self.timeout,
            )
        except OSError as exc:  # TimeoutError is one
            cached = self.cache.get(name)
            why = "lookup timed out" if isinstance(exc, TimeoutError) else str(exc)
            if cached:
                log.warning("%s: %s; using the addresses found before: %s", name, why, ", ".join(cached))
                return list(cached)
            raise OSError(f"cannot resolve {name}: {why}") from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not found:
            raise OSError(
                f"cannot resolve {name}: no IPv{6 if self.family == socket.AF_INET6 else 4} address"
            )
        self.cache[name] = found
        return list(found)


__all__ = [
    "NO_ANSWER_AFTER",
    "RECONNECT_FIRST_DELAY",
    "RECONNECT_JITTER",
    "RECONNECT_MAX_DELAY",
    "SILENT_ROUND_DELAY",
    "GatewayResolver",
    "backoff_delay",
    "round_delay",
    "check_gateway",
    "is_address",
]
