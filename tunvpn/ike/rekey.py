"""Phase 1 rekeying (issue 15): a new ISAKMP SA made before the old one expires, the IPsec SAs
handed over to it, the old one deleted without them (RFC 2408 section 3.15 / RFC 2409: an
ISAKMP SA and the IPsec SAs it made live apart).

The initiator (whoever started the old SA) starts the new phase 1 at ``sa.rekey_at``: the
SA's lifetime less a margin (``EngineConfig.rekey_margin``, at most a tenth of the lifetime)
less a random part of it (``rekey_fuzz``), strongSwan's ``margintime``/``rand_time``.

Between tunvpn peers a new SA may skip XAUTH only when it is bound to the old, logged-in
session (docs/protocol.md, "Phase 1 rekeying"):

1. Under the old SA the initiator announces the new SA's initiator cookie
   (``N(REKEY-ANNOUNCE)``); the responder keeps one such announcement per logged-in SA, for
   ``ANNOUNCE_LIFETIME`` seconds.
2. In its authentication message of the new phase 1 (encrypted with the new keys) the
   initiator sends ``N(REKEY-PROOF)`` instead of INITIAL-CONTACT: the old SA's id and
   ``prf(SKEYID_a of the old SA, "tunvpn phase 1 rekey" | old SA id | new SA id)``, which
   only the two ends of the old SA can compute (the cookies travel in clear, so a cookie
   alone would not do).
3. The responder binds the new SA to the old session only if the announcement matches, has
   not expired, the peer authenticated with the same phase 1 identity and method, and the
   proof verifies. Then the login continues (no XAUTH) unless ``reauth_interval`` has passed
   since the user's last XAUTH; in both cases, once the new SA is granted, the IPsec SAs are
   handed over and ``N(SESSION-CONTINUED)`` tells the initiator, which hands over its side
   and deletes the old ISAKMP SA. Anything else is an ordinary new login.

A peer without our vendor ID gets neither notify: the new phase 1 is a full login (XAUTH),
after which the initiator hands the IPsec SAs over and deletes the old ISAKMP SA.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from . import events as ev
from . import exchanges
from .config import HYBRID_METHODS, XAUTH_METHODS
from .constants import ExchangeType, NotifyType, ProtocolId
from .messages import DeletePayload, NotifyPayload, Payload
from .sa import Access, ExchangeKind, ExState, IkeSA, Role

if TYPE_CHECKING:
    from .engine import IkeEngine

log = logging.getLogger(__name__)

REKEY_ANNOUNCE = 32802
"""Notify type (private-use status range, docs/protocol.md): the new SA's initiator cookie,
announced under the old ISAKMP SA."""
REKEY_PROOF = 32803
"""Notify type: in the new phase 1's authentication message, the old SA id and its proof."""
SESSION_CONTINUED = 32804
"""Notify type: the responder took the new SA as the old session's continuation."""
ANNOUNCE_LIFETIME = 60.0
"""Seconds an announcement stays usable."""
RETRY_AFTER = 30.0
"""Seconds before a failed rekey is tried again (if the old SA lives that long)."""
PROOF_LABEL = b"tunvpn phase 1 rekey"
CONTINUED_SENDS = 5
"""N(SESSION-CONTINUED) is sent at most this many times (see :func:`resend_continued`)."""
CONTINUE_WAIT = 5.0
"""Seconds a tunvpn initiator that logged in again waits for N(SESSION-CONTINUED) (the
gateway grants once its login is finished) before it hands over anyway: a rekey the gateway
could not bind (a lost announcement) is adopted when the old ISAKMP SA's Delete comes."""


def schedule(engine: IkeEngine, sa: IkeSA, now: float) -> None:
    """Phase 1 done: when the initiator rekeys it (None: never, or not ours to rekey)."""
    if sa.role is not Role.INITIATOR or sa.expires is None or not engine.config.phase1_rekey:
        return
    lifetime = sa.expires - now
    margin = min(engine.config.rekey_margin, lifetime / 10)
    fuzz = int.from_bytes(engine._random(2), "big") / 65536 * margin * engine.config.rekey_fuzz
    sa.rekey_at = now + lifetime - margin - fuzz


def due(sa: IkeSA, now: float) -> bool:
    return (
        sa.rekey_at is not None
        and now >= sa.rekey_at
        and sa.rekeying is None
        and sa.moved_to is None
        and sa.established
        and sa.access is Access.GRANTED
    )


def proof(old: IkeSA, new_sa_id: bytes) -> bytes:
    return old.prf_a(PROOF_LABEL + old.sa_id + new_sa_id)


def start(engine: IkeEngine, old: IkeSA, now: float) -> bytes:
    """Start the new phase 1 of ``old`` (same peer, mode, identity and offer)."""
    from .phase1 import MODE_NAMES, initiate

    assert old.suite is not None
    old.rekey_at = None
    cookie = engine._new_cookie()
    if old.tunvpn_peer:
        announce = NotifyPayload(REKEY_ANNOUNCE, ProtocolId.ISAKMP, old.sa_id, cookie)
        exchanges.send_informational(engine, old, [announce], now)
    xauth = old.suite.auth in XAUTH_METHODS or old.suite.auth in HYBRID_METHODS
    new_id = initiate(
        engine,
        old.remote,
        old.local,
        now,
        mode=MODE_NAMES[ExchangeType(old.exchange)],
        local_id=old.local_id,
        xauth=xauth,
        icookie=cookie,
        rekey_of=old.sa_id,
        floated=old.floated,
        pair=old.pair,
    )
    old.rekeying = cookie
    log.info("rekeying phase 1 with %s before it expires", old.remote[0])
    engine._events.append(ev.Phase1RekeyStarted(old.sa_id, new_id))
    return new_id


def old_sa(engine: IkeEngine, new: IkeSA) -> IkeSA | None:
    """The live SA ``new`` rekeys (found by our own cookie in its id)."""
    if new.rekey_of is None:
        return None
    cookie = new.rekey_of[:8] if new.role is Role.INITIATOR else new.rekey_of[8:]
    old = engine._sas.get(cookie)
    if old is None or old.dead or old.sa_id != new.rekey_of:
        return None
    return old


def auth_notifies(engine: IkeEngine, sa: IkeSA) -> list[Payload]:
    """What follows the initiator's AUTH payload: INITIAL-CONTACT on a first login, the proof
    on a rekey with a tunvpn peer, nothing on a rekey with another peer (INITIAL-CONTACT
    would make it drop the old SA with its IPsec SAs)."""
    if sa.rekey_of is None:
        return [NotifyPayload(NotifyType.INITIAL_CONTACT, ProtocolId.ISAKMP, sa.icookie + sa.rcookie)]
    old = old_sa(engine, sa)
    if old is None or not (old.tunvpn_peer and sa.tunvpn_peer and old.established):
        return []
    data = old.sa_id + proof(old, sa.sa_id)
    return [NotifyPayload(REKEY_PROOF, ProtocolId.ISAKMP, sa.sa_id, data)]


# ------------------------------------------------------------------ responder


def on_announce(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    """Responder: the peer will rekey this (logged-in) SA under the announced cookie. One
    announcement per SA: a new one replaces the last."""
    if sa.role is not Role.RESPONDER or not sa.tunvpn_peer or sa.moved_to is not None:
        engine.drops["rekey announcement refused"] += 1
        return
    if len(n.data) != 8 or n.data == bytes(8):
        engine.drops["malformed rekey announcement"] += 1
        return
    sa.announced = n.data
    sa.announced_until = now + ANNOUNCE_LIFETIME


def bind(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    """Responder, phase 1 done with an ``N(REKEY-PROOF)``: bind ``sa`` to the old session if
    everything holds (module docstring, step 3); else ``sa`` is an ordinary new login."""
    size = len(n.data) - 16
    old = engine._sas.get(n.data[8:16]) if size > 0 else None
    why = _refusal(engine, sa, old, n, now)
    if why is not None:
        log.info("rekey of %s not bound to a session: %s", sa.remote[0], why)
        engine.drops[f"rekey not bound: {why}"] += 1
        return
    assert old is not None
    old.announced = None
    sa.rekey_of = old.sa_id
    interval = engine.config.reauth_interval
    sa.reauth = interval > 0 and now >= old.login_at + interval


def _refusal(engine: IkeEngine, sa: IkeSA, old: IkeSA | None, n: NotifyPayload, now: float) -> str | None:
    if not (engine.config.tunvpn_extensions and sa.tunvpn_peer):
        return "not a tunvpn peer"
    if old is None or old.dead or old.sa_id != n.data[:16] or old.role is not Role.RESPONDER:
        return "no such ISAKMP SA"
    if not old.established or old.access is not Access.GRANTED or old.moved_to is not None:
        return "the old ISAKMP SA is not a logged-in session"
    if old.announced is None or not hmac.compare_digest(old.announced, sa.icookie):
        return "cookie not announced under the old ISAKMP SA"
    if now > old.announced_until:
        return "announcement expired"
    assert old.suite is not None and sa.suite is not None
    if str(old.peer_id) != str(sa.peer_id) or old.suite.auth != sa.suite.auth:
        return "other phase 1 credentials"
    if not hmac.compare_digest(n.data[16:], proof(old, sa.sa_id)):
        return "proof does not verify"
    return None


def continue_login(engine: IkeEngine, sa: IkeSA, now: float) -> bool:
    """Responder, phase 1 of a bound SA done: without re-authentication its old session's
    login counts (granted at once). False: it logs in with XAUTH as usual."""
    old = old_sa(engine, sa)
    if old is None or sa.reauth:
        return False
    sa.xauth_user = old.xauth_user
    sa.xauth_done = old.xauth_done
    sa.modecfg_done = old.modecfg_done
    sa.login_at = old.login_at
    engine._grant(sa, now)
    return True


# ------------------------------------------------------------------ hand-over


def take_over(engine: IkeEngine, new: IkeSA, now: float) -> None:
    """``new`` is granted (responder) or its login is finished (initiator): the IPsec SAs of
    the old SA become its own; the initiator then deletes the old ISAKMP SA (only it)."""
    old = old_sa(engine, new)
    if old is None or old.moved_to is not None:
        return
    if new.role is Role.RESPONDER and old.xauth_user is not None and new.xauth_user != old.xauth_user:
        log.warning(
            "rekey of %s logged in as another user: not taken as the old session's continuation",
            new.remote[0],
        )
        new.rekey_of = None
        return
    new.children.update(old.children)
    old.children.clear()
    old.moved_to = new.local_cookie
    old.rekeying = None
    new.assigned_address = new.assigned_address or old.assigned_address
    new.assigned_address6 = new.assigned_address6 or old.assigned_address6
    if new.child_policies is None:
        new.child_policies = old.child_policies
    if not new.login_at:
        new.login_at = old.login_at
    # the initiator knows the user logged in again by the XAUTH it answered on the new SA
    again = new.reauth or (new.role is Role.INITIATOR and new.xauth_user is not None)
    engine._events.append(ev.Phase1Rekeyed(old.sa_id, new.sa_id, again))
    new.rekey_of = None  # done: from now on an SA like any other
    new.handover_at = None
    new.continued_of = old.sa_id
    if new.role is Role.RESPONDER:
        if new.tunvpn_peer:
            new.continued_sent = 0
            resend_continued(engine, new, now)
        return
    retire(engine, old, now)


def resend_continued(engine: IkeEngine, new: IkeSA, now: float) -> None:
    """Responder: send N(SESSION-CONTINUED) under ``new`` (again) while the peer has not
    deleted the old SA, which it does as soon as one arrives. Informationals are not
    acknowledged in IKEv1: a lost one is sent again after 1, 2, 4 and 8 s."""
    old_id = new.continued_of
    old = engine._sas.get(old_id[8:16]) if old_id is not None else None
    if old_id is None or old is None or old.dead or new.continued_sent >= CONTINUED_SENDS:
        new.continued_of = new.continued_at = None
        return
    done = NotifyPayload(SESSION_CONTINUED, ProtocolId.ISAKMP, new.sa_id, old_id)
    exchanges.send_informational(engine, new, [done], now)
    new.continued_at = now + 2.0**new.continued_sent
    new.continued_sent += 1


def adopt(engine: IkeEngine, old: IkeSA, now: float) -> None:
    """Responder, the peer deletes an ISAKMP SA that still holds IPsec SAs: if the same user
    logged in again on a newer SA (a full login: XAUTH, GRANTED; the same phase 1 identity,
    the same address), that SA takes them over, as strongSwan adopts the CHILD_SAs of an
    IKEv1 reauthentication without INITIAL-CONTACT. A peer without our extensions rekeys so,
    and so does ours when its rekey could not be bound (the announcement was lost)."""
    if old.role is not Role.RESPONDER or not old.children or old.moved_to is not None:
        return
    if old.access is not Access.GRANTED:
        return
    newest: IkeSA | None = None
    for sa in engine._sas.values():
        if (
            sa is not old
            and sa.role is Role.RESPONDER
            and sa.established
            and sa.access is Access.GRANTED
            and sa.created >= old.created
            and sa.moved_to is None
            and (sa.rekey_of is None or sa.rekey_of == old.sa_id)
            and sa.xauth_user == old.xauth_user
            and str(sa.peer_id) == str(old.peer_id)
            and sa.remote[0] == old.remote[0]
            and (newest is None or sa.created > newest.created)
        ):
            newest = sa
    if newest is None:
        return
    log.info("%s logged in again before deleting its ISAKMP SA: its IPsec SAs carry on", old.remote[0])
    newest.rekey_of = old.sa_id
    newest.reauth = True
    take_over(engine, newest, now)


def on_continued(engine: IkeEngine, sa: IkeSA, n: NotifyPayload, now: float) -> None:
    """Initiator: the responder continued the old session on this SA."""
    if sa.role is Role.INITIATOR and sa.rekey_of is None and sa.continued_of == n.data:
        return  # sent again before our Delete of the old SA reached the peer (resend_continued)
    if sa.role is not Role.INITIATOR or sa.rekey_of is None or not hmac.compare_digest(n.data, sa.rekey_of):
        engine.drops["unexpected session continuation"] += 1
        return
    take_over(engine, sa, now)


def initiator_logged_in(engine: IkeEngine, sa: IkeSA, now: float, *, xauth_passed: bool = False) -> None:
    """Initiator, a rekeying SA: phase 1 done, or XAUTH passed (``xauth_passed``). Without an
    XAUTH method the hand-over is at once (a bound responder handed over when it took our
    proof); with one, a tunvpn peer says when with ``N(SESSION-CONTINUED)`` (it grants the SA
    first), any other peer by its XAUTH-STATUS OK."""
    if sa.rekey_of is None or sa.role is not Role.INITIATOR:
        return
    assert sa.suite is not None
    xauth = sa.suite.auth in XAUTH_METHODS or sa.suite.auth in HYBRID_METHODS
    if not xauth or (xauth_passed and not sa.tunvpn_peer):
        take_over(engine, sa, now)
    elif xauth_passed:
        sa.handover_at = now + CONTINUE_WAIT  # unless N(SESSION-CONTINUED) comes first


def retire(engine: IkeEngine, old: IkeSA, now: float) -> None:
    """Delete the old ISAKMP SA once no Quick Mode runs on it (one that finishes there gives
    its IPsec SAs to the new SA: quickmode)."""
    if old.dead or old.role is not Role.INITIATOR or old.moved_to is None:
        return
    if any(ex.kind is ExchangeKind.QUICK and ex.state is not ExState.DONE for ex in old.exchanges.values()):
        return
    exchanges.send_informational(engine, old, [DeletePayload(ProtocolId.ISAKMP, (old.sa_id,))], now)
    engine._deleted(old, now)  # the peer is told: its late messages are dropped quietly
    exchanges.drop_sa(engine, old, "rekeyed", by_peer=False)


def orphaned(engine: IkeEngine, sa: IkeSA) -> bool:
    """Initiator: a rekeying SA whose old SA went away (expired, deleted by the peer, dead)
    before the hand-over: nothing left to continue (the shell starts over if it wants)."""
    return sa.rekey_of is not None and sa.role is Role.INITIATOR and old_sa(engine, sa) is None


def successor(engine: IkeEngine, sa: IkeSA) -> IkeSA:
    """The SA that owns ``sa``'s IPsec SAs now (``sa`` itself until it is rekeyed)."""
    if sa.moved_to is None:
        return sa
    new = engine._sas.get(sa.moved_to)
    return new if new is not None and not new.dead else sa


def failed(engine: IkeEngine, new: IkeSA, now: float) -> None:
    """A rekeying SA is gone before the hand-over: the old one tries again later."""
    old = old_sa(engine, new)
    if old is None or old.rekeying != new.icookie or new.role is not Role.INITIATOR:
        return
    old.rekeying = None
    if old.expires is not None and old.expires > now:
        old.rekey_at = now + min(RETRY_AFTER, (old.expires - now) / 2)
