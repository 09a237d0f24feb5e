"""Issue 14: the L2TP and PPP cores under a seeded, structure-aware fuzzer.

Seeds are real messages: the control messages of a whole tunnel life between our LAC and our
Lns (with tunnel authentication: Challenge / Challenge Response AVPs), xl2tpd's captured ones
(tests/test_l2tp_control.py, tests/test_l2tp_lns.py), data messages, and the PPP frames of
whole CHAP and PAP logins between our client and server Ppp (LCP with its options, CHAP,
PAP, IPCP with DNS, Echo, Terminate, IP packets). The mutators below parse them (L2TP: header,
AVPs; PPP: HDLC address/control, protocol, packet header, configuration options) and lie in
*fields* (every length, the M/H bits, vendor and attribute types, Ns/Nr around the window,
tunnel and session IDs, codes, identifiers, option lengths, protocol numbers), truncate,
append garbage, duplicate and remove AVPs or options.

What must hold, whatever arrives:

* ``Lns.receive``, ``Tunnel.receive``, ``decode_data`` (only ``L2tpError``), ``Ppp.receive``
  and ``Ppp.receive_ip`` never raise anything else; the codecs raise only their typed errors;
* state stays bounded: tunnels per peer and in total, sessions per tunnel, the unacknowledged
  and queued control messages of a tunnel, the lingering closed tunnels;
* a sender that is not a tunnel's peer cannot touch that tunnel, and gets at most one answer
  (an SCCRP) per datagram; each answer is bounded;
* a PPP peer that has not authenticated never gets IP through, never reaches IPCP, and gets
  at most a few bounded frames per frame it sends.

``TUNVPN_FUZZ_ITERATIONS`` sets the number of inputs per test, ``TUNVPN_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from tunvpn_l2tp.control import MAX_QUEUED, SessionEstablished, Tunnel, TunnelState
from tunvpn_l2tp.dispatch import Lns, LnsOutput
from tunvpn_l2tp.message import (
    AVP_HEADER_LEN,
    H_BIT,
    HEADER_LEN,
    M_BIT,
    MAX_AVP_LEN,
    Avp,
    AvpType,
    ControlMessage,
    L2tpError,
    MessageType,
    decode,
    decode_data,
    encode,
    encode_data,
    is_control,
)
from tunvpn_l2tp.ppp import (
    AuthRequest,
    AuthSucceeded,
    IpPacket,
    IpUp,
    Output,
    Phase,
    Ppp,
    Role,
)
from tunvpn_l2tp.pppframe import Packet, PppError, decode_frame, decode_options

from tests.helpers.mutator import FieldMutator, fuzz_iterations, fuzz_seed

Address = tuple[str, int]
LAC: Address = ("192.0.2.2", 1701)
SECRET = b"fuzz-tunnel-secret"
SPOOFED = [f"203.0.113.{i}" for i in range(1, 41)]

# xl2tpd 1.3.18's datagrams (tests/test_l2tp_control.py and tests/test_l2tp_lns.py say how
# they were captured).
XL2TPD = [
    bytes.fromhex(h)
    for h in (
        "c802006b126700000000000180080000000000028008000000020100800a0000000300000003800a0000000400"
        "0000000008000000060690801000000007786c327470642d6c6e7300130000000878656c6572616e63652e636f"
        "6d800800000009128b80080000000a0004",
        "c802000c1267000000010002",
        "c802001c1267004d00010003800800000000000b80080000000e8ee1",
        "c80200261267004d00020004800800000000000e800a000000010001000080080000000e8ee1",
        "c8020081000000000000000080080000000000018008000000020100800a0000000300000003800a000000040000"
        "00000008000000060690801000000007786c327470642d6c616300130000000878656c6572616e63652e636f6d80"
        "0800000009577480080000000a000480160000000b47c96ff34f1172be86f8e58f61f663f7",
        "c802002a0001000000010001800800000000000380160000000d643b6ad81fd3825766d396d21886acb3",
    )
]


# ------------------------------------------------------------------ a LAC and our Lns


class L2tpPair:
    """Our LAC Tunnel and an Lns, in memory; records every control datagram."""

    def __init__(self, lns: Lns, lac_id: int = 4711) -> None:
        self.lns = lns
        self.lac = Tunnel(local_tunnel_id=lac_id, host_name="fuzz-lac", secret=SECRET)
        self.now = 0.0
        self.wire: list[bytes] = []
        self.lac_events: list[object] = []
        self.stray: list[tuple[Address, bytes]] = []  # Lns output for other addresses

    def shuttle(self, first: tuple[bytes, ...]) -> None:
        to_lns = list(first)
        while to_lns:
            to_lac: list[bytes] = []
            for data in to_lns:
                self.wire.append(data)
                to_lac += self.from_lns(self.lns.receive(data, LAC, self.now))
            to_lns = []
            for data in to_lac:
                self.wire.append(data)
                out = self.lac.receive(data, self.now)
                self.lac_events += out.events
                to_lns += out.datagrams

    def from_lns(self, out: LnsOutput) -> list[bytes]:
        mine = []
        for addr, data in out.datagrams:
            if addr == LAC:
                mine.append(data)
            else:
                self.stray.append((addr, data))
        return mine

    def advance(self, seconds: float) -> None:
        self.now += seconds
        out = self.lac.poll(self.now)
        self.lac_events += out.events
        to_lac = self.from_lns(self.lns.poll(self.now))
        for data in to_lac:
            lac_out = self.lac.receive(data, self.now)
            self.lac_events += lac_out.events
            self.shuttle(lac_out.datagrams)
        self.shuttle(out.datagrams)


def l2tp_corpus() -> list[bytes]:
    """The control messages of a whole tunnel life (SCCRQ .. StopCCN, sessions, HELLO), both
    directions, with tunnel authentication; xl2tpd's; data messages."""
    pair = L2tpPair(Lns(secret=SECRET, random_bytes=random.Random(2661).randbytes, hello_interval=20))
    pair.shuttle(pair.lac.start(pair.now).datagrams)
    assert pair.lac.state is TunnelState.ESTABLISHED
    for session in (77, 78):
        pair.shuttle(pair.lac.open_session(pair.now, session).datagrams)
    pair.advance(30)  # HELLOs both ways
    pair.shuttle(pair.lac.close_session(pair.now, 78).datagrams)
    pair.shuttle(pair.lac.close(pair.now).datagrams)
    data = [encode_data(0x1234, 0x77, b"\xff\x03\xc0\x21\x01\x01\x00\x04"), encode_data(1, 2, b"")]
    return pair.wire + XL2TPD + data


# ------------------------------------------------------------------ the L2TP mutator


@dataclass
class L2tpAvp:
    bits: int  # M, H, the reserved bits (the length is computed unless ``length`` lies)
    vendor: int
    type: int
    value: bytes
    length: int | None = None

    def encode(self) -> bytes:
        n = AVP_HEADER_LEN + len(self.value) if self.length is None else self.length
        return (
            struct.pack("!HHH", (self.bits & ~MAX_AVP_LEN) | (n & MAX_AVP_LEN), self.vendor, self.type)
            + self.value
        )


@dataclass
class L2tpMessage:
    words: list[int]  # flags, length, tunnel, session, Ns, Nr
    avps: list[L2tpAvp] | None  # None: ``body`` opaque
    body: bytes = b""
    length_lie: bool = False

    def encode(self) -> bytes:
        body = self.body if self.avps is None else b"".join(a.encode() for a in self.avps)
        words = list(self.words)
        if not self.length_lie:
            words[1] = HEADER_LEN + len(body)
        return struct.pack("!HHHHHH", *(w & 0xFFFF for w in words)) + body


def parse_l2tp(data: bytes) -> L2tpMessage | None:
    if len(data) < HEADER_LEN or not data[0] & 0x80:
        return None
    words = list(struct.unpack("!HHHHHH", data[:HEADER_LEN]))
    avps: list[L2tpAvp] = []
    pos = HEADER_LEN
    while pos < len(data):
        if len(data) - pos < AVP_HEADER_LEN:
            return L2tpMessage(words, None, data[HEADER_LEN:])
        bits, vendor, attr = struct.unpack("!HHH", data[pos : pos + AVP_HEADER_LEN])
        n = bits & MAX_AVP_LEN
        if n < AVP_HEADER_LEN or pos + n > len(data):
            return L2tpMessage(words, None, data[HEADER_LEN:])
        avps.append(L2tpAvp(bits & ~MAX_AVP_LEN, vendor, attr, data[pos + AVP_HEADER_LEN : pos + n]))
        pos += n
    return L2tpMessage(words, avps)


class L2tpMutator:
    """Mutated L2TP datagrams from ``corpus``. ``tunnel_ids`` and ``window`` (callables: the
    state changes as the fuzz runs) aim half of them at a live tunnel: its ID, the Ns it
    expects (or near it), mostly an Nr that acknowledges nothing (a peer that never acks)."""

    def __init__(
        self,
        corpus: list[bytes],
        seed: int,
        tunnel_ids: Callable[[], list[int]] = list,
        window: Callable[[int], tuple[int, int] | None] = lambda tunnel_id: None,
    ) -> None:
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.f = FieldMutator(self.rng)
        self.tunnel_ids = tunnel_ids
        self.window = window

    def next(self) -> bytes:
        r = self.rng
        data = r.choice(self.corpus)
        msg = parse_l2tp(data)
        if msg is None:  # a data message: its few header fields, then bytes
            return self.f.mutate_bytes(data)
        ids = self.tunnel_ids()
        if ids and r.random() < 0.5:  # aim at a live tunnel, in its window
            msg.words[2] = r.choice(ids)
            window = self.window(msg.words[2])
            if window is not None:
                ns, stingy_nr = window
                msg.words[4] = (ns + r.choice((0, 0, 0, 1, -1, 2, 4, 0x8000))) & 0xFFFF
                if r.random() < 0.7:  # a peer that acknowledges nothing of ours
                    msg.words[5] = stingy_nr
        for _ in range(r.choice((0, 1, 1, 1, 2, 3))):
            self._mutate(msg)
        out = msg.encode()
        if r.random() < 0.08:
            out = out[: r.randrange(len(out))]
        elif r.random() < 0.05:
            out += self.f.garbage()
        return out

    def _mutate(self, msg: L2tpMessage) -> None:
        r = self.rng
        f = self.f
        ops = ["length", "flags", "tunnel", "session", "ns", "nr"]
        if msg.avps:
            ops += ["avp length"] * 3 + ["avp bits"] * 2 + ["avp type", "avp vendor", "avp value"] * 2
            ops += ["duplicate", "remove", "swap", "insert", "message type"]
        op = r.choice(ops)
        if op == "length":
            msg.length_lie = True
            msg.words[1] = f.length(len(msg.encode()))
        elif op == "flags":
            w = msg.words[0]
            msg.words[0] = r.choice(
                (w ^ 0x8000, w ^ 0x4000, w ^ 0x0800, w | 0x0200, w | 0x0100, (w & ~0xF) | r.randrange(16))
            )
        elif op in ("tunnel", "session", "ns", "nr"):
            i = {"tunnel": 2, "session": 3, "ns": 4, "nr": 5}[op]
            msg.words[i] = f.integer(msg.words[i], 2)
        elif msg.avps:
            avps = msg.avps
            k = r.randrange(len(avps))
            avp = avps[k]
            if op == "avp length":
                avp.length = r.choice(
                    (0, 1, 5, 6, MAX_AVP_LEN, f.length(AVP_HEADER_LEN + len(avp.value)) & MAX_AVP_LEN)
                )
            elif op == "avp bits":
                avp.bits = r.choice((avp.bits ^ M_BIT, avp.bits ^ H_BIT, avp.bits | 0x3C00, 0))
            elif op == "avp type":
                avp.type = r.choice(
                    (f.integer(avp.type, 2), r.choice(list(AvpType)), r.randrange(40, 0x10000))
                )
            elif op == "avp vendor":
                avp.vendor = r.choice((9, 311, r.getrandbits(16)))
            elif op == "avp value":
                avp.value = f.mutate_bytes(avp.value) if avp.value else f.garbage(8)
            elif op == "duplicate":
                avps.insert(k, L2tpAvp(avp.bits, avp.vendor, avp.type, avp.value, avp.length))
                if r.random() < 0.1:
                    avps += [L2tpAvp(avp.bits, avp.vendor, avp.type, avp.value)] * r.randint(5, 60)
            elif op == "remove":
                del avps[k]
            elif op == "swap":
                j = r.randrange(len(avps))
                avps[k], avps[j] = avps[j], avps[k]
            elif op == "insert":
                avps.insert(
                    k, L2tpAvp(r.choice((0, M_BIT, H_BIT, M_BIT | H_BIT)), 0, r.randrange(60), f.garbage(12))
                )
            elif op == "message type":
                avps[0].value = struct.pack("!H", r.choice((*list(MessageType), 0, 5, 13, 17, 255, 0xFFFF)))


# ------------------------------------------------------------------ L2TP fuzz tests


def _window(tunnel: Tunnel) -> tuple[int, int]:
    """The Ns the tunnel expects next, and an Nr that acknowledges none of its messages."""
    return tunnel.nr, tunnel._unacked[0].msg.ns if tunnel._unacked else tunnel.ns


def _bounds(lns: Lns) -> None:
    live = lns.live_tunnels()
    assert len(live) <= lns.max_tunnels
    per_peer = Counter(e.peer[0] for e in lns._entries.values() if e.closed_at is None)
    assert max(per_peer.values(), default=0) <= lns.max_tunnels_per_peer
    # closed tunnels linger; they too must not pile up
    assert len(lns._entries) <= 2 * lns.max_tunnels
    for entry in lns._entries.values():
        tunnel = entry.tunnel
        assert len(tunnel.sessions) <= lns.max_sessions_per_tunnel
        assert len(tunnel._unacked) <= tunnel.peer_window
        assert len(tunnel._queued) <= MAX_QUEUED, f"{len(tunnel._queued)} control messages queued"


def test_control_storm_from_spoofed_sources_leaves_the_real_tunnel_alone() -> None:
    """A LAC with a live session; a storm of mutated control messages from 40 other
    addresses, half of them aimed at the live tunnel's ID and window."""
    lns = Lns(secret=SECRET, random_bytes=random.Random(1).randbytes, max_tunnels=64)
    pair = L2tpPair(lns)
    pair.shuttle(pair.lac.start(pair.now).datagrams)
    pair.shuttle(pair.lac.open_session(pair.now, 77).datagrams)
    (tunnel,) = lns.live_tunnels()
    sessions_before = dict(tunnel.sessions)
    mutator = L2tpMutator(
        l2tp_corpus(),
        fuzz_seed(1701),
        tunnel_ids=lambda: [tunnel.local_tunnel_id],
        window=lambda tid: _window(tunnel),
    )
    rng = random.Random(fuzz_seed(1701))
    count = fuzz_iterations(20_000)
    answers = Counter[str]()
    for i in range(count):
        data = mutator.next()
        source = (rng.choice(SPOOFED), rng.choice((1701, rng.randrange(1024, 65536))))
        before = (tunnel.state, tunnel.nr, tunnel.ns, len(tunnel._unacked))
        out = lns.receive(data, source, pair.now)
        assert (tunnel.state, tunnel.nr, tunnel.ns, len(tunnel._unacked)) == before, (
            "a spoofed message moved the tunnel"
        )
        assert len(out.datagrams) <= 2, out.datagrams  # an SCCRP, perhaps its ZLB
        for addr, reply in out.datagrams:
            assert addr == source
            assert len(reply) <= 256
            answers[str(decode(reply).message_type)] += 1
        for wrapped in out.events:
            assert wrapped.local_tunnel_id != tunnel.local_tunnel_id
        if i % 50 == 0:
            pair.advance(0.5)  # the real LAC and Lns keep talking: HELLOs, timeouts
            _bounds(lns)
    _bounds(lns)
    assert tunnel.state is TunnelState.ESTABLISHED and pair.lac.state is TunnelState.ESTABLISHED
    assert tunnel.sessions.keys() == sessions_before.keys()
    assert lns.stats.wrong_peer > 0 and lns.stats.malformed > 0
    # the live tunnel still works: a second session comes up
    pair.shuttle(pair.lac.open_session(pair.now, 78).datagrams)
    assert [e for e in pair.lac_events if isinstance(e, SessionEstablished) and e.local_session_id == 78]
    print(f"L2TP spoofed storm of {count}: answers {dict(answers)}, {lns.stats}")


def test_control_fuzz_from_the_tunnel_peer_stays_bounded() -> None:
    """Mutated messages from the LAC's own address (the peer itself is hostile; it reconnects
    whenever it has no tunnel up): the Lns and its tunnels never raise and stay bounded."""
    lns = Lns(
        secret=None, random_bytes=random.Random(2).randbytes, max_tunnels=16, max_sessions_per_tunnel=32
    )
    now = 0.0
    lac_ids = iter(range(1000, 0x10000))

    def reconnect() -> L2tpPair:
        pair = L2tpPair(lns, lac_id=next(lac_ids))
        pair.lac.secret = None
        pair.now = now
        pair.shuttle(pair.lac.start(now).datagrams)
        assert pair.lac.state is TunnelState.ESTABLISHED
        return pair

    def established() -> list[int]:
        return [t.local_tunnel_id for t in lns.live_tunnels() if t.state is TunnelState.ESTABLISHED]

    def window(tid: int) -> tuple[int, int] | None:
        t = lns.tunnel(tid)
        return _window(t) if t is not None else None

    mutator = L2tpMutator(l2tp_corpus(), fuzz_seed(2661), established, window)
    count = fuzz_iterations(20_000)
    most = Counter[str]()
    for i in range(count):
        if not established():
            reconnect()
        out = lns.receive(mutator.next(), LAC, now)
        assert all(addr == LAC for addr, _ in out.datagrams)
        assert len(out.datagrams) <= 4 and all(len(d) <= 512 for _, d in out.datagrams)
        if i % 20 == 0:
            now += 1.0
            lns.poll(now)
            _bounds(lns)
            most["tunnel entries"] = max(most["tunnel entries"], len(lns._entries))
            for entry in lns._entries.values():
                most["queued"] = max(most["queued"], len(entry.tunnel._queued))
                most["sessions"] = max(most["sessions"], len(entry.tunnel.sessions))
    now += 300
    lns.poll(now)
    lns.poll(now + 100)
    _bounds(lns)
    assert reconnect().lac.state is TunnelState.ESTABLISHED
    print(f"L2TP peer fuzz of {count}: at most {dict(most)}, {lns.stats}")


def test_lac_under_a_hostile_lns_stays_bounded() -> None:
    """Our LAC's tunnel (the client side) fed mutated messages aimed at its ID and window by
    a hostile LNS: never raises, answers each with a few bounded datagrams, queues bounded."""
    mutator_target: list[Tunnel] = []
    mutator = L2tpMutator(
        l2tp_corpus(),
        fuzz_seed(1702),
        tunnel_ids=lambda: [t.local_tunnel_id for t in mutator_target],
        window=lambda tid: _window(mutator_target[0]) if mutator_target else None,
    )
    now = 0.0
    seen = Counter[str]()
    for i in range(fuzz_iterations(20_000)):
        if not mutator_target or mutator_target[0].state is TunnelState.CLOSED:
            seen["tunnels"] += 1
            pair = L2tpPair(
                Lns(secret=SECRET, random_bytes=random.Random(i).randbytes), lac_id=1 + i % 0xFFFF
            )
            pair.now = now
            pair.shuttle(pair.lac.start(now).datagrams)
            pair.shuttle(pair.lac.open_session(now, 77).datagrams)
            mutator_target[:] = [pair.lac]
        lac = mutator_target[0]
        out = lac.receive(mutator.next(), now)
        seen.update(type(e).__name__ for e in out.events)
        assert len(out.datagrams) <= 4 and all(len(d) <= 512 for d in out.datagrams)
        assert len(lac._queued) <= MAX_QUEUED and len(lac._unacked) <= lac.peer_window
        assert len(lac.sessions) <= 1
        if i % 20 == 0:
            now += 1.0
            lac.poll(now)
    assert seen["Received"] > 0  # the lies reached the state machine, not only the codec
    print(f"LAC under a hostile LNS: {dict(seen)}")


def test_a_peer_that_never_acknowledges_cannot_grow_our_send_queue() -> None:
    """Found by the fuzz's stingy peer: each OCRQ is answered with a CDN, and a LAC that keeps
    sending OCRQs in sequence while acknowledging only one of our messages every few seconds
    (so the tunnel never times out) made the Lns queue every CDN beyond the window: 20,000
    OCRQs, 19,957 queued messages. Now a message that would be answered while the queue is
    full is not taken (no Nr advance: the peer must retransmit it), and counted."""
    lns = Lns(secret=None, random_bytes=random.Random(3).randbytes)
    pair = L2tpPair(lns)
    pair.lac.secret = None
    pair.shuttle(pair.lac.start(pair.now).datagrams)
    (tunnel,) = lns.live_tunnels()
    now = 0.0
    for i in range(fuzz_iterations(20_000) // 4):
        ns, nr = _window(tunnel)
        if i % 500 == 0:
            nr = (nr + 1) & 0xFFFF  # one acknowledgement now and then keeps the tunnel alive
        ocrq = ControlMessage(
            tunnel.local_tunnel_id,
            0,
            ns,
            nr,
            (
                Avp.u16(AvpType.MESSAGE_TYPE, MessageType.OCRQ),
                Avp.u16(AvpType.ASSIGNED_SESSION_ID, 5),
                Avp.u32(AvpType.CALL_SERIAL_NUMBER, i),
                Avp.u32(AvpType.MINIMUM_BPS, 1),
                Avp.u32(AvpType.MAXIMUM_BPS, 1),
                Avp.u32(AvpType.BEARER_TYPE, 1),
                Avp.u32(AvpType.FRAMING_TYPE, 1),
                Avp(AvpType.CALLED_NUMBER, b"1"),
            ),
        )
        lns.receive(encode(ocrq), LAC, now)
        assert len(tunnel._queued) <= MAX_QUEUED, f"{len(tunnel._queued)} messages queued"
        if i % 100 == 0:
            now += 1.0
            lns.poll(now)
    assert tunnel.state is TunnelState.ESTABLISHED
    assert tunnel.stats.queue_full > 0


def test_a_peer_opening_and_closing_tunnels_fast_cannot_fill_the_table() -> None:
    """Found with the fuzz's reconnecting peer: a closed tunnel lingers 31 s (to re-ACK a
    retransmitted StopCCN) and the per-peer limit counted only live ones, so a LAC that
    opens and closes tunnels in a loop piled up lingering entries (3,000 in 30 s from one
    address; at 2,000 a second the 65,535 tunnel IDs run out and every LAC is refused).
    Now a peer keeps at most ``max_tunnels_per_peer`` lingering tunnels, all peers together
    ``max_tunnels``: the oldest lingering one is forgotten first."""
    lns = Lns(secret=None, random_bytes=random.Random(4).randbytes, max_tunnels=64)
    now = 0.0
    for i in range(fuzz_iterations(20_000) // 10):
        pair = L2tpPair(lns, lac_id=i % 0xFFFF + 1)
        pair.lac.secret = None
        pair.now = now
        pair.shuttle(pair.lac.start(now).datagrams)
        assert pair.lac.state is TunnelState.ESTABLISHED
        pair.shuttle(pair.lac.close(now).datagrams)
        assert len(lns._entries) <= 2 * lns.max_tunnels_per_peer, f"{len(lns._entries)} tunnel entries"
        if i % 100 == 0:
            now += 1.0
            lns.poll(now)
    # another LAC still gets its tunnel
    other = L2tpPair(lns, lac_id=7)
    other.lac.secret = None
    other.now = now
    other.shuttle(other.lac.start(now).datagrams)
    assert other.lac.state is TunnelState.ESTABLISHED


def test_l2tp_codecs_raise_only_their_errors() -> None:
    mutator = L2tpMutator(l2tp_corpus(), fuzz_seed(4))
    tunnel = Tunnel(local_tunnel_id=5, secret=SECRET)
    tunnel.start(0.0)
    for _ in range(fuzz_iterations(20_000)):
        data = mutator.next()
        try:
            msg = decode(data)
            msg.validate()
        except L2tpError:
            pass
        try:
            _, _, payload = decode_data(data)
            assert not is_control(data) and len(payload) <= len(data)
        except L2tpError:
            pass
        tunnel.receive(data, 1.0)


# ------------------------------------------------------------------ PPP


IP_PACKET = bytes.fromhex("4500001800000000401100000a0000020a000001") + b"ping"
SERVER_IP, CLIENT_IP = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")


def _server(auth: tuple[str, ...] = ("chap", "pap")) -> Ppp:
    return Ppp(
        Role.SERVER,
        auth=auth,
        local_address=SERVER_IP,
        peer_address=CLIENT_IP,
        dns=(IPv4Address("10.0.0.53"),),
        magic=0x01020304,
        random=random.Random(2).randbytes,
        keepalive=10.0,
    )


def _client() -> Ppp:
    return Ppp(
        Role.CLIENT, user="alice", password="secret", magic=0x0A0B0C0D, random=random.Random(1).randbytes
    )


class PppLink:
    """Our client and server Ppp in memory; the server accepts every login."""

    def __init__(self, client: Ppp, server: Ppp) -> None:
        self.client, self.server = client, server
        self.wire: list[tuple[Ppp, bytes]] = []
        self.frames: list[bytes] = []  # every frame delivered
        self.now = 0.0

    def deliver(self, side: Ppp, out: Output) -> None:
        other = self.server if side is self.client else self.client
        self.wire.extend((other, frame) for frame in out.frames)
        for event in out.events:
            if isinstance(event, AuthRequest):
                self.deliver(side, side.auth_result(True, "welcome", self.now))

    def run(self) -> None:
        while self.wire:
            target, frame = self.wire.pop(0)
            self.frames.append(frame)
            if target.receive_ip(frame) is None:
                self.deliver(target, target.receive(frame, self.now))

    def start(self) -> PppLink:
        self.deliver(self.client, self.client.start(self.now))
        self.deliver(self.server, self.server.start(self.now))
        self.run()
        return self


def ppp_corpus() -> list[bytes]:
    """Every frame of whole logins between our client and server: CHAP and PAP, LCP, IPCP
    (with DNS), Echo, IP packets, Terminate."""
    frames: list[bytes] = []
    for method in ("chap", "pap"):
        link = PppLink(_client(), _server(auth=(method,))).start()
        assert link.server.ip_up
        link.now += 11.0  # the server's keepalive Echo-Request
        link.deliver(link.server, link.server.poll(link.now))
        link.run()
        frame = link.client.send_ip(IP_PACKET)
        assert frame is not None
        link.wire.append((link.server, frame))
        link.deliver(link.client, link.client.close(link.now))
        link.run()
        frames += link.frames
    frames.append(b"\xff\x03\x80\x57\x01\x01\x00\x04")  # IPv6CP: Protocol-Reject
    frames.append(b"\xc0\x21\x09\x07\x00\x08\x01\x02\x03\x04")  # compressed header Echo-Request
    return frames


@dataclass
class PppOption:
    kind: int
    value: bytes
    length: int = -1  # a lie in the option's length (-1: the honest one)


@dataclass
class PppFrame:
    address: bytes  # b"\xff\x03" or b"" (compressed)
    protocol: bytes  # 1 or 2 octets
    code: int | None  # None: ``info`` is opaque (IP, unknown)
    identifier: int = 0
    options: list[PppOption] | None = None
    data: bytes = b""
    length: int | None = None
    info: bytes = b""
    pad: bytes = b""

    def encode(self) -> bytes:
        if self.code is None:
            return self.address + self.protocol + self.info
        if self.options is not None:
            body = b""
            for option in self.options:
                kind, value, lie = option.kind, option.value, option.length
                body += bytes((kind & 0xFF, (2 + len(value) if lie < 0 else lie) & 0xFF)) + value
        else:
            body = self.data
        n = 4 + len(body) if self.length is None else self.length
        return (
            self.address
            + self.protocol
            + struct.pack("!BBH", self.code & 0xFF, self.identifier & 0xFF, n & 0xFFFF)
            + body
            + self.pad
        )


CONFIGURE_PROTOCOLS = (0xC021, 0x8021)
PROTOCOLS = (
    b"\xc0\x21",
    b"\x80\x21",
    b"\xc0\x23",
    b"\xc2\x23",
    b"\x00\x21",
    b"\x21",
    b"\x80\x57",
    b"\x00",
    b"\x00\x57",
)
"""LCP, IPCP, PAP, CHAP, IPv4 (long and compressed), IPv6CP, bad ones."""


def parse_ppp(frame: bytes) -> PppFrame | None:
    try:
        protocol, info = decode_frame(frame)
    except PppError:
        return None
    address = frame[:2] if frame[:2] == b"\xff\x03" else b""
    proto = frame[len(address) : len(frame) - len(info)]
    if protocol not in (0xC021, 0x8021, 0xC023, 0xC223):
        return PppFrame(address, proto, None, info=info)
    try:
        packet = Packet.decode(info)
    except PppError:
        return PppFrame(address, proto, None, info=info)
    pad = info[4 + len(packet.data) :]
    if protocol in CONFIGURE_PROTOCOLS and 1 <= packet.code <= 4:
        try:
            options = [PppOption(k, v) for k, v in decode_options(packet.data)]
            return PppFrame(address, proto, packet.code, packet.identifier, options, pad=pad)
        except PppError:
            pass
    return PppFrame(address, proto, packet.code, packet.identifier, data=packet.data, pad=pad)


class PppMutator:
    def __init__(self, corpus: list[bytes], seed: int) -> None:
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.f = FieldMutator(self.rng)

    def next(self) -> bytes:
        """A mutated frame of the corpus."""
        return self.mutate(self.rng.choice(self.corpus))

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        frame = parse_ppp(data)
        if frame is None:
            return self.f.mutate_bytes(data)
        for _ in range(r.choice((1, 1, 2, 3))):
            self._mutate(frame)
        out = frame.encode()
        if r.random() < 0.05:
            out = out[: r.randrange(len(out) + 1)]
        return out

    def _mutate(self, p: PppFrame) -> None:
        r = self.rng
        f = self.f
        ops = ["address", "protocol"]
        if p.code is None:
            ops += ["info"] * 3
        else:
            ops += ["code", "identifier", "length", "length", "pad"]
            ops += ["options"] * 6 if p.options is not None else ["data"] * 3
        op = r.choice(ops)
        if op == "address":
            p.address = r.choice((b"", b"\xff\x03", b"\xff\x00", b"\xff", b"\x03\xff"))
        elif op == "protocol":
            p.protocol = r.choice(
                (*PROTOCOLS, struct.pack("!H", r.getrandbits(16) | 1), bytes((r.randrange(256) | 1,)))
            )
        elif op == "info":
            p.info = f.mutate_bytes(p.info)
        elif op == "code":
            p.code = r.choice((*range(0, 15), 255, r.randrange(256)))
        elif op == "identifier":
            p.identifier = f.integer(p.identifier, 1)
        elif op == "length":
            p.length = f.length(len(p.encode()) - len(p.address) - len(p.protocol))
        elif op == "pad":
            p.pad = f.garbage(16)
        elif op == "data":
            if p.data and r.random() < 0.3:  # a length-prefixed field (PAP, CHAP) lies
                p.data = bytes((f.integer(p.data[0], 1),)) + p.data[1:]
            else:
                p.data = f.mutate_bytes(p.data)
        elif op == "options":
            opts = p.options
            assert opts is not None
            k = r.randrange(len(opts)) if opts else 0
            choice = r.randrange(6)
            if not opts or choice == 0:
                kind = r.choice((0, 1, 2, 3, 4, 5, 7, 8, 13, 17, 129, 130, 131, 255, r.randrange(256)))
                opts.insert(k, PppOption(kind, f.garbage(8)))
            elif choice == 1:
                opts[k].length = r.choice((0, 1, 2, 3, 255, f.length(2 + len(opts[k].value), 1)))
            elif choice == 2:
                opts[k].value = f.mutate_bytes(opts[k].value) if opts[k].value else f.garbage(6)
            elif choice == 3:
                opts.insert(k, PppOption(opts[k].kind, opts[k].value, opts[k].length))
            elif choice == 4:
                del opts[k]
            else:
                opts[k].kind = f.integer(opts[k].kind, 1)


@dataclass
class PppWatch:
    """What the server Ppp did under fuzz."""

    frames_out: Counter[str] = field(default_factory=Counter)
    biggest_answer: int = 0
    events: Counter[str] = field(default_factory=Counter)
    links: int = 0


class HostileLink(PppLink):
    """A real client drives the server through LCP and authentication, but a share of its
    frames are mutated on the way and mutated corpus frames are slipped in between; the
    server's answers are checked frame by frame."""

    def __init__(
        self, mutator: PppMutator, watch: PppWatch, *, accept: bool, now: float, victim: Role = Role.SERVER
    ) -> None:
        super().__init__(_client(), _server())
        self.mutator = mutator
        self.watch = watch
        self.accept = accept
        self.now = now
        self.victim = self.server if victim is Role.SERVER else self.client
        self.server_events: list[object] = []  # the victim's
        watch.links += 1

    def deliver(self, side: Ppp, out: Output) -> None:
        if side is self.victim:
            assert len(out.frames) <= 4, f"{len(out.frames)} frames at once"
            for reply in out.frames:
                protocol, _ = decode_frame(reply)
                self.watch.frames_out[f"{protocol:#06x}"] += 1
                self.watch.biggest_answer = max(self.watch.biggest_answer, len(reply))
                assert len(reply) <= 4 + 1500, len(reply)  # within the peer's MRU (default)
        self.wire.extend((self.client if side is self.server else self.server, f) for f in out.frames)
        for event in out.events:
            if side is self.victim:
                self.server_events.append(event)
                self.watch.events[type(event).__name__] += 1
            if isinstance(event, AuthRequest):
                answer = self.accept and side is self.server
                self.deliver(
                    side, side.auth_result(answer, "welcome" if answer else "bad password", self.now)
                )

    def start(self) -> HostileLink:
        """Both sides send their first Configure-Request; step() does the rest."""
        self.deliver(self.client, self.client.start(self.now))
        self.deliver(self.server, self.server.start(self.now))
        return self

    def step(self) -> None:
        r = self.mutator.rng
        if not self.wire or r.random() < 0.2:
            self.wire.insert(0, (self.victim, self.mutator.next()))
        target, frame = self.wire.pop(0)
        if target is self.victim and r.random() < 0.3:
            frame = self.mutator.mutate(frame)
        packet = target.receive_ip(frame)
        if packet is not None:
            if target is self.victim:
                self.server_events.append(IpPacket(packet))
            return
        self.deliver(target, target.receive(frame, self.now))


def _ppp_fuzz(accept: bool, seed: int, victim: Role = Role.SERVER) -> tuple[PppWatch, list[object]]:
    mutator = PppMutator(ppp_corpus(), seed)
    watch = PppWatch()
    count = fuzz_iterations(20_000)
    link = HostileLink(mutator, watch, accept=accept, now=0.0, victim=victim).start()
    seen: list[object] = []
    for i in range(count):
        ip_open = link.victim.ip_up
        link.step()
        for event in link.server_events:
            if isinstance(event, IpPacket):
                assert ip_open, "an IP packet before IPCP was Opened"
            if not accept:
                assert not isinstance(event, IpPacket | IpUp | AuthSucceeded), event
        seen += link.server_events
        link.server_events = []
        if not accept and victim is Role.SERVER:
            assert not link.server.ip_up and link.server.phase is not Phase.NETWORK
        if i % 10 == 0:
            link.now += 1.0
            for side in (link.client, link.server):
                link.deliver(side, side.poll(link.now))
        if (link.victim.phase is Phase.DEAD and not link.wire) or i % 400 == 399:
            link = HostileLink(
                mutator, watch, accept=accept, now=link.now, victim=victim
            ).start()  # next call
    return watch, seen


def test_ppp_server_never_lets_an_unauthenticated_peer_through() -> None:
    """A peer whose every login is refused, its frames mutated: the server never raises,
    answers each frame with a few bounded frames, never passes IP, never opens IPCP."""
    watch, _ = _ppp_fuzz(accept=False, seed=fuzz_seed(1661))
    assert watch.events["AuthRequest"] > 0 and watch.events["AuthFailed"] > 0  # the fuzz got that far
    print(f"PPP fuzz, logins refused: {watch}")


def test_ppp_server_fuzz_with_logins_accepted_stays_bounded() -> None:
    """The same with every login accepted: IP packets come through only while IPCP is Opened."""
    watch, _ = _ppp_fuzz(accept=True, seed=fuzz_seed(1994))
    assert watch.events["IpUp"] > 0  # the fuzz reached the network phase
    print(f"PPP fuzz, logins accepted: {watch}")


def test_ppp_client_under_a_hostile_server_stays_bounded() -> None:
    """Our client (the LAC side) fed a server's frames with lies in them: never raises,
    answers each frame with a few bounded frames, takes IP only while IPCP is Opened."""
    watch, _ = _ppp_fuzz(accept=True, seed=fuzz_seed(1334), victim=Role.CLIENT)
    assert watch.events["IpUp"] > 0
    print(f"PPP fuzz of the client: {watch}")


def test_ppp_codecs_raise_only_their_errors() -> None:
    mutator = PppMutator(ppp_corpus(), fuzz_seed(5))
    for _ in range(fuzz_iterations(20_000)):
        frame = mutator.next()
        try:
            _, info = decode_frame(frame)
            packet = Packet.decode(info)
            decode_options(packet.data)
        except PppError:
            pass
