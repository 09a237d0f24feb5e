"""Shared fixtures and the markers' skips (tests/README.md says where a test goes).

Markers (registered in pyproject.toml):
  netns    - needs root, `ip netns` and /dev/net/tun (everything under tests/netns/)
  interop  - needs real peers (strongSwan charon + swanctl, vpnc, tshark/dumpcap;
             everything under tests/interop/)

Tests with these markers skip, with the reason, only where the machine truly lacks what they
need (tests/helpers/requires.py); under TUNVPN_REQUIRE_ALL=1 (contrib/test-all.sh, CI) such a
skip is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.netns import NetnsPair
from tests.helpers.requires import require_interop, require_root_netns


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
