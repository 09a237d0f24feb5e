"""The client's side of a phase 1 rekey (issue 15; the engine's side is tunvpn.ike.rekey).

The engine starts the new phase 1 by itself before the ISAKMP SA expires
(:class:`~tunvpn.ike.events.Phase1RekeyStarted`). Until it hands the IPsec SAs over
(:class:`~tunvpn.ike.events.Phase1Rekeyed`) the client keeps following the old SA and looks
at the new one's events only for what needs it: an XAUTH request (a gateway that asks the
user again: the stored password answers, a one-time passcode is asked for again), the extra
protocols of the login that a tunvpn gateway runs again after it (XAUTH rounds answered as at
login: a soft-token plugin, or the user), a refused login, a failure (the engine tries again
while the old SA lives). Then the client follows the new SA.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from tunvpn.ike import events as ev

if TYPE_CHECKING:
    from tunvpn.client.daemon import Client

log = logging.getLogger(__name__)


def rekey_event(client: Client, event: ev.Phase1RekeyStarted | ev.Phase1Rekeyed) -> None:
    """An event of our (old) ISAKMP SA about its rekey."""
    if isinstance(event, ev.Phase1RekeyStarted):
        client._rekeying = event.new_sa_id[:8]
        client._xauth_rounds = client._stage_rounds = 0  # if asked again, a new login: round 1
        client.progress.report(
            "phase1", "rekeying the ISAKMP SA before it expires", state="rekeying", sa=event.new_sa_id.hex()
        )
        return
    client._rekeying = None
    client.sa_id = event.new_sa_id
    if client._rekey_phase1 is not None and client._rekey_phase1.sa_id[:8] == event.new_sa_id[:8]:
        client.phase1, client.phase1_at = client._rekey_phase1, client.clock()  # tunvpn status
    client._rekey_phase1 = None
    client.established = {
        name: dataclasses.replace(child, sa_id=event.new_sa_id) if child.sa_id == event.sa_id else child
        for name, child in client.established.items()
    }
    if client.tunnel is not None:
        client.tunnel.sa_rekeyed(event)
    client.progress.report(
        "phase1",
        "ISAKMP SA rekeyed" + (" (logged in again)" if event.reauthenticated else ""),
        state="rekeyed",
        sa=event.new_sa_id.hex(),
        reauthenticated=event.reauthenticated,
    )


def new_sa_event(client: Client, event: ev.Event) -> Awaitable[None] | None:
    """An event of the new ISAKMP SA of a rekey in progress."""
    if isinstance(event, ev.XauthRequested):
        client.progress.report("xauth", "the gateway asks to log in again", state="reauth")
        return client._xauth_requested(event)
    if isinstance(event, ev.XauthCompleted):
        if not event.success:
            said = f": {event.message}" if event.message else ""
            client.fail("xauth", f"the gateway rejected user {event.user_name!r} when asked again{said}")
        elif client._protocols_waiting:
            client._protocol_passed()  # an extra protocol of the new login (Quick Mode runs already)
        else:
            client.progress.report("xauth", f"user {event.user_name} accepted again", state="ok")
            # a tunvpn gateway runs the login's extra protocols (XAUTH rounds) again now,
            # without Mode Config: the rounds that follow are theirs, answered as at login
            client._protocols_waiting = list(client._login_protocols)
            client._stage_rounds = 0
    elif isinstance(event, (ev.Phase1Failed, ev.IkeSADeleted)):
        client._rekeying = None
        client._protocols_waiting = []
        log.warning("phase 1 rekey failed: %s (tried again while the ISAKMP SA lasts)", event.reason)
        client.progress.report("phase1", f"rekey failed: {event.reason}", state="rekey-failed")
    elif isinstance(event, ev.Phase1Established):
        client._rekey_phase1 = event
        client.progress.report("phase1", f"new ISAKMP SA established, suite {event.suite}", state="rekey")
    return None
