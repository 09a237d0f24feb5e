"""ChaCha20-Poly1305 in ESP (RFC 7634), with its appendix A example byte for byte.

Source: RFC 7634 appendix A, "ESP Example": an ICMP echo request from 198.51.100.5 to
192.0.2.5 in tunnel mode, SPI 0x01020304, sequence number 5, IV 10 11 .. 17, KEYMAT
80 81 .. 9f (key) followed by a0 a1 a2 a3 (salt). The appendix shows the whole packet with
its outer IPv4 header; the ESP part is SPI | Seq | IV | ciphertext | tag, assembled below
from the appendix's fields. The Poly1305 tag verifying is itself the check that the hex
was copied right.

ChaCha20-Poly1305 has no IKEv1 transform ID; tunvpn peers use the private ID 250
(EspTransform.CHACHA20_POLY1305_PRIVATE), see docs/protocol.md.
"""

from __future__ import annotations

import pytest

from tests.helpers.esp_helpers import ipv4, sa_pair
from tunvpn.esp import DropReason, EspSuite, InboundSA, OutboundSA, esp_trailer, strip_trailer
from tunvpn.ipsec.algorithms import EspTransform
from tunvpn.ipsec.selectors import TrafficSelector


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


SUITE = EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256)
KEYMAT = h(
    """80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f 90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f
    a0 a1 a2 a3"""
)
SPI = 0x01020304
SEQ = 5
IV = h("10 11 12 13 14 15 16 17")
AAD = h("01 02 03 04 00 00 00 05")  # SPI | Seq (RFC 7634 section 2.1, no ESN)
INNER = h(
    """45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05 c0 00 02 05 08 00 5b 7a 3a 08 00 00
    55 3b ec 10 00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b
    1c 1d 1e 1f 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37"""
)
TRAILER = h("01 02 02 04")  # padding 1 2, Pad Length 2, Next Header 4 (IPv4)
CIPHERTEXT = h(
    """24 03 94 28 b9 7f 41 7e 3c 13 75 3a 4f 05 08 7b 67 c3 52 e6 a7 fa b1 b9 82 d4 66 ef
    40 7a e5 c6 14 ee 80 99 d5 28 44 eb 61 aa 95 df ab 4c 02 f7 2a a7 1e 7c 4c 4f 64 c9
    be fe 2f ac c6 38 e8 f3 cb ec 16 3f ac 46 9b 50 27 73 f6 fb 94 e6 64 da 91 65 b8 28
    29 f6 41 e0"""
)
TAG = h("76 aa a8 26 6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43")
ESP_PACKET = AAD + IV + CIPHERTEXT + TAG


def test_appendix_a_layout() -> None:
    assert len(INNER) == 0x54
    assert esp_trailer(len(INNER), 4, 4) == TRAILER
    assert len(CIPHERTEXT) == len(INNER) + len(TRAILER)


def test_appendix_a_opens_byte_for_byte() -> None:
    engine = SUITE.make_engine(KEYMAT)
    plaintext = engine.open(ESP_PACKET, SEQ)
    assert plaintext == INNER + TRAILER
    assert strip_trailer(plaintext) == (INNER, 4)


def test_appendix_a_seals_byte_for_byte() -> None:
    engine = SUITE.make_engine(KEYMAT)
    assert (
        engine.seal(SPI.to_bytes(4, "big"), SEQ, INNER + esp_trailer(len(INNER), 4, 4), iv=IV) == ESP_PACKET
    )


def test_appendix_a_through_a_tunnel_mode_inbound_sa() -> None:
    sa = InboundSA(
        SPI,
        SUITE,
        KEYMAT,
        remote_ts=TrafficSelector.from_address("198.51.100.5"),
        local_ts=TrafficSelector.from_network("192.0.2.0/24"),
    )
    assert sa.decrypt(ESP_PACKET) == INNER
    assert sa.decrypt(ESP_PACKET) is DropReason.REPLAY
    assert (sa.packets, sa.bytes) == (1, len(INNER))


def test_appendix_a_source_outside_the_peer_selector_is_a_policy_drop() -> None:
    sa = InboundSA(SPI, SUITE, KEYMAT, remote_ts=TrafficSelector.from_address("198.51.100.6"))
    assert sa.decrypt(ESP_PACKET) is DropReason.POLICY
    assert sa.drop_counts() == {DropReason.POLICY: 1}


def test_our_sa_numbers_the_iv_from_the_sequence() -> None:
    """We use the sequence number as the IV (RFC 7634 section 2 allows any unique IV), so our
    packet 5 differs from the appendix only in the IV and what depends on it."""
    outbound = OutboundSA(SPI, SUITE, KEYMAT, seq=SEQ - 1)
    packet = outbound.encrypt(INNER)
    assert isinstance(packet, bytes)
    assert packet[:8] == AAD
    assert packet[8:16] == SEQ.to_bytes(8, "big")
    assert len(packet) == len(ESP_PACKET)
    assert InboundSA(SPI, SUITE, KEYMAT).decrypt(packet) == INNER


@pytest.mark.parametrize("esn", [False, True])
def test_round_trip_with_and_without_esn(esn: bool) -> None:
    outbound, inbound = sa_pair(SUITE, esn=esn)
    packets = [ipv4(payload=bytes(n)) for n in range(0, 70, 7)]
    assert inbound.decrypt_batch(outbound.encrypt_batch(packets)) == packets


def test_a_bad_tag_is_counted_as_bad_icv() -> None:
    sa = InboundSA(SPI, SUITE, KEYMAT)
    assert sa.decrypt(ESP_PACKET[:-1] + bytes([ESP_PACKET[-1] ^ 0x80])) is DropReason.BAD_ICV
    assert sa.decrypt(ESP_PACKET) == INNER  # the forged packet did not move the window
