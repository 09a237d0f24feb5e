"""sd_notify without libsystemd: tell the service manager READY, RELOADING, STOPPING and STATUS.

A unit with ``Type=notify`` starts the daemon with ``$NOTIFY_SOCKET`` naming an ``AF_UNIX``
datagram socket (a path, or ``@name`` for one in the abstract namespace); each notification is
one datagram of ``KEY=VALUE`` lines (sd_notify(3)). Without ``$NOTIFY_SOCKET`` (not started by
systemd) every call does nothing, so the daemons call these functions unconditionally.

What tunvpn sends:

* ``READY=1`` once the sockets are bound and the TUN device is up (gateway) or the tunnel is up
  (client), with a ``STATUS=`` line;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the clock systemd 253+ asks for) when a SIGHUP
  reload begins, then ``READY=1`` when it is done (Debian 12's systemd 252 takes both);
* ``STOPPING=1`` when a stop begins;
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` (a unit with ``WatchdogSec=``) while the daemon
  is healthy: its event loop turns (the ping runs on it) and its ESP data path thread is alive
  and turning. When it is not, the pings stop (the reason is logged once and shown as
  ``STATUS=``), and systemd kills and restarts the service (``Restart=on-failure``).

A failure to notify is logged at debug level and otherwise ignored: the service manager
is the one that waits, and a daemon must not die because its supervisor went away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify_address(value: str | None = None) -> str | bytes | None:
    """The address to send to, from ``value`` (default ``$NOTIFY_SOCKET``): a path, or for
    ``@name`` the abstract address ``b"\\0name"``; None when there is none (or it is not a
    Unix socket: ``vsock:`` addresses are not supported)."""
    if value is None:
        value = os.environ.get(NOTIFY_SOCKET_ENV)
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def notify(*lines: str, unset_environment: bool = False) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram to ``$NOTIFY_SOCKET``.

    :param unset_environment: remove ``$NOTIFY_SOCKET`` afterwards (so children do not use it).
    :returns: True if the datagram was sent, False if there is no socket or sending failed.
    """
    address = notify_address()
    if unset_environment:
        os.environ.pop(NOTIFY_SOCKET_ENV, None)
    if address is None or not lines:
        return False
    text = "\n".join(line.replace("\n", " ") for line in lines) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # never block the event loop: a service manager that stopped reading (its queue
            # full) costs a lost notification, not a hung daemon
            sock.setblocking(False)
            sock.sendto(text.encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", os.environ.get(NOTIFY_SOCKET_ENV, address), exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """``READY=1`` (and ``STATUS=status``): start-up or a reload is complete."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading(status: str = "reloading the configuration") -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd 253+ wants it; 252 ignores it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")


def stopping(status: str = "stopping") -> bool:
    """``STOPPING=1``: a stop has begun."""
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    """``STATUS=text`` alone (what ``systemctl status`` shows)."""
    return notify(f"STATUS={text}")


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` when it is set for this
    process (``$WATCHDOG_PID`` absent or ours), as sd_watchdog_enabled(3) says; else None."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        owner = int(env.get("WATCHDOG_PID", "0"))
    except ValueError:
        return None
    if usec <= 0 or (owner and owner != (os.getpid() if pid is None else pid)):
        return None
    return usec / 2e6


async def watchdog(healthy: Callable[[], str | None], interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` returns None (it runs
    on the event loop, so a loop that stops turning stops the pings too). When it returns a
    reason, the pings stop until it returns None again: systemd restarts a service that
    stays unhealthy for ``WatchdogSec``. Runs until cancelled."""
    said: str | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            reason = healthy()
        except Exception as exc:  # a broken check is a reason too
            reason = f"health check failed: {exc}"
        if reason is None:
            notify("WATCHDOG=1", *(["STATUS=healthy again"] if said is not None else []))
            said = None
        elif reason != said:
            log.error("watchdog: %s: no longer telling the service manager we are alive", reason)
            notify(f"STATUS=unhealthy: {reason}")
            said = reason


class Watched(Protocol):
    """What the watchdog asks about (``tunvpn.dataplane.thread.DataPlane``)."""

    def health(self) -> str | None: ...


def start_watchdog(loop: asyncio.AbstractEventLoop, watched: Watched | None) -> asyncio.Task[None] | None:
    """The daemons' watchdog task when the service manager wants pings (``WatchdogSec=``):
    the event loop (by running at all) and ``watched`` (the ESP data path, if any) must be
    well. None when no watchdog is asked for."""
    interval = watchdog_interval()
    if interval is None:
        return None
    check = watched.health if watched is not None else (lambda: None)
    log.info("watchdog: telling the service manager we are alive every %.1f s", interval)
    return loop.create_task(watchdog(check, interval), name="service watchdog")


__all__ = [
    "NOTIFY_SOCKET_ENV",
    "notify",
    "notify_address",
    "ready",
    "reloading",
    "start_watchdog",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]
