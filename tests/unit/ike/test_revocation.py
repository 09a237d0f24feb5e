"""Revocation: CRLs checked on every certificate of the verified path (tunvpn.ike.revocation),
CRL files and HTTP distribution points fetched with bounded size and time
(tunvpn.shell.crls, against a real HTTP server on 127.0.0.1), and a revoked client refused
by the gateway engine in a full Main Mode exchange."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.ike import events as ev
from tunvpn.ike.certpath import PeerCertificatePolicy, verify_peer_certificate
from tunvpn.ike.certs import Credential
from tunvpn.ike.config import EngineConfig
from tunvpn.ike.constants import NotifyType
from tunvpn.ike.errors import AuthenticationError
from tunvpn.ike.identity import Identity
from tunvpn.ike.revocation import CrlStore, RevocationMode
from tunvpn.shell.crls import CrlError, CrlFetcher, fetch_crl, load_crl_files

NOW = datetime.datetime.fromtimestamp(1_800_000_000.0, datetime.UTC)  # ike_pair.Pair's clock
DAY = datetime.timedelta(days=1)
DER = serialization.Encoding.DER
ALL_MODES = list(RevocationMode)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tunvpn test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    cn: str, key, issuer: x509.Name, issuer_key, *, ca: bool = False, cdp: str | None = None
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
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


def _crl(
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
ROOT = _cert("root CA", ROOT_KEY, _name("root CA"), ROOT_KEY, ca=True)
SUB_KEY = ec.generate_private_key(ec.SECP256R1())
SUB = _cert("sub CA", SUB_KEY, ROOT.subject, ROOT_KEY, ca=True)
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = _cert("client", LEAF_KEY, SUB.subject, SUB_KEY)
OTHER_LEAF = _cert("other", LEAF_KEY, SUB.subject, SUB_KEY)
FORGER_KEY = ec.generate_private_key(ec.SECP256R1())


def _check(
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


def _good_crls() -> list[x509.CertificateRevocationList]:
    return [_crl(SUB, SUB_KEY, [OTHER_LEAF]), _crl(ROOT, ROOT_KEY)]


# ----------------------------------------------------------------------------- CRL checks


@pytest.mark.parametrize("mode", ALL_MODES)
def test_revoked_leaf_refused_in_every_mode(mode: RevocationMode, tmp_path: Path) -> None:
    path = tmp_path / "sub.crl"
    path.write_bytes(_crl(SUB, SUB_KEY, [LEAF]).public_bytes(serialization.Encoding.PEM))
    store = CrlStore([*load_crl_files([path]), _crl(ROOT, ROOT_KEY)])
    with pytest.raises(AuthenticationError, match="revoked") as info:
        _check(LEAF, mode, store)
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE
    _check(OTHER_LEAF, mode, store)  # the CRL lists only LEAF


@pytest.mark.parametrize("mode", ALL_MODES)
def test_revoked_intermediate_refused(mode: RevocationMode) -> None:
    store = CrlStore([_crl(SUB, SUB_KEY), _crl(ROOT, ROOT_KEY, [SUB])])
    with pytest.raises(AuthenticationError, match=r"sub CA.*revoked"):
        _check(LEAF, mode, store)


def test_strict_needs_a_crl_for_every_certificate_relaxed_does_not() -> None:
    with pytest.raises(AuthenticationError, match="no current CRL"):
        _check(LEAF, RevocationMode.STRICT, CrlStore())
    with pytest.raises(AuthenticationError, match="no current CRL of CN=root CA"):
        _check(LEAF, RevocationMode.STRICT, CrlStore([_crl(SUB, SUB_KEY)]))  # none for SUB itself
    _check(LEAF, RevocationMode.STRICT, CrlStore(_good_crls()))
    _check(LEAF, RevocationMode.RELAXED, CrlStore())
    _check(LEAF, RevocationMode.IFURI, CrlStore())  # no distribution point: nothing to insist on


def test_ifuri_needs_the_crl_of_a_certificate_with_a_distribution_point() -> None:
    leaf = _cert("cdp", LEAF_KEY, SUB.subject, SUB_KEY, cdp="http://127.0.0.1:9/sub.crl")
    store = CrlStore()
    with pytest.raises(AuthenticationError, match=re.escape("distribution point http://127.0.0.1:9/sub.crl")):
        _check(leaf, RevocationMode.IFURI, store)
    assert store.wanted() == {"http://127.0.0.1:9/sub.crl"}  # the shell fetches it next
    _check(leaf, RevocationMode.RELAXED, store)
    _check(leaf, RevocationMode.IFURI, CrlStore([_crl(SUB, SUB_KEY)]))  # a file CRL of the issuer does


def test_forged_crl_is_no_evidence() -> None:
    """A CRL with the issuer's name but another key's signature neither revokes nor vouches."""
    forged_revoking = _crl(SUB, FORGER_KEY, [LEAF])
    _check(LEAF, RevocationMode.RELAXED, CrlStore([forged_revoking]))
    with pytest.raises(AuthenticationError, match="no current CRL"):
        _check(LEAF, RevocationMode.STRICT, CrlStore([_crl(SUB, FORGER_KEY), _crl(ROOT, ROOT_KEY)]))


def test_crl_validity_times() -> None:
    stale = _crl(SUB, SUB_KEY, this_update=NOW - 30 * DAY, next_update=NOW - DAY)
    future = _crl(SUB, SUB_KEY, this_update=NOW + DAY, next_update=NOW + 9 * DAY)
    for crl in (stale, future):
        with pytest.raises(AuthenticationError, match="no current CRL"):
            _check(LEAF, RevocationMode.STRICT, CrlStore([crl, _crl(ROOT, ROOT_KEY)]))
    # A revocation is not undone by the CRL growing old.
    old_revoking = _crl(SUB, SUB_KEY, [LEAF], this_update=NOW - 30 * DAY, next_update=NOW - DAY)
    with pytest.raises(AuthenticationError, match="revoked"):
        _check(LEAF, RevocationMode.RELAXED, CrlStore([old_revoking]))


def test_bad_crl_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.crl"
    path.write_bytes(b"not a CRL")
    with pytest.raises(CrlError, match=r"junk\.crl"):
        load_crl_files([path])
    with pytest.raises(CrlError, match=r"missing\.crl"):
        load_crl_files([tmp_path / "missing.crl"])


# ----------------------------------------------------------------------------- HTTP distribution points


class _CrlServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.no_length: set[str] = set()
        self.slow = threading.Event()  # set: requests get no answer (a slow server)
        self.release = threading.Event()
        self.requests: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _CrlServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.slow.is_set():
            self.server.release.wait(10)  # no answer until the test is over
            return
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/pkix-crl")
        if self.path not in self.server.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def crl_server() -> Iterator[_CrlServer]:
    server = _CrlServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_distribution_point_fetched_then_checked(crl_server: _CrlServer) -> None:
    """ifuri: the first login with a new distribution point cannot be checked and is
    refused; the engine notes the URI, the shell fetches it over HTTP, the next login
    passes - and a revoked certificate is refused."""
    uri = crl_server.url("/sub.crl")
    leaf = _cert("cdp", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    revoked = _cert("revoked", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    crl_server.files["/sub.crl"] = _crl(SUB, SUB_KEY, [revoked]).public_bytes(DER)
    store = CrlStore()
    fetcher = CrlFetcher(store, retry_after=0)  # the test's clock jumps days in no time
    with pytest.raises(AuthenticationError):
        _check(leaf, RevocationMode.IFURI, store)
    assert asyncio.run(fetcher.refresh(NOW)) == 1
    assert crl_server.requests == ["/sub.crl"]
    _check(leaf, RevocationMode.IFURI, store)
    with pytest.raises(AuthenticationError, match="revoked"):
        _check(revoked, RevocationMode.RELAXED, store)
    # Cached until nextUpdate: nothing to fetch before, fetched again after.
    assert asyncio.run(fetcher.refresh(NOW + DAY)) == 0
    assert asyncio.run(fetcher.refresh(NOW + 8 * DAY)) == 1
    assert crl_server.requests == ["/sub.crl", "/sub.crl"]
    # The server still has only that CRL, now outdated: asked again only after retry_after.
    patient = CrlFetcher(store)
    assert asyncio.run(patient.refresh(NOW + 8 * DAY)) == 1
    assert asyncio.run(patient.refresh(NOW + 8 * DAY)) == 0
    assert len(crl_server.requests) == 3


def test_watch_prefetches_our_own_distribution_points(crl_server: _CrlServer) -> None:
    uri = crl_server.url("/ours.crl")
    crl_server.files["/ours.crl"] = _crl(SUB, SUB_KEY).public_bytes(serialization.Encoding.PEM)
    store = CrlStore()
    fetcher = CrlFetcher(store)
    fetcher.watch([_cert("gw", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)])
    assert asyncio.run(fetcher.refresh(NOW)) == 1
    peer = _cert("peer", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    _check(peer, RevocationMode.IFURI, store)


@pytest.mark.parametrize("with_length", [True, False], ids=["Content-Length", "no length"])
def test_oversized_crl_refused(crl_server: _CrlServer, with_length: bool) -> None:
    # A real CRL's start followed by 1.5 MiB more: the size is refused before any parsing.
    big = _crl(SUB, SUB_KEY).public_bytes(DER) + bytes(3 << 19)
    crl_server.files["/big.crl"] = big
    if not with_length:
        crl_server.no_length.add("/big.crl")
    with pytest.raises(CrlError, match="larger than the limit"):
        asyncio.run(fetch_crl(crl_server.url("/big.crl")))
    # The fetcher keeps going without it and does not ask again at once.
    store = CrlStore()
    store.want(crl_server.url("/big.crl"))
    fetcher = CrlFetcher(store)
    assert asyncio.run(fetcher.refresh(NOW)) == 0
    assert asyncio.run(fetcher.refresh(NOW)) == 0
    assert fetcher.failures == 1


def test_slow_server_times_out(crl_server: _CrlServer) -> None:
    crl_server.files["/slow.crl"] = _crl(SUB, SUB_KEY).public_bytes(DER)
    crl_server.slow.set()
    with pytest.raises(CrlError, match=re.escape("no complete answer within 0.5 s")):
        asyncio.run(fetch_crl(crl_server.url("/slow.crl"), timeout=0.5))


def test_http_errors(crl_server: _CrlServer) -> None:
    with pytest.raises(CrlError, match="404"):
        asyncio.run(fetch_crl(crl_server.url("/missing.crl")))
    crl_server.files["/junk.crl"] = b"<html>not a CRL</html>"
    with pytest.raises(CrlError, match="not a PEM or DER CRL"):
        asyncio.run(fetch_crl(crl_server.url("/junk.crl")))
    with pytest.raises(CrlError, match="only http://"):
        asyncio.run(fetch_crl("ldap://127.0.0.1/cn=crl"))


# ----------------------------------------------------------------------------- through the engine


def _credential(cn: str) -> Credential:
    key = ec.generate_private_key(ec.SECP256R1())
    return Credential(_cert(cn, key, SUB.subject, SUB_KEY), key, chain=(SUB,))


def test_gateway_refuses_a_revoked_client_in_main_mode() -> None:
    """A client whose certificate was revoked (CRL file on the gateway) gets no phase 1,
    while an unrevoked one from the same CA does."""
    gateway_credential = _credential("gw")
    revoked_client = _credential("client")
    good_client = _credential("good")
    crls = CrlStore([_crl(SUB, SUB_KEY, [revoked_client.certificate]), _crl(ROOT, ROOT_KEY)])
    gateway = EngineConfig(
        credential=gateway_credential,
        trusted_cas=(ROOT,),
        local_id=Identity.parse("@gw.example"),
        peer_certificates=PeerCertificatePolicy(revocation=RevocationMode.STRICT, crls=crls),
    )
    results = {}
    for name, credential in (("client", revoked_client), ("good", good_client)):
        client = EngineConfig(
            credential=credential, trusted_cas=(ROOT,), local_id=Identity.parse(f"@{name}.example")
        )
        pair = Pair(client, gateway)
        pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
        pair.client.drain()
        pair.run()
        results[name] = pair
    revoked = results["client"]
    assert not revoked.gateway.of(ev.Phase1Established)
    errors = revoked.gateway.of(ev.ProtocolError)
    assert errors and errors[0].notify == NotifyType.INVALID_CERTIFICATE
    assert "revoked" in str(errors[0])
    assert results["good"].gateway.of(ev.Phase1Established)
