"""Two in-memory IKE engines wired back to back (aioquic's test_connection style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig
from tunvpn.ike.engine import IkeEngine

CLIENT_IP = "192.0.2.10"
GATEWAY_IP = "198.51.100.1"
NAT_MAP = {500: 40123, 4500: 40456}  # the client's ports as a NAT in front of it maps them


@dataclass
class Peer:
    engine: IkeEngine
    ip: str
    events: list[ev.Event] = field(default_factory=list)

    def drain(self) -> list[ev.Event]:
        new = []
        while (e := self.engine.next_event()) is not None:
            new.append(e)
        self.events += new
        return new

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class Pair:
    """A client (initiator) and a gateway (responder); ``now`` advances only when told."""

    def __init__(self, client: EngineConfig, gateway: EngineConfig, *, nat: bool = False) -> None:
        self.client = Peer(IkeEngine(client), CLIENT_IP)
        self.gateway = Peer(IkeEngine(gateway), GATEWAY_IP)
        self.now = 1_800_000_000.0
        self.nat = nat  # rewrite the client's source port as a NAT would
        self.wire: list[tuple[str, bytes]] = []
        self.dropped = 0

    def _other(self, peer: Peer) -> Peer:
        return self.gateway if peer is self.client else self.client

    def transfer(self, sender: Peer, *, drop: bool = False) -> int:
        """Deliver what ``sender`` wants to send; returns the number of datagrams."""
        out = sender.engine.datagrams_to_send()
        receiver = self._other(sender)
        for data, remote, local_port in out:
            self.wire.append(("c>g" if sender is self.client else "g>c", data))
            if drop:
                self.dropped += 1
                continue
            src_port, dst_port = local_port, remote[1]
            if self.nat and sender is self.client:
                src_port = NAT_MAP[local_port]
            if self.nat and receiver is self.client:
                dst_port = {v: k for k, v in NAT_MAP.items()}[dst_port]
            assert remote[0] == receiver.ip, f"sent to {remote}, not {receiver.ip}"
            src = (sender.ip, src_port)
            dst = (receiver.ip, dst_port)
            receiver.engine.receive_datagram(data, src, dst, self.now)
        sender.drain()
        receiver.drain()
        return len(out)

    def run(self, max_rounds: int = 50) -> None:
        """Shuttle datagrams until both sides are quiet."""
        for _ in range(max_rounds):
            moved = self.transfer(self.client) + self.transfer(self.gateway)
            if not moved:
                return
        raise AssertionError("the engines never went quiet")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for peer in (self.client, self.gateway):
            timer = peer.engine.get_timer()
            if timer is not None and timer <= self.now:
                peer.engine.handle_timer(self.now)
            peer.drain()
