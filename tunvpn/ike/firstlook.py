"""A first look at an IKE datagram before anything parses it (issue 14).

:func:`first_look` reads the 28-byte ISAKMP header (RFC 2408 section 3.1) and nothing else:
a few comparisons and at most two dict lookups, so garbage and messages for ISAKMP SAs
nobody has cost microseconds where parsing a first message's proposals costs milliseconds.
It says whether a datagram is for an ISAKMP SA we know (served first), a new phase 1
exchange (the shell may budget it per source: :class:`tunvpn.ipsec.budget.Budget`), or to
be dropped, and why, as a short fixed text that is a counter's name (never a log line each).

It sheds only what the engine refuses anyway: every check here is one the engine makes too
(:func:`tunvpn.ike.messages.decode_header`, :meth:`tunvpn.ike.engine.IkeEngine._receive_new`,
the payload chain of :func:`tunvpn.ike.messages.decode_payloads`), or a bound no real first
message comes near (:data:`MAX_FIRST_MESSAGE`). The engine keeps its own checks (defence in
depth). Where the engine would have answered a refused message with an unprotected
Notify (INVALID-COOKIE for an unknown SA, INVALID-EXCHANGE-TYPE...), the first look stays
silent: RFC 2408 section 5.2 makes those answers optional ("MAY"), and silence cannot be
aimed at a victim (issue 14: no reflection towards spoofed sources). Our own initiator
ignores an unprotected INVALID-COOKIE anyway (issue 12), so nothing a real peer of ours
relied on is lost.

Sans-I/O: no socket, clock or thread here; ``known`` is the engine's
:meth:`~tunvpn.ike.engine.IkeEngine.knows_cookie` (a dict lookup, safe from the data thread).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .constants import HEADER_SIZE, ISAKMP_VERSION, ExchangeType, HeaderFlag, PayloadType

__all__ = [
    "ALL_DROPS",
    "FOR_KNOWN_SA",
    "MAX_FIRST_MESSAGE",
    "NEW_EXCHANGE",
    "Look",
    "Verdict",
    "first_look",
]


class Verdict(Enum):
    """What the shell does with a datagram after the first look."""

    FOR_KNOWN_SA = "for a known ISAKMP SA"
    """A cookie names an ISAKMP SA the engine holds: queue it, before new exchanges."""
    NEW_EXCHANGE = "new phase 1 exchange"
    """A well-formed first message of Main, Aggressive or Base Mode: queue it (budgeted)."""
    DROP = "drop"
    """Refused without parsing; :attr:`Look.reason` says why."""


@dataclass(frozen=True, slots=True)
class Look:
    """The verdict on one datagram (the instances are the module's constants: no allocation)."""

    verdict: Verdict
    """Served first, budgeted as new, or dropped."""
    reason: str = ""
    """For :attr:`Verdict.DROP`: a short fixed text, the name of its counter."""


FOR_KNOWN_SA = Look(Verdict.FOR_KNOWN_SA)
NEW_EXCHANGE = Look(Verdict.NEW_EXCHANGE)

TOO_SHORT = Look(Verdict.DROP, "shorter than an ISAKMP header")
NOT_VERSION_1 = Look(Verdict.DROP, "not ISAKMP version 1")
LENGTH_MISMATCH = Look(Verdict.DROP, "header length is not the datagram's")
UNKNOWN_EXCHANGE = Look(Verdict.DROP, "unsupported exchange type")
BAD_FIRST_PAYLOAD = Look(Verdict.DROP, "invalid first payload type")
ENCRYPTED_FIRST = Look(Verdict.DROP, "encrypted first message")
FIRST_TOO_LARGE = Look(Verdict.DROP, "first message too large")
UNKNOWN_SA = Look(Verdict.DROP, "message for an unknown ISAKMP SA")
UNKNOWN_SA_NOTIFY = Look(Verdict.DROP, "unprotected Informational for an unknown ISAKMP SA")
LOST_SA = NEW_EXCHANGE
"""An encrypted message after phase 1 (an R-U-THERE, a Quick Mode) under cookies of no SA we
have: of an SA we lost in a restart, or made up. Budgeted as a new exchange: the engine may
answer INVALID-COOKIE within its Notify budget (tunvpn.ike.phase1.answer_lost_sa, issue 15)."""
SPI_HINT = NEW_EXCHANGE
"""A lone unprotected Notify under new cookies, no larger than an INVALID-SPI: a peer that
lost our ESP SAs may say so that way (tunvpn.ike.exchanges.answer_unknown_spi). Budgeted as
a new exchange, as anyone can send it."""

ALL_DROPS: tuple[Look, ...] = (
    TOO_SHORT,
    NOT_VERSION_1,
    LENGTH_MISMATCH,
    UNKNOWN_EXCHANGE,
    BAD_FIRST_PAYLOAD,
    ENCRYPTED_FIRST,
    FIRST_TOO_LARGE,
    UNKNOWN_SA,
    UNKNOWN_SA_NOTIFY,
)
"""Every drop the first look makes (the counters ``tunvpn status`` may show)."""

MAX_SPI_HINT = HEADER_SIZE + 12 + 4
"""The size of an unprotected INVALID-SPI Notify about one ESP SPI (header, Notify header,
SPI): the only unprotected Informational for no known SA that is looked at further."""

MAX_FIRST_MESSAGE = 16384
"""The largest first message (Main, Aggressive or Base Mode message 1) looked at further.

Our own client's largest first message is Base Mode offering every phase 1 suite (legacy
ones included) with XAUTH: 255 transforms, the most one proposal can number (RFC 2408
section 3.6), and 9,148 bytes; Main Mode 9,128 (tests/unit/ike/test_firstlook.py builds
them). strongSwan's and vpnc's are under 1 KB, and strongSwan refuses any datagram over its
``charon.max_packet`` of 10,000 bytes. A first message carries no certificate. 16 KB leaves
room for a peer with longer attributes while a first message never costs the engine the
parse of a 64 KB datagram."""

_HEADER = struct.Struct("!8s8sBBBBII")

_EXCHANGES = frozenset(
    {
        ExchangeType.BASE,
        ExchangeType.IDENTITY_PROTECTION,
        ExchangeType.AGGRESSIVE,
        ExchangeType.INFORMATIONAL,
        ExchangeType.TRANSACTION,
        ExchangeType.QUICK_MODE,
    }
)
"""The exchanges the engine implements (RFC 2409, draft-dukes-ike-mode-cfg-02)."""

_PHASE1 = frozenset({ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE, ExchangeType.BASE})

_FIRST_PAYLOADS = frozenset(
    {
        PayloadType.SA,
        *range(PayloadType.KE, PayloadType.ATTRIBUTE + 1),
        PayloadType.NAT_D,
        PayloadType.NAT_OA,
        *range(128, 256),
    }
)
"""Payload types a message may start with: RFC 2408 section 3.1's top-level types (2 and 3
only occur inside an SA), RFC 3947's, and private use (128-255), as the engine's decoder
accepts them. NONE is refused: every IKEv1 message carries at least one payload."""

_ZERO = bytes(8)


def first_look(data: bytes, known: Callable[[bytes], bool], *, offset: int = 0) -> Look:
    """What to do with the ISAKMP message that starts at ``offset`` of ``data`` (4 on the
    NAT-T port, after the non-ESP marker of RFC 3948 section 2.2).

    ``known(cookie)`` says whether ``cookie`` is our cookie of an ISAKMP SA: the responder
    cookie on a gateway, the initiator cookie on a client (both are asked, as the engine's
    SA lookup does). The engine's also says yes for an SA it deleted lately, whose peer's
    late messages it drops quietly (tunvpn.ike.deleted, issue 22): they are not counted
    here as messages for an unknown ISAKMP SA. Reads the header only; never raises on any
    input.
    """
    size = len(data) - offset
    if size < HEADER_SIZE:
        return TOO_SHORT
    icookie, rcookie, first_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(
        data, offset
    )
    if version >> 4 != ISAKMP_VERSION >> 4:
        return NOT_VERSION_1  # IKEv2 (0x20) on a shared port, or garbage
    if length != size:
        # RFC 2408 section 5.2 (UNEQUAL-PAYLOAD-LENGTHS); strongSwan and our decoder refuse
        # a mismatch either way, trailing bytes included
        return LENGTH_MISMATCH
    if exchange not in _EXCHANGES:
        return UNKNOWN_EXCHANGE
    if first_payload not in _FIRST_PAYLOADS:
        return BAD_FIRST_PAYLOAD
    if rcookie == _ZERO:
        if message_id == 0 and exchange in _PHASE1:
            # a first message (a retransmission of one we hold is found by the shell)
            if flags & HeaderFlag.ENCRYPTION:
                return ENCRYPTED_FIRST  # no keys exist before message 1 (RFC 2409 section 5)
            if size > MAX_FIRST_MESSAGE:
                return FIRST_TOO_LARGE
            return NEW_EXCHANGE
        # before the responder's cookie: only an answer to our own first message (an error
        # Notify of a responder that kept no state), under our initiator cookie
        if known(icookie):
            return FOR_KNOWN_SA
    elif known(rcookie) or known(icookie):
        return FOR_KNOWN_SA
    if exchange == ExchangeType.INFORMATIONAL and not flags & HeaderFlag.ENCRYPTION:
        if (
            rcookie == _ZERO
            and message_id == 0
            and first_payload == PayloadType.NOTIFICATION
            and size == MAX_SPI_HINT
        ):
            return SPI_HINT
        return UNKNOWN_SA_NOTIFY  # nothing to do (RFC 2408 section 5.1), never answered
    if rcookie != _ZERO and flags & HeaderFlag.ENCRYPTION and exchange not in _PHASE1:
        return LOST_SA
    return UNKNOWN_SA
