"""The data thread (:class:`tunvpn.dataplane.thread.DataPlane`) with stand-in devices: a TUN
device and a NAT-T socket that are queues in memory, each with a pipe the thread polls, so the
real thread runs its real loop and no packet leaves the process.

Two data planes face each other as a client and a gateway would after Quick Mode (a mirrored
pair of ``ChildSAEstablished`` events with fixed keys): what one's TUN device gives goes out
as ESP in UDP (RFC 4303, RFC 3948) and comes out of the other's TUN device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from tests.helpers.esp_helpers import ipv4
from tests.helpers.fake_devices import CLIENT, CLIENT_VIP, GATEWAY, FakeTun, FakeUdp, children
from tunvpn.dataplane import PacketDevice
from tunvpn.dataplane.thread import (
    DatagramDevice,
    DataPlane,
    InstallSA,
    PeerActivity,
    RemoveSA,
    SetPeer,
    UnknownSpi,
)
from tunvpn.esp import sa_pair_from_child
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.ipsec.udpencap import NAT_KEEPALIVE, NON_ESP_MARKER

Address = tuple[str, int]
SERVER = "10.20.0.1"
WAIT = 10.0
"""Seconds to wait for the thread to do something before the test fails (not a timing bound)."""


def test_the_fakes_are_devices() -> None:
    tun, udp = FakeTun(), FakeUdp()
    assert isinstance(tun, PacketDevice)
    _: DatagramDevice = udp  # checked by mypy: the data thread's view of the NAT-T socket
    tun.close()
    udp.close()


class Side:
    """One data plane with its fake devices and what it told the control plane."""

    def __init__(self) -> None:
        self.tun = FakeTun()
        self.udp = FakeUdp()
        self.events: list[object] = []
        self.ike: list[tuple[bytes, Address]] = []
        self.dataplane = DataPlane(self.tun, on_event=self.events.append)
        self.dataplane.attach_device(self.udp, lambda data, addr: self.ike.append((data, addr)))

    def close(self) -> None:
        self.dataplane.stop()
        self.tun.close()
        self.udp.close()


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side]]:
    client, gateway = Side(), Side()
    c, g = children()
    client.dataplane.install(c)
    gateway.dataplane.install(g)
    client.dataplane.start()
    gateway.dataplane.start()
    yield client, gateway
    client.close()
    gateway.close()


def wait_for(condition: Callable[[], object]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the data thread did not get there")


def carry(sender: Side, receiver: Side, packet: bytes, source: Address) -> bytes:
    """``packet`` into the sender's TUN device; its ESP datagram onto the receiver's socket."""
    before = len(sender.udp.sent)
    sender.tun.inject(packet)
    wait_for(lambda: len(sender.udp.sent) > before)
    [(datagram, to)] = sender.udp.sent[before:]
    assert to == (GATEWAY if source == CLIENT else CLIENT)  # the outbound SA's peer
    receiver.udp.inject(datagram, source)
    return datagram


def test_a_packet_goes_tun_esp_udp_and_back(pair: tuple[Side, Side]) -> None:
    client, gateway = pair
    request = ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"ping" * 10)
    datagram = carry(client, gateway, request, CLIENT)
    assert datagram[:4] == (0x2000).to_bytes(4, "big")  # the gateway's inbound SPI, then ciphertext
    assert request[20:] not in datagram
    wait_for(lambda: gateway.tun.written)
    assert gateway.tun.written == [request]

    answer = ipv4(src=SERVER, dst=CLIENT_VIP, payload=b"pong" * 10)
    carry(gateway, client, answer, GATEWAY)
    wait_for(lambda: client.tun.written)
    assert client.tun.written == [answer]

    # bytes and packets per SA, copied by the data thread
    g = gateway.dataplane.counter_snapshot()
    assert (g.sas[0x2000].bytes, g.sas[0x2000].packets) == (len(request), 1)
    assert (g.sas[0x1000].bytes, g.sas[0x1000].packets) == (len(answer), 1)
    assert g.get("dataplane", "tun packets in") == 1 and g.get("dataplane", "tun packets out") == 1
    c = client.dataplane.counter_snapshot()
    assert (c.sas[0x2000].bytes, c.sas[0x2000].packets) == (len(request), 1)
    # the gateway heard from the client: the next "peer alive" note names the SPI and source
    wait_for(lambda: any(isinstance(e, PeerActivity) for e in gateway.events))
    [note] = [e for e in gateway.events if isinstance(e, PeerActivity)]
    assert note.spis == {0x2000} and note.sources == ((0x2000, CLIENT),)


def test_drops_are_counted_by_reason(pair: tuple[Side, Side]) -> None:
    client, gateway = pair
    packet = ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"x" * 32)
    good = carry(client, gateway, packet, CLIENT)
    wait_for(lambda: gateway.tun.written)
    gateway.udp.inject(good, CLIENT)  # the same packet again
    gateway.udp.inject((0x7777).to_bytes(4, "big") + good[4:], CLIENT)  # nobody's SPI
    # a client that seals another client's address (outside its SA's selectors; our own
    # client's data path would not even route it: "no_route" there)
    client.tun.inject(ipv4(src="10.99.0.8", dst=SERVER, payload=b"y" * 32))
    wait_for(lambda: client.dataplane.counter_snapshot().group("esp drops"))
    assert dict(client.dataplane.counter_snapshot().group("esp drops")) == {"no_route": 1}
    c, _ = children()
    _, rogue = sa_pair_from_child(replace(c, local_ts=TrafficSelector.from_network("10.99.0.0/16")), 0.0)
    [_, spoofed, third] = rogue.encrypt_batch([packet, ipv4(src="10.99.0.8", dst=SERVER), packet])
    gateway.udp.inject(spoofed, CLIENT)
    forged = third[:-1] + bytes([third[-1] ^ 1])  # a fresh sequence number, a wrong ICV
    gateway.udp.inject(forged, CLIENT)
    gateway.udp.inject(NAT_KEEPALIVE, CLIENT)
    gateway.udp.inject(b"\x01\x02\x03", CLIENT)  # RFC 3948: neither ESP, IKE nor a keepalive
    ike = NON_ESP_MARKER + bytes(28)
    gateway.udp.inject(ike, CLIENT)
    wait_for(lambda: gateway.ike)
    wait_for(lambda: gateway.dataplane.counter_snapshot().get("dataplane", "invalid on nat-t port"))

    snap = gateway.dataplane.counter_snapshot()
    assert dict(snap.group("esp drops")) == {"replay": 1, "bad_icv": 1, "unknown_spi": 1, "policy": 1}
    assert snap.sas[0x2000].drops == {"replay": 1, "bad_icv": 1, "policy": 1}
    assert snap.get("dataplane", "nat-t keepalive") == 1
    assert snap.get("dataplane", "invalid on nat-t port") == 1
    assert gateway.ike == [(ike, CLIENT)]  # IKE goes to the control plane with its marker
    assert gateway.tun.written == [packet]
    assert gateway.dataplane.stats()["drops"] == {"replay": 1, "bad_icv": 1, "unknown_spi": 1, "policy": 1}


def test_commands_are_applied_in_order() -> None:
    """Install, remove and install again the same SPIs, point the pair elsewhere: applied out
    of order, the second install would fail (an SPI installed twice) or the peer be lost."""
    side = Side()
    side.dataplane.start()
    try:
        c, _ = children()
        elsewhere = ("203.0.113.5", 4501)
        for _ in range(50):
            inbound, outbound = sa_pair_from_child(c, side.dataplane.clock())
            side.dataplane.submit(InstallSA(inbound, outbound))
            side.dataplane.submit(RemoveSA(c.spi_in))
        inbound, outbound = sa_pair_from_child(c, side.dataplane.clock())
        side.dataplane.submit(InstallSA(inbound, outbound))
        side.dataplane.submit(SetPeer(c.spi_in, elsewhere))
        snap = side.dataplane.counter_snapshot()
        assert set(snap.sas) == {c.spi_in, c.spi_out}
        assert not any(name.endswith("failed") for name in snap.group("dataplane"))
        side.tun.inject(ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"z"))
        wait_for(lambda: side.udp.sent)
        assert side.udp.sent[0][1] == elsewhere
    finally:
        side.close()


def test_a_command_that_fails_is_counted_not_raised() -> None:
    side = Side()
    c, _ = children()
    side.dataplane.install(c)
    side.dataplane.install(c)  # the same inbound SPI again
    snap = side.dataplane.counter_snapshot()
    assert snap.get("dataplane", "install failed") == 1
    assert set(snap.sas) == {c.spi_in, c.spi_out}
    side.close()


def test_the_snapshot_is_copied_on_the_data_thread(pair: tuple[Side, Side]) -> None:
    """``status`` never reads the SA table from the loop: the data thread copies it."""
    client, gateway = pair
    takers: list[str] = []
    take = gateway.dataplane._take_snapshot

    def spy() -> object:
        takers.append(threading.current_thread().name)
        return take()

    gateway.dataplane._take_snapshot = spy  # type: ignore[method-assign]
    carry(client, gateway, ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"a"), CLIENT)
    wait_for(lambda: gateway.tun.written)
    snap = gateway.dataplane.counter_snapshot()
    assert takers == ["tunvpn-datapath"]
    assert snap.sas[0x2000].packets == 1
    # the copy does not change when the data thread moves on
    carry(client, gateway, ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"b"), CLIENT)
    wait_for(lambda: len(gateway.tun.written) == 2)
    assert snap.sas[0x2000].packets == 1
    assert gateway.dataplane.counter_snapshot().sas[0x2000].packets == 2
    # and a removed pair is gone from the next copy (commands and copies keep their order)
    gateway.dataplane.remove(0x2000)
    assert gateway.dataplane.counter_snapshot().sas == {}


def test_dropped_esp_makes_a_few_log_lines_then_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14: garbage ESP on the NAT-T port (a storm) is counted per packet but logged as
    the IKE side's bad input is: the first few drops, then one line per 10 s with the counts
    held back (the data plane logged five lines a second before)."""
    from tunvpn.dataplane.thread import ESP_DROP_LOG_INTERVAL
    from tunvpn.esp import DropReason

    dataplane = DataPlane(FakeTun())
    with caplog.at_level(logging.INFO, logger="tunvpn.esp"):
        for i in range(6000):  # 100 a second for 60 s
            dataplane.sad.drop_log.record(DropReason.UNKNOWN_SPI, 0x1000 + i, 1000.0 + i / 100)
    lines = [r for r in caplog.records if "ESP drop" in r.getMessage()]
    assert len(lines) <= 3 + 60 / ESP_DROP_LOG_INTERVAL + 1, len(lines)
    assert "not logged" in lines[-1].getMessage()


def test_esp_for_an_unknown_spi_is_noted_once_per_source_a_second(pair: tuple[Side, Side]) -> None:
    """Issue 15: a restarted gateway tells a client still sending on lost SAs (the control
    plane answers INVALID-SPI); forged or replayed ESP of a known SA is not noted, and a
    flood from one address makes one note a second, not one per datagram."""
    client, gateway = pair
    good = carry(client, gateway, ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"x" * 32), CLIENT)
    wait_for(lambda: gateway.tun.written)
    gateway.udp.inject(good, CLIENT)  # a replay of a known SA: not "unknown"
    for n in range(50):
        gateway.udp.inject((0x7777 + n).to_bytes(4, "big") + good[4:], CLIENT)
    other = ("192.0.2.77", 4500)
    gateway.udp.inject((0x9999).to_bytes(4, "big") + good[4:], other)
    wait_for(lambda: gateway.dataplane.counter_snapshot().group("esp drops").get("unknown_spi") == 51)
    notes = [e for e in gateway.events if isinstance(e, UnknownSpi)]
    assert notes == [UnknownSpi(0x7777, CLIENT, len(good)), UnknownSpi(0x9999, other, len(good))]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected fault
def test_health_says_when_the_data_thread_is_stuck_or_dead(pair: tuple[Side, Side]) -> None:
    """What the service watchdog asks (tunvpn.shell.sdnotify.start_watchdog): a turning data
    thread is healthy; one that has not gone round its loop for STALL_AFTER is stuck."""
    import time

    from tunvpn.dataplane.thread import STALL_AFTER

    client, gateway = pair
    assert client.dataplane.health() is None
    stuck = client.dataplane.health(now=time.monotonic() + STALL_AFTER + 5)
    assert stuck is not None and "has not turned" in stuck

    def broken() -> None:  # a fault outside the per-batch guard ends the thread
        raise RuntimeError("injected fault")

    gateway.dataplane._timers = broken  # type: ignore[method-assign]
    gateway.dataplane._wake()
    wait_for(lambda: gateway.dataplane.health() is not None)
    assert gateway.dataplane.health() == "the ESP data path thread has died"
    client.dataplane.stop()
    assert client.dataplane.health() is None  # stopped on purpose: nothing to report
    idle = DataPlane(FakeTun())
    assert idle.health() is None  # not started yet


def test_activity_tells_whether_anything_moved_without_a_snapshot(pair: tuple[Side, Side]) -> None:
    """``DataPlane.activity`` (read by the client's traffic watch from its own thread): it
    moves with every batch either way, and not while the tunnel is idle."""
    client, gateway = pair
    assert client.dataplane.activity == gateway.dataplane.activity == 0
    carry(client, gateway, ipv4(src=CLIENT_VIP, dst=SERVER, payload=b"ping"), CLIENT)
    wait_for(lambda: gateway.tun.written)
    assert client.dataplane.activity == 1 and gateway.dataplane.activity == 1
    client.dataplane.counter_snapshot()  # asking for counters is not traffic
    assert client.dataplane.activity == 1
