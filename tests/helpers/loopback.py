"""A real gateway and real clients over UDP on loopback (127.0.0.1 the gateway, 127.0.0.2 the
client, no root), built on :mod:`tunvpn.testing` (which plugin authors use): the set-up the
tests under tests/loopback/ share.

Both sides bind the same two unprivileged ports (the engine floats to the same NAT-T port
number on both sides, as with 500/4500).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tunvpn import testing
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.credentials import UserTable
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import GatewayOptions, SimpleRule
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.policies import Phase2Policy
from tunvpn.ike.proposals import EspSuite
from tunvpn.ipsec.algorithms import EspTransform
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.testing import CLIENT, GATEWAY, connect, loopback_available, run_client, serve, stop

PSK = b"loopback-test-psk"

needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")
"""Mark for a test (or ``pytestmark`` for a module) that needs 127.0.0.2."""


def free_port_pair() -> tuple[int, int]:
    """Two consecutive UDP ports free on both loopback addresses (tunvpn.testing's); skips
    the test if there are none."""
    try:
        return testing.free_port_pair()
    except RuntimeError:
        pytest.skip("no free UDP port pair on loopback")


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` in the running loop until it is true; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# --------------------------------------------- a gateway that pushes policies per user and group

GCM128 = EspSuite(EspTransform.AES_GCM_16, 128, None)


def policy(name: str, net: str, **kw: object) -> Phase2Policy:
    return Phase2Policy(name, TrafficSelector.parse(net), **kw)  # type: ignore[arg-type]


INTRANET = policy("intranet", "10.78.0.0/24")
MAIL = policy("mail", "10.78.5.0/24[tcp/993]", esp=(GCM128,), pfs_group=None, lifetime_seconds=1200)
ENG = policy("eng", "10.20.0.0/16", pfs_group=DHGroup.ECP_384)
RULES = (SimpleRule(INTRANET), SimpleRule(MAIL), SimpleRule(ENG, groups=("eng",)))
"""intranet and mail for everyone, eng for the group eng (alice)."""


def gateway_options(ike: int, natt: int, rules: tuple[SimpleRule, ...], **kw: object) -> GatewayOptions:
    """A gateway with users alice (a-pass, group eng) and bob (b-pass), XAUTH required."""
    return GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        users=UserTable({"alice": b"a-pass", "bob": b"b-pass"}),
        require_xauth=True,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        rules=rules,
        groups={"eng": frozenset({"alice"})},
        **kw,  # type: ignore[arg-type]
    )


def client_options(ike: int, natt: int, user: str, password: str, **kw: object) -> ClientOptions:
    """What a minimal profile holds: the gateway, the secret, the user."""
    return ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user=user,
        password=password,
        password_prompt=False,
        timeout=20,
        **kw,  # type: ignore[arg-type]
    )


__all__ = [
    "CLIENT",
    "ENG",
    "GATEWAY",
    "GCM128",
    "INTRANET",
    "MAIL",
    "PSK",
    "RULES",
    "client_options",
    "connect",
    "free_port_pair",
    "gateway_options",
    "loopback_available",
    "needs_loopback",
    "policy",
    "run_client",
    "serve",
    "stop",
    "wait_until",
]
