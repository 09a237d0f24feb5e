"""Issue 14: the ESP receive path under a seeded, structure-aware fuzzer.

A real sender (an ESP engine with real keys) seals real inner packets; the fuzzer sends them
in order, with gaps and late ones (around the replay window), replays them, and mutates them
field by field: SPI (unknown, zero, another SA's), sequence number (rewritten: the ICV must
fail), IV / ciphertext / ICV bits, the ICV cut short, lengths (short by k, not block-aligned,
runts), appended bytes; and seals *authentic but malformed* plaintexts (bad padding bytes,
a Pad Length past the payload, Next Header 59 / 41 / 17 / 0, an inner packet too short, of
the wrong IP version, from or to an address outside the SA's selectors). Around them, what
else port 4500 carries: NAT-keepalives, IKE behind the non-ESP marker, a bare marker, runts.

Each stream goes through three receive paths with identically keyed SAs, and all three must
agree: ``SadTable.decrypt`` one packet at a time (after ``split_datagrams``, the RFC 3948
classifier), ``SadTable.decrypt_batch`` in random batches, and the data thread's own receive
step (``DataPlane._from_udp`` over a fake socket, GRO buffers of random segment runs, called
in this thread so that nothing depends on timing) writing to a fake TUN device.

What must hold:

* nothing raises;
* exactly the packets an oracle (a model of the RFC 4303 replay window over the authentic,
  well-formed ones) calls fresh reach the TUN side, in order, each once; nothing else does;
* every other ESP packet is counted under its reason, and the reasons add up;
* a packet whose ICV fails (or that is dropped before the ICV) leaves the SA's replay
  window exactly as it was, so the genuine packet of that sequence number still gets in;
* IKE goes to the control plane (with its marker), never to TUN.

``TUNVPN_FUZZ_ITERATIONS`` sets the number of datagrams per stream (CI: 8,000 per suite),
``TUNVPN_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.helpers.esp_helpers import ipv4, ipv6
from tests.helpers.fake_devices import FakeTun, FakeUdp
from tests.helpers.mutator import FieldMutator, fuzz_iterations, fuzz_seed
from tunvpn.dataplane.thread import DataPlane, InstallSA
from tunvpn.esp import (
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    DropReason,
    EspSuite,
    InboundSA,
    OutboundSA,
    SadTable,
    split_datagrams,
)
from tunvpn.esp.transforms import esp_trailer
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform
from tunvpn.ipsec.selectors import TrafficSelector

SPI = 0x0000BEEF
OTHER_SPI = 0x0000F00D
CLIENT_VIP = "10.99.0.7"
REMOTE_TS = TrafficSelector.from_address(CLIENT_VIP)
LOCAL_TS = TrafficSelector.from_network("10.20.0.0/16")
WINDOW = 64
SOURCE = ("192.0.2.10", 4500)
SIZES = (0, 1, 7, 12, 28, 44, 59)
"""Inner payload sizes: few, so that runs of equal-size datagrams make GRO buffers."""

SUITES = {
    "aes-gcm-256 (fast path)": (EspSuite(EspTransform.AES_GCM_16, 256), False, 1),
    "aes-gcm-128 esn across 2^32": (EspSuite(EspTransform.AES_GCM_16, 128), True, 0xFFFF_FE00),
    "chacha20-poly1305": (EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256), False, 1),
    "aes-cbc-256 hmac-sha2-256": (EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256), False, 1),
}


@dataclass
class Oracle:
    """What a correct receiver delivers: RFC 4303 section 3.4.3 over authentic packets."""

    size: int
    top: int = 0
    seen: set[int] = field(default_factory=set)

    def fresh(self, seq: int) -> bool:
        if seq > self.top:
            return True
        return seq != 0 and self.top - seq < self.size and seq not in self.seen

    def authentic(self, seq: int) -> bool:
        """An authentic packet arrives: whether the window takes it (then it is recorded)."""
        if not self.fresh(seq):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


@dataclass
class Stream:
    """The datagrams on port 4500 and what the receiver must do with them."""

    datagrams: list[bytes] = field(default_factory=list)
    expected: list[bytes] = field(default_factory=list)  # inner packets for TUN, in order
    ike: list[bytes] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


class EspFuzzer:
    def __init__(self, suite: EspSuite, esn: bool, first_seq: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.f = FieldMutator(self.rng)
        self.suite = suite
        self.esn = esn
        self.key = self.rng.randbytes(suite.enc_key_len)
        self.auth = self.rng.randbytes(suite.auth_key_len)
        self.other_key = self.rng.randbytes(suite.enc_key_len)
        self.other_auth = self.rng.randbytes(suite.auth_key_len)
        self.sender = suite.make_engine(self.key, self.auth, esn)
        self.spi = SPI.to_bytes(4, "big")
        self.next_seq = first_seq
        self.sent: list[tuple[int, bytes, bytes]] = []  # (seq, packet, inner) sent genuine
        self.withheld: list[tuple[int, bytes, bytes]] = []  # sealed, held back to arrive late
        self.oracle = Oracle(max(WINDOW, 32))
        self.counter = 0

    # -- receivers

    def inbound(self) -> list[InboundSA]:
        return [
            InboundSA(
                SPI,
                self.suite,
                self.key,
                self.auth,
                esn=self.esn,
                replay_window=WINDOW,
                remote_ts=REMOTE_TS,
                local_ts=LOCAL_TS,
            ),
            InboundSA(
                OTHER_SPI,
                self.suite,
                self.other_key,
                self.other_auth,
                esn=self.esn,
                replay_window=WINDOW,
                remote_ts=REMOTE_TS,
                local_ts=LOCAL_TS,
            ),
        ]

    # -- what the sender makes

    def inner(self) -> bytes:
        self.counter += 1
        dst = f"10.20.{self.counter % 250}.{1 + self.counter % 200}"
        return ipv4(
            src=CLIENT_VIP,
            dst=dst,
            payload=struct.pack("!I", self.counter) + self.rng.randbytes(self.rng.choice(SIZES)),
        )

    def seal(self, plaintext: bytes, seq: int, spi: bytes | None = None) -> bytes:
        return self.sender.seal(spi or self.spi, seq, plaintext)

    def genuine(self, seq: int | None = None) -> tuple[int, bytes, bytes]:
        if seq is None:
            seq = self.next_seq
            self.next_seq += 1
        inner = self.inner()
        trailer = esp_trailer(len(inner), 4, self.suite.align)
        return seq, self.seal(inner + trailer, seq), inner

    def malformed_plaintext(self) -> tuple[str, bytes]:
        """An authentic packet's plaintext that must not reach TUN, and the reason it is dropped."""
        r = self.rng
        align = self.suite.align
        inner = self.inner()
        choice = r.randrange(9)
        if choice == 0:  # pad bytes not 1, 2, 3, ...
            trailer = esp_trailer(len(inner) + 1, 4, align)
            pad = bytes(((trailer[0] + 1) & 0xFF,)) + trailer[1:] if len(trailer) > 2 else b"\x07" + trailer
            plain = inner + b"\x00" + pad
            return "padding", plain[: len(plain) - len(plain) % align] if len(plain) % align else plain
        if choice == 1:  # Pad Length past the payload
            body = inner[:2]
            pad = -(len(body) + 2) % align
            return "padding", body + bytes(range(1, pad + 1)) + bytes((250, 4))
        if choice == 2:
            return "dummy", inner + esp_trailer(len(inner), 59, align)
        if choice == 3:  # IPv6 on an IPv4-only SA
            six = ipv6(payload=b"x" * 8)
            return "policy", six + esp_trailer(len(six), 41, align)
        if choice == 4:
            nh = r.choice((0, 6, 17, 50, 255))
            return "malformed", inner + esp_trailer(len(inner), nh, align)
        if choice == 5:  # an inner packet shorter than an IPv4 header
            short = inner[: r.randrange(1, 20)]
            return "malformed", short + esp_trailer(len(short), 4, align)
        if choice == 6:  # an IPv6 packet behind Next Header 4
            six = ipv6(payload=b"y" * 4)
            return "malformed", six + esp_trailer(len(six), 4, align)
        if choice == 7:  # from an address not the client's
            spoofed = ipv4(src="10.99.0.8", dst="10.20.0.1", payload=b"z" * 8)
            return "policy", spoofed + esp_trailer(len(spoofed), 4, align)
        outside = ipv4(src=CLIENT_VIP, dst="192.168.1.1", payload=b"w" * 8)
        return "policy", outside + esp_trailer(len(outside), 4, align)

    def mutate(self, packet: bytes) -> bytes:
        """A genuine packet with one field lied in: never authentic."""
        r = self.rng
        f = self.f
        icv = self.suite.icv_len
        b = bytearray(packet)
        choice = r.randrange(9)
        if choice == 0:  # a bit of the IV, ciphertext or ICV
            pos = r.randrange(8, len(b))
            b[pos] ^= 1 << r.randrange(8)
        elif choice == 1:  # the sequence number, ciphertext unchanged
            seq = struct.unpack_from("!I", b, 4)[0]
            struct.pack_into(
                "!I", b, 4, (seq + r.choice((1, -1, 2, WINDOW, -WINDOW, 0x80000000))) & 0xFFFFFFFF
            )
        elif choice == 2:  # the ICV cut short
            del b[len(b) - r.randint(1, icv) :]
        elif choice == 3:  # short by k / not block-aligned
            del b[len(b) - r.randint(1, min(len(b) - 8, 40)) :]
        elif choice == 4:
            b += f.garbage(24)
        elif choice == 5:  # a runt with a real SPI
            del b[r.randrange(4, 24) :]
        elif choice == 6:  # the ICV replaced
            b[-icv:] = r.randbytes(icv)
        elif choice == 7:  # another SA's SPI (its window must not move either)
            b[:4] = OTHER_SPI.to_bytes(4, "big")
        else:
            b = bytearray(f.mutate_bytes(bytes(b)))
            if bytes(b[:4]) == NON_ESP_MARKER:  # that would be IKE: keep it ESP
                b[3] = 1
        if b == packet:  # a byte set to the value it had: still a lie
            b[-1] ^= 0x80
        return bytes(b)

    # -- the stream

    def stream(self, count: int) -> Stream:
        r = self.rng
        out = Stream()
        while len(out.datagrams) < count:
            x = r.random()
            if x < 0.35:  # genuine, in order; sometimes a gap; sometimes one held back
                if r.random() < 0.05:
                    self.next_seq += r.choice((2, 5, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW))
                item = self.genuine()
                if r.random() < 0.15:
                    self.withheld.append(item)
                    continue
                self._authentic(out, item, "genuine")
            elif x < 0.45 and self.withheld:  # a late one
                self._authentic(out, self.withheld.pop(r.randrange(len(self.withheld))), "late")
            elif x < 0.52 and self.sent:  # a replay
                self._authentic(out, r.choice(self.sent[-3 * WINDOW :]), "replay")
            elif x < 0.77:  # a lie in a field of a genuine packet (a fresh or an old one)
                if self.sent and r.random() < 0.3:
                    seq, packet, _ = r.choice(self.sent[-WINDOW:])
                else:
                    seq, packet, inner = self.genuine()
                    self.withheld.append((seq, packet, inner))  # the genuine one comes later
                out.datagrams.append(self.mutate(packet))
                out.kinds["mutated"] += 1
            elif x < 0.85:  # authentic, but the inside is wrong
                reason, plain = self.malformed_plaintext()
                seq = self.next_seq
                self.next_seq += 1
                out.datagrams.append(self.seal(plain, seq))
                self.oracle.authentic(seq)  # the ICV passed: the window records it
                out.kinds[f"authentic, {reason}"] += 1
            elif x < 0.90:  # another SPI: unknown, zero-ish, the other SA's
                seq, packet, _ = self.genuine()
                self.withheld.append((seq, packet, _))
                spi = r.choice((b"\x00\x00\x00\x01", b"\xff\xff\xff\xff", r.randbytes(4)))
                if int.from_bytes(spi, "big") in (SPI, OTHER_SPI):
                    spi = b"\x00\x00\x00\x03"
                out.datagrams.append(spi.replace(NON_ESP_MARKER, b"\x00\x00\x00\x02") + packet[4:])
                out.kinds["unknown spi"] += 1
            else:  # what else port 4500 carries
                kind = r.randrange(4)
                if kind == 0:
                    out.datagrams.append(NAT_KEEPALIVE)
                    out.kinds["keepalive"] += 1
                elif kind == 1:
                    ike = r.randbytes(28 + r.randrange(100))
                    out.datagrams.append(NON_ESP_MARKER + ike)
                    out.ike.append(NON_ESP_MARKER + ike)
                    out.kinds["ike"] += 1
                else:
                    junk = r.choice((NON_ESP_MARKER, b"", r.randbytes(r.randrange(1, 8))))
                    out.datagrams.append(b"\xfe" if junk == NAT_KEEPALIVE else junk)
                    out.kinds["invalid"] += 1
            if len(self.withheld) > 2 * WINDOW:
                self.withheld.pop(0)
        return out

    def _authentic(self, out: Stream, item: tuple[int, bytes, bytes], kind: str) -> None:
        seq, packet, inner = item
        out.datagrams.append(packet)
        if self.oracle.authentic(seq):
            out.expected.append(inner)
        self.sent.append(item)
        out.kinds[kind] += 1


def _window_state(sa: InboundSA) -> tuple[int, bytes, int]:
    """The replay window's whole state (not allocated yet: as a new one)."""
    window = sa.replay
    if window is None:
        return 0, b"", 0
    return window.top, bytes(window._bits or b""), window._base


def _one_at_a_time(
    fuzzer: EspFuzzer, stream: Stream
) -> tuple[list[bytes], dict[DropReason, int], list[bytes]]:
    table = SadTable()
    sas = fuzzer.inbound()
    for sa in sas:
        table.install(sa)
    delivered: list[bytes] = []
    ike: list[bytes] = []
    for datagram in stream.datagrams:
        esp, ike_messages, _, _ = split_datagrams([datagram])
        ike += [NON_ESP_MARKER + m for m in ike_messages]
        for packet in esp:
            before = [_window_state(sa) for sa in sas]
            result = table.decrypt(packet, 1.0)
            if isinstance(result, bytes):
                delivered.append(result)
            elif result in (DropReason.BAD_ICV, DropReason.REPLAY, DropReason.UNKNOWN_SPI):
                # refused before or by the ICV: no window may move (a packet with another
                # SA's SPI must not move that SA's window either)
                assert [_window_state(sa) for sa in sas] == before, f"{result.name} moved a replay window"
    return delivered, table.drop_counts(), ike


def _batched(fuzzer: EspFuzzer, stream: Stream) -> tuple[list[bytes], dict[DropReason, int]]:
    table = SadTable()
    for sa in fuzzer.inbound():
        table.install(sa)
    rng = random.Random(len(stream.datagrams))
    delivered: list[bytes] = []
    i = 0
    while i < len(stream.datagrams):
        batch = stream.datagrams[i : i + rng.randint(1, 64)]
        i += len(batch)
        esp, _, _, _ = split_datagrams(batch)
        delivered += table.decrypt_batch(esp, 1.0)
    return delivered, table.drop_counts()


def _data_thread(
    fuzzer: EspFuzzer, stream: Stream
) -> tuple[list[bytes], dict[DropReason, int], list[bytes], DataPlane]:
    """The data thread's receive step over GRO buffers: runs of equal-size datagrams (the
    last may be shorter) in one buffer, as the kernel coalesces them."""
    tun, udp = FakeTun(), FakeUdp()
    ike: list[bytes] = []
    plane = DataPlane(tun, clock=lambda: 1.0, replay_window=WINDOW)
    plane.attach_device(udp, lambda data, addr: ike.append(data))
    for sa in fuzzer.inbound():
        out = OutboundSA(sa.spi ^ 0x10000, fuzzer.suite, fuzzer.key, fuzzer.auth, esn=fuzzer.esn)
        plane.submit(InstallSA(sa, out))
    plane._apply_commands()
    rng = random.Random(len(stream.datagrams) + 1)
    datagrams = stream.datagrams
    i = 0
    try:
        while i < len(datagrams):
            j = i + 1
            size = len(datagrams[i])
            limit = rng.choice((1, 4, 16, 64))
            while j < len(datagrams) and j - i < limit and size and len(datagrams[j]) == size:
                j += 1
            if (
                j < len(datagrams)
                and j - i < limit
                and size
                and 0 < len(datagrams[j]) < size
                and rng.random() < 0.5
            ):
                j += 1  # a shorter last segment
            run = datagrams[i:j]
            if len(run) == 1:
                udp._in.append((run[0], 0, SOURCE))
            else:
                udp._in.append((b"".join(run), size, SOURCE))
            i = j
            if len(udp._in) >= 8 or i >= len(datagrams):
                plane._from_udp()
        return tun.written, plane.sad.drop_counts(), ike, plane
    finally:
        tun.close()
        udp.close()
        plane.stop()


@pytest.mark.parametrize("name", list(SUITES))
def test_mutated_esp_never_reaches_tun_and_good_packets_do(name: str) -> None:
    suite, esn, first_seq = SUITES[name]
    count = fuzz_iterations(8_000)
    fuzzer = EspFuzzer(suite, esn, first_seq, fuzz_seed(4303) + list(SUITES).index(name))
    stream = fuzzer.stream(count)
    assert stream.expected, "the stream carried no deliverable packet"

    one, drops_one, ike_one = _one_at_a_time(fuzzer, stream)
    assert one == stream.expected  # exactly the fresh authentic packets, in order, each once
    assert ike_one == stream.ike

    batched, drops_batched = _batched(fuzzer, stream)
    assert batched == stream.expected
    assert drops_batched == drops_one

    written, drops_thread, ike_thread, plane = _data_thread(fuzzer, stream)
    assert written == stream.expected
    assert drops_thread == drops_one
    assert ike_thread == stream.ike  # IKE to the control plane, with its marker

    esp_in = sum(1 for d in stream.datagrams if len(d) >= 8 and d[:4] != NON_ESP_MARKER)
    assert sum(drops_one.values()) + len(one) == esp_in  # every ESP packet delivered or counted
    assert drops_one[DropReason.BAD_ICV] > 0 and drops_one[DropReason.REPLAY] > 0
    assert drops_one[DropReason.UNKNOWN_SPI] > 0 and drops_one[DropReason.PADDING] > 0
    assert drops_one[DropReason.POLICY] > 0 and drops_one[DropReason.MALFORMED] > 0
    # an authentic packet with a bad inside is dropped for exactly that reason
    assert drops_one[DropReason.PADDING] == stream.kinds["authentic, padding"]
    assert drops_one[DropReason.POLICY] == stream.kinds["authentic, policy"]
    assert drops_one[DropReason.DUMMY] == stream.kinds["authentic, dummy"]
    assert plane.counters["nat-t keepalive"] == stream.kinds["keepalive"]
    print(
        f"{name}: {len(stream.datagrams)} datagrams {dict(stream.kinds)}; "
        f"{len(one)} delivered; drops { ({r.name: n for r, n in drops_one.items()}) }"
    )


def test_a_gro_buffer_keeps_the_order_of_an_sa_behind_another_sas_datagram() -> None:
    """Found by the long run of the fuzz above (60,000 datagrams; the CI run finds it too
    since its inner packets come in few sizes, as GRO needs): in a GRO buffer that
    starts with a datagram of another SA (after a rekey the old and the new SA share the
    UDP flow), the shorter last datagram went to the careful path *before* the full-size
    ones of its own SA, so they were delivered out of order, and when the last one was a
    window ahead, the earlier ones were dropped as replays."""
    suite = SUITES["aes-gcm-256 (fast path)"][0]
    fuzzer = EspFuzzer(suite, False, 1, 14)
    _, first, first_inner = fuzzer.genuine()
    fuzzer.next_seq += 2 * WINDOW
    while True:
        _, last, last_inner = fuzzer.genuine()
        if len(last) < len(first):
            break
    other = OTHER_SPI.to_bytes(4, "big") + first[4:]  # the other SA's SPI: fails its ICV there
    stream = Stream(datagrams=[other, first, last], expected=[first_inner, last_inner])
    tun, udp = FakeTun(), FakeUdp()
    plane = DataPlane(tun, clock=lambda: 1.0, replay_window=WINDOW)
    plane.attach_device(udp, lambda data, addr: None)
    try:
        for sa in fuzzer.inbound():
            plane.submit(InstallSA(sa, OutboundSA(sa.spi ^ 0x10000, suite, fuzzer.key, fuzzer.auth)))
        plane._apply_commands()
        udp._in.append((b"".join(stream.datagrams), len(first), SOURCE))  # one GRO buffer
        plane._from_udp()
        assert tun.written == stream.expected
        assert plane.sad.drop_counts() == {DropReason.BAD_ICV: 1}
    finally:
        tun.close()
        udp.close()
        plane.stop()
