"""The sans-I/O IKEv1 engine: one object per local endpoint (a gateway or a client).

Its whole surface, as in aioquic's ``QuicConnection``:

* ``receive_datagram(data, remote, local, now)`` — feed every UDP payload that arrived on
  the IKE ports (500, or 4500 with the non-ESP marker still on).
* ``datagrams_to_send()`` — what to send: ``(data, remote, local_port)`` triples.
* ``get_timer()`` / ``handle_timer(now)`` — one timer for retransmissions, DPD, NAT-T
  keepalives and half-open expiry.
* ``next_event()`` — drain :mod:`tunvpn.ike.events`.
* commands: ``initiate``, ``xauth_reply``, ``xauth_verdict``, ``grant``,
  ``request_mode_config``, ``mode_config_reply``, ``push_mode_config``, ``start_child``,
  ``delete_child``, ``delete_ike_sa``, ``note_peer_activity``, ``esp_peer_seen``.

It never touches a socket, a clock, a thread or a plugin. Bad input becomes a Notify plus
a :class:`~tunvpn.ike.events.ProtocolError` event, never a traceback. Which message is legal
when is decided by the tables of :mod:`tunvpn.ike.states`, in ``_receive_exchange`` alone.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Mapping

from ..ipsec.budget import Budget
from ..ipsec.selectors import TrafficSelector
from ..ipsec.udpencap import NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify_datagram
from . import events as ev
from . import exchanges, fragments, phase1, quickmode, rekey, states, transaction
from .config import XAUTH_METHODS, ChildPolicy, EngineConfig, PeerPair
from .constants import (
    HEADER_SIZE,
    DHGroup,
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    XauthType,
)
from .deleted import RecentlyDeleted
from .errors import LocalProtocolError, RemoteProtocolError
from .firstlook import Verdict, first_look
from .identity import Identity
from .messages import DataAttribute, Header, RawPayload, SAPayload, decode_header
from .modecfg import ModeConfig
from .proposals import ChildProposal
from .retransmit import Retransmission
from .sa import Access, Address, ExchangeKind, ExState, IkeSA, P1State, Role, message_digest

log = logging.getLogger(__name__)

Datagram = tuple[bytes, Address, int]
"""(payload, remote address, local port to send from)."""

PHASE1_EXCHANGES = (ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE, ExchangeType.BASE)
EXCHANGE_KINDS: dict[int, ExchangeKind] = {
    int(ExchangeType.TRANSACTION): ExchangeKind.TRANSACTION,
    int(ExchangeType.QUICK_MODE): ExchangeKind.QUICK,
    int(ExchangeType.INFORMATIONAL): ExchangeKind.INFORMATIONAL,
}
MAX_HELD = 4
"""Informational payloads kept per ISAKMP SA until its login is granted."""
FULL_PASS_INTERVAL = 1.0
"""Seconds between two timer passes over every ISAKMP SA (between them only the due ones)."""
BAD_INPUT_SUMMARY_INTERVAL = 10.0
"""Seconds over which bad unauthenticated input is summed up in one log line (issue 14)."""
RECENTLY_DELETED = "message for a recently deleted ISAKMP SA"
"""The :attr:`IkeEngine.drops` reason of a late message under the cookies of an ISAKMP SA we
deleted and whose peer knows it (:mod:`tunvpn.ike.deleted`, issue 22): no answer, no
ProtocolError event, no summary line."""


class IkeEngine:
    """All ISAKMP SAs of one local endpoint."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        ike_port: int = 500,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.ike_port = ike_port
        self._random = random_bytes
        self._sas: dict[bytes, IkeSA] = {}  # keyed by our own cookie
        self._half_open: dict[tuple[bytes, Address], bytes] = {}  # (peer cookie, peer) -> our cookie
        self._half_open_keys: dict[bytes, tuple[bytes, Address]] = {}  # our cookie -> its key above
        self._half_open_by_source: dict[str, dict[bytes, None]] = {}
        """Source address -> our cookies of its half-open phase 1 SAs, oldest first."""
        self._out: list[Datagram] = []
        self._pairs: dict[Address, PeerPair] = {}
        """Introduced peers by announced endpoint (:meth:`set_pairs`)."""
        self._fragments = fragments.Reassembler()
        """Pieces of IKE-fragmented messages waiting for the rest (issue 16)."""
        self._events: deque[ev.Event] = deque()
        self._spis: set[int] = set()
        self.drops: Counter[str] = Counter()
        """Messages dropped without an answer, by reason (replayed message IDs, ...)."""
        self._secret: bytes | None = None
        """Random key of the decoy pre-shared keys and the Base Mode cookies, drawn on first use."""
        self._unreported: Counter[str] = Counter()
        """Bad input since the last summary line, by reason (:meth:`_bad_input`)."""
        self._unreported_since: float | None = None
        self._phase1_drops: dict[bytes, RemoteProtocolError] | None = None
        """The last refused message of each phase 1 in progress (by our cookie), for the reason
        given when it then times out."""
        self.withheld: Counter[str] = Counter()
        """Answers not sent to unverified senders, by reason (notify budget, size; issue 14)."""
        self._budgets: dict[str, Budget] = {}
        self._deadline_heap: list[tuple[float, bytes]] = []
        """(deadline, our cookie) of the ISAKMP SAs, stale entries skipped (:meth:`get_timer`)."""
        self._deadline_of: dict[bytes, float] = {}
        self._dirty: set[bytes] = set()
        self._next_full_pass: float | None = None
        """What unverified senders may cost (:meth:`spend`), made on first use."""
        self.recently_deleted = RecentlyDeleted()
        """ISAKMP SAs we deleted lately, their peers told: late messages for them are dropped
        quietly (:meth:`_deleted`, issue 22)."""

    # ------------------------------------------------------------------ public surface

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def ike_sas(self) -> list[IkeSA]:
        return list(self._sas.values())

    def get_sa(self, sa_id: bytes) -> IkeSA:
        for cookie in (sa_id[8:16], sa_id[:8]):
            sa = self._sas.get(cookie)
            # the initiator learns the responder cookie later: its first id ends in zeros
            if sa is not None and (sa.sa_id == sa_id or (sa_id[8:] == bytes(8) and sa.icookie == sa_id[:8])):
                self._touch(cookie)  # a command for it: its deadlines may change
                return sa
        raise LocalProtocolError(f"no ISAKMP SA {sa_id.hex()}")

    def receive_datagram(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """Process one UDP payload received on an IKE port."""
        try:
            self._receive(data, remote, local, now)
        finally:
            self._report_bad_input(now)

    def _receive(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        self.recently_deleted.expire(now)
        if local[1] != self.ike_port or data[:4] == NON_ESP_MARKER:
            # RFC 3948 section 2: on the NAT-T port IKE carries a 4-byte zero marker
            kind = classify_datagram(data)
            if kind is DatagramKind.KEEPALIVE:
                return
            if kind is DatagramKind.ESP:
                self._protocol_error(
                    b"", remote, "ESP packet handed to the IKE engine", None, "ESP on the IKE path"
                )
                return
            if kind is DatagramKind.INVALID:
                self._protocol_error(
                    b"", remote, "not IKE, ESP or a NAT-keepalive (NAT-T port)", None, "not IKE (NAT-T port)"
                )
                return
            data = data[4:]
        self._receive_message(data, remote, local, now)

    def _receive_message(
        self, data: bytes, remote: Address, local: Address, now: float, *, joined: bool = False
    ) -> None:
        """One ISAKMP message (the non-ESP marker off); ``joined``: put together from IKE
        fragments (tunvpn.ike.fragments), which may not be a fragment again."""
        try:
            header = decode_header(data)
        except RemoteProtocolError as exc:
            # no usable cookies: nothing to answer (RFC 2408 section 5.2), just record it
            self._protocol_error(b"", remote, str(exc), None, "malformed ISAKMP header")
            return
        if header.next_payload == PayloadType.FRAGMENT_CISCO:
            if joined:
                self._bad_input("a fragment inside a fragmented message")
            else:
                self._receive_fragment(data, remote, local, now)
            return
        sa = self._find_sa(header, remote)
        try:
            if sa is None:
                self._receive_new(header, data, remote, local, now)
            else:
                self._receive_for(sa, header, data, remote, local, now)
        except RemoteProtocolError as exc:
            self._on_remote_error(sa, header, remote, local, exc, now, len(data))
        finally:
            if sa is not None:
                self._touch(sa.local_cookie)

    def _receive_fragment(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """A piece of an IKE-fragmented message (issue 16): kept until the message is whole,
        then taken as if it had come in one datagram. Only under cookies of an SA we have, or
        for a first message (no responder cookie yet); the joined message must carry the same
        cookies and pass the first look's checks a single datagram passes."""
        if self.config.fragmentation == "no":
            self._bad_input("IKE fragment (fragmentation is off)")
            return
        try:
            piece = fragments.decode(data)
        except RemoteProtocolError:
            self._bad_input("malformed IKE fragment")
            return
        known = self._find_sa(decode_header(data), remote) is not None
        if not known and piece.rcookie != bytes(8):
            if self._late_for_deleted(piece.icookie, piece.rcookie, remote, now):
                return
            self._bad_input("IKE fragment for an unknown ISAKMP SA")
            return
        before = sum(self._fragments.drops.values())
        whole = self._fragments.add(piece, remote, now)
        if sum(self._fragments.drops.values()) != before:
            self._bad_input("IKE fragment over the reassembly limits")
        if whole is None:
            return
        if whole[:16] != piece.icookie + piece.rcookie:
            self._bad_input("fragmented message under other cookies than its fragments")
            return
        look = first_look(whole, lambda cookie: cookie in self._sas)
        if look.verdict is Verdict.DROP:
            self._bad_input(f"fragmented message: {look.reason}")
            return
        self._receive_message(whole, remote, local, now, joined=True)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next. Each ISAKMP SA's next deadline is kept
        in a heap and recomputed only for the SAs an input, a command or a timer touched
        (issue 14: with a thousand clients connected this ran over every SA after every
        datagram); a full pass over all SAs at least every :data:`FULL_PASS_INTERVAL`
        catches what one SA's handling changes in another."""
        self._refresh_deadlines()
        heap, deadline_of = self._deadline_heap, self._deadline_of
        while heap and deadline_of.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # an SA gone, or its deadline moved since
        times = [heap[0][0]] if heap else []
        for cookie in self._half_open_keys:  # insertion order is creation order: the first is the oldest
            oldest = self._sas.get(cookie)
            if oldest is not None:
                times.append(oldest.created + self.config.half_open_timeout)
            break
        if self._sas and self._next_full_pass is not None:
            times.append(self._next_full_pass)
        if self._unreported_since is not None:
            times.append(self._unreported_since + BAD_INPUT_SUMMARY_INTERVAL)
        return min(times) if times else None

    def _sa_deadline(self, cookie: bytes, sa: IkeSA) -> float | None:
        """The next time ``sa`` needs :meth:`_tick_sa` (None: nothing but, for a quiet
        half-open SA, its timeout, which :meth:`get_timer` takes oldest first)."""
        if sa.state is P1State.DEAD or self._waits_only_for_half_open_timeout(cookie, sa):
            return None
        times = [t for t in (sa.sent.at, sa.next_keepalive, sa.expires, sa.login_deadline) if t is not None]
        if sa.rekey_at is not None and sa.rekeying is None:
            times.append(sa.rekey_at)
        if sa.handover_at is not None:
            times.append(sa.handover_at)
        if sa.continued_at is not None:
            times.append(sa.continued_at)
        if sa.established and self.config.dpd_interval > 0 and "dpd" in sa.peer_vendor_ids:
            times.append(exchanges.dpd_due(self, sa))
        if not sa.established:
            times.append(sa.created + self.config.half_open_timeout)
        times.extend(ex.sent.at for ex in sa.exchanges.values() if ex.sent.at is not None)
        return min(times) if times else None

    def _touch(self, cookie: bytes) -> None:
        """``cookie``'s SA may have a new deadline: recomputed at the next :meth:`get_timer`."""
        self._dirty.add(cookie)

    def _refresh_deadlines(self) -> None:
        if len(self._dirty) > len(self._sas):  # cheaper to look at every SA
            self._dirty = set(self._sas)
        for cookie in self._dirty:
            sa = self._sas.get(cookie)
            deadline = self._sa_deadline(cookie, sa) if sa is not None else None
            if deadline is None:
                self._deadline_of.pop(cookie, None)
            elif self._deadline_of.get(cookie) != deadline:
                self._deadline_of[cookie] = deadline
                heapq.heappush(self._deadline_heap, (deadline, cookie))
        self._dirty.clear()
        if len(self._deadline_heap) > 4 * len(self._deadline_of) + 64:  # mostly stale entries
            self._deadline_heap = [(d, c) for c, d in self._deadline_of.items()]
            heapq.heapify(self._deadline_heap)

    def handle_timer(self, now: float) -> None:
        try:
            self._handle_timer(now)
        finally:
            self._report_bad_input(now)

    def _waits_only_for_half_open_timeout(self, cookie: bytes, sa: IkeSA) -> bool:
        """A responder phase 1 that answered a first message and waits for nothing but its
        half-open timeout (what a storm of spoofed first messages leaves: issue 14)."""
        return (
            cookie in self._half_open_keys
            and sa.sent.at is None
            and not sa.exchanges
            and sa.next_keepalive is None
            and sa.expires is None
            and sa.login_deadline is None
            and not sa.established
        )

    def _handle_timer(self, now: float) -> None:
        self.recently_deleted.expire(now)
        timeout = self.config.half_open_timeout
        for cookie in list(self._half_open_keys):  # oldest first: stop at the first not due
            sa = self._sas.get(cookie)
            if sa is None or sa.established:
                continue
            if now < sa.created + timeout:
                break
            self._half_open_timed_out(sa, now)
        self._refresh_deadlines()
        if self._next_full_pass is None or now >= self._next_full_pass:
            due = list(self._sas)  # every SA: what one SA's handling changed in another
            self._next_full_pass = now + FULL_PASS_INTERVAL
        else:
            due = []
            heap, deadline_of = self._deadline_heap, self._deadline_of
            while heap and heap[0][0] <= now:
                deadline, cookie = heapq.heappop(heap)
                if deadline_of.get(cookie) == deadline:
                    del deadline_of[cookie]
                    due.append(cookie)
        for cookie in due:
            sa = self._sas.get(cookie)
            if (
                sa is not None
                and sa.state is not P1State.DEAD
                and not self._waits_only_for_half_open_timeout(cookie, sa)
            ):
                self._tick_sa(sa, now)
            self._touch(cookie)

    def _tick_sa(self, sa: IkeSA, now: float) -> None:
        """What time does to one ISAKMP SA: timeouts, expiry, rekeying, retransmissions, DPD,
        NAT keepalives."""
        timeout = self.config.half_open_timeout
        if not sa.established and now >= sa.created + timeout:
            # a responder SA that heard nothing after a first message (spoofed, or a
            # scan) is counted, not logged: a storm would make a line each (issue 14)
            self._half_open_timed_out(sa, now)
            return
        if sa.expires is not None and now >= sa.expires:
            new = self._sas.get(sa.rekeying) if sa.rekeying is not None else None
            if new is not None and new.handover_at is not None:
                # the new SA logged in and waits for N(SESSION-CONTINUED): hand over now,
                # or the IPsec SAs would go with this one (the Delete lets the peer adopt)
                new.handover_at = None
                rekey.take_over(self, new, now)
                if sa.dead:
                    return
            # a peer that logged in again on a newer SA and did not delete this one yet (its
            # Delete may be on the way): that SA keeps the IPsec SAs, as on the Delete
            rekey.adopt(self, sa, now)
            self.delete_ike_sa(sa.sa_id, now, reason="expired")
            return
        if sa.rekeying is not None and sa.rekeying not in self._sas:
            rekey.failed(self, sa, now)  # the new phase 1 failed: tried again later
        if rekey.orphaned(self, sa):
            self.delete_ike_sa(sa.sa_id, now, reason="the ISAKMP SA it rekeyed is gone")
            return
        if rekey.due(sa, now):
            rekey.start(self, sa, now)
        if sa.handover_at is not None and now >= sa.handover_at:
            sa.handover_at = None
            rekey.take_over(self, sa, now)  # no N(SESSION-CONTINUED) after our new login
        if sa.continued_at is not None and now >= sa.continued_at:
            rekey.resend_continued(self, sa, now)  # the peer still has the old SA
        if sa.login_deadline is not None and now >= sa.login_deadline:
            log.info("login of %s not finished within %.0f s", sa.remote[0], self.config.login_timeout)
            self.delete_ike_sa(
                sa.sa_id, now, reason=f"login not finished within {self.config.login_timeout:.0f} s"
            )
            return
        if sa.sent.due(now):
            phase1.retransmit_phase1(self, sa, now)
        for ex in list(sa.exchanges.values()):
            if ex.sent.due(now):
                exchanges.retransmit_exchange(self, sa, ex, now)
        if sa.moved_to is not None:
            rekey.retire(self, sa, now)  # a Quick Mode that held it may have given up
        if sa.dead:  # the retransmissions above may have given up on it
            return
        if sa.established:
            exchanges.dpd_tick(self, sa, now)
        if sa.next_keepalive is not None and now >= sa.next_keepalive:
            self._out.append((NAT_KEEPALIVE, sa.remote, sa.local[1]))
            sa.next_keepalive = now + self.config.keepalive_interval

    def _half_open_timed_out(self, sa: IkeSA, now: float) -> None:
        # a responder SA that heard nothing after a first message (spoofed, or a scan) is
        # counted, not logged: a storm would make a line each (issue 14)
        quiet = _heard_only_first_message(sa) and sa.local_cookie not in (self._phase1_drops or {})
        if quiet:
            self._bad_input("half-open SA timed out after the first message")
        phase1.fail_phase1(self, sa, "phase 1 timed out", None, send_notify=False, quiet=quiet)

    def probe_peer(self, sa_id: bytes, now: float, within: float) -> None:
        """Send a DPD R-U-THERE now (the shell sent traffic and heard nothing back: RFC 3706
        section 5.5); the peer is dead unless something is heard within ``within`` seconds."""
        try:
            exchanges.dpd_probe(self, self.get_sa(sa_id), now, within)
        except LocalProtocolError:
            return

    def unknown_spi(self, spi: int, remote: Address, size: int, now: float) -> None:
        """The data path dropped a ``size``-byte ESP datagram from ``remote`` for an inbound
        SPI it does not have (and no SA being installed has): answer INVALID-SPI within the
        Notify budget (:func:`tunvpn.ike.exchanges.answer_unknown_spi`), so a peer that still
        uses SAs we lost (we restarted) finds out at once."""
        exchanges.answer_unknown_spi(self, spi, remote, size, now)

    def note_peer_activity(self, sa_id: bytes, now: float) -> None:
        """The data path saw authenticated ESP from this peer: no DPD needed (RFC 3706 5.3)."""
        try:
            sa = self.get_sa(sa_id)
        except LocalProtocolError:
            return
        sa.last_heard = max(sa.last_heard, now)

    def esp_peer_seen(self, sa_id: bytes, remote: Address, now: float) -> bool:
        """The data path saw ESP that passed its ICV and replay check arrive from ``remote``
        on an IPsec SA of this ISAKMP SA: a peer behind a NAT whose mapping changed is
        followed there (RFC 3948 section 4 / RFC 3947 section 4), with a
        :class:`~tunvpn.ike.events.PeerAddressChanged` event for the shell to move the
        outbound SAs too. A peer not behind a NAT is not moved. Returns whether it moved."""
        try:
            sa = self.get_sa(sa_id)
        except LocalProtocolError:
            return False
        if remote == sa.remote or not sa.established:
            return False
        if not sa.nat_remote:
            self.drops["address change of a peer not behind a NAT"] += 1
            return False
        old, sa.remote = sa.remote, remote
        sa.last_heard = max(sa.last_heard, now)
        self._events.append(ev.PeerAddressChanged(sa.sa_id, old, remote))
        return True

    # ------------------------------------------------------------------ commands: phase 1

    def initiate(
        self,
        remote: Address,
        local: Address,
        now: float,
        *,
        mode: str = "main",
        local_id: Identity | None = None,
        xauth: bool = False,
        groups: list[DHGroup] | None = None,
        pair: PeerPair | None = None,
    ) -> bytes:
        """Start phase 1 towards ``remote``; returns the SA id. ``xauth`` offers XAUTH methods.
        ``pair``: a peer the gateway introduced (issue 17): Main Mode on the NAT-T port with
        the pair's key, our identity for it, and its identity checked."""
        return phase1.initiate(
            self, remote, local, now, mode=mode, local_id=local_id, xauth=xauth, groups=groups, pair=pair
        )

    # ------------------------------------------------------------------ commands: introduced peers

    def set_pairs(self, pairs: Mapping[Address, PeerPair]) -> None:
        """The peers the gateway introduced, by the endpoint it announced for each (issue 17),
        or other sites' gateways by address with port 0 (any port; issue 18): the whole set,
        replacing the last one. A client (``responder`` off) answers first
        messages from these endpoints only; SAs with a peer no longer listed are left to the
        shell to delete."""
        self._pairs = dict(pairs)

    def pairs(self) -> dict[Address, PeerPair]:
        return dict(self._pairs)

    # ------------------------------------------------------------------ commands: XAUTH, Mode Config

    def xauth_request(
        self,
        sa_id: bytes,
        now: float,
        fields: tuple[str, ...] = ("user_name", "password"),
        message: str | None = None,
        challenge: bytes | None = None,
        xauth_type: XauthType = XauthType.GENERIC,
    ) -> None:
        """Gateway: ask the client for credentials (:func:`.transaction.xauth_request`)."""
        transaction.xauth_request(self, sa_id, now, fields, message, challenge, xauth_type)

    def xauth_reply(
        self,
        sa_id: bytes,
        now: float,
        *,
        user_name: str,
        password: str | None = None,
        passcode: str | None = None,
        answer: str | None = None,
        next_pin: str | None = None,
    ) -> None:
        """Client: answer the pending XAUTH request."""
        transaction.xauth_reply(
            self,
            sa_id,
            now,
            user_name=user_name,
            password=password,
            passcode=passcode,
            answer=answer,
            next_pin=next_pin,
        )

    def xauth_verdict(self, sa_id: bytes, now: float, ok: bool, message: str | None = None) -> None:
        """Gateway: tell the client whether its credentials were accepted (XAUTH-STATUS)."""
        transaction.xauth_verdict(self, sa_id, now, ok, message)

    def request_mode_config(
        self,
        sa_id: bytes,
        now: float,
        request: ModeConfig | None = None,
        extra_types: tuple[int, ...] = (),
    ) -> None:
        """Client: send a CFG_REQUEST for the standard attributes (and ``extra_types``)."""
        transaction.request_mode_config(self, sa_id, now, request, extra_types)

    def mode_config_reply(
        self,
        sa_id: bytes,
        now: float,
        identifier: int,
        config: ModeConfig,
        extra: tuple[DataAttribute, ...] = (),
    ) -> None:
        """Gateway: answer the client's pending CFG_REQUEST with ``config`` (+ raw ``extra``)."""
        transaction.mode_config_reply(self, sa_id, now, identifier, config, extra)

    def push_mode_config(
        self, sa_id: bytes, now: float, config: ModeConfig, extra: tuple[DataAttribute, ...] = ()
    ) -> int:
        """Gateway: push attributes with CFG_SET; the client answers CFG_ACK
        (:class:`~tunvpn.ike.events.ModeConfigAcknowledged`). Returns the identifier."""
        return transaction.push_mode_config(self, sa_id, now, config, extra)

    # ------------------------------------------------------------------ commands: Quick Mode

    def start_child(
        self,
        sa_id: bytes,
        now: float,
        local_ts: TrafficSelector,
        remote_ts: TrafficSelector,
        proposal: ChildProposal,
        name: str = "",
    ) -> int:
        """Initiate a Quick Mode for one pair of IPsec SAs; returns its message ID."""
        return quickmode.start_child(self, sa_id, now, local_ts, remote_ts, proposal, name)

    def set_child_policies(self, sa_id: bytes, policies: tuple[ChildPolicy, ...]) -> None:
        """Gateway: the phase 2 policies this particular client may set up (per user/group)."""
        self.get_sa(sa_id).child_policies = tuple(policies)

    # ------------------------------------------------------------------ commands: delete

    def delete_child(self, sa_id: bytes, spi_in: int, now: float) -> None:
        """Delete one pair of IPsec SAs (we name our inbound SPI, RFC 2408 section 3.15)."""
        exchanges.delete_child(self, sa_id, spi_in, now)

    def delete_ike_sa(self, sa_id: bytes, now: float, reason: str = "closed") -> None:
        """Delete every child SA, then the ISAKMP SA itself, telling the peer."""
        exchanges.delete_ike_sa(self, sa_id, now, reason)

    # ------------------------------------------------------------------ demultiplexing

    def _find_sa(self, header: Header, remote: Address) -> IkeSA | None:
        zero = bytes(8)
        if header.rcookie != zero:
            sa = self._sas.get(header.rcookie)
            if sa is not None and sa.role is Role.RESPONDER and sa.icookie == header.icookie:
                return sa
        sa = self._sas.get(header.icookie)
        if sa is not None and sa.role is Role.INITIATOR and sa.rcookie in (zero, header.rcookie):
            return sa
        key = self._half_open.get((header.icookie, remote))
        if key is not None and header.rcookie == zero:
            return self._sas.get(key)
        return None

    def _receive_new(self, header: Header, data: bytes, remote: Address, local: Address, now: float) -> None:
        if header.rcookie != bytes(8) and self._late_for_deleted(header.icookie, header.rcookie, remote, now):
            return
        if header.rcookie != bytes(8) or header.message_id != 0 or header.exchange not in PHASE1_EXCHANGES:
            if header.exchange == ExchangeType.INFORMATIONAL and not header.flags & HeaderFlag.ENCRYPTION:
                # an unprotected notify for an SA we do not know (e.g. an answer to our
                # INITIAL-CONTACT after a restart): nothing to do, RFC 2408 section 5.1;
                # but a peer that lost our SAs says so with INVALID-SPI: probe it (issue 15)
                if not exchanges.invalid_spi_hint(self, data, remote, now):
                    self._bad_input("unprotected Informational for an unknown ISAKMP SA")
                return
            if header.rcookie != bytes(8) and not phase1.is_our_cookie(
                self, header.icookie, header.rcookie, remote[0], now
            ):
                # a responder cookie we never gave this address (RFC 2408 2.5.3): forged or
                # guessed, or of an SA we lost in a restart. An encrypted message after phase
                # 1 gets a budgeted INVALID-COOKIE no larger than itself (issue 15: the peer
                # then probes us and logs in again); anything else gets nothing
                if header.flags & HeaderFlag.ENCRYPTION and header.exchange not in PHASE1_EXCHANGES:
                    phase1.answer_lost_sa(self, header, remote, local, now, len(data))
                    return
                self._bad_input("responder cookie that is not ours")
                return
            raise RemoteProtocolError(
                "message for an unknown ISAKMP SA", NotifyType.INVALID_COOKIE, "header.cookies", 0
            )
        # a client starts its own phase 1 exchanges and answers only the peers its gateway
        # introduced, at the endpoint the gateway announced (issue 17); a gateway answers
        # everyone, another site's gateway with that pair's key (issue 18); pairs in Main Mode
        pair = self._pairs.get(remote) or self._pairs.get((remote[0], 0))  # port 0: any port
        if pair is None and not self.config.responder:
            self._bad_input("first message to a peer that answers none")
            return
        if pair is not None and header.exchange != ExchangeType.IDENTITY_PROTECTION:
            self._bad_input("first message of a pair not in Main Mode")
            return
        if not self._admit_half_open(remote):
            return
        phase1.start_responder(self, header, data, remote, local, now, pair=pair)

    # ------------------------------------------------------------------ half-open phase 1 SAs

    def spend(self, budget: str, source: str, now: float) -> bool:
        """Whether ``source`` may have one more unit of ``budget`` (a field of the config:
        ``aggressive_budget``, ``notify_budget``) at ``now``: per source and in total
        (tunvpn.ipsec.budget, issue 14). The caller counts a refusal."""
        spent = self._budgets.get(budget)
        if spent is None:
            rate, burst, total_rate, total_burst = getattr(self.config, budget)
            spent = self._budgets[budget] = Budget(rate, burst, total_rate, total_burst, now=now)
        return spent.allow(source, now)

    def knows_cookie(self, cookie: bytes) -> bool:
        """Whether ``cookie`` is our cookie of an ISAKMP SA, or of one we deleted lately (its
        peer's late messages are dropped here, quietly: issue 22) (dict lookups, safe to call
        from the data thread to put messages of known SAs first: shell.udp.IkeInbox)."""
        return cookie in self._sas or self.recently_deleted.knows(cookie)

    def holds_half_open(self, icookie: bytes, remote: Address) -> bool:
        """Whether a phase 1 that ``remote`` started under ``icookie`` is held half-open (a
        dict lookup: the shell's first look lets an exact retransmission through uncharged)."""
        return (icookie, remote) in self._half_open

    def half_open_count(self) -> int:
        """Responder phase 1 SAs not established yet (bounded by ``max_half_open``)."""
        return len(self._half_open_keys)

    def _admit_half_open(self, remote: Address) -> bool:
        """Whether a new first message from ``remote`` may start a phase 1 (issue 14).

        Each source address may hold ``max_half_open_per_source`` half-open SAs (strongSwan's
        ``block_threshold``), all sources together ``max_half_open``. When the global limit is
        reached, a source holding fewer than the busiest one still gets in: the oldest
        half-open SA of the busiest source that has heard only its first message (a spoofed
        sender never answers) is dropped for it. An SA whose peer answered our reply (it
        receives at its address) is never evicted. So a storm from spoofed addresses keeps
        the state bounded and cannot lock out a user whose address is not in it."""
        source = self._half_open_by_source.get(remote[0])
        held = len(source) if source else 0
        if held >= self.config.max_half_open_per_source:
            self._bad_input("half-open limit per source")
            return False
        if len(self._half_open_keys) < self.config.max_half_open:
            return True
        for busiest in sorted(self._half_open_by_source.values(), key=len, reverse=True):
            if len(busiest) <= held:
                break
            for cookie in busiest:
                sa = self._sas.get(cookie)
                if sa is None or _heard_only_first_message(sa):
                    self._bad_input("half-open SA evicted for another source")
                    if sa is not None:
                        if self._phase1_drops:
                            self._phase1_drops.pop(cookie, None)
                        self._remove_sa(sa)
                    else:
                        self._end_half_open(cookie)
                    return True
        self._bad_input("half-open limit")
        return False

    def _start_half_open(self, sa: IkeSA, key: tuple[bytes, Address]) -> None:
        """Record a new responder SA as half-open (phase1.start_responder)."""
        self._half_open[key] = sa.local_cookie
        self._half_open_keys[sa.local_cookie] = key
        self._half_open_by_source.setdefault(key[1][0], {})[sa.local_cookie] = None

    def _end_half_open(self, cookie: bytes) -> None:
        """The SA of our ``cookie`` is established or gone: no longer half-open."""
        key = self._half_open_keys.pop(cookie, None)
        if key is None:
            return
        self._half_open.pop(key, None)
        source = self._half_open_by_source.get(key[1][0])
        if source is not None:
            source.pop(cookie, None)
            if not source:
                del self._half_open_by_source[key[1][0]]

    def _receive_for(
        self, sa: IkeSA, header: Header, data: bytes, remote: Address, local: Address, now: float
    ) -> None:
        if sa.state is P1State.DEAD:
            return
        if header.message_id == 0 and header.exchange != ExchangeType.INFORMATIONAL:
            if header.exchange != sa.exchange:
                raise RemoteProtocolError(
                    f"phase 1 message of exchange {header.exchange} in a {sa.exchange} exchange",
                    NotifyType.INVALID_EXCHANGE_TYPE,
                    "header.exchange",
                    18,
                )
            if sa.sent.message and message_digest(data) == sa.last_in:
                # RFC 2408 section 5 / RFC 2409: a retransmitted request gets our last answer
                self._emit(sa, sa.sent.message, again=True)
                return
            if sa.established:
                # a late duplicate of a message we already answered differently, or a forgery
                # under known cookies: counted, nothing else (no answer, no log line)
                self.drops["phase 1 message for an established ISAKMP SA"] += 1
                return
            self._receive_phase1_from(sa, header, data, remote, local, now)
        else:
            self._receive_exchange(sa, header, data, remote, local, now)

    def _receive_phase1_from(
        self, sa: IkeSA, header: Header, data: bytes, remote: Address, local: Address, now: float
    ) -> None:
        """Phase 1 follows the peer to port 4500 (RFC 3947 section 4) on the message that
        carries the float; the move stands only if that message was accepted."""
        before = (sa.remote, sa.local, sa.floated)
        moved = remote != sa.remote
        if moved:
            sa.remote = remote
            if local[1] != self.ike_port:
                sa.floated, sa.local = True, local
        try:
            phase1.receive_phase1(self, sa, header, data, now)
        except RemoteProtocolError:
            if moved:
                sa.remote, sa.local, sa.floated = before
            raise
        if moved and sa.state is not P1State.DEAD:
            self._events.append(ev.PeerAddressChanged(sa.sa_id, before[0], remote))

    def _follow_peer(
        self, sa: IkeSA, remote: Address, local: Address
    ) -> tuple[Address, Address, bool] | None:
        """NAT-T (RFC 3947 section 4): follow the peer to a new address if it is behind a NAT
        (or to the NAT-T port on the first message that floats). Called only for a message
        with a new message ID; returns what to restore if the message then fails its HASH
        (a forgery, or garbage with the right cookies, moves nothing)."""
        if remote == sa.remote:
            return None
        first_float = sa.natt and not sa.floated and local[1] != self.ike_port and remote[0] == sa.remote[0]
        if not (sa.nat_remote or first_float):
            self.drops["address change of a peer not behind a NAT"] += 1
            log.debug("%s moved to %s:%d, but it is not behind a NAT: ignored", sa.remote[0], *remote)
            return None
        before = (sa.remote, sa.local, sa.floated)
        sa.remote = remote
        if local[1] != self.ike_port:
            sa.floated = True
            sa.local = local
        return before

    def _moved(self, sa: IkeSA, before: tuple[Address, Address, bool] | None, verified: bool) -> None:
        """Confirm (an event) or undo a move of :meth:`_follow_peer`."""
        if before is None:
            return
        if verified:
            self._events.append(ev.PeerAddressChanged(sa.sa_id, before[0], sa.remote))
        else:
            sa.remote, sa.local, sa.floated = before

    # ------------------------------------------------------------------ exchanges (states.py)

    def _receive_exchange(
        self, sa: IkeSA, header: Header, data: bytes, remote: Address, local: Address, now: float
    ) -> None:
        """The one place where a message under an ISAKMP SA is checked against the tables of
        states.py before any handler runs."""
        mid = header.message_id
        ex = sa.exchanges.get(mid)
        if ex is not None and data == ex.last_in:
            # a retransmitted request: answer again, or stay quiet while the user or the shell
            # has not answered yet (its IV has already moved on, it must not be decrypted again)
            if ex.sent.message and ex.answered:
                self._emit(sa, ex.sent.message, again=True)
            return
        if mid in sa.completed:
            # RFC 2408 section 3.1: a message ID is used once per ISAKMP SA; a finished
            # exchange is never processed again (an old Quick Mode replayed, say)
            self.drops["message ID of a finished exchange"] += 1
            log.debug("dropped a message for finished exchange %#x from %s", mid, remote[0])
            return
        if header.exchange == ExchangeType.INFORMATIONAL and not header.flags & HeaderFlag.ENCRYPTION:
            phase1.unprotected_informational(self, sa, header, data, now)
            return
        if not sa.established:
            raise RemoteProtocolError(
                "protected exchange before phase 1 completed",
                NotifyType.INVALID_EXCHANGE_TYPE,
                "header.exchange",
                18,
            )
        if not header.flags & HeaderFlag.ENCRYPTION:
            raise RemoteProtocolError(
                "exchange under an ISAKMP SA must be encrypted", NotifyType.INVALID_FLAGS, "header.flags", 19
            )
        kind = EXCHANGE_KINDS.get(header.exchange)
        if kind is None:
            raise RemoteProtocolError(
                f"exchange type {header.exchange} not supported",
                NotifyType.UNSUPPORTED_EXCHANGE_TYPE,
                "header.exchange",
                18,
            )
        running = sum(1 for e in sa.exchanges.values() if e.state is not ExState.DONE)
        if ex is None and len(sa.completed) + running >= self.config.max_exchanges:
            log.warning("%s used %d exchanges on one ISAKMP SA", sa.remote[0], self.config.max_exchanges)
            self.delete_ike_sa(
                sa.sa_id, now, reason=f"too many exchanges on one ISAKMP SA ({self.config.max_exchanges})"
            )
            return
        known = ex is not None and ex.kind is not ExchangeKind.UNKNOWN
        try:
            payloads = sa.open(header, data)
        except RemoteProtocolError:
            if not known:
                sa.exchanges.pop(mid, None)
            raise
        if kind is ExchangeKind.INFORMATIONAL:
            sa.exchanges.pop(mid, None)
            rest = sa.check_hash(mid, payloads)
            sa.completed.add(mid)
            self._heard(sa, now)
            self._moved(sa, self._follow_peer(sa, remote, local), verified=True)
            self._informational(sa, rest, now)
            return
        ex = sa.exchanges[mid]
        if not known:
            ex.kind = kind
        elif ex.kind is not kind:
            raise RemoteProtocolError(
                f"message ID {mid:#x} belongs to a {ex.kind} exchange",
                NotifyType.INVALID_MESSAGE_ID,
                "header.message_id",
                20,
            )
        message = states.classify(kind, ex.state, payloads)
        transition = states.EXCHANGE_TABLE.get((kind, ex.state, message))
        try:
            if transition is None or sa.role not in transition.roles:
                raise RemoteProtocolError(
                    f"{message.value} not allowed in a {kind} exchange in state {ex.state}"
                    + ("" if transition is None else f" on the {sa.role.value} side"),
                    NotifyType.INVALID_MESSAGE_ID if transition is None else NotifyType.INVALID_PAYLOAD_TYPE,
                    "header.message_id",
                    20,
                )
            if transition.access is not None and sa.access < transition.access:
                exc = RemoteProtocolError(
                    f"{message.value} refused: the login is not finished ({sa.access.name})",
                    NotifyType.AUTHENTICATION_FAILED,
                    "header.exchange",
                )
                exc.notify_spi = _quick_mode_spi(payloads) if kind is ExchangeKind.QUICK else None
                raise exc
            # the answer goes where the message came from, if the handler verifies its HASH
            before = self._follow_peer(sa, remote, local)
            answered, ex.answered = ex.answered, False  # until something answers this message
            try:
                transition.handler(self, sa, ex, payloads, now)
            except RemoteProtocolError:
                self._moved(sa, before, verified=False)
                ex.answered = answered  # refused: the last message taken is still answered
                raise
            self._moved(sa, before, verified=True)
        except RemoteProtocolError:
            if ex.state is ExState.NEW:
                sa.exchanges.pop(mid, None)
            raise
        ex.last_in = data
        self._heard(sa, now)
        if sa.state is P1State.DEAD:
            return
        if transition.next_state is ExState.DONE:
            exchanges.exchange_done(self, sa, ex)
            if sa.moved_to is not None:
                rekey.retire(self, sa, now)  # rekeyed: it waited for this Quick Mode
        else:
            ex.state = transition.next_state

    # ------------------------------------------------------------------ sending (retransmit.py)

    def _send(self, sa: IkeSA, sent: Retransmission, data: bytes, now: float, *, expect_reply: bool) -> None:
        """Send one message of phase 1 or of an exchange, kept in ``sent`` to be sent again
        until its answer comes (if ``expect_reply``) and to answer a retransmitted request."""
        sent.sent(data, now, self.config.retransmit_base, expect_reply=expect_reply)
        self._emit(sa, data)

    def _send_again(self, sa: IkeSA, sent: Retransmission, now: float) -> bool:
        """The one retransmission path of phase 1 and the exchanges: send the kept message
        again with the delay doubled; False once ``retransmit_tries`` are used up."""
        data = sent.again(now, self.config.retransmit_base, self.config.retransmit_tries)
        if data is None:
            return False
        self._emit(sa, data, again=True)
        return True

    def _emit(self, sa: IkeSA, data: bytes, *, again: bool = False) -> None:
        """Queue one message of ``sa`` (``again``: a retransmission), cut into IKE fragments
        when it is larger than ``fragment_size`` allows and the peer takes them
        (:meth:`_fragmenting`)."""
        room = self._datagram_room(sa)
        if len(data) > room and self._fragmenting(sa, again):
            try:
                pieces = fragments.split(
                    data, aggressive=sa.exchange == ExchangeType.AGGRESSIVE, max_datagram=room
                )
            except ValueError as exc:
                log.warning("IKE message to %s not fragmented: %s", sa.remote[0], exc)
            else:
                self._out.extend((sa.wrap(piece), sa.remote, sa.local[1]) for piece in pieces)
                return
        self._out.append((sa.wrap(data), sa.remote, sa.local[1]))

    def _datagram_room(self, sa: IkeSA) -> int:
        """The octets of one IKE message that fit a datagram of ``fragment_size`` to ``sa``'s
        peer: IP and UDP headers off, and the non-ESP marker on the NAT-T port."""
        overhead = (40 if ":" in sa.remote[0] else 20) + 8 + (4 if sa.floated else 0)
        return self.config.fragment_size - overhead

    def _fragmenting(self, sa: IkeSA, again: bool) -> bool:
        """Whether ``sa``'s large messages go as IKE fragments: always with ``fragmentation =
        force``; with ``yes`` when the peer announced them, and for our first message (the
        peer's answer, and its Vendor IDs, not there yet) on every other retransmission, the
        first one first: the first try may have been lost as IP fragments on a path that drops
        them, or the peer may not know IKE fragments (the whole message again then)."""
        mode = self.config.fragmentation
        if mode == "force":
            return True
        if mode == "no":
            return False
        if "fragmentation" in sa.peer_vendor_ids:
            return True
        first_message = sa.role is Role.INITIATOR and sa.rcookie == bytes(8)
        return again and first_message and sa.sent.count % 2 == 1

    def _heard(self, sa: IkeSA, now: float) -> None:
        """A verified message arrived: the peer is alive (RFC 3706 section 5.3)."""
        sa.last_heard = now
        sa.dpd_sent_at = None

    def _informational(self, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
        for raw in payloads:
            message = states.classify_informational(raw.payload)
            if message is None:
                continue
            rule = states.INFORMATIONAL_TABLE[message]
            if rule.access is not None and sa.access < rule.access:
                if rule.held and len(sa.held) < MAX_HELD:
                    log.info("%s from %s held until its login is granted", message.value, sa.remote[0])
                    sa.held.append((rule.handler, raw.payload))
                else:
                    self.drops[f"{message.value} before the login"] += 1
                continue
            rule.handler(self, sa, raw.payload, now)

    # ------------------------------------------------------------------ the login gate

    def _phase1_access(self, sa: IkeSA, initial_contact: bool, now: float) -> None:
        """Phase 1 is done: the first rows of ``states.ACCESS_TABLE``."""
        sa.initial_contact = initial_contact
        xauth = sa.suite is not None and sa.suite.auth in XAUTH_METHODS
        if sa.role is Role.RESPONDER and rekey.continue_login(self, sa, now):
            return  # a rekey bound to a logged-in session: its login counts (rekey.py)
        if sa.role is Role.INITIATOR or not (self.config.login_required or xauth):
            self._grant(sa, now)
        else:
            sa.access = Access.LOGIN_PENDING
            sa.login_deadline = now + self.config.login_timeout

    def _xauth_passed(self, sa: IkeSA, now: float) -> None:
        """The gateway accepted the XAUTH credentials (``xauth_verdict``)."""
        if sa.access >= Access.XAUTH_PASSED:
            return
        if self.config.login_required:
            sa.access = Access.XAUTH_PASSED  # the shell grants once the extra protocols passed
        else:
            self._grant(sa, now)

    def grant(self, sa_id: bytes, now: float) -> None:
        """Gateway: the login of this ISAKMP SA is finished (XAUTH and every extra protocol):
        from now on its peer may make IPsec SAs, and held Informationals (INITIAL-CONTACT)
        take effect."""
        sa = self.get_sa(sa_id)
        if not sa.established:
            raise LocalProtocolError("the ISAKMP SA is not established")
        if sa.xauth_expected and sa.role is Role.RESPONDER and sa.access < Access.XAUTH_PASSED:
            raise LocalProtocolError("grant before XAUTH passed")
        self._grant(sa, now)

    def _grant(self, sa: IkeSA, now: float) -> None:
        if sa.access is Access.GRANTED:
            return
        sa.access = Access.GRANTED
        sa.login_deadline = None
        sa.login_at = sa.login_at or now
        self._events.append(ev.AccessGranted(sa.sa_id, sa.xauth_user))
        if sa.role is Role.RESPONDER and sa.rekey_of is not None:
            rekey.take_over(self, sa, now)  # the IPsec SAs of the session it continues
        held, sa.held = sa.held, []
        if sa.initial_contact:
            exchanges.initial_contact(self, sa, now)
        for handler, payload in held:
            if sa.state is P1State.DEAD:
                return
            try:
                handler(self, sa, payload, now)
            except RemoteProtocolError as exc:
                self._protocol_error(sa.sa_id, sa.remote, str(exc), int(exc.notify))

    def _same_user(self, sa: IkeSA, other: IkeSA) -> bool:
        """Whether ``other`` belongs to the peer that sent INITIAL-CONTACT on ``sa``: the same
        phase 1 identity and the same XAUTH user (strongSwan keys ``unique`` on the XAUTH
        identity); an address identity behind a NAT also needs the same outer address (two
        home NATs hand out the same private addresses)."""
        if other is sa or not other.established or other.role is not sa.role:
            return False
        if other.access is not Access.GRANTED or str(other.peer_id) != str(sa.peer_id):
            return False
        if other.xauth_user != sa.xauth_user:
            return False
        address_id = sa.peer_id is not None and sa.peer_id.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR)
        return not (address_id and (sa.nat_remote or other.nat_remote) and sa.remote[0] != other.remote[0])

    # ------------------------------------------------------------------ errors

    def _on_remote_error(
        self,
        sa: IkeSA | None,
        header: Header,
        remote: Address,
        local: Address,
        exc: RemoteProtocolError,
        now: float,
        request_size: int,
    ) -> None:
        sa_id = sa.sa_id if sa is not None else header.icookie + header.rcookie
        if sa is not None and sa.established:
            # whoever holds the cookies (or an authenticated peer) could send one a datagram:
            # summed up like unauthenticated bad input, the text only at debug level
            log.debug("bad message from %s:%d: %s", remote[0], remote[1], exc)
            self._bad_input(f"bad message for an established ISAKMP SA: {exc.notify.name}")
        else:  # unauthenticated: counted and summed up, never a line each (issue 14)
            where = "no ISAKMP SA" if sa is None else "bad message during phase 1"
            self._bad_input(f"{where}: {exc.notify.name}")
        self._events.append(ev.ProtocolError(sa_id, remote, str(exc), int(exc.notify)))
        if sa is not None and not sa.established:
            # issue 12: whoever sees (or guesses) the cookies can send this, so it must not
            # end a phase 1 in progress: dropped and counted, no Notify (a spoofed source
            # would aim it at the real peer). A verified authentication failure is acted on
            # where it is verified (phase1.receive_phase1); a first message in phase1.start_responder.
            return
        phase1.send_error_notify(self, sa, header, remote, local, exc, now, request_size)

    def _protocol_error(
        self, sa_id: bytes, remote: Address, text: str, notify: int | None, reason: str | None = None
    ) -> None:
        """A ProtocolError event; the input is counted by ``reason`` (a short, fixed text)
        and summed up in one line per interval, not logged each time (issue 14)."""
        if reason is None:
            reason = f"refused: {NotifyType(notify).name}" if notify is not None else text
        self._bad_input(reason)
        self._events.append(ev.ProtocolError(sa_id, remote, text, notify))

    def _bad_input(self, reason: str) -> None:
        """Count one bad message by ``reason`` in :attr:`drops` and for the next summary line."""
        self.drops[reason] += 1
        self._unreported[reason] += 1

    def _report_bad_input(self, now: float) -> None:
        """At most one log line per ``BAD_INPUT_SUMMARY_INTERVAL``: how much bad input was
        dropped since the first one not yet reported, by reason (``now`` only: no clock)."""
        if not self._unreported:
            return
        if self._unreported_since is None:
            self._unreported_since = now
            return
        if now < self._unreported_since + BAD_INPUT_SUMMARY_INTERVAL:
            return
        reasons = ", ".join(f"{reason} x {count}" for reason, count in self._unreported.most_common())
        log.warning(
            "dropped %d bad messages in the last %.0f s: %s",
            self._unreported.total(),
            now - self._unreported_since,
            reasons,
        )
        self._unreported.clear()
        self._unreported_since = None

    def _new_cookie(self) -> bytes:
        while True:
            cookie = self._random(8)
            if cookie != bytes(8) and cookie not in self._sas:
                return cookie

    def _new_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._random(4), "big")
            if spi >= 256 and spi not in self._spis:  # 1-255 are reserved (RFC 4303 2.1)
                self._spis.add(spi)
                return spi

    def _new_message_id(self, sa: IkeSA) -> int:
        while True:
            mid = int.from_bytes(self._random(4), "big")
            if mid and mid not in sa.exchanges and mid not in sa.completed:
                return mid

    def _deleted(self, sa: IkeSA, now: float) -> None:
        """``sa`` is being deleted and its peer knows it (we sent a Delete, the peer sent one,
        or it acknowledged a failed XAUTH): remember its cookies for a while, so the peer's
        late messages are not taken for a fault (issue 22). Only an established SA (its peer
        authenticated): what an unauthenticated sender does never adds an entry, and
        :class:`~tunvpn.ike.deleted.RecentlyDeleted` holds a bounded number anyway."""
        if sa.established:
            self.recently_deleted.add(sa.local_cookie, sa.sa_id, now)

    def _late_for_deleted(self, icookie: bytes, rcookie: bytes, remote: Address, now: float) -> bool:
        """Whether a message under these cookies is for an ISAKMP SA we deleted lately
        (:meth:`_deleted`): then it is dropped and counted (:data:`RECENTLY_DELETED`), with no
        answer (the peer was told), no ProtocolError event and no summary line."""
        if not self.recently_deleted.holds(icookie, rcookie, now):
            return False
        self.drops[RECENTLY_DELETED] += 1
        log.debug(
            "dropped a late message from %s:%d for deleted ISAKMP SA %s", *remote, (icookie + rcookie).hex()
        )
        return True

    def _remove_sa(self, sa: IkeSA) -> None:
        sa.state = P1State.DEAD
        self._sas.pop(sa.local_cookie, None)
        self._deadline_of.pop(sa.local_cookie, None)
        self._end_half_open(sa.local_cookie)
        for ex in sa.exchanges.values():
            if ex.kind is ExchangeKind.QUICK and ex.quick.spi_in:
                self._spis.discard(ex.quick.spi_in)


def _heard_only_first_message(sa: IkeSA) -> bool:
    """A responder phase 1 SA whose peer has sent nothing since its first message: Main Mode
    after message 2, Aggressive Mode after message 2 (Base Mode SAs exist only once message 3
    echoed our cookie)."""
    if sa.state is P1State.R_SENT_SA:
        return sa.exchange == ExchangeType.IDENTITY_PROTECTION
    return sa.state is P1State.R_SENT_KE and sa.exchange == ExchangeType.AGGRESSIVE


def _quick_mode_spi(payloads: list[RawPayload]) -> tuple[int, bytes] | None:
    """RFC 2408 section 3.14: a notify about a Quick Mode names the SPI its initiator proposed."""
    for raw in payloads:
        if isinstance(raw.payload, SAPayload) and raw.payload.proposals:
            return (ProtocolId.ESP, raw.payload.proposals[0].spi)
    return None


__all__ = ["HEADER_SIZE", "Datagram", "IkeEngine"]
