"""ESP tunnel mode (RFC 4303) through our SAs: round trips of every transform with and
without ESN, the trailer and padding, drops by reason, lifetimes, and the AES-CBC and HMAC
known answers.

Known-answer sources, each checked byte for byte:
- RFC 3602 section 4, cases 5-8: ESP packets with AES-128-CBC and no integrity (cases 7
  and 8 are tunnel mode with an IPv4 inner packet, 5 and 6 transport mode with ICMP).
  Transcribed from public copies of the RFC's test cases.
- RFC 4868 section 2.7.2: HMAC-SHA-256-128 AUTH256-1..4, HMAC-SHA-384-192 AUTH384-1,
  HMAC-SHA-512-256 AUTH512-1..2 (full HMACs as transcribed; the ICV is the left half).
- RFC 2404 section 3 test case 1 (RFC 2202's first HMAC-SHA-1 case): HMAC-SHA-1-96.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import make_dataclass

import pytest

from tests.helpers.esp_helpers import ALL_SUITES, GCM128, ipv4, ipv6, make_keys, sa_pair, udp
from tunvpn.esp import (
    DropReason,
    EspSuite,
    InboundSA,
    Lifetime,
    LifetimeTrigger,
    NegotiatedChild,
    OutboundSA,
    SaHardExpired,
    SaSoftExpired,
    decrypt_batch,
    encrypt_batch,
    esp_trailer,
    sa_pair_from_child,
    strip_trailer,
)
from tunvpn.esp.constants import SEQ32_MAX, Direction
from tunvpn.ike.events import ChildSAEstablished
from tunvpn.ipsec.algorithms import AuthAlgorithm, EncapsulationMode, EspTransform
from tunvpn.ipsec.selectors import TrafficSelector


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def suite_id(suite: EspSuite) -> str:
    return suite.name


# ---------------------------------------------------------------------------- round trips

SIZES = [20, 21, 22, 23, 40, 64, 511, 512, 1400, 1500]


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_round_trip_per_packet_and_batch(suite: EspSuite, esn: bool) -> None:
    outbound, inbound = sa_pair(suite, esn=esn)
    packets = [ipv4(payload=bytes(n - 20)) for n in SIZES] + [ipv6(payload=b"v6" * 30)]
    sealed_one = [outbound.encrypt(p) for p in packets]
    sealed_batch = outbound.encrypt_batch(packets)
    for packet, esp in zip(packets, sealed_one):
        assert isinstance(esp, bytes)
        pad = -(len(packet) + 2) % suite.align
        assert len(esp) == 8 + suite.iv_len + len(packet) + pad + 2 + suite.icv_len
    assert [inbound.decrypt(p) for p in sealed_one] == packets
    assert inbound.decrypt_batch(sealed_batch) == packets
    assert outbound.seq == 2 * len(packets)
    assert inbound.packets == 2 * len(packets)
    assert inbound.bytes == outbound.bytes == 2 * sum(map(len, packets))
    assert inbound.drop_counts() == outbound.drop_counts() == {}


@pytest.mark.parametrize("suite", ALL_SUITES, ids=suite_id)
def test_memoryview_and_bytearray_packets(suite: EspSuite) -> None:
    outbound, inbound = sa_pair(suite)
    packet = ipv4(payload=b"abc")
    buffer = bytearray(b"\x00" * 5 + packet)
    views = [memoryview(buffer)[5:], bytearray(packet), packet]
    sealed = [*outbound.encrypt_batch(views), outbound.encrypt(memoryview(packet))]
    wire = bytearray().join(sealed)
    datagrams = []
    offset = 0
    for esp in sealed:
        datagrams.append(memoryview(wire)[offset : offset + len(esp)])
        offset += len(esp)
    assert inbound.decrypt_batch(datagrams) == [packet] * 4  # type: ignore[arg-type]


def test_module_level_batch_functions() -> None:
    outbound, inbound = sa_pair()
    packets = [ipv4(payload=bytes([n])) for n in range(10)]
    assert decrypt_batch(inbound, encrypt_batch(outbound, packets)) == packets


def test_sequence_numbers_start_at_one_and_are_consecutive() -> None:
    outbound, _ = sa_pair()
    sealed = [*outbound.encrypt_batch([ipv4()] * 3), outbound.encrypt(ipv4())]
    assert [int.from_bytes(p[4:8], "big") for p in sealed] == [1, 2, 3, 4]  # type: ignore[index]


def test_cbc_ivs_are_fresh_per_packet() -> None:
    outbound, inbound = sa_pair(ALL_SUITES[5])
    sealed = outbound.encrypt_batch([ipv4()] * 50) + [outbound.encrypt(ipv4()) for _ in range(50)]
    assert len({p[8:24] for p in sealed}) == 100  # type: ignore[index]
    assert len(inbound.decrypt_batch(sealed)) == 100  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- trailer


@pytest.mark.parametrize("align", [4, 16])
def test_trailer_pads_with_1_2_3(align: int) -> None:
    for length in range(0, 40):
        trailer = esp_trailer(length, 41, align)
        pad = trailer[-2]
        assert (length + len(trailer)) % align == 0
        assert trailer == bytes(range(1, pad + 1)) + bytes((pad, 41))
        assert strip_trailer(b"p" * length + trailer) == (b"p" * length, 41)


def test_strip_trailer_rejects_bad_padding() -> None:
    assert strip_trailer(b"\x01\x02\x02\x04") == (b"", 4)
    assert strip_trailer(b"\x01\x03\x02\x04") is None  # wrong pad byte
    assert strip_trailer(b"\x01\x02\x05\x04") is None  # pad length overruns
    assert strip_trailer(b"\x04") is None


# ---------------------------------------------------------------------------- drops


def sealed_with(outbound: OutboundSA, seq: int, payload_and_trailer: bytes) -> bytes:
    """A packet with a trailer of our choosing, correctly authenticated."""
    return outbound.engine.seal(outbound.spi.to_bytes(4, "big"), seq, payload_and_trailer)


@pytest.mark.parametrize("suite", [GCM128, ALL_SUITES[5]], ids=suite_id)
def test_drops_by_reason(suite: EspSuite) -> None:
    key, auth = make_keys(suite)
    outbound = OutboundSA(0x1234, suite, key, auth)
    selector = TrafficSelector.from_network("10.1.0.0/16")
    align = suite.align
    inner = ipv4()
    good = outbound.encrypt(inner)
    assert isinstance(good, bytes)
    trailer = esp_trailer(len(inner), 4, align)
    assert trailer[-2] > 0  # there are pad bytes to corrupt
    cases = [
        (good[:20], DropReason.MALFORMED),  # shorter than header + ICV
        (good[:-1], DropReason.BAD_ICV if suite.aead else DropReason.MALFORMED),
        (good[:-1] + bytes([good[-1] ^ 1]), DropReason.BAD_ICV),  # tampered ICV
        (good[:30] + bytes([good[30] ^ 0x80]) + good[31:], DropReason.BAD_ICV),  # tampered body
        (good, None),  # accepted
        (good, DropReason.REPLAY),
        (sealed_with(outbound, 100, inner + b"\xee" + trailer[1:]), DropReason.PADDING),
        (sealed_with(outbound, 101, inner + trailer[:-2] + bytes([250, 4])), DropReason.PADDING),
        (sealed_with(outbound, 102, esp_trailer(0, 59, align)), DropReason.DUMMY),
        (sealed_with(outbound, 103, inner + esp_trailer(20, 17, align)), DropReason.MALFORMED),
        (sealed_with(outbound, 104, inner + esp_trailer(20, 41, align)), DropReason.POLICY),
        (sealed_with(outbound, 105, b"\x45" + esp_trailer(1, 4, align)), DropReason.MALFORMED),
        (sealed_with(outbound, 106, ipv6() + esp_trailer(40, 4, align)), DropReason.MALFORMED),
        (sealed_with(outbound, 0, inner + trailer), DropReason.REPLAY),  # sequence number 0
        (sealed_with(outbound, 107, ipv4(src="10.9.0.1") + trailer), DropReason.POLICY),
    ]
    expected: dict[DropReason, int] = {}
    for _, reason in cases:
        if reason is not None:
            expected[reason] = expected.get(reason, 0) + 1
    one_by_one = InboundSA(0x1234, suite, key, auth, remote_ts=selector)
    for packet, reason in cases:
        result = one_by_one.decrypt(packet)
        assert result == (inner if reason is None else reason), (packet.hex(), result, reason)
    assert one_by_one.drop_counts() == expected
    # The same packets as one batch: the same verdicts, only the good one comes out.
    batch = InboundSA(0x1234, suite, key, auth, remote_ts=selector)
    assert batch.decrypt_batch([packet for packet, _ in cases]) == [inner]
    assert batch.drop_counts() == expected
    assert (batch.packets, batch.bytes) == (1, len(inner))


def test_outbound_drops_non_ip_and_counts() -> None:
    outbound, _ = sa_pair()
    assert outbound.encrypt(b"") is DropReason.MALFORMED
    assert outbound.encrypt(b"\x15hello") is DropReason.MALFORMED
    assert outbound.encrypt_batch([b"", ipv4(), b"\x00" * 30, ipv4()]) != []
    assert outbound.seq == 2  # dropped packets take no sequence number
    assert outbound.drop_counts() == {DropReason.MALFORMED: 4}


def test_drop_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from tunvpn.esp import DropLog

    outbound, inbound = sa_pair()
    good = outbound.encrypt(ipv4())
    assert isinstance(good, bytes)
    forged = good[:-1] + bytes([good[-1] ^ 1])
    log = DropLog(rate=1.0, burst=3)
    with caplog.at_level(logging.INFO, logger="tunvpn.esp.ratelimit"):
        inbound.decrypt_batch([forged] * 1000, log=log, now=10.0)
        assert len(caplog.records) == 3
        inbound.decrypt(forged, log, now=12.0)
    assert len(caplog.records) == 4
    assert "997 not logged: BAD_ICV 997" in caplog.records[-1].getMessage()
    assert "SPI 0x00001234" in caplog.records[-1].getMessage()
    assert inbound.drop_counts() == {DropReason.BAD_ICV: 1001}
    assert inbound.decrypt(good) == ipv4()


# ---------------------------------------------------------------------------- lifetimes


def drain(sa: OutboundSA | InboundSA) -> list[object]:
    events = []
    while (event := sa.next_event()) is not None:
        events.append(event)
    return events


def test_packet_lifetime_soft_then_hard_outbound_and_inbound() -> None:
    lifetime = Lifetime(packets=100, soft_fraction=0.9)
    outbound, inbound = sa_pair(lifetime=lifetime)
    sealed = outbound.encrypt_batch([ipv4()] * 89)
    assert drain(outbound) == []
    sealed += outbound.encrypt_batch([ipv4()] * 5)  # crosses 90 inside the batch
    assert drain(outbound) == [SaSoftExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.PACKETS)]
    assert outbound.soft_expired and not outbound.hard_expired
    sealed += outbound.encrypt_batch([ipv4()] * 10)  # only 6 more fit
    assert len(sealed) == 100
    assert drain(outbound) == [SaHardExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.PACKETS)]
    assert outbound.encrypt(ipv4()) is DropReason.EXPIRED
    assert outbound.drop_counts() == {DropReason.EXPIRED: 5}
    assert len(inbound.decrypt_batch(sealed[:95])) == 95
    assert drain(inbound) == [SaSoftExpired(0x1234, Direction.INBOUND, LifetimeTrigger.PACKETS)]
    assert [inbound.decrypt(p) for p in sealed[95:]] == [ipv4()] * 5
    assert drain(inbound) == [SaHardExpired(0x1234, Direction.INBOUND, LifetimeTrigger.PACKETS)]
    late = OutboundSA(0x1234, GCM128, bytes(20), lifetime=lifetime, seq=100)
    assert late.hard_expired  # a counter already at the limit starts expired


def test_byte_lifetime() -> None:
    outbound, inbound = sa_pair(lifetime=Lifetime(kilobytes=10, soft_fraction=0.5))
    packet = ipv4(payload=bytes(1004))  # 1024 octets
    sealed = [outbound.encrypt(packet) for _ in range(4)]
    assert drain(outbound) == []
    sealed.append(outbound.encrypt(packet))  # 5120 octets: half of 10 KiB
    assert drain(outbound) == [SaSoftExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.BYTES)]
    sealed += outbound.encrypt_batch([packet] * 10)
    assert drain(outbound) == [SaHardExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.BYTES)]
    assert len(sealed) == 10
    assert len(inbound.decrypt_batch(sealed)) == 10  # type: ignore[arg-type]
    assert [type(e) for e in drain(inbound)] == [SaSoftExpired, SaHardExpired]


def test_time_lifetime_is_polled() -> None:
    outbound = OutboundSA(0x555, GCM128, bytes(20), lifetime=Lifetime(seconds=100), now=1000.0)
    assert outbound.deadline() == pytest.approx(1090.0)
    outbound.poll(1089.0)
    assert drain(outbound) == []
    outbound.poll(1090.0)
    assert drain(outbound) == [SaSoftExpired(0x555, Direction.OUTBOUND, LifetimeTrigger.TIME)]
    assert outbound.deadline() == pytest.approx(1100.0)
    assert isinstance(outbound.encrypt(ipv4()), bytes)  # soft: still works
    outbound.poll(1100.0)
    assert drain(outbound) == [SaHardExpired(0x555, Direction.OUTBOUND, LifetimeTrigger.TIME)]
    assert outbound.deadline() is None
    assert outbound.encrypt(ipv4()) is DropReason.EXPIRED


def test_sequence_space_without_esn_never_wraps() -> None:
    """RFC 4303 section 3.3.3: the last number is 2^32 - 1; then the SA is dead, and the
    soft signal came at 90 % of the space."""
    outbound, _ = sa_pair()
    soft = int(SEQ32_MAX * 0.9)
    outbound.seq = soft - 2
    outbound.encrypt_batch([ipv4()] * 4)
    assert drain(outbound) == [SaSoftExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.SEQUENCE)]
    outbound.seq = SEQ32_MAX - 3
    sealed = outbound.encrypt_batch([ipv4()] * 5)
    assert [int.from_bytes(p[4:8], "big") for p in sealed] == [SEQ32_MAX - 2, SEQ32_MAX - 1, SEQ32_MAX]
    assert drain(outbound) == [SaHardExpired(0x1234, Direction.OUTBOUND, LifetimeTrigger.SEQUENCE)]
    assert outbound.encrypt(ipv4()) is DropReason.EXPIRED
    assert outbound.drop_counts() == {DropReason.EXPIRED: 3}


def test_esn_sa_goes_past_2_32() -> None:
    outbound, _ = sa_pair(esn=True)
    outbound.seq = SEQ32_MAX - 1
    sealed = outbound.encrypt_batch([ipv4()] * 3)
    assert len(sealed) == 3
    assert outbound.seq == SEQ32_MAX + 2
    assert drain(outbound) == []


# ---------------------------------------------------------------------------- keys and IKE


def test_suite_validation() -> None:
    with pytest.raises(ValueError):
        EspSuite(EspTransform.AES_GCM_8, 128)
    with pytest.raises(ValueError):
        EspSuite(EspTransform.AES_GCM_16, 128, AuthAlgorithm.HMAC_SHA2_256)
    with pytest.raises(ValueError):
        EspSuite(EspTransform.AES_CBC, 100, AuthAlgorithm.HMAC_SHA2_256)
    with pytest.raises(ValueError):
        EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_MD5)
    with pytest.raises(ValueError):
        OutboundSA(0x1234, GCM128, bytes(16))  # the salt is missing
    with pytest.raises(ValueError):
        OutboundSA(0x12, GCM128, bytes(20))  # SPIs 1-255 are reserved


def test_repr_shows_no_key_material() -> None:
    key = bytes(range(100, 120))
    outbound = OutboundSA(0x1234, GCM128, key)
    outbound.encrypt(ipv4())
    for text in (repr(outbound), repr(outbound.engine), repr(InboundSA(0x1234, GCM128, key))):
        assert key.hex() not in text and "100, 101" not in text


def child_event(**changes: object) -> ChildSAEstablished:
    fields: dict[str, object] = dict(
        sa_id=bytes(16),
        spi_in=0xC0DE0001,
        spi_out=0xBEEF0002,
        transform=EspTransform.AES_CBC,
        key_length=256,
        integrity=AuthAlgorithm.HMAC_SHA2_256,
        enc_key_in=bytes(range(32)),
        auth_key_in=bytes(range(32, 64)),
        enc_key_out=bytes(range(32)),
        auth_key_out=bytes(range(32, 64)),
        local_ts=TrafficSelector.from_address("10.99.0.7"),
        remote_ts=TrafficSelector.any(4),
        lifetime_seconds=3600,
        lifetime_kilobytes=0,
        encapsulation=EncapsulationMode.UDP_TUNNEL,
        local=("192.0.2.10", 4500),
        remote=("198.51.100.1", 4500),
        pfs_group=None,
        role="initiator",
    )
    fields.update(changes)
    return ChildSAEstablished(**fields)  # type: ignore[arg-type]


def test_sa_pair_from_a_quick_mode_result() -> None:
    inbound, outbound = sa_pair_from_child(child_event(), now=50.0)
    assert (inbound.spi, outbound.spi) == (0xC0DE0001, 0xBEEF0002)
    assert outbound.udp_encap and outbound.peer == ("198.51.100.1", 4500)
    assert inbound.lifetime.seconds == 3600 and inbound.lifetime.kilobytes is None
    assert outbound.deadline() == pytest.approx(50.0 + 3240.0)
    # Same keys both ways in this event, so our own outbound packets open inbound once the
    # SPI matches: build a twin outbound with the inbound SPI.
    twin = OutboundSA(inbound.spi, inbound.suite, bytes(range(32)), bytes(range(32, 64)))
    packet = ipv4(src="8.8.8.8", dst="10.99.0.7", payload=udp(53, 4000, b"answer"))
    assert inbound.decrypt(twin.encrypt(packet)) == packet  # type: ignore[arg-type]
    wrong_dst = ipv4(src="8.8.8.8", dst="10.99.0.8")
    assert inbound.decrypt(twin.encrypt(wrong_dst)) is DropReason.POLICY  # type: ignore[arg-type]


def test_sa_pair_from_a_value_with_only_the_fields_esp_names() -> None:
    """esp/ imports nothing of ike/: it reads a child SA through esp.NegotiatedChild, so a value
    with only those fields (no sa_id, role, pfs_group, ...) builds the same pair as the event.
    Fails if sa_pair_from_child reads a field the Protocol does not name."""
    # properties, or getset descriptors when tunvpn.esp.sa runs compiled (mypyc)
    names = [
        name
        for name, attr in vars(NegotiatedChild).items()
        if not name.startswith("_") and inspect.isdatadescriptor(attr)
    ]
    assert "esn" in names and "spi_in" in names
    event = child_event()
    value = make_dataclass("Child", names, frozen=True)(**{name: getattr(event, name) for name in names})
    assert not hasattr(value, "sa_id") and not hasattr(value, "role")
    pairs = [sa_pair_from_child(child, now=50.0) for child in (event, value)]
    (a_in, a_out), (b_in, b_out) = pairs
    for a, b in ((a_in, b_in), (a_out, b_out)):
        assert (b.spi, b.suite, b.peer, b.esn, b.lifetime) == (a.spi, a.suite, a.peer, a.esn, a.lifetime)
    assert b_out.udp_encap == a_out.udp_encap
    twin = OutboundSA(b_in.spi, b_in.suite, bytes(range(32)), bytes(range(32, 64)))
    packet = ipv4(src="8.8.8.8", dst="10.99.0.7", payload=udp(53, 4000, b"answer"))
    assert b_in.decrypt(twin.encrypt(packet)) == packet  # type: ignore[arg-type]
    assert b_in.decrypt(twin.encrypt(ipv4(src="8.8.8.8", dst="10.99.0.8"))) is DropReason.POLICY  # type: ignore[arg-type]


def test_sa_pair_from_child_with_chacha_and_gcm() -> None:
    chacha = child_event(
        transform=EspTransform.CHACHA20_POLY1305_PRIVATE,
        key_length=None,
        integrity=None,
        enc_key_in=bytes(36),
        auth_key_in=b"",
        enc_key_out=bytes(36),
        auth_key_out=b"",
        encapsulation=EncapsulationMode.TUNNEL,
    )
    inbound, outbound = sa_pair_from_child(chacha, now=0.0)
    assert inbound.suite.name == "chacha20poly1305" and not outbound.udp_encap
    gcm = child_event(
        transform=EspTransform.AES_GCM_16,
        integrity=None,
        enc_key_in=bytes(36),
        auth_key_in=b"",
        enc_key_out=bytes(36),
        auth_key_out=b"",
    )
    assert sa_pair_from_child(gcm, now=0.0)[0].suite.name == "aes256gcm16"


@pytest.mark.parametrize(
    "transform", [EspTransform.AES_GCM_16, EspTransform.CHACHA20_POLY1305_PRIVATE], ids=["gcm", "chacha"]
)
def test_sa_pair_from_child_with_esn_takes_the_careful_path(transform: EspTransform) -> None:
    """ESN negotiated in Quick Mode (RFC 4304) reaches both SAs; the inlined AEAD loop works
    on 32-bit numbers only, so a GRO buffer goes back whole and ``decrypt_batch`` opens it."""
    aead = dict(
        transform=transform,
        key_length=256,
        integrity=None,
        enc_key_in=bytes(range(36)),
        auth_key_in=b"",
        enc_key_out=bytes(range(36)),
        auth_key_out=b"",
    )
    inbound, outbound = sa_pair_from_child(child_event(esn=True, **aead), now=0.0)
    assert inbound.esn and outbound.esn and not inbound._fast(1, 100)
    assert not sa_pair_from_child(child_event(esn=True, **aead), now=0.0, esn=False)[0].esn
    assert not sa_pair_from_child(child_event(**aead), now=0.0)[0].esn
    # same keys both ways in this event: a twin outbound with the inbound SPI feeds the inbound
    twin = OutboundSA(inbound.spi, inbound.suite, bytes(range(36)), esn=True)
    packets = [ipv4(src="8.8.8.8", dst="10.99.0.7", payload=bytes([i]) * 64) for i in range(4)]
    twin.seq = 1 << 31
    assert inbound.decrypt_batch(twin.encrypt_batch(packets[:1])) == packets[:1]
    twin.seq = SEQ32_MAX - 1
    sealed = twin.encrypt_batch(packets)  # 2^32 - 1 .. 2^32 + 2: low halves 0xffffffff, 0, 1, 2
    assert [int.from_bytes(p[4:8], "big") for p in sealed] == [SEQ32_MAX, 0, 1, 2]
    assert inbound.decrypt_buffer(b"".join(sealed), len(sealed[0]), []) == sealed
    assert inbound.decrypt_batch(sealed) == packets
    assert inbound.drop_counts() == {}
    # a 32-bit receiver of the same keys cannot open them: the high half is in the ICV
    plain_in = sa_pair_from_child(child_event(**aead), now=0.0)[0]
    assert plain_in.decrypt_batch(sealed[2:]) == []  # (0 is never a valid 32-bit number)
    assert plain_in.drop_counts() == {DropReason.BAD_ICV: 2}


def test_sa_pair_from_child_refuses_cbc_without_integrity() -> None:
    with pytest.raises(ValueError, match="without integrity"):
        sa_pair_from_child(child_event(integrity=None, auth_key_in=b"", auth_key_out=b""), now=0.0)


# ---------------------------------------------------------------------------- RFC 3602

RFC3602_KEY_56 = h("90d382b410eeba7ad938c46cec1a82bf")
RFC3602_KEY_78 = h("0123456789abcdef0123456789abcdef")
RFC3602 = [
    # (name, key, spi, seq, next header, payload, ESP packet)
    (
        "case5-icmp-transport",
        RFC3602_KEY_56,
        0x4321,
        1,
        1,
        "08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f3031323334353637",
        "0000432100000001e96e8c08ab465763fd098d45dd3ff893f663c25d325c18c6a9453e194e120849"
        "a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52775b07d1db34ed9c"
        "538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6",
    ),
    (
        "case6-icmp-transport",
        RFC3602_KEY_56,
        0x4321,
        8,
        1,
        "0800b5e8a80a0500a69c083d0b660e00777777777777777777777777",
        "000043210000000869d08df7d203329db093fc4924e5bd80f51995881ec4e0c4488987ce742e8109"
        "689bb379d2d750c0d915dca346a89f75",
    ),
    (
        "case7-tunnel",
        RFC3602_KEY_78,
        0x8765,
        2,
        4,
        "45000054090400004001f988c0a87b03c0a87bc808009f76a90a0100b49c083d02a2040008090a0b"
        "0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30313233"
        "34353637",
        "0000876500000002f4e765244f6407adf13dc1380f673f37773b5241a4c449225e4f3ce5ed611b0c"
        "237ca96cf74a93013c1b0ea1a0cf70f8e4ecaec78ac53aad7a0f022b859243c647752e94a859352b"
        "8a4d4d2decd136e5c177f132ad3fbfb2201ac9904c74ee0a109e0ca1e4dfe9d5a100b842f1c22f0d",
    ),
    (
        "case8-tunnel",
        RFC3602_KEY_78,
        0x8765,
        5,
        4,
        "45000044090c00004001f990c0a87b03c0a87bc80800d63caa0a0200c69c083da3de0300ffffffff"
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "000087650000000585d47224b5f3dd5d2101d4ea8dffab2215b92683819596a8047232cc00f7048f"
        "e45318e11f8a0f62ede3c3fc61203bb50f980a08c9843fd3a1b06d5c07ff9639b7eb7dfb3512e5de"
        "435e7207ed971ef3d2726d9b5ef6affc6d17a0decbb13892",
    ),
]
CBC_NULL = EspSuite(EspTransform.AES_CBC, 128, None)


@pytest.mark.parametrize("case", RFC3602, ids=lambda c: c[0])
def test_rfc3602_esp_examples(case: tuple[str, bytes, int, int, int, str, str]) -> None:
    _, key, spi, seq, next_header, payload_hex, packet_hex = case
    payload, packet = h(payload_hex), h(packet_hex)
    engine = CBC_NULL.make_engine(key)
    plaintext = engine.open(packet, seq)
    assert plaintext is not None
    assert strip_trailer(plaintext) == (payload, next_header)
    assert plaintext == payload + esp_trailer(len(payload), next_header, 16)
    assert engine.seal(spi.to_bytes(4, "big"), seq, plaintext, iv=packet[8:24]) == packet
    sa = InboundSA(spi, CBC_NULL, key)
    # Tunnel-mode cases give back the inner IPv4 packet; transport-mode ones are not ours.
    assert sa.decrypt(packet) == (payload if next_header == 4 else DropReason.MALFORMED)


# ---------------------------------------------------------------------------- RFC 4868 / 2404

HMAC_VECTORS = [
    # (name, algorithm, key, data, full HMAC); the ICV is its left half (RFC 4868 2.7.2)
    ("AUTH256-1", AuthAlgorithm.HMAC_SHA2_256, "0b" * 32, b"Hi There".hex(),
     "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"),
    ("AUTH256-2", AuthAlgorithm.HMAC_SHA2_256, b"Jefe".hex() * 8, b"what do ya want for nothing?".hex(),
     "167f928588c5cc2eef8e3093caa0e87c9ff566a14794aa61648d81621a2a40c6"),
    ("AUTH256-3", AuthAlgorithm.HMAC_SHA2_256, "aa" * 32, "dd" * 50,
     "cdcb1220d1ecccea91e53aba3092f962e549fe6ce9ed7fdc43191fbde45c30b0"),
    ("AUTH256-4", AuthAlgorithm.HMAC_SHA2_256, bytes(range(1, 33)).hex(), "cd" * 50,
     "372efcf9b40b35c2115b1346903d2ef42fced46f0846e7257bb156d3d7b30d3f"),
    ("AUTH384-1", AuthAlgorithm.HMAC_SHA2_384, "0b" * 48, b"Hi There".hex(),
     "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc4c5df61d5b3297b4fb68dab9f1b582c2"),
    ("AUTH512-1", AuthAlgorithm.HMAC_SHA2_512, "0b" * 64, b"Hi There".hex(),
     "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"
     "ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b"),
    ("AUTH512-2", AuthAlgorithm.HMAC_SHA2_512, b"Jefe".hex() * 16, b"what do ya want for nothing?".hex(),
     "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"
     "6aa334ae9fb9afc2184932d8695e397bfa0ffb93466cfcceaae38c833b7dba38"),
    ("RFC2404-1", AuthAlgorithm.HMAC_SHA1, "0b" * 20, b"Hi There".hex(),
     "b617318655057264e28bc0b6fb378c8ef146be00"),
]  # fmt: skip


@pytest.mark.parametrize("vector", HMAC_VECTORS, ids=lambda v: v[0])
def test_truncated_hmac_icv(vector: tuple[str, AuthAlgorithm, str, str, str]) -> None:
    _, algorithm, key_hex, data_hex, full_hex = vector
    suite = EspSuite(EspTransform.AES_CBC, 128, algorithm)
    engine = suite.make_engine(bytes(16), h(key_hex))
    icv = engine.icv(h(data_hex))
    assert (
        len(icv)
        == {
            AuthAlgorithm.HMAC_SHA1: 12,
            AuthAlgorithm.HMAC_SHA2_256: 16,
            AuthAlgorithm.HMAC_SHA2_384: 24,
            AuthAlgorithm.HMAC_SHA2_512: 32,
        }[algorithm]
    )
    assert icv == h(full_hex)[: len(icv)]


def test_cbc_icv_covers_header_iv_ciphertext_and_esn_high_half() -> None:
    suite = EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
    auth = bytes(range(32))
    engine = suite.make_engine(bytes(16), auth, esn=True)
    seq = (3 << 32) | 9
    packet = engine.seal(b"\x00\x00\x12\x34", seq, ipv4() + esp_trailer(20, 4, 16))
    expected = suite.make_engine(bytes(16), auth).icv(packet[:-16], (3).to_bytes(4, "big"))
    assert packet[-16:] == expected  # RFC 4303 section 2.2.1: Seq-high after the payload
    assert packet[4:8] == (9).to_bytes(4, "big")
    assert engine.open(packet, seq) is not None
    assert engine.open(packet, (4 << 32) | 9) is None
