"""tunvpn.gateway.sites (issue 18) on two real gateway engines wired back to back, with the
clock in the test's hands: gateway A (Pair's "client" slot, 192.0.2.10) starts the site tunnel
to gateway B (198.51.100.1), which waits for it."""

from __future__ import annotations

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, gateway_config
from tunvpn.config.gateway import SiteRule
from tunvpn.gateway.sites import SiteLinks
from tunvpn.ike import events as ev
from tunvpn.ike.identity import Identity
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
