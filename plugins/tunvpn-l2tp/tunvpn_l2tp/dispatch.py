"""Sans-I/O L2TP for the gateway (RFC 2661): :class:`Lns`, one UDP socket's control messages
from many LACs dispatched to their :class:`tunvpn_l2tp.control.Tunnel`, with limits per peer
and in total. No sockets, threads or clocks; :meth:`Lns.receive` never raises: it counts a bad
datagram in ``stats`` and drops it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from tunvpn_l2tp.control import (
    Event,
    Output,
    Role,
    Tunnel,
    TunnelState,
)
from tunvpn_l2tp.message import (
    AvpType,
    ControlMessage,
    L2tpError,
    MessageType,
    ResultCode,
    StopCcnResult,
    decode,
    is_control,
)

__all__ = [
    "Address",
    "Lns",
    "LnsEvent",
    "LnsOutput",
    "LnsStats",
]


# ------------------------------------------------------------------ the LNS dispatcher

Address = tuple[str, int]


@dataclass(frozen=True)
class LnsEvent:
    """An event of one of the Lns's tunnels."""

    peer: Address  # the LAC's UDP address
    local_tunnel_id: int  # our Tunnel ID: Lns.tunnel() finds the Tunnel
    event: Event


@dataclass(frozen=True)
class LnsOutput:
    """What one call on an Lns produced: addressed datagrams and tunnel events."""

    datagrams: tuple[tuple[Address, bytes], ...] = ()
    events: tuple[LnsEvent, ...] = ()

    def __add__(self, other: LnsOutput) -> LnsOutput:
        return LnsOutput(self.datagrams + other.datagrams, self.events + other.events)


@dataclass
class LnsStats:
    """Datagrams the dispatcher dropped, by reason, and tunnels it made and forgot."""

    malformed: int = 0
    not_control: int = 0
    unknown_tunnel: int = 0
    wrong_peer: int = 0  # right Tunnel ID, other address: not the tunnel's peer
    duplicate_sccrq: int = 0
    refused_total_limit: int = 0
    refused_peer_limit: int = 0
    tunnels_created: int = 0
    tunnels_forgotten: int = 0


@dataclass
class _Entry:
    tunnel: Tunnel
    peer: Address
    peer_tunnel_id: int
    closed_at: float | None = None


class Lns:
    """Sans-I/O LNS for many LACs: one socket's control messages in, addressed datagrams out.

    A new (peer address, peer Assigned Tunnel ID) with an SCCRQ makes a tunnel; a retransmitted
    SCCRQ goes to the tunnel it made. Everything else is routed by our Tunnel ID and must come
    from that tunnel's peer. A closed tunnel lingers ``linger`` seconds to re-ACK
    retransmissions, then it is forgotten. Over ``max_tunnels`` (live tunnels in total) or
    ``max_tunnels_per_peer`` (per peer IP address) an SCCRQ is dropped unanswered. Lingering
    tunnels are bounded the same way: a new tunnel makes the oldest one of its peer (or of
    all) be forgotten early.

    Data messages are not handled here: use :func:`is_control` / :func:`decode_data` on the
    fast path, and :meth:`data_message` to send.
    """

    def __init__(
        self,
        host_name: str = "tunvpn-lns",
        secret: bytes | None = None,
        max_tunnels: int = 1024,
        max_tunnels_per_peer: int = 4,
        max_sessions_per_tunnel: int = 256,
        hello_interval: float = 60.0,
        receive_window: int = 4,
        linger: float = 31.0,  # a LAC's full retransmission cycle (1+2+4+8+8+8 s)
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError("an empty secret: pass None for no tunnel authentication")
        self.host_name = host_name
        self._secret = secret
        self.max_tunnels = max_tunnels
        self.max_tunnels_per_peer = max_tunnels_per_peer
        self.max_sessions_per_tunnel = max_sessions_per_tunnel
        self.hello_interval = hello_interval
        self.receive_window = receive_window
        self.linger = linger
        self.random_bytes = random_bytes
        self.stats = LnsStats()
        self._entries: dict[int, _Entry] = {}
        self._by_peer_tunnel: dict[tuple[Address, int], int] = {}

    def __repr__(self) -> str:
        secret = "<set>" if self._secret else None  # never the secret itself
        return f"Lns(host_name={self.host_name!r}, tunnels={len(self._entries)}, secret={secret})"

    # -- lookups

    def tunnel(self, local_tunnel_id: int) -> Tunnel | None:
        entry = self._entries.get(local_tunnel_id)
        return entry.tunnel if entry else None

    def peer_of(self, local_tunnel_id: int) -> Address | None:
        entry = self._entries.get(local_tunnel_id)
        return entry.peer if entry else None

    def live_tunnels(self) -> list[Tunnel]:
        """Tunnels not closed yet (the lingering closed ones are left out)."""
        return [e.tunnel for e in self._entries.values() if e.closed_at is None]

    def data_message(
        self, local_tunnel_id: int, local_session_id: int, payload: bytes
    ) -> tuple[Address, bytes]:
        """Where to send ``payload`` for one of our sessions, and the data message to send."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            raise ValueError(f"no tunnel {local_tunnel_id}")
        return entry.peer, entry.tunnel.data_message(local_session_id, payload)

    # -- I/O-free entry points

    def receive(self, datagram: bytes, peer: Address, now: float) -> LnsOutput:
        """One control datagram from ``peer``. Never raises on bad input: counts and drops it."""
        if not is_control(datagram):
            self.stats.not_control += 1
            return LnsOutput()
        try:
            msg = decode(datagram)
            msg.validate()
        except L2tpError:
            self.stats.malformed += 1
            return LnsOutput()
        if msg.tunnel_id == 0:
            if msg.message_type is MessageType.SCCRQ:
                return self._on_sccrq(msg, peer, now)
            self.stats.unknown_tunnel += 1
            return LnsOutput()
        entry = self._entries.get(msg.tunnel_id)
        if entry is None:
            self.stats.unknown_tunnel += 1
            return LnsOutput()
        if entry.peer != peer:
            self.stats.wrong_peer += 1
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.receive_message(msg, now), now)

    def poll(self, now: float) -> LnsOutput:
        """Retransmissions, HELLOs and timeouts of every tunnel; forget closed ones after linger."""
        out = LnsOutput()
        for local_id, entry in list(self._entries.items()):
            if entry.closed_at is None:
                out += self._wrap(entry, entry.tunnel.poll(now), now)
            elif now >= entry.closed_at + self.linger:
                self._forget(local_id)
        return out

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for entry in self._entries.values():
            due = entry.tunnel.next_deadline() if entry.closed_at is None else entry.closed_at + self.linger
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def close_session(
        self, now: float, local_tunnel_id: int, local_session_id: int, result: int = ResultCode.ADMIN
    ) -> LnsOutput:
        """CDN for one of our sessions; nothing if the tunnel or session is unknown or closed."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.close_session(now, local_session_id, result), now)

    def close_tunnel(
        self, now: float, local_tunnel_id: int, result: int = ResultCode.GENERAL_CLEAR, message: str = ""
    ) -> LnsOutput:
        """StopCCN for one tunnel; TunnelClosed comes when the LAC acknowledges it."""
        entry = self._entries.get(local_tunnel_id)
        if entry is None:
            return LnsOutput()
        return self._wrap(entry, entry.tunnel.close(now, result, message), now)

    def close_all(self, now: float) -> LnsOutput:
        """StopCCN (result 6, shutting down) to every live tunnel."""
        out = LnsOutput()
        for entry in list(self._entries.values()):
            if entry.closed_at is None:
                out += self._wrap(entry, entry.tunnel.close(now, StopCcnResult.SHUTTING_DOWN), now)
        return out

    # -- internals

    def _on_sccrq(self, msg: ControlMessage, peer: Address, now: float) -> LnsOutput:
        peer_tunnel_id = msg.u16(AvpType.ASSIGNED_TUNNEL_ID)  # validate() checked it, non-zero
        known = self._by_peer_tunnel.get((peer, peer_tunnel_id))
        if known is not None:
            self.stats.duplicate_sccrq += 1  # our SCCRP or its ACK got lost: the tunnel re-ACKs
            entry = self._entries[known]
            return self._wrap(entry, entry.tunnel.receive_message(msg, now), now)
        self._forget_lingering(peer[0])
        live = [e for e in self._entries.values() if e.closed_at is None]
        if len(live) >= self.max_tunnels:
            self.stats.refused_total_limit += 1
            return LnsOutput()
        if sum(1 for e in live if e.peer[0] == peer[0]) >= self.max_tunnels_per_peer:
            self.stats.refused_peer_limit += 1
            return LnsOutput()
        local_id = self._new_tunnel_id()
        if local_id is None:
            self.stats.refused_total_limit += 1
            return LnsOutput()
        tunnel = Tunnel(
            local_id,
            host_name=self.host_name,
            receive_window=self.receive_window,
            role=Role.LNS,
            secret=self._secret,
            hello_interval=self.hello_interval,
            max_sessions=self.max_sessions_per_tunnel,
            random_bytes=self.random_bytes,
        )
        out = tunnel.receive_message(msg, now)
        if tunnel.state is TunnelState.IDLE:  # the SCCRQ did not get through the state machine
            self.stats.malformed += 1
            return LnsOutput()
        entry = _Entry(tunnel, peer, peer_tunnel_id)
        self._entries[local_id] = entry
        self._by_peer_tunnel[(peer, peer_tunnel_id)] = local_id
        self.stats.tunnels_created += 1
        return self._wrap(entry, out, now)

    def _forget_lingering(self, peer_ip: str) -> None:
        """Make room before a new tunnel: a peer keeps at most ``max_tunnels_per_peer`` closed
        tunnels lingering, all peers together ``max_tunnels``; the oldest goes first (a LAC
        opening and closing tunnels in a loop must not fill the table, issue 14)."""
        lingering = sorted(
            (
                (e.closed_at, local_id, e.peer[0])
                for local_id, e in self._entries.items()
                if e.closed_at is not None
            ),
        )
        mine = [item for item in lingering if item[2] == peer_ip]
        for _, local_id, _ in mine[: max(0, len(mine) - self.max_tunnels_per_peer + 1)]:
            self._forget(local_id)
        lingering = [item for item in lingering if item[1] in self._entries]
        for _, local_id, _ in lingering[: max(0, len(lingering) - self.max_tunnels + 1)]:
            self._forget(local_id)

    def _new_tunnel_id(self) -> int | None:
        for _ in range(16):
            local_id = int.from_bytes(self.random_bytes(2), "big")
            if local_id and local_id not in self._entries:
                return local_id
        return next((i for i in range(1, 0x10000) if i not in self._entries), None)

    def _wrap(self, entry: _Entry, out: Output, now: float) -> LnsOutput:
        if entry.closed_at is None and entry.tunnel.state is TunnelState.CLOSED:
            entry.closed_at = now
        local_id = entry.tunnel.local_tunnel_id
        return LnsOutput(
            tuple((entry.peer, d) for d in out.datagrams),
            tuple(LnsEvent(entry.peer, local_id, e) for e in out.events),
        )

    def _forget(self, local_id: int) -> None:
        entry = self._entries.pop(local_id)
        self._by_peer_tunnel.pop((entry.peer, entry.peer_tunnel_id), None)
        self.stats.tunnels_forgotten += 1
