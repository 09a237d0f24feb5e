"""ID payload contents (RFC 2407 section 4.6.2): identities and traffic selectors."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tunvpn.ike.constants import IdType, NotifyType
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ike.identity import (
    Identity,
    der_to_name,
    dn_to_text,
    parse_dn,
    selector_from_id_payload,
    selector_to_id_payload,
)
from tunvpn.ike.messages import IDPayload, decode_payloads, encode_payload
from tunvpn.ipsec.selectors import TrafficSelector

# DER of C=CH, O=strongSwan, CN=moon.strongswan.org (the strongSwan test-suite gateway),
# written out from RFC 5280 section 4.1.2.4 / X.690: SEQUENCE { SET { SEQUENCE { OID, string } } ... }
MOON_DN = bytes.fromhex(
    "3040"  # SEQUENCE (RDNSequence)
    "310b 3009 0603550406 1302 4348"  # SET { SEQUENCE { countryName, PrintableString "CH" } }
    "3113 3011 060355040a 0c0a 7374726f6e675377616e"  # organizationName, UTF8String "strongSwan"
    "311c 301a 0603550403 0c13 6d6f6f6e2e7374726f6e677377616e2e6f7267"  # commonName, UTF8String
)


@pytest.mark.parametrize(
    ("text", "id_type", "data", "shown"),
    [
        ("10.0.0.1", IdType.IPV4_ADDR, bytes([10, 0, 0, 1]), "10.0.0.1"),
        ("2001:db8::1", IdType.IPV6_ADDR, IPv6Address("2001:db8::1").packed, "2001:db8::1"),
        ("@vpn.example.org", IdType.FQDN, b"vpn.example.org", "@vpn.example.org"),
        ("vpn.example.org", IdType.FQDN, b"vpn.example.org", "@vpn.example.org"),
        ("gw-1", IdType.FQDN, b"gw-1", "@gw-1"),
        ("carol@strongswan.org", IdType.USER_FQDN, b"carol@strongswan.org", "carol@strongswan.org"),
        ("@@carol@strongswan.org", IdType.USER_FQDN, b"carol@strongswan.org", "carol@strongswan.org"),
        ("keyid:group", IdType.KEY_ID, b"group", "keyid:group"),
        ("keyid:#00ff", IdType.KEY_ID, b"\x00\xff", "keyid:#00ff"),
        ("@#cafe", IdType.KEY_ID, b"\xca\xfe", "keyid:#cafe"),
        (
            "CN=moon.strongswan.org, O=strongSwan, C=CH",
            IdType.DER_ASN1_DN,
            MOON_DN,
            "CN=moon.strongswan.org,O=strongSwan,C=CH",
        ),
        (
            "dn:CN=moon.strongswan.org,O=strongSwan,C=CH",
            IdType.DER_ASN1_DN,
            MOON_DN,
            "CN=moon.strongswan.org,O=strongSwan,C=CH",
        ),
        ("dn:#" + MOON_DN.hex(), IdType.DER_ASN1_DN, MOON_DN, "CN=moon.strongswan.org,O=strongSwan,C=CH"),
        ("gn:#3000", IdType.DER_ASN1_GN, b"\x30\x00", "gn:#3000"),
        ("10.1.0.0/16", IdType.IPV4_ADDR_SUBNET, bytes([10, 1, 0, 0, 255, 255, 0, 0]), "10.1.0.0/16"),
        ("10.0.0.1-10.0.0.9", IdType.IPV4_ADDR_RANGE, bytes([10, 0, 0, 1, 10, 0, 0, 9]), "10.0.0.1-10.0.0.9"),
    ],
)
def test_identity_text_and_payload(text: str, id_type: IdType, data: bytes, shown: str) -> None:
    ident = Identity.parse(text)
    assert ident.id_type == id_type
    p = ident.to_payload()
    assert p == IDPayload(id_type, data)
    assert Identity.from_payload(p) == ident
    assert str(ident) == shown
    assert Identity.parse(shown) == ident


def test_matches() -> None:
    printable_cn = bytes.fromhex("300f310d 300b0603 55040313 04") + b"moon"
    assert Identity(IdType.DER_ASN1_DN, printable_cn).matches(Identity.parse("CN=moon"))
    assert Identity(IdType.DER_ASN1_DN, printable_cn) != Identity.parse("CN=moon")
    assert str(Identity(IdType.DER_ASN1_DN, printable_cn)) == "CN=moon"
    assert not Identity.parse("CN=moon").matches(Identity.parse("CN=sun"))
    assert Identity.parse("@VPN.example").matches(Identity.parse("@vpn.EXAMPLE"))
    assert not Identity.parse("@vpn.example").matches(Identity.parse("vpn@example"))
    assert Identity.parse("10.0.0.1").matches(Identity.parse("10.0.0.1"))
    assert Identity(IdType.DER_ASN1_DN, b"\x30").matches(Identity(IdType.DER_ASN1_DN, b"\x30"))


def test_dn_helpers() -> None:
    name = der_to_name(MOON_DN)
    assert name.rfc4514_string() == "CN=moon.strongswan.org,O=strongSwan,C=CH"
    assert parse_dn("E=carol@strongswan.org, CN=carol") == parse_dn(
        "emailAddress=carol@strongswan.org,CN=carol"
    )
    assert dn_to_text(parse_dn("E=carol@strongswan.org,CN=carol")) == "E=carol@strongswan.org,CN=carol"
    assert dn_to_text(b"\x30\x01") == "dn:#3001"
    with pytest.raises(LocalProtocolError):
        parse_dn("not a dn")


def test_phase1_payload_protocol_port_and_wire() -> None:
    """RFC 2407 4.6.2: phase 1 IDs carry protocol 17 / port 500 or 0 / 0."""
    p = Identity.parse("10.0.3.1").to_payload(17, 500)
    assert encode_payload(p, 0) == bytes.fromhex("0000000c 011101f4 0a000301")
    [rp] = decode_payloads(5, encode_payload(p, 0))
    assert rp.body == bytes.fromhex("011101f40a000301")  # IDii_b of RFC 2409 section 5


@pytest.mark.parametrize(
    ("id_type", "data"),
    [
        (IdType.IPV4_ADDR, b"\x01\x02\x03"),
        (IdType.IPV6_ADDR, bytes(4)),
        (IdType.IPV4_ADDR_SUBNET, bytes([10, 0, 0, 0, 255, 0, 255, 0])),  # non-contiguous mask
        (IdType.IPV4_ADDR_SUBNET, bytes(7)),
        (IdType.IPV4_ADDR_RANGE, bytes([10, 0, 0, 9, 10, 0, 0, 1])),  # start > end
        (IdType.IPV6_ADDR_RANGE, bytes(31)),
        (IdType.FQDN, b""),
        (IdType.FQDN, b"\xff\xfe"),
        (IdType.USER_FQDN, b"a\x00b"),
        (IdType.DER_ASN1_DN, b"\x30\x05\x31"),
        (IdType.DER_ASN1_DN, MOON_DN + b"\x00"),
        (0, b""),
        (12, b"x"),
    ],
)
def test_identity_rejects_bad_payloads(id_type: int, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        Identity.from_payload(IDPayload(id_type, data))
    assert e.value.notify == NotifyType.INVALID_ID_INFORMATION


def test_identity_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        Identity(IdType.IPV4_ADDR, "10.0.0.1")
    with pytest.raises(LocalProtocolError):
        Identity(99, b"")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Identity(IdType.IPV4_ADDR_RANGE, (IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1")))
    with pytest.raises(LocalProtocolError):
        Identity.parse("  ")
    with pytest.raises(LocalProtocolError):
        Identity.parse("keyid:#zz")


def test_subnet_host_bits_are_masked() -> None:
    p = IDPayload(IdType.IPV4_ADDR_SUBNET, bytes([10, 0, 0, 7, 255, 255, 255, 0]))
    assert Identity.from_payload(p).value == IPv4Network("10.0.0.0/24")
    assert selector_from_id_payload(p) == TrafficSelector.from_network("10.0.0.0/24")


# --------------------------------------------------------------------------- traffic selectors


@pytest.mark.parametrize(
    ("text", "id_type", "shown"),
    [
        ("10.0.0.0/24", IdType.IPV4_ADDR_SUBNET, "10.0.0.0/24"),
        ("10.0.0.1", IdType.IPV4_ADDR, "10.0.0.1/32"),
        ("10.0.0.1-10.0.0.9", IdType.IPV4_ADDR_RANGE, "10.0.0.1-10.0.0.9"),
        ("10.0.0.0-10.0.0.255", IdType.IPV4_ADDR_SUBNET, "10.0.0.0/24"),
        ("192.168.1.5[udp/1701]", IdType.IPV4_ADDR, "192.168.1.5/32[udp/1701]"),
        ("0.0.0.0/0[tcp]", IdType.IPV4_ADDR_SUBNET, "0.0.0.0/0[tcp]"),
        ("10.0.0.0/8[47]", IdType.IPV4_ADDR_SUBNET, "10.0.0.0/8[gre]"),
        ("10.0.0.0/8[0/53]", IdType.IPV4_ADDR_SUBNET, "10.0.0.0/8[0/53]"),
        ("2001:db8::/32", IdType.IPV6_ADDR_SUBNET, "2001:db8::/32"),
        ("2001:db8::1", IdType.IPV6_ADDR, "2001:db8::1/128"),
        ("2001:db8::1-2001:db8::5", IdType.IPV6_ADDR_RANGE, "2001:db8::1-2001:db8::5"),
    ],
)
def test_traffic_selector_text_and_payload(text: str, id_type: IdType, shown: str) -> None:
    ts = TrafficSelector.parse(text)
    p = selector_to_id_payload(ts)
    assert p.id_type == id_type
    assert selector_from_id_payload(p) == ts
    assert str(ts) == shown
    assert TrafficSelector.parse(shown) == ts


def test_traffic_selector_wire_bytes() -> None:
    """RFC 2407 4.6.2.3: IPV4_ADDR_SUBNET = address then mask; L2TP over IPsec uses udp/1701."""
    p = selector_to_id_payload(TrafficSelector.from_network("192.168.0.0/16", protocol=17, port=1701))
    assert encode_payload(p, 0) == bytes.fromhex("00000010 041106a5 c0a80000 ffff0000")


def test_traffic_selector_set_operations() -> None:
    lan = TrafficSelector.parse("10.0.0.0/24")
    host = TrafficSelector.parse("10.0.0.5")
    assert lan.contains(host)
    assert not host.contains(lan)
    assert lan.contains(TrafficSelector.parse("10.0.0.5[udp/53]"))
    assert not TrafficSelector.parse("10.0.0.0/24[tcp]").contains(lan)
    assert not lan.contains(TrafficSelector.parse("::1"))
    assert lan.intersect(TrafficSelector.parse("10.0.0.128-10.0.1.9")) == TrafficSelector.parse(
        "10.0.0.128/25"
    )
    assert lan.intersect(TrafficSelector.parse("10.0.1.0/24")) is None
    assert lan.intersect(TrafficSelector.parse("::/0")) is None
    assert TrafficSelector.parse("0.0.0.0/0[udp]").intersect(TrafficSelector.parse("10.0.0.1[0/500]")) == (
        TrafficSelector.parse("10.0.0.1[udp/500]")
    )
    assert (
        TrafficSelector.parse("10.0.0.0/8[tcp]").intersect(TrafficSelector.parse("10.0.0.0/8[udp]")) is None
    )
    assert (
        TrafficSelector.parse("10.0.0.0/8[udp/1]").intersect(TrafficSelector.parse("10.0.0.0/8[udp/2]"))
        is None
    )
    assert TrafficSelector.any().is_any
    assert TrafficSelector.any(6).is_any
    assert not TrafficSelector.parse("0.0.0.0/0[udp]").is_any
    assert TrafficSelector.parse("10.0.0.1-10.0.0.9").networks() == [
        IPv4Network("10.0.0.1/32"),
        IPv4Network("10.0.0.2/31"),
        IPv4Network("10.0.0.4/30"),
        IPv4Network("10.0.0.8/31"),
    ]
    assert TrafficSelector.parse("10.0.0.0/24").version == 4


def test_traffic_selector_errors() -> None:
    with pytest.raises(LocalProtocolError):
        TrafficSelector(IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"))
    with pytest.raises(LocalProtocolError):
        TrafficSelector(IPv4Address("10.0.0.1"), IPv6Address("::1"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        TrafficSelector.from_address("10.0.0.1", protocol=256)
    with pytest.raises(LocalProtocolError):
        TrafficSelector.parse("nonsense")
    with pytest.raises(LocalProtocolError):
        TrafficSelector.parse("10.0.0.0/8[bogus]")
    for p in (IDPayload(IdType.FQDN, b"x"), IDPayload(77, b""), IDPayload(IdType.IPV4_ADDR, b"\x01")):
        with pytest.raises(RemoteProtocolError) as e:
            selector_from_id_payload(p)
        assert e.value.notify == NotifyType.INVALID_ID_INFORMATION


# --------------------------------------------------------------------------- properties

v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    family = draw(st.sampled_from([v4, v6]))
    a, b = sorted([draw(family), draw(family)])
    if draw(st.booleans()):
        bits = 32 if a.version == 4 else 128
        net = ipaddress.ip_network((a, draw(st.integers(0, bits))), strict=False)
        a, b = net.network_address, net.broadcast_address
    return TrafficSelector(a, b, draw(st.sampled_from([0, 6, 17])), draw(st.sampled_from([0, 500, 4500])))


@given(selectors())
def test_selector_round_trip(ts: TrafficSelector) -> None:
    assert selector_from_id_payload(selector_to_id_payload(ts)) == ts
    assert TrafficSelector.parse(str(ts)) == ts


@given(selectors(), selectors())
def test_selector_intersection_properties(a: TrafficSelector, b: TrafficSelector) -> None:
    both = a.intersect(b)
    assert both == b.intersect(a)
    if both is not None:
        assert a.contains(both)
        assert b.contains(both)
    if a.contains(b):
        assert a.intersect(b) == b


@settings(max_examples=500)
@given(st.integers(0, 255), st.binary(max_size=40))
def test_fuzz_id_payload_contents(id_type: int, data: bytes) -> None:
    p = IDPayload(id_type, data)
    for decode in (Identity.from_payload, selector_from_id_payload):
        try:
            decode(p)  # type: ignore[operator]
        except RemoteProtocolError as e:
            assert e.notify == NotifyType.INVALID_ID_INFORMATION


@settings(max_examples=300)
@given(st.binary(max_size=60).map(lambda b: b"\x30" + bytes([len(b)]) + b))
def test_fuzz_der_dn(data: bytes) -> None:
    try:
        ident = Identity.from_payload(IDPayload(IdType.DER_ASN1_DN, data))
    except RemoteProtocolError:
        return
    str(ident)


identities = st.one_of(
    v4.map(lambda a: Identity(IdType.IPV4_ADDR, a)),
    v6.map(lambda a: Identity(IdType.IPV6_ADDR, a)),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}\.)+[a-z]{2,5}", fullmatch=True).map(
        lambda s: Identity(IdType.FQDN, s)
    ),
    st.from_regex(r"[a-z0-9._+-]{1,10}@[a-z0-9.-]{1,20}", fullmatch=True).map(
        lambda s: Identity(IdType.USER_FQDN, s)
    ),
    st.binary(min_size=1, max_size=20).map(lambda b: Identity(IdType.KEY_ID, b)),
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from([NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME]),
                st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12),
            ),
            # domainComponent is an IA5String (RFC 4519): ASCII only (cryptography >= 49 checks it)
            st.tuples(
                st.just(NameOID.DOMAIN_COMPONENT),
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12),
            ),
        ),
        min_size=1,
        max_size=4,
    ).map(
        lambda attrs: Identity(
            IdType.DER_ASN1_DN,
            x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]).public_bytes(),
        )
    ),
)


@given(identities)
def test_identity_round_trip(ident: Identity) -> None:
    assert Identity.from_payload(ident.to_payload()) == ident
    assert Identity.parse(str(ident)) == ident


def test_a_mistyped_network_is_refused_not_taken_for_a_name() -> None:
    """'10.0.0.0/33' (or any bare text with a slash) used to become an FQDN identity that
    matches nothing: in peer_id_patterns or a policy's peers it silently let nobody in."""
    import pytest

    from tunvpn.ike.certs import IdentityPattern
    from tunvpn.ike.errors import LocalProtocolError

    for text in ("10.0.0.0/33", "10.0.0/8", "vpn/example"):
        with pytest.raises(LocalProtocolError, match="not an address, network or name"):
            Identity.parse(text)
        with pytest.raises(LocalProtocolError):
            IdentityPattern.parse(text)
    assert Identity.parse("10.0.0.0/8").id_type.name == "IPV4_ADDR_SUBNET"
    assert Identity.parse("@odd/name").id_type.name == "FQDN"  # on purpose, with @
