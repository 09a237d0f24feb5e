"""X.509 credentials, IKEv1 RSA/ECDSA signatures and certificate paths (tunvpn.ike.certs)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunvpn.ike.certpath import (
    EKU_IPSEC_IKE,
    RESPONDER_EKUS,
    verify_certificate,
    verify_chain,
    verify_peer_certificate,
)
from tunvpn.ike.certs import (
    Credential,
    ca_distinguished_name,
    certificate_matches_identity,
    load_certificates,
    parse_certificate,
    rsa_private_operation,
    sign,
    verify,
)
from tunvpn.ike.constants import AuthMethod, IdType, NotifyType
from tunvpn.ike.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
DER = serialization.Encoding.DER


def _name(cn: str, org: str = "tunvpn test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    not_before: datetime.datetime = NOW - 30 * DAY,
    not_after: datetime.datetime = NOW + 365 * DAY,
    san: list[x509.GeneralName] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    key_usage: x509.KeyUsage | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if key_usage:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


# Module-scope PKI: one RSA 2048 key (the slow one), the rest on P-256 / P-384.
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = _name("tunvpn test CA")
CA = _certificate(CA_NAME, CA_KEY, ca=True)
OTHER_CA_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_CA = _certificate(_name("other CA"), OTHER_CA_KEY, ca=True)
INTERMEDIATE_KEY = ec.generate_private_key(ec.SECP256R1())
INTERMEDIATE = _certificate(_name("tunvpn intermediate"), INTERMEDIATE_KEY, CA_NAME, CA_KEY, ca=True)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
LEAF_SAN: list[x509.GeneralName] = [
    x509.DNSName("vpn.example.com"),
    x509.RFC822Name("gw@Example.COM"),
    x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
    x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
]
RSA_LEAF = _certificate(_name("vpn.example.com"), RSA_KEY, CA_NAME, CA_KEY, san=LEAF_SAN)
P256_LEAF = _certificate(_name("p256 leaf"), P256_KEY, CA_NAME, CA_KEY)
P384_LEAF = _certificate(_name("p384 leaf"), P384_KEY, CA_NAME, CA_KEY)

RSA_CREDENTIAL = Credential(RSA_LEAF, RSA_KEY)
P256_CREDENTIAL = Credential(P256_LEAF, P256_KEY)
P384_CREDENTIAL = Credential(P384_LEAF, P384_KEY)

HASH_SHA1 = hashlib.sha1(b"HASH_I").digest()
HASH_SHA256 = hashlib.sha256(b"HASH_R").digest()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


# ----------------------------------------------------------------------------- credentials


def test_credential_load_pem_with_chain_and_password() -> None:
    cert_pem = RSA_LEAF.public_bytes(serialization.Encoding.PEM) + INTERMEDIATE.public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    credential = Credential.load(cert_pem, key_pem, password=b"secret")
    assert credential.certificate == RSA_LEAF
    assert credential.chain == (INTERMEDIATE,)
    assert credential.auth_method is AuthMethod.RSA_SIGNATURES
    assert credential.cert_der() == _der(RSA_LEAF)
    with pytest.raises(LocalProtocolError):
        Credential.load(cert_pem, key_pem, password=b"wrong")


def test_credential_auth_methods() -> None:
    assert P256_CREDENTIAL.auth_method is AuthMethod.ECDSA_SHA256_P256
    assert P384_CREDENTIAL.auth_method is AuthMethod.ECDSA_SHA384_P384


def test_credential_key_must_match_certificate() -> None:
    key_pem = P256_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(LocalProtocolError):
        Credential.load(RSA_LEAF.public_bytes(serialization.Encoding.PEM), key_pem)


def test_credential_repr_hides_key() -> None:
    text = repr(RSA_CREDENTIAL)
    assert "vpn.example.com" in text
    assert str(RSA_KEY.private_numbers().d)[:20] not in text
    assert "RSAPrivateKey" not in text


def test_load_certificates() -> None:
    assert load_certificates(_der(CA)) == (CA,)
    assert load_certificates(CA.public_bytes(serialization.Encoding.PEM)) == (CA,)
    with pytest.raises(LocalProtocolError):
        load_certificates(b"not a certificate")


# ----------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    "method", [AuthMethod.RSA_SIGNATURES, AuthMethod.XAUTH_INIT_RSA, AuthMethod.HYBRID_INIT_RSA]
)
@pytest.mark.parametrize("hash_value", [HASH_SHA1, HASH_SHA256], ids=["sha1", "sha256"])
def test_rsa_round_trip(method: AuthMethod, hash_value: bytes) -> None:
    signature = sign(RSA_CREDENTIAL, method, hash_value)
    assert len(signature) == 256
    verify(RSA_KEY.public_key(), method, hash_value, signature)
    verify(RSA_LEAF, method, hash_value, signature)


def test_rsa_signature_is_textbook_pkcs1_without_digest_info() -> None:
    # What strongSwan (SIGN_RSA_EMSA_PKCS1_NULL) and racoon (RSA_private_encrypt) produce:
    # (0x00 0x01 FF..FF 0x00 HASH)^d mod n, with no DigestInfo around HASH.
    signature = sign(RSA_CREDENTIAL, AuthMethod.RSA_SIGNATURES, HASH_SHA1)
    numbers = RSA_KEY.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    encoded = b"\x00\x01" + b"\xff" * (256 - 3 - len(HASH_SHA1)) + b"\x00" + HASH_SHA1
    assert signature == pow(int.from_bytes(encoded, "big"), d, n).to_bytes(256, "big")
    assert RSA_KEY.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None) == HASH_SHA1
    # Deterministic despite the random blinding.
    assert sign(RSA_CREDENTIAL, AuthMethod.RSA_SIGNATURES, HASH_SHA1) == signature


@pytest.mark.parametrize(
    ("credential", "method", "size"),
    [
        (P256_CREDENTIAL, AuthMethod.ECDSA_SHA256_P256, 64),
        (P384_CREDENTIAL, AuthMethod.ECDSA_SHA384_P384, 96),
    ],
    ids=["P-256", "P-384"],
)
def test_ecdsa_round_trip(credential: Credential, method: AuthMethod, size: int) -> None:
    signature = sign(credential, method, HASH_SHA256)
    assert len(signature) == size  # r || s, not DER (RFC 4754 section 7)
    verify(credential.certificate, method, HASH_SHA256, signature)
    # The same signature checked the DER way with the method's hash over HASH.
    half = size // 2
    der = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    hash_type = hashes.SHA256 if size == 64 else hashes.SHA384
    credential.private_key.public_key().verify(der, HASH_SHA256, ec.ECDSA(hash_type()))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("credential", "method"),
    [
        (RSA_CREDENTIAL, AuthMethod.RSA_SIGNATURES),
        (P256_CREDENTIAL, AuthMethod.ECDSA_SHA256_P256),
        (P384_CREDENTIAL, AuthMethod.ECDSA_SHA384_P384),
    ],
    ids=["RSA", "P-256", "P-384"],
)
def test_tampered_hash_or_signature_fails(credential: Credential, method: AuthMethod) -> None:
    signature = sign(credential, method, HASH_SHA256)
    public_key = credential.certificate.public_key()
    tampered_hash = bytes([HASH_SHA256[0] ^ 1]) + HASH_SHA256[1:]
    tampered_signature = signature[:-1] + bytes([signature[-1] ^ 1])
    for hash_value, sig in [
        (tampered_hash, signature),
        (HASH_SHA256, tampered_signature),
        (HASH_SHA256, signature[:-1]),
    ]:
        with pytest.raises(AuthenticationError) as info:
            verify(public_key, method, hash_value, sig)
        assert info.value.notify is NotifyType.INVALID_SIGNATURE
        assert info.value.field == "SIG"


def test_signature_with_wrong_key_type_fails() -> None:
    signature = sign(P256_CREDENTIAL, AuthMethod.ECDSA_SHA256_P256, HASH_SHA256)
    with pytest.raises(AuthenticationError) as info:
        verify(RSA_KEY.public_key(), AuthMethod.ECDSA_SHA256_P256, HASH_SHA256, signature)
    assert info.value.notify is NotifyType.INVALID_SIGNATURE
    with pytest.raises(AuthenticationError):
        verify(P384_KEY.public_key(), AuthMethod.ECDSA_SHA256_P256, HASH_SHA256, signature)
    with pytest.raises(AuthenticationError):
        verify(P256_KEY.public_key(), AuthMethod.RSA_SIGNATURES, HASH_SHA256, signature)
    with pytest.raises(AuthenticationError):
        verify(P256_KEY.public_key(), AuthMethod.PRE_SHARED_KEY, HASH_SHA256, signature)


def test_sign_with_unsuitable_key() -> None:
    with pytest.raises(LocalProtocolError):
        sign(P256_CREDENTIAL, AuthMethod.RSA_SIGNATURES, HASH_SHA1)
    with pytest.raises(LocalProtocolError):
        sign(P256_CREDENTIAL, AuthMethod.ECDSA_SHA384_P384, HASH_SHA1)
    with pytest.raises(LocalProtocolError):
        sign(RSA_CREDENTIAL, AuthMethod.PRE_SHARED_KEY, HASH_SHA1)


# ----------------------------------------------------------------------------- certificate paths


def test_chain_ca_to_leaf() -> None:
    assert verify_certificate(_der(RSA_LEAF), [OTHER_CA, CA], NOW) == RSA_LEAF
    assert verify_certificate(_der(P256_LEAF), [CA], NOW.replace(tzinfo=None)) == P256_LEAF


def test_chain_through_intermediate() -> None:
    leaf = _certificate(_name("deep leaf"), P256_KEY, INTERMEDIATE.subject, INTERMEDIATE_KEY)
    assert (
        verify_certificate(_der(leaf), [CA], NOW, intermediates=[_der(OTHER_CA), _der(INTERMEDIATE)]) == leaf
    )
    with pytest.raises(AuthenticationError) as info:
        verify_certificate(_der(leaf), [CA], NOW)  # intermediate not sent
    assert info.value.notify is NotifyType.INVALID_CERT_AUTHORITY


def test_path_length_constraint() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(_name("pathlen0 root"), root_key, ca=True, path_length=0)
    sub = _certificate(_name("sub CA"), INTERMEDIATE_KEY, root.subject, root_key, ca=True)
    leaf = _certificate(_name("leaf under sub"), P256_KEY, sub.subject, INTERMEDIATE_KEY)
    with pytest.raises(AuthenticationError, match="path length"):
        verify_certificate(_der(leaf), [root], NOW, intermediates=[_der(sub)])


@pytest.mark.parametrize(
    ("not_before", "not_after", "message"),
    [(NOW - 60 * DAY, NOW - DAY, "expired"), (NOW + DAY, NOW + 60 * DAY, "not yet valid")],
)
def test_leaf_outside_validity(
    not_before: datetime.datetime, not_after: datetime.datetime, message: str
) -> None:
    leaf = _certificate(_name("dated"), P256_KEY, CA_NAME, CA_KEY, not_before=not_before, not_after=not_after)
    with pytest.raises(AuthenticationError, match=message) as info:
        verify_certificate(_der(leaf), [CA], NOW)
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE
    assert info.value.field == "CERT"


def test_expired_ca() -> None:
    old_ca = _certificate(CA_NAME, CA_KEY, ca=True, not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    with pytest.raises(AuthenticationError, match="issuer's certificate has expired") as info:
        verify_certificate(_der(P256_LEAF), [old_ca], NOW)
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE


def test_other_ca_fails() -> None:
    with pytest.raises(AuthenticationError, match="unknown issuer") as info:
        verify_certificate(_der(RSA_LEAF), [OTHER_CA], NOW)
    assert info.value.notify is NotifyType.INVALID_CERT_AUTHORITY


def test_same_name_different_key_is_a_bad_signature() -> None:
    impostor = _certificate(CA_NAME, OTHER_CA_KEY, ca=True)
    with pytest.raises(AuthenticationError, match="bad signature") as info:
        verify_certificate(_der(RSA_LEAF), [impostor], NOW)
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE


def test_self_signed_non_ca() -> None:
    self_signed = _certificate(_name("self-signed"), P256_KEY, ca=False)
    with pytest.raises(AuthenticationError) as info:
        verify_certificate(_der(self_signed), [CA], NOW)
    assert info.value.notify is NotifyType.INVALID_CERT_AUTHORITY
    # Even when configured as a trust anchor, a non-CA certificate cannot issue.
    with pytest.raises(AuthenticationError, match="not a CA"):
        verify_certificate(_der(self_signed), [self_signed], NOW)
    leaf = _certificate(_name("issued by non-CA"), P384_KEY, self_signed.subject, P256_KEY)
    with pytest.raises(AuthenticationError, match="not a CA") as info:
        verify_certificate(_der(leaf), [CA], NOW, intermediates=[_der(self_signed)])
    assert info.value.notify is NotifyType.INVALID_CERT_AUTHORITY


def test_bad_der() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        verify_certificate(b"\x30\x03\x02\x01\x00", [CA], NOW)
    assert info.value.notify is NotifyType.INVALID_CERT_ENCODING
    with pytest.raises(RemoteProtocolError) as info:
        verify_certificate(_der(P256_LEAF), [CA], NOW, intermediates=[b"junk"])
    assert info.value.notify is NotifyType.INVALID_CERT_ENCODING
    with pytest.raises(RemoteProtocolError):
        parse_certificate(_der(CA)[:-1])


# ----------------------------------------------------------------------------- identities


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


def _der_name(attributes: list[tuple[str, int, bytes]]) -> bytes:
    """DER Name, one attribute per RDN: (OID body hex, string tag, value)."""
    rdns = b"".join(
        _tlv(0x31, _tlv(0x30, _tlv(0x06, bytes.fromhex(oid)) + _tlv(tag, value)))
        for oid, tag, value in attributes
    )
    return _tlv(0x30, rdns)


def test_identity_der_asn1_dn() -> None:
    subject_der = RSA_LEAF.subject.public_bytes()
    assert certificate_matches_identity(RSA_LEAF, IdType.DER_ASN1_DN, subject_der)
    # Same DN with other string types and case still matches (RFC 5280 section 7.1): the
    # organization as PrintableString instead of UTF8String, the CN in upper case.
    other_encoding = _der_name(
        [
            ("550406", 0x13, b"CH"),
            ("55040a", 0x13, b"TUNVPN Test"),
            ("550403", 0x0C, b"VPN.EXAMPLE.COM"),
        ]
    )
    assert other_encoding != subject_der
    assert certificate_matches_identity(RSA_LEAF, IdType.DER_ASN1_DN, other_encoding)
    assert not certificate_matches_identity(RSA_LEAF, IdType.DER_ASN1_DN, P256_LEAF.subject.public_bytes())
    assert not certificate_matches_identity(RSA_LEAF, IdType.DER_ASN1_DN, b"\x30\x05junk")
    assert not certificate_matches_identity(RSA_LEAF, IdType.DER_ASN1_DN, b"")


@pytest.mark.parametrize(
    ("id_type", "id_data", "expected"),
    [
        (IdType.FQDN, b"vpn.example.com", True),
        (IdType.FQDN, b"VPN.Example.com", True),
        (IdType.FQDN, b"other.example.com", False),
        (IdType.USER_FQDN, b"gw@example.com", True),
        (IdType.USER_FQDN, b"GW@example.com", False),
        (IdType.USER_FQDN, b"other@example.com", False),
        (IdType.IPV4_ADDR, bytes([192, 0, 2, 1]), True),
        (IdType.IPV4_ADDR, bytes([192, 0, 2, 2]), False),
        (IdType.IPV4_ADDR, bytes([192, 0, 2]), False),
        (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed, True),
        (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::2").packed, False),
        (IdType.KEY_ID, b"vpn.example.com", False),
        (IdType.FQDN, b"\xff\xfe", False),
    ],
)
def test_identity_subject_alt_name(id_type: IdType, id_data: bytes, expected: bool) -> None:
    assert certificate_matches_identity(RSA_LEAF, id_type, id_data) is expected


def test_identity_without_san() -> None:
    assert not certificate_matches_identity(P256_LEAF, IdType.FQDN, b"p256 leaf")


def test_ca_distinguished_name() -> None:
    dn = ca_distinguished_name(CA)
    assert dn == CA.subject.public_bytes()
    assert dn[0] == 0x30
    assert certificate_matches_identity(CA, IdType.DER_ASN1_DN, dn)


# ----------------------------------------------------------------------------- IKE profile (RFC 4945)

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH


@pytest.mark.parametrize(
    "eku",
    [
        None,
        [SERVER_AUTH],
        [EKU_IPSEC_IKE],
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        [CLIENT_AUTH, SERVER_AUTH],
    ],
    ids=["no EKU", "serverAuth", "ipsecIKE", "anyExtendedKeyUsage", "clientAuth+serverAuth"],
)
def test_gateway_certificate_ekus_accepted(eku: list[x509.ObjectIdentifier] | None) -> None:
    leaf = _certificate(_name("gw"), P256_KEY, CA_NAME, CA_KEY, eku=eku)
    assert verify_chain(_der(leaf), [CA], NOW, ekus=RESPONDER_EKUS) == (leaf, CA)


def test_client_auth_only_certificate_cannot_pose_as_a_gateway() -> None:
    """A user's certificate (clientAuth only, as `pki --flag clientAuth` issues them) from
    the gateway's CA must not be accepted where a gateway's certificate is expected."""
    user = _certificate(_name("alice"), P256_KEY, CA_NAME, CA_KEY, eku=[CLIENT_AUTH])
    with pytest.raises(AuthenticationError, match="extendedKeyUsage") as info:
        verify_certificate(_der(user), [CA], NOW)  # default: a responder's certificate
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE
    with pytest.raises(AuthenticationError, match="extendedKeyUsage"):
        verify_peer_certificate(_der(user), [CA], NOW, peer_is_initiator=False)
    # The same certificate is a fine client certificate.
    assert verify_peer_certificate(_der(user), [CA], NOW, peer_is_initiator=True) == user
    # A code-signing certificate is neither.
    signer = _certificate(_name("signer"), P256_KEY, CA_NAME, CA_KEY, eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    with pytest.raises(AuthenticationError, match="extendedKeyUsage"):
        verify_peer_certificate(_der(signer), [CA], NOW, peer_is_initiator=True)


def test_dn_only_certificate_without_san_or_aki_verifies() -> None:
    # RFC 4945 section 3.1.5: a peer may be named by its DN; no subjectAltName needed.
    leaf = _certificate(_name("dn only"), P384_KEY, CA_NAME, CA_KEY)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    chain = verify_chain(_der(leaf), [CA], NOW)
    assert chain == (leaf, CA)
    assert certificate_matches_identity(leaf, IdType.DER_ASN1_DN, leaf.subject.public_bytes())


def test_issuer_with_key_usage_without_key_cert_sign_is_refused() -> None:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    root = _certificate(_name("crl-only root"), OTHER_CA_KEY, ca=True, key_usage=usage)
    leaf = _certificate(_name("under crl-only root"), P256_KEY, root.subject, OTHER_CA_KEY)
    with pytest.raises(AuthenticationError, match="keyUsage") as info:
        verify_certificate(_der(leaf), [root], NOW)
    assert info.value.notify is NotifyType.INVALID_CERT_AUTHORITY


def test_name_constraints_of_the_ca_are_enforced() -> None:
    """A CA limited to example.com cannot vouch for vpn.attacker.test (RFC 5280 4.2.1.10)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("constrained root"))
        .issuer_name(_name("constrained root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(constraints, critical=True)
        .sign(root_key, hashes.SHA256())
    )
    good = _certificate(_name("gw"), P256_KEY, root.subject, root_key, san=[x509.DNSName("vpn.example.com")])
    bad = _certificate(_name("gw"), P256_KEY, root.subject, root_key, san=[x509.DNSName("vpn.attacker.test")])
    assert verify_certificate(_der(good), [root], NOW) == good
    with pytest.raises(AuthenticationError):
        verify_certificate(_der(bad), [root], NOW)


# ----------------------------------------------------------------------------- RSA private operation


@pytest.mark.parametrize("bits", [2048, 3072])
def test_rsa_private_operation_known_answer(bits: int) -> None:
    """The blinded constant-time CRT result equals textbook m^d mod n, and the IKEv1
    signature made with it verifies with cryptography's own public-key operation."""
    key = RSA_KEY if bits == 2048 else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    for m in (2, n - 1, int.from_bytes(hashlib.sha512(b"m").digest() * (bits // 512), "big") % n):
        assert rsa_private_operation(numbers, m) == pow(m, numbers.d, n)
    credential = Credential(_certificate(_name(f"rsa{bits}"), key, CA_NAME, CA_KEY), key)
    signature = sign(credential, AuthMethod.RSA_SIGNATURES, HASH_SHA256)
    assert len(signature) == bits // 8
    assert key.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None) == HASH_SHA256


def test_rsa_private_operation_refuses_a_faulty_result() -> None:
    """A fault in one CRT half (here: a wrong d mod (p-1)) would give away a factor of n
    (Boneh-DeMillo-Lipton: gcd(s'^e - m, n) = q). The self-check keeps it in."""
    good = RSA_KEY.private_numbers()
    faulty = rsa.RSAPrivateNumbers(
        p=good.p,
        q=good.q,
        d=good.d,
        dmp1=good.dmp1 ^ 2,
        dmq1=good.dmq1,
        iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    )
    with pytest.raises(LocalProtocolError, match="self-check"):
        rsa_private_operation(faulty, 12345)
    with pytest.raises(LocalProtocolError):
        rsa_private_operation(good, good.public_numbers.n)  # out of range
