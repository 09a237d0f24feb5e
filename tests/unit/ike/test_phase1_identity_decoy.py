"""Attack 5 of issue 12, the group-name oracle: a first message naming an unknown identity
must get the same answer as one naming a known group, and the decoy answer must give a
dictionary attack (psk-crack) nothing to find.

The offline check is psk-crack's (ike-scan's psk-crack.c): from Aggressive Mode messages 1
and 2 it takes g^xi, g^xr, CKY-I, CKY-R, SAi_b, IDir_b, Ni and Nr and, for each candidate
key, tests ``HASH_R == prf(prf(candidate, Ni | Nr), g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)``
(RFC 2409 section 5).
"""

from __future__ import annotations

import hmac

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import HEADER_SIZE, NotifyType
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import (
    HashPayload,
    IDPayload,
    KEPayload,
    NoncePayload,
    RawPayload,
    SAPayload,
    decode_header,
    decode_payloads,
)

PSK = b"hunter2-group-secret"
DICTIONARY = [b"password", b"letmein", b"vpn", PSK, b"correct horse battery staple"]
HASHES = {1: "md5", 2: "sha1", 4: "sha256", 5: "sha384", 6: "sha512"}  # RFC 2409 appendix A


def gateway() -> EngineConfig:
    return EngineConfig(psks=PskTable({"keyid:staff": PSK}), allow_aggressive_psk=True)


def aggressive_first_two(group: str, *, psk: bytes = PSK) -> tuple[Pair, list[RawPayload], list[RawPayload]]:
    """Run Aggressive Mode as ``keyid:<group>``; return the pair and messages 1 and 2."""
    client = EngineConfig(psks=PskTable({"*": psk}))
    pair = Pair(client, gateway())
    pair.client.engine.initiate(
        (GATEWAY_IP, 500),
        (CLIENT_IP, 500),
        pair.now,
        mode="aggressive",
        local_id=Identity.parse(f"keyid:{group}"),
    )
    pair.client.drain()
    pair.run()
    first = next(d for who, d in pair.wire if who == "c>g")
    second = next(d for who, d in pair.wire if who == "g>c")
    return pair, _payloads(first), _payloads(second)


def _payloads(data: bytes) -> list[RawPayload]:
    header = decode_header(data)
    return decode_payloads(header.next_payload, data[HEADER_SIZE : header.length])


def _one(payloads: list[RawPayload], kind: type) -> RawPayload:
    (found,) = [p for p in payloads if isinstance(p.payload, kind)]
    return found


def psk_crack(first_msg: bytes, second_msg: bytes, dictionary: list[bytes]) -> bytes | None:
    """psk-crack: the dictionary word whose HASH_R equals the one on the wire, or None."""
    first, second = _payloads(first_msg), _payloads(second_msg)
    icookie, rcookie = second_msg[:8], second_msg[8:16]
    sa_answer = _one(second, SAPayload).payload
    (transform,) = sa_answer.proposals[0].transforms
    hash_name = HASHES[transform.get(2).as_int()]  # phase 1 attribute 2: Hash Algorithm
    gxi, gxr = _one(first, KEPayload).payload.data, _one(second, KEPayload).payload.data
    ni, nr = _one(first, NoncePayload).payload.data, _one(second, NoncePayload).payload.data
    sai_b, idir_b = _one(first, SAPayload).body, _one(second, IDPayload).body
    hash_r = _one(second, HashPayload).payload.data
    for word in dictionary:
        skeyid = hmac.digest(word, ni + nr, hash_name)
        if hmac.compare_digest(
            hmac.digest(skeyid, gxr + gxi + rcookie + icookie + sai_b + idir_b, hash_name), hash_r
        ):
            return word
    return None


def _shape(payloads: list[RawPayload]) -> list[tuple[str, int]]:
    return [(type(p.payload).__name__, len(p.body)) for p in payloads]


def test_unknown_group_gets_the_same_answer_as_a_known_one() -> None:
    _, _, known = aggressive_first_two("staff")
    _, _, unknown = aggressive_first_two("nosuchgroup")
    assert _shape(known) == _shape(unknown)
    assert _one(known, SAPayload).payload == _one(unknown, SAPayload).payload  # the chosen transform
    assert _one(known, IDPayload).body == _one(unknown, IDPayload).body


def test_psk_crack_finds_the_key_in_a_known_answer_and_nothing_in_a_decoy() -> None:
    known, _, _ = aggressive_first_two("staff")
    k1, k2 = [d for _, d in known.wire[:2]]
    assert psk_crack(k1, k2, DICTIONARY) == PSK  # positive control: the attack itself works
    unknown, _, _ = aggressive_first_two("nosuchgroup")
    u1, u2 = [d for _, d in unknown.wire[:2]]
    assert psk_crack(u1, u2, DICTIONARY) is None


def test_an_unknown_group_fails_exactly_as_a_wrong_key() -> None:
    unknown, _, _ = aggressive_first_two("nosuchgroup")
    wrong_key, _, _ = aggressive_first_two("staff", psk=b"not the key")
    for pair in (unknown, wrong_key):
        assert not pair.client.of(ev.Phase1Established) and not pair.gateway.of(ev.Phase1Established)
        (failed,) = pair.client.of(ev.Phase1Failed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert [type(e).__name__ for e in unknown.gateway.events] == [
        type(e).__name__ for e in wrong_key.gateway.events
    ]
    assert [len(d) for _, d in unknown.wire[1:]] == [len(d) for _, d in wrong_key.wire[1:]]  # after our ID


def _main_mode(gateway_psks: dict[str, bytes], client_psk: bytes) -> Pair:
    pair = Pair(EngineConfig(psks=PskTable({"*": client_psk})), EngineConfig(psks=PskTable(gateway_psks)))
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="main")
    pair.client.drain()
    pair.run()
    return pair


def test_main_mode_without_a_key_for_the_address_fails_where_a_wrong_key_does() -> None:
    """Main Mode picks the key by address (the ID is encrypted in message 5): a peer without
    one still gets message 4, and the exchange fails at message 5 as with a wrong key."""
    no_key = _main_mode({"203.0.113.9": PSK}, PSK)
    wrong_key = _main_mode({CLIENT_IP: PSK}, b"not the key")
    for pair in (no_key, wrong_key):
        assert not pair.gateway.of(ev.Phase1Established)
        assert len([d for who, d in pair.wire if who == "g>c"]) >= 2  # message 4 was sent
    assert [len(d) for _, d in no_key.wire] == [len(d) for _, d in wrong_key.wire]
    assert [type(e).__name__ for e in no_key.gateway.events] == [
        type(e).__name__ for e in wrong_key.gateway.events
    ]


def _base_mode(group: str, psk: bytes = PSK) -> Pair:
    gw = EngineConfig(psks=PskTable({"keyid:staff": PSK}), allow_base_mode=True)
    pair = Pair(EngineConfig(psks=PskTable({"*": psk})), gw)
    pair.client.engine.initiate(
        (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base", local_id=Identity.parse(f"keyid:{group}")
    )
    pair.client.drain()
    pair.run()
    pair.advance(2.5)  # the client's grace period after the gateway's unauthenticated refusal
    pair.run()
    return pair


def test_base_mode_answers_an_unknown_group_as_a_known_one_with_a_wrong_key() -> None:
    known = _base_mode("staff")
    assert known.client.of(ev.Phase1Established) and known.gateway.of(ev.Phase1Established)
    unknown, wrong_key = _base_mode("nosuchgroup"), _base_mode("staff", b"not the key")
    answers = {
        name: [
            _shape(_payloads(d)) for who, d in pair.wire if who == "g>c" and not decode_header(d).flags & 1
        ]
        for name, pair in (("known", known), ("unknown", unknown), ("wrong", wrong_key))
    }
    assert answers["known"][:2] == answers["unknown"][:2] == answers["wrong"][:2]  # messages 2 and 4
    for pair in (unknown, wrong_key):
        assert not pair.gateway.of(ev.Phase1Established)
        (failed,) = pair.client.of(ev.Phase1Failed)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert [len(d) for _, d in unknown.wire[3:]] == [len(d) for _, d in wrong_key.wire[3:]]  # after our ID
