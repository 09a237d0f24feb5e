"""The ISAKMP codec (RFC 2408 section 3): round trips, known bytes and malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunvpn.ike.constants import (
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    Phase1Attr,
    ProtocolId,
)
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ike.messages import (
    AttributePayload,
    CertPayload,
    CertRequestPayload,
    DataAttribute,
    DeletePayload,
    HashPayload,
    Header,
    IDPayload,
    KEPayload,
    Message,
    NatDPayload,
    NatOAPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SAPayload,
    SignaturePayload,
    Transform,
    UnknownPayload,
    VendorIDPayload,
    decode_attributes,
    decode_header,
    decode_message,
    decode_payloads,
    encode_attributes,
    encode_header,
    encode_message,
    encode_payload,
    encode_payloads,
    payload_type_of,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
blob = st.binary(max_size=64)

attributes = st.builds(DataAttribute, st.integers(0, 0x7FFF), st.one_of(u16, st.binary(max_size=24)))
transforms = st.builds(Transform, u8, u8, st.lists(attributes, max_size=5).map(tuple))


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    protocol = draw(st.sampled_from([1, 2, 3, 4, 7]))
    size = {2: 4, 3: 4, 4: draw(st.sampled_from([2, 4]))}.get(protocol, draw(st.sampled_from([0, 4, 8, 16])))
    return Proposal(
        draw(u8),
        protocol,
        draw(st.binary(min_size=size, max_size=size)),
        tuple(draw(st.lists(transforms, min_size=1, max_size=4))),
    )


sa_payloads = st.builds(SAPayload, st.lists(proposals(), min_size=1, max_size=4).map(tuple))


@st.composite
def delete_payloads(draw: st.DrawFn) -> DeletePayload:
    protocol = draw(st.sampled_from([1, 2, 3, 4]))
    size = draw(st.sampled_from([16, 4, 2])) if draw(st.booleans()) else (16 if protocol == 1 else 4)
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), min_size=1, max_size=5))
    return DeletePayload(protocol, tuple(spis), draw(st.sampled_from([0, 1])))


@st.composite
def nat_oa_payloads(draw: st.DrawFn) -> NatOAPayload:
    id_type = draw(st.sampled_from([IdType.IPV4_ADDR, IdType.IPV6_ADDR]))
    size = 4 if id_type == IdType.IPV4_ADDR else 16
    return NatOAPayload(int(id_type), draw(st.binary(min_size=size, max_size=size)), draw(st.booleans()))


payloads: st.SearchStrategy[Payload] = st.one_of(
    sa_payloads,
    st.builds(KEPayload, blob),
    st.builds(IDPayload, u8, blob, u8, u16),
    st.builds(CertPayload, u8, blob),
    st.builds(CertRequestPayload, u8, blob),
    st.builds(HashPayload, blob),
    st.builds(SignaturePayload, blob),
    st.builds(NoncePayload, blob),
    st.builds(NotifyPayload, u16, u8, st.binary(max_size=16), blob, st.sampled_from([0, 1])),
    delete_payloads(),
    st.builds(VendorIDPayload, blob),
    st.builds(AttributePayload, u8, u16, st.lists(attributes, max_size=6).map(tuple)),
    st.builds(NatDPayload, blob, st.booleans()),
    nat_oa_payloads(),
    st.builds(UnknownPayload, st.integers(128, 255).filter(lambda t: t not in (130, 131)), blob),
)

cookies = st.binary(min_size=8, max_size=8)


# --------------------------------------------------------------------------- round trips


@given(st.lists(attributes, max_size=10))
def test_attributes_round_trip(attrs: list[DataAttribute]) -> None:
    assert decode_attributes(encode_attributes(attrs)) == tuple(attrs)


@given(payloads)
def test_payload_round_trip(p: Payload) -> None:
    raw = encode_payload(p, 0)
    [rp] = decode_payloads(payload_type_of(p), raw)
    assert rp.payload == p
    assert rp.raw == raw
    assert rp.body == raw[4:]


@given(st.lists(payloads, max_size=6), cookies, cookies, u8, st.sampled_from([0, 2, 4, 6]), u32)
def test_message_round_trip(
    ps: list[Payload], ic: bytes, rc: bytes, exchange: int, flags: int, mid: int
) -> None:
    m = Message(ic, rc, exchange, flags, mid, tuple(ps))
    data = encode_message(m)
    assert decode_message(data) == m
    h = decode_header(data)
    assert h.length == len(data)
    assert encode_header(h) == data[:28]


@given(st.lists(payloads, max_size=4), st.binary(max_size=15))
def test_trailing_bytes_allowed_only_on_request(ps: list[Payload], pad: bytes) -> None:
    first, data = encode_payloads(ps)
    assert [r.payload for r in decode_payloads(first, data + pad, allow_trailing=True)] == ps
    if pad:
        with pytest.raises(RemoteProtocolError) as e:
            decode_payloads(first, data + pad)
        assert e.value.notify == NotifyType.PAYLOAD_MALFORMED
        assert e.value.offset == 28 + len(data)


def test_encode_payloads_empty() -> None:
    assert encode_payloads([]) == (0, b"")
    assert decode_payloads(0, b"") == []


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_message(data: bytes) -> None:
    try:
        decode_message(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=1000)
@given(u8, st.binary(max_size=200), st.booleans())
def test_fuzz_payloads(first: int, data: bytes, trailing: bool) -> None:
    try:
        decode_payloads(first, data, allow_trailing=trailing)
    except RemoteProtocolError as e:
        assert e.offset >= 28


@settings(max_examples=500)
@given(st.sampled_from([1, 11, 12, 14, 21]), st.binary(max_size=120))
def test_fuzz_structured_bodies(ptype: int, body: bytes) -> None:
    """Bodies behind a correct generic header reach the structured decoders."""
    data = struct.pack("!BBH", 0, 0, len(body) + 4) + body
    try:
        decode_payloads(ptype, data)
    except RemoteProtocolError:
        pass


@settings(max_examples=300)
@given(sa_payloads, st.data())
def test_fuzz_mutated_sa(sa: SAPayload, data: st.DataObject) -> None:
    raw = bytearray(encode_payload(sa, 0))
    i = data.draw(st.integers(4, len(raw) - 1))
    raw[i] = data.draw(u8)
    cut = data.draw(st.integers(4, len(raw)))
    raw = raw[:cut]
    raw[2:4] = struct.pack("!H", len(raw))
    try:
        decode_payloads(PayloadType.SA, bytes(raw))
    except RemoteProtocolError as e:
        assert e.field.startswith(("SA", "payload"))


# --------------------------------------------------------------------------- DataAttribute


def test_data_attribute_helpers() -> None:
    assert DataAttribute(12, 28800).as_int() == 28800
    assert DataAttribute(12, b"\x00\x01\x51\x80").as_int() == 86400
    assert DataAttribute.tlv_int(12, 86400) == DataAttribute(12, b"\x00\x01\x51\x80")
    assert DataAttribute.tlv_int(12, 1, size=2).value == b"\x00\x01"
    assert DataAttribute.auto(12, 3600) == DataAttribute(12, 3600)
    assert DataAttribute.auto(12, 86400).value == b"\x00\x01\x51\x80"
    assert DataAttribute.auto(12, 1 << 40).value == (1 << 40).to_bytes(8, "big")
    assert Transform(1, 1, (DataAttribute(1, 7), DataAttribute(1, 5))).get(1) == DataAttribute(1, 7)
    assert Transform(1, 1).get(1) is None
    # RFC 2408 3.3: AF=1 -> TV, 0x800b = Life Type (11), value seconds.
    assert encode_attributes([DataAttribute(Phase1Attr.LIFE_TYPE, 1)]) == bytes.fromhex("800b0001")
    assert encode_attributes([DataAttribute(Phase1Attr.LIFE_DURATION, b"\x00\x01\x51\x80")]) == bytes.fromhex(
        "000c 0004 00015180"
    )


@pytest.mark.parametrize(
    "args",
    [(0x8000, 1), (-1, 1), (1, 0x10000), (1, -1), (1, b"x" * 0x10000), (1, "str"), (1, True)],
)
def test_data_attribute_rejects_bad_values(args: tuple[int, object]) -> None:
    with pytest.raises(LocalProtocolError):
        DataAttribute(*args)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        DataAttribute.tlv_int(1, 1 << 32)


def test_attribute_tlv_overrun_names_field_and_offset() -> None:
    data = bytes.fromhex("80010007 000e0002 0080000c 00080001")
    with pytest.raises(RemoteProtocolError) as e:
        decode_attributes(data, base_offset=100, field="x.attr")
    assert e.value.field == "x.attr[2]"
    assert e.value.offset == 100 + 10 + 2
    assert e.value.notify == NotifyType.PAYLOAD_MALFORMED
    with pytest.raises(RemoteProtocolError) as e:
        decode_attributes(b"\x80\x01\x00", base_offset=7)
    assert (e.value.field, e.value.offset) == ("attributes[0]", 7)


# --------------------------------------------------------------------------- known bytes

# A Main Mode message 1 built by hand from the layouts of RFC 2408 sections 3.1, 3.4-3.6
# and RFC 2409 appendix A (AES-128, SHA1, PSK, MODP1024, 28800 s), with the RFC 3947 and
# DPD (RFC 3706) vendor IDs.  Each field is on its own line.
MAIN_MODE_1 = bytes.fromhex(
    "0011223344556677"  # initiator cookie
    "0000000000000000"  # responder cookie
    "01 10 02 00"  # next payload SA, version 1.0, exchange Main Mode, flags
    "00000000"  # message ID
    "00000080"  # length 128
    "0d00003c 00000001 00000001"  # SA: next VID, length 60; DOI 1, situation 1
    "00000030 01 01 00 01"  # proposal: last, length 48; #1, ISAKMP, SPI size 0, 1 transform
    "00000028 01 01 0000"  # transform: last, length 40; #1, KEY_IKE, reserved
    "80010007"  # encryption AES-CBC
    "800e0080"  # key length 128
    "80020002"  # hash SHA1
    "80030001"  # auth PSK
    "80040002"  # group 2
    "800b0001"  # life type seconds
    "000c0004 00007080"  # life duration 28800 (TLV, 4 bytes)
    "0d000014 4a131c81070358455c5728f20e95452f"  # VID RFC 3947
    "00000014 afcad71368a1f1c96b8696fc77570100"  # VID DPD (RFC 3706)
)


def test_main_mode_1_known_bytes() -> None:
    m = decode_message(MAIN_MODE_1)
    assert m.icookie == bytes.fromhex("0011223344556677")
    assert m.exchange == ExchangeType.IDENTITY_PROTECTION
    sa, vid1, vid2 = m.payloads
    assert isinstance(sa, SAPayload)
    [prop] = sa.proposals
    assert (prop.number, prop.protocol, prop.spi) == (1, ProtocolId.ISAKMP, b"")
    [t] = prop.transforms
    assert t.transform_id == 1
    assert t.get(Phase1Attr.ENCRYPTION_ALGORITHM) == DataAttribute(1, 7)
    assert t.get(Phase1Attr.LIFE_DURATION).as_int() == 28800  # type: ignore[union-attr]
    assert vid1 == VendorIDPayload(bytes.fromhex("4a131c81070358455c5728f20e95452f"))
    assert isinstance(vid2, VendorIDPayload)
    assert encode_message(m) == MAIN_MODE_1
    raw = decode_payloads(PayloadType.SA, MAIN_MODE_1[28:])
    assert raw[0].body == MAIN_MODE_1[32:88]  # SAi_b of RFC 2409 section 5


def test_and_ed_proposals_keep_numbering() -> None:
    """RFC 2408 section 4.2: proposals with the same number are AND-ed (ESP + IPCOMP)."""
    esp = Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", (Transform(1, 12, (DataAttribute(4, 1),)),))
    ipcomp = Proposal(1, ProtocolId.IPCOMP, b"\x12\x34", (Transform(1, 2),))
    alt = Proposal(2, ProtocolId.ESP, b"\x01\x02\x03\x04", (Transform(1, 3), Transform(2, 12)))
    sa = SAPayload((esp, ipcomp, alt))
    [rp] = decode_payloads(PayloadType.SA, encode_payload(sa, 0))
    assert rp.payload == sa
    assert [p.number for p in rp.payload.proposals] == [1, 1, 2]  # type: ignore[union-attr]


def test_notify_dpd_and_delete_layout() -> None:
    ck = bytes(range(16))
    n = NotifyPayload(NotifyType.R_U_THERE, ProtocolId.ISAKMP, ck, b"\x00\x00\x00\x2a")
    # RFC 3706 section 5.1 / RFC 2408 3.14: DOI, proto, SPI size, type, SPI, data
    assert encode_payload(n, 0) == bytes.fromhex("00000020 00000001 01108d28") + ck + b"\0\0\0\x2a"
    d = DeletePayload(ProtocolId.ESP, (b"\xaa\xbb\xcc\xdd", b"\x11\x22\x33\x44"))
    assert encode_payload(d, 0) == bytes.fromhex("00000014 00000001 03040002 aabbccdd 11223344")
    assert DeletePayload(ProtocolId.ISAKMP, ()).doi == 1
    assert decode_payloads(12, encode_payload(DeletePayload(1, ()), 0))[0].payload == DeletePayload(1, ())


def test_attribute_payload_layout() -> None:
    """draft-dukes-ike-mode-cfg-02 section 3.2: type, reserved, identifier, attributes."""
    p = AttributePayload(1, 0x1234, (DataAttribute(1, b""), DataAttribute(16520, 0)))
    assert encode_payload(p, 0) == bytes.fromhex("00000010 01001234 00010000 c0880000")


def test_nat_payload_types() -> None:
    assert payload_type_of(NatDPayload(b"x")) == 20
    assert payload_type_of(NatDPayload(b"x", draft=True)) == 130
    assert payload_type_of(NatOAPayload(1, b"\x01\x02\x03\x04")) == 21
    assert payload_type_of(NatOAPayload(1, b"\x01\x02\x03\x04", draft=True)) == 131
    assert encode_payload(NatOAPayload(1, bytes([10, 0, 0, 1])), 0) == bytes.fromhex(
        "0000000c 01 000000 0a000001"
    )
    with pytest.raises(LocalProtocolError):
        payload_type_of(object())  # type: ignore[arg-type]


def test_private_payload_is_skipped_not_fatal() -> None:
    data = encode_payload(UnknownPayload(200, b"abc"), PayloadType.VENDOR_ID) + encode_payload(
        VendorIDPayload(b"v"), 0
    )
    got = [r.payload for r in decode_payloads(200, data)]
    assert got == [UnknownPayload(200, b"abc"), VendorIDPayload(b"v")]


# --------------------------------------------------------------------------- malformed input


def _err(first: int, data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as e:
        decode_payloads(first, data)
    return e.value


def test_header_errors() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode_header(MAIN_MODE_1[:27])
    assert (e.value.notify, e.value.field, e.value.offset) == (NotifyType.PAYLOAD_MALFORMED, "header", 27)
    bad = bytearray(MAIN_MODE_1)
    bad[17] = 0x20
    with pytest.raises(RemoteProtocolError) as e:
        decode_header(bytes(bad))
    assert (e.value.notify, e.value.field, e.value.offset) == (
        NotifyType.INVALID_MAJOR_VERSION,
        "header.version",
        17,
    )
    bad[17] = 0x11  # minor version is not checked
    assert decode_header(bytes(bad)).version == 0x11
    for data in (MAIN_MODE_1[:-1], MAIN_MODE_1 + b"\0"):
        with pytest.raises(RemoteProtocolError) as e:
            decode_header(data)
        assert (e.value.notify, e.value.field, e.value.offset) == (
            NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
            "header.length",
            24,
        )
    enc = bytearray(MAIN_MODE_1)
    enc[19] = HeaderFlag.ENCRYPTION
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(bytes(enc))
    assert e.value.notify == NotifyType.INVALID_FLAGS
    with pytest.raises(LocalProtocolError):
        encode_header(Header(b"short", bytes(8), 0, 2, 0, 0, 28))


def test_truncated_message_names_field_and_offset() -> None:
    """Cut MAIN_MODE_1 inside the SA, fix up the header length: the SA chain no longer fits."""
    cut = bytearray(MAIN_MODE_1[:60])
    cut[24:28] = struct.pack("!I", len(cut))
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(bytes(cut))
    assert e.value.field == "payload[0].length"
    assert e.value.offset == 30
    assert e.value.notify == NotifyType.PAYLOAD_MALFORMED
    assert "payload[0].length @ offset 30" in str(e.value)


def _sa_with(proposal_body: bytes, *, next_payload: int = 0, extra: bytes = b"") -> bytes:
    prop = struct.pack("!BBH", next_payload, 0, len(proposal_body) + 4) + proposal_body + extra
    body = struct.pack("!II", 1, 1) + prop
    return struct.pack("!BBH", 0, 0, len(body) + 4) + body


T1 = bytes.fromhex("0000000801010000")  # one empty transform, last
T_ATTR_OVERRUN = bytes.fromhex("00000010 01010000 80010007 000e0008")


@pytest.mark.parametrize(
    ("data", "field", "offset", "notify"),
    [
        # SA body shorter than DOI + situation
        (bytes.fromhex("0000000800000001"), "SA", 32, NotifyType.PAYLOAD_MALFORMED),
        # DOI 2
        (bytes.fromhex("0000000c 00000002 00000001"), "SA.doi", 32, NotifyType.DOI_NOT_SUPPORTED),
        # situation SIT_SECRECY
        (bytes.fromhex("0000000c 00000001 00000002"), "SA.situation", 36, NotifyType.SITUATION_NOT_SUPPORTED),
        # no proposal at all
        (bytes.fromhex("0000000c 00000001 00000001"), "SA.proposal[0]", 40, NotifyType.BAD_PROPOSAL_SYNTAX),
        # proposal next payload 3
        (
            _sa_with(bytes.fromhex("01010001") + T1, next_payload=3),
            "SA.proposal[0].next_payload",
            40,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # proposal says 2 transforms, has 1
        (
            _sa_with(bytes.fromhex("01010002") + T1),
            "SA.proposal[0].num_transforms",
            47,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # no transform
        (
            _sa_with(bytes.fromhex("01010000")),
            "SA.proposal[0].num_transforms",
            47,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # ESP with SPI size 2
        (
            _sa_with(bytes.fromhex("01030201abcd") + T1),
            "SA.proposal[0].spi_size",
            46,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # SPI size runs past the proposal
        (
            _sa_with(bytes.fromhex("010109") + b"\x01"),
            "SA.proposal[0].spi_size",
            46,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        # transform next payload 2
        (
            _sa_with(bytes.fromhex("01010001 02000008 01010000")),
            "SA.proposal[0].transform[0].next_payload",
            48,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # transform length 6
        (
            _sa_with(bytes.fromhex("01010001 00000006 01010000")),
            "SA.proposal[0].transform[0].length",
            50,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        # transform length runs past the proposal
        (
            _sa_with(bytes.fromhex("01010001 00000010 01010000")),
            "SA.proposal[0].transform[0].length",
            50,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        # attribute TLV runs past the transform
        (
            _sa_with(bytes.fromhex("01010001") + T_ATTR_OVERRUN),
            "SA.proposal[0].transform[0].attr[1]",
            62,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        # the last transform says another follows
        (
            _sa_with(bytes.fromhex("01010001 03000008 01010000")),
            "SA.proposal[0].transform[0].next_payload",
            48,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
        # the last proposal says another follows
        (
            _sa_with(bytes.fromhex("01010001") + T1, next_payload=2),
            "SA.proposal[0].next_payload",
            40,
            NotifyType.BAD_PROPOSAL_SYNTAX,
        ),
    ],
)
def test_sa_errors(data: bytes, field: str, offset: int, notify: NotifyType) -> None:
    e = _err(PayloadType.SA, data)
    assert (e.field, e.offset, e.notify) == (field, offset, notify)


def test_second_proposal_transform_attr_field_name() -> None:
    good = bytes.fromhex("02000010 01010001 00000008 01010000")
    bad = bytes.fromhex("0000001602010001") + bytes.fromhex("0000000e 01010000 80010007 0001")
    body = struct.pack("!II", 1, 1) + good + bad
    e = _err(PayloadType.SA, struct.pack("!BBH", 0, 0, len(body) + 4) + body + b"")
    # the second proposal's TLV attribute has a 2-byte header only: truncated
    assert e.field == "SA.proposal[1].transform[0].attr[1]"
    assert e.offset == 28 + 4 + 8 + 16 + 8 + 8 + 4


@pytest.mark.parametrize(
    ("first", "data", "field", "offset", "notify"),
    [
        (PayloadType.PROPOSAL, bytes(8), "payload[0].type", 28, NotifyType.INVALID_PAYLOAD_TYPE),
        (PayloadType.TRANSFORM, bytes(8), "payload[0].type", 28, NotifyType.INVALID_PAYLOAD_TYPE),
        (15, bytes(8), "payload[0].type", 28, NotifyType.INVALID_PAYLOAD_TYPE),
        (127, bytes(8), "payload[0].type", 28, NotifyType.INVALID_PAYLOAD_TYPE),
        # second payload of unknown type 99
        (13, bytes.fromhex("63000005ff"), "payload[1].type", 33, NotifyType.INVALID_PAYLOAD_TYPE),
        (13, b"\0\0\0", "payload[0]", 28, NotifyType.PAYLOAD_MALFORMED),
        (13, bytes.fromhex("00000003"), "payload[0].length", 30, NotifyType.PAYLOAD_MALFORMED),
        (13, bytes.fromhex("00000009"), "payload[0].length", 30, NotifyType.PAYLOAD_MALFORMED),
        (5, bytes.fromhex("000000060100"), "ID", 32, NotifyType.PAYLOAD_MALFORMED),
        (6, bytes.fromhex("00000004"), "CERT", 32, NotifyType.PAYLOAD_MALFORMED),
        (7, bytes.fromhex("00000004"), "CR", 32, NotifyType.PAYLOAD_MALFORMED),
        (11, bytes.fromhex("0000000800000001"), "N", 32, NotifyType.PAYLOAD_MALFORMED),
        (11, bytes.fromhex("0000000c 00000007 01000018"), "N.doi", 32, NotifyType.DOI_NOT_SUPPORTED),
        (
            11,
            bytes.fromhex("0000000e 00000001 01100018 0102"),
            "N.spi_size",
            37,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        (
            12,
            bytes.fromhex("00000010 00000001 03040002 01020304"),
            "D.num_spis",
            38,
            NotifyType.PAYLOAD_MALFORMED,
        ),
        (12, bytes.fromhex("0000000c 00000005 03040000"), "D.doi", 32, NotifyType.DOI_NOT_SUPPORTED),
        (14, bytes.fromhex("000000060100"), "ATTR", 32, NotifyType.PAYLOAD_MALFORMED),
        (14, bytes.fromhex("0000000a 01000001 0001"), "ATTR.attr[0]", 36, NotifyType.PAYLOAD_MALFORMED),
        (21, bytes.fromhex("0000000c 02000000 0a000001"), "NAT-OA.id_type", 32, NotifyType.PAYLOAD_MALFORMED),
        (21, bytes.fromhex("0000000b 01000000 0a0000"), "NAT-OA.address", 36, NotifyType.PAYLOAD_MALFORMED),
    ],
)
def test_payload_errors(first: int, data: bytes, field: str, offset: int, notify: NotifyType) -> None:
    e = _err(first, data)
    assert (e.field, e.offset, e.notify) == (field, offset, notify)


def test_base_offset_is_added() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode_payloads(13, bytes.fromhex("00000009"), base_offset=1000)
    assert e.value.offset == 1002


def test_local_errors_on_encode() -> None:
    with pytest.raises(LocalProtocolError):
        encode_payload(DeletePayload(3, (b"1234", b"12")), 0)
    with pytest.raises(LocalProtocolError):
        encode_payload(IDPayload(1, b"", port=70000), 0)
    with pytest.raises(LocalProtocolError):
        encode_payload(VendorIDPayload(bytes(0x10000)), 0)


# Aggressive Mode PSK messages 1 and 2 recorded against a real IKEv1 responder (XAUTH + DPD
# vendor IDs in reply), from RUB-NDS/IPsec-StateMachineExtractor,
# src/test/java/de/rub/nds/ipsec/statemachineextractor/ike/IKEv1HandshakeIT.java
# ("Aggressive PSK m1 / m2").  Proposal number 0 is what that peer sends.
AGGRESSIVE_1 = bytes.fromhex(
    "75cc633d664fd55600000000000000000110040000000000000000f00400003800000001000000010000002c000100"
    "01000000240001000080010007800e0080800200028004000280030001800b0001800c70800a000084375427d76a58"
    "cf3db4ab3cf2da9dd44dfef6233affc1d34d75c3aec9d93353a29fc3d6ec1fc4c343e49439302cacca1a52d19877a0"
    "fa72a1ee023d67015ffc690361606ec24115655228b50d328636f4fce68253d7fbd1eae905cfc6dc93194e14718427"
    "9556d86ceeeb33a78b612aabdd6590ca4e609cc88906457787f13ff70500000ca3a34f453de42c670000000c010000"
    "000a000301"
)
AGGRESSIVE_2 = bytes.fromhex(
    "75cc633d664fd5560534fc1813e089e10110040000000000000001400400003800000001000000010000002c000100"
    "01000000240101000080010007800e0080800200028004000280030001800b0001800c70800a0000843af9e9bbff0c"
    "40ca81e538ccaca7dab906ae2f48f68b3f03e8c81f361b5cf514ef20d46d46b2c513a342dd3ca210dd069ff995c53f"
    "363b4e05c5c4534fe566441343333b615d87efa9d55400c44d5b5a02e41872790749df8aff964cf937fc3e349ec31f"
    "3b1cab032202389f87784f44ec4878adec2b974bc17156238937133f050000240f03492d4761a688f493d24424e9a7"
    "d19f1a64c4cd697dc900862aa1163f06450d00000c010000000a00030a0d00000c09002689dfd6b71208000014afca"
    "d71368a1f1c96b8696fc775701000000001891b7a7f96ea7a07c12ae03af0bc32e9f347685bb"
)


def test_recorded_aggressive_mode() -> None:
    m1 = decode_message(AGGRESSIVE_1)
    assert m1.exchange == ExchangeType.AGGRESSIVE
    assert [type(p).__name__ for p in m1.payloads] == ["SAPayload", "KEPayload", "NoncePayload", "IDPayload"]
    assert m1.payloads[3] == IDPayload(IdType.IPV4_ADDR, bytes([10, 0, 3, 1]))
    assert len(m1.payloads[1].data) == 128  # type: ignore[union-attr]  # MODP1024 public value
    m2 = decode_message(AGGRESSIVE_2)
    sa, _ke, _nonce, idr, vid_xauth, vid_dpd, hash_r = m2.payloads
    assert isinstance(sa, SAPayload)
    assert sa.proposals[0].transforms[0].get(Phase1Attr.GROUP_DESCRIPTION) == DataAttribute(4, 2)
    assert idr == IDPayload(IdType.IPV4_ADDR, bytes([10, 0, 3, 10]))
    assert vid_xauth == VendorIDPayload(bytes.fromhex("09002689dfd6b712"))
    assert vid_dpd == VendorIDPayload(bytes.fromhex("afcad71368a1f1c96b8696fc77570100"))
    assert isinstance(hash_r, HashPayload)
    assert len(hash_r.data) == 20
    for data in (AGGRESSIVE_1, AGGRESSIVE_2):
        assert encode_message(decode_message(data)) == data
