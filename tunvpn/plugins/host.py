"""The plugin host: loads the plugins a configuration names (entry points in the ``tunvpn``
group, built-in ones included) and calls their hooks (:mod:`tunvpn.plugins.hookspecs`) without
stalling the event loop. Also the types plugins receive and return.

``python -m tunvpn.plugins --markdown`` prints the hook reference (``docs/plugins.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import logging
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

import pluggy

from tunvpn.plugins import hookspecs

if TYPE_CHECKING:
    from tunvpn.ike.policies import ExtraProtocol, Phase2Policy

ENTRY_POINT_GROUP = "tunvpn"
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)
"""Mark a function as a hook implementation: ``@hookimpl def tunvpn_verify_credentials(...)``."""

XAUTH_FIELDS = ("user_name", "password", "passcode", "answer", "next_pin")


class PluginError(Exception):
    """A plugin cannot be loaded (not installed, broken entry point, unknown hook)."""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class CredentialRequest:
    """What a client answered in one XAUTH round (see ``tunvpn_verify_credentials``)."""

    user: str
    password: str | None = field(default=None, repr=False)
    passcode: str | None = field(default=None, repr=False)
    answer: str | None = field(default=None, repr=False)
    next_pin: str | None = field(default=None, repr=False)
    peer: tuple[str, int] = ("", 0)
    session_id: str = ""
    round: int = 1
    state: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    protocol: str | None = None
    """``None`` for the login (the XAUTH right after phase 1); else the name of the extra
    protocol the gateway announced in phase 1a and now runs (only the plugin of that name
    is asked)."""
    chap: tuple[int, bytes, bytes] | None = field(default=None, repr=False)
    """A CHAP answer instead of a password (RFC 1994; PPP inside L2TP, or an XAUTH RADIUS-CHAP
    login with ``xauth_chap = true``): the identifier,
    the challenge the gateway sent and the client's 16-octet MD5 response. A plugin that can
    check CHAP (it knows the cleartext password, or passes it on as RADIUS CHAP-Password)
    decides; others return ``None``."""
    via: str = "xauth"
    """How the credentials came: ``xauth`` (an XAUTH round on the ISAKMP SA) or the name of
    the protocol that carried them, e.g. ``ppp`` (PAP/CHAP of an L2TP session)."""


@dataclass(frozen=True)
class Verdict:
    """A plugin's answer to a :class:`CredentialRequest`; build it with the class methods."""

    outcome: str
    """"accept", "reject" or "challenge"."""
    message: str | None = None
    """Shown to the user (XAUTH-MESSAGE): the reason of a rejection, the challenge's prompt."""
    groups: tuple[str, ...] = ()
    """Accept: groups the user is put into, besides those of the gateway's ``[groups]``."""
    address: IPv4Address | None = None
    """Accept: the address the client gets instead of one from the pool."""
    fields: tuple[str, ...] = ()
    """Challenge: what to ask for (``answer``, ``passcode``, ``next_pin``, ``password``)."""
    routes: tuple[IPv4Network, ...] = ()
    """Accept: networks behind the client (RADIUS Framed-Route): the gateway adds, for each of
    the user's policies, one SA from each of these networks to the policy's network."""

    def __post_init__(self) -> None:
        if self.outcome not in ("accept", "reject", "challenge"):
            raise ValueError(f"verdict outcome {self.outcome!r}: accept, reject or challenge")
        unknown = [f for f in self.fields if f not in XAUTH_FIELDS]
        if unknown:
            raise ValueError(f"unknown XAUTH fields {unknown} (known: {', '.join(XAUTH_FIELDS)})")
        if self.outcome == "challenge" and not self.fields:
            raise ValueError("a challenge must ask for at least one field")

    @classmethod
    def accept(
        cls,
        *,
        groups: Iterable[str] = (),
        address: IPv4Address | str | None = None,
        routes: Iterable[IPv4Network | str] = (),
    ) -> Verdict:
        return cls(
            "accept",
            groups=tuple(groups),
            address=IPv4Address(address) if address else None,
            routes=tuple(IPv4Network(r, strict=False) for r in routes),
        )

    @classmethod
    def reject(cls, message: str = "user name or password not accepted") -> Verdict:
        return cls("reject", message=message)

    @classmethod
    def challenge(cls, message: str, fields: Sequence[str] = ("answer",)) -> Verdict:
        return cls("challenge", message=message, fields=tuple(fields))

    @property
    def accepted(self) -> bool:
        return self.outcome == "accept"


@dataclass(frozen=True)
class GatewayContext:
    """What the gateway offers every hook call (datasette-style: take it if you need it)."""

    users: Any = None
    """The ``users_file`` table (:class:`tunvpn.config.credentials.UserTable`), or None."""
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    """``[groups]`` of gateway.toml: group name -> its users."""
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    """``[plugin.NAME]`` tables of gateway.toml."""
    protocols: tuple[ExtraProtocol, ...] = ()
    """The ``[[protocol]]`` entries of gateway.toml, as configured (before any plugin added
    parameters to their announcement)."""
    verify: Callable[[CredentialRequest], Awaitable[Verdict]] | None = field(
        default=None, repr=False, compare=False
    )
    """Run a :class:`CredentialRequest` through the gateway's login plugins (as the XAUTH login
    is; with the same time limit), e.g. for the PAP or CHAP of a PPP session. ``None`` outside a
    running gateway."""

    def settings(self, name: str) -> dict[str, Any]:
        """The ``[plugin.NAME]`` table of gateway.toml (empty if there is none)."""
        return dict(self.plugin_settings.get(name, {}))


@dataclass(frozen=True)
class Authorization:
    """A plugin's answer to ``tunvpn_authorize``: what an authenticated user gets."""

    groups: tuple[str, ...] = ()
    """Groups the user is put into, besides those of ``[groups]`` and the login's verdict."""
    policies: tuple[Phase2Policy, ...] = ()
    """Per-user phase 2 policies, pushed after the group ones (names must not clash with them)."""
    address: IPv4Address | None = None
    """The client's address instead of one from the pool (overrides the login's)."""
    deny: str | None = None
    """Refuse the user after all, with this message (e.g. "account disabled")."""

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, IPv4Address):
            object.__setattr__(self, "address", IPv4Address(self.address))  # "10.0.0.5" is fine
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "policies", tuple(self.policies))


@dataclass(frozen=True)
class ProtocolAnnouncement:
    """A plugin's answer to ``tunvpn_announce_protocol``: how a protocol is announced in
    phase 1a, and the phase 2 policies the gateway accepts for it."""

    params: tuple[tuple[str, str], ...] = ()
    """Parameters added to the announcement (a key already configured is replaced), e.g.
    ``("exchange", "l2tp"), ("server", "10.1.0.1")``: what the client's plugin needs."""
    accept: tuple[Phase2Policy, ...] = ()
    """Phase 2 policies the gateway accepts in Quick Mode from a client it announced the
    protocol to, besides the pushed ones (they are not pushed as CFG_ sets: the client's plugin
    asks for them), e.g. the SA that protects UDP 1701 for L2TP."""


@dataclass(frozen=True)
class ClientSession:
    """What a client plugin's protocol gets when it runs (see ``tunvpn_client_protocol``)."""

    protocol: ExtraProtocol
    """The announcement: ``name`` and ``param(key)``."""
    gateway: str
    """The gateway's address (the IKE peer)."""
    address: IPv4Address | None
    """The client's address from Mode Config (the inner source of its SAs)."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    """The profile's password (``None`` if it has none: then ask with ``prompt``)."""
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    report: Callable[..., None] = field(default=lambda *a, **k: None, repr=False, compare=False)
    """``report(step, message, state=..., **details)``: a progress line of ``tunvpn connect``
    (and a JSON record with ``--json``)."""
    prompt: Callable[[str, bool], Awaitable[str]] | None = field(default=None, repr=False, compare=False)
    """``await prompt(text, secret)``: ask the user at the terminal (``None`` without one)."""

    def settings(self, name: str) -> dict[str, Any]:
        """The profile's ``[plugin.NAME]`` table (empty if there is none)."""
        return dict(self.plugin_settings.get(name, {}))


@dataclass(frozen=True)
class ClientProtocol:
    """A client plugin's answer to ``tunvpn_client_protocol``: it handles the announced protocol."""

    name: str
    policies: tuple[Phase2Policy, ...] = ()
    """Phase 2 policies the client adds to its Quick Mode set for this protocol."""
    run: Callable[[ClientSession], Awaitable[None]] | None = field(default=None, compare=False)
    """Started (as a task) once every SA of the Quick Mode set is up; runs until the client
    disconnects (it is then cancelled: clean up in ``finally``). What it raises ends the
    connection with its message."""


@dataclass(frozen=True)
class ClientQuestion:
    """What the gateway asks the client in an XAUTH round (see ``tunvpn_client_answer``)."""

    field: str
    message: str | None = None
    protocol: str | None = None
    user: str | None = None
    gateway: str = ""
    round: int = 1
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    def settings(self, name: str) -> dict[str, Any]:
        """The profile's ``[plugin.NAME]`` table (empty if there is none)."""
        return dict(self.plugin_settings.get(name, {}))


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class InstalledPlugin:
    """An entry point of the ``tunvpn`` group."""

    name: str
    module: str
    distribution: str
    version: str


def installed_plugins() -> list[InstalledPlugin]:
    """Every plugin installed in this Python environment, by name."""
    found: dict[str, InstalledPlugin] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(
            ep.name,
            InstalledPlugin(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            ),
        )
    return sorted(found.values(), key=lambda p: p.name)


OWN_PLUGINS: dict[str, str] = {"l2tp": "tunvpn-l2tp", "otp": "tunvpn-otp", "radius": "tunvpn-radius"}
"""The tunvpn project's own plugins (entry point name -> distribution): the only names a message
suggests a ``pip install`` for. Other names may come from a gateway (the protocols it
announces): printing ``pip install tunvpn-NAME`` for them would let a gateway choose a package
for the user to install."""


def install_advice(name: str, where: str = "plugins") -> str:
    """What to tell a user about a plugin ``name`` that is not loaded: ``pip install`` only for
    :data:`OWN_PLUGINS`, the name escaped (it may be a gateway's choice)."""
    from tunvpn.untrusted import quoted

    distribution = OWN_PLUGINS.get(name)
    if distribution is None:
        return (
            f"{quoted(name)} is not supported (not one of tunvpn's own plugins; the gateway's "
            "administrator knows which plugin provides it)"
        )
    return f"install the {distribution} plugin (pip install {distribution}) and name it in {where}"


def _entry_point(name: str) -> importlib.metadata.EntryPoint:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    from tunvpn.untrusted import quoted

    installed = ", ".join(p.name for p in installed_plugins()) or "none"
    known = OWN_PLUGINS.get(name)
    hint = f"pip install {known}" if known else "install the distribution that provides it"
    raise PluginError(f"plugin {quoted(name)} is not installed ({hint}); installed: {installed}")


# --------------------------------------------------------------------------- the host


class PluginHost:
    """The plugins of one gateway or client: a small typed facade over pluggy.

    :param names: entry point names to load, in order (later ones are asked first).
    :param objects: already imported plugins (modules or objects), e.g. in tests.
    """

    def __init__(self, names: Sequence[str] = (), objects: Sequence[object] = ()) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.names: list[str] = []
        for name in names:
            ep = _entry_point(name)
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} ({ep.value}) failed to import: {exc}") from exc
            self._register(plugin, name)
        for obj in objects:
            self._register(obj, getattr(obj, "__name__", type(obj).__name__))

    def _register(self, plugin: object, name: str) -> None:
        if name in self.names:
            raise PluginError(f"plugin {name!r} is loaded twice")
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r}: {exc}") from exc
        self.names.append(name)

    def __repr__(self) -> str:
        return f"PluginHost({self.names})"

    def implements(self, hook: str) -> bool:
        return bool(getattr(self._pm.hook, hook).get_hookimpls())

    def serves(self, name: str) -> bool:
        """A loaded plugin of this name decides credentials (it can run as an extra protocol)."""
        return any(
            impl.plugin_name == name for impl in self._pm.hook.tunvpn_verify_credentials.get_hookimpls()
        )

    async def verify_credentials(
        self, request: CredentialRequest, context: GatewayContext, *, skip: Iterable[str] = ()
    ) -> Verdict:
        """Ask the plugins in turn (a plugin returning None passes); none: rejected. For an
        extra protocol (``request.protocol``) only the plugin of that name is asked; ``skip``
        names plugins not to ask for the login (those that run as extra protocols)."""
        skipped = set(skip)
        for impl in reversed(self._pm.hook.tunvpn_verify_credentials.get_hookimpls()):
            if request.protocol is not None and impl.plugin_name != request.protocol:
                continue
            if request.protocol is None and impl.plugin_name in skipped:
                continue
            result = await _call(impl, request=request, context=context)
            if result is None:
                continue
            if not isinstance(result, Verdict):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_verify_credentials (expected a Verdict or None)"
                )
            return result
        return Verdict.reject()

    async def client_answer(self, question: ClientQuestion) -> str | None:
        """Ask the plugins in turn for an answer; ``None``: none had one (prompt the user)."""
        for impl in reversed(self._pm.hook.tunvpn_client_answer.get_hookimpls()):
            result = await _call(impl, question=question)
            if result is None:
                continue
            if not isinstance(result, str):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_client_answer (expected a str or None)"
                )
            return result
        return None

    def announce(self, protocol: ExtraProtocol, context: GatewayContext) -> ProtocolAnnouncement | None:
        """``tunvpn_announce_protocol`` for one configured protocol, asking only the plugin of
        that name (configuration time: a coroutine is not allowed here)."""
        for impl in reversed(self._pm.hook.tunvpn_announce_protocol.get_hookimpls()):
            if impl.plugin_name != protocol.name:
                continue
            wanted = {"protocol": protocol, "context": context}
            result = impl.function(**{k: v for k, v in wanted.items() if k in impl.argnames})
            if result is None:
                continue
            if not isinstance(result, ProtocolAnnouncement):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_announce_protocol (expected a ProtocolAnnouncement or None)"
                )
            return result
        return None

    def serve(self, context: GatewayContext) -> list[asyncio.Task[None]]:
        """Start every ``tunvpn_serve`` coroutine as a task (on the running loop). A task that
        ends by raising is logged once; the gateway goes on without it."""
        tasks = []
        for impl in reversed(self._pm.hook.tunvpn_serve.get_hookimpls()):
            if not inspect.iscoroutinefunction(impl.function):
                raise PluginError(f"plugin {impl.plugin_name!r}: tunvpn_serve must be an async def")
            coro = impl.function(**{k: v for k, v in {"context": context}.items() if k in impl.argnames})
            task = asyncio.get_running_loop().create_task(coro, name=f"{impl.plugin_name} service")
            task.add_done_callback(_service_done(impl.plugin_name))
            tasks.append(task)
        return tasks

    async def authorize(
        self, user: str, groups: frozenset[str], peer: tuple[str, int], context: GatewayContext
    ) -> Authorization | None:
        """The first plugin's ``tunvpn_authorize`` answer, or ``None``."""
        for impl in reversed(self._pm.hook.tunvpn_authorize.get_hookimpls()):
            result = await _call(impl, user=user, groups=groups, peer=peer, context=context)
            if result is None:
                continue
            if not isinstance(result, Authorization):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_authorize (expected an Authorization or None)"
                )
            return result
        return None

    async def client_protocol(
        self, protocol: ExtraProtocol, settings: dict[str, dict[str, Any]]
    ) -> ClientProtocol | None:
        """The plugin that handles an announced protocol on the client, or ``None``."""
        for impl in reversed(self._pm.hook.tunvpn_client_protocol.get_hookimpls()):
            result = await _call(impl, protocol=protocol, settings=settings)
            if result is None:
                continue
            if not isinstance(result, ClientProtocol):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} returned {type(result).__name__} from "
                    "tunvpn_client_protocol (expected a ClientProtocol or None)"
                )
            return result
        return None

    def broadcast(self, hook: str, **kwargs: object) -> asyncio.Task[None] | None:
        """Call every implementation of the broadcast ``hook`` without waiting (call it on the
        event loop): each runs as :func:`_call` does (a plain function in a thread), one after
        the other in a task, what one raises is logged and the next still runs. The task (or
        None when no plugin implements the hook), for whoever wants to wait for it."""
        impls = list(reversed(getattr(self._pm.hook, hook).get_hookimpls()))
        if not impls:
            return None

        async def run() -> None:
            for impl in impls:
                try:
                    await _call(impl, **kwargs)
                except Exception as exc:  # one plugin's failure is not the gateway's
                    logging.getLogger("tunvpn.plugins").error(
                        "plugin %r: %s failed: %s", impl.plugin_name, hook, exc
                    )

        return asyncio.get_running_loop().create_task(run(), name=f"{hook} broadcast")


def _service_done(name: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logging.getLogger("tunvpn.plugins").error("plugin %r: its service stopped: %s", name, exc)

    return done


async def _call(impl: pluggy.HookImpl, **kwargs: object) -> object:
    """One hook implementation: a coroutine function on the loop, anything else in a thread."""
    wanted = {name: kwargs[name] for name in impl.argnames if name in kwargs}
    function = impl.function
    if inspect.iscoroutinefunction(function):
        return await function(**wanted)
    result = await asyncio.to_thread(function, **wanted)
    if inspect.isawaitable(result):
        result = await result
    return result


# --------------------------------------------------------------------------- reference


def hook_reference() -> str:
    """``docs/plugins.md``'s hook reference, from the hookspec docstrings."""
    parts = [
        "<!-- generated by `python -m tunvpn.plugins --markdown` from tunvpn/plugins/hookspecs.py -->",
        "## Hook reference",
        "",
        textwrap.dedent(hookspecs.__doc__ or "").strip(),
        "",
    ]
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        opts = getattr(spec, f"{hookspecs.PROJECT}_spec", {})
        kind = "first result" if opts.get("firstresult") else "every plugin is called"
        args = ", ".join(inspect.signature(spec).parameters)
        parts += [
            f"### `{name}({args})`",
            "",
            f"*{kind}*",
            "",
            textwrap.dedent(spec.__doc__ or "").strip(),
            "",
        ]
    return "\n".join(parts)


def undocumented() -> list[str]:
    """Hooks without a docstring, or whose docstring lacks a ``:param NAME:`` per argument."""
    problems = []
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        doc = spec.__doc__ or ""
        if not doc.strip():
            problems.append(f"{name}: no docstring")
            continue
        for arg in inspect.signature(spec).parameters:
            if f":param {arg}:" not in doc:
                problems.append(f"{name}: argument {arg!r} is not documented")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunvpn.plugins")
    parser.add_argument("--markdown", action="store_true", help="print the hook reference")
    args = parser.parse_args(argv)
    if args.markdown:
        print(hook_reference())
        return 0
    for plugin in installed_plugins():
        print(f"{plugin.name}\t{plugin.distribution} {plugin.version}\t{plugin.module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
