"""Every hook's page (docs/hooks/NAME.md) is current, and its example plugin
(tunvpn/plugins/examples/) does what the page says, run through the real plugin host (issue 22:
one page per hook with a tested example)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tunvpn.plugins import (
    AccountingRecord,
    Authorization,
    ClientQuestion,
    ClientSession,
    CredentialRequest,
    ExtraProtocol,
    GatewayContext,
    PluginHost,
    PluginSettingsError,
    hook_reference,
    hookspecs,
)
from tunvpn.plugins.examples import (
    EXAMPLES,
    hello_command,
    notice,
    notice_client,
    office_hours,
    passcode_file,
    service_accounts,
    session_log,
)
from tunvpn.plugins.host import hook_page

ROOT = Path(__file__).resolve().parents[3]


def test_every_hook_has_a_current_page_with_its_example_and_the_index_links_them() -> None:
    assert set(EXAMPLES) == set(hookspecs.hook_names())
    pages = ROOT / "docs" / "hooks"
    assert sorted(p.name for p in pages.glob("*.md")) == sorted(f"{n}.md" for n in hookspecs.hook_names())
    for name in hookspecs.hook_names():
        assert (pages / f"{name}.md").read_text() == hook_page(name), (
            f"docs/hooks/{name}.md is stale: python -m tunvpn.plugins --pages docs/hooks"
        )
    assert hook_reference() in (ROOT / "docs" / "plugins.md").read_text()
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"hooks/{name}.md" in nav for name in hookspecs.hook_names())


def context(name: str, settings: dict[str, object], hour: int = 12) -> GatewayContext:
    moment = datetime(2026, 12, 7, hour, 30).timestamp()
    return GatewayContext(plugin_settings={name: settings}, clock=lambda: moment)


def test_service_accounts_decide_their_own_users_only() -> None:
    host = PluginHost(objects=[(service_accounts.NAME, service_accounts)])
    ctx = context(service_accounts.NAME, {"accounts": {"backup": hashlib.sha256(b"s3cret-pw").hexdigest()}})

    def verify(user: str, password: str) -> str:
        verdict = asyncio.run(host.verify_credentials(CredentialRequest(user, password=password), ctx))
        return f"{verdict.outcome} {list(verdict.groups)} {verdict.message}"

    assert verify("backup", "s3cret-pw") == "accept ['machines'] None"
    assert verify("backup", "guess") == "reject [] wrong password for this service account"
    assert verify("alice", "a-pass").startswith("reject")  # not ours, and nobody else answered


def test_office_hours_checks_its_settings_declares_its_group_and_refuses_out_of_hours() -> None:
    host = PluginHost(objects=[(office_hours.NAME, office_hours)])
    settings = {"users": ["alice"], "hours": "08-18"}
    host.check_settings({office_hours.NAME: settings}, "gateway")
    with pytest.raises(PluginSettingsError, match=r"hours = '8 to 6': expected START-END"):
        host.check_settings({office_hours.NAME: {"hours": "8 to 6"}}, "gateway")
    with pytest.raises(PluginSettingsError, match="users: expected a list"):
        host.check_settings({office_hours.NAME: {"users": "alice"}}, "gateway")
    assert host.declared_groups({}, GatewayContext()) == {"daytime": office_hours.NAME}

    def authorize(user: str, hour: int) -> object:
        return asyncio.run(
            host.authorize(user, frozenset(), ("192.0.2.1", 4500), context(office_hours.NAME, settings, hour))
        )

    assert authorize("alice", 12) == Authorization(groups=("daytime",))
    assert authorize("alice", 19) == Authorization(deny="logins only between 08:00 and 18:00")
    assert authorize("bob", 19) is None


def test_hello_command_adds_a_sub_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="tunvpn")
    hello_command.tunvpn_add_commands(subparsers=parser.add_subparsers(dest="command"))
    args = parser.parse_args(["hello-example", "world"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == "hello, world\n"


def test_session_log_writes_one_line_per_record(tmp_path: Path) -> None:
    log = tmp_path / "sessions.jsonl"
    host = PluginHost(objects=[(session_log.NAME, session_log)])
    ctx = context(session_log.NAME, {"log_file": str(log)})
    start = AccountingRecord("start", "c0ffee", user="alice", address=IPv4Address("10.79.0.10"))
    stop = AccountingRecord(
        "stop", "c0ffee", user="alice", bytes_in=10, bytes_out=20, reason="deleted by peer"
    )

    async def run() -> None:
        for kwargs in ({"kind": "on"}, {"record": start}, {"record": stop}):
            hook = "tunvpn_accounting_onoff" if "kind" in kwargs else "tunvpn_accounting"
            task = host.broadcast(hook, context=ctx, **kwargs)
            assert task is not None
            await task

    asyncio.run(run())
    host.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["gateway-on", "start", "stop"]
    assert lines[1]["address"] == "10.79.0.10" and lines[2]["bytes_out"] == 20


def test_passcode_file_answers_the_passcode_from_a_private_file_only(tmp_path: Path) -> None:
    secret = tmp_path / "passcode"
    secret.write_text("271828\n")
    host = PluginHost(objects=[(passcode_file.NAME, passcode_file)])

    def answer(field: str) -> str | None:
        settings = {passcode_file.NAME: {"passcode_file": str(secret)}}
        return asyncio.run(host.client_answer(ClientQuestion(field, plugin_settings=settings)))

    secret.chmod(0o600)
    assert answer("passcode") == "271828"
    assert answer("password") is None  # left to the user
    secret.chmod(0o644)  # readable by others: not trusted, the user is asked
    assert answer("passcode") is None
    host.close()


def test_notice_is_announced_served_and_read_by_the_client_plugin() -> None:
    gateway = PluginHost(objects=[(notice.NAME, notice)])
    client = PluginHost(objects=[("notice-client", notice_client)])

    async def run() -> list[tuple[str, str]]:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        ctx = context(notice.NAME, {"port": port})
        announcement = gateway.announce(ExtraProtocol("notice"), ctx)
        assert announcement is not None and dict(announcement.params) == {
            "exchange": "notice",
            "port": str(port),
        }
        [service] = gateway.serve(ctx)
        handled = await client.client_protocol(ExtraProtocol("notice", announcement.params), {})
        assert handled is not None and handled.run is not None
        reports: list[tuple[str, str]] = []
        session = ClientSession(
            protocol=ExtraProtocol("notice", announcement.params),
            gateway="127.0.0.1",
            address=None,
            report=lambda step, message, **_: reports.append((step, message)),
        )
        for _ in range(100):  # the service listens once its task ran
            try:
                await handled.run(session)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.02)
        service.cancel()
        await asyncio.gather(service, return_exceptions=True)
        return reports

    assert asyncio.run(run()) == [("notice", "maintenance on Sunday 02:00-04:00")]
    assert asyncio.run(client.client_protocol(ExtraProtocol("other"), {})) is None


def test_examples_import_only_the_plugin_api() -> None:
    folder = ROOT / "tunvpn" / "plugins" / "examples"
    for path in folder.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import tunvpn", "from tunvpn")):
                assert line.startswith(("from tunvpn.plugins import", "from tunvpn.plugins.examples")), (
                    f"{path.name}: {line}"
                )
    assert os.sep not in EXAMPLES["tunvpn_serve"]
