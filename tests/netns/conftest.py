"""Every test under tests/netns/ needs root, ``ip netns`` and /dev/net/tun: marked ``netns`` here
(so ``-m "not netns"`` leaves them out), skipped where the machine lacks them and failed instead
under TUNVPN_REQUIRE_ALL=1 (tests/conftest.py, tests/helpers/requires.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.netns)
