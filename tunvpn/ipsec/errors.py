"""The error our own side's mistakes raise, in both cores.

A :class:`LocalProtocolError` means our caller misused the API or configured something
impossible (a range whose start is above its end, an unknown protocol name); it is a bug or
a bad configuration, never the peer's doing. :mod:`tunvpn.ike.errors` adds the peer's
errors (``RemoteProtocolError``) under the same base, :class:`ProtocolError`.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`tunvpn.ipsec` and :mod:`tunvpn.ike`
    (``tunvpn.ike.errors.IkeError`` is this class)."""


class LocalProtocolError(ProtocolError):
    """Our side asked for something impossible (bad argument, wrong state, bad config)."""


__all__ = ["LocalProtocolError", "ProtocolError"]
