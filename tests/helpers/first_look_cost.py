"""What one unwanted IKE datagram costs the gateway before and after the first look (issue 14).

Before: every datagram went to ``IkeEngine.receive_datagram``. After: it passes
``IkeInbox.put`` first (tunvpn/ike/firstlook.py, and the budget of new exchanges of a
gateway), which drops these without queueing them for the engine. One run, side by side,
on this machine; nothing is asserted::

    python3 -m tests.helpers.first_look_cost [--count N]

(a) garbage: short datagrams, random bytes, IKEv2 headers, a length that lies;
(b) strongSwan's Main Mode message 1 (tests/vectors/captures.py) under random initiator
    cookies from random sources, over the new-exchange budget;
(b') the same with our own client's largest Main Mode message 1 (every suite, 255 transforms);
(c) strongSwan's Main Mode message 5 under a responder cookie the gateway does not know.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

from tests.helpers.ike_pair import client_config, gateway_config
from tests.vectors.captures import CHARON_MM1, CHARON_MM5_ENCRYPTED
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.proposals import Phase1Policy
from tunvpn.shell.udp import NewExchangeLimit, UdpDriver

GATEWAY = ("10.77.0.1", 500)
Datagram = tuple[bytes, tuple[str, int]]


def garbage(rng: random.Random, count: int) -> list[Datagram]:
    kinds: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(1, 28)),
        lambda: rng.randbytes(rng.randrange(28, 400)),
        lambda: CHARON_MM1[:17] + b"\x20" + CHARON_MM1[18:],  # IKEv2 version
        lambda: CHARON_MM1 + rng.randbytes(4),  # the header's length lies
    ]
    return [(rng.choice(kinds)(), _source(rng)) for _ in range(count)]


def first_messages(rng: random.Random, count: int) -> list[Datagram]:
    return [(rng.randbytes(8) + CHARON_MM1[8:], _source(rng)) for _ in range(count)]


def our_largest_first_messages(rng: random.Random, count: int) -> list[Datagram]:
    engine = IkeEngine(client_config(phase1=Phase1Policy.with_legacy()))
    engine.initiate(GATEWAY, ("10.66.0.1", 500), 0.0, xauth=True)
    [(first, _, _)] = engine.datagrams_to_send()
    return [(rng.randbytes(8) + first[8:], _source(rng)) for _ in range(count)]


def unknown_cookies(rng: random.Random, count: int) -> list[Datagram]:
    return [
        (CHARON_MM5_ENCRYPTED[:8] + rng.randbytes(8) + CHARON_MM5_ENCRYPTED[16:], _source(rng))
        for _ in range(count)
    ]


def _source(rng: random.Random) -> tuple[str, int]:
    return (f"10.66.{rng.randrange(256)}.{rng.randrange(1, 255)}", 500)


def before(datagrams: Sequence[Datagram]) -> float:
    """Seconds per datagram in ``IkeEngine.receive_datagram`` (and draining what it made)."""
    engine = IkeEngine(gateway_config())
    now = 1_800_000_000.0
    started = time.perf_counter()
    for data, source in datagrams:
        engine.receive_datagram(data, source, GATEWAY, now)
        engine.datagrams_to_send()
        while engine.next_event() is not None:
            pass
    return (time.perf_counter() - started) / len(datagrams)


def after(datagrams: Sequence[Datagram]) -> float:
    """Seconds per datagram in ``IkeInbox.put`` of a gateway's driver whose new-exchange
    budget is spent (a frozen clock: nothing refills), as the data thread or the port 500
    socket calls it (the check for a retransmission of a held exchange included)."""
    engine = IkeEngine(gateway_config())
    limit = NewExchangeLimit(total_burst=1, total_rate=1)
    inbox = UdpDriver(engine, GATEWAY[0], limit_new=limit, monotonic=lambda: 0.0).inbox
    inbox.put(CHARON_MM1, ("10.66.0.1", 500), 500)  # spends the total burst
    started = time.perf_counter()
    for data, source in datagrams:
        inbox.put(data, source, 500)
    elapsed = (time.perf_counter() - started) / len(datagrams)
    assert inbox.depth() == 1, "only the first message that spent the budget is queued"
    return elapsed


def main(argv: Sequence[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="datagrams per case (default 2000)")
    args = parser.parse_args(argv)
    rng = random.Random(14)
    rows = []
    for name, make in (
        ("(a) garbage", garbage),
        ("(b) strongSwan MM message 1, random cookies, over budget", first_messages),
        ("(b') tunvpn MM message 1, every suite (9 KB), over budget", our_largest_first_messages),
        ("(c) unknown responder cookie (strongSwan MM message 5)", unknown_cookies),
    ):
        datagrams = make(rng, args.count)
        rows.append((name, before(datagrams), after(datagrams)))
    print(f"{'per datagram':58} {'before (engine)':>16} {'after (first look)':>19}")
    for name, old, new in rows:
        print(f"{name:58} {old * 1e6:13.1f} us {new * 1e6:16.2f} us")
    return rows


if __name__ == "__main__":
    main()
