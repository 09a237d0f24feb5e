"""CRLs fetched from their HTTP distribution points (tunvpn.shell.crls) against a real HTTP server
on 127.0.0.1: fetched then checked, our own points prefetched, oversized and slow answers and
HTTP errors refused (the checks themselves are tested in tests/unit/ike/test_revocation.py)."""

from __future__ import annotations

import asyncio
import http.server
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.crl_pki import (
    DAY,
    DER,
    LEAF_KEY,
    NOW,
    SUB,
    SUB_KEY,
    check_chain,
    make_cert,
    make_crl,
)
from tunvpn.ike.errors import AuthenticationError
from tunvpn.ike.revocation import CrlStore, RevocationMode
from tunvpn.shell.crls import CrlError, CrlFetcher, fetch_crl


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

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the fetcher hung up on purpose (a CRL over its size limit): no traceback
        super().handle_error(request, client_address)


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
    leaf = make_cert("cdp", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    revoked = make_cert("revoked", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    crl_server.files["/sub.crl"] = make_crl(SUB, SUB_KEY, [revoked]).public_bytes(DER)
    store = CrlStore()
    fetcher = CrlFetcher(store, retry_after=0)  # the test's clock jumps days in no time
    with pytest.raises(AuthenticationError):
        check_chain(leaf, RevocationMode.IFURI, store)
    assert asyncio.run(fetcher.refresh(NOW)) == 1
    assert crl_server.requests == ["/sub.crl"]
    check_chain(leaf, RevocationMode.IFURI, store)
    with pytest.raises(AuthenticationError, match="revoked"):
        check_chain(revoked, RevocationMode.RELAXED, store)
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
    crl_server.files["/ours.crl"] = make_crl(SUB, SUB_KEY).public_bytes(serialization.Encoding.PEM)
    store = CrlStore()
    fetcher = CrlFetcher(store)
    fetcher.watch([make_cert("gw", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)])
    assert asyncio.run(fetcher.refresh(NOW)) == 1
    peer = make_cert("peer", LEAF_KEY, SUB.subject, SUB_KEY, cdp=uri)
    check_chain(peer, RevocationMode.IFURI, store)


@pytest.mark.parametrize("with_length", [True, False], ids=["Content-Length", "no length"])
def test_oversized_crl_refused(crl_server: _CrlServer, with_length: bool) -> None:
    # A real CRL's start followed by 1.5 MiB more: the size is refused before any parsing.
    big = make_crl(SUB, SUB_KEY).public_bytes(DER) + bytes(3 << 19)
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
    crl_server.files["/slow.crl"] = make_crl(SUB, SUB_KEY).public_bytes(DER)
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
