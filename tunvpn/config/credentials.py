"""Secret files: pre-shared keys and XAUTH users, read only when nobody else can read them.

File formats (``#`` starts a comment line, blank lines are ignored):

PSK file
    either a single line holding just the secret (used for every peer), or lines of
    ``ID SECRET``, where ID is a peer identity as tunvpn prints it (``keyid:group``,
    ``10.0.0.2``, ``@vpn.example``) or ``*`` for everybody. A secret may be written in
    double quotes (to keep spaces) or as ``0x`` followed by hex digits.
Users file
    lines of ``user:password`` (the password is everything after the first colon), or
    ``user:$scrypt$ln=15,r=8,p=1$SALT$HASH`` (a hash from ``tunvpn passwd``,
    :mod:`tunvpn.config.passwords`; such a user cannot log in with CHAP).

Both files must be private (``chmod 600``), owned by the user tunvpn runs as (or root) and
named directly, not through a symbolic link: anything else is refused with a message naming the
file and the fix (:mod:`tunvpn.config.secretfile`). ``TUNVPN_PSK`` in the environment replaces the
PSK file (a single secret for every peer).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from tunvpn.config.passwords import PasswordHash, PasswordHashError, is_hashed
from tunvpn.config.secretfile import SecretFileError, read_secret_text
from tunvpn.ike.config import PskTable
from tunvpn.ike.crypto import chap_response

PSK_ENV = "TUNVPN_PSK"
PASSWORD_ENV = "TUNVPN_PASSWORD"


def read_private_file(path: str | os.PathLike[str], what: str) -> str:
    """The text of ``path`` if it is private to us (:func:`tunvpn.config.secretfile.read_secret_text`:
    no symbolic link, owned by us or root, no group/other permissions)."""
    return read_secret_text(path, what)


def _content_lines(text: str) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def parse_secret(text: str) -> bytes:
    """``"quoted text"``, ``0xHEX`` or plain text, as bytes."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].encode()
    if text[:2].lower() == "0x" and len(text) > 2:
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError("0x secret with non-hex digits") from None
    return text.encode()


def parse_psk_text(text: str, source: str) -> dict[str, bytes]:
    """PSK file contents -> {identity or "*": secret}."""
    lines = _content_lines(text)
    if not lines:
        raise SecretFileError(f"{source}: no secret in it")
    if len(lines) == 1 and len(lines[0][1].split(None, 1)) == 1:
        number, line = lines[0]
        try:
            return {"*": parse_secret(line)}
        except ValueError as exc:
            raise SecretFileError(f"{source} line {number}: {exc}") from None
    entries: dict[str, bytes] = {}
    for number, line in lines:
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise SecretFileError(f"{source} line {number}: expected `ID SECRET`")
        ident, secret_text = parts
        try:
            secret = parse_secret(secret_text)
        except ValueError as exc:
            raise SecretFileError(f"{source} line {number}: {exc}") from None
        if not secret:
            raise SecretFileError(f"{source} line {number}: empty secret")
        if ident in entries:
            raise SecretFileError(f"{source} line {number}: {ident} listed twice")
        entries[ident] = secret
    return entries


def load_psks(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> PskTable:
    """The PSK table from ``path`` or, when no file is named, from ``$TUNVPN_PSK``."""
    env = os.environ if env is None else env
    if path is not None:
        return PskTable(parse_psk_text(read_private_file(path, "PSK file"), f"PSK file {path}"))
    secret = env.get(PSK_ENV)
    if secret:
        return PskTable({"*": secret.encode()})
    raise SecretFileError(f"no pre-shared key: give --psk-file FILE (mode 600) or set {PSK_ENV}")


class UserTable:
    """XAUTH users and passwords; ``repr`` shows neither. Checks take the same time for unknown users."""

    def __init__(self, users: Mapping[str, bytes | PasswordHash]) -> None:
        self._users = dict(users)

    def hashed_users(self) -> list[str]:
        """Users stored as scrypt hashes (they cannot answer CHAP)."""
        return [user for user, entry in self._users.items() if isinstance(entry, PasswordHash)]

    def __repr__(self) -> str:
        return f"UserTable({len(self._users)} users)"

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user: object) -> bool:
        return user in self._users

    def check(self, user: str, password: str | None) -> bool:
        expected = self._users.get(user)
        given = (password or "").encode()
        if expected is None:
            hmac.compare_digest(given, given)  # same work as a real comparison
            return False
        if isinstance(expected, PasswordHash):  # scrypt, then a constant-time comparison
            return expected.verify(given) and password is not None
        return hmac.compare_digest(expected, given) and password is not None

    def check_chap(self, user: str, identifier: int, challenge: bytes, response: bytes) -> bool:
        """A CHAP-MD5 answer (RFC 1994 section 4.1: MD5(identifier, secret, challenge)), in constant time."""
        expected = self._users.get(user)
        if isinstance(expected, PasswordHash):  # CHAP needs the clear secret
            return False
        digest = chap_response(identifier, expected or b"", challenge)
        return hmac.compare_digest(digest, response) and expected is not None

    @classmethod
    def parse(cls, text: str, source: str) -> UserTable:
        users: dict[str, bytes | PasswordHash] = {}
        for number, line in _content_lines(text):
            user, sep, password = line.partition(":")
            if not sep or not user:
                raise SecretFileError(f"{source} line {number}: expected `user:password`")
            if user in users:
                raise SecretFileError(f"{source} line {number}: user {user!r} listed twice")
            try:
                users[user] = PasswordHash.parse(password) if is_hashed(password) else password.encode()
            except PasswordHashError as exc:
                raise SecretFileError(f"{source} line {number}: user {user!r}: {exc}") from None
        if not users:
            raise SecretFileError(f"{source}: no users in it")
        return cls(users)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserTable:
        return cls.parse(read_private_file(path, "users file"), f"users file {path}")


def load_password(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> str | None:
    """An XAUTH password from a private file (first line) or ``$TUNVPN_PASSWORD``; None if neither."""
    env = os.environ if env is None else env
    if path is not None:
        lines = read_private_file(path, "password file").splitlines()
        if not lines or not lines[0]:
            raise SecretFileError(f"password file {path}: the first line is empty")
        return lines[0]
    return env.get(PASSWORD_ENV) or None


__all__ = [
    "PASSWORD_ENV",
    "PSK_ENV",
    "SecretFileError",
    "UserTable",
    "load_password",
    "load_psks",
    "parse_psk_text",
    "parse_secret",
    "read_private_file",
]
