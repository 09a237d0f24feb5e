"""Outbound and inbound ESP security associations for tunnel mode (RFC 4303, RFC 4304).

An SA numbers, pads, seals and counts packets (outbound) or checks, opens, unpads and
counts them (inbound), and watches its lifetime. The per-packet calls never raise on bad
traffic: a packet that cannot be sent or accepted comes back as a :class:`DropReason` and
is counted in ``sa.drops``; the batch calls return only the good packets.

Lifetimes come in seconds, kilobytes and packets (RFC 2407 section 4.5); the sequence
number space is a fourth limit (RFC 4303 section 3.3.3: without ESN an SA must not send
more than 2^32 - 1 packets). Each limit produces one :class:`SaSoftExpired` (at
``soft_fraction`` of it, the rekey signal) and one :class:`SaHardExpired` (the SA then
drops everything). Packet and byte limits are watched in the data path; time limits by
:meth:`poll` (``SadTable.handle_timer`` calls it), as the core reads no clock.

Byte counts are of inner (plaintext) IP packets, as the kernel's XFRM counts them.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag

from ..ipsec.algorithms import AuthAlgorithm, EncapsulationMode, EspTransform
from .constants import (
    DEFAULT_REPLAY_WINDOW,
    DEFAULT_SOFT_FRACTION,
    DROP_REASON_COUNT,
    SEQ32_MAX,
    SEQ64_MAX,
    Direction,
    DropReason,
    LifetimeTrigger,
)
from .events import SaHardExpired, SaLifetimeEvent, SaSoftExpired
from .policy import (
    compile_inbound_policy,
    compile_inbound_policy_any,
    compile_inbound_ranges,
    next_header_versions,
)
from .replay import ReplayWindow
from .transforms import PAD_SUFFIXES, AeadEngine, Engine, EspSuite, Packet, TrailerTable, trailer_table

if TYPE_CHECKING:
    from ..ipsec.selectors import TrafficSelector
    from .ratelimit import DropLog

_unpack_seq = struct.Struct(">I").unpack_from
_IPV4_TRAILERS = tuple(suffix + b"\x04" for suffix in PAD_SUFFIXES)
"""``_IPV4_TRAILERS[n]``: n octets of padding 1, 2, 3, ..., Pad Length n, Next Header 4."""
_unpack_two = struct.Struct(">II").unpack_from
"""SPI and sequence number of an ESP header; source and destination of an IPv4 header at 12."""
_NEVER = 1 << 80  # a mark no counter reaches
_UDP_ENCAPSULATION = frozenset(
    {
        EncapsulationMode.UDP_TUNNEL,
        EncapsulationMode.UDP_TRANSPORT,
        EncapsulationMode.UDP_TUNNEL_DRAFT,
        EncapsulationMode.UDP_TRANSPORT_DRAFT,
    }
)
_TRAILERS: dict[int, TrailerTable] = {}  # align -> trailer_table(align), shared by every SA


def _trailers(align: int) -> TrailerTable:
    table = _TRAILERS.get(align)
    if table is None:
        table = _TRAILERS[align] = trailer_table(align)
    return table


@dataclass(frozen=True, slots=True)
class Lifetime:
    """The limits of one SA; None means no limit of that kind."""

    seconds: float | None = None
    """Hard lifetime in seconds from installation."""
    kilobytes: int | None = None
    """Hard lifetime in kilobytes (1024 octets) of inner packets."""
    packets: int | None = None
    """Hard lifetime in packets."""
    soft_fraction: float = DEFAULT_SOFT_FRACTION
    """Where the soft limit sits, as a fraction of each hard limit."""

    def __post_init__(self) -> None:
        if not 0.0 < self.soft_fraction <= 1.0:
            raise ValueError(f"soft_fraction must be in (0, 1], not {self.soft_fraction}")
        for name in ("seconds", "kilobytes", "packets"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"lifetime {name} must be positive or None, not {value}")


NO_LIMITS = Lifetime()
"""No time, volume or packet limit (the sequence number space still applies)."""


class _SecurityAssociation:
    """What inbound and outbound SAs share: identity, keys, counters, lifetime, events."""

    __slots__ = (
        "_byte_mark",
        "_count_mark",
        "_count_trigger",
        "_engine",
        "_events",
        "_hard_bytes",
        "_hard_count",
        "_keys",
        "_soft_bytes",
        "_soft_count",
        "_spi_bytes",
        "bytes",
        "created",
        "drops",
        "esn",
        "hard_expired",
        "lifetime",
        "local_ts",
        "peer",
        "remote_ts",
        "soft_expired",
        "spi",
        "suite",
    )
    direction: Direction

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        enc_key: bytes,
        auth_key: bytes,
        *,
        esn: bool,
        lifetime: Lifetime,
        now: float,
        local_ts: TrafficSelector | None,
        remote_ts: TrafficSelector | None,
        peer: tuple[str, int] | None,
        count_limit: int,
        count_trigger: LifetimeTrigger,
    ) -> None:
        if not 0 < spi <= SEQ32_MAX or spi < 256:
            raise ValueError(f"SPI {spi:#x} is reserved or out of range (RFC 4303 section 2.1)")
        self.spi = spi
        self._spi_bytes = spi.to_bytes(4, "big")
        self.suite = suite
        self.esn = esn
        suite.check_keys(enc_key, auth_key)
        # The engine (OpenSSL contexts, ~2.4 kB) is made by the first packet: idle SAs stay small.
        self._engine: Engine | None = None
        self._keys: tuple[bytes, bytes] | None = (bytes(enc_key), bytes(auth_key))
        self.lifetime = lifetime
        self.created = now
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.peer = peer
        self.bytes = 0
        self.drops: list[int] | None = None
        self.soft_expired = False
        self.hard_expired = False
        self._events: deque[SaLifetimeEvent] | None = None
        fraction = lifetime.soft_fraction
        self._hard_count = count_limit
        self._soft_count = max(1, int(count_limit * fraction))
        if lifetime.kilobytes is not None:
            self._hard_bytes = lifetime.kilobytes * 1024
            self._soft_bytes = max(1, int(self._hard_bytes * fraction))
        else:
            self._hard_bytes = self._soft_bytes = _NEVER
        self._count_trigger = count_trigger
        self._update_marks()

    @property
    def engine(self) -> Engine:
        """The keyed engine, made on first use."""
        engine = self._engine
        return engine if engine is not None else self._start()

    def _start(self) -> Engine:
        assert self._keys is not None
        enc_key, auth_key = self._keys
        engine = self._engine = self.suite.make_engine(enc_key, auth_key, self.esn)
        self._keys = None
        return engine

    # -- counters and events

    def _count_drop(self, reason: DropReason, count: int = 1) -> None:
        drops = self.drops
        if drops is None:
            drops = self.drops = [0] * DROP_REASON_COUNT
        drops[reason] += count

    def drop_counts(self) -> dict[DropReason, int]:
        """Packets dropped on this SA, by reason (only reasons that occurred)."""
        if self.drops is None:
            return {}
        return {DropReason(i): n for i, n in enumerate(self.drops) if n}

    def _emit(self, event: SaLifetimeEvent) -> None:
        events = self._events
        if events is None:
            events = self._events = deque()
        events.append(event)

    def next_event(self) -> SaLifetimeEvent | None:
        """Pop the oldest lifetime event of a stand-alone SA (an installed SA's events go to
        its table's queue)."""
        events = self._events
        return events.popleft() if events else None

    def _expire(self, hard: bool, trigger: LifetimeTrigger) -> None:
        if not self.soft_expired:
            self.soft_expired = True
            self._emit(SaSoftExpired(self.spi, self.direction, trigger))
        if hard and not self.hard_expired:
            self.hard_expired = True
            self._emit(SaHardExpired(self.spi, self.direction, trigger))
        self._update_marks()

    def _update_marks(self) -> None:
        """The counts at which the data path next leaves its fast path."""
        if self.hard_expired:
            self._count_mark = self._byte_mark = _NEVER
        elif self.soft_expired:
            self._count_mark, self._byte_mark = self._hard_count, self._hard_bytes
        else:
            self._count_mark, self._byte_mark = self._soft_count, self._soft_bytes

    def _check_counts(self, count: int) -> None:
        """The slow path once a packet or byte mark is reached: emit what is due."""
        if count >= self._hard_count:
            self._expire(True, self._count_trigger)
        elif self.bytes >= self._hard_bytes:
            self._expire(True, LifetimeTrigger.BYTES)
        elif not self.soft_expired:
            if count >= self._soft_count:
                self._expire(False, self._count_trigger)
            elif self.bytes >= self._soft_bytes:
                self._expire(False, LifetimeTrigger.BYTES)

    # -- time

    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to do, or None (no time limit left)."""
        seconds = self.lifetime.seconds
        if seconds is None or self.hard_expired:
            return None
        if not self.soft_expired:
            return self.created + seconds * self.lifetime.soft_fraction
        return self.created + seconds

    def poll(self, now: float) -> None:
        """Emit the soft and hard time-lifetime events that are due at ``now``."""
        seconds = self.lifetime.seconds
        if seconds is None or self.hard_expired:
            return
        if now >= self.created + seconds:
            self._expire(True, LifetimeTrigger.TIME)
        elif not self.soft_expired and now >= self.created + seconds * self.lifetime.soft_fraction:
            self._expire(False, LifetimeTrigger.TIME)

    def __repr__(self) -> str:
        state = "hard-expired" if self.hard_expired else "soft-expired" if self.soft_expired else "live"
        return (
            f"{type(self).__name__}(spi={self.spi:#010x}, suite={self.suite.name}, esn={self.esn}, "
            f"{state}, bytes={self.bytes})"
        )


class OutboundSA(_SecurityAssociation):
    """Seals inner IP packets into ESP packets for one peer.

    :param spi: the SPI the peer chose for this SA.
    :param suite: the negotiated transform.
    :param enc_key: encryption key (AEAD: key followed by the 4-octet salt).
    :param auth_key: integrity key (empty for AEAD).
    :param esn: 64-bit extended sequence numbers (RFC 4304).
    :param lifetime: the SA's limits.
    :param now: the time of installation, on the clock later passed to :meth:`poll`.
    :param remote_ts: the peer's traffic selector; the table routes by it.
    :param local_ts: our traffic selector (routing by protocol/port selectors uses it).
    :param peer: the peer's outer (address, port), for the I/O layer.
    :param udp_encap: send inside UDP (RFC 3948), for the I/O layer.
    :param seq: the last sequence number used (tests start near the limit with it).
    """

    __slots__ = ("_trailers", "seq", "udp_encap")
    direction = Direction.OUTBOUND

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        enc_key: bytes,
        auth_key: bytes = b"",
        *,
        esn: bool = False,
        lifetime: Lifetime = NO_LIMITS,
        now: float = 0.0,
        remote_ts: TrafficSelector | None = None,
        local_ts: TrafficSelector | None = None,
        peer: tuple[str, int] | None = None,
        udp_encap: bool = False,
        seq: int = 0,
    ) -> None:
        seq_max = SEQ64_MAX if esn else SEQ32_MAX
        limit = seq_max if lifetime.packets is None else min(lifetime.packets, seq_max)
        super().__init__(
            spi,
            suite,
            enc_key,
            auth_key,
            esn=esn,
            lifetime=lifetime,
            now=now,
            local_ts=local_ts,
            remote_ts=remote_ts,
            peer=peer,
            count_limit=limit,
            count_trigger=LifetimeTrigger.SEQUENCE if limit == seq_max else LifetimeTrigger.PACKETS,
        )
        self.udp_encap = udp_encap
        self.seq = seq
        self._trailers = _trailers(suite.align)
        if seq:
            self._check_counts(seq)

    @property
    def packets(self) -> int:
        """Packets sent: the sequence counter."""
        return self.seq

    def encrypt(self, packet: Packet) -> bytes | DropReason:
        """One ESP packet for an inner IPv4/IPv6 packet, or why it was dropped
        (``EXPIRED`` after the hard lifetime, ``MALFORMED`` for a non-IP packet)."""
        if self.hard_expired:
            self._count_drop(DropReason.EXPIRED)
            return DropReason.EXPIRED
        n = len(packet)
        by_length = self._trailers[packet[0] >> 4] if n else None
        if by_length is None:
            self._count_drop(DropReason.MALFORMED)
            return DropReason.MALFORMED
        seq = self.seq + 1
        data = self.engine.seal(self._spi_bytes, seq, bytes(packet) + by_length[n % len(by_length)])
        self.seq = seq
        self.bytes += n
        if seq >= self._count_mark or self.bytes >= self._byte_mark:
            self._check_counts(seq)
        return data

    def encrypt_batch(self, packets: Sequence[Packet]) -> list[bytes]:
        """ESP packets for a batch of inner packets, in order; drops are only counted."""
        out: list[bytes] = []
        if self.hard_expired:
            self._count_drop(DropReason.EXPIRED, len(packets))
            return out
        seq = self.seq
        if seq + len(packets) < self._count_mark and self.bytes + sum(map(len, packets)) < self._byte_mark:
            self.seq, sealed, skipped = self.engine.seal_batch(
                self._spi_bytes, seq, packets, out, self._trailers
            )
            self.bytes += sealed
            if skipped:
                self._count_drop(DropReason.MALFORMED, skipped)
            return out
        for packet in packets:  # a lifetime mark falls inside this batch: one by one
            result = self.encrypt(packet)
            if result.__class__ is bytes:
                out.append(result)
        return out


class InboundSA(_SecurityAssociation):
    """Checks, opens and unpads ESP packets from one peer.

    :param spi: the SPI we chose for this SA.
    :param replay_window: anti-replay window width in packets (0 disables the check, which
        RFC 4303 section 3.4.3 allows only by local choice; never needed here).
    :param remote_ts: the peer's selector: inner sources must lie in it (RFC 4301 5.2).
    :param local_ts: ours: inner destinations must lie in it.
    :param allowed_local: when not empty, inner destinations must lie in one of these
        instead (narrower than ``local_ts``: a standard client's 0.0.0.0/0 SA on a gateway
        reaches only its policies' networks); other packets are dropped as ``POLICY``.

    The other parameters are those of :class:`OutboundSA`.
    """

    __slots__ = ("_nh_versions", "_policy", "_ranges", "_window_size", "packets", "replay")
    direction = Direction.INBOUND

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        enc_key: bytes,
        auth_key: bytes = b"",
        *,
        esn: bool = False,
        lifetime: Lifetime = NO_LIMITS,
        now: float = 0.0,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        remote_ts: TrafficSelector | None = None,
        local_ts: TrafficSelector | None = None,
        peer: tuple[str, int] | None = None,
        allowed_local: tuple[TrafficSelector, ...] = (),
    ) -> None:
        super().__init__(
            spi,
            suite,
            enc_key,
            auth_key,
            esn=esn,
            lifetime=lifetime,
            now=now,
            local_ts=local_ts,
            remote_ts=remote_ts,
            peer=peer,
            count_limit=lifetime.packets if lifetime.packets is not None else _NEVER,
            count_trigger=LifetimeTrigger.PACKETS,
        )
        self.packets = 0
        self._window_size = replay_window
        self.replay: ReplayWindow | None = None  # allocated by the first packet
        if allowed_local:  # narrowed: the checks are made once here, never per packet
            self._policy = compile_inbound_policy_any(remote_ts, allowed_local)
            self._ranges = (
                compile_inbound_ranges(remote_ts, allowed_local[0]) if len(allowed_local) == 1 else None
            )
            self._nh_versions = next_header_versions(remote_ts, *allowed_local)
        else:
            self._policy = compile_inbound_policy(remote_ts, local_ts)
            self._ranges = compile_inbound_ranges(remote_ts, local_ts)
            self._nh_versions = next_header_versions(remote_ts, local_ts)

    def _window(self) -> ReplayWindow:
        window = self.replay
        if window is None:
            window = self.replay = ReplayWindow(max(self._window_size, 32))
        return window

    def _drop(self, reason: DropReason, log: DropLog | None, now: float) -> DropReason:
        self._count_drop(reason)
        if log is not None and reason is not DropReason.DUMMY:
            log.record(reason, self.spi, now)
        return reason

    def _inner(self, plaintext: bytes, log: DropLog | None, now: float) -> bytes | DropReason:
        """The inner packet of an authenticated ESP payload: padding, Next Header, inner
        header and selectors checked (a drop is counted and returned, not the packet)."""
        pad = plaintext[-2]
        end = len(plaintext) - 2 - pad
        if end < 0 or not plaintext.endswith(PAD_SUFFIXES[pad], 0, -1):
            return self._drop(DropReason.PADDING, log, now)
        next_header = plaintext[-1]
        version = self._nh_versions[next_header]
        if not version:
            if next_header == 59:
                return self._drop(DropReason.DUMMY, log, now)
            return self._drop(DropReason.POLICY if next_header in (4, 41) else DropReason.MALFORMED, log, now)
        inner = plaintext[:end]
        if end < (20 if version == 4 else 40) or inner[0] >> 4 != version:
            return self._drop(DropReason.MALFORMED, log, now)
        if self._policy is not None and not self._policy(inner):
            return self._drop(DropReason.POLICY, log, now)
        return inner

    def decrypt(self, packet: Packet, log: DropLog | None = None, now: float = 0.0) -> bytes | DropReason:
        """The inner IP packet of one ESP packet, or why it was dropped.

        Order (RFC 4303 section 3.4): length, replay check, ICV, window update, padding,
        Next Header, inner header, selectors. ``log``/``now`` rate-limit a log line per drop.
        """
        if self.hard_expired:
            return self._drop(DropReason.EXPIRED, log, now)
        engine = self.engine
        n = len(packet)
        if n < engine.min_len or (n - engine.fixed_len) % engine.block:
            return self._drop(DropReason.MALFORMED, log, now)
        window = self._window()
        seq = _unpack_seq(packet, 4)[0]
        if self.esn:
            seq = window.infer_esn(seq)
        if self._window_size and not window.check(seq):
            return self._drop(DropReason.REPLAY, log, now)
        plaintext = engine.open(packet, seq)
        if plaintext is None:
            return self._drop(DropReason.BAD_ICV, log, now)
        window.update(seq)
        inner = self._inner(plaintext, log, now)
        if inner.__class__ is not bytes:
            return inner
        end = len(inner)
        self.packets += 1
        self.bytes += end
        if self.packets >= self._count_mark or self.bytes >= self._byte_mark:
            self._check_counts(self.packets)
        return inner

    def _fast(self, count: int, octets: int) -> bool:
        """Whether a batch of ``count`` packets of ``octets`` in all may take :meth:`_open_fast`:
        a live AEAD SA without ESN, with a replay window and an IPv4 address-only policy,
        whose packet and byte lifetime marks cannot be reached within the batch."""
        return (
            self._ranges is not None
            and not self.esn
            and not self.hard_expired
            and self._window_size > 0
            and self.packets + count < self._count_mark
            and self.bytes + octets < self._byte_mark
            and self.engine.__class__ is AeadEngine
        )

    def decrypt_buffer(
        self,
        buffer: bytes,
        segment: int,
        out: list[bytes],
        log: DropLog | None = None,
        now: float = 0.0,
        rest: list[bytes] | None = None,
    ) -> list[bytes]:
        """Decrypt the ESP packets of one UDP GRO buffer: ``segment``-octet datagrams back to
        back, the last possibly shorter. Inner packets are appended to ``out`` in order; the
        datagrams this SA cannot take here (another SPI, an IKE message or keepalive, a runt,
        or every one when the batch needs the careful path) are appended to ``rest`` (which
        is returned) for :meth:`decrypt_batch` or the caller's own handling."""
        if rest is None:
            rest = []
        total = len(buffer)
        if segment <= 0 or segment > total:
            segment = total
        if not total:
            rest.append(buffer)
        elif self._fast(-(-total // segment), total):
            self._open_fast(None, buffer, segment, out, log, now, rest)
        else:
            rest += [buffer[start : start + segment] for start in range(0, total, segment)]
        return rest

    def _open_fast(
        self,
        packets: Sequence[Packet] | None,
        buffer: bytes | None,
        segment: int,
        out: list[bytes],
        log: DropLog | None,
        now: float,
        rest: list[bytes] | None,
    ) -> None:
        """The hot loop (see :meth:`_fast` for when it applies): the replay window, the AEAD
        open and the IPv4 selectors inlined, over a list of packets or over one GRO buffer.
        Same checks and order as :meth:`decrypt`; anything unusual after the ICV verified
        (padding, Next Header, a non-IPv4 inner packet) goes through :meth:`_inner`.
        The buffer walk and the list walk below repeat each other on purpose: one loop per
        input shape keeps a per-packet branch out of the hottest code of the data path."""
        engine, ranges = self.engine, self._ranges
        assert isinstance(engine, AeadEngine) and ranges is not None  # as _fast checked (once a batch)
        decrypt = engine._decrypt
        salt = engine._salt
        window = self._window()
        bits = window._bits
        if bits is None:
            bits = window._bits = bytearray(window._span >> 3)
        top = window.top
        base = window._base
        span = window._span
        size = window.size
        src_lo, src_hi, dst_lo, dst_hi = ranges
        unpack = _unpack_two
        trailers = _IPV4_TRAILERS
        append = out.append
        drop = self._drop
        accepted = accepted_bytes = 0
        try:
            if buffer is not None:
                assert rest is not None  # decrypt_buffer passes its list with the buffer
                spi = self.spi
                view = memoryview(buffer)
                total = len(buffer)
                full = total - total % segment if segment >= 34 else 0
                before = len(out)
                for start in range(0, full, segment):
                    packet_spi, seq = unpack(buffer, start)
                    if packet_spi != spi:
                        rest.append(buffer[start : start + segment])
                        continue
                    if seq <= top:  # ahead of the window is new; else look the number up
                        if seq == 0 or top - seq >= size:
                            drop(DropReason.REPLAY, log, now)
                            continue
                        offset = seq - base
                        if bits[offset >> 3] >> (offset & 7) & 1:
                            drop(DropReason.REPLAY, log, now)
                            continue
                    stop = start + segment
                    try:
                        plaintext = decrypt(
                            salt + buffer[start + 8 : start + 16],
                            view[start + 16 : stop],
                            buffer[start : start + 8],
                        )
                    except InvalidTag:
                        drop(DropReason.BAD_ICV, log, now)
                        continue
                    offset = seq - base
                    if seq > top:
                        top = seq
                        if offset >= span:
                            window.top = top
                            window._rebase(seq)
                            base = window._base
                            offset = seq - base
                    bits[offset >> 3] |= 1 << (offset & 7)
                    pad = plaintext[-2]
                    end = len(plaintext) - 2 - pad
                    # padding 1, 2, 3, ..., its length and Next Header 4 (IPv4) in one compare
                    if plaintext[end:] != trailers[pad] or end < 20 or plaintext[0] & 0xF0 != 0x40:
                        inner = self._inner(plaintext, log, now)
                        if inner.__class__ is bytes:
                            append(inner)
                        continue
                    src, dst = unpack(plaintext, 12)
                    if src < src_lo or src > src_hi or dst < dst_lo or dst > dst_hi:
                        drop(DropReason.POLICY, log, now)
                        continue
                    append(plaintext[:end])
                if full < total:
                    # a shorter last datagram (or runts) for the careful path, after the
                    # other SAs' datagrams before it: the order of an SA's packets is kept
                    rest += [buffer[start : start + segment] for start in range(full, total, segment)]
                accepted = len(out) - before
                accepted_bytes = sum(map(len, out[before:])) if accepted else 0
                return
            assert packets is not None  # decrypt_batch passes its packets without a buffer
            for packet in packets:
                if len(packet) < 34:
                    drop(DropReason.MALFORMED, log, now)
                    continue
                seq = unpack(packet, 0)[1]
                if seq <= top:
                    if seq == 0 or top - seq >= size:
                        drop(DropReason.REPLAY, log, now)
                        continue
                    offset = seq - base
                    if bits[offset >> 3] >> (offset & 7) & 1:
                        drop(DropReason.REPLAY, log, now)
                        continue
                try:
                    plaintext = decrypt(salt + packet[8:16], packet[16:], packet[:8])
                except InvalidTag:
                    drop(DropReason.BAD_ICV, log, now)
                    continue
                offset = seq - base
                if seq > top:
                    top = seq
                    if offset >= span:
                        window.top = top
                        window._rebase(seq)
                        base = window._base
                        offset = seq - base
                bits[offset >> 3] |= 1 << (offset & 7)
                pad = plaintext[-2]
                end = len(plaintext) - 2 - pad
                if plaintext[end:] != trailers[pad] or end < 20 or plaintext[0] & 0xF0 != 0x40:
                    inner = self._inner(plaintext, log, now)
                    if inner.__class__ is bytes:
                        append(inner)
                        accepted += 1
                        accepted_bytes += len(inner)
                    continue
                src, dst = unpack(plaintext, 12)
                if src < src_lo or src > src_hi or dst < dst_lo or dst > dst_hi:
                    drop(DropReason.POLICY, log, now)
                    continue
                append(plaintext[:end])
                accepted += 1
                accepted_bytes += end
        finally:
            window.top = top
            self.packets += accepted
            self.bytes += accepted_bytes

    def decrypt_batch(
        self,
        packets: Sequence[Packet],
        out: list[bytes] | None = None,
        log: DropLog | None = None,
        now: float = 0.0,
    ) -> list[bytes]:
        """The inner packets of a batch of ESP packets, appended to ``out`` (or a new list)
        in order; drops are counted (and logged through ``log``), never raised."""
        if out is None:
            out = []
        if self._fast(len(packets), sum(map(len, packets))):
            self._open_fast(packets, None, 0, out, log, now, None)
            return out
        if (
            self.hard_expired
            or not self._window_size
            or self.packets + len(packets) >= self._count_mark
            or self.bytes + sum(map(len, packets)) >= self._byte_mark
        ):
            for packet in packets:  # a lifetime mark may fall inside this batch: one by one
                result = self.decrypt(packet, log, now)
                if result.__class__ is bytes:
                    out.append(result)
            return out
        engine = self.engine
        open_packet = engine.opener
        min_len = engine.min_len
        block = engine.block
        fixed = engine.fixed_len
        window = self._window()
        check = window.check
        update = window.update
        infer = window.infer_esn if self.esn else None
        nh_versions = self._nh_versions
        policy = self._policy
        unpack = _unpack_seq
        suffixes = PAD_SUFFIXES
        append = out.append
        accepted = accepted_bytes = 0
        for packet in packets:
            n = len(packet)
            if n < min_len or (n - fixed) % block:
                self._drop(DropReason.MALFORMED, log, now)
                continue
            seq = unpack(packet, 4)[0]
            if infer is not None:
                seq = infer(seq)
            if seq <= window.top and not check(seq):  # ahead of the window: new, skip the call
                self._drop(DropReason.REPLAY, log, now)
                continue
            plaintext = open_packet(packet, seq)
            if plaintext is None:
                self._drop(DropReason.BAD_ICV, log, now)
                continue
            update(seq)
            pad = plaintext[-2]
            end = len(plaintext) - 2 - pad
            if end < 0 or not plaintext.endswith(suffixes[pad], 0, -1):
                self._drop(DropReason.PADDING, log, now)
                continue
            version = nh_versions[plaintext[-1]]
            inner = plaintext[:end]
            if not version or end < (20 if version == 4 else 40) or inner[0] >> 4 != version:
                next_header = plaintext[-1]
                if next_header == 59:
                    reason = DropReason.DUMMY
                elif not version and next_header in (4, 41):
                    reason = DropReason.POLICY
                else:
                    reason = DropReason.MALFORMED
                self._drop(reason, log, now)
                continue
            if policy is not None and not policy(inner):
                self._drop(DropReason.POLICY, log, now)
                continue
            append(inner)
            accepted += 1
            accepted_bytes += end
        self.packets += accepted
        self.bytes += accepted_bytes
        return out


# ---------------------------------------------------------------------------- from IKE


class NegotiatedChild(Protocol):
    """What a negotiated child SA gives ESP: the fields :func:`sa_pair_from_child` reads.

    The IKE core's ``tunvpn.ike.events.ChildSAEstablished`` has them (mypy checks that it fits
    where the data path passes one); ESP names them here so that it imports nothing of
    ``tunvpn.ike``. Read-only, as the event is frozen.
    """

    @property
    def spi_in(self) -> int: ...
    @property
    def spi_out(self) -> int: ...
    @property
    def transform(self) -> int: ...
    @property
    def key_length(self) -> int | None: ...
    @property
    def integrity(self) -> int | None: ...
    @property
    def enc_key_in(self) -> bytes: ...
    @property
    def auth_key_in(self) -> bytes: ...
    @property
    def enc_key_out(self) -> bytes: ...
    @property
    def auth_key_out(self) -> bytes: ...
    @property
    def local_ts(self) -> TrafficSelector: ...
    @property
    def remote_ts(self) -> TrafficSelector: ...
    @property
    def inbound_local_ts(self) -> tuple[TrafficSelector, ...]: ...
    @property
    def lifetime_seconds(self) -> int: ...
    @property
    def lifetime_kilobytes(self) -> int: ...
    @property
    def encapsulation(self) -> int: ...
    @property
    def remote(self) -> tuple[str, int]: ...
    @property
    def esn(self) -> bool: ...


def suite_from_child(transform: int, key_length: int | None, integrity: int | None) -> EspSuite:
    """The :class:`EspSuite` of a Quick Mode result (``ChildSAEstablished`` fields)."""
    # a new name, not ``transform`` again: compiled (mypyc), a variable declared int keeps an
    # int, and ``is`` would compare it with the enum member by identity
    suite_transform = EspTransform(transform)
    if key_length is None:
        key_length = 256 if suite_transform is EspTransform.CHACHA20_POLY1305_PRIVATE else 128
    return EspSuite(suite_transform, key_length, AuthAlgorithm(integrity) if integrity is not None else None)


def sa_pair_from_child(
    event: NegotiatedChild,
    now: float,
    *,
    esn: bool | None = None,
    replay_window: int = DEFAULT_REPLAY_WINDOW,
    soft_fraction: float = DEFAULT_SOFT_FRACTION,
    packets: int | None = None,
) -> tuple[InboundSA, OutboundSA]:
    """The inbound and outbound SA of a negotiated child SA (a ``ChildSAEstablished`` of
    the IKE core, or anything with its fields: :class:`NegotiatedChild`), ready for
    ``SadTable.install``.

    :param esn: override the event's ``esn`` (what Quick Mode negotiated, RFC 4304); ``None``
        takes it from the event. An ESN SA opens packets on the careful path, not the
        inlined AEAD loop (:meth:`InboundSA._fast`).
    :param packets: an optional packet limit of our own (IKEv1 has none to negotiate).
    :raises ValueError: an AES-CBC SA without integrity (confidentiality-only ESP is not
        used: RFC 8221 section 5), or a transform the data path does not implement.
    """
    if esn is None:
        esn = event.esn
    suite = suite_from_child(event.transform, event.key_length, event.integrity)
    if not suite.aead and suite.integrity is None:
        raise ValueError(f"refusing {suite.name}: ESP without integrity (RFC 8221 section 5)")
    lifetime = Lifetime(
        seconds=event.lifetime_seconds or None,
        kilobytes=event.lifetime_kilobytes or None,
        packets=packets,
        soft_fraction=soft_fraction,
    )
    inbound = InboundSA(
        event.spi_in,
        suite,
        event.enc_key_in,
        event.auth_key_in,
        esn=esn,
        lifetime=lifetime,
        now=now,
        replay_window=replay_window,
        remote_ts=event.remote_ts,
        local_ts=event.local_ts,
        peer=event.remote,
        allowed_local=event.inbound_local_ts,
    )
    outbound = OutboundSA(
        event.spi_out,
        suite,
        event.enc_key_out,
        event.auth_key_out,
        esn=esn,
        lifetime=lifetime,
        now=now,
        remote_ts=event.remote_ts,
        local_ts=event.local_ts,
        peer=event.remote,
        udp_encap=event.encapsulation in _UDP_ENCAPSULATION,
    )
    return inbound, outbound


def encrypt_batch(sa: OutboundSA, packets: Sequence[Packet]) -> list[bytes]:
    """``sa.encrypt_batch(packets)``: ESP packets for a batch of inner packets."""
    return sa.encrypt_batch(packets)


def decrypt_batch(
    sa: InboundSA, packets: Sequence[Packet], log: DropLog | None = None, now: float = 0.0
) -> list[bytes]:
    """``sa.decrypt_batch(packets)``: the inner packets of a batch of ESP packets."""
    return sa.decrypt_batch(packets, None, log, now)
