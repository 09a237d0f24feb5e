"""The tunvpn ``l2tp`` plugin: L2TP (RFC 2661) with userspace PPP, announced in phase 1a.

Gateway (``plugins = ["l2tp"]`` and a ``[[protocol]] name = "l2tp"`` in gateway.toml)::

    [plugin.l2tp]
    server = "10.78.2.1"          # an address of this gateway: the LNS listens there (UDP 1701)
    pool = "10.80.0.10-10.80.0.50"  # PPP (IPCP) addresses for the clients
    local = "10.80.0.1"           # the gateway's own PPP address
    networks = ["10.78.1.0/24"]   # what clients route into their PPP link
    dns = ["10.78.0.53"]          # optional, IPCP primary/secondary DNS (RFC 1877)
    auth = "chap"                 # PPP authentication: "chap" (MD5, the default) or "pap"
    tun = "tvlns%d"               # the gateway's TUN device for PPP traffic
    mtu = 1300                    # PPP MRU and TUN MTU (L2TP + UDP + ESP fit in 1500)
    hello = 60                    # L2TP HELLO interval (seconds, 0 = off)
    secret_file = "l2tp.secret"   # optional tunnel authentication (RFC 2661 5.1.1), mode 600

``tunvpn_check_settings`` checks the table (and reads ``secret_file``) when the gateway starts or
reloads, with the parser the other hooks use (:func:`lns_settings`), and the profile's table on
the client (:func:`client_settings`). ``tunvpn_announce_protocol`` announces it as
``exchange=l2tp`` with ``server``, ``port``, ``networks`` and ``mtu``, and has the gateway
accept the SA for UDP 1701 from the client's address to ``server``; ``tunvpn_serve`` runs the
LNS (:mod:`tunvpn_l2tp.lns`). PPP PAP/CHAP answers go through the gateway's login plugins
(``users_file``, RADIUS, ...), as ``CredentialRequest(via="ppp")``.

Client (``plugins = ["l2tp"]`` in the profile; optional ``[plugin.l2tp]`` with ``tun``,
``secret_file``, ``user``/``password_file`` when PPP needs other credentials than XAUTH,
``reconnect = false`` or ``reconnect_attempts`` to change how a lost session is set up again):
``tunvpn_client_protocol`` adds the UDP 1701 SA to the Quick Mode set and, once it is up,
runs the LAC (:mod:`tunvpn_l2tp.lac`): the control connection, one session, PPP, and a TUN
device carrying IP between the kernel and the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from tunvpn.plugins import (
    ClientProtocol,
    ClientSession,
    DHGroup,
    ExtraProtocol,
    GatewayContext,
    Phase2Policy,
    ProtocolAnnouncement,
    SecretFileError,
    SettingError,
    TrafficSelector,
    hookimpl,
    read_private_file,
)

NAME = "l2tp"
L2TP_PORT = 1701
UDP = 17
POLICY_NAME = "l2tp (UDP 1701)"


class L2tpConfigError(SettingError):
    """A bad ``[plugin.l2tp]`` table or announcement. A :class:`SettingError`: ``key`` names the
    key (``""`` for an announcement), ``message`` says what is wrong, ``value`` is shown unless it
    is ``...``; ``str()`` is the whole sentence ("[plugin.l2tp] mtu = 9000: a whole number
    576..1460"), as the client prints it."""

    def __init__(self, key: str, message: str, *, value: object = ..., where: str = "[plugin.l2tp]") -> None:
        super().__init__(key, message, value=value)
        shown = "" if value is ... else f" = {value!r}"
        named = f"{where} {key}{shown}" if key else where
        self.text = f"{named}: {message}" if named else message

    def __str__(self) -> str:
        return self.text


def l2tp_policy(server: IPv4Address, port: int = L2TP_PORT) -> Phase2Policy:
    """The SA that protects L2TP: the client's address (UDP) === ``server`` UDP ``port``. The
    same on both sides (the client builds it from the announcement, the gateway accepts it)."""
    return Phase2Policy(
        name=POLICY_NAME,
        gateway_ts=TrafficSelector.from_address(server, UDP, port),
        client_ts=None,
        pfs_group=DHGroup.ECP_256,
    )


@dataclass(frozen=True)
class LnsSettings:
    """``[plugin.l2tp]`` of gateway.toml, checked."""

    server: IPv4Address
    pool_first: IPv4Address
    pool_last: IPv4Address
    local: IPv4Address
    networks: tuple[IPv4Network, ...]
    port: int = L2TP_PORT
    dns: tuple[IPv4Address, ...] = ()
    auth: str = "chap"
    tun: str = "tvlns%d"
    mtu: int = 1300
    hello: float = 60.0
    secret_file: str | None = None
    max_sessions: int = 1000


_LNS_KEYS = (
    "server",
    "port",
    "pool",
    "local",
    "networks",
    "dns",
    "auth",
    "tun",
    "mtu",
    "hello",
    "secret_file",
    "max_sessions",
)


def _address(table: dict[str, Any], key: str) -> IPv4Address:
    value = table.get(key)
    if not isinstance(value, str):
        raise L2tpConfigError(key, "an IPv4 address is required (a string)", value=table.get(key, ...))
    try:
        return IPv4Address(value)
    except ValueError:
        raise L2tpConfigError(key, "not an IPv4 address", value=value) from None


def _int(table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise L2tpConfigError(key, f"a whole number {low}..{high}", value=value)
    return value


def lns_settings(table: dict[str, Any]) -> LnsSettings:
    """Parse ``[plugin.l2tp]``; a bad or missing key is an :class:`L2tpConfigError` naming it.
    Reads no file (:func:`check_lns` also reads the secret)."""
    unknown = sorted(set(table) - set(_LNS_KEYS))
    if unknown:
        raise L2tpConfigError(unknown[0], f"unknown key (known: {', '.join(_LNS_KEYS)})")
    server = _address(table, "server")
    pool = table.get("pool")
    if not isinstance(pool, str) or "-" not in pool:
        raise L2tpConfigError(
            "pool", "a range FIRST-LAST of IPv4 addresses is required", value=table.get("pool", ...)
        )
    try:
        first, last = (IPv4Address(part.strip()) for part in pool.split("-", 1))
    except ValueError:
        raise L2tpConfigError("pool", "not a range of IPv4 addresses", value=pool) from None
    if first > last:
        raise L2tpConfigError("pool", "the first address is after the last", value=pool)
    local = _address(table, "local")
    if first <= local <= last:
        raise L2tpConfigError("local", f"inside the pool {pool}", value=table["local"])
    raw_nets = table.get("networks")
    if not isinstance(raw_nets, list) or not raw_nets or not all(isinstance(n, str) for n in raw_nets):
        raise L2tpConfigError(
            "networks",
            'a list of networks is required, e.g. ["10.1.0.0/16"]',
            value=table.get("networks", ...),
        )
    try:
        networks = tuple(IPv4Network(n, strict=False) for n in raw_nets)
    except ValueError as exc:
        raise L2tpConfigError("networks", str(exc), value=raw_nets) from None
    raw_dns = table.get("dns", [])
    if not isinstance(raw_dns, list) or len(raw_dns) > 2:
        raise L2tpConfigError("dns", "a list of at most two IPv4 addresses", value=raw_dns)
    try:
        dns = tuple(IPv4Address(d) for d in raw_dns)
    except ValueError as exc:
        raise L2tpConfigError("dns", str(exc), value=raw_dns) from None
    auth = table.get("auth", "chap")
    if auth not in ("chap", "pap"):
        raise L2tpConfigError("auth", "chap or pap", value=auth)
    tun = table.get("tun", "tvlns%d")
    if not isinstance(tun, str) or not 0 < len(tun.encode()) < 16:
        raise L2tpConfigError("tun", "an interface name (at most 15 characters)", value=tun)
    hello = table.get("hello", 60)
    if isinstance(hello, bool) or not isinstance(hello, int | float) or hello < 0:
        raise L2tpConfigError("hello", "seconds (0 = no HELLO keepalives)", value=hello)
    secret_file = table.get("secret_file")
    if secret_file is not None and not (isinstance(secret_file, str) and secret_file):
        raise L2tpConfigError("secret_file", "a path", value=secret_file)
    return LnsSettings(
        server=server,
        pool_first=first,
        pool_last=last,
        local=local,
        networks=networks,
        port=_int(table, "port", L2TP_PORT, 1, 65535),
        dns=dns,
        auth=auth,
        tun=tun,
        mtu=_int(table, "mtu", 1300, 576, 1460),
        hello=float(hello),
        secret_file=secret_file,
        max_sessions=_int(table, "max_sessions", 1000, 1, 65535),
    )


def read_tunnel_secret(path: str) -> bytes:
    """The tunnel authentication secret (RFC 2661 5.1.1) of an owner-only file, on both sides.
    Raises :class:`SecretFileError` (missing, too open, a link, not ours) or :class:`ValueError`
    (empty); neither shows the secret."""
    secret = read_private_file(path, "L2TP tunnel secret").strip().encode()
    if not secret:
        raise ValueError(
            f"L2TP tunnel secret {path}: empty (leave secret_file out for no tunnel authentication)"
        )
    return secret


def read_ppp_password(path: str) -> str:
    """The client's PPP password of an owner-only file (``password_file``)."""
    return read_private_file(path, "PPP password file").strip()


def _readable(key: str, path: str, read: Callable[[str], object]) -> None:
    try:
        read(path)
    except (SecretFileError, ValueError) as exc:  # the message names the file, never its content
        raise L2tpConfigError(key, str(exc)) from None


def check_lns(table: dict[str, Any]) -> LnsSettings:
    """:func:`lns_settings`, and the secret file read as the LNS reads it when it starts."""
    settings = lns_settings(table)
    if settings.secret_file is not None:
        _readable("secret_file", settings.secret_file, read_tunnel_secret)
    return settings


@dataclass(frozen=True)
class Announced:
    """What a client reads from an ``l2tp`` announcement."""

    server: IPv4Address
    port: int
    networks: tuple[IPv4Network, ...]
    mtu: int
    params: dict[str, str] = field(default_factory=dict)


def parse_announcement(protocol: ExtraProtocol) -> Announced:
    """The announcement's parameters, checked (a gateway we do not understand is an error)."""
    server = protocol.param("server")
    if server is None:
        raise L2tpConfigError("", "the gateway's l2tp announcement names no server", where="")
    try:
        address = IPv4Address(server)
        port = int(protocol.param("port") or L2TP_PORT)
        networks = tuple(
            IPv4Network(n.strip(), strict=False)
            for n in (protocol.param("networks") or "").split(",")
            if n.strip()
        )
        mtu = int(protocol.param("mtu") or 1300)
    except ValueError as exc:
        raise L2tpConfigError("", f"the gateway's l2tp announcement is malformed: {exc}", where="") from None
    if not 0 < port < 65536 or not 576 <= mtu <= 1460:
        raise L2tpConfigError(
            "", f"the gateway's l2tp announcement has port {port}, mtu {mtu}: out of range", where=""
        )
    return Announced(address, port, networks, mtu, dict(protocol.params))


CLIENT_KEYS = ("tun", "secret_file", "user", "password_file", "reconnect", "reconnect_attempts")


def client_settings(table: dict[str, Any]) -> dict[str, Any]:
    """``[plugin.l2tp]`` of the profile, checked key by key (all keys optional). Reads no file
    (:func:`check_client` also reads them)."""
    unknown = sorted(set(table) - set(CLIENT_KEYS))
    if unknown:
        raise L2tpConfigError(
            unknown[0],
            f"unknown key in the profile (known: {', '.join(CLIENT_KEYS)})",
        )
    for key in ("tun", "secret_file", "user", "password_file"):
        if key in table and not (isinstance(table[key], str) and table[key]):
            raise L2tpConfigError(key, "must be a non-empty string", value=table[key])
    if "tun" in table and len(table["tun"].encode()) > 15:
        raise L2tpConfigError("tun", "an interface name (at most 15 characters)", value=table["tun"])
    if not isinstance(table.get("reconnect", True), bool):
        raise L2tpConfigError("reconnect", "must be true or false", value=table["reconnect"])
    attempts = table.get("reconnect_attempts", 5)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1000:
        raise L2tpConfigError("reconnect_attempts", "must be a whole number 1-1000", value=attempts)
    return dict(table)


def check_client(table: dict[str, Any]) -> dict[str, Any]:
    """:func:`client_settings`, and the files read as the LAC reads them once L2TP runs."""
    settings = client_settings(table)
    if "secret_file" in settings:
        _readable("secret_file", settings["secret_file"], read_tunnel_secret)
    if "password_file" in settings:
        _readable("password_file", settings["password_file"], read_ppp_password)
    return settings


# --------------------------------------------------------------------------- gateway hooks


@hookimpl
def tunvpn_check_settings(settings: dict[str, Any], side: str, context: GatewayContext | None) -> None:
    """``[plugin.l2tp]`` checked before it is used, by the parsers the hooks use. Gateway
    (:func:`check_lns`): when L2TP is announced (a ``[[protocol]] name = "l2tp"``) or the table
    is given; every key, its type and range, the pool, ``local`` outside it, and the
    ``secret_file`` (owner-only, not empty). Client (:func:`check_client`): the profile's keys,
    and its ``secret_file`` and ``password_file`` (owner-only)."""
    if side == "client":
        check_client(settings)
        return
    announced = context is not None and any(p.name == NAME for p in context.protocols)
    if announced or settings:
        check_lns(settings)


@hookimpl
def tunvpn_announce_protocol(protocol: ExtraProtocol, context: GatewayContext) -> ProtocolAnnouncement:
    settings = lns_settings(context.settings(NAME))
    return ProtocolAnnouncement(
        params=(
            ("exchange", "l2tp"),
            ("server", str(settings.server)),
            ("port", str(settings.port)),
            ("networks", ",".join(str(n) for n in settings.networks)),
            ("mtu", str(settings.mtu)),
        ),
        accept=(l2tp_policy(settings.server, settings.port),),
    )


@hookimpl
async def tunvpn_serve(context: GatewayContext) -> None:
    if not any(p.name == NAME for p in context.protocols):
        return  # loaded but not announced: nothing to serve
    from tunvpn_l2tp.lns import serve

    await serve(lns_settings(context.settings(NAME)), context)


# --------------------------------------------------------------------------- client hooks


@hookimpl
def tunvpn_client_protocol(
    protocol: ExtraProtocol, settings: dict[str, dict[str, Any]]
) -> ClientProtocol | None:
    if protocol.name != NAME or protocol.param("exchange") != "l2tp":
        return None
    announced = parse_announcement(protocol)
    own = client_settings(dict(settings.get(NAME, {})))

    async def run(session: ClientSession) -> None:
        from tunvpn_l2tp.lac import run_lac

        await run_lac(session, announced, own)

    return ClientProtocol(NAME, policies=(l2tp_policy(announced.server, announced.port),), run=run)


__all__ = [
    "Announced",
    "L2tpConfigError",
    "LnsSettings",
    "check_client",
    "check_lns",
    "client_settings",
    "l2tp_policy",
    "lns_settings",
    "parse_announcement",
    "read_ppp_password",
    "read_tunnel_secret",
    "tunvpn_announce_protocol",
    "tunvpn_check_settings",
    "tunvpn_client_protocol",
    "tunvpn_serve",
]
