"""Issue 14: what an unverified sender may cost the gateway, and what the gateway may send to
an address nobody verified. Each test is the attack, fed to a gateway engine in memory:

* spoofed Aggressive Mode first messages, each of which would cost a Diffie-Hellman (and a
  signature) and get an answer several times its size: at most ``aggressive_budget`` of them
  are answered, per source and in total; a real client then still connects;
* messages that draw an unprotected error Notify, sent "from" a victim's address: the gateway
  sends the victim at most ``notify_budget`` Notifies, and never one larger than the message
  it answers (no reflection, no amplification).
"""

from __future__ import annotations

import random

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.constants import DHGroup, EncryptionAlgorithm, ExchangeType, HashAlgorithm, NotifyType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.messages import decode_header
from tunvpn.ike.proposals import Phase1Policy

ONE = Phase1Policy(((EncryptionAlgorithm.AES_CBC, 256),), (HashAlgorithm.SHA2_256,), (DHGroup.ECP_256,))
VICTIM = "192.0.2.77"


def aggressive_first_message(now: float) -> bytes:
    """A real Aggressive Mode message 1 of a PSK client (one transform, ECP-256)."""
    spare = IkeEngine(client_config(phase1=ONE))
    spare.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), now, mode="aggressive")
    [(data, _, _)] = spare.datagrams_to_send()
    return data


def feed(gateway: IkeEngine, data: bytes, source: str, now: float) -> list[bytes]:
    """One datagram from ``source``; returns what the gateway sent back to ``source``."""
    gateway.receive_datagram(data, (source, 500), (GATEWAY_IP, 500), now)
    while gateway.next_event() is not None:
        pass
    return [out for out, remote, _ in gateway.datagrams_to_send() if remote[0] == source]


def answered_aggressive(answers: list[bytes]) -> int:
    return sum(1 for a in answers if decode_header(a).exchange == ExchangeType.AGGRESSIVE)


def test_spoofed_aggressive_first_messages_cost_at_most_the_budget() -> None:
    pair = Pair(client_config(), gateway_config(max_half_open_per_source=10_000, max_half_open=100_000))
    gateway = pair.gateway.engine
    _, per_source_burst, total, total_burst = gateway.config.aggressive_budget
    rng = random.Random(14)
    template = aggressive_first_message(pair.now)

    one_source = [
        feed(gateway, rng.randbytes(8) + template[8:], "203.0.113.66", pair.now) for _ in range(1000)
    ]
    assert sum(answered_aggressive(a) for a in one_source) == per_source_burst
    assert gateway.drops["Aggressive Mode first message over budget"] == 1000 - per_source_burst

    many = [
        feed(gateway, rng.randbytes(8) + template[8:], f"10.{i >> 8 & 255}.{i & 255}.9", pair.now)
        for i in range(2000)
        for _ in range(10)
    ]
    # the total ran out long before 2,000 sources x their own burst
    assert sum(answered_aggressive(a) for a in many) <= total_burst - per_source_burst
    # a second later the budget has grown by its rate only
    pair.advance(1.0)
    later = [feed(gateway, rng.randbytes(8) + template[8:], f"172.16.{i}.1", pair.now) for i in range(200)]
    assert sum(answered_aggressive(a) for a in later) <= total + 1

    # a real user (Main Mode, as every tunvpn client by default) still gets in at once
    connect(pair)
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)


def test_a_real_aggressive_client_gets_in_after_a_storm_from_other_sources() -> None:
    pair = Pair(client_config(), gateway_config())
    gateway = pair.gateway.engine
    rng = random.Random(7)
    template = aggressive_first_message(pair.now)
    for i in range(5000):
        feed(gateway, rng.randbytes(8) + template[8:], f"10.9.{i % 250}.{i // 250 + 1}", pair.now)
    pair.advance(gateway.config.aggressive_budget[3] / gateway.config.aggressive_budget[2])  # refilled
    connect(pair, "aggressive")
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)


def test_forged_responder_cookies_draw_nothing() -> None:
    """Messages "from" a victim naming ISAKMP SAs the gateway never had: the responder cookie
    is not one the gateway derived (RFC 2408 2.5.3), so nothing goes to the victim."""
    pair = Pair(client_config(), gateway_config())
    gateway = pair.gateway.engine
    rng = random.Random(3)
    template = aggressive_first_message(pair.now)
    forged = [rng.randbytes(16) + template[16:] for _ in range(1000)]
    assert [a for data in forged for a in feed(gateway, data, VICTIM, pair.now)] == []
    assert gateway.drops["responder cookie that is not ours"] == 1000


def test_a_peer_whose_exchange_we_forgot_is_told_with_its_real_cookie() -> None:
    """Positive control of the cookie check: a real initiator whose half-open exchange timed
    out on the gateway gets INVALID-COOKIE for its next message, which carries our cookie."""
    pair = Pair(client_config(), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    [(mm1, _, _)] = pair.client.engine.datagrams_to_send()
    [mm2] = feed(pair.gateway.engine, mm1, CLIENT_IP, pair.now)
    pair.client.engine.receive_datagram(mm2, (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    [(mm3, _, _)] = pair.client.engine.datagrams_to_send()
    later = pair.now + 31  # the gateway forgets the half-open exchange before MM3 arrives
    pair.gateway.engine.handle_timer(later)
    assert not pair.gateway.engine.ike_sas()
    [notify] = feed(pair.gateway.engine, mm3, CLIENT_IP, later)
    assert decode_header(notify).exchange == ExchangeType.INFORMATIONAL
    assert NotifyType.INVALID_COOKIE.to_bytes(2, "big") in notify


def test_a_victim_gets_few_notifies_and_none_larger_than_the_message() -> None:
    """First messages "from" a victim that each draw an error Notify (Aggressive Mode is off):
    the victim gets the per-destination burst, all sources together the total burst."""
    pair = Pair(
        client_config(), gateway_config(allow_aggressive_psk=False, allow_aggressive_signatures=False)
    )
    gateway = pair.gateway.engine
    _, burst, _, total_burst = gateway.config.notify_budget
    rng = random.Random(3)
    template = aggressive_first_message(pair.now)
    refused = [rng.randbytes(8) + template[8:] for _ in range(1000)]
    answers = [a for data in refused for a in feed(gateway, data, VICTIM, pair.now)]
    assert len(answers) == burst
    assert all(len(a) <= len(template) for a in answers)
    assert all(NotifyType.NO_PROPOSAL_CHOSEN.to_bytes(2, "big") in a for a in answers)
    assert gateway.withheld["notify over budget"] == 1000 - burst

    # a tiny message that would draw a Notify bigger than itself draws nothing
    tiny = bytearray(template[:28])
    tiny[0:8] = rng.randbytes(8)
    tiny[16] = 0  # no payloads: a Main Mode message 1 without its SA payload
    tiny[18] = ExchangeType.IDENTITY_PROTECTION
    tiny[24:28] = (28).to_bytes(4, "big")
    pair.advance(60)
    assert feed(gateway, bytes(tiny), "198.51.100.99", pair.now) == []
    assert gateway.withheld["notify larger than the message it answers"] == 1

    # many victims: the total bounds what the gateway sends in all
    pair.advance(60)
    sent = sum(
        len(feed(gateway, rng.randbytes(8) + template[8:], f"10.{i >> 8}.{i & 255}.5", pair.now))
        for i in range(3000)
    )
    assert sent == total_burst


def test_new_offers_are_parsed_within_their_budget_and_known_ones_always() -> None:
    """A storm of first messages each carrying an offer never seen (here: our client's full
    offer with another lifetime each time, 168 transforms to parse) from 600 addresses: only
    ``offer_budget`` of them are parsed, the rest dropped before parsing. The offer of a client
    that completed phase 1 stays known, so another client of its kind gets in during the storm."""
    pair = Pair(client_config(), gateway_config(max_half_open_per_source=10_000, max_half_open=100_000))
    connect(pair)  # a real client logs in: its offer is remembered
    assert pair.gateway.of(ev.Phase1Established)
    gateway = pair.gateway.engine
    _, _, _, total_burst = gateway.config.offer_budget
    rng = random.Random(11)
    answered = 0
    for i in range(600):
        spare = IkeEngine(client_config(phase1=Phase1Policy(lifetime=7200 + i)))
        spare.initiate((GATEWAY_IP, 500), (f"10.5.{i >> 8}.{i & 255}", 500), pair.now, xauth=True)
        [(offer, _, _)] = spare.datagrams_to_send()
        answered += len(feed(gateway, offer, f"10.5.{i >> 8}.{i & 255}", pair.now))
    assert answered == total_burst
    assert gateway.drops["first message with a new offer over budget"] == 600 - total_burst

    # the same kind of client as the one that logged in: its offer is known, it is answered
    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY_IP, 500), ("192.0.2.200", 500), pair.now)
    [(first, _, _)] = spare.datagrams_to_send()
    [mm2] = feed(gateway, rng.randbytes(8) + first[8:], "192.0.2.200", pair.now)
    assert decode_header(mm2).exchange == ExchangeType.IDENTITY_PROTECTION
