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
* ``STOPPING=1`` when a stop begins.

A failure to notify is logged at debug level and otherwise ignored: the service manager
is the one that waits, and a daemon must not die because its supervisor went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time

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


__all__ = ["NOTIFY_SOCKET_ENV", "notify", "notify_address", "ready", "reloading", "status", "stopping"]
