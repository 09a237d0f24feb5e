"""The client's data path while it reconnects: no leak onto the plain network (issue 15).

:class:`~tunvpn.dataplane.tunnel.Tunnel` removes a network's route from the TUN device when
the last SA pair carrying it is deleted. When a whole ISAKMP SA goes (a dead gateway, a
delete from the gateway) and the client is going to reconnect, that would send the tunnel's
traffic onto the default route, in clear, until the new SAs are up. :class:`HoldingTunnel`
keeps those routes on the TUN device instead (a packet routed there without an SA is
dropped and counted by the data path), and removes only the ones the new connection does
not use once it is up (:meth:`release_held`).
"""

from __future__ import annotations

import logging
from typing import Any

from tunvpn.dataplane.tunnel import Tunnel
from tunvpn.ike import events as ev

log = logging.getLogger(__name__)


class HoldingTunnel(Tunnel):
    """A :class:`Tunnel` whose routes can outlive their SAs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Tunnel's own arguments
        super().__init__(*args, **kwargs)
        self.held: set[str] = set()
        """Routes kept on the TUN device although no SA carries them now."""
        self._holding = False

    def child_deleted(self, event: ev.ChildSADeleted, *, hold: bool = False) -> None:
        """As :meth:`Tunnel.child_deleted`; ``hold``: routes left without an SA stay."""
        self._holding = hold
        try:
            super().child_deleted(event)
        finally:
            self._holding = False

    def _unroute(self, routes: list[str]) -> None:
        if self._holding:
            self.held.update(routes)
            log.info("%s: holding routes %s until the tunnel is back", self.name, ", ".join(routes))
            return
        super()._unroute(routes)

    def routed(self) -> list[str]:
        """The networks routed into the TUN device now, held ones included."""
        return sorted({*super().routed(), *self.held})

    def release_held(self) -> list[str]:
        """The new connection is up: remove the held routes it does not use; returns them."""
        stale = sorted(r for r in self.held if self._routes.get(r, 0) == 0)
        self.held.clear()
        if stale:
            super()._unroute(stale)
        return stale


__all__ = ["HoldingTunnel"]
