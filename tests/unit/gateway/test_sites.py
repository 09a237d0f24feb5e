"""tunvpn.gateway.sites (issue 18) on two real gateway engines wired back to back, with the
clock in the test's hands: gateway A (Pair's "client" slot, 192.0.2.10) starts the site tunnel
to gateway B (198.51.100.1), which waits for it."""

from __future__ import annotations

import ipaddress

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, Peer, client_config, gateway_config
from tunvpn.client.peerlinks import PeerLinks
from tunvpn.config.gateway import SiteRule
from tunvpn.gateway.peering import Member, PairSecrets
from tunvpn.gateway.sites import SiteLinks
from tunvpn.ike import events as ev
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.peers import PeerList
from tunvpn.ipsec.selectors import TrafficSelector

A_NETS = (TrafficSelector.from_network("10.78.0.0/24"), TrafficSelector.from_network("10.79.0.0/24"))
B_NETS = (TrafficSelector.from_network("10.88.0.0/24"),)
KEY = b"a-key-for-these-two-gateways-only-1234"


def sites(b_knows_a: bytes = KEY, a_lists_b: bool = True) -> tuple[Pair, SiteLinks, SiteLinks]:
    pair = Pair(
        gateway_config(require_xauth=True, login_required=True),
        gateway_config(require_xauth=True, login_required=True),
    )
    to_b = SiteRule("b", GATEWAY_IP, Identity.parse(GATEWAY_IP), KEY, B_NETS if a_lists_b else (), A_NETS)
    to_a = SiteRule("a", CLIENT_IP, Identity.parse(CLIENT_IP), b_knows_a, A_NETS, B_NETS, initiate=False)
    a = SiteLinks(pair.client.engine, (CLIENT_IP, 500), Identity.parse(CLIENT_IP), (to_b,))
    b = SiteLinks(pair.gateway.engine, (GATEWAY_IP, 500), Identity.parse(GATEWAY_IP), (to_a,))
    return pair, a, b


def run(pair: Pair, a: SiteLinks, b: SiteLinks, seconds: float, step: float = 0.5) -> None:
    seen = {id(pair.client): 0, id(pair.gateway): 0}
    end = pair.now + seconds
    while pair.now < end:
        a.tick(pair.now)
        b.tick(pair.now)
        for _ in range(3):
            pair.client.drain()
            pair.run()
            for peer, links in ((pair.client, a), (pair.gateway, b)):
                events = peer.events[seen[id(peer)] :]
                seen[id(peer)] = len(peer.events)
                for event in events:
                    links.handle(event, pair.now)
        pair.advance(step)


def test_the_starting_gateway_builds_one_sa_per_pair_of_networks_without_xauth() -> None:
    pair, a, b = sites()
    run(pair, a, b, 2)
    ours = pair.client.of(ev.ChildSAEstablished)
    assert sorted((str(c.local_ts), str(c.remote_ts)) for c in ours) == [
        ("10.78.0.0/24", "10.88.0.0/24"),
        ("10.79.0.0/24", "10.88.0.0/24"),
    ]
    assert not pair.gateway.of(ev.XauthRequested) and not pair.client.of(ev.XauthRequested)
    assert [s["state"] for s in a.status()] == ["up"] and [s["state"] for s in b.status()] == ["up"]
    assert a.proposal_for("site:b") is not None and a.proposal_for("intranet") is None


def test_a_site_that_lists_no_networks_learns_them_from_the_other_gateway() -> None:
    pair, a, b = sites(a_lists_b=False)
    run(pair, a, b, 2)
    ours = pair.client.of(ev.ChildSAEstablished)
    assert sorted(str(c.remote_ts) for c in ours) == ["10.88.0.0/24", "10.88.0.0/24"]
    assert a.status()[0]["networks"] == ["10.88.0.0/24"]
    assert {c.policy_name for c in ours} == {"site:b/1", "site:b/2"}
    assert a.proposal_for("site:b/1") is not None  # the learned sets are rekeyed too


def test_a_refused_site_is_tried_again_later_each_time() -> None:
    """B holds another key for A: A's phase 1 fails, and A starts again after 2 s, then 4 s..."""
    pair, a, b = sites(b_knows_a=b"another-key-altogether-for-this-1234")
    run(pair, a, b, 40, step=1.0)
    starts = pair.client.of(ev.Phase1Failed)
    assert len(starts) >= 2, starts
    assert a.status()[0]["state"] == "down" and a.status()[0].get("error")
    assert not pair.client.of(ev.ChildSAEstablished)


def test_a_reload_that_removes_a_site_deletes_its_tunnel() -> None:
    pair, a, b = sites()
    run(pair, a, b, 2)
    assert a.reconfigure((), pair.now) == ["site b removed"]
    pair.run()
    assert pair.gateway.of(ev.IkeSADeleted), "B was told"
    assert not a.links and not pair.client.engine.pairs()


# ------------------------------------------------- a client introduced to the other site's gateway


C_IP = "203.0.113.5"
C_INNER = ipaddress.IPv4Address("10.79.0.10")  # in A's networks, as B knows them
C_ENDPOINT = (C_IP, 4500)


class Mesh:
    """Gateways A and B (their site tunnel) and A's client C, each an engine, datagrams
    delivered by destination address: C talks to B directly."""

    def __init__(self, pair: Pair, a: SiteLinks, b: SiteLinks) -> None:
        self.pair, self.a, self.b = pair, a, b
        self.c = Peer(IkeEngine(client_config()), C_IP)
        self.peers = {CLIENT_IP: pair.client, GATEWAY_IP: pair.gateway, C_IP: self.c}
        self.links = PeerLinks(self.c.engine, C_ENDPOINT, lambda *args, **kw: None)
        self.seen: dict[int, int] = {}

    def deliver(self) -> int:
        moved = 0
        for ip, peer in self.peers.items():
            for data, remote, local_port in peer.engine.datagrams_to_send():
                moved += 1
                receiver = self.peers[remote[0]]
                receiver.engine.receive_datagram(data, (ip, local_port), remote, self.pair.now)
        for peer in self.peers.values():
            peer.drain()
        return moved

    def events(self) -> None:
        for peer, handler in (
            (self.pair.client, self.a.handle),
            (self.pair.gateway, self.b.handle),
            (self.c, self.links.handle),
        ):
            new = peer.events[self.seen.get(id(peer), 0) :]
            self.seen[id(peer)] = len(peer.events)
            for event in new:
                handler(event, self.pair.now)

    def run(self, seconds: float, step: float = 0.5) -> None:
        end = self.pair.now + seconds
        while self.pair.now < end:
            self.a.tick(self.pair.now)
            self.b.tick(self.pair.now)
            self.links.tick(self.pair.now)
            for _ in range(20):
                self.events()
                if not self.deliver():
                    break
            self.events()
            self.pair.now += step
            for peer in self.peers.values():
                timer = peer.engine.get_timer()
                if timer is not None and timer <= self.pair.now:
                    peer.engine.handle_timer(self.pair.now)
                peer.drain()


def introduced(address: ipaddress.IPv4Address = C_INNER) -> tuple[Mesh, Member, PairSecrets]:
    pair = Pair(
        gateway_config(require_xauth=True, login_required=True),
        gateway_config(require_xauth=True, login_required=True),
    )
    to_b = SiteRule("b", GATEWAY_IP, Identity.parse(GATEWAY_IP), KEY, B_NETS, A_NETS, introduce=("eng",))
    to_a = SiteRule("a", CLIENT_IP, Identity.parse(CLIENT_IP), KEY, A_NETS, B_NETS, initiate=False)
    a = SiteLinks(pair.client.engine, (CLIENT_IP, 500), Identity.parse(CLIENT_IP), (to_b,))
    b = SiteLinks(pair.gateway.engine, (GATEWAY_IP, 500), Identity.parse(GATEWAY_IP), (to_a,))
    mesh = Mesh(pair, a, b)
    mesh.run(2)
    assert a.status()[0]["state"] == "up"
    member = Member(b"\x01" * 16, "alice", frozenset({"eng"}), address, C_ENDPOINT)
    return mesh, member, PairSecrets()


def test_a_client_introduced_to_the_other_sites_gateway_builds_its_tunnel_there_directly() -> None:
    mesh, alice, secrets = introduced()
    intros = mesh.a.client_introductions(alice, secrets)
    assert [(p.name, p.endpoint, p.networks) for p in intros] == [
        ("b", (GATEWAY_IP, 4500), (ipaddress.ip_network("10.88.0.0/24"),))
    ]
    mallory = Member(b"\x02" * 16, "mallory", frozenset({"ops"}), C_INNER + 1, (C_IP, 4501))
    assert mesh.a.client_introductions(mallory, secrets) == (), "not of an introduce group"
    mesh.a.tell([alice, mallory], secrets, mesh.pair.now)
    mesh.run(1)
    assert mesh.a.status()[0]["introduced"] == 1
    assert [c["name"] for c in mesh.b.status()[0]["clients"]] == ["alice"]
    mesh.links.sync(PeerList(intros), C_INNER, mesh.pair.now)
    mesh.run(4)
    ours = mesh.c.of(ev.ChildSAEstablished)
    assert [(str(c.local_ts), str(c.remote_ts), c.remote) for c in ours] == [
        ("10.79.0.10/32", "10.88.0.0/24", (GATEWAY_IP, 4500))
    ]
    theirs = [e for e in mesh.pair.gateway.of(ev.ChildSAEstablished) if e.remote[0] == C_IP]
    assert [(str(c.local_ts), str(c.remote_ts)) for c in theirs] == [("10.88.0.0/24", "10.79.0.10/32")]
    assert not mesh.c.of(ev.XauthRequested), "the pair's secret and identity are the login"
    assert mesh.b.status()[0]["clients"][0]["state"] == "up"
    assert mesh.links.status(str(GATEWAY_IP))["path"] == "direct"

    # alice logs out at A: B is told and deletes her tunnel
    mesh.a.tell([], secrets, mesh.pair.now)
    mesh.run(1)
    assert "clients" not in mesh.b.status()[0]
    assert mesh.c.of(ev.IkeSADeleted), "her tunnel with B is gone"
    assert (C_IP, 4500) not in mesh.pair.gateway.engine.pairs()


def test_the_other_gateway_refuses_a_client_outside_the_introducing_sites_networks() -> None:
    """A may vouch only for addresses behind it: a client it introduces at one of B's own
    addresses (or anyone else's) gets no pair at B."""
    mesh, _, secrets = introduced()
    intruder = Member(b"\x03" * 16, "eve", frozenset({"eng"}), ipaddress.IPv4Address("10.88.0.5"), C_ENDPOINT)
    mesh.a.tell([intruder], secrets, mesh.pair.now)
    mesh.run(1)
    status = mesh.b.status()[0]
    assert status["refused"] == 1 and "clients" not in status
    assert C_ENDPOINT not in mesh.pair.gateway.engine.pairs()


def test_introduced_clients_go_when_the_site_tunnel_goes() -> None:
    mesh, alice, secrets = introduced()
    mesh.a.tell([alice], secrets, mesh.pair.now)
    mesh.run(1)
    assert mesh.b.status()[0]["clients"]
    mesh.a.reconfigure((), mesh.pair.now)  # A drops the site: B's tunnel with it is deleted
    mesh.run(1)
    assert "clients" not in mesh.b.status()[0]
    assert C_ENDPOINT not in mesh.pair.gateway.engine.pairs()
