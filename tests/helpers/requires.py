"""Skip helpers: a test that needs root, namespaces or real peers skips, with the reason, only
where the machine truly lacks what it needs.

contrib/test-all.sh (what CI runs) installs everything and sets TUNVPN_REQUIRE_ALL=1, which
turns such a skip into a failure: a missing binary must not pass CI silently. The conftest.py
of tests/netns/ and tests/interop/ call these for every test they hold.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.netns import netns_unavailable_reason

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


def skip_or_fail(reason: str) -> None:
    """Skip the calling test, or fail it under TUNVPN_REQUIRE_ALL=1 (CI)."""
    if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
        pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root_netns() -> None:
    """Skip the calling test unless it can create namespaces, veth pairs and TUN devices."""
    reason = netns_unavailable_reason()
    if reason:
        skip_or_fail(reason)


def require_interop() -> None:
    """Skip the calling test unless charon, swanctl, vpnc and tshark are installed."""
    require_root_netns()
    reason = interop_unavailable_reason()
    if reason:
        skip_or_fail(reason)
