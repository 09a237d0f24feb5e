"""A small PKI for the revocation tests: a root CA, a sub CA, two leaves, CRLs of either CA,
and :func:`check_chain`, a leaf checked against the root with a CRL store, as the engine does
(tests/unit/ike/test_revocation.py, tests/loopback/test_crl_fetch.py)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunvpn.ike.certpath import PeerCertificatePolicy, verify_peer_certificate
from tunvpn.ike.revocation import CrlStore, RevocationMode

NOW = datetime.datetime.fromtimestamp(1_800_000_000.0, datetime.UTC)  # ike_pair.Pair's clock
DAY = datetime.timedelta(days=1)
DER = serialization.Encoding.DER
ALL_MODES = list(RevocationMode)


def ca_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tunvpn test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    cn: str, key, issuer: x509.Name, issuer_key, *, ca: bool = False, cdp: str | None = None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example")]), critical=False)
    )
    if cdp:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_crl(
    issuer: x509.Certificate,
    issuer_key,
    revoked: list[x509.Certificate] = (),  # type: ignore[assignment]
    *,
    this_update: datetime.datetime = NOW - DAY,
    next_update: datetime.datetime = NOW + 7 * DAY,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - DAY)
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = make_cert("root CA", ROOT_KEY, ca_name("root CA"), ROOT_KEY, ca=True)
SUB_KEY = ec.generate_private_key(ec.SECP256R1())
SUB = make_cert("sub CA", SUB_KEY, ROOT.subject, ROOT_KEY, ca=True)
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = make_cert("client", LEAF_KEY, SUB.subject, SUB_KEY)
OTHER_LEAF = make_cert("other", LEAF_KEY, SUB.subject, SUB_KEY)
FORGER_KEY = ec.generate_private_key(ec.SECP256R1())


def check_chain(
    leaf: x509.Certificate, mode: RevocationMode, store: CrlStore, now: datetime.datetime = NOW
) -> None:
    verify_peer_certificate(
        leaf.public_bytes(DER),
        [ROOT],
        now,
        [SUB.public_bytes(DER)],
        policy=PeerCertificatePolicy(revocation=mode, crls=store),
        peer_is_initiator=True,
    )


def good_crls() -> list[x509.CertificateRevocationList]:
    return [make_crl(SUB, SUB_KEY, [OTHER_LEAF]), make_crl(ROOT, ROOT_KEY)]
