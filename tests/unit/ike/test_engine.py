"""RFC 2409 exchanges between two in-memory engines: every phase 1 mode x auth method x
DH group, then XAUTH, Mode Config and Quick Mode with PFS; and the failure cases."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.helpers.esp_helpers import ipv4
from tests.helpers.ike_pair import (
    CLIENT_IP,
    CLIENT_VIP,
    GATEWAY_IP,
    PROTECTED,
    Pair,
    client_config,
    connect,
    full_tunnel,
    gateway_config,
)
from tunvpn.esp import SEQ32_MAX, DropReason, sa_pair_from_child
from tunvpn.ike import events as ev
from tunvpn.ike import quickmode
from tunvpn.ike.certs import Credential
from tunvpn.ike.config import ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.constants import DHGroup, HashAlgorithm, IPsecAttr, NotifyType
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import DataAttribute, SAPayload, Transform, encode_attributes, encode_payload
from tunvpn.ike.messages import Proposal as WireProposal
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.proposals import (
    DEFAULT_ESP,
    DEFAULT_GROUPS,
    LEGACY_ESP,
    ChildProposal,
    ChildTransform,
    Phase1Policy,
)
from tunvpn.ipsec.algorithms import EncapsulationMode, EspTransform
from tunvpn.ipsec.selectors import TrafficSelector


def established(pair: Pair) -> tuple[ev.Phase1Established, ev.Phase1Established]:
    c = pair.client.of(ev.Phase1Established)
    g = pair.gateway.of(ev.Phase1Established)
    assert c and g, (pair.client.events, pair.gateway.events)
    return c[0], g[0]


# ------------------------------------------------------------------------------ certificates

NOW = datetime.datetime.fromtimestamp(1_800_000_000.0, datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tunvpn test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, san: str | None = None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("tunvpn test CA", ca_key, _name("tunvpn test CA"), ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("rogue CA", other_key, _name("rogue CA"), other_key, ca=True)
    out = {"ca": ca, "other_ca": other_ca}
    for kind, make in (
        ("rsa", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ecdsa", lambda: ec.generate_private_key(ec.SECP256R1())),
    ):
        for who in ("gw", "client"):
            key = make()
            cert = _cert(f"{who}.example", key, ca.subject, ca_key, ca=False, san=f"{who}.example")
            out[f"{who}-{kind}"] = Credential(cert, key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    out["client-rogue"] = Credential(
        _cert("client.example", rogue_key, other_ca.subject, other_key, ca=False, san="client.example"),
        rogue_key,
    )
    return out


# ------------------------------------------------------------------------------ phase 1 matrix

STRONG_GROUPS = [g for g in DEFAULT_GROUPS if g not in (DHGroup.MODP_4096,)]


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
@pytest.mark.parametrize("group", list(DEFAULT_GROUPS), ids=lambda g: g.name)
def test_phase1_psk_every_mode_and_group(mode: str, group: DHGroup) -> None:
    pair = Pair(client_config(phase1=Phase1Policy(groups=(group,))), gateway_config())
    connect(pair, mode)
    c, g = established(pair)
    assert c.exchange == g.exchange == mode
    assert c.suite == g.suite
    assert group.name.lower() in c.suite
    assert not pair.client.of(ev.ProtocolError) and not pair.gateway.of(ev.ProtocolError)


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("group", [DHGroup.MODP_1024, DHGroup.MODP_1536], ids=lambda g: g.name)
def test_phase1_legacy_groups_need_the_opt_in_on_both_sides(mode: str, group: DHGroup) -> None:
    legacy = Phase1Policy(groups=(group,), hashes=(HashAlgorithm.MD5,), allow_legacy=True)
    pair = Pair(client_config(phase1=legacy), gateway_config(phase1=Phase1Policy.with_legacy()))
    connect(pair, mode)
    c, _ = established(pair)
    assert group.name.lower() in c.suite and "md5" in c.suite
    refused = Pair(client_config(phase1=legacy), gateway_config())
    connect(refused, mode)
    assert refused.client.of(ev.Phase1Failed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
@pytest.mark.parametrize("group", list(DEFAULT_GROUPS), ids=lambda g: g.name)
def test_phase1_certificates(pki, mode: str, kind: str, group: DHGroup) -> None:
    client = EngineConfig(
        credential=pki[f"client-{kind}"],
        trusted_cas=(pki["ca"],),
        local_id=Identity.parse("@client.example"),
        phase1=Phase1Policy(groups=(group,)),
    )
    gateway = EngineConfig(
        credential=pki[f"gw-{kind}"],
        trusted_cas=(pki["ca"],),
        local_id=Identity.parse("@gw.example"),
        allow_base_mode=True,
        allow_aggressive_signatures=True,
    )
    pair = Pair(client, gateway)
    connect(pair, mode)
    c, g = established(pair)
    assert c.exchange == g.exchange == mode
    assert c.peer_id == "@gw.example" or "gw.example" in c.peer_id
    assert "client.example" in g.peer_id


def test_strongest_common_suite_wins() -> None:
    """The client offers everything; the gateway picks the strongest it allows (FIG. 6)."""
    pair = Pair(client_config(), gateway_config())
    connect(pair)
    c, _ = established(pair)
    assert c.suite.startswith("aes256-sha512-ecp_521")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            Phase1Policy(encryption=((7, 128),), hashes=(4,), groups=(DHGroup.MODP_2048,)),
            "aes128-sha256-modp_2048",
        ),
        (Phase1Policy(groups=(DHGroup.CURVE25519, DHGroup.MODP_2048)), "aes256-sha512-curve25519"),
        (Phase1Policy(hashes=(2,), groups=(DHGroup.ECP_384, DHGroup.ECP_256)), "aes256-sha1-ecp_384"),
    ],
)
def test_gateway_policy_decides(policy: Phase1Policy, expected: str) -> None:
    pair = Pair(client_config(), gateway_config(phase1=policy))
    connect(pair)
    c, _ = established(pair)
    assert c.suite.startswith(expected)


def test_aggressive_mode_retries_next_group() -> None:
    gateway = gateway_config(phase1=Phase1Policy(groups=(DHGroup.MODP_2048,)))
    pair = Pair(client_config(), gateway)
    connect(pair, "aggressive")
    c, _ = established(pair)
    assert "modp_2048" in c.suite
    refused = [e for e in pair.gateway.events if isinstance(e, ev.ProtocolError)]
    assert refused and all(e.notify == NotifyType.NO_PROPOSAL_CHOSEN for e in refused)


def test_aggressive_signatures_are_off_by_default(pki) -> None:
    """Issue 14: an Aggressive Mode first message with signatures would cost the gateway a DH
    and a signature for an unverified sender; by default it is refused before anything is
    parsed, with the answer an offer of disabled methods gets."""
    client = EngineConfig(
        credential=pki["client-rsa"], trusted_cas=(pki["ca"],), local_id=Identity.parse("@client.example")
    )
    gateway = EngineConfig(
        credential=pki["gw-rsa"], trusted_cas=(pki["ca"],), local_id=Identity.parse("@gw.example")
    )
    pair = Pair(client, gateway)
    connect(pair, "aggressive")
    failed = pair.client.of(ev.Phase1Failed)
    assert failed and failed[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not pair.gateway.of(ev.Phase1Established)
    assert not pair.gateway.engine.ike_sas()  # nothing kept
    pair = Pair(client, replace(gateway, allow_aggressive_signatures=True))
    connect(pair, "aggressive")
    established(pair)


def test_aggressive_psk_is_off_by_default() -> None:
    pair = Pair(client_config(), gateway_config(allow_aggressive_psk=False))
    connect(pair, "aggressive")
    failed = pair.client.of(ev.Phase1Failed)
    assert failed and failed[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not pair.gateway.of(ev.Phase1Established)


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
def test_wrong_psk_fails_with_authentication_failed(mode: str) -> None:
    """Both sides end with AUTHENTICATION-FAILED, but nothing unauthenticated ends a phase 1
    at once (issue 12): the gateway drops what it cannot decrypt (answering with a hint) and
    gives up at its half-open timeout; the client believes an unauthenticated refusal only
    if no valid answer follows within a grace period (Aggressive Mode: the client itself
    finds that HASH_R does not verify, and fails at once)."""
    pair = Pair(client_config(psks=PskTable({"*": b"wrong secret"})), gateway_config())
    connect(pair, mode)
    assert not pair.client.of(ev.Phase1Established) and not pair.gateway.of(ev.Phase1Established)
    errors = pair.gateway.of(ev.ProtocolError) + pair.client.of(ev.ProtocolError)
    assert any(e.notify == NotifyType.AUTHENTICATION_FAILED for e in errors), errors
    pair.advance(2.5)  # the client's grace period
    pair.run()
    (client_failed,) = pair.client.of(ev.Phase1Failed)
    assert client_failed.notify == NotifyType.AUTHENTICATION_FAILED, client_failed
    pair.advance(30)  # the gateway's half-open timeout
    (gateway_failed,) = pair.gateway.of(ev.Phase1Failed)
    assert gateway_failed.notify == NotifyType.AUTHENTICATION_FAILED, gateway_failed
    assert not pair.client.engine.ike_sas() and not pair.gateway.engine.ike_sas()


def test_untrusted_certificate_is_refused(pki) -> None:
    client = EngineConfig(
        credential=pki["client-rogue"], trusted_cas=(pki["ca"],), local_id=Identity.parse("@client.example")
    )
    gateway = EngineConfig(
        credential=pki["gw-ecdsa"], trusted_cas=(pki["ca"],), local_id=Identity.parse("@gw.example")
    )
    pair = Pair(client, gateway)
    connect(pair)
    errors = pair.gateway.of(ev.ProtocolError)
    assert errors and errors[0].notify == NotifyType.INVALID_CERT_AUTHORITY
    assert not pair.gateway.of(ev.Phase1Established)


def test_truncated_and_garbage_messages_never_crash() -> None:
    pair = Pair(client_config(), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    ((data, _, _),) = pair.client.engine.datagrams_to_send()
    for cut in (0, 5, 27, 28, 40, len(data) - 1):
        pair.gateway.engine.receive_datagram(data[:cut], (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    pair.gateway.engine.receive_datagram(
        b"\x00" * 4 + data[:30], (CLIENT_IP, 4500), (GATEWAY_IP, 4500), pair.now
    )
    pair.gateway.drain()
    errors = pair.gateway.of(ev.ProtocolError)
    assert len(errors) >= 5
    assert not pair.gateway.engine.ike_sas()


def test_replayed_message_gets_the_same_answer_once() -> None:
    pair = Pair(client_config(), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    ((first, _, _),) = pair.client.engine.datagrams_to_send()
    pair.gateway.engine.receive_datagram(first, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    ((answer, _, _),) = pair.gateway.engine.datagrams_to_send()
    pair.gateway.engine.receive_datagram(first, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    ((again, _, _),) = pair.gateway.engine.datagrams_to_send()
    assert again == answer
    assert len(pair.gateway.engine.ike_sas()) == 1


def test_replayed_quick_mode_does_not_make_a_second_sa() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    pair.run()
    qm1 = [d for who, d in pair.wire if who == "c>g"][-2]
    pair.gateway.engine.receive_datagram(qm1, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    pair.gateway.drain()
    assert len(pair.gateway.of(ev.ChildSAEstablished)) == 1


def test_retransmission_backs_off_and_gives_up() -> None:
    pair = Pair(client_config(retransmit_tries=3), gateway_config())
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.transfer(pair.client, drop=True)
    sent_at = []
    for _ in range(40):
        pair.advance(1.0)
        if pair.transfer(pair.client, drop=True):
            sent_at.append(pair.now)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(sent_at) == 3 and gaps == sorted(gaps) and gaps[0] < gaps[-1]
    assert pair.client.of(ev.Phase1Failed)


def test_half_open_bound() -> None:
    pair = Pair(client_config(), gateway_config(max_half_open=3))
    for i in range(5):
        engine = pair.client.engine
        engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500 + i), pair.now)
    for data, _, port in pair.client.engine.datagrams_to_send():
        pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, 500), pair.now)
    pair.gateway.drain()
    assert len(pair.gateway.engine.ike_sas()) == 3
    # counted, not logged nor an event per message (issue 14: logs that stay readable)
    assert pair.gateway.engine.drops["half-open limit"] == 2


# ------------------------------------------------------------- XAUTH, Mode Config, Quick Mode


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
@pytest.mark.parametrize("pfs", [DHGroup.ECP_256, None], ids=["pfs", "nopfs"])
def test_xauth_modecfg_quick_mode(mode: str, pfs: DHGroup | None) -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    client_sa, gateway_sa = full_tunnel(pair, mode=mode, pfs=pfs)
    assert client_sa.spi_in == gateway_sa.spi_out and client_sa.spi_out == gateway_sa.spi_in
    assert client_sa.enc_key_in == gateway_sa.enc_key_out and client_sa.enc_key_out == gateway_sa.enc_key_in
    assert client_sa.enc_key_in != client_sa.enc_key_out
    assert client_sa.transform == EspTransform.AES_GCM_16 and client_sa.key_length == 256
    assert str(gateway_sa.remote_ts) == f"{CLIENT_VIP}/32" or str(gateway_sa.remote_ts) == CLIENT_VIP
    assert client_sa.pfs_group == (int(pfs) if pfs else None)
    assert "enc_key" not in repr(client_sa) or client_sa.enc_key_in.hex() not in repr(client_sa)


def test_xauth_failure_deletes_the_sa() -> None:
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    sa_id = connect(pair, "aggressive", xauth=True)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="bad")
    pair.run()
    pair.gateway.engine.xauth_verdict(pair.gateway.of(ev.Phase1Established)[0].sa_id, pair.now, False)
    pair.run()
    assert not pair.client.of(ev.XauthCompleted)[0].success
    assert pair.client.of(ev.IkeSADeleted) and pair.gateway.of(ev.IkeSADeleted)
    assert not pair.client.engine.ike_sas() and not pair.gateway.engine.ike_sas()


def test_quick_mode_outside_policy_is_refused() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    pair.client.engine.start_child(
        sa_id,
        pair.now,
        TrafficSelector.from_address(CLIENT_IP),
        TrafficSelector.from_network("172.16.0.0/12"),
        ChildProposal(),
    )
    pair.run()
    assert pair.gateway.of(ev.ChildSAFailed)
    assert not pair.client.of(ev.ChildSAEstablished)


def test_several_child_sas_in_sequence_and_delete() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    for _ in range(3):
        pair.client.engine.start_child(
            sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
        )
    pair.run()
    children = pair.client.of(ev.ChildSAEstablished)
    assert len(children) == 3 and len({c.spi_in for c in children}) == 3
    pair.client.engine.delete_child(sa_id, children[0].spi_in, pair.now)
    pair.run()
    deleted = pair.gateway.of(ev.ChildSADeleted)
    assert deleted and deleted[0].spi_out == children[0].spi_in and deleted[0].by_peer
    pair.client.engine.delete_ike_sa(sa_id, pair.now)
    pair.run()
    assert pair.gateway.of(ev.IkeSADeleted)[0].by_peer
    assert not pair.gateway.engine.ike_sas()


def test_dpd_detects_a_dead_peer_and_keeps_a_live_one() -> None:
    pair = Pair(
        client_config(dpd_interval=10, dpd_timeout=40), gateway_config(dpd_interval=10, dpd_timeout=40)
    )
    connect(pair)
    for _ in range(8):  # both alive: R-U-THERE answered, nothing deleted
        pair.advance(5)
        pair.run()
    assert not pair.client.of(ev.IkeSADeleted)
    assert any(b"\x8d\x28" in d for _, d in pair.wire) or len(pair.wire) > 6
    for _ in range(12):  # the gateway goes silent
        pair.advance(5)
        pair.transfer(pair.client, drop=True)
        pair.gateway.engine.datagrams_to_send()
    assert pair.client.of(ev.IkeSADeleted)[0].reason == "dead peer"


def test_nat_detected_and_float_to_4500() -> None:
    pair = Pair(client_config(), gateway_config(), nat=True)
    connect(pair)
    c, g = established(pair)
    assert c.nat_local and g.nat_remote
    assert pair.gateway.of(ev.PeerAddressChanged)
    assert any(d[:4] == b"\x00\x00\x00\x00" for _, d in pair.wire)


def test_forced_encapsulation_gives_udp_tunnel_mode() -> None:
    pair = Pair(client_config(force_encap=True), gateway_config())
    sa_id = connect(pair)
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    pair.run()
    child = pair.client.of(ev.ChildSAEstablished)[0]
    assert child.encapsulation == 3 and child.remote[1] == 4500


def test_base_mode_falls_back_to_main_mode_with_a_peer_that_lacks_it() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base")
    ((data, _, _),) = pair.client.engine.datagrams_to_send()
    # what a peer without Base Mode answers (strongSwan: INVALID-EXCHANGE-TYPE)
    from tunvpn.ike.constants import ExchangeType, ProtocolId
    from tunvpn.ike.messages import Message, NotifyPayload, encode_message

    refusal = Message(
        data[:8],
        b"\x11" * 8,
        ExchangeType.INFORMATIONAL,
        0,
        0,
        (NotifyPayload(NotifyType.INVALID_EXCHANGE_TYPE, ProtocolId.ISAKMP, data[:8] + b"\x11" * 8),),
    )
    pair.client.engine.receive_datagram(
        encode_message(refusal), (GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now
    )
    pair.client.drain()
    pair.run()
    c, _ = established(pair)
    assert c.exchange == "main" and c.sa_id[:8] == sa_id[:8]


def test_retransmitted_xauth_request_while_the_user_types_is_ignored() -> None:
    """The gateway resends its XAUTH request before the user answered: no PAYLOAD-MALFORMED
    (found against charon: the retransmission must not be decrypted with the moved IV)."""
    pair = Pair(client_config(), gateway_config(require_xauth=True))
    sa_id = connect(pair, "main", xauth=True)
    assert pair.client.of(ev.XauthRequested)
    pair.advance(1.5)  # the gateway retransmits its request
    pair.run()
    assert not pair.client.of(ev.ProtocolError) and not pair.gateway.of(ev.ProtocolError)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="pw")
    pair.run()
    assert pair.gateway.of(ev.XauthCredentials)


def test_gateway_without_xauth_does_not_choose_an_xauth_method() -> None:
    pair = Pair(client_config(), gateway_config())
    connect(pair, "main", xauth=True)
    c, _ = established(pair)
    assert c.suite.endswith("/pre_shared_key")
    pair = Pair(client_config(), gateway_config(xauth_available=True))
    connect(pair, "main", xauth=True)
    c, _ = established(pair)
    assert c.suite.endswith("/xauth_init_preshared")


def test_responder_accepts_a_set_of_pfs_groups() -> None:
    proposal = ChildProposal(pfs_group=None, accept_pfs=frozenset({DHGroup.CURVE25519, DHGroup.ECP_384}))
    pair = Pair(client_config(), gateway_config(children=(ChildPolicy("net", PROTECTED, None, proposal),)))
    sa_id = connect(pair)
    local = TrafficSelector.from_address(CLIENT_IP)
    for pfs in (DHGroup.CURVE25519, None, DHGroup.ECP_384, DHGroup.MODP_2048):
        pair.client.engine.start_child(sa_id, pair.now, local, PROTECTED, ChildProposal(pfs_group=pfs))
        pair.run()
    groups = [c.pfs_group for c in pair.client.of(ev.ChildSAEstablished)]
    assert groups == [DHGroup.CURVE25519, None, DHGroup.ECP_384]
    assert len(pair.gateway.of(ev.ChildSAFailed)) == 1


def test_initiator_floats_to_the_peers_natt_port() -> None:
    pair = Pair(client_config(force_encap=True, natt_port=14500, peer_natt_port=4500), gateway_config())
    connect(pair)
    floated = [d for who, d in pair.wire if who == "c>g" and d[:4] == b"\x00\x00\x00\x00"]
    assert floated
    assert pair.gateway.of(ev.PeerAddressChanged)[0].new == (CLIENT_IP, 14500)


def test_quick_mode_with_range_and_protocol_port_selectors() -> None:
    """ID payloads of every shape (RFC 2407 4.6.2): a range on our side, a UDP port on theirs."""
    l2tp = TrafficSelector.parse("10.20.0.1/32[udp/1701]")
    policy = ChildPolicy("l2tp", TrafficSelector.parse("10.20.0.0/16[udp/1701]"), None, ChildProposal())
    pair = Pair(client_config(), gateway_config(children=(policy,)))
    sa_id = connect(pair)
    mine = TrafficSelector.from_range(CLIENT_IP, CLIENT_IP, 17, 1701)
    pair.client.engine.start_child(sa_id, pair.now, mine, l2tp, ChildProposal())
    pair.run()
    gw = pair.gateway.of(ev.ChildSAEstablished)[0]
    assert gw.local_ts == l2tp and gw.remote_ts == mine
    # another port is outside the policy
    pair.client.engine.start_child(
        sa_id, pair.now, mine, TrafficSelector.parse("10.20.0.1/32[udp/53]"), ChildProposal()
    )
    pair.run()
    assert pair.gateway.of(ev.ChildSAFailed)


def test_responder_lifetime_lowers_seconds_and_kilobytes() -> None:
    gw_policy = ChildProposal(lifetime_seconds=600, lifetime_kilobytes=1000, pfs_group=None)
    pair = Pair(client_config(), gateway_config(children=(ChildPolicy("net", PROTECTED, None, gw_policy),)))
    sa_id = connect(pair)
    offer = ChildProposal(lifetime_seconds=7200, lifetime_kilobytes=50_000, pfs_group=None)
    pair.client.engine.start_child(sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, offer)
    pair.run()
    client_sa = pair.client.of(ev.ChildSAEstablished)[0]
    gateway_sa = pair.gateway.of(ev.ChildSAEstablished)[0]
    assert (client_sa.lifetime_seconds, client_sa.lifetime_kilobytes) == (600, 1000)
    assert (gateway_sa.lifetime_seconds, gateway_sa.lifetime_kilobytes) == (600, 1000)


def test_mode_config_push_set_and_ack() -> None:
    pair = Pair(client_config(), gateway_config())
    connect(pair)
    gw_sa = pair.gateway.of(ev.Phase1Established)[0].sa_id
    pushed = ModeConfig(
        address=ipaddress.IPv4Address("10.99.0.9"), split_include=(ipaddress.IPv4Network("10.30.0.0/16"),)
    )
    pair.gateway.engine.push_mode_config(gw_sa, pair.now, pushed)
    pair.run()
    got = pair.client.of(ev.ModeConfigReceived)
    assert got and got[0].pushed and str(got[0].config.address) == "10.99.0.9"
    assert not pair.gateway.of(ev.ProtocolError) and not pair.client.of(ev.ProtocolError)
    assert not any(ex.sent.at for sa in pair.gateway.engine.ike_sas() for ex in sa.exchanges.values())


# ------------------------------------------------------------- RFC 4304 extended sequence numbers


def quick_mode(pair: Pair, offer: ChildProposal) -> tuple[ev.ChildSAEstablished, ev.ChildSAEstablished]:
    sa_id = connect(pair)
    pair.client.engine.start_child(sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, offer)
    pair.run()
    client_sas, gateway_sas = pair.client.of(ev.ChildSAEstablished), pair.gateway.of(ev.ChildSAEstablished)
    assert client_sas and gateway_sas, (pair.client.events, pair.gateway.events)
    return client_sas[0], gateway_sas[0]


def esn_gateway(esn: tuple[bool, ...]) -> EngineConfig:
    return gateway_config(children=(ChildPolicy("net", PROTECTED, None, ChildProposal(esn=esn)),))


def test_quick_mode_prefers_32_bit_by_default_and_negotiates_esn_when_offered_first() -> None:
    """ESN costs the data path's fast receive loop (docs/proposals.md) and buys nothing before
    2^32 packets (more than an hour at our peak rate): by default it is offered second."""
    client_sa, gateway_sa = quick_mode(Pair(client_config(), gateway_config()), ChildProposal())
    assert not client_sa.esn and not gateway_sa.esn
    client_sa, gateway_sa = quick_mode(
        Pair(client_config(), gateway_config()), ChildProposal(esn=(True, False))
    )
    assert client_sa.esn and gateway_sa.esn
    assert (client_sa.transform, client_sa.key_length) == (EspTransform.AES_GCM_16, 256)


@pytest.mark.parametrize(
    ("offer", "accept", "expected"),
    [
        ((True, False), (False,), False),  # the responder disallows ESN: the next transform
        ((False, True), (True, False), False),  # the initiator prefers 32-bit: its order wins
        ((False,), (True, False), False),
        ((True,), (True,), True),
    ],
)
def test_esn_choice_follows_offer_order_and_responder_policy(
    offer: tuple[bool, ...], accept: tuple[bool, ...], expected: bool
) -> None:
    client_sa, gateway_sa = quick_mode(Pair(client_config(), esn_gateway(accept)), ChildProposal(esn=offer))
    assert client_sa.esn is expected and gateway_sa.esn is expected
    # the ESN preference never costs the suite: still the strongest one
    assert (gateway_sa.transform, gateway_sa.key_length) == (EspTransform.AES_GCM_16, 256)


def test_esn_only_offer_to_a_responder_without_esn_is_refused() -> None:
    pair = Pair(client_config(), esn_gateway((False,)))
    sa_id = connect(pair)
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal(esn=(True,))
    )
    pair.run()
    failed = pair.gateway.of(ev.ChildSAFailed)
    assert failed and failed[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not pair.client.of(ev.ChildSAEstablished)


def test_initiator_refuses_an_esn_answer_it_did_not_offer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A responder that answers with the ESN attribute added to a 32-bit-only offer."""
    honest = quickmode.select_child_transform

    def add_esn(*args, **kwargs):  # type: ignore[no-untyped-def]
        prop, t, _ = honest(*args, **kwargs)
        forged = Transform(
            t.number, t.transform_id, (*t.attributes, DataAttribute(IPsecAttr.EXTENDED_SEQUENCE_NUMBER, 1))
        )
        return prop, forged, ChildTransform.from_transform(forged)

    monkeypatch.setattr(quickmode, "select_child_transform", add_esn)
    pair = Pair(client_config(), gateway_config())
    sa_id = connect(pair)
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal(esn=(False,))
    )
    pair.run()
    assert pair.gateway.of(ev.ChildSAEstablished)[0].esn  # the forger installed ESN ...
    assert not pair.client.of(ev.ChildSAEstablished)  # ... we did not follow


def test_sas_built_from_the_events_carry_esn_past_2_32() -> None:
    """One negotiated SA pair, both directions, across the 32-bit boundary (RFC 4303 A2.1)."""
    client_sa, gateway_sa = quick_mode(Pair(client_config(), gateway_config()), ChildProposal(esn=(True,)))
    c_in, c_out = sa_pair_from_child(client_sa, pair_now := 0.0)
    g_in, g_out = sa_pair_from_child(gateway_sa, pair_now)
    assert c_in.esn and c_out.esn and g_in.esn and g_out.esn
    for sender, receiver, src, dst in (
        (c_out, g_in, CLIENT_IP, "10.20.0.1"),
        (g_out, c_in, "10.20.0.1", CLIENT_IP),
    ):
        packets = [ipv4(src=src, dst=dst, payload=bytes([i]) * 40) for i in range(6)]
        # the receiver has to have followed the count (a number 2^32 - 3 ahead of a fresh
        # window reads as the previous epoch, RFC 4303 A2.1): one packet half-way first
        sender.seq = 1 << 31
        assert receiver.decrypt_batch(sender.encrypt_batch(packets[:1])) == packets[:1]
        sender.seq = SEQ32_MAX - 3
        sealed = sender.encrypt_batch(packets)
        # on the wire only the low half: ..., 2^32 - 1, 0, 1, ...
        assert [int.from_bytes(p[4:8], "big") for p in sealed] == [
            SEQ32_MAX - 2,
            SEQ32_MAX - 1,
            SEQ32_MAX,
            0,
            1,
            2,
        ]
        assert receiver.decrypt_batch(sealed[:3]) == packets[:3]
        assert receiver.decrypt_buffer(b"".join(sealed[3:]), len(sealed[3]), []) == sealed[3:]  # careful path
        assert receiver.decrypt_batch(sealed[3:]) == packets[3:]
        assert receiver._window().top == SEQ32_MAX + 3
        assert receiver.decrypt_batch(sealed[3:4]) == []  # a replay past the boundary
        assert receiver.drop_counts() == {DropReason.REPLAY: 1}


def test_esn_offer_order_bytes_and_size() -> None:
    """RFC 4304 section 2: attribute 11 in the TV format, value 1; absent means 32-bit."""
    tunnel = int(EncapsulationMode.TUNNEL)
    offer = ChildProposal().transforms(tunnel, allow_private=True)
    decoded = [ChildTransform.from_transform(t) for t in offer]
    # each suite strongest first, without ESN and then with it
    assert [(c.suite, c.esn) for c in decoded] == [(s, e) for s in DEFAULT_ESP for e in (False, True)]  # type: ignore[union-attr]
    assert [t.number for t in offer] == list(range(1, 13))
    esn_attr = bytes.fromhex("800b0001")  # AF=1 | type 11, value 1
    assert encode_attributes(offer[1].attributes).endswith(esn_attr)
    assert esn_attr not in encode_attributes(offer[0].attributes)
    plain = ChildProposal(esn=(False,)).transforms(tunnel, allow_private=True)
    assert [t.attributes for t in plain] == [t.attributes for t in offer[0::2]]
    # the largest default offer (legacy suites, volume lifetime) stays well inside one datagram
    biggest = ChildProposal(esp=DEFAULT_ESP + LEGACY_ESP, lifetime_kilobytes=1 << 20)
    transforms = biggest.transforms(tunnel, allow_private=True)
    wire = encode_payload(SAPayload((WireProposal(1, 3, bytes(4), transforms),)), 0)
    assert len(transforms) == 18 and len(wire) < 900


def test_esn_attribute_values() -> None:
    def with_esn(value: int | None) -> ChildTransform | None:
        attrs = [DataAttribute(IPsecAttr.KEY_LENGTH, 256)]
        if value is not None:
            attrs.append(DataAttribute(IPsecAttr.EXTENDED_SEQUENCE_NUMBER, value))
        return ChildTransform.from_transform(Transform(1, int(EspTransform.AES_GCM_16), tuple(attrs)))

    assert with_esn(1).esn is True  # type: ignore[union-attr]
    assert with_esn(None).esn is False  # type: ignore[union-attr]
    assert with_esn(0).esn is False  # type: ignore[union-attr]  # RESERVED, read as absent
    assert with_esn(2) is None and with_esn(61440) is None  # unknown: not a transform for us
    with pytest.raises(LocalProtocolError, match="ESN preference"):
        ChildProposal(esn=())
    with pytest.raises(LocalProtocolError, match="ESN preference"):
        ChildProposal(esn=(True, True))


def test_a_client_answers_no_phase_1_that_another_peer_starts() -> None:
    """Anyone holding the group pre-shared key (every user of the VPN) could complete a phase
    1 with another user's client, which answered as a responder: now a client's engine
    (responder = False) drops such a first message unread, keeps nothing and answers nothing."""
    pair = Pair(client_config(), client_config(responder=False))
    for mode in ("main", "aggressive", "base"):
        pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode=mode)
        pair.client.drain()
        pair.run()
    assert not pair.gateway.of(ev.Phase1Established) and not pair.client.of(ev.Phase1Established)
    assert not pair.gateway.engine.ike_sas()
    assert pair.gateway.engine.drops["first message to a peer that answers none"] == 3


@pytest.mark.parametrize("xauth", [False, True])
def test_the_phase_1_offer_on_the_wire_is_strongest_first(xauth: bool) -> None:
    """Issue 18 (seed: 'offer every suite, strongest first'): the transforms of our Main Mode
    message 1, read back from the wire, never get stronger; the whole offer after a refusal
    of the short one (issue 16) too."""
    from tunvpn.ike.engine import IkeEngine
    from tunvpn.ike.messages import SAPayload, decode_message
    from tunvpn.ike.proposals import Phase1Suite

    def strengths(message: bytes) -> list[int]:
        [sa_payload] = [p for p in decode_message(message).payloads if isinstance(p, SAPayload)]
        suites = [Phase1Suite.from_transform(t) for t in sa_payload.proposals[0].transforms]
        assert all(s is not None for s in suites)
        return [s.strength for s in suites if s is not None]

    engine = IkeEngine(client_config())
    engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), 0.0, mode="main", xauth=xauth)
    [(short, _, _)] = engine.datagrams_to_send()
    first = strengths(short)
    assert first == sorted(first, reverse=True) and first[0] == 256
    [sa] = engine.ike_sas()
    assert sa.later_offers
    for later in sa.later_offers:
        strength = [s.strength for s in later]
        assert strength == sorted(strength, reverse=True) and strength[0] == 256
    # one auth method per later offer, XAUTH first; together they are the whole offer
    methods = [later[0].auth for later in sa.later_offers]
    assert all({s.auth for s in later} == {later[0].auth} for later in sa.later_offers)
    assert methods == sorted(set(methods), key=methods.index) and len(methods) == (2 if xauth else 1)
    whole = engine.config.phase1.enumerate(engine.config.auth_methods(xauth=xauth, responder=False))
    assert sorted(map(repr, whole)) == sorted(repr(s) for later in sa.later_offers for s in later)
