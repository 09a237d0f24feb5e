"""Base Mode (tunvpn's ISAKMP Base Exchange, docs/protocol.md), attack 4 of issue 12.

* A passive capture of a Base Mode login must not let anyone test a pre-shared key guess
  offline: every value on the wire, with the right key, must not reproduce any
  authentication payload (as it did in the first Base Mode, where HASH_I was keyed by
  prf(PSK, Ni | Nr) alone and sent in the clear).
* The responder keeps no state and does no Diffie-Hellman before its cookie is echoed.
* Base Mode needs an opt-in on the gateway; a client asking for it against a gateway
  without it falls back to Main Mode.
"""

from __future__ import annotations

import hmac
import logging

import pytest

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.ike import crypto, phase1
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import HEADER_SIZE, ExchangeType, HeaderFlag, NotifyType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import (
    IDPayload,
    KEPayload,
    NoncePayload,
    NotifyPayload,
    RawPayload,
    SAPayload,
    decode_header,
    decode_payloads,
)

PSK = b"correct horse battery staple"
HASHES = {1: "md5", 2: "sha1", 4: "sha256", 5: "sha384", 6: "sha512"}  # RFC 2409 appendix A


def gateway(**kw) -> EngineConfig:
    return EngineConfig(psks=PskTable({"keyid:staff": PSK}), allow_base_mode=True, **kw)


def client() -> EngineConfig:
    return EngineConfig(psks=PskTable({"*": PSK}), local_id=Identity.parse("keyid:staff"))


def base_login(gw: EngineConfig | None = None) -> Pair:
    pair = Pair(client(), gw or gateway())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base")
    pair.client.drain()
    pair.run()
    return pair


def _payloads(data: bytes) -> list[RawPayload]:
    header = decode_header(data)
    return decode_payloads(header.next_payload, data[HEADER_SIZE : header.length])


def _cleartext(pair: Pair) -> list[tuple[str, bytes, list[RawPayload]]]:
    out = []
    for who, data in pair.wire:
        if data[:4] == bytes(4):
            data = data[4:]
        if not decode_header(data).flags & HeaderFlag.ENCRYPTION:
            out.append((who, data, _payloads(data)))
    return out


def dictionary_targets(pair: Pair, psk: bytes) -> set[bytes]:
    """Every authentication value a passive listener can compute from the cleartext on the
    wire and one key guess, by each formula a Base or Aggressive Mode hash ever used."""
    clear = _cleartext(pair)

    def every(kind: type, who: str) -> list[RawPayload]:
        return [p for w, _, ps in clear if w == who for p in ps if isinstance(p.payload, kind)]

    cookies = {(d[:8], d[8:16]) for _, d, _ in clear if d[8:16] != bytes(8)}
    transforms = [t for p in every(SAPayload, "g>c") for t in p.payload.proposals[0].transforms]
    hash_name = HASHES[transforms[0].get(2).as_int()]
    prf = lambda key, data: hmac.digest(key, data, hash_name)  # noqa: E731
    targets = set()
    for ni in every(NoncePayload, "c>g"):
        for nr in every(NoncePayload, "g>c"):
            skeyid = prf(psk, ni.payload.data + nr.payload.data)  # RFC 2409 5; first Base Mode's SKEYID_auth
            for cky_i, cky_r in cookies:
                for sai in every(SAPayload, "c>g"):
                    for gxi in every(KEPayload, "c>g"):
                        for gxr in every(KEPayload, "g>c"):
                            gi, gr = gxi.payload.data, gxr.payload.data
                            for idi in every(IDPayload, "c>g"):
                                targets.add(prf(skeyid, gi + gr + cky_i + cky_r + sai.body + idi.body))
                                targets.add(prf(skeyid, gi + cky_i + cky_r + sai.body + idi.body))
                            for idr in every(IDPayload, "g>c"):
                                targets.add(prf(skeyid, gr + gi + cky_r + cky_i + sai.body + idr.body))
                                targets.add(prf(skeyid, gr + cky_r + cky_i + sai.body + idr.body))
    return targets


def on_the_wire(pair: Pair, values: set[bytes]) -> set[bytes]:
    everything = b"".join(d for _, d in pair.wire)
    return {v for v in values if v in everything}


def test_positive_control_aggressive_mode_capture_gives_a_dictionary_target() -> None:
    """The check below can fail: on an Aggressive Mode capture it finds HASH_R."""
    pair = Pair(client(), EngineConfig(psks=PskTable({"keyid:staff": PSK}), allow_aggressive_psk=True))
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="aggressive")
    pair.client.drain()
    pair.run()
    assert pair.client.of(ev.Phase1Established)
    assert on_the_wire(pair, dictionary_targets(pair, PSK))


def test_passive_capture_of_base_mode_gives_no_dictionary_target() -> None:
    pair = base_login()
    c = pair.client.of(ev.Phase1Established)
    assert c and c[0].exchange == "base" and pair.gateway.of(ev.Phase1Established)
    assert dictionary_targets(pair, PSK)  # the capture has what a listener needs to try
    assert not on_the_wire(pair, dictionary_targets(pair, PSK))


# ------------------------------------------------------------------------------ cookie round


def first_message(pair: Pair) -> bytes:
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base")
    pair.client.drain()
    ((data, _, _),) = pair.client.engine.datagrams_to_send()
    return data


def _cookie_of(data: bytes) -> bytes:
    (n,) = [p.payload for p in _payloads(data) if isinstance(p.payload, NotifyPayload)]
    assert n.notify_type == phase1.BASE_MODE_COOKIE
    return n.data


@pytest.fixture
def dh_count(monkeypatch) -> list[int]:
    """Counts Diffie-Hellman key pairs the engines create (the real class does the work)."""
    made = [0]
    real = crypto.DiffieHellman

    def counting(*args, **kw):
        made[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(crypto, "DiffieHellman", counting)
    return made


def test_responder_keeps_no_state_and_does_no_dh_before_its_cookie_is_echoed(dh_count) -> None:
    pair = Pair(client(), gateway())
    gw: IkeEngine = pair.gateway.engine
    data = first_message(pair)
    spoofed_source = ("203.0.113.66", 500)
    for source in ((CLIENT_IP, 500), spoofed_source, spoofed_source):
        gw.receive_datagram(data, source, (GATEWAY_IP, 500), pair.now)
    answers = gw.datagrams_to_send()
    assert len(answers) == 3 and all(decode_header(a).rcookie == bytes(8) for a, _, _ in answers)
    assert not gw.ike_sas() and not gw._half_open
    assert dh_count[0] == 0
    # the cookie is bound to the address it was sent to: echoed from elsewhere it opens nothing
    pair.client.engine.receive_datagram(answers[1][0], (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    ((third, _, _),) = pair.client.engine.datagrams_to_send()
    assert dh_count[0] == 1  # the client's own key pair
    assert _cookie_of(answers[1][0]) != _cookie_of(answers[0][0])
    gw.receive_datagram(third, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    assert not gw.ike_sas() and not gw.datagrams_to_send() and dh_count[0] == 1
    # a made-up cookie does no better
    forged = third.replace(_cookie_of(answers[1][0]), bytes(16))
    gw.receive_datagram(forged, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    assert not gw.ike_sas() and dh_count[0] == 1
    # the client's own cookie, echoed from its address, starts the exchange
    good_third = third.replace(_cookie_of(answers[1][0]), _cookie_of(answers[0][0]))
    gw.receive_datagram(good_third, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    assert len(gw.ike_sas()) == 1 and dh_count[0] == 2


def test_a_stale_cookie_opens_nothing() -> None:
    pair = Pair(client(), gateway())
    gw: IkeEngine = pair.gateway.engine
    gw.receive_datagram(first_message(pair), (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    ((answer, _, _),) = gw.datagrams_to_send()
    pair.client.engine.receive_datagram(answer, (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    ((third, _, _),) = pair.client.engine.datagrams_to_send()
    gw.receive_datagram(third, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now + 2 * phase1.BASE_COOKIE_WINDOW)
    assert not gw.ike_sas()


def test_lost_and_retransmitted_messages_complete() -> None:
    pair = Pair(client(), gateway())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base")
    pair.transfer(pair.client)
    pair.transfer(pair.gateway)  # the cookie answer
    pair.transfer(pair.client)  # message 3
    pair.transfer(pair.gateway, drop=True)  # message 4 lost
    pair.advance(1.5)  # the client sends message 3 again: the gateway answers from its state
    pair.run()
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)
    assert not pair.gateway.of(ev.ProtocolError)


def test_base_mode_through_a_nat_floats_to_4500() -> None:
    pair = Pair(client(), gateway())
    pair.nat = True
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base")
    pair.client.drain()
    pair.run()
    c, g = pair.client.of(ev.Phase1Established)[0], pair.gateway.of(ev.Phase1Established)[0]
    assert c.exchange == "base" and c.nat_local and g.nat_remote
    assert c.local[1] == 4500


# ------------------------------------------------------------------------------ opt-in


def test_base_mode_is_off_by_default_and_the_client_falls_back_to_main_mode() -> None:
    pair = base_login(EngineConfig(psks=PskTable({"*": PSK})))
    c, g = pair.client.of(ev.Phase1Established), pair.gateway.of(ev.Phase1Established)
    assert c and g and c[0].exchange == g[0].exchange == "main"
    refused = pair.gateway.of(ev.ProtocolError)
    assert refused and refused[0].notify == NotifyType.UNSUPPORTED_EXCHANGE_TYPE
    assert decode_header(pair.wire[0][1]).exchange == ExchangeType.BASE


def test_the_first_base_mode_is_not_answered() -> None:
    """A first message of the old Base Mode (SA, Ni, IDii, no v2 vendor ID) gets a refusal."""
    pair = Pair(client(), gateway())
    data = first_message(pair)
    old_style = data.replace(bytes.fromhex("4037cfa7e4a81ece25ac81bd9bd84f6a"), bytes(16))
    pair.gateway.engine.receive_datagram(old_style, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    ((answer, _, _),) = pair.gateway.engine.datagrams_to_send()
    assert decode_header(answer).exchange == ExchangeType.INFORMATIONAL
    assert not pair.gateway.engine.ike_sas()


def test_gateway_file_option_enables_base_mode_with_a_warning(tmp_path, caplog) -> None:
    from tests.helpers.gwconfig import MINIMAL, load_config, private_file

    private_file(tmp_path / "gw.psk", "a-long-random-group-secret-for-the-test\n")
    private_file(tmp_path / "users", "alice:pw\n")
    assert not load_config(tmp_path, MINIMAL).allow_base_mode
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nallow_base_mode = true')
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.gateway"):
        assert load_config(tmp_path, text).allow_base_mode
    assert [r for r in caplog.records if "allow_base_mode" in r.getMessage()]
