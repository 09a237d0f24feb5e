"""tunvpn.client.peerlinks (issue 17): what a client does with the gateway's introductions, on
two real IKE engines wired back to back, with the clock in the test's hands."""

from __future__ import annotations

import ipaddress

import pytest

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config
from tunvpn.client import peerlinks
from tunvpn.client.peerlinks import LinkState, PeerLinks
from tunvpn.ike import events as ev
from tunvpn.ike.identity import Identity
from tunvpn.ike.peers import Introduction, PeerList, Role

ALICE_IP, BOB_IP = CLIENT_IP, GATEWAY_IP  # Pair's two engines, both clients here
ALICE = ipaddress.ip_address("10.79.0.10")
BOB = ipaddress.ip_address("10.79.0.11")
ALICE_ID = Identity.parse("keyid:tunvpn-peer:alice@10.79.0.10")
BOB_ID = Identity.parse("keyid:tunvpn-peer:bob@10.79.0.11")
SECRET = bytes(range(32))


def intro(to_bob: bool, **kw: object) -> Introduction:
    """What the gateway tells alice about bob (``to_bob``), or bob about alice."""
    base: dict[str, object] = (
        dict(
            name="bob",
            identity=BOB_ID,
            address=BOB,
            endpoint=(BOB_IP, 4500),
            role=Role.INITIATOR,
            local_id=ALICE_ID,
        )
        if to_bob
        else dict(
            name="alice",
            identity=ALICE_ID,
            address=ALICE,
            endpoint=(ALICE_IP, 4500),
            role=Role.RESPONDER,
            local_id=BOB_ID,
        )
    )
    base.update(secret=SECRET)
    base.update(kw)
    return Introduction(**base)  # type: ignore[arg-type]


class Side:
    """One client's PeerLinks with what it reported, punched and installed."""

    def __init__(self, pair: Pair, mine: str) -> None:
        self.peer = pair.client if mine == ALICE_IP else pair.gateway
        self.reports: list[tuple[str, str, dict[str, object]]] = []
        self.punches: list[tuple[tuple[str, int], int]] = []
        self.up: list[ev.ChildSAEstablished] = []
        self.gone: list[int] = []
        self.seen = 0
        self.links = PeerLinks(
            self.peer.engine,
            (mine, 4500),
            lambda step, text, **fields: self.reports.append((step, text, fields)),
            punch=lambda remote, ttl: self.punches.append((remote, ttl)),
            on_child=self.up.append,
            on_child_deleted=lambda event: self.gone.append(event.spi_in),
        )

    def states(self) -> list[object]:
        return [fields.get("state") for _, _, fields in self.reports]

    def feed(self, now: float) -> None:
        """Hand the engine's new events (the pair helper collects them) to the links."""
        self.peer.drain()
        while self.seen < len(self.peer.events):
            self.seen += 1
            self.links.handle(self.peer.events[self.seen - 1], now)


def run(pair: Pair, alice: Side, bob: Side, seconds: float, step: float = 0.25) -> None:
    end = pair.now + seconds
    while pair.now < end:
        for side in (alice, bob):
            side.links.tick(pair.now)
        pair.run()
        for side in (alice, bob):
            side.feed(pair.now)
        pair.run()
        for side in (alice, bob):
            side.feed(pair.now)
        pair.advance(step)


@pytest.fixture
def two() -> tuple[Pair, Side, Side]:
    pair = Pair(client_config(responder=False), client_config(responder=False))
    return pair, Side(pair, ALICE_IP), Side(pair, BOB_IP)


def test_introduced_clients_build_the_pairs_tunnel_and_the_answering_side_opens_its_nat(two) -> None:  # type: ignore[no-untyped-def]
    pair, alice, bob = two
    alice.links.sync(PeerList((intro(True),)), ALICE, pair.now)
    bob.links.sync(PeerList((intro(False),)), BOB, pair.now)
    alice.links.tick(pair.now)
    assert not alice.peer.engine.ike_sas(), "the starting side waits for the other's keepalive"
    bob.links.tick(pair.now)
    assert bob.punches == [((ALICE_IP, 4500), peerlinks.PUNCH_TTL)]
    run(pair, alice, bob, peerlinks.START_AFTER + 2)
    assert [e.remote for e in alice.up] == [(BOB_IP, 4500)] and [e.remote for e in bob.up] == [
        (ALICE_IP, 4500)
    ]
    assert alice.up[0].spi_out == bob.up[0].spi_in
    assert alice.links.status(str(BOB))["path"] == LinkState.DIRECT
    assert "direct" in alice.states() and "direct" in bob.states()
    punched = len(bob.punches)
    run(pair, alice, bob, 3)
    assert len(bob.punches) == punched, "keepalives toward the peer stop once the phase 1 is up"
    assert all(ttl == peerlinks.PUNCH_TTL for _, ttl in bob.punches)


def test_a_peer_no_longer_introduced_loses_its_sas_at_once(two) -> None:  # type: ignore[no-untyped-def]
    pair, alice, bob = two
    alice.links.sync(PeerList((intro(True),)), ALICE, pair.now)
    bob.links.sync(PeerList((intro(False),)), BOB, pair.now)
    run(pair, alice, bob, peerlinks.START_AFTER + 2)
    [child] = alice.up
    alice.links.sync(PeerList(), ALICE, pair.now)
    assert alice.gone == [child.spi_in]
    assert not alice.links.links and not alice.peer.engine.pairs()
    assert "closed" in alice.states()
    pair.run()
    bob.feed(pair.now)
    assert bob.gone == [bob.up[0].spi_in], "the peer was told (Delete)"


def test_without_a_direct_tunnel_the_starting_side_tries_again_later_each_time(two) -> None:  # type: ignore[no-untyped-def]
    """bob never heard of alice (no introduction on his side): alice's phase 1 times out and she
    starts again after RETRY_FIRST, then after twice that; the relay is due after RELAY_AFTER
    but there is no gateway SA here, so it waits (no crash)."""
    pair, alice, bob = two
    alice.links.sync(PeerList((intro(True),)), ALICE, pair.now)
    run(pair, alice, bob, 120, step=1.0)
    starts = [text for step, text, fields in alice.reports if fields.get("state") == "connecting"]
    downs = [fields for _, _, fields in alice.reports if fields.get("state") == "down"]
    assert len(starts) >= 2 and len(downs) >= 1
    assert bob.peer.engine.drops["first message to a peer that answers none"] >= 1
    assert not bob.peer.engine.ike_sas()


def test_a_peer_at_a_new_endpoint_is_tried_there(two) -> None:  # type: ignore[no-untyped-def]
    pair, alice, _ = two
    alice.links.sync(PeerList((intro(True, endpoint=(BOB_IP, 40000)),)), ALICE, pair.now)
    alice.links.tick(pair.now + peerlinks.START_AFTER)
    [first] = alice.peer.engine.ike_sas()
    assert first.remote == (BOB_IP, 40000)
    moved_at = pair.now + 3
    alice.links.sync(PeerList((intro(True),)), ALICE, moved_at)
    assert list(alice.peer.engine.pairs()) == [(BOB_IP, 4500)]
    alice.links.tick(moved_at + 0.1)
    assert all(sa.dead or sa.remote == (BOB_IP, 40000) for sa in alice.peer.engine.ike_sas())
    alice.links.tick(moved_at + peerlinks.START_AFTER)
    assert [sa.remote for sa in alice.peer.engine.ike_sas() if not sa.dead] == [(BOB_IP, 4500)]


def test_an_introduction_without_our_identity_is_skipped(two) -> None:  # type: ignore[no-untyped-def]
    pair, alice, _ = two
    alice.links.sync(PeerList((intro(True, local_id=None),)), ALICE, pair.now)
    assert not alice.links.links and not alice.peer.engine.pairs()


def test_nothing_happens_before_our_own_address_is_known(two) -> None:  # type: ignore[no-untyped-def]
    pair, alice, _ = two
    alice.links.sync(PeerList((intro(True),)), None, pair.now)
    alice.links.tick(pair.now + 10)
    assert not alice.links.links and not alice.peer.engine.ike_sas()
