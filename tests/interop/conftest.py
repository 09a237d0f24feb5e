"""Every test under tests/interop/ runs against real peers (strongSwan charon + swanctl, vpnc,
ike-scan, tshark) in network namespaces: marked ``interop`` and ``netns`` here, skipped where
the machine lacks them and failed instead under TUNVPN_REQUIRE_ALL=1 (tests/conftest.py,
tests/helpers/requires.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.interop)
            item.add_marker(pytest.mark.netns)
