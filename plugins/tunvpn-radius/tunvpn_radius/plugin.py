"""tunvpn plugin ``radius``: XAUTH decided by RADIUS servers, sessions reported to them.

Settings (``[plugin.radius]`` of gateway.toml, see this distribution's README.md)::

    servers = [{host = "10.0.0.5", port = 1812, secret_file = "/etc/tunvpn/radius.secret"}]
    timeout = 3          # seconds per try
    retries = 2          # tries after the first, per server
    auth = "pap"         # or "chap"
    nas_identifier = "tunvpn"
    nas_ip_address = "192.0.2.1"   # default: this host's address towards the first server
    account_all = false  # true: accounting for every session, not only those RADIUS accepted

Checked at start and on reload (``tunvpn_check_settings``) by :func:`parse_settings`, the
parser every login uses: a bad key stops the gateway, named with its line.

- Access-Accept: accepted; Class attributes become the user's groups, Framed-IP-Address the
  client's address, Framed-Route lines the networks behind the client (the gateway adds an SA
  from each of them to each of the user's networks).
- Access-Reject: rejected with the Reply-Message (or "rejected by RADIUS").
- Access-Challenge: an XAUTH challenge with the Reply-Message as prompt; the State goes back
  to the server with the answer.
- No server answers: rejected, "no RADIUS server answered", and an error in the log.
- ``tunvpn_accounting``: Accounting-Request Start, Interim-Update, Stop.
- ``tunvpn_accounting_onoff``: Accounting-On when the gateway starts, Accounting-Off when it
  stops cleanly (the server closes this gateway's open sessions and frees their addresses).
- Every request carries NAS-Identifier and NAS-IP-Address (which gateway of a fleet), every
  Access-Request the session's Acct-Session-Id (a server-side pool's lease key).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from tunvpn.plugins import CredentialRequest, GatewayContext, SettingError, Verdict, hookimpl
from tunvpn_radius.client import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    RadiusClient,
    RadiusError,
    Server,
    load_secret,
)

log = logging.getLogger("tunvpn.radius")

NAME = "radius"
STATE_KEY = "radius.state"


@dataclass
class RadiusSession:
    """What an Access-Accept said about one session (ISAKMP SA), for its accounting."""

    user: str
    address: IPv4Address | None = None
    routes: tuple[str, ...] = ()
    """Framed-Route lines as received ("10.20.0.0/16 0.0.0.0 1"); the parsed networks go to the
    gateway in the Verdict."""
    classes: tuple[bytes, ...] = field(default=(), repr=False)
    """Class attributes, sent back in every Accounting-Request (RFC 2865 5.25)."""
    calling_station: str | None = None
    """Calling-Station-Id of the Access-Request (the client's outer address at login), sent in
    the session's every Accounting-Request: a client that roams keeps its session, and a
    server-side lease matched on it (sqlippool's alive_update, stop_clear) keeps matching."""


SESSIONS: dict[str, RadiusSession] = {}
"""Session id (``CredentialRequest.session_id``) -> what RADIUS accepted it with; entries go
when the session's accounting Stop is sent."""
_lock = threading.Lock()

_clients: dict[tuple[Any, ...], RadiusClient] = {}

GATEWAY_WAIT = 30.0
"""Seconds the gateway waits for a plugin's decision (its PLUGIN_TIMEOUT). A blocking call it
stopped waiting for keeps its worker thread until it returns, so the client's own timeouts
(``timeout`` x ``(1 + retries)`` per server) should end a login sooner."""


@dataclass(frozen=True)
class RadiusSettings:
    """``[plugin.radius]`` of gateway.toml, checked (the secrets read from their files)."""

    servers: tuple[Server, ...]
    auth: str = "pap"
    timeout: float = 3.0
    retries: int = 2
    nas_identifier: str = "tunvpn"
    nas_ip_address: str | None = None
    account_all: bool = False


def _number(settings: dict[str, Any], key: str, default: float, *, whole: bool) -> float:
    """``key``: a whole number, 0 or more (``whole``), else a number of seconds more than 0."""
    value = settings.get(key, default)
    if whole:
        good = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        good = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if not good:
        what = "a whole number, 0 or more" if whole else "a number of seconds, more than 0"
        raise SettingError(key, f"must be {what}", value=value)
    return float(value)


def _flag(settings: dict[str, Any], key: str, default: bool) -> bool:
    value = settings.get(key, default)
    if not isinstance(value, bool):
        raise SettingError(key, "must be true or false", value=value)
    return value


def _port(entry: dict[str, Any], key: str, index: int) -> int | None:
    value = entry.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536):
        raise SettingError(f"servers.{index}.{key}", "must be a UDP port, 1 to 65535", value=value)
    return value


def parse_settings(settings: dict[str, Any]) -> RadiusSettings:
    """``[plugin.radius]`` checked key by key, the shared secrets read (each file private and not
    empty): the one parser, for every login and accounting request and for
    ``tunvpn_check_settings`` at start. A bad value raises :class:`SettingError` (a
    ``ValueError``) naming the key (``servers.1.secret_file`` for one of a server); a secret is
    never in the message."""
    servers_cfg = settings.get("servers")
    if not servers_cfg or not isinstance(servers_cfg, list):
        shown = servers_cfg if "servers" in settings else ...
        raise SettingError("servers", "a list of {host, port, secret_file} is required", value=shown)
    auth = settings.get("auth", "pap")
    if not isinstance(auth, str) or auth.lower() not in ("pap", "chap"):
        raise SettingError("auth", "pap or chap", value=auth)
    servers = []
    for index, entry in enumerate(servers_cfg):
        if not isinstance(entry, dict):
            raise SettingError(f"servers.{index}", "a table {host, port, secret_file}", value=entry)
        for key in ("host", "secret_file"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise SettingError(
                    f"servers.{index}.{key}",
                    "each server needs a host and a secret_file (strings)",
                    value=entry.get(key, ...),
                )
        port = _port(entry, "port", index)
        acct = _port(entry, "acct_port", index)
        try:
            secret = load_secret(entry["secret_file"])
        except ValueError as exc:  # the message names the file, never the secret
            raise SettingError(f"servers.{index}.secret_file", str(exc)) from None
        servers.append(Server(entry["host"], 1812 if port is None else port, secret, acct))
    nas_identifier = settings.get("nas_identifier", "tunvpn")
    if not isinstance(nas_identifier, str) or not nas_identifier:
        raise SettingError("nas_identifier", "must be a name (a string)", value=nas_identifier)
    nas_ip_address = settings.get("nas_ip_address") or None  # "" as if not given
    if nas_ip_address is not None:
        try:
            if not isinstance(nas_ip_address, str):
                raise ValueError(nas_ip_address)
            nas_ip_address = str(IPv4Address(nas_ip_address))
        except ValueError:
            raise SettingError("nas_ip_address", "must be an IPv4 address", value=nas_ip_address) from None
    return RadiusSettings(
        servers=tuple(servers),
        auth=auth.lower(),
        timeout=_number(settings, "timeout", 3.0, whole=False),
        retries=int(_number(settings, "retries", 2, whole=True)),
        nas_identifier=nas_identifier,
        nas_ip_address=nas_ip_address,
        account_all=_flag(settings, "account_all", False),
    )


def client_from_settings(settings: dict[str, Any]) -> tuple[RadiusClient, str]:
    """The RadiusClient and the auth method (pap/chap) that ``[plugin.radius]`` describes
    (:func:`parse_settings`; one client as long as the settings stay the same). Raises
    ValueError (a :class:`SettingError`) on a bad setting (a secret_file readable by others, say)."""
    parsed = parse_settings(settings)
    key = (
        parsed.auth,
        parsed.timeout,
        parsed.retries,
        parsed.nas_identifier,
        parsed.nas_ip_address,
        *((s.host, s.port, s.acct_port, s.secret) for s in parsed.servers),
    )
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = RadiusClient(
                parsed.servers,
                timeout=parsed.timeout,
                retries=parsed.retries,
                nas_identifier=parsed.nas_identifier,
                nas_ip_address=parsed.nas_ip_address,
            )
            _clients.clear()  # settings changed (reload): forget the old client
            _clients[key] = client
            worst = len(parsed.servers) * (1 + client.retries) * client.timeout
            if worst >= GATEWAY_WAIT:
                log.warning(
                    "RADIUS: %d server(s) x %d tries x %g s = %g s, longer than the gateway waits "
                    "(%g s): a dead server holds a plugin worker after the login was refused; "
                    "lower timeout or retries",
                    len(parsed.servers),
                    1 + client.retries,
                    client.timeout,
                    worst,
                    GATEWAY_WAIT,
                )
    return client, parsed.auth


@hookimpl
def tunvpn_check_settings(settings: dict[str, Any], side: str) -> None:
    """``[plugin.radius]`` checked at start and on reload by :func:`parse_settings`, the parser
    every login uses: ``servers`` (each with a ``host``, ports 1 to 65535, a ``secret_file``
    that is private and not empty), ``auth``, ``timeout``, ``retries``, ``nas_identifier``,
    ``nas_ip_address``, ``account_all``. Whether a server answers is not checked (it may come
    up later). The plugin has no client side."""
    if side == "gateway":
        parse_settings(settings)


def _groups(classes: tuple[bytes, ...]) -> list[str]:
    groups = []
    for value in classes:
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if text:
            groups.append(text)
    return groups


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    settings = context.settings(NAME)
    try:
        client, auth = client_from_settings(settings)
    except ValueError as exc:
        log.error("RADIUS: %s", exc)
        return Verdict.reject("the gateway's RADIUS settings are broken")
    state: bytes | None = request.state.get(STATE_KEY) if request.round > 1 else None
    if request.round > 1 and state is None:
        return None  # another plugin's challenge round
    secret = (request.answer if state is not None else None) or request.password or request.passcode
    chap = request.chap if state is None else None  # e.g. PPP CHAP inside L2TP, passed on as is
    if secret is None and chap is None:
        return Verdict.reject("this gateway expects a password")
    try:
        reply = client.authenticate(
            request.user,
            secret or "",
            auth="pap" if state is not None else auth,  # a challenge's answer goes as User-Password
            state=state,
            calling_station=request.peer[0] or None,
            chap=chap,
            session_id=request.session_id or None,
        )
    except RadiusError as exc:
        log.error("RADIUS: user %r: %s", request.user, exc)
        return Verdict.reject("no RADIUS server answered")
    request.state.pop(STATE_KEY, None)
    if reply.code == ACCESS_ACCEPT:
        with _lock:
            SESSIONS[request.session_id] = RadiusSession(
                request.user,
                reply.framed_ip_address,
                reply.framed_routes,
                reply.classes,
                calling_station=request.peer[0] or None,
            )
        log.info("RADIUS %s accepted user %r", reply.server, request.user)
        return Verdict.accept(
            groups=_groups(reply.classes),
            address=reply.framed_ip_address,
            routes=framed_route_networks(reply.framed_routes, request.user),
        )
    if reply.code == ACCESS_CHALLENGE:
        if reply.state is None:
            log.warning("RADIUS %s: Access-Challenge without State for %r", reply.server, request.user)
        request.state[STATE_KEY] = reply.state or b""
        return Verdict.challenge(reply.reply_message or "Enter the response", fields=("answer",))
    return Verdict.reject(reply.reply_message or "rejected by RADIUS")


def framed_route_networks(lines: Iterable[str], user: str = "") -> list[IPv4Network]:
    """The networks of Framed-Route values (RFC 2865 5.22: "network [gateway [metrics]]", the
    network as CIDR ("10.20.0.0/16") or as address and netmask ("10.20.0.0 255.255.0.0")).
    An IPv6 or unparsable one is logged and left out."""
    out = []
    for line in lines:
        words = line.split()
        try:
            if not words:
                raise ValueError("empty")
            network = IPv4Network(words[0], strict=False)
            if "/" not in words[0] and len(words) > 1:
                with contextlib.suppress(ValueError):  # "10.20.0.0 255.255.0.0 ...": a netmask
                    masked = IPv4Network(f"{words[0]}/{words[1]}", strict=False)
                    if masked.prefixlen:
                        network = masked
        except ValueError:
            log.warning("RADIUS: Framed-Route %r for %r is not an IPv4 route; ignored", line, user)
            continue
        out.append(network)
    return out


ACCT_STATUS = {"start": "Start", "interim": "Interim-Update", "stop": "Stop"}
GIGA = 1 << 32


@hookimpl
def tunvpn_accounting(record: Any, context: GatewayContext) -> None:
    """Accounting-Request Start / Interim-Update / Stop for sessions this plugin accepted."""
    settings = context.settings(NAME)
    with _lock:
        session = SESSIONS.get(record.session_id)
        if record.kind == "stop":
            SESSIONS.pop(record.session_id, None)
    try:
        if session is None and not _flag(settings, "account_all", False):
            return  # not authenticated through RADIUS
        client, _ = client_from_settings(settings)
    except ValueError as exc:
        log.error("RADIUS accounting: %s", exc)
        return
    attrs: list[tuple[str, Any]] = [
        ("Acct-Status-Type", ACCT_STATUS[record.kind]),
        ("Acct-Session-Id", record.session_id),
        ("Acct-Authentic", "RADIUS"),
        ("User-Name", record.user or (session.user if session else "")),
        ("Event-Timestamp", int(time.time())),
    ]
    address = record.address or (session.address if session else None)
    if address is not None:
        attrs.append(("Framed-IP-Address", str(address)))
    for value in session.classes if session else ():
        attrs.append(("Class", value))
    if record.kind != "start":
        attrs += [
            ("Acct-Input-Octets", record.bytes_in % GIGA),
            ("Acct-Output-Octets", record.bytes_out % GIGA),
            ("Acct-Input-Gigawords", record.bytes_in // GIGA),
            ("Acct-Output-Gigawords", record.bytes_out // GIGA),
            ("Acct-Input-Packets", record.packets_in % GIGA),
            ("Acct-Output-Packets", record.packets_out % GIGA),
            ("Acct-Session-Time", int(record.seconds)),
        ]
    if record.kind == "stop":
        attrs.append(("Acct-Terminate-Cause", "User-Request" if record.by_peer else "NAS-Request"))
    try:
        calling = session.calling_station if session else (record.peer[0] if record.peer else None)
        client.account(attrs, calling_station=calling)
    except RadiusError as exc:
        log.error("RADIUS accounting %s for session %s: %s", record.kind, record.session_id, exc)


ONOFF = {"on": "Accounting-On", "off": "Accounting-Off"}


@hookimpl
def tunvpn_accounting_onoff(kind: str, context: GatewayContext) -> None:
    """Accounting-On (the gateway starts) or Accounting-Off (it stops cleanly), RFC 2866: the
    server ends every session it still has open for this NAS (NAS-IP-Address) and frees their
    addresses; after a crash, those the gateway could not send a Stop for."""
    try:
        client, _ = client_from_settings(context.settings(NAME))
    except ValueError as exc:
        log.error("RADIUS accounting: %s", exc)
        return
    now = int(time.time())
    attrs: list[tuple[str, Any]] = [
        ("Acct-Status-Type", ONOFF[kind]),
        ("Acct-Session-Id", f"{kind}-{now:x}"),  # RFC 2866 5.5: every Accounting-Request has one
        ("Event-Timestamp", now),
    ]
    try:
        client.account(attrs)
    except RadiusError as exc:
        log.error("RADIUS %s: %s", ONOFF[kind], exc)
        return
    log.info("RADIUS %s sent (NAS %s, %s)", ONOFF[kind], client.nas_identifier, client.nas_address())
