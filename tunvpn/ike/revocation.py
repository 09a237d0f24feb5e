"""Certificate revocation by CRLs (RFC 5280 sections 5 and 6.3), sans-I/O.

``cryptography.x509.verification`` builds and checks certificate paths but has no
revocation. This module checks every certificate of a verified path (end entity and
intermediates; the trust anchor is trusted as configured) against the CRLs of a
:class:`CrlStore`. The store is filled by the shell: CRL files named in the configuration,
and CRLs fetched from HTTP CRL distribution points (:mod:`tunvpn.shell.crls`, bounded in
size and time, kept until their nextUpdate). The core never fetches: when it meets a
distribution point it has no current CRL for, it notes the URI in the store
(:meth:`CrlStore.wanted`) and the shell fetches it for the next login.

Modes, as strongSwan's ``revocation`` (swanctl.conf):

* ``strict``: every certificate needs a current CRL from its issuer that does not list it.
* ``ifuri``: a certificate with a CRL distribution point needs one; without, as relaxed.
* ``relaxed``: refused only when a CRL says revoked.

In every mode a certificate that a correctly signed CRL of its issuer lists is refused,
whether that CRL is current or not (a revocation is not undone by age; certificateHold is
treated as revoked while listed). Delta CRLs and indirect CRLs are not used.
"""

from __future__ import annotations

import datetime
import enum
import itertools
import logging
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from .constants import NotifyType
from .errors import AuthenticationError, LocalProtocolError

__all__ = ["CrlStore", "RevocationMode", "check_chain", "crl_distribution_uris"]

logger = logging.getLogger(__name__)

CRL_SIGNING_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
"""Issuer keys whose CRL signatures we check. Anything else is refused: X25519, X448 and ML-KEM
sign nothing, and DSA is deprecated (cryptography warns on its use; path validation refuses it)."""


class RevocationMode(enum.StrEnum):
    """How much revocation information a certificate needs (strongSwan's ``revocation``)."""

    STRICT = "strict"
    """A current CRL must be available for every certificate and say good."""
    IFURI = "ifuri"
    """A certificate with a CRL distribution point must have a current CRL saying good."""
    RELAXED = "relaxed"
    """Refused only if a CRL lists the certificate."""


def crl_distribution_uris(cert: x509.Certificate) -> tuple[str, ...]:
    """The http:// URIs of the certificate's CRL distribution points (RFC 5280 4.2.1.13);
    other schemes (ldap://, https://) are ignored."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    uris: list[str] = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith("http://"):
                uris.append(name.value)
    return tuple(dict.fromkeys(uris))


def _issuer_key(name: x509.Name) -> bytes:
    return name.public_bytes()


class CrlStore:
    """The CRLs the engine may use, by issuer and by distribution point URI.

    Plain data with no I/O: the shell adds CRLs (:meth:`add`) from files and from fetches
    and asks which URIs to fetch (:meth:`uris_to_fetch`); the engine reads CRLs and notes
    the distribution points it had nothing current for (:meth:`want`).
    """

    def __init__(self, crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self._by_issuer: dict[bytes, list[x509.CertificateRevocationList]] = {}
        self._by_uri: dict[str, x509.CertificateRevocationList] = {}
        self._wanted: set[str] = set()
        for crl in crls:
            self.add(crl)

    def __repr__(self) -> str:
        files = sum(len(v) for v in self._by_issuer.values())
        return f"CrlStore(files={files}, uris={sorted(self._by_uri)}, wanted={sorted(self._wanted)})"

    def add(self, crl: x509.CertificateRevocationList, uri: str | None = None) -> None:
        """Add a CRL from a file (``uri`` None: used for any certificate of its issuer) or the
        one fetched from ``uri`` (replaces the one fetched before unless that is newer)."""
        if uri is None:
            self._by_issuer.setdefault(_issuer_key(crl.issuer), []).append(crl)
            return
        old = self._by_uri.get(uri)
        if old is None or crl.last_update_utc >= old.last_update_utc:
            self._by_uri[uri] = crl
        self._wanted.discard(uri)

    def want(self, uri: str) -> None:
        """The engine met ``uri`` and had no current CRL from it (the shell fetches it)."""
        self._wanted.add(uri)

    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def uris_to_fetch(self, now: datetime.datetime) -> list[str]:
        """URIs to fetch now: those wanted, and those whose CRL is past its nextUpdate."""
        now = _utc(now)
        stale = [
            uri
            for uri, crl in self._by_uri.items()
            if crl.next_update_utc is None or crl.next_update_utc <= now
        ]
        return sorted(self._wanted | set(stale))

    def next_update(self) -> datetime.datetime | None:
        """The earliest nextUpdate of the fetched CRLs (when the shell should refresh)."""
        times = [c.next_update_utc for c in self._by_uri.values() if c.next_update_utc is not None]
        return min(times, default=None)

    def candidates(self, cert: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs that may speak about ``cert``: files of its issuer and those fetched from its
        distribution points."""
        found = list(self._by_issuer.get(_issuer_key(cert.issuer), ()))
        found += [self._by_uri[uri] for uri in crl_distribution_uris(cert) if uri in self._by_uri]
        return found


def _utc(now: datetime.datetime) -> datetime.datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def _issuer_may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.crl_sign)


def _extension(crl: x509.CertificateRevocationList, oid: x509.ObjectIdentifier) -> object | None:
    try:
        return crl.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _covers(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether a (complete, direct) CRL's scope includes ``cert`` (RFC 5280 5.2.5): a CRL
    limited to CA or to end-entity certificates, to some reasons, or to attribute
    certificates is no evidence that another certificate is good."""
    if _extension(crl, ExtensionOID.DELTA_CRL_INDICATOR) is not None:
        return False
    point = _extension(crl, ExtensionOID.ISSUING_DISTRIBUTION_POINT)
    if not isinstance(point, x509.IssuingDistributionPoint):
        return True
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bool(constraints.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    if point.only_contains_ca_certs and not is_ca:
        return False
    if point.only_contains_user_certs and is_ca:
        return False
    return not (point.only_some_reasons or point.indirect_crl or point.only_contains_attribute_certs)


def _usable(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Issued and signed by ``issuer`` (RFC 5280 6.3.3 (f), (g)), who may sign CRLs."""
    if crl.issuer != issuer.subject or not _issuer_may_sign_crls(issuer):
        return False
    key = issuer.public_key()
    if not isinstance(key, CRL_SIGNING_KEYS):
        return False  # key agreement (X25519, X448, ML-KEM) signs nothing
    try:
        return crl.is_signature_valid(key)
    except (TypeError, ValueError):
        return False


def _current(crl: x509.CertificateRevocationList, now: datetime.datetime) -> bool:
    """thisUpdate has passed and nextUpdate (if any) has not (RFC 5280 6.3.3 (a))."""
    if crl.last_update_utc > now:
        return False
    return crl.next_update_utc is None or now <= crl.next_update_utc


def _refuse(message: str) -> AuthenticationError:
    return AuthenticationError(message, NotifyType.INVALID_CERTIFICATE, field="CERT")


def check_certificate(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    store: CrlStore,
    mode: RevocationMode,
    now: datetime.datetime,
) -> None:
    """Check one certificate against its issuer's CRLs in ``store`` under ``mode``.

    :raises AuthenticationError: INVALID_CERTIFICATE (field ``CERT``) when a CRL lists it,
        or when ``mode`` requires a current CRL and there is none.
    """
    now = _utc(now)
    usable = [crl for crl in store.candidates(cert) if _usable(crl, issuer)]
    for crl in usable:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise _refuse(
                f"certificate {_describe(cert)} (serial {cert.serial_number:x}) was revoked on "
                f"{entry.revocation_date_utc.isoformat()} by {_describe(issuer)}"
            )
    if any(_current(crl, now) and _covers(crl, cert) for crl in usable):
        return
    uris = crl_distribution_uris(cert)
    for uri in uris:
        store.want(uri)
    if mode is RevocationMode.STRICT or (mode is RevocationMode.IFURI and uris):
        where = f" (distribution point {', '.join(uris)})" if uris else ""
        raise _refuse(
            f"no current CRL of {_describe(issuer)} for certificate {_describe(cert)}{where}; "
            f"revocation = {mode.value} needs one"
        )


def check_chain(
    chain: Sequence[x509.Certificate],
    store: CrlStore,
    mode: RevocationMode,
    now: datetime.datetime,
) -> None:
    """Check each certificate of a verified path (end entity first, trust anchor last)
    against the CRLs of its issuer, the next certificate in ``chain``. The anchor itself
    is trusted as configured.

    :raises AuthenticationError: as :func:`check_certificate`.
    :raises LocalProtocolError: ``chain`` is empty.
    """
    if not chain:
        raise LocalProtocolError("an empty certificate chain")
    for cert, issuer in itertools.pairwise(chain):
        check_certificate(cert, issuer, store, mode, now)
