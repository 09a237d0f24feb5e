"""The client's soft token (``tunvpn_client_answer``): a code is given once. A second login
within the same TOTP step (a reconnect to a restarted gateway, a re-authentication: issue 15)
waits for the token's next step instead of sending the code the gateway refuses as a replay."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

pytest.importorskip("tunvpn_otp", reason="pip install -e plugins/tunvpn-otp")

import pyotp
from tunvpn_otp import plugin

from tunvpn.plugins import ClientQuestion

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PIN = "4711"
T0 = 1_700_000_020.0  # 10 s into a 30-second step


def test_a_code_is_given_once_and_the_next_login_waits_for_the_next_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token.uri"
    token.write_text(pyotp.TOTP(SECRET).provisioning_uri(name="tina", issuer_name="tunvpn-test") + "\n")
    token.chmod(0o600)
    monkeypatch.setenv("TEST_OTP_PIN", PIN)
    now = [T0]
    monkeypatch.setattr(plugin, "clock", lambda: now[0])
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the time passes while the answer waits
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    question = ClientQuestion(
        protocol="otp",
        field="passcode",
        round=1,
        plugin_settings={"otp": {"token_file": str(token), "pin_env": "TEST_OTP_PIN"}},
    )
    totp = pyotp.TOTP(SECRET)
    first = plugin.tunvpn_client_answer(question=question)
    assert first == PIN + totp.at(T0)
    now[0] = T0 + 5  # the same step: that code was used
    later = plugin.tunvpn_client_answer(question=question)
    assert inspect.isawaitable(later)
    second = asyncio.run(_wait(later))
    assert slept and slept[0] == pytest.approx(15.05)  # until the next step, not longer
    assert second == PIN + totp.at(T0 + 20) and second != first
    now[0] = T0 + 60  # a step later than any code given: at once again
    assert plugin.tunvpn_client_answer(question=question) == PIN + totp.at(T0 + 60)


async def _wait(awaitable: object) -> object:
    return await awaitable  # type: ignore[misc]
