"""The OTP lockout against a stranger (issue 12, point 10): anyone with the group PSK can finish
phase 1 and send passcodes for carol. Wrong ones must lock out that sender's address, not
carol; only failures with carol's right PIN count against her token; a guesser spread over many
addresses is slowed without holding carol back at the addresses she logs in from.

Sans-I/O: the time is passed in, so waits and expiries are exact."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

from tunvpn_otp import core
from tunvpn_otp.core import Kind, Outcome, Policy, Reason, Record
from tunvpn_otp.store import Store

SECRET = base64.b32encode(b"12345678901234567890").decode()
PIN = "4711"
PIN_HASH = core.hash_pin(PIN)
T0 = 1_700_000_000.0
CAROL_HOME = "192.0.2.10"
ATTACKER = "198.51.100.66"
POLICY = Policy(lockout_after=5, lockout_seconds=300, spread_after=20, spread_max_wait=60)


def carol(**kw: object) -> Record:
    return Record(Kind.HOTP, SECRET, pin_hash=PIN_HASH, **kw)  # type: ignore[arg-type]


def code(n: int) -> str:
    return carol().code(n)


def attempt(record: Record, passcode: str, source: str, now: float = T0) -> core.Result:
    return core.check_passcode(record, passcode, now, POLICY, source=source)


def test_a_stranger_sending_wrong_codes_for_carol_locks_out_only_his_own_address() -> None:
    """The attack: 10 wrong passcodes for carol from one address (the PSK holder does not know
    her PIN). Before the fix the 5th locked carol herself for 5 minutes, from everywhere."""
    record = carol()
    outcomes = []
    for n in range(10):
        result = attempt(record, "0000" + f"{n:06d}", ATTACKER)
        outcomes.append((result.outcome, result.reason))
        record = result.record
    assert outcomes[:4] == [(Outcome.REJECT, Reason.WRONG)] * 4
    assert outcomes[4:] == [(Outcome.LOCKED, Reason.SOURCE_LOCKED)] * 6  # the attacker only
    assert record.failures == 0 and record.locked_until == 0.0  # the token is untouched
    assert attempt(record, PIN + code(0), CAROL_HOME).accepted  # carol, from home, at once
    # and the attacker's address stays locked for lockout_seconds, then starts from zero
    assert attempt(record, PIN + code(1), ATTACKER, T0 + 299).reason is Reason.SOURCE_LOCKED
    assert attempt(record, PIN + code(1), ATTACKER, T0 + 300).accepted


def test_a_stranger_cannot_lock_out_a_user_without_a_pin_either() -> None:
    """New-PIN mode (no PIN yet): the tokencode alone is checked, so nothing proves the sender is
    the user: tokencode guesses count for the sender's address only."""
    record = Record(Kind.HOTP, SECRET)
    for n in range(8):
        record = attempt(record, f"{n:06d}", ATTACKER).record
    assert record.locked_until == 0.0
    assert attempt(record, code(0), CAROL_HOME).outcome is Outcome.NEW_PIN


def test_failures_with_the_right_pin_lock_the_token_everywhere() -> None:
    """Whoever types carol's right PIN with wrong tokencodes knows her PIN: after lockout_after
    of them the token is locked for every address (until lockout_seconds, or `unlock`)."""
    record = carol()
    sources = [f"203.0.113.{i}" for i in range(5)]  # one try each: no address reaches its limit
    results = []
    for source in sources:
        result = attempt(record, PIN + "000000", source)
        results.append(result.outcome)
        record = result.record
    assert results == [Outcome.REJECT] * 4 + [Outcome.LOCKED]
    assert record.locked_until == T0 + 300
    assert attempt(record, PIN + code(0), CAROL_HOME, T0 + 10).reason is Reason.LOCKED
    assert attempt(record, PIN + code(0), CAROL_HOME, T0 + 300).accepted
    assert attempt(core.unlock(record), PIN + code(0), CAROL_HOME, T0 + 10).accepted


def test_the_answers_do_not_tell_a_right_pin_from_a_wrong_one() -> None:
    """A wrong PIN and a right PIN with a wrong tokencode get the same reason, and the sender's
    address is locked after the same number of either: no PIN oracle below the token lock."""
    policy = Policy(lockout_after=3)
    wrong_pin = core.check_passcode(carol(), "1234" + "000000", T0, policy, source=ATTACKER)
    right_pin = core.check_passcode(carol(), PIN + "000000", T0, policy, source=ATTACKER)
    assert (wrong_pin.outcome, wrong_pin.reason) == (right_pin.outcome, right_pin.reason)
    for passcode in ("1234000000", PIN + "000000"):
        record = carol()
        seen = []
        for _ in range(3):
            result = core.check_passcode(record, passcode, T0, policy, source=ATTACKER)
            seen.append(result.outcome)
            record = result.record
        assert seen == [Outcome.REJECT, Outcome.REJECT, Outcome.LOCKED]


def test_a_guesser_spread_over_many_addresses_waits_but_carol_at_home_does_not() -> None:
    """20 wrong PINs from 20 addresses: further unfamiliar addresses must wait between attempts
    (1 s, doubling, at most spread_max_wait); early attempts are refused unchecked. Carol's
    familiar address (she logged in from it) is never held back."""
    record = attempt(carol(), PIN + code(0), CAROL_HOME).record  # carol at home: familiar
    assert record.familiar == (CAROL_HOME,)
    now = T0
    for i in range(20):
        record = attempt(record, "0000" + "123456", f"10.9.0.{i}", now).record
    assert record.held_until == now + 1  # 2 ** 0
    early = attempt(record, PIN + code(1), "10.9.1.1", now + 0.5)
    assert (early.outcome, early.reason) == (Outcome.LOCKED, Reason.HELD)
    assert early.record == record  # refused unchecked: nothing counted
    assert attempt(record, PIN + code(1), CAROL_HOME, now + 0.5).accepted  # at home: no wait
    # the wait doubles with each further failure and stops at spread_max_wait
    waits = []
    for i in range(10):
        now = record.held_until
        record = attempt(record, "0000" + "123456", f"10.9.2.{i}", now).record
        waits.append(record.held_until - now)
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60, 60, 60]
    # a new address of carol's is checked as soon as the current wait is over
    assert attempt(record, PIN + code(1), "10.9.3.1", record.held_until).accepted
    # lockout_seconds without a failure from an unfamiliar address: the count starts again
    quiet = attempt(record, "0000123456", "10.9.4.1", record.held_until + 300).record
    assert quiet.spread_failures == 1


def test_per_address_records_are_bounded() -> None:
    policy = Policy(spread_after=10**6)  # every attempt checked and counted
    record = carol()
    addresses = [f"10.{i // 250}.{i % 250}.1" for i in range(1000)]
    for i, address in enumerate(addresses):
        # a malformed passcode: counted like a wrong one, without the PIN's scrypt (test speed)
        record = core.check_passcode(record, "x", T0 + i * 0.01, policy, source=address).record
    assert {entry[0] for entry in record.sources} == set(addresses[-policy.max_sources :])  # the latest
    assert core.check_passcode(record, PIN + code(0), T0 + 11, source=CAROL_HOME).accepted
    assert core.unlock(record).sources == ()


def test_the_counts_survive_the_store_and_old_stores_still_load(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "otp.json"
    record = attempt(attempt(carol(), PIN + code(0), CAROL_HOME).record, "0000123456", ATTACKER).record
    with Store(path).edit(create=True) as users:
        users["carol"] = record
    assert Store(path).get("carol") == record
    old = json.loads(path.read_text())
    for key in ("sources", "familiar", "spread_failures", "spread_last", "held_until"):
        del old["users"]["carol"][key]
    path.write_text(json.dumps(old))
    assert Store(path).get("carol") == Record.from_json(old["users"]["carol"])
