"""tunvpn_otp.core and .store without a gateway: the RFC 4226 appendix D and RFC 6238 appendix B
known answers, a code accepted once only, the exact and drift windows, next-tokencode resync,
new-PIN mode, lockout and its expiry, and the owner-only, atomic, locked secrets store."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

from tunvpn_otp import core
from tunvpn_otp.core import Kind, Outcome, Policy, Reason, Record
from tunvpn_otp.store import Store, StoreError


def b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode()


RFC4226_SECRET = b32(b"12345678901234567890")
# RFC 4226 appendix D: HOTP values for counters 0..9
RFC4226_HOTP = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]

RFC6238_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 appendix B: (time, TOTP, mode), 8 digits, 30 s steps
RFC6238_TOTP = [
    (59, "94287082", "sha1"),
    (59, "46119246", "sha256"),
    (59, "90693936", "sha512"),
    (1111111109, "07081804", "sha1"),
    (1111111109, "68084774", "sha256"),
    (1111111109, "25091201", "sha512"),
    (1111111111, "14050471", "sha1"),
    (1111111111, "67062674", "sha256"),
    (1111111111, "99943326", "sha512"),
    (1234567890, "89005924", "sha1"),
    (1234567890, "91819424", "sha256"),
    (1234567890, "93441116", "sha512"),
    (2000000000, "69279037", "sha1"),
    (2000000000, "90698825", "sha256"),
    (2000000000, "38618901", "sha512"),
    (20000000000, "65353130", "sha1"),
    (20000000000, "77737706", "sha256"),
    (20000000000, "47863826", "sha512"),
]

PIN = "4711"
PIN_HASH = core.hash_pin(PIN)  # scrypt once for the module
T0 = 1_700_000_000.0  # a step boundary: 1_700_000_000 / 30 is not whole, fine either way


def totp(**kw: object) -> Record:
    return Record(Kind.TOTP, RFC4226_SECRET, pin_hash=PIN_HASH, **kw)  # type: ignore[arg-type]


def hotp(**kw: object) -> Record:
    return Record(Kind.HOTP, RFC4226_SECRET, pin_hash=PIN_HASH, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- known answers


def test_rfc4226_appendix_d_hotp_values() -> None:
    record = hotp()
    assert [record.code(i) for i in range(10)] == RFC4226_HOTP
    for i, value in enumerate(RFC4226_HOTP):  # and the verifier accepts them in turn
        result = core.check_passcode(record, PIN + value, T0)
        assert result.accepted and result.record.counter == i + 1
        record = result.record


@pytest.mark.parametrize(("when", "value", "mode"), RFC6238_TOTP)
def test_rfc6238_appendix_b_totp_values(when: int, value: str, mode: str) -> None:
    record = Record(Kind.TOTP, b32(RFC6238_SEEDS[mode]), digits=8, algorithm=mode, pin_hash=None)
    assert record.code(record.step(when)) == value
    result = core.check_passcode(record, value, when)  # no PIN yet: the tokencode alone
    assert result.outcome is Outcome.NEW_PIN and result.record.last_step == when // 30


# --------------------------------------------------------------------------- once only, windows


def test_a_totp_code_is_accepted_once_only() -> None:
    record = totp()
    code = record.code(record.step(T0))
    first = core.check_passcode(record, PIN + code, T0)
    assert first.accepted
    again = core.check_passcode(first.record, PIN + code, T0 + 5)
    assert again.outcome is Outcome.REJECT and again.reason is Reason.REPLAYED
    assert again.record.failures == 1
    # an older code inside the window is refused too; the next one is fine
    older = core.check_passcode(first.record, PIN + record.code(record.step(T0) - 1), T0 + 5)
    assert older.reason is Reason.REPLAYED
    later = core.check_passcode(first.record, PIN + record.code(record.step(T0 + 30)), T0 + 30)
    assert later.accepted and later.record.failures == 0


def test_an_hotp_code_is_accepted_once_only() -> None:
    first = core.check_passcode(hotp(counter=3), PIN + RFC4226_HOTP[3], T0)
    assert first.accepted and first.record.counter == 4
    again = core.check_passcode(first.record, PIN + RFC4226_HOTP[3], T0)
    assert again.reason is Reason.REPLAYED


@settings(max_examples=40, deadline=None)
@given(
    seed=st.binary(min_size=14, max_size=64),
    when=st.floats(min_value=1e6, max_value=4e9),
    kind=st.sampled_from(list(Kind)),
    counter=st.integers(0, 10**6),
)
def test_property_a_good_code_never_works_twice(seed: bytes, when: float, kind: Kind, counter: int) -> None:
    record = Record(kind, b32(seed), counter=counter)  # no PIN: no scrypt per example
    code = record.code(record.step(when) if kind is Kind.TOTP else counter)
    first = core.check_passcode(record, code, when)
    assert first.outcome is Outcome.NEW_PIN  # the code was good
    second = core.check_passcode(first.record, code, when)
    assert second.outcome is Outcome.REJECT and second.reason is Reason.REPLAYED


def test_totp_window_is_one_step_either_side() -> None:
    record = totp()
    now = record.step(T0)
    assert core.check_passcode(record, PIN + record.code(now - 1), T0).accepted
    assert core.check_passcode(record, PIN + record.code(now + 1), T0).accepted
    drifted = core.check_passcode(record, PIN + record.code(now + 2), T0)
    assert drifted.outcome is Outcome.NEXT_TOKENCODE and drifted.pending == now + 2
    assert drifted.record == record  # nothing learnt from a drifted code by itself
    far = core.check_passcode(record, PIN + record.code(now + 11), T0)
    assert far.outcome is Outcome.REJECT and far.reason is Reason.WRONG


def test_wrong_pin_with_a_good_code_is_refused_and_not_drift() -> None:
    record = totp()
    for code in (record.code(record.step(T0)), record.code(record.step(T0) + 5)):
        result = core.check_passcode(record, "9999" + code, T0)
        assert result.outcome is Outcome.REJECT and result.reason is Reason.WRONG
    assert core.check_passcode(record, "12", T0).reason is Reason.BAD_FORMAT


# --------------------------------------------------------------------------- drift, resync


def test_totp_drift_next_tokencode_then_resync() -> None:
    record = totp()
    ahead = 6  # the token's clock runs 3 minutes fast
    s = record.step(T0) + ahead
    first = core.check_passcode(record, PIN + record.code(s), T0)
    assert first.outcome is Outcome.NEXT_TOKENCODE and first.pending == s
    wrong = core.check_next_tokencode(first.record, record.code(s + 2), s, T0 + 30)
    assert wrong.outcome is Outcome.REJECT and wrong.reason is Reason.NOT_NEXT
    # the user waits for the token to change (one step later) and types the next code
    ok = core.check_next_tokencode(first.record, record.code(s + 1), s, T0 + 30)
    assert ok.accepted and ok.record.offset == ahead and ok.record.last_step == s + 1
    # resynchronised: the next login is in the exact window, no challenge
    later = ok.record.step(T0 + 60)
    assert core.check_passcode(ok.record, PIN + record.code(later), T0 + 60).accepted


def test_hotp_drift_next_tokencode_then_resync() -> None:
    record = hotp()
    record_codes = [record.code(i) for i in range(60)]
    first = core.check_passcode(record, PIN + record_codes[40], T0)
    assert first.outcome is Outcome.NEXT_TOKENCODE and first.pending == 40
    ok = core.check_next_tokencode(first.record, record_codes[41], 40, T0)
    assert ok.accepted and ok.record.counter == 42
    assert core.check_passcode(ok.record, PIN + record_codes[41], T0).reason is Reason.REPLAYED
    assert core.check_passcode(ok.record, PIN + record_codes[42], T0).accepted
    beyond = core.check_passcode(record, PIN + record.code(100), T0)
    assert beyond.outcome is Outcome.REJECT


# --------------------------------------------------------------------------- new PIN


def test_new_pin_mode() -> None:
    record = Record(Kind.HOTP, RFC4226_SECRET)
    assert core.check_passcode(record, "1234" + RFC4226_HOTP[0], T0).reason is Reason.WRONG
    result = core.check_passcode(record, RFC4226_HOTP[0], T0)
    assert result.outcome is Outcome.NEW_PIN and result.record.counter == 1
    assert core.pin_problem("12a4", Policy()) and core.pin_problem("12", Policy())
    with pytest.raises(ValueError, match="digits"):
        core.set_pin(result.record, "123456789", Policy())
    with_pin = core.set_pin(result.record, "2468", Policy())
    assert "2468" not in (with_pin.pin_hash or "") and core.pin_matches("2468", with_pin.pin_hash or "")
    assert core.check_passcode(with_pin, "2468" + RFC4226_HOTP[1], T0).accepted
    must = dataclasses.replace(with_pin, must_change_pin=True)
    assert core.check_passcode(must, "2468" + RFC4226_HOTP[1], T0).outcome is Outcome.NEW_PIN


# --------------------------------------------------------------------------- lockout


def test_lockout_after_k_failures_and_its_expiry() -> None:
    policy = Policy(lockout_after=3, lockout_seconds=60)
    record = hotp()
    for n in (1, 2):
        result = core.check_passcode(record, PIN + "000000", T0, policy)
        assert result.outcome is Outcome.REJECT and result.record.failures == n
        record = result.record
    locked = core.check_passcode(record, PIN + "000000", T0, policy)
    assert locked.outcome is Outcome.LOCKED and locked.record.locked_until == T0 + 60
    good = PIN + RFC4226_HOTP[0]
    assert core.check_passcode(locked.record, good, T0 + 59, policy).outcome is Outcome.LOCKED
    after = core.check_passcode(locked.record, good, T0 + 60, policy)
    assert after.accepted and after.record.failures == 0
    assert core.unlock(locked.record).locked_until == 0.0


def test_a_success_resets_the_failure_count() -> None:
    policy = Policy(lockout_after=2)
    bad = core.check_passcode(hotp(), PIN + "000000", T0, policy)
    good = core.check_passcode(bad.record, PIN + RFC4226_HOTP[0], T0, policy)
    assert good.accepted
    assert core.check_passcode(good.record, PIN + "000000", T0, policy).outcome is Outcome.REJECT


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValueError, match="112 bits"):
        Record(Kind.TOTP, b32(b"short"))
    with pytest.raises(ValueError, match="base32"):
        Record(Kind.TOTP, "not base32!")
    with pytest.raises(ValueError, match="algorithm"):
        Record(Kind.TOTP, RFC4226_SECRET, algorithm="md5")
    with pytest.raises(ValueError, match="unknown keys"):
        Record.from_json({**totp().to_json(), "pin": "1234"})


def test_secrets_are_not_in_repr() -> None:
    record = totp()
    result = core.check_passcode(record, PIN + "000000", T0)
    for text in (repr(record), repr(result), str(result)):
        assert RFC4226_SECRET not in text and PIN_HASH not in text and "pin_hash" not in text


# --------------------------------------------------------------------------- the store


def test_store_round_trip_owner_only_no_pin_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "otp.json"
    store = Store(path)
    with store.edit(create=True) as users:
        users["carol"] = totp()
        users["dave"] = hotp(counter=7)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "otp.json.lock").stat().st_mode) == 0o600
    assert store.load() == {"carol": totp(), "dave": hotp(counter=7)}
    assert PIN not in path.read_text().replace(PIN_HASH, "")
    assert json.loads(path.read_text())["format"] == 1
    assert sorted(os.listdir(tmp_path)) == ["otp.json", "otp.json.lock"]  # no temp file left
    assert "secret" not in repr(store)


def test_store_refuses_a_readable_file_naming_it_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "otp.json"
    with Store(path).edit(create=True) as users:
        users["carol"] = totp()
    path.chmod(0o640)
    with pytest.raises(StoreError, match=rf"{path}.*chmod 600 {path}"):
        Store(path).load()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_store_refuses_a_foreign_owned_file(tmp_path: Path) -> None:
    path = tmp_path / "otp.json"
    with Store(path).edit(create=True) as users:
        users["carol"] = totp()
    os.chown(path, 4242, -1)
    with pytest.raises(StoreError, match="owned by uid 4242"):
        Store(path).load()


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such OTP store"):
        Store(tmp_path / "missing.json").load()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    with pytest.raises(StoreError, match="not an OTP store"):
        Store(bad).load()


def test_store_updates_from_many_threads_are_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "otp.json"
    with Store(path).edit(create=True) as users:
        users["dave"] = hotp()

    def bump() -> None:
        for _ in range(15):
            with Store(path).edit() as users:
                users["dave"] = dataclasses.replace(users["dave"], counter=users["dave"].counter + 1)

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Store(path).get("dave") == hotp(counter=90)
