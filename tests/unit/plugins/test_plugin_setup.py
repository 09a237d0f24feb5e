"""Issue 22: how the plugins' answers combine, in which order they are asked, and the checks a
gateway runs once its plugins are loaded (their settings, the groups they declare)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import subprocess
import textwrap
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tunvpn_proc import tunvpn_argv, tunvpn_env
from tunvpn import cli
from tunvpn.config.errors import ConfigError
from tunvpn.config.gateway import ConfigFileError, load_gateway_config
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import Gateway, GatewayOptions, SimpleRule, options_from_config
from tunvpn.ike.config import PskTable
from tunvpn.plugins import (
    Authorization,
    GatewayContext,
    Phase2Policy,
    PluginError,
    PluginHost,
    PluginSettingsError,
    SettingError,
    TrafficSelector,
    combine_authorizations,
    hookimpl,
)

POLICY = Phase2Policy("intranet", TrafficSelector.parse("10.78.0.0/24"))
DESK = Phase2Policy("desk", TrafficSelector.parse("10.78.9.0/24"))


class Adds:
    """tunvpn_authorize: adds a group (and optionally a policy and an address)."""

    def __init__(self, name: str, group: str, address: str | None = None, policy: Phase2Policy | None = None):
        self.__name__ = name
        self.answer = Authorization(
            groups=(group,),
            address=IPv4Address(address) if address else None,
            policies=(policy,) if policy else (),
        )
        self.asked = 0

    @hookimpl
    def tunvpn_authorize(self, user: str) -> Authorization:
        self.asked += 1
        return self.answer


class Refuses:
    __name__ = "refuses"

    @hookimpl
    def tunvpn_authorize(self, user: str) -> Authorization | None:
        return Authorization(deny="outside office hours") if user == "alice" else None


def authorize(host: PluginHost, user: str = "alice") -> Authorization | None:
    return asyncio.run(host.authorize(user, frozenset(), ("192.0.2.1", 4500), GatewayContext()))


def test_answers_combine_groups_add_up_the_first_address_wins_a_refusal_always_wins() -> None:
    a = ("a", Authorization(groups=("daytime",), address=IPv4Address("10.79.0.42"), policies=(DESK,)))
    b = (
        "b",
        Authorization(groups=("eng", "daytime"), address=IPv4Address("10.79.0.43"), policies=(DESK, POLICY)),
    )
    merged, dropped = combine_authorizations([a, b])
    assert merged.groups == ("daytime", "eng")
    assert str(merged.address) == "10.79.0.42"
    assert [p.name for p in merged.policies] == ["desk", "intranet"]
    assert dropped == ("plugin 'b': policy 'desk' is already given by an earlier plugin",)
    no = ("no", Authorization(deny="account disabled"))
    for order in itertools.permutations([a, b, no]):
        assert combine_authorizations(order)[0] == Authorization(deny="account disabled")


def test_every_plugin_is_asked_and_any_refusal_wins_whatever_the_order() -> None:
    for order in itertools.permutations(["day", "eng", "no"]):
        plugins = {"day": Adds("day", "daytime"), "eng": Adds("eng", "eng"), "no": Refuses()}
        host = PluginHost(objects=[(name, plugins[name]) for name in order])
        answer = authorize(host)
        assert answer is not None and answer.deny == "outside office hours", order
        answer = authorize(host, "bob")  # the refusing plugin passes bob
        assert answer is not None and set(answer.groups) == {"daytime", "eng"}, order
        assert answer.deny is None


def test_no_answer_at_all_is_none() -> None:
    assert authorize(PluginHost(objects=[("no", Refuses())]), "bob") is None


class First:
    __name__ = "first"

    @hookimpl(tryfirst=True)
    def tunvpn_authorize(self) -> None:
        return None


class Last:
    __name__ = "last"

    @hookimpl(trylast=True)
    def tunvpn_authorize(self) -> None:
        return None


def test_the_order_is_the_documented_one_and_tryfirst_trylast_move_a_plugin() -> None:
    # objects are loaded after named plugins: the last loaded is asked first
    host = PluginHost(["users-file"], [Last(), ("a", Adds("a", "x")), First(), ("b", Adds("b", "y"))])
    assert host.call_order("tunvpn_authorize") == ["first", "b", "a", "last"]
    assert host.call_order("tunvpn_verify_credentials") == ["users-file"]


# --------------------------------------------------------------------------- settings


class Window:
    """A plugin with settings: window = "HH:MM-HH:MM"; it declares the group it gives."""

    __name__ = "timewindow"

    @hookimpl
    def tunvpn_check_settings(self, settings: dict[str, Any], side: str) -> None:
        if side != "gateway":
            return
        window = settings.get("window", "08:00-18:00")
        start, _, end = str(window).partition("-")
        if not all(len(t) == 5 and t[2] == ":" for t in (start, end)):
            raise SettingError("window", "expected HH:MM-HH:MM", value=window)
        if "secret" in settings and len(settings["secret"]) < 8:
            raise SettingError("secret", "at least 8 characters")  # value not shown

    @hookimpl
    def tunvpn_declare_groups(self, settings: dict[str, Any]) -> list[str]:
        return [settings.get("group", "daytime")]


def test_a_setting_error_names_the_plugin_the_key_and_the_value_but_never_a_secret() -> None:
    host = PluginHost(objects=[Window()])
    host.check_settings({"timewindow": {"window": "08:00-18:00"}}, "gateway")
    with pytest.raises(PluginSettingsError) as err:
        host.check_settings({"timewindow": {"window": "8-18"}}, "gateway")
    assert str(err.value) == "[plugin.timewindow] window = '8-18': expected HH:MM-HH:MM (plugin 'timewindow')"
    with pytest.raises(PluginSettingsError) as err:
        host.check_settings({"timewindow": {"secret": "hunter2"}}, "gateway")
    assert "hunter2" not in str(err.value) and "secret: at least 8" in str(err.value)
    host.check_settings({"timewindow": {"window": "8-18"}}, "client")  # the plugin checks the gateway's only


class Broken:
    __name__ = "broken"

    @hookimpl
    def tunvpn_check_settings(self, settings: dict[str, Any]) -> None:
        int(settings["port"])


class Async:
    __name__ = "async"

    @hookimpl
    async def tunvpn_check_settings(self) -> None:
        return None


class BadGroups:
    __name__ = "badgroups"

    @hookimpl
    def tunvpn_declare_groups(self) -> str:
        return "eng"  # a string is not a list of names


def test_any_other_exception_async_checks_and_a_bare_string_of_groups_are_refused() -> None:
    with pytest.raises(PluginSettingsError, match=r"\[plugin.broken\]: KeyError: 'port' \(plugin 'broken'\)"):
        PluginHost(objects=[Broken()]).check_settings({}, "gateway")
    with pytest.raises(PluginError, match="must not be an async def"):
        PluginHost(objects=[Async()]).check_settings({}, "gateway")
    with pytest.raises(PluginError, match="expected names of groups"):
        PluginHost(objects=[BadGroups()]).declared_groups({}, GatewayContext())


def options(**kw: Any) -> GatewayOptions:
    base: dict[str, Any] = dict(
        listen="127.0.0.1",
        psks=PskTable({"*": b"a-long-enough-group-secret-0123"}),
        pool=AddressPool.parse("10.79.0.10-10.79.0.50"),
        rules=(SimpleRule(POLICY), SimpleRule(DESK, groups=("daytime",))),
        plugin_objects=(Window(),),
        tun=None,
    )
    base.update(kw)
    return GatewayOptions(**base)


def test_a_gateway_takes_groups_plugins_declare_and_refuses_unknown_ones() -> None:
    gateway = Gateway(options())
    assert gateway.plugin_groups == {"daytime": "timewindow"}
    gateway.plugins.close()
    with pytest.raises(
        ConfigError, match=r"policy\[0\].groups: group 'nightly' is not defined in \[groups\] "
    ):
        Gateway(options(rules=(SimpleRule(DESK, groups=("nightly",)),)))
    Gateway(
        options(rules=(SimpleRule(DESK, groups=("nightly",)),), groups={"nightly": frozenset()})
    ).plugins.close()


def test_options_built_in_code_get_the_pool_check_of_gateway_toml() -> None:
    inside = Phase2Policy("clash", TrafficSelector.parse("10.79.0.0/24"))
    with pytest.raises(
        ConfigError, match=r"network.pool: the pool 10.79.0.10-10.79.0.50 overlaps 10.79.0.0/24"
    ):
        Gateway(options(rules=(SimpleRule(inside),)))


def test_a_reload_with_a_bad_plugin_setting_keeps_the_running_configuration() -> None:
    gateway = Gateway(options(plugin_settings={"timewindow": {"window": "08:00-18:00"}}))
    before = gateway.options
    with pytest.raises(ConfigError, match="expected HH:MM-HH:MM"):
        gateway.apply_options(options(plugin_settings={"timewindow": {"window": "all day"}}))
    assert gateway.options is before
    summary = gateway.apply_options(options(plugin_settings={"timewindow": {"window": "07:00-19:00"}}))
    assert gateway.options is not before and summary["generation"] == 1  # settings only: no policy change
    gateway.plugins.close()


# --------------------------------------------------------------------------- gateway.toml and the CLI

GATEWAY_TOML = """\
[gateway]
listen = "127.0.0.1"
psk = "a-long-enough-group-secret-0123"
tun = false
plugins = ["my-otp"]

[network]
pool = "10.79.0.10-10.79.0.50"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"

[[policy]]
name = "eng"
local = "10.78.1.0/24"
groups = ["{group}"]

[plugin.my-otp]
codes = {{carol = {code}}}
"""


def write(tmp_path: Path, group: str = "eng", code: str = '"314159"') -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_TOML.format(group=group, code=code))
    path.chmod(0o600)
    return path


def gateway_from(path: Path) -> Gateway:
    return Gateway(options_from_config(load_gateway_config(path)))


def test_gateway_toml_errors_found_through_plugins_name_the_line(tmp_path: Path) -> None:
    # the example plugin of docs/plugins.md (tests/example-plugin) declares "eng" and checks codes
    gateway_from(write(tmp_path)).plugins.close()
    with pytest.raises(ConfigFileError) as err:
        gateway_from(write(tmp_path, code="314159"))
    assert err.value.line == 20 and err.value.key == "plugin.my-otp.codes.carol"
    assert str(err.value).endswith(
        "line 20, key plugin.my-otp.codes.carol: expected a string of digits (plugin 'my-otp')"
    )
    assert "314159" not in str(err.value)
    with pytest.raises(ConfigFileError) as err:
        gateway_from(write(tmp_path, group="sales"))
    assert err.value.line == 17 and err.value.key == "policy[1].groups"
    assert (
        "group 'sales' is not defined in [groups] (none defined) nor declared by a plugin (eng (my-otp))"
        in (err.value.reason)
    )


def test_plugins_c_and_gateway_check_exit_2_on_a_bad_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path)
    assert cli.main(["plugins", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert "settings: OK (checked by my-otp)" in out
    assert "groups declared by plugins: eng (my-otp)" in out
    assert "tunvpn_verify_credentials: my-otp" in out
    assert cli.main(["gateway", "-c", str(good), "--check"]) == 0
    out = capsys.readouterr().out
    assert "authorization:" not in out and "plugin groups:   eng (my-otp)" in out
    bad = write(tmp_path, code="314159")
    assert cli.main(["plugins", "-c", str(bad)]) == 2
    assert (
        "key plugin.my-otp.codes.carol: expected a string of digits (plugin 'my-otp')"
        in capsys.readouterr().err
    )
    assert cli.main(["gateway", "-c", str(bad), "--check"]) == 2
    assert "expected a string of digits" in capsys.readouterr().err
    # the gateway itself does not start: a process of its own, as an admin runs it
    run = subprocess.run(
        tunvpn_argv("gateway", "-c", str(bad), "--user", "root"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **tunvpn_env()},
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "key plugin.my-otp.codes.carol: expected a string of digits (plugin 'my-otp')" in run.stderr


def test_the_groups_check_still_runs_when_the_file_names_no_plugin(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = GATEWAY_TOML.format(group="sales", code='"1"').replace('plugins = ["my-otp"]\n', "")
    path.write_text(textwrap.dedent(text).split("[plugin.my-otp]")[0])
    path.chmod(0o600)
    with pytest.raises(ConfigFileError, match="group 'sales' is not defined in"):
        load_gateway_config(path)


class ClientSide:
    __name__ = "soft-token"

    @hookimpl
    def tunvpn_check_settings(self, settings: dict[str, Any], side: str, context: object) -> None:
        assert side == "client" and context is None
        if "seed_file" not in settings:
            raise SettingError("seed_file", "required: the file holding the token's seed")


def test_the_client_checks_its_profile_s_plugin_tables_when_it_starts() -> None:
    from tunvpn.client.daemon import Client, ClientOptions

    base = ClientOptions(gateway="127.0.0.1", psks=PskTable({"*": b"a-long-enough-group-secret-0123"}))
    with pytest.raises(ValueError, match=r"\[plugin.soft-token\] seed_file: required"):
        Client(dataclasses.replace(base, plugin_objects=(ClientSide(),)), "127.0.0.2")
    good = dataclasses.replace(
        base, plugin_objects=(ClientSide(),), plugin_settings={"soft-token": {"seed_file": "/x"}}
    )
    Client(good, "127.0.0.2").plugins.close()
