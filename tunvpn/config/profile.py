"""The client's profile file (TOML): the gateway, the secret (or certificate) and the user.

Nothing else: the gateway pushes everything else (addresses, DNS, networks, algorithms).
``docs/configuration.md`` documents the keys; ``contrib/client.toml`` is an example::

    gateway = "192.0.2.1"
    psk_file = "alice.psk"
    user = "alice"

Errors are :class:`~tunvpn.config.gateway.ConfigFileError` (file, line, key, reason). An inline
``psk`` is accepted only when the profile file itself is private (``chmod 600``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tunvpn.config.credentials import SecretFileError, read_private_file
from tunvpn.config.gateway import (
    ConfigFileError,
    SourceText,
    TableReader,
    parse_duration,
    parse_toml,
    read_config_file,
    read_credential,
    read_fragmentation,
    read_identity,
    read_peer_certificates,
    read_psks,
    resolve_path,
    resolve_plugin_paths,
)
from tunvpn.config.hosts import check_gateway
from tunvpn.config.names import parse_dh_group
from tunvpn.ike.certpath import PeerCertificatePolicy
from tunvpn.ike.certs import Credential, load_certificates
from tunvpn.ike.config import PskTable
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity

MODES = ("main", "aggressive", "base")
_PROFILE_KEYS = (
    "gateway", "psk_file", "psk_env", "psk", "cert", "key", "ca", "revocation", "crl_files", "user",
    "password_file", "mode", "id",
    "remote_id", "plugins", "plugin", "reconnect", "run_as", "pfs", "pfs_min", "fragmentation",
    "dpd_interval", "block_ipv6",
)  # fmt: skip
REMOTE_ID_ANY = "any"
"""``remote_id = "any"``: a pre-shared-key gateway may send any phase 1 identity (warned)."""


@dataclass(frozen=True, kw_only=True)
class ClientProfile:
    """What a profile file says. Its ``repr`` holds no secret (PSKs show their identities only)."""

    source: str
    """The file it was read from."""
    gateway: str
    """The first gateway: an IP address or a host name."""
    gateways: tuple[str, ...] = ()
    """Every gateway, in the order they are tried (``gateway = ["vpn1...", "vpn2..."]``);
    default: ``(gateway,)``."""
    block_ipv6: bool = True
    """While a full IPv4 tunnel is up and the gateway offers no IPv6, make the host's other
    IPv6 unreachable instead of letting it go around the tunnel (issue 19)."""
    reconnect: bool = True
    """Stay connected (reconnect with back-off, fail over); ``false``: exit when the
    connection ends, as ``tunvpn connect --once`` does after it came up."""
    psks: PskTable = field(default_factory=PskTable)
    """The group secret (``*``) or per-identity secrets; empty with certificate authentication."""
    user: str | None = None
    """XAUTH user name; ``None``: no XAUTH."""
    password_file: str | None = None
    """The XAUTH password's file (first line, mode 600); else ``$TUNVPN_PASSWORD`` or a prompt."""
    mode: str = "main"
    """Phase 1 exchange: ``main``, ``aggressive`` or ``base``."""
    local_id: Identity | None = None
    """Our phase 1 identity (``keyid:staff`` for a Cisco-style group); default: our address."""
    remote_id: Identity | None = None
    """Who the gateway must be: a name or address its certificate holds, or its pre-shared-key
    phase 1 identity; ``None``: the ``gateway`` address."""
    remote_id_any: bool = False
    """``remote_id = "any"``: a pre-shared-key gateway may use any identity (not recommended)."""
    credential: Credential | None = None
    trusted_cas: tuple[x509.Certificate, ...] = ()
    """CAs the gateway's certificate must chain to; without ``credential``: hybrid
    authentication (the gateway signs, the user logs in with XAUTH; no pre-shared key)."""
    peer_certificates: PeerCertificatePolicy = field(default_factory=PeerCertificatePolicy)
    """How the gateway's certificate is checked beyond chaining to ``trusted_cas``
    (``revocation``, ``crl_files``)."""
    plugins: tuple[str, ...] = ()
    """Client plugins to load (``tunvpn_client_answer``: a soft token, say)."""
    plugin_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """``[plugin.NAME]`` tables: each plugin's own settings."""
    run_as: str | None = None
    """Started as root: the account to become once the TUN device is open (``tunvpn connect
    --run-as``; docs/service.md); ``None``: stay root."""
    pfs: str | None = None
    """Quick Mode PFS with a gateway that pushes no policies, as ``tunvpn connect --pfs``:
    ``auto``, ``required``, a group name or ``none`` (docs/proposals.md); ``None``: ``auto``."""
    dpd_interval: int | None = None
    """Seconds of silence from the gateway before DPD asks R-U-THERE (``tunvpn connect
    --dpd-interval``; the gateway is dead after 2.5 times as long); 0: no DPD; None: 10."""
    pfs_min: str | None = None
    """A floor for Quick Mode PFS, as ``tunvpn connect --pfs-min``: a group name."""
    fragmentation: str | None = None
    """IKE fragmentation, as ``tunvpn connect --fragmentation``: ``yes``, ``force`` or ``no``;
    ``None``: ``yes``."""


def load_profile(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> ClientProfile:
    """Read and check a profile (relative paths in it are relative to its directory).

    :raises ConfigFileError: anything wrong, with the file, line, key and reason.
    """
    text, mode = read_config_file(path, "profile")
    return parse_profile(text, str(path), base_dir=Path(path).resolve().parent, env=env, file_mode=mode)


def parse_profile(
    text: str,
    source: str,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    file_mode: int | None = None,
) -> ClientProfile:
    """Check a profile text; ``file_mode`` as for :func:`tunvpn.config.gateway.parse_gateway_config`."""
    env = os.environ if env is None else env
    src = SourceText(text, source)
    table = TableReader(src, parse_toml(src, text), "", "the profile", _PROFILE_KEYS)
    gateways = _read_gateways(table)
    psks = read_psks(table, base_dir, env, file_mode)
    if "ca" in table and "cert" not in table and "key" not in table:
        # hybrid authentication: the gateway proves itself by its certificate, we by XAUTH
        credential, cas = None, _read_cas(table, base_dir)
        if psks:
            raise table.error(
                "ca",
                "ca without cert and key means hybrid authentication (the gateway's certificate, "
                "then XAUTH), which uses no pre-shared key: drop the pre-shared key, or add cert and key",
            )
    else:
        credential, cas = read_credential(table, base_dir)
    peer_certificates = read_peer_certificates(table, base_dir)
    if not psks and credential is None and not cas:
        raise src.error(
            "", "no secret: give psk_file, psk_env or psk (or cert, key and ca; or ca alone: hybrid)"
        )
    user = table.text("user")
    password_file: str | None = None
    if "password_file" in table:
        if user is None:
            raise table.error("password_file", "a password file needs user (the XAUTH user name)")
        path = resolve_path(base_dir, table.required_text("password_file"))
        try:
            read_private_file(path, "password file")  # refuse an open or missing file now
        except SecretFileError as exc:
            raise table.error("password_file", str(exc)) from None
        password_file = str(path)
    mode = table.text("mode", "main")
    assert mode is not None
    if mode not in MODES:
        raise table.error("mode", f"unknown mode {mode!r} (one of: {', '.join(MODES)})")
    remote_id: Identity | None = None
    remote_text = table.text("remote_id")
    remote_id_any = remote_text is not None and remote_text.strip().lower() == REMOTE_ID_ANY
    if remote_id_any and (credential is not None or cas):
        raise table.error(
            "remote_id",
            '"any" is for pre-shared-key gateways; a gateway that signs must have a certificate '
            "naming remote_id (a name or address in it, or its DN)",
        )
    if not remote_id_any:
        remote_id = read_identity(table, "remote_id")
    plugins = table.texts("plugins") or ()
    settings_table = table.table("plugin", "[plugin.NAME]", None)
    plugin_settings: dict[str, Mapping[str, object]] = {}
    if settings_table is not None:
        for name, value in settings_table.data.items():
            if name not in plugins:
                raise settings_table.error(
                    name, f"[plugin.{name}] is for a plugin that plugins does not name"
                )
            if not isinstance(value, dict):
                raise settings_table.error(name, f"expected a table ([plugin.{name}])")
            plugin_settings[name] = resolve_plugin_paths(dict(value), base_dir)
    return ClientProfile(
        source=source,
        gateway=gateways[0],
        gateways=gateways,
        reconnect=table.flag("reconnect", True),
        block_ipv6=table.flag("block_ipv6", True),
        psks=psks,
        user=user.strip() if user is not None else None,
        password_file=password_file,
        mode=mode,
        local_id=read_identity(table),
        remote_id=remote_id,
        remote_id_any=remote_id_any,
        credential=credential,
        trusted_cas=cas,
        peer_certificates=peer_certificates,
        plugins=tuple(plugins),
        plugin_settings=plugin_settings,
        run_as=table.text("run_as"),
        pfs=_read_pfs(table),
        fragmentation=read_fragmentation(table) if "fragmentation" in table else None,
        pfs_min=_read_pfs_min(table),
        dpd_interval=parse_duration(table, "dpd_interval", -1) if "dpd_interval" in table else None,
    )


def _read_pfs(table: TableReader) -> str | None:
    """``pfs``: ``auto``, ``required``, ``none`` or a DH group (checked here, used by the CLI)."""
    text = table.text("pfs")
    if text is None or text.strip().lower() in ("auto", "required", "none"):
        return None if text is None else text.strip().lower()
    try:
        parse_dh_group(text)
    except ValueError as exc:
        raise table.error("pfs", f"pfs: {exc}; or auto, required, none") from None
    return text.strip()


def _read_pfs_min(table: TableReader) -> str | None:
    """``pfs_min``: a DH group name (checked here, used by the CLI)."""
    text = table.text("pfs_min")
    if text is None:
        return None
    try:
        parse_dh_group(text)
    except ValueError as exc:
        raise table.error("pfs_min", f"pfs_min: {exc}") from None
    return text.strip()


def _read_gateways(table: TableReader) -> tuple[str, ...]:
    """``gateway``: an address or host name, or an array of them (tried in order)."""
    if "gateway" not in table:
        raise table.error("gateway", "gateway is required in the profile")
    entries = table.texts("gateway")
    assert entries is not None
    if not entries:
        raise table.error("gateway", "an empty list: give at least one gateway (address or name)")
    out: list[str] = []
    for entry in entries:
        try:
            name = check_gateway(entry)
        except ValueError as exc:
            raise table.error("gateway", str(exc)) from None
        if name in out:
            raise table.error("gateway", f"{name} is listed twice")
        out.append(name)
    return tuple(out)


def _read_cas(table: TableReader, base_dir: Path) -> tuple[x509.Certificate, ...]:
    cas: list[x509.Certificate] = []
    for name in table.texts("ca") or ():
        path = resolve_path(base_dir, name)
        try:
            cas += load_certificates(path.read_bytes())
        except OSError as exc:
            raise table.error("ca", f"{path}: {exc.strerror or exc}") from None
        except LocalProtocolError as exc:
            raise table.error("ca", f"{path}: {exc}") from None
    return tuple(cas)


__all__ = ["MODES", "ClientProfile", "ConfigFileError", "load_profile", "parse_profile"]
