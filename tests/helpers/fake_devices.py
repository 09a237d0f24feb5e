"""Stand-ins for the data path's devices, and a negotiated child SA as both ends see it.

:class:`FakeTun` (a :class:`~tunvpn.dataplane.PacketDevice`) and :class:`FakeUdp` (a
:class:`~tunvpn.dataplane.thread.DatagramDevice`) are queues in memory, each with a pipe that
the data thread polls, so the real thread runs its real loop and no packet leaves the process.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from tunvpn.ike import events as ev
from tunvpn.ipsec.algorithms import EspTransform
from tunvpn.ipsec.selectors import TrafficSelector

Address = tuple[str, int]
CLIENT = ("192.0.2.10", 4500)
GATEWAY = ("198.51.100.1", 4500)
CLIENT_VIP = "10.99.0.7"


class _Readable:
    """A pipe the data thread polls: a byte in it while there is something to read (level
    triggered, as a socket or a TUN device is: a read that leaves packets behind signals again)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._r

    def _signal(self) -> None:
        os.write(self._w, b"x")

    def _drain(self) -> None:
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            os.close(fd)


class FakeTun(_Readable):
    """A TUN device: :meth:`inject` is a packet the kernel routes into it, ``written`` what the
    data thread wrote to it."""

    name = "faketun"
    offload = False

    def __init__(self) -> None:
        super().__init__()
        self._in: deque[bytes] = deque()
        self.written: list[bytes] = []
        self.configured: list[dict[str, object]] = []

    def inject(self, *packets: bytes) -> None:
        self._in.extend(packets)
        self._signal()

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        self._drain()
        out = []
        while self._in and len(out) < max_packets:
            out.append(self._in.popleft())
        if self._in:
            self._signal()
        return out

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        self.written += [bytes(p) for p in packets]
        return len(packets)

    def configure(self, **kwargs: object) -> None:
        self.configured.append(kwargs)


class FakeUdp(_Readable):
    """The NAT-T socket: :meth:`inject` is a datagram from the network, ``sent`` what left."""

    def __init__(self) -> None:
        super().__init__()
        self._in: deque[tuple[bytes, int, Address]] = deque()
        self.sent: list[tuple[bytes, Address]] = []

    def inject(self, datagram: bytes, source: Address) -> None:
        self._in.append((datagram, 0, source))
        self._signal()

    def recv_buffers(self, max_datagrams: int = 128) -> list[tuple[bytes, int, Address]]:
        self._drain()
        out = []
        while self._in and len(out) < max_datagrams:
            out.append(self._in.popleft())
        if self._in:
            self._signal()
        return out

    def send_batch(self, datagrams: Sequence[bytes | bytearray | memoryview], addr: Address) -> int:
        self.sent += [(bytes(d), addr) for d in datagrams]
        return len(datagrams)

    def send(self, datagram: bytes | bytearray | memoryview, addr: Address) -> bool:
        self.sent.append((bytes(datagram), addr))
        return True


def children(spi_c: int = 0x1000, spi_g: int = 0x2000) -> tuple[ev.ChildSAEstablished, ev.ChildSAEstablished]:
    """The client's and the gateway's view of one AES-GCM-16-256 child SA (fixed keys)."""
    c2g, g2c = bytes(range(36)), bytes(range(100, 136))
    client = ev.ChildSAEstablished(
        sa_id=b"c" * 8 + b"g" * 8,
        spi_in=spi_c,
        spi_out=spi_g,
        transform=EspTransform.AES_GCM_16,
        key_length=256,
        integrity=None,
        enc_key_in=g2c,
        auth_key_in=b"",
        enc_key_out=c2g,
        auth_key_out=b"",
        local_ts=TrafficSelector.from_address(CLIENT_VIP),
        remote_ts=TrafficSelector.from_network("10.20.0.0/16"),
        lifetime_seconds=3600,
        lifetime_kilobytes=0,
        encapsulation=3,
        local=CLIENT,
        remote=GATEWAY,
        pfs_group=None,
        role="initiator",
        policy_name="net",
    )
    gateway = replace(
        client,
        spi_in=spi_g,
        spi_out=spi_c,
        enc_key_in=c2g,
        enc_key_out=g2c,
        local_ts=client.remote_ts,
        remote_ts=client.local_ts,
        local=GATEWAY,
        remote=CLIENT,
        role="responder",
    )
    return client, gateway
