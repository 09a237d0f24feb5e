"""tunvpn plugin ``radius``: XAUTH decided by RADIUS servers, sessions reported to them.

Settings (``[plugin.radius]`` of gateway.toml, see this distribution's README.md)::

    servers = [{host = "10.0.0.5", port = 1812, secret_file = "/etc/tunvpn/radius.secret"}]
    timeout = 3          # seconds per try
    retries = 2          # tries after the first, per server
    auth = "pap"         # or "chap"
    nas_identifier = "tunvpn"
    nas_ip_address = "192.0.2.1"   # default: this host's address towards the first server

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

from tunvpn.plugins import CredentialRequest, GatewayContext, Verdict, hookimpl
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


def client_from_settings(settings: dict[str, Any]) -> tuple[RadiusClient, str]:
    """The RadiusClient and the auth method (pap/chap) that ``[plugin.radius]`` describes.
    Raises ValueError on a bad setting (a secret_file readable by others, say)."""
    servers_cfg = settings.get("servers")
    if not servers_cfg or not isinstance(servers_cfg, list):
        raise ValueError("[plugin.radius] servers: a list of {host, port, secret_file}")
    auth = str(settings.get("auth", "pap")).lower()
    if auth not in ("pap", "chap"):
        raise ValueError(f"[plugin.radius] auth = {auth!r}: pap or chap")
    key_parts: list[Any] = [
        auth,
        settings.get("timeout"),
        settings.get("retries"),
        settings.get("nas_identifier"),
        settings.get("nas_ip_address"),
    ]
    servers = []
    for entry in servers_cfg:
        if not isinstance(entry, dict) or "host" not in entry or "secret_file" not in entry:
            raise ValueError("[plugin.radius] each server needs host and secret_file")
        secret = load_secret(entry["secret_file"])
        port = int(entry.get("port", 1812))
        acct = entry.get("acct_port")
        servers.append(Server(str(entry["host"]), port, secret, int(acct) if acct is not None else None))
        key_parts += [entry["host"], port, acct, secret]
    key = tuple(key_parts)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = RadiusClient(
                servers,
                timeout=float(settings.get("timeout", 3.0)),
                retries=int(settings.get("retries", 2)),
                nas_identifier=str(settings.get("nas_identifier", "tunvpn")),
                nas_ip_address=(str(settings["nas_ip_address"]) if settings.get("nas_ip_address") else None),
            )
            _clients.clear()  # settings changed (reload): forget the old client
            _clients[key] = client
            worst = len(servers) * (1 + client.retries) * client.timeout
            if worst >= GATEWAY_WAIT:
                log.warning(
                    "RADIUS: %d server(s) x %d tries x %g s = %g s, longer than the gateway waits "
                    "(%g s): a dead server holds a plugin worker after the login was refused; "
                    "lower timeout or retries",
                    len(servers),
                    1 + client.retries,
                    client.timeout,
                    worst,
                    GATEWAY_WAIT,
                )
    return client, auth


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
    if session is None and not settings.get("account_all", False):
        return  # not authenticated through RADIUS
    try:
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
