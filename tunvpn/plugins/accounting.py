"""What the gateway tells ``tunvpn_accounting`` plugins about a session (see
:mod:`tunvpn.plugins.hookspecs`)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

KINDS = ("start", "interim", "stop")


@dataclass(frozen=True)
class AccountingRecord:
    """One accounting event of one client session (one ISAKMP SA)."""

    kind: str
    """"start", "interim" or "stop"."""
    session_id: str
    """The session's id: ``CredentialRequest.session_id`` of its XAUTH (the ISAKMP SA, hex)."""
    user: str | None = None
    peer: tuple[str, int] = ("", 0)
    address: IPv4Address | None = None
    bytes_in: int = 0
    """ESP payload octets from the client, summed over the session's IPsec SAs."""
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    seconds: float = 0.0
    """Since the start."""
    reason: str = ""
    """A stop's cause ("deleted by peer", "dead peer", "expired", "gateway shutting down")."""
    by_peer: bool = False
    """A stop: the client ended the session."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"accounting kind {self.kind!r}: one of {', '.join(KINDS)}")
