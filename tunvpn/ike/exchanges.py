"""Exchanges under an established ISAKMP SA: dispatch, protection (HASH + encryption),
retransmission, Informational (notifies, Delete) and DPD (RFC 3706).

Transaction lives in transaction.py and Quick Mode in quickmode.py; the legal
(kind, state, message) combinations of all of them are in :data:`EXCHANGE_TABLE`.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from . import crypto
from . import events as ev
from .constants import (
    ExchangeType,
    HeaderFlag,
    NotifyType,
    ProtocolId,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    DeletePayload,
    Header,
    NotifyPayload,
    Payload,
    RawPayload,
    encode_payloads,
)
from .sa import Exchange, IkeSA

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

DPD_RETRY = 5.0
COMPLETED_KEPT = 16

# (exchange kind, our state) -> handler of the next message: the one table of legal moves.
EXCHANGE_TABLE: dict[tuple[str, str], str] = {
    ("transaction", "new"): "_tx_request_or_set",
    ("transaction", "sent-request"): "_tx_reply",
    ("transaction", "sent-set"): "_tx_ack",
    ("quick", "new"): "_qm_r_first",
    ("quick", "sent-1"): "_qm_i_second",
    ("quick", "sent-2"): "_qm_r_third",
}


class ExchangesMixin:
    """Transaction, Quick Mode and Informational exchanges of the IKE engine."""

    # ------------------------------------------------------------------ dispatch

    def _receive_exchange(self: IkeEngine, sa: IkeSA, header: Header, data: bytes, now: float) -> None:
        mid = header.message_id
        ex = sa.exchanges.get(mid)
        if ex is not None and data == ex.last_in:
            # a retransmitted request: answer again, or stay quiet while the user or the shell
            # has not answered yet (its IV has already moved on, it must not be decrypted again)
            if ex.last_out:
                self._out.append((sa.wrap(ex.last_out), sa.remote, sa.local[1]))
            return
        if header.exchange == ExchangeType.INFORMATIONAL and not header.flags & HeaderFlag.ENCRYPTION:
            self._unprotected_informational(sa, header, data, now)
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
        kind = {
            ExchangeType.TRANSACTION: "transaction",
            ExchangeType.QUICK_MODE: "quick",
            ExchangeType.INFORMATIONAL: "informational",
        }.get(ExchangeType(header.exchange) if header.exchange in ExchangeType._value2member_map_ else None)
        if kind is None:
            raise RemoteProtocolError(
                f"exchange type {header.exchange} not supported",
                NotifyType.UNSUPPORTED_EXCHANGE_TYPE,
                "header.exchange",
                18,
            )
        known = ex is not None and ex.kind != "?"
        payloads = sa.open(header, data)
        sa.last_heard = now
        sa.dpd_sent_at = None
        if kind == "informational":
            sa.exchanges.pop(mid, None)
            self._informational(sa, mid, payloads, now)
            return
        ex = sa.exchanges[mid]
        if not known:
            ex.kind = kind
        elif ex.kind != kind:
            raise RemoteProtocolError(
                f"message ID {mid:#x} belongs to a {ex.kind} exchange",
                NotifyType.INVALID_MESSAGE_ID,
                "header.message_id",
                20,
            )
        handler = EXCHANGE_TABLE.get((ex.kind, ex.state))
        if handler is None:
            raise RemoteProtocolError(
                f"unexpected {kind} message in state {ex.state}",
                NotifyType.INVALID_MESSAGE_ID,
                "header.message_id",
                20,
            )
        try:
            getattr(self, handler)(sa, ex, payloads, now)
        except RemoteProtocolError:
            if ex.state in ("new", "done"):
                sa.exchanges.pop(mid, None)
            raise
        ex.last_in = data
        self._prune_exchanges(sa)

    def _prune_exchanges(self: IkeEngine, sa: IkeSA) -> None:
        done = [m for m, e in sa.exchanges.items() if e.state == "done"]
        for m in done[:-COMPLETED_KEPT]:
            del sa.exchanges[m]

    def _new_exchange(self: IkeEngine, sa: IkeSA, kind: str) -> Exchange:
        if not sa.established:
            raise LocalProtocolError("the ISAKMP SA is not established")
        mid = self._new_message_id(sa)
        assert sa.suite is not None
        iv = crypto.phase2_iv(
            sa.suite.hash, sa.p1_last_block, mid, crypto.cipher_block_size(sa.suite.encryption)
        )
        ex = sa.exchanges[mid] = Exchange(mid, kind, iv)
        return ex

    def _send_protected(
        self: IkeEngine,
        sa: IkeSA,
        ex: Exchange,
        exchange: int,
        payloads: list[Payload],
        now: float,
        *,
        expect_reply: bool,
        extra: bytes = b"",
    ) -> None:
        _, following = encode_payloads(payloads)
        hashed = [sa.hash_payload(ex.message_id, following, extra), *payloads]
        data = sa.build(exchange, ex.message_id, hashed, encrypt=True)
        ex.last_out = data
        ex.retransmits = 0
        ex.retransmit_at = now + self.config.retransmit_base if expect_reply else None
        self._out.append((sa.wrap(data), sa.remote, sa.local[1]))

    def _retransmit_exchange(self: IkeEngine, sa: IkeSA, ex: Exchange, now: float) -> None:
        if ex.retransmits >= self.config.retransmit_tries:
            ex.retransmit_at = None
            ex.state = "done"
            reason = f"no answer to {ex.kind} exchange {ex.message_id:#x}"
            log.info("%s from %s", reason, sa.remote[0])
            if ex.kind == "quick":
                self._events.append(ev.ChildSAFailed(sa.sa_id, reason, None, str(ex.data.get("name", ""))))
            else:
                self._events.append(ev.ProtocolError(sa.sa_id, sa.remote, reason, None))
            return
        ex.retransmits += 1
        ex.retransmit_at = now + self.config.retransmit_base * (2**ex.retransmits)
        self._out.append((sa.wrap(ex.last_out), sa.remote, sa.local[1]))

    # ------------------------------------------------------------------ Informational

    def _send_informational(self: IkeEngine, sa: IkeSA, payloads: list[Payload], now: float) -> None:
        ex = self._new_exchange(sa, "informational")
        self._send_protected(sa, ex, ExchangeType.INFORMATIONAL, payloads, now, expect_reply=False)
        sa.exchanges.pop(ex.message_id, None)

    def _unprotected_informational(
        self: IkeEngine, sa: IkeSA, header: Header, data: bytes, now: float
    ) -> None:
        """A plain Notify (before keys exist): only errors during phase 1 are believed."""
        payloads = sa.open(header, data)
        for raw in payloads:
            n = raw.payload
            if isinstance(n, NotifyPayload) and not sa.established and n.notify_type < 8192:
                self._peer_refused(sa, n, now)
                return
        log.info("ignoring unprotected Informational from %s", sa.remote[0])

    def _informational(self: IkeEngine, sa: IkeSA, mid: int, payloads: list[RawPayload], now: float) -> None:
        rest = sa.check_hash(mid, payloads)
        for raw in rest:
            p = raw.payload
            if isinstance(p, NotifyPayload):
                self._on_notify(sa, p, now)
            elif isinstance(p, DeletePayload):
                self._on_delete(sa, p, now)

    def _on_notify(self: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
        if n.notify_type == NotifyType.R_U_THERE:
            if n.spi != sa.sa_id or len(n.data) != 4:
                raise RemoteProtocolError("R-U-THERE with wrong SPI or data", field="N(R-U-THERE)")
            self._send_informational(
                sa, [NotifyPayload(NotifyType.R_U_THERE_ACK, ProtocolId.ISAKMP, sa.sa_id, n.data)], now
            )
        elif n.notify_type == NotifyType.R_U_THERE_ACK:
            pass  # any authenticated message already proves liveness (last_heard updated)
        elif n.notify_type < 8192 and n.protocol == ProtocolId.ESP and len(n.spi) == 4:
            # an error about one of our Quick Modes, named by the SPI we proposed
            spi = int.from_bytes(n.spi, "big")
            for ex in list(sa.exchanges.values()):
                if ex.kind == "quick" and ex.state == "sent-1" and ex.data.get("spi_in") == spi:
                    ex.state = "done"
                    ex.retransmit_at = None
                    name = str(ex.data.get("name", ""))
                    try:
                        notify_name = NotifyType(n.notify_type).name
                    except ValueError:
                        notify_name = str(n.notify_type)
                    reason = f"refused by the peer ({notify_name})"
                    self._events.append(ev.ChildSAFailed(sa.sa_id, reason, n.notify_type, name))
                    self._spis.discard(spi)
                    return
            self._events.append(ev.NotifyReceived(sa.sa_id, n.notify_type, n.data))
        else:
            self._events.append(ev.NotifyReceived(sa.sa_id, n.notify_type, n.data))

    def _on_delete(self: IkeEngine, sa: IkeSA, d: DeletePayload, now: float) -> None:
        if d.protocol == ProtocolId.ISAKMP:
            if any(spi == sa.sa_id for spi in d.spis):
                self._drop_sa(sa, "deleted by peer", by_peer=True)
            return
        if d.protocol != ProtocolId.ESP:
            return
        for spi_bytes in d.spis:
            spi = int.from_bytes(spi_bytes, "big")
            for child in list(sa.children.values()):
                # RFC 2408 3.15 names the SA as its receiver knows it (our spi_out); charon
                # sometimes names ours (spi_in) after a failed install, so accept both
                if spi in (child.spi_out, child.spi_in):
                    del sa.children[child.spi_in]
                    self._spis.discard(child.spi_in)
                    self._events.append(ev.ChildSADeleted(sa.sa_id, child.spi_in, child.spi_out, True))

    # ------------------------------------------------------------------ commands: delete

    def delete_child(self: IkeEngine, sa_id: bytes, spi_in: int, now: float) -> None:
        """Delete one pair of IPsec SAs (we name our inbound SPI, RFC 2408 section 3.15)."""
        sa = self.get_sa(sa_id)
        child = sa.children.pop(spi_in, None)
        if child is None:
            raise LocalProtocolError(f"no child SA with inbound SPI {spi_in:#x}")
        self._spis.discard(spi_in)
        self._send_informational(sa, [DeletePayload(ProtocolId.ESP, (spi_in.to_bytes(4, "big"),))], now)
        self._events.append(ev.ChildSADeleted(sa.sa_id, child.spi_in, child.spi_out, False))

    def delete_ike_sa(self: IkeEngine, sa_id: bytes, now: float, reason: str = "closed") -> None:
        """Delete every child SA, then the ISAKMP SA itself, telling the peer."""
        sa = self.get_sa(sa_id)
        if sa.established:
            for spi_in in list(sa.children):
                self.delete_child(sa_id, spi_in, now)
            self._send_informational(sa, [DeletePayload(ProtocolId.ISAKMP, (sa.sa_id,))], now)
        self._drop_sa(sa, reason, by_peer=False)

    def _drop_sa(self: IkeEngine, sa: IkeSA, reason: str, *, by_peer: bool) -> None:
        if sa.state.value == "dead":
            return
        for child in list(sa.children.values()):
            self._events.append(ev.ChildSADeleted(sa.sa_id, child.spi_in, child.spi_out, by_peer))
        sa.children.clear()
        self._remove_sa(sa)
        self._events.append(ev.IkeSADeleted(sa.sa_id, sa.remote, reason, by_peer))

    # ------------------------------------------------------------------ DPD (RFC 3706)

    def _dpd_due(self: IkeEngine, sa: IkeSA) -> float:
        if sa.dpd_sent_at is not None:
            return min(sa.dpd_sent_at + DPD_RETRY, sa.last_heard + self.config.dpd_timeout)
        return sa.last_heard + self.config.dpd_interval

    def _dpd_tick(self: IkeEngine, sa: IkeSA, now: float) -> None:
        if self.config.dpd_interval <= 0 or "dpd" not in sa.peer_vendor_ids:
            return
        if now - sa.last_heard >= self.config.dpd_timeout:
            log.info("peer %s is dead (no answer to DPD for %.0f s)", sa.remote[0], now - sa.last_heard)
            self._drop_sa(sa, "dead peer", by_peer=False)
            return
        if now < self._dpd_due(sa):
            return
        if sa.dpd_seq == 0:
            sa.dpd_seq = int.from_bytes(self._random(4), "big") & 0x7FFFFFFF or 1
        else:
            sa.dpd_seq = (sa.dpd_seq + 1) & 0xFFFFFFFF
        sa.dpd_sent_at = now
        self._send_informational(
            sa,
            [NotifyPayload(NotifyType.R_U_THERE, ProtocolId.ISAKMP, sa.sa_id, struct.pack("!I", sa.dpd_seq))],
            now,
        )
