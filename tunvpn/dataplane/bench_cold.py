"""What a cold CPU costs: ``python -m tunvpn.dataplane.bench_cold`` (issue 21).

Times a few steps of the data path twice: back to back ("warm"), and each after the process
slept for ``--gap`` seconds ("cold": what a lone packet meets, such as a ping every 200 ms).
On a virtual machine whose idle vCPU halts, a step after the gap costs many times what it
costs warm, because the caches, TLBs and branch predictors the step needs were lost while
the vCPU slept; the more code and memory a step touches, the more it pays. This is where
tunvpn's idle ping RTT goes (docs/datapath.md "Latency"). Needs no root; no packet leaves
the process (loopback UDP, a socketpair in place of the TUN device).

Steps:

- ``python call``: calling an empty Python function (the interpreter's smallest step);
- ``aes-256-gcm seal``: ``cryptography``'s AESGCM sealing an 84-octet packet (a ping);
- ``udp send+recv``: one datagram through a loopback UDP socket pair;
- ``lone packet out``: what the data thread runs for one packet from the TUN device to the
  NAT-T socket (``TunDevice.read_batch``, ``SadTable.encrypt_batch``, ``UdpSocket.send_batch``);
- ``lone packet out, minimal``: the least Python can do for it (``os.read``, one seal,
  ``sendto``), for comparison;
- ``lone packet in``: the other way (``UdpSocket.recv_buffers``, ``SadTable.decrypt_buffer``,
  ``TunDevice.write_batch``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..esp.sa import InboundSA, OutboundSA
from ..esp.table import SadTable
from ..esp.transforms import EspSuite
from ..ipsec.algorithms import EspTransform
from ..ipsec.selectors import TrafficSelector
from .bench_pipeline import CLIENT, SPI, tun_on_fd
from .tun_linux import TunDevice
from .udp_linux import UdpSocket
from .virtio import VIRTIO_NET_HDR_LEN

PING = bytes.fromhex("4500005400014000400100000a4f000a0a4e00010800000000010001") + bytes(56)
"""An 84-octet ICMP echo request from the client to the server (checksums left zero)."""


def _noop() -> None:
    return None


def _tun_stand_in() -> tuple[TunDevice, socket.socket, socket.socket]:
    """A TunDevice over one end of a socketpair (virtio-framed packets); the other end is the
    kernel's side."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun = tun_on_fd(ours.fileno())
    return tun, ours, kernel


class LonePacketPath:
    """Two ends of one SA, each with its TUN stand-in and its UDP socket on loopback."""

    def __init__(self) -> None:
        self.tun, self.tun_end, self.kernel_end = _tun_stand_in()
        self.far_tun, self.far_tun_end, self.far_kernel_end = _tun_stand_in()
        self.far_kernel_end.setblocking(False)
        self.udp = UdpSocket(bind=("127.0.0.1", 0))
        self.far = UdpSocket(bind=("127.0.0.1", 0))
        self.sink = self.far.sock
        self.sink.setblocking(False)
        peer = self.sink.getsockname()
        suite = EspSuite(EspTransform.AES_GCM_16, 256)
        self.key = bytes(range(suite.enc_key_len))
        client = TrafficSelector.from_network(f"{CLIENT}/32")
        protected = TrafficSelector.from_network("10.78.0.0/24")
        self.table = SadTable()
        self.table.install(OutboundSA(SPI, suite, self.key, remote_ts=protected, local_ts=client, peer=peer))
        self.receiver = SadTable()
        self.receiver.install(InboundSA(SPI, suite, self.key, remote_ts=client, local_ts=protected))
        self.aead = AESGCM(self.key[:32])
        self.peer = peer

    def offer(self) -> None:
        """The kernel routes a ping into the TUN device."""
        self.kernel_end.send(bytes(VIRTIO_NET_HDR_LEN) + PING)

    def offer_esp(self) -> None:
        """A ping sealed on the near end arrives on the far end's UDP socket."""
        for sa, datagrams in self.table.encrypt_batch([PING]):
            assert sa.peer is not None
            self.udp.send_batch(datagrams, sa.peer)

    def drain(self) -> None:
        for sock in (self.sink, self.far_kernel_end):
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break

    def data_path(self) -> None:
        for sa, datagrams in self.table.encrypt_batch(self.tun.read_batch(1)):
            assert sa.peer is not None
            self.udp.send_batch(datagrams, sa.peer)

    def data_path_in(self) -> None:
        inner: list[bytes] = []
        for data, segment, _ in self.far.recv_buffers(1):
            self.receiver.decrypt_buffer(data, segment, inner, 0.0)
        self.far_tun.write_batch(inner)

    def minimal(self) -> None:
        data = os.read(self.tun_end.fileno(), 65536)
        header = SPI.to_bytes(4, "big") + bytes(8)
        sealed = self.aead.encrypt(bytes(4) + header[4:], data[VIRTIO_NET_HDR_LEN:], header[:8])
        self.udp.sock.sendto(header + sealed, self.peer)

    def close(self) -> None:
        for sock in (self.tun_end, self.kernel_end, self.far_tun_end, self.far_kernel_end):
            sock.close()
        self.udp.close()
        self.far.close()


def measure(gap: float, rounds: int, warm_rounds: int) -> dict[str, tuple[float, float]]:
    """Median microseconds of each step: ``{step: (warm, after the gap)}``."""
    path = LonePacketPath()
    aead = AESGCM(bytes(32))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    to_b = b.getsockname()
    nonce = bytes(12)

    def udp_pair() -> None:
        a.sendto(PING, to_b)
        b.recv(2048)

    steps: dict[str, tuple[Callable[[], object], Callable[[], None] | None]] = {
        "python call": (_noop, None),
        "aes-256-gcm seal": (lambda: aead.encrypt(nonce, PING, b"12345678"), None),
        "udp send+recv": (udp_pair, None),
        "lone packet out": (path.data_path, path.offer),
        "lone packet out, minimal": (path.minimal, path.offer),
        "lone packet in": (path.data_path_in, path.offer_esp),
    }
    results: dict[str, tuple[float, float]] = {}
    try:
        for name, (step, before) in steps.items():
            timings = []
            for sleep, count in ((0.0, warm_rounds), (gap, rounds)):
                samples = []
                for _ in range(count):
                    if before is not None:
                        before()
                    if sleep:
                        time.sleep(sleep)
                    start = time.perf_counter_ns()
                    step()
                    samples.append(time.perf_counter_ns() - start)
                    path.drain()
                timings.append(statistics.median(samples) / 1000)
            results[name] = (timings[0], timings[1])
    finally:
        path.close()
        a.close()
        b.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=float, default=0.2, help="seconds asleep before a cold step (0.2)")
    parser.add_argument("--rounds", type=int, default=30, help="cold samples per step (30)")
    parser.add_argument("--warm-rounds", type=int, default=300, help="warm samples per step (300)")
    args = parser.parse_args(argv)
    results = measure(args.gap, args.rounds, args.warm_rounds)
    print(f"median microseconds per step, warm and after {args.gap:g} s asleep")
    print(f"{'step':28} {'warm':>8} {'cold':>8} {'ratio':>7}")
    for name, (warm, cold) in results.items():
        print(f"{name:28} {warm:8.1f} {cold:8.1f} {cold / warm if warm else 0:6.0f}x")


if __name__ == "__main__":
    main()
