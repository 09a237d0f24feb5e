"""``tunvpn.testing``: run a real gateway and a real client in one process, over UDP on
loopback (127.0.0.1 and 127.0.0.2, no root, no TUN), with your plugin, and look at the
outcome. A pytest plugin (entry point ``pytest11``) gives the fixture ``tunvpn_session``::

    def test_my_plugin(tunvpn_session):
        result = tunvpn_session(plugins=[my_plugin], user="carol", password="c-pass", answers=["314159"])
        assert result.connected and "eng" in result.sas

Everything here is the real engine, gateway and client; nothing is mocked. See
``docs/plugins.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.config.credentials import UserTable
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import Gateway, GatewayOptions, SimpleRule
from tunvpn.ike.config import PskTable
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector

GATEWAY = "127.0.0.1"
CLIENT = "127.0.0.2"
PSK = b"tunvpn-testing-psk"
DEFAULT_POLICIES = (Phase2Policy("intranet", TrafficSelector.parse("10.78.0.0/24")),)


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

    @property
    def connected(self) -> bool:
        return self.exit_code == 0

    @property
    def sas(self) -> set[str]:
        """Names of the phase 2 policies whose Quick Mode SA was established."""
        return {r["name"] for r in self.records if r["event"] == "quick" and r["state"] == "established"}

    @property
    def address(self) -> str | None:
        """The address the client got in Mode Config."""
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
    plugins: Sequence[object] = (),
    plugin_names: Sequence[str] = (),
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    users: Mapping[str, str] | None = None,
    groups: Mapping[str, Iterable[str]] | None = None,
    policies: Sequence[Phase2Policy | tuple[Phase2Policy, Sequence[str]]] = DEFAULT_POLICIES,
    protocols: Sequence[ExtraProtocol] = (),
    client_plugins: Sequence[object] = (),
    timeout: float = 30.0,
) -> SessionResult:
    """Start a gateway with ``plugins`` (objects) and ``plugin_names`` (entry points), connect
    a client as ``user`` (``password`` answers the first XAUTH round; each later prompt takes
    the next of ``answers``), wait until its SAs are up or it failed, and stop both.

    ``users``: a users file (``user: password``), enabling the built-in users-file plugin;
    ``policies``: phase 2 policies, plain (for everyone) or ``(policy, groups)``;
    ``protocols``: extra protocols announced in phase 1a (a plugin of the same name runs them);
    ``client_plugins``: plugin objects the client loads (``tunvpn_client_answer``,
    ``tunvpn_client_protocol``).
    """
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

    async def scenario() -> tuple[int, list[dict[str, Any]], Gateway]:
        ike, natt = free_port_pair()
        gateway_options = GatewayOptions(
            listen=GATEWAY,
            psks=PskTable({"*": PSK}),
            ike_port=ike,
            natt_port=natt,
            users=UserTable({u: p.encode() for u, p in users.items()}) if users else None,
            require_xauth=True,
            pool=AddressPool.parse("10.79.0.10-10.79.0.50"),
            rules=rules,
            groups={g: frozenset(m) for g, m in (groups or {}).items()},
            protocols=tuple(protocols),
            plugins=tuple(plugin_names),
            plugin_settings=dict(plugin_settings or {}),
            plugin_objects=tuple(plugins),
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
        options = dataclasses.replace(options, password_prompt=True, plugin_objects=tuple(client_plugins))
        client, gateway, records = await connect(
            gateway_options, options, ask_password=ask, client_timeout=timeout + 5
        )
        assert client.result is not None
        return client.result, records, gateway

    code, records, gateway = asyncio.run(scenario())
    return SessionResult(code, records, prompts, gateway)


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
