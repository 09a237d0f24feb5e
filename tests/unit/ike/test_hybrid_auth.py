"""Hybrid authentication (draft-ietf-ipsec-isakmp-hybrid-auth-05, HybridInitRSA 64221): the
gateway signs with its RSA certificate, the client sends only HASH_I (keyed by the signature
SKEYID) and logs in with XAUTH. A member of the group, who holds the group PSK but not the
gateway's key, can then no longer pose as the gateway and collect passwords.

In-memory engines (message contents, the impersonation attempts), then the profile, flag and
gateway.toml keys; the real client and gateway over UDP are in tests/loopback/test_hybrid_auth.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.gateway_pki import pki, write_pem
from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tests.helpers.loopback import GATEWAY, PSK
from tunvpn.cli import build_parser
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.config.gateway import ConfigFileError, parse_gateway_config
from tunvpn.config.profile import load_profile
from tunvpn.gateway.daemon import ConfigError, GatewayOptions
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import AuthMethod, HeaderFlag, NotifyType, Phase1Attr
from tunvpn.ike.crypto import cbc_decrypt
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import HEADER_SIZE, decode_header, decode_message, decode_payloads

PASSWORD = "alice-secret-password"


def hybrid_client(**kw: object) -> EngineConfig:
    """A client with the CA that issued the gateway's certificate and nothing else."""
    base: dict[str, object] = dict(
        trusted_cas=(pki(GATEWAY_IP).ca,), hybrid=True, remote_id=Identity.parse(GATEWAY_IP)
    )
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def gateway(credential=None, **kw: object) -> EngineConfig:
    """A gateway with the group PSK (for vpnc-style clients) and XAUTH."""
    base: dict[str, object] = dict(
        psks=PskTable({"*": PSK}),
        credential=credential,
        trusted_cas=(pki(GATEWAY_IP).ca,),
        require_xauth=True,
        xauth_available=True,
        allow_aggressive_psk=True,
        allow_aggressive_signatures=True,  # hybrid is tested in both modes
    )
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def real_gateway() -> EngineConfig:
    return gateway(pki(GATEWAY_IP).gateway, hybrid=True)


def start(pair: Pair, mode: str = "main") -> None:
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode=mode, xauth=True)
    pair.client.drain()
    pair.run()


def answer_xauth(pair: Pair) -> None:
    """The client shell answers every XAUTH request with the password."""
    for asked in pair.client.of(ev.XauthRequested):
        pair.client.engine.xauth_reply(asked.sa_id, pair.now, user_name="alice", password=PASSWORD)
    pair.run()


def offered_auth_methods(first_message: bytes) -> set[int]:
    sa = decode_message(first_message).payloads[0]
    return {
        a.as_int()
        for prop in sa.proposals
        for t in prop.transforms
        for a in t.attributes
        if a.type == Phase1Attr.AUTHENTICATION_METHOD
    }


# ------------------------------------------------------------------------------ engines


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_hybrid_login_through_to_xauth(mode: str) -> None:
    pair = Pair(hybrid_client(), real_gateway())
    start(pair, mode)
    [c] = pair.client.of(ev.Phase1Established)
    [g] = pair.gateway.of(ev.Phase1Established)
    assert c.suite.endswith("/hybrid_init_rsa") and c.suite == g.suite
    assert g.peer_id == CLIENT_IP  # unauthenticated: the login is XAUTH's
    answer_xauth(pair)
    [creds] = pair.gateway.of(ev.XauthCredentials)
    assert (creds.user_name, creds.password) == ("alice", PASSWORD)
    pair.gateway.engine.xauth_verdict(g.sa_id, pair.now, True)
    pair.run()
    assert pair.client.of(ev.XauthCompleted)[0].success


def _phase1_payloads(pair: Pair) -> list[set[str]]:
    """The payload names of each phase 1 message, decrypting 5 and 6 with the client's keys
    (RFC 2409 appendix B: message 5 uses the first IV, message 6 the last block of 5)."""
    [sa] = pair.client.engine.ike_sas()
    assert sa.keys is not None and sa.suite is not None
    iv = sa.keys.iv
    names = []
    for _, data in pair.wire[:6]:
        header = decode_header(data)
        body = data[HEADER_SIZE : header.length]
        if header.flags & HeaderFlag.ENCRYPTION:
            plain = cbc_decrypt(sa.suite.encryption, sa.keys.enc_key, iv, body)
            iv = body[-len(iv) :]
            payloads = decode_payloads(header.next_payload, plain, allow_trailing=True)
        else:
            payloads = decode_payloads(header.next_payload, body)
        names.append({p.payload.__class__.__name__ for p in payloads})
    return names


def test_hybrid_main_mode_messages() -> None:
    """Draft section 4.2, Main Mode with the client as initiator: the client offers
    HybridInitRSA alone, asks for the gateway's certificate (CR with KE and Ni) and sends only
    IDii and HASH_I; the gateway answers IDir, CERT and SIG_R."""
    pair = Pair(hybrid_client(), real_gateway())
    start(pair)
    assert [who for who, _ in pair.wire[:6]] == ["c>g", "g>c"] * 3
    assert offered_auth_methods(pair.wire[0][1]) == {AuthMethod.HYBRID_INIT_RSA}
    _, _, m3, _, m5, m6 = _phase1_payloads(pair)
    assert "CertRequestPayload" in m3
    assert {"IDPayload", "HashPayload"} <= m5 and not {"SignaturePayload", "CertPayload"} & m5
    assert {"IDPayload", "CertPayload", "SignaturePayload"} <= m6 and "HashPayload" not in m6


# ------------------------------------------------------------------------------ impersonation


def impostors() -> dict[str, EngineConfig]:
    """Group members posing as the gateway: each holds the group PSK, some a certificate."""
    p = pki(GATEWAY_IP)
    return {
        "group PSK only": gateway(local_id=Identity.parse(GATEWAY_IP)),
        "group PSK, own CA": gateway(p.rogue_gateway, hybrid=True, local_id=Identity.parse(GATEWAY_IP)),
        "group PSK, same CA, other name": gateway(
            p.other_gateway, hybrid=True, local_id=Identity.parse("@evil.example")
        ),
    }


def test_control_a_group_member_collects_a_psk_clients_password() -> None:
    """Why hybrid exists: against a PSK client, a group member answering in the gateway's
    place (same PSK, same identity) is indistinguishable and gets the password."""
    client = EngineConfig(psks=PskTable({"*": PSK}), remote_id=Identity.parse(GATEWAY_IP))
    pair = Pair(client, impostors()["group PSK only"])
    start(pair)
    answer_xauth(pair)
    assert pair.gateway.of(ev.XauthCredentials)[0].password == PASSWORD


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize(
    "impostor", ["group PSK only", "group PSK, own CA", "group PSK, same CA, other name"]
)
def test_a_group_member_cannot_impersonate_the_gateway(impostor: str, mode: str) -> None:
    pair = Pair(hybrid_client(), impostors()[impostor])
    start(pair, mode)
    answer_xauth(pair)
    assert not pair.client.of(ev.Phase1Established) and not pair.client.of(ev.XauthRequested)
    assert not pair.gateway.of(ev.XauthCredentials)
    [failed] = pair.client.of(ev.Phase1Failed)
    expected = {
        "group PSK only": {NotifyType.NO_PROPOSAL_CHOSEN},  # nothing but hybrid is offered
        # its CA has the real CA's name: the chain check finds a bad signature
        "group PSK, own CA": {NotifyType.INVALID_CERT_AUTHORITY, NotifyType.INVALID_CERTIFICATE},
        "group PSK, same CA, other name": {NotifyType.INVALID_ID_INFORMATION},
    }[impostor]
    assert failed.notify in expected, failed


def test_hybrid_needs_xauth_and_is_not_base_mode() -> None:
    pair = Pair(hybrid_client(), real_gateway())
    with pytest.raises(ValueError, match="XAUTH"):
        pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    with pytest.raises(ValueError, match="base"):
        pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode="base", xauth=True)


def test_gateway_without_the_option_refuses_hybrid() -> None:
    pair = Pair(hybrid_client(), gateway(pki(GATEWAY_IP).gateway))
    start(pair)
    assert pair.client.of(ev.Phase1Failed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


# ------------------------------------------------------------------------------ configuration


def test_profile_with_a_ca_alone_is_hybrid(tmp_path: Path) -> None:
    p = pki(GATEWAY)
    path = tmp_path / "work.toml"
    path.write_text('gateway = "192.0.2.1"\nuser = "alice"\n' + write_pem(tmp_path, None, p.ca))
    profile = load_profile(path, env={})
    assert profile.credential is None and profile.trusted_cas == (p.ca,) and not profile.psks
    options = ClientOptions(
        gateway=profile.gateway, psks=profile.psks, trusted_cas=profile.trusted_cas, user="a"
    )
    assert options.hybrid


def test_profile_hybrid_with_a_psk_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "group.psk").write_text("secret\n")
    (tmp_path / "group.psk").chmod(0o600)
    path = tmp_path / "work.toml"
    path.write_text(
        'gateway = "192.0.2.1"\npsk_file = "group.psk"\n' + write_pem(tmp_path, None, pki(GATEWAY).ca)
    )
    with pytest.raises(ConfigFileError) as info:
        load_profile(path, env={})
    assert info.value.key == "ca" and "hybrid" in info.value.reason


def test_client_options_hybrid_needs_a_user() -> None:
    with pytest.raises(ValueError, match="user"):
        ClientOptions(gateway=GATEWAY, psks=PskTable(), trusted_cas=(pki(GATEWAY).ca,))


def test_connect_ca_flag(tmp_path: Path) -> None:
    args = build_parser().parse_args(["connect", "192.0.2.1", "--ca", "a.pem", "--ca", "b.pem"])
    assert args.ca == ["a.pem", "b.pem"]


def _gateway_toml(tmp_path: Path, extra: str, credential) -> str:
    lines = write_pem(tmp_path, credential, pki(GATEWAY).ca)
    (tmp_path / "users").write_text("alice: secret\n")
    (tmp_path / "users").chmod(0o600)
    policy = (
        '[network]\npool = "10.79.0.10-10.79.0.20"\n[[policy]]\nname = "intranet"\nlocal = "10.78.0.0/24"\n'
    )
    head = f'[gateway]\nlisten = "{GATEWAY}"\nusers_file = "users"\n{extra}\n'
    return f"{head}[gateway.certificate]\n{lines}{policy}"


def test_gateway_toml_hybrid(tmp_path: Path) -> None:
    text = _gateway_toml(tmp_path, "hybrid = true", pki(GATEWAY).gateway)
    cfg = parse_gateway_config(text, str(tmp_path / "gw.toml"), base_dir=tmp_path)
    assert cfg.hybrid


def test_gateway_toml_hybrid_needs_a_login_source(tmp_path: Path) -> None:
    text = _gateway_toml(tmp_path, "hybrid = true\nrequire_xauth = false", pki(GATEWAY).gateway)
    with pytest.raises(ConfigFileError) as info:
        parse_gateway_config(text, str(tmp_path / "gw.toml"), base_dir=tmp_path)
    assert info.value.key == "gateway.hybrid" and "login source" in info.value.reason


def test_gateway_options_hybrid_needs_an_rsa_certificate() -> None:
    with pytest.raises(ConfigError, match="RSA"):
        GatewayOptions(listen=GATEWAY, psks=PskTable({"*": PSK}), users=UserTable({}), hybrid=True)
