"""Phase 1: Main Mode, Aggressive Mode and Base Mode, initiator and responder.

Message layouts (RFC 2409 section 5, RFC 3947 for NAT-D; Base Mode in docs/protocol.md)::

  Main Mode                          Aggressive Mode                  Base Mode (tunvpn, v2)
  1 I>R SA VID*                      1 I>R SA KE Ni IDii VID* [CR]    1 I>R SA VID*
  2 R>I SA VID*                      2 R>I SA KE Nr IDir [CERT]       2 R>I N(COOKIE) SA VID*  (stateless)
  3 I>R KE Ni [CR] NAT-D NAT-D             AUTH_R VID* NAT-D NAT-D    3 I>R N(COOKIE) SA KE Ni IDii VID* [CR]
  4 R>I KE Nr [CR] NAT-D NAT-D       3 I>R* [CERT] AUTH_I NAT-D NAT-D       NAT-D NAT-D
  5 I>R* IDii [CERT] AUTH_I [N(IC)]        [N(INITIAL-CONTACT)]       4 R>I KE Nr IDir [CR] NAT-D NAT-D
  6 R>I* IDir [CERT] AUTH_R                                           5 I>R* [CERT] AUTH_I [N(IC)]
                                                                      6 R>I* [CERT] AUTH_R

AUTH is HASH_x for pre-shared keys or SIG_x for signatures (Base Mode's are keyed with g^xy).
The legal messages per state are in :data:`PHASE1_TABLE`; anything else is rejected in
``receive_phase1`` alone.

Plain functions of the engine (``engine: IkeEngine`` first): ``initiate`` (behind
``IkeEngine.initiate``), ``start_responder`` and ``receive_phase1`` (the engine's demultiplexer
calls them), the handlers of the table, and the ends of a phase 1 (``fail_phase1``,
``send_error_notify``) and ``unprotected_informational`` (a plain Notify before the keys).
"""

from __future__ import annotations

import copy
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import crypto, exchanges, fragments, natt, peerauth, rekey, transaction
from . import events as ev
from .config import (
    HYBRID_METHODS,
    SIGNATURE_METHODS,
    XAUTH_METHODS,
    EngineConfig,
    PeerPair,
    base_auth_method,
)
from .constants import (
    HEADER_SIZE,
    AuthMethod,
    DHGroup,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from .errors import AuthenticationError, NoProposalChosen, RemoteProtocolError
from .identity import Identity
from .messages import (
    Header,
    IDPayload,
    KEPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    RawPayload,
    SAPayload,
    VendorIDPayload,
    encode_payload,
    encode_payloads,
    pin_sa_body,
    sa_body_known,
)
from .natt import BASE_MODE_V2_VID
from .proposals import Phase1Suite, check_phase1_answer, phase1_sa_payload, select_phase1_proposal
from .retransmit import Retransmission
from .sa import Access, Address, IkeSA, P1State, Role, message_digest
from .sa import find_payloads as _find
from .sa import one_payload as _one

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

NONCE_SIZE = 32
MM, AM, BM = ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE, ExchangeType.BASE
MODE_NAMES = {MM: "main", AM: "aggressive", BM: "base"}
MODES = {v: k for k, v in MODE_NAMES.items()}

# PHASE1_TABLE, the one table of legal phase 1 transitions, follows its handlers.
# Base Mode message 3 (the echoed cookie) starts the responder's state, as Main and
# Aggressive Mode message 1 do: start_responder, not this table.

BASE_MODE_COOKIE = 32801
"""Notify type (RFC 2408 section 3.14.1, private-use status 32768-40959) of the Base Mode
cookie (docs/protocol.md); sent only in Base Mode, which only tunvpn peers speak."""
BASE_COOKIE_WINDOW = 60.0
"""Seconds per cookie secret epoch: a cookie is accepted in its epoch and the next one."""


class UnauthenticatedRefusal(AuthenticationError):
    """An unprotected error Notify received after our encrypted authentication message: a
    hint (usually: the keys differ) that anyone could have sent, believed only when no valid
    answer follows within a grace period."""


def _local_secret(engine: IkeEngine) -> bytes:
    if engine._secret is None:
        engine._secret = engine._random(32)
    return engine._secret


COOKIE_EPOCH = 3600.0
"""Seconds one secret-and-time input of the responder cookies lasts (two are accepted)."""


def _responder_cookie(engine: IkeEngine, icookie: bytes, ip: str, epoch: int) -> bytes:
    who = f"|{epoch}|{ip}".encode()
    return crypto.prf(HashAlgorithm.SHA2_256, _local_secret(engine), b"tunvpn cookie|" + icookie + who)[:8]


def new_responder_cookie(engine: IkeEngine, icookie: bytes, remote: Address, now: float) -> bytes:
    """Our cookie for a new responder SA, RFC 2408 section 2.5.3: a keyed hash of the peer's
    cookie and address, a local secret and the time, so a later message can be recognised as
    carrying a cookie we gave (:func:`is_our_cookie`) without keeping anything. Unique among
    our SAs (a collision, or a second exchange of the same cookie and address in this epoch,
    gets a random one)."""
    cookie = _responder_cookie(engine, icookie, remote[0], int(now // COOKIE_EPOCH))
    if cookie == bytes(8) or cookie in engine._sas:
        return engine._new_cookie()
    return cookie


def is_our_cookie(engine: IkeEngine, icookie: bytes, rcookie: bytes, ip: str, now: float) -> bool:
    """Whether ``rcookie`` is a responder cookie we gave ``ip`` for ``icookie`` in this
    epoch or the one before (constant time)."""
    epoch = int(now // COOKIE_EPOCH)
    return any(
        hmac.compare_digest(_responder_cookie(engine, icookie, ip, e), rcookie) for e in (epoch, epoch - 1)
    )


# ------------------------------------------------------------------ commands


def initiate(
    engine: IkeEngine,
    remote: Address,
    local: Address,
    now: float,
    *,
    mode: str = "main",
    local_id: Identity | None = None,
    xauth: bool = False,
    groups: list[DHGroup] | None = None,
    icookie: bytes | None = None,
    rekey_of: bytes | None = None,
    floated: bool = False,
    pair: PeerPair | None = None,
) -> bytes:
    """Start phase 1 towards ``remote``; returns the SA id. ``xauth`` offers XAUTH methods.
    A rekey (rekey.start) gives its announced ``icookie``, the old SA's id as ``rekey_of``
    and starts on the NAT-T port (``floated``) if the old SA had moved there. ``pair``: an
    introduced peer (issue 17): Main Mode with the pair's key only, on the NAT-T port."""
    exchange = MODES.get(mode)
    if exchange is None:
        raise ValueError(f"unknown phase 1 mode {mode!r} (main, aggressive or base)")
    sa = IkeSA(Role.INITIATOR, exchange, icookie or engine._new_cookie(), bytes(8), local, remote, now)
    sa.last_heard = now
    sa.rekey_of = rekey_of
    sa.floated = floated
    sa.local_id = local_id or peerauth.default_local_id(engine.config, local)
    methods = engine.config.auth_methods(xauth=xauth, responder=False)
    if pair is not None:
        if exchange != MM:
            raise ValueError("a direct tunnel to an introduced peer runs in Main Mode")
        sa.pair, sa.local_id, sa.floated = pair, pair.local_id, pair.start_on_natt
        sa.child_policies = pair.children
        methods = [_pair_method(engine, pair)]
    if engine.config.hybrid and exchange == BM:
        raise ValueError("hybrid authentication runs in main or aggressive mode, not base")
    if not methods and engine.config.hybrid:
        raise ValueError("hybrid authentication needs XAUTH (a user name) and a CA for the gateway")
    if not methods:
        raise ValueError("no credential: configure a pre-shared key or a certificate")
    engine._sas[sa.icookie] = sa
    engine._touch(sa.icookie)
    if exchange == AM:
        order = groups or engine.config.phase1.groups_by_strength()
        sa.aggressive_groups = list(order)
        _am_send_first(engine, sa, methods)
    else:
        offer = engine.config.phase1.enumerate(methods, groups)
        extra: list[Payload] = [*natt.vendor_ids(engine.config, xauth=xauth)]
        if exchange == BM:
            extra.append(VendorIDPayload(BASE_MODE_V2_VID))
        sa.offered = _fitting_offer(engine, sa, offer, extra, _first_pieces(engine))
        sa.later_offers = _later_offers(engine, sa, offer, extra)
        _send_first_offer(engine, sa, extra, now)
    sa.state = P1State.I_SENT_SA
    return sa.sa_id


def _send_first_offer(engine: IkeEngine, sa: IkeSA, extra: list[Payload], now: float) -> None:
    """Main or Base Mode message 1 with ``sa.offered`` and ``extra`` (Vendor IDs)."""
    sa_payload = phase1_sa_payload(sa.offered)
    sa.sa_body = encode_payload(sa_payload, 0)[4:]
    _send_phase1(engine, sa, [sa_payload, *extra], now, encrypt=False)


def _pair_method_of(config: EngineConfig, pair: PeerPair) -> AuthMethod:
    """How a pair authenticates: its pre-shared key, or our certificate's signature method."""
    if pair.secret is not None:
        return AuthMethod.PRE_SHARED_KEY
    if config.credential is None or not config.trusted_cas:
        raise ValueError("a pair without a key needs our certificate and a CA")
    return config.credential.auth_method


def _pair_method(engine: IkeEngine, pair: PeerPair) -> AuthMethod:
    return _pair_method_of(engine.config, pair)


def _first_pieces(engine: IkeEngine) -> int:
    """How many datagrams our first offer may take: one (a large first message travels as IP
    fragments, which many paths drop: issue 16), or :data:`fragments.FIRST_MESSAGE_PIECES`
    IKE fragments with ``fragmentation = force``."""
    return fragments.FIRST_MESSAGE_PIECES if engine.config.fragmentation == "force" else 1


def _fitting_offer(
    engine: IkeEngine, sa: IkeSA, offer: list[Phase1Suite], extra: list[Payload], pieces: int
) -> list[Phase1Suite]:
    """The strongest suites of ``offer`` whose first message (with ``extra``) takes at most
    ``pieces`` datagrams of ``fragment_size``: one whole, or that many IKE fragments; at
    least one suite."""
    room = engine._datagram_room(sa)
    if pieces > 1:
        room = pieces * (room - HEADER_SIZE - fragments.FRAGMENT_HEADER)
    fixed = HEADER_SIZE + len(encode_payloads(extra)[1]) if extra else HEADER_SIZE

    def fits(count: int) -> bool:
        return fixed + len(encode_payload(phase1_sa_payload(offer[:count]), 0)) <= room

    if fits(len(offer)):
        return offer
    low, high = 1, len(offer)  # fits(low) or low is the minimum; not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return offer[:low]


def _later_offers(
    engine: IkeEngine, sa: IkeSA, offer: list[Phase1Suite], extra: list[Payload]
) -> list[list[Phase1Suite]]:
    """What follows a NO-PROPOSAL-CHOSEN to ``sa.offered`` when it is not all of ``offer``:
    the whole offer again, one auth method at a time in our order of preference (a gateway
    takes one method per connection), each method's suites strongest first in one message of
    at most :data:`fragments.FIRST_MESSAGE_PIECES` IKE fragments, or in several such
    messages, strongest first, when a policy with legacy suites makes it longer. An offer
    whose suites were all in the refused one is left out."""
    later: list[list[Phase1Suite]] = []
    refused = set(sa.offered)
    for method in dict.fromkeys(suite.auth for suite in offer):
        rest = [suite for suite in offer if suite.auth == method]
        while rest:
            part = _fitting_offer(engine, sa, rest, extra, fragments.FIRST_MESSAGE_PIECES)
            if not refused.issuperset(part):
                later.append(part)
            rest = rest[len(part) :]
    return later


def _am_send_first(engine: IkeEngine, sa: IkeSA, methods: list[AuthMethod] | None = None) -> None:
    if methods is None:
        methods = [s.auth for s in sa.offered]
        methods = list(dict.fromkeys(methods))
    group = sa.aggressive_groups.pop(0)
    sa.offered = engine.config.phase1.enumerate(methods, [group])
    sa_payload = phase1_sa_payload(sa.offered)
    sa.sa_body = encode_payload(sa_payload, 0)[4:]
    sa.dh = crypto.DiffieHellman(group)
    sa.gxi = sa.dh.public
    sa.ni = engine._random(NONCE_SIZE)
    assert sa.local_id is not None
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    xauth = any(m in XAUTH_METHODS for m in methods)
    payloads: list[Payload] = [sa_payload, KEPayload(sa.gxi), NoncePayload(sa.ni), id_payload]
    payloads += natt.vendor_ids(engine.config, xauth=xauth)
    payloads += peerauth.cert_requests(engine.config)
    _send_phase1(engine, sa, payloads, sa.created, encrypt=False)


# ------------------------------------------------------------------ receive


class _OverBudget(Exception):
    """An Aggressive Mode first message whose DH and signature are over ``aggressive_budget``."""


_AGGRESSIVE_OFF = (
    "Aggressive Mode is disabled for the offered authentication methods "
    "(allow_aggressive_psk, allow_aggressive_signatures)"
)


def start_responder(
    engine: IkeEngine,
    header: Header,
    data: bytes,
    remote: Address,
    local: Address,
    now: float,
    *,
    pair: PeerPair | None = None,
) -> None:
    config = engine.config
    if header.exchange == AM and not (config.allow_aggressive_psk or config.allow_aggressive_signatures):
        # refused before anything is parsed or kept: the same answer an offer of only
        # disabled methods gets, at the cost of a header (issue 14)
        engine._protocol_error(
            header.icookie + header.rcookie,
            remote,
            _AGGRESSIVE_OFF,
            int(NotifyType.NO_PROPOSAL_CHOSEN),
            "first message refused: NO_PROPOSAL_CHOSEN",
        )
        exc = NoProposalChosen(_AGGRESSIVE_OFF)
        send_error_notify(engine, None, header, remote, local, exc, now, len(data))
        return
    if not _offer_is_affordable(engine, header, data, remote, now):
        return  # dropped and counted
    if header.exchange == BM and not _bm_r_cookie_echoed(engine, header, data, remote, local, now):
        return  # answered (or dropped) without keeping anything
    rcookie = new_responder_cookie(engine, header.icookie, remote, now)
    sa = IkeSA(Role.RESPONDER, header.exchange, header.icookie, rcookie, local, remote, now)
    sa.last_heard = now
    if pair is not None:
        sa.pair, sa.local_id, sa.child_policies = pair, pair.local_id, pair.children
    if local[1] != engine.ike_port:
        sa.floated = True
    payloads = sa.open(header, data)
    sa.last_in = message_digest(data)
    engine._sas[sa.rcookie] = sa
    engine._touch(sa.rcookie)
    engine._start_half_open(sa, (header.icookie, remote))
    try:
        if header.exchange == MM:
            _mm_r_got_sa(engine, sa, payloads, now)
        elif header.exchange == AM:
            _am_r_got_sa(engine, sa, payloads, now)
        else:
            _bm_r_got_ke(engine, sa, payloads, now)
    except _OverBudget:
        # its DH (and signature) is over budget: dropped, counted, forgotten; a real peer
        # retransmits (issue 14)
        engine._bad_input("Aggressive Mode first message over budget")
        fail_phase1(engine, sa, "over budget", None, send_notify=False, quiet=True)
    except RemoteProtocolError as exc:
        # the first message: no phase 1 in progress to protect, refuse it and forget it
        engine._protocol_error(
            sa.sa_id, remote, str(exc), int(exc.notify), f"first message refused: {exc.notify.name}"
        )
        send_error_notify(engine, sa, header, remote, local, exc, now, len(data))
        # unauthenticated (maybe spoofed): counted above and summed up, no log line each
        fail_phase1(engine, sa, str(exc), int(exc.notify), send_notify=False, quiet=True)


def _offer_is_affordable(engine: IkeEngine, header: Header, data: bytes, remote: Address, now: float) -> bool:
    """Whether the offer (the SA payload, first in every first message we take) of a first
    message may be parsed: free when it is one we know (:func:`messages.sa_body_known`), else
    spent from ``offer_budget`` (issue 14). Only the generic header is read here; a first
    message that does not start with a well-formed SA payload is left to the parser."""
    if header.next_payload != PayloadType.SA or len(data) < HEADER_SIZE + 4:
        return True
    length = int.from_bytes(data[HEADER_SIZE + 2 : HEADER_SIZE + 4], "big")
    if length < 4 or HEADER_SIZE + length > len(data):
        return True
    if sa_body_known(data[HEADER_SIZE + 4 : HEADER_SIZE + length]):
        return True
    if engine.spend("offer_budget", remote[0], now):
        return True
    engine._bad_input("first message with a new offer over budget")
    return False


def receive_phase1(engine: IkeEngine, sa: IkeSA, header: Header, data: bytes, now: float) -> None:
    if sa.state is P1State.ESTABLISHED:
        return  # a late duplicate of a message we already answered differently
    handler = PHASE1_TABLE.get((ExchangeType(sa.exchange), sa.role, sa.state))
    if handler is None:
        raise RemoteProtocolError(
            f"unexpected phase 1 message in state {sa.state.value}", NotifyType.INVALID_EXCHANGE_TYPE
        )
    # Anyone who sees the cookies can send a message for this SA (issue 12): one that
    # fails leaves the SA as it was, and ends the phase 1 only if it is a verified
    # authentication failure (_phase1_failure_is_verified); else it is dropped and
    # counted (engine._on_remote_error) and the real peer's messages carry on.
    saved = {
        k: copy.copy(v) if isinstance(v, set | list | dict | Retransmission) else v
        for k, v in vars(sa).items()
    }
    handling = False
    try:
        # the responder's cookie comes with its first answer; in Base Mode with message 4
        first_answer = P1State.I_SENT_KE if sa.exchange == BM else P1State.I_SENT_SA
        if sa.role is Role.INITIATOR and sa.state is first_answer:
            _first_answer(sa, header)
        try:
            payloads = sa.open(header, data)
        except RemoteProtocolError as exc:
            if header.flags & HeaderFlag.ENCRYPTION and sa.psk is not None:
                raise AuthenticationError(
                    f"cannot decrypt phase 1 message ({exc}); the pre-shared keys probably differ",
                    field="encrypted payload",
                ) from exc
            raise
        notify = _find(payloads, NotifyPayload)
        if notify and sa.role is Role.INITIATOR:
            n = notify[0].payload
            assert isinstance(n, NotifyPayload)
            if n.notify_type < 8192:
                _peer_refused(engine, sa, n, now)
                return
        sa.last_in = message_digest(data)
        sa.sent.stop()
        handling = True
        handler(engine, sa, payloads, now)
        if sa.established and engine._phase1_drops:
            engine._phase1_drops.pop(sa.local_cookie, None)
    except RemoteProtocolError as exc:
        if handling and _phase1_failure_is_verified(sa, header, exc):
            engine._protocol_error(sa.sa_id, sa.remote, str(exc), int(exc.notify))
            send_error_notify(engine, sa, header, sa.remote, sa.local, exc, now, len(data))
            fail_phase1(engine, sa, str(exc), int(exc.notify), send_notify=False)
            return
        vars(sa).update(saved)
        drops = engine._phase1_drops = engine._phase1_drops or {}
        if not isinstance(drops.get(sa.local_cookie), UnauthenticatedRefusal):
            drops[sa.local_cookie] = exc
        if sa.role is Role.RESPONDER and isinstance(exc, AuthenticationError):
            # a hint for a peer whose key differs (what strongSwan sends too); it cannot
            # end the real peer's phase 1 early: a tunvpn initiator waits (_peer_refused)
            send_error_notify(engine, sa, header, sa.remote, sa.local, exc, now, len(data))
        raise


def unprotected_informational(engine: IkeEngine, sa: IkeSA, header: Header, data: bytes, now: float) -> None:
    """A plain Notify (before keys exist): only errors during phase 1 are believed."""
    payloads = sa.open(header, data)
    for raw in payloads:
        n = raw.payload
        if isinstance(n, NotifyPayload) and not sa.established and n.notify_type < 8192:
            _peer_refused(engine, sa, n, now)
            return
        if isinstance(n, NotifyPayload) and n.notify_type in (
            NotifyType.INVALID_SPI,
            NotifyType.INVALID_COOKIE,
        ):
            # the peer may have lost our SAs (a restart), or anyone says so: a short DPD
            # probe now, never a teardown by itself (issue 15)
            if exchanges.dpd_probe(engine, sa, now, exchanges.HINT_PROBE_WITHIN):
                log.info("%s says it does not know this ISAKMP SA (restarted?): DPD probe now", sa.remote[0])
            return
    log.info("ignoring unprotected Informational from %s", sa.remote[0])


def _peer_refused(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    name = NotifyType(n.notify_type).name if n.notify_type in NotifyType._value2member_map_ else n.notify_type
    if sa.role is Role.RESPONDER:
        # anyone can send an unprotected Notify with the cookies: it does not end our
        # phase 1 (issue 12); if the peer really gave up, the half-open SA times out
        engine.drops["unprotected error Notify during phase 1"] += 1
        log.info("%s sent %s during phase 1 (unauthenticated): ignored", sa.remote[0], name)
        notify = NotifyType(n.notify_type) if n.notify_type in NotifyType._value2member_map_ else None
        drops = engine._phase1_drops = engine._phase1_drops or {}
        drops[sa.local_cookie] = UnauthenticatedRefusal(
            f"peer answered {name}", notify or NotifyType.AUTHENTICATION_FAILED
        )
        return
    if n.notify_type == NotifyType.INVALID_COOKIE:
        # "no such SA": what a responder answers to garbage sent in our name (with our
        # cookie) before it keeps state for us (issue 12); a lost exchange times out
        engine.drops["unprotected INVALID-COOKIE during phase 1"] += 1
        log.info("%s answered INVALID-COOKIE during phase 1 (unauthenticated): ignored", sa.remote[0])
        return
    if sa.state is P1State.I_SENT_AUTH:
        # our encrypted authentication is out: a refusal now usually means "the keys
        # differ", but anyone can send it (issue 12). Resend once and give a valid
        # answer one grace period (retransmit_phase1) before believing it.
        drops = engine._phase1_drops = engine._phase1_drops or {}
        if not isinstance(drops.get(sa.local_cookie), UnauthenticatedRefusal):
            notify = NotifyType(n.notify_type) if n.notify_type in NotifyType._value2member_map_ else None
            drops[sa.local_cookie] = UnauthenticatedRefusal(
                f"peer answered {name}" + (" (the pre-shared keys probably differ)" if sa.psk else ""),
                notify or NotifyType.AUTHENTICATION_FAILED,
            )
            sa.sent.at = now + 2 * engine.config.retransmit_base
            engine._emit(sa, sa.sent.message, again=True)
        return
    if (
        sa.exchange in (MM, BM)
        and sa.state is P1State.I_SENT_SA
        and n.notify_type == NotifyType.NO_PROPOSAL_CHOSEN
        and sa.later_offers
    ):
        # our first message carried only the strongest suites that fit one datagram: offer
        # everything, one auth method at a time (strongest first, as always; IKE fragments if
        # the path needs them). A forged refusal moves us on as a real one does, but it cannot
        # take a suite of a method out of that method's offer (docs/proposals.md)
        count = len(sa.offered)
        sa.offered = sa.later_offers.pop(0)
        log.info(
            "%s refused our %d phase 1 suites; offering the next %d (%s)",
            sa.remote[0],
            count,
            len(sa.offered),
            sa.offered[0].auth.name,
        )
        sa.rcookie = bytes(8)
        xauth = any(suite.auth in XAUTH_METHODS for suite in sa.offered)
        extra: list[Payload] = [*natt.vendor_ids(engine.config, xauth=xauth)]
        if sa.exchange == BM:
            extra.append(VendorIDPayload(BASE_MODE_V2_VID))
        _send_first_offer(engine, sa, extra, now)
        return
    if sa.exchange == AM and n.notify_type == NotifyType.NO_PROPOSAL_CHOSEN and sa.aggressive_groups:
        # Aggressive Mode carries one group: try the next one (issue #2, seed FIG. 6)
        refused = sa.dh.group.name if sa.dh is not None else "?"
        log.info("aggressive mode: %s refused group %s, trying the next", sa.remote[0], refused)
        sa.rcookie = bytes(8)
        _am_send_first(engine, sa)
        return
    if (
        sa.exchange == BM
        and sa.state is P1State.I_SENT_SA
        and n.notify_type
        in (
            NotifyType.INVALID_EXCHANGE_TYPE,
            NotifyType.UNSUPPORTED_EXCHANGE_TYPE,
            NotifyType.INVALID_PAYLOAD_TYPE,
            NotifyType.PAYLOAD_MALFORMED,  # a tunvpn gateway from before Base Mode v2
        )
    ):
        # not a tunvpn peer, or Base Mode is off there (allow_base_mode): fall back to
        # Main Mode, which is at least as strong (docs/protocol.md)
        log.info("%s does not do Base Mode (%s); falling back to Main Mode", sa.remote[0], name)
        sa.exchange = MM
        sa.rcookie = bytes(8)
        sa.ni = b""
        sa_payload = phase1_sa_payload(sa.offered)
        sa.sa_body = encode_payload(sa_payload, 0)[4:]
        xauth = any(s.auth in XAUTH_METHODS for s in sa.offered)
        _send_phase1(
            engine, sa, [sa_payload, *natt.vendor_ids(engine.config, xauth=xauth)], now, encrypt=False
        )
        return
    fail_phase1(engine, sa, f"peer answered {name}", n.notify_type, send_notify=False)


# ------------------------------------------------------------------ Main Mode


def _mm_i_got_sa(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    sa_raw = _one(payloads, SAPayload, "SA")
    assert isinstance(sa_raw.payload, SAPayload)
    sa.suite = check_phase1_answer(sa.offered, sa_raw.payload)
    natt.note_vendor_ids(engine.config, sa, payloads)
    sa.dh = crypto.DiffieHellman(sa.suite.group)
    sa.gxi = sa.dh.public
    sa.ni = engine._random(NONCE_SIZE)
    out: list[Payload] = [KEPayload(sa.gxi), NoncePayload(sa.ni)]
    if sa.suite.auth in SIGNATURE_METHODS:
        out += peerauth.cert_requests(engine.config)
    out += natt.natd_payloads(engine.config, sa, engine._random)
    sa.state = P1State.I_SENT_KE
    _send_phase1(engine, sa, out, now, encrypt=False)


def _mm_r_got_sa(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    sa_raw = _one(payloads, SAPayload, "SA")
    natt.note_vendor_ids(engine.config, sa, payloads)
    _choose_suite(engine.config, sa, sa_raw, None)
    out: list[Payload] = [_chosen_sa(sa_raw, sa)]
    out += natt.vendor_ids(engine.config, xauth=sa.xauth_expected, peer=sa)
    sa.state = P1State.R_SENT_SA
    _send_phase1(engine, sa, out, now, encrypt=False, expect_reply=False)


def _mm_r_got_ke(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    assert sa.suite is not None
    sa.gxi = _peer_ke(sa, payloads)
    sa.ni = _peer_nonce(payloads)
    sa.dh = crypto.DiffieHellman(sa.suite.group)
    sa.gxr = sa.dh.public
    sa.nr = engine._random(NONCE_SIZE)
    natt.check_natd(engine.config, sa, payloads)
    if sa.pair is not None:
        sa.psk = sa.pair.secret  # chosen by the endpoint the gateway announced
    elif base_auth_method(sa.suite.auth) not in SIGNATURE_METHODS:
        # by address: the ID comes encrypted in message 5 (RFC 2409 section 5.4)
        sa.psk = _responder_psk(engine, None, sa.remote[0])
    _derive_keys(sa)
    _send_responder_ke(engine, sa, [KEPayload(sa.gxr), NoncePayload(sa.nr)], now)


def _send_responder_ke(engine: IkeEngine, sa: IkeSA, out: list[Payload], now: float) -> None:
    """The responder's KE message (Main Mode 4, Base Mode 4): ``out`` plus a certificate
    request when a signature method was chosen (XAUTH_INIT_RSA and hybrid included) and the
    NAT-D payloads."""
    assert sa.suite is not None
    if sa.suite.auth in SIGNATURE_METHODS:
        out = [*out, *peerauth.cert_requests(engine.config)]
    out = [*out, *natt.natd_payloads(engine.config, sa, engine._random)]
    sa.state = P1State.R_SENT_KE
    _send_phase1(engine, sa, out, now, encrypt=False, expect_reply=False)


def _mm_i_got_ke(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    assert sa.suite is not None
    sa.gxr = _peer_ke(sa, payloads)
    sa.nr = _peer_nonce(payloads)
    natt.check_natd(engine.config, sa, payloads)
    if sa.pair is not None:
        sa.psk = sa.pair.secret
    elif base_auth_method(sa.suite.auth) not in SIGNATURE_METHODS:
        sa.psk = engine.config.psks.lookup(None, sa.remote[0])
        if sa.psk is None:
            raise AuthenticationError(f"no pre-shared key for {sa.remote[0]}")
    _derive_keys(sa)
    natt.maybe_float(engine.config, sa)
    assert sa.local_id is not None
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    out: list[Payload] = [id_payload, *peerauth.auth_payloads(engine.config, sa, initiator=True)]
    out.extend(rekey.auth_notifies(engine, sa))  # INITIAL-CONTACT, or a rekey's proof
    sa.state = P1State.I_SENT_AUTH
    _send_phase1(engine, sa, out, now, encrypt=True)


def _mm_r_got_auth(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    _take_peer_id(sa, payloads)
    peerauth.verify_auth(engine.config, sa, payloads, initiator=True, now=now)
    sa.local_id = (
        sa.pair.local_id if sa.pair is not None else peerauth.default_local_id(engine.config, sa.local)
    )
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    out: list[Payload] = [id_payload, *peerauth.auth_payloads(engine.config, sa, initiator=False)]
    _send_phase1(engine, sa, out, now, encrypt=True, expect_reply=False)
    _phase1_done(engine, sa, payloads, now)


def _mm_i_got_auth(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    _take_peer_id(sa, payloads)
    peerauth.verify_auth(engine.config, sa, payloads, initiator=False, now=now)
    _phase1_done(engine, sa, payloads, now)


# ------------------------------------------------------------------ Aggressive Mode


def _am_r_got_sa(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    sa_raw = _one(payloads, SAPayload, "SA")
    natt.note_vendor_ids(engine.config, sa, payloads)
    _take_peer_id(sa, payloads)
    ke = _one(payloads, KEPayload, "KE").payload
    assert isinstance(ke, KEPayload)
    _choose_suite(engine.config, sa, sa_raw, len(ke.data))
    assert sa.suite is not None
    if not engine.spend("aggressive_budget", sa.remote[0], now):
        raise _OverBudget
    sa.gxi = _peer_ke(sa, payloads)
    sa.ni = _peer_nonce(payloads)
    sa.dh = crypto.DiffieHellman(sa.suite.group)
    sa.gxr = sa.dh.public
    sa.nr = engine._random(NONCE_SIZE)
    _lookup_psk(engine, sa)
    _derive_keys(sa)
    sa.local_id = (
        sa.pair.local_id if sa.pair is not None else peerauth.default_local_id(engine.config, sa.local)
    )
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    out: list[Payload] = [_chosen_sa(sa_raw, sa), KEPayload(sa.gxr), NoncePayload(sa.nr), id_payload]
    out += peerauth.auth_payloads(engine.config, sa, initiator=False)
    out += natt.vendor_ids(engine.config, xauth=sa.xauth_expected, peer=sa)
    out += natt.natd_payloads(engine.config, sa, engine._random)
    sa.state = P1State.R_SENT_KE
    _send_phase1(engine, sa, out, now, encrypt=False, expect_reply=False)


def _am_i_got_sa(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    sa_raw = _one(payloads, SAPayload, "SA")
    assert isinstance(sa_raw.payload, SAPayload)
    sa.suite = check_phase1_answer(sa.offered, sa_raw.payload)
    natt.note_vendor_ids(engine.config, sa, payloads)
    sa.gxr = _peer_ke(sa, payloads)
    sa.nr = _peer_nonce(payloads)
    _take_peer_id(sa, payloads)
    _lookup_psk(engine, sa)
    _derive_keys(sa)
    peerauth.verify_auth(engine.config, sa, payloads, initiator=False, now=now)
    natt.check_natd(engine.config, sa, payloads)
    natt.maybe_float(engine.config, sa)
    out: list[Payload] = [
        *peerauth.auth_payloads(engine.config, sa, initiator=True),
        *natt.natd_payloads(engine.config, sa, engine._random),
    ]
    out.extend(rekey.auth_notifies(engine, sa))  # INITIAL-CONTACT, or a rekey's proof
    # the third message is encrypted, as vpnc, Cisco and Libreswan send it
    _send_phase1(engine, sa, out, now, encrypt=True, expect_reply=False)
    _phase1_done(engine, sa, payloads, now)


def _am_r_got_auth(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    peerauth.verify_auth(engine.config, sa, payloads, initiator=True, now=now)
    natt.check_natd(engine.config, sa, payloads)
    _phase1_done(engine, sa, payloads, now)


# ------------------------------------------------------------------ Base Mode (tunvpn, v2)


def _bm_cookie(engine: IkeEngine, icookie: bytes, remote: Address, epoch: int) -> bytes:
    """The responder's stateless cookie: prf(secret, epoch | CKY-I | IP | port)[:16]."""
    who = f"{epoch}|{remote[0]}|{remote[1]}".encode()
    return crypto.prf(HashAlgorithm.SHA2_256, _local_secret(engine), b"tunvpn base cookie|" + icookie + who)[
        :16
    ]


def _bm_r_cookie_echoed(
    engine: IkeEngine, header: Header, data: bytes, remote: Address, local: Address, now: float
) -> bool:
    """Base Mode messages 1 and 3 before any state exists (docs/protocol.md).

    Message 1 is answered with the chosen transform and a cookie bound to the sender's
    address, and nothing is kept. Only message 3 echoing a valid cookie (True) lets the
    caller create the SA, after which the Diffie-Hellman work is done.
    """
    if not engine.config.allow_base_mode:
        raise RemoteProtocolError(
            "Base Mode is disabled (allow_base_mode = false)",
            NotifyType.UNSUPPORTED_EXCHANGE_TYPE,
            "header.exchange",
            18,
        )
    probe = IkeSA(Role.RESPONDER, BM, header.icookie, bytes(8), local, remote, now)
    probe.floated = local[1] != engine.ike_port
    try:
        payloads = probe.open(header, data)
    except RemoteProtocolError as exc:
        # no answer to what does not even parse: the source may be spoofed, and an error
        # Notify would reach the initiator whose cookie was copied (issue 12)
        engine._protocol_error(
            header.icookie + header.rcookie,
            remote,
            str(exc),
            int(exc.notify),
            "malformed Base Mode first message",
        )
        return False
    if not any(
        isinstance(v.payload, VendorIDPayload) and v.payload.data == BASE_MODE_V2_VID
        for v in _find(payloads, VendorIDPayload)
    ):
        raise RemoteProtocolError(
            "Base Mode without the Base Mode v2 vendor ID (the first Base Mode is not spoken)",
            NotifyType.UNSUPPORTED_EXCHANGE_TYPE,
            "VID",
        )
    cookies = [
        n.payload.data
        for n in _find(payloads, NotifyPayload)
        if isinstance(n.payload, NotifyPayload) and n.payload.notify_type == BASE_MODE_COOKIE
    ]
    epoch = int(now // BASE_COOKIE_WINDOW)
    if not cookies:
        sa_raw = _one(payloads, SAPayload, "SA")
        _choose_suite(engine.config, probe, sa_raw, None)
        cookie = NotifyPayload(
            BASE_MODE_COOKIE, ProtocolId.ISAKMP, b"", _bm_cookie(engine, header.icookie, remote, epoch)
        )
        xauth = probe.suite is not None and probe.suite.auth in XAUTH_METHODS
        out: list[Payload] = [
            cookie,
            _chosen_sa(sa_raw, probe),
            *natt.vendor_ids(engine.config, xauth=xauth, peer=probe),
        ]
        out.append(VendorIDPayload(BASE_MODE_V2_VID))
        answer = probe.build(BM, 0, out, encrypt=False)
        engine._out.append((probe.wrap(answer), remote, local[1]))
        return False
    if len(cookies) == 1 and any(
        crypto.constant_time_equal(cookies[0], _bm_cookie(engine, header.icookie, remote, e))
        for e in (epoch, epoch - 1)
    ):
        return True
    engine._protocol_error(
        header.icookie + header.rcookie, remote, "Base Mode cookie does not verify; dropped", None
    )
    return False


def _bm_i_got_cookie(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    cookie = [
        n.payload.data
        for n in _find(payloads, NotifyPayload)
        if isinstance(n.payload, NotifyPayload) and n.payload.notify_type == BASE_MODE_COOKIE
    ]
    if len(cookie) != 1 or not 8 <= len(cookie[0]) <= 64:
        raise RemoteProtocolError("Base Mode message 2 without one cookie", field="N(COOKIE)")
    sa_raw = _one(payloads, SAPayload, "SA")
    assert isinstance(sa_raw.payload, SAPayload)
    sa.suite = check_phase1_answer(sa.offered, sa_raw.payload)
    natt.note_vendor_ids(engine.config, sa, payloads)
    sa.dh = crypto.DiffieHellman(sa.suite.group)
    sa.gxi = sa.dh.public
    sa.ni = engine._random(NONCE_SIZE)
    assert sa.local_id is not None
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    xauth = any(s.auth in XAUTH_METHODS for s in sa.offered)
    out: list[Payload] = [
        NotifyPayload(BASE_MODE_COOKIE, ProtocolId.ISAKMP, b"", cookie[0]),
        phase1_sa_payload(sa.offered),  # message 1's SA again: the responder kept nothing
        KEPayload(sa.gxi),
        NoncePayload(sa.ni),
        id_payload,
        *natt.vendor_ids(engine.config, xauth=xauth),
        VendorIDPayload(BASE_MODE_V2_VID),
    ]
    if base_auth_method(sa.suite.auth) in SIGNATURE_METHODS:
        out += peerauth.cert_requests(engine.config)
    out += natt.natd_payloads(
        engine.config, sa, engine._random
    )  # CKY-R is still zero here, as the responder computes it
    sa.state = P1State.I_SENT_KE
    _send_phase1(engine, sa, out, now, encrypt=False)


def _bm_r_got_ke(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    sa_raw = _one(payloads, SAPayload, "SA")
    natt.note_vendor_ids(engine.config, sa, payloads)
    _take_peer_id(sa, payloads)
    ke = _one(payloads, KEPayload, "KE").payload
    assert isinstance(ke, KEPayload)
    _choose_suite(engine.config, sa, sa_raw, len(ke.data))
    assert sa.suite is not None
    sa.gxi = _peer_ke(sa, payloads)
    sa.ni = _peer_nonce(payloads)
    natt.check_natd(engine.config, sa, payloads, rcookie=bytes(8))
    sa.dh = crypto.DiffieHellman(sa.suite.group)
    sa.gxr = sa.dh.public
    sa.nr = engine._random(NONCE_SIZE)
    _lookup_psk(engine, sa)  # by identity; a decoy for an unknown one (nothing here shows it)
    _derive_keys(sa)
    sa.local_id = (
        sa.pair.local_id if sa.pair is not None else peerauth.default_local_id(engine.config, sa.local)
    )
    id_payload = sa.local_id.to_payload()
    sa.local_id_body = encode_payload(id_payload, 0)[4:]
    _send_responder_ke(engine, sa, [KEPayload(sa.gxr), NoncePayload(sa.nr), id_payload], now)


def _bm_i_got_ke(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    assert sa.suite is not None
    sa.gxr = _peer_ke(sa, payloads)
    sa.nr = _peer_nonce(payloads)
    _take_peer_id(sa, payloads)
    natt.check_natd(engine.config, sa, payloads)
    _lookup_psk(engine, sa)
    _derive_keys(sa)
    natt.maybe_float(engine.config, sa)
    out: list[Payload] = [*peerauth.auth_payloads(engine.config, sa, initiator=True)]
    out.extend(rekey.auth_notifies(engine, sa))  # INITIAL-CONTACT, or a rekey's proof
    sa.state = P1State.I_SENT_AUTH
    _send_phase1(engine, sa, out, now, encrypt=True)


def _bm_r_got_auth(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    peerauth.verify_auth(engine.config, sa, payloads, initiator=True, now=now)
    out: list[Payload] = [*peerauth.auth_payloads(engine.config, sa, initiator=False)]
    _send_phase1(engine, sa, out, now, encrypt=True, expect_reply=False)
    _phase1_done(engine, sa, payloads, now)


def _bm_i_got_auth(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    peerauth.verify_auth(engine.config, sa, payloads, initiator=False, now=now)
    _phase1_done(engine, sa, payloads, now)


# ------------------------------------------------------------------ pieces


def _lookup_psk(engine: IkeEngine, sa: IkeSA) -> None:
    assert sa.suite is not None
    if base_auth_method(sa.suite.auth) in SIGNATURE_METHODS:
        return
    if sa.pair is not None:
        sa.psk = sa.pair.secret
        return
    if sa.role is Role.RESPONDER:
        sa.psk = _responder_psk(engine, sa.peer_id, sa.remote[0])
        return
    sa.psk = engine.config.psks.lookup(sa.peer_id, sa.remote[0])
    if sa.psk is None:
        raise AuthenticationError(f"no pre-shared key for peer {sa.peer_id} at {sa.remote[0]}")


def _responder_psk(engine: IkeEngine, peer_id: Identity | None, peer_ip: str) -> bytes:
    """The pre-shared key for a peer, or a decoy for one we do not know (no identity oracle).

    A responder that refused unknown identities at once (AUTHENTICATION-FAILED, as
    strongSwan does) would tell anyone which group names exist. Instead an unknown peer
    gets a key derived from a random per-engine secret and the same answer as a known
    one; the exchange then fails where a wrong key fails (docs/protocol.md, "Identity
    decoy"). The decoy is computed for every peer so both paths do the same work.
    """
    who = (str(peer_id) if peer_id is not None else "").encode() + b"\x00" + peer_ip.encode()
    decoy = crypto.prf(HashAlgorithm.SHA2_256, _local_secret(engine), b"tunvpn decoy psk\x00" + who)
    psk = engine.config.psks.lookup(peer_id, peer_ip)
    if psk is None:
        log.info("no pre-shared key for %s at %s: answering with a decoy key", peer_id, peer_ip)
        return decoy
    return psk


# ------------------------------------------------------------------ sending and ending


def _send_phase1(
    engine: IkeEngine,
    sa: IkeSA,
    payloads: list[Payload],
    now: float,
    *,
    encrypt: bool,
    expect_reply: bool = True,
) -> None:
    data = sa.build(sa.exchange, 0, payloads, encrypt=encrypt)
    engine._send(sa, sa.sent, data, now, expect_reply=expect_reply)


def retransmit_phase1(engine: IkeEngine, sa: IkeSA, now: float) -> None:
    if isinstance((engine._phase1_drops or {}).get(sa.local_cookie), UnauthenticatedRefusal):
        fail_phase1(engine, sa, "no valid answer after the peer's refusal", None, send_notify=False)
        return
    if not engine._send_again(sa, sa.sent, now):
        fail_phase1(
            engine,
            sa,
            f"no answer from {sa.remote[0]} after {sa.sent.count} retransmissions",
            None,
            send_notify=False,
        )


def _phase1_done(engine: IkeEngine, sa: IkeSA, payloads: list[RawPayload], now: float) -> None:
    assert sa.suite is not None
    sa.state = P1State.ESTABLISHED
    sa.sent.stop()
    sa.last_heard = now
    sa.expires = now + sa.suite.lifetime if sa.suite.lifetime else None
    engine._end_half_open(sa.local_cookie)
    if sa.role is Role.RESPONDER and sa.sa_body:
        pin_sa_body(sa.sa_body)  # the next client of its kind is cheap to parse (issue 14)
    if sa.nat_local and sa.natt:
        sa.next_keepalive = now + engine.config.keepalive_interval
    sa.xauth_expected = sa.suite.auth in XAUTH_METHODS
    if sa.role is Role.RESPONDER:
        for p in payloads:
            if isinstance(p.payload, NotifyPayload) and p.payload.notify_type == rekey.REKEY_PROOF:
                rekey.bind(engine, sa, p.payload, now)
                break
    rekey.schedule(engine, sa, now)
    engine._events.append(
        ev.Phase1Established(
            sa.sa_id,
            sa.remote,
            sa.role.value,
            MODE_NAMES[ExchangeType(sa.exchange)],
            str(sa.suite),
            str(sa.local_id),
            str(sa.peer_id),
            sa.nat_local,
            sa.nat_remote,
            tuple(sorted(sa.peer_vendor_ids)),
            sa.local,
            sa.keys.enc_key if sa.keys is not None else b"",
        )
    )
    initial_contact = any(
        isinstance(p.payload, NotifyPayload) and p.payload.notify_type == NotifyType.INITIAL_CONTACT
        for p in payloads
    )
    # the login gate (states.ACCESS_TABLE); INITIAL-CONTACT waits for the access it needs
    engine._phase1_access(sa, initial_contact, now)
    if sa.role is Role.RESPONDER and sa.xauth_expected and sa.access is not Access.GRANTED:
        transaction.start_xauth(engine, sa, now)
    rekey.initiator_logged_in(engine, sa, now)


def fail_phase1(
    engine: IkeEngine, sa: IkeSA, reason: str, notify: int | None, *, send_notify: bool, quiet: bool = False
) -> None:
    """End a phase 1 (a Phase1Failed event); ``quiet``: a refused first message, counted by
    the caller instead of logged (issue 14)."""
    if sa.state is P1State.DEAD:
        return
    dropped = engine._phase1_drops.pop(sa.local_cookie, None) if engine._phase1_drops else None
    if dropped is not None and notify is None:
        # timed out after refusing messages: say why (a wrong key looks like this now)
        reason = f"{reason}; last message refused: {dropped}"
        if isinstance(dropped, AuthenticationError):
            notify = int(dropped.notify)
    log.log(logging.DEBUG if quiet else logging.INFO, "phase 1 with %s failed: %s", sa.remote[0], reason)
    if send_notify and notify is not None:
        _send_unprotected_notify(engine, sa.icookie, sa.rcookie, sa.remote, sa.local, notify, sa.floated)
    engine._remove_sa(sa)
    engine._events.append(ev.Phase1Failed(sa.sa_id, sa.remote, reason, notify, unauthenticated=quiet))


UNPROTECTED_NOTIFY_SIZE = 28 + 12 + 16
"""Bytes of an unprotected Notify about an ISAKMP SA: header, notify header, both cookies."""


def _send_unprotected_notify(
    engine: IkeEngine,
    icookie: bytes,
    rcookie: bytes,
    remote: Address,
    local: Address,
    notify: int,
    floated: bool,
) -> None:
    from .messages import Message, encode_message

    msg = Message(
        icookie,
        rcookie,
        ExchangeType.INFORMATIONAL,
        0,
        0,
        (NotifyPayload(notify, ProtocolId.ISAKMP, icookie + rcookie),),
    )
    data = encode_message(msg)
    if floated:
        data = b"\x00\x00\x00\x00" + data
    engine._out.append((data, remote, local[1]))


def answer_lost_sa(
    engine: IkeEngine, header: Header, remote: Address, local: Address, now: float, request_size: int
) -> None:
    """An encrypted message (an R-U-THERE, a Quick Mode) under cookies we cannot verify: we
    lost that ISAKMP SA (a restart), or anyone made them up. Say INVALID-COOKIE in the clear
    so that a peer still using an SA we lost probes us at once and logs in again (issue 15);
    unverifiable, so the peer only probes on it. Only within ``notify_budget`` and never
    larger than the message it answers (no reflection gain, issue 14)."""
    engine._bad_input("encrypted message for an unknown ISAKMP SA")
    floated = local[1] != engine.ike_port
    if UNPROTECTED_NOTIFY_SIZE > request_size:  # both without the NAT-T port's 4-byte marker
        engine.withheld["notify larger than the message it answers"] += 1
        return
    if not engine.spend("notify_budget", remote[0], now):
        engine.withheld["notify over budget"] += 1
        return
    _send_unprotected_notify(
        engine, header.icookie, header.rcookie, remote, local, NotifyType.INVALID_COOKIE, floated
    )


def send_error_notify(
    engine: IkeEngine,
    sa: IkeSA | None,
    header: Header,
    remote: Address,
    local: Address,
    exc: RemoteProtocolError,
    now: float,
    request_size: int,
) -> None:
    """Answer a refused message with an error Notify: protected under an established ISAKMP
    SA; else in the clear, to a sender nobody verified (maybe a spoofed victim), so only
    within ``notify_budget`` and never larger than the message it answers (issue 14:
    the gateway must not reflect or amplify traffic)."""
    if header.exchange == ExchangeType.INFORMATIONAL:
        return  # never answer a notify with a notify
    if sa is not None and sa.established:
        protocol, spi = exc.notify_spi or (ProtocolId.ISAKMP, sa.sa_id)
        exchanges.send_informational(engine, sa, [NotifyPayload(exc.notify, protocol, spi)], now)
        return
    floated = local[1] != engine.ike_port
    if UNPROTECTED_NOTIFY_SIZE > request_size:  # both with or both without the 4-byte marker
        engine.withheld["notify larger than the message it answers"] += 1
        return
    if not engine.spend("notify_budget", remote[0], now):
        engine.withheld["notify over budget"] += 1
        return
    rcookie = sa.rcookie if sa is not None else header.rcookie
    _send_unprotected_notify(engine, header.icookie, rcookie, remote, local, exc.notify, floated)


def _phase1_failure_is_verified(sa: IkeSA, header: Header, exc: RemoteProtocolError) -> bool:
    """Whether a handler's error ends the phase 1: the peer's authentication (HASH, SIG,
    certificate, identity) did not verify on a message only the peer can have sent.

    The initiator believes the responder's answer as it believes its error Notifies
    (before any key exists nothing can be authenticated, and an on-path attacker could
    as well drop the answers). The responder, the one anyone can reach, believes only a
    message that decrypted and parsed with this exchange's keys; an unencrypted one that
    fails (an Aggressive Mode message 3 sent in the clear, say) is dropped.
    """
    if not isinstance(exc, AuthenticationError):
        return False
    return sa.role is Role.INITIATOR or bool(header.flags & HeaderFlag.ENCRYPTION)


def _first_answer(sa: IkeSA, header: Header) -> None:
    if header.rcookie == bytes(8) and header.exchange != ExchangeType.INFORMATIONAL:
        raise RemoteProtocolError("responder cookie is zero", NotifyType.INVALID_COOKIE, "header.rcookie", 8)
    sa.rcookie = header.rcookie


def _choose_suite(config: EngineConfig, sa: IkeSA, sa_raw: RawPayload, ke_length: int | None) -> None:
    assert isinstance(sa_raw.payload, SAPayload)
    sa.sa_body = sa_raw.body
    xauth = config.xauth_available or config.require_xauth
    methods = set(config.auth_methods(xauth=xauth, responder=True))
    if sa.pair is not None:
        methods = {_pair_method_of(config, sa.pair)}  # the pair's key or certificates, no XAUTH
    if sa.exchange == BM:
        methods -= HYBRID_METHODS  # hybrid is specified for Main and Aggressive Mode only
    if sa.exchange == AM:
        if not config.allow_aggressive_psk:
            methods -= {m for m in methods if base_auth_method(m) not in SIGNATURE_METHODS}
        if not config.allow_aggressive_signatures:
            methods -= {m for m in methods if base_auth_method(m) in SIGNATURE_METHODS}
        if not methods:
            raise NoProposalChosen(_AGGRESSIVE_OFF)
    suite, _, _ = select_phase1_proposal(sa_raw.payload, config.phase1, methods)
    if ke_length is not None and ke_length != crypto.dh_public_length(suite.group):
        # Aggressive Mode: the KE must match the chosen group's size
        raise RemoteProtocolError(
            f"KE length {ke_length} does not fit group {suite.group.name}",
            NotifyType.INVALID_KEY_INFORMATION,
            "KE",
        )
    sa.suite = suite
    sa.auth_method = suite.auth
    sa.xauth_expected = suite.auth in XAUTH_METHODS


def _chosen_sa(sa_raw: RawPayload, sa: IkeSA) -> SAPayload:
    assert isinstance(sa_raw.payload, SAPayload) and sa.suite is not None
    prop = sa_raw.payload.proposals[0]
    return SAPayload((prop.__class__(prop.number, prop.protocol, prop.spi, (sa.suite.to_transform(1),)),))


def _peer_ke(sa: IkeSA, payloads: list[RawPayload]) -> bytes:
    assert sa.suite is not None
    ke = _one(payloads, KEPayload, "KE").payload
    assert isinstance(ke, KEPayload)
    if len(ke.data) != crypto.dh_public_length(sa.suite.group):
        raise RemoteProtocolError(
            f"KE is {len(ke.data)} octets, group {sa.suite.group.name} needs "
            f"{crypto.dh_public_length(sa.suite.group)}",
            NotifyType.INVALID_KEY_INFORMATION,
            "KE",
        )
    return ke.data


def _peer_nonce(payloads: list[RawPayload]) -> bytes:
    nonce = _one(payloads, NoncePayload, "NONCE").payload
    assert isinstance(nonce, NoncePayload)
    if not 8 <= len(nonce.data) <= 256:  # RFC 2409 section 5: 8 to 256 octets
        raise RemoteProtocolError(f"nonce of {len(nonce.data)} octets", field="NONCE")
    return nonce.data


def _take_peer_id(sa: IkeSA, payloads: list[RawPayload]) -> None:
    raw = _one(payloads, IDPayload, "ID")
    assert isinstance(raw.payload, IDPayload)
    p = raw.payload
    if p.protocol not in (0, 17) or p.port not in (0, 500, 4500):
        raise RemoteProtocolError(
            "phase 1 ID must have protocol 0 or UDP and port 0 or 500",
            NotifyType.INVALID_ID_INFORMATION,
            "ID",
        )
    sa.peer_id = Identity.from_payload(p)
    sa.peer_id_body = raw.body


def _derive_keys(sa: IkeSA) -> None:
    assert sa.suite is not None and sa.dh is not None
    peer = sa.gxr if sa.role is Role.INITIATOR else sa.gxi
    sa.g_xy = sa.dh.shared_secret(peer)
    skeyid = _skeyid(sa)
    sa.keys = crypto.derive_phase1_keys(
        prf_alg=sa.suite.hash,
        hash_alg=sa.suite.hash,
        enc_alg=sa.suite.encryption,
        key_length_bits=sa.suite.key_length,
        skeyid=skeyid,
        g_xy=sa.g_xy,
        icookie=sa.icookie,
        rcookie=sa.rcookie,
        gxi=sa.gxi,
        gxr=sa.gxr,
    )
    sa.p1_iv = sa.keys.iv
    sa.p1_last_block = sa.keys.iv


def _skeyid(sa: IkeSA) -> bytes:
    assert sa.suite is not None
    return crypto.derive_skeyid(
        prf_alg=sa.suite.hash,
        auth=base_auth_method(sa.suite.auth),
        ni=sa.ni,
        nr=sa.nr,
        g_xy=sa.g_xy,
        psk=sa.psk,
    )


# (exchange, role, state) -> the handler of the next message, called as handler(engine, sa, payloads, now).
PHASE1_TABLE: dict[tuple[ExchangeType, Role, P1State], Callable[..., None]] = {
    (MM, Role.INITIATOR, P1State.I_SENT_SA): _mm_i_got_sa,
    (MM, Role.INITIATOR, P1State.I_SENT_KE): _mm_i_got_ke,
    (MM, Role.INITIATOR, P1State.I_SENT_AUTH): _mm_i_got_auth,
    (MM, Role.RESPONDER, P1State.R_SENT_SA): _mm_r_got_ke,
    (MM, Role.RESPONDER, P1State.R_SENT_KE): _mm_r_got_auth,
    (AM, Role.INITIATOR, P1State.I_SENT_SA): _am_i_got_sa,
    (AM, Role.RESPONDER, P1State.R_SENT_KE): _am_r_got_auth,
    (BM, Role.INITIATOR, P1State.I_SENT_SA): _bm_i_got_cookie,
    (BM, Role.INITIATOR, P1State.I_SENT_KE): _bm_i_got_ke,
    (BM, Role.INITIATOR, P1State.I_SENT_AUTH): _bm_i_got_auth,
    (BM, Role.RESPONDER, P1State.R_SENT_KE): _bm_r_got_auth,
}
