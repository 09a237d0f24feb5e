"""Who must log in, and how hard it is to guess a login: the gateway's login rules, kept out
of :mod:`tunvpn.gateway.daemon` so they can be tested on their own.

- :func:`xauth_required`: XAUTH is required whenever a login source is configured.
- :class:`LoginThrottle`: a budget of failed XAUTH logins per (user, source address), per
  source address and per user, with exponential delays. Sans-I/O: time comes in as ``now``;
  the gateway applies the delay by waiting (asyncio) before it checks the credentials.

The throttle's numbers and why (docs/configuration.md, "Login throttle"):

* **(user, source)**: 5 failures are free (typos), then each attempt waits 1, 2, 4, ... s after
  the previous one (at most 5 min). An attempt that would wait longer than
  :attr:`ThrottleSettings.max_wait` (5 s: a client's XAUTH reply must not time out) is refused
  at once with "too many failed logins, try again in N s", without asking the plugins.
  A successful login clears the record: the real user behind that address is back to normal.
* **source** (all users): 20 free failures (a NAT with many users mistyping), then the same
  doubling: one address cannot spray a password over many user names.
* **user** (all sources): after 50 failures, each attempt waits a little (0.25 s doubling, at
  most 2 s) and is never refused: a guesser with many addresses is slowed, but cannot lock the
  real user out, whose attempts from another address go through (at most 2 s later).

Attempts still being checked count as failures until their verdict, so sending many guesses
in parallel does not get round the budget: each one is given the next slot. A record is
forgotten an hour after its last failure; each table keeps at most
:attr:`ThrottleSettings.max_entries` records (least recently used go first), so a flood of
source addresses costs bounded memory (forgetting a record only ever lets someone in sooner).

What it cannot do: a guesser and the real user behind the **same** address (one NAT) share
the (user, source) budget: the user then waits with the guesser. Use long passwords or a
second factor (the otp or radius plugins) where that matters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunvpn.gateway.daemon import GatewayOptions
    from tunvpn.plugins.host import PluginHost
    from tunvpn.plugins.types import Verdict

log = logging.getLogger(__name__)

LOGIN_HOOK = "tunvpn_verify_credentials"


# --------------------------------------------------------------------------- who must log in


def login_sources(options: GatewayOptions, plugins: PluginHost) -> tuple[str, ...]:
    """Names of the loaded plugins that decide logins: those with a ``tunvpn_verify_credentials``
    implementation (asked of pluggy, not guessed from names; the built-in ``users-file`` is
    loaded when a users file is set)."""
    return tuple(name for name in plugins.names if plugins.serves(name))


def xauth_required(options: GatewayOptions, plugins: PluginHost) -> bool:
    """Whether clients must log in with XAUTH: the explicit ``require_xauth`` when set, else
    whenever a login source exists. A gateway without one (site peers) needs no XAUTH.
    ``require_xauth = false`` next to a login source is logged as a warning: then any holder
    of the group secret may skip the login."""
    sources = login_sources(options, plugins)
    if options.require_xauth is None:
        return bool(sources)
    if not options.require_xauth and sources:
        log.warning(
            "XAUTH is not required (require_xauth = false / --no-require-xauth) although %s can "
            "check logins: a client holding the group secret may skip the login",
            ", ".join(sources),
        )
    return bool(options.require_xauth)


# --------------------------------------------------------------------------- throttle


@dataclass(frozen=True)
class Tier:
    """One budget: ``free`` failures, then ``base`` seconds doubling per failure, at most ``cap``."""

    free: int
    base: float
    cap: float

    def interval(self, failures: int) -> float:
        """Seconds between two attempts after ``failures`` failed ones."""
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - self.free, 64))


@dataclass(frozen=True)
class ThrottleSettings:
    """The login throttle's numbers (module docstring: why these)."""

    per_user_source: Tier = Tier(free=5, base=1.0, cap=300.0)
    per_source: Tier = Tier(free=20, base=1.0, cap=300.0)
    per_user: Tier = Tier(free=50, base=0.25, cap=2.0)
    """Never refuses, only slows (a lockout of the real user must not be possible)."""
    max_wait: float = 5.0
    """Longest wait before a check; an attempt that would wait longer is refused at once."""
    forget_after: float = 3600.0
    """Seconds after its last failure a record is dropped."""
    max_entries: int = 16384
    """Records kept per table (least recently used dropped first)."""


@dataclass
class _Record:
    failures: int = 0
    in_flight: int = 0
    """Attempts admitted and not yet decided (they count as failures meanwhile)."""
    next_slot: float = 0.0
    """Earliest time the next attempt may be checked."""
    last: float = 0.0


class _Table:
    """Records by key, least recently used first, bounded."""

    def __init__(self, tier: Tier, max_entries: int, forget_after: float) -> None:
        self.tier = tier
        self._max = max_entries
        self._forget = forget_after
        self._records: OrderedDict[Hashable, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: Hashable, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.in_flight == 0 and now - record.last > self._forget and now >= record.next_slot:
            del self._records[key]
            return None
        self._records.move_to_end(key)
        return record

    def touch(self, key: Hashable, now: float) -> _Record:
        record = self.get(key, now)
        if record is None:
            record = self._records[key] = _Record(last=now)
            while len(self._records) > self._max:
                self._records.popitem(last=False)
        return record

    def drop(self, key: Hashable) -> None:
        self._records.pop(key, None)


@dataclass(frozen=True)
class Admission:
    """The throttle's answer to a login attempt."""

    wait: float = 0.0
    """Seconds to wait before checking the credentials."""
    refused: bool = False
    """Too many failures: refuse without checking (``wait`` is then when to try again)."""


class LoginThrottle:
    """Failed-login budgets (module docstring). Call :meth:`admit` before checking a login
    and :meth:`done` with its outcome (always, also when the client went away)."""

    def __init__(self, settings: ThrottleSettings | None = None) -> None:
        self.settings = settings = settings or ThrottleSettings()
        make = lambda tier: _Table(tier, settings.max_entries, settings.forget_after)  # noqa: E731
        self._pairs = make(settings.per_user_source)
        self._sources = make(settings.per_source)
        self._users = make(settings.per_user)

    def __repr__(self) -> str:
        return f"LoginThrottle({len(self._pairs)} user/source, {len(self._sources)} source records)"

    def sizes(self) -> tuple[int, int, int]:
        """Records held: (user, source) pairs, sources, users."""
        return len(self._pairs), len(self._sources), len(self._users)

    def admit(self, user: str, source: str, now: float) -> Admission:
        """May ``user`` from ``source`` try now? An admitted attempt takes the next slot of its
        (user, source) and source budgets and must be closed with :meth:`done`."""
        slot = now
        gated = ((self._pairs, (user, source)), (self._sources, source))
        for table, key in gated:
            record = table.get(key, now)
            if record is not None:
                slot = max(slot, record.next_slot)
        if slot - now > self.settings.max_wait:
            return Admission(wait=slot - now, refused=True)
        for table, key in (*gated, (self._users, user)):
            record = table.touch(key, now)
            pending = record.failures + record.in_flight
            record.in_flight += 1
            if table is not self._users:
                record.next_slot = slot + table.tier.interval(pending)
        user_record = self._users.get(user, now)
        mild = self._users.tier.interval(user_record.failures) if user_record is not None else 0.0
        return Admission(wait=slot - now + mild)

    def done(self, user: str, source: str, now: float, outcome: str) -> None:
        """Close an admitted attempt: ``"rejected"`` counts as a failure; ``"accepted"`` also
        clears the (user, source) record (the real user is back); anything else (a challenge,
        a client that went away) only frees the slot."""
        for table, key in ((self._pairs, (user, source)), (self._sources, source), (self._users, user)):
            record = table.get(key, now)
            if record is not None:
                record.in_flight = max(0, record.in_flight - 1)
            elif outcome == "rejected":  # evicted meanwhile: a failure still counts
                record = table.touch(key, now)
            if record is not None and outcome == "rejected":
                record.failures += 1
                record.last = now
        if outcome == "accepted":
            self._pairs.drop((user, source))


def session_limit_refusal(user: str, others: Iterable[str | None], limit: int) -> str | None:
    """Why ``user`` may not log in once more, when the other logged-in sessions (``others``:
    their users) already hold ``limit`` of theirs (0: no limit); else None. The new login is
    refused, the running sessions are kept: a stolen password cannot kick the real user off.
    Before refusing, the gateway asks those sessions whether they are alive (a short DPD
    probe, gateway/daemon.py ``LIMIT_PROBE_WITHIN``): a user whose old session was lost (a
    laptop that moved to another network) gets in once that one failed to answer."""
    if limit <= 0:
        return None
    held = sum(1 for other in others if other == user)
    if held < limit:
        return None
    sessions = "session" if held == 1 else "sessions"
    return f"user {user} already has {held} {sessions}, the most this gateway allows; end one first"


def replaced_by_initial_contact(
    peer_id: str, peer: tuple[str, int], other_id: str, other_peer: tuple[str, int]
) -> bool:
    """Whether a new login of the same user that sent INITIAL-CONTACT (``peer_id`` from
    ``peer``) will replace the other session (the engine's rule, RFC 2407 4.6.3.3): the same
    phase 1 identity, and for an address identity (two home NATs hand out the same private
    addresses) the same outer address. Such a session does not count towards the limit: a
    client that crashed and reconnects is not refused."""
    if peer_id != other_id:
        return False
    try:
        ipaddress.ip_address(peer_id)
    except ValueError:
        return True
    return peer[0] == other_peer[0]


def throttle_outcome(verdict: Verdict, backend_failed: bool = False) -> str:
    """What a plugin's verdict means to the throttle: a rejection is a failed guess, unless the
    backend failed (a RADIUS outage must not count against its users)."""
    if verdict.outcome == "reject":
        return "other" if backend_failed else "rejected"
    return "accepted" if verdict.accepted else "other"


def refusal_message(admission: Admission) -> str:
    """The XAUTH message of a throttled attempt (says when, not why in detail)."""
    return f"too many failed logins; try again in {math.ceil(admission.wait)} s"


async def wait_turn(throttle: LoginThrottle, user: str, source: str, clock: Callable[[], float]) -> Admission:
    """The shell's side of :meth:`LoginThrottle.admit`: wait (without blocking the event loop)
    until the attempt may be checked; a refused attempt returns at once."""
    admission = throttle.admit(user, source, clock())
    if not admission.refused and admission.wait > 0:
        await asyncio.sleep(admission.wait)
    return admission


__all__ = [
    "Admission",
    "LoginThrottle",
    "ThrottleSettings",
    "Tier",
    "login_sources",
    "refusal_message",
    "replaced_by_initial_contact",
    "session_limit_refusal",
    "throttle_outcome",
    "wait_turn",
    "xauth_required",
]
