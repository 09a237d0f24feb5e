"""Port 4500 is split one way everywhere (RFC 3948 section 2): ESP, IKE behind the non-ESP
marker, a NAT-keepalive, or invalid, as :func:`tunvpn.ipsec.udpencap.classify_datagram` says.

The same datagrams go through the data thread (which owns the socket when there is a data
path) and through the IKE driver (which owns it with ``--ike-only``); both must count and hand
on the same things, and only what the classifier calls IKE may reach the IKE engine.
"""

from __future__ import annotations

import asyncio

from tests.helpers.fake_devices import CLIENT, FakeTun, FakeUdp
from tunvpn.dataplane.thread import DataPlane
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.engine import IkeEngine
from tunvpn.ipsec.udpencap import NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify_datagram
from tunvpn.shell.udp import UdpDriver

IKE = NON_ESP_MARKER + bytes(8) + bytes(8) + bytes([1, 0x10, 2, 0]) + bytes(4) + (28).to_bytes(4, "big")
SAMPLES = {
    "esp": (0x1234).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(24),
    "keepalive": NAT_KEEPALIVE,
    "ike": IKE,
    "runt": b"\x01\x02",
    "marker without a header": NON_ESP_MARKER + bytes(10),
    "too short for esp": b"\x00\x00\x00\x01\x02",
}


def test_the_samples_cover_every_kind() -> None:
    kinds = {name: classify_datagram(data) for name, data in SAMPLES.items()}
    assert kinds == {
        "esp": DatagramKind.ESP,
        "keepalive": DatagramKind.KEEPALIVE,
        "ike": DatagramKind.IKE,
        "runt": DatagramKind.INVALID,
        "marker without a header": DatagramKind.INVALID,
        "too short for esp": DatagramKind.INVALID,
    }


def test_the_data_thread_splits_port_4500_as_the_classifier_says() -> None:
    tun, udp = FakeTun(), FakeUdp()
    handed: list[bytes] = []
    dataplane = DataPlane(tun)
    dataplane.attach_device(udp, lambda data, addr: handed.append(data))
    for data in SAMPLES.values():
        udp.inject(data, CLIENT)
    for _ in SAMPLES:  # on this thread (the thread is not started): after an idle time the
        dataplane._from_udp()  # first call takes one datagram (LONE_AFTER_NS), the next the rest
    snap = dataplane.counter_snapshot()
    assert handed == [IKE]  # with its marker: the engine strips it
    assert snap.get("dataplane", "nat-t keepalive") == 1
    assert snap.get("dataplane", "invalid on nat-t port") == 3
    assert dict(snap.group("esp drops")) == {"unknown_spi": 1}  # the ESP went to the SAD
    assert tun.written == []
    dataplane.stop()
    tun.close()
    udp.close()


def test_the_ike_driver_splits_port_4500_the_same_way() -> None:
    async def feed() -> UdpDriver:
        # in a running loop: the engine's bad input arms the driver's timer (the summary line)
        engine = IkeEngine(EngineConfig(psks=PskTable({"*": b"k" * 16})))
        driver = UdpDriver(engine, "127.0.0.1", ike_port=500, natt_port=4500)
        for data in SAMPLES.values():
            driver._datagram_received(data, CLIENT, 4500)
        driver.close()
        return driver

    driver = asyncio.run(feed())
    assert driver.counters["nat-t keepalive"] == 1
    assert driver.counters["esp without data path"] == 1
    assert driver.counters["invalid on nat-t port"] == 3
    # only the IKE sample reached the engine (its all-zero cookies make it a protocol error)
    assert driver.counters["protocol error"] == 1
    assert sum(driver.engine.drops.values()) == 1  # and the engine counted it by reason
