"""``tunvpn.testing``: run a real gateway and a real client in one process, over UDP on
loopback (127.0.0.1 and 127.0.0.2, no root, no TUN), with your plugin, and look at the
outcome. A pytest plugin (entry point ``pytest11``) gives the fixture ``tunvpn_session``::

    def test_my_plugin(tunvpn_session):
        result = tunvpn_session(plugins=[my_plugin], user="carol", password="c-pass", answers=["314159"])
        assert result.connected and "eng" in result.groups and "intranet" in result.sas

:func:`run_session` is the same for any test runner, :func:`session` its coroutine (for
``async`` tests). Everything here is the real engine, gateway and client; nothing is mocked.
The gateway's options are checked as gateway.toml's are (groups a policy names must be in
``groups`` or declared by a plugin; the pool must not overlap a policy's network; every
plugin's ``tunvpn_check_settings``): a mistake raises :class:`ConfigError` (importable from
here) with the same message. See ``docs/plugins.md``, "Testing a plugin".
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.config.credentials import UserTable
from tunvpn.config.errors import ConfigError
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import Gateway, GatewayOptions, SimpleRule
from tunvpn.ike.config import PskTable
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector

__all__ = [
    "CLIENT",
    "DEFAULT_POLICIES",
    "DEFAULT_POOL",
    "GATEWAY",
    "PSK",
    "ConfigError",
    "SessionResult",
    "connect",
    "free_port_pair",
    "loopback_available",
    "plugin_clock",
    "run_client",
    "run_session",
    "serve",
    "session",
    "stop",
    "tunvpn_session",
]

GATEWAY = "127.0.0.1"
"""The gateway's address."""
CLIENT = "127.0.0.2"
"""The client's address (Linux: all of 127/8 is local; macOS needs ``ifconfig lo0 alias 127.0.0.2``)."""
PSK = b"tunvpn-testing-psk"
"""The group pre-shared key both sides use."""
DEFAULT_POLICIES = (Phase2Policy("intranet", TrafficSelector.parse("10.78.0.0/24")),)
"""One policy for everyone: ``intranet``, 10.78.0.0/24 behind the gateway."""
DEFAULT_POOL = "10.79.0.10-10.79.0.50"
"""The clients' addresses (``pool=``): a policy's network must not overlap it."""


@dataclass(frozen=True)
class SessionResult:
    """What one connection attempt came to."""

    exit_code: int
    """The client's exit status: 0 connected (then disconnected), 1 a step failed."""
    records: list[dict[str, Any]]
    """The client's progress records (``tunvpn connect --json``), in order."""
    prompts: list[str]
    """What the client asked the user, in order."""
    gateway: Gateway = field(repr=False)
    """The gateway (stopped): ``gateway.options``, ``gateway.plugins``, ``gateway.status()``."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """The gateway's events (``tunvpn events --json``: ``login``, ``login-failed``, ``sa-up``, ...)."""

    @property
    def groups(self) -> frozenset[str]:
        """The groups the gateway put the user in (``[groups]``, the login's verdict, every
        plugin's ``tunvpn_authorize``); empty when the login did not complete."""
        login = self._login()
        return frozenset(login.get("groups", ())) if login else frozenset()

    @property
    def policies(self) -> tuple[str, ...]:
        """Names of the phase 2 policies the gateway gave the user, in order (the group ones,
        then the per-user ones of ``tunvpn_authorize``)."""
        login = self._login()
        return tuple(login.get("policies", ())) if login else ()

    @property
    def refusal(self) -> str | None:
        """Why the gateway refused the login after phase 1 (its ``login-failed`` reason), if it did."""
        failed = [e for e in self.events if e["event"] == "login-failed"]
        return failed[-1].get("reason") if failed else None

    def _login(self) -> dict[str, Any] | None:
        logins = [e for e in self.events if e["event"] == "login"]
        return logins[-1] if logins else None

    @property
    def connected(self) -> bool:
        return self.exit_code == 0

    @property
    def sas(self) -> set[str]:
        """Names of the phase 2 policies whose Quick Mode SA was established."""
        return {r["name"] for r in self.records if r["event"] == "quick" and r["state"] == "established"}

    @property
    def address(self) -> str | None:
        """The address the client got in Mode Config (from the pool, or a plugin's)."""
        for r in self.records:
            if r["event"] == "modecfg" and r["state"] == "received":
                return r.get("address")
        return None

    @property
    def failure(self) -> str | None:
        """The message of the step that failed, if one did."""
        failed = [r for r in self.records if r.get("state") == "failed"]
        return failed[-1]["message"] if failed else None


def loopback_available() -> bool:
    """127.0.0.2 is usable (Linux: all of 127/8 is local; macOS needs an alias)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((CLIENT, 0))
    except OSError:
        return False
    return True


def free_port_pair() -> tuple[int, int]:
    """Two consecutive UDP ports (IKE, NAT-T) free on both loopback addresses."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((GATEWAY, 0))
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        held = []
        try:
            for ip in (GATEWAY, CLIENT):
                for p in (port, port + 1):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    held.append(s)
                    s.bind((ip, p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return port, port + 1
    raise RuntimeError("no two consecutive free UDP ports on loopback")


async def serve(options: GatewayOptions) -> tuple[Gateway, asyncio.Future[None]]:
    """Start a gateway in the running loop; return it once it listens, with the task that runs
    it (give both to :func:`stop`)."""
    gateway = Gateway(options)
    ready = asyncio.Event()
    server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
    await asyncio.wait_for(ready.wait(), 5)
    return gateway, server


async def stop(gateway: Gateway, server: asyncio.Future[None], timeout: float = 20.0) -> None:
    """Stop a gateway started by :func:`serve` and wait until it has ended."""
    gateway.stop()
    await asyncio.wait_for(server, timeout)


async def run_client(
    options: ClientOptions,
    local: str = CLIENT,
    *,
    ask_password: Callable[[str], str] | None = None,
    timeout: float = 30.0,
) -> tuple[Client, list[dict[str, Any]]]:
    """Run one client from the address ``local`` until it ends; return it with its progress
    records (``tunvpn connect --json``). ``client.result`` is its exit status."""
    out = io.StringIO()
    client = Client(options, local, progress=Progress(json_lines=True, out=out), ask_password=ask_password)
    await asyncio.wait_for(client.run(handle_signals=False), timeout)
    return client, [json.loads(line) for line in out.getvalue().splitlines()]


async def connect(
    gateway_options: GatewayOptions,
    client_options: ClientOptions,
    *,
    on_ready: Callable[[Gateway], None] | None = None,
    ask_password: Callable[[str], str] | None = None,
    client_timeout: float = 30.0,
) -> tuple[Client, Gateway, list[dict[str, Any]]]:
    """Run a gateway and one client (from :data:`CLIENT`) until the client ends, then stop the
    gateway. ``on_ready`` sees the gateway once it listens, before the client starts."""
    gateway, server = await serve(gateway_options)
    if on_ready is not None:
        on_ready(gateway)
    try:
        client, records = await run_client(client_options, ask_password=ask_password, timeout=client_timeout)
    finally:
        await stop(gateway, server)
    return client, gateway, records


def run_session(
    *,
    user: str,
    password: str | None = None,
    answers: Iterable[str] = (),
    plugins: Sequence[object] | Mapping[str, object] = (),
    plugin_names: Sequence[str] = (),
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    users: Mapping[str, str] | None = None,
    groups: Mapping[str, Iterable[str]] | None = None,
    policies: Sequence[Phase2Policy | tuple[Phase2Policy, Sequence[str]]] = DEFAULT_POLICIES,
    protocols: Sequence[ExtraProtocol] = (),
    client_plugins: Sequence[object] = (),
    client_plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    pool: str = DEFAULT_POOL,
    now: datetime | Callable[[], datetime] | None = None,
    timeout: float = 30.0,
) -> SessionResult:
    """Start a gateway with your plugins, connect one client as ``user``, wait until its SAs
    are up (then it disconnects) or it failed, stop the gateway, and return what happened.
    Not for a running event loop: an ``async`` test awaits :func:`session` (same keywords).

    :param user: the client's XAUTH user name.
    :param password: answers the first XAUTH round (``None``: the client asks, and ``answers``
        gives it).
    :param answers: each later prompt of the client (a challenge, an extra protocol's round)
        takes the next of these; a prompt with none left fails the client.
    :param plugins: plugin objects (modules, instances) the gateway loads, asked first; a
        mapping ``{name: plugin}`` names them (for ``plugin_settings``, messages and order),
        else a module is named by its ``__name__`` (``my_package.plugin``).
    :param plugin_names: plugins the gateway loads by entry point name (as ``plugins = [...]``
        of gateway.toml: the distribution must be installed), asked after ``plugins`` in
        reverse order (the last named first).
    :param plugin_settings: the ``[plugin.NAME]`` tables, by plugin name (for objects, the
        name is the module's ``__name__``, or the class name of an instance).
    :param users: a users file (``{user: password}``): enables the built-in ``users-file``
        plugin, asked last, and ``GatewayContext.users``.
    :param groups: ``[groups]``: group name -> its users. A group only a plugin fills is
        declared by the plugin (``tunvpn_declare_groups``) or given here with no users.
    :param policies: the phase 2 policies: a :class:`Phase2Policy` for everyone, or
        ``(policy, groups)`` for members of those groups (as ``[[policy]] groups``). Default:
        :data:`DEFAULT_POLICIES`.
    :param protocols: extra protocols announced in phase 1a (``[[protocol]]``); the plugin of
        the same name runs each.
    :param client_plugins: plugin objects the client loads (``tunvpn_client_answer``,
        ``tunvpn_client_protocol``).
    :param client_plugin_settings: the client profile's ``[plugin.NAME]`` tables.
    :param pool: the clients' addresses (default :data:`DEFAULT_POOL`).
    :param now: the time plugins see (``GatewayContext.now()``/``clock``): a fixed
        :class:`datetime` (naive: local time) or a function returning one. The engine keeps
        the real clock.
    :param timeout: seconds the client may take.
    :raises tunvpn.config.errors.ConfigError: the gateway's options are wrong (as gateway.toml
        would be: an undefined group, the pool overlapping a policy, a plugin's settings).
    """
    return asyncio.run(
        session(
            user=user,
            password=password,
            answers=answers,
            plugins=plugins,
            plugin_names=plugin_names,
            plugin_settings=plugin_settings,
            users=users,
            groups=groups,
            policies=policies,
            protocols=protocols,
            client_plugins=client_plugins,
            client_plugin_settings=client_plugin_settings,
            pool=pool,
            now=now,
            timeout=timeout,
        )
    )


def plugin_clock(now: datetime | Callable[[], datetime]) -> Callable[[], float]:
    """A ``GatewayContext.clock`` from ``now=`` (a fixed datetime, or a function giving one)."""
    if isinstance(now, datetime):
        moment = now.timestamp()
        return lambda: moment
    return lambda: now().timestamp()


async def session(
    *,
    user: str,
    password: str | None = None,
    answers: Iterable[str] = (),
    plugins: Sequence[object] | Mapping[str, object] = (),
    plugin_names: Sequence[str] = (),
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    users: Mapping[str, str] | None = None,
    groups: Mapping[str, Iterable[str]] | None = None,
    policies: Sequence[Phase2Policy | tuple[Phase2Policy, Sequence[str]]] = DEFAULT_POLICIES,
    protocols: Sequence[ExtraProtocol] = (),
    client_plugins: Sequence[object] = (),
    client_plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    pool: str = DEFAULT_POOL,
    now: datetime | Callable[[], datetime] | None = None,
    timeout: float = 30.0,
) -> SessionResult:
    """:func:`run_session` as a coroutine, for a test that already runs an event loop
    (``pytest-asyncio``, ``anyio``): ``result = await session(user=..., ...)``."""
    pending = list(answers)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if not pending:
            raise EOFError(f"the test gave no answer for {prompt!r}")
        return pending.pop(0)

    rules = tuple(
        SimpleRule(p) if isinstance(p, Phase2Policy) else SimpleRule(p[0], groups=tuple(p[1]))
        for p in policies
    )
    ike, natt = free_port_pair()
    gateway_options = GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        users=UserTable({u: p.encode() for u, p in users.items()}) if users else None,
        require_xauth=True,
        pool=AddressPool.parse(pool),
        rules=rules,
        groups={g: frozenset(m) for g, m in (groups or {}).items()},
        protocols=tuple(protocols),
        plugins=tuple(plugin_names),
        plugin_settings=dict(plugin_settings or {}),
        plugin_objects=tuple(plugins.items()) if isinstance(plugins, Mapping) else tuple(plugins),
        plugin_clock=plugin_clock(now) if now is not None else None,
    )
    options = ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user=user,
        password=password,
        timeout=timeout,
        exit_after_established=True,
    )
    options = dataclasses.replace(
        options,
        password_prompt=True,
        plugin_objects=tuple(client_plugins),
        plugin_settings=dict(client_plugin_settings or {}),
    )
    events: list[dict[str, Any]] = []

    def watch(gateway: Gateway) -> None:
        gateway.events.listeners.append(lambda event: events.append(event.record()))

    client, gateway, records = await connect(
        gateway_options, options, on_ready=watch, ask_password=ask, client_timeout=timeout + 5
    )
    assert client.result is not None
    return SessionResult(client.result, records, prompts, gateway, events)


# --------------------------------------------------------------------------- pytest plugin


def _fixture() -> Any:
    import pytest

    @pytest.fixture
    def tunvpn_session() -> Any:
        """:func:`tunvpn.testing.run_session`; skips where 127.0.0.2 cannot be bound."""
        if not loopback_available():
            pytest.skip("127.0.0.2 is not usable on this host")
        return run_session

    return tunvpn_session


try:  # the module is also imported outside pytest
    tunvpn_session = _fixture()
except ImportError:  # pragma: no cover - pytest not installed
    pass
