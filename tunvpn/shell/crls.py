"""CRLs for the IKE core (the I/O half of :mod:`tunvpn.ike.revocation`).

The core checks certificates against the CRLs of a :class:`~tunvpn.ike.revocation.CrlStore`
it is given and never fetches. This module fills that store:

* CRL files named in the configuration (``crl_files``, PEM or DER), loaded at start and on
  reload;
* HTTP CRL distribution points (RFC 5280 section 4.2.1.13): the URIs of our own
  certificate, of the CAs, and those the core met in peers' certificates
  (:meth:`CrlStore.wanted <tunvpn.ike.revocation.CrlStore.wanted>`), fetched with a bounded
  size (:data:`MAX_CRL_BYTES`) and time (:data:`FETCH_TIMEOUT`), kept until their
  nextUpdate and fetched again then. One URI is fetched at most once every
  :data:`RETRY_AFTER_FAILURE` seconds (a failed one, or a server still serving an outdated
  CRL, is not asked at every login).

Only ``http://`` is fetched (a CRL is signed, TLS adds nothing; ``ldap://`` is not
supported). No redirects are followed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tunvpn.ike.certpath import EKU_IPSEC_IKE, PeerCertificatePolicy
from tunvpn.ike.certs import IdentityPattern
from tunvpn.ike.config import EngineConfig
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.revocation import CrlStore, RevocationMode, crl_distribution_uris

__all__ = [
    "FETCH_TIMEOUT",
    "MAX_CRL_BYTES",
    "CrlError",
    "CrlFetcher",
    "fetch_crl",
    "keep_crls_fresh",
    "load_crl_files",
    "parse_crl",
    "peer_certificate_policy",
]

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 1 << 20
"""Largest CRL body accepted from a distribution point (1 MiB)."""
FETCH_TIMEOUT = 10.0
"""Seconds one fetch may take, connection and whole body included."""
RETRY_AFTER_FAILURE = 60.0
"""Seconds before a URI is fetched again after a failed fetch, or after a fetch whose CRL is
already past its nextUpdate (or has none)."""
_MAX_HEADER_BYTES = 16 * 1024


class CrlError(Exception):
    """A CRL could not be loaded or fetched (the message names the file or URI)."""


def parse_crl(data: bytes, source: str = "CRL") -> x509.CertificateRevocationList:
    """A PEM or DER CRL. :raises CrlError: it does not parse."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError(f"{source}: not a PEM or DER CRL ({exc})") from None


def load_crl_files(paths: Iterable[str | os.PathLike[str]]) -> list[x509.CertificateRevocationList]:
    """Read and parse the configured CRL files. :raises CrlError: naming the file."""
    crls = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CRL_BYTES * 16 + 1)
        except OSError as exc:
            raise CrlError(f"CRL file {path}: {exc.strerror or exc}") from None
        crls.append(parse_crl(data, f"CRL file {path}"))
    return crls


async def _http_get(uri: str, max_bytes: int) -> bytes:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise CrlError(f"{uri}: only http:// distribution points are fetched")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80, limit=_MAX_HEADER_BYTES)
    try:
        writer.write(
            f"GET {target} HTTP/1.0\r\nHost: {host_header}\r\nAccept: application/pkix-crl, */*\r\n"
            "User-Agent: tunvpn\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise CrlError(f"{uri}: response header longer than {_MAX_HEADER_BYTES} bytes") from None
        except asyncio.IncompleteReadError:
            raise CrlError(f"{uri}: connection closed before the response header ended") from None
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/") or status[1] != "200":
            raise CrlError(f"{uri}: HTTP answer {lines[0]!r}, expected 200")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise CrlError(f"{uri}: chunked transfer encoding is not supported")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise CrlError(f"{uri}: bad Content-Length {length!r}")
            if int(length) > max_bytes:
                raise CrlError(f"{uri}: CRL of {length} bytes is larger than the limit of {max_bytes}")
        body = bytearray()
        while chunk := await reader.read(65536):
            body += chunk
            if len(body) > max_bytes:
                raise CrlError(f"{uri}: CRL larger than the limit of {max_bytes} bytes")
        if length is not None and len(body) != int(length):
            raise CrlError(f"{uri}: body of {len(body)} bytes, Content-Length said {length}")
        return bytes(body)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def fetch_crl(
    uri: str, *, max_bytes: int = MAX_CRL_BYTES, timeout: float = FETCH_TIMEOUT
) -> x509.CertificateRevocationList:
    """GET a CRL from an http:// distribution point, at most ``max_bytes`` and ``timeout``
    seconds in all.

    :raises CrlError: wrong scheme, connection refused, timeout, an answer other than 200,
        too large, or not a CRL.
    """
    try:
        async with asyncio.timeout(timeout):
            body = await _http_get(uri, max_bytes)
    except TimeoutError:
        raise CrlError(f"{uri}: no complete answer within {timeout:g} s") from None
    except OSError as exc:
        raise CrlError(f"{uri}: {exc.strerror or exc}") from None
    return parse_crl(body, uri)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CrlFetcher:
    """Keeps a :class:`CrlStore` filled from distribution points: fetches the URIs the
    store asks for (:meth:`CrlStore.uris_to_fetch`), each at most once per ``retry_after``.

    Run :meth:`run` as a task next to the IKE driver; :meth:`refresh` does one round
    (tests, and at start before the first login).
    """

    def __init__(
        self,
        store: CrlStore,
        *,
        max_bytes: int = MAX_CRL_BYTES,
        timeout: float = FETCH_TIMEOUT,
        retry_after: float = RETRY_AFTER_FAILURE,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.retry_after = retry_after
        self._tried_at: dict[str, float] = {}
        self.fetched = 0
        """CRLs fetched so far."""
        self.failures = 0
        """Fetches that failed so far."""

    def watch(self, certificates: Iterable[x509.Certificate]) -> None:
        """Fetch the distribution points of these certificates too (our own certificate and
        chain, the CAs: peers from the same CA usually share the same CRL)."""
        for cert in certificates:
            for uri in crl_distribution_uris(cert):
                self.store.want(uri)

    async def refresh(self, now: datetime.datetime | None = None) -> int:
        """Fetch what the store needs now; returns how many CRLs were added."""
        now = now or _utcnow()
        monotonic = time.monotonic()
        due = [
            uri
            for uri in self.store.uris_to_fetch(now)
            if uri not in self._tried_at or monotonic - self._tried_at[uri] >= self.retry_after
        ]
        added = 0
        for uri in due:
            # Whatever the outcome, not again within retry_after: a server that keeps serving
            # a CRL past its nextUpdate (or one without nextUpdate) is not asked every round.
            self._tried_at[uri] = time.monotonic()
            try:
                crl = await fetch_crl(uri, max_bytes=self.max_bytes, timeout=self.timeout)
            except CrlError as exc:
                self.failures += 1
                log.warning("CRL fetch failed: %s (next try in %g s)", exc, self.retry_after)
                continue
            self.store.add(crl, uri=uri)
            self.fetched += 1
            added += 1
            log.info(
                "CRL of %s from %s: %d revoked, next update %s",
                crl.issuer.rfc4514_string(),
                uri,
                len(crl),
                crl.next_update_utc.isoformat() if crl.next_update_utc else "not given",
            )
        return added

    async def run(self, interval: float = 2.0) -> None:
        """Refresh every ``interval`` seconds until cancelled (a URI the engine met in a
        login is fetched within ``interval``; the peer's next try then finds it)."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)


# --------------------------------------------------------------------------- configuration

_EKU_NAMES = {
    "serverauth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientauth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "ipsecike": EKU_IPSEC_IKE,
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "anyextendedkeyusage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}


def peer_certificate_policy(
    *,
    revocation: str | None = None,
    crl_files: Iterable[str | os.PathLike[str]] = (),
    peer_eku: Iterable[str] | None = None,
    peer_id_patterns: Iterable[str] = (),
) -> PeerCertificatePolicy:
    """The peer certificate settings of gateway.toml / a profile as an engine policy, with a
    CRL store holding the CRL files.

    :param revocation: ``strict``, ``ifuri`` or ``relaxed`` (None: relaxed).
    :param peer_eku: EKU names (``serverAuth``, ``clientAuth``, ``ipsecIKE``, ``any``) or
        dotted OIDs one of which the peer's certificate must carry if it has an EKU
        extension; None: the role's default (:data:`tunvpn.ike.certpath.INITIATOR_EKUS`
        for clients, :data:`~tunvpn.ike.certpath.RESPONDER_EKUS` for gateways).
    :param peer_id_patterns: :class:`~tunvpn.ike.certs.IdentityPattern` texts; the peer's
        certificate subject or a subjectAltName must match one.
    :raises ValueError: a bad value, with a message naming it (the caller adds the key).
    :raises CrlError: a CRL file cannot be read.
    """
    try:
        mode = RevocationMode(revocation or "relaxed")
    except ValueError:
        raise ValueError(f"revocation {revocation!r}: expected strict, ifuri or relaxed") from None
    ekus = None
    if peer_eku is not None:
        found = set()
        for name in peer_eku:
            oid = _EKU_NAMES.get(name.strip().lower())
            if oid is None:
                try:
                    oid = x509.ObjectIdentifier(name.strip())
                except ValueError:
                    raise ValueError(
                        f"peer_eku {name!r}: expected serverAuth, clientAuth, ipsecIKE, any or a dotted OID"
                    ) from None
            found.add(oid)
        if not found:
            raise ValueError("peer_eku is empty: name at least one extended key usage")
        ekus = frozenset(found)
    patterns = []
    for text in peer_id_patterns:
        try:
            patterns.append(IdentityPattern.parse(text))
        except LocalProtocolError as exc:
            raise ValueError(f"peer_id_patterns {text!r}: {exc}") from None
    return PeerCertificatePolicy(
        ekus=ekus,
        identities=tuple(patterns),
        revocation=mode,
        crls=CrlStore(load_crl_files(crl_files)),
    )


async def keep_crls_fresh(config_of: Callable[[], EngineConfig], interval: float = 2.0) -> None:
    """Keep the CRL store of the engine's current configuration filled until cancelled:
    the distribution points of our own certificate, its chain and the CAs at once, then
    those the engine asks for. Follows a reload (a new configuration brings a new store)."""
    fetcher: CrlFetcher | None = None
    while True:
        config = config_of()
        store = config.peer_certificates.crls
        if fetcher is None or fetcher.store is not store:
            fetcher = CrlFetcher(store)
            own = (config.credential.certificate, *config.credential.chain) if config.credential else ()
            fetcher.watch((*own, *config.trusted_cas))
        await fetcher.refresh()
        await asyncio.sleep(interval)
