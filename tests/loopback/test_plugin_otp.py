"""The ``otp`` plugin (plugins/tunvpn-otp) in the gateway: loaded by its entry point name,
PIN + tokencode over real UDP on loopback (a valid code connects, the same code again is
refused with a clear message on the client, a drifted token goes through next-tokencode, a
user without a PIN chooses one), the hook's rounds and settings, secrets kept out of the
logs, and ``tunvpn otp enroll|set-pin|unlock`` through ``tunvpn_add_commands``.
Its sans-I/O core and store are tested in plugins/tunvpn-otp/tests/."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import io
import json
import logging
import stat
import time
from pathlib import Path

import pytest

from tests.helpers.loopback import (
    CLIENT,
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    loopback_available,
    serve,
)

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

from tunvpn_otp import core, plugin
from tunvpn_otp.core import Kind, Record
from tunvpn_otp.store import Store

from tunvpn import cli
from tunvpn.client.daemon import Client, Progress
from tunvpn.plugins import CredentialRequest, GatewayContext, PluginHost, Verdict, installed_plugins

PIN = "4711"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "otp.json")
    with s.edit(create=True) as users:
        users["carol"] = Record(Kind.HOTP, SECRET, pin_hash=core.hash_pin(PIN))
        users["tina"] = Record(Kind.TOTP, SECRET, pin_hash=core.hash_pin(PIN))
        users["nina"] = Record(Kind.HOTP, SECRET)  # no PIN yet: new-PIN mode
    return s


def code(n: int) -> str:
    return Record(Kind.HOTP, SECRET).code(n)


def test_the_plugin_is_installed_under_its_entry_point_name() -> None:
    [otp] = [p for p in installed_plugins() if p.name == "otp"]
    assert (otp.distribution, otp.module) == ("tunvpn-otp", "tunvpn_otp.plugin")
    host = PluginHost(["otp"])
    assert host.implements("tunvpn_verify_credentials") and host.implements("tunvpn_add_commands")


# --------------------------------------------------------------------------- the hook, directly


def ask(store: Store, request: CredentialRequest, **settings: object) -> Verdict | None:
    context = GatewayContext(plugin_settings={"otp": {"store": str(store.path), **settings}})
    return plugin.tunvpn_verify_credentials(request=request, context=context)


def test_unknown_users_and_users_outside_the_list_are_left_to_the_next_plugin(store: Store) -> None:
    assert ask(store, CredentialRequest("alice", "a-pass")) is None
    assert ask(store, CredentialRequest("carol", PIN + code(0)), users=["tina"]) is None
    assert ask(store, CredentialRequest("carol", PIN + code(0), round=2)) is None  # not our challenge
    assert ask(store, CredentialRequest("carol", PIN + code(0))) == Verdict.accept()
    with pytest.raises(ValueError, match="list of user names"):
        ask(store, CredentialRequest("carol", PIN + code(1)), users="carol")  # not a substring test
    with pytest.raises(ValueError, match="needs store"):
        plugin.tunvpn_verify_credentials(request=CredentialRequest("carol", "x"), context=GatewayContext())


def test_a_chap_answer_is_left_to_others_and_costs_no_attempt(store: Store) -> None:
    """An XAUTH RADIUS-CHAP login (or PPP CHAP) carries no passcode to check: the plugin
    abstains instead of counting a failed attempt towards the lockout."""
    chap = (7, bytes(16), bytes(16))
    for _ in range(6):  # more than lockout_after = 5
        assert ask(store, CredentialRequest("carol", chap=chap)) is None
    record = store.get("carol")
    assert record is not None and record.failures == 0
    assert ask(store, CredentialRequest("carol", PIN + code(0))) == Verdict.accept()


def test_new_pin_flow_through_the_hook_and_secrets_stay_out_of_the_log(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state: dict[str, object] = {}
    first = ask(store, CredentialRequest("nina", code(0), state=state))
    assert first is not None and first.outcome == "challenge" and first.fields == ("next_pin",)
    bad = ask(store, CredentialRequest("nina", next_pin="12x4", round=2, state=state))
    assert bad is not None and bad.outcome == "challenge" and "digits only" in (bad.message or "")
    again = ask(store, CredentialRequest("nina", next_pin="8642", round=3, state=state))
    assert again is not None and again.message == plugin.CONFIRM_PIN
    assert "8642" not in json.dumps(state)  # only a hash is kept between rounds
    done = ask(store, CredentialRequest("nina", next_pin="8642", round=4, state=state))
    assert done == Verdict.accept() and state == {}
    assert ask(store, CredentialRequest("nina", "8642" + code(1))) == Verdict.accept()
    # a mismatched confirmation
    store_record = store.get("nina")
    assert store_record is not None
    with store.edit() as users:
        users["nina"] = dataclasses.replace(store_record, must_change_pin=True)
    state = {}
    ask(store, CredentialRequest("nina", "8642" + code(2), state=state))
    ask(store, CredentialRequest("nina", next_pin="1111", round=2, state=state))
    refused = ask(store, CredentialRequest("nina", next_pin="2222", round=3, state=state))
    assert refused is not None and refused.outcome == "reject" and "differ" in (refused.message or "")
    logged = caplog.text
    assert logged  # the plugin does log, just no secret
    for secret in ("8642", "1111", "2222", SECRET, code(0), code(1), code(2)):
        assert secret not in logged


def test_lockout_settings_and_the_unlock_command(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        verdict = ask(store, CredentialRequest("carol", PIN + "000000"), lockout_after=2, lockout_seconds=600)
        assert verdict is not None and verdict.outcome == "reject"
    locked = ask(store, CredentialRequest("carol", PIN + code(0)), lockout_after=2)
    assert locked == Verdict.reject(plugin.MESSAGES[core.Reason.LOCKED])
    assert cli.main(["otp", "unlock", "carol", "--store", str(store.path)]) == 0
    assert ask(store, CredentialRequest("carol", PIN + code(0)), lockout_after=2) == Verdict.accept()


def test_the_clock_injection_point_drives_totp(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "clock", lambda: 1_000_000_000.0)
    record = Record(Kind.TOTP, SECRET)
    now_code = record.code(1_000_000_000 // 30)
    assert ask(store, CredentialRequest("tina", PIN + now_code)) == Verdict.accept()
    again = ask(store, CredentialRequest("tina", PIN + now_code))
    assert again == Verdict.reject(plugin.MESSAGES[core.Reason.REPLAYED])


def test_a_store_readable_by_others_rejects_with_the_fix(store: Store) -> None:
    store.path.chmod(0o644)
    host = PluginHost(["otp"])
    context = GatewayContext(plugin_settings={"otp": {"store": str(store.path)}})
    with pytest.raises(Exception, match="chmod 600"):  # the gateway logs it and rejects the user
        asyncio.run(host.verify_credentials(CredentialRequest("carol", PIN + code(0)), context))


# --------------------------------------------------------------------------- commands


def test_enroll_prints_the_otpauth_uri_and_stores_an_owner_only_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new" / "otp.json"
    path.parent.mkdir()
    assert cli.main(["otp", "enroll", "zoe", "--store", str(path), "--issuer", "ACME VPN"]) == 0
    out = capsys.readouterr().out
    record = Store(path).get("zoe")
    assert record is not None and record.kind is Kind.TOTP and record.pin_hash is None
    assert out.startswith(f"otpauth://totp/ACME%20VPN:zoe?secret={record.secret}&issuer=ACME%20VPN")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli.main(["otp", "enroll", "zoe", "--store", str(path)]) == 2  # exists already
    assert "--force" in capsys.readouterr().err
    assert cli.main(["otp", "enroll", "yan", "--hotp", "--store", str(path)]) == 0
    assert "otpauth://hotp/tunvpn:yan?secret=" in capsys.readouterr().out
    assert cli.main(["otp", "enroll", "zoe", "--store", str(tmp_path / "nowhere" / "otp.json")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_set_pin_asks_twice_and_stores_a_hash(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["97531", "97531"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert cli.main(["otp", "set-pin", "nina", "--store", str(store.path)]) == 0
    record = store.get("nina")
    assert record is not None and core.pin_matches("97531", record.pin_hash or "")
    assert "97531" not in store.path.read_text()
    assert cli.main(["otp", "set-pin", "nina", "--clear", "--store", str(store.path)]) == 0
    cleared = store.get("nina")
    assert cleared is not None and cleared.pin_hash is None and cleared.must_change_pin


def test_a_broken_plugin_does_not_break_the_command_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.metadata.entry_points(group="tunvpn")
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_for_tunvpn", "tunvpn")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [broken, *real])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert "otp" in capsys.readouterr().out  # the working plugin's command is still there
    assert "plugin 'broken' (no_such_module_for_tunvpn) skipped" in caplog.text


# --------------------------------------------------------------------------- over loopback


def connect(store: Store, user: str, answers: list[str]) -> tuple[int, list[dict], list[str]]:
    """A real gateway with ``plugins = ["otp"]`` and a client that types ``answers`` at prompts."""
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return answers.pop(0)

    async def scenario() -> tuple[int, list[dict]]:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike, natt, RULES, plugins=("otp",), plugin_settings={"otp": {"store": str(store.path)}}
        )
        gateway, server = await serve(options)
        out = io.StringIO()
        client_opts = dataclasses.replace(
            client_options(ike, natt, user, None),  # type: ignore[arg-type]  # asked at the prompt
            password_prompt=True,
            exit_after_established=True,
        )
        client = Client(client_opts, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=prompt)
        try:
            status = await asyncio.wait_for(client.run(handle_signals=False), 30)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return status, [json.loads(line) for line in out.getvalue().splitlines()]

    status, records = asyncio.run(scenario())
    return status, records, asked


def failure(records: list[dict]) -> str:
    failed = [r for r in records if r["event"] == "xauth" and r["state"] == "failed"]
    return failed[-1]["message"] if failed else ""


needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


@needs_loopback
def test_a_valid_code_connects_and_the_same_code_again_is_refused(store: Store) -> None:
    status, records, asked = connect(store, "carol", [PIN + code(0)])
    assert status == 0, records
    assert len(asked) == 1 and "password for carol@" in asked[0]
    status, records, _ = connect(store, "carol", [PIN + code(0)])
    assert status == 1
    assert "the gateway rejected user 'carol': this tokencode was used already" in failure(records), records
    status, records, _ = connect(store, "carol", ["1234" + code(1)])  # wrong PIN
    assert status == 1 and "rejected user 'carol': PIN or tokencode not accepted" in failure(records)


@needs_loopback
def test_a_drifted_token_goes_through_next_tokencode(store: Store) -> None:
    status, records, asked = connect(store, "carol", [PIN + code(40), code(41)])
    assert status == 0, records
    assert (
        len(asked) == 2
        and asked[1] == "Wait for the token to change and enter the next tokencode [passcode]: "
    )
    said = [r["message"] for r in records if r["event"] == "xauth" and r["state"] == "message"]
    assert any(plugin.NEXT_TOKENCODE in m for m in said), records
    record = store.get("carol")
    assert record is not None and record.counter == 42  # resynchronised
    status, _, asked = connect(store, "carol", [PIN + code(42)])
    assert status == 0 and len(asked) == 1  # no challenge any more


@needs_loopback
def test_a_user_without_a_pin_chooses_one_then_logs_in_with_it(store: Store) -> None:
    status, records, asked = connect(store, "nina", [code(0), "2580", "2580"])
    assert status == 0, records
    assert "Choose a new PIN (4 to 8 digits) [a new PIN]" in asked[1] and "again" in asked[2]
    status, _, _ = connect(store, "nina", ["2580" + code(1)])
    assert status == 0


@needs_loopback
def test_totp_from_the_real_clock_connects(store: Store) -> None:
    record = Record(Kind.TOTP, SECRET)
    status, records, _ = connect(store, "tina", [PIN + record.code(record.step(time.time()))])
    assert status == 0, records  # +-1 step of clock skew absorbs a step boundary in between


@needs_loopback
def test_a_soft_token_on_the_client_answers_the_announced_otp_protocol(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Password at login (users file), then the gateway's announced "otp" protocol, answered
    by the otp plugin on the client from its token file and PIN: nobody types anything."""
    from tunvpn.config.credentials import UserTable
    from tunvpn.ike.policies import ExtraProtocol

    token = tmp_path / "token.uri"
    token.write_text(store.get("tina").uri("tina", "tunvpn-test") + "\n")  # type: ignore[union-attr]
    token.chmod(0o600)
    monkeypatch.setenv("TEST_OTP_PIN", PIN)
    asked: list[str] = []

    async def scenario() -> tuple[int, list[dict]]:
        ike, natt = free_port_pair()
        options = dataclasses.replace(
            gateway_options(
                ike, natt, RULES, plugins=("otp",), plugin_settings={"otp": {"store": str(store.path)}}
            ),
            users=UserTable({"tina": b"t-pass"}),
            protocols=(ExtraProtocol("otp"),),
        )
        gateway, server = await serve(options)
        out = io.StringIO()
        client_opts = dataclasses.replace(
            client_options(ike, natt, "tina", "t-pass"),
            exit_after_established=True,
            plugins=("otp",),
            plugin_settings={"otp": {"token_file": str(token), "pin_env": "TEST_OTP_PIN"}},
        )
        client = Client(
            client_opts, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=asked.append
        )
        try:
            status = await asyncio.wait_for(client.run(handle_signals=False), 30)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return status, [json.loads(line) for line in out.getvalue().splitlines()]

    status, records = asyncio.run(scenario())
    assert status == 0, [r for r in records if r.get("state") in ("failed", "closed")] or records[-4:]
    assert asked == []
    assert [r for r in records if r["event"] == "xauth" and r["state"] == "answered"]
    assert {(r["event"], r["state"]) for r in records} >= {("protocols", "required"), ("protocols", "ok")}
    record = store.get("tina")
    assert record is not None and record.last_step is not None  # the gateway used up that code
