"""Micro-benchmark of the ESP core: packets per second, per transform, batch vs per packet.

Run ``python -m tunvpn.esp.bench`` (``--help`` for options). It prints one table of
encrypt/decrypt rates for 64, 512 and 1400-octet inner packets, then the measurements that
decided two design questions: which replay-window representation to use, and whether
numpy helps building headers or checking replay for a batch. Nothing here is asserted by
the tests; the numbers are for spotting regressions on one machine.

Timing uses :func:`timeit.default_timer` (the core modules read no clock).
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import timeit
from collections.abc import Callable

from ..ipsec.algorithms import AuthAlgorithm, EspTransform
from ..ipsec.selectors import TrafficSelector
from .replay import IntReplayWindow, ReplayWindow
from .sa import InboundSA, OutboundSA
from .table import SadTable
from .transforms import EspSuite

SUITES = {
    "aes128gcm16": EspSuite(EspTransform.AES_GCM_16, 128),
    "aes256gcm16": EspSuite(EspTransform.AES_GCM_16, 256),
    "chacha20poly1305": EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256),
    "aes128-sha1": EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1),
    "aes128-sha256": EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256),
    "aes256-sha384": EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_384),
    "aes256-sha512": EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_512),
}
SIZES = (64, 512, 1400)
BATCH = 128  # wireguard-go's IdealBatchSize, what one TUN/UDP offload read yields


def ipv4_packet(size: int, src: str = "10.1.0.2", dst: str = "10.2.0.2") -> bytes:
    """A UDP-in-IPv4 packet of ``size`` octets (checksums left zero: nobody reads them here)."""
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        size,
        0,
        0,
        64,
        17,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return header + bytes(size - 20)


def _pair(suite: EspSuite, window: int = 4096) -> tuple[OutboundSA, Callable[[], InboundSA]]:
    key, auth = os.urandom(suite.enc_key_len), os.urandom(suite.auth_key_len)
    outbound = OutboundSA(0x1000, suite, key, auth)
    return outbound, lambda: InboundSA(0x1000, suite, key, auth, replay_window=window)


def _rate(run: Callable[[], object], packets: int, seconds: float) -> float:
    """Packets per second of ``run`` (which handles ``packets`` packets), best of repeats."""
    run()
    loops = 1
    while True:
        elapsed = timeit.timeit(run, number=loops)
        if elapsed >= seconds / 5 or loops >= 1 << 16:
            break
        loops *= 2
    best = min(timeit.repeat(run, number=loops, repeat=5))
    return packets * loops / best


def measure_suite(suite: EspSuite, size: int, seconds: float) -> dict[str, float]:
    """enc1/encB/dec1/decB packets per second for one suite and packet size."""
    outbound, fresh_inbound = _pair(suite)
    batch = [ipv4_packet(size)] * BATCH
    encrypt = outbound.encrypt

    def encrypt_each() -> None:
        for packet in batch:
            encrypt(packet)

    def encrypt_batch() -> None:
        outbound.encrypt_batch(batch)

    rounds = 8
    sealed = outbound.encrypt_batch(batch * rounds)  # distinct sequence numbers

    def decrypt_each() -> None:
        decrypt = fresh_inbound().decrypt
        for packet in sealed:
            decrypt(packet)

    def decrypt_batch() -> None:
        inbound = fresh_inbound()
        for start in range(0, len(sealed), BATCH):
            inbound.decrypt_batch(sealed[start : start + BATCH])

    check = fresh_inbound()
    assert len(check.decrypt_batch(sealed)) == len(sealed), check.drop_counts()
    return {
        "enc1": _rate(encrypt_each, BATCH, seconds),
        "encB": _rate(encrypt_batch, BATCH, seconds),
        "dec1": _rate(decrypt_each, len(sealed), seconds),
        "decB": _rate(decrypt_batch, len(sealed), seconds),
    }


def measure_table(suite: EspSuite, size: int, seconds: float, peers: int) -> dict[str, float]:
    """Rates through :class:`SadTable` with ``peers`` SA pairs, a batch spread over 8 peers."""
    table = SadTable()
    key, auth = os.urandom(suite.enc_key_len), os.urandom(suite.auth_key_len)
    outbounds = []
    for index in range(peers):
        host = f"10.{2 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}"
        remote = TrafficSelector.from_address(host)
        table.install(InboundSA(0x1000 + index, suite, key, auth, remote_ts=remote))
        outbound = OutboundSA(0x1000 + index, suite, key, auth, remote_ts=remote)
        table.install(outbound)
        outbounds.append((host, outbound))
    targets = outbounds[:8]
    batch = [ipv4_packet(size, dst=targets[i % len(targets)][0]) for i in range(BATCH)]

    def encrypt() -> None:
        table.encrypt_batch(batch)

    # The peers' side: packets from each peer's address, sealed with its SA's SPI and key,
    # arriving grouped by peer (one GRO read is one flow's datagrams).
    sealed: list[bytes] = []
    for index, (host, _) in enumerate(targets):
        peer = OutboundSA(0x1000 + index, suite, key, auth)
        sealed += peer.encrypt_batch([ipv4_packet(size, src=host, dst="10.1.0.2")] * BATCH)
    used: list[InboundSA] = []
    for index in range(len(targets)):
        inbound = table.lookup(0x1000 + index)
        assert inbound is not None  # installed above
        used.append(inbound)

    def decrypt() -> None:
        for sa in used:  # forget the previous round's sequence numbers
            sa.replay = None
        for start in range(0, len(sealed), BATCH):
            table.decrypt_batch(sealed[start : start + BATCH])

    decrypt()
    assert not table.drop_counts(), table.drop_counts()
    return {"encB": _rate(encrypt, BATCH, seconds), "decB": _rate(decrypt, len(sealed), seconds)}


def measure_replay(seconds: float) -> list[tuple[str, str, float]]:
    """ns per check+update, in order and with 8-deep reordering, for both windows."""
    in_order = list(range(1, 20001))
    reordered = in_order[:]
    rng = random.Random(7)
    for start in range(0, len(reordered), 8):
        chunk = reordered[start : start + 8]
        rng.shuffle(chunk)
        reordered[start : start + 8] = chunk
    results = []
    for label, sequence in (("in order", in_order), ("reordered by 8", reordered)):
        for cls in (ReplayWindow, IntReplayWindow):
            for size in (1024, 4096, 16384):

                def run(cls: type = cls, size: int = size, sequence: list[int] = sequence) -> None:
                    window = cls(size)
                    check, update = window.check, window.update
                    for seq in sequence:
                        if check(seq):
                            update(seq)

                rate = _rate(run, len(sequence), seconds / 4)
                results.append((f"{cls.__name__}({size})", label, 1e9 / rate))
    return results


def measure_numpy(seconds: float) -> list[tuple[str, float]] | None:
    """ns per packet for building AEAD ESP headers (SPI|seq|IV) of a batch, and for
    checking a batch of sequence numbers against a window, with and without numpy."""
    try:
        import numpy as np
    except ImportError:
        return None
    spi = b"\x00\x00\x10\x00"
    pack = struct.Struct(">Q").pack
    base = 1000

    def headers_struct() -> list[bytes]:
        out = []
        for seq in range(base + 1, base + 1 + BATCH):
            iv = pack(seq)
            out.append(spi + iv[4:] + iv)
        return out

    dtype = np.dtype([("spi", ">u4"), ("seq", ">u4"), ("iv", ">u8")])

    def headers_numpy() -> list[bytes]:
        seqs = np.arange(base + 1, base + 1 + BATCH, dtype=np.uint64)
        table = np.empty(BATCH, dtype=dtype)
        table["spi"] = 0x1000
        table["seq"] = seqs & 0xFFFFFFFF
        table["iv"] = seqs
        raw = table.tobytes()
        return [raw[i : i + 16] for i in range(0, 16 * BATCH, 16)]

    assert headers_struct() == headers_numpy()
    packets = [spi + struct.pack(">I", seq) + bytes(60) for seq in range(5001, 5001 + BATCH)]
    window = ReplayWindow(4096, top=5000)

    def replay_python() -> int:
        check = window.check
        unpack = struct.Struct(">I").unpack_from
        return sum(1 for packet in packets if check(unpack(packet, 4)[0]))

    def replay_numpy() -> int:
        seqs = np.frombuffer(b"".join(packet[4:8] for packet in packets), dtype=">u4").astype(np.int64)
        ahead = seqs > window.top
        return int(ahead.sum()) + sum(1 for seq in seqs[~ahead].tolist() if window.check(seq))

    assert replay_python() == replay_numpy()
    return [
        ("headers, struct.pack per packet", 1e9 / _rate(headers_struct, BATCH, seconds / 4)),
        ("headers, numpy structured array", 1e9 / _rate(headers_numpy, BATCH, seconds / 4)),
        ("replay check, Python loop", 1e9 / _rate(replay_python, BATCH, seconds / 4)),
        ("replay check, numpy vector + loop", 1e9 / _rate(replay_numpy, BATCH, seconds / 4)),
    ]


def _rss() -> int:
    """Resident set size of this process in octets (Linux), or 0."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def measure_memory(pairs: int, trace: bool) -> str:
    """Memory of ``pairs`` inbound/outbound SA pairs (one client /32 each) in a table, idle
    and after one packet each way (engines and replay windows allocated). Best run alone in
    a fresh process: RSS counts OpenSSL's contexts, tracemalloc only Python's allocations."""
    import gc
    import ipaddress
    import tracemalloc

    suite = SUITES["aes256gcm16"]
    key = os.urandom(suite.enc_key_len)
    hosts = [ipaddress.IPv4Address(0x0A000000 + i) for i in range(pairs)]
    selectors = [TrafficSelector.from_address(host) for host in hosts]
    anywhere = TrafficSelector.any(4)
    packets = [ipv4_packet(64, src="10.99.0.1", dst=str(host)) for host in hosts]
    gc.collect()
    if trace:
        tracemalloc.start()
    rss0 = _rss()

    def used() -> float:
        return (tracemalloc.get_traced_memory()[0] if trace else _rss() - rss0) / 1e6

    table = SadTable()
    for index in range(pairs):
        table.install(InboundSA(0x10000 + index, suite, key, remote_ts=anywhere, local_ts=anywhere))
        table.install(OutboundSA(0x10000 + index, suite, key, remote_ts=selectors[index], local_ts=anywhere))
    idle = used()
    sealed = [esp for _, group in table.encrypt_batch(packets) for esp in group]
    assert len(table.decrypt_batch(sealed)) == pairs
    active = used()
    what = "tracemalloc" if trace else "RSS growth"
    return (
        f"{pairs} SA pairs ({2 * pairs} SAs), {what}: idle {idle:.1f} MB, "
        f"after one packet each way {active:.1f} MB ({active * 1e6 / (2 * pairs):.0f} B per SA)"
    )


def _k(rate: float) -> str:
    return f"{rate / 1000:8.1f}k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunvpn.esp.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="*", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    parser.add_argument("--peers", type=int, default=1000, help="SA pairs in the table benchmark")
    parser.add_argument("--skip-extras", action="store_true", help="only the per-suite table")
    parser.add_argument(
        "--memory",
        type=int,
        metavar="PAIRS",
        help="only measure the memory of PAIRS SA pairs (fresh process)",
    )
    parser.add_argument("--trace", action="store_true", help="with --memory: tracemalloc instead of RSS")
    args = parser.parse_args(argv)
    if args.memory:
        print(measure_memory(args.memory, args.trace))
        return 0

    print(f"ESP core, one thread, batches of {BATCH}; packets per second (k = 1000)")
    print(f"python {sys.version.split()[0]}, cryptography {_cryptography_version()}")
    header = f"{'suite':18} {'size':>5} | {'enc/pkt':>9} {'enc/batch':>9} {'x':>5} | "
    header += f"{'dec/pkt':>9} {'dec/batch':>9} {'x':>5} | {'batch enc Mbit/s':>16}"
    print(header)
    print("-" * len(header))
    for name in args.suites:
        for size in args.sizes:
            r = measure_suite(SUITES[name], size, args.seconds)
            mbit = r["encB"] * size * 8 / 1e6
            print(
                f"{name:18} {size:5} | {_k(r['enc1'])} {_k(r['encB'])} {r['encB'] / r['enc1']:5.2f} | "
                f"{_k(r['dec1'])} {_k(r['decB'])} {r['decB'] / r['dec1']:5.2f} | {mbit:16.0f}"
            )
    if args.skip_extras:
        return 0

    print(f"\nThrough SadTable with {args.peers} SA pairs (aes128gcm16, 1400 octets, 8 peers per batch):")
    r = measure_table(SUITES["aes128gcm16"], 1400, args.seconds, args.peers)
    print(f"  encrypt_batch {_k(r['encB'])} pps   decrypt_batch {_k(r['decB'])} pps")

    print("\nReplay window, ns per packet (check + update, including the two calls):")
    for name, label, ns in measure_replay(args.seconds):
        print(f"  {name:24} {label:16} {ns:7.0f}")

    numpy_results = measure_numpy(args.seconds)
    if numpy_results is None:
        print("\nnumpy: not installed, comparison skipped")
    else:
        print(f"\nnumpy vs plain Python for a batch of {BATCH}, ns per packet:")
        for label, ns in numpy_results:
            print(f"  {label:36} {ns:7.0f}")
    return 0


def _cryptography_version() -> str:
    import cryptography

    return cryptography.__version__


if __name__ == "__main__":
    raise SystemExit(main())
