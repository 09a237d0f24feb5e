"""Exchanges under an established ISAKMP SA: Transaction (Mode Config and XAUTH), Quick
Mode and Informational (Delete, notifies, DPD).

Quick Mode (RFC 2409 section 5.5)::

  1 I>R* HASH(1) SA Ni [KE] [IDci IDcr]     HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [| KE] [| IDci | IDcr])
  2 R>I* HASH(2) SA Nr [KE] [IDci IDcr]     HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [| KE] [| IDs])
         [N(RESPONDER-LIFETIME)]
  3 I>R* HASH(3)                            HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)

Transaction (draft-dukes-ike-mode-cfg-02 section 3.1) and Informational (RFC 2409 5.7)
messages are ``HDR*, HASH, payload`` with ``HASH = prf(SKEYID_a, M-ID | payload)``.

The legal (kind, state, message) combinations are in :data:`EXCHANGE_TABLE`.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from . import crypto
from . import events as ev
from .config import ChildPolicy
from .constants import (
    CfgAttr,
    CfgType,
    DHGroup,
    EncapsulationMode,
    ExchangeType,
    HeaderFlag,
    IPsecAttr,
    LifeType,
    NotifyType,
    ProtocolId,
    XauthStatus,
)
from .errors import LocalProtocolError, NoProposalChosen, RemoteProtocolError
from .identity import TrafficSelector
from .messages import (
    AttributePayload,
    DataAttribute,
    DeletePayload,
    Header,
    IDPayload,
    KEPayload,
    NatOAPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    RawPayload,
    SAPayload,
    Transform,
    encode_attributes,
    encode_payloads,
)
from .modecfg import ModeConfig
from .proposals import ChildProposal, ChildTransform, select_child_transform
from .sa import ChildSA, Exchange, IkeSA, Role

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

NONCE_SIZE = 32
DPD_RETRY = 5.0
COMPLETED_KEPT = 16

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

# (exchange kind, our state) -> handler of the next message: the one table of legal moves.
EXCHANGE_TABLE: dict[tuple[str, str], str] = {
    ("transaction", "new"): "_tx_request_or_set",
    ("transaction", "sent-request"): "_tx_reply",
    ("transaction", "sent-set"): "_tx_ack",
    ("quick", "new"): "_qm_r_first",
    ("quick", "sent-1"): "_qm_i_second",
    ("quick", "sent-2"): "_qm_r_third",
}


def _text(a: DataAttribute) -> str:
    v = a.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class ExchangesMixin:
    """Transaction, Quick Mode and Informational exchanges of the IKE engine."""

    # ------------------------------------------------------------------ dispatch

    def _receive_exchange(self: IkeEngine, sa: IkeSA, header: Header, data: bytes, now: float) -> None:
        mid = header.message_id
        ex = sa.exchanges.get(mid)
        if ex is not None and data == ex.last_in and ex.last_out:
            self._out.append((sa.wrap(ex.last_out), sa.remote, sa.local[1]))  # retransmitted request
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

    # ------------------------------------------------------------------ Transaction: commands

    def _start_xauth(self: IkeEngine, sa: IkeSA, now: float) -> None:
        self.xauth_request(sa.sa_id, now)

    def xauth_request(
        self: IkeEngine,
        sa_id: bytes,
        now: float,
        fields: tuple[str, ...] = ("user_name", "password"),
        message: str | None = None,
        challenge: bytes | None = None,
    ) -> None:
        """Gateway: ask the client for credentials (a new round, e.g. for a challenge or next PIN)."""
        sa = self.get_sa(sa_id)
        attrs = []
        if self.config.xauth_type:
            attrs.append(DataAttribute(CfgAttr.XAUTH_TYPE, self.config.xauth_type))
        for name in fields:
            attr = FIELD_ATTR.get(name)
            if attr is None:
                raise LocalProtocolError(f"unknown XAUTH field {name!r}")
            attrs.append(DataAttribute(attr, b""))
        if message:
            attrs.append(DataAttribute(CfgAttr.XAUTH_MESSAGE, message.encode()))
        if challenge:
            attrs.append(DataAttribute(CfgAttr.XAUTH_CHALLENGE, challenge))
        ex = self._new_exchange(sa, "transaction")
        ex.state = "sent-request"
        ex.data["purpose"] = "xauth"
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.REQUEST, 0, tuple(attrs))],
            now,
            expect_reply=True,
        )

    def xauth_reply(
        self: IkeEngine,
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
        sa = self.get_sa(sa_id)
        pending = [e for e in sa.exchanges.values() if e.kind == "transaction" and e.state == "await-user"]
        if not pending:
            raise LocalProtocolError("no XAUTH request is waiting for an answer")
        ex = pending[-1]
        asked: tuple[int, ...] = ex.data["asked"]  # type: ignore[assignment]
        values = {
            "user_name": user_name,
            "password": password,
            "passcode": passcode,
            "answer": answer,
            "next_pin": next_pin,
        }
        attrs = []
        if CfgAttr.XAUTH_TYPE in asked:
            attrs.append(DataAttribute(CfgAttr.XAUTH_TYPE, int(ex.data.get("xauth_type", 0))))  # type: ignore[arg-type]
        for attr_type in asked:
            name = XAUTH_FIELDS.get(CfgAttr(attr_type)) if attr_type in XAUTH_TYPES else None
            if name is None or name == "domain":
                continue
            value = values.get(name)
            if value is None:
                raise LocalProtocolError(f"the gateway asks for {name}")
            attrs.append(DataAttribute(attr_type, value.encode()))
        ex.state = "done"
        sa.xauth_user = user_name
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.REPLY, int(ex.data["identifier"]), tuple(attrs))],  # type: ignore[arg-type]
            now,
            expect_reply=False,
        )

    def xauth_verdict(
        self: IkeEngine, sa_id: bytes, now: float, ok: bool, message: str | None = None
    ) -> None:
        """Gateway: tell the client whether its credentials were accepted (XAUTH-STATUS)."""
        sa = self.get_sa(sa_id)
        attrs = [DataAttribute(CfgAttr.XAUTH_STATUS, int(XauthStatus.OK if ok else XauthStatus.FAIL))]
        if message:
            attrs.append(DataAttribute(CfgAttr.XAUTH_MESSAGE, message.encode()))
        ex = self._new_exchange(sa, "transaction")
        ex.state = "sent-set"
        ex.data["purpose"] = "xauth-status"
        ex.data["ok"] = ok
        sa.xauth_done = ok
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.SET, 0, tuple(attrs))],
            now,
            expect_reply=True,
        )

    def request_mode_config(
        self: IkeEngine,
        sa_id: bytes,
        now: float,
        request: ModeConfig | None = None,
        extra_types: tuple[int, ...] = (),
    ) -> None:
        """Client: send a CFG_REQUEST for the standard attributes (and ``extra_types``)."""
        sa = self.get_sa(sa_id)
        if request is None:
            types = [
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
            attrs = [DataAttribute(t, b"") for t in (*types, *extra_types)]
        else:
            attrs = [*request.to_attributes(), *(DataAttribute(t, b"") for t in extra_types)]
        ex = self._new_exchange(sa, "transaction")
        ex.state = "sent-request"
        ex.data["purpose"] = "modecfg"
        identifier = int.from_bytes(self._random(2), "big")
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.REQUEST, identifier, tuple(attrs))],
            now,
            expect_reply=True,
        )

    def mode_config_reply(
        self: IkeEngine,
        sa_id: bytes,
        now: float,
        identifier: int,
        config: ModeConfig,
        extra: tuple[DataAttribute, ...] = (),
    ) -> None:
        """Gateway: answer the client's pending CFG_REQUEST with ``config`` (+ raw ``extra``)."""
        sa = self.get_sa(sa_id)
        pending = [e for e in sa.exchanges.values() if e.kind == "transaction" and e.state == "await-config"]
        if not pending:
            raise LocalProtocolError("no Mode Config request is waiting for an answer")
        ex = pending[-1]
        ex.state = "done"
        if config.address is not None:
            sa.assigned_address = str(config.address)
        attrs = (*config.to_attributes(), *extra)
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.REPLY, identifier, attrs)],
            now,
            expect_reply=False,
        )
        sa.modecfg_done = True

    def push_mode_config(
        self: IkeEngine, sa_id: bytes, now: float, config: ModeConfig, extra: tuple[DataAttribute, ...] = ()
    ) -> None:
        """Gateway: push attributes with CFG_SET; the client answers CFG_ACK."""
        sa = self.get_sa(sa_id)
        if config.address is not None:
            sa.assigned_address = str(config.address)
        ex = self._new_exchange(sa, "transaction")
        ex.state = "sent-set"
        ex.data["purpose"] = "modecfg-push"
        identifier = int.from_bytes(self._random(2), "big")
        attrs = (*config.to_attributes(), *extra)
        self._send_protected(
            sa,
            ex,
            ExchangeType.TRANSACTION,
            [AttributePayload(CfgType.SET, identifier, attrs)],
            now,
            expect_reply=True,
        )

    # ------------------------------------------------------------------ Transaction: receive

    def _attribute_payload(
        self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload]
    ) -> AttributePayload:
        rest = sa.check_hash(ex.message_id, payloads)
        attrs = [p.payload for p in rest if isinstance(p.payload, AttributePayload)]
        if len(attrs) != 1:
            raise RemoteProtocolError("Transaction needs exactly one Attribute payload", field="ATTR")
        return attrs[0]

    def _tx_request_or_set(
        self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float
    ) -> None:
        attr = self._attribute_payload(sa, ex, payloads)
        types = tuple(a.type for a in attr.attributes)
        is_xauth = any(t in XAUTH_TYPES for t in types)
        if attr.cfg_type == CfgType.REQUEST and is_xauth:
            if sa.role is not Role.INITIATOR:
                raise RemoteProtocolError("XAUTH request sent to the XAUTH server", field="ATTR")
            values = {a.type: a for a in attr.attributes}
            fields = tuple(
                XAUTH_FIELDS[CfgAttr(t)] for t in types if t in XAUTH_TYPES and CfgAttr(t) in XAUTH_FIELDS
            )
            message = _text(values[CfgAttr.XAUTH_MESSAGE]) if CfgAttr.XAUTH_MESSAGE in values else None
            challenge_attr = values.get(CfgAttr.XAUTH_CHALLENGE)
            challenge = (
                challenge_attr.value
                if challenge_attr is not None and isinstance(challenge_attr.value, bytes)
                else None
            )
            xauth_type = values[CfgAttr.XAUTH_TYPE].as_int() if CfgAttr.XAUTH_TYPE in values else 0
            ex.state = "await-user"
            ex.data.update(asked=types, identifier=attr.identifier, xauth_type=xauth_type)
            self._events.append(ev.XauthRequested(sa.sa_id, fields, message, challenge, xauth_type))
        elif attr.cfg_type == CfgType.REQUEST:
            if sa.role is Role.INITIATOR and not sa.tunvpn_peer:
                raise RemoteProtocolError("Mode Config request from the gateway side", field="ATTR")
            if sa.xauth_expected and not sa.xauth_done:
                raise RemoteProtocolError(
                    "Mode Config request before XAUTH succeeded", NotifyType.AUTHENTICATION_FAILED, "ATTR"
                )
            ex.state = "await-config"
            request = ModeConfig.from_attributes(attr.attributes)
            self._events.append(
                ev.ModeConfigRequested(
                    sa.sa_id, sa.remote, sa.xauth_user, str(sa.peer_id), request, types, attr.identifier
                )
            )
        elif attr.cfg_type == CfgType.SET and CfgAttr.XAUTH_STATUS in types:
            status = next(a for a in attr.attributes if a.type == CfgAttr.XAUTH_STATUS).as_int()
            ok = status == XauthStatus.OK
            ex.state = "done"
            sa.xauth_done = ok
            self._send_protected(
                sa,
                ex,
                ExchangeType.TRANSACTION,
                [
                    AttributePayload(
                        CfgType.ACK, attr.identifier, (DataAttribute(CfgAttr.XAUTH_STATUS, status),)
                    )
                ],
                now,
                expect_reply=False,
            )
            self._events.append(ev.XauthCompleted(sa.sa_id, ok, sa.xauth_user))
            if not ok:
                self._drop_sa(sa, "XAUTH failed", by_peer=True)
        elif attr.cfg_type == CfgType.SET:
            config = ModeConfig.from_attributes(attr.attributes)
            ex.state = "done"
            ack = tuple(DataAttribute(t, b"") for t in types if t not in XAUTH_TYPES)
            self._send_protected(
                sa,
                ex,
                ExchangeType.TRANSACTION,
                [AttributePayload(CfgType.ACK, attr.identifier, ack)],
                now,
                expect_reply=False,
            )
            self._events.append(ev.ModeConfigReceived(sa.sa_id, config, True))
        else:
            raise RemoteProtocolError(
                f"unexpected Mode Config message type {attr.cfg_type} to start an exchange", field="ATTR.type"
            )

    def _tx_reply(self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
        attr = self._attribute_payload(sa, ex, payloads)
        if attr.cfg_type != CfgType.REPLY:
            raise RemoteProtocolError("expected CFG_REPLY", field="ATTR.type")
        ex.state = "done"
        ex.retransmit_at = None
        if ex.data.get("purpose") == "xauth":
            values = {a.type: _text(a) for a in attr.attributes if isinstance(a.value, bytes)}
            user = values.get(CfgAttr.XAUTH_USER_NAME, "")
            sa.xauth_user = user
            self._events.append(
                ev.XauthCredentials(
                    sa.sa_id,
                    sa.remote,
                    user,
                    values.get(CfgAttr.XAUTH_USER_PASSWORD),
                    values.get(CfgAttr.XAUTH_PASSCODE),
                    values.get(CfgAttr.XAUTH_ANSWER),
                    values.get(CfgAttr.XAUTH_NEXT_PIN),
                )
            )
        else:
            config = ModeConfig.from_attributes(attr.attributes)
            sa.modecfg_done = True
            if config.address is not None:
                sa.assigned_address = str(config.address)
            self._events.append(ev.ModeConfigReceived(sa.sa_id, config, False))

    def _tx_ack(self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
        attr = self._attribute_payload(sa, ex, payloads)
        if attr.cfg_type != CfgType.ACK:
            raise RemoteProtocolError("expected CFG_ACK", field="ATTR.type")
        ex.state = "done"
        ex.retransmit_at = None
        if ex.data.get("purpose") == "xauth-status":
            ok = bool(ex.data.get("ok"))
            self._events.append(ev.XauthCompleted(sa.sa_id, ok, sa.xauth_user))
            if not ok:
                self.delete_ike_sa(sa.sa_id, now, reason="XAUTH failed")

    # ------------------------------------------------------------------ Quick Mode

    def _encap_mode(self: IkeEngine, sa: IkeSA) -> int:
        if sa.natt and (sa.nat_local or sa.nat_remote):
            return int(EncapsulationMode.UDP_TUNNEL_DRAFT if sa.natt_draft else EncapsulationMode.UDP_TUNNEL)
        return int(EncapsulationMode.TUNNEL)

    def start_child(
        self: IkeEngine,
        sa_id: bytes,
        now: float,
        local_ts: TrafficSelector,
        remote_ts: TrafficSelector,
        proposal: ChildProposal,
        name: str = "",
    ) -> int:
        """Initiate a Quick Mode for one pair of IPsec SAs; returns its message ID."""
        sa = self.get_sa(sa_id)
        ex = self._new_exchange(sa, "quick")
        spi = self._new_spi()
        ni = self._random(NONCE_SIZE)
        transforms = proposal.transforms(self._encap_mode(sa), sa.tunvpn_peer)
        sa_payload = SAPayload((Proposal(1, ProtocolId.ESP, spi.to_bytes(4, "big"), transforms),))
        payloads: list[Payload] = [sa_payload, NoncePayload(ni)]
        dh = None
        if proposal.pfs_group is not None:
            dh = crypto.DiffieHellman(proposal.pfs_group)
            payloads.append(KEPayload(dh.public))
        payloads += [local_ts.to_id_payload(), remote_ts.to_id_payload()]
        ex.state = "sent-1"
        ex.data.update(
            spi_in=spi,
            ni=ni,
            dh=dh,
            proposal=proposal,
            name=name,
            local_ts=local_ts,
            remote_ts=remote_ts,
            transforms=transforms,
            spis=(spi,),
        )
        self._send_protected(sa, ex, ExchangeType.QUICK_MODE, payloads, now, expect_reply=True)
        return ex.message_id

    def _qm_parts(self: IkeEngine, rest: list[RawPayload]) -> dict[str, object]:
        parts: dict[str, object] = {"ids": [], "notifies": []}
        for p in rest:
            x = p.payload
            if isinstance(x, SAPayload):
                parts["sa"] = x
            elif isinstance(x, NoncePayload):
                parts["nonce"] = x.data
            elif isinstance(x, KEPayload):
                parts["ke"] = x.data
            elif isinstance(x, IDPayload):
                parts["ids"].append(x)  # type: ignore[union-attr]
            elif isinstance(x, NotifyPayload):
                parts["notifies"].append(x)  # type: ignore[union-attr]
            elif isinstance(x, NatOAPayload):
                pass  # RFC 3947 5.1: only needed for transport mode checksums
        if "sa" not in parts or "nonce" not in parts:
            raise RemoteProtocolError("Quick Mode message lacks SA or Nonce", field="SA")
        if len(parts["ids"]) not in (0, 2):  # type: ignore[arg-type]
            raise RemoteProtocolError(
                "Quick Mode needs both client IDs or none", NotifyType.INVALID_ID_INFORMATION, "ID"
            )
        return parts

    def _peer_selectors(
        self: IkeEngine, sa: IkeSA, ids: list[IDPayload]
    ) -> tuple[TrafficSelector, TrafficSelector]:
        """(initiator's selector, responder's selector); without IDs, the phase 1 addresses."""
        if ids:
            return TrafficSelector.from_id_payload(ids[0]), TrafficSelector.from_id_payload(ids[1])
        i_addr = sa.remote[0] if sa.role is Role.RESPONDER else sa.local[0]
        r_addr = sa.local[0] if sa.role is Role.RESPONDER else sa.remote[0]
        return TrafficSelector.from_address(i_addr), TrafficSelector.from_address(r_addr)

    def _child_policies(self: IkeEngine, sa: IkeSA) -> tuple[ChildPolicy, ...]:
        return sa.child_policies if sa.child_policies is not None else self.config.children

    def set_child_policies(self: IkeEngine, sa_id: bytes, policies: tuple[ChildPolicy, ...]) -> None:
        """Gateway: the phase 2 policies this particular client may set up (per user/group)."""
        self.get_sa(sa_id).child_policies = tuple(policies)

    def _match_policy(
        self: IkeEngine, sa: IkeSA, ts_i: TrafficSelector, ts_r: TrafficSelector
    ) -> list[ChildPolicy]:
        matches = []
        for policy in self._child_policies(sa):
            remote = policy.remote_ts
            if remote is None:
                if sa.assigned_address is None:
                    remote = TrafficSelector.from_address(sa.remote[0])
                else:
                    remote = TrafficSelector.from_address(sa.assigned_address)
            if policy.local_ts.contains(ts_r) and remote.contains(ts_i):
                matches.append(policy)
        return matches

    def _qm_r_first(self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
        rest = sa.check_hash(ex.message_id, payloads)
        parts = self._qm_parts(rest)
        sa_in: SAPayload = parts["sa"]  # type: ignore[assignment]
        ni: bytes = parts["nonce"]  # type: ignore[assignment]
        ids: list[IDPayload] = parts["ids"]  # type: ignore[assignment]
        ts_i, ts_r = self._peer_selectors(sa, ids)
        policies = self._match_policy(sa, ts_i, ts_r)
        if not policies:
            self._events.append(
                ev.ChildSAFailed(
                    sa.sa_id, f"no policy for {ts_i} === {ts_r}", NotifyType.INVALID_ID_INFORMATION
                )
            )
            ex.state = "done"
            raise RemoteProtocolError(
                f"no policy allows {ts_i} === {ts_r}", NotifyType.INVALID_ID_INFORMATION, "ID"
            )
        encaps = {int(EncapsulationMode.TUNNEL), self._encap_mode(sa)}
        if sa.natt:
            encaps |= {int(EncapsulationMode.UDP_TUNNEL), int(EncapsulationMode.UDP_TUNNEL_DRAFT)}
        chosen = None
        for policy in policies:
            try:
                prop, transform, ct = select_child_transform(
                    sa_in.proposals, policy.proposal, sa.tunvpn_peer, encaps
                )
            except NoProposalChosen:
                continue
            chosen = (policy, prop, transform, ct)
            break
        if chosen is None:
            ex.state = "done"
            self._events.append(
                ev.ChildSAFailed(sa.sa_id, "no acceptable ESP proposal", NotifyType.NO_PROPOSAL_CHOSEN)
            )
            raise NoProposalChosen("no offered ESP transform is allowed by the matching policies")
        policy, prop, transform, ct = chosen
        ke_in: bytes | None = parts.get("ke")  # type: ignore[assignment]
        dh = None
        g_qm = None
        if ct.pfs_group is not None:
            if ke_in is None:
                raise RemoteProtocolError(
                    "PFS group offered without KE", NotifyType.INVALID_KEY_INFORMATION, "KE"
                )
            dh = crypto.DiffieHellman(DHGroup(ct.pfs_group))
            g_qm = dh.shared_secret(ke_in)
        spi_out = int.from_bytes(prop.spi, "big")
        spi_in = self._new_spi()
        nr = self._random(NONCE_SIZE)
        lifetime_s = min(
            ct.lifetime_seconds or policy.proposal.lifetime_seconds, policy.proposal.lifetime_seconds
        )
        lifetime_kb = ct.lifetime_kilobytes
        if policy.proposal.lifetime_kilobytes:
            lifetime_kb = min(
                lifetime_kb or policy.proposal.lifetime_kilobytes, policy.proposal.lifetime_kilobytes
            )
        out: list[Payload] = [
            SAPayload((Proposal(prop.number, ProtocolId.ESP, spi_in.to_bytes(4, "big"), (transform,)),)),
            NoncePayload(nr),
        ]
        if dh is not None:
            out.append(KEPayload(dh.public))
        if ids:
            out += ids
        lifetime_attrs = []
        if lifetime_s != ct.lifetime_seconds:
            lifetime_attrs += [
                DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.SECONDS)),
                DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, lifetime_s),
            ]
        if lifetime_kb != ct.lifetime_kilobytes:
            lifetime_attrs += [
                DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.KILOBYTES)),
                DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, lifetime_kb),
            ]
        if lifetime_attrs:
            # RFC 2407 section 4.6.3.1: tell the initiator we lowered the lifetime
            out.append(
                NotifyPayload(
                    NotifyType.RESPONDER_LIFETIME,
                    ProtocolId.ESP,
                    spi_in.to_bytes(4, "big"),
                    encode_attributes(lifetime_attrs),
                )
            )
        ex.state = "sent-2"
        ex.data.update(spi_in=spi_in, spi_out=spi_out, ni=ni, nr=nr, name=policy.name, spis=(spi_in,))
        self._send_protected(sa, ex, ExchangeType.QUICK_MODE, out, now, expect_reply=True, extra=ni)
        # install now: peers such as vpnc send ESP before our third message arrives
        local_ts, remote_ts = ts_r, ts_i
        self._child_established(
            sa,
            ex,
            ct,
            spi_in,
            spi_out,
            ni,
            nr,
            g_qm,
            local_ts,
            remote_ts,
            lifetime_s,
            lifetime_kb,
            "responder",
            policy.name,
        )

    def _qm_r_third(self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
        if not payloads or not hasattr(payloads[0].payload, "data"):
            raise RemoteProtocolError("HASH(3) missing", NotifyType.INVALID_HASH_INFORMATION, "HASH")
        expected = sa.prf_a(b"\x00" + struct.pack("!I", ex.message_id) + ex.data["ni"] + ex.data["nr"])  # type: ignore[operator]
        got = payloads[0].payload.data  # type: ignore[union-attr]
        if not crypto.constant_time_equal(expected, got):
            raise RemoteProtocolError("HASH(3) does not verify", NotifyType.INVALID_HASH_INFORMATION, "HASH")
        ex.state = "done"
        ex.retransmit_at = None

    def _qm_i_second(
        self: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float
    ) -> None:
        ni: bytes = ex.data["ni"]  # type: ignore[assignment]
        rest = sa.check_hash(ex.message_id, payloads, extra=ni)
        parts = self._qm_parts(rest)
        sa_in: SAPayload = parts["sa"]  # type: ignore[assignment]
        nr: bytes = parts["nonce"]  # type: ignore[assignment]
        if len(sa_in.proposals) != 1 or len(sa_in.proposals[0].transforms) != 1:
            raise RemoteProtocolError(
                "responder must choose one ESP transform", NotifyType.BAD_PROPOSAL_SYNTAX, "SA"
            )
        prop = sa_in.proposals[0]
        offered: tuple[Transform, ...] = ex.data["transforms"]  # type: ignore[assignment]
        chosen = prop.transforms[0]
        ct = ChildTransform.from_transform(chosen)
        if (
            prop.protocol != ProtocolId.ESP
            or len(prop.spi) != 4
            or ct is None
            or not any(
                ChildTransform.from_transform(t) == ct
                or (
                    t.transform_id == chosen.transform_id
                    and ChildTransform.from_transform(t) is not None
                    and ChildTransform.from_transform(t).suite == ct.suite  # type: ignore[union-attr]
                )
                for t in offered
            )
        ):
            raise NoProposalChosen("responder chose an ESP transform we did not offer")
        proposal: ChildProposal = ex.data["proposal"]  # type: ignore[assignment]
        g_qm = None
        dh = ex.data.get("dh")
        if dh is not None:
            ke = parts.get("ke")
            if ke is None:
                raise RemoteProtocolError(
                    "PFS requested but no KE in answer", NotifyType.INVALID_KEY_INFORMATION, "KE"
                )
            g_qm = dh.shared_secret(ke)  # type: ignore[attr-defined]
        ids: list[IDPayload] = parts["ids"]  # type: ignore[assignment]
        local_ts: TrafficSelector = ex.data["local_ts"]  # type: ignore[assignment]
        remote_ts: TrafficSelector = ex.data["remote_ts"]  # type: ignore[assignment]
        if ids and (
            TrafficSelector.from_id_payload(ids[0]) != local_ts
            or TrafficSelector.from_id_payload(ids[1]) != remote_ts
        ):
            raise RemoteProtocolError(
                "responder changed the traffic selectors", NotifyType.INVALID_ID_INFORMATION, "ID"
            )
        lifetime_s = ct.lifetime_seconds or proposal.lifetime_seconds
        lifetime_kb = ct.lifetime_kilobytes
        for n in parts["notifies"]:  # type: ignore[attr-defined]
            if n.notify_type == NotifyType.RESPONDER_LIFETIME:
                life_type = None
                from .messages import decode_attributes

                for a in decode_attributes(n.data, field="RESPONDER-LIFETIME"):
                    if a.type == IPsecAttr.SA_LIFE_TYPE:
                        life_type = a.as_int()
                    elif a.type == IPsecAttr.SA_LIFE_DURATION and life_type == LifeType.SECONDS:
                        lifetime_s = min(lifetime_s, a.as_int())
                    elif a.type == IPsecAttr.SA_LIFE_DURATION and life_type == LifeType.KILOBYTES:
                        lifetime_kb = min(lifetime_kb, a.as_int()) if lifetime_kb else a.as_int()
        spi_in: int = ex.data["spi_in"]  # type: ignore[assignment]
        spi_out = int.from_bytes(prop.spi, "big")
        hash3 = sa.prf_a(b"\x00" + struct.pack("!I", ex.message_id) + ni + nr)
        from .messages import HashPayload

        data = sa.build(ExchangeType.QUICK_MODE, ex.message_id, [HashPayload(hash3)], encrypt=True)
        ex.last_out = data
        ex.retransmit_at = None
        ex.state = "done"
        self._out.append((sa.wrap(data), sa.remote, sa.local[1]))
        self._child_established(
            sa,
            ex,
            ct,
            spi_in,
            spi_out,
            ni,
            nr,
            g_qm,
            local_ts,
            remote_ts,
            lifetime_s,
            lifetime_kb,
            "initiator",
            str(ex.data.get("name", "")),
        )

    def _child_established(
        self: IkeEngine,
        sa: IkeSA,
        ex: Exchange,
        ct: ChildTransform,
        spi_in: int,
        spi_out: int,
        ni: bytes,
        nr: bytes,
        g_qm: bytes | None,
        local_ts: TrafficSelector,
        remote_ts: TrafficSelector,
        lifetime_s: int,
        lifetime_kb: int,
        role: str,
        name: str,
    ) -> None:
        assert sa.suite is not None and sa.keys is not None
        enc_len, auth_len = crypto.esp_key_lengths(ct.suite.transform, ct.suite.key_length, ct.suite.auth)
        total = enc_len + auth_len

        def material(spi: int) -> tuple[bytes, bytes]:
            km = crypto.keymat(
                sa.suite.hash,
                sa.keys.skeyid_d,
                ProtocolId.ESP,
                spi.to_bytes(4, "big"),
                ni,
                nr,  # type: ignore[union-attr]
                total,
                g_qm,
            )
            return km[:enc_len], km[enc_len:total]

        enc_in, auth_in = material(spi_in)
        enc_out, auth_out = material(spi_out)
        sa.children[spi_in] = ChildSA(spi_in, spi_out, name, ex.message_id)
        self._events.append(
            ev.ChildSAEstablished(
                sa.sa_id,
                spi_in,
                spi_out,
                int(ct.suite.transform),
                ct.suite.key_length,
                int(ct.suite.auth) if ct.suite.auth is not None else None,
                enc_in,
                auth_in,
                enc_out,
                auth_out,
                local_ts,
                remote_ts,
                lifetime_s,
                lifetime_kb,
                ct.encapsulation,
                sa.local,
                sa.remote,
                int(ct.pfs_group) if ct.pfs_group else None,
                role,
                name,
            )
        )

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
                if child.spi_out == spi:
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
