"""Mode Config / XAUTH / Cisco Unity attribute values (draft-dukes-ike-mode-cfg-02 3.4,
draft-beaulieu-ike-xauth-02 6.2, Cisco Unity as in vpnc, racoon and strongSwan)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunvpn.ike.constants import CfgAttr, CfgType, NotifyType, PayloadType, XauthStatus, XauthType
from tunvpn.ike.errors import RemoteProtocolError
from tunvpn.ike.messages import (
    AttributePayload,
    DataAttribute,
    decode_payloads,
    encode_attributes,
    encode_payload,
)
from tunvpn.ike.modecfg import (
    ModeConfig,
    UnitySplitEntry,
    XauthReply,
    XauthRequest,
    XauthResult,
    attr_name,
    decode_ip6_address,
    decode_unity_split,
    encode_unity_split,
    request_attributes,
    requested_types,
)

# draft-dukes-ike-mode-cfg-02 section 5.1 example, written out byte by byte from the
# layouts of sections 3.2 (Attribute payload) and 3.4 and RFC 2408 section 3.3:
#   ATTR1(REQUEST) = INTERNAL_ADDRESS(0.0.0.0) INTERNAL_NETMASK(0.0.0.0) INTERNAL_DNS(0.0.0.0)
#   ATTR2(REPLY)   = INTERNAL_ADDRESS(192.168.219.202) INTERNAL_NETMASK(255.255.255.0)
#                    INTERNAL_SUBNET(192.168.219.0/255.255.255.0)   [the draft misprints 291.]
DRAFT_REQUEST = bytes.fromhex(
    "00000020 01 00 0001"  # generic header (length 32); CFG_REQUEST, reserved, identifier 1
    "0001 0004 00000000"  # INTERNAL_IP4_ADDRESS, length 4, 0.0.0.0
    "0002 0004 00000000"  # INTERNAL_IP4_NETMASK
    "0003 0004 00000000"  # INTERNAL_IP4_DNS
)
DRAFT_REPLY = bytes.fromhex(
    "00000024 02 00 0001"  # generic header (length 36); CFG_REPLY, reserved, identifier 1
    "0001 0004 c0a8dbca"  # INTERNAL_IP4_ADDRESS 192.168.219.202
    "0002 0004 ffffff00"  # INTERNAL_IP4_NETMASK 255.255.255.0
    "000d 0008 c0a8db00 ffffff00"  # INTERNAL_IP4_SUBNET 192.168.219.0/255.255.255.0
)


def test_draft_example_reply() -> None:
    [rp] = decode_payloads(PayloadType.ATTRIBUTE, DRAFT_REPLY)
    payload = rp.payload
    assert isinstance(payload, AttributePayload)
    assert (payload.cfg_type, payload.identifier) == (CfgType.REPLY, 1)
    cfg = ModeConfig.from_attributes(payload.attributes)
    assert cfg == ModeConfig(
        address=IPv4Address("192.168.219.202"),
        netmask=IPv4Address("255.255.255.0"),
        subnets=(IPv4Network("192.168.219.0/24"),),
    )
    assert encode_payload(AttributePayload(CfgType.REPLY, 1, cfg.to_attributes()), 0) == DRAFT_REPLY


def test_draft_example_request() -> None:
    [rp] = decode_payloads(PayloadType.ATTRIBUTE, DRAFT_REQUEST)
    assert requested_types(rp.payload.attributes) == (1, 2, 3)  # type: ignore[union-attr]
    # Our requests use empty values instead of 0.0.0.0 (section 3.4: "usually sent in a Request").
    ours = request_attributes([CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP4_NETMASK])
    assert encode_payload(AttributePayload(CfgType.REQUEST, 7, ours), 0) == bytes.fromhex(
        "00000010 01 00 0007  0001 0000  0002 0000"
    )


def test_unity_wire_formats() -> None:
    cfg = ModeConfig(
        split_include=(IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.0/24")),
        save_password=False,
        unity_pfs=2,
        natt_port=10000,
        split_dns=("corp.example", "lab.example"),
        default_domain="corp.example",
        banner="Authorized use only",
    )
    attrs = {a.type: a for a in cfg.to_attributes()}
    # vpnc: SPLIT_INC entries are addr, mask, protocol, sport, dport (14 octets each), one attribute.
    assert attrs[CfgAttr.UNITY_SPLIT_INCLUDE].value == bytes.fromhex(
        "0a000000 ff000000 0000 0000 0000  c0a80100 ffffff00 0000 0000 0000"
    )
    # vpnc and racoon: SAVE_PASSWD, PFS and NATT_PORT are basic (TV) attributes.
    assert attrs[CfgAttr.UNITY_SAVE_PASSWD].value == 0
    assert attrs[CfgAttr.UNITY_PFS].value == 2
    assert attrs[CfgAttr.UNITY_NATT_PORT].value == 10000
    assert attrs[CfgAttr.UNITY_SPLITDNS_NAME].value == b"corp.example,lab.example"
    assert encode_attributes([attrs[CfgAttr.UNITY_PFS]]) == bytes.fromhex("f0070002")
    assert ModeConfig.from_attributes(cfg.to_attributes()) == cfg


def test_tv_or_tlv_both_accepted() -> None:
    tlv = (
        DataAttribute(CfgAttr.UNITY_SAVE_PASSWD, b"\x00\x01"),
        DataAttribute(CfgAttr.UNITY_PFS, b"\x00\x00\x00\x0e"),
        DataAttribute(CfgAttr.INTERNAL_ADDRESS_EXPIRY, 3600),
    )
    cfg = ModeConfig.from_attributes(tlv)
    assert (cfg.save_password, cfg.unity_pfs, cfg.address_expiry) == (True, 14, 3600)
    assert ModeConfig(address_expiry=86400).to_attributes() == (
        DataAttribute(CfgAttr.INTERNAL_ADDRESS_EXPIRY, b"\x00\x01\x51\x80"),
    )


def test_ipv6_attributes() -> None:
    cfg = ModeConfig(
        ip6_address=IPv6Interface("fd00:1::2/64"),
        ip6_dns=(IPv6Address("fd00:1::53"),),
        ip6_subnets=(IPv6Network("fd00:2::/48"),),
    )
    attrs = cfg.to_attributes()
    assert attrs[0].value == IPv6Address("fd00:1::2").packed + b"\x40"  # strongSwan's 17 octets
    assert attrs[2].value == IPv6Address("fd00:2::").packed + b"\x30"
    assert ModeConfig.from_attributes(attrs) == cfg
    # The draft's bare 16-octet form reads as a /128.
    bare = DataAttribute(CfgAttr.INTERNAL_IP6_ADDRESS, IPv6Address("fd00::9").packed)
    assert decode_ip6_address(bare) == IPv6Interface("fd00::9/128")


def test_unknown_and_repeated_attributes_are_kept() -> None:
    attrs = (
        DataAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, bytes([10, 0, 0, 2])),
        DataAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, bytes([10, 0, 0, 3])),
        DataAttribute(CfgAttr.UNITY_FW_TYPE, b"\x00\x00\x00\x09"),
        DataAttribute(23456, bytes([10, 0, 0, 1])),  # Microsoft INTERNAL_IP4_SERVER
        DataAttribute(CfgAttr.INTERNAL_IP4_DNS, b""),  # empty value in a reply: ignored
        DataAttribute(CfgAttr.INTERNAL_IP4_DNS, bytes([10, 0, 0, 53])),
        DataAttribute(CfgAttr.INTERNAL_IP4_DNS, bytes([10, 0, 0, 54])),
    )
    cfg = ModeConfig.from_attributes(attrs)
    assert cfg.address == IPv4Address("10.0.0.2")
    assert cfg.dns == (IPv4Address("10.0.0.53"), IPv4Address("10.0.0.54"))
    assert cfg.unknown == attrs[1:4]
    assert ModeConfig.from_attributes(cfg.to_attributes()) == cfg


@pytest.mark.parametrize(
    ("attr", "name"),
    [
        (DataAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a\x00\x00"), "INTERNAL_IP4_ADDRESS"),
        (DataAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, 5), "INTERNAL_IP4_ADDRESS"),
        (DataAttribute(CfgAttr.INTERNAL_IP4_NETMASK, bytes(5)), "INTERNAL_IP4_NETMASK"),
        (DataAttribute(CfgAttr.INTERNAL_IP4_SUBNET, bytes(4)), "INTERNAL_IP4_SUBNET"),
        (
            DataAttribute(CfgAttr.INTERNAL_IP4_SUBNET, bytes(4) + bytes([255, 0, 255, 0])),
            "INTERNAL_IP4_SUBNET",
        ),
        (DataAttribute(CfgAttr.INTERNAL_IP6_ADDRESS, bytes(15)), "INTERNAL_IP6_ADDRESS"),
        (DataAttribute(CfgAttr.INTERNAL_IP6_SUBNET, bytes(16)), "INTERNAL_IP6_SUBNET"),
        (DataAttribute(CfgAttr.INTERNAL_IP6_SUBNET, bytes(16) + b"\x81"), "INTERNAL_IP6_SUBNET"),
        (DataAttribute(CfgAttr.INTERNAL_IP6_DNS, bytes(4)), "INTERNAL_IP6_DNS"),
        (DataAttribute(CfgAttr.SUPPORTED_ATTRIBUTES, bytes(3)), "SUPPORTED_ATTRIBUTES"),
        (DataAttribute(CfgAttr.UNITY_SPLIT_INCLUDE, bytes(13)), "UNITY_SPLIT_INCLUDE"),
        (DataAttribute(CfgAttr.UNITY_LOCAL_LAN, bytes(15)), "UNITY_LOCAL_LAN"),
        (DataAttribute(CfgAttr.INTERNAL_ADDRESS_EXPIRY, bytes(9)), "INTERNAL_ADDRESS_EXPIRY"),
    ],
)
def test_bad_lengths_name_the_attribute(attr: DataAttribute, name: str) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        ModeConfig.from_attributes([attr])
    assert e.value.notify == NotifyType.PAYLOAD_MALFORMED
    assert e.value.field == f"ATTR.{name}"
    assert name in str(e.value)


def test_split_entries_keep_protocol_and_ports() -> None:
    entry = UnitySplitEntry(IPv4Network("10.1.0.0/16"), 17, 0, 53)
    a = DataAttribute(CfgAttr.UNITY_SPLIT_INCLUDE, encode_unity_split([entry, IPv4Network("0.0.0.0/0")]))
    assert decode_unity_split(a) == (entry, UnitySplitEntry(IPv4Network("0.0.0.0/0")))


def test_supported_attributes_and_names() -> None:
    cfg = ModeConfig(supported_attributes=(1, 2, 28672))
    assert cfg.to_attributes() == (
        DataAttribute(CfgAttr.SUPPORTED_ATTRIBUTES, bytes.fromhex("000100027000")),
    )
    assert ModeConfig.from_attributes(cfg.to_attributes()) == cfg
    assert attr_name(16521) == "XAUTH_USER_NAME"
    assert attr_name(12345) == "12345"


# --------------------------------------------------------------------------- XAUTH


def test_xauth_generic_exchange() -> None:
    """draft-beaulieu-ike-xauth-02 section 5.1: REQUEST(NAME="" PASSWORD="") / REPLY / SET / ACK."""
    request = XauthRequest(user_name=True, password=True, message="Enter your credentials")
    wire = encode_payload(AttributePayload(CfgType.REQUEST, 0x1234, request.to_attributes()), 0)
    assert wire == (
        bytes.fromhex("0000002a 01 00 1234  4089 0000  408a 0000  408c 0016") + b"Enter your credentials"
    )
    [rp] = decode_payloads(PayloadType.ATTRIBUTE, wire)
    assert XauthRequest.from_attributes(rp.payload.attributes) == request  # type: ignore[union-attr]

    reply = XauthReply(user_name="joe", password="foobar")
    assert "foobar" not in repr(reply)
    assert "foobar" not in repr(AttributePayload(CfgType.REPLY, 0x1234, reply.to_attributes()))
    assert "joe" in repr(reply.to_attributes())
    assert encode_payload(AttributePayload(CfgType.REPLY, 0x1234, reply.to_attributes()), 0) == bytes.fromhex(
        "00000019 02 00 1234  4089 0003 6a6f65  408a 0006 666f6f626172"
    )
    assert XauthReply.from_attributes(reply.to_attributes()) == reply

    result = XauthResult(ok=True)
    assert result.to_attributes() == (DataAttribute(CfgAttr.XAUTH_STATUS, XauthStatus.OK),)
    assert encode_payload(AttributePayload(CfgType.SET, 0x1234, result.to_attributes()), 0) == bytes.fromhex(
        "0000000c 03 00 1234 c08f 0001"  # XAUTH-STATUS is Basic: AF bit set
    )
    assert XauthResult.from_attributes(result.to_attributes()) == result
    failed = XauthResult(False, "bad password")
    assert XauthResult.from_attributes(failed.to_attributes()) == failed


def test_xauth_otp_and_typed_requests() -> None:
    """Section 5.4: REQUEST(TYPE=OTP CHALLENGE="otp-md5 499 ke1234" NAME="" PASSWORD="")."""
    request = XauthRequest(XauthType.OTP, user_name=True, password=True, challenge=b"otp-md5 499 ke1234")
    attrs = request.to_attributes()
    assert attrs[0] == DataAttribute(CfgAttr.XAUTH_TYPE, 2)
    assert XauthRequest.from_attributes(attrs) == request
    reply = XauthReply(XauthType.OTP, user_name="joe", password="5bf0 75d9 959d 036f")
    assert XauthReply.from_attributes(reply.to_attributes()) == reply
    # a TLV XAUTH-TYPE is accepted too
    assert XauthRequest.from_attributes([DataAttribute(CfgAttr.XAUTH_TYPE, b"\x00\x02")]).xauth_type == 2
    full = XauthRequest(0, True, True, True, "m", b"c", "", True, True, (DataAttribute(9999, b"x"),))
    assert XauthRequest.from_attributes(full.to_attributes()) == full
    assert XauthReply.failed().to_attributes() == (DataAttribute(CfgAttr.XAUTH_STATUS, 0),)


def test_xauth_result_needs_status() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        XauthResult.from_attributes([DataAttribute(CfgAttr.XAUTH_MESSAGE, b"hi")])
    assert e.value.field == "ATTR.XAUTH_STATUS"


# --------------------------------------------------------------------------- properties

v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(IPv6Address)
v4net = st.tuples(v4, st.integers(0, 32)).map(lambda t: IPv4Network(t, strict=False))
v6net = st.tuples(v6, st.integers(0, 128)).map(lambda t: IPv6Network(t, strict=False))
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
domain = st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z]{2,4}){0,2}", fullmatch=True)
u16 = st.integers(0, 0xFFFF)

mode_configs = st.builds(
    ModeConfig,
    address=st.none() | v4,
    netmask=st.none() | v4,
    dns=st.lists(v4, max_size=3).map(tuple),
    nbns=st.lists(v4, max_size=2).map(tuple),
    address_expiry=st.none() | st.integers(0, 2**32 - 1),
    ip6_address=st.none() | st.tuples(v6, st.integers(0, 128)).map(IPv6Interface),
    ip6_dns=st.lists(v6, max_size=2).map(tuple),
    subnets=st.lists(v4net, max_size=3).map(tuple),
    ip6_subnets=st.lists(v6net, max_size=2).map(tuple),
    banner=st.none() | text.filter(bool),
    default_domain=st.none() | domain,
    split_include=st.lists(v4net, max_size=4).map(tuple),
    split_dns=st.lists(domain, max_size=3).map(tuple),
    local_lan=st.lists(v4net, max_size=2).map(tuple),
    unity_pfs=st.none() | st.sampled_from([1, 2, 5, 14, 19]),
    save_password=st.none() | st.booleans(),
    application_version=st.none() | text.filter(bool),
    natt_port=st.none() | u16,
    supported_attributes=st.lists(st.integers(0, 0x7FFF), max_size=5).map(tuple),
    unknown=st.lists(
        st.builds(DataAttribute, st.integers(16, 99), st.binary(min_size=1, max_size=8)), max_size=3
    ).map(tuple),
)


@given(mode_configs)
def test_mode_config_round_trip(cfg: ModeConfig) -> None:
    attrs = cfg.to_attributes()
    assert ModeConfig.from_attributes(attrs) == cfg
    wire = encode_payload(AttributePayload(CfgType.REPLY, 1, attrs), 0)
    [rp] = decode_payloads(PayloadType.ATTRIBUTE, wire)
    assert ModeConfig.from_attributes(rp.payload.attributes) == cfg  # type: ignore[union-attr]


_opt_text = st.none() | text


@given(st.builds(XauthReply, st.none() | u16, *[_opt_text] * 6, st.none() | st.sampled_from([0, 1])))
def test_xauth_reply_round_trip(reply: XauthReply) -> None:
    assert XauthReply.from_attributes(reply.to_attributes()) == reply


cfg_types = [t.value for t in CfgAttr if t < 16] + [t.value for t in CfgAttr if t >= 16384] + [99, 23456]


@settings(max_examples=500)
@given(
    st.lists(st.builds(DataAttribute, st.sampled_from(cfg_types), u16 | st.binary(max_size=40)), max_size=6)
)
def test_fuzz_attribute_values(attrs: list[DataAttribute]) -> None:
    for decode in (ModeConfig.from_attributes, XauthRequest.from_attributes, XauthReply.from_attributes,
                   XauthResult.from_attributes):  # fmt: skip
        try:
            decode(attrs)  # type: ignore[operator]
        except RemoteProtocolError as e:
            assert e.field.startswith("ATTR.")
