"""A seeded, structure-aware mutator of ISAKMP messages (issue 14), and the storm built on it.

The storm tools of the test suite (the engine fuzz in tests/unit/ike/test_engine_storm_fuzz.py,
the network storm harness) draw their datagrams from here:

* :func:`isakmp_corpus` -- real messages to start from: strongSwan's and vpnc's (captured,
  tests/vectors/captures.py) and our own engines' (every phase 1 mode, and the later messages
  of recorded handshakes: cookies set, encrypted ones).
* :class:`IsakmpMutator` -- parses a message into its header and payload chain (the generic
  payload headers, SA / Proposal / Transform nesting, data attribute TLVs of transforms and of
  the Mode Config Attribute payload) and lies in *fields*: every length, next-payload types,
  counts, exchange type, flags, message ID, cookies; or truncates, appends garbage, duplicates
  or removes payloads; or sends a well-formed message unchanged under fresh cookies.
* :func:`storm_datagrams` -- (UDP payload, port) pairs: port 500, port 4500 with the non-ESP
  marker, port 4500 without it (ESP-looking, keepalives, garbage).
* :class:`FieldMutator` -- the small generic part (interesting integers, length lies, byte
  level mutations) that the fuzzers of other formats (L2TP, PPP, ESP) use.

Everything is deterministic for a seed and a corpus. The messages of our own engines carry
fresh Diffie-Hellman keys in every process, so the bytes inside KE payloads and ciphertexts
differ between runs; which message is picked and which field gets which lie do not.
"""

from __future__ import annotations

import functools
import os
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

HEADER_SIZE = 28
NON_ESP_MARKER = b"\x00\x00\x00\x00"
SA, PROPOSAL, TRANSFORM, ATTRIBUTE = 1, 2, 3, 14
E_FLAG = 0x01
TREE_OPS = frozenset(
    (
        "payload length",
        "payload next",
        "remove",
        "duplicate",
        "reserved",
        "body",
        "count",
        "spi size",
        "attribute",
    )
)
KNOWN_PAYLOADS = (1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 20, 21, 130, 131, 132)
EXCHANGES = (0, 1, 2, 3, 4, 5, 6, 32, 33, 34, 35, 127, 128, 255)


def fuzz_iterations(default: int) -> int:
    """How many inputs a fuzz test feeds: ``default`` (a CI run of a few seconds), or
    ``TUNVPN_FUZZ_ITERATIONS`` for a long run."""
    value = os.environ.get("TUNVPN_FUZZ_ITERATIONS")
    return int(value) if value else default


def fuzz_seed(default: int) -> int:
    """The seed of a fuzz test: ``default``, or ``TUNVPN_FUZZ_SEED`` to explore others."""
    value = os.environ.get("TUNVPN_FUZZ_SEED")
    return int(value) if value else default


# ------------------------------------------------------------------ the generic field mutator


class FieldMutator:
    """Interesting values for integer fields and byte strings, from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, value: int, size: int) -> int:
        """A value for a ``size``-byte unsigned field that holds ``value``: edges, off by a
        few, bit flips, random."""
        top = (1 << (8 * size)) - 1
        r = self.rng
        choice = r.randrange(7)
        if choice == 0:
            return r.choice((0, 1, top, top >> 1, (top >> 1) + 1))
        if choice == 1:
            return (value + r.choice((-1, 1, -2, 2, -4, 4, 8, -8))) & top
        if choice == 2:
            return value ^ (1 << r.randrange(8 * size))
        if choice == 3:
            return r.randint(0, min(top, 0xFF))
        return r.randint(0, top)

    def length(self, true: int, size: int = 2) -> int:
        """A lie in a length field whose honest value is ``true``: 0, 1, short or long by k,
        the maximum, random."""
        top = (1 << (8 * size)) - 1
        r = self.rng
        k = r.choice((1, 2, 3, 4, 7, 8, 16, 64, 255))
        return r.choice(
            (0, 1, max(true - k, 0), min(true + k, top), top, r.randint(0, min(top, 2 * true + 64)))
        )

    def garbage(self, max_size: int = 64) -> bytes:
        r = self.rng
        kind = r.randrange(4)
        n = r.randint(1, max_size)
        if kind == 0:
            return bytes(n)
        if kind == 1:
            return b"\xff" * n
        return r.randbytes(n)

    def mutate_bytes(self, data: bytes) -> bytes:
        """One byte-level mutation: flip, set, truncate, append, insert, delete, duplicate."""
        r = self.rng
        if not data:
            return self.garbage()
        b = bytearray(data)
        pos = r.randrange(len(b))
        op = r.randrange(8)
        if op == 0:
            b[pos] ^= 1 << r.randrange(8)
        elif op == 1:
            b[pos] = r.choice((0, 1, 0x7F, 0x80, 0xFF, r.randrange(256)))
        elif op == 2:
            del b[pos:]
        elif op == 3:
            b += self.garbage()
        elif op == 4:
            b[pos:pos] = self.garbage(16)
        elif op == 5:
            del b[pos : pos + r.randint(1, 16)]
        elif op == 6:
            end = r.randint(pos, len(b))
            b[end:end] = b[pos:end]
        else:
            for _ in range(r.randint(2, 8)):
                b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b)


# ------------------------------------------------------------------ the ISAKMP model


@dataclass
class Attr:
    """One data attribute (RFC 2408 section 3.3): TV when the AF bit is set, else TLV."""

    type: int  # with the AF bit (0x8000)
    value: bytes
    length: int | None = None  # a lie in the TLV length (None: the honest one)

    def encode(self) -> bytes:
        if self.type & 0x8000:
            return struct.pack("!HH", self.type, int.from_bytes(self.value[:2].rjust(2, b"\0"), "big"))
        n = len(self.value) if self.length is None else self.length
        return struct.pack("!HH", self.type, n & 0xFFFF) + self.value


@dataclass
class Node:
    """A payload (or a Proposal / Transform inside an SA) with a generic payload header."""

    ptype: int  # what the previous header's next-payload field calls it
    fixed: bytes = b""  # the body before children / attributes (SA: DOI, situation; ...)
    children: list[Node] = field(default_factory=list)  # SA: proposals; proposal: transforms
    attrs: list[Attr] | None = None  # transform and Attribute payload attributes
    tail: bytes = b""  # the rest of the body, opaque
    length: int | None = None  # a lie in the length field
    np: int | None = None  # a lie in the next-payload field
    count: int | None = None  # proposal: a lie in the number of transforms
    reserved: int = 0
    raw: bytes | None = None  # the encoded body as parsed, while nothing in it changed

    def copy(self) -> Node:
        """A copy to change: its own lists (and attributes); the nodes nested in it are
        still shared (the mutator copies the path down to what it changes)."""
        return Node(
            self.ptype,
            self.fixed,
            list(self.children),
            None if self.attrs is None else [Attr(a.type, a.value, a.length) for a in self.attrs],
            self.tail,
            self.length,
            self.np,
            self.count,
            self.reserved,
        )

    def encode(self, next_type: int) -> bytes:
        body = self.raw if self.raw is not None else self._body()
        n = len(body) + 4 if self.length is None else self.length
        np = next_type if self.np is None else self.np
        return struct.pack("!BBH", np & 0xFF, self.reserved, n & 0xFFFF) + body

    def _body(self) -> bytes:
        body = bytearray(self.fixed)
        if self.ptype == PROPOSAL and len(body) >= 4:
            body[3] = (len(self.children) if self.count is None else self.count) & 0xFF
        body += encode_chain(self.children)
        if self.attrs is not None:
            body += b"".join(a.encode() for a in self.attrs)
        body += self.tail
        return bytes(body)


def encode_chain(nodes: Sequence[Node]) -> bytes:
    out = b""
    for i, node in enumerate(nodes):
        nxt = nodes[i + 1].ptype if i + 1 < len(nodes) else 0
        out += node.encode(nxt)
    return out


Site = tuple[Node, list[Node], tuple[Node, ...]]
"""A node, the list it is in, and the nodes it is nested in."""


@dataclass
class Message:
    """An ISAKMP message: its header fields and payload chain (or an opaque body when the
    body is encrypted or does not parse)."""

    icookie: bytes
    rcookie: bytes
    np: int  # the header's next-payload field
    version: int
    exchange: int
    flags: int
    message_id: int
    payloads: list[Node] | None  # None: ``body`` is opaque
    body: bytes = b""
    length: int | None = None  # a lie in the header length
    np_lie: bool = False  # keep ``np`` even when the payload chain says otherwise
    cut: int | None = None  # truncate the encoded message here
    shared: bool = False  # ``payloads`` is the parsed original (``body`` its bytes)

    def copy(self) -> Message:
        """A copy sharing the parsed payload chain until :meth:`tree` is asked for."""
        return Message(
            self.icookie,
            self.rcookie,
            self.np,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            self.payloads,
            self.body,
            shared=self.payloads is not None,
        )

    def tree(self) -> list[Node]:
        """The payload chain, a list of its own (the nodes in it may still be shared: see
        :meth:`own`)."""
        assert self.payloads is not None
        if self.shared:
            self.payloads = list(self.payloads)
            self.shared = False
        return self.payloads

    def own(self, site: Site) -> Site:
        """``site`` with the node and every node it is nested in copied (copy on write)."""
        node, _, parents = site
        container = self.tree()
        copies: list[Node] = []
        for original in (*parents, node):
            i = next(k for k, x in enumerate(container) if x is original)
            container[i] = mine = original.copy()
            copies.append(mine)
            if original is not node:
                container = mine.children
        return copies[-1], container, tuple(copies[:-1])

    def encode(self) -> bytes:
        if self.payloads is None or self.shared:
            body = self.body
            np = (
                self.np
                if self.payloads is None or self.np_lie
                else (self.payloads[0].ptype if self.payloads else 0)
            )
        else:
            body = encode_chain(self.payloads)
            np = self.payloads[0].ptype if self.payloads else 0
            np = self.np if self.np_lie else np
        n = HEADER_SIZE + len(body) if self.length is None else self.length
        head = (
            self.icookie
            + self.rcookie
            + struct.pack(
                "!BBBBII",
                np & 0xFF,
                self.version,
                self.exchange & 0xFF,
                self.flags & 0xFF,
                self.message_id,
                n,
            )
        )
        return head + body


def _parse_attrs(data: bytes) -> list[Attr]:
    attrs = []
    i = 0
    while i < len(data):
        if len(data) - i < 4:
            raise ValueError("short attribute")
        t, v = struct.unpack_from("!HH", data, i)
        if t & 0x8000:
            attrs.append(Attr(t, data[i + 2 : i + 4]))
            i += 4
        else:
            if i + 4 + v > len(data):
                raise ValueError("attribute runs past its payload")
            attrs.append(Attr(t, data[i + 4 : i + 4 + v]))
            i += 4 + v
    return attrs


def _parse_chain(data: bytes, first: int, inner: int | None = None) -> list[Node]:
    """A chain of payloads whose first is of type ``first``; inside an SA ``inner`` is the
    only type allowed (Proposal or Transform)."""
    nodes = []
    ptype = first
    i = 0
    while ptype != 0:
        if len(data) - i < 4:
            raise ValueError("short payload header")
        np, reserved, n = struct.unpack_from("!BBH", data, i)
        if n < 4 or i + n > len(data):
            raise ValueError("bad payload length")
        body = data[i + 4 : i + n]
        node = _parse_body(ptype, body, reserved)
        node.raw = body
        nodes.append(node)
        i += n
        ptype = np
        if inner is not None and ptype not in (0, inner):
            raise ValueError("foreign payload inside an SA")
    if i != len(data):
        raise ValueError("trailing bytes")
    return nodes


def _parse_body(ptype: int, body: bytes, reserved: int) -> Node:
    try:
        if ptype == SA and len(body) >= 12:
            return Node(ptype, body[:8], _parse_chain(body[8:], PROPOSAL, PROPOSAL), reserved=reserved)
        if ptype == PROPOSAL and len(body) >= 4:
            spi_end = 4 + body[2]
            if spi_end <= len(body):
                children = _parse_chain(body[spi_end:], TRANSFORM if body[3] else 0, TRANSFORM)
                return Node(ptype, body[:spi_end], children, reserved=reserved)
        if ptype == TRANSFORM and len(body) >= 4:
            return Node(ptype, body[:4], attrs=_parse_attrs(body[4:]), reserved=reserved)
        if ptype == ATTRIBUTE and len(body) >= 4:
            return Node(ptype, body[:4], attrs=_parse_attrs(body[4:]), reserved=reserved)
    except ValueError:
        pass
    return Node(ptype, tail=body, reserved=reserved)


def parse(data: bytes) -> Message:
    """The model of ``data`` (at least an ISAKMP header); the body stays opaque when it is
    encrypted or its payload chain does not parse."""
    if len(data) < HEADER_SIZE:
        raise ValueError("shorter than an ISAKMP header")
    np, version, exchange, flags, message_id, _ = struct.unpack_from("!BBBBII", data, 16)
    msg = Message(data[:8], data[8:16], np, version, exchange, flags, message_id, None, data[HEADER_SIZE:])
    if not flags & E_FLAG:
        try:
            msg.payloads = _parse_chain(data[HEADER_SIZE:], np)
        except ValueError:
            pass
    return msg


def _targets(op: str, sites: list[Site]) -> list[Site]:
    """The sites a tree mutation ``op`` can change."""
    if op in ("count", "spi size"):
        return [s for s in sites if s[0].ptype == PROPOSAL]
    if op == "attribute":
        return [s for s in sites if s[0].attrs]
    return sites


def _walk(nodes: list[Node], out: list[Site], parents: tuple[Node, ...] = ()) -> list[Site]:
    for node in nodes:
        out.append((node, nodes, parents))
        _walk(node.children, out, (*parents, node))
    return out


# ------------------------------------------------------------------ the corpus


@functools.cache
def _corpus() -> tuple[bytes, ...]:
    from tests.helpers.ike_pair import (
        CLIENT_IP,
        GATEWAY_IP,
        Pair,
        client_config,
        connect,
        full_tunnel,
        gateway_config,
    )
    from tests.vectors import captures
    from tunvpn.ike.engine import IkeEngine

    out: list[bytes] = [c.data for c in (*captures.VPNC_FLOW, *captures.S2S_FLOW)]
    for mode in ("main", "aggressive", "base"):  # first messages of our own client
        spare = IkeEngine(client_config())
        spare.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), 1_800_000_000.0, mode=mode)
        out += [data for data, _, _ in spare.datagrams_to_send()]
    pair = Pair(client_config(), gateway_config(require_xauth=False))
    connect(pair, "main")  # a whole Main Mode: cookies set, messages 5 and 6 encrypted
    out += [data for _, data in pair.wire]
    tunnel = Pair(client_config(), gateway_config(require_xauth=True))
    full_tunnel(tunnel)  # Aggressive Mode, XAUTH, Mode Config, Quick Mode
    out += [data for _, data in tunnel.wire]
    return tuple(out)


def isakmp_corpus() -> list[bytes]:
    """Real ISAKMP messages to mutate (no non-ESP marker): strongSwan's and vpnc's captured
    ones (tests/vectors/captures.py), the first messages of our own client in Main, Aggressive
    and Base Mode, and every message of two recorded handshakes of our engines (a Main Mode;
    an Aggressive Mode with XAUTH, Mode Config and a Quick Mode): cookies set, encrypted."""
    return list(_corpus())


# ------------------------------------------------------------------ the mutator


class IsakmpMutator:
    """Mutated ISAKMP messages drawn from ``corpus``, deterministic for ``seed``."""

    WELL_FORMED = 0.08
    """Share of messages sent unchanged but for fresh cookies (the expensive kind)."""

    def __init__(self, corpus: Sequence[bytes], seed: int) -> None:
        if not corpus:
            raise ValueError("an empty corpus")
        self.corpus = [bytes(m) for m in corpus]
        self.rng = random.Random(seed)
        self.fields = FieldMutator(self.rng)
        self.cookies = sorted(
            {m[:8] for m in self.corpus if len(m) >= 8} | {m[8:16] for m in self.corpus if len(m) >= 16}
        )
        self.cookies = [c for c in self.cookies if c != bytes(8)]
        self.clear = [m for m in self.corpus if len(m) >= HEADER_SIZE and not m[19] & E_FLAG]
        """Clear-text messages: their payloads are what the mutations reach, so they are
        drawn more often than the encrypted ones."""
        self._models: dict[bytes, tuple[Message, list[str]]] = {}
        self.last: str = ""
        """The name of the last mutation (for a failure message)."""

    def next(self) -> bytes:
        """One mutated ISAKMP message (no non-ESP marker)."""
        r = self.rng
        data = r.choice(self.clear if self.clear and r.random() < 0.7 else self.corpus)
        if r.random() < self.WELL_FORMED:
            self.last = "well-formed, fresh cookies"
            rcookie = bytes(8) if data[8:16] == bytes(8) or r.random() < 0.7 else r.randbytes(8)
            return r.randbytes(8) + rcookie + data[16:]
        model, ops = self._model(data)
        msg = model.copy()
        if r.random() < 0.5:  # most storms come under fresh initiator cookies
            msg.icookie = r.randbytes(8)
        names = []
        for _ in range(r.choice((1, 1, 1, 2, 2, 3))):
            names.append(self._mutate_model(msg, ops))
        out = msg.encode()
        if msg.cut is not None:
            out = out[: msg.cut]
        if r.random() < 0.15:
            names.append("bytes")
            out = out[:HEADER_SIZE] + self.fields.mutate_bytes(out[HEADER_SIZE:])
        self.last = " + ".join(names)
        return out

    # one field of the model ---------------------------------------------------------

    def _model(self, data: bytes) -> tuple[Message, list[str]]:
        """The parsed ``data`` and the mutations that apply to it (cached)."""
        cached = self._models.get(data)
        if cached is not None:
            return cached
        msg = parse(data)
        nodes = _walk(msg.payloads, []) if msg.payloads else []
        ops = [
            "header length",
            "exchange",
            "flags",
            "message id",
            "cookies",
            "next payload",
            "truncate",
            "append",
            "version",
        ]
        if nodes:
            ops += ["payload length"] * 4 + ["payload next"] * 2 + ["remove", "duplicate", "reserved", "body"]
            if any(n.ptype == PROPOSAL for n, _, _ in nodes):
                ops += ["count", "spi size"]
            if any(n.attrs for n, _, _ in nodes):
                ops += ["attribute"] * 3
        self._models[data] = msg, ops
        return msg, ops

    def _mutate_model(self, msg: Message, ops: list[str]) -> str:
        r = self.rng
        f = self.fields
        op = r.choice(ops)
        if msg.payloads is None and op in TREE_OPS:  # an earlier mutation made the body opaque
            op = "append"
        targets = _targets(op, _walk(msg.tree(), [])) if op in TREE_OPS else []
        if op in TREE_OPS and not targets:  # earlier mutations removed its target
            op = "append"
        if op == "header length":
            msg.length = f.length(len(msg.encode()), 4)
        elif op == "exchange":
            msg.exchange = r.choice(EXCHANGES) if r.random() < 0.8 else r.randrange(256)
        elif op == "flags":
            msg.flags = r.choice(
                (msg.flags | E_FLAG, msg.flags ^ E_FLAG, msg.flags | 0x02, msg.flags | 0x04, r.randrange(256))
            )
        elif op == "message id":
            msg.message_id = r.choice((0, 1, 0xFFFFFFFF, r.getrandbits(32), msg.message_id ^ 1))
        elif op == "cookies":
            known = r.choice(self.cookies) if self.cookies else r.randbytes(8)
            choice = r.randrange(6)
            if choice == 0:
                msg.rcookie = bytes(8)
            elif choice == 1:
                msg.rcookie = r.randbytes(8)
            elif choice == 2:
                msg.rcookie = known
            elif choice == 3:
                msg.icookie = known
            elif choice == 4:
                msg.icookie, msg.rcookie = msg.rcookie, msg.icookie
            else:
                msg.icookie = bytes(8)
        elif op == "next payload":
            msg.np_lie = True
            msg.np = self._payload_type(msg.np)
        elif op == "version":
            msg.version = r.choice((0x00, 0x11, 0x20, 0x12, r.randrange(256)))
        elif op == "truncate":
            size = len(msg.encode())
            msg.cut = (
                r.randint(0, size - 1)
                if r.random() < 0.2
                else r.randint(min(HEADER_SIZE, size - 1), size - 1)
            )
        elif op == "append":
            extra = f.garbage()
            if msg.payloads is None:
                msg.body += extra
            elif r.random() < 0.5:
                msg.tree().append(Node(r.choice((*KNOWN_PAYLOADS, r.randrange(256))), tail=extra))
            elif msg.tree():
                last = msg.tree()[-1]
                node, _, _ = msg.own((last, msg.tree(), ()))
                node.tail += extra
        else:
            node, siblings, _ = msg.own(r.choice(targets))
            if op == "payload length":
                node.length = f.length(len(node.encode(0)))
            elif op == "payload next":
                node.np = self._payload_type(node.np or 0, own=node.ptype)
            elif op == "remove":
                del siblings[next(k for k, x in enumerate(siblings) if x is node)]
            elif op == "duplicate":
                siblings.insert(siblings.index(node), node.copy())
                if r.random() < 0.2:
                    for _ in range(r.randint(2, 40)):
                        siblings.insert(0, node.copy())
            elif op == "reserved":
                node.reserved = r.randrange(1, 256)
            elif op == "body":
                if node.tail:
                    node.tail = f.mutate_bytes(node.tail)
                elif node.fixed:
                    node.fixed = f.mutate_bytes(node.fixed)
                else:
                    node.tail = f.garbage()
            elif op == "count":
                node.count = r.choice((0, 255, 1, 2, 64, r.randrange(256)))
            elif op == "spi size":
                if len(node.fixed) >= 4:
                    fixed = bytearray(node.fixed)
                    fixed[2] = r.choice((0, 1, 4, 8, 16, 255, (fixed[2] + 1) & 0xFF, max(fixed[2] - 1, 0)))
                    node.fixed = bytes(fixed)
            elif op == "attribute":
                holder = node
                assert holder.attrs is not None
                attr = r.choice(holder.attrs)
                choice = r.randrange(5)
                if choice == 0 and not attr.type & 0x8000:
                    attr.length = f.length(len(attr.value))
                elif choice == 1:  # flip the AF bit: TV <-> TLV
                    attr.type ^= 0x8000
                    if attr.type & 0x8000:
                        attr.value = attr.value[:2].rjust(2, b"\0")
                    else:
                        attr.value = attr.value[:2] + f.garbage(8)
                elif choice == 2:
                    attr.type = (attr.type & 0x8000) | f.integer(attr.type & 0x7FFF, 2) & 0x7FFF
                elif choice == 3:
                    attr.value = f.mutate_bytes(attr.value) if not attr.type & 0x8000 else r.randbytes(2)
                else:
                    holder.attrs.insert(
                        r.randrange(len(holder.attrs) + 1),
                        Attr(r.randrange(0x10000), r.randbytes(r.randint(0, 8))),
                    )
        return op

    def _payload_type(self, current: int, own: int | None = None) -> int:
        r = self.rng
        choice = r.randrange(5)
        if choice == 0:
            return r.choice(KNOWN_PAYLOADS)
        if choice == 1:  # unknown: reserved or private use
            return r.choice((15, 16, 17, 19, 22, 99, 127, 128, 200, 255))
        if choice == 2 and own is not None:  # a loop: the same type again
            return own
        if choice == 3:
            return r.choice((0, PROPOSAL, TRANSFORM))
        return r.randrange(256)


# ------------------------------------------------------------------ the storm


MAX_UDP_PAYLOAD = 65535 - 20 - 8
"""The largest UDP payload over IPv4: longer mutations (many duplicated payloads) are cut."""


def storm_datagrams(seed: int, count: int) -> Iterator[tuple[bytes, int]]:
    """``count`` (UDP payload, destination port) pairs for a storm, deterministic for
    ``seed``: mutated ISAKMP on port 500 (about 60 %), behind the non-ESP marker on port
    4500 (about 25 %), and port 4500 without the marker (ESP-looking packets with random
    SPIs, keepalives, a bare marker, short garbage). Each payload fits in one UDP datagram."""
    for data, port in _storm(seed, count):
        yield data[:MAX_UDP_PAYLOAD], port


def _storm(seed: int, count: int) -> Iterator[tuple[bytes, int]]:
    rng = random.Random(seed ^ 0x5EED)
    mutator = IsakmpMutator(isakmp_corpus(), seed)
    for _ in range(count):
        x = rng.random()
        if x < 0.60:
            yield mutator.next(), 500
        elif x < 0.85:
            yield NON_ESP_MARKER + mutator.next(), 4500
        else:
            kind = rng.randrange(5)
            if kind == 0:  # ESP-looking: SPI, sequence number, IV and ciphertext
                yield (
                    rng.randbytes(4).replace(b"\0\0\0\0", b"\0\0\0\1") + rng.randbytes(rng.randint(4, 200)),
                    4500,
                )
            elif kind == 1:
                yield b"\xff", 4500
            elif kind == 2:
                yield NON_ESP_MARKER + rng.randbytes(rng.randint(0, 27)), 4500
            elif kind == 3:
                yield rng.randbytes(rng.randint(0, 7)), 4500
            else:
                yield mutator.next(), 4500  # IKE without its marker
