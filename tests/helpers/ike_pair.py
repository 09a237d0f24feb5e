"""Two in-memory IKE engines wired back to back (aioquic's test_connection style), the engine
configurations most tests give them (:func:`gateway_config`, :func:`client_config`), a phase 1
(:func:`connect`) and a whole tunnel with XAUTH and Mode Config (:func:`full_tunnel`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

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


# ------------------------------------------------- the engine configurations most tests use

PSK = b"correct horse battery staple"
PROTECTED = TrafficSelector.from_network("10.20.0.0/16")
CLIENT_VIP = "10.99.0.7"


def gateway_config(**kw) -> EngineConfig:
    base = dict(
        psks=PskTable({"*": PSK}),
        children=(
            ChildPolicy("net", PROTECTED, None, ChildProposal()),
            ChildPolicy("net-nopfs", PROTECTED, None, ChildProposal(pfs_group=None)),
        ),
        allow_aggressive_psk=True,
        allow_aggressive_signatures=True,
        allow_base_mode=True,
    )
    base.update(kw)
    return EngineConfig(**base)


def client_config(**kw) -> EngineConfig:
    base = dict(psks=PskTable({"*": PSK}))
    base.update(kw)
    return EngineConfig(**base)


def connect(pair: Pair, mode: str = "main", **kw) -> bytes:
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, mode=mode, **kw)
    pair.client.drain()
    pair.run()
    return sa_id


# ------------------------------------------------- XAUTH, Mode Config, Quick Mode in one go


def full_tunnel(
    pair: Pair, *, mode: str = "aggressive", pfs: DHGroup | None = DHGroup.ECP_256
) -> list[ev.ChildSAEstablished]:
    sa_id = connect(pair, mode, xauth=True, local_id=Identity.parse("keyid:staff"))
    asked = pair.client.of(ev.XauthRequested)
    assert asked and asked[0].fields == ("user_name", "password")
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="s3cret")
    pair.run()
    creds = pair.gateway.of(ev.XauthCredentials)
    assert creds and creds[0].user_name == "alice" and creds[0].password == "s3cret"
    assert "s3cret" not in repr(creds[0])
    gw_sa = pair.gateway.of(ev.Phase1Established)[0].sa_id
    pair.gateway.engine.xauth_verdict(gw_sa, pair.now, True)
    pair.run()
    assert pair.client.of(ev.XauthCompleted)[0].success
    assert pair.gateway.of(ev.XauthCompleted)[0].success
    pair.client.engine.request_mode_config(sa_id, pair.now)
    pair.run()
    req = pair.gateway.of(ev.ModeConfigRequested)[0]
    assert req.user_name == "alice"
    config = ModeConfig(
        address=ipaddress.IPv4Address(CLIENT_VIP),
        netmask=ipaddress.IPv4Address("255.255.255.255"),
        dns=(ipaddress.IPv4Address("10.20.0.53"),),
        split_include=(ipaddress.IPv4Network("10.20.0.0/16"),),
        banner="welcome",
    )
    pair.gateway.engine.mode_config_reply(gw_sa, pair.now, req.identifier, config)
    pair.run()
    got = pair.client.of(ev.ModeConfigReceived)[0].config
    assert str(got.address) == CLIENT_VIP and got.banner == "welcome"
    assert [str(n) for n in got.split_include] == ["10.20.0.0/16"]
    pair.client.engine.start_child(
        sa_id,
        pair.now,
        TrafficSelector.from_address(CLIENT_VIP),
        PROTECTED,
        ChildProposal(pfs_group=pfs),
        "net",
    )
    pair.run()
    return pair.client.of(ev.ChildSAEstablished) + pair.gateway.of(ev.ChildSAEstablished)
