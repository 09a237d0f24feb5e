"""Login rules of the gateway (tunvpn/gateway/logins.py), each tested as the attack it stops:
XAUTH required whenever a login source exists; the failed-login throttle; the per-user session
limit. Real gateway and client over UDP on loopback, or the sans-I/O throttle with a clock."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from pathlib import Path

import pytest

from tests.helpers.logins import (
    PasswordBackend,
    attempt,
    client_options,
    file_gateway,
    gateway_options,
    serve,
)
from tests.helpers.loopback import free_port_pair, needs_loopback
from tunvpn.cli import build_parser
from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.config.credentials import UserTable
from tunvpn.gateway.daemon import Gateway
from tunvpn.gateway.logins import Admission, LoginThrottle, ThrottleSettings, Tier
from tunvpn.ike.identity import Identity
from tunvpn.plugins import CredentialRequest, Verdict, hookimpl


class Accounting:
    """A plugin that checks no login (it only observes): not a login source."""

    @hookimpl
    def tunvpn_accounting(self, record: object) -> None:
        return None


def no_xauth_client_against(options_for: object) -> tuple[int, list[dict], list[str]]:
    """A client holding the group PSK that offers no XAUTH (main mode, plain PSK) connects;
    returns its exit code, its records and the gateway's SA names seen."""
    ike, natt = free_port_pair()

    async def scenario() -> tuple[int, list[dict], list[str]]:
        gateway, server = await serve(options_for(ike, natt))  # type: ignore[operator]
        seen: list[str] = []
        handle = gateway.handle_event

        def spy(event: object) -> object:
            seen.append(type(event).__name__)
            return handle(event)  # type: ignore[arg-type]

        gateway.handle_event = spy  # type: ignore[method-assign]
        gateway.driver.handler = spy  # type: ignore[union-attr]
        try:
            code, records = await attempt(gateway, client_options(ike, natt))
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return code, records, seen

    return asyncio.run(scenario())


# --------------------------------------------------------------------------- XAUTH required


@needs_loopback
def test_plugin_only_gateway_gives_no_sa_to_a_client_that_skips_xauth() -> None:
    """The attack of issue 12 item 2: RADIUS/OTP-only gateway (no users file, no
    --require-xauth); a group-PSK holder offers plain PSK authentication and never logs in."""
    code, records, seen = no_xauth_client_against(
        lambda ike, natt: gateway_options(ike, natt, plugin_objects=(PasswordBackend(),))
    )
    assert code != 0, records
    assert "Phase1Established" not in seen and "ChildSAEstablished" not in seen
    assert not [r for r in records if r["event"] == "quick" and r["state"] == "established"]


@needs_loopback
def test_users_file_without_require_xauth_flag_gives_no_sa_to_a_client_that_skips_xauth() -> None:
    code, _records, seen = no_xauth_client_against(
        lambda ike, natt: gateway_options(ike, natt, users=UserTable({"alice": b"a-pass"}))
    )
    assert code != 0 and "Phase1Established" not in seen


@needs_loopback
def test_site_gateway_without_login_source_still_needs_no_xauth() -> None:
    """No users file and no login plugin (an observing plugin does not count): site peers."""
    code, records, seen = no_xauth_client_against(
        lambda ike, natt: gateway_options(ike, natt, plugin_objects=(Accounting(),))
    )
    assert code == 0, records
    assert "ChildSAEstablished" in seen


@needs_loopback
def test_explicit_opt_out_is_warned_and_lets_the_client_skip_xauth(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunvpn.gateway.logins"):
        code, _records, seen = no_xauth_client_against(
            lambda ike, natt: gateway_options(
                ike, natt, plugin_objects=(PasswordBackend(),), require_xauth=False
            )
        )
    assert code == 0 and "ChildSAEstablished" in seen
    assert any("XAUTH is not required" in r.getMessage() for r in caplog.records)


@needs_loopback
def test_plugin_only_gateway_lets_the_user_in_with_xauth() -> None:
    ike, natt = free_port_pair()

    async def scenario() -> int:
        gateway, server = await serve(gateway_options(ike, natt, plugin_objects=(PasswordBackend(),)))
        try:
            code, _ = await attempt(gateway, client_options(ike, natt, "alice", "a-pass"))
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return code

    assert asyncio.run(scenario()) == 0


def test_every_configuration_path_requires_xauth_with_a_login_source(tmp_path: Path) -> None:
    # -c file: users file; a login plugin by entry point (otp: tunvpn_verify_credentials)
    assert file_gateway(tmp_path, 'users_file = "users"').config.require_xauth
    assert file_gateway(tmp_path, 'plugins = ["otp"]').config.require_xauth
    assert not file_gateway(tmp_path, "").config.require_xauth
    assert not file_gateway(tmp_path, 'users_file = "users"\nrequire_xauth = false').config.require_xauth
    # flags: --users without --require-xauth; --no-require-xauth turns it off
    from tunvpn.cli import _gateway_options

    users = tmp_path / "users"
    psk = tmp_path / "gw.psk"
    psk.write_text("a-long-random-group-secret-for-tests-0123456789\n")
    psk.chmod(0o600)
    base = ["gateway", "--listen", "192.0.2.1", "--psk-file", str(psk), "--ike-only"]
    for flags, required in (
        (["--users", str(users), "--max-sessions-per-user", "1"], True),
        (["--users", str(users)], True),
        (["--users", str(users), "--no-require-xauth"], False),
        ([], False),
    ):
        args = build_parser().parse_args(base + flags)
        gateway = Gateway(_gateway_options(args))  # type: ignore[arg-type]
        assert gateway.config.require_xauth is required, flags
        assert gateway.options.max_sessions_per_user == (1 if "--max-sessions-per-user" in flags else 4)


# --------------------------------------------------------------------------- throttle (sans-I/O)

T0 = 1_800_000_000.0


def _guess(throttle: LoginThrottle, user: str, source: str, now: float, *, right: bool = False) -> Admission:
    """One login attempt: admitted (then decided) or refused unchecked."""
    admission = throttle.admit(user, source, now)
    if not admission.refused:
        throttle.done(user, source, now + admission.wait, "accepted" if right else "rejected")
    return admission


def test_twenty_wrong_passwords_from_one_source_do_not_lock_the_user_out_elsewhere() -> None:
    throttle = LoginThrottle()
    now = T0
    outcomes = []
    for _ in range(20):  # as fast as the throttle lets them through
        admission = _guess(throttle, "alice", "198.51.100.66", now)
        outcomes.append(admission)
        now += admission.wait if not admission.refused else 0.01
    assert all(a.wait == 0 and not a.refused for a in outcomes[:5])  # typos are free
    assert outcomes[-1].refused
    # the attacker's next try, even with the right password, is refused unchecked
    assert throttle.admit("alice", "198.51.100.66", now).refused
    # alice herself, from home: at once
    assert throttle.admit("alice", "203.0.113.7", now) == Admission(wait=0.0)
    # and another user behind the attacker's address is not affected by a per-user budget
    assert not throttle.admit("bob", "198.51.100.66", now).refused


def test_parallel_guesses_take_successive_slots() -> None:
    """Guesses sent at once (many phase 1s in parallel) count before their verdicts."""
    throttle = LoginThrottle()
    admissions = [throttle.admit("alice", "198.51.100.66", T0) for _ in range(12)]
    waits = [a.wait for a in admissions if not a.refused]
    assert waits[:6] == [0.0] * 6 and waits[6:] == [1.0, 3.0]
    assert sum(a.refused for a in admissions) == 4


def test_one_source_spraying_many_users_is_slowed_per_source() -> None:
    throttle = LoginThrottle()
    now = T0
    for n in range(40):
        admission = _guess(throttle, f"user{n}", "198.51.100.66", now)
        now += admission.wait if not admission.refused else 0.01
    assert throttle.admit("user99", "198.51.100.66", now).refused
    assert throttle.admit("user99", "203.0.113.7", now) == Admission(wait=0.0)


def test_a_distributed_guesser_only_slows_the_user_mildly() -> None:
    """1,000 addresses guessing alice's password: she still gets in, at most 2 s later."""
    throttle = LoginThrottle()
    for n in range(1000):
        _guess(throttle, "alice", f"10.{n // 250}.{n % 250}.1", T0 + n)
    admission = throttle.admit("alice", "203.0.113.7", T0 + 1000)
    assert not admission.refused and admission.wait <= ThrottleSettings().per_user.cap


def test_success_clears_the_users_record_and_records_are_forgotten() -> None:
    throttle = LoginThrottle()
    for n in range(5):
        _guess(throttle, "alice", "203.0.113.7", T0 + n)
    _guess(throttle, "alice", "203.0.113.7", T0 + 6, right=True)
    assert throttle.admit("alice", "203.0.113.7", T0 + 7).wait == 0
    throttle = LoginThrottle()
    now = T0
    while not (admission := throttle.admit("alice", "198.51.100.66", now)).refused:
        throttle.done("alice", "198.51.100.66", now + admission.wait, "rejected")
        now += admission.wait
    later = now + ThrottleSettings().forget_after + ThrottleSettings().per_user_source.cap + 1
    assert throttle.admit("alice", "198.51.100.66", later) == Admission(wait=0.0)


def test_memory_stays_bounded_with_100000_sources() -> None:
    settings = ThrottleSettings()
    throttle = LoginThrottle(settings)
    for n in range(100_000):
        _guess(throttle, f"u{n % 500}", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", T0 + n / 1000)
    pairs, sources, users = throttle.sizes()
    assert pairs <= settings.max_entries and sources <= settings.max_entries and users <= 500


# --------------------------------------------------------------------------- throttle, on the wire

OTHER_CLIENT = "127.0.0.3"


@needs_loopback
def test_guessing_from_one_address_is_throttled_while_the_user_logs_in_from_another() -> None:
    """A group-PSK holder at 127.0.0.2 guesses alice's password 20 times (a phase 1 and an
    XAUTH login each): its next login is refused unchecked, even with the right password,
    while alice at 127.0.0.3 logs in at once."""
    ike, natt = free_port_pair()

    async def scenario() -> tuple[list[int], int, list[dict], int, Gateway]:
        gateway, server = await serve(gateway_options(ike, natt, plugin_objects=(PasswordBackend(),)))
        try:
            guesses = [
                (await attempt(gateway, client_options(ike, natt, "alice", f"guess-{n}")))[0]
                for n in range(20)
            ]
            attacker_code, attacker_records = await attempt(
                gateway, client_options(ike, natt, "alice", "a-pass")
            )
            alice_code, _ = await attempt(gateway, client_options(ike, natt, "alice", "a-pass"), OTHER_CLIENT)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return guesses, attacker_code, attacker_records, alice_code, gateway

    guesses, attacker_code, attacker_records, alice_code, gateway = asyncio.run(scenario())
    assert all(code != 0 for code in guesses)
    assert attacker_code != 0
    assert "too many failed logins" in json.dumps(attacker_records)
    assert alice_code == 0
    assert gateway.throttle.admit("alice", OTHER_CLIENT, gateway.clock()) == Admission(wait=0.0)


# --------------------------------------------------------------------------- sessions per user


async def _stay_connected(cl: ClientOptions, local: str) -> tuple[Client, asyncio.Task[int]]:
    """A client that keeps its SAs (until its task is cancelled)."""
    client = Client(
        dataclasses.replace(cl, exit_after_established=False), local, progress=Progress(out=io.StringIO())
    )
    task = asyncio.ensure_future(client.run(handle_signals=False))
    for _ in range(500):
        if client.established or task.done():
            break
        await asyncio.sleep(0.02)
    assert client.established, client.message
    return client, task


@needs_loopback
def test_a_login_beyond_the_users_session_limit_is_refused_and_the_others_stay() -> None:
    ike, natt = free_port_pair()

    async def scenario() -> tuple[int, list[dict], list[bool], Gateway]:
        gateway, server = await serve(
            gateway_options(ike, natt, plugin_objects=(PasswordBackend(),), max_sessions_per_user=2)
        )
        tasks = []
        try:
            for local in ("127.0.0.2", "127.0.0.3"):
                tasks.append((await _stay_connected(client_options(ike, natt, "alice", "a-pass"), local))[1])
            code, records = await attempt(gateway, client_options(ike, natt, "alice", "a-pass"), "127.0.0.4")
            alive = [not t.done() for t in tasks]
            users = sorted(s.user or "" for s in gateway.sessions.values() if s.authenticated)
            assert users == ["alice", "alice"]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return code, records, alive, gateway

    code, records, alive, _gateway = asyncio.run(scenario())
    assert code != 0
    assert "already has 2 sessions" in json.dumps(records)
    assert alive == [True, True]


def test_session_limit_is_configurable_and_zero_means_none(tmp_path: Path) -> None:
    assert file_gateway(tmp_path, 'users_file = "users"').options.max_sessions_per_user == 4
    gateway = file_gateway(tmp_path, 'users_file = "users"\nmax_sessions_per_user = 0')
    assert gateway.options.max_sessions_per_user == 0
    from tunvpn.gateway.logins import session_limit_refusal

    assert session_limit_refusal("alice", ["alice"] * 100, 0) is None
    assert session_limit_refusal("alice", ["alice", "bob", "bob"], 2) is None
    assert session_limit_refusal("bob", ["alice", "bob", "bob"], 2) is not None


def test_ppp_logins_through_the_gateway_are_throttled_too(caplog: pytest.LogCaptureFixture) -> None:
    """PAP/CHAP of an L2TP session (context.verify) checks the same passwords: same budgets."""
    gateway = Gateway(gateway_options(500, 4500, plugin_objects=(PasswordBackend(),)))
    fast = Tier(free=5, base=0.001, cap=300.0)  # the numbers are tested above; keep this quick
    gateway.throttle = LoginThrottle(ThrottleSettings(per_user_source=fast, per_source=fast, max_wait=0.05))

    async def scenario() -> tuple[list[str], Verdict, Verdict]:
        def ppp(password: str, peer: str) -> CredentialRequest:
            return CredentialRequest(user="alice", password=password, peer=(peer, 1701), via="ppp")

        guesses = [(await gateway.verify_login(ppp(f"guess-{n}", "10.79.0.66"))).outcome for n in range(30)]
        attacker = await gateway.verify_login(ppp("a-pass", "10.79.0.66"))
        alice = await gateway.verify_login(ppp("a-pass", "10.79.0.10"))
        return guesses, attacker, alice

    with caplog.at_level(logging.INFO, logger="tunvpn.audit"):
        guesses, attacker, alice = asyncio.run(scenario())
    assert set(guesses) == {"reject"}
    assert not attacker.accepted and "too many failed logins" in (attacker.message or "")
    assert alice.accepted
    lines = [r.getMessage() for r in caplog.records if r.name == "tunvpn.audit"]
    assert "event=login result=refused user=alice via=ppp peer=10.79.0.66" in lines
    assert lines[-1] == "event=login result=ok user=alice via=ppp peer=10.79.0.10"


@needs_loopback
def test_a_reconnect_that_replaces_the_old_session_is_not_refused_by_the_limit() -> None:
    """max_sessions_per_user = 1: alice's client crashes and reconnects from elsewhere with
    the same group identity and INITIAL-CONTACT (our client always sends it): her old session
    is replaced, not counted; a second client with its own identity is refused."""
    ike, natt = free_port_pair()
    staff = Identity.parse("keyid:staff")

    async def scenario() -> tuple[bool, int, list[dict], list[str]]:
        gateway, server = await serve(
            gateway_options(ike, natt, plugin_objects=(PasswordBackend(),), max_sessions_per_user=1)
        )
        tasks = []
        try:
            with_id = dataclasses.replace(client_options(ike, natt, "alice", "a-pass"), local_id=staff)
            tasks.append((await _stay_connected(with_id, "127.0.0.2"))[1])
            tasks.append((await _stay_connected(with_id, "127.0.0.3"))[1])
            for _ in range(100):  # the engine drops the replaced session once the new one is granted
                if len(gateway.sessions) == 1:
                    break
                await asyncio.sleep(0.02)
            replaced = [s.peer[0] for s in gateway.sessions.values()] == ["127.0.0.3"]
            code, records = await attempt(gateway, client_options(ike, natt, "alice", "a-pass"), "127.0.0.4")
            users = [s.peer[0] for s in gateway.sessions.values() if s.authenticated]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return replaced, code, records, users

    replaced, code, records, users = asyncio.run(scenario())
    assert replaced
    assert code != 0 and "already has 1 session," in json.dumps(records)
    assert users == ["127.0.0.3"]
