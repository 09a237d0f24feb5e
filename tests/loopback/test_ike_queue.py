"""Issue 14: the hand-over of IKE datagrams from the data thread (which owns UDP 4500) to the
event loop is bounded. A storm the data thread delivers faster than the loop runs (here: while
the loop is held busy) is queued up to ``ike_queue_size`` and the rest dropped and counted
(``ike queue full``); the data thread never blocks; a message for an ISAKMP SA the engine
knows is kept (it pushes out a waiting first message) and handled first. Real UdpDriver on
127.0.0.1; a stand-in for the data thread delivers from its own thread."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import threading

from tests.helpers.ike_pair import Pair, Peer, client_config, gateway_config
from tunvpn.control.status import counter_registry
from tunvpn.ike import events as ev
from tunvpn.ike.engine import IkeEngine
from tunvpn.ipsec.udpencap import NON_ESP_MARKER
from tunvpn.shell.udp import UdpDriver

GATEWAY, CLIENT = "127.0.0.1", "127.0.0.2"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((GATEWAY, 0))
        return int(s.getsockname()[1])


class DataThreadStandIn:
    """What UdpDriver needs of the data path that owns the NAT-T socket."""

    def __init__(self) -> None:
        self.deliver = None
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def attach(self, sock: socket.socket, deliver) -> None:
        sock.close()
        self.deliver = deliver

    def send_ike(self, data: bytes, remote: tuple[str, int]) -> None:
        self.sent.append((data, remote))


def test_a_storm_through_the_data_thread_is_bounded_and_known_sas_go_first() -> None:
    ike_port, natt_port = free_port(), free_port()
    pair = Pair(client_config(), gateway_config())
    pair.client = Peer(IkeEngine(client_config()), CLIENT)
    pair.gateway = Peer(IkeEngine(gateway_config(), ike_port=ike_port), GATEWAY)
    client_sa = pair.client.engine.initiate((GATEWAY, ike_port), (CLIENT, 500), pair.now)
    pair.run()
    [established] = pair.gateway.of(ev.Phase1Established)
    gateway = pair.gateway.engine

    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY, ike_port), (CLIENT, 500), pair.now)
    [(first, _, _)] = spare.datagrams_to_send()
    rng = random.Random(14)
    storm = [NON_ESP_MARKER + rng.randbytes(8) + first[8:] for _ in range(5000)]
    pair.client.engine.delete_ike_sa(client_sa, pair.now)
    [(delete, _, _)] = pair.client.engine.datagrams_to_send()

    seen: list[ev.Event] = []
    owner = DataThreadStandIn()

    async def run() -> tuple[int, int, dict[str, int]]:
        driver = UdpDriver(
            gateway, GATEWAY, ike_port=ike_port, natt_port=natt_port, natt_owner=owner,
            handler=seen.append, ike_queue_size=64,
        )  # fmt: skip
        await driver.start()

        def data_thread() -> None:
            assert owner.deliver is not None
            for i, data in enumerate(storm):
                owner.deliver(data, (f"127.0.{i % 200}.{1 + i % 250}", 4500))
            owner.deliver(NON_ESP_MARKER + delete, (CLIENT, 4500))

        # the loop is busy (this callback holds it) while the data thread delivers everything
        thread = threading.Thread(target=data_thread)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()  # the data thread never waited for the loop
        depth, dropped = driver.inbox.depth(), driver.inbox.dropped
        for _ in range(50):
            await asyncio.sleep(0.02)
            if driver.inbox.depth() == 0 and any(isinstance(e, ev.IkeSADeleted) for e in seen):
                break

        class Daemon:
            engine = gateway
            tunnel = None

        Daemon.driver = driver  # type: ignore[attr-defined]
        counts = dict(counter_registry(Daemon()).snapshot().group("ike driver"))  # type: ignore[arg-type]
        driver.close()
        return depth, dropped, counts

    depth, dropped, counts = asyncio.run(run())
    assert depth == 64  # bounded, however fast the storm came
    assert dropped == 5001 - 64
    assert counts["ike queue full"] == 5001 - 64 and counts["ike queue depth"] == 0
    # the Delete of the known ISAKMP SA was kept and handled, though it came last to a full queue
    deleted = [e for e in seen if isinstance(e, ev.IkeSADeleted)]
    assert [e.sa_id for e in deleted] == [established.sa_id]
    assert gateway.half_open_count() <= 63


def test_tunvpn_status_shows_the_ike_side_under_attack() -> None:
    """A real gateway gets garbage and spoofed-looking first messages on its IKE port (from
    127.0.0.2): `tunvpn status` shows the half-open SAs, the queue and the drops by reason."""
    from tests.helpers.loopback import SimpleRule, free_port_pair, gateway_options, policy
    from tunvpn.control.server import format_status
    from tunvpn.testing import serve, stop

    ike, natt = free_port_pair()
    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY, ike), (CLIENT, ike), 0.0, xauth=True)
    [(first, _, _)] = spare.datagrams_to_send()

    async def run() -> dict[str, object]:
        options = gateway_options(ike, natt, (SimpleRule(policy("intra", "10.1.0.0/16")),), tun=None)
        gateway, server = await serve(dataclasses.replace(options, ike_queue_size=48))
        assert gateway.driver is not None and gateway.driver.inbox.limit == 48  # the option reaches it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((CLIENT, 0))
            for i in range(8):  # one source: 5 half-open kept, 3 dropped
                sock.sendto(bytes([i + 1]) * 8 + first[8:], (GATEWAY, ike))
            sock.sendto(b"garbage", (GATEWAY, ike))
            for _ in range(100):
                await asyncio.sleep(0.02)
                if sum(gateway.engine.drops.values()) >= 3 and gateway.driver.inbox.drops:
                    break
        status = gateway.status()
        await stop(gateway, server)
        return status

    status = asyncio.run(run())
    ike_status = status["ike"]
    assert isinstance(ike_status, dict)
    assert ike_status["half_open"] == 5 and ike_status["queue_depth"] == 0, ike_status
    # the garbage is dropped by the first look in front of the engine (tunvpn/ike/firstlook.py)
    assert ike_status["dropped"] == {"half-open limit per source": 3, "shorter than an ISAKMP header": 1}
    assert (
        "ike  half-open 5  queue 0  dropped half-open limit per source 3, shorter than an ISAKMP header 1"
        in (format_status(status).splitlines())
    )


def test_a_burst_on_the_ike_port_does_not_crowd_out_a_real_first_message() -> None:
    """The kernel's receive buffer of the IKE socket holds a burst: 3,000 spoofed first
    messages arrive while the gateway is not reading (busy), then a real user's first message;
    with the default buffer (about 208 KB, some 150 datagrams) the kernel dropped the user's
    message with the burst's tail, and the user waited a retransmission interval."""
    import os
    from pathlib import Path

    import pytest

    from tests.vectors.captures import CHARON_MM1
    from tunvpn.shell.udp import IKE_RECEIVE_BUFFER, bind_udp

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    if os.geteuid() != 0 and rmem_max < IKE_RECEIVE_BUFFER:
        pytest.skip(f"not root, and net.core.rmem_max ({rmem_max}) caps the receive buffer")
    gateway = bind_udp(GATEWAY, 0)
    port = gateway.getsockname()[1]
    rng = random.Random(14)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as user,
    ):
        attacker.bind((GATEWAY, 0))
        user.bind((CLIENT, 0))
        for _ in range(3000):
            attacker.sendto(rng.randbytes(8) + CHARON_MM1[8:], (GATEWAY, port))
        user.sendto(b"the user's" + CHARON_MM1[10:], (GATEWAY, port))
        received: list[tuple[bytes, tuple[str, int]]] = []
        try:
            while True:
                received.append(gateway.recvfrom(65535))
        except BlockingIOError:
            pass
        finally:
            gateway.close()
    assert received[-1][1][0] == CLIENT, f"{len(received)} of 3001 datagrams kept; the user's lost"
    assert len(received) == 3001


def test_on_the_ike_port_a_known_sa_is_served_before_a_burst_of_first_messages() -> None:
    """Port 500, read by the loop: 200 spoofed first messages, then a Delete of a connected
    client's ISAKMP SA, all queued in the kernel while the loop is busy. The socket is read in
    bursts through the inbox, so the Delete (a known SA) is handled before the first messages
    read with it; read one datagram per loop iteration (asyncio's transport) it came last."""
    ike_port, natt_port = free_port(), free_port()
    pair = Pair(client_config(), gateway_config())
    pair.client = Peer(IkeEngine(client_config()), CLIENT)
    pair.gateway = Peer(IkeEngine(gateway_config(max_half_open_per_source=1000), ike_port=ike_port), GATEWAY)
    client_sa = pair.client.engine.initiate((GATEWAY, ike_port), (CLIENT, 500), pair.now)
    pair.run()
    [established] = pair.gateway.of(ev.Phase1Established)
    gateway = pair.gateway.engine
    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY, ike_port), (CLIENT, 500), pair.now)
    [(first, _, _)] = spare.datagrams_to_send()
    rng = random.Random(15)
    pair.client.engine.delete_ike_sa(client_sa, pair.now)
    [(delete, _, _)] = pair.client.engine.datagrams_to_send()

    order: list[str] = []
    receive = gateway.receive_datagram

    def recording(data: bytes, remote: tuple[str, int], local: tuple[str, int], now: float) -> None:
        order.append("known" if data[8:16] == established.sa_id[8:] else "new")
        receive(data, remote, local, now)

    gateway.receive_datagram = recording  # type: ignore[method-assign]

    async def run() -> None:
        driver = UdpDriver(gateway, GATEWAY, ike_port=ike_port, natt_port=natt_port, handler=lambda e: None)
        await driver.start()
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            attacker.bind(("127.0.0.3", 0))
            client.bind((CLIENT, 0))
            for _ in range(200):  # the loop is busy: all of it waits in the kernel
                attacker.sendto(rng.randbytes(8) + first[8:], (GATEWAY, ike_port))
            client.sendto(delete, (GATEWAY, ike_port))
            for _ in range(100):
                await asyncio.sleep(0.02)
                if len(order) >= 201:
                    break
        driver.close()

    asyncio.run(run())
    assert len(order) == 201 and order.count("known") == 1
    assert order.index("known") == 0, order.index("known")  # one burst (READ_BURST 256): it goes first
