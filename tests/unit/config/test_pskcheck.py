"""The weak-PSK warning (tunvpn/config/pskcheck.py): short or low-entropy group secrets are named at
gateway and client start (an active attacker can test a Main Mode PSK offline), strong ones
are not, and the secret itself never reaches the log."""

from __future__ import annotations

import logging

import pytest

from tunvpn.config.pskcheck import estimated_bits, warn_weak_psks, weakness
from tunvpn.gateway.daemon import Gateway, GatewayOptions
from tunvpn.ike.config import PskTable

STRONG = b"q2JvV8c4Lk0wX9eRzT1yHn6mB3sPaD5f"  # `openssl rand -base64 24`-like, 32 characters


@pytest.mark.parametrize(
    "secret",
    [b"tunvpn-testing-psk", b"s3cret", b"a" * 40, b"abababababababababababab", b"password1234567890123"[:19]],
)
def test_short_or_repetitive_secrets_are_weak(secret: bytes) -> None:
    assert weakness(secret) is not None


@pytest.mark.parametrize(
    "secret",
    [STRONG, b"a-long-random-group-secret-for-tests-0123456789", bytes(range(7, 39))],
)
def test_long_random_secrets_are_not(secret: bytes) -> None:
    assert weakness(secret) is None and estimated_bits(secret) >= 80


def test_the_warning_names_the_identity_never_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    psks = PskTable({"keyid:staff": b"Staff2024!", "*": STRONG, "10.0.0.2": b"0123456789"})
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.pskcheck"):
        assert sorted(warn_weak_psks(psks, "client")) == ["10.0.0.2", "keyid:staff"]
    text = caplog.text
    assert "keyid:staff" in text and "offline" in text and "openssl rand" in text
    assert "Staff2024!" not in text and "0123456789 " not in text and STRONG.decode() not in text


def test_gateway_start_warns_about_a_weak_group_psk(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.pskcheck"):
        Gateway(GatewayOptions(listen="192.0.2.1", psks=PskTable({"keyid:staff": b"staff-secret"})))
    assert any(
        "gateway: the pre-shared key for keyid:staff is weak" in r.getMessage() for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.pskcheck"):
        Gateway(GatewayOptions(listen="192.0.2.1", psks=PskTable({"keyid:staff": STRONG})))
    assert not caplog.records
