"""The gateway's audit log: one line per login (success, failure, refusal), ISAKMP and IPsec SA
up and down, and policy change, on the logger ``tunvpn.audit`` (level INFO), in a stable
``key=value`` format a log collector can split without guessing::

    event=login result=ok user=alice id=keyid:staff peer=192.0.2.10:4500 sa=9f2c41d07a3b5e68
    event=login result=fail user=mallory id=keyid:staff peer=192.0.2.66:500 sa=... reason="..."
    event=ike_sa state=up id=keyid:staff peer=192.0.2.10:500 sa=... exchange=main suite=...
    event=child_sa state=up user=alice peer=... sa=... policy=intranet local=10.78.0.0/24
    remote=10.79.0.10/32 spi_in=0x... spi_out=0x...   (one line)
    event=policy action=reload generation=3 changes="added policy mail"

``event`` comes first; then the keys of that event in a fixed order; a key without a value is
left out. A value made only of letters, digits and ``._:@/+-=,*[]`` is written bare, any other
in double quotes with JSON escapes (so a user name chosen by a peer cannot start a new line
or forge a key). ``sa`` is the initiator cookie of the ISAKMP SA (16 hex digits), the key that
ties a session's lines together. No password, key or secret is ever an argument here.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from tunvpn.ike import events as ev

log = logging.getLogger("tunvpn.audit")

_BARE = re.compile(r"[A-Za-z0-9._:@/+\-=,*\[\]]+")


def _value(value: object) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=True)


def format_line(event: str, fields: dict[str, object]) -> str:
    """``event=EVENT key=value ...`` (values of None left out)."""
    parts = [f"event={_value(event)}"]
    parts += [f"{key}={_value(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


def audit(event: str, **fields: object) -> None:
    """Write one audit line (``fields`` in the order given)."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s", format_line(event, fields))


def _peer(address: tuple[str, int] | None) -> str | None:
    if not address or not address[0]:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sa(sa_id: bytes) -> str:
    return sa_id[:8].hex()


def login(
    session: Any, user: str | None, result: str, *, reason: str | None = None, protocol: str | None = None
) -> None:
    """A login decision on ``session`` (the gateway's Session): ``result`` is ``ok``, ``fail``
    (wrong credentials), ``refused`` (not checked or not allowed: throttle, session limit,
    authorization) or ``challenge``; ``protocol`` names an extra protocol's round."""
    audit(
        "login",
        result=result,
        user=user,
        id=session.peer_id or None,
        peer=_peer(session.peer),
        sa=_sa(session.sa_id),
        protocol=protocol,
        reason=reason,
    )


def policy_change(action: str, **fields: object) -> None:
    """A policy change: ``reload`` (the configuration) or ``push`` (a client's new policies)."""
    audit("policy", action=action, **fields)


def engine_event(event: ev.Event, session: Any = None, child: ev.ChildSAEstablished | None = None) -> None:
    """The SA lines, from the engine's event and what the gateway knows: ``session`` (its
    Session of the event's ISAKMP SA, if any) and, for a deleted IPsec SA, ``child`` (the
    Quick Mode that made it)."""
    user = getattr(session, "user", None)
    if isinstance(event, ev.Phase1Established):
        audit(
            "ike_sa",
            state="up",
            id=event.peer_id or None,
            peer=_peer(event.peer),
            sa=_sa(event.sa_id),
            exchange=event.exchange,
            suite=event.suite,
        )
    elif isinstance(event, ev.Phase1Failed) and not event.unauthenticated:
        audit("ike_sa", state="failed", peer=_peer(event.peer), sa=_sa(event.sa_id), reason=event.reason)
    elif isinstance(event, ev.Phase1Rekeyed):
        audit(
            "ike_sa",
            state="rekeyed",
            user=user,
            sa=_sa(event.sa_id),
            new_sa=_sa(event.new_sa_id),
            xauth="again" if event.reauthenticated else "skipped (bound to the session)",
        )
    elif isinstance(event, ev.IkeSADeleted):
        audit(
            "ike_sa",
            state="down",
            user=user,
            id=getattr(session, "peer_id", None) or None,
            peer=_peer(event.peer),
            sa=_sa(event.sa_id),
            by="peer" if event.by_peer else "gateway",
            reason=event.reason,
        )
    elif isinstance(event, ev.ChildSAEstablished):
        audit(
            "child_sa",
            state="up",
            user=user,
            peer=_peer(event.remote),
            sa=_sa(event.sa_id),
            policy=event.policy_name or None,
            local=event.local_ts,
            remote=event.remote_ts,
            spi_in=f"0x{event.spi_in:08x}",
            spi_out=f"0x{event.spi_out:08x}",
        )
    elif isinstance(event, ev.ChildSADeleted):
        audit(
            "child_sa",
            state="down",
            user=user,
            peer=_peer(getattr(session, "peer", None)),
            sa=_sa(event.sa_id),
            policy=(child.policy_name or None) if child is not None else None,
            spi_in=f"0x{event.spi_in:08x}",
            spi_out=f"0x{event.spi_out:08x}",
            by="peer" if event.by_peer else "gateway",
        )


__all__ = ["audit", "engine_event", "format_line", "login", "policy_change"]
