"""Offline benchmark of the whole per-packet data path: ``python -m tunvpn.dataplane.bench_pipeline``.

Pushes synthetic TCP/IPv4 segments of one bulk flow (what iperf3 sends through the tunnel)
through every stage the data thread runs, in one process and without the network, so a change
can be judged without the noise of a shared machine:

- send side: ``SadTable.encrypt_batch`` (route lookup and seal), then ``UdpSocket.send_batch``
  to a local UDP socket (GSO; the packets are discarded unread);
- receive side: splitting one GRO buffer into datagrams (what ``UdpSocket.recv_batch`` does
  after its ``recvmsg``), ``SadTable.decrypt_batch`` (replay window, open, trailer, policy),
  ``gro_coalesce`` and ``TunDevice.write_batch`` into /dev/null (coalesce, virtio header,
  one ``writev`` per super-packet).

Each stage is timed alone, best of several repeats, and reported in packets per second and
microseconds per packet; the receive-side and send-side totals are what one data thread can
carry at most (the kernel's share of the real system calls comes on top). Needs no root.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
import timeit
from collections.abc import Callable

from ..esp.sa import InboundSA, OutboundSA
from ..esp.table import SadTable
from ..esp.transforms import EspSuite
from ..ipsec.algorithms import EspTransform
from ..ipsec.selectors import TrafficSelector
from .packets import gro_coalesce
from .tun_linux import TunDevice, TunStats
from .udp_linux import UdpSocket

CLIENT = "10.79.0.10"
SERVER = "10.78.0.1"
MTU = 1400
SPI = 0x1234_5678


def tcp_segments(count: int, mtu: int = MTU, seq: int = 1000) -> list[bytes]:
    """``count`` consecutive full-size ACK segments of one TCP flow (timestamps option)."""
    out = []
    payload_len = mtu - 20 - 32
    src = socket.inet_aton(CLIENT)
    dst = socket.inet_aton(SERVER)
    for i in range(count):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, mtu, i & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, 8 << 4, 0x10, 502, 0, 0)
        tcp += b"\x01\x01\x08\x0a" + struct.pack("!II", 12345, 6789)
        out.append(ip + tcp + bytes([i & 0xFF]) * payload_len)
        seq = (seq + payload_len) & 0xFFFF_FFFF
    return out


def make_sas(suite: EspSuite) -> tuple[SadTable, SadTable]:
    """A sending table (the client's) and a receiving one (the gateway's) sharing one SA."""
    key = bytes(range(suite.enc_key_len))
    client_ts = TrafficSelector.from_network(f"{CLIENT}/32")
    protected = TrafficSelector.from_network("10.78.0.0/24")
    sender, receiver = SadTable(), SadTable()
    sender.install(OutboundSA(SPI, suite, key, remote_ts=protected, local_ts=client_ts, peer=("x", 4500)))
    receiver.install(InboundSA(SPI, suite, key, remote_ts=client_ts, local_ts=protected))
    return sender, receiver


def _best(fn: Callable[[], object], repeat: int, number: int) -> float:
    return min(timeit.Timer(fn, timer=time.thread_time).repeat(number=number, repeat=repeat)) / number


def tun_on_fd(fd: int) -> TunDevice:
    """A TunDevice with offloads on (virtio headers) over ``fd`` instead of /dev/net/tun:
    /dev/null, or one end of a socketpair standing in for the kernel's side."""
    tun = TunDevice.__new__(TunDevice)
    tun._fd = fd
    tun.offload = True
    tun.read_offload = False
    tun.uso = True
    tun.name = "bench"
    tun.stats = TunStats()
    tun._closed = True
    return tun


def run(batch: int, batches: int, repeat: int, suite: EspSuite) -> dict[str, float]:
    """Seconds per packet of each stage."""
    inner = tcp_segments(batch * batches)
    chunks = [inner[i : i + batch] for i in range(0, len(inner), batch)]
    sender, _ = make_sas(suite)
    esp_chunks = [[d for _, ds in sender.encrypt_batch(c) for d in ds] for c in chunks]
    gro_buffers = [b"".join(c) for c in esp_chunks]
    seg = len(esp_chunks[0][0])
    total = batch * batches
    results: dict[str, float] = {}

    # send side
    fresh = make_sas(suite)[0]

    def encrypt() -> None:
        for c in chunks:
            fresh.encrypt_batch(c)

    results["encrypt_batch"] = _best(encrypt, repeat, 1) / total

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    udp = UdpSocket(bind=("127.0.0.1", 0), sndbuf=8 << 20)
    dest = sink.getsockname()

    def send() -> None:
        for c in esp_chunks:
            udp.send_batch(c, dest)

    results["send_batch (GSO, loopback)"] = _best(send, repeat, 1) / total
    results["send side total"] = results["encrypt_batch"] + results["send_batch (GSO, loopback)"]

    # receive side
    def split() -> None:
        for buf in gro_buffers:
            view = memoryview(buf)
            n = len(buf)
            [(bytes(view[s : min(s + seg, n)]), dest) for s in range(0, n, seg)]

    results["GRO buffer split"] = _best(split, repeat, 1) / total

    def decrypt() -> None:
        # a fresh replay window each round: the same sequence numbers are replayed
        _, table = make_sas(suite)
        for c in esp_chunks:
            table.decrypt_batch(c, 0.0)

    decrypted = []
    _, table = make_sas(suite)
    for c in esp_chunks:
        decrypted.append(table.decrypt_batch(c, 0.0))
    assert decrypted[0] == chunks[0], "round trip failed"
    results["decrypt_batch"] = _best(decrypt, repeat, 1) / total

    if hasattr(InboundSA, "decrypt_buffer"):

        def decrypt_buffers() -> None:
            _, table = make_sas(suite)
            sa = table.lookup(SPI)
            assert sa is not None
            for buf in gro_buffers:
                sa.decrypt_buffer(buf, seg, [])

        results["decrypt_buffer (GRO buffer)"] = _best(decrypt_buffers, repeat, 1) / total

    def coalesce() -> None:
        for d in decrypted:
            gro_coalesce(d, udp=True)

    results["gro_coalesce"] = _best(coalesce, repeat, 1) / total
    tun = tun_on_fd(os.open(os.devnull, os.O_WRONLY))

    def write() -> None:
        for d in decrypted:
            tun.write_batch(d)

    results["write_batch (/dev/null)"] = _best(write, repeat, 1) / total
    # what the data thread runs: the GRO buffer walked in place where the core can, else split first
    opened = results.get("decrypt_buffer (GRO buffer)")
    if opened is None:
        opened = results["GRO buffer split"] + results["decrypt_batch"]
    results["receive side total"] = opened + results["write_batch (/dev/null)"]
    os.close(tun._fd)
    udp.close()
    sink.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="packets per batch (default 64: one GRO read)")
    parser.add_argument("--batches", type=int, default=64, help="batches per round (default 64)")
    parser.add_argument("--repeat", type=int, default=15, help="rounds; the best is reported (default 15)")
    parser.add_argument(
        "--suite", choices=("aes128gcm16", "aes256gcm16", "chacha20poly1305"), default="aes256gcm16"
    )
    args = parser.parse_args(argv)
    suite = {
        "aes128gcm16": EspSuite(EspTransform.AES_GCM_16, 128),
        "aes256gcm16": EspSuite(EspTransform.AES_GCM_16, 256),
        "chacha20poly1305": EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256),
    }[args.suite]
    results = run(args.batch, args.batches, args.repeat, suite)
    print(f"{args.suite}, {MTU}-octet TCP segments, batches of {args.batch}")
    print(f"{'stage':32} {'kpps':>9} {'us/pkt':>8}")
    for name, seconds in results.items():
        print(f"{name:32} {1e-3 / seconds:9.1f} {seconds * 1e6:8.2f}")


if __name__ == "__main__":
    main()
