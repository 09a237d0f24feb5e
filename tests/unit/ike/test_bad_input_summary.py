"""Issue 14: logs that stay readable under attack. Garbage aimed at the gateway engine (random
bytes, lies in the length fields, random cookies, first messages with garbage bodies, on the
IKE port and on the NAT-T port with its non-ESP marker) is counted by reason in
``IkeEngine.drops`` and summed up in at most one log line per 10 s, not a line per message."""

from __future__ import annotations

import logging
import random
import struct

import pytest

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.engine import BAD_INPUT_SUMMARY_INTERVAL

NON_ESP_MARKER = bytes(4)


def garbage(rng: random.Random, i: int) -> bytes:
    """One of several kinds of bad datagram, chosen by ``i``."""
    kind = i % 5
    icookie = rng.randbytes(8)
    rcookie = bytes(8) if kind in (2, 3) else rng.randbytes(8)
    body = rng.randbytes(rng.randrange(0, 120))
    if kind == 0:  # random bytes of a random length
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:  # a header whose length field lies
        length = rng.choice([0, 27, 28 + len(body) + rng.randrange(1, 5000), 0xFFFFFFFF])
        return icookie + rcookie + bytes([1, 0x10, 2, 0]) + bytes(4) + struct.pack("!I", length) + body
    if kind in (2, 3):  # a first message (Main / Aggressive Mode) with a garbage body
        exchange = 2 if kind == 2 else 4
        data = icookie + rcookie + bytes([rng.choice([1, 13]), 0x10, exchange, 0]) + bytes(4)
        return data + struct.pack("!I", 28 + len(body)) + body
    # random cookies of no ISAKMP SA we know, a protected Quick Mode
    data = icookie + rcookie + bytes([8, 0x10, 32, 1]) + rng.randbytes(4)
    return data + struct.pack("!I", 28 + len(body)) + body


def test_ten_thousand_garbage_datagrams_make_a_handful_of_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tunvpn")
    pair = Pair(client_config(), gateway_config())
    gateway = pair.gateway.engine
    rng = random.Random(1414)
    start = pair.now
    for i in range(10_000):
        data = garbage(rng, i)
        source = (f"203.0.113.{rng.randrange(1, 255)}", rng.randrange(1024, 65535))
        if i % 2:
            gateway.receive_datagram(data, source, (GATEWAY_IP, 500), pair.now)
        else:
            gateway.receive_datagram(NON_ESP_MARKER + data, source, (GATEWAY_IP, 4500), pair.now)
        gateway.datagrams_to_send()
        while gateway.next_event() is not None:
            pass
        pair.now += 0.006  # 10,000 datagrams over 60 s
    pair.now += BAD_INPUT_SUMMARY_INTERVAL
    gateway.handle_timer(pair.now)  # the last summary is due
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) <= (pair.now - start) / BAD_INPUT_SUMMARY_INTERVAL + 1, [r.getMessage() for r in lines]
    summaries = [r.getMessage() for r in lines if "bad messages in the last" in r.getMessage()]
    assert summaries and len(summaries) == len(lines)
    # every datagram is counted, by reason (a short fixed text, so the counter stays small)
    assert sum(gateway.drops.values()) == 10_000, gateway.drops
    assert 3 <= len(gateway.drops) <= 40, gateway.drops
    reported = sum(
        int(part.rsplit(" x ", 1)[1]) for s in summaries for part in s.split(": ", 1)[1].split(", ")
    )
    assert reported == 10_000
    # and a real client still connects
    connect(pair)
    assert pair.gateway.of(ev.Phase1Established)


def test_summary_waits_for_the_interval() -> None:
    """One bad datagram is not logged at once; the summary comes with the timer (the engine's
    timer includes it), from ``now`` alone."""
    pair = Pair(client_config(), gateway_config())
    gateway = pair.gateway.engine
    gateway.receive_datagram(b"\x01" * 10, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    assert gateway.drops["malformed ISAKMP header"] == 1
    assert gateway.get_timer() == pair.now + BAD_INPUT_SUMMARY_INTERVAL


def test_garbage_under_a_users_cookies_makes_a_handful_of_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Whoever sees a user's cookies (or the user) can send datagrams under them: protected
    messages that do not decrypt or verify, and clear phase 1 messages. Each was a log line
    (INFO) before; now they are counted and summed up too, and the user's SA carries on."""
    pair = Pair(client_config(), gateway_config(require_xauth=False))
    connect(pair)
    [established] = pair.gateway.of(ev.Phase1Established)
    cookies = established.sa_id
    gateway = pair.gateway.engine
    caplog.set_level(logging.DEBUG, logger="tunvpn")
    caplog.clear()
    rng = random.Random(7)
    start = pair.now
    for i in range(2000):
        body = rng.randbytes(rng.randrange(16, 120) // 16 * 16)
        if i % 2:  # a protected Informational that will not decrypt into a valid message
            head = cookies + bytes([8, 0x10, 5, 1]) + rng.randbytes(4)
        else:  # a clear Main Mode message under the established SA's cookies
            head = cookies + bytes([1, 0x10, 2, 0]) + bytes(4)
        gateway.receive_datagram(
            head + struct.pack("!I", 28 + len(body)) + body, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now
        )
        gateway.datagrams_to_send()
        while gateway.next_event() is not None:
            pass
        pair.now += 0.01
    pair.now += BAD_INPUT_SUMMARY_INTERVAL
    gateway.handle_timer(pair.now)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) <= (pair.now - start) / BAD_INPUT_SUMMARY_INTERVAL + 1, lines
    assert gateway.drops["phase 1 message for an established ISAKMP SA"] == 1000
    assert any(sa.sa_id == cookies and sa.established for sa in gateway.ike_sas())
