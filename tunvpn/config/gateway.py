"""The gateway's configuration file (TOML): identity, secrets, algorithms, address pool, user
groups, the phase 2 policies pushed to clients and the extra protocols they must run.

``docs/configuration.md`` documents every key; ``contrib/gateway.toml`` is a full example.
:func:`load_gateway_config` reads a file, :func:`parse_gateway_config` a text. Every mistake
is a :class:`ConfigFileError` naming the file, the line, the dotted key (``policy[1].esp``:
the ``esp`` key of the second ``[[policy]]`` block, indexes count from 0) and the reason.
Unknown keys are errors (with a "did you mean" when one is close).

Secrets come from private files (``psk_file``, ``users_file``, the certificate ``key``), from
the environment (``psk_env``), or inline (``psk``) only when the configuration file itself is
private. No secret ever appears in an error message or a ``repr``.

:class:`TableReader`, :class:`SourceText` and the ``read_*`` helpers are shared with
:mod:`tunvpn.config.profile` (the client's profile file).
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tunvpn.config.credentials import SecretFileError, UserTable, parse_psk_text, read_private_file
from tunvpn.config.errors import ConfigError
from tunvpn.config.names import parse_dh_group
from tunvpn.config.pool import AddressPool
from tunvpn.config.secretfile import trusted_owners, user_name
from tunvpn.ike.certpath import PeerCertificatePolicy
from tunvpn.ike.certs import Credential, IdentityPattern, load_certificates
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import AuthMethod, DHGroup, EncryptionAlgorithm, HashAlgorithm
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.ike.policies import MAX_NAME, ExtraProtocol, Phase2Policy
from tunvpn.ike.proposals import (
    DEFAULT_ENCRYPTION,
    DEFAULT_ESP,
    DEFAULT_GROUPS,
    DEFAULT_HASHES,
    GROUP_STRENGTH,
    LEGACY_ENCRYPTION,
    LEGACY_ESP,
    LEGACY_EXTRA_ENCRYPTION,
    LEGACY_EXTRA_GROUPS,
    LEGACY_EXTRA_HASHES,
    LEGACY_GROUPS,
    LEGACY_HASHES,
    EspSuite,
    Phase1Policy,
)
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.shell.crls import CrlError, peer_certificate_policy

log = logging.getLogger(__name__)

BUILT_IN = "<built-in>"
T = TypeVar("T")


# --------------------------------------------------------------------------- errors


class ConfigFileError(ConfigError):
    """A configuration file is unreadable or wrong: which file, line and key, and why.

    ``str()``: ``gateway.toml line 12, key policy[1].esp: unknown ESP suite 'aes999' (...)``.
    ``line`` is ``None`` when the key is not written in the file (a missing required key
    whose table is implicit, a problem of the file as a whole). It is a :class:`ConfigError`
    (and so a ``ValueError``): ``tunvpn`` prints it and exits 2.
    """

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = path if line is None else f"{path} line {line}"
        if key:
            where += f", key {key}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[ConfigFileError], tuple[str, int | None, str, str]]:
        return type(self), (self.path, self.line, self.key, self.reason)


# --------------------------------------------------------------------------- key -> line

_SEGMENT = r"""(?:[A-Za-z0-9_-]+|"(?:\\.|[^"\\])*"|'[^']*')"""
_DOTTED = rf"{_SEGMENT}(?:\s*\.\s*{_SEGMENT})*"
_ARRAY_HEADER = re.compile(rf"^\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\[\s*({_DOTTED})\s*\]")
_KEY_LINE = re.compile(rf"^({_DOTTED})\s*=(.*)$")
_SEGMENTS = re.compile(_SEGMENT)
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def _key_parts(dotted: str) -> list[str]:
    parts = []
    for seg in _SEGMENTS.findall(dotted):
        parts.append(seg[1:-1] if seg[:1] in "\"'" else seg)
    return parts


def _skip_value(text: str, depth: int, multiline: str | None) -> tuple[int, str | None]:
    """Walk a value (or a continuation line): bracket depth and an open multi-line string."""
    i = 0
    while i < len(text):
        if multiline is not None:
            end = text.find(multiline, i)
            if end < 0:
                return depth, multiline
            i, multiline = end + 3, None
            continue
        if text.startswith('"""', i) or text.startswith("'''", i):
            multiline, i = text[i : i + 3], i + 3
            continue
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "'":
            end = text.find("'", i + 1)
            i = len(text) if end < 0 else end + 1
            continue
        if c == "#":
            break
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, multiline


class SourceText:
    """A configuration text and where each key is written in it.

    ``tomllib`` gives positions only for syntax errors, so this scans the lines: table and
    array-of-tables headers, and ``key =`` lines, give dotted keys such as ``gateway.listen``
    or ``policy[1].esp`` (the second ``[[policy]]`` block). Keys inside inline tables and
    multi-line arrays are found by their enclosing key. Good enough for ordinary files.
    """

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.line_count = max(len(text.splitlines()), 1)
        self._lines: dict[str, int] = {}
        arrays: dict[str, int] = {}
        table = ""
        depth, multiline = 0, None
        for number, raw in enumerate(text.splitlines(), 1):
            if depth or multiline is not None:
                depth, multiline = _skip_value(raw, depth, multiline)
                continue
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if m := _ARRAY_HEADER.match(line):
                *parents, last = _key_parts(m.group(1))
                name = self._resolve(parents, arrays)
                name = f"{name}.{last}" if name else last
                index = arrays.get(name, 0)
                arrays[name] = index + 1
                table = f"{name}[{index}]"
                self._lines.setdefault(table, number)
                self._lines.setdefault(name, number)
            elif m := _TABLE_HEADER.match(line):
                table = self._resolve(_key_parts(m.group(1)), arrays)
                self._lines.setdefault(table, number)
            elif m := _KEY_LINE.match(line):
                key = ".".join(_key_parts(m.group(1)))
                self._lines.setdefault(f"{table}.{key}" if table else key, number)
                depth, multiline = _skip_value(m.group(2), 0, None)

    @staticmethod
    def _resolve(parts: Sequence[str], arrays: Mapping[str, int]) -> str:
        """``policy.x`` after two ``[[policy]]`` headers is ``policy[1].x``."""
        path = ""
        for part in parts:
            path = f"{path}.{part}" if path else part
            if path in arrays:
                path = f"{path}[{arrays[path] - 1}]"
        return path

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, else of the nearest enclosing key or table written in the file."""
        while key:
            if key in self._lines:
                return self._lines[key]
            if key.endswith("]") and "[" in key:
                key = key[: key.rindex("[")]
            else:
                key = key.rpartition(".")[0]
        return None

    def error(self, key: str, reason: str) -> ConfigFileError:
        return ConfigFileError(self.path, self.line_of(key), key, reason)

    def syntax_error(self, exc: tomllib.TOMLDecodeError) -> ConfigFileError:
        text = str(exc)
        m = _TOML_POSITION.search(text)
        line: int | None = None
        reason = text
        if m is not None:
            reason = text[: m.start()]
            if m.group(1):
                line = int(m.group(1))
                reason += f" (column {m.group(2)})"
            else:
                line = self.line_count
                reason += " (at the end of the file)"
        return ConfigFileError(self.path, line, "", f"TOML syntax error: {reason}")


# --------------------------------------------------------------------------- typed table access

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return "a date or time"


class TableReader:
    """One TOML table: typed getters that name the key in their errors.

    Keys not in ``known`` are refused when the reader is built (``known=None`` accepts any).
    Values are never quoted in type errors (a misplaced secret must not leak).
    """

    def __init__(
        self, source: SourceText, data: Mapping[str, Any], key: str, label: str, known: Iterable[str] | None
    ) -> None:
        self.source = source
        self.data = data
        self.key = key
        self.label = label
        if known is not None:
            allowed = list(known)
            for name in data:
                if name not in allowed:
                    close = difflib.get_close_matches(name, allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"
                    raise self.error(name, f"unknown key {name!r} in {label}{hint}")

    def path(self, name: str) -> str:
        """The dotted key of ``name`` in this table (``""``: the table itself)."""
        if not name:
            return self.key
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, reason: str) -> ConfigFileError:
        return self.source.error(self.path(name), reason)

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def _typed(self, name: str, kind: type[T], what: str) -> T | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"expected {what}, found {_type_name(value)}")
        return value

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._typed(name, str, "a string")
        if value is None:
            if required:
                raise self.error(name, f"{name} is required in {self.label}")
            return default
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def required_text(self, name: str) -> str:
        value = self.text(name, required=True)
        assert value is not None
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._typed(name, bool, "true or false")
        return default if value is None else value

    def number(self, name: str, default: int, low: int, high: int) -> int:
        value = self._typed(name, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            raise self.error(name, f"{value} is outside {low}-{high}")
        return value

    def texts(self, name: str) -> tuple[str, ...] | None:
        """A string or an array of strings (``None`` when absent)."""
        value = self.data.get(name)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise self.error(name, "expected a string or an array of strings")
        for item in items:
            if not item.strip():
                raise self.error(name, "empty string in the list")
        return tuple(item.strip() for item in items)

    def table(self, name: str, label: str, known: Iterable[str] | None) -> TableReader | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table ({label}), found {_type_name(value)}")
        return TableReader(self.source, value, self.path(name), label, known)

    def tables(self, name: str, label: str, known: Iterable[str] | None) -> list[TableReader]:
        """An array of tables (``[[name]]`` blocks)."""
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"expected [[{name}]] blocks (an array of tables)")
        return [
            TableReader(self.source, item, f"{self.path(name)}[{i}]", f"{label} {i + 1}", known)
            for i, item in enumerate(value)
        ]

    def convert(self, name: str, value: str, parse: Callable[[str], T], what: str) -> T:
        """``parse(value)``; a ``ValueError``/``LocalProtocolError`` becomes this key's error."""
        try:
            return parse(value)
        except (ValueError, LocalProtocolError) as exc:
            raise self.error(name, f"{what} {value!r}: {exc}") from None


# --------------------------------------------------------------------------- files and secrets


FOREIGN_OWNER = 0o10000000
"""Set in the mode :func:`read_config_file` returns when another user (not us, not root) owns
the file: it can then hold no inline secret, whatever its permission bits."""


def read_config_file(path: str | os.PathLike[str], what: str) -> tuple[str, int]:
    """The text of a configuration file and its permission bits (| :data:`FOREIGN_OWNER`)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            mode = stat.S_IMODE(st.st_mode) | (0 if st.st_uid in trusted_owners() else FOREIGN_OWNER)
            data = f.read()
    except FileNotFoundError:
        raise ConfigFileError(source, None, "", f"{what}: no such file") from None
    except OSError as exc:
        raise ConfigFileError(source, None, "", f"{what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8"), mode
    except UnicodeDecodeError:
        raise ConfigFileError(source, None, "", f"{what}: not UTF-8 text") from None


def parse_toml(source: SourceText, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise source.syntax_error(exc) from None


def resolve_path(base_dir: Path, value: str) -> Path:
    """``value`` with ``~`` expanded, relative to the configuration file's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def read_psks(table: TableReader, base_dir: Path, env: Mapping[str, str], file_mode: int | None) -> PskTable:
    """``psk_file``, ``psk_env`` or inline ``psk`` (at most one); an empty table if none."""
    given = [k for k in ("psk_file", "psk_env", "psk") if k in table]
    if len(given) > 1:
        raise table.error(given[1], f"give only one of {', '.join(given)}")
    if "psk_file" in table:
        path = resolve_path(base_dir, table.required_text("psk_file"))
        try:
            text = read_private_file(path, "PSK file")
            return PskTable(parse_psk_text(text, f"PSK file {path}"))
        except SecretFileError as exc:
            raise table.error("psk_file", str(exc)) from None
    if "psk_env" in table:
        name = table.required_text("psk_env")
        value = env.get(name)
        if not value:
            raise table.error("psk_env", f"environment variable {name} is not set (or empty)")
        return PskTable({"*": value.encode()})
    if "psk" in table:
        secret = table.required_text("psk")
        if file_mode is None or file_mode & (0o077 | FOREIGN_OWNER):
            source_path = table.source.path
            if file_mode is None:
                state = "text that was not read from a file"
            elif file_mode & FOREIGN_OWNER:
                state = f"{source_path}, which another user owns"
            else:
                state = f"{source_path}, which has mode {file_mode:04o}"
            raise table.error(
                "psk",
                f"an inline secret is allowed only in a file of ours nobody else can read, not in "
                f"{state}. Fix: chown {user_name(os.geteuid())} {source_path} "
                f"&& chmod 600 {source_path}, or use "
                "psk_file / psk_env",
            )
        return PskTable({"*": secret.encode()})
    return PskTable()


def read_credential(
    table: TableReader, base_dir: Path
) -> tuple[Credential | None, tuple[x509.Certificate, ...]]:
    """``cert`` + ``key`` (private, PEM) + ``ca`` (one file or a list): our credential and the
    CAs peers' certificates must chain to. ``(None, ())`` when none of them is given."""
    given = [k for k in ("cert", "key", "ca") if k in table]
    if not given:
        return None, ()
    for name in ("cert", "key", "ca"):
        if name not in table:
            raise table.error(
                given[0], f"a certificate needs cert, key and ca in {table.label}; {name} is missing"
            )
    cert_path = resolve_path(base_dir, table.required_text("cert"))
    certs = _read_certificates(table, "cert", cert_path)
    key_path = resolve_path(base_dir, table.required_text("key"))
    try:
        key_pem = read_private_file(key_path, "private key file").encode()
    except SecretFileError as exc:
        raise table.error("key", str(exc)) from None
    cert_pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    try:
        credential = Credential.load(cert_pem, key_pem)
    except LocalProtocolError as exc:
        raise table.error("key", f"{key_path}: {exc}") from None
    cas: list[x509.Certificate] = []
    for ca in table.texts("ca") or ():
        cas += _read_certificates(table, "ca", resolve_path(base_dir, ca))
    return credential, tuple(cas)


def read_peer_certificates(table: TableReader, base_dir: Path) -> PeerCertificatePolicy:
    """``revocation``, ``crl_files``, ``peer_eku`` and ``peer_id_patterns`` of a certificate
    table (:func:`tunvpn.shell.crls.peer_certificate_policy`)."""
    try:
        return peer_certificate_policy(
            revocation=table.text("revocation"),
            crl_files=[resolve_path(base_dir, p) for p in table.texts("crl_files") or ()],
            peer_eku=table.texts("peer_eku"),
            peer_id_patterns=table.texts("peer_id_patterns") or (),
        )
    except CrlError as exc:
        raise table.error("crl_files", str(exc)) from None
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0]
        raise table.error(key if key in _CERT_KEYS else "", str(exc)) from None


def _read_certificates(table: TableReader, name: str, path: Path) -> tuple[x509.Certificate, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise table.error(name, f"{path}: {exc.strerror or exc}") from None
    try:
        return load_certificates(data)
    except LocalProtocolError as exc:
        raise table.error(name, f"{path}: {exc}") from None


def read_identity(table: TableReader, name: str = "id") -> Identity | None:
    text = table.text(name)
    if text is None:
        return None
    return table.convert(name, text, Identity.parse, "identity")


def parse_ip(table: TableReader, name: str, *, required: bool = False) -> str | None:
    """An IP address (either family, not a wildcard), as text."""
    text = table.text(name, required=required)
    if text is None:
        return None
    address = table.convert(name, text.strip(), ipaddress.ip_address, "address")
    if address.is_unspecified:
        raise table.error(name, f"{address} is a wildcard: give a real address")
    return str(address)


_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(table: TableReader, name: str, default: int) -> int:
    """Seconds: an integer, or text such as ``90s``, ``30m``, ``8h``, ``1d``, ``1h30m``."""
    value = table.data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise table.error(name, f'expected seconds or a duration like "8h", found {_type_name(value)}')
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        if text.lstrip("-").isdigit():
            seconds = int(text)
        elif re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", text):
            seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(text))
        else:
            raise table.error(name, f"{value!r} is not a duration (seconds, or like 90s, 30m, 8h, 1d)")
    if seconds <= 0:
        raise table.error(name, f"the lifetime must be positive, not {seconds}")
    if seconds >= 1 << 32:
        raise table.error(name, f"{seconds} seconds does not fit in 32 bits")
    return seconds


def read_fragmentation(table: TableReader) -> str:
    """``fragmentation``: ``yes`` (default), ``force`` or ``no`` (IKE fragmentation, issue 16)."""
    text = (table.text("fragmentation") or "yes").strip().lower()
    if text not in FRAGMENTATION_CHOICES:
        raise table.error("fragmentation", f"fragmentation: {text!r}; use yes, force or no")
    return text


FRAGMENTATION_CHOICES = ("yes", "force", "no")


def _reauth_interval(gw: TableReader) -> int:
    """``reauth_interval``: a duration, or 0 (the default) for never."""
    if gw.data.get("reauth_interval") in (0, "0"):
        return 0
    return parse_duration(gw, "reauth_interval", 0)


# --------------------------------------------------------------------------- algorithm names

PHASE1_ENCRYPTION: Mapping[str, tuple[EncryptionAlgorithm, int | None]] = MappingProxyType(
    {
        "aes256": (EncryptionAlgorithm.AES_CBC, 256),
        "aes192": (EncryptionAlgorithm.AES_CBC, 192),
        "aes128": (EncryptionAlgorithm.AES_CBC, 128),
        "3des": (EncryptionAlgorithm.DES3_CBC, None),
        "des": (EncryptionAlgorithm.DES_CBC, None),
    }
)
PHASE1_HASHES: Mapping[str, HashAlgorithm] = MappingProxyType(
    {
        "sha512": HashAlgorithm.SHA2_512,
        "sha384": HashAlgorithm.SHA2_384,
        "sha256": HashAlgorithm.SHA2_256,
        "sha1": HashAlgorithm.SHA1,
        "md5": HashAlgorithm.MD5,
    }
)
ESP_SUITES: Mapping[str, EspSuite] = MappingProxyType({str(s): s for s in DEFAULT_ESP + LEGACY_ESP})
"""ESP suites by the name ``str(EspSuite)`` prints; those of ``LEGACY_ESP`` need ``legacy = true``."""


def _group_name(group: DHGroup) -> str:
    return group.name.lower().replace("_", "")


def parse_group(table: TableReader, name: str, text: str, legacy: bool) -> DHGroup:
    group = table.convert(name, text, parse_dh_group, "DH group")
    if group not in GROUP_STRENGTH:
        known = ", ".join(_group_name(g) for g in GROUP_STRENGTH)
        raise table.error(name, f"DH group {text!r} is not implemented (one of: {known})")
    if group in LEGACY_GROUPS and not legacy:
        raise table.error(
            name, f"{_group_name(group)} is a legacy group: it needs legacy = true in [gateway]"
        )
    return group


def _pick(
    table: TableReader,
    name: str,
    names: Mapping[str, T],
    is_legacy: Callable[[T], bool],
    legacy: bool,
    what: str,
) -> tuple[T, ...] | None:
    """Names from ``names`` (a string or a list), in order; legacy ones only with ``legacy``."""
    items = table.texts(name)
    if items is None:
        return None
    if not items:
        raise table.error(name, f"an empty list allows no {what}")
    out: list[T] = []
    for item in items:
        key = item.lower()
        if key not in names:
            choices = [n for n, v in names.items() if legacy or not is_legacy(v)]
            raise table.error(name, f"unknown {what} {item!r} (one of: {', '.join(choices)})")
        value = names[key]
        if is_legacy(value) and not legacy:
            raise table.error(name, f"{key} is a legacy {what}: it needs legacy = true in [gateway]")
        if value in out:
            raise table.error(name, f"{key} is listed twice")
        out.append(value)
    return tuple(out)


def _phase1(table: TableReader | None, legacy: bool) -> Phase1Policy:
    if table is None:
        return Phase1Policy.with_legacy() if legacy else Phase1Policy()
    encryption = _pick(
        table, "encryption", PHASE1_ENCRYPTION, lambda e: e[0] in LEGACY_ENCRYPTION, legacy, "encryption"
    )
    hashes = _pick(table, "hash", PHASE1_HASHES, lambda h: h in LEGACY_HASHES, legacy, "hash")
    groups: tuple[DHGroup, ...] | None = None
    names = table.texts("groups")
    if names is not None:
        if not names:
            raise table.error("groups", "an empty list allows no DH group")
        groups = tuple(dict.fromkeys(parse_group(table, "groups", n, legacy) for n in names))
    lifetime = parse_duration(table, "lifetime", 28800)
    try:
        return Phase1Policy(
            encryption=encryption or (DEFAULT_ENCRYPTION + (LEGACY_EXTRA_ENCRYPTION if legacy else ())),
            hashes=hashes or (DEFAULT_HASHES + (LEGACY_EXTRA_HASHES if legacy else ())),
            groups=groups or (DEFAULT_GROUPS + (LEGACY_EXTRA_GROUPS if legacy else ())),
            lifetime=lifetime,
            allow_legacy=legacy,
        )
    except LocalProtocolError as exc:
        raise table.error("", str(exc)) from None


# --------------------------------------------------------------------------- the configuration


@dataclass(frozen=True)
class PolicyRule:
    """A phase 2 policy and who gets it: everyone when ``groups`` and ``users`` are both
    empty, else members of any listed group and the listed users."""

    policy: Phase2Policy
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    peers: tuple[IdentityPattern, ...] = ()
    """Phase 1 identities (certificate-verified) that get it, as ``peer_id_patterns`` write
    them (issue 18, seed paragraph 0023): a DN, ``@*.example.com``, ``*@example.com``..."""

    def applies_to(self, user: str | None, groups: Iterable[str], peer: Identity | None = None) -> bool:
        """``peer``: the client's phase 1 identity, only when a certificate proved it."""
        if not self.groups and not self.users and not self.peers:
            return True
        if user is not None and user in self.users:
            return True
        if not set(self.groups).isdisjoint(groups):
            return True
        return peer is not None and any(pattern.matches(peer) for pattern in self.peers)


@dataclass(frozen=True)
class PeeringRule:
    """``[[peering]]`` (issue 17): members of a ``from`` group and members of a ``to`` group
    are introduced to each other (a tunnel goes both ways), with this tunnel's parameters.
    ``"*"`` in either list: every logged-in user."""

    name: str
    from_groups: tuple[str, ...]
    to_groups: tuple[str, ...]
    esp: EspSuite = DEFAULT_ESP[0]
    pfs: DHGroup | None = DHGroup.ECP_256
    lifetime: int = 3600

    def pairs(self, groups_a: Iterable[str], groups_b: Iterable[str]) -> bool:
        """Whether a member of ``groups_a`` and one of ``groups_b`` may peer (either way)."""
        a, b = set(groups_a), set(groups_b)

        def member(side: tuple[str, ...], groups: set[str]) -> bool:
            return "*" in side or not groups.isdisjoint(side)

        return (member(self.from_groups, a) and member(self.to_groups, b)) or (
            member(self.from_groups, b) and member(self.to_groups, a)
        )


@dataclass(frozen=True, repr=False)
class SiteRule:
    """``[[site]]`` (issue 18): another gateway this one builds a site-to-site tunnel with: its
    address and phase 1 identity, the pre-shared key of this pair of gateways (never the group
    key), the networks behind it and ours it may reach, and whether we start the tunnel."""

    name: str
    address: str
    """Its IPv4 or IPv6 address, or a host name resolved when the gateway starts and every minute
    (in the family of our ``listen`` address)."""
    identity: Identity
    secret: bytes | None
    """The key of this pair of gateways; None: both sign with their certificates."""
    networks: tuple[TrafficSelector, ...]
    """The other site's networks (routed into our TUN device over the site's SAs)."""
    local: tuple[TrafficSelector, ...]
    """Our networks the other site may reach (our side of each SA)."""
    initiate: bool = True
    esp: EspSuite = DEFAULT_ESP[0]
    pfs: DHGroup | None = DHGroup.ECP_256
    lifetime: int = 3600
    introduce: tuple[str, ...] = ()
    """Groups (``"*"``: everyone) whose clients we introduce to the site's gateway, so they
    reach its networks directly (issue 18); its gateway must be tunvpn."""

    def introduces(self, groups: Iterable[str]) -> bool:
        """Whether a client of ``groups`` is introduced to this site's gateway."""
        return "*" in self.introduce or not set(groups).isdisjoint(self.introduce)

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        nets = ", ".join(str(n) for n in self.networks)
        return (
            f"SiteRule({self.name!r}, {self.address}, id {self.identity}, networks {nets}, secret=<redacted>)"
        )


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Everything ``gateway.toml`` says (see docs/configuration.md). No secret in its ``repr``."""

    source: str
    """The file it was read from, or ``"<built-in>"``."""
    listen: str
    ike_port: int = 500
    natt_port: int = 4500
    local_id: Identity | None = None
    psks: PskTable = field(default_factory=PskTable)
    credential: Credential | None = None
    trusted_cas: tuple[x509.Certificate, ...] = ()
    peer_certificates: PeerCertificatePolicy = field(default_factory=PeerCertificatePolicy)
    """What clients' certificates must satisfy beyond chaining to ``trusted_cas`` (EKU,
    subject/SAN patterns, revocation and the CRL files)."""
    users: UserTable | None = None
    groups: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    """Group name -> its members' user names."""
    require_xauth: bool | None = False
    """Clients must log in with XAUTH. ``None`` (unset, plugins named): decided when the
    gateway loads them, required if one implements ``tunvpn_verify_credentials``."""
    xauth_chap: bool = False
    """Ask tunvpn clients for a RADIUS-CHAP answer instead of the login password."""
    hybrid: bool = False
    """Accept hybrid authentication: the gateway signs (RSA), clients log in with XAUTH only."""
    allow_aggressive_psk: bool = False
    allow_aggressive_signatures: bool = False
    """Accept Aggressive Mode with RSA signatures or hybrid; off by default, warned."""
    allow_base_mode: bool = False
    """Accept tunvpn's Base Mode (docs/protocol.md); off by default, warned."""
    legacy: bool = False
    phase1: Phase1Policy = field(default_factory=Phase1Policy)
    """The phase 1 algorithms the gateway accepts."""
    pool: AddressPool[IPv4Address] | None = None
    pool6: AddressPool[IPv6Address] | None = None
    """Clients' IPv6 addresses (issue 19): one each, beside the IPv4 one, for the IPv6 policies."""
    dns: tuple[IPv4Address | IPv6Address, ...] = ()
    domains: tuple[str, ...] = ()
    """The default domain first, then split-DNS domains."""
    banner: str | None = None
    rules: tuple[PolicyRule, ...] = ()
    """The phase 2 policies in file order, each with who gets it (at least one)."""
    protocols: tuple[ExtraProtocol, ...] = ()
    """Extra protocols clients must run (announced in phase 1a), in order."""
    plugins: tuple[str, ...] = ()
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    """``[plugin.NAME]`` tables: each plugin's own settings (``GatewayContext.settings``)."""
    source_text: SourceText | None = field(default=None, repr=False, compare=False)
    """Where each key is written in the file: for the errors found once the plugins are
    loaded (their settings, the groups they declare), located like the file's own."""
    tun: str | None = "tunvpn%d"
    """TUN device name (template); ``None``: negotiate IKE only."""
    mtu: int = 1400
    busy_poll_us: int | None = None
    """The data thread's longest busy poll after a lone packet, in microseconds (0: never);
    None: the default (:func:`tunvpn.dataplane.busypoll.default_limit_us`)."""
    accounting_interval: int = 0
    """Seconds between accounting "interim" records of each session (0: none)."""
    max_sessions_per_user: int = 4
    """Logged-in sessions one user may hold at once (0: no limit)."""
    fragmentation: str = "yes"
    """IKE fragmentation: ``yes``, ``force`` or ``no`` (issue 16)."""
    peering: tuple[PeeringRule, ...] = ()
    """``[[peering]]``: who may build direct tunnels with whom (issue 17), in file order."""
    sites: tuple[SiteRule, ...] = ()
    """``[[site]]``: other gateways to build site-to-site tunnels with (issue 18)."""
    plugin_workers: int = 8
    """Threads blocking plugin hooks run in (RADIUS calls); a call beyond is refused as busy."""
    login_timeout: int = 120
    """Seconds a client has after phase 1 to finish its login; then its ISAKMP SA is deleted."""
    reauth_interval: int = 0
    """Seconds after a user's XAUTH after which a phase 1 rekey asks the user again (0: never)."""
    max_half_open: int = 1000
    """Phase 1 exchanges in progress (responder) the gateway keeps state for, in all."""
    max_half_open_per_source: int = 5
    """Phase 1 exchanges in progress from one source address (strongSwan's ``block_threshold``)."""
    ike_queue_size: int = 1024
    """IKE datagrams waiting for the event loop; beyond, new ones are dropped and counted."""
    new_exchanges_per_source: int = 5
    """New phase 1 exchanges a second one source address may start (0: no limit per source)."""
    new_exchanges_per_source_burst: int = 20
    """New phase 1 exchanges one source address may start at once."""
    new_exchanges_total: int = 3000
    """New phase 1 exchanges a second all sources together may start (0: no total limit)."""
    new_exchanges_total_burst: int = 6000
    """New phase 1 exchanges all sources together may start at once."""
    keylog: str | None = None
    control_socket: str | None = None
    metrics: tuple[str, int] | None = None
    """``metrics = "127.0.0.1:9477"``: the Prometheus endpoint's address and port (issue 20)."""
    metrics_per_user: bool = False
    """A ``user`` label on the traffic metrics (a time series per user)."""

    @property
    def policies(self) -> tuple[Phase2Policy, ...]:
        """Every phase 2 policy, in file order."""
        return tuple(rule.policy for rule in self.rules)

    def groups_of(self, user: str | None) -> frozenset[str]:
        """The groups ``user`` is a member of (none for ``None``)."""
        if user is None:
            return frozenset()
        return frozenset(name for name, members in self.groups.items() if user in members)

    def policies_for(self, user: str | None, extra_groups: Iterable[str] = ()) -> tuple[Phase2Policy, ...]:
        """The policies that apply to ``user`` (``None``: a client without XAUTH), who is also
        a member of ``extra_groups`` (say, from a RADIUS reply), in file order."""
        groups = self.groups_of(user) | frozenset(extra_groups)
        return tuple(rule.policy for rule in self.rules if rule.applies_to(user, groups))


_TOP_KEYS = ("gateway", "phase1", "network", "groups", "policy", "protocol", "plugin", "peering", "site")
_PEERING_KEYS = ("name", "from", "to", "esp", "pfs", "lifetime")
_SITE_KEYS = (
    "name", "address", "id", "psk_file", "networks", "local", "initiate", "esp", "pfs", "lifetime",
    "introduce",
)  # fmt: skip
_GATEWAY_KEYS = (
    "listen", "ike_port", "natt_port", "id", "psk_file", "psk_env", "psk", "certificate", "users_file",
    "require_xauth", "allow_aggressive_psk", "allow_aggressive_signatures", "allow_base_mode", "legacy",
    "tun", "mtu", "busy_poll", "keylog",
    "control_socket", "plugins", "metrics", "metrics_per_user",
    "accounting_interval", "xauth_chap", "max_sessions_per_user", "login_timeout", "hybrid",
    "reauth_interval", "fragmentation",
    "plugin_workers", "max_half_open", "max_half_open_per_source", "ike_queue_size",
    "new_exchanges_per_source", "new_exchanges_per_source_burst", "new_exchanges_total",
    "new_exchanges_total_burst",
)  # fmt: skip
_CERT_KEYS = ("cert", "key", "ca", "revocation", "crl_files", "peer_eku", "peer_id_patterns")
_PHASE1_KEYS = ("encryption", "hash", "groups", "lifetime")
_NETWORK_KEYS = ("pool", "pool6", "dns", "domains", "banner")
_POLICY_KEYS = (
    "name", "local", "remote", "esp", "pfs", "lifetime", "lifetime_kb", "groups", "users", "peers",
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9_.@+-]+")
_DOMAIN = re.compile(r"(?=.{1,253}\.?$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")  # fmt: skip


class _Warnings:
    """Warnings about weak choices: each once, and only for a configuration that loads."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.messages: dict[str, None] = {}

    def __call__(self, message: str) -> None:
        self.messages[message] = None

    def emit(self) -> None:
        for message in self.messages:
            log.warning("%s: %s", self.source, message)


def load_gateway_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check a gateway configuration file (relative paths in it are relative to its
    directory). ``env`` (default ``os.environ``) is where ``psk_env`` looks.

    :raises ConfigFileError: anything wrong, with the file, line, key and reason.
    """
    text, mode = read_config_file(path, "gateway configuration")
    base_dir = Path(path).resolve().parent
    return parse_gateway_config(text, str(path), base_dir=base_dir, env=env, file_mode=mode)


def resolve_plugin_paths(value: Any, base_dir: Path) -> Any:
    """A ``[plugin.NAME]`` table with every string under a key ending in ``_file`` (at any depth,
    e.g. ``servers = [{secret_file = ...}]``) made absolute against the configuration file's
    directory, as for tunvpn's own ``psk_file``/``users_file``."""
    if isinstance(value, dict):
        return {
            k: str(resolve_path(base_dir, v))
            if k.endswith("_file") and isinstance(v, str)
            else resolve_plugin_paths(v, base_dir)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve_plugin_paths(v, base_dir) for v in value]
    return value


def _plugin_settings(
    top: TableReader, plugins: Sequence[str], base_dir: Path | None = None
) -> dict[str, Mapping[str, Any]]:
    """``[plugin.NAME]`` tables, one per plugin named in ``gateway.plugins`` (or built in);
    ``*_file`` paths resolved against ``base_dir``."""
    table = top.table("plugin", "[plugin.NAME]", None)
    if table is None:
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for name, value in table.data.items():
        if name not in plugins and name not in BUILTIN_PLUGINS:
            raise table.error(name, f"[plugin.{name}] is for a plugin that gateway.plugins does not name")
        if not isinstance(value, dict):
            raise table.error(name, f"expected a table ([plugin.{name}]), found {_type_name(value)}")
        out[name] = MappingProxyType(resolve_plugin_paths(dict(value), base_dir) if base_dir else dict(value))
    return out


BUILTIN_PLUGINS = ("users-file",)
"""Plugins the gateway enables by itself (users-file: when ``users_file`` is set)."""


def parse_gateway_config(
    text: str,
    source: str,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    file_mode: int | None = None,
) -> GatewayConfig:
    """Check a gateway configuration text. ``file_mode`` is the permission bits of the file it
    came from: an inline ``psk`` is accepted only when they allow no group/other access."""
    env = os.environ if env is None else env
    src = SourceText(text, source)
    top = TableReader(src, parse_toml(src, text), "", "the top level", _TOP_KEYS)
    warn = _Warnings(source)

    gw = top.table("gateway", "[gateway]", _GATEWAY_KEYS)
    if gw is None:
        raise src.error("gateway", "a [gateway] table with at least `listen` is required")
    listen = parse_ip(gw, "listen", required=True)
    assert listen is not None
    legacy = gw.flag("legacy", False)
    allow_aggressive_psk = gw.flag("allow_aggressive_psk", False)
    allow_aggressive_signatures = gw.flag("allow_aggressive_signatures", False)
    allow_base_mode = gw.flag("allow_base_mode", False)

    psks = read_psks(gw, base_dir, env, file_mode)
    cert_table = gw.table("certificate", "[gateway.certificate]", _CERT_KEYS)
    credential, cas = read_credential(cert_table, base_dir) if cert_table is not None else (None, ())
    peer_certificates = (
        read_peer_certificates(cert_table, base_dir) if cert_table is not None else PeerCertificatePolicy()
    )
    if not psks and credential is None:
        raise gw.error("", "no way to authenticate: give psk_file, psk_env, psk or [gateway.certificate]")

    users: UserTable | None = None
    if "users_file" in gw:
        users_path = resolve_path(base_dir, gw.required_text("users_file"))
        try:
            users = UserTable.load(users_path)
        except SecretFileError as exc:
            raise gw.error("users_file", str(exc)) from None
    plugins = gw.texts("plugins") or ()
    for name in plugins:
        if not _NAME.fullmatch(name):
            raise gw.error("plugins", f"{name!r} is not a plugin name")
    if len(set(plugins)) != len(plugins):
        raise gw.error("plugins", "a plugin is named twice")
    # unset: required when a login source exists (users_file here; a plugin's
    # tunvpn_verify_credentials is known only once the gateway loads it: None = decide then)
    explicit_xauth = gw._typed("require_xauth", bool, "true or false")
    require_xauth = explicit_xauth
    if require_xauth is None:
        require_xauth = True if users is not None else (None if plugins else False)
    if require_xauth and users is None and not plugins:
        raise gw.error("require_xauth", "XAUTH needs users_file (or an authentication plugin)")
    xauth_chap = gw.flag("xauth_chap", False)
    if xauth_chap and users is not None and users.hashed_users():
        raise gw.error(
            "xauth_chap",
            "RADIUS-CHAP needs each user's clear password, but users_file holds scrypt hashes for "
            + ", ".join(users.hashed_users()),
        )
    if xauth_chap and (require_xauth is False or (users is None and not plugins)):
        raise gw.error(
            "xauth_chap", "RADIUS-CHAP is a way to run XAUTH: it needs a login source and require_xauth"
        )
    hybrid = gw.flag("hybrid", False)
    if hybrid and (credential is None or credential.auth_method != AuthMethod.RSA_SIGNATURES):
        raise gw.error("hybrid", "hybrid authentication needs an RSA certificate in [gateway.certificate]")
    if hybrid and (require_xauth is False or (users is None and not plugins)):
        raise gw.error(
            "hybrid", "hybrid clients log in with XAUTH only: it needs a login source and require_xauth"
        )

    tun: str | None = "tunvpn%d"
    if "tun" in gw:
        value = gw.data["tun"]
        if value is False:
            tun = None
        elif isinstance(value, str) and value.strip() and len(value) < 16:
            tun = value.strip()
        else:
            raise gw.error("tun", "expected a device name (under 16 characters) or false (IKE only)")
    keylog = gw.text("keylog")
    if keylog is not None:
        keylog = str(resolve_path(base_dir, keylog))
        warn(f"keylog = {keylog}: IKE and ESP keys are written to disk (debugging only)")
    control_socket = gw.text("control_socket")
    if control_socket is not None:
        control_socket = str(resolve_path(base_dir, control_socket))
    metrics = None
    metrics_text = gw.text("metrics")
    if metrics_text is not None:
        metrics = gw.convert("metrics", metrics_text, parse_endpoint, "metrics address (ADDRESS:PORT)")
        if not ipaddress.ip_address(metrics[0]).is_loopback:
            warn(
                f"metrics = {metrics_text}: the metrics endpoint is reachable beyond this host "
                "(it has no authentication)"
            )
    if legacy:
        warn(
            "legacy = true: weak algorithms (3DES, DES, MD5, MODP-1024/1536, ESP HMAC-SHA1) are "
            "accepted; use it only for peers that offer nothing stronger"
        )
    if allow_aggressive_psk:
        warn(
            "allow_aggressive_psk = true: Aggressive Mode exposes a hash of the pre-shared key to "
            "offline guessing; use long random group secrets"
        )
    if allow_aggressive_signatures:
        warn(
            "allow_aggressive_signatures = true: every Aggressive Mode first message costs a "
            "Diffie-Hellman and a signature before its sender is verified (budgeted per source "
            "and in total); Main Mode does the same login"
        )
    if allow_base_mode:
        warn(
            "allow_base_mode = true: tunvpn's Base Mode sends both identities in the clear and only "
            "tunvpn clients speak it; a rogue gateway can test guesses of a pre-shared key offline, "
            "as in Main Mode (docs/protocol.md)"
        )

    phase1 = _phase1(top.table("phase1", "[phase1]", _PHASE1_KEYS), legacy)
    pool, pool6, dns, domains, banner = _network(top.table("network", "[network]", _NETWORK_KEYS))
    groups = _groups(top.table("groups", "[groups]", None))
    # with plugins named, a group may be one a plugin declares (tunvpn_declare_groups): the
    # gateway checks the names once it loaded them (tunvpn.gateway.plugin_setup)
    known_groups = None if plugins else groups
    rules = _rules(top, legacy, known_groups, pool, pool6)
    protocols = _protocols(top)
    plugin_settings = _plugin_settings(top, plugins, base_dir)

    config = GatewayConfig(
        source=source,
        listen=listen,
        ike_port=gw.number("ike_port", 500, 1, 65535),
        natt_port=gw.number("natt_port", 4500, 1, 65535),
        local_id=read_identity(gw),
        psks=psks,
        credential=credential,
        trusted_cas=cas,
        peer_certificates=peer_certificates,
        users=users,
        groups=MappingProxyType(groups),
        require_xauth=require_xauth,
        xauth_chap=xauth_chap,
        hybrid=hybrid,
        allow_aggressive_psk=allow_aggressive_psk,
        allow_aggressive_signatures=allow_aggressive_signatures,
        allow_base_mode=allow_base_mode,
        legacy=legacy,
        phase1=phase1,
        pool=pool,
        pool6=pool6,
        dns=dns,
        domains=domains,
        banner=banner,
        rules=rules,
        peering=_peering(top, legacy, known_groups, pool),
        sites=_sites(
            top, legacy, base_dir, pool, rules, credential is not None and bool(cas), known_groups, pool6
        ),
        protocols=protocols,
        plugins=plugins,
        plugin_settings=MappingProxyType(plugin_settings),
        source_text=src,
        tun=tun,
        mtu=gw.number("mtu", 1400, 576, 65535),
        busy_poll_us=gw.number("busy_poll", -1, 0, 100_000) if "busy_poll" in gw.data else None,
        keylog=keylog,
        accounting_interval=gw.number("accounting_interval", 0, 0, 86400),
        max_sessions_per_user=gw.number("max_sessions_per_user", 4, 0, 1_000_000),
        fragmentation=read_fragmentation(gw),
        login_timeout=gw.number("login_timeout", 120, 10, 3600),
        reauth_interval=_reauth_interval(gw),
        max_half_open=gw.number("max_half_open", 1000, 1, 1_000_000),
        max_half_open_per_source=gw.number("max_half_open_per_source", 5, 1, 1_000_000),
        ike_queue_size=gw.number("ike_queue_size", 1024, 16, 1_000_000),
        new_exchanges_per_source=gw.number("new_exchanges_per_source", 5, 0, 1_000_000),
        new_exchanges_per_source_burst=gw.number("new_exchanges_per_source_burst", 20, 1, 1_000_000),
        new_exchanges_total=gw.number("new_exchanges_total", 3000, 0, 1_000_000),
        new_exchanges_total_burst=gw.number("new_exchanges_total_burst", 6000, 1, 1_000_000),
        plugin_workers=gw.number("plugin_workers", 8, 1, 256),
        control_socket=control_socket,
        metrics=metrics,
        metrics_per_user=gw.flag("metrics_per_user", False),
    )
    warn.emit()
    return config


def parse_endpoint(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (``[ADDRESS]:PORT`` for IPv6) as (address, port); ValueError otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:9477")
    host = host.removeprefix("[").removesuffix("]")
    return str(ipaddress.ip_address(host)), int(port_text)


def _network(
    table: TableReader | None,
) -> tuple[
    AddressPool[IPv4Address] | None,
    AddressPool[IPv6Address] | None,
    tuple[IPv4Address | IPv6Address, ...],
    tuple[str, ...],
    str | None,
]:
    if table is None:
        return None, None, (), (), None
    pool = pool6 = None
    text = table.text("pool")
    if text is not None:
        try:
            pool = AddressPool.parse(text)
        except ConfigError as exc:
            raise table.error("pool", str(exc)) from None
    text6 = table.text("pool6")
    if text6 is not None:
        try:
            pool6 = AddressPool.parse6(text6)
        except ConfigError as exc:
            raise table.error("pool6", str(exc)) from None
        if pool is None:
            raise table.error("pool6", "pool6 goes with pool: every client gets an IPv4 address too")
    dns = tuple(
        table.convert("dns", a, ipaddress.ip_address, "DNS server (IPv4 or IPv6 address)")
        for a in table.texts("dns") or ()
    )
    domains = table.texts("domains") or ()
    for domain in domains:
        if not _DOMAIN.fullmatch(domain):
            raise table.error("domains", f"{domain!r} is not a domain name")
    banner = table.text("banner")
    if banner is not None and len(banner.encode()) > 0xFFFF:
        raise table.error("banner", "longer than 65535 octets")
    return pool, pool6, dns, domains, banner


def undefined_group(
    group: str, groups: Mapping[str, frozenset[str]] | None, declared: Mapping[str, str] | None = None
) -> str | None:
    """Why a ``[[policy]]``, ``[[peering]]`` or ``[[site]]`` may not name ``group`` (it is
    neither in ``[groups]`` nor declared by a plugin: group -> plugin), or ``None`` when it
    may. ``groups`` is ``None`` while the plugins are not loaded yet: every name may."""
    if groups is None or group in groups or (declared is not None and group in declared):
        return None
    known = ", ".join(groups) or "none defined"
    by_plugins = ", ".join(f"{g} ({p})" for g, p in (declared or {}).items())
    return (
        f"group {group!r} is not defined in [groups] ({known})"
        + (f" nor declared by a plugin ({by_plugins})" if by_plugins else "")
        + f"; for a group only a plugin fills, declare it empty: [groups] {group} = []"
    )


def _groups(table: TableReader | None) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    if table is None:
        return groups
    for name in table.data:
        if not _NAME.fullmatch(name):
            raise table.error(name, f"{name!r} is not a group name (letters, digits, _ . @ + -)")
        members = table.texts(name) or ()
        groups[name] = frozenset(members)
    return groups


def _rules(
    top: TableReader,
    legacy: bool,
    groups: Mapping[str, frozenset[str]] | None,
    pool: AddressPool[IPv4Address] | None,
    pool6: AddressPool[IPv6Address] | None = None,
) -> tuple[PolicyRule, ...]:
    blocks = top.tables("policy", "[[policy]]", _POLICY_KEYS)
    if not blocks and not top.tables("site", "[[site]]", _SITE_KEYS):  # a gateway of sites only
        raise top.error("policy", "no [[policy]] block: define at least one network the clients reach")
    rules: list[PolicyRule] = []
    names: dict[str, str] = {}
    default_esp = DEFAULT_ESP + LEGACY_ESP if legacy else DEFAULT_ESP
    for block in blocks:
        name = block.required_text("name").strip()
        if len(name.encode()) > MAX_NAME or not name.isprintable():
            raise block.error("name", f"a policy name is 1 to {MAX_NAME} printable octets")
        if name in names:
            raise block.error("name", f"policy name {name!r} is already used by {names[name]}")
        names[name] = block.label
        local = block.convert("local", block.required_text("local"), TrafficSelector.parse, "selector")
        remote_text = block.text("remote", "assigned")
        assert remote_text is not None
        remote: TrafficSelector | None = None
        if remote_text.strip().lower() == "assigned":
            if pool is None:
                raise block.error("remote", "the client's assigned address needs pool in [network]")
            if local.version != 4 and pool6 is None:
                raise block.error(
                    "local", f"{local} is IPv6: the clients' IPv6 addresses need pool6 in [network]"
                )
        else:
            remote = block.convert("remote", remote_text, TrafficSelector.parse, "selector")
            if remote.version != local.version:
                raise block.error("remote", f"{remote} and local {local} are of different address families")
        esp = _pick(block, "esp", ESP_SUITES, lambda s: s.is_legacy or s in LEGACY_ESP, legacy, "ESP suite")
        pfs_text = block.text("pfs", "ecp256")
        assert pfs_text is not None
        pfs = None if pfs_text.strip().lower() == "none" else parse_group(block, "pfs", pfs_text, legacy)
        member_groups = block.texts("groups") or ()
        for group in member_groups:
            if (reason := undefined_group(group, groups)) is not None:
                raise block.error("groups", reason)
        seconds = parse_duration(block, "lifetime", 3600)
        kilobytes = block.number("lifetime_kb", 0, 0, (1 << 32) - 1)
        try:
            policy = Phase2Policy(name, local, remote, esp or default_esp, pfs, seconds, kilobytes)
        except ValueError as exc:
            raise block.error("", str(exc)) from None
        peers = []
        for text in block.texts("peers") or ():
            try:
                peers.append(IdentityPattern.parse(text))
            except LocalProtocolError as exc:
                raise block.error("peers", f"peers {text!r}: {exc}") from None
        rules.append(PolicyRule(policy, member_groups, block.texts("users") or (), tuple(peers)))
    overlap = pool_overlap(pool, pool6, [rule.policy for rule in rules])
    if overlap is not None:
        key, index, reason = overlap
        block = blocks[index]
        raise top.source.error(key, f"{reason} ({block.label}, line {top.source.line_of(block.key)})")
    return tuple(rules)


def pool_overlap(
    pool: AddressPool[IPv4Address] | None,
    pool6: AddressPool[IPv6Address] | None,
    policies: Sequence[Phase2Policy],
) -> tuple[str, int, str] | None:
    """The first policy whose protected network overlaps the address pool of its family (a
    client's address would fall inside a network it reaches through the tunnel): ``(key,
    index of the policy, reason)``, or None. gateway.toml's check and the gateway's own
    (tunvpn.gateway.plugin_setup, for options built in code) are this one."""
    for key, family_pool in (("network.pool", pool), ("network.pool6", pool6)):
        if family_pool is None:
            continue
        selector = _pool_selector(family_pool)
        for index, policy in enumerate(policies):
            local = policy.gateway_ts
            if (
                local.version == family_pool.first.version
                and not local.is_any
                and local.intersect(selector) is not None
            ):
                return (
                    key,
                    index,
                    (
                        f"the pool {family_pool.first}-{family_pool.last} overlaps {local}, the protected "
                        f"network of policy {policy.name!r}"
                    ),
                )
    return None


def _tunnel_parameters(block: TableReader, legacy: bool) -> tuple[EspSuite, DHGroup | None, int]:
    """``esp`` (the first suite given), ``pfs`` (a group or ``"none"``) and ``lifetime`` of a
    ``[[peering]]`` or ``[[site]]`` block: the parameters of the tunnels it makes."""
    esp = _pick(block, "esp", ESP_SUITES, lambda s: s.is_legacy or s in LEGACY_ESP, legacy, "ESP suite")
    pfs_text = block.text("pfs", "ecp256")
    assert pfs_text is not None
    pfs = None if pfs_text.strip().lower() == "none" else parse_group(block, "pfs", pfs_text, legacy)
    return (esp or DEFAULT_ESP)[0], pfs, parse_duration(block, "lifetime", 3600)


def _peering(
    top: TableReader,
    legacy: bool,
    groups: Mapping[str, frozenset[str]] | None,
    pool: AddressPool[IPv4Address] | None,
) -> tuple[PeeringRule, ...]:
    """``[[peering]]`` blocks: name, from and to (group names or ``"*"``), esp, pfs, lifetime."""
    out: list[PeeringRule] = []
    for block in top.tables("peering", "[[peering]]", _PEERING_KEYS):
        name = block.required_text("name").strip()
        if len(name.encode()) > MAX_NAME or not name.isprintable():
            raise block.error("name", f"a peering name is 1 to {MAX_NAME} printable octets")
        if any(rule.name == name for rule in out):
            raise block.error("name", f"peering {name!r} is defined twice")
        if pool is None:
            raise block.error("name", "peers are introduced by their assigned addresses: pool in [network]")
        sides = []
        for key in ("from", "to"):
            members = tuple(block.texts(key) or ())
            if not members:
                raise block.error(key, f'{key}: at least one group, or "*" for everyone')
            for group in members:
                if group != "*" and (reason := undefined_group(group, groups)) is not None:
                    raise block.error(key, reason)
            sides.append(members)
        esp, pfs, lifetime = _tunnel_parameters(block, legacy)
        out.append(
            PeeringRule(
                name,
                sides[0],
                sides[1],
                esp,
                pfs,
                lifetime,
            )
        )
    return tuple(out)


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
"""A DNS host name (RFC 1123 labels)."""


def _sites(
    top: TableReader,
    legacy: bool,
    base_dir: Path,
    pool: AddressPool[IPv4Address] | None,
    rules: Sequence[PolicyRule],
    certificates: bool,
    groups: Mapping[str, frozenset[str]] | None,
    pool6: AddressPool[IPv6Address] | None = None,
) -> tuple[SiteRule, ...]:
    """``[[site]]`` blocks: name, address, id, psk_file, networks, local, initiate, esp, pfs,
    lifetime, introduce (group names or ``"*"``). ``local`` defaults to our pool and the
    networks of our policies. Without ``psk_file`` the gateways sign with their certificates
    (``certificates``: ours and a CA are configured); the site's ``id`` must then be in its
    certificate."""
    out: list[SiteRule] = []
    for block in top.tables("site", "[[site]]", _SITE_KEYS):
        name = block.required_text("name").strip()
        if not name or len(name.encode()) > MAX_NAME or not name.isprintable() or "/" in name:
            raise block.error("name", f"a site name is 1 to {MAX_NAME} printable octets, no '/'")
        if any(site.name == name for site in out):
            raise block.error("name", f"site {name!r} is defined twice")
        address = block.required_text("address").strip()
        by_name = False
        try:
            address = str(ipaddress.ip_address(address))  # IPv4 or IPv6 (issue 19)
        except ValueError:
            if not _HOST_NAME.fullmatch(address) or address.replace(".", "").isdigit():
                raise block.error(
                    "address", f"{address!r} is neither an IP address nor a host name"
                ) from None
            by_name = True
        if any(site.address == address for site in out):
            raise block.error("address", f"two sites at {address}")
        id_text = block.text("id")
        if by_name and id_text is None:
            raise block.error(
                "id", f"a site given by name ({address}) needs its phase 1 identity: the other gateway's id"
            )
        identity = block.convert("id", id_text or address, Identity.parse, "identity")
        secret: bytes | None = None
        if block.text("psk_file") is not None:
            path = resolve_path(base_dir, block.required_text("psk_file"))
            try:
                secret = read_private_file(path, "PSK file").strip().encode()
            except SecretFileError as exc:
                raise block.error("psk_file", str(exc)) from None
            if len(secret) < 20:
                raise block.error(
                    "psk_file", "a site's key needs 20 characters or more (openssl rand -base64 32)"
                )
        elif not certificates:
            raise block.error(
                "psk_file",
                "psk_file: the key of this pair of gateways, or [gateway.certificate] with a ca to "
                "authenticate with certificates",
            )
        networks = tuple(
            block.convert("networks", text, TrafficSelector.parse, "selector")
            for text in block.texts("networks") or ()
        )
        if not networks and not block.flag("initiate", True):
            raise block.error(
                "networks", "networks: the other site's networks (only a site we start may learn them)"
            )
        local_texts = block.texts("local")
        if local_texts:
            local = tuple(block.convert("local", t, TrafficSelector.parse, "selector") for t in local_texts)
        else:
            own = [_pool_selector(p) for p in (pool, pool6) if p is not None]
            theirs = set(networks)  # a policy that gives clients the site's networks is not ours
            local = tuple(
                dict.fromkeys(
                    [*own, *(r.policy.gateway_ts for r in rules if r.policy.gateway_ts not in theirs)]
                )
            )
        if not local:
            raise block.error(
                "local", "local: our networks the site may reach (no pool or policy to default to)"
            )
        introduce = tuple(block.texts("introduce") or ())
        for group in introduce:
            if group != "*" and (reason := undefined_group(group, groups)) is not None:
                raise block.error("introduce", reason)
        if introduce and pool is None:
            raise block.error(
                "introduce", "clients are introduced by their assigned addresses: pool in [network]"
            )
        esp, pfs, lifetime = _tunnel_parameters(block, legacy)
        out.append(
            SiteRule(
                name,
                address,
                identity,
                secret,
                networks,
                local,
                block.flag("initiate", True),
                esp,
                pfs,
                lifetime,
                introduce,
            )
        )
    return tuple(out)


def _pool_selector(pool: AddressPool[IPv4Address] | AddressPool[IPv6Address]) -> TrafficSelector:
    return TrafficSelector.from_range(pool.first, pool.last)


def _protocols(top: TableReader) -> tuple[ExtraProtocol, ...]:
    out: list[ExtraProtocol] = []
    for block in top.tables("protocol", "[[protocol]]", None):
        name = block.required_text("name").strip()
        params: list[tuple[str, str]] = []
        for key, value in block.data.items():
            if key == "name":
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            elif not isinstance(value, str):
                raise block.error(
                    key, f"a protocol parameter is a string, number or boolean, not {_type_name(value)}"
                )
            params.append((key, value))
        if any(p.name == name for p in out):
            raise block.error("name", f"protocol {name!r} is listed twice")
        try:
            out.append(ExtraProtocol(name, tuple(params)))
        except ValueError as exc:
            raise block.error("name", str(exc)) from None
    return tuple(out)


# --------------------------------------------------------------------------- built-in configuration

DEFAULT_GATEWAY_TOML = """\
# tunvpn's built-in demo gateway (tunvpn.config.gateway.default_gateway_toml fills in the values).
[gateway]
listen = "{listen}"
psk_file = "{psk_file}"
users_file = "{users_file}"
require_xauth = true

[network]
pool = "{pool}"

[groups]
eng = [{eng_users}]

[[policy]]
name = "net-a"
local = "{net_a}"

[[policy]]
name = "net-b"
local = "{net_b}"

[[policy]]
name = "eng"
local = "{net_eng}"
groups = ["eng"]
"""
"""A ``str.format`` template: ``{listen}``, ``{psk_file}``, ``{users_file}``, ``{pool}``,
``{net_a}``, ``{net_b}``, ``{net_eng}`` go inside TOML strings; ``{eng_users}`` is the inside
of an array of strings. Two policies for everyone, one (``eng``) for the ``eng`` group."""


def _toml_string(value: str) -> str:
    """The inside of a TOML basic string."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)


def default_gateway_toml(
    *,
    listen: str,
    psk_file: str | os.PathLike[str],
    users_file: str | os.PathLike[str],
    pool: str,
    net_a: str,
    net_b: str,
    net_eng: str,
    eng_users: Sequence[str] = ("demo",),
) -> str:
    """:data:`DEFAULT_GATEWAY_TOML` with the values filled in (quoted for TOML); parse it with
    ``parse_gateway_config(text, BUILT_IN, base_dir=...)``."""
    values = {
        "listen": listen, "psk_file": os.fspath(psk_file), "users_file": os.fspath(users_file),
        "pool": pool, "net_a": net_a, "net_b": net_b, "net_eng": net_eng,
    }  # fmt: skip
    quoted = {k: _toml_string(v) for k, v in values.items()}
    users = ", ".join(f'"{_toml_string(u)}"' for u in eng_users)
    return DEFAULT_GATEWAY_TOML.format(eng_users=users, **quoted)


__all__ = [
    "BUILT_IN",
    "DEFAULT_GATEWAY_TOML",
    "ESP_SUITES",
    "PHASE1_ENCRYPTION",
    "PHASE1_HASHES",
    "ConfigFileError",
    "GatewayConfig",
    "PolicyRule",
    "SourceText",
    "TableReader",
    "default_gateway_toml",
    "load_gateway_config",
    "parse_gateway_config",
    "parse_duration",
    "read_config_file",
    "read_credential",
    "read_identity",
    "read_psks",
    "resolve_path",
]
