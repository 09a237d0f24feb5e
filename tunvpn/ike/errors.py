"""Typed errors of the IKE core.

Two families, as in h11: a :class:`LocalProtocolError` means our own caller misused the
API (raise it, it is a bug or a bad configuration); a :class:`RemoteProtocolError` means
the peer sent something bad. A remote error carries the ISAKMP Notify type to answer
with, and the field and offset at fault; the engine turns it into a Notify plus an event
at its single receive entry point, never into a traceback.
"""

from __future__ import annotations

from ..ipsec.errors import LocalProtocolError, ProtocolError
from .constants import NotifyType

IkeError = ProtocolError
"""Base class of every error raised by :mod:`tunvpn.ike` (and :mod:`tunvpn.ipsec`)."""

# LocalProtocolError lives in tunvpn.ipsec.errors (traffic selectors raise it too); it is
# imported from here by most of tunvpn, so this module exports it.


class RemoteProtocolError(IkeError):
    """The peer sent something we cannot accept.

    :param message: what is wrong, in words that name the culprit.
    :param notify: the Notify message type to send back (RFC 2408 section 3.14.1).
    :param field: the name of the field at fault, e.g. ``"SA.proposal[0].length"``.
    :param offset: the byte offset of that field in the message, or -1 if unknown.
    """

    def __init__(
        self,
        message: str,
        notify: NotifyType = NotifyType.PAYLOAD_MALFORMED,
        field: str = "",
        offset: int = -1,
    ) -> None:
        self.notify_spi: tuple[int, bytes] | None = None
        """(protocol, SPI) the answering Notify should name; None: the ISAKMP SA."""
        self.notify = NotifyType(notify)
        self.field = field
        self.offset = offset
        where = ""
        if field:
            where += f" [{field}"
            where += f" @ offset {offset}]" if offset >= 0 else "]"
        super().__init__(f"{message}{where} -> {self.notify.name}")


class AuthenticationError(RemoteProtocolError):
    """The peer's proof of identity (hash, signature, certificate) did not verify."""

    def __init__(
        self, message: str, notify: NotifyType = NotifyType.AUTHENTICATION_FAILED, field: str = ""
    ) -> None:
        super().__init__(message, notify, field)


class NoProposalChosen(RemoteProtocolError):
    """Nothing the peer offered is acceptable under our policy."""

    def __init__(self, message: str, field: str = "SA") -> None:
        super().__init__(message, NotifyType.NO_PROPOSAL_CHOSEN, field)


__all__ = ["AuthenticationError", "IkeError", "LocalProtocolError", "NoProposalChosen", "RemoteProtocolError"]
