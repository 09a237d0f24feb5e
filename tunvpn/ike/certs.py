"""X.509 credentials, IKEv1 signatures and certificate checks.

Sans-I/O: everything takes bytes and a ``now`` and returns values; loading files is the
shell's job.

* Signatures (RFC 2409 section 5.1): the SIG payload signs HASH_I / HASH_R.

  - RSA: PKCS#1 v1.5 block type 1 padding over the bare hash, with **no DigestInfo**, as
    strongSwan (``SIGN_RSA_EMSA_PKCS1_NULL``), racoon (``RSA_private_encrypt``) and Libreswan
    do. ``cryptography`` cannot sign without a DigestInfo, so :func:`sign` encodes
    EMSA-PKCS1-v1_5 itself and runs the RSA private operation (:func:`rsa_private_operation`:
    constant time in the exponent, blinded, checked).
  - ECDSA (RFC 4754 section 7/8, methods 9/10/11): ECDSA with SHA-256/384/512 over HASH,
    encoded as r || s, each left-padded to the curve size (not DER).

* Identities (RFC 2408 section 3.9/3.10, RFC 4945 section 3): the match of a certificate
  against the peer's ID payload, and :class:`IdentityPattern`, the one matcher of settings
  that select peers by identity. Certificate paths are checked in :mod:`tunvpn.ike.certpath`.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field

import gmpy2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .constants import AuthMethod, IdType, NotifyType
from .errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from .identity import Identity, der_to_name

__all__ = [
    "ECDSA_METHODS",
    "RSA_METHODS",
    "Credential",
    "IdentityPattern",
    "ca_distinguished_name",
    "certificate_matches_identity",
    "load_certificates",
    "parse_certificate",
    "rsa_private_operation",
    "sign",
    "verify",
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


def rsa_private_operation(numbers: rsa.RSAPrivateNumbers, m: int) -> int:
    """m^d mod n (RFC 8017 section 5.1.2), hardened for a gateway that signs for anyone who
    asks (hybrid and certificate logins):

    * constant time in the exponent: both CRT halves run GMP's ``mpz_powm_sec`` (gmpy2
      ``powmod_sec``), whose sequence of operations and memory accesses does not depend on
      the secret exponent;
    * blinded: the base is m * r^e for a fresh random r, unblinded with r^-1 afterwards, so
      the operands the exponentiation sees are unrelated to ``m`` (Kocher timing, and
      chosen-message attacks on the arithmetic);
    * checked: s^e == m before the result leaves, since a fault in one CRT half would hand
      out a factor of n (Boneh-DeMillo-Lipton).

    :raises LocalProtocolError: the self-check failed (a fault, or inconsistent numbers).
    """
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    if not 0 <= m < n:
        raise LocalProtocolError("RSA input out of range")
    big_n = gmpy2.mpz(n)
    while True:
        r = gmpy2.mpz(secrets.randbelow(n - 2) + 2)
        if gmpy2.gcd(r, big_n) == 1:
            break
    blinded = (gmpy2.powmod(r, e, big_n) * m) % big_n
    p, q = gmpy2.mpz(numbers.p), gmpy2.mpz(numbers.q)
    s_p = gmpy2.powmod_sec(blinded % p, numbers.dmp1, p)
    s_q = gmpy2.powmod_sec(blinded % q, numbers.dmq1, q)
    h = (numbers.iqmp * (s_p - s_q)) % p
    s = ((s_q + h * q) * gmpy2.invert(r, big_n)) % big_n
    if gmpy2.powmod(s, e, big_n) != m:
        raise LocalProtocolError("RSA signature self-check failed (fault or bad key)")
    return int(s)


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
        encoded = _emsa_pkcs1_v15_null(hash_value, k)
        signature = rsa_private_operation(key.private_numbers(), encoded).to_bytes(k, "big")
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
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
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


# --------------------------------------------------------------------------- identity patterns


def _glob(pattern: str, value: str) -> bool:
    """``*`` and ``?`` globs (no character classes), case-insensitive."""
    return fnmatch.fnmatchcase(value.casefold(), pattern.casefold().replace("[", "[[]"))


def _name_matches(pattern: x509.Name, name: x509.Name) -> bool:
    """RDN by RDN, each attribute's value a glob (``CN=*,O=Example``); the attribute types
    and their order must be the same."""
    if len(pattern.rdns) != len(name.rdns):
        return False
    for wanted, got in zip(pattern.rdns, name.rdns):
        wanted_attrs = sorted(wanted, key=lambda a: a.oid.dotted_string)
        got_attrs = sorted(got, key=lambda a: a.oid.dotted_string)
        if len(wanted_attrs) != len(got_attrs):
            return False
        for w, g in zip(wanted_attrs, got_attrs):
            if w.oid != g.oid or not isinstance(g.value, str) or not _glob(str(w.value), g.value):
                return False
    return True


def _address_in(pattern: object, address: object) -> bool:
    if isinstance(pattern, tuple):
        start, end = pattern
        v4 = ipaddress.IPv4Address
        if isinstance(start, v4) and isinstance(end, v4) and isinstance(address, v4):
            return start <= address <= end
        v6 = ipaddress.IPv6Address
        if isinstance(start, v6) and isinstance(end, v6) and isinstance(address, v6):
            return start <= address <= end
        return False
    if isinstance(pattern, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and address in pattern
    return pattern == address


@dataclass(frozen=True)
class IdentityPattern:
    """A pattern over peer identities: the one matcher for every setting that selects peers
    by identity (``peer_id_patterns``, policies).

    Written as :meth:`Identity.parse <tunvpn.ike.identity.Identity.parse>` text with ``*``
    and ``?`` globs: ``CN=*,OU=vpn,O=Example`` (a DN, RDN by RDN), ``@*.example.com`` (FQDN,
    or a subjectAltName dNSName), ``*@example.com`` (USER_FQDN, or an rfc822Name),
    ``10.0.0.0/8`` or ``10.0.0.1-10.0.0.9`` or an address (IPV4/IPV6 identities and
    iPAddress names inside it), ``keyid:group-*`` (KEY_ID, phase 1 identities only), or
    ``*`` (anything). Text is compared case-insensitively.
    """

    text: str
    """The pattern as written."""
    identity: Identity | None = field(default=None, compare=False, repr=False)
    """The parsed form; None for ``*``."""

    def __post_init__(self) -> None:
        if self.identity is None and self.text.strip() != "*":
            object.__setattr__(self, "identity", Identity.parse(self.text))

    @classmethod
    def parse(cls, text: str) -> IdentityPattern:
        """:raises LocalProtocolError: ``text`` is no identity."""
        return cls(text.strip())

    def __str__(self) -> str:
        return self.text

    def _value_matches(self, id_type: IdType, value: object) -> bool:
        pattern = self.identity
        if pattern is None:
            return True
        kind = pattern.id_type
        if kind is IdType.DER_ASN1_DN:
            if id_type is not IdType.DER_ASN1_DN:
                return False
            if not isinstance(pattern.value, bytes) or not isinstance(value, (x509.Name, bytes)):
                return False
            try:
                name = value if isinstance(value, x509.Name) else der_to_name(value)
                return _name_matches(der_to_name(pattern.value), name)
            except (ValueError, UnicodeDecodeError):
                return False
        if kind in (IdType.FQDN, IdType.USER_FQDN):
            return id_type is kind and isinstance(value, str) and _glob(str(pattern.value), value)
        if kind is IdType.KEY_ID:
            return (
                id_type is kind
                and isinstance(value, bytes)
                and isinstance(pattern.value, bytes)
                and _glob(pattern.value.decode("latin-1"), value.decode("latin-1"))
            )
        if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return _address_in(pattern.value, value)
        return False

    def matches(self, identity: Identity) -> bool:
        """Whether a phase 1 identity matches (an address identity: inside the pattern's
        address, network or range)."""
        return self._value_matches(identity.id_type, identity.value)

    def matches_certificate(self, cert: x509.Certificate) -> bool:
        """Whether the certificate's subject DN or one of its subjectAltNames matches."""
        if self._value_matches(IdType.DER_ASN1_DN, cert.subject):
            return True
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError):
            return False
        return (
            any(self._value_matches(IdType.FQDN, n) for n in san.get_values_for_type(x509.DNSName))
            or any(self._value_matches(IdType.USER_FQDN, n) for n in san.get_values_for_type(x509.RFC822Name))
            or any(self._value_matches(IdType.IPV4_ADDR, n) for n in san.get_values_for_type(x509.IPAddress))
        )
