"""The otp plugin end to end, with ``tunvpn.testing``: a real gateway (``plugin_names=["otp"]``,
loaded through its entry point) and a real client over UDP on loopback. A user enrolled with
``tunvpn otp enroll`` (the plugin's own command) in a temporary store connects with the PIN and
the TOTP code an authenticator app (pyotp) shows at the session's time (``now=``: the time the
plugin reads through ``context.clock``); a wrong code, a wrong PIN and a replayed code are
refused; a bad ``[plugin.otp]`` stops the gateway before it starts; the soft token answers the
announced ``otp`` protocol on the client, and a token file others may read stops the client."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

import pyotp
from tunvpn_otp import commands, plugin

from tunvpn.plugins import ExtraProtocol
from tunvpn.testing import DEFAULT_POLICIES, ConfigError, SessionResult, loopback_available, run_session

pytestmark = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")

PIN = "4711"
T0 = datetime(2031, 5, 6, 7, 8, 10, tzinfo=UTC)
"""The sessions' time: 10 s into a 30-second TOTP step, years away from the real clock."""
NEW_PIN_PROMPT = "Choose a new PIN (4 to 8 digits) [a new PIN]: "


def tunvpn_otp(*argv: str) -> int:
    """``tunvpn otp ...`` as the plugin adds it to tunvpn's command line."""
    parser = argparse.ArgumentParser(prog="tunvpn")
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["otp", *argv])
    result = args.handler(args)
    assert isinstance(result, int)
    return result


def enroll(store: Path, user: str, capsys: pytest.CaptureFixture[str]) -> pyotp.TOTP:
    """Enroll ``user`` and scan the printed otpauth:// URI into an "authenticator app"."""
    assert tunvpn_otp("enroll", user, "--store", str(store), "--issuer", "tunvpn-test") == 0
    uri = capsys.readouterr().out.splitlines()[0]
    token = pyotp.parse_uri(uri)
    assert isinstance(token, pyotp.TOTP)
    return token


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "otp.json"


@pytest.fixture
def tina(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> pyotp.TOTP:
    """tina, enrolled, with the PIN set by ``tunvpn otp set-pin`` (typed twice)."""
    token = enroll(store, "tina", capsys)
    typed: Iterator[str] = iter([PIN, PIN])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert tunvpn_otp("set-pin", "tina", "--store", str(store)) == 0
    return token


def connect(store: Path, user: str, password: str, *, at: datetime = T0, **kw: Any) -> SessionResult:
    settings = {"otp": {"store": str(store), **kw.pop("settings", {})}}
    return run_session(
        plugin_names=["otp"],
        plugin_settings=settings,
        user=user,
        password=password,
        now=at,
        timeout=20,
        **kw,
    )


def shown(result: SessionResult) -> str:
    """Everything the client and the gateway's events said, as text."""
    return json.dumps([result.records, result.events, result.prompts])


def test_pin_and_the_code_at_the_sessions_time_connect(store: Path, tina: pyotp.TOTP) -> None:
    result = connect(store, "tina", PIN + tina.at(T0))
    assert result.connected, result.failure
    assert result.prompts == [] and result.sas == {policy.name for policy in DEFAULT_POLICIES}
    assert result.address is not None and result.address.startswith("10.79.0.")
    # the next login, a minute later by the session's clock, with that moment's code
    later = T0 + timedelta(minutes=1)
    assert connect(store, "tina", PIN + tina.at(later), at=later).connected
    text = shown(result)
    assert PIN + tina.at(T0) not in text and tina.secret not in text  # no secret in the records


def test_a_wrong_code_a_wrong_pin_and_a_used_code_are_refused(store: Path, tina: pyotp.TOTP) -> None:
    an_hour_ago = tina.at(T0 - timedelta(hours=1))  # far outside the window (and the drift)
    wrong_code = connect(store, "tina", PIN + an_hour_ago)
    assert not wrong_code.connected
    assert "PIN or tokencode not accepted" in (wrong_code.failure or ""), wrong_code.failure
    assert wrong_code.refusal is not None and wrong_code.sas == set()
    wrong_pin = connect(store, "tina", "1234" + tina.at(T0))
    assert not wrong_pin.connected
    assert "PIN or tokencode not accepted" in (wrong_pin.failure or "")  # the same answer
    assert connect(store, "tina", PIN + tina.at(T0)).connected
    replayed = connect(store, "tina", PIN + tina.at(T0))
    assert not replayed.connected
    assert "this tokencode was used already" in (replayed.failure or ""), replayed.failure


def test_a_new_user_enters_the_code_alone_and_chooses_a_pin(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = enroll(store, "nina", capsys)
    first = connect(store, "nina", token.at(T0), answers=["2580", "2580"])
    assert first.connected, first.failure
    assert first.prompts[0] == NEW_PIN_PROMPT and "again" in first.prompts[1]
    later = T0 + timedelta(seconds=30)
    assert connect(store, "nina", "2580" + token.at(later), at=later).connected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lockout_after": 0}, r"\[plugin.otp\] lockout_after = 0: must be at least 1 \(plugin 'otp'\)"),
        ({"users": "tina"}, r"\[plugin.otp\] users = 'tina': must be a list of user names"),
        ({"spread_max_wait": "1m"}, r"\[plugin.otp\] spread_max_wait = '1m': must be a number of seconds"),
    ],
    ids=["lockout_after", "users", "spread_max_wait"],
)
def test_a_bad_setting_stops_the_gateway_before_it_starts(
    store: Path, tina: pyotp.TOTP, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        connect(store, "tina", PIN + tina.at(T0), settings=settings)


def test_a_store_that_is_missing_or_readable_by_others_stops_the_gateway(
    store: Path, tina: pyotp.TOTP
) -> None:
    missing = store.with_name("nowhere.json")
    with pytest.raises(ConfigError, match=rf"\[plugin.otp\] store: {missing}: no such OTP store"):
        connect(missing, "tina", PIN + tina.at(T0))
    store.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"\[plugin.otp\] store: {store} is readable .*chmod 600"):
        connect(store, "tina", PIN + tina.at(T0))


# --------------------------------------------------------------------------- the client's soft token


def soft_token(store: Path, token_file: Path, pin_file: Path, **kw: Any) -> SessionResult:
    """tina logs in with her password (the users file), then the gateway runs the announced
    ``otp`` protocol and the otp plugin on the client answers it from its files."""
    return connect(
        store,
        "tina",
        "t-pass",
        users={"tina": "t-pass"},
        protocols=[ExtraProtocol("otp")],
        client_plugins=[("otp", plugin)],
        client_plugin_settings={"otp": {"token_file": str(token_file), "pin_file": str(pin_file)}},
        **kw,
    )


def test_the_soft_token_answers_the_announced_protocol(
    store: Path, tina: pyotp.TOTP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token.uri"
    token_file.write_text(tina.provisioning_uri(name="tina", issuer_name="tunvpn-test") + "\n")
    token_file.chmod(0o600)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    monkeypatch.setattr(plugin, "clock", T0.timestamp)  # the client's token shows T0's code too
    result = soft_token(store, token_file, pin_file)
    assert result.connected, result.failure
    assert result.prompts == []  # nobody typed anything
    assert {(r["event"], r["state"]) for r in result.records} >= {
        ("protocols", "required"),
        ("protocols", "ok"),
    }
    # a token file others may read: the client refuses its profile before it connects
    token_file.chmod(0o644)
    with pytest.raises(ValueError, match=r"\[plugin.otp\] token_file: OTP token file .* chmod 600"):
        soft_token(store, token_file, pin_file)
