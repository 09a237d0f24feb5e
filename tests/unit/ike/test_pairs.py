"""Direct tunnels between two clients the gateway introduced (issue 17), engine level: two client
engines (neither answers strangers), each told the other's announced endpoint, identity and the
pair's secret, build a Main Mode phase 1 and the pair's Quick Mode on the NAT-T port; anybody
else, a wrong key, a wrong identity or a selector outside the pair's policy gets nothing."""

from __future__ import annotations

import pytest

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config
from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy, PeerPair
from tunvpn.ike.constants import NotifyType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

ALICE_IP, BOB_IP = CLIENT_IP, GATEWAY_IP  # Pair's two engines: alice starts, bob answers
ALICE_ID = Identity.parse("keyid:tunvpn-peer:alice@10.79.0.10")
BOB_ID = Identity.parse("keyid:tunvpn-peer:bob@10.79.0.11")
ALICE_VIP = TrafficSelector.from_network("10.79.0.10/32")
BOB_VIP = TrafficSelector.from_network("10.79.0.11/32")
SECRET = bytes(range(32))


def _pairs(secret: bytes = SECRET, alice_says: Identity = ALICE_ID) -> tuple[PeerPair, PeerPair]:
    for_alice = PeerPair(BOB_ID, alice_says, secret, (ChildPolicy("peer:bob", ALICE_VIP, BOB_VIP),))
    for_bob = PeerPair(ALICE_ID, BOB_ID, SECRET, (ChildPolicy("peer:alice", BOB_VIP, ALICE_VIP),))
    return for_alice, for_bob


def _two_clients(for_alice: PeerPair, for_bob: PeerPair, *, announce: bool = True) -> Pair:
    pair = Pair(client_config(responder=False), client_config(responder=False))
    pair.client.engine.set_pairs({(BOB_IP, 4500): for_alice})
    if announce:
        pair.gateway.engine.set_pairs({(ALICE_IP, 4500): for_bob})
    return pair


def _start(pair: Pair, for_alice: PeerPair) -> bytes:
    sa_id = pair.client.engine.initiate((BOB_IP, 4500), (ALICE_IP, 4500), pair.now, pair=for_alice)
    pair.client.drain()
    pair.run()
    return sa_id


def test_two_introduced_clients_build_a_direct_tunnel() -> None:
    for_alice, for_bob = _pairs()
    pair = _two_clients(for_alice, for_bob)
    sa_id = _start(pair, for_alice)
    [alice_up] = pair.client.of(ev.Phase1Established)
    [bob_up] = pair.gateway.of(ev.Phase1Established)
    assert alice_up.peer_id == str(BOB_ID) and bob_up.peer_id == str(ALICE_ID)
    assert alice_up.suite.endswith("/pre_shared_key")
    # on the NAT-T port from the first message on (the endpoint the gateway announced)
    assert all(data.startswith(bytes(4)) for _, data in pair.wire)
    assert not pair.client.of(ev.XauthRequested) and not pair.gateway.of(ev.XauthRequested)
    pair.client.engine.start_child(sa_id, pair.now, ALICE_VIP, BOB_VIP, ChildProposal(), name="peer:bob")
    pair.client.drain()
    pair.run()
    [mine] = pair.client.of(ev.ChildSAEstablished)
    [theirs] = pair.gateway.of(ev.ChildSAEstablished)
    assert (mine.local_ts, mine.remote_ts) == (ALICE_VIP, BOB_VIP)
    assert (theirs.local_ts, theirs.remote_ts, theirs.policy_name) == (BOB_VIP, ALICE_VIP, "peer:alice")
    assert mine.spi_out == theirs.spi_in and mine.enc_key_out == theirs.enc_key_in


def test_a_first_message_from_an_endpoint_nobody_announced_is_dropped_without_state() -> None:
    for_alice, for_bob = _pairs()
    pair = _two_clients(for_alice, for_bob, announce=False)
    _start(pair, for_alice)
    bob = pair.gateway.engine
    assert not bob.ike_sas() and not pair.gateway.events
    assert bob.drops["first message to a peer that answers none"] >= 1
    # the same from another port of the announced address: not the announced endpoint
    bob.set_pairs({(ALICE_IP, 4501): for_bob})
    before = bob.drops["first message to a peer that answers none"]
    pair.advance(1.5)
    pair.run()
    assert bob.drops["first message to a peer that answers none"] > before and not bob.ike_sas()


def test_the_group_key_is_not_a_pair_key() -> None:
    """The client's profile key (the group PSK) is in its table for the gateway; an introduced
    endpoint that does not know the pair's secret fails even with it."""
    for_alice, for_bob = _pairs(secret=bytes(32))
    pair = _two_clients(for_alice, for_bob)
    _start(pair, for_alice)
    assert not pair.client.of(ev.Phase1Established) and not pair.gateway.of(ev.Phase1Established)
    pair.advance(40)
    pair.run()
    failed = pair.gateway.of(ev.Phase1Failed)
    assert failed, pair.gateway.events


def test_a_peer_presenting_another_identity_is_refused() -> None:
    for_alice, for_bob = _pairs(alice_says=Identity.parse("keyid:tunvpn-peer:carol@10.79.0.12"))
    pair = _two_clients(for_alice, for_bob)
    _start(pair, for_alice)
    assert not pair.gateway.of(ev.Phase1Established)
    [failed] = pair.gateway.of(ev.Phase1Failed)
    assert failed.notify == NotifyType.INVALID_ID_INFORMATION and "carol" in failed.reason


def test_a_peer_gets_only_the_pairs_selectors() -> None:
    for_alice, for_bob = _pairs()
    pair = _two_clients(for_alice, for_bob)
    sa_id = _start(pair, for_alice)
    lan = TrafficSelector.from_network("10.20.0.0/16")
    pair.client.engine.start_child(sa_id, pair.now, ALICE_VIP, lan, ChildProposal(), name="bob's lan")
    pair.client.drain()
    pair.run()
    assert not pair.gateway.of(ev.ChildSAEstablished)
    assert pair.client.of(ev.ChildSAFailed)


@pytest.mark.parametrize("mode", ["aggressive", "base"])
def test_a_pair_runs_in_main_mode_only(mode: str) -> None:
    for_alice, _ = _pairs()
    engine = IkeEngine(client_config(responder=False))
    with pytest.raises(ValueError, match="Main Mode"):
        engine.initiate((BOB_IP, 4500), (ALICE_IP, 4500), 0.0, mode=mode, pair=for_alice)


def test_the_pair_secret_never_shows() -> None:
    for_alice, _ = _pairs()
    assert SECRET.hex() not in repr(for_alice) and repr(SECRET) not in repr(for_alice)


def test_a_gateway_answers_another_sites_gateway_with_that_sites_key_only() -> None:
    """Issue 18: on a gateway (which answers everyone, and asks its clients for XAUTH) a first
    message from a site's address, any port, takes the site's pair: its key and identity, no
    XAUTH; the group key from that address gets nothing."""
    from tests.helpers.ike_pair import gateway_config

    site_id, gw_id = Identity.parse("198.51.100.1"), Identity.parse("192.0.2.10")
    site_key = b"a-key-for-these-two-gateways-only-1234"
    nets = (
        ChildPolicy(
            "site:b",
            TrafficSelector.from_network("10.78.0.0/24"),
            TrafficSelector.from_network("10.88.0.0/24"),
        ),
    )
    # the gateway is Pair's "client" engine here (192.0.2.10); the other site starts from 198.51.100.1
    pair = Pair(gateway_config(require_xauth=True, login_required=True), client_config())
    pair.client.engine.set_pairs({(BOB_IP, 0): PeerPair(site_id, gw_id, site_key, nets, start_on_natt=False)})
    # a holder of the group key, at the site's address: refused (the site's key is asked)
    stranger = pair.gateway.engine
    stranger.initiate((ALICE_IP, 500), (BOB_IP, 500), pair.now, mode="main", xauth=True)  # a client would
    pair.gateway.drain()
    pair.run()
    pair.advance(2)
    pair.run()
    assert not pair.client.of(ev.Phase1Established) and not pair.gateway.of(ev.Phase1Established)
    # the other site's gateway with the site's key
    theirs = PeerPair(gw_id, site_id, site_key, (), start_on_natt=False)
    other = Pair(gateway_config(require_xauth=True, login_required=True), client_config())
    other.client.engine.set_pairs(
        {(BOB_IP, 0): PeerPair(site_id, gw_id, site_key, nets, start_on_natt=False)}
    )
    other.gateway.engine.initiate((ALICE_IP, 500), (BOB_IP, 500), other.now, pair=theirs)
    other.gateway.drain()
    other.run()
    [up] = other.client.of(ev.Phase1Established)
    assert up.peer_id == str(site_id) and up.suite.endswith("/pre_shared_key")
    assert not other.client.of(ev.XauthRequested) and not other.gateway.of(ev.XauthRequested)
