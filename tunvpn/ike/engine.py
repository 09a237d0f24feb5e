"""The sans-I/O IKEv1 engine: one object per local endpoint (a gateway or a client).

Its whole surface, as in aioquic's ``QuicConnection``:

* ``receive_datagram(data, remote, local, now)`` — feed every UDP payload that arrived on
  the IKE ports (500, or 4500 with the non-ESP marker still on).
* ``datagrams_to_send()`` — what to send: ``(data, remote, local_port)`` triples.
* ``get_timer()`` / ``handle_timer(now)`` — one timer for retransmissions, DPD, NAT-T
  keepalives and half-open expiry.
* ``next_event()`` — drain :mod:`tunvpn.ike.events`.
* commands: ``initiate``, ``xauth_reply``, ``xauth_verdict``, ``request_mode_config``,
  ``mode_config_reply``, ``push_mode_config``, ``start_child``, ``delete_child``,
  ``delete_ike_sa``, ``note_peer_activity``.

It never touches a socket, a clock, a thread or a plugin. Bad input becomes a Notify plus
a :class:`~tunvpn.ike.events.ProtocolError` event, never a traceback.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable

from . import events as ev
from .config import EngineConfig
from .constants import (
    HEADER_SIZE,
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    ExchangeType,
    HeaderFlag,
    NotifyType,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .exchanges import ExchangesMixin
from .messages import Header, decode_header
from .natt import NattMixin
from .peerauth import PeerAuthMixin
from .phase1 import Phase1Mixin
from .quickmode import QuickModeMixin
from .sa import Address, IkeSA, P1State, Role
from .transaction import TransactionMixin

log = logging.getLogger(__name__)

Datagram = tuple[bytes, Address, int]
"""(payload, remote address, local port to send from)."""

PHASE1_EXCHANGES = (ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE, ExchangeType.BASE)


class IkeEngine(Phase1Mixin, PeerAuthMixin, NattMixin, ExchangesMixin, TransactionMixin, QuickModeMixin):
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
        self._out: list[Datagram] = []
        self._events: deque[ev.Event] = deque()
        self._spis: set[int] = set()

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
                return sa
        raise LocalProtocolError(f"no ISAKMP SA {sa_id.hex()}")

    def receive_datagram(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """Process one UDP payload received on an IKE port."""
        if local[1] != self.ike_port or data[:4] == NON_ESP_MARKER:
            # RFC 3948 section 2.2: on the NAT-T port IKE carries a 4-byte zero marker
            if data == NAT_KEEPALIVE:
                return
            if data[:4] != NON_ESP_MARKER:
                self._protocol_error(b"", remote, "ESP packet handed to the IKE engine", None)
                return
            data = data[4:]
        try:
            header = decode_header(data)
        except RemoteProtocolError as exc:
            # no usable cookies: nothing to answer (RFC 2408 section 5.2), just record it
            self._protocol_error(b"", remote, str(exc), None)
            return
        sa = self._find_sa(header, remote)
        try:
            if sa is None:
                self._receive_new(header, data, remote, local, now)
            else:
                self._receive_for(sa, header, data, remote, local, now)
        except RemoteProtocolError as exc:
            self._on_remote_error(sa, header, remote, local, exc, now)

    def get_timer(self) -> float | None:
        times: list[float] = []
        for sa in self._sas.values():
            for t in (sa.retransmit_at, sa.next_keepalive, sa.expires):
                if t is not None:
                    times.append(t)
            if sa.established and self.config.dpd_interval > 0 and "dpd" in sa.peer_vendor_ids:
                times.append(self._dpd_due(sa))
            if not sa.established:
                times.append(sa.created + self.config.half_open_timeout)
            times.extend(ex.retransmit_at for ex in sa.exchanges.values() if ex.retransmit_at is not None)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas.values()):
            if sa.state is P1State.DEAD:
                continue
            if not sa.established and now >= sa.created + self.config.half_open_timeout:
                self._fail_phase1(sa, "phase 1 timed out", None, send_notify=False)
                continue
            if sa.expires is not None and now >= sa.expires:
                self.delete_ike_sa(sa.sa_id, now, reason="expired")
                continue
            if sa.retransmit_at is not None and now >= sa.retransmit_at:
                self._retransmit_phase1(sa, now)
            for ex in list(sa.exchanges.values()):
                if ex.retransmit_at is not None and now >= ex.retransmit_at:
                    self._retransmit_exchange(sa, ex, now)
            if sa.state is P1State.DEAD:
                continue
            if sa.established:
                self._dpd_tick(sa, now)
            if sa.next_keepalive is not None and now >= sa.next_keepalive:
                self._out.append((NAT_KEEPALIVE, sa.remote, sa.local[1]))
                sa.next_keepalive = now + self.config.keepalive_interval

    def note_peer_activity(self, sa_id: bytes, now: float) -> None:
        """The data path saw authenticated ESP from this peer: no DPD needed (RFC 3706 5.3)."""
        try:
            sa = self.get_sa(sa_id)
        except LocalProtocolError:
            return
        sa.last_heard = max(sa.last_heard, now)

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
        if header.rcookie != bytes(8) or header.message_id != 0 or header.exchange not in PHASE1_EXCHANGES:
            if header.exchange == ExchangeType.INFORMATIONAL and not header.flags & HeaderFlag.ENCRYPTION:
                # an unprotected notify for an SA we do not know (e.g. an answer to our
                # INITIAL-CONTACT after a restart): nothing to do, RFC 2408 section 5.1
                return
            raise RemoteProtocolError(
                "message for an unknown ISAKMP SA", NotifyType.INVALID_COOKIE, "header.cookies", 0
            )
        half_open = sum(1 for s in self._sas.values() if s.role is Role.RESPONDER and not s.established)
        if half_open >= self.config.max_half_open:
            self._protocol_error(b"", remote, "too many half-open phase 1 SAs; request dropped", None)
            return
        self._start_responder(header, data, remote, local, now)

    def _receive_for(
        self, sa: IkeSA, header: Header, data: bytes, remote: Address, local: Address, now: float
    ) -> None:
        if sa.state is P1State.DEAD:
            return
        if remote != sa.remote:
            self._peer_moved(sa, remote, local)
        if header.message_id == 0 and header.exchange != ExchangeType.INFORMATIONAL:
            if header.exchange != sa.exchange:
                raise RemoteProtocolError(
                    f"phase 1 message of exchange {header.exchange} in a {sa.exchange} exchange",
                    NotifyType.INVALID_EXCHANGE_TYPE,
                    "header.exchange",
                    18,
                )
            if data == sa.last_in and sa.last_out:
                # RFC 2408 section 5 / RFC 2409: a retransmitted request gets our last answer
                self._out.append((sa.wrap(sa.last_out), sa.remote, sa.local[1]))
                return
            self._receive_phase1(sa, header, data, now)
        else:
            self._receive_exchange(sa, header, data, now)

    def _peer_moved(self, sa: IkeSA, remote: Address, local: Address) -> None:
        """NAT-T: follow the peer to a new address/port (RFC 3947 section 4, float to 4500)."""
        old = sa.remote
        sa.remote = remote
        if local[1] != self.ike_port:
            sa.floated = True
            sa.local = local
        self._events.append(ev.PeerAddressChanged(sa.sa_id, old, remote))

    # ------------------------------------------------------------------ errors

    def _on_remote_error(
        self,
        sa: IkeSA | None,
        header: Header,
        remote: Address,
        local: Address,
        exc: RemoteProtocolError,
        now: float,
    ) -> None:
        sa_id = sa.sa_id if sa is not None else header.icookie + header.rcookie
        log.info("bad message from %s:%d: %s", remote[0], remote[1], exc)
        self._events.append(ev.ProtocolError(sa_id, remote, str(exc), int(exc.notify)))
        self._send_error_notify(sa, header, remote, local, exc, now)
        if sa is not None and not sa.established and header.message_id == 0:
            self._fail_phase1(sa, str(exc), int(exc.notify), send_notify=False)

    def _protocol_error(self, sa_id: bytes, remote: Address, text: str, notify: int | None) -> None:
        log.info("bad message from %s:%d: %s", remote[0], remote[1], text)
        self._events.append(ev.ProtocolError(sa_id, remote, text, notify))

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
            if mid and mid not in sa.exchanges:
                return mid

    def _remove_sa(self, sa: IkeSA) -> None:
        sa.state = P1State.DEAD
        self._sas.pop(sa.local_cookie, None)
        for key, cookie in list(self._half_open.items()):
            if cookie == sa.local_cookie:
                del self._half_open[key]
        for ex in sa.exchanges.values():
            for spi in ex.data.get("spis", ()):  # type: ignore[union-attr]
                self._spis.discard(spi)


__all__ = ["HEADER_SIZE", "Datagram", "IkeEngine"]
