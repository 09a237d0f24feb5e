"""``[plugin.otp]`` checked at start (``tunvpn_check_settings``), on the gateway (the store, the
users, the lockout knobs) and on the client (the soft token's files), by the parsers of
``tunvpn_otp.settings`` that the hooks use at every login: a good table passes, each bad key is
a ``SettingError`` naming that key, and no secret (a seed, a PIN, the token's URI) is shown."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

import pyotp
from tunvpn_otp import core, plugin
from tunvpn_otp.core import Kind, Record
from tunvpn_otp.settings import check_client, check_gateway, gateway_settings
from tunvpn_otp.store import Store

from tunvpn.plugins import (
    CredentialRequest,
    GatewayContext,
    PluginHost,
    PluginSettingsError,
    SettingError,
)

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PIN = "4711"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = Store(tmp_path / "otp.json")
    with s.edit(create=True) as users:
        users["carol"] = Record(Kind.TOTP, SECRET, pin_hash=core.hash_pin(PIN))
    return s.path


def gateway_table(store: Path, /, **change: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "store": str(store),
        "users": ["carol"],
        "lockout_after": 5,
        "lockout_seconds": 300,
        "totp_window": 1,
        "totp_drift": 10,
        "hotp_window": 10,
        "hotp_drift": 100,
        "spread_after": 20,
        "spread_max_wait": 60.5,
    }
    table.update(change)
    return {k: v for k, v in table.items() if v is not None}


def refused(table: dict[str, Any], side: str = "gateway") -> SettingError:
    with pytest.raises(SettingError) as info:
        plugin.tunvpn_check_settings(settings=table, side=side)
    return info.value


def test_a_good_gateway_table_passes_and_gives_the_policy(store: Path) -> None:
    plugin.tunvpn_check_settings(settings=gateway_table(store), side="gateway")
    settings = check_gateway(gateway_table(store, lockout_after=3))
    assert settings.store == store and settings.users == frozenset({"carol"})
    assert settings.policy == core.Policy(lockout_after=3, spread_max_wait=60.5)
    assert check_gateway({"store": str(store)}).users is None  # every user with a record


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"store": None}, "store_file", "needs store_file"),
        ({"store": "otp.json"}, "store", "relative path depends on the gateway's working directory"),
        ({"store": 42}, "store", "the path of the OTP store"),
        ({"store": ""}, "store", "the path of the OTP store"),
        ({"users": "carol"}, "users", "a list of user names"),
        ({"users": ["carol", 7]}, "users", "a list of user names"),
        ({"lockout_after": 0}, "lockout_after", "at least 1"),
        ({"lockout_after": "5"}, "lockout_after", "a whole number"),
        ({"lockout_after": True}, "lockout_after", "a whole number"),
        ({"lockout_after": 2.5}, "lockout_after", "a whole number"),
        ({"lockout_seconds": -1}, "lockout_seconds", "at least 0"),
        ({"lockout_seconds": "300"}, "lockout_seconds", "a number of seconds"),
        ({"totp_window": -1}, "totp_window", "at least 0"),
        ({"totp_drift": 0}, "totp_drift", r"at least totp_window \(1\)"),
        ({"hotp_window": 0}, "hotp_window", "at least 1"),
        ({"hotp_drift": 5}, "hotp_drift", r"at least hotp_window \(10\)"),
        ({"spread_after": 0}, "spread_after", "at least 1"),
        ({"spread_max_wait": -0.5}, "spread_max_wait", "at least 0"),
        ({"spread_max_wait": [60]}, "spread_max_wait", "a number of seconds"),
    ],
)
def test_each_bad_gateway_key_is_named(store: Path, change: dict[str, Any], key: str, message: str) -> None:
    error = refused(gateway_table(store, **change))
    assert error.key == key and re.search(message, error.message), error.message
    if key in change and change[key] is not None:
        assert error.value == change[key]  # nothing secret: shown as given
    # every login parses the table the same way (a SettingError is a ValueError)
    with pytest.raises(SettingError, match=key):
        gateway_settings(gateway_table(store, **change))


def _missing(store: Path) -> Path:
    return store.with_name("missing.json")


def _readable_by_others(store: Path) -> Path:
    store.chmod(0o644)
    return store


def _a_record_without_its_secret(store: Path) -> Path:
    return private(store.with_name("bad.json"), '{"format": 1, "users": {"carol": {"kind": "totp"}}}')


def _not_json(store: Path) -> Path:
    return private(store.with_name("bad.json"), "not json")


def _a_directory(store: Path) -> Path:
    directory = store.with_name("dir.json")
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "no such OTP store"),
        (_readable_by_others, "chmod 600"),
        (_a_record_without_its_secret, "not an OTP store"),
        (_not_json, "not an OTP store"),
        (_a_directory, "not a regular file"),
    ],
)
def test_a_store_that_a_login_could_not_read_is_refused_at_start(
    store: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(store)
    error = refused({"store": str(path)})
    assert error.key == "store" and message in error.message and str(path) in error.message
    assert error.value is ...  # the message names the file
    assert SECRET not in str(error)


def test_store_file_is_found_beside_gateway_toml_whatever_the_working_directory(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``store_file`` is made absolute against gateway.toml's folder, as every ``*_file`` key
    of a plugin's table is; the older ``store`` key was taken as given, so a relative one
    depended on the gateway's working directory (``/`` under systemd): now refused at start."""
    from tunvpn.config.gateway import load_gateway_config

    gwdir = store.parent
    private(gwdir / "gw.psk", "correct-horse-battery-staple-group\n")
    private(gwdir / "users", "alice:alice-password-xyzzy\n")
    private(
        gwdir / "gateway.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\nusers_file = "users"\nplugins = ["otp"]\n'
        '[network]\npool = "10.79.0.10-10.79.0.50"\n'
        f'[plugin.otp]\nstore_file = "{store.name}"\n'
        '[[policy]]\nname = "intranet"\nlocal = "10.78.0.0/24"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    table = dict(load_gateway_config(gwdir / "gateway.toml", env={}).plugin_settings["otp"])
    assert table == {"store_file": str(store)}
    assert check_gateway(table).store == store
    error = refused({"store": store.name})
    assert error.key == "store" and "store_file" in error.message and error.value == store.name
    assert (
        refused({"store": str(store), "store_file": str(store)}).message
        == "give store_file or store, not both"
    )
    assert refused({"store_file": str(_missing(store))}).key == "store_file"


def test_a_check_reads_the_store_without_taking_its_lock(store: Path) -> None:
    lock = store.with_name(store.name + ".lock")
    lock.unlink()
    check_gateway({"store": str(store)})
    assert not lock.exists()  # `tunvpn gateway --check` leaves no file behind


def test_a_malformed_record_in_the_store_shows_no_secret(tmp_path: Path) -> None:
    path = private(
        tmp_path / "otp.json",
        json.dumps({"format": 1, "users": {"carol": {"kind": "totp", "secret": SECRET, "digits": 99}}}),
    )
    error = refused({"store": str(path)})
    assert error.key == "store" and "not an OTP store" in error.message
    assert SECRET not in error.message


def test_the_host_names_plugin_key_and_value_as_the_gateway_does(store: Path) -> None:
    host = PluginHost(["otp"])  # through its entry point
    try:
        host.check_settings({"otp": gateway_table(store)}, "gateway", GatewayContext())
        with pytest.raises(PluginSettingsError) as info:
            host.check_settings({"otp": gateway_table(store, hotp_drift=3)}, "gateway", GatewayContext())
    finally:
        host.close()
    assert str(info.value) == (
        "[plugin.otp] hotp_drift = 3: must be at least hotp_window (10): the drift window contains "
        "the exact one (plugin 'otp')"
    )


def test_a_gateway_without_a_table_starts_and_says_why_logins_fail(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plugin.tunvpn_check_settings(settings={}, side="gateway")  # as before: refused at each login
    assert "no [plugin.otp] store" in caplog.text
    with pytest.raises(ValueError, match="needs store"):
        plugin.tunvpn_verify_credentials(request=CredentialRequest("carol", PIN), context=GatewayContext())


def test_a_login_uses_the_same_parser(store: Path) -> None:
    context = GatewayContext(plugin_settings={"otp": gateway_table(store, lockout_after=-2)})
    with pytest.raises(SettingError, match="lockout_after"):
        plugin.tunvpn_verify_credentials(request=CredentialRequest("carol", PIN + "123456"), context=context)


# --------------------------------------------------------------------------- the client's soft token


def uri_file(directory: Path, text: str, mode: int = 0o600) -> str:
    return str(private(directory / "t.uri", text, mode))


@pytest.fixture
def token(tmp_path: Path) -> Path:
    uri = pyotp.TOTP(SECRET).provisioning_uri(name="tina", issuer_name="tunvpn-test")
    return private(tmp_path / "token.uri", uri + "\n")


def test_a_good_client_table_passes(tmp_path: Path, token: Path) -> None:
    pin = private(tmp_path / "pin", PIN + "\n")
    plugin.tunvpn_check_settings(settings={"token_file": str(token), "pin_file": str(pin)}, side="client")
    settings = check_client({"token_file": str(token), "pin_env": "MY_PIN"})
    assert settings.token_file == token and settings.pin_file is None and settings.pin_env == "MY_PIN"
    plugin.tunvpn_check_settings(settings={}, side="client")  # no soft token: the user types
    # a profile is not held to the gateway's keys, nor gateway.toml to the profile's
    plugin.tunvpn_check_settings(settings={"store": "/nowhere/otp.json"}, side="client")


@pytest.mark.parametrize(
    ("key", "make", "message"),
    [
        ("token_file", lambda d: 42, "the path of a file"),
        ("token_file", lambda d: str(d / "missing.uri"), "no such file"),
        ("token_file", lambda d: uri_file(d, f"otpauth://totp/t?secret={SECRET}", 0o644), "chmod"),
        ("token_file", lambda d: uri_file(d, f"https://example.com/?secret={SECRET}"), "otpauth"),
        ("token_file", lambda d: uri_file(d, f"otpauth://totp/t?secret={SECRET}&digits=9"), "URI"),
        ("token_file", lambda d: uri_file(d, "otpauth://totp/t?secret=" + "1" * 32), "URI"),
        ("pin_file", lambda d: str(private(d / "pin", PIN, 0o640)), "chmod"),
        ("pin_file", lambda d: "", "the path of a file"),
        ("pin_env", lambda d: "", "the name of an environment variable"),
    ],
    ids=[
        "token_file-not-a-path",
        "token_file-missing",
        "token_file-readable-by-others",
        "token_file-not-otpauth",
        "token_file-bad-digits",
        "token_file-not-base32",
        "pin_file-readable-by-group",
        "pin_file-empty",
        "pin_env-empty",
    ],
)
def test_each_bad_client_key_is_named_without_its_secret(
    tmp_path: Path, token: Path, key: str, make: Any, message: str
) -> None:
    table: dict[str, Any] = {"token_file": str(token), key: make(tmp_path)}
    error = refused(table, side="client")
    assert error.key == key and message in error.message, error.message
    for secret in (SECRET, PIN):
        assert secret not in str(error) and secret not in repr(error.value)
