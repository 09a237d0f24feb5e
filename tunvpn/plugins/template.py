"""``tunvpn plugin new NAME``: a complete plugin distribution, ``tunvpn-NAME/``, that passes its
own tests as written (docs/plugin-template.md).

The plugin it holds is small but real: an allow list that puts the users it lists into a group
and, if told to, refuses everyone else (``tunvpn_check_settings``, ``tunvpn_declare_groups``,
``tunvpn_authorize``). It imports tunvpn only through :mod:`tunvpn.plugins`, and its tests run a
real gateway and client over loopback with :mod:`tunvpn.testing`. :func:`render` gives the files
for a name, :func:`write` puts them into a new folder and never over an existing one.
``tests/unit/plugins/test_plugin_template.py`` runs the written tests, before and after an install.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunvpn.plugins.host import OWN_PLUGINS

NAME_PATTERN = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")
"""A plugin name: lowercase letters, digits and ``-``, starting with a letter, not ending with ``-``
(so that ``tunvpn-NAME`` is a valid distribution name)."""
MAX_NAME = 40
"""The longest name: the template's policy ``NAME-net`` must fit the 64 octets of a policy name."""
TAKEN = frozenset({"users-file", *OWN_PLUGINS})
"""Names of plugins tunvpn has (built in, or its own distributions): a second one would clash."""


class TemplateError(ValueError):
    """A name the template cannot take, or a folder it will not write."""


def check_name(name: str) -> str:
    """``name`` if a plugin may have it, else :class:`TemplateError` saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise TemplateError(
            f"plugin name {name!r}: lowercase letters, digits and '-', starting with a letter "
            "and not ending with '-' (e.g. allow-list)"
        )
    if len(name) > MAX_NAME:
        raise TemplateError(f"plugin name {name!r}: at most {MAX_NAME} characters")
    if name in TAKEN:
        raise TemplateError(f"plugin name {name!r} is taken by tunvpn's own plugin: choose another")
    return name


def package_name(name: str) -> str:
    """The Python package of plugin ``name``: ``allow-list`` -> ``tunvpn_allow_list``."""
    return "tunvpn_" + check_name(name).replace("-", "_")


def render(name: str) -> dict[str, str]:
    """The files of ``tunvpn-NAME/``: path inside it -> text."""
    package = package_name(name)
    module = package.removeprefix("tunvpn_")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": INIT,
        f"{package}/plugin.py": PLUGIN,
        f"tests/test_{module}.py": TESTS,
    }
    return {
        path: text.replace("{{name}}", name).replace("{{package}}", package).replace("{{module}}", module)
        for path, text in files.items()
    }


def write(name: str, parent: Path) -> tuple[Path, list[Path]]:
    """Write ``parent/tunvpn-NAME/``; return it and the files written. Refuses (before writing
    anything) a bad name, a ``parent`` that is not a folder and a ``tunvpn-NAME`` that exists."""
    files = render(name)
    if not parent.is_dir():
        raise TemplateError(f"{parent}: no such directory")
    target = parent / f"tunvpn-{name}"
    try:
        target.mkdir()
    except FileExistsError:
        raise TemplateError(
            f"{target} already exists: nothing written (choose another NAME or --dir)"
        ) from None
    except OSError as exc:
        raise TemplateError(f"{target}: {exc.strerror or exc}") from None
    written = []
    try:
        for relative, text in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x", encoding="utf-8") as out:  # "x": never over a file
                out.write(text)
            written.append(path)
    except OSError as exc:
        raise TemplateError(f"{exc.filename or target}: {exc.strerror or exc}") from None
    return target, written


# --------------------------------------------------------------------------- the files
# {{name}} is the plugin's name (allow-list), {{package}} its package (tunvpn_allow_list) and
# {{module}} the package without "tunvpn_" (allow_list).

PYPROJECT = """\
# tunvpn-{{name}}: a tunvpn plugin (made by `tunvpn plugin new {{name}}`; README.md)
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tunvpn-{{name}}"
version = "0.1.0"
description = "A tunvpn plugin: an allow list that puts its users into a group"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["tunvpn"]

[project.optional-dependencies]
test = ["pytest"]

# How the gateway finds the plugin: gateway.toml's [gateway] plugins = ["{{name}}"] names this.
[project.entry-points.tunvpn]
{{name}} = "{{package}}.plugin"

[tool.setuptools]
packages = ["{{package}}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]  # the tests import {{package}} from here, installed or not
filterwarnings = ["error"]  # as in tunvpn's own tests: a warning is a failure
"""

README = """\
# tunvpn-{{name}}

A plugin for the tunvpn gateway: an allow list. The users it lists get the group
`{{name}}-users`, and with it the phase 2 policies (networks) of that group; with
`only_listed = true` every other user is refused, even with the right password. The password
itself is checked by the gateway's login sources (its users file, RADIUS, ...): this plugin
decides what an authenticated user gets (the hook `tunvpn_authorize`).

Made by `tunvpn plugin new {{name}}` as a starting point: change the decision in
`{{package}}/plugin.py` into your own (a directory, a database, office hours) and keep the
tests passing.

| file | what it is |
| --- | --- |
| `pyproject.toml` | the distribution; its entry point `{{name}}` is how a gateway finds the plugin |
| `{{package}}/plugin.py` | the plugin: its settings check, the group it declares, what a user gets |
| `tests/test_{{module}}.py` | its tests: a real gateway and client over loopback (`tunvpn.testing`) |

## Install

In the Python environment that has tunvpn:

```sh
pip install -e '.[test]'
tunvpn plugins          # lists {{name}}
```

## Enable it

In gateway.toml, beside your `users_file`, `psk_file`, pool and policies:

```toml
[gateway]
plugins = ["{{name}}"]

[plugin.{{name}}]
users = ["alice", "bob"]     # who gets the group
group = "{{name}}-users"     # the group they get (the default)
only_listed = false          # true: refuse every other user

[[policy]]                   # what the group gets
name = "{{name}}-net"
local = "10.78.50.0/24"
groups = ["{{name}}-users"]
```

`tunvpn plugins -c gateway.toml` (and `tunvpn gateway --check`) checks the settings: a bad one
is refused with the file, the line, the key and the value, as the gateway would refuse to
start. A changed `[plugin.{{name}}]` table is checked and applied by `tunvpn reload`; a change
of `plugins` needs a restart.

## Test

```sh
pytest
```

The tests run a real tunvpn gateway and client in one process over UDP on 127.0.0.1 and
127.0.0.2 (no root; macOS needs `sudo ifconfig lo0 alias 127.0.0.2`). They hand the plugin to
the gateway as an object, so they pass before it is installed, except
`test_the_entry_point_loads_the_plugin`, which loads it by its entry point as a gateway does
and is skipped until the distribution is installed.

## Where the hooks are documented

- tunvpn's `docs/plugins.md`: enabling plugins, the plugin API (import tunvpn only through
  `tunvpn.plugins`), how the answers of several plugins combine, and "Testing a plugin"
  (every keyword of `tunvpn_session` / `tunvpn.testing.run_session`, such as `now=` for a
  rule by the hour); its "Hook reference" lists every hook.
- tunvpn's `docs/hooks/`: one page per hook, each with a small complete example plugin.
- `python -m tunvpn.plugins --markdown` prints the hook reference of the installed tunvpn.
"""

INIT = '''\
"""tunvpn-{{name}}: a tunvpn plugin (made by ``tunvpn plugin new {{name}}``).

The hooks are in :mod:`{{package}}.plugin`, which pyproject.toml publishes as the entry point
``{{name}}`` of the ``tunvpn`` group; README.md says how to install, enable and test it.
"""
'''

PLUGIN = '''\
"""tunvpn-{{name}}: an allow list that puts the users it lists into a group.

gateway.toml enables the plugin by the name of its entry point (pyproject.toml) and gives it
its own table::

    [gateway]
    plugins = ["{{name}}"]

    [plugin.{{name}}]
    users = ["alice", "bob"]    # who gets the group
    group = "{{name}}-users"    # the group they get (the default); a [[policy]] may name it
    only_listed = false         # true: refuse everyone else, even with the right password

The password is checked by the gateway's login sources (users file, RADIUS, ...); this plugin
decides what an authenticated user gets. Each hook says when tunvpn calls it; the reference is
tunvpn's docs/plugins.md ("Hook reference") and docs/hooks/. A plugin imports tunvpn only
through ``tunvpn.plugins``: the rest of tunvpn is internal and may move.
"""

from __future__ import annotations

from typing import Any

from tunvpn.plugins import Authorization, GatewayContext, SettingError, hookimpl

NAME = "{{name}}"
"""The entry point's name: ``plugins = ["{{name}}"]`` and ``[plugin.{{name}}]`` in gateway.toml."""
DEFAULT_GROUP = "{{name}}-users"
"""The group listed users get when the table has no ``group``."""
SETTINGS = ("users", "group", "only_listed")
"""The keys of ``[plugin.{{name}}]``; any other is refused (a typo would otherwise do nothing)."""
NOT_LISTED = "not on the {{name}} allow list"
"""Why a user who is not listed is refused when ``only_listed = true`` (the user sees it)."""


@hookimpl
def tunvpn_check_settings(settings: dict[str, Any], side: str) -> None:
    """Refuse a bad ``[plugin.{{name}}]`` table before it is used: when the gateway starts, on
    every ``tunvpn reload`` (a refused table keeps the running one), and in ``tunvpn plugins -c``
    and ``tunvpn gateway --check``. The message names the file, the line, the key and the value
    (leave ``value`` out for a secret)."""
    if side != "gateway":
        return  # a client profile's table: this plugin has no client side
    for key in settings:
        if key not in SETTINGS:
            raise SettingError(key, f"unknown setting (known: {', '.join(SETTINGS)})")
    users = settings.get("users", [])
    if not isinstance(users, list) or not all(isinstance(user, str) and user for user in users):
        raise SettingError("users", "expected a list of user names", value=users)
    group = settings.get("group", DEFAULT_GROUP)
    if not isinstance(group, str) or not group:
        raise SettingError("group", "expected a group name", value=group)
    only_listed = settings.get("only_listed", False)
    if not isinstance(only_listed, bool):
        raise SettingError("only_listed", "expected true or false", value=only_listed)


@hookimpl
def tunvpn_declare_groups(settings: dict[str, Any]) -> list[str]:
    """The group this plugin gives, so that a ``[[policy]]`` may name it: a group that
    ``[groups]`` does not define and no plugin declares is a startup error (a typo). Called
    after ``tunvpn_check_settings``, with the same table."""
    return [settings.get("group", DEFAULT_GROUP)]


@hookimpl
def tunvpn_authorize(user: str, context: GatewayContext) -> Authorization | None:
    """What ``user`` gets once a login source accepted the password: a listed user gets the
    group (and so the group's policies); with ``only_listed = true`` anyone else is refused.

    Every plugin is asked and the answers combine: groups add up, and any refusal wins. A plain
    function like this one runs in a worker thread, so a blocking call (a directory, a
    database) is fine if it has its own timeout, shorter than the gateway's 30 s. For a rule by
    the hour, read the time from ``context.now()`` (tests set it with ``now=``).
    """
    settings = context.settings(NAME)
    if user in settings.get("users", []):
        return Authorization(groups=(settings.get("group", DEFAULT_GROUP),))
    if settings.get("only_listed", False):
        return Authorization(deny=NOT_LISTED)
    return None  # nothing to add, nothing to refuse: the other plugins decide
'''

TESTS = '''\
"""The tests of tunvpn-{{name}}: a real tunvpn gateway and client in this process, over UDP on
127.0.0.1 and 127.0.0.2 (no root), with this plugin. ``tunvpn_session`` is tunvpn's pytest
fixture (``tunvpn.testing.run_session``; it skips where 127.0.0.2 cannot be bound); its
keywords are in tunvpn's docs/plugins.md, "Testing a plugin"."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from tunvpn.plugins import Phase2Policy, SettingError, TrafficSelector, installed_plugins
from tunvpn.testing import DEFAULT_POLICIES, ConfigError, SessionResult

from {{package}} import plugin

Session = Callable[..., SessionResult]

NAME = plugin.NAME
GROUP = plugin.DEFAULT_GROUP
NET = Phase2Policy("{{name}}-net", TrafficSelector.parse("10.78.50.0/24"))
POLICIES = [DEFAULT_POLICIES[0], (NET, [GROUP])]
"""Everyone gets tunvpn.testing's ``intranet`` (10.78.0.0/24); the group also gets
``{{name}}-net``, as ``[[policy]] groups = ["{{name}}-users"]`` does in gateway.toml."""
USERS = {"alice": "a-pass", "mallory": "m-pass"}
"""The users file: it checks the passwords; the plugin decides what a user gets after that."""


def connect(tunvpn_session: Session, user: str, settings: dict[str, Any], **options: Any) -> SessionResult:
    """Log in as ``user`` with the right password through a gateway with this plugin (as an
    object: it need not be installed) and ``settings`` as its ``[plugin.{{name}}]`` table."""
    options.setdefault("plugins", {NAME: plugin})
    options.setdefault("policies", POLICIES)
    return tunvpn_session(
        user=user, password=USERS[user], users=USERS, plugin_settings={NAME: settings}, **options
    )


def test_a_listed_user_gets_the_group_and_its_network(tunvpn_session: Session) -> None:
    result = connect(tunvpn_session, "alice", {"users": ["alice"]})
    assert result.connected, result.failure
    assert GROUP in result.groups
    assert result.policies == ("intranet", "{{name}}-net")
    assert result.sas == {"intranet", "{{name}}-net"}


def test_a_user_not_listed_gets_what_everyone_gets(tunvpn_session: Session) -> None:
    result = connect(tunvpn_session, "mallory", {"users": ["alice"]})
    assert result.connected, result.failure
    assert GROUP not in result.groups
    assert result.sas == {"intranet"}


def test_only_listed_refuses_everyone_else(tunvpn_session: Session) -> None:
    settings = {"users": ["alice"], "only_listed": True}
    refused = connect(tunvpn_session, "mallory", settings)
    assert not refused.connected
    assert refused.refusal == plugin.NOT_LISTED  # the gateway's reason, also shown to the user
    assert plugin.NOT_LISTED in (refused.failure or "")
    assert connect(tunvpn_session, "alice", settings).connected


def test_a_policy_may_name_the_group_the_plugin_declares(tunvpn_session: Session) -> None:
    settings = {"users": ["alice"], "group": "staff"}
    staff = (Phase2Policy("staff-net", TrafficSelector.parse("10.78.60.0/24")), ["staff"])
    result = connect(tunvpn_session, "alice", settings, policies=[DEFAULT_POLICIES[0], staff])
    assert result.connected, result.failure
    assert result.groups == {"staff"}
    assert result.sas == {"intranet", "staff-net"}
    # POLICIES names {{name}}-users, which no one defines or declares now: refused, as in gateway.toml
    with pytest.raises(ConfigError, match=re.escape(f"group '{GROUP}' is not defined")):
        connect(tunvpn_session, "alice", settings)


def test_a_bad_setting_stops_the_gateway_naming_the_key(tunvpn_session: Session) -> None:
    message = f"[plugin.{NAME}] users = 'alice': expected a list of user names"
    with pytest.raises(ConfigError, match=re.escape(message)):
        connect(tunvpn_session, "alice", {"users": "alice"})


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"users": "alice"}, "users"),
        ({"users": ["alice", 7]}, "users"),
        ({"group": ""}, "group"),
        ({"only_listed": "yes"}, "only_listed"),
        ({"only-listed": True}, "only-listed"),  # a typo is refused, not ignored
    ],
)
def test_each_setting_is_checked(settings: dict[str, Any], key: str) -> None:
    plugin.tunvpn_check_settings(settings={}, side="gateway")  # every key has a default
    with pytest.raises(SettingError) as refused:
        plugin.tunvpn_check_settings(settings=settings, side="gateway")
    assert refused.value.key == key


def test_the_entry_point_loads_the_plugin(tunvpn_session: Session) -> None:
    installed = {p.name: p for p in installed_plugins()}
    if NAME not in installed:
        pytest.skip(f"the entry point {NAME!r} is not installed: pip install -e . (README.md)")
    assert installed[NAME].module == "{{package}}.plugin"
    result = connect(tunvpn_session, "alice", {"users": ["alice"]}, plugins=(), plugin_names=[NAME])
    assert result.connected, result.failure
    assert GROUP in result.groups
    assert result.sas == {"intranet", "{{name}}-net"}
'''
