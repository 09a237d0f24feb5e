"""The ``otp`` plugin: XAUTH with a PIN + tokencode, SecurID style.

```toml
# gateway.toml
[gateway]
plugins = ["otp"]

[plugin.otp]
store_file = "otp.json"          # beside gateway.toml (or absolute), mode 600; filled by
                                  # `tunvpn otp enroll USER --store FILE`
lockout_after = 5                 # failures from one address lock that address out ...
lockout_seconds = 300             # ... this long; with the right PIN they lock the token
spread_after = 20                 # failures from unfamiliar addresses before those wait ...
spread_max_wait = 60              # ... 1 s doubling up to this long between attempts
users = ["carol", "dave"]         # optional: only these users (default: whoever has a record)
```

A user without a record in the store is not ours: the hook returns ``None`` and the next
plugin (the users file, RADIUS) decides. The rounds: the password (or passcode) is the PIN
followed by the tokencode; a drifted token is asked for the next tokencode; a user without
a PIN is asked for a new one, twice. The state between rounds lives in ``request.state``.
The settings are checked at start (``tunvpn_check_settings``) by the parsers of
:mod:`tunvpn_otp.settings`, the ones every login uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyotp

from tunvpn.plugins import ClientQuestion, CredentialRequest, GatewayContext, Verdict, hookimpl
from tunvpn_otp import core
from tunvpn_otp.settings import (
    check_client,
    check_gateway,
    client_settings,
    gateway_settings,
    read_pin,
    read_token,
)
from tunvpn_otp.store import Store

log = logging.getLogger(__name__)

NAME = "otp"
"""The entry point name, so also the ``[plugin.otp]`` table."""

clock: Callable[[], float] = time.time
"""Where the client's soft token takes the time from; tests may replace it
(``monkeypatch.setattr``), nothing else should. The gateway side reads ``context.clock``
(``tunvpn.testing``'s ``now=`` sets it), unless a test replaced this."""

_answered_steps: dict[str, int] = {}
"""Client side: token file -> the last TOTP time step this process gave a code of."""

NEXT_TOKENCODE = "Wait for the token to change and enter the next tokencode"
NEW_PIN = "Choose a new PIN ({min} to {max} digits)"
CONFIRM_PIN = "Enter the new PIN again"
MESSAGES = {
    core.Reason.WRONG: "PIN or tokencode not accepted",
    core.Reason.BAD_FORMAT: "enter your PIN followed by the tokencode",
    core.Reason.REPLAYED: "this tokencode was used already; wait for the next one",
    core.Reason.LOCKED: "too many failed attempts; try again later or ask the administrator",
    core.Reason.NOT_NEXT: "that was not the next tokencode",
    core.Reason.SOURCE_LOCKED: "too many failed attempts from this address; try again later",
    core.Reason.HELD: "too many failed attempts for this user from elsewhere; try again in a minute",
}


def gateway_now(context: GatewayContext) -> float:
    """The time the gateway side decides by: ``context.clock()`` (``time.time`` in a gateway,
    what ``tunvpn.testing``'s ``now=`` says in a test), or :data:`clock` when a test replaced it
    (the older injection point)."""
    return clock() if clock is not time.time else context.clock()


@hookimpl
def tunvpn_check_settings(settings: dict[str, Any], side: str) -> None:
    """``[plugin.otp]`` checked before it is used, by the parsers the hooks use
    (:mod:`tunvpn_otp.settings`). Gateway: ``store_file`` (or ``store``, absolute) is given,
    exists, is owner-only and holds OTP records; ``users`` is a list of names; the lockout
    knobs are numbers in their ranges. Client: ``token_file`` is owner-only and holds an
    otpauth:// URI, ``pin_file`` is owner-only, ``pin_env`` is a variable's name."""
    if side == "client":
        check_client(settings)
    elif settings:
        check_gateway(settings)
    else:  # loaded without a table: refused at each login it is asked about, as before
        log.warning('OTP: no [plugin.otp] store_file = "otp.json": the otp plugin refuses every login')


@hookimpl
def tunvpn_verify_credentials(request: CredentialRequest, context: GatewayContext) -> Verdict | None:
    settings = gateway_settings(context.settings(NAME))
    if settings.users is not None and request.user not in settings.users:
        return None
    if request.chap is not None and request.password is None and request.passcode is None:
        return None  # a CHAP answer (XAUTH RADIUS-CHAP, PPP) hides the passcode: not ours to check
    state: dict[str, Any] | None = request.state.get(NAME)
    if request.round > 1 and state is None:
        return None  # another plugin's challenge
    policy = settings.policy
    now = gateway_now(context)
    with Store(settings.store).edit() as records:
        record = records.get(request.user)
        if record is None:
            return None
        if state is None or state.get("user") != request.user:
            passcode = request.passcode or request.password or ""
            result = core.check_passcode(record, passcode, now, policy, source=request.peer[0])
        elif state["stage"] == "next":
            code = request.passcode or request.answer or request.password or ""
            result = core.check_next_tokencode(
                record, code, state["pending"], now, policy, source=request.peer[0]
            )
        else:
            return _new_pin(request, state, records, policy)
        records[request.user] = result.record
    return _verdict(request, result, policy)


def _verdict(request: CredentialRequest, result: core.Result, policy: core.Policy) -> Verdict:
    outcome = result.outcome
    if outcome is core.Outcome.ACCEPT:
        request.state.pop(NAME, None)
        return Verdict.accept()
    if outcome is core.Outcome.NEXT_TOKENCODE:
        log.info("OTP: user %r drifted: asking for the next tokencode", request.user)
        request.state[NAME] = {"user": request.user, "stage": "next", "pending": result.pending}
        return Verdict.challenge(NEXT_TOKENCODE, fields=("passcode",))
    if outcome is core.Outcome.NEW_PIN:
        request.state[NAME] = {"user": request.user, "stage": "new pin"}
        return Verdict.challenge(NEW_PIN.format(min=policy.pin_min, max=policy.pin_max), fields=("next_pin",))
    log.warning("OTP: user %r from %s refused: %s", request.user, request.peer[0], result.reason.value)

    return Verdict.reject(MESSAGES.get(result.reason, MESSAGES[core.Reason.WRONG]))


def _new_pin(
    request: CredentialRequest, state: dict[str, Any], records: dict[str, core.Record], policy: core.Policy
) -> Verdict:
    pin = request.next_pin or request.answer or ""
    if state["stage"] == "new pin":
        problem = core.pin_problem(pin, policy)
        if problem:
            return Verdict.challenge(f"{problem}; choose a new PIN", fields=("next_pin",))
        state["stage"] = "confirm pin"
        state["pin_hash"] = core.hash_pin(pin)  # the PIN is not kept in clear between rounds
        return Verdict.challenge(CONFIRM_PIN, fields=("next_pin",))
    if not core.pin_matches(pin, state["pin_hash"]):
        request.state.pop(NAME, None)
        return Verdict.reject("the two PINs differ; connect again to choose a new PIN")
    record = records[request.user]
    records[request.user] = dataclasses.replace(record, pin_hash=state["pin_hash"], must_change_pin=False)
    request.state.pop(NAME, None)
    log.info("OTP: user %r set a new PIN", request.user)
    return Verdict.accept()


@hookimpl
def tunvpn_client_answer(question: ClientQuestion) -> str | Awaitable[str] | None:
    """Client side, a soft token: when the gateway runs the announced ``otp`` protocol, answer
    with the PIN followed by the current TOTP code of the token file (the otpauth:// URI that
    ``tunvpn otp enroll`` printed, in an owner-only file). The profile says where::

        plugins = ["otp"]

        [plugin.otp]
        token_file = "~/.config/tunvpn/token.uri"   # mode 600
        pin_env = "TUNVPN_OTP_PIN"                  # the PIN from the environment (or pin_file)

    Only the first round of the ``otp`` protocol is answered (the user types the next
    tokencode, a new PIN or anything else). HOTP tokens are left to the user: their counter
    lives in the token, not here.

    A code is given once: the gateway refuses a code of a time step it accepted already (a
    replay), so when the client logs in again within the same step (a reconnect to a
    restarted gateway, a re-authentication) the answer waits for the token's next step (at
    most its period, 30 s by default) instead of being refused.
    """
    if question.protocol != NAME or question.round > 1:
        return None
    settings = client_settings(question.settings(NAME))
    if question.field not in ("passcode", "password") or settings.token_file is None:
        return None
    otp = read_token(settings.token_file)
    if not isinstance(otp, pyotp.TOTP):
        return None
    pin = read_pin(settings)
    if not pin:
        return None  # no PIN configured: the user types PIN + code
    key = str(settings.token_file)
    now = clock()
    last = _answered_steps.get(key)
    if last is None or int(now // otp.interval) > last:
        _answered_steps[key] = int(now // otp.interval)
        return pin + otp.at(now)
    next_step = (last + 1) * otp.interval
    log.info("OTP soft token: this step's code was given already; the next in %.0f s", next_step - now)

    async def at_the_next_step() -> str:
        import asyncio

        await asyncio.sleep(max(0.0, next_step - clock()) + 0.05)
        when = max(clock(), next_step)
        _answered_steps[key] = int(when // otp.interval)
        return pin + otp.at(when)

    return at_the_next_step()


@hookimpl
def tunvpn_add_commands(subparsers: argparse._SubParsersAction) -> None:
    from tunvpn_otp import commands

    commands.add_commands(subparsers)
