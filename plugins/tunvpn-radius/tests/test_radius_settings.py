"""``[plugin.radius]`` checked at start (``tunvpn_check_settings``) by ``parse_settings``, the
parser every login and accounting request uses: a good table passes, each bad key is a
``SettingError`` naming that key (``servers.N.KEY`` for one server's), and a shared secret is
never shown. No RADIUS server is needed: whether one answers is not a setting's business."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunvpn_radius", reason="pip install -e plugins/tunvpn-radius")

from tunvpn_radius import plugin
from tunvpn_radius.client import Server
from tunvpn_radius.plugin import RadiusSettings, parse_settings

from tunvpn.plugins import (
    CredentialRequest,
    GatewayContext,
    PluginHost,
    PluginSettingsError,
    SettingError,
)

SECRET = "radius-shared-secret-not-for-logs"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    return private(tmp_path / "radius.secret", SECRET + "\n")


def table(secret_file: Path, /, **change: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "servers": [
            {"host": "10.0.0.5", "port": 1812, "secret_file": str(secret_file)},
            {"host": "10.0.0.6", "port": 11812, "acct_port": 11813, "secret_file": str(secret_file)},
        ],
        "timeout": 2.5,
        "retries": 1,
        "auth": "chap",
        "nas_identifier": "vpn-gw-1",
        "nas_ip_address": "192.0.2.1",
        "account_all": True,
    }
    good.update(change)
    return {k: v for k, v in good.items() if v is not None}


def server(secret_file: Path, /, **change: Any) -> list[dict[str, Any]]:
    entry = {"host": "10.0.0.5", "secret_file": str(secret_file), **change}
    return [{k: v for k, v in entry.items() if v is not None}]


def refused(settings: dict[str, Any]) -> SettingError:
    with pytest.raises(SettingError) as info:
        plugin.tunvpn_check_settings(settings=settings, side="gateway")
    return info.value


def test_a_good_table_passes_and_is_what_the_logins_use(secret_file: Path) -> None:
    plugin.tunvpn_check_settings(settings=table(secret_file), side="gateway")
    secret = SECRET.encode()
    assert parse_settings(table(secret_file)) == RadiusSettings(
        servers=(Server("10.0.0.5", 1812, secret), Server("10.0.0.6", 11812, secret, 11813)),
        auth="chap",
        timeout=2.5,
        retries=1,
        nas_identifier="vpn-gw-1",
        nas_ip_address="192.0.2.1",
        account_all=True,
    )
    # the defaults; "PAP" as before (any case)
    minimal = {"servers": server(secret_file), "auth": "PAP"}
    assert parse_settings(minimal) == RadiusSettings(servers=(Server("10.0.0.5", 1812, secret),))
    client, auth = plugin.client_from_settings(minimal)
    assert auth == "pap" and (client.timeout, client.retries, client.nas_identifier) == (3.0, 2, "tunvpn")


def test_quoted_and_hex_secrets_are_read_as_the_logins_read_them(tmp_path: Path) -> None:
    quoted = private(tmp_path / "quoted", '"two words"\n')
    hexed = private(tmp_path / "hex", "0x00ff10\n")
    parsed = parse_settings(
        {"servers": [{"host": "a", "secret_file": str(quoted)}, {"host": "b", "secret_file": str(hexed)}]}
    )
    assert [s.secret for s in parsed.servers] == [b"two words", b"\x00\xff\x10"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"servers": None}, "servers"),
        ({"servers": []}, "servers"),
        ({"servers": "10.0.0.5"}, "servers"),
        ({"servers": ["10.0.0.5"]}, "servers.0"),
        ({"auth": "mschapv2"}, "auth"),
        ({"auth": 1}, "auth"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.5}, "timeout"),
        ({"timeout": "3"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retries": "2"}, "retries"),
        ({"nas_identifier": ""}, "nas_identifier"),
        ({"nas_identifier": 7}, "nas_identifier"),
        ({"nas_ip_address": "gw.example.com"}, "nas_ip_address"),
        ({"nas_ip_address": "2001:db8::1"}, "nas_ip_address"),
        ({"nas_ip_address": 3232235777}, "nas_ip_address"),
        ({"account_all": "yes"}, "account_all"),
    ],
)
def test_each_bad_key_is_named(secret_file: Path, change: dict[str, Any], key: str) -> None:
    error = refused(table(secret_file, **change))
    assert error.key == key, error
    if change.get(key) is not None:
        assert error.value == change[key]
    assert SECRET not in str(error)
    with pytest.raises(SettingError, match=key):  # a login parses the same way
        plugin.client_from_settings(table(secret_file, **change))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"host": None}, "servers.0.host"),
        ({"host": 5}, "servers.0.host"),
        ({"host": ""}, "servers.0.host"),
        ({"secret_file": None}, "servers.0.secret_file"),
        ({"port": 0}, "servers.0.port"),
        ({"port": 65536}, "servers.0.port"),
        ({"port": "1812"}, "servers.0.port"),
        ({"port": True}, "servers.0.port"),
        ({"acct_port": 70000}, "servers.0.acct_port"),
    ],
)
def test_each_bad_key_of_a_server_is_named_with_its_index(
    secret_file: Path, change: dict[str, Any], key: str
) -> None:
    assert refused({"servers": server(secret_file, **change)}).key == key
    # the second server of two
    servers = server(secret_file) + server(secret_file, **change)
    assert refused({"servers": servers}).key == key.replace("servers.0", "servers.1")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: private(d / "s", SECRET + "\n", 0o644), "chmod 600"),
        (lambda d: private(d / "s", SECRET + "\n", 0o640), "chmod 600"),
        (lambda d: private(d / "s", "  \n"), "empty"),
        (lambda d: d / "missing", "no such file"),
        (lambda d: _link(d / "s", private(d / "target", SECRET + "\n")), "symbolic link"),
    ],
    ids=["readable-by-others", "readable-by-group", "empty", "missing", "a-symbolic-link"],
)
def test_a_secret_file_a_login_could_not_use_is_refused_without_showing_the_secret(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = make(tmp_path)
    error = refused({"servers": [{"host": "10.0.0.5", "secret_file": str(path)}]})
    assert error.key == "servers.0.secret_file" and message in error.message, error.message
    assert str(path) in error.message and error.value is ...
    assert SECRET not in str(error)


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def test_the_host_names_plugin_key_and_value_as_the_gateway_does(secret_file: Path) -> None:
    host = PluginHost(["radius"])  # through its entry point
    try:
        host.check_settings({"radius": table(secret_file)}, "gateway", GatewayContext())
        with pytest.raises(PluginSettingsError) as info:
            host.check_settings({"radius": table(secret_file, retries=-1)}, "gateway", GatewayContext())
        assert (
            str(info.value)
            == "[plugin.radius] retries = -1: must be a whole number, 0 or more (plugin 'radius')"
        )
        secret_file.chmod(0o644)
        with pytest.raises(PluginSettingsError) as info:
            host.check_settings({"radius": table(secret_file)}, "gateway", GatewayContext())
        assert str(info.value).startswith(
            f"[plugin.radius] servers.0.secret_file: RADIUS secret_file {secret_file}"
        )
        assert SECRET not in str(info.value)
    finally:
        host.close()


def test_the_client_side_has_no_settings_to_check() -> None:
    plugin.tunvpn_check_settings(settings={}, side="client")
    plugin.tunvpn_check_settings(settings={"servers": "not checked on a client"}, side="client")


def test_a_login_with_broken_settings_is_refused_and_logged_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a gateway did before the check at start, and still does if the file changes later."""
    secret = private(tmp_path / "radius.secret", SECRET + "\n", 0o644)
    context = GatewayContext(plugin_settings={"radius": {"servers": server(secret)}})
    with caplog.at_level(logging.ERROR, logger="tunvpn.radius"):
        verdict = plugin.tunvpn_verify_credentials(
            request=CredentialRequest("alice", "a-pass"), context=context
        )
    assert verdict is not None and verdict.outcome == "reject"
    assert verdict.message == "the gateway's RADIUS settings are broken"
    assert "servers.0.secret_file" in caplog.text and "chmod 600" in caplog.text
    assert SECRET not in caplog.text and "a-pass" not in caplog.text
