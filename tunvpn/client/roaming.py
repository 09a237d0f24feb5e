"""Roaming (issue 15): notice that the client's outer address changed.

A laptop joins another Wi-Fi, a phone moves to its mobile network: the address the client's
sockets are bound to goes away, or another one becomes the way to the gateway. On Linux the
kernel says so on a netlink socket (rtnetlink's address and route groups); the
:class:`AddressWatcher` reads it on the event loop and, once the burst of messages such a
change makes is over (:data:`DEBOUNCE`), calls back. The client then asks the kernel which
address it would now use towards the gateway (:func:`route_source`) and, if it is another,
moves its sockets there and sends an authenticated message (tunvpn.client.daemon).

Elsewhere (macOS: no netlink; SCNetworkReachability is not used) the watcher does not start:
DPD and the client's traffic watch find the dead path later and reconnect.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEBOUNCE = 0.2
"""Seconds of netlink quiet before the change is looked at: adding an address, removing the
old one and replacing the default route are several messages in a row."""

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
"""rtnetlink multicast groups (<linux/rtnetlink.h>): addresses and routes come and go."""
NETLINK_ROUTE = 0


def route_source(gateway: str, port: int) -> str | None:
    """The address the kernel would send from towards ``gateway`` now (no packet is sent);
    None when there is no route."""
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((gateway, port))
            return str(probe.getsockname()[0])
    except OSError:
        return None


@dataclass(frozen=True)
class RoutePath:
    """How packets to the gateway leave now: from ``source``, via the next hop ``via`` (None:
    on the link, or not known) out of interface number ``oif``."""

    source: str
    via: str | None = None
    oif: int | None = None


def route_path(gateway: str) -> RoutePath | None:
    """The kernel's way to ``gateway`` now (blocking: pyroute2 runs its own loop, so call it
    off the event loop); None without a route. Another next hop or interface with the same
    source address is another network too (two home routers both handing out 192.168.1.23):
    the NAT in front of us changed."""
    source = route_source(gateway, 500)
    if source is None:
        return None
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            answer = ipr.route("get", dst=gateway)[0]
            via, oif = answer.get_attr("RTA_GATEWAY"), answer.get_attr("RTA_OIF")
    except Exception as exc:  # no pyroute2 on this platform, or NetlinkError: the source only
        log.debug("route to %s: %s", gateway, exc)
        return RoutePath(source)
    return RoutePath(source, str(via) if via else None, int(oif) if oif is not None else None)


class AddressWatcher:
    """Calls ``on_change()`` on the loop after addresses or routes changed (Linux netlink),
    at most once per burst of messages. A coroutine it returns runs as a task; the next
    burst waits for it."""

    def __init__(
        self, on_change: Callable[[], Awaitable[None] | None], *, debounce: float = DEBOUNCE
    ) -> None:
        self.on_change = on_change
        self.debounce = debounce
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Future[None] | None = None
        self._again = False

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Listen; False where there is no rtnetlink (the client then relies on DPD)."""
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            log.info("no netlink here: a change of our address is found by DPD only")
            return False
        try:
            sock = socket.socket(family, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.setblocking(False)
            groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
            sock.bind((0, groups))
        except OSError as exc:
            log.warning("cannot watch address changes (netlink: %s): found by DPD only", exc)
            return False
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)
        return True

    def _readable(self) -> None:
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        while True:  # the messages say what changed; the route to the gateway says what matters
            try:
                if not sock.recv(65536):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: messages were lost; look anyway
                log.debug("netlink: %s", exc)
                break
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self._task is not None:  # still looking at the last burst: look again afterwards
            self._again = True
            return
        try:
            result = self.on_change()
        except Exception:
            log.exception("handling an address change failed")
            return
        if inspect.isawaitable(result):
            self._task = asyncio.ensure_future(result)
            self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("handling an address change failed", exc_info=task.exception())
        if self._again and self._sock is not None:
            self._again = False
            self._fire()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None


__all__ = ["DEBOUNCE", "AddressWatcher", "RoutePath", "route_path", "route_source"]
