"""The types tunvpn's hooks (:mod:`tunvpn.plugins.hookspecs`) receive and return: frozen
dataclasses, documented field by field (plugins import them from :mod:`tunvpn.plugins`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunvpn.ike.policies import ExtraProtocol, Phase2Policy

XAUTH_FIELDS = ("user_name", "password", "passcode", "answer", "next_pin")


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
    """The ``users_file`` table of gateway.toml, or ``None`` without one. ``user in
    context.users`` (is the user listed), ``context.users.check(user, password)`` (the password
    is right: constant-time, scrypt lines too) and ``context.users.check_chap(user, identifier,
    challenge, response)`` (an RFC 1994 CHAP-MD5 answer; false for scrypt lines, which keep no
    clear password). ``len(context.users)`` counts the users; nothing else is public."""
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
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Seconds since the epoch, as :func:`time.time`: read the time through :meth:`now` (or
    this) rather than the ``time`` module, so a test sets it (``tunvpn.testing``'s ``now=``)."""

    def settings(self, name: str) -> dict[str, Any]:
        """The ``[plugin.NAME]`` table of gateway.toml (empty if there is none)."""
        return dict(self.plugin_settings.get(name, {}))

    def now(self, tz: tzinfo | None = None) -> datetime:
        """The current time from :attr:`clock`: aware, in ``tz`` (default: the gateway's local
        time zone), e.g. ``context.now().hour`` for a plugin that allows logins by the hour."""
        moment = datetime.fromtimestamp(self.clock(), tz)
        return moment if tz is not None else moment.astimezone()


class SettingError(ValueError):
    """Raise it from ``tunvpn_check_settings`` for a bad value in the plugin's own table: the
    gateway (or client) then refuses to start, and a reload keeps the running configuration,
    with a message naming the file, line, plugin and key, like its own settings' errors.

    :param key: the key in ``[plugin.NAME]`` (dotted for a nested one: ``servers.0.port``), or
        ``""`` for the table as a whole.
    :param message: what is wrong and what is expected ("expected HH:MM-HH:MM").
    :param value: the value to show in the message; leave it out for a secret.
    """

    def __init__(self, key: str, message: str, *, value: object = ...) -> None:
        self.key = key
        self.message = message
        self.value = value
        """The value to show, or ``...`` (Ellipsis) when it is not to be shown."""
        super().__init__(f"{key}: {message}" if key else message)


@dataclass(frozen=True)
class Authorization:
    """A plugin's answer to ``tunvpn_authorize``: what an authenticated user gets."""

    groups: tuple[str, ...] = ()
    """Groups *added*: the user keeps those of ``[groups]`` and of the login's verdict, and gets
    these and every other plugin's (a union; nothing removes a group)."""
    policies: tuple[Phase2Policy, ...] = ()
    """Per-user phase 2 policies, pushed after the group ones. Every plugin's are kept; a name
    that a group policy or an earlier plugin's policy already has is dropped (logged)."""
    address: IPv4Address | None = None
    """The client's address instead of one from the pool (overrides the login's); when several
    plugins give one, the first plugin asked wins."""
    deny: str | None = None
    """Refuse the user after all, with this message (e.g. "account disabled"). Any plugin's
    refusal wins, whatever the order: the plugins after it are not asked."""

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, IPv4Address):
            object.__setattr__(self, "address", IPv4Address(self.address))  # "10.0.0.5" is fine
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "policies", tuple(self.policies))


def combine_authorizations(
    answers: Sequence[tuple[str, Authorization]],
) -> tuple[Authorization, tuple[str, ...]]:
    """The ``tunvpn_authorize`` answers of every plugin that gave one, as ``(plugin name,
    answer)`` in the order they were asked, merged into one: any ``deny`` wins (the first one's
    message); ``groups`` are the union; ``policies`` all of them, a name already taken by an
    earlier answer dropped; ``address`` the first given. Returns the answer and a line per
    dropped policy (for the log)."""
    for _, answer in answers:
        if answer.deny is not None:
            return Authorization(deny=answer.deny), ()
    groups: dict[str, None] = {}
    policies: dict[str, Phase2Policy] = {}
    dropped: list[str] = []
    address: IPv4Address | None = None
    for name, answer in answers:
        groups.update(dict.fromkeys(answer.groups))
        for policy in answer.policies:
            if policy.name in policies:
                dropped.append(
                    f"plugin {name!r}: policy {policy.name!r} is already given by an earlier plugin"
                )
            else:
                policies[policy.name] = policy
        if address is None:
            address = answer.address
    return Authorization(tuple(groups), tuple(policies.values()), address), tuple(dropped)


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
    # dataclasses.field: the name ``field`` is this class's first field
    plugin_settings: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    def settings(self, name: str) -> dict[str, Any]:
        """The profile's ``[plugin.NAME]`` table (empty if there is none)."""
        return dict(self.plugin_settings.get(name, {}))
