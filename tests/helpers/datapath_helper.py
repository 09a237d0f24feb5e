"""Programs the data-path namespace tests run inside a namespace (a helper, not a test).

``python tests/helpers/datapath_helper.py MODE ...`` prints one JSON object on its last stdout line.

Modes:

tcp-over-tun / udp-over-tun
    One TUN device ``tvioecho`` and a "reflector": local address L on the TUN's subnet A, a
    second subnet B routed into the TUN. A packet L -> A.x read from the TUN is written back as
    B.x -> L, and L -> B.x as A.x -> L, with checksums recomputed. So a client connecting to
    A.2 reaches a server listening on L, seeing it as B.2, and every packet crosses the TUN
    twice: read_batch (GSO split) and write_batch (GRO coalesce). The client sends random
    data; the result carries both SHA-256 digests and the TUN counters.
udp-loop
    A GSO sender and a GRO receiver on loopback.
udp-send / udp-recv
    The two halves of udp-loop, for two namespaces joined by a veth pair.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tunvpn.dataplane import tun_linux
from tunvpn.dataplane.packets import l4_checksum
from tunvpn.dataplane.tun_linux import TunDevice
from tunvpn.dataplane.udp_linux import UdpSocket

PORT = 5001
NETS = {
    4: ("10.201.0.1", "10.201.0.0/24", "10.201.1.0/24"),
    6: ("fd77:a::1", "fd77:a::/64", "fd77:b::/64"),
}


# --------------------------------------------------------------------------- the reflector


class Reflector:
    """Maps L -> A.x to B.x -> L and L -> B.x to A.x -> L (see the module docstring)."""

    def __init__(self, family: int):
        local, net_a, net_b = NETS[family]
        self.family = family
        self.local = ipaddress.ip_address(local).packed
        self.net_a = ipaddress.ip_network(net_a)
        self.net_b = ipaddress.ip_network(net_b)
        self.dropped = 0

    def rewrite(self, packet: bytes) -> bytes | None:
        version = packet[0] >> 4
        if version != self.family:
            self.dropped += 1
            return None
        if version == 4:
            ihl = (packet[0] & 15) * 4
            src_at, dst_at, alen, proto = 12, 16, 4, packet[9]
        else:
            ihl, src_at, dst_at, alen, proto = 40, 8, 24, 16, packet[6]
        src = packet[src_at : src_at + alen]
        dst = ipaddress.ip_address(packet[dst_at : dst_at + alen])
        if src != self.local:
            self.dropped += 1
            return None
        if dst in self.net_a:
            here, other = self.net_a, self.net_b
        elif dst in self.net_b:
            here, other = self.net_b, self.net_a
        else:
            self.dropped += 1
            return None
        new_src = (other.network_address + (int(dst) - int(here.network_address))).packed
        out = bytearray(packet)
        out[src_at : src_at + alen] = new_src
        out[dst_at : dst_at + alen] = self.local
        if version == 4:
            out[10:12] = b"\0\0"
            out[10:12] = struct.pack("!H", ipv4_header_checksum(bytes(out[:ihl])))
        csum_at = {6: 16, 17: 6, 58: 2}.get(proto)
        if csum_at is not None:
            out[ihl + csum_at : ihl + csum_at + 2] = b"\0\0"
            value = l4_checksum(new_src, self.local, proto, memoryview(out)[ihl:])
            out[ihl + csum_at : ihl + csum_at + 2] = struct.pack("!H", value)
        return bytes(out)


def ipv4_header_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def refuse_offloads(what: str) -> None:
    """Make TUNSETOFFLOAD fail as an old kernel would: for everything, or only with the USO bits."""
    real_ioctl = fcntl.ioctl

    def ioctl(fd: int, request: int, arg: Any = 0, *rest: Any) -> Any:
        if request == tun_linux.TUNSETOFFLOAD and (what == "offload" or arg & tun_linux.USO_OFFLOADS):
            raise OSError(errno.EINVAL, "Invalid argument (refused by the test)")
        return real_ioctl(fd, request, arg, *rest)

    tun_linux.fcntl = types.SimpleNamespace(ioctl=ioctl)  # type: ignore[assignment]


def open_reflecting_tun(family: int, offload: bool, uso: bool, read_offload: bool) -> TunDevice:
    local, net_a, net_b = NETS[family]
    prefix = ipaddress.ip_network(net_a).prefixlen
    if family == 6:
        Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").write_text("0")
        Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("0")
    tun = TunDevice("tvioecho", offload=offload, uso=uso, read_offload=read_offload)
    tun.configure(mtu=1500, addresses=[f"{local}/{prefix}"], routes=[net_b])
    return tun


def run_reflector(
    tun: TunDevice, reflector: Reflector, stop: threading.Event, batches: list[int], io_seconds: list[float]
) -> None:
    """Reflect until ``stop``; ``io_seconds`` gets the seconds spent in read_batch and in write_batch."""
    reading = writing = 0.0
    clock = time.perf_counter
    while not stop.is_set():
        ready, _, _ = select.select([tun], [], [], 0.1)
        if not ready:
            continue
        started = clock()
        packets = tun.read_batch(256)
        reading += clock() - started
        out = [p for p in map(reflector.rewrite, packets) if p is not None]
        if out:
            batches.append(len(out))
            started = clock()
            tun.write_batch(out)
            writing += clock() - started
    io_seconds += [reading, writing]


def peer_address(family: int, net: int) -> str:
    return str(ipaddress.ip_network(NETS[family][net]).network_address + 2)


# --------------------------------------------------------------------------- TCP over the TUN


def tcp_over_tun(args: argparse.Namespace) -> dict[str, Any]:
    family = args.family
    tun = open_reflecting_tun(family, not args.no_offload, not args.no_uso, not args.no_read_offload)
    reflector = Reflector(family)
    stop = threading.Event()
    batches: list[int] = []
    io_seconds: list[float] = []
    echo = threading.Thread(
        target=run_reflector, args=(tun, reflector, stop, batches, io_seconds), daemon=True
    )
    echo.start()
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    server = socket.socket(af, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((NETS[family][0], PORT))
    server.listen(1)
    received: dict[str, Any] = {}

    def serve() -> None:
        conn, peer = server.accept()
        digest = hashlib.sha256()
        count = 0
        while chunk := conn.recv(1 << 20):
            digest.update(chunk)
            count += len(chunk)
        conn.close()
        received.update(bytes=count, sha256=digest.hexdigest(), peer=peer[0])

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    started = time.monotonic()
    client = socket.create_connection((peer_address(family, 1), PORT), timeout=30)
    digest = hashlib.sha256()
    sent = 0
    block = os.urandom(1 << 20)
    while sent < args.bytes:
        chunk = block[: min(len(block), args.bytes - sent)]
        # Vary the data per megabyte so a misplaced segment cannot hash the same.
        chunk = struct.pack("!Q", sent) + chunk[8:]
        client.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    client.shutdown(socket.SHUT_WR)
    server_thread.join(60)
    elapsed = time.monotonic() - started
    client.close()
    stop.set()
    echo.join(5)
    tun.close()
    return {
        "sent": sent,
        "sha256_sent": digest.hexdigest(),
        "received": received.get("bytes"),
        "sha256_received": received.get("sha256"),
        "server_saw_peer": received.get("peer"),
        "offload": tun.offload,
        "read_offload": tun.read_offload,
        "uso": tun.uso,
        "offload_error": tun.offload_error,
        "tun": tun.stats.as_dict(),
        "reflector_dropped": reflector.dropped,
        "largest_batch": max(batches, default=0),
        "seconds": round(elapsed, 3),
        "read_batch_seconds": round(io_seconds[0], 3) if io_seconds else None,
        "write_batch_seconds": round(io_seconds[1], 3) if io_seconds else None,
    }


# --------------------------------------------------------------------------- UDP


def datagram(index: int, size: int) -> bytes:
    """Datagram ``index``: its number, then bytes derived from it (checkable on arrival)."""
    body = hashlib.sha256(struct.pack("!I", index)).digest()
    return struct.pack("!I", index) + (body * (size // 32 + 1))[: size - 4]


def check_datagrams(received: list[bytes], count: int, size: int) -> dict[str, Any]:
    seen: dict[int, int] = {}
    bad = 0
    for data in received:
        index = struct.unpack("!I", data[:4])[0]
        if index >= count or data != datagram(index, size):
            bad += 1
            continue
        seen[index] = seen.get(index, 0) + 1
    return {
        "received": len(received),
        "distinct": len(seen),
        "duplicates": sum(v - 1 for v in seen.values()),
        "bad": bad,
        "all_present": len(seen) == count,
    }


def receive(sock: UdpSocket, count: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            got += [data for data, _ in sock.recv_batch(1024)]
    return got


def send_all(sock: UdpSocket, datagrams: list[bytes], addr: tuple[Any, ...]) -> int:
    """send_batch until everything is consumed; returns how many send_batch calls it took."""
    calls = 0
    done = 0
    while done < len(datagrams):
        calls += 1
        done += sock.send_batch(datagrams[done:], addr)
        if done < len(datagrams):
            select.select([], [sock], [], 1.0)
    return calls


def udp_loop(args: argparse.Namespace) -> dict[str, Any]:
    receiver = UdpSocket(bind=("127.0.0.1", 0), gro=not args.no_gro, rcvbuf=8 << 20)
    sender = UdpSocket(bind=("127.0.0.1", 0), gso=not args.no_gso)
    datagrams = [datagram(i, args.size) for i in range(args.count)]
    batches = send_all(sender, datagrams, receiver.getsockname())
    got = receive(receiver, args.count, 10)
    return {
        "send_batch_calls": batches,
        "sender": sender.stats.as_dict(),
        "receiver": receiver.stats.as_dict(),
        "gso": sender.gso,
        "gro": receiver.gro,
        **check_datagrams(got, args.count, args.size),
    }


def udp_recv(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.bind.rsplit(":", 1)
    receiver = UdpSocket(bind=(host, int(port)), gro=not args.no_gro, rcvbuf=8 << 20)
    Path(args.ready).write_text("ready")
    got = receive(receiver, args.count, 20)
    return {
        "receiver": receiver.stats.as_dict(),
        "gro": receiver.gro,
        **check_datagrams(got, args.count, args.size),
    }


def udp_send(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.to.rsplit(":", 1)
    sender = UdpSocket(gso=not args.no_gso)
    datagrams = [datagram(i, args.size) for i in range(args.count)]
    batches = send_all(sender, datagrams, (host, int(port)))
    return {"send_batch_calls": batches, "sender": sender.stats.as_dict(), "gso": sender.gso}


def udp_over_tun(args: argparse.Namespace) -> dict[str, Any]:
    family = args.family
    tun = open_reflecting_tun(family, not args.no_offload, not args.no_uso, not args.no_read_offload)
    reflector = Reflector(family)
    stop = threading.Event()
    batches: list[int] = []
    io_seconds: list[float] = []
    echo = threading.Thread(
        target=run_reflector, args=(tun, reflector, stop, batches, io_seconds), daemon=True
    )
    echo.start()
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    receiver = UdpSocket(family=af, bind=(NETS[family][0], PORT), rcvbuf=8 << 20)
    sender = UdpSocket(family=af)
    datagrams = [datagram(i, args.size) for i in range(args.count)]
    send_calls = 0
    done = 0
    # Paced so that a slow reflector does not overflow the TUN queue (500 packets).
    while done < len(datagrams):
        send_calls += 1
        done += sender.send_batch(
            datagrams[done : min(done + 64, len(datagrams))], (peer_address(family, 1), PORT)
        )
        time.sleep(0.005)
    got = receive(receiver, args.count, 10)
    stop.set()
    echo.join(5)
    tun.close()
    return {
        "sender": sender.stats.as_dict(),
        "receiver": receiver.stats.as_dict(),
        "gso": sender.gso,
        "gro": receiver.gro,
        "offload": tun.offload,
        "read_offload": tun.read_offload,
        "uso": tun.uso,
        "tun": tun.stats.as_dict(),
        "reflector_dropped": reflector.dropped,
        **check_datagrams(got, args.count, args.size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("tcp-over-tun", "udp-over-tun"):
        p = sub.add_parser(name)
        p.add_argument("--family", type=int, choices=(4, 6), default=4)
        p.add_argument("--no-offload", action="store_true")
        p.add_argument("--no-uso", action="store_true")
        p.add_argument("--no-read-offload", action="store_true")
        p.add_argument("--refuse", choices=("none", "offload", "uso"), default="none")
        p.add_argument("--bytes", type=int, default=20_000_000)
        p.add_argument("--count", type=int, default=640)
        p.add_argument("--size", type=int, default=1200)
    for name in ("udp-loop", "udp-recv", "udp-send"):
        p = sub.add_parser(name)
        p.add_argument("--count", type=int, default=256)
        p.add_argument("--size", type=int, default=1200)
        p.add_argument("--no-gso", action="store_true")
        p.add_argument("--no-gro", action="store_true")
        p.add_argument("--bind", default="0.0.0.0:5002")
        p.add_argument("--to", default="")
        p.add_argument("--ready", default="")
    args = parser.parse_args()
    if getattr(args, "refuse", "none") != "none":
        refuse_offloads(args.refuse)
    modes = {
        "tcp-over-tun": tcp_over_tun,
        "udp-over-tun": udp_over_tun,
        "udp-loop": udp_loop,
        "udp-recv": udp_recv,
        "udp-send": udp_send,
    }
    print(json.dumps(modes[args.mode](args)), flush=True)


if __name__ == "__main__":
    main()
