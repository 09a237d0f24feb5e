"""X.509 credentials, IKEv1 signatures and certificate checks.

Sans-I/O: everything takes bytes and a ``now`` and returns values; loading files is the
shell's job.

* Signatures (RFC 2409 section 5.1): the SIG payload signs HASH_I / HASH_R.

  - RSA: PKCS#1 v1.5 block type 1 padding over the bare hash, with **no DigestInfo**, as
    strongSwan (``SIGN_RSA_EMSA_PKCS1_NULL``), racoon (``RSA_private_encrypt``) and Libreswan
    do. ``cryptography`` cannot sign without a DigestInfo, so :func:`sign` encodes
    EMSA-PKCS1-v1_5 itself and runs the RSA private operation with CRT and random blinding.
  - ECDSA (RFC 4754 section 7/8, methods 9/10/11): ECDSA with SHA-256/384/512 over HASH,
    encoded as r || s, each left-padded to the curve size (not DER).

* Certificates (RFC 2408 section 3.9/3.10, RFC 4945 for the profile): a path from the
  peer's certificate to one of our trust anchors, validity periods and CA constraints, and
  the match of a certificate against the peer's ID payload.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import ExtensionOID

from .constants import AuthMethod, IdType, NotifyType
from .errors import AuthenticationError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "ECDSA_METHODS",
    "MAX_CHAIN_DEPTH",
    "RSA_METHODS",
    "Credential",
    "ca_distinguished_name",
    "certificate_matches_identity",
    "load_certificates",
    "parse_certificate",
    "sign",
    "verify",
    "verify_certificate",
]

logger = logging.getLogger(__name__)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Authentication methods whose SIG payload is an RSA PKCS#1 v1.5 signature without DigestInfo.
RSA_METHODS = frozenset(
    {
        AuthMethod.RSA_SIGNATURES,
        AuthMethod.XAUTH_INIT_RSA,
        AuthMethod.XAUTH_RESP_RSA,
        AuthMethod.HYBRID_INIT_RSA,
        AuthMethod.HYBRID_RESP_RSA,
    }
)

# RFC 4754 section 3: method -> (curve name, hash, field size in bytes).
_ECDSA: dict[AuthMethod, tuple[str, type[hashes.HashAlgorithm], int]] = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", hashes.SHA256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", hashes.SHA384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", hashes.SHA512, 66),
}
#: Authentication methods whose SIG payload is an ECDSA r || s signature (RFC 4754).
ECDSA_METHODS = frozenset(_ECDSA)

#: Most signature steps from the peer's certificate up to a trust anchor.
MAX_CHAIN_DEPTH = 4


# --------------------------------------------------------------------------- credentials


def load_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Parse one DER certificate or a PEM bundle of one or more (e.g. a CA file's content).

    :raises LocalProtocolError: the bytes hold no certificate (this is for our own files).
    """
    try:
        if b"-----BEGIN" in data:
            certificates = tuple(x509.load_pem_x509_certificates(data))
        else:
            certificates = (x509.load_der_x509_certificate(data),)
    except ValueError as exc:
        raise LocalProtocolError(f"not a PEM or DER certificate: {exc}") from None
    return certificates


def parse_certificate(cert_der: bytes, field: str = "CERT") -> x509.Certificate:
    """Parse a certificate received in a CERT payload (RFC 2408 section 3.9, encoding 4).

    :raises RemoteProtocolError: INVALID_CERT_ENCODING when the DER does not parse.
    """
    try:
        return x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise RemoteProtocolError(
            f"certificate does not parse as DER X.509: {exc}", NotifyType.INVALID_CERT_ENCODING, field=field
        ) from None


@dataclass(frozen=True, eq=False)
class Credential:
    """Our own certificate, its private key and the intermediates to send with it.

    Built with :meth:`load` from bytes the shell has read; the ``repr`` never shows the key.
    """

    certificate: x509.Certificate
    """Our end-entity certificate, sent in the CERT payload."""
    private_key: PrivateKey = field(repr=False)
    """The key matching ``certificate`` (RSA, or ECDSA on P-256/P-384/P-521)."""
    chain: tuple[x509.Certificate, ...] = ()
    """Intermediate CA certificates, sent as extra CERT payloads."""

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise LocalProtocolError("only RSA and ECDSA private keys are supported")
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            self._ecdsa_method(self.private_key)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        ours = self.private_key.public_key().public_bytes(serialization.Encoding.DER, spki)
        theirs = self.certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
        if ours != theirs:
            raise LocalProtocolError("the private key does not match the certificate")

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, password: bytes | None = None) -> Credential:
        """Build a credential from a PEM (or DER) certificate and a PEM (or DER) private key.

        When ``cert_pem`` is a PEM bundle, the first certificate is ours and the rest is the
        chain.

        :raises LocalProtocolError: unreadable input, wrong password, unsupported key, or a
            key that does not match the certificate.
        """
        certificates = load_certificates(cert_pem)
        try:
            if b"-----BEGIN" in key_pem:
                key = serialization.load_pem_private_key(key_pem, password)
            else:
                key = serialization.load_der_private_key(key_pem, password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise LocalProtocolError(f"cannot load private key: {exc}") from None
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise LocalProtocolError(f"unsupported private key type {type(key).__name__}")
        return cls(certificate=certificates[0], private_key=key, chain=certificates[1:])

    @staticmethod
    def _ecdsa_method(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> AuthMethod:
        for method, (curve_name, _, _) in _ECDSA.items():
            if key.curve.name == curve_name:
                return method
        raise LocalProtocolError(f"no IKEv1 ECDSA method for curve {key.curve.name}")

    @property
    def auth_method(self) -> AuthMethod:
        """The phase 1 authentication method this key can do: RSA_SIGNATURES (3) or
        ECDSA_SHA256_P256 / ECDSA_SHA384_P384 / ECDSA_SHA512_P521 (9/10/11, RFC 4754)."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return AuthMethod.RSA_SIGNATURES
        return self._ecdsa_method(self.private_key)

    def cert_der(self) -> bytes:
        """Our certificate in DER, the CERT payload data (encoding X509_SIGNATURE)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def __repr__(self) -> str:
        return f"Credential(subject={self.certificate.subject.rfc4514_string()!r}, key=<hidden>)"


# --------------------------------------------------------------------------- signatures


def _emsa_pkcs1_v15_null(hash_value: bytes, k: int) -> int:
    """EMSA-PKCS1-v1_5 (RFC 8017 section 9.2) with T = the bare hash, no DigestInfo:
    EM = 0x00 || 0x01 || PS (0xFF...) || 0x00 || hash, with at least 8 bytes of PS."""
    if len(hash_value) > k - 11:
        raise LocalProtocolError(f"a {len(hash_value)}-byte hash does not fit a {k}-byte RSA key")
    encoded = b"\x00\x01" + b"\xff" * (k - len(hash_value) - 3) + b"\x00" + hash_value
    return int.from_bytes(encoded, "big")


def _rsa_private_operation(key: rsa.RSAPrivateKey, m: int) -> int:
    """m^d mod n by the CRT (RFC 8017 section 5.1.2, 2.b), with random base blinding:
    sign r^e * m, then multiply by r^-1, so timing does not depend on ``m``."""
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    while True:
        r = secrets.randbelow(n - 2) + 2
        if math.gcd(r, n) == 1:
            break
    blinded = (pow(r, e, n) * m) % n
    s_p = pow(blinded, numbers.dmp1, numbers.p)
    s_q = pow(blinded, numbers.dmq1, numbers.q)
    h = (numbers.iqmp * (s_p - s_q)) % numbers.p
    s = ((s_q + h * numbers.q) * pow(r, -1, n)) % n
    if pow(s, e, n) != m:  # a CRT fault would leak a factor of n (Boneh-DeMillo-Lipton)
        raise LocalProtocolError("RSA signature self-check failed")
    return s


def sign(credential: Credential, auth_method: AuthMethod, hash_value: bytes) -> bytes:
    """Sign HASH_I or HASH_R for the SIG payload (RFC 2409 section 5.1).

    * RSA methods (3, XAUTH 65005/65006, hybrid 64221/64222): PKCS#1 v1.5 type 1 without
      DigestInfo over ``hash_value``; the result is as long as the modulus.
    * ECDSA methods (9/10/11): ECDSA with the method's hash over ``hash_value``, as r || s
      (RFC 4754 section 7).

    :raises LocalProtocolError: the method does not suit the credential's key.
    """
    key = credential.private_key
    if auth_method in RSA_METHODS:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise LocalProtocolError(f"{AuthMethod(auth_method).name} needs an RSA key")
        k = (key.key_size + 7) // 8
        signature = _rsa_private_operation(key, _emsa_pkcs1_v15_null(hash_value, k)).to_bytes(k, "big")
        recovered = key.public_key().recover_data_from_signature(signature, padding.PKCS1v15(), None)
        if not hmac.compare_digest(recovered, hash_value):
            raise LocalProtocolError("RSA signature does not verify with our own public key")
        return signature
    if auth_method in _ECDSA:
        curve_name, hash_type, size = _ECDSA[AuthMethod(auth_method)]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != curve_name:
            raise LocalProtocolError(f"{AuthMethod(auth_method).name} needs an ECDSA key on {curve_name}")
        r, s = decode_dss_signature(key.sign(hash_value, ec.ECDSA(hash_type())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise LocalProtocolError(f"cannot sign for authentication method {auth_method!r}")


def _bad_signature(message: str) -> AuthenticationError:
    return AuthenticationError(message, NotifyType.INVALID_SIGNATURE, field="SIG")


def verify(
    public_key: CertificatePublicKeyTypes | x509.Certificate,
    auth_method: AuthMethod,
    hash_value: bytes,
    signature: bytes,
) -> None:
    """Check the peer's SIG payload over the HASH_I / HASH_R we computed.

    :param public_key: the peer's public key, or its (already verified) certificate.
    :raises AuthenticationError: INVALID_SIGNATURE (field ``SIG``) when the signature does
        not verify, has the wrong length, or does not suit the key type.
    """
    if isinstance(public_key, x509.Certificate):
        public_key = public_key.public_key()
    if auth_method in RSA_METHODS:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise _bad_signature(f"{AuthMethod(auth_method).name} signature but the peer's key is not RSA")
        if len(signature) != (public_key.key_size + 7) // 8:
            raise _bad_signature(
                f"RSA signature of {len(signature)} bytes for a {public_key.key_size}-bit key"
            )
        try:
            recovered = public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
        except (InvalidSignature, ValueError):
            raise _bad_signature("RSA signature does not verify") from None
        if not hmac.compare_digest(recovered, hash_value):
            raise _bad_signature("RSA signature does not match the computed hash")
        return
    if auth_method in _ECDSA:
        curve_name, hash_type, size = _ECDSA[AuthMethod(auth_method)]
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve_name:
            raise _bad_signature(
                f"{AuthMethod(auth_method).name} signature but the peer's key is not {curve_name}"
            )
        if len(signature) != 2 * size:
            raise _bad_signature(f"ECDSA signature is {len(signature)} bytes, expected {2 * size} (r || s)")
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            public_key.verify(encode_dss_signature(r, s), hash_value, ec.ECDSA(hash_type()))
        except (InvalidSignature, ValueError):
            raise _bad_signature("ECDSA signature does not verify") from None
        return
    raise _bad_signature(f"no signature verification for authentication method {auth_method!r}")


# --------------------------------------------------------------------------- certificate paths


def _utc(now: datetime.datetime) -> datetime.datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def _check_validity(cert: x509.Certificate, now: datetime.datetime) -> None:
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


def _check_issuer(issuer: x509.Certificate, ca_certs_below: int) -> None:
    """RFC 5280 section 4.2.1.9 / 4.2.1.3: an issuer must be a CA, allowed to sign
    certificates, with a path length constraint that admits the CAs below it."""
    try:
        constraints = issuer.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise AuthenticationError(
            f"issuer {_describe(issuer)} is not a CA (basicConstraints)",
            NotifyType.INVALID_CERT_AUTHORITY,
            field="CERT",
        )
    if constraints.path_length is not None and ca_certs_below > constraints.path_length:
        raise AuthenticationError(
            f"issuer {_describe(issuer)} path length constraint {constraints.path_length} exceeded",
            NotifyType.INVALID_CERT_AUTHORITY,
            field="CERT",
        )
    try:
        usage = issuer.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise AuthenticationError(
            f"issuer {_describe(issuer)} may not sign certificates (keyUsage)",
            NotifyType.INVALID_CERT_AUTHORITY,
            field="CERT",
        )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool | None:
    """True if ``issuer`` signed ``cert``; None if the names do not even match; False if
    the names match but the signature is bad or of an unsupported algorithm."""
    if cert.issuer != issuer.subject:
        return None
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_certificate(
    cert_der: bytes,
    trusted_cas: Sequence[x509.Certificate],
    now: datetime.datetime,
    intermediates: Sequence[bytes] = (),
) -> x509.Certificate:
    """Check the peer's end-entity certificate up to one of ``trusted_cas``.

    Walks issuer by issuer (at most :data:`MAX_CHAIN_DEPTH` signatures) through the
    intermediates the peer sent in further CERT payloads; checks each signature, each
    validity period at ``now`` (a naive datetime is taken as UTC) and that every issuer is
    a CA (RFC 5280 section 6.1, simplified: no policies, name constraints or revocation).

    :returns: the parsed end-entity certificate.
    :raises RemoteProtocolError: INVALID_CERT_ENCODING if some DER does not parse.
    :raises AuthenticationError: INVALID_CERTIFICATE (expired, not yet valid, bad
        signature) or INVALID_CERT_AUTHORITY (unknown issuer, issuer not a CA), field ``CERT``.
    """
    now = _utc(now)
    leaf = parse_certificate(cert_der)
    pool = [parse_certificate(der, field="CERT (intermediate)") for der in intermediates]
    current = leaf
    ca_certs_below = 0  # CA certificates between ``current`` and the leaf (RFC 5280 pathLen)
    seen = {current.fingerprint(hashes.SHA256())}
    bad_signature_from = ""
    for _ in range(MAX_CHAIN_DEPTH):
        _check_validity(current, now)
        for anchor in trusted_cas:
            verdict = _signed_by(current, anchor)
            if verdict:
                _check_issuer(anchor, ca_certs_below)
                _check_validity(anchor, now)
                logger.debug("certificate %s verified up to %s", _describe(leaf), _describe(anchor))
                return leaf
            if verdict is False:
                bad_signature_from = _describe(anchor)
        next_issuer = None
        for candidate in pool:
            fingerprint = candidate.fingerprint(hashes.SHA256())
            if fingerprint in seen:
                continue
            verdict = _signed_by(current, candidate)
            if verdict:
                next_issuer = candidate
                seen.add(fingerprint)
                break
            if verdict is False:
                bad_signature_from = _describe(candidate)
        if next_issuer is None:
            if bad_signature_from:
                raise AuthenticationError(
                    f"certificate {_describe(current)} has a bad signature from {bad_signature_from}",
                    NotifyType.INVALID_CERTIFICATE,
                    field="CERT",
                )
            raise AuthenticationError(
                f"certificate {_describe(current)} has an unknown issuer "
                f"{current.issuer.rfc4514_string()} (not a trusted CA)",
                NotifyType.INVALID_CERT_AUTHORITY,
                field="CERT",
            )
        _check_issuer(next_issuer, ca_certs_below)
        current = next_issuer
        ca_certs_below += 1
    raise AuthenticationError(
        f"no path to a trusted CA within {MAX_CHAIN_DEPTH} certificates for {_describe(leaf)}",
        NotifyType.INVALID_CERT_AUTHORITY,
        field="CERT",
    )


# --------------------------------------------------------------------------- identities


def ca_distinguished_name(cert: x509.Certificate) -> bytes:
    """DER of a CA's subject: the Certificate Authority field of a CR payload
    (RFC 2408 section 3.10, RFC 4945 section 3.2.4)."""
    return cert.subject.public_bytes()


def _der_read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``offset``: (tag, value, next offset). Raises ValueError."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[offset : offset + length], offset + length


def _decode_oid(value: bytes) -> str:
    if not value:
        raise ValueError("empty OID")
    first = value[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    arc = 0
    for byte in value[1:]:
        arc = (arc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    return ".".join(map(str, arcs))


_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "ascii",
    0x16: "ascii",
    0x14: "latin-1",
    0x1E: "utf-16-be",
    0x1C: "utf-32-be",
}


def _normalize(value: str) -> str:
    """Simplified RFC 4518 caseIgnoreMatch: fold case, collapse inner whitespace."""
    return " ".join(value.casefold().split())


def _parse_der_name(data: bytes) -> tuple[frozenset[tuple[str, str]], ...]:
    """Parse a DER Name (RFC 5280 section 4.1.2.4) into comparable RDNs. Raises ValueError."""
    tag, body, end = _der_read(data, 0)
    if tag != 0x30 or end != len(data):
        raise ValueError("a Name is one SEQUENCE")
    rdns = []
    offset = 0
    while offset < len(body):
        tag, rdn_body, offset = _der_read(body, offset)
        if tag != 0x31:
            raise ValueError("an RDN is a SET")
        attributes = set()
        inner = 0
        while inner < len(rdn_body):
            tag, pair, inner = _der_read(rdn_body, inner)
            oid_tag, oid, value_offset = _der_read(pair, 0)
            value_tag, value, _ = _der_read(pair, value_offset)
            if tag != 0x30 or oid_tag != 0x06:
                raise ValueError("an attribute is SEQUENCE { OID, value }")
            codec = _STRING_CODECS.get(value_tag)
            text = value.decode(codec) if codec else "#" + value.hex()
            attributes.add((_decode_oid(oid), _normalize(text)))
        rdns.append(frozenset(attributes))
    return tuple(rdns)


def _name_rdns(name: x509.Name) -> tuple[frozenset[tuple[str, str]], ...]:
    return tuple(
        frozenset(
            (
                attribute.oid.dotted_string,
                _normalize(
                    attribute.value if isinstance(attribute.value, str) else "#" + attribute.value.hex()
                ),
            )
            for attribute in rdn
        )
        for rdn in name.rdns
    )


def certificate_matches_identity(cert: x509.Certificate, id_type: IdType, id_data: bytes) -> bool:
    """Whether the peer's ID payload names the subject of its certificate (RFC 4945 section 3.1).

    * DER_ASN1_DN: the DER Name equals the certificate's subject (compared as parsed names,
      case-insensitively, RFC 5280 section 7.1 simplified).
    * FQDN / USER_FQDN / IPV4_ADDR / IPV6_ADDR: a subjectAltName dNSName / rfc822Name /
      iPAddress equals the ID (DNS names and mail domains case-insensitively).

    Any other ID type, or ID data that does not parse, does not match.
    """
    id_type = IdType(id_type)
    if id_type is IdType.DER_ASN1_DN:
        try:
            return _parse_der_name(id_data) == _name_rdns(cert.subject)
        except (ValueError, UnicodeDecodeError):
            return False
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return False
    try:
        if id_type is IdType.FQDN:
            wanted = id_data.decode("ascii").rstrip(".").casefold()
            return any(
                name.rstrip(".").casefold() == wanted for name in san.get_values_for_type(x509.DNSName)
            )
        if id_type is IdType.USER_FQDN:
            local, _, domain = id_data.decode("ascii").rpartition("@")
            for address in san.get_values_for_type(x509.RFC822Name):
                their_local, _, their_domain = address.rpartition("@")
                if their_local == local and their_domain.casefold() == domain.casefold():
                    return True
            return False
        if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            if len(id_data) != (4 if id_type is IdType.IPV4_ADDR else 16):
                return False
            wanted_ip = ipaddress.ip_address(id_data)
            return any(ip == wanted_ip for ip in san.get_values_for_type(x509.IPAddress))
    except UnicodeDecodeError:
        return False
    return False
