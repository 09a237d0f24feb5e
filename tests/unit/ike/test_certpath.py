"""Client certificate limits on the gateway: extended key usage and subject/SAN patterns
(tunvpn.ike.certs.IdentityPattern, the one matcher of identity patterns), from
gateway.toml's [gateway.certificate] to the engine, and a refused client in Main Mode."""

from __future__ import annotations

import datetime
import ipaddress
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.config.gateway import ConfigFileError, load_gateway_config
from tunvpn.config.profile import load_profile
from tunvpn.gateway.daemon import build_engine_config, options_from_config
from tunvpn.ike import events as ev
from tunvpn.ike.certpath import EKU_IPSEC_IKE, PeerCertificatePolicy
from tunvpn.ike.certs import Credential, IdentityPattern
from tunvpn.ike.config import EngineConfig
from tunvpn.ike.constants import NotifyType
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.revocation import RevocationMode
from tunvpn.shell.crls import peer_certificate_policy

NOW = datetime.datetime.fromtimestamp(1_800_000_000.0, datetime.UTC)  # ike_pair.Pair's clock
DAY = datetime.timedelta(days=1)
PEM = serialization.Encoding.PEM


def _name(cn: str, ou: str = "staff") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = (
    x509.CertificateBuilder()
    .subject_name(_name("Example CA", "pki"))
    .issuer_name(_name("Example CA", "pki"))
    .public_key(CA_KEY.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(NOW - 30 * DAY)
    .not_valid_after(NOW + 365 * DAY)
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(CA_KEY, hashes.SHA256())
)


def _credential(
    cn: str, *, ou: str = "staff", san: list[x509.GeneralName] | None = None, eku=None
) -> Credential:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, ou))
        .issuer_name(CA.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san or [x509.DNSName(cn)]), critical=False)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return Credential(builder.sign(CA_KEY, hashes.SHA256()), key)


# ----------------------------------------------------------------------------- the matcher


ALICE = _credential(
    "alice.staff.example",
    san=[
        x509.DNSName("alice.staff.example"),
        x509.RFC822Name("alice@Example.com"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    ],
).certificate


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", True),
        ("CN=*,OU=staff,O=Example", True),
        ("CN=ALICE.*, OU=Staff, O=example", True),  # values case-insensitive, spaces after commas
        ("CN=*,OU=guests,O=Example", False),
        ("CN=*,O=Example", False),  # the same RDNs are needed, not a subset
        ("@*.staff.example", True),
        ("@*.guest.example", False),
        ("*@example.com", True),
        ("bob@example.com", False),
        ("10.1.0.0/16", True),
        ("10.1.2.3", True),
        ("10.9.0.0/16", False),
        ("keyid:alice*", False),  # certificates have no key IDs
    ],
)
def test_pattern_against_certificate(pattern: str, expected: bool) -> None:
    assert IdentityPattern.parse(pattern).matches_certificate(ALICE) is expected


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        ("keyid:staff-*", "keyid:staff-berlin", True),
        ("keyid:staff-*", "keyid:guests", False),
        ("@*.example", "@vpn.example", True),
        ("@*.example", "vpn@example", False),
        ("*@example.com", "Bob@Example.com", True),
        ("192.0.2.0/24", "192.0.2.77", True),
        ("192.0.2.0/24", "198.51.100.1", False),
        ("192.0.2.1-192.0.2.9", "192.0.2.5", True),
        ("CN=*,OU=staff,O=Example", "CN=bob,OU=staff,O=Example", True),
        ("CN=*,OU=staff,O=Example", "CN=bob,OU=guests,O=Example", False),
    ],
)
def test_pattern_against_phase1_identity(pattern: str, identity: str, expected: bool) -> None:
    assert IdentityPattern.parse(pattern).matches(Identity.parse(identity)) is expected


def test_bad_pattern() -> None:
    with pytest.raises(LocalProtocolError):
        IdentityPattern.parse("")
    with pytest.raises(ValueError, match="peer_id_patterns"):
        peer_certificate_policy(peer_id_patterns=["dn:CN"])
    with pytest.raises(ValueError, match="peer_eku 'webmail'"):
        peer_certificate_policy(peer_eku=["webmail"])
    with pytest.raises(ValueError, match="revocation 'always'"):
        peer_certificate_policy(revocation="always")


# ----------------------------------------------------------------------------- through the engine

GATEWAY = _credential("gw.example", ou="servers", eku=[ExtendedKeyUsageOID.SERVER_AUTH])


def _login(client: Credential, policy: PeerCertificatePolicy) -> Pair:
    gateway = EngineConfig(
        credential=GATEWAY,
        trusted_cas=(CA,),
        local_id=Identity.parse("@gw.example"),
        peer_certificates=policy,
    )
    cn = client.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    pair = Pair(
        EngineConfig(credential=client, trusted_cas=(CA,), local_id=Identity.parse(f"@{cn}")),
        gateway,
    )
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.client.drain()
    pair.run()
    return pair


def test_client_outside_the_subject_pattern_is_refused() -> None:
    """A certificate from the gateway's own CA, but for a guest, gets no phase 1 on a
    gateway limited to staff; a staff certificate does."""
    policy = peer_certificate_policy(peer_id_patterns=["CN=*,OU=staff,O=Example"])
    guest = _login(_credential("mallory.guest.example", ou="guests"), policy)
    assert not guest.gateway.of(ev.Phase1Established)
    errors = guest.gateway.of(ev.ProtocolError)
    assert errors and errors[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "matches none of the allowed peer identities" in str(errors[0])
    staff = _login(_credential("alice.staff.example"), policy)
    assert staff.gateway.of(ev.Phase1Established)


def test_client_without_the_required_eku_is_refused() -> None:
    policy = peer_certificate_policy(peer_eku=["ipsecIKE"])
    plain_tls = _login(_credential("bob.staff.example", eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), policy)
    assert not plain_tls.gateway.of(ev.Phase1Established)
    errors = plain_tls.gateway.of(ev.ProtocolError)
    assert errors and errors[0].notify == NotifyType.INVALID_CERTIFICATE
    ike = _login(_credential("carol.staff.example", eku=[EKU_IPSEC_IKE]), policy)
    assert ike.gateway.of(ev.Phase1Established)


# ----------------------------------------------------------------------------- gateway.toml


def _gateway_dir(tmp_path: Path) -> Path:
    (tmp_path / "gw.crt").write_bytes(GATEWAY.certificate.public_bytes(PEM))
    (tmp_path / "ca.crt").write_bytes(CA.public_bytes(PEM))
    key = tmp_path / "gw.key"
    key.write_bytes(
        GATEWAY.private_key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
        .sign(CA_KEY, hashes.SHA256())
    )
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(PEM))
    return tmp_path


CONFIG = """\
[gateway]
listen = "192.0.2.1"

[gateway.certificate]
cert = "gw.crt"
key = "gw.key"
ca = "ca.crt"
revocation = "strict"
crl_files = ["ca.crl"]
peer_eku = ["clientAuth", "ipsecIKE"]
peer_id_patterns = ["CN=*,OU=staff,O=Example", "@*.admins.example"]

[network]
pool = "10.79.0.10-10.79.0.20"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
"""


def _load(directory: Path, text: str):
    path = directory / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return load_gateway_config(path, env={})


def test_gateway_toml_certificate_limits(tmp_path: Path) -> None:
    config = _load(_gateway_dir(tmp_path), CONFIG)
    policy = config.peer_certificates
    assert policy.revocation is RevocationMode.STRICT
    assert policy.ekus == {ExtendedKeyUsageOID.CLIENT_AUTH, EKU_IPSEC_IKE}
    assert [str(p) for p in policy.identities] == ["CN=*,OU=staff,O=Example", "@*.admins.example"]
    assert len(policy.crls.candidates(ALICE)) == 1  # the CRL file, for the CA's certificates
    # ... and it is what the engine gets.
    assert build_engine_config(options_from_config(config)).peer_certificates is policy


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (('"strict"', '"sometimes"'), "gateway.certificate.revocation", "strict, ifuri or relaxed"),
        (('["ca.crl"]', '["missing.crl"]'), "gateway.certificate.crl_files", "missing.crl"),
        (('"ipsecIKE"]', '"ipsec"]'), "gateway.certificate.peer_eku", "'ipsec'"),
        (('"@*.admins.example"', '"dn:CN"'), "gateway.certificate.peer_id_patterns", "dn:CN"),
    ],
)
def test_gateway_toml_certificate_limit_errors(
    tmp_path: Path, change: tuple[str, str], key: str, reason: str
) -> None:
    with pytest.raises(ConfigFileError) as info:
        _load(_gateway_dir(tmp_path), CONFIG.replace(*change))
    assert info.value.key == key and reason in info.value.reason, str(info.value)


# ----------------------------------------------------------------------------- the client's profile


def test_profile_revocation_settings_and_a_revoked_gateway(tmp_path: Path) -> None:
    """The client refuses a gateway whose certificate its CRL file lists (a stolen gateway
    key, revoked by the CA, can no longer collect users' passwords)."""
    _gateway_dir(tmp_path)
    client = _credential("alice.staff.example")
    (tmp_path / "me.crt").write_bytes(client.certificate.public_bytes(PEM))
    key = tmp_path / "me.key"
    key.write_bytes(
        client.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key.chmod(0o600)
    revoking = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(GATEWAY.certificate.serial_number)
            .revocation_date(NOW - DAY)
            .build()
        )
        .sign(CA_KEY, hashes.SHA256())
    )
    (tmp_path / "revoked-gw.crl").write_bytes(revoking.public_bytes(PEM))
    profile_path = tmp_path / "client.toml"
    profile_path.write_text(
        textwrap.dedent("""\
        gateway = "198.51.100.1"
        cert = "me.crt"
        key = "me.key"
        ca = "ca.crt"
        revocation = "ifuri"
        crl_files = "revoked-gw.crl"
        """)
    )
    profile_path.chmod(0o600)
    profile = load_profile(profile_path, env={})
    assert profile.peer_certificates.revocation is RevocationMode.IFURI
    pair = Pair(
        EngineConfig(
            credential=profile.credential,
            trusted_cas=profile.trusted_cas,
            local_id=Identity.parse("@alice.staff.example"),
            peer_certificates=profile.peer_certificates,
        ),
        EngineConfig(credential=GATEWAY, trusted_cas=(CA,), local_id=Identity.parse("@gw.example")),
    )
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.client.drain()
    pair.run()
    assert not pair.client.of(ev.Phase1Established)
    errors = pair.client.of(ev.ProtocolError)
    assert errors and "revoked" in str(errors[0])
    with pytest.raises(ConfigFileError) as info:
        profile_path.write_text(profile_path.read_text().replace('"ifuri"', '"never"'))
        load_profile(profile_path, env={})
    assert info.value.key == "revocation"


def test_a_users_certificate_cannot_pose_as_the_gateway() -> None:
    """Mallory holds a client certificate (clientAuth only) from the gateway's CA and plays
    the gateway: the client refuses her in phase 1, before it would send its password."""
    mallory = _credential("gw.example", ou="guests", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    alice = _credential("alice.staff.example", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pair = Pair(
        EngineConfig(credential=alice, trusted_cas=(CA,), local_id=Identity.parse("@alice.staff.example")),
        EngineConfig(credential=mallory, trusted_cas=(CA,), local_id=Identity.parse("@gw.example")),
    )
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.client.drain()
    pair.run()
    assert not pair.client.of(ev.Phase1Established)
    errors = pair.client.of(ev.ProtocolError)
    assert errors and "extendedKeyUsage" in str(errors[0])
