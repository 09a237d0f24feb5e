"""Certificate paths of IKE peers (RFC 5280 section 6, RFC 4945 section 5).

The path from the peer's certificate to a trust anchor is built and checked by
``cryptography.x509.verification`` with an extension policy for IKE; revocation
(:mod:`tunvpn.ike.revocation`) and identity limits (:class:`~tunvpn.ike.certs.IdentityPattern`)
are checked on the path it returns. Sans-I/O: bytes and ``now`` in, certificates out.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import revocation
from .certs import IdentityPattern, parse_certificate
from .constants import NotifyType
from .errors import AuthenticationError
from .revocation import CrlStore, RevocationMode

__all__ = [
    "EKU_IPSEC_IKE",
    "INITIATOR_EKUS",
    "MAX_CHAIN_DEPTH",
    "RESPONDER_EKUS",
    "PeerCertificatePolicy",
    "verify_certificate",
    "verify_chain",
    "verify_peer_certificate",
]

logger = logging.getLogger(__name__)

#: Most intermediate CAs between the peer's certificate and a trust anchor (RFC 5280
#: self-issued intermediates are not counted).
MAX_CHAIN_DEPTH = 4


# --------------------------------------------------------------------------- certificate paths

#: id-kp-ipsecIKE (RFC 4945 section 5.1.3.12): "this key may be used for IKE".
EKU_IPSEC_IKE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")
#: EKUs a responder's (gateway's) certificate may carry when it has an EKU extension at all:
#: serverAuth (what Windows, macOS and strongSwan's docs ask gateways for), ipsecIKE or
#: anyExtendedKeyUsage (RFC 4945 section 5.1.3.12). A certificate without EKU is accepted.
RESPONDER_EKUS = frozenset(
    {ExtendedKeyUsageOID.SERVER_AUTH, EKU_IPSEC_IKE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)
#: EKUs an initiator's (client's) certificate may carry: those of :data:`RESPONDER_EKUS`
#: plus clientAuth, which most client certificates have (strongSwan ``pki --flag clientAuth``).
INITIATOR_EKUS = RESPONDER_EKUS | {ExtendedKeyUsageOID.CLIENT_AUTH}


def _utc(now: datetime.datetime) -> datetime.datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def _check_validity(cert: x509.Certificate, now: datetime.datetime) -> None:
    """A clear message for the most common failure; the verifier checks validity again."""
    if now < cert.not_valid_before_utc:
        raise AuthenticationError(
            f"certificate {_describe(cert)} is not yet valid (from {cert.not_valid_before_utc.isoformat()})",
            NotifyType.INVALID_CERTIFICATE,
            field="CERT",
        )
    if now > cert.not_valid_after_utc:
        raise AuthenticationError(
            f"certificate {_describe(cert)} expired on {cert.not_valid_after_utc.isoformat()}",
            NotifyType.INVALID_CERTIFICATE,
            field="CERT",
        )


def _eku_name(oid: x509.ObjectIdentifier) -> str:
    return "ipsecIKE" if oid == EKU_IPSEC_IKE else getattr(oid, "_name", "") or oid.dotted_string


EkuValidator = Callable[[object, x509.Certificate, x509.ExtendedKeyUsage | None], None]


def _ee_eku_validator(accepted: frozenset[x509.ObjectIdentifier]) -> EkuValidator:
    """RFC 4945 section 5.1.3.12 for the end-entity certificate: no EKU extension, or one
    naming a purpose in ``accepted``."""

    def validate(_policy: object, cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
        if ext is not None and not any(oid in accepted for oid in ext):
            names = ", ".join(_eku_name(oid) for oid in ext) or "none"
            wanted = ", ".join(sorted(_eku_name(oid) for oid in accepted))
            raise ValueError(f"extendedKeyUsage of {_describe(cert)} is {names}; IKE needs one of {wanted}")

    return validate


def _ca_key_usage(_policy: object, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    """RFC 5280 section 4.2.1.3: a CA with a keyUsage extension must assert keyCertSign.
    Unlike the web PKI profile, a CA without keyUsage is accepted (as strongSwan does)."""
    if ext is not None and not ext.key_cert_sign:
        raise ValueError(f"issuer {_describe(cert)} may not sign certificates (keyUsage)")


def _extension_policies(
    ekus: frozenset[x509.ObjectIdentifier],
) -> tuple[verification.ExtensionPolicy, verification.ExtensionPolicy]:
    """(CA policy, end-entity policy): the web PKI defaults of ``cryptography``, relaxed
    where IKE certificates differ (RFC 4945 section 5): an end entity may be named by its DN
    alone (no subjectAltName) and need not carry an authorityKeyIdentifier; its EKU is
    checked against ``ekus``; a CA's EKU, if any, is not limited to TLS purposes."""
    agnostic = verification.Criticality.AGNOSTIC
    ca_policy = (
        verification.ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, None)
    )
    ee_policy = (
        verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _ee_eku_validator(ekus))
    )
    return ca_policy, ee_policy


def _verification_error(leaf: x509.Certificate, exc: Exception) -> AuthenticationError:
    """Name what went wrong and pick the Notify (RFC 2408 section 3.14.1) from the
    verifier's message."""
    text = str(exc).removeprefix("validation failed: ")
    text = text.split(" (encountered processing")[0]
    if "all candidates exhausted with no interior errors" in text:
        return AuthenticationError(
            f"certificate {_describe(leaf)} has an unknown issuer "
            f"{leaf.issuer.rfc4514_string()} (not a trusted CA)",
            NotifyType.INVALID_CERT_AUTHORITY,
            field="CERT",
        )
    if "signature does not match" in text:
        return AuthenticationError(
            f"certificate {_describe(leaf)} has a bad signature from {leaf.issuer.rfc4514_string()}",
            NotifyType.INVALID_CERTIFICATE,
            field="CERT",
        )
    text = text.removeprefix("Python extension validator failed: ValueError: ")
    text = text.replace("basicConstraints.cA must be asserted in a CA certificate", "issuer is not a CA")
    if "cert is not valid at validation time" in text:  # the leaf's dates were checked first
        return AuthenticationError(
            f"certificate {_describe(leaf)} does not verify: an issuer's certificate has expired "
            "or is not yet valid",
            NotifyType.INVALID_CERTIFICATE,
            field="CERT",
        )
    authority = any(word in text for word in ("candidates exhausted", "not a CA", "path length", "issuer"))
    return AuthenticationError(
        f"certificate {_describe(leaf)} does not verify: {text}",
        NotifyType.INVALID_CERT_AUTHORITY if authority else NotifyType.INVALID_CERTIFICATE,
        field="CERT",
    )


def verify_chain(
    cert_der: bytes,
    trusted_cas: Sequence[x509.Certificate],
    now: datetime.datetime,
    intermediates: Sequence[bytes] = (),
    *,
    ekus: frozenset[x509.ObjectIdentifier] = RESPONDER_EKUS,
) -> tuple[x509.Certificate, ...]:
    """Build and check the path from the peer's end-entity certificate to one of
    ``trusted_cas`` with ``cryptography.x509.verification`` (RFC 5280 section 6: signatures,
    validity at ``now`` - a naive datetime is taken as UTC -, basic constraints, path
    lengths, key usage and name constraints), through the intermediates the peer sent in
    further CERT payloads, with at most :data:`MAX_CHAIN_DEPTH` intermediates.

    Checks the extended key usage against ``ekus`` (:data:`RESPONDER_EKUS` for a gateway's
    certificate, :data:`INITIATOR_EKUS` for a client's). Signature algorithms and key sizes
    are those of the CA/B Forum profile: RSA of at least 2048 bits for issuers, ECDSA on
    P-256/P-384/P-521, SHA-2 (no SHA-1). Revocation is not checked here
    (:mod:`tunvpn.ike.revocation` does it on the returned chain).

    :returns: the chain, end entity first and trust anchor last.
    :raises RemoteProtocolError: INVALID_CERT_ENCODING if some DER does not parse.
    :raises AuthenticationError: INVALID_CERTIFICATE (expired, not yet valid, bad
        signature, wrong EKU) or INVALID_CERT_AUTHORITY (unknown issuer, issuer not a CA,
        path length exceeded), field ``CERT``.
    """
    now = _utc(now)
    leaf = parse_certificate(cert_der)
    pool = [parse_certificate(der, field="CERT (intermediate)") for der in intermediates]
    if not trusted_cas:
        raise AuthenticationError(
            "no CA configured to check peer certificates", NotifyType.INVALID_CERT_AUTHORITY, field="CERT"
        )
    _check_validity(leaf, now)
    ca_policy, ee_policy = _extension_policies(ekus)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trusted_cas)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        chain = tuple(verifier.verify(leaf, pool).chain)
    except (verification.VerificationError, x509.UnsupportedGeneralNameType, ValueError) as exc:
        raise _verification_error(leaf, exc) from None
    if len(chain) < 2:
        # The peer's own certificate was configured as a CA: that pins it but says nothing
        # about who issued it; refuse, as a CA file holds issuers.
        raise AuthenticationError(
            f"certificate {_describe(leaf)} is itself in the CA list; an end entity is not a CA",
            NotifyType.INVALID_CERT_AUTHORITY,
            field="CERT",
        )
    logger.debug("certificate %s verified up to %s", _describe(leaf), _describe(chain[-1]))
    return chain


def verify_certificate(
    cert_der: bytes,
    trusted_cas: Sequence[x509.Certificate],
    now: datetime.datetime,
    intermediates: Sequence[bytes] = (),
    *,
    ekus: frozenset[x509.ObjectIdentifier] = RESPONDER_EKUS,
) -> x509.Certificate:
    """:func:`verify_chain`, returning only the end-entity certificate."""
    return verify_chain(cert_der, trusted_cas, now, intermediates, ekus=ekus)[0]


@dataclass(frozen=True)
class PeerCertificatePolicy:
    """What a peer's certificate must satisfy beyond a valid path to a trusted CA."""

    ekus: frozenset[x509.ObjectIdentifier] | None = None
    """Extended key usages accepted when the peer's certificate has an EKU extension (one
    is enough); None: :data:`RESPONDER_EKUS` for a responder's (gateway's) certificate,
    :data:`INITIATOR_EKUS` for an initiator's (client's)."""
    identities: tuple[IdentityPattern, ...] = ()
    """The certificate's subject or a subjectAltName must match one of these; empty: any
    certificate from a trusted CA."""
    revocation: RevocationMode = RevocationMode.RELAXED
    """How much revocation information each certificate of the path needs (strongSwan's
    default is relaxed too)."""
    crls: CrlStore = field(default_factory=CrlStore, compare=False)
    """CRLs from files and fetched distribution points, filled by the shell."""


def verify_peer_certificate(
    cert_der: bytes,
    trusted_cas: Sequence[x509.Certificate],
    now: datetime.datetime,
    intermediates: Sequence[bytes] = (),
    *,
    policy: PeerCertificatePolicy | None = None,
    peer_is_initiator: bool = False,
) -> x509.Certificate:
    """The peer's certificate, checked in full: path and EKU (:func:`verify_chain`),
    revocation of every certificate of the path (:func:`tunvpn.ike.revocation.check_chain`)
    and the identity limits of ``policy``.

    :returns: the end-entity certificate.
    :raises AuthenticationError: field ``CERT``; INVALID_CERTIFICATE or
        INVALID_CERT_AUTHORITY as :func:`verify_chain`, INVALID_CERTIFICATE when revoked or
        without the revocation information ``policy.revocation`` asks for,
        AUTHENTICATION_FAILED when no identity pattern matches.
    """
    policy = policy or PeerCertificatePolicy()
    ekus = policy.ekus if policy.ekus is not None else INITIATOR_EKUS if peer_is_initiator else RESPONDER_EKUS
    chain = verify_chain(cert_der, trusted_cas, now, intermediates, ekus=ekus)
    revocation.check_chain(chain, policy.crls, policy.revocation, _utc(now))
    leaf = chain[0]
    if policy.identities and not any(p.matches_certificate(leaf) for p in policy.identities):
        raise AuthenticationError(
            f"certificate {_describe(leaf)} matches none of the allowed peer identities "
            f"({', '.join(map(str, policy.identities))})",
            NotifyType.AUTHENTICATION_FAILED,
            field="CERT",
        )
    return leaf
