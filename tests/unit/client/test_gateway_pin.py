"""A full tunnel keeps its gateway outside the tunnel (issue 15), without a network.

* the TUN device gets a full tunnel as 0.0.0.0/1 + 128.0.0.0/1 (OpenVPN's def1), counted per
  SA pair like any route, and the client's hook runs before the routes go in;
* :meth:`HostConfig.pin_host` adds ``GATEWAY/32 via <next hop> dev <underlay>`` as ``ip route
  get`` names it -- or, when that answers the TUN device (the tunnel's routes already cover
  the address: a reconnect to another gateway), the main table's best route on another
  device -- records it for crash recovery, and follows the gateway to a new address.

``ip`` is not run: hostconfig's command runner is replaced by a recording stand-in that
answers ``ip -j route ...`` with canned routing tables.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers.fake_devices import FakeTun, FakeUdp, children
from tunvpn.client import hostconfig
from tunvpn.client.hostconfig import HostConfig, Route, cleanup_stale, routes_cover
from tunvpn.dataplane.tunnel import Tunnel, tun_routes
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.engine import IkeEngine
from tunvpn.ipsec.selectors import TrafficSelector

MAIN = [
    {"dst": "default", "gateway": "192.168.1.1", "dev": "eth0", "flags": []},
    {"dst": "192.168.1.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "flags": []},
    {"dst": "0.0.0.0/1", "dev": "tun0", "flags": []},
    {"dst": "128.0.0.0/1", "dev": "tun0", "flags": []},
]


class FakeIp:
    """Records commands; answers ``ip -j -4 route get A`` from ``get`` and ``show`` from MAIN."""

    def __init__(self) -> None:
        self.get: dict[str, dict[str, object]] = {}
        self.main: list[dict[str, object]] = list(MAIN)
        self.commands: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        out = ""
        if argv[:5] == ["ip", "-j", "-4", "route", "get"]:
            out = json.dumps([self.get[argv[5]]])
        elif argv[:6] == ["ip", "-j", "-4", "route", "show", "exact"]:
            out = json.dumps([r for r in self.main if r.get("dst") in (argv[6], argv[6].removesuffix("/32"))])
        elif argv[:5] == ["ip", "-j", "-4", "route", "show"]:
            out = json.dumps(self.main)
        return subprocess.CompletedProcess(argv, 0, out, "")

    def changes(self) -> list[list[str]]:
        return [c for c in self.commands if c[:2] == ["ip", "route"]]


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIp:
    monkeypatch.setenv("TUNVPN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(hostconfig, "_system", lambda: "Linux")
    fake = FakeIp()
    monkeypatch.setattr(hostconfig, "_run", fake)
    return fake


def recorded(tmp_path: Path) -> list[dict[str, object]]:
    doc = json.loads((tmp_path / "run" / "client-tun0.json").read_text())
    routes: list[dict[str, object]] = doc["routes"]
    return routes


# ---------------------------------------------------------------------------- the TUN's routes


@pytest.fixture
def tunnel() -> Iterator[Tunnel]:
    tun, udp = FakeTun(), FakeUdp()
    tunnel = Tunnel(IkeEngine(EngineConfig(psks=PskTable({"*": b"k" * 16}))), tun=tun)
    tunnel.dataplane.attach_device(udp, lambda data, addr: None)
    yield tunnel
    tunnel.close()
    udp.close()


def test_a_default_route_is_its_two_halves() -> None:
    import ipaddress

    assert tun_routes(ipaddress.ip_network("0.0.0.0/0")) == ("0.0.0.0/1", "128.0.0.0/1")
    assert tun_routes(ipaddress.ip_network("::/0")) == ("::/1", "8000::/1")
    assert tun_routes(ipaddress.ip_network("10.20.0.0/16")) == ("10.20.0.0/16",)


def test_a_full_tunnel_goes_in_as_def1_after_the_hook_and_is_counted_per_pair(
    tunnel: Tunnel, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[list[str]] = []
    monkeypatch.setattr(tunnel, "_unroute", removed.append)
    seen: list[tuple[list[str], int]] = []
    tunnel.before_routes = lambda routes: seen.append((routes, len(tunnel.tun.configured)))  # type: ignore[attr-defined]
    full, _ = children()
    full = replace(full, remote_ts=TrafficSelector.from_network("0.0.0.0/0"))
    tunnel.child_established(full)
    assert seen == [(["0.0.0.0/1", "128.0.0.0/1"], 0)], "the hook runs before the routes go in"
    assert tunnel.tun.configured == [  # type: ignore[attr-defined]
        {"addresses": (), "routes": ["0.0.0.0/1", "128.0.0.0/1"], "up": True}
    ]
    assert tunnel.routed() == ["0.0.0.0/1", "128.0.0.0/1"]
    other, _ = children(0x1001, 0x2001)
    tunnel.child_established(replace(other, policy_name="other", remote_ts=full.remote_ts))
    assert len(seen) == 1 and len(tunnel.tun.configured) == 1  # type: ignore[attr-defined]
    tunnel.child_deleted(ev.ChildSADeleted(full.sa_id, full.spi_in, full.spi_out, False))
    assert removed == [], "the other pair still uses both halves"
    tunnel.child_deleted(ev.ChildSADeleted(full.sa_id, 0x1001, 0x2001, False))
    assert removed == [["0.0.0.0/1", "128.0.0.0/1"]]
    assert tunnel.routed() == []


def test_routes_cover() -> None:
    assert routes_cover(["0.0.0.0/1", "128.0.0.0/1"], "203.0.113.7")
    assert routes_cover(["203.0.113.0/24"], "203.0.113.7")
    assert not routes_cover(["10.20.0.0/16"], "203.0.113.7")
    assert not routes_cover(["::/1", "8000::/1"], "203.0.113.7")
    assert not routes_cover(["0.0.0.0/1"], "")


# ---------------------------------------------------------------------------- the pin


def test_the_gateway_is_pinned_via_the_underlay_recorded_and_removed(ip: FakeIp, tmp_path: Path) -> None:
    ip.get["203.0.113.7"] = {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0"}
    hc = HostConfig("tun0", dns_backend="none")
    pinned = hc.pin_host("203.0.113.7", avoid_dev="tun0")
    assert pinned == Route("203.0.113.7/32", "192.168.1.1", "eth0")
    assert ip.changes() == [["ip", "route", "add", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"]]
    assert recorded(tmp_path) == [{"dest": "203.0.113.7/32", "via": "192.168.1.1", "dev": "eth0"}]
    assert hc.pin_host("203.0.113.7", avoid_dev="tun0") is None, "already pinned"
    hc.restore()
    assert ip.changes()[-1] == ["ip", "route", "del", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"]
    assert not (tmp_path / "run" / "client-tun0.json").exists()


def test_an_on_link_gateway_is_pinned_to_its_device(ip: FakeIp) -> None:
    ip.get["192.168.1.9"] = {"dst": "192.168.1.9", "dev": "eth0", "prefsrc": "192.168.1.2"}
    assert HostConfig("tun0", dns_backend="none").pin_host("192.168.1.9", "tun0") == Route(
        "192.168.1.9/32", None, "eth0"
    )


def test_this_hosts_own_address_is_not_pinned(ip: FakeIp) -> None:
    ip.get["127.0.0.1"] = {"type": "local", "dst": "127.0.0.1", "dev": "lo"}
    assert HostConfig("tun0", dns_backend="none").pin_host("127.0.0.1", "tun0") is None
    assert ip.changes() == []


def test_the_pin_follows_the_gateway_and_skips_the_tunnel(ip: FakeIp, tmp_path: Path) -> None:
    """Reconnecting to another gateway while the def1 routes are held on the TUN device: ``ip
    route get`` answers tun0, so the main table's best route elsewhere is pinned (the default
    route: 0.0.0.0/1 on tun0 is more specific but is the tunnel's)."""
    ip.get["203.0.113.7"] = {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0"}
    ip.get["198.51.100.3"] = {"dst": "198.51.100.3", "dev": "tun0"}
    hc = HostConfig("tun0", dns_backend="none")
    hc.pin_host("203.0.113.7", "tun0")
    assert hc.pin_host("198.51.100.3", "tun0") == Route("198.51.100.3/32", "192.168.1.1", "eth0")
    assert ip.changes()[1:] == [
        ["ip", "route", "add", "198.51.100.3/32", "via", "192.168.1.1", "dev", "eth0"],
        ["ip", "route", "del", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"],
    ], "the new pin goes in before the old one goes"
    assert recorded(tmp_path) == [{"dest": "198.51.100.3/32", "via": "192.168.1.1", "dev": "eth0"}]


def test_a_crashed_clients_pin_is_removed_by_the_next_run(ip: FakeIp, tmp_path: Path) -> None:
    ip.get["203.0.113.7"] = {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0"}
    HostConfig("tun0", dns_backend="none").pin_host("203.0.113.7", "tun0")
    state = tmp_path / "run" / "client-tun0.json"
    doc = json.loads(state.read_text())
    proc = subprocess.Popen(["true"])
    proc.wait()
    doc["pid"] = proc.pid  # the owner is gone
    state.write_text(json.dumps(doc))
    assert cleanup_stale() == [
        f"removed route 203.0.113.7/32 via 192.168.1.1 dev eth0 left by pid {proc.pid} (tun0)"
    ]
    assert not state.exists()


def test_the_pin_follows_the_clients_network(ip: FakeIp, tmp_path: Path) -> None:
    """Roaming: a pin still in the table and still right stays; once the host's default route
    goes through another router (the old pin flushed with the old address, or stale), the pin
    is made again from the main table (``ip route get`` would answer the old pin itself)."""
    ip.get["203.0.113.7"] = {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0"}
    hc = HostConfig("tun0", dns_backend="none")
    assert hc.refresh_pin("tun0") is None, "nothing pinned: nothing to refresh"
    hc.pin_host("203.0.113.7", "tun0")
    ip.main.append({"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0", "flags": []})
    assert hc.refresh_pin("tun0") is None, "still right"
    ip.main = [
        {"dst": "default", "gateway": "10.1.0.1", "dev": "wlan0", "flags": []},
        {"dst": "203.0.113.7", "gateway": "192.168.1.1", "dev": "eth0", "flags": []},  # stale
        {"dst": "0.0.0.0/1", "dev": "tun0", "flags": []},
    ]
    assert hc.refresh_pin("tun0") == Route("203.0.113.7/32", "10.1.0.1", "wlan0")
    assert ip.changes()[-2:] == [
        ["ip", "route", "del", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"],
        ["ip", "route", "add", "203.0.113.7/32", "via", "10.1.0.1", "dev", "wlan0"],
    ]
    assert recorded(tmp_path) == [{"dest": "203.0.113.7/32", "via": "10.1.0.1", "dev": "wlan0"}]
