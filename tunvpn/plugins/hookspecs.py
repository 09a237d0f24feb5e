"""The hooks a tunvpn plugin can implement. Each docstring here *is* the plugin reference:
``docs/plugins.md`` is generated from this module (``python -m tunvpn.plugins --markdown``) and
a test fails when a hook or one of its arguments is undocumented, or when the page is stale.

A plugin is a module (or object) with functions named like these hooks and marked with
``tunvpn.plugins.hookimpl``, published through an entry point in the ``tunvpn`` group::

    # pyproject.toml of a plugin distribution
    [project.entry-points.tunvpn]
    my-plugin = "my_package.plugin"

The gateway loads only the plugins its configuration names (``plugins = ["my-plugin"]`` in
``gateway.toml``); a named plugin that is not installed is a startup error. Hooks are always
called with keyword arguments, so a hook implementation may accept only the arguments it
needs. A hook may be a plain function (it then runs in a worker thread, so a blocking call to
a RADIUS server or a database does not stall the gateway) or an ``async def`` coroutine (it
then runs on the gateway's event loop and must not block).

How a hook combines the plugins' answers is said under its name (:data:`HOW_CALLED`):

* *first result*: plugins are asked in turn until one returns something other than ``None``;
  return ``None`` to let the next plugin decide (``tunvpn_verify_credentials``: the plugin
  that knows the user decides; a refusal belongs in ``tunvpn_authorize``);
* *all results, combined*: every plugin is asked and the answers are merged
  (``tunvpn_authorize``: groups and policies add up, any refusal wins whatever the order;
  ``tunvpn_declare_groups``: the union);
* *every plugin is called*: notifications and services; results are ignored.

**Order.** Plugins are asked in this order: those whose implementation is marked
``@hookimpl(tryfirst=True)``; then the others, the last loaded first, that is, the last named
in ``plugins = [...]`` first, plugins passed as objects (tests) before all named ones, and the
built-in ``users-file`` last of all; then those marked ``@hookimpl(trylast=True)``. So an
admin orders login sources by their place in ``plugins``, and a plugin author who must come
first or last whatever the configuration says marks the hook. ``tunvpn plugins -c
gateway.toml`` and ``tunvpn gateway --check`` print the order for every hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Iterable

    from tunvpn.ike.policies import ExtraProtocol
    from tunvpn.plugins.accounting import AccountingRecord
    from tunvpn.plugins.types import (
        Authorization,
        ClientProtocol,
        ClientQuestion,
        CredentialRequest,
        GatewayContext,
        ProtocolAnnouncement,
        Verdict,
    )

PROJECT = "tunvpn"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec(firstresult=True)
def tunvpn_verify_credentials(
    request: CredentialRequest, context: GatewayContext
) -> Verdict | Awaitable[Verdict | None] | None:
    """Gateway: decide on the credentials a client sent in XAUTH (first result wins: the
    plugin that knows the user decides; a plugin that must refuse users another plugin
    accepted does it in ``tunvpn_authorize``, where every plugin is asked).

    Called once for every XAUTH answer of a client: the user name and password (or passcode)
    of the first round, and the answer of every later round that a plugin asked for with
    :meth:`Verdict.challenge` (the request then carries the same ``session_id`` and the
    ``round`` number, and ``state`` holds what the plugin stored in it in earlier rounds).

    :param request: a :class:`tunvpn.plugins.CredentialRequest`: ``user``, ``password``,
        ``passcode``, ``answer``, ``next_pin`` (secrets: never log them), ``peer`` (the
        client's address and port), ``session_id`` (stable for one ISAKMP SA), ``round``
        (1 for the first answer), ``state`` (a dict kept for the session's rounds, for the
        plugin's own use).
    :param context: a :class:`tunvpn.plugins.GatewayContext`: the gateway's ``users`` table
        (from ``users_file``, or ``None``), its ``groups`` and ``settings(name)``, the
        ``[plugin.NAME]`` table of ``gateway.toml`` for a plugin's own settings.
    :return: :meth:`Verdict.accept` (optionally with ``groups`` the user is put into, e.g.
        from a RADIUS Class attribute, an ``address`` for the client, and ``routes``: networks
        behind the client, e.g. RADIUS Framed-Route, each of which gets an SA to each of the
        user's networks; the default route, the pool and protected networks are refused and
        logged), :meth:`Verdict.reject`
        with a ``message`` shown to the user, :meth:`Verdict.challenge` to ask the client
        again (a ``message`` such as "Enter the next tokencode", and the ``fields`` to ask
        for), or ``None``: this plugin does not know the user; the next one decides. When
        every plugin returns ``None`` the client is rejected.
    """


@hookspec
def tunvpn_authorize(
    user: str, groups: frozenset[str], peer: tuple[str, int], context: GatewayContext
) -> Authorization | Awaitable[Authorization | None] | None:
    """Gateway: what an authenticated user gets (all results, combined; any refusal wins).

    Called once per ISAKMP SA after the XAUTH login (and its challenge rounds) accepted the
    user, before Mode Config: a directory (LDAP, a database) adds groups, gives per-user
    phase 2 policies or a fixed address, or refuses a disabled account, a user outside office
    hours. Authentication stays in ``tunvpn_verify_credentials``; this hook decides what an
    authenticated user may have, and is where a plugin vetoes a login another plugin accepted.
    Every plugin is asked, in the documented order, and the answers are merged: the groups of
    all answers are added (a union: nothing removes a group), all per-user policies are kept
    (a name an earlier answer or a group policy already has is dropped and logged), the first
    answer with an ``address`` gives it, and **any** ``deny`` refuses the user whatever the
    order (the plugins after it are not asked). A plugin that raises, or all of them taking
    longer than 30 s, refuses the user.

    :param user: the authenticated user name.
    :param groups: the groups the user is in so far (``[groups]`` of gateway.toml and the
        login verdict's; not the other plugins' answers to this hook).
    :param peer: the client's address and port.
    :param context: the :class:`tunvpn.plugins.GatewayContext` (``context.now()`` for the
        time: tests set it).
    :return: a :class:`tunvpn.plugins.Authorization` (``groups`` to add, per-user
        ``policies``, an ``address``, or ``deny`` with a message for the user), or ``None``
        to add nothing.
    """


@hookspec
def tunvpn_check_settings(settings: dict[str, Any], side: str, context: GatewayContext | None) -> None:
    """Gateway and client: check the plugin's own settings before they are used (every plugin
    is called, each with its own table).

    Called when the gateway starts, on every reload (with the new tables, before anything
    changes), by ``tunvpn gateway --check`` and ``tunvpn plugins -c gateway.toml``; on the
    client when it loads its profile (``tunvpn connect``, ``--check``). Raise
    :class:`tunvpn.plugins.SettingError` (``key``, ``message``, optionally ``value``) for a
    bad value: the gateway does not start (exit 2) and a reload keeps the running
    configuration, with a message naming the file, the line, the plugin, the key and the value,
    as for tunvpn's own settings (``gateway.toml line 21, key plugin.timewindow.window: [plugin.timewindow]
    window = '8-18': expected HH:MM-HH:MM (plugin 'timewindow')``). Any other exception is
    reported the same way, without a key. Must not block for long and must not be a
    coroutine: it runs at configuration time. A check that needs a server (reachability) does
    not belong here: the server may come up later.

    :param settings: the plugin's ``[plugin.NAME]`` table (a copy; empty when there is none),
        ``*_file`` paths already made absolute.
    :param side: ``"gateway"`` (gateway.toml) or ``"client"`` (the profile).
    :param context: on the gateway, the :class:`tunvpn.plugins.GatewayContext` of the
        configuration being checked (its ``groups``, ``users``); ``None`` on the client.
    :return: nothing; raise to refuse.
    """


@hookspec
def tunvpn_declare_groups(settings: dict[str, Any], context: GatewayContext) -> Iterable[str] | None:
    """Gateway: the groups this plugin may put users into (all results, combined: the union).

    A ``[[policy]]``, ``[[peering]]`` or ``[[site]]`` of gateway.toml may name a group only if
    ``[groups]`` defines it or a loaded plugin declares it here, so a typo in a group name is a
    startup error, not a policy nobody ever gets. Declare the groups your
    ``tunvpn_verify_credentials`` or ``tunvpn_authorize`` gives (``Verdict.accept(groups=...)``,
    ``Authorization(groups=...)``), e.g. from your settings. A group filled by a plugin that
    cannot know its names in advance (RADIUS ``Class``) is declared by the admin instead, as an
    empty group: ``[groups] daytime = []``. Called at start, on reload and by the checks, after
    ``tunvpn_check_settings``.

    :param settings: the plugin's ``[plugin.NAME]`` table (a copy; empty when there is none).
    :param context: the :class:`tunvpn.plugins.GatewayContext` of the configuration.
    :return: group names (any iterable of ``str``), or ``None`` for none.
    """


@hookspec
def tunvpn_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Command line: add sub-commands to ``tunvpn`` (every plugin is called).

    Called while ``tunvpn`` builds its argument parser, for every *installed* plugin (entry
    points of the ``tunvpn`` group; a configuration is not needed), so keep the module cheap to
    import and import heavy things inside the command. A plugin that fails to import or raises
    here is logged and skipped: it cannot break ``tunvpn --help`` or the other commands.

    Add a parser with ``subparsers.add_parser("NAME", help=...)`` (name it after the plugin,
    e.g. ``tunvpn otp enroll USER``) and give it the function that runs it with
    ``parser.set_defaults(handler=function)``: ``tunvpn`` calls ``function(args)`` with the
    parsed :class:`argparse.Namespace` and exits with the ``int`` it returns.

    :param subparsers: the object ``argparse.ArgumentParser.add_subparsers()`` returned for
        ``tunvpn``'s commands; a name already taken (by tunvpn or another plugin) is an error
        of that plugin, which is then skipped.
    :return: nothing (the result is ignored).
    """


@hookspec
def tunvpn_accounting(record: AccountingRecord, context: GatewayContext) -> None:
    """Gateway: a client's session started, is still up (interim), or ended (every plugin is called).

    For RADIUS accounting (Accounting-Request Start, Interim-Update, Stop), a database or a log.
    The gateway calls it without waiting: a plain function runs in a worker thread, so a slow
    or dead server delays nothing; what it raises is logged and ignored. ``start`` comes once
    Mode Config gave the client its address, ``interim`` every ``accounting_interval``
    seconds of gateway.toml (none when it is 0, the default), ``stop`` when the ISAKMP SA goes (deleted by the
    client, dead peer, expired, gateway shutting down); each session that had a ``start`` gets
    exactly one ``stop``.

    :param record: a :class:`tunvpn.plugins.accounting.AccountingRecord`: ``kind`` ("start",
        "interim" or "stop"), ``session_id`` (the ``CredentialRequest.session_id`` of the
        session's XAUTH, so a plugin can match the two), ``user`` (``None`` without XAUTH),
        ``peer`` (the client's address and port), ``address`` (the address it was given, or
        ``None``), ``bytes_in``, ``bytes_out``, ``packets_in``, ``packets_out`` (ESP payload
        through the gateway's data path, summed over the session's IPsec SAs, rekeyed and
        deleted ones included; 0 without a data path; "in" is from the client), ``seconds``
        (since the start), ``reason`` (a stop's cause: "deleted by peer", "dead peer",
        "expired", "gateway shutting down", ...) and ``by_peer`` (the client ended it).
    :param context: the :class:`tunvpn.plugins.GatewayContext`, as for
        ``tunvpn_verify_credentials`` (``settings(name)`` for the plugin's own table).
    :return: nothing (results are ignored).
    """


@hookspec
def tunvpn_accounting_onoff(kind: str, context: GatewayContext) -> None:
    """Gateway: the gateway as a whole starts or stops serving (every plugin is called).

    RADIUS Accounting-On and Accounting-Off (RFC 2866 Acct-Status-Type 7 and 8): ``on`` once
    the gateway is about to serve, after a start of any kind (also after a crash, which sent
    no ``stop`` for the sessions it had), so a server closes the sessions it still holds open
    for this gateway and frees their addresses (FreeRADIUS's ``sql`` and ``sqlippool``
    modules do). The gateway waits for the ``on`` calls (at most 10 s) before it reports
    ready; a login of the new run needs a phase 1 exchange first, so its RADIUS request comes
    after the ``on`` (a server that clears leases by NAS would otherwise clear the new one
    too). ``off`` on a clean stop, after the
    ``stop`` record of every session was given to ``tunvpn_accounting``; the gateway waits
    for it too (within its stop grace time). A reload calls neither. A plain function runs in
    a worker thread; what it raises is logged and ignored.

    :param kind: ``"on"`` (starting) or ``"off"`` (stopping cleanly).
    :param context: the :class:`tunvpn.plugins.GatewayContext` (``settings(name)`` for the
        plugin's own table).
    :return: nothing (results are ignored).
    """


@hookspec(firstresult=True)
def tunvpn_client_answer(question: ClientQuestion) -> str | Awaitable[str | None] | None:
    """Client: answer what the gateway asks in an XAUTH round before the user is prompted
    (first result wins).

    Asked for each secret field of a round that the client cannot answer from its profile:
    the rounds of an extra protocol the gateway announced in phase 1a (``question.protocol``
    is its name, e.g. "otp"), and challenges (next tokencode, new PIN, a RADIUS
    Access-Challenge). A soft token, a hardware key or a password manager answers here.
    The client loads the plugins its profile names (``plugins = [...]`` in the profile).

    :param question: a :class:`tunvpn.plugins.ClientQuestion`: ``field`` (``password``,
        ``passcode``, ``answer`` or ``next_pin``), ``message`` (the gateway's XAUTH-MESSAGE
        prompt, or ``None``), ``protocol`` (the announced protocol's name, or ``None`` for
        the login and its challenges), ``user``, ``gateway`` (its address), ``round`` (1 for
        the first request of this XAUTH or protocol), and ``settings(name)``: the profile's
        ``[plugin.NAME]`` table.
    :return: the answer (never logged), or ``None`` to let the next plugin, then the user
        at a prompt, answer.
    """


@hookspec(firstresult=True)
def tunvpn_announce_protocol(protocol: ExtraProtocol, context: GatewayContext) -> ProtocolAnnouncement | None:
    """Gateway: how an extra protocol of ``gateway.toml`` is announced in phase 1a (first
    result; only the plugin named like the protocol is asked).

    Called when the gateway starts and on every reload, for each ``[[protocol]]`` whose
    ``name`` is a loaded plugin; must not block (it runs on the event loop) and must not be a
    coroutine. A protocol that a plugin decides through ``tunvpn_verify_credentials`` and does
    not announce here runs as XAUTH rounds after Mode Config (``exchange=xauth``); one that
    runs its own exchange after Quick Mode (L2TP) says so with an ``exchange`` parameter and
    lists the phase 2 policies its client will ask for, so the gateway accepts them.

    :param protocol: the configured :class:`tunvpn.ike.policies.ExtraProtocol`: ``name`` and
        the ``[[protocol]]`` table's other keys as ``params`` (``param(key)`` reads one).
    :param context: the :class:`tunvpn.plugins.GatewayContext` (``settings(name)`` is the
        plugin's ``[plugin.NAME]`` table).
    :return: a :class:`tunvpn.plugins.ProtocolAnnouncement` (``params`` added to the
        announcement, ``accept``: phase 2 policies to accept for it), or ``None`` to announce
        the protocol as configured. A plugin that raises here fails the start (or the reload,
        which then keeps the running configuration) with its message.
    """


@hookspec
def tunvpn_serve(context: GatewayContext) -> Awaitable[None] | None:
    """Gateway: a service that runs as long as the gateway does (every plugin is called).

    Must be an ``async def``: it is started as a task on the gateway's event loop once the
    gateway listens, and cancelled when it stops (clean up in ``finally``: close sockets,
    tell peers). A reload that changes the ``[plugin.NAME]`` tables or the ``[[protocol]]``
    list cancels it and starts it again with the new context. An L2TP network server (LNS)
    runs here. What it raises is logged once and ends only that service, not the gateway.

    :param context: the :class:`tunvpn.plugins.GatewayContext`; ``context.verify(request)``
        runs a :class:`tunvpn.plugins.CredentialRequest` (a password, or a ``chap`` answer)
        through the gateway's login plugins, and ``context.protocols`` holds the configured
        ``[[protocol]]`` entries.
    :return: nothing (a coroutine that runs until cancelled).
    """


@hookspec(firstresult=True)
def tunvpn_client_protocol(
    protocol: ExtraProtocol, settings: dict[str, dict[str, Any]]
) -> ClientProtocol | Awaitable[ClientProtocol | None] | None:
    """Client: handle an extra protocol the gateway announced that is not an XAUTH round
    (first result wins).

    Called once per announced protocol with an ``exchange`` other than ``xauth`` (for
    example ``exchange=l2tp``), after Mode Config and before Quick Mode. Without a plugin
    that handles it the client stops with a message naming the ``tunvpn-NAME`` distribution
    to install. The client loads the plugins its profile names (``plugins = [...]``).

    :param protocol: the announced :class:`tunvpn.ike.policies.ExtraProtocol` (``name``,
        ``param(key)``).
    :param settings: the profile's ``[plugin.NAME]`` tables, by plugin name.
    :return: a :class:`tunvpn.plugins.ClientProtocol`: the phase 2 ``policies`` the client adds
        to its Quick Mode set for the protocol, and ``run``, a coroutine function the client
        starts with a :class:`tunvpn.plugins.ClientSession` once every SA is up (the session's
        address, the gateway, the user's credentials, ``report`` and ``prompt``); or ``None``
        when this plugin does not handle it.
    """


HOW_CALLED: dict[str, str] = {
    "tunvpn_verify_credentials": "first result",
    "tunvpn_authorize": "all results, combined; any refusal wins",
    "tunvpn_check_settings": "every plugin is called, with its own settings",
    "tunvpn_declare_groups": "all results, combined",
    "tunvpn_add_commands": "every plugin is called",
    "tunvpn_accounting": "every plugin is called",
    "tunvpn_accounting_onoff": "every plugin is called",
    "tunvpn_client_answer": "first result",
    "tunvpn_announce_protocol": "first result; only the plugin named like the protocol",
    "tunvpn_serve": "every plugin is called",
    "tunvpn_client_protocol": "first result",
}
"""How each hook combines the plugins (the reference prints it under the hook's name)."""


def hook_names() -> list[str]:
    """The names of every hook in this module, in source order."""
    return [name for name, value in globals().items() if name.startswith("tunvpn_") and callable(value)]
