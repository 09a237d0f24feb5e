"""The client knows its gateway (issue 12 item 9): ``remote_id``, checked against the gateway's
phase 1 identity and its certificate before phase 1 completes, so an XAUTH password never goes
to another gateway.

Attacks: a gateway holding a real certificate of the same CA, but for another name, and a
gateway holding the group pre-shared key, each posing as the gateway. First the two in-memory
engines, then the real client and gateway over UDP on loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers.gateway_pki import pki, write_pem
from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair
from tests.helpers.loopback import GATEWAY, PSK, connect, free_port_pair
from tunvpn.cli import build_parser
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.config.gateway import ConfigFileError
from tunvpn.config.profile import ClientProfile, load_profile
from tunvpn.gateway.daemon import AddressPool, GatewayOptions
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import NotifyType
from tunvpn.ike.identity import Identity
from tunvpn.testing import loopback_available

PASSWORD = "alice-secret-password"
PRIVATE_ID = "10.0.0.1"  # a PSK gateway's default identity behind a NAT: its private address


def _engine_connect(pair: Pair, mode: str = "main") -> None:
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode=mode, xauth=True)
    pair.client.drain()
    pair.run()


def _answer_xauth(pair: Pair) -> None:
    """What the client shell does with an XAUTH request: answer it with the password."""
    for asked in pair.client.of(ev.XauthRequested):
        pair.client.engine.xauth_reply(asked.sa_id, pair.now, user_name="alice", password=PASSWORD)
    pair.run()


def _cert_gateway(credential, local_id: str) -> EngineConfig:
    p = pki(GATEWAY_IP)
    return EngineConfig(
        credential=credential,
        trusted_cas=(p.ca,),
        local_id=Identity.parse(local_id),
        require_xauth=True,
        xauth_available=True,
        allow_aggressive_signatures=True,  # the rogue gateway of the tests below accepts it
    )


def _cert_client(remote_id: str) -> EngineConfig:
    p = pki(GATEWAY_IP)
    return EngineConfig(credential=p.client, trusted_cas=(p.ca,), remote_id=Identity.parse(remote_id))


# ------------------------------------------------------------------------------ engines


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_same_ca_certificate_for_another_name_is_refused_before_xauth(mode: str) -> None:
    p = pki(GATEWAY_IP)
    pair = Pair(_cert_client("vpn.example"), _cert_gateway(p.other_gateway, "@evil.example"))
    _engine_connect(pair, mode)
    _answer_xauth(pair)

    assert not pair.client.of(ev.Phase1Established) and not pair.client.of(ev.XauthRequested)
    assert not pair.gateway.of(ev.XauthCredentials)  # the password never left the client
    [failed] = pair.client.of(ev.Phase1Failed)
    assert "@vpn.example" in failed.reason and "evil.example" in failed.reason, failed.reason
    assert failed.notify == NotifyType.INVALID_ID_INFORMATION


@pytest.mark.parametrize("remote_id", ["vpn.example", GATEWAY_IP, "dn:CN=vpn.example,O=tunvpn test"])
def test_the_right_certificate_gateway_is_accepted(remote_id: str) -> None:
    """Positive control: a name in its subjectAltName, its address, or its DN."""
    p = pki(GATEWAY_IP)
    pair = Pair(_cert_client(remote_id), _cert_gateway(p.gateway, "@vpn.example"))
    _engine_connect(pair)
    _answer_xauth(pair)
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.XauthCredentials)


def _psk_pair(*, gateway_id: str, remote_id: str, psk_any: bool = False) -> Pair:
    gateway = EngineConfig(
        psks=PskTable({"*": PSK}),
        local_id=Identity.parse(gateway_id),
        require_xauth=True,
        allow_aggressive_psk=True,
        allow_base_mode=True,
    )
    client = EngineConfig(
        psks=PskTable({"*": PSK}), remote_id=Identity.parse(remote_id), remote_id_psk_any=psk_any
    )
    return Pair(client, gateway)


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
def test_psk_gateway_with_another_identity_is_refused_with_a_clear_message(mode: str) -> None:
    pair = _psk_pair(gateway_id=PRIVATE_ID, remote_id=GATEWAY_IP)
    _engine_connect(pair, mode)
    _answer_xauth(pair)

    assert not pair.client.of(ev.XauthRequested) and not pair.gateway.of(ev.XauthCredentials)
    [failed] = pair.client.of(ev.Phase1Failed)
    # both identities and the documented overrides
    assert PRIVATE_ID in failed.reason and GATEWAY_IP in failed.reason
    assert f'remote_id = "{PRIVATE_ID}"' in failed.reason and 'remote_id = "any"' in failed.reason


@pytest.mark.parametrize(("remote_id", "psk_any"), [(PRIVATE_ID, False), (GATEWAY_IP, True)])
def test_psk_overrides(remote_id: str, psk_any: bool, caplog: pytest.LogCaptureFixture) -> None:
    pair = _psk_pair(gateway_id=PRIVATE_ID, remote_id=remote_id, psk_any=psk_any)
    _engine_connect(pair)
    _answer_xauth(pair)
    assert pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.XauthCredentials)
    assert ("remote_id = any" in caplog.text) == psk_any


# ------------------------------------------------------------------------------ client and gateway

loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


def _gateway(ike: int, natt: int, **kw: object) -> GatewayOptions:
    return GatewayOptions(
        listen=GATEWAY,
        ike_port=ike,
        natt_port=natt,
        users=UserTable({"alice": PASSWORD.encode()}),
        require_xauth=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        **kw,  # type: ignore[arg-type]
    )


def _client(ike: int, natt: int, **kw: object) -> ClientOptions:
    """What a profile with only ``gateway`` holds: remote_id defaults to that address."""
    base: dict[str, object] = dict(psks=PskTable({"*": PSK}))
    base.update(kw)
    return ClientOptions(
        gateway=GATEWAY,
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user="alice",
        password=PASSWORD,
        password_prompt=False,
        exit_after_established=True,
        timeout=20,
        **base,  # type: ignore[arg-type]
    )


def _password_sent(records: list[dict]) -> bool:
    return any(r["event"] == "xauth" and r["state"] in ("sent", "ok") for r in records)


@loopback
def test_client_refuses_a_same_ca_gateway_for_another_name_by_default() -> None:
    """The user wrote ``gateway = 127.0.0.1``; a gateway whose certificate (same CA) names
    evil.example does not get the password."""
    p = pki(GATEWAY)
    ike, natt = free_port_pair()
    gw = _gateway(ike, natt, psks=PskTable(), credential=p.other_gateway, trusted_cas=(p.ca,))
    cl = _client(ike, natt, psks=PskTable(), credential=p.client, trusted_cas=(p.ca,))
    client, _, records = asyncio.run(connect(gw, cl))
    assert client.result == 1 and not _password_sent(records), records
    assert "does not name 127.0.0.1" in client.message and "remote_id" in client.message


@loopback
def test_client_connects_to_its_certificate_gateway() -> None:
    p = pki(GATEWAY)
    ike, natt = free_port_pair()
    gw = _gateway(ike, natt, psks=PskTable(), credential=p.gateway, trusted_cas=(p.ca,))
    cl = _client(ike, natt, psks=PskTable(), credential=p.client, trusted_cas=(p.ca,))
    client, _, records = asyncio.run(connect(gw, cl))
    assert client.result == 0 and _password_sent(records), client.message


@loopback
def test_client_refuses_a_psk_gateway_with_another_identity() -> None:
    ike, natt = free_port_pair()
    gw = _gateway(ike, natt, psks=PskTable({"*": PSK}), local_id=Identity.parse(PRIVATE_ID))
    client, _, records = asyncio.run(connect(gw, _client(ike, natt)))
    assert client.result == 1 and not _password_sent(records), records
    assert f"identifies as {PRIVATE_ID}, not {GATEWAY}" in client.message
    assert 'remote_id = "any"' in client.message and f"--remote-id {PRIVATE_ID}" in client.message


@loopback
@pytest.mark.parametrize("override", [{"remote_id": Identity.parse(PRIVATE_ID)}, {"remote_id_any": True}])
def test_client_psk_overrides(override: dict[str, object]) -> None:
    ike, natt = free_port_pair()
    gw = _gateway(ike, natt, psks=PskTable({"*": PSK}), local_id=Identity.parse(PRIVATE_ID))
    client, _, records = asyncio.run(connect(gw, _client(ike, natt, **override)))
    assert client.result == 0 and _password_sent(records), client.message


# ------------------------------------------------------------------------------ profile and flag


def _profile(tmp_path: Path, extra: str) -> ClientProfile:
    (tmp_path / "group.psk").write_text(PSK.decode() + "\n")
    (tmp_path / "group.psk").chmod(0o600)
    path = tmp_path / "work.toml"
    path.write_text(f'gateway = "192.0.2.1"\npsk_file = "group.psk"\nuser = "alice"\n{extra}')
    return load_profile(path, env={})


@pytest.mark.parametrize(
    ("line", "remote_id", "any_"),
    [
        ("", None, False),
        (f'remote_id = "{PRIVATE_ID}"\n', Identity.parse(PRIVATE_ID), False),
        ('remote_id = "vpn.example"\n', Identity.parse("@vpn.example"), False),
        ('remote_id = "any"\n', None, True),
    ],
)
def test_profile_remote_id(tmp_path: Path, line: str, remote_id: Identity | None, any_: bool) -> None:
    profile = _profile(tmp_path, line)
    assert (profile.remote_id, profile.remote_id_any) == (remote_id, any_)


def test_profile_any_is_not_for_certificate_gateways(tmp_path: Path) -> None:
    p = pki(GATEWAY)
    with pytest.raises(ConfigFileError) as info:
        _profile(tmp_path, write_pem(tmp_path, p.client, p.ca) + 'remote_id = "any"\n')
    assert info.value.key == "remote_id" and "certificate" in info.value.reason


@pytest.mark.parametrize(
    ("flag", "expected"), [("any", "any"), ("@vpn.example", Identity.parse("vpn.example"))]
)
def test_remote_id_flag(flag: str, expected: object) -> None:
    args = build_parser().parse_args(["connect", "192.0.2.1", "--remote-id", flag])
    assert args.remote_id == expected
