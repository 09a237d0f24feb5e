"""A standard client (vpnc) against a gateway with several policies: it asks for its address
=== 0.0.0.0/0, the gateway accepts that (as a Cisco concentrator does) and narrows what the
SA lets in to the networks of the client's policies; everything else is dropped and counted.
"""

from __future__ import annotations

from tests.helpers.esp_helpers import ALL_SUITES, GCM128, ipv4, sa_pair, udp
from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config, connect, gateway_config
from tunvpn.esp import DropReason
from tunvpn.gateway.daemon import STANDARD_CLIENT_POLICY, child_policies_for, standard_client_policy
from tunvpn.ike import events as ev
from tunvpn.ike.constants import DHGroup, NotifyType
from tunvpn.ike.policies import Phase2Policy
from tunvpn.ike.proposals import DEFAULT_ESP, LEGACY_ESP, ChildProposal, Phase1Policy
from tunvpn.ipsec.selectors import TrafficSelector

NET_A = TrafficSelector.from_network("10.78.0.0/24")
NET_B = TrafficSelector.from_network("10.78.1.0/24")
ANY = TrafficSelector.any()
CLIENT_VIP = "10.79.0.10"
NOW = 1_800_000_000.0
POLICIES = (
    Phase2Policy("net-a", NET_A, None, (DEFAULT_ESP[0],), DHGroup.ECP_256, 3600),
    Phase2Policy("net-b", NET_B, None, (DEFAULT_ESP[2],), None, 1800, 5000),
)


def standard_view(policies: tuple[Phase2Policy, ...], *, tunvpn_peer: bool = False):
    return child_policies_for(
        policies, tunvpn_peer=tunvpn_peer, phase1=Phase1Policy.with_legacy(), legacy=True
    )


def test_a_standard_client_gets_a_narrowed_any_policy_last() -> None:
    children = standard_view(POLICIES)
    assert [c.name for c in children] == ["net-a", "net-b", STANDARD_CLIENT_POLICY]
    extra = children[-1]
    assert extra.local_ts == ANY and extra.remote_ts is None
    assert extra.inbound_local == (NET_A, NET_B)
    # every suite of the policies it stands for, then the legacy ones vpnc needs
    assert extra.proposal.esp[:2] == (DEFAULT_ESP[0], DEFAULT_ESP[2])
    assert set(LEGACY_ESP) <= set(extra.proposal.esp)
    assert (extra.proposal.lifetime_seconds, extra.proposal.lifetime_kilobytes) == (1800, 5000)
    assert extra.proposal.pfs_group is None and DHGroup.MODP_1024 in extra.proposal.accept_pfs


def test_no_narrowed_policy_for_tunvpn_peers_or_when_a_policy_is_any() -> None:
    assert STANDARD_CLIENT_POLICY not in [c.name for c in standard_view(POLICIES, tunvpn_peer=True)]
    everything = (*POLICIES, Phase2Policy("all", ANY))
    assert STANDARD_CLIENT_POLICY not in [c.name for c in standard_view(everything)]
    fixed = (Phase2Policy("site", NET_A, TrafficSelector.from_network("10.5.0.0/16")),)
    assert standard_client_policy(fixed, legacy=False, pfs_groups=()) is None


def _standard_pair() -> tuple[Pair, bytes]:
    pair = Pair(client_config(), gateway_config(children=standard_view(POLICIES)))
    return pair, connect(pair)


def test_responder_accepts_any_and_reports_the_narrowing() -> None:
    pair, sa_id = _standard_pair()
    mine = TrafficSelector.from_address(CLIENT_IP)
    pair.client.engine.start_child(sa_id, pair.now, mine, ANY, ChildProposal(esp=LEGACY_ESP, pfs_group=None))
    pair.run()
    [gw] = pair.gateway.of(ev.ChildSAEstablished)
    [cl] = pair.client.of(ev.ChildSAEstablished)
    assert gw.policy_name == STANDARD_CLIENT_POLICY
    assert (gw.local_ts, gw.remote_ts) == (ANY, mine)  # answered with the client's own IDs
    assert (cl.local_ts, cl.remote_ts) == (mine, ANY)
    assert gw.inbound_local_ts == (NET_A, NET_B)
    assert cl.inbound_local_ts == ()
    assert gw.lifetime_seconds == 1800


def test_an_exact_policy_still_wins_and_other_networks_are_refused() -> None:
    pair, sa_id = _standard_pair()
    mine = TrafficSelector.from_address(CLIENT_IP)
    pair.client.engine.start_child(
        sa_id, pair.now, mine, NET_B, ChildProposal(esp=LEGACY_ESP, pfs_group=None)
    )
    pair.run()
    [gw] = pair.gateway.of(ev.ChildSAEstablished)
    assert gw.policy_name == "net-b" and gw.inbound_local_ts == ()
    # the narrowed policy answers only 0.0.0.0/0, not any network inside it
    other = TrafficSelector.from_network("10.20.0.0/16")
    pair.client.engine.start_child(
        sa_id, pair.now, mine, other, ChildProposal(esp=LEGACY_ESP, pfs_group=None)
    )
    pair.run()
    [failed] = pair.gateway.of(ev.ChildSAFailed)
    assert failed.notify == NotifyType.INVALID_ID_INFORMATION


def _narrowed(suite, allowed):
    return sa_pair(
        suite,
        remote_ts=TrafficSelector.from_address(CLIENT_VIP),
        local_ts=ANY,
        allowed_local=allowed,
    )


def test_narrowed_inbound_sa_drops_and_counts_other_destinations() -> None:
    for suite in (GCM128, ALL_SUITES[4]):  # AEAD (fast loop) and AES-CBC/HMAC-SHA1 (vpnc's)
        for allowed in ((NET_A,), (NET_A, NET_B)):
            outbound, inbound = _narrowed(suite, allowed)
            ok = [ipv4(CLIENT_VIP, "10.78.0.10", udp(1, 2))]
            if len(allowed) == 2:
                ok.append(ipv4(CLIENT_VIP, "10.78.1.10", udp(1, 2)))
            bad = [
                ipv4(CLIENT_VIP, "10.20.0.10", udp(1, 2)),  # outside every policy
                ipv4(CLIENT_VIP, "10.78.2.10", udp(1, 2)),
                ipv4("10.79.0.11", "10.78.0.10", udp(1, 2)),  # another client's address
            ]
            if len(allowed) == 1:
                bad.append(ipv4(CLIENT_VIP, "10.78.1.10", udp(1, 2)))
            sealed = [outbound.encrypt(p) for p in ok + bad]
            got = inbound.decrypt_batch(sealed)
            assert got == ok, (suite, allowed)
            assert inbound.drop_counts() == {DropReason.POLICY: len(bad)}, (suite, allowed)
            # one at a time (the careful path) agrees
            outbound, inbound = _narrowed(suite, allowed)
            results = [inbound.decrypt(outbound.encrypt(p)) for p in ok + bad]
            assert results[: len(ok)] == ok
            assert results[len(ok) :] == [DropReason.POLICY] * len(bad)


def test_an_sa_without_narrowing_admits_every_destination_of_its_selector() -> None:
    outbound, inbound = sa_pair(GCM128, remote_ts=TrafficSelector.from_address(CLIENT_VIP), local_ts=ANY)
    packet = ipv4(CLIENT_VIP, "10.20.0.10", udp(1, 2))
    assert inbound.decrypt_batch([outbound.encrypt(packet)]) == [packet]


# ------------------------------------------------------------------ the Gateway class, in memory


def _gateway_options(*policies: Phase2Policy):
    from tests.helpers.ike_pair import PSK
    from tunvpn.gateway.daemon import AddressPool, GatewayOptions, SimpleRule
    from tunvpn.ike.config import PskTable

    return GatewayOptions(
        listen=GATEWAY_IP,
        psks=PskTable({"*": PSK}),
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        legacy=True,
        rules=tuple(SimpleRule(p) for p in policies),
    )


def _shuttle(client, gateway) -> None:
    """Move datagrams both ways until quiet; the Gateway handles its engine's events."""
    for _ in range(50):
        moved = 0
        for sender, receiver, src, dst in (
            (client.engine, gateway.engine, CLIENT_IP, GATEWAY_IP),
            (gateway.engine, client.engine, GATEWAY_IP, CLIENT_IP),
        ):
            for data, remote, local_port in sender.datagrams_to_send():
                receiver.receive_datagram(data, (src, local_port), (dst, remote[1]), NOW)
                moved += 1
        client.drain()
        while (event := gateway.engine.next_event()) is not None:
            gateway.handle_event(event)
        if not moved:
            return
    raise AssertionError("never quiet")


def test_reload_that_removes_a_policy_deletes_the_narrowed_sa() -> None:
    """Its inbound check would still admit the removed network: the client must reconnect."""
    from tests.helpers.ike_pair import Peer
    from tunvpn.gateway.daemon import Gateway
    from tunvpn.ike.engine import IkeEngine

    gateway = Gateway(_gateway_options(*POLICIES), clock=lambda: NOW)
    client = Peer(IkeEngine(client_config(tunvpn_extensions=False)), CLIENT_IP)  # a standard client
    sa_id = client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), NOW)
    _shuttle(client, gateway)
    sa_id = client.of(ev.Phase1Established)[0].sa_id
    client.engine.request_mode_config(sa_id, NOW)
    _shuttle(client, gateway)
    [config] = client.of(ev.ModeConfigReceived)
    assert str(config.config.address) == CLIENT_VIP
    vip = TrafficSelector.from_address(CLIENT_VIP)
    client.engine.start_child(sa_id, NOW, vip, ANY, ChildProposal(esp=LEGACY_ESP, pfs_group=None))
    _shuttle(client, gateway)
    [child] = gateway.children.values()
    assert child.policy_name == STANDARD_CLIENT_POLICY and child.inbound_local_ts == (NET_A, NET_B)

    # adding a policy leaves the SA alone (the client learns the network when it reconnects)
    extra = Phase2Policy("net-c", TrafficSelector.from_network("10.78.2.0/24"))
    gateway.apply_options(_gateway_options(*POLICIES, extra))
    _shuttle(client, gateway)
    assert list(gateway.children.values()) == [child]
    # removing one deletes it, on both sides
    gateway.apply_options(_gateway_options(POLICIES[0], extra))
    _shuttle(client, gateway)
    assert not gateway.children
    assert [e.spi_in for e in client.of(ev.ChildSADeleted)] == [child.spi_out]
