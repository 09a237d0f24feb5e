"""``[plugin.otp]``: the one place its settings are read and checked.

On the gateway: the store (``store_file``, or its older name ``store``), the users, the
lockout knobs (:func:`gateway_settings`); on the client: the soft token's files
(:func:`client_settings`, :func:`read_token`, :func:`read_pin`). The hooks parse with these at
every use, and ``tunvpn_check_settings`` runs the same functions at start
(:func:`check_gateway`, :func:`check_client`), so a bad value is refused before the first
login, as a :class:`~tunvpn.plugins.SettingError` naming its key. No secret is ever in a
message: the token's URI and the PIN are not shown, only the files' paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from tunvpn.plugins import SecretFileError, SettingError, read_private_file
from tunvpn_otp import core
from tunvpn_otp.store import Store, StoreError

POLICY_KEYS: dict[str, type] = {
    "lockout_after": int,
    "lockout_seconds": float,
    "totp_window": int,
    "totp_drift": int,
    "hotp_window": int,
    "hotp_drift": int,
    "spread_after": int,
    "spread_max_wait": float,
}
"""The :class:`~tunvpn_otp.core.Policy` knobs gateway.toml may set, with their type (``float``:
seconds, a whole number will do); their ranges are the policy's own."""

DEFAULT_PIN_ENV = "TUNVPN_OTP_PIN"
"""The environment variable the soft token takes the PIN from, when the profile names none."""


@dataclass(frozen=True)
class GatewaySettings:
    """``[plugin.otp]`` of gateway.toml, checked."""

    store: Path
    users: frozenset[str] | None
    """Only these users are ours; ``None``: whoever has a record in the store."""
    policy: core.Policy


@dataclass(frozen=True)
class ClientSettings:
    """``[plugin.otp]`` of a client profile (the soft token), checked; every key is optional."""

    token_file: Path | None
    pin_file: Path | None
    pin_env: str


def policy_from(table: dict[str, Any]) -> core.Policy:
    """The verifier's :class:`~tunvpn_otp.core.Policy` from the knobs of ``table``."""
    values: dict[str, Any] = {}
    for key, kind in POLICY_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        wanted: tuple[type, ...] = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, wanted):
            what = "a number of seconds" if kind is float else "a whole number"
            raise SettingError(key, f"must be {what}", value=value)
        values[key] = value
    try:
        return core.Policy(**values)
    except core.PolicyError as exc:
        raise SettingError(exc.key, exc.reason, value=values.get(exc.key, ...)) from None


def _store_key(table: dict[str, Any]) -> str:
    """The key naming the store: ``store_file`` (relative to gateway.toml's folder), else the
    older ``store``."""
    return "store_file" if "store_file" in table else "store"


def gateway_settings(table: dict[str, Any]) -> GatewaySettings:
    """``[plugin.otp]`` of gateway.toml; :class:`~tunvpn.plugins.SettingError` names a bad key.
    Reads no file (every login parses the table again)."""
    if "store" in table and "store_file" in table:
        raise SettingError("store", "give store_file or store, not both")
    key = _store_key(table)
    store = table.get(key)
    if store is None:
        needed = (
            'the plugin needs store_file = "otp.json" (beside gateway.toml, or an absolute path; '
            "`tunvpn otp enroll USER --store FILE` fills it)"
        )
        raise SettingError("store_file", needed)
    if not isinstance(store, str) or not store:
        raise SettingError(key, "must be the path of the OTP store", value=store)
    if not Path(store).is_absolute():
        # store_file is made absolute against gateway.toml's folder by the gateway (every
        # *_file key is); a relative store would depend on the gateway's working directory
        fix = 'an absolute path, or store_file = "..." (relative to gateway.toml\'s folder)'
        reason = f"a relative path depends on the gateway's working directory: give {fix}"
        raise SettingError(key, reason, value=store)
    users = table.get("users")
    if users is not None and not (isinstance(users, list) and all(isinstance(u, str) for u in users)):
        raise SettingError("users", 'must be a list of user names, e.g. users = ["carol"]', value=users)
    return GatewaySettings(Path(store), None if users is None else frozenset(users), policy_from(table))


def check_gateway(table: dict[str, Any]) -> GatewaySettings:
    """:func:`gateway_settings`, and the store read as a login reads it: it exists, is owner-only
    and holds OTP records."""
    settings = gateway_settings(table)
    try:
        Store(settings.store).check()
    except StoreError as exc:  # the message names the file
        raise SettingError(_store_key(table), str(exc)) from None
    return settings


def client_settings(table: dict[str, Any]) -> ClientSettings:
    """``[plugin.otp]`` of the profile; :class:`~tunvpn.plugins.SettingError` names a bad key.
    Reads no file."""
    paths: dict[str, Path | None] = {}
    for key in ("token_file", "pin_file"):
        value = table.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise SettingError(key, "must be the path of a file", value=value)
        paths[key] = Path(value).expanduser() if value is not None else None
    pin_env = table.get("pin_env", DEFAULT_PIN_ENV)
    if not isinstance(pin_env, str) or not pin_env:
        raise SettingError("pin_env", "must be the name of an environment variable", value=pin_env)
    return ClientSettings(paths["token_file"], paths["pin_file"], pin_env)


def read_token(path: Path) -> pyotp.OTP:
    """The token of an owner-only file holding an otpauth:// URI (what ``tunvpn otp enroll``
    printed). Raises :class:`~tunvpn.plugins.SecretFileError` (missing, too open, a link, not
    ours) or :class:`ValueError` (not a token's URI); neither shows the URI."""
    uri = read_private_file(path, "OTP token file").strip()
    try:
        otp = pyotp.parse_uri(uri)
        otp.generate_otp(0)  # the secret is base32
    except (ValueError, TypeError) as exc:
        raise ValueError(f"OTP token file {path}: not the otpauth:// URI of a token ({exc})") from None
    return otp


def read_pin(settings: ClientSettings) -> str:
    """The soft token's PIN: the PIN file's (owner-only), else the environment variable's; ""
    when there is none (the user then types PIN + code)."""
    if settings.pin_file is not None:
        return read_private_file(settings.pin_file, "OTP PIN file").strip()
    return os.environ.get(settings.pin_env, "")


def check_client(table: dict[str, Any]) -> ClientSettings:
    """:func:`client_settings`, and the files read as the soft token reads them."""
    settings = client_settings(table)
    if settings.token_file is not None:
        try:
            read_token(settings.token_file)
        except (SecretFileError, ValueError) as exc:
            raise SettingError("token_file", str(exc)) from None  # the message names the file
    if settings.pin_file is not None:
        try:
            read_pin(settings)
        except SecretFileError as exc:
            raise SettingError("pin_file", str(exc)) from None
    return settings
