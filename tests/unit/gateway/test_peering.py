"""Issue 17: who the gateway introduces to whom (tunvpn/gateway/peering.py), pure."""

from __future__ import annotations

import ipaddress

from tunvpn.config.gateway import PeeringRule
from tunvpn.gateway.peering import Member, PairSecrets, introductions
from tunvpn.ike.peers import Role


def member(n: int, user: str, *groups: str) -> Member:
    address = ipaddress.IPv4Address(f"10.79.0.{n}")
    return Member(bytes([n]) * 16, user, frozenset(groups), address, ("198.51.100.1", 4500 + n))


ALICE, BOB, CAROL = member(10, "alice", "eng"), member(11, "bob", "eng"), member(12, "carol")
ALICE_PHONE = member(13, "alice", "eng")
ENG = PeeringRule("eng", ("eng",), ("eng",))


def test_members_of_a_rule_meet_others_do_not() -> None:
    secrets = PairSecrets()
    everyone = [ALICE, BOB, CAROL, ALICE_PHONE]
    alice = introductions(ALICE, everyone, [ENG], secrets)
    assert [p.name for p in alice.peers] == ["bob", "alice"]  # by address; her phone too
    assert introductions(CAROL, everyone, [ENG], secrets).peers == ()
    bob = introductions(BOB, everyone, [ENG], secrets)
    alice_for_bob = next(p for p in bob.peers if p.address == ALICE.address)
    bob_for_alice = next(p for p in alice.peers if p.address == BOB.address)
    assert alice_for_bob.secret == bob_for_alice.secret and len(secrets) == 3
    assert bob_for_alice.role is Role.INITIATOR and alice_for_bob.role is Role.RESPONDER  # lower starts
    assert bob_for_alice.endpoint == ("198.51.100.1", 4511)


def test_a_pair_gets_a_new_secret_once_either_side_is_gone() -> None:
    calls = iter(bytes([n]) * 32 for n in range(1, 10))
    secrets = PairSecrets(lambda size: next(calls))
    first = introductions(ALICE, [ALICE, BOB], [ENG], secrets).peers[0].secret
    assert introductions(ALICE, [ALICE, BOB], [ENG], secrets).peers[0].secret == first
    secrets.forget(BOB.sa_id)
    assert len(secrets) == 0
    assert introductions(ALICE, [ALICE, BOB], [ENG], secrets).peers[0].secret != first


def test_the_first_matching_rule_gives_the_tunnels_parameters() -> None:
    fast = PeeringRule("fast", ("eng",), ("eng",), pfs=None, lifetime=600)
    [peer] = introductions(ALICE, [ALICE, BOB], [fast, ENG], PairSecrets()).peers
    assert peer.pfs_group is None and peer.lifetime_seconds == 600


def test_the_gateway_can_tell_that_forwarding_is_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """It warns at start (relays between peers and sites need the kernel to forward)."""
    from tunvpn.gateway.daemon import forwarding_off

    flag = tmp_path / "ip_forward"
    flag.write_text("0\n")
    assert forwarding_off(str(flag))
    flag.write_text("1\n")
    assert not forwarding_off(str(flag))
    assert not forwarding_off(str(tmp_path / "missing"))  # not Linux: no warning


def test_a_gateway_pushes_one_set_per_pair_of_networks_to_a_site_that_asks() -> None:
    """Issue 18: the sets another gateway learns our networks from (its side is their client
    side), named apart, with the site's ESP parameters."""
    from tunvpn.config.gateway import SiteRule
    from tunvpn.gateway.sites import pushed_policies
    from tunvpn.ike.identity import Identity
    from tunvpn.ike.policies import decode_policies, encode_policies
    from tunvpn.ipsec.selectors import TrafficSelector

    site = SiteRule(
        "a",
        "198.18.1.2",
        Identity.parse("198.18.1.2"),
        b"x" * 32,
        (TrafficSelector.from_network("10.78.0.0/24"), TrafficSelector.from_network("10.79.0.0/24")),
        (TrafficSelector.from_network("10.88.0.0/24"),),
    )
    push = decode_policies(encode_policies(pushed_policies(site)))
    assert push is not None
    assert [(p.name, str(p.gateway_ts), str(p.client_ts)) for p in push.policies] == [
        ("site:a/1", "10.88.0.0/24", "10.78.0.0/24"),
        ("site:a/2", "10.88.0.0/24", "10.79.0.0/24"),
    ]
    assert all(p.suite == site.esp and p.pfs_group == site.pfs for p in push.policies)
