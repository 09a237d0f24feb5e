"""``[plugin.l2tp]`` checked at start (``tunvpn_check_settings``) by the parsers the hooks use
(``lns_settings`` for the LNS, ``client_settings`` for the LAC) and the files read as the LNS
and the LAC read them: a good table passes, each bad key is a ``SettingError`` naming that key,
and a secret (the tunnel secret, the PPP password) is never shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tunvpn_l2tp import plugin
from tunvpn_l2tp.plugin import L2tpConfigError, read_ppp_password, read_tunnel_secret

from tunvpn.plugins import ExtraProtocol, GatewayContext, PluginHost, PluginSettingsError, SettingError

SECRET = "l2tp-tunnel-secret-not-for-logs"
PASSWORD = "ppp-password-not-for-logs"
ANNOUNCED = GatewayContext(protocols=(ExtraProtocol("l2tp"),))
GOOD = {
    "server": "10.78.9.1",
    "port": 1701,
    "pool": "10.80.0.10-10.80.0.20",
    "local": "10.80.0.1",
    "networks": ["10.78.1.0/24"],
    "dns": ["10.78.0.53", "10.78.0.54"],
    "auth": "pap",
    "tun": "tvlns%d",
    "mtu": 1400,
    "hello": 30,
    "max_sessions": 10,
}


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def check(
    settings: dict[str, Any], side: str = "gateway", context: GatewayContext | None = ANNOUNCED
) -> None:
    plugin.tunvpn_check_settings(settings=settings, side=side, context=context)


def refused(settings: dict[str, Any], side: str = "gateway") -> SettingError:
    with pytest.raises(SettingError) as info:
        check(settings, side, ANNOUNCED if side == "gateway" else None)
    return info.value


# --------------------------------------------------------------------------- the gateway (LNS)


def test_a_good_gateway_table_passes(tmp_path: Path) -> None:
    secret = private(tmp_path / "l2tp.secret", SECRET + "\n")
    check(GOOD)
    check({**GOOD, "secret_file": str(secret)})
    assert plugin.check_lns({**GOOD, "secret_file": str(secret)}).secret_file == str(secret)
    assert read_tunnel_secret(str(secret)) == SECRET.encode()  # what the LNS and the LAC use


def test_l2tp_loaded_but_not_announced_needs_no_table() -> None:
    check({}, context=GatewayContext())  # as before: nothing to serve, nothing to check
    error = refused({})  # announced: the LNS needs its table
    assert error.key == "server"
    with pytest.raises(SettingError, match="mtu"):  # a table given is checked even so
        check({**GOOD, "mtu": 1}, context=GatewayContext())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"server": None}, "server"),
        ({"server": "lns.example"}, "server"),
        ({"port": 70000}, "port"),
        ({"port": "1701"}, "port"),
        ({"pool": None}, "pool"),
        ({"pool": "10.80.0.10-10.80.0.x"}, "pool"),
        ({"local": "10.80.0.12"}, "local"),
        ({"local": 1}, "local"),
        ({"networks": "10.78.1.0/24"}, "networks"),
        ({"networks": ["10.78.1.0/40"]}, "networks"),
        ({"dns": ["resolver"]}, "dns"),
        ({"auth": "mschapv2"}, "auth"),
        ({"tun": ""}, "tun"),
        ({"mtu": 575}, "mtu"),
        ({"mtu": True}, "mtu"),
        ({"hello": "60"}, "hello"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"secret_file": 7}, "secret_file"),
        ({"secret_file": ""}, "secret_file"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_each_bad_gateway_key_is_named(change: dict[str, Any], key: str) -> None:
    table = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    error = refused(table)
    assert error.key == key, error
    if change.get(key) is not None and key != "colour":  # an unknown key's value is not shown
        assert error.value == change[key]


def _missing(d: Path) -> Path:
    return d / "missing.secret"


def _readable_by_others(d: Path) -> Path:
    return private(d / "l2tp.secret", SECRET, 0o644)


def _empty(d: Path) -> Path:
    return private(d / "l2tp.secret", "\n")


def _a_link(d: Path) -> Path:
    link = d / "link.secret"
    link.symlink_to(private(d / "l2tp.secret", SECRET))
    return link


FILES: list[tuple[Callable[[Path], Path], str]] = [
    (_missing, "no such file"),
    (_readable_by_others, "chmod 600"),
    (_empty, "empty"),
    (_a_link, "symbolic link"),
]
IDS = ["missing", "readable-by-others", "empty", "a-symbolic-link"]


@pytest.mark.parametrize(("make", "message"), FILES, ids=IDS)
def test_a_tunnel_secret_the_lns_could_not_use_is_refused_without_showing_it(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    error = refused({**GOOD, "secret_file": str(path)})
    assert error.key == "secret_file" and message in error.message and str(path) in error.message
    assert error.value is ... and SECRET not in str(error)


def test_the_host_names_plugin_key_and_value_as_the_gateway_does(tmp_path: Path) -> None:
    host = PluginHost(["l2tp"])  # through its entry point
    try:
        host.check_settings({"l2tp": GOOD}, "gateway", ANNOUNCED)
        with pytest.raises(PluginSettingsError) as info:
            host.check_settings({"l2tp": {**GOOD, "local": "10.80.0.15"}}, "gateway", ANNOUNCED)
        assert str(info.value) == (
            "[plugin.l2tp] local = '10.80.0.15': inside the pool 10.80.0.10-10.80.0.20 (plugin 'l2tp')"
        )
        secret = _readable_by_others(tmp_path)
        with pytest.raises(PluginSettingsError) as info:
            host.check_settings({"l2tp": {**GOOD, "secret_file": str(secret)}}, "gateway", ANNOUNCED)
        assert str(info.value).startswith(f"[plugin.l2tp] secret_file: L2TP tunnel secret {secret}")
        assert SECRET not in str(info.value)
    finally:
        host.close()


# --------------------------------------------------------------------------- the client (LAC)


def test_a_good_client_table_passes(tmp_path: Path) -> None:
    secret = private(tmp_path / "l2tp.secret", SECRET + "\n")
    password = private(tmp_path / "ppp.password", PASSWORD + "\n")
    table = {
        "tun": "tvl2tp%d",
        "secret_file": str(secret),
        "user": "alice",
        "password_file": str(password),
        "reconnect": True,
        "reconnect_attempts": 3,
    }
    check(table, side="client", context=None)
    check({}, side="client", context=None)  # every key is optional
    assert read_ppp_password(str(password)) == PASSWORD  # what the LAC logs in with
    # the gateway's keys are not the profile's
    with pytest.raises(L2tpConfigError, match="server: unknown key in the profile"):
        check({"server": "10.78.9.1"}, side="client", context=None)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"tun": 5}, "tun"),
        ({"tun": "a-name-longer-than-15"}, "tun"),
        ({"user": ""}, "user"),
        ({"secret_file": ""}, "secret_file"),
        ({"password_file": 1}, "password_file"),
        ({"reconnect": "no"}, "reconnect"),
        ({"reconnect_attempts": 1001}, "reconnect_attempts"),
        ({"server": "10.78.9.1"}, "server"),
    ],
)
def test_each_bad_client_key_is_named(table: dict[str, Any], key: str) -> None:
    assert refused(table, side="client").key == key


CLIENT_FILES = [("secret_file", make, message) for make, message in FILES] + [
    ("password_file", make, message) for make, message in FILES if make is not _empty
]  # an empty PPP password is a password like any other: the server decides


@pytest.mark.parametrize(
    ("key", "make", "message"),
    CLIENT_FILES,
    ids=[f"{key}-{make.__name__[1:]}" for key, make, _ in CLIENT_FILES],
)
def test_a_client_file_the_lac_could_not_read_is_refused_without_showing_it(
    tmp_path: Path, key: str, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    error = refused({key: str(path)}, side="client")
    assert error.key == key and message in error.message and str(path) in error.message
    assert error.value is ... and SECRET not in str(error)
