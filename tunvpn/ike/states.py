"""Every legal move of the IKE engine's exchanges, in one place (in the spirit of h11's
``_state.py``).

Three tables:

* :data:`EXCHANGE_TABLE`: ``(exchange kind, our state, incoming message) -> Transition``
  for Transaction (XAUTH, Mode Config) and Quick Mode exchanges. A transition names the
  handler (a function, not a name), the next state, the roles of the ISAKMP SA on which the
  message is legal and the access the peer must already have (the login gate).
* :data:`INFORMATIONAL_TABLE`: ``incoming Informational payload -> InformationalRule``;
  a payload the peer's access does not allow yet is held until the login is granted, or
  dropped.
* :data:`ACCESS_TABLE`: how a responder's ISAKMP SA goes from ``LOGIN_PENDING`` to
  ``GRANTED`` (explicit doors: no login configured, XAUTH passed, the shell's ``grant``).

Phase 1 (Main, Aggressive, Base Mode) has its own table, ``phase1.PHASE1_TABLE``, rendered
here too. The engine looks a message up in ``IkeEngine._receive_exchange`` and refuses what
the table does not allow there, before any handler runs. ``python -m tunvpn.ike.states``
prints the tables as markdown (docs/engine-states.md; a test checks that it is current).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .constants import CfgAttr, CfgType, NotifyType
from .exchanges import on_delete, on_dpd, on_error_notify, on_initial_contact, on_status_notify
from .messages import AttributePayload, DeletePayload, HashPayload, NotifyPayload, RawPayload
from .quickmode import on_qm_1, on_qm_2, on_qm_3
from .rekey import REKEY_ANNOUNCE, SESSION_CONTINUED, on_announce, on_continued
from .sa import Access, ExchangeKind, ExState, Role
from .transaction import (
    XAUTH_TYPES,
    on_cfg_ack,
    on_cfg_reply,
    on_cfg_request,
    on_cfg_set,
    on_xauth_request,
    on_xauth_status,
)


class Message(enum.Enum):
    """An incoming message (or Informational payload), classified by its content alone."""

    XAUTH_REQUEST = "CFG_REQUEST with XAUTH attributes"
    CFG_REQUEST = "CFG_REQUEST"
    XAUTH_STATUS = "CFG_SET with XAUTH-STATUS"
    CFG_SET = "CFG_SET"
    CFG_REPLY = "CFG_REPLY"
    CFG_ACK = "CFG_ACK"
    QM_1 = "Quick Mode message 1"
    QM_2 = "Quick Mode message 2"
    QM_3 = "Quick Mode message 3"
    OTHER = "anything else"
    # Informational payloads (RFC 2408 section 4.8)
    DPD = "N(R-U-THERE) / N(R-U-THERE-ACK)"
    DELETE = "D (the peer deletes its own SAs)"
    INITIAL_CONTACT = "N(INITIAL-CONTACT)"
    ERROR_NOTIFY = "N(error type < 8192)"
    STATUS_NOTIFY = "N(other status)"
    REKEY_ANNOUNCE = "N(REKEY-ANNOUNCE) (tunvpn, the next phase 1's cookie)"
    SESSION_CONTINUED = "N(SESSION-CONTINUED) (tunvpn, a rekey took over)"


BOTH_ROLES = frozenset(Role)
Handler = Callable[..., None]


@dataclass(frozen=True)
class Transition:
    """One legal move of :data:`EXCHANGE_TABLE`."""

    handler: Handler
    """Called as ``handler(engine, sa, exchange, payloads, now)``; verifies the message's HASH."""
    next_state: ExState
    """The exchange's state once the handler returned."""
    roles: frozenset[Role] = BOTH_ROLES
    """Our role on the ISAKMP SA for which the message is legal."""
    access: Access | None = None
    """The least access the peer must have (``sa.access``); None: any."""


@dataclass(frozen=True)
class InformationalRule:
    """How one kind of Informational payload is handled."""

    handler: Handler
    """Called as ``handler(engine, sa, payload, now)``."""
    access: Access | None = None
    """The least access the peer must have; None: any."""
    held: bool = False
    """Below that access: keep the payload and act on it once the login is granted (True),
    or drop it (False)."""


T, Q = ExchangeKind.TRANSACTION, ExchangeKind.QUICK
M = Message
I_ONLY, R_ONLY = frozenset({Role.INITIATOR}), frozenset({Role.RESPONDER})

EXCHANGE_TABLE: dict[tuple[ExchangeKind, ExState, Message], Transition] = {
    # Transaction started by the peer: XAUTH towards the client, Mode Config towards the gateway
    (T, ExState.NEW, M.XAUTH_REQUEST): Transition(on_xauth_request, ExState.AWAIT_USER, roles=I_ONLY),
    (T, ExState.NEW, M.CFG_REQUEST): Transition(
        on_cfg_request, ExState.AWAIT_CONFIG, access=Access.XAUTH_PASSED
    ),
    (T, ExState.NEW, M.XAUTH_STATUS): Transition(on_xauth_status, ExState.DONE, roles=I_ONLY),
    (T, ExState.NEW, M.CFG_SET): Transition(on_cfg_set, ExState.DONE, access=Access.GRANTED),
    # Transaction we started
    (T, ExState.SENT_REQUEST, M.CFG_REPLY): Transition(on_cfg_reply, ExState.DONE),
    (T, ExState.SENT_SET, M.CFG_ACK): Transition(on_cfg_ack, ExState.DONE),
    # Quick Mode: the peer's message 1 makes IPsec SAs, so it needs the whole login
    (Q, ExState.NEW, M.QM_1): Transition(on_qm_1, ExState.SENT_2, access=Access.GRANTED),
    (Q, ExState.SENT_1, M.QM_2): Transition(on_qm_2, ExState.DONE),
    (Q, ExState.SENT_2, M.QM_3): Transition(on_qm_3, ExState.DONE),
}

INFORMATIONAL_TABLE: dict[Message, InformationalRule] = {
    M.DPD: InformationalRule(on_dpd),
    M.DELETE: InformationalRule(on_delete),
    M.ERROR_NOTIFY: InformationalRule(on_error_notify),
    M.STATUS_NOTIFY: InformationalRule(on_status_notify),
    M.INITIAL_CONTACT: InformationalRule(on_initial_contact, Access.GRANTED, held=True),
    # phase 1 rekeying between tunvpn peers (rekey.py): only a logged-in session announces
    M.REKEY_ANNOUNCE: InformationalRule(on_announce, Access.GRANTED),
    M.SESSION_CONTINUED: InformationalRule(on_continued),
}

ACCESS_TABLE: tuple[tuple[str, Access, str], ...] = (
    ("phase 1 done, we are the initiator", Access.GRANTED, "we chose the peer"),
    (
        "phase 1 done, responder, login_required false, no XAUTH method",
        Access.GRANTED,
        "a site peer: its phase 1 credential is the whole login",
    ),
    (
        "phase 1 done, responder, a rekey bound to a logged-in session (rekey.py), "
        "reauth_interval not passed",
        Access.GRANTED,
        "the old SA's login counts; its IPsec SAs are handed over",
    ),
    ("phase 1 done, responder, otherwise", Access.LOGIN_PENDING, "deadline: login_timeout"),
    ("xauth_verdict(ok) on LOGIN_PENDING, login_required true", Access.XAUTH_PASSED, "Mode Config may run"),
    ("xauth_verdict(ok) on LOGIN_PENDING, login_required false", Access.GRANTED, "XAUTH was the whole login"),
    ("grant(sa_id) after XAUTH passed (or no XAUTH method)", Access.GRANTED, "held Informationals run"),
    ("login_timeout passed before GRANTED", Access.LOGIN_PENDING, "the ISAKMP SA is deleted"),
)


def classify(kind: ExchangeKind, state: ExState, payloads: list[RawPayload]) -> Message:
    """The message class of a decrypted Transaction or Quick Mode message (nothing trusted yet:
    the handler the table picks verifies the HASH)."""
    if kind is ExchangeKind.TRANSACTION:
        attrs = [p.payload for p in payloads if isinstance(p.payload, AttributePayload)]
        if len(attrs) != 1:
            return M.OTHER
        attr = attrs[0]
        types = {a.type for a in attr.attributes}
        xauth = bool(types & XAUTH_TYPES)
        if attr.cfg_type == CfgType.REQUEST:
            return M.XAUTH_REQUEST if xauth else M.CFG_REQUEST
        if attr.cfg_type == CfgType.SET:
            return M.XAUTH_STATUS if CfgAttr.XAUTH_STATUS in types else M.CFG_SET
        if attr.cfg_type == CfgType.REPLY:
            return M.CFG_REPLY
        if attr.cfg_type == CfgType.ACK:
            return M.CFG_ACK
        return M.OTHER
    if kind is ExchangeKind.QUICK:
        if all(isinstance(p.payload, HashPayload) for p in payloads):
            return M.QM_3  # HASH(3) alone
        return M.QM_2 if state is ExState.SENT_1 else M.QM_1
    return M.OTHER


def classify_informational(payload: object) -> Message | None:
    """The class of one payload of an Informational exchange (None: nothing to do)."""
    if isinstance(payload, DeletePayload):
        return M.DELETE
    if isinstance(payload, NotifyPayload):
        if payload.notify_type in (NotifyType.R_U_THERE, NotifyType.R_U_THERE_ACK):
            return M.DPD
        if payload.notify_type == NotifyType.INITIAL_CONTACT:
            return M.INITIAL_CONTACT
        if payload.notify_type == REKEY_ANNOUNCE:
            return M.REKEY_ANNOUNCE
        if payload.notify_type == SESSION_CONTINUED:
            return M.SESSION_CONTINUED
        return M.ERROR_NOTIFY if payload.notify_type < 8192 else M.STATUS_NOTIFY
    return None


# ---------------------------------------------------------------------------- rendering


def _name(handler: Callable[..., object]) -> str:
    return f"`{handler.__module__.rsplit('.', 1)[-1]}.{handler.__qualname__}`"


def render_markdown() -> str:
    """The tables as markdown (docs/engine-states.md)."""
    from .phase1 import PHASE1_TABLE

    out = [
        "# IKE engine states",
        "",
        "Generated by `python -m tunvpn.ike.states` from `tunvpn/ike/states.py` and",
        "`tunvpn/ike/phase1.py`; `tests/unit/ike/test_states.py` fails when this page is stale.",
        "A message that no row allows is refused before any handler runs (a Notify and a",
        "`ProtocolError` event); a message for a message ID that already finished is dropped and",
        "counted (`IkeEngine.drops`). Limits (`EngineConfig`): `login_timeout` (120 s) from phase 1",
        "to GRANTED, then the ISAKMP SA is deleted; `max_exchanges` (10000) exchanges per ISAKMP SA,",
        "whose message IDs are all remembered (a set of integers), then the SA is deleted.",
        "",
        "## Phase 1",
        "",
        "| exchange | role | state | handler of the next message |",
        "|---|---|---|---|",
    ]
    for (exchange, role, state), handler in PHASE1_TABLE.items():
        out.append(f"| {exchange.name} | {role.value} | {state.value} | {_name(handler)} |")
    out += [
        "",
        "## Access of an ISAKMP SA (the login gate)",
        "",
        "| when | access | note |",
        "|---|---|---|",
    ]
    out += [f"| {when} | {access.name} | {note} |" for when, access, note in ACCESS_TABLE]
    out += [
        "",
        "## Transaction and Quick Mode",
        "",
        "| exchange | state | incoming message | our role | peer needs | handler | next state |",
        "|---|---|---|---|---|---|---|",
    ]
    for (kind, ex_state, message), t in EXCHANGE_TABLE.items():
        roles = "any" if t.roles == BOTH_ROLES else ", ".join(sorted(r.value for r in t.roles))
        access = t.access.name if t.access is not None else "-"
        out.append(
            f"| {kind.value} | {ex_state.value} | {message.value} | {roles} | {access} | "
            f"{_name(t.handler)} | {t.next_state.value} |"
        )
    out += [
        "",
        "## Informational payloads",
        "",
        "| payload | peer needs | below that | handler |",
        "|---|---|---|---|",
    ]
    for message, rule in INFORMATIONAL_TABLE.items():
        access = rule.access.name if rule.access is not None else "-"
        below = ("held until GRANTED" if rule.held else "dropped") if rule.access is not None else "-"
        out.append(f"| {message.value} | {access} | {below} | {_name(rule.handler)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
