""":class:`tunvpn.dataplane.tunnel.Tunnel` between an IKE engine and the data thread, with the
stand-in devices of tests/helpers/fake_devices.py (the thread is not started: commands apply at once).

It installs a negotiated pair and routes the peer's selector into the TUN device once per
route; a rekey of the same policy and selectors replaces the pair make-before-break (the
old pair is retired, its route stays); a deleted pair leaves the data path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.helpers.fake_devices import FakeTun, FakeUdp, children
from tunvpn.control.status import counter_registry, sa_counters
from tunvpn.dataplane.tunnel import Tunnel
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.engine import IkeEngine


@pytest.fixture
def tunnel() -> Iterator[Tunnel]:
    tun, udp = FakeTun(), FakeUdp()
    tunnel = Tunnel(IkeEngine(EngineConfig(psks=PskTable({"*": b"k" * 16}))), tun=tun)
    tunnel.dataplane.attach_device(udp, lambda data, addr: None)
    yield tunnel
    tunnel.close()
    udp.close()


def installed(tunnel: Tunnel) -> set[int]:
    return set(tunnel.dataplane.counter_snapshot().sas)


def test_a_child_sa_is_installed_and_routed_once(tunnel: Tunnel) -> None:
    client, _ = children()
    tunnel.child_established(client)
    assert installed(tunnel) == {client.spi_in, client.spi_out}
    assert tunnel.tun.configured == [{"addresses": (), "routes": ["10.20.0.0/16"], "up": True}]  # type: ignore[attr-defined]
    # a second pair to the same network (another policy) needs no new route
    other, _ = children(0x1001, 0x2001)
    tunnel.child_established(replace(other, policy_name="other"))
    assert len(tunnel.tun.configured) == 1  # type: ignore[attr-defined]
    assert installed(tunnel) == {0x1000, 0x2000, 0x1001, 0x2001}


def test_a_rekey_replaces_the_pair_and_retires_the_old_one(tunnel: Tunnel) -> None:
    old, _ = children()
    tunnel.child_established(old)
    new, _ = children(0x1100, 0x2100)  # same policy, same selectors
    tunnel.child_established(new)
    # no event loop: the old pair retires at once (the engine knows no such ISAKMP SA, so the
    # tunnel deletes it itself)
    assert installed(tunnel) == {0x1100, 0x2100}
    assert set(tunnel.pairs) == {0x1100}
    assert len(tunnel.tun.configured) == 1  # type: ignore[attr-defined]


def test_a_deleted_child_leaves_the_data_path(tunnel: Tunnel) -> None:
    child, _ = children()
    tunnel.child_established(child)
    tunnel.child_deleted(ev.ChildSADeleted(child.sa_id, child.spi_in, child.spi_out, True))
    assert installed(tunnel) == set()
    assert tunnel.pairs == {}


def test_status_reads_the_sas_through_the_counter_registry(tunnel: Tunnel) -> None:
    """What ``status`` of a daemon reads: the registry's snapshot, no SA table access."""
    child, _ = children()
    tunnel.child_established(child)

    class Daemon:
        engine = tunnel.engine
        driver = None

    daemon = Daemon()
    daemon.tunnel = tunnel  # type: ignore[attr-defined]
    registry = counter_registry(daemon)  # type: ignore[arg-type]
    snapshot = registry.snapshot()
    assert sa_counters(snapshot) == {child.spi_in: (0, 0), child.spi_out: (0, 0)}
    assert snapshot.group("ike") == {}
    daemon.tunnel = None  # type: ignore[attr-defined]
    assert sa_counters(registry.snapshot()) == {}


def test_one_copy_serves_a_loop_callback(tunnel: Tunnel) -> None:
    """The gateway's accounting reads the counters once per session: in one loop callback the
    data thread copies them once, the next callback sees new counts."""
    child, _ = children()
    tunnel.child_established(child)

    class Daemon:
        engine = tunnel.engine
        driver = None

    daemon = Daemon()
    daemon.tunnel = tunnel  # type: ignore[attr-defined]
    registry = counter_registry(daemon)  # type: ignore[arg-type]

    async def reads() -> None:
        first = registry.snapshot()
        assert registry.snapshot() is first
        tunnel.child_deleted(ev.ChildSADeleted(child.sa_id, child.spi_in, child.spi_out, True))
        assert child.spi_in in sa_counters(registry.snapshot())  # the copy of this callback
        await asyncio.sleep(0)
        assert sa_counters(registry.snapshot()) == {}

    asyncio.run(reads())
