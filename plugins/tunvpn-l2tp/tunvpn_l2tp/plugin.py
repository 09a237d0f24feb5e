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

``tunvpn_announce_protocol`` announces it as ``exchange=l2tp`` with ``server``, ``port``,
``networks`` and ``mtu``, and has the gateway accept the SA for UDP 1701 from the client's
address to ``server``; ``tunvpn_serve`` runs the LNS (:mod:`tunvpn_l2tp.lns`). PPP PAP/CHAP
answers go through the gateway's login plugins (``users_file``, RADIUS, ...), as
``CredentialRequest(via="ppp")``.

Client (``plugins = ["l2tp"]`` in the profile; optional ``[plugin.l2tp]`` with ``tun``,
``secret_file``, ``user``/``password_file`` when PPP needs other credentials than XAUTH,
``reconnect = false`` or ``reconnect_attempts`` to change how a lost session is set up again):
``tunvpn_client_protocol`` adds the UDP 1701 SA to the Quick Mode set and, once it is up,
runs the LAC (:mod:`tunvpn_l2tp.lac`): the control connection, one session, PPP, and a TUN
device carrying IP between the kernel and the session.
"""

from __future__ import annotations

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
    TrafficSelector,
    hookimpl,
)

NAME = "l2tp"
L2TP_PORT = 1701
UDP = 17
POLICY_NAME = "l2tp (UDP 1701)"


class L2tpConfigError(ValueError):
    """A bad ``[plugin.l2tp]`` table or announcement; the message names the key."""


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
        raise L2tpConfigError(f"[plugin.l2tp] {key}: an IPv4 address is required (a string)")
    try:
        return IPv4Address(value)
    except ValueError:
        raise L2tpConfigError(f"[plugin.l2tp] {key} = {value!r}: not an IPv4 address") from None


def _int(table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise L2tpConfigError(f"[plugin.l2tp] {key} = {value!r}: a whole number {low}..{high}")
    return value


def lns_settings(table: dict[str, Any]) -> LnsSettings:
    """Parse ``[plugin.l2tp]``; a bad or missing key is an :class:`L2tpConfigError` naming it."""
    unknown = sorted(set(table) - set(_LNS_KEYS))
    if unknown:
        raise L2tpConfigError(f"[plugin.l2tp]: unknown key {unknown[0]!r} (known: {', '.join(_LNS_KEYS)})")
    server = _address(table, "server")
    pool = table.get("pool")
    if not isinstance(pool, str) or "-" not in pool:
        raise L2tpConfigError("[plugin.l2tp] pool: a range FIRST-LAST of IPv4 addresses is required")
    try:
        first, last = (IPv4Address(part.strip()) for part in pool.split("-", 1))
    except ValueError:
        raise L2tpConfigError(f"[plugin.l2tp] pool = {pool!r}: not a range of IPv4 addresses") from None
    if first > last:
        raise L2tpConfigError(f"[plugin.l2tp] pool = {pool!r}: the first address is after the last")
    local = _address(table, "local")
    if first <= local <= last:
        raise L2tpConfigError(f"[plugin.l2tp] local = {local}: inside the pool {pool}")
    raw_nets = table.get("networks")
    if not isinstance(raw_nets, list) or not raw_nets or not all(isinstance(n, str) for n in raw_nets):
        raise L2tpConfigError('[plugin.l2tp] networks: a list of networks is required, e.g. ["10.1.0.0/16"]')
    try:
        networks = tuple(IPv4Network(n, strict=False) for n in raw_nets)
    except ValueError as exc:
        raise L2tpConfigError(f"[plugin.l2tp] networks: {exc}") from None
    raw_dns = table.get("dns", [])
    if not isinstance(raw_dns, list) or len(raw_dns) > 2:
        raise L2tpConfigError("[plugin.l2tp] dns: a list of at most two IPv4 addresses")
    try:
        dns = tuple(IPv4Address(d) for d in raw_dns)
    except ValueError as exc:
        raise L2tpConfigError(f"[plugin.l2tp] dns: {exc}") from None
    auth = table.get("auth", "chap")
    if auth not in ("chap", "pap"):
        raise L2tpConfigError(f"[plugin.l2tp] auth = {auth!r}: chap or pap")
    tun = table.get("tun", "tvlns%d")
    if not isinstance(tun, str) or not 0 < len(tun.encode()) < 16:
        raise L2tpConfigError(f"[plugin.l2tp] tun = {tun!r}: an interface name (at most 15 characters)")
    hello = table.get("hello", 60)
    if isinstance(hello, bool) or not isinstance(hello, int | float) or hello < 0:
        raise L2tpConfigError(f"[plugin.l2tp] hello = {hello!r}: seconds (0 = no HELLO keepalives)")
    secret_file = table.get("secret_file")
    if secret_file is not None and not isinstance(secret_file, str):
        raise L2tpConfigError("[plugin.l2tp] secret_file: a path")
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
        raise L2tpConfigError("the gateway's l2tp announcement names no server")
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
        raise L2tpConfigError(f"the gateway's l2tp announcement is malformed: {exc}") from None
    if not 0 < port < 65536 or not 576 <= mtu <= 1460:
        raise L2tpConfigError(f"the gateway's l2tp announcement has port {port}, mtu {mtu}: out of range")
    return Announced(address, port, networks, mtu, dict(protocol.params))


CLIENT_KEYS = ("tun", "secret_file", "user", "password_file", "reconnect", "reconnect_attempts")


def client_settings(table: dict[str, Any]) -> dict[str, Any]:
    """``[plugin.l2tp]`` of the profile, checked key by key (all keys optional)."""
    unknown = sorted(set(table) - set(CLIENT_KEYS))
    if unknown:
        raise L2tpConfigError(
            f"[plugin.l2tp] of the profile: unknown key {unknown[0]!r} (known: {', '.join(CLIENT_KEYS)})"
        )
    for key in ("tun", "secret_file", "user", "password_file"):
        if key in table and not (isinstance(table[key], str) and table[key]):
            raise L2tpConfigError(f"[plugin.l2tp] {key} must be a non-empty string, not {table[key]!r}")
    if not isinstance(table.get("reconnect", True), bool):
        raise L2tpConfigError(f"[plugin.l2tp] reconnect must be true or false, not {table['reconnect']!r}")
    attempts = table.get("reconnect_attempts", 5)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1000:
        raise L2tpConfigError(
            f"[plugin.l2tp] reconnect_attempts must be a whole number 1-1000, not {attempts!r}"
        )
    return dict(table)


# --------------------------------------------------------------------------- gateway hooks


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
    "client_settings",
    "l2tp_policy",
    "lns_settings",
    "parse_announcement",
    "tunvpn_announce_protocol",
    "tunvpn_client_protocol",
    "tunvpn_serve",
]
