"""Transaction exchanges (exchange type 6): XAUTH (draft-beaulieu-ike-xauth-02) and Mode Config
(draft-dukes-ike-mode-cfg-02), both directions, pull and push.

Each message is ``HDR*, HASH, ATTR`` with ``HASH = prf(SKEYID_a, M-ID | ATTR)``.

Plain functions of the engine: the commands behind ``IkeEngine.xauth_request``,
``xauth_reply``, ``xauth_verdict``, ``request_mode_config``, ``mode_config_reply`` and
``push_mode_config``, and the ``on_*`` handlers that ``states.EXCHANGE_TABLE`` names (called as
``handler(engine, sa, exchange, payloads, now)``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import crypto, exchanges, rekey
from . import events as ev
from .constants import (
    CfgAttr,
    CfgType,
    ExchangeType,
    XauthStatus,
    XauthType,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    AttributePayload,
    DataAttribute,
    RawPayload,
)
from .modecfg import ModeConfig
from .policies import PolicyAttr
from .sa import Exchange, ExchangeKind, ExState, IkeSA, Role, TransactionData, TransactionPurpose

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

XAUTH_FIELDS = {
    CfgAttr.XAUTH_USER_NAME: "user_name",
    CfgAttr.XAUTH_USER_PASSWORD: "password",
    CfgAttr.XAUTH_PASSCODE: "passcode",
    CfgAttr.XAUTH_ANSWER: "answer",
    CfgAttr.XAUTH_NEXT_PIN: "next_pin",
    CfgAttr.XAUTH_DOMAIN: "domain",
}
FIELD_ATTR = {v: k for k, v in XAUTH_FIELDS.items()}
XAUTH_TYPES = frozenset(range(CfgAttr.XAUTH_TYPE, CfgAttr.XAUTH_ANSWER + 1))
CHAP_CHALLENGE_LEN = 16
CHAP_PASSWORD_LEN = 17  # RFC 2865 section 5.3: the CHAP Identifier, then the 16-octet response


def chap_password(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """A RADIUS CHAP-Password (RFC 2865 section 5.3): the CHAP Identifier, then the RFC 1994
    response. An XAUTH RADIUS-CHAP answer carries exactly this in XAUTH-USER-PASSWORD
    (docs/protocol.md)."""
    return bytes((identifier & 0xFF,)) + crypto.chap_response(identifier, secret, challenge)


def _text(a: DataAttribute) -> str:
    v = a.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------- commands (IkeEngine's)


def start_xauth(engine: IkeEngine, sa: IkeSA, now: float) -> None:
    """Gateway: phase 1 is done with an XAUTH method, ask for the credentials."""
    if engine.config.xauth_chap and sa.tunvpn_peer:
        challenge = engine._random(CHAP_CHALLENGE_LEN)
        engine.xauth_request(sa.sa_id, now, xauth_type=XauthType.RADIUS_CHAP, challenge=challenge)
    else:
        engine.xauth_request(sa.sa_id, now)


def xauth_request(
    engine: IkeEngine,
    sa_id: bytes,
    now: float,
    fields: tuple[str, ...] = ("user_name", "password"),
    message: str | None = None,
    challenge: bytes | None = None,
    xauth_type: XauthType = XauthType.GENERIC,
) -> None:
    """Gateway: ask the client for credentials (a new round, e.g. for a challenge or next PIN).

    ``xauth_type`` RADIUS_CHAP needs a ``challenge`` and a password among ``fields``: the
    client answers with :func:`chap_password` instead of the password. Generic rounds carry
    no challenge (draft-beaulieu-ike-xauth-02 section 6.2); OTP and S/KEY (RFC 2289 style
    challenges) are not implemented."""
    sa = engine.get_sa(sa_id)
    xauth_type = XauthType(xauth_type)
    if xauth_type is XauthType.RADIUS_CHAP:
        if not challenge or "password" not in fields:
            raise LocalProtocolError("a RADIUS-CHAP round needs a challenge and asks for the password")
    elif xauth_type is XauthType.GENERIC:
        if challenge:
            raise LocalProtocolError("XAUTH-CHALLENGE must not be sent with XAUTH-TYPE Generic")
    else:
        raise LocalProtocolError(f"XAUTH-TYPE {xauth_type.name} is not implemented")
    attrs = []
    if xauth_type is not XauthType.GENERIC:  # absent means Generic (section 6.2)
        attrs.append(DataAttribute(CfgAttr.XAUTH_TYPE, int(xauth_type)))
    for name in fields:
        attr = FIELD_ATTR.get(name)
        if attr is None:
            raise LocalProtocolError(f"unknown XAUTH field {name!r}")
        attrs.append(DataAttribute(attr, b""))
    if message:
        attrs.append(DataAttribute(CfgAttr.XAUTH_MESSAGE, message.encode()))
    if challenge:
        attrs.append(DataAttribute(CfgAttr.XAUTH_CHALLENGE, challenge))
    ex = exchanges.new_exchange(engine, sa, ExchangeKind.TRANSACTION)
    ex.state = ExState.SENT_REQUEST
    ex.tx = TransactionData(TransactionPurpose.XAUTH, xauth_type=int(xauth_type), challenge=challenge)
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.REQUEST, 0, tuple(attrs))],
        now,
        expect_reply=True,
    )


def xauth_reply(
    engine: IkeEngine,
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
    sa = engine.get_sa(sa_id)
    pending = [
        e
        for e in sa.exchanges.values()
        if e.kind is ExchangeKind.TRANSACTION and e.state is ExState.AWAIT_USER
    ]
    if not pending:
        raise LocalProtocolError("no XAUTH request is waiting for an answer")
    ex = pending[-1]
    asked = ex.tx.asked
    values = {
        "user_name": user_name,
        "password": password,
        "passcode": passcode,
        "answer": answer,
        "next_pin": next_pin,
    }
    xauth_type, challenge = ex.tx.xauth_type, ex.tx.challenge
    if xauth_type not in (XauthType.GENERIC, XauthType.RADIUS_CHAP):
        raise LocalProtocolError(f"the gateway asks for XAUTH-TYPE {xauth_type}: not implemented")
    attrs = []
    if CfgAttr.XAUTH_TYPE in asked:  # the reply's type is the request's (section 6.2)
        attrs.append(DataAttribute(CfgAttr.XAUTH_TYPE, xauth_type))
    for attr_type in asked:
        name = XAUTH_FIELDS.get(CfgAttr(attr_type)) if attr_type in XAUTH_TYPES else None
        if name is None or name == "domain":
            continue
        value = values.get(name)
        if value is None:
            raise LocalProtocolError(f"the gateway asks for {name}")
        if name == "password" and xauth_type == XauthType.RADIUS_CHAP:
            if not isinstance(challenge, bytes) or not challenge:
                raise LocalProtocolError("a RADIUS-CHAP request without XAUTH-CHALLENGE")
            identifier = engine._random(1)[0]
            attrs.append(DataAttribute(attr_type, chap_password(identifier, value.encode(), challenge)))
            continue
        attrs.append(DataAttribute(attr_type, value.encode()))
    exchanges.exchange_done(engine, sa, ex)
    sa.xauth_user = user_name
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.REPLY, ex.tx.identifier, tuple(attrs))],
        now,
        expect_reply=False,
    )


def xauth_verdict(engine: IkeEngine, sa_id: bytes, now: float, ok: bool, message: str | None = None) -> None:
    """Gateway: tell the client whether its credentials were accepted (XAUTH-STATUS)."""
    sa = engine.get_sa(sa_id)
    attrs = [DataAttribute(CfgAttr.XAUTH_STATUS, int(XauthStatus.OK if ok else XauthStatus.FAIL))]
    if message:
        attrs.append(DataAttribute(CfgAttr.XAUTH_MESSAGE, message.encode()))
    ex = exchanges.new_exchange(engine, sa, ExchangeKind.TRANSACTION)
    ex.state = ExState.SENT_SET
    ex.tx = TransactionData(TransactionPurpose.XAUTH_STATUS, ok=ok)
    sa.xauth_done = ok
    if ok and sa.role is Role.RESPONDER:
        engine._xauth_passed(sa, now)
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.SET, 0, tuple(attrs))],
        now,
        expect_reply=True,
    )


def request_mode_config(
    engine: IkeEngine,
    sa_id: bytes,
    now: float,
    request: ModeConfig | None = None,
    extra_types: tuple[int, ...] = (),
) -> None:
    """Client: send a CFG_REQUEST for the standard attributes (and ``extra_types``)."""
    sa = engine.get_sa(sa_id)
    if request is None:
        types: list[int] = [
            CfgAttr.INTERNAL_IP4_ADDRESS,
            CfgAttr.INTERNAL_IP4_NETMASK,
            CfgAttr.INTERNAL_IP4_DNS,
            CfgAttr.INTERNAL_IP4_NBNS,
            CfgAttr.INTERNAL_ADDRESS_EXPIRY,
            CfgAttr.APPLICATION_VERSION,
            CfgAttr.INTERNAL_IP4_SUBNET,
        ]
        if "unity" in sa.peer_vendor_ids:
            types += [
                CfgAttr.UNITY_BANNER,
                CfgAttr.UNITY_DEF_DOMAIN,
                CfgAttr.UNITY_SPLIT_INCLUDE,
                CfgAttr.UNITY_SPLITDNS_NAME,
                CfgAttr.UNITY_LOCAL_LAN,
                CfgAttr.UNITY_PFS,
            ]
        if sa.tunvpn_peer:
            types.append(PolicyAttr.PHASE2_POLICIES)  # tunvpn: "send every phase 2 policy"
            # and an IPv6 address and DNS where the gateway has them (issue 19)
            types += [CfgAttr.INTERNAL_IP6_ADDRESS, CfgAttr.INTERNAL_IP6_DNS]
        attrs = [DataAttribute(t, b"") for t in (*types, *extra_types)]
    else:
        attrs = [*request.to_attributes(), *(DataAttribute(t, b"") for t in extra_types)]
    ex = exchanges.new_exchange(engine, sa, ExchangeKind.TRANSACTION)
    ex.state = ExState.SENT_REQUEST
    ex.tx = TransactionData(TransactionPurpose.MODECFG)
    identifier = int.from_bytes(engine._random(2), "big")
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.REQUEST, identifier, tuple(attrs))],
        now,
        expect_reply=True,
    )


def mode_config_reply(
    engine: IkeEngine,
    sa_id: bytes,
    now: float,
    identifier: int,
    config: ModeConfig,
    extra: tuple[DataAttribute, ...] = (),
) -> None:
    """Gateway: answer the client's pending CFG_REQUEST with ``config`` (+ raw ``extra``)."""
    sa = engine.get_sa(sa_id)
    pending = [
        e
        for e in sa.exchanges.values()
        if e.kind is ExchangeKind.TRANSACTION and e.state is ExState.AWAIT_CONFIG
    ]
    if not pending:
        raise LocalProtocolError("no Mode Config request is waiting for an answer")
    ex = pending[-1]
    exchanges.exchange_done(engine, sa, ex)
    if config.address is not None:
        sa.assigned_address = str(config.address)
    if config.ip6_address is not None:
        sa.assigned_address6 = str(config.ip6_address.ip)
    attrs = (*config.to_attributes(), *extra)
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.REPLY, identifier, attrs)],
        now,
        expect_reply=False,
    )
    sa.modecfg_done = True


def push_mode_config(
    engine: IkeEngine, sa_id: bytes, now: float, config: ModeConfig, extra: tuple[DataAttribute, ...] = ()
) -> int:
    """Gateway: push attributes with CFG_SET; the client answers CFG_ACK
    (:class:`~tunvpn.ike.events.ModeConfigAcknowledged`). Returns the identifier."""
    sa = engine.get_sa(sa_id)
    if config.address is not None:
        sa.assigned_address = str(config.address)
    if config.ip6_address is not None:
        sa.assigned_address6 = str(config.ip6_address.ip)
    ex = exchanges.new_exchange(engine, sa, ExchangeKind.TRANSACTION)
    ex.state = ExState.SENT_SET
    identifier = int.from_bytes(engine._random(2), "big")
    ex.tx = TransactionData(TransactionPurpose.MODECFG_PUSH, identifier)
    attrs = (*config.to_attributes(), *extra)
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.SET, identifier, attrs)],
        now,
        expect_reply=True,
    )
    return identifier


# ---------------------------------------------------------------------- receive (states.EXCHANGE_TABLE)


def _attribute_payload(sa: IkeSA, ex: Exchange, payloads: list[RawPayload]) -> AttributePayload:
    rest = sa.check_hash(ex.message_id, payloads)
    attrs = [p.payload for p in rest if isinstance(p.payload, AttributePayload)]
    if len(attrs) != 1:
        raise RemoteProtocolError("Transaction needs exactly one Attribute payload", field="ATTR")
    return attrs[0]


def on_xauth_request(
    engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float
) -> None:
    """Client: the gateway asks for credentials (draft-beaulieu-ike-xauth-02 section 6.2)."""
    attr = _attribute_payload(sa, ex, payloads)
    types = tuple(a.type for a in attr.attributes)
    values = {a.type: a for a in attr.attributes}
    fields = tuple(XAUTH_FIELDS[CfgAttr(t)] for t in types if t in XAUTH_TYPES and CfgAttr(t) in XAUTH_FIELDS)
    message = _text(values[CfgAttr.XAUTH_MESSAGE]) if CfgAttr.XAUTH_MESSAGE in values else None
    challenge_attr = values.get(CfgAttr.XAUTH_CHALLENGE)
    challenge = (
        challenge_attr.value
        if challenge_attr is not None and isinstance(challenge_attr.value, bytes)
        else None
    )
    xauth_type = values[CfgAttr.XAUTH_TYPE].as_int() if CfgAttr.XAUTH_TYPE in values else 0
    ex.tx = TransactionData(
        identifier=attr.identifier, asked=types, xauth_type=xauth_type, challenge=challenge
    )
    engine._events.append(ev.XauthRequested(sa.sa_id, fields, message, challenge, xauth_type))


def on_cfg_request(
    engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float
) -> None:
    """Gateway (or a tunvpn client asked by its gateway): a CFG_REQUEST for the shell."""
    attr = _attribute_payload(sa, ex, payloads)
    if sa.role is Role.INITIATOR and not sa.tunvpn_peer:
        raise RemoteProtocolError("Mode Config request from the gateway side", field="ATTR")
    types = tuple(a.type for a in attr.attributes)
    request = ModeConfig.from_attributes(attr.attributes)
    engine._events.append(
        ev.ModeConfigRequested(
            sa.sa_id,
            sa.remote,
            sa.xauth_user,
            str(sa.peer_id),
            request,
            types,
            attr.identifier,
            sa.tunvpn_peer,
        )
    )


def on_xauth_status(
    engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float
) -> None:
    """Client: the gateway's XAUTH-STATUS; we acknowledge it (section 6.3)."""
    attr = _attribute_payload(sa, ex, payloads)
    status = next(a for a in attr.attributes if a.type == CfgAttr.XAUTH_STATUS).as_int()
    ok = status == XauthStatus.OK
    message_attr = next((a for a in attr.attributes if a.type == CfgAttr.XAUTH_MESSAGE), None)
    message = _text(message_attr) if message_attr is not None else None
    sa.xauth_done = ok
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.ACK, attr.identifier, (DataAttribute(CfgAttr.XAUTH_STATUS, status),))],
        now,
        expect_reply=False,
    )
    engine._events.append(ev.XauthCompleted(sa.sa_id, ok, sa.xauth_user, message))
    if not ok:
        # the gateway deletes it on our acknowledgement: its Delete is dropped quietly
        engine._deleted(sa, now)
        exchanges.drop_sa(engine, sa, "XAUTH failed", by_peer=True)
    else:
        rekey.initiator_logged_in(engine, sa, now, xauth_passed=True)


def on_cfg_set(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    """Client: the gateway pushes attributes (CFG_SET); we acknowledge them."""
    attr = _attribute_payload(sa, ex, payloads)
    types = tuple(a.type for a in attr.attributes)
    config = ModeConfig.from_attributes(attr.attributes)
    ack = tuple(DataAttribute(t, b"") for t in types if t not in XAUTH_TYPES)
    exchanges.send_protected(
        engine,
        sa,
        ex,
        ExchangeType.TRANSACTION,
        [AttributePayload(CfgType.ACK, attr.identifier, ack)],
        now,
        expect_reply=False,
    )
    engine._events.append(ev.ModeConfigReceived(sa.sa_id, config, True))


def on_cfg_reply(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    attr = _attribute_payload(sa, ex, payloads)
    ex.sent.stop()
    if ex.tx.purpose is TransactionPurpose.XAUTH:
        values = {a.type: _text(a) for a in attr.attributes if isinstance(a.value, bytes)}
        fixed = sa.xauth_user
        user = values.get(CfgAttr.XAUTH_USER_NAME, fixed or "")
        if fixed is not None and user != fixed:
            # the user is fixed by the first answer for the whole login, challenge rounds
            # and extra protocols included: a password for one, a code for another is no login
            log.warning("XAUTH: %s answered as %r after %r; login refused", sa.remote[0], user, fixed)
            engine.xauth_verdict(sa.sa_id, now, False, "the user name changed")
            return
        sa.xauth_user = user
        password = values.get(CfgAttr.XAUTH_USER_PASSWORD)
        chap: tuple[int, bytes, bytes] | None = None
        asked_type = ex.tx.xauth_type
        types = [a for a in attr.attributes if a.type == CfgAttr.XAUTH_TYPE]
        reply_type = types[0].as_int() if types else XauthType.GENERIC
        refusal = None
        if reply_type != asked_type:
            refusal = f"XAUTH-TYPE {reply_type} in the reply to a type {asked_type} request"
        elif asked_type == XauthType.RADIUS_CHAP:
            raw = next((a.value for a in attr.attributes if a.type == CfgAttr.XAUTH_USER_PASSWORD), None)
            challenge = ex.tx.challenge or b""  # xauth_request's
            if not isinstance(raw, bytes) or len(raw) != CHAP_PASSWORD_LEN:
                refusal = f"a RADIUS-CHAP answer must be {CHAP_PASSWORD_LEN} octets"
            else:
                chap, password = (raw[0], challenge, raw[1:]), None
        if refusal is not None:
            log.warning("XAUTH reply of user %r from %s refused: %s", user, sa.remote[0], refusal)
            engine.xauth_verdict(sa.sa_id, now, False, refusal)
            return
        engine._events.append(
            ev.XauthCredentials(
                sa.sa_id,
                sa.remote,
                user,
                password,
                values.get(CfgAttr.XAUTH_PASSCODE),
                values.get(CfgAttr.XAUTH_ANSWER),
                values.get(CfgAttr.XAUTH_NEXT_PIN),
                chap=chap,
            )
        )
    else:
        config = ModeConfig.from_attributes(attr.attributes)
        sa.modecfg_done = True
        if config.address is not None:
            sa.assigned_address = str(config.address)
        if config.ip6_address is not None:
            sa.assigned_address6 = str(config.ip6_address.ip)
        engine._events.append(ev.ModeConfigReceived(sa.sa_id, config, False))


def on_cfg_ack(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    attr = _attribute_payload(sa, ex, payloads)
    ex.sent.stop()
    if ex.tx.purpose is TransactionPurpose.XAUTH_STATUS:
        ok = ex.tx.ok
        engine._events.append(ev.XauthCompleted(sa.sa_id, ok, sa.xauth_user))
        if not ok:
            engine.delete_ike_sa(sa.sa_id, now, reason="XAUTH failed")
    elif ex.tx.purpose is TransactionPurpose.MODECFG_PUSH:
        types = tuple(a.type for a in attr.attributes)
        engine._events.append(ev.ModeConfigAcknowledged(sa.sa_id, attr.identifier, types))
