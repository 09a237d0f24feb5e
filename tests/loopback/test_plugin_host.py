"""The plugin host (tunvpn/plugins/hookspecs.py, tunvpn/plugins/host.py): hooks documented and rendered in
docs/plugins.md, plugins found through their entry points (the built-in ``users-file`` too),
a missing plugin is a startup error, and ``tunvpn_verify_credentials`` decides XAUTH over real
UDP on loopback: a password-then-code plugin with a challenge round (draft-beaulieu-ike-xauth-02
section 6.2), groups from a plugin deciding the pushed policies, blocking hooks run off the
event loop, async hooks on it, and a plugin that raises rejects one user without hurting the
gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import threading
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
    wait_until,
)
from tests.helpers.protocol_plugins import CodeProtocol, SoftToken
from tunvpn import cli
from tunvpn.client.daemon import Client, Progress
from tunvpn.config.credentials import UserTable
from tunvpn.gateway.daemon import ConfigError, Gateway
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.plugins import (
    ClientProtocol,
    ClientSession,
    CredentialRequest,
    GatewayContext,
    PluginError,
    PluginHost,
    ProtocolAnnouncement,
    Verdict,
    hook_reference,
    hookimpl,
    installed_plugins,
    undocumented,
)
from tunvpn.testing import run_session

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def test_every_hook_is_documented_and_docs_plugins_md_is_current() -> None:
    assert undocumented() == []
    assert hook_reference() in DOCS.read_text(), (
        "docs/plugins.md is stale: python -m tunvpn.plugins --markdown"
    )


def test_the_built_in_plugin_is_an_entry_point_like_any_other() -> None:
    [users_file] = [p for p in installed_plugins() if p.name == "users-file"]
    assert (users_file.distribution, users_file.module) == ("tunvpn", "tunvpn.plugins.users_file")
    host = PluginHost(["users-file"])
    assert host.names == ["users-file"] and host.implements("tunvpn_verify_credentials")


def test_a_missing_plugin_is_a_startup_error_naming_what_to_install() -> None:
    # pip install is suggested only for the project's own plugins (tunvpn.plugins.OWN_PLUGINS):
    # for any other name it could install a look-alike package (issue 12, point 10)
    with pytest.raises(PluginError, match=r"plugin 'no-such' is not installed \(install the distribution"):
        PluginHost(["no-such"])
    with pytest.raises(ConfigError, match="plugin 'no-such' is not installed"):
        Gateway(gateway_options(500, 4500, RULES, plugins=("no-such",)))


def test_a_plugin_with_an_unknown_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def tunvpn_verify_credential(self, request: CredentialRequest) -> None:  # sic
            return None

    with pytest.raises(PluginError, match="tunvpn_verify_credential"):
        PluginHost(objects=[Typo()])


def test_users_file_plugin_passes_unknown_users_on() -> None:
    context = GatewayContext(users=UserTable({"alice": b"a-pass"}))
    host = PluginHost(["users-file"])

    def verdict(user: str, password: str) -> Verdict:
        return asyncio.run(host.verify_credentials(CredentialRequest(user, password), context))

    assert verdict("alice", "a-pass").accepted
    assert verdict("alice", "wrong").outcome == "reject"
    assert verdict("mallory", "x").outcome == "reject"  # nobody answered: rejected by the host


def test_verdicts_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown XAUTH fields"):
        Verdict.challenge("?", fields=("pin",))
    with pytest.raises(ValueError, match="outcome"):
        Verdict("maybe")
    assert "secret" not in repr(CredentialRequest("u", "secret", answer="secret"))


# --------------------------------------------------------------------------- over loopback


class PasswordThenCode:
    """carol: a password, then a one-time code asked for with a challenge; puts her in "eng"."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        self.threads.append(threading.current_thread().name)
        if request.user != "carol":
            return None
        if request.round == 1:
            if request.password != "c-pass":
                return Verdict.reject("wrong password")
            request.state["password ok"] = True
            return Verdict.challenge("Enter the code shown on your token", fields=("answer",))
        if request.state.get("password ok") and request.answer == "314159":
            return Verdict.accept(groups=["eng"])
        return Verdict.reject("wrong code")


class AsyncBackend:
    @hookimpl
    async def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        await asyncio.sleep(0)
        return Verdict.accept() if request.user == "dave" and request.password == "d-pass" else None


class Broken:
    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        if request.user == "erin":
            raise ConnectionError("backend down")
        return None


def connect(plugins: list[object], user: str, password: str, answers: list[str]) -> tuple[int, list[dict]]:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answers.pop(0)

    async def scenario() -> tuple[int, list[dict]]:
        ike, natt = free_port_pair()
        gateway, server = await serve(gateway_options(ike, natt, RULES, plugin_objects=tuple(plugins)))
        out = io.StringIO()
        options = dataclasses.replace(
            client_options(ike, natt, user, password), password_prompt=True, exit_after_established=True
        )
        client = Client(options, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=ask)
        try:
            code = await asyncio.wait_for(client.run(handle_signals=False), 30)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        return code, records

    code, records = asyncio.run(scenario())
    records.append({"event": "asked", "prompts": asked})
    return code, records


def quick_names(records: list[dict]) -> set[str]:
    return {r["name"] for r in records if r["event"] == "quick" and r["state"] == "established"}


needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


@needs_loopback
def test_password_then_challenge_connects_and_the_plugin_group_decides_the_policies() -> None:
    plugin = PasswordThenCode()
    code, records = connect([plugin], "carol", "c-pass", ["314159"])
    assert code == 0, records
    assert records[-1]["prompts"] == ["Enter the code shown on your token [the answer to the challenge]: "]
    assert quick_names(records) == {"intranet", "mail", "eng"}  # "eng" only through the plugin's group
    assert plugin.threads and threading.main_thread().name not in plugin.threads  # off the event loop


@needs_loopback
def test_a_wrong_code_is_refused_with_a_clear_message() -> None:
    code, records = connect([PasswordThenCode()], "carol", "c-pass", ["000000"])
    assert code == 1
    failed = [r for r in records if r["event"] == "xauth" and r["state"] == "failed"]
    assert failed and "rejected user 'carol': wrong code" in failed[-1]["message"], records


@needs_loopback
def test_async_plugins_and_the_built_in_users_file_answer_together() -> None:
    code, records = connect([AsyncBackend()], "dave", "d-pass", [])
    assert code == 0 and quick_names(records) == {"intranet", "mail"}
    code, records = connect([AsyncBackend()], "alice", "a-pass", [])  # users-file, asked after
    assert code == 0 and quick_names(records) == {"intranet", "mail", "eng"}


@needs_loopback
def test_a_plugin_that_raises_rejects_that_user_and_the_gateway_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, _ = connect([Broken()], "erin", "x", [])
    assert code == 1
    assert "checking user 'erin'" in caplog.text and "backend down" in caplog.text
    code, _ = connect([Broken()], "bob", "b-pass", [])
    assert code == 0


def test_plugins_command_lists_what_is_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "users-file" in out and "tunvpn" in out


class NextPasscode:
    """carol: a password, then a new passcode (fields=("passcode",)) the user must type."""

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        if request.user != "carol":
            return None
        if request.round == 1:
            return Verdict.challenge("Enter the next tokencode", fields=("passcode",))
        return Verdict.accept() if request.passcode == "271828" else Verdict.reject("wrong tokencode")


@needs_loopback
def test_a_later_round_never_resends_the_stored_password() -> None:
    """The password file answers round 1 only; the next tokencode is asked of the user."""
    code, records = connect([NextPasscode()], "carol", "c-pass", ["271828"])
    assert code == 0, records
    assert records[-1]["prompts"] == ["Enter the next tokencode [passcode]: "]


# --------------------------------------------------------------------------- extra protocols


def connect_with_protocol(
    plugin: CodeProtocol, user: str, password: str, code: str
) -> tuple[int, list[dict], dict]:
    seen: dict = {}

    async def scenario() -> tuple[int, list[dict]]:
        ike, natt = free_port_pair()
        protocols = (ExtraProtocol("code", (("prompt", "Enter the code shown on your token"),)),)
        gateway = Gateway(gateway_options(ike, natt, RULES, plugin_objects=(plugin,), protocols=protocols))

        def ask(prompt: str) -> str:
            seen["prompt"] = prompt
            [sa] = gateway.engine.ike_sas()
            seen["children while asking"] = sa.child_policies  # Quick Mode is refused meanwhile
            return code

        ready = asyncio.Event()
        server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 5)
        out = io.StringIO()
        options = dataclasses.replace(
            client_options(ike, natt, user, password), password_prompt=True, exit_after_established=True
        )
        client = Client(options, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=ask)
        try:
            code_ = await asyncio.wait_for(client.run(handle_signals=False), 30)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return code_, [json.loads(line) for line in out.getvalue().splitlines()]

    status, records = asyncio.run(scenario())
    return status, records, seen


@needs_loopback
def test_an_announced_protocol_runs_after_phase_1a_and_before_quick_mode() -> None:
    """Seed paragraph 0030: password (users file) at login, then the announced "code"
    protocol as an XAUTH round after Mode Config; Quick Mode only once it passed."""
    plugin = CodeProtocol()
    status, records, seen = connect_with_protocol(plugin, "bob", "b-pass", "314159")
    assert status == 0, records
    events = [(r["event"], r["state"]) for r in records]
    assert events.index(("modecfg", "received")) < events.index(("protocols", "required"))
    assert events.index(("protocols", "ok")) < events.index(("quick", "started"))
    assert seen["prompt"] == "Enter the code shown on your token [passcode]: "
    assert seen["children while asking"] == ()
    # bob is in "eng" through the protocol: that policy follows as a CFG_SET
    assert quick_names(records) == {"intranet", "mail", "eng"}, records
    assert [r.protocol for r in plugin.requests] == ["code"]  # the login was the users file's alone


@needs_loopback
def test_a_wrong_answer_to_an_announced_protocol_ends_the_connection() -> None:
    status, records, _ = connect_with_protocol(CodeProtocol(), "bob", "b-pass", "000000")
    assert status == 1
    failed = [r for r in records if r["event"] == "xauth" and r["state"] == "failed"]
    assert failed and "wrong code" in failed[-1]["message"], records
    assert not [r for r in records if r["event"] == "quick"]


class Accounting:
    __name__ = "recorder"

    def __init__(self) -> None:
        self.records: list = []

    @hookimpl
    def tunvpn_accounting(self, record: object) -> None:
        self.records.append(record)


@needs_loopback
def test_interim_accounting_records_follow_the_interval() -> None:
    recorder = Accounting()

    async def scenario() -> None:
        ike, natt = free_port_pair()
        options = gateway_options(ike, natt, RULES, plugin_objects=(recorder,), accounting_interval=1)
        gateway, server = await serve(options)
        client = Client(
            client_options(ike, natt, "bob", "b-pass"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: sum(r.kind == "interim" for r in recorder.records) >= 2, 10)
            client.close("test done")
            client._finish(0, "done")
            await asyncio.wait_for(run, 10)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 10)

    asyncio.run(scenario())
    kinds = [r.kind for r in recorder.records]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("interim") >= 2, kinds
    interims = [r for r in recorder.records if r.kind == "interim"]
    assert all(r.user == "bob" and r.session_id == interims[0].session_id for r in interims)
    assert interims[-1].seconds > interims[0].seconds


class Hangs:
    @hookimpl
    async def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        await asyncio.sleep(3600)
        return None


@needs_loopback
def test_a_plugin_that_never_answers_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tunvpn.gateway.daemon.PLUGIN_TIMEOUT", 0.5)
    code, records = connect([Hangs()], "bob", "b-pass", [])
    assert code == 1
    failed = [r for r in records if r["event"] == "xauth" and r["state"] == "failed"]
    assert failed and "could not check the credentials in time" in failed[-1]["message"], records


@needs_loopback
def test_a_client_plugin_answers_an_announced_protocol_without_a_prompt() -> None:
    token = SoftToken()
    gateway_plugin = CodeProtocol()

    async def scenario() -> tuple[int, list[dict], list[str]]:
        ike, natt = free_port_pair()
        protocols = (ExtraProtocol("code", (("prompt", "Enter the code"),)),)
        gateway = Gateway(
            gateway_options(ike, natt, RULES, plugin_objects=(gateway_plugin,), protocols=protocols)
        )
        ready = asyncio.Event()
        server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 5)
        out = io.StringIO()
        asked: list[str] = []
        options = dataclasses.replace(
            client_options(ike, natt, "bob", "b-pass"),
            exit_after_established=True,
            plugin_objects=(token,),
            plugin_settings={"soft-token": {"code": "314159"}},
        )
        client = Client(
            options, CLIENT, progress=Progress(json_lines=True, out=out), ask_password=asked.append
        )
        try:
            code = await asyncio.wait_for(client.run(handle_signals=False), 30)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return code, [json.loads(line) for line in out.getvalue().splitlines()], asked

    status, records, asked = asyncio.run(scenario())
    assert status == 0, records
    assert asked == []  # nobody was prompted (and password_prompt is off in these options)
    [question] = token.questions
    assert (question.field, question.protocol, question.user, question.message) == (
        "passcode",
        "code",
        "bob",
        "Enter the code",
    )
    assert "314159" not in json.dumps(records)
    assert quick_names(records) == {"intranet", "mail", "eng"}


# --------------------------------------------------------------------------- protocols a plugin runs itself

RELAY_POLICY = Phase2Policy("relay (UDP 7000)", TrafficSelector.from_address("10.78.9.1", 17, 7000))


class RelayGateway:
    """A gateway plugin announcing a protocol that runs after Quick Mode, with its own SA."""

    __name__ = "relay"

    def __init__(self) -> None:
        self.served: list[GatewayContext] = []

    @hookimpl
    def tunvpn_announce_protocol(self, protocol: ExtraProtocol) -> ProtocolAnnouncement:
        return ProtocolAnnouncement(
            params=(("exchange", "relay"), ("server", "10.78.9.1")), accept=(RELAY_POLICY,)
        )

    @hookimpl
    async def tunvpn_serve(self, context: GatewayContext) -> None:
        self.served.append(context)
        await asyncio.Event().wait()  # until the gateway stops (cancelled)


class RelayClient:
    __name__ = "relay-client"

    def __init__(self) -> None:
        self.sessions: list[ClientSession] = []

    @hookimpl
    def tunvpn_client_protocol(self, protocol: ExtraProtocol) -> ClientProtocol | None:
        if protocol.param("exchange") != "relay":
            return None

        async def run(session: ClientSession) -> None:
            self.sessions.append(session)

        return ClientProtocol("relay-client", policies=(RELAY_POLICY,), run=run)


@needs_loopback
def test_a_client_plugin_adds_its_sa_and_runs_once_every_sa_is_up() -> None:
    gateway_plugin, client_plugin = RelayGateway(), RelayClient()
    result = run_session(
        user="alice",
        password="a-pass",
        users={"alice": "a-pass"},
        plugins=[gateway_plugin],
        client_plugins=[client_plugin],
        protocols=[ExtraProtocol("relay")],
    )
    assert result.exit_code == 0, result.records
    [required] = [r for r in result.records if r["event"] == "protocols" and r["state"] == "required"]
    assert required["protocols"] == ["relay"]
    sas = {r["name"]: r for r in result.records if r["event"] == "quick" and r["state"] == "established"}
    assert RELAY_POLICY.name in sas and len(sas) == 2
    assert sas[RELAY_POLICY.name]["remote_ts"] == "10.78.9.1/32[udp/7000]"
    assert sas[RELAY_POLICY.name]["local_ts"] == "10.79.0.10/32[udp]"
    [session] = client_plugin.sessions
    assert (str(session.address), session.gateway, session.user) == ("10.79.0.10", "127.0.0.1", "alice")
    assert session.protocol.param("server") == "10.78.9.1"
    assert session.password == "a-pass" and "a-pass" not in repr(session)
    [context] = gateway_plugin.served
    assert context.verify is not None and [p.name for p in context.protocols] == ["relay"]


@needs_loopback
def test_the_gateway_refuses_the_extra_sa_from_a_client_it_did_not_announce_it_to() -> None:
    # no announcement on the gateway: the client's plugin asks for an SA the gateway does not accept
    result = run_session(
        user="alice",
        password="a-pass",
        users={"alice": "a-pass"},
        protocols=[ExtraProtocol("relay", (("exchange", "relay"),))],
        client_plugins=[RelayClient()],
    )
    assert result.exit_code != 0
    failed = [r for r in result.records if r["state"] == "failed"]
    assert failed and "relay (UDP 7000)" in failed[-1]["message"], failed


@needs_loopback
def test_a_client_without_the_plugin_is_told_the_protocol_is_not_supported() -> None:
    result = run_session(
        user="alice",
        password="a-pass",
        users={"alice": "a-pass"},
        plugins=[RelayGateway()],
        protocols=[ExtraProtocol("relay")],
    )
    assert result.exit_code != 0
    [failed] = [r for r in result.records if r["state"] == "failed"]
    # 'relay' is the gateway's choice, not one of tunvpn's own plugins: no pip install advice
    # (tests/loopback/test_gateway_text.py has our own plugins' advice)
    assert "'relay'" in failed["message"] and "not supported" in failed["message"], failed
    assert "pip install" not in failed["message"]
    assert not [r for r in result.records if r["event"] == "quick"]  # no Quick Mode at all


def test_a_users_file_checks_chap_answers_in_constant_time() -> None:
    import hashlib

    from tunvpn.plugins import users_file as builtin_users

    users = UserTable({"alice": b"a-pass"})
    context = GatewayContext(users=users)
    challenge = bytes(range(16))
    good = hashlib.md5(b"\x07" + b"a-pass" + challenge).digest()

    def decide(user: str, answer: bytes) -> Verdict | None:
        request = CredentialRequest(user=user, chap=(7, challenge, answer), via="ppp")
        return builtin_users.tunvpn_verify_credentials(request, context)

    assert decide("alice", good) == Verdict.accept()
    assert not decide("alice", bytes(16)).accepted  # type: ignore[union-attr]
    assert decide("mallory", good) is None  # not ours: the next plugin decides
    assert "a-pass" not in repr(CredentialRequest(user="alice", chap=(7, challenge, good)))


class _Blocking:
    """A synchronous backend that blocks until the event loop lets it go: if the host called
    it on the loop's thread, nothing could let it go and it would give up (and reject)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict:
        self.started.set()
        return Verdict.accept() if self.released.wait(10) else Verdict.reject("the loop was stalled")


class _Waiting:
    """An asynchronous backend that waits for another task of the same loop."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    @hookimpl
    async def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict:
        await self.go.wait()
        return Verdict.accept(groups=("waited",))


def test_a_blocking_hook_runs_off_the_event_loop_and_an_async_one_on_it() -> None:
    blocking, waiting = _Blocking(), _Waiting()

    async def scenario() -> tuple[Verdict, Verdict]:
        context = GatewayContext()
        host = PluginHost(objects=[blocking])
        pending = asyncio.ensure_future(host.verify_credentials(CredentialRequest("u", "p"), context))
        while not blocking.started.is_set():  # the loop keeps running while the hook blocks
            await asyncio.sleep(0.01)
        blocking.released.set()
        first = await asyncio.wait_for(pending, 15)
        host = PluginHost(objects=[waiting])
        pending = asyncio.ensure_future(host.verify_credentials(CredentialRequest("u", "p"), context))
        await asyncio.sleep(0)
        waiting.go.set()
        return first, await asyncio.wait_for(pending, 15)

    first, second = asyncio.run(scenario())
    assert first.accepted, first.message
    assert second.accepted and second.groups == ("waited",)
