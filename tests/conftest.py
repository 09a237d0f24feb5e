"""Shared fixtures and skip helpers.

Markers (registered in pyproject.toml):
  netns    - needs root, `ip netns` and /dev/net/tun
  interop  - needs real peers (strongSwan charon + swanctl, vpnc, tshark/dumpcap)

Tests with these markers skip, with the reason, only where the machine truly lacks what they
need. contrib/test-all.sh (what CI runs) installs everything and sets TUNVPN_REQUIRE_ALL=1,
which turns such a skip into a failure: a missing binary must not pass CI silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from netns import NetnsPair, netns_unavailable_reason

CHARON = "/usr/lib/ipsec/charon"
INTEROP_TOOLS = ("swanctl", "vpnc", "tshark", "dumpcap")


def interop_unavailable_reason() -> str | None:
    """Why real-peer tests cannot run here, or None if they can."""
    missing = [tool for tool in INTEROP_TOOLS if shutil.which(tool) is None]
    if not os.access(CHARON, os.X_OK):
        missing.append(CHARON)
    if missing:
        return "missing " + ", ".join(missing) + " (bash contrib/test-all.sh installs them)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
        pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root_netns() -> None:
    """Skip the calling test unless it can create namespaces, veth pairs and TUN devices."""
    reason = netns_unavailable_reason()
    if reason:
        _skip_or_fail(reason)


def require_interop() -> None:
    """Skip the calling test unless charon, swanctl, vpnc and tshark are installed."""
    require_root_netns()
    reason = interop_unavailable_reason()
    if reason:
        _skip_or_fail(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("interop") is not None:
        require_interop()
    elif item.get_closest_marker("netns") is not None:
        require_root_netns()


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two fresh namespaces joined by a veth pair, 10.77.0.1/24 <-> 10.77.0.2/24."""
    require_root_netns()
    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as pair:
        yield pair
