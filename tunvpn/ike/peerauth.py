"""Phase 1 authentication: HASH_I/HASH_R (RFC 2409 section 5), signatures with certificates
(RFC 2409 section 5.1, RFC 4754), CERT/CR payloads and our default identity."""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import certpath, certs, crypto
from .config import SIGNATURE_METHODS, proof_method
from .constants import (
    CertEncoding,
    ExchangeType,
    NotifyType,
)
from .errors import AuthenticationError
from .identity import Identity
from .messages import (
    CertPayload,
    CertRequestPayload,
    HashPayload,
    IDPayload,
    Payload,
    RawPayload,
    SignaturePayload,
)
from .sa import Address, IkeSA, Role
from .sa import find_payloads as _find
from .sa import one_payload as _one

BM = ExchangeType.BASE
BASE_MODE_AUTH_LABEL = b"tunvpn base mode v2 auth"
"""Base Mode v2: SKEYID_auth = prf(SKEYID, g^xy | CKY-I | CKY-R | this label) keys HASH_I/R."""

if TYPE_CHECKING:
    from .config import EngineConfig

log = logging.getLogger(__name__)


def _utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


def auth_hash(sa: IkeSA, *, initiator: bool) -> bytes:
    """HASH_I or HASH_R (RFC 2409 section 5; Base Mode variant in docs/protocol.md)."""
    assert sa.suite is not None
    my_side = (sa.role is Role.INITIATOR) == initiator
    id_body = sa.local_id_body if my_side else sa.peer_id_body
    assert sa.keys is not None
    skeyid = sa.keys.skeyid
    if sa.exchange == BM:
        # Base Mode v2 (docs/protocol.md): both hashes keyed with g^xy, whatever the
        # method, so values on the wire give no dictionary target without the DH secret
        skeyid = crypto.prf(sa.suite.hash, skeyid, sa.g_xy + sa.icookie + sa.rcookie + BASE_MODE_AUTH_LABEL)
    fn = crypto.hash_i if initiator else crypto.hash_r
    return fn(sa.suite.hash, skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sa_body, id_body)


def auth_payloads(config: EngineConfig, sa: IkeSA, *, initiator: bool) -> list[Payload]:
    """Our authentication: HASH_x for pre-shared keys, or CERT* and SIG_x."""
    assert sa.suite is not None
    digest = auth_hash(sa, initiator=initiator)
    method = proof_method(sa.suite.auth, initiator=initiator)
    if method not in SIGNATURE_METHODS:
        return [HashPayload(digest)]
    cred = config.credential
    if cred is None:
        raise AuthenticationError("signature authentication chosen but we have no certificate")
    out: list[Payload] = [CertPayload(CertEncoding.X509_SIGNATURE, cred.cert_der())]
    out += [CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(Encoding.DER)) for c in cred.chain]
    out.append(SignaturePayload(certs.sign(cred, method, digest)))
    return out


def verify_auth(
    config: EngineConfig, sa: IkeSA, payloads: list[RawPayload], *, initiator: bool, now: float
) -> None:
    """Check the peer's HASH_x or certificate and SIG_x; raises AuthenticationError."""
    assert sa.suite is not None
    expected = auth_hash(sa, initiator=initiator)
    method = proof_method(sa.suite.auth, initiator=initiator)
    if method not in SIGNATURE_METHODS:
        got = _one(payloads, HashPayload, "HASH").payload
        assert isinstance(got, HashPayload)
        if not crypto.constant_time_equal(got.data, expected):
            raise AuthenticationError(
                "HASH_I does not verify: wrong pre-shared key"
                if initiator
                else "HASH_R does not verify: wrong pre-shared key",
                field="HASH",
            )
        if sa.pair is not None:
            check_pair_id(sa)
        elif sa.role is Role.INITIATOR:
            check_remote_id(config, sa, None)
        return
    cert_payloads = [p.payload for p in _find(payloads, CertPayload)]
    x509_certs = [
        c for c in cert_payloads if isinstance(c, CertPayload) and c.encoding == CertEncoding.X509_SIGNATURE
    ]
    if not x509_certs:
        raise AuthenticationError(
            "peer sent no X.509 certificate", NotifyType.CERTIFICATE_UNAVAILABLE, "CERT"
        )
    if not config.trusted_cas:
        raise AuthenticationError(
            "no CA configured to check peer certificates", NotifyType.INVALID_CERT_AUTHORITY
        )
    leaf = certpath.verify_peer_certificate(
        x509_certs[0].data,
        config.trusted_cas,
        _utc(now),
        intermediates=[c.data for c in x509_certs[1:]],
        policy=config.peer_certificates,
        peer_is_initiator=initiator,
    )
    assert sa.peer_id is not None
    id_payload = sa.peer_id.to_payload()
    if not certs.certificate_matches_identity(leaf, sa.peer_id.id_type, id_payload.data):
        raise AuthenticationError(
            f"peer identity {sa.peer_id} is not in its certificate",
            NotifyType.INVALID_ID_INFORMATION,
            "ID",
        )
    sig = _one(payloads, SignaturePayload, "SIG").payload
    assert isinstance(sig, SignaturePayload)
    certs.verify(leaf.public_key(), method, expected, sig.data)
    if sa.pair is not None:
        check_pair_id(sa)  # its certificate names the identity it presented (checked above)
    elif sa.role is Role.INITIATOR:
        check_remote_id(config, sa, leaf)


def check_pair_id(sa: IkeSA) -> None:
    """A direct tunnel (issue 17): the peer proved the pair's key; it must also present the
    identity the gateway introduced (the key alone names the pair, not the side)."""
    assert sa.pair is not None
    if sa.peer_id != sa.pair.identity:
        raise AuthenticationError(
            f"the introduced peer identifies as {sa.peer_id}, not {sa.pair.identity}",
            NotifyType.INVALID_ID_INFORMATION,
            "ID",
        )


def check_remote_id(config: EngineConfig, sa: IkeSA, leaf: x509.Certificate | None) -> None:
    """The initiator's check that the responder is the gateway it meant (``remote_id``),
    after its authentication verified and before phase 1 completes (so before XAUTH)."""
    wanted = config.remote_id
    assert sa.peer_id is not None
    if wanted is None:
        return
    wanted_payload = wanted.to_payload()
    if leaf is not None:
        if certs.certificate_matches_identity(leaf, wanted.id_type, wanted_payload.data):
            return
        raise AuthenticationError(
            f"the gateway's certificate ({leaf.subject.rfc4514_string()}, identity {sa.peer_id}) "
            f"does not name {wanted}, the expected gateway (remote_id): refusing it; if this "
            f"is the right gateway, set remote_id to a name in its certificate",
            NotifyType.INVALID_ID_INFORMATION,
            "ID",
        )
    peer_payload = sa.peer_id.to_payload()
    if (peer_payload.id_type, peer_payload.data) == (wanted_payload.id_type, wanted_payload.data):
        return
    if config.remote_id_psk_any:
        log.warning(
            "gateway identity %s accepted although %s was expected (remote_id = any)", sa.peer_id, wanted
        )
        return
    raise AuthenticationError(
        f"the gateway identifies as {sa.peer_id}, not {wanted} as expected (remote_id): refusing "
        f'it; if {sa.peer_id} is the right gateway, set remote_id = "{sa.peer_id}" in the profile '
        f'(--remote-id {sa.peer_id}), or remote_id = "any" to accept any identity from a '
        "pre-shared-key gateway (anyone holding the key can then pose as it)",
        NotifyType.INVALID_ID_INFORMATION,
        "ID",
    )


def cert_requests(config: EngineConfig) -> list[Payload]:
    """CR payloads naming the CAs we trust."""
    if config.credential is None and not config.hybrid:
        return []  # a hybrid client has no certificate but asks for the gateway's
    return [
        CertRequestPayload(CertEncoding.X509_SIGNATURE, certs.ca_distinguished_name(ca))
        for ca in config.trusted_cas
    ]


def default_local_id(config: EngineConfig, local: Address) -> Identity:
    """Our phase 1 identity: configured, else the certificate's subject, else our address."""
    if config.local_id is not None:
        return config.local_id
    if config.credential is not None and not config.psks:
        return Identity.from_payload(
            IDPayload(9, config.credential.certificate.subject.public_bytes())  # DER_ASN1_DN
        )
    return Identity.parse(local[0])
