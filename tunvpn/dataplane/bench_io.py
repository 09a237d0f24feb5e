"""Micro-benchmark of the batched I/O layer: ``python -m tunvpn.dataplane.bench_io``.

Prints four tables: Internet checksum throughput (the big-integer trick as shipped, the
same without folding, numpy, and a word-by-word loop), GSO split and GRO coalesce rates, and
UDP on loopback: one GSO ``sendmsg`` per batch against one ``sendto`` per datagram, and GRO
``recvmsg`` against one ``recvmsg`` per datagram. Needs no root. Nothing here is asserted by
the tests; the numbers are for choosing between implementations and spotting regressions.
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import socket
import struct
import timeit
from collections.abc import Callable

from . import checksum as cks
from .packets import gro_coalesce, gso_split
from .udp_linux import UdpSocket
from .virtio import GSO_TCPV4, GSO_UDP_L4, VirtioNetHdr


def rate(fn: Callable[[], object], min_time: float) -> float:
    """Calls per second of ``fn``, timed over at least ``min_time`` seconds."""
    number = 1
    while True:
        elapsed = timeit.timeit(fn, number=number)
        if elapsed >= min_time:
            return number / elapsed
        number = max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.2))


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def int_mod_only(data: bytes) -> int:
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return cks.fold(value)


def numpy_sum(data: bytes) -> int:
    import numpy as np

    n = len(data)
    total = int(np.frombuffer(data, dtype=np.uint16, count=n >> 1).sum(dtype=np.uint64)) << 8  # byte-swapped
    if n & 1:
        total += data[-1] << 8
    return cks.fold(total)


def bench_checksums(min_time: float) -> None:
    print("Internet checksum (ones' complement sum), MB/s")
    impls: list[tuple[str, Callable[[bytes], int]]] = [
        ("int+fold (shipped)", cks.ones_sum),
        ("int % 0xFFFF", int_mod_only),
    ]
    if cks.HAVE_NUMPY:
        impls.append(("numpy", numpy_sum))
    impls.append(("word loop", naive_sum))
    sizes = (40, 576, 1500, 9000, 65535)
    print(f"  {'size':>7} " + "".join(f"{name:>20}" for name, _ in impls))
    for size in sizes:
        data = os.urandom(size)
        expected = naive_sum(data)
        row = []
        for _name, fn in impls:
            assert fn(data) == expected
            row.append(rate(functools.partial(fn, data), min_time) * size / 1e6)
        print(f"  {size:>7} " + "".join(f"{r:>20.1f}" for r in row))
    print()


def tcp_super_packet(payload: int, mss: int) -> tuple[VirtioNetHdr, bytes]:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + payload, 1, 0x4000, 64, 6, 0, b"\n\0\0\1", b"\n\0\0\2")
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 65000, 0, 0)
    return VirtioNetHdr(1, GSO_TCPV4, 40, mss, 20, 16), ip + tcp + os.urandom(payload)


def udp_super_packet(count: int, size: int) -> tuple[VirtioNetHdr, bytes]:
    total = 28 + count * size
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 17, 0, b"\n\0\0\1", b"\n\0\0\2")
    udp = struct.pack("!HHHH", 4500, 4500, total - 20, 0)
    return VirtioNetHdr(1, GSO_UDP_L4, 28, size, 20, 6), ip + udp + os.urandom(count * size)


def bench_segmentation(min_time: float) -> None:
    print("GSO split / GRO coalesce (pure Python), per second")
    print(f"  {'case':<52}{'calls/s':>12}{'packets/s':>14}{'Mbit/s':>10}")

    def row(name: str, fn: Callable[[], object], packets: int, octets: int) -> None:
        r = rate(fn, min_time)
        print(f"  {name:<52}{r:>12.0f}{r * packets:>14.0f}{r * octets * 8 / 1e6:>10.0f}")

    hdr, packet = tcp_super_packet(45 * 1448, 1448)
    n = len(gso_split(hdr, packet))
    row(
        "gso_split TCPv4 64 KiB / 1448, numpy row sums",
        lambda: gso_split(hdr, packet, vectorized=True),
        n,
        len(packet),
    )
    row(
        "gso_split TCPv4 64 KiB / 1448, int per segment",
        lambda: gso_split(hdr, packet, vectorized=False),
        n,
        len(packet),
    )
    small_hdr, small = tcp_super_packet(4 * 1448, 1448)
    row("gso_split TCPv4 4 segments (auto)", lambda: gso_split(small_hdr, small), 4, len(small))
    uhdr, upacket = udp_super_packet(54, 1200)
    row("gso_split UDP_L4 54 x 1200 (auto)", lambda: gso_split(uhdr, upacket), 54, len(upacket))
    none_hdr = VirtioNetHdr(1, 0, 0, 0, 20, 16)
    one = gso_split(hdr, packet)[0]
    row("GSO_NONE + NEEDS_CSUM, one 1500-octet packet", lambda: gso_split(none_hdr, one), 1, len(one))

    segments = gso_split(hdr, packet)
    row("gro_coalesce 45 segments of one flow", lambda: gro_coalesce(segments), len(segments), len(packet))
    flows = []
    for port in range(4):
        h, p = tcp_super_packet(16 * 1448, 1448)
        p = p[:20] + struct.pack("!H", 40000 + port) + p[22:]
        flows.append(gso_split(h, p))
    mixed = [seg for group in zip(*flows) for seg in group]
    row(
        "gro_coalesce 4 interleaved flows x 16", lambda: gro_coalesce(mixed), len(mixed), sum(map(len, mixed))
    )
    udps = gso_split(uhdr, upacket)
    row("gro_coalesce 54 UDP datagrams, udp=True", lambda: gro_coalesce(udps, udp=True), 54, len(upacket))
    row("gro_coalesce 54 UDP datagrams, udp=False (pass)", lambda: gro_coalesce(udps), 54, len(upacket))
    print()


def drain(sock: UdpSocket) -> int:
    got = 0
    while True:
        batch = sock.recv_batch(4096)
        if not batch:
            return got
        got += len(batch)


def bench_udp(count: int, size: int, rounds: int) -> None:
    print(f"UDP on loopback, {count} datagrams of {size} octets per round, {rounds} rounds")
    datagrams = [os.urandom(size) for _ in range(count)]
    results: list[tuple[str, float, float]] = []
    for name, gso in (("send_batch, UDP GSO", True), ("send_batch, no GSO (sendto each)", False)):
        rx = UdpSocket(bind=("127.0.0.1", 0), rcvbuf=64 << 20)
        tx = UdpSocket(bind=("127.0.0.1", 0), gso=gso, sndbuf=16 << 20)
        addr = rx.getsockname()
        elapsed = 0.0
        for _ in range(rounds):
            start = timeit.default_timer()
            done = 0
            while done < count:
                done += tx.send_batch(datagrams[done:], addr)
                if done < count:
                    select.select([], [tx], [], 1)
            elapsed += timeit.default_timer() - start
            drain(rx)
        syscalls = tx.stats.sendmsg_calls / rounds
        results.append((name, count * rounds / elapsed, syscalls))
        rx.close()
        tx.close()
    for name, gro in (("recv_batch, UDP GRO", True), ("recv_batch, no GRO (recvmsg each)", False)):
        rx = UdpSocket(bind=("127.0.0.1", 0), gro=gro, rcvbuf=64 << 20)
        tx = UdpSocket(bind=("127.0.0.1", 0), sndbuf=16 << 20)
        addr = rx.getsockname()
        elapsed = 0.0
        received = 0
        for _ in range(rounds):
            tx.send_batch(datagrams, addr)
            start = timeit.default_timer()
            received += drain(rx)
            elapsed += timeit.default_timer() - start
        results.append((name, received / elapsed, rx.stats.recvmsg_calls / rounds))
        rx.close()
        tx.close()
    print(f"  {'path':<40}{'datagrams/s':>14}{'Mbit/s':>10}{'syscalls/round':>16}")
    for name, per_second, syscalls in results:
        print(f"  {name:<40}{per_second:>14.0f}{per_second * size * 8 / 1e6:>10.0f}{syscalls:>16.0f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement (default 0.3)")
    parser.add_argument("--udp-count", type=int, default=4096)
    parser.add_argument("--udp-size", type=int, default=1400)
    parser.add_argument("--udp-rounds", type=int, default=20)
    parser.add_argument("--only", choices=("checksum", "segmentation", "udp"), default=None)
    args = parser.parse_args()
    print(f"numpy: {'yes' if cks.HAVE_NUMPY else 'no'}; CPU count {os.cpu_count()}; {socket.gethostname()}\n")
    if args.only in (None, "checksum"):
        bench_checksums(args.min_time)
    if args.only in (None, "segmentation"):
        bench_segmentation(args.min_time)
    if args.only in (None, "udp"):
        bench_udp(args.udp_count, args.udp_size, args.udp_rounds)


if __name__ == "__main__":
    main()
