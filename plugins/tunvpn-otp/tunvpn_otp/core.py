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
* Lockout, so that a stranger cannot lock the real user out (issue 12; README "Lockout"):

  - every failure counts against the **source address** it came from: ``lockout_after`` of
    them lock that address out, for this user, for ``lockout_seconds``; other addresses go on;
  - a failure **with the right PIN** (a wrong, replayed or not-next tokencode) also counts
    against the **token**: whoever sent it knows the PIN, so ``lockout_after`` of them in a
    row lock the user for ``lockout_seconds`` from everywhere. A wrong PIN never does; for a
    user without a PIN (new-PIN mode) nothing counts against the token;
  - failures from addresses the user never logged in from (the last ``familiar_max``
    successes are remembered) are also summed over all addresses: past ``spread_after``
    such failures, those addresses wait between attempts, 1 s doubling up to
    ``spread_max_wait``, so a guesser with many addresses is slowed; attempts that come
    too early are refused unchecked. Familiar addresses never wait for it. The sum is
    forgotten after ``lockout_seconds`` without such a failure.

  The time passed in (``now``) drives every expiry; nothing is ever locked for good.

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
    SOURCE_LOCKED = "too many failures from this address"
    HELD = "too many failures from unfamiliar addresses: wait before the next attempt"


DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


class PolicyError(ValueError):
    """A :class:`Policy` knob out of its range; ``key`` names it (the ``[plugin.otp]`` setting
    of the same name), ``reason`` says what it must be."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key} {reason}")


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
    spread_after: int = 20
    """Failures from unfamiliar addresses (all together) before they must wait."""
    spread_max_wait: float = 60.0
    """The longest wait between two attempts from unfamiliar addresses (seconds)."""
    familiar_max: int = 8
    """Addresses of the last successful logins that are remembered as familiar."""
    max_sources: int = 64
    """Per-address failure records kept per user (the least recent go first)."""

    def __post_init__(self) -> None:
        at_least = {
            "lockout_after": 1,
            "lockout_seconds": 0,
            "totp_window": 0,
            "totp_drift": self.totp_window,
            "hotp_window": 1,
            "hotp_drift": self.hotp_window,
            "pin_min": 1,
            "pin_max": self.pin_min,
            "spread_after": 1,
            "spread_max_wait": 0,
            "familiar_max": 0,
            "max_sources": 1,
        }
        why = {  # the knobs bounded by another one
            "totp_drift": f"totp_window ({self.totp_window}): the drift window contains the exact one",
            "hotp_drift": f"hotp_window ({self.hotp_window}): the drift window contains the exact one",
            "pin_max": f"pin_min ({self.pin_min})",
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise PolicyError(name, f"must be at least {why.get(name, low)}")


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
    """Failures in a row that had the right PIN (the token's count)."""
    locked_until: float = 0.0
    """The token is locked (for every address) until then."""
    sources: tuple[tuple[str, int, float, float], ...] = ()
    """Per address: (address, failures, locked until, time of the last failure)."""
    familiar: tuple[str, ...] = ()
    """Addresses of the last successful logins, most recent first."""
    spread_failures: int = 0
    """Failures from unfamiliar addresses, all together (forgotten ``lockout_seconds`` after
    ``spread_last``, the last of them)."""
    spread_last: float = 0.0
    held_until: float = 0.0
    """Unfamiliar addresses wait until then before their next attempt is checked."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        # from JSON: lists -> tuples (records are values, compared and stored as such)
        object.__setattr__(
            self, "sources", tuple((str(a), int(n), float(u), float(t)) for a, n, u, t in self.sources)
        )
        object.__setattr__(self, "familiar", tuple(str(a) for a in self.familiar))
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
    """The record with every count and lock cleared (``tunvpn otp unlock``)."""
    return dataclasses.replace(
        record, failures=0, locked_until=0.0, sources=(), spread_failures=0, spread_last=0.0, held_until=0.0
    )


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


def _source_entries(record: Record, now: float, policy: Policy) -> dict[str, tuple[int, float, float]]:
    """The per-address records still in force: locked, or with a failure in the last
    ``lockout_seconds`` (a quiet address starts again from zero)."""
    return {
        address: (failures, locked_until, last)
        for address, failures, locked_until, last in record.sources
        if locked_until > now or now - last < policy.lockout_seconds
    }


def _with_sources(record: Record, entries: dict[str, tuple[int, float, float]], policy: Policy) -> Record:
    kept = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[: policy.max_sources]
    return dataclasses.replace(record, sources=tuple(sorted((a, *v) for a, v in kept)))


def _refused_unchecked(
    record: Record, source: str, now: float, policy: Policy, *, spread: bool = True
) -> Result | None:
    """LOCKED before anything is checked: the token is locked, this address is, or (``spread``)
    it is an unfamiliar address that must wait (the spread back-off). Nothing is counted."""
    if now < record.locked_until:
        return Result(Outcome.LOCKED, record, Reason.LOCKED)
    entry = _source_entries(record, now, policy).get(source)
    if entry is not None and now < entry[1]:
        return Result(Outcome.LOCKED, record, Reason.SOURCE_LOCKED)
    if spread and source not in record.familiar and now < record.held_until:
        return Result(Outcome.LOCKED, record, Reason.HELD)
    return None


def _failed(
    record: Record, reason: Reason, now: float, policy: Policy, source: str, *, pin_was_right: bool
) -> Result:
    """Count one failure: against ``source``; against the token only if the PIN was right
    (and the user has one); towards the spread back-off if ``source`` is unfamiliar."""
    entries = _source_entries(record, now, policy)
    failures = entries.get(source, (0, 0.0, 0.0))[0] + 1
    source_locked = failures >= policy.lockout_after
    if source_locked:
        entries[source] = (0, now + policy.lockout_seconds, now)
    else:
        entries[source] = (failures, 0.0, now)
    record = _with_sources(record, entries, policy)

    if source not in record.familiar:
        spread = record.spread_failures + 1 if now - record.spread_last < policy.lockout_seconds else 1
        held_until = record.held_until
        if spread >= policy.spread_after:
            exponent = min(spread - policy.spread_after, 62)  # 2**62 s: far past any cap
            held_until = now + min(policy.spread_max_wait, 2.0**exponent)
        record = dataclasses.replace(record, spread_failures=spread, spread_last=now, held_until=held_until)

    if pin_was_right and record.pin_hash is not None:
        token_failures = record.failures + 1
        if token_failures >= policy.lockout_after:
            locked = dataclasses.replace(record, failures=0, locked_until=now + policy.lockout_seconds)
            return Result(Outcome.LOCKED, locked, Reason.LOCKED)
        record = dataclasses.replace(record, failures=token_failures)
    if source_locked:
        return Result(Outcome.LOCKED, record, Reason.SOURCE_LOCKED)
    return Result(Outcome.REJECT, record, reason)


def _good_code(record: Record, position: int, now: float, policy: Policy, source: str) -> Result:
    """A code at ``position`` was accepted: the record moves past it, the token's and this
    address's counts are cleared, and the address becomes familiar."""
    if record.kind is Kind.TOTP:
        record = dataclasses.replace(record, last_step=position)
    else:
        record = dataclasses.replace(record, counter=position + 1)
    entries = _source_entries(record, now, policy)
    entries.pop(source, None)
    record = _with_sources(record, entries, policy)
    familiar = record.familiar
    if source and policy.familiar_max:
        familiar = (source, *(a for a in familiar if a != source))[: policy.familiar_max]
    record = dataclasses.replace(record, failures=0, locked_until=0.0, familiar=familiar)
    if record.pin_hash is None or record.must_change_pin:
        return Result(Outcome.NEW_PIN, record)
    return Result(Outcome.ACCEPT, record)


def check_passcode(
    record: Record, passcode: str, now: float, policy: Policy = Policy(), *, source: str = ""
) -> Result:
    """The first round: ``passcode`` = PIN + tokencode (the tokencode alone if no PIN is set),
    sent from the address ``source`` (what the lockout counts per address; "" if unknown)."""
    if (refused := _refused_unchecked(record, source, now, policy)) is not None:
        return refused
    code = passcode[-record.digits :]
    pin = passcode[: -record.digits]
    if len(passcode) < record.digits or not code.isascii() or not code.isdigit():
        return _failed(record, Reason.BAD_FORMAT, now, policy, source, pin_was_right=False)
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
        # the same answer as a wrong tokencode; counted for the address only, never the token
        return _failed(record, Reason.WRONG, now, policy, source, pin_was_right=False)
    if position is not None:
        if position < oldest_new:
            return _failed(record, Reason.REPLAYED, now, policy, source, pin_was_right=True)
        return _good_code(record, position, now, policy, source)
    position = _find(record, code, drift)
    if position is not None and position >= oldest_new:
        return Result(Outcome.NEXT_TOKENCODE, record, pending=position)
    reason = Reason.REPLAYED if position is not None else Reason.WRONG
    return _failed(record, reason, now, policy, source, pin_was_right=True)


def check_next_tokencode(
    record: Record, code: str, pending: int, now: float, policy: Policy = Policy(), *, source: str = ""
) -> Result:
    """The round after ``NEXT_TOKENCODE``: only the code after the drifted one accepts, and the
    record is resynchronised to it (TOTP: the offset; HOTP: the counter). The first round had
    the right PIN, so a failure here counts against the token too; this address, checked a
    moment ago, is not held back again by the spread back-off."""
    if (refused := _refused_unchecked(record, source, now, policy, spread=False)) is not None:
        return refused
    if _find(record, code, [pending + 1]) is None:
        return _failed(record, Reason.NOT_NEXT, now, policy, source, pin_was_right=True)
    if record.kind is Kind.TOTP:
        if pending + 1 <= record.last_step:
            return _failed(record, Reason.REPLAYED, now, policy, source, pin_was_right=True)
        # the user waited for the token to change: it shows pending + 1 about now
        record = dataclasses.replace(record, offset=pending + 1 - int(now // record.period))
    return _good_code(record, pending + 1, now, policy, source)
