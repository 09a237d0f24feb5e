"""IKEv1 fragmentation (issue 16): the extension Cisco, strongSwan and Windows share.

A large ISAKMP message (a first message offering every suite, a certificate chain) would
travel as IP fragments, which many firewalls and NATs drop. Instead the sender cuts the whole
encoded message (header included, encrypted as it is) into pieces and sends each in its own
ISAKMP message: the same cookies, the exchange type of the phase 1 (Aggressive Mode, else
Identity Protection, whatever the message was), message ID 0, no flags, and one FRAGMENT
payload (type 132)::

    next payload (0) | reserved | payload length (2)
    fragment ID (2)  | fragment number (1, from 1) | flags (1: 0x01 on the last one)
    fragment data

The receiver collects the pieces of one fragment ID and hands the joined message on as if it
had come in one datagram. Support is announced with a Vendor ID (its 16 octets, to which
strongSwan and Cisco append 80 00 00 00: "fragments of phase 1 messages"). The format is not
in an RFC; strongSwan's ``fragment_payload.c`` and ``message.c`` are the reference we read.

This module is sans-I/O: :func:`split` and :func:`decode` are pure, :class:`Reassembler`
keeps what arrived, bounded (pieces, octets, time, per source, in total) so that nobody can
make it hold more than ``max_pending * max_message`` octets.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from .constants import HEADER_SIZE, ExchangeType, NotifyType, PayloadType
from .errors import RemoteProtocolError

FRAGMENTATION_VID = bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3")
"""The Vendor ID of the extension (MD5 of "FRAGMENTATION")."""
FRAGMENTATION_VID_PHASE1 = FRAGMENTATION_VID + b"\x80\x00\x00\x00"
"""What we send, as strongSwan does: the ID and the capability "phase 1 messages"."""
CAPABILITY_PHASE1 = 0x80000000

FRAGMENT_HEADER = 8
"""Octets of a FRAGMENT payload before its data."""
LAST_FRAGMENT = 0x01

MAX_FRAGMENTS = 32
"""Pieces of one message at most (strongSwan allows 255; 32 of the smallest useful size,
576-octet datagrams, still carry a 16 KB message)."""
FIRST_MESSAGE_PIECES = 4
"""Pieces of our own first message (Main Mode message 1) at most. strongSwan counts every
queued piece of a first message, as it counts a half-open IKE_SA, against
``charon.block_threshold`` (5 per address by default; ``track_init`` in process_message_job.c,
``drop_ike_sa_init`` in receiver.c) and ignores the piece over it when its workers lag behind
its receiver: four pieces, or three and the half-open IKE_SA the first one made, stay under."""
MAX_MESSAGE = 32768
"""Octets of a joined message at most (strongSwan's ``charon.max_packet`` is 10,000)."""
REASSEMBLY_TIMEOUT = 10.0
"""Seconds an incomplete message is kept after its first piece."""
MAX_PENDING = 64
"""Incomplete messages kept at once; past that the oldest goes."""
MAX_PENDING_PER_SOURCE = 4
"""Incomplete messages kept at once from one address (a source cannot take the others' room)."""

_HEADER = struct.Struct("!8s8sBBBBII")
_PAYLOAD = struct.Struct("!BBHHBB")
_MALFORMED = NotifyType.PAYLOAD_MALFORMED


@dataclass(frozen=True, slots=True)
class Fragment:
    """One piece of a fragmented message."""

    icookie: bytes
    rcookie: bytes
    fragment_id: int
    number: int
    last: bool
    data: bytes = field(repr=False)


def is_fragmentation_vid(data: bytes) -> bool:
    """Whether a Vendor ID payload announces the extension for phase 1 messages: the 16 octets
    alone (Windows), or followed by capabilities with the phase 1 bit (strongSwan, Cisco)."""
    if data[:16] != FRAGMENTATION_VID:
        return False
    if len(data) == 16:
        return True
    return len(data) == 20 and bool(int.from_bytes(data[16:20], "big") & CAPABILITY_PHASE1)


def fragment_id(message: bytes) -> int:
    """The fragment ID of ``message``: derived from its octets, so a retransmission is cut
    into the very same pieces (a receiver that got some of them keeps them)."""
    return int.from_bytes(hashlib.sha256(message).digest()[:2], "big")


def split(message: bytes, *, aggressive: bool, max_datagram: int) -> list[bytes]:
    """``message`` (an encoded ISAKMP message, header included) as fragment messages of at
    most ``max_datagram`` octets each (the UDP payload; the caller takes off the non-ESP
    marker's 4 octets on the NAT-T port).

    :raises ValueError: ``max_datagram`` leaves no room for data, or ``message`` needs more
        than :data:`MAX_FRAGMENTS` pieces or is shorter than a header.
    """
    if len(message) < HEADER_SIZE:
        raise ValueError("not an ISAKMP message")
    room = max_datagram - HEADER_SIZE - FRAGMENT_HEADER
    if room < 64:
        raise ValueError(f"{max_datagram} octets leave no room for fragment data")
    pieces = [message[start : start + room] for start in range(0, len(message), room)]
    if len(pieces) > MAX_FRAGMENTS:
        raise ValueError(
            f"a {len(message)}-octet message needs {len(pieces)} fragments (at most {MAX_FRAGMENTS})"
        )
    icookie, rcookie, _, version = message[:8], message[8:16], message[16], message[17]
    exchange = ExchangeType.AGGRESSIVE if aggressive else ExchangeType.IDENTITY_PROTECTION
    ident = fragment_id(message)
    out = []
    for number, data in enumerate(pieces, start=1):
        last = number == len(pieces)
        length = HEADER_SIZE + FRAGMENT_HEADER + len(data)
        header = _HEADER.pack(icookie, rcookie, PayloadType.FRAGMENT_CISCO, version, exchange, 0, 0, length)
        payload = _PAYLOAD.pack(
            0, 0, FRAGMENT_HEADER + len(data), ident, number, LAST_FRAGMENT if last else 0
        )
        out.append(header + payload + data)
    return out


def decode(message: bytes) -> Fragment:
    """The piece a fragment message carries (its header's first payload is FRAGMENT).

    :raises RemoteProtocolError: not exactly one well-formed FRAGMENT payload.
    """
    if len(message) < HEADER_SIZE + FRAGMENT_HEADER:
        raise RemoteProtocolError("fragment message too short", _MALFORMED, "fragment", 0)
    icookie, rcookie, first, _, _, _, _, length = _HEADER.unpack_from(message)
    if first != PayloadType.FRAGMENT_CISCO or length != len(message):
        raise RemoteProtocolError("not a fragment message", _MALFORMED, "fragment", 16)
    nxt, _, plen, ident, number, flags = _PAYLOAD.unpack_from(message, HEADER_SIZE)
    if nxt != 0 or plen != len(message) - HEADER_SIZE or plen <= FRAGMENT_HEADER:
        raise RemoteProtocolError(
            "FRAGMENT payload length or chain is wrong", _MALFORMED, "fragment", HEADER_SIZE
        )
    if number == 0:
        raise RemoteProtocolError("fragment number 0", _MALFORMED, "fragment.number", HEADER_SIZE + 6)
    return Fragment(
        icookie,
        rcookie,
        ident,
        number,
        bool(flags & LAST_FRAGMENT),
        bytes(message[HEADER_SIZE + FRAGMENT_HEADER :]),
    )


@dataclass
class _Pending:
    source: str
    fragment_id: int
    started: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    last: int = 0
    size: int = 0


class Reassembler:
    """The incomplete fragmented messages of one engine, keyed by cookies and source address
    (one message per key at a time: a new fragment ID replaces the old one, as strongSwan
    does). :attr:`drops` counts what was refused, by reason."""

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING,
        per_source: int = MAX_PENDING_PER_SOURCE,
        max_message: int = MAX_MESSAGE,
        timeout: float = REASSEMBLY_TIMEOUT,
    ) -> None:
        self.max_pending = max_pending
        self.per_source = per_source
        self.max_message = max_message
        self.timeout = timeout
        self._pending: OrderedDict[tuple[bytes, str, int], _Pending] = OrderedDict()
        self._per_source: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, fragment: Fragment, source: tuple[str, int], now: float) -> bytes | None:
        """Keep ``fragment`` from ``source``; the joined message once every piece is there."""
        self.expire(now)
        if fragment.number > MAX_FRAGMENTS:
            self.drops["fragment number too large"] += 1
            return None
        key = (fragment.icookie + fragment.rcookie, source[0], source[1])
        pending = self._pending.get(key)
        if pending is not None and pending.fragment_id != fragment.fragment_id:
            self._forget(key)  # the sender moved on to another message
            pending = None
        if pending is None:
            if self._per_source[source[0]] >= self.per_source:
                self.drops["too many fragmented messages from one address"] += 1
                return None
            while len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending))
                self._forget(oldest)
                self.drops["fragmented message pushed out by newer ones"] += 1
            pending = _Pending(source[0], fragment.fragment_id, now)
            self._pending[key] = pending
            self._per_source[source[0]] += 1
        if fragment.number in pending.pieces:
            return None  # a retransmitted piece
        if fragment.last:
            if pending.last and pending.last != fragment.number:
                self.drops["two last fragments"] += 1
                self._forget(key)
                return None
            pending.last = fragment.number
        if pending.last and (fragment.number > pending.last or max(pending.pieces, default=0) > pending.last):
            self.drops["fragment after the last one"] += 1
            self._forget(key)
            return None
        if pending.size + len(fragment.data) > self.max_message:
            self.drops["fragmented message too large"] += 1
            self._forget(key)
            return None
        pending.pieces[fragment.number] = fragment.data
        pending.size += len(fragment.data)
        if not pending.last or len(pending.pieces) != pending.last:
            return None
        self._forget(key)
        return b"".join(pending.pieces[n] for n in range(1, pending.last + 1))

    def expire(self, now: float) -> None:
        """Forget incomplete messages older than ``timeout``."""
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if now - pending.started < self.timeout and now >= pending.started:
                break
            self._forget(key)
            self.drops["fragmented message incomplete in time"] += 1

    def _forget(self, key: tuple[bytes, str, int]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._per_source[pending.source] -= 1
            if self._per_source[pending.source] <= 0:
                del self._per_source[pending.source]


__all__ = [
    "FRAGMENTATION_VID",
    "FRAGMENTATION_VID_PHASE1",
    "FIRST_MESSAGE_PIECES",
    "MAX_FRAGMENTS",
    "MAX_MESSAGE",
    "Fragment",
    "Reassembler",
    "decode",
    "fragment_id",
    "is_fragmentation_vid",
    "split",
]
