"""Quick Mode (RFC 2409 section 5.5), initiator and responder::

  1 I>R* HASH(1) SA Ni [KE] [IDci IDcr]     HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [| KE] [| IDci | IDcr])
  2 R>I* HASH(2) SA Nr [KE] [IDci IDcr]     HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [| KE] [| IDs])
         [N(RESPONDER-LIFETIME)]
  3 I>R* HASH(3)                            HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)

Key material per RFC 2409 section 5.5 is handed out in ChildSAEstablished.

Plain functions of the engine: ``start_child`` (behind ``IkeEngine.start_child``) and the
handlers that ``states.EXCHANGE_TABLE`` names, ``on_qm_1`` (responder), ``on_qm_2`` (initiator)
and ``on_qm_3`` (responder), called as ``handler(engine, sa, exchange, payloads, now)``."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ipsec.algorithms import EncapsulationMode
from ..ipsec.selectors import TrafficSelector
from . import crypto, exchanges, rekey
from . import events as ev
from .config import ChildPolicy
from .constants import DHGroup, ExchangeType, IPsecAttr, LifeType, NotifyType, ProtocolId
from .errors import NoProposalChosen, RemoteProtocolError
from .identity import selector_from_id_payload, selector_to_id_payload
from .messages import (
    DataAttribute,
    HashPayload,
    IDPayload,
    KEPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    RawPayload,
    SAPayload,
    Transform,
    decode_attributes,
    encode_attributes,
)
from .proposals import ChildProposal, ChildTransform, select_child_transform
from .sa import ChildSA, Exchange, ExchangeKind, ExState, IkeSA, QuickModeData, Role

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

NONCE_SIZE = 32


@dataclass(frozen=True)
class QuickModeParts:
    """The payloads of Quick Mode message 1 or 2 after HASH (RFC 2409 section 5.5)."""

    sa: SAPayload
    nonce: bytes
    ke: bytes | None
    ids: list[IDPayload]
    """Both client IDs (IDci, IDcr) or none."""
    notifies: list[NotifyPayload]


def start_child(
    engine: IkeEngine,
    sa_id: bytes,
    now: float,
    local_ts: TrafficSelector,
    remote_ts: TrafficSelector,
    proposal: ChildProposal,
    name: str = "",
) -> int:
    """Initiate a Quick Mode for one pair of IPsec SAs; returns its message ID."""
    sa = engine.get_sa(sa_id)
    ex = exchanges.new_exchange(engine, sa, ExchangeKind.QUICK)
    spi = engine._new_spi()
    ni = engine._random(NONCE_SIZE)
    transforms = proposal.transforms(_encap_mode(sa), sa.tunvpn_peer)
    sa_payload = SAPayload((Proposal(1, ProtocolId.ESP, spi.to_bytes(4, "big"), transforms),))
    payloads: list[Payload] = [sa_payload, NoncePayload(ni)]
    dh = None
    if proposal.pfs_group is not None:
        dh = crypto.DiffieHellman(proposal.pfs_group)
        payloads.append(KEPayload(dh.public))
    payloads += [selector_to_id_payload(local_ts), selector_to_id_payload(remote_ts)]
    ex.state = ExState.SENT_1
    ex.quick = QuickModeData(
        ni=ni,
        spi_in=spi,
        name=name,
        dh=dh,
        proposal=proposal,
        transforms=tuple(transforms),
        local_ts=local_ts,
        remote_ts=remote_ts,
    )
    exchanges.send_protected(engine, sa, ex, ExchangeType.QUICK_MODE, payloads, now, expect_reply=True)
    return ex.message_id


def child_policies(engine: IkeEngine, sa: IkeSA) -> tuple[ChildPolicy, ...]:
    """The phase 2 policies the peer of ``sa`` may set up."""
    if sa.child_policies is not None:
        return sa.child_policies
    if sa.role is Role.RESPONDER and engine.config.login_required:
        return ()  # only the shell knows what this user may reach: no fallback to every policy
    return engine.config.children


def _match_policy(
    engine: IkeEngine, sa: IkeSA, ts_i: TrafficSelector, ts_r: TrafficSelector
) -> list[ChildPolicy]:
    matches = []
    for policy in child_policies(engine, sa):
        remote = policy.remote_ts
        if remote is None:
            # the peer's own address: the one Mode Config assigned, of the policy's family
            assigned = sa.assigned_address6 if policy.local_ts.version == 6 else sa.assigned_address
            if assigned is None and sa.assigned_address is None and sa.assigned_address6 is None:
                assigned = sa.remote[0]  # no Mode Config: its outer address
            if assigned is None:
                continue
            remote = TrafficSelector.from_address(assigned)
        if policy.inbound_local and ts_r != policy.local_ts:
            continue  # a narrowed policy answers exactly its own selector (0.0.0.0/0)
        if policy.local_ts.contains(ts_r) and remote.contains(ts_i):
            matches.append(policy)
    return matches


def on_qm_1(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    """Quick Mode message 1 on the responder: which policy, which proposal, which
    lifetimes, then message 2, and the IPsec SAs installed."""
    rest = sa.check_hash(ex.message_id, payloads)
    parts = _qm_parts(rest)
    ts_i, ts_r = _peer_selectors(sa, parts.ids)
    # RFC 2408 section 3.14: a notify about this negotiation names the proposal's SPI, so
    # the initiator can tell which of its Quick Modes failed
    offered_spi = parts.sa.proposals[0].spi if parts.sa.proposals else b""
    policies = _responder_policies(engine, sa, ts_i, ts_r, offered_spi)
    policy, prop, transform, ct = _responder_proposal(engine, sa, parts.sa, policies, offered_spi)
    dh, g_qm = _responder_pfs(ct, parts.ke)
    lifetime_s, lifetime_kb = _responder_lifetimes(ct, policy.proposal)
    spi_in = engine._new_spi()
    nr = engine._random(NONCE_SIZE)
    ex.quick = QuickModeData(
        ni=parts.nonce,
        nr=nr,
        spi_in=spi_in,
        spi_out=int.from_bytes(prop.spi, "big"),
        name=policy.name,
        local_ts=ts_r,
        remote_ts=ts_i,
        lifetime_s=lifetime_s,
        lifetime_kb=lifetime_kb,
        inbound_local=policy.inbound_local,
    )
    out: list[Payload] = [
        SAPayload((Proposal(prop.number, ProtocolId.ESP, spi_in.to_bytes(4, "big"), (transform,)),)),
        NoncePayload(nr),
    ]
    if dh is not None:
        out.append(KEPayload(dh.public))
    out += parts.ids
    lifetime_notify = _responder_lifetime_notify(ct, lifetime_s, lifetime_kb, spi_in)
    if lifetime_notify is not None:
        out.append(lifetime_notify)
    exchanges.send_protected(
        engine, sa, ex, ExchangeType.QUICK_MODE, out, now, expect_reply=True, extra=parts.nonce
    )
    # install now: peers such as vpnc send ESP before our third message arrives
    _child_established(engine, sa, ex, ct, g_qm, "responder")


def _responder_policies(
    engine: IkeEngine, sa: IkeSA, ts_i: TrafficSelector, ts_r: TrafficSelector, offered_spi: bytes
) -> list[ChildPolicy]:
    """The policies that allow the initiator's selectors, or INVALID-ID-INFORMATION."""
    policies = _match_policy(engine, sa, ts_i, ts_r)
    if not policies:
        engine._events.append(
            ev.ChildSAFailed(sa.sa_id, f"no policy for {ts_i} === {ts_r}", NotifyType.INVALID_ID_INFORMATION)
        )
        exc = RemoteProtocolError(
            f"no policy allows {ts_i} === {ts_r}", NotifyType.INVALID_ID_INFORMATION, "ID"
        )
        exc.notify_spi = (ProtocolId.ESP, offered_spi)
        raise exc
    return policies


def _responder_proposal(
    engine: IkeEngine, sa: IkeSA, sa_in: SAPayload, policies: list[ChildPolicy], offered_spi: bytes
) -> tuple[ChildPolicy, Proposal, Transform, ChildTransform]:
    """The first matching policy that accepts one of the offered ESP transforms (with an
    encapsulation that fits the NAT situation), or NO-PROPOSAL-CHOSEN."""
    encaps = {int(EncapsulationMode.TUNNEL), _encap_mode(sa)}
    if sa.natt:
        encaps |= {int(EncapsulationMode.UDP_TUNNEL), int(EncapsulationMode.UDP_TUNNEL_DRAFT)}
    for policy in policies:
        try:
            prop, transform, ct = select_child_transform(
                sa_in.proposals, policy.proposal, sa.tunvpn_peer, encaps
            )
        except NoProposalChosen:
            continue
        return policy, prop, transform, ct
    engine._events.append(
        ev.ChildSAFailed(sa.sa_id, "no acceptable ESP proposal", NotifyType.NO_PROPOSAL_CHOSEN)
    )
    no_proposal = NoProposalChosen("no offered ESP transform is allowed by the matching policies")
    no_proposal.notify_spi = (ProtocolId.ESP, offered_spi)
    raise no_proposal


def on_qm_3(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    if not payloads or not hasattr(payloads[0].payload, "data"):
        raise RemoteProtocolError("HASH(3) missing", NotifyType.INVALID_HASH_INFORMATION, "HASH")
    expected = sa.prf_a(b"\x00" + struct.pack("!I", ex.message_id) + ex.quick.ni + ex.quick.nr)
    hash3 = payloads[0].payload
    if not isinstance(hash3, HashPayload) or not crypto.constant_time_equal(expected, hash3.data):
        raise RemoteProtocolError("HASH(3) does not verify", NotifyType.INVALID_HASH_INFORMATION, "HASH")
    ex.sent.stop()


def on_qm_2(engine: IkeEngine, sa: IkeSA, ex: Exchange, payloads: list[RawPayload], now: float) -> None:
    qm = ex.quick
    ni = qm.ni
    rest = sa.check_hash(ex.message_id, payloads, extra=ni)
    parts = _qm_parts(rest)
    sa_in, nr = parts.sa, parts.nonce
    if len(sa_in.proposals) != 1 or len(sa_in.proposals[0].transforms) != 1:
        raise RemoteProtocolError(
            "responder must choose one ESP transform", NotifyType.BAD_PROPOSAL_SYNTAX, "SA"
        )
    prop = sa_in.proposals[0]
    offered: tuple[Transform, ...] = qm.transforms
    chosen = prop.transforms[0]
    ct = ChildTransform.from_transform(chosen)
    # the answer's lifetimes may differ from the offer (RFC 2407 4.5); suite and ESN may not
    offered_choices = {(c.suite, c.esn) for c in map(ChildTransform.from_transform, offered) if c is not None}
    if (
        prop.protocol != ProtocolId.ESP
        or len(prop.spi) != 4
        or ct is None
        or (ct.suite, ct.esn) not in offered_choices
    ):
        raise NoProposalChosen("responder chose an ESP transform we did not offer")
    proposal = qm.proposal
    assert proposal is not None
    g_qm = None
    dh = qm.dh
    if dh is not None:
        ke = parts.ke
        if ke is None:
            raise RemoteProtocolError(
                "PFS requested but no KE in answer", NotifyType.INVALID_KEY_INFORMATION, "KE"
            )
        g_qm = dh.shared_secret(ke)
    ids = parts.ids
    if ids and (
        selector_from_id_payload(ids[0]) != qm.local_ts or selector_from_id_payload(ids[1]) != qm.remote_ts
    ):
        raise RemoteProtocolError(
            "responder changed the traffic selectors", NotifyType.INVALID_ID_INFORMATION, "ID"
        )
    lifetime_s = ct.lifetime_seconds or proposal.lifetime_seconds
    lifetime_kb = ct.lifetime_kilobytes
    for n in parts.notifies:
        if n.notify_type == NotifyType.RESPONDER_LIFETIME:
            life_type = None
            for a in decode_attributes(n.data, field="RESPONDER-LIFETIME"):
                if a.type == IPsecAttr.SA_LIFE_TYPE:
                    life_type = a.as_int()
                elif a.type == IPsecAttr.SA_LIFE_DURATION and life_type == LifeType.SECONDS:
                    lifetime_s = min(lifetime_s, a.as_int())
                elif a.type == IPsecAttr.SA_LIFE_DURATION and life_type == LifeType.KILOBYTES:
                    lifetime_kb = min(lifetime_kb, a.as_int()) if lifetime_kb else a.as_int()
    spi_out = int.from_bytes(prop.spi, "big")
    hash3 = sa.prf_a(b"\x00" + struct.pack("!I", ex.message_id) + ni + nr)

    data = sa.build(ExchangeType.QUICK_MODE, ex.message_id, [HashPayload(hash3)], encrypt=True)
    engine._send(sa, ex.sent, data, now, expect_reply=False)
    ex.answered = True
    qm.spi_out, qm.nr, qm.lifetime_s, qm.lifetime_kb = spi_out, nr, lifetime_s, lifetime_kb
    _child_established(engine, sa, ex, ct, g_qm, "initiator")


def _child_established(
    engine: IkeEngine,
    sa: IkeSA,
    ex: Exchange,
    ct: ChildTransform,
    g_qm: bytes | None,
    role: str,
) -> None:
    """Derive both directions' keys (RFC 2409 5.5) from what ``ex.quick`` recorded."""
    assert sa.suite is not None and sa.keys is not None
    suite, keys, qm = sa.suite, sa.keys, ex.quick
    spi_in, spi_out, ni, nr, name = qm.spi_in, qm.spi_out, qm.ni, qm.nr, qm.name
    assert qm.local_ts is not None and qm.remote_ts is not None
    enc_len, auth_len = crypto.esp_key_lengths(ct.suite.transform, ct.suite.key_length, ct.suite.auth)
    total = enc_len + auth_len

    def material(spi: int) -> tuple[bytes, bytes]:
        km = crypto.keymat(
            suite.hash, keys.skeyid_d, ProtocolId.ESP, spi.to_bytes(4, "big"), ni, nr, total, g_qm
        )
        return km[:enc_len], km[enc_len:total]

    enc_in, auth_in = material(spi_in)
    enc_out, auth_out = material(spi_out)
    # a Quick Mode that finishes on a rekeyed ISAKMP SA gives its IPsec SAs to the new one
    owner = rekey.successor(engine, sa)
    owner.children[spi_in] = ChildSA(spi_in, spi_out, name, ex.message_id)
    engine._events.append(
        ev.ChildSAEstablished(
            owner.sa_id,
            spi_in,
            spi_out,
            int(ct.suite.transform),
            ct.suite.key_length,
            int(ct.suite.auth) if ct.suite.auth is not None else None,
            enc_in,
            auth_in,
            enc_out,
            auth_out,
            qm.local_ts,
            qm.remote_ts,
            qm.lifetime_s,
            qm.lifetime_kb,
            ct.encapsulation,
            sa.local,
            sa.remote,
            int(ct.pfs_group) if ct.pfs_group else None,
            role,
            name,
            qm.inbound_local,
            esn=ct.esn,
        )
    )


def _responder_pfs(
    ct: ChildTransform, ke_in: bytes | None
) -> tuple[crypto.DiffieHellman | None, bytes | None]:
    """Our DH pair and g^xy of Quick Mode PFS when the chosen transform has a group."""
    if ct.pfs_group is None:
        return None, None
    if ke_in is None:
        raise RemoteProtocolError("PFS group offered without KE", NotifyType.INVALID_KEY_INFORMATION, "KE")
    dh = crypto.DiffieHellman(DHGroup(ct.pfs_group))
    return dh, dh.shared_secret(ke_in)


def _responder_lifetimes(ct: ChildTransform, proposal: ChildProposal) -> tuple[int, int]:
    """(seconds, kilobytes): the offer's lifetimes, lowered to our policy's where it has one."""
    lifetime_s = min(ct.lifetime_seconds or proposal.lifetime_seconds, proposal.lifetime_seconds)
    lifetime_kb = ct.lifetime_kilobytes
    if proposal.lifetime_kilobytes:
        lifetime_kb = min(lifetime_kb or proposal.lifetime_kilobytes, proposal.lifetime_kilobytes)
    return lifetime_s, lifetime_kb


def _responder_lifetime_notify(
    ct: ChildTransform, lifetime_s: int, lifetime_kb: int, spi_in: int
) -> NotifyPayload | None:
    """RFC 2407 section 4.6.3.1: RESPONDER-LIFETIME tells the initiator we lowered a lifetime."""
    attrs = []
    if lifetime_s != ct.lifetime_seconds:
        attrs += [
            DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.SECONDS)),
            DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, lifetime_s),
        ]
    if lifetime_kb != ct.lifetime_kilobytes:
        attrs += [
            DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.KILOBYTES)),
            DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, lifetime_kb),
        ]
    if not attrs:
        return None
    return NotifyPayload(
        NotifyType.RESPONDER_LIFETIME, ProtocolId.ESP, spi_in.to_bytes(4, "big"), encode_attributes(attrs)
    )


def _encap_mode(sa: IkeSA) -> int:
    if sa.natt and (sa.nat_local or sa.nat_remote):
        return int(EncapsulationMode.UDP_TUNNEL_DRAFT if sa.natt_draft else EncapsulationMode.UDP_TUNNEL)
    return int(EncapsulationMode.TUNNEL)


def _qm_parts(rest: list[RawPayload]) -> QuickModeParts:
    sa_payload: SAPayload | None = None
    nonce: bytes | None = None
    ke: bytes | None = None
    ids: list[IDPayload] = []
    notifies: list[NotifyPayload] = []
    for p in rest:
        x = p.payload
        if isinstance(x, SAPayload):
            sa_payload = x
        elif isinstance(x, NoncePayload):
            nonce = x.data
        elif isinstance(x, KEPayload):
            ke = x.data
        elif isinstance(x, IDPayload):
            ids.append(x)
        elif isinstance(x, NotifyPayload):
            notifies.append(x)
        # NAT-OA (RFC 3947 5.1) is only needed for transport mode checksums
    if sa_payload is None or nonce is None:
        raise RemoteProtocolError("Quick Mode message lacks SA or Nonce", field="SA")
    if len(ids) not in (0, 2):
        raise RemoteProtocolError(
            "Quick Mode needs both client IDs or none", NotifyType.INVALID_ID_INFORMATION, "ID"
        )
    return QuickModeParts(sa_payload, nonce, ke, ids, notifies)


def _peer_selectors(sa: IkeSA, ids: list[IDPayload]) -> tuple[TrafficSelector, TrafficSelector]:
    """(initiator's selector, responder's selector); without IDs, the phase 1 addresses."""
    if ids:
        return selector_from_id_payload(ids[0]), selector_from_id_payload(ids[1])
    i_addr = sa.remote[0] if sa.role is Role.RESPONDER else sa.local[0]
    r_addr = sa.local[0] if sa.role is Role.RESPONDER else sa.remote[0]
    return TrafficSelector.from_address(i_addr), TrafficSelector.from_address(r_addr)
