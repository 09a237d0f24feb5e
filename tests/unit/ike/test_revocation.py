"""Revocation: CRLs checked on every certificate of the verified path (tunvpn.ike.revocation),
CRL files read (tunvpn.shell.crls), and a revoked client refused by the gateway engine in a
full Main Mode exchange. HTTP distribution points fetched with bounded size and time, against
a real HTTP server on 127.0.0.1: tests/loopback/test_crl_fetch.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers.crl_pki import (
    ALL_MODES,
    DAY,
    FORGER_KEY,
    LEAF,
    LEAF_KEY,
    NOW,
    OTHER_LEAF,
    ROOT,
    ROOT_KEY,
    SUB,
    SUB_KEY,
    check_chain,
    good_crls,
    make_cert,
    make_crl,
)
from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tunvpn.ike import events as ev
from tunvpn.ike.certpath import PeerCertificatePolicy
from tunvpn.ike.certs import Credential
from tunvpn.ike.config import EngineConfig
from tunvpn.ike.constants import NotifyType
from tunvpn.ike.errors import AuthenticationError
from tunvpn.ike.identity import Identity
from tunvpn.ike.revocation import CrlStore, RevocationMode
from tunvpn.shell.crls import CrlError, load_crl_files

# ----------------------------------------------------------------------------- CRL checks


@pytest.mark.parametrize("mode", ALL_MODES)
def test_revoked_leaf_refused_in_every_mode(mode: RevocationMode, tmp_path: Path) -> None:
    path = tmp_path / "sub.crl"
    path.write_bytes(make_crl(SUB, SUB_KEY, [LEAF]).public_bytes(serialization.Encoding.PEM))
    store = CrlStore([*load_crl_files([path]), make_crl(ROOT, ROOT_KEY)])
    with pytest.raises(AuthenticationError, match="revoked") as info:
        check_chain(LEAF, mode, store)
    assert info.value.notify is NotifyType.INVALID_CERTIFICATE
    check_chain(OTHER_LEAF, mode, store)  # the CRL lists only LEAF


@pytest.mark.parametrize("mode", ALL_MODES)
def test_revoked_intermediate_refused(mode: RevocationMode) -> None:
    store = CrlStore([make_crl(SUB, SUB_KEY), make_crl(ROOT, ROOT_KEY, [SUB])])
    with pytest.raises(AuthenticationError, match=r"sub CA.*revoked"):
        check_chain(LEAF, mode, store)


def test_strict_needs_a_crl_for_every_certificate_relaxed_does_not() -> None:
    with pytest.raises(AuthenticationError, match="no current CRL"):
        check_chain(LEAF, RevocationMode.STRICT, CrlStore())
    with pytest.raises(AuthenticationError, match="no current CRL of CN=root CA"):
        check_chain(LEAF, RevocationMode.STRICT, CrlStore([make_crl(SUB, SUB_KEY)]))  # none for SUB itself
    check_chain(LEAF, RevocationMode.STRICT, CrlStore(good_crls()))
    check_chain(LEAF, RevocationMode.RELAXED, CrlStore())
    check_chain(LEAF, RevocationMode.IFURI, CrlStore())  # no distribution point: nothing to insist on


def test_ifuri_needs_the_crl_of_a_certificate_with_a_distribution_point() -> None:
    leaf = make_cert("cdp", LEAF_KEY, SUB.subject, SUB_KEY, cdp="http://127.0.0.1:9/sub.crl")
    store = CrlStore()
    with pytest.raises(AuthenticationError, match=re.escape("distribution point http://127.0.0.1:9/sub.crl")):
        check_chain(leaf, RevocationMode.IFURI, store)
    assert store.wanted() == {"http://127.0.0.1:9/sub.crl"}  # the shell fetches it next
    check_chain(leaf, RevocationMode.RELAXED, store)
    check_chain(
        leaf, RevocationMode.IFURI, CrlStore([make_crl(SUB, SUB_KEY)])
    )  # a file CRL of the issuer does


def test_forged_crl_is_no_evidence() -> None:
    """A CRL with the issuer's name but another key's signature neither revokes nor vouches."""
    forged_revoking = make_crl(SUB, FORGER_KEY, [LEAF])
    check_chain(LEAF, RevocationMode.RELAXED, CrlStore([forged_revoking]))
    with pytest.raises(AuthenticationError, match="no current CRL"):
        check_chain(
            LEAF, RevocationMode.STRICT, CrlStore([make_crl(SUB, FORGER_KEY), make_crl(ROOT, ROOT_KEY)])
        )


def test_crl_validity_times() -> None:
    stale = make_crl(SUB, SUB_KEY, this_update=NOW - 30 * DAY, next_update=NOW - DAY)
    future = make_crl(SUB, SUB_KEY, this_update=NOW + DAY, next_update=NOW + 9 * DAY)
    for crl in (stale, future):
        with pytest.raises(AuthenticationError, match="no current CRL"):
            check_chain(LEAF, RevocationMode.STRICT, CrlStore([crl, make_crl(ROOT, ROOT_KEY)]))
    # A revocation is not undone by the CRL growing old.
    old_revoking = make_crl(SUB, SUB_KEY, [LEAF], this_update=NOW - 30 * DAY, next_update=NOW - DAY)
    with pytest.raises(AuthenticationError, match="revoked"):
        check_chain(LEAF, RevocationMode.RELAXED, CrlStore([old_revoking]))


def test_bad_crl_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.crl"
    path.write_bytes(b"not a CRL")
    with pytest.raises(CrlError, match=r"junk\.crl"):
        load_crl_files([path])
    with pytest.raises(CrlError, match=r"missing\.crl"):
        load_crl_files([tmp_path / "missing.crl"])


# ----------------------------------------------------------------------------- through the engine


def _credential(cn: str) -> Credential:
    key = ec.generate_private_key(ec.SECP256R1())
    return Credential(make_cert(cn, key, SUB.subject, SUB_KEY), key, chain=(SUB,))


def test_gateway_refuses_a_revoked_client_in_main_mode() -> None:
    """A client whose certificate was revoked (CRL file on the gateway) gets no phase 1,
    while an unrevoked one from the same CA does."""
    gateway_credential = _credential("gw")
    revoked_client = _credential("client")
    good_client = _credential("good")
    crls = CrlStore([make_crl(SUB, SUB_KEY, [revoked_client.certificate]), make_crl(ROOT, ROOT_KEY)])
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
