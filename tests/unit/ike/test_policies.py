"""tunvpn's phase 1a attributes (docs/protocol.md "Phase 1a: phase 2 policies in Mode Config"):
the byte layout, zero-valued attributes omitted, malformed sets refused with the attribute
named, and the numbers kept out of the ranges XAUTH, Microsoft and Cisco Unity use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunvpn.ike.constants import CfgAttr, DHGroup
from tunvpn.ike.errors import RemoteProtocolError
from tunvpn.ike.messages import AttributePayload, DataAttribute, decode_attributes, encode_attributes
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.policies import (
    ExtraProtocol,
    Phase2Policy,
    PolicyAttr,
    PolicyPush,
    decode_policies,
    diff_policies,
    encode_policies,
    encode_selector,
    request_attribute,
)
from tunvpn.ike.proposals import EspSuite
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform
from tunvpn.ipsec.selectors import TrafficSelector

GCM256 = EspSuite(EspTransform.AES_GCM_16, 256, None)
CBC_SHA256 = EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)


def ts(text: str) -> TrafficSelector:
    return TrafficSelector.parse(text)


def test_numbers_are_private_and_avoid_xauth_microsoft_and_unity() -> None:
    for attr in PolicyAttr:
        assert 16384 <= attr <= 32767
        assert not 16520 <= attr <= 16529
        assert attr not in (23456, 23457)
        assert not 28672 <= attr <= 28683
        assert attr not in {int(a) for a in CfgAttr}


def test_wire_bytes_of_one_set() -> None:
    """The exact octets of a set, as docs/protocol.md shows them."""
    push = PolicyPush(7, (Phase2Policy("lan", ts("10.78.0.0/24"), None, (GCM256,), DHGroup.ECP_256, 3600),))
    wire = encode_attributes(encode_policies(push))
    assert wire.hex() == (
        "d0000007"  # CFG_PHASE2_POLICIES (TV) = generation 7
        "d0010001"  # CFG_SA_BEGIN (TV) = set 1
        "5002"
        "0003"
        "6c616e"  # CFG_SA_NAME (TLV) "lan"
        "d0030014"  # CFG_ESP_TRANSFORM = 20 (AES-GCM-16)
        "d0040100"  # CFG_ESP_KEY_LENGTH = 256
        "d0060013"  # CFG_PFS_GROUP = 19 (ECP-256)
        "5007"
        "0004"
        "00000e10"  # CFG_LIFE_SECONDS = 3600
        "5009"
        "000c"
        "04000000"
        "0a4e0000"
        "ffffff00"  # CFG_GATEWAY_TS: subnet 10.78.0.0/24
    )


def test_zero_values_are_omitted() -> None:
    """No PFS, no integrity (AEAD), no volume lifetime, client side = assigned address: none
    of them appears in the set (seed paragraph 0040)."""
    policy = Phase2Policy("x", ts("10.0.0.0/8"), None, (GCM256,), None, 600, 0)
    types = {a.type for a in encode_policies(PolicyPush(1, (policy,)))}
    absent = (PolicyAttr.PFS_GROUP, PolicyAttr.ESP_AUTH, PolicyAttr.LIFE_KILOBYTES, PolicyAttr.CLIENT_TS)
    assert not types & set(absent)


def test_round_trip_through_a_mode_config_reply() -> None:
    """The sets ride in a CFG_REPLY next to the standard attributes; a standard decoder keeps
    them as unknown attributes, ours reads them back."""
    push = PolicyPush(
        3,
        (
            Phase2Policy("intranet", ts("10.78.0.0/24"), None, (GCM256,), DHGroup.ECP_384, 3600),
            Phase2Policy(
                "web", ts("10.20.0.0/16[tcp/443]"), ts("10.79.0.0/24"), (CBC_SHA256,), None, 1800, 500_000
            ),
        ),
        (ExtraProtocol("radius"), ExtraProtocol("otp", (("digits", "6"),))),
    )
    config = ModeConfig(address=None, dns=())
    attrs = (*config.to_attributes(), *encode_policies(push))
    payload = AttributePayload(2, 0x1234, attrs)
    decoded = decode_attributes(encode_attributes(payload.attributes))
    standard = ModeConfig.from_attributes(decoded)
    assert decode_policies(standard.unknown) == push


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (PolicyAttr.SA_NAME, "CFG_SA_NAME"),
        (PolicyAttr.ESP_TRANSFORM, "CFG_ESP_TRANSFORM"),
        (PolicyAttr.LIFE_SECONDS, "CFG_LIFE_SECONDS"),
        (PolicyAttr.GATEWAY_TS, "CFG_GATEWAY_TS"),
    ],
)
def test_a_set_missing_a_required_attribute_is_refused_by_name(drop: int, named: str) -> None:
    push = PolicyPush(1, (Phase2Policy("a", ts("10.1.0.0/16")),))
    attrs = [a for a in encode_policies(push) if a.type != drop]
    with pytest.raises(RemoteProtocolError, match=named):
        decode_policies(attrs)


def test_malformed_sets() -> None:
    good = list(encode_policies(PolicyPush(1, (Phase2Policy("a", ts("10.1.0.0/16")),))))
    with pytest.raises(RemoteProtocolError, match="outside an SA set"):
        decode_policies([good[0], DataAttribute(PolicyAttr.SA_NAME, b"x")])
    with pytest.raises(RemoteProtocolError, match="repeated"):
        decode_policies([*good, DataAttribute(PolicyAttr.SA_NAME, b"y")])
    with pytest.raises(RemoteProtocolError, match="without the generation"):
        decode_policies(good[1:])
    with pytest.raises(RemoteProtocolError, match="not an address type"):
        decode_policies([*good[:-1], DataAttribute(PolicyAttr.GATEWAY_TS, b"\x02\x00\x00\x00abc")])
    with pytest.raises(RemoteProtocolError, match="CFG_GATEWAY_TS"):
        decode_policies([*good[:-1], DataAttribute(PolicyAttr.GATEWAY_TS, b"\x04\x00")])
    with pytest.raises(RemoteProtocolError, match="unknown ESP transform"):
        decode_policies(
            [DataAttribute(a.type, 200) if a.type == PolicyAttr.ESP_TRANSFORM else a for a in good]
        )
    with pytest.raises(RemoteProtocolError, match="policy names repeat"):
        decode_policies(good + good[1:])
    with pytest.raises(RemoteProtocolError, match="generation 0"):
        decode_policies([DataAttribute(PolicyAttr.PHASE2_POLICIES, 0)])


def test_unknown_attributes_inside_a_set_are_ignored_and_others_skipped() -> None:
    """A later version may add attributes to a set; standard attributes may sit anywhere."""
    push = PolicyPush(2, (Phase2Policy("a", ts("10.1.0.0/16")),))
    attrs = list(encode_policies(push))
    attrs.insert(3, DataAttribute(20500, b"future"))
    attrs.insert(4, DataAttribute(CfgAttr.INTERNAL_IP4_DNS, b"\x0a\x00\x00\x01"))
    assert decode_policies(attrs) == push


def test_no_policies_means_a_standard_gateway() -> None:
    assert decode_policies([DataAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a\x00\x00\x01")]) is None
    # our own request echoed (empty value) is not a reply
    assert decode_policies([DataAttribute(PolicyAttr.PHASE2_POLICIES, b"")]) is None
    # a gateway with no policy for this user says so with an empty generation
    assert decode_policies([DataAttribute(PolicyAttr.PHASE2_POLICIES, 4)]) == PolicyPush(4)


def test_extra_protocol_parameters() -> None:
    p = ExtraProtocol.decode(b"radius;servers=2;chap=yes")
    assert p.name == "radius" and p.param("servers") == "2" and p.param("chap") == "yes"
    with pytest.raises(RemoteProtocolError, match="lacks '='"):
        ExtraProtocol.decode(b"radius;oops")
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        ExtraProtocol.decode(b"\xff")
    with pytest.raises(ValueError):
        ExtraProtocol("a;b")


def test_selector_encoding_is_an_id_payload_body() -> None:
    assert encode_selector(ts("10.0.0.1[udp/1701]")).hex() == "011106a50a000001"
    assert encode_selector(ts("10.0.0.1-10.0.0.9")).hex() == "070000000a0000010a000009"


def test_diff() -> None:
    a = Phase2Policy("a", ts("10.1.0.0/16"))
    b = Phase2Policy("b", ts("10.2.0.0/16"))
    b2 = Phase2Policy("b", ts("10.2.0.0/16"), pfs_group=None)
    c = Phase2Policy("c", ts("10.3.0.0/16"))
    d = diff_policies([a, b], [a, b2, c])
    assert (d.added, d.removed, d.changed, d.unchanged) == ((c,), (), (b2,), (a,))
    d = diff_policies([a, b], [b])
    assert d.removed == (a,) and d.unchanged == (b,)


def test_wire_view_carries_only_the_pushed_suite() -> None:
    policy = Phase2Policy("a", ts("10.1.0.0/16"), esp=(GCM256, CBC_SHA256))
    assert policy.wire().esp == (GCM256,)
    assert policy.responder_proposal().esp == (GCM256, CBC_SHA256)
    assert policy.initiator_proposal().esp == (GCM256,)
    # RFC 4304: the pushed suite is offered without ESN, then with it; the gateway takes either
    assert policy.initiator_proposal().esn == (False, True)
    assert set(policy.responder_proposal().esn) == {True, False}


networks = st.builds(
    lambda a, p: TrafficSelector.from_network(f"{a}/{p}"),
    st.ip_addresses(v=4),
    st.integers(8, 32),
)


@given(
    st.lists(
        st.tuples(
            networks,
            st.sampled_from([GCM256, CBC_SHA256]),
            st.sampled_from([None, DHGroup.ECP_256, DHGroup.MODP_2048]),
            st.integers(1, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
        max_size=6,
    ),
    st.integers(1, 0xFFFF),
)
def test_round_trip_property(sets: list[tuple], generation: int) -> None:
    policies = tuple(
        Phase2Policy(f"p{i}", net, None, (suite,), pfs, secs, kb)
        for i, (net, suite, pfs, secs, kb) in enumerate(sets)
    )
    push = PolicyPush(generation, policies)
    wire = encode_attributes(encode_policies(push))
    assert decode_policies(decode_attributes(wire)) == push


def test_a_fixed_length_cipher_carries_no_key_length() -> None:
    """Issue 18: ChaCha20-Poly1305 has one key length (256): CFG_ESP_KEY_LENGTH is omitted, as
    docs/protocol.md says of fixed-length ciphers, and the decoder fills it in."""
    chacha = EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256, None)
    policy = Phase2Policy("c", ts("10.0.0.0/8"), None, (chacha,), None, 600, 0)
    attrs = encode_policies(PolicyPush(1, (policy,)))
    assert PolicyAttr.ESP_KEY_LENGTH not in {a.type for a in attrs}
    push = decode_policies(attrs)
    assert push is not None and push.policies[0].esp == (chacha,)
    # AES still names its key length
    assert PolicyAttr.ESP_KEY_LENGTH in {
        a.type for a in encode_policies(PolicyPush(1, (policy_with(GCM256),)))
    }


def policy_with(suite: EspSuite) -> Phase2Policy:
    return Phase2Policy("a", ts("10.0.0.0/8"), None, (suite,), None, 600, 0)


def test_the_request_asks_for_every_policy_with_one_empty_attribute() -> None:
    """Issue 18: the client's CFG_REQUEST carries CFG_PHASE2_POLICIES (20480) empty, in TLV
    form (length 0), which the decoder takes for an echo, not a generation."""
    attr = request_attribute()
    assert attr == DataAttribute(PolicyAttr.PHASE2_POLICIES, b"")
    assert encode_attributes([attr]).hex() == "50000000"
    assert decode_policies([attr]) is None
