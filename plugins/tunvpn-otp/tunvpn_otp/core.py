"""The OTP verifier, sans I/O: no files, sockets, threads or clock; the time is passed in.

A user's secret is a :class:`Record`; every check returns a :class:`Result` holding the
outcome and the record to store afterwards (records are immutable). The passcode is
SecurID-style: the PIN followed by the tokencode (the last ``digits`` characters).

* Exact window: TOTP the current step (corrected by the stored offset) +-1; HOTP the next
  ``hotp_window`` counters. A code is accepted once only (the last accepted TOTP step, the
  HOTP counter moves past it).
* Drift: a code further out (TOTP up to ``totp_drift`` steps, HOTP up to ``hotp_drift``
  counters) is not accepted by itself: the outcome is ``NEXT_TOKENCODE`` and only the code
  that follows the drifted one accepts; the record is then resynchronised.
* New PIN: a user without a PIN (who then enters the tokencode alone) or flagged
  ``must_change_pin`` gets ``NEW_PIN`` after a good code; :func:`set_pin` stores the new PIN.
* Lockout: ``lockout_after`` failures in a row lock the user for ``lockout_seconds``.

PINs are kept as scrypt hashes; every comparison goes through :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyotp


class Kind(enum.StrEnum):
    TOTP = "totp"
    HOTP = "hotp"


class Outcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    LOCKED = "locked"
    NEXT_TOKENCODE = "next tokencode"
    """The code was drifted: ask for the next one (:func:`check_next_tokencode`)."""
    NEW_PIN = "new pin"
    """The code was good but the user must choose a PIN (:func:`set_pin`)."""


class Reason(enum.Enum):
    """Why a check was refused (for the log and the message; never the secret itself)."""

    NONE = "none"
    BAD_FORMAT = "the passcode is not a PIN followed by the tokencode"
    WRONG = "wrong PIN or tokencode"
    REPLAYED = "this tokencode was used already"
    LOCKED = "too many failures"
    NOT_NEXT = "not the next tokencode"


DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class Policy:
    """The verifier's knobs (``[plugin.otp]`` settings)."""

    lockout_after: int = 5
    lockout_seconds: float = 300.0
    totp_window: int = 1
    totp_drift: int = 10
    hotp_window: int = 10
    hotp_drift: int = 100
    pin_min: int = 4
    pin_max: int = 8

    def __post_init__(self) -> None:
        if self.lockout_after < 1 or self.lockout_seconds < 0:
            raise ValueError("lockout_after must be at least 1 and lockout_seconds not negative")
        if not (0 <= self.totp_window <= self.totp_drift and 1 <= self.hotp_window <= self.hotp_drift):
            raise ValueError("the drift windows must contain the exact windows")
        if not 1 <= self.pin_min <= self.pin_max:
            raise ValueError("pin_min must be at least 1 and at most pin_max")


@dataclass(frozen=True)
class Record:
    """One user's token. ``secret`` and ``pin_hash`` are kept out of ``repr``."""

    kind: Kind
    secret: str = field(repr=False)
    """Base32, as in the otpauth:// URI."""
    digits: int = 6
    period: int = 30
    algorithm: str = "sha1"
    counter: int = 0
    """HOTP: the next counter expected."""
    pin_hash: str | None = field(default=None, repr=False)
    must_change_pin: bool = False
    last_step: int = -1
    """TOTP: the last step accepted (a code is accepted once only)."""
    offset: int = 0
    """TOTP: steps the token runs ahead (+) or behind (-) our clock, learnt on resync."""
    failures: int = 0
    locked_until: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.algorithm not in DIGESTS:
            raise ValueError(f"algorithm {self.algorithm!r}: one of {', '.join(DIGESTS)}")
        if not 6 <= self.digits <= 10 or self.period < 1:
            raise ValueError("digits must be 6 to 10 and the period positive")
        try:
            seed = base64.b32decode(self.secret + "=" * (-len(self.secret) % 8), casefold=True)
        except ValueError:
            raise ValueError("the secret is not base32") from None
        if len(seed) < 14:
            raise ValueError("the secret is shorter than 112 bits (NIST SP 800-63B; pyotp refuses it)")

    @classmethod
    def new(cls, kind: Kind | str = Kind.TOTP, *, digits: int = 6, period: int = 30) -> Record:
        """A fresh token with a random 160-bit secret (RFC 4226 section 4 recommends 160)."""
        return cls(Kind(kind), pyotp.random_base32(32), digits=digits, period=period)

    def to_json(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Kind) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return cls(**data)

    def code(self, position: int) -> str:
        """The code at a TOTP step or an HOTP counter."""
        return pyotp.HOTP(self.secret, digits=self.digits, digest=DIGESTS[self.algorithm]).at(position)

    def step(self, now: float) -> int:
        """TOTP: the step the token shows at ``now``, by our clock corrected by ``offset``."""
        return int(now // self.period) + self.offset

    def uri(self, user: str, issuer: str) -> str:
        """The otpauth:// URI for an authenticator app (Key URI Format)."""
        otp: pyotp.OTP
        digest = DIGESTS[self.algorithm]
        if self.kind is Kind.TOTP:
            otp = pyotp.TOTP(self.secret, digits=self.digits, digest=digest, interval=self.period)
            return otp.provisioning_uri(name=user, issuer_name=issuer)
        otp = pyotp.HOTP(self.secret, digits=self.digits, digest=digest)
        return otp.provisioning_uri(name=user, issuer_name=issuer, initial_count=self.counter)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    record: Record
    """The record to store (failures counted, counter moved, ...)."""
    reason: Reason = Reason.NONE
    pending: int | None = None
    """NEXT_TOKENCODE: the drifted step or counter; pass it to :func:`check_next_tokencode`."""

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPT


# --------------------------------------------------------------------------- PINs


SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64); the PIN itself is never stored."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def pin_matches(pin: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            pin.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def pin_problem(pin: str, policy: Policy) -> str | None:
    """Why a new PIN is refused (a message for the user), or None."""
    if not pin.isascii() or not pin.isdigit():
        return "a PIN is made of digits only"
    if not policy.pin_min <= len(pin) <= policy.pin_max:
        return f"a PIN has {policy.pin_min} to {policy.pin_max} digits"
    return None


def set_pin(record: Record, pin: str, policy: Policy) -> Record:
    """The record with a new PIN (validate it with :func:`pin_problem` first)."""
    problem = pin_problem(pin, policy)
    if problem:
        raise ValueError(problem)
    return dataclasses.replace(record, pin_hash=hash_pin(pin), must_change_pin=False)


def unlock(record: Record) -> Record:
    return dataclasses.replace(record, failures=0, locked_until=0.0)


# --------------------------------------------------------------------------- checking


def _find(record: Record, code: str, positions: Iterable[int]) -> int | None:
    """The first position whose code matches (every candidate compared in constant time)."""
    found = None
    given = code.encode()
    for position in positions:
        if position < 0:
            continue
        if hmac.compare_digest(given, record.code(position).encode()) and found is None:
            found = position
    return found


def _nearest_first(centre: int, reach: int) -> list[int]:
    return [
        centre + d
        for distance in range(reach + 1)
        for d in ((0,) if distance == 0 else (-distance, distance))
    ]


def _failed(record: Record, reason: Reason, now: float, policy: Policy) -> Result:
    failures = record.failures + 1
    if failures >= policy.lockout_after:
        locked = dataclasses.replace(record, failures=0, locked_until=now + policy.lockout_seconds)
        return Result(Outcome.LOCKED, locked, Reason.LOCKED)
    return Result(Outcome.REJECT, dataclasses.replace(record, failures=failures), reason)


def _locked(record: Record, now: float) -> Result | None:
    if now < record.locked_until:
        return Result(Outcome.LOCKED, record, Reason.LOCKED)
    return None


def _good_code(record: Record, position: int, now: float) -> Result:
    """A code at ``position`` was accepted: the record moves past it."""
    if record.kind is Kind.TOTP:
        record = dataclasses.replace(record, last_step=position)
    else:
        record = dataclasses.replace(record, counter=position + 1)
    record = dataclasses.replace(record, failures=0, locked_until=0.0)
    if record.pin_hash is None or record.must_change_pin:
        return Result(Outcome.NEW_PIN, record)
    return Result(Outcome.ACCEPT, record)


def check_passcode(record: Record, passcode: str, now: float, policy: Policy = Policy()) -> Result:
    """The first round: ``passcode`` = PIN + tokencode (the tokencode alone if no PIN is set)."""
    if (locked := _locked(record, now)) is not None:
        return locked
    code = passcode[-record.digits :]
    pin = passcode[: -record.digits]
    if len(passcode) < record.digits or not code.isascii() or not code.isdigit():
        return _failed(record, Reason.BAD_FORMAT, now, policy)
    if record.pin_hash is None:
        pin_ok = hmac.compare_digest(pin.encode(), b"")  # new-PIN mode: the tokencode alone
    else:
        pin_ok = pin_matches(pin, record.pin_hash)

    if record.kind is Kind.TOTP:
        current = record.step(now)
        exact = _nearest_first(current, policy.totp_window)
        drift = [s for s in _nearest_first(current, policy.totp_drift) if s not in exact]
        oldest_new = record.last_step + 1
    else:
        ahead = range(record.counter, record.counter + policy.hotp_window)
        behind = range(max(0, record.counter - policy.hotp_window), record.counter)  # to say "used"
        exact = [*ahead, *behind]
        drift = list(range(record.counter + policy.hotp_window, record.counter + policy.hotp_drift))
        oldest_new = record.counter

    position = _find(record, code, exact)
    if not pin_ok:
        return _failed(record, Reason.WRONG, now, policy)
    if position is not None:
        if position < oldest_new:
            return _failed(record, Reason.REPLAYED, now, policy)
        return _good_code(record, position, now)
    position = _find(record, code, drift)
    if position is not None and position >= oldest_new:
        return Result(Outcome.NEXT_TOKENCODE, record, pending=position)
    return _failed(record, Reason.REPLAYED if position is not None else Reason.WRONG, now, policy)


def check_next_tokencode(
    record: Record, code: str, pending: int, now: float, policy: Policy = Policy()
) -> Result:
    """The round after ``NEXT_TOKENCODE``: only the code after the drifted one accepts, and the
    record is resynchronised to it (TOTP: the offset; HOTP: the counter)."""
    if (locked := _locked(record, now)) is not None:
        return locked
    if _find(record, code, [pending + 1]) is None:
        return _failed(record, Reason.NOT_NEXT, now, policy)
    if record.kind is Kind.TOTP:
        if pending + 1 <= record.last_step:
            return _failed(record, Reason.REPLAYED, now, policy)
        # the user waited for the token to change: it shows pending + 1 about now
        record = dataclasses.replace(record, offset=pending + 1 - int(now // record.period))
    return _good_code(record, pending + 1, now)
