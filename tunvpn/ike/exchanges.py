"""Exchanges under an established ISAKMP SA: protection (HASH + encryption), the message IDs
of finished exchanges, Informational (notifies, Delete) and DPD (RFC 3706). Retransmission,
the same for phase 1 and these exchanges, is retransmit.py's (``IkeEngine._send_again``).

Transaction lives in transaction.py and Quick Mode in quickmode.py; the legal
(kind, state, message) combinations of all of them are in ``states.EXCHANGE_TABLE``.

Plain functions of the engine (``engine: IkeEngine`` first): the commands behind
``IkeEngine.delete_child`` and ``delete_ike_sa``, what the other exchange modules share
(``new_exchange``, ``send_protected``, ``exchange_done``, ``send_informational``, ``drop_sa``),
and the ``on_*`` handlers of ``states.INFORMATIONAL_TABLE`` (``handler(engine, sa, payload, now)``).
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from ..ipsec.udpencap import NON_ESP_MARKER
from . import crypto
from . import events as ev
from .constants import (
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    DeletePayload,
    Message,
    NotifyPayload,
    Payload,
    decode_message,
    encode_message,
    encode_payloads,
)
from .sa import Address, Exchange, ExchangeKind, ExState, IkeSA, P1State, QuickModeData

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

DPD_RETRY = 5.0
"""Seconds between R-U-THEREs of one idle-time probe; a shorter probe (a hint that the peer
lost our SA) sends more often: at least three R-U-THEREs before it declares the peer dead, so
one lost datagram never does (see :func:`dpd_due`)."""
DPD_RETRY_MIN = 0.5
HINT_PROBE_WITHIN = 2.0
"""Seconds a peer has to answer the probe that its INVALID-SPI Notify started (it says it
lost our SAs: a restart): long enough for three R-U-THEREs and their answers on a slow path."""
INVALID_SPI_NOTIFY_SIZE = 4 + 28 + 12 + 4
"""Bytes of our unprotected INVALID-SPI Notify on the NAT-T port: the non-ESP marker, the
header, the Notify header and the ESP SPI."""
COMPLETED_CACHED = 16
"""Finished exchanges whose last message is kept to answer a retransmission byte for byte;
the message IDs of all the others are only remembered (``IkeSA.completed``)."""


def exchange_done(engine: IkeEngine, sa: IkeSA, ex: Exchange) -> None:
    """An exchange finished: its message ID is remembered for the ISAKMP SA's whole life
    (RFC 2408 section 3.1), its secrets are forgotten, and only the last few finished
    exchanges keep their messages."""
    ex.state = ExState.DONE
    ex.sent.stop()
    ex.quick = QuickModeData(spi_in=ex.quick.spi_in, name=ex.quick.name)
    sa.completed.add(ex.message_id)
    done = [m for m, e in sa.exchanges.items() if e.state is ExState.DONE]
    for m in done[:-COMPLETED_CACHED]:
        del sa.exchanges[m]


def new_exchange(engine: IkeEngine, sa: IkeSA, kind: ExchangeKind) -> Exchange:
    if not sa.established:
        raise LocalProtocolError("the ISAKMP SA is not established")
    mid = engine._new_message_id(sa)
    assert sa.suite is not None
    iv = crypto.phase2_iv(sa.suite.hash, sa.p1_last_block, mid, crypto.cipher_block_size(sa.suite.encryption))
    ex = sa.exchanges[mid] = Exchange(mid, kind, iv)
    return ex


def send_protected(
    engine: IkeEngine,
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
    engine._send(sa, ex.sent, data, now, expect_reply=expect_reply)
    ex.answered = True


def retransmit_exchange(engine: IkeEngine, sa: IkeSA, ex: Exchange, now: float) -> None:
    if not engine._send_again(sa, ex.sent, now):
        reason = f"no answer to {ex.kind} exchange {ex.message_id:#x}"
        log.info("%s from %s", reason, sa.remote[0])
        name = ex.quick.name
        exchange_done(engine, sa, ex)
        if ex.kind is ExchangeKind.QUICK:
            engine._events.append(ev.ChildSAFailed(sa.sa_id, reason, None, name))
        elif ex.kind is ExchangeKind.TRANSACTION and ex.tx.purpose:
            engine._events.append(ev.TransactionFailed(sa.sa_id, str(ex.tx.purpose), reason, None))
        else:
            engine._events.append(ev.ProtocolError(sa.sa_id, sa.remote, reason, None))


# ------------------------------------------------------------------ Informational


def send_informational(engine: IkeEngine, sa: IkeSA, payloads: list[Payload], now: float) -> None:
    ex = new_exchange(engine, sa, ExchangeKind.INFORMATIONAL)
    send_protected(engine, sa, ex, ExchangeType.INFORMATIONAL, payloads, now, expect_reply=False)
    sa.exchanges.pop(ex.message_id, None)


def on_dpd(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    """RFC 3706: answer R-U-THERE; an ACK needs nothing (the message proved liveness)."""
    if n.notify_type == NotifyType.R_U_THERE:
        if n.spi != sa.sa_id or len(n.data) != 4:
            raise RemoteProtocolError("R-U-THERE with wrong SPI or data", field="N(R-U-THERE)")
        send_informational(
            engine, sa, [NotifyPayload(NotifyType.R_U_THERE_ACK, ProtocolId.ISAKMP, sa.sa_id, n.data)], now
        )


def on_error_notify(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    """A hash-verified error Notify. One about a Quick Mode of ours stops it at once
    (ChildSAFailed, no more retransmissions): named by the SPI we proposed, or, when the peer
    names none (strongSwan sends NO-PROPOSAL-CHOSEN for ESP with SPI 0), the oldest of our
    Quick Modes still waiting for an answer (issue 16)."""
    if n.protocol in (ProtocolId.ESP, ProtocolId.AH) and len(n.spi) in (0, 4):
        # an error about one of our Quick Modes, named by the SPI we proposed
        spi = int.from_bytes(n.spi, "big") if n.spi else 0
        waiting = [
            ex for ex in sa.exchanges.values() if ex.kind is ExchangeKind.QUICK and ex.state is ExState.SENT_1
        ]
        named = [ex for ex in waiting if ex.quick.spi_in == spi]
        if not named and spi == 0 and waiting:
            named = waiting[:1]  # exchanges keep their start order: the oldest waiting
        for ex in named:
            name = ex.quick.name
            exchange_done(engine, sa, ex)
            try:
                notify_name = NotifyType(n.notify_type).name
            except ValueError:
                notify_name = str(n.notify_type)
            reason = f"refused by the peer ({notify_name})"
            engine._events.append(ev.ChildSAFailed(sa.sa_id, reason, n.notify_type, name))
            engine._spis.discard(ex.quick.spi_in)
            return
    if n.protocol in (ProtocolId.ISAKMP, 0):
        # an error while a Transaction of ours waits for its answer (our Mode Config request
        # refused with ATTRIBUTES-NOT-SUPPORTED, say): that one ends now, its retransmissions
        # stop, and the shell says what the peer refused (issue 16)
        waiting = [
            ex
            for ex in sa.exchanges.values()
            if ex.kind is ExchangeKind.TRANSACTION
            and ex.state in (ExState.SENT_REQUEST, ExState.SENT_SET)
            and ex.tx.purpose
        ]
        if waiting:
            ex = waiting[0]  # exchanges keep their start order: the oldest waiting
            exchange_done(engine, sa, ex)
            reason = f"refused by the peer ({_notify_name(n.notify_type)})"
            engine._events.append(ev.TransactionFailed(sa.sa_id, str(ex.tx.purpose), reason, n.notify_type))
            return
    engine._events.append(ev.NotifyReceived(sa.sa_id, n.notify_type, n.data))


def _notify_name(notify: int) -> str:
    try:
        return NotifyType(notify).name.replace("_", "-")
    except ValueError:
        return str(notify)


def on_status_notify(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    engine._events.append(ev.NotifyReceived(sa.sa_id, n.notify_type, n.data))


def on_initial_contact(engine: IkeEngine, sa: IkeSA, n: NotifyPayload | None, now: float) -> None:
    """RFC 2407 section 4.6.3.3, from an Informational (the table holds it until GRANTED)."""
    sa.initial_contact = True
    initial_contact(engine, sa, now)


def initial_contact(engine: IkeEngine, sa: IkeSA, now: float) -> None:
    """RFC 2407 section 4.6.3.3: the peer rebooted; its older SAs are gone. Acted on only
    once the sender's login is granted, and only for SAs of the same user."""
    # every login of a client sending INITIAL-CONTACT looks at every SA: compare the XAUTH user
    # first (one string each), before _same_user prints both identities (issue 14: with 1,000
    # clients connected that cost each login ~4 ms, tunvpn bench logins --hold-during)
    for other in [o for o in engine._sas.values() if o.xauth_user == sa.xauth_user]:
        if engine._same_user(sa, other):
            drop_sa(engine, other, "replaced after INITIAL-CONTACT", by_peer=True)


def on_delete(engine: IkeEngine, sa: IkeSA, d: DeletePayload, now: float) -> None:
    from .rekey import adopt, successor

    if d.protocol == ProtocolId.ISAKMP:
        if any(spi == sa.sa_id for spi in d.spis):
            adopt(engine, sa, now)  # a peer that logged in again keeps its IPsec SAs
            engine._deleted(sa, now)  # its own late messages are dropped quietly
            drop_sa(engine, sa, "deleted by peer", by_peer=True)
        return
    if d.protocol != ProtocolId.ESP:
        return

    owner = successor(engine, sa)  # a rekeyed ISAKMP SA's IPsec SAs belong to the new one
    for spi_bytes in d.spis:
        spi = int.from_bytes(spi_bytes, "big")
        for child in list(owner.children.values()):
            # RFC 2408 3.15 names the SA as its receiver knows it (our spi_out); charon
            # sometimes names ours (spi_in) after a failed install, so accept both
            if spi in (child.spi_out, child.spi_in):
                del owner.children[child.spi_in]
                engine._spis.discard(child.spi_in)
                engine._events.append(ev.ChildSADeleted(owner.sa_id, child.spi_in, child.spi_out, True))


# ------------------------------------------------------------------ commands: delete


def delete_child(engine: IkeEngine, sa_id: bytes, spi_in: int, now: float) -> None:
    """Delete one pair of IPsec SAs (we name our inbound SPI, RFC 2408 section 3.15)."""
    sa = engine.get_sa(sa_id)
    child = sa.children.pop(spi_in, None)
    if child is None:
        raise LocalProtocolError(f"no child SA with inbound SPI {spi_in:#x}")
    engine._spis.discard(spi_in)
    send_informational(engine, sa, [DeletePayload(ProtocolId.ESP, (spi_in.to_bytes(4, "big"),))], now)
    engine._events.append(ev.ChildSADeleted(sa.sa_id, child.spi_in, child.spi_out, False))


def delete_ike_sa(engine: IkeEngine, sa_id: bytes, now: float, reason: str = "closed") -> None:
    """Delete every child SA, then the ISAKMP SA itself, telling the peer."""
    sa = engine.get_sa(sa_id)
    if sa.established:
        for spi_in in list(sa.children):
            engine.delete_child(sa_id, spi_in, now)
        send_informational(engine, sa, [DeletePayload(ProtocolId.ISAKMP, (sa.sa_id,))], now)
        engine._deleted(sa, now)  # the peer is told: its late messages are dropped quietly
    drop_sa(engine, sa, reason, by_peer=False)


def drop_sa(engine: IkeEngine, sa: IkeSA, reason: str, *, by_peer: bool) -> None:
    if sa.state is P1State.DEAD:
        return
    for child in list(sa.children.values()):
        engine._events.append(ev.ChildSADeleted(sa.sa_id, child.spi_in, child.spi_out, by_peer))
    sa.children.clear()
    engine._remove_sa(sa)
    engine._events.append(ev.IkeSADeleted(sa.sa_id, sa.remote, reason, by_peer))


# ------------------------------------------------------------------ DPD (RFC 3706)


def dpd_due(engine: IkeEngine, sa: IkeSA) -> float:
    """When :func:`dpd_tick` must look at ``sa`` next. While a probe is outstanding the next
    R-U-THERE goes after half the time left before the peer is declared dead (at most
    ``DPD_RETRY``, at least ``DPD_RETRY_MIN``): an idle-time probe (interval 10 s, timeout
    25 s) sends at 10, 15 and 20 s; a 2 s probe at 0, 1 and 1.5 s."""
    if sa.dpd_sent_at is not None:
        dead_at = sa.last_heard + engine.config.dpd_timeout
        retry = min(DPD_RETRY, max(DPD_RETRY_MIN, (dead_at - sa.dpd_sent_at) / 2))
        return min(sa.dpd_sent_at + retry, dead_at)
    return sa.last_heard + engine.config.dpd_interval


def dpd_probe(engine: IkeEngine, sa: IkeSA, now: float, within: float | None = None) -> bool:
    """Ask R-U-THERE now rather than after the idle interval (an unverifiable hint that the
    peer lost our SA, or traffic sent and nothing heard); the peer is declared dead only if
    this and the next probes go unanswered for ``within`` seconds (default
    ``dpd_timeout - dpd_interval``). A probe already outstanding keeps going, its deadline
    brought forward to ``within`` from now if that is sooner. Returns whether anything
    changed (a new probe, or a sooner deadline): the caller logs only then."""
    if not sa.established or engine.config.dpd_interval <= 0:
        return False
    wait = engine.config.dpd_timeout - engine.config.dpd_interval if within is None else within
    sooner = now - engine.config.dpd_timeout + wait < sa.last_heard
    sa.last_heard = min(sa.last_heard, now - engine.config.dpd_timeout + wait)
    engine._touch(sa.local_cookie)
    if sa.dpd_sent_at is None:
        dpd_tick(engine, sa, now)
        return True
    return sooner


def answer_unknown_spi(engine: IkeEngine, spi: int, remote: Address, size: int, now: float) -> None:
    """ESP of ``size`` bytes came from ``remote`` for an inbound SPI we do not have: tell the
    sender with an unprotected INVALID-SPI Notify (RFC 2408 section 3.14.1; new cookies, as we
    know no ISAKMP SA of it), so that a peer still using SAs we lost in a restart probes us at
    once and logs in again, instead of after its DPD timeout (issue 15). Anyone can send ESP
    from any address, so the answer goes only within ``notify_budget`` and never larger than
    the datagram it answers (no reflection gain: issue 14)."""
    if size < INVALID_SPI_NOTIFY_SIZE:
        engine.withheld["notify larger than the message it answers"] += 1
        return
    if not engine.spend("notify_budget", remote[0], now):
        engine.withheld["notify over budget"] += 1
        return
    msg = Message(
        engine._new_cookie(),
        bytes(8),
        ExchangeType.INFORMATIONAL,
        0,
        0,
        (NotifyPayload(NotifyType.INVALID_SPI, ProtocolId.ESP, spi.to_bytes(4, "big")),),
    )
    engine._out.append((NON_ESP_MARKER + encode_message(msg), remote, engine.config.natt_port))


def invalid_spi_hint(engine: IkeEngine, data: bytes, remote: Address, now: float) -> bool:
    """An unprotected Informational for no ISAKMP SA we know: if it is an INVALID-SPI Notify
    (:func:`answer_unknown_spi`) naming the SPI of ESP we send to ``remote``, probe that peer
    now with a short deadline (``HINT_PROBE_WITHIN``). Unverifiable, so it never ends an SA by
    itself; only a probe left unanswered does. Returns whether it was such a Notify (handled or
    counted); False: something else, for the caller to count."""
    try:
        message = decode_message(data)
    except RemoteProtocolError:
        return False
    if len(message.payloads) != 1 or not isinstance(message.payloads[0], NotifyPayload):
        return False
    notify = message.payloads[0]
    if (notify.notify_type, notify.protocol, len(notify.spi)) != (NotifyType.INVALID_SPI, ProtocolId.ESP, 4):
        return False
    if not engine.spend("notify_budget", remote[0], now):
        engine._bad_input("INVALID-SPI Notify over budget")
        return True
    spi = int.from_bytes(notify.spi, "big")
    for sa in engine.ike_sas():
        if not sa.established or sa.remote[0] != remote[0]:
            continue
        if any(child.spi_out == spi for child in sa.children.values()):
            if dpd_probe(engine, sa, now, HINT_PROBE_WITHIN):
                log.info("%s has no SA for our ESP SPI 0x%08x (restarted?): DPD probe now", remote[0], spi)
            return True
    engine._bad_input("INVALID-SPI Notify for an SPI we do not send to that address")
    return True


def dpd_tick(engine: IkeEngine, sa: IkeSA, now: float) -> None:
    if engine.config.dpd_interval <= 0 or "dpd" not in sa.peer_vendor_ids:
        return
    if now - sa.last_heard >= engine.config.dpd_timeout:
        log.info("peer %s is dead (no answer to DPD R-U-THERE)", sa.remote[0])
        drop_sa(engine, sa, "dead peer", by_peer=False)
        return
    if now < dpd_due(engine, sa):
        return
    if sa.dpd_seq == 0:
        sa.dpd_seq = int.from_bytes(engine._random(4), "big") & 0x7FFFFFFF or 1
    else:
        sa.dpd_seq = (sa.dpd_seq + 1) & 0xFFFFFFFF
    sa.dpd_sent_at = now
    send_informational(
        engine,
        sa,
        [NotifyPayload(NotifyType.R_U_THERE, ProtocolId.ISAKMP, sa.sa_id, struct.pack("!I", sa.dpd_seq))],
        now,
    )
