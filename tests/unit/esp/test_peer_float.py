"""Issue 12, attack 7 on the ESP side (RFC 3948 section 4, RFC 3947 section 4): the peer's
address follows an ESP packet only once it passed its ICV and replay check, and only for a
peer behind a NAT. Written as the attack: a replayed ESP packet, and ESP with the right SPI
but a forged ICV, sent from an attacker's address, move nothing; a client whose NAT
rebinds is followed (positive control). The engines are the in-memory pair; the data path is
the real :class:`~tunvpn.dataplane.thread.DataPlane` and :class:`~tunvpn.dataplane.tunnel.Tunnel` with a
stand-in TUN device and UDP socket (no packets leave the process)."""

from __future__ import annotations

from tests.helpers.esp_helpers import ipv4
from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, PROTECTED, Pair, client_config, gateway_config
from tunvpn.dataplane.thread import PeerActivity
from tunvpn.dataplane.tunnel import Tunnel
from tunvpn.esp import sa_pair_from_child
from tunvpn.ike import events as ev
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

ATTACKER = ("203.0.113.66", 4500)
REBOUND = (CLIENT_IP, 41999)  # the client's NAT gave it a new port


class FakeTun:
    """Collects what the data path writes to the TUN device."""

    name = "faketun"

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_batch(self, packets: list[bytes]) -> None:
        self.written += packets

    def read_batch(self, n: int) -> list[bytes]:
        return []

    def fileno(self) -> int:
        return -1


class FakeUdp:
    """Hands the data path one prepared batch of (datagram, GRO segment, source)."""

    def __init__(self) -> None:
        self.batch: list[tuple[bytes, int, tuple[str, int]]] = []
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def recv_buffers(self, n: int) -> list[tuple[bytes, int, tuple[str, int]]]:
        out, self.batch = self.batch, []
        return out

    def send_batch(self, datagrams: list[bytes], peer: tuple[str, int]) -> int:
        self.sent += [(d, peer) for d in datagrams]
        return len(datagrams)


def tunnel_with_a_child(*, nat: bool) -> tuple[Pair, Tunnel, FakeUdp, object, ev.ChildSAEstablished]:
    pair = Pair(client_config(), gateway_config(), nat=nat)
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    pair.run()
    [gateway_child] = pair.gateway.of(ev.ChildSAEstablished)
    [client_child] = pair.client.of(ev.ChildSAEstablished)
    tunnel = Tunnel(pair.gateway.engine, tun=FakeTun())
    udp = FakeUdp()
    tunnel.dataplane._udp = udp
    tunnel.child_established(gateway_child)
    _, client_out = sa_pair_from_child(client_child, pair.now)
    return pair, tunnel, udp, client_out, gateway_child


def deliver(tunnel: Tunnel, udp: FakeUdp, datagram: bytes, source: tuple[str, int]) -> PeerActivity:
    """One datagram through the data path, then its next "peer alive" note."""
    seen: list[object] = []
    tunnel.dataplane.on_event = seen.append
    udp.batch = [(datagram, 0, source)]
    tunnel.dataplane._from_udp()
    tunnel.dataplane._next_activity = 0.0
    tunnel.dataplane._timers()
    notes = [e for e in seen if isinstance(e, PeerActivity)]
    return notes[-1] if notes else PeerActivity(frozenset())


def moves_of(pair: Pair, tunnel: Tunnel, note: PeerActivity) -> list[ev.PeerAddressChanged]:
    """What the shell does with a note: the tunnel asks the engine, the engine decides."""
    tunnel._data_event(note)
    new = [e for e in pair.gateway.drain() if isinstance(e, ev.PeerAddressChanged)]
    for event in new:
        tunnel.peer_moved(event)
    return new


def outbound_peer(tunnel: Tunnel, child: ev.ChildSAEstablished) -> tuple[str, int] | None:
    [sa] = [sa for sa in tunnel.dataplane.sad.outbound_sas() if sa.spi == child.spi_out]
    return sa.peer


def test_replayed_and_forged_esp_from_an_attacker_move_nothing_a_rebound_nat_moves_the_peer() -> None:
    pair, tunnel, udp, client_out, child = tunnel_with_a_child(nat=True)
    assert pair.gateway.engine.get_sa(child.sa_id).nat_remote
    home = child.remote
    packets = client_out.encrypt_batch(
        [ipv4(src=CLIENT_IP, dst="10.20.0.1", payload=bytes([i]) * 40) for i in range(3)]
    )
    # the real client, from its current mapping: accepted, no move
    note = deliver(tunnel, udp, packets[0], home)
    assert note.sources == ((child.spi_in, home),)
    assert moves_of(pair, tunnel, note) == []
    # the attacker replays that packet, and sends one with a forged ICV, from elsewhere
    assert deliver(tunnel, udp, packets[0], ATTACKER).sources == ()
    forged = packets[1][:-1] + bytes([packets[1][-1] ^ 1])
    assert deliver(tunnel, udp, forged, ATTACKER).sources == ()
    assert pair.gateway.engine.get_sa(child.sa_id).remote == home
    assert outbound_peer(tunnel, child) == home
    # the client's NAT rebinds: its next authenticated packet moves IKE and ESP there
    note = deliver(tunnel, udp, packets[2], REBOUND)
    [moved] = moves_of(pair, tunnel, note)
    assert (moved.old, moved.new) == (home, REBOUND)
    assert pair.gateway.engine.get_sa(child.sa_id).remote == REBOUND
    assert outbound_peer(tunnel, child) == REBOUND
    tunnel.dataplane.stop()


def test_authenticated_esp_does_not_move_a_peer_that_is_not_behind_a_nat() -> None:
    pair, tunnel, udp, client_out, child = tunnel_with_a_child(nat=False)
    assert not pair.gateway.engine.get_sa(child.sa_id).nat_remote
    [packet] = client_out.encrypt_batch([ipv4(src=CLIENT_IP, dst="10.20.0.1", payload=b"x" * 40)])
    note = deliver(tunnel, udp, packet, ATTACKER)
    assert note.sources == ((child.spi_in, ATTACKER),)  # authenticated, so reported ...
    assert moves_of(pair, tunnel, note) == []  # ... but the engine keeps the peer
    assert outbound_peer(tunnel, child) == child.remote
    assert pair.gateway.engine.drops["address change of a peer not behind a NAT"] == 1
    tunnel.dataplane.stop()
