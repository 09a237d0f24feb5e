"""scrypt password hashes for the users file (RFC 7914), so a stolen users file does not give
the passwords away.

An entry ``alice:$scrypt$ln=15,r=8,p=1$SALT$HASH`` holds the scrypt hash of alice's password
with cost N = 2**ln, block size r and parallelism p; SALT (16 random octets) and HASH
(32 octets) are base64 without padding. ``tunvpn passwd alice`` prints such a line. The
defaults (N = 2**15, r = 8, p = 1: 32 MiB and about 0.1 s per check) follow RFC 7914 section 2's
interactive-login advice; the login throttle (tunvpn/gateway/logins.py) bounds how often a check runs.

A hashed entry cannot answer CHAP (XAUTH RADIUS-CHAP, PPP CHAP in L2TP), which needs the
clear secret: ``xauth_chap = true`` with a hashed user is a configuration error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

PREFIX = "$scrypt$"
DEFAULT_LN, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
_FORMAT = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


class PasswordHashError(ValueError):
    """A ``$scrypt$`` entry is malformed or its costs are out of range (the message says which)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``$scrypt$`` entry; ``repr`` shows the costs, never the salt or hash."""

    ln: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 10 <= self.ln <= 20 or not 1 <= self.r <= 32 or not 1 <= self.p <= 16:
            raise PasswordHashError(
                f"scrypt costs ln={self.ln},r={self.r},p={self.p} outside ln 10-20, r 1-32, p 1-16"
            )
        if len(self.salt) < 4 or len(self.digest) < 16:
            raise PasswordHashError("scrypt salt under 4 or hash under 16 octets")

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        match = _FORMAT.fullmatch(text.strip())
        if match is None:
            raise PasswordHashError("expected $scrypt$ln=N,r=N,p=N$SALT$HASH (base64)")
        ln, r, p, salt, digest = match.groups()
        try:
            return cls(int(ln), int(r), int(p), _unb64(salt), _unb64(digest))
        except binascii.Error:
            raise PasswordHashError("the salt or hash is not base64") from None

    def encode(self) -> str:
        return f"{PREFIX}ln={self.ln},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def verify(self, password: str | bytes) -> bool:
        """Whether ``password`` has this hash (the comparison is constant-time)."""
        secret = password.encode() if isinstance(password, str) else password
        return hmac.compare_digest(
            _scrypt(secret, self.salt, self.ln, self.r, self.p, len(self.digest)), self.digest
        )


def _scrypt(secret: bytes, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        secret, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * r * (n + p + 2) + (1 << 20)
    )


def hash_password(
    password: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R, p: int = DEFAULT_P, salt: bytes | None = None
) -> str:
    """``$scrypt$...`` for ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password.encode(), salt, ln, r, p, HASH_BYTES)
    return PasswordHash(ln, r, p, salt, digest).encode()


def is_hashed(entry: str) -> bool:
    """A users-file password field that is a hash (not a clear password)."""
    return entry.startswith(PREFIX)


__all__ = ["PasswordHash", "PasswordHashError", "hash_password", "is_hashed"]
