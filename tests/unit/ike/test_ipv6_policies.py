"""An IPv6 policy whose remote end is the client's own address (issue 19): the gateway's engine
takes the IPv6 address it assigned in Mode Config (INTERNAL_IP6_ADDRESS) as that end, as it
takes the IPv4 one for IPv4 policies; a Quick Mode from any other IPv6 address is refused."""

from __future__ import annotations

import ipaddress

from tests.helpers.ike_pair import CLIENT_VIP, PROTECTED, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.config import ChildPolicy
from tunvpn.ike.identity import Identity
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

LAN6 = TrafficSelector.from_network("fd78::/64")


def logged_in(ip6: str | None) -> tuple[Pair, bytes]:
    pair = Pair(
        client_config(),
        gateway_config(
            children=(
                ChildPolicy("net", PROTECTED, None, ChildProposal()),
                ChildPolicy("lan6", LAN6, None, ChildProposal()),
            )
        ),
    )
    sa_id = connect(pair, "main", local_id=Identity.parse("keyid:staff"))
    gw_sa = pair.gateway.of(ev.Phase1Established)[0].sa_id
    pair.client.engine.request_mode_config(sa_id, pair.now)
    pair.run()
    [req] = pair.gateway.of(ev.ModeConfigRequested)
    config = ModeConfig(
        address=ipaddress.IPv4Address(CLIENT_VIP),
        ip6_address=ipaddress.IPv6Interface(f"{ip6}/128") if ip6 else None,
    )
    pair.gateway.engine.mode_config_reply(gw_sa, pair.now, req.identifier, config)
    pair.run()
    return pair, sa_id


def quick(pair: Pair, sa_id: bytes, local: str, remote: TrafficSelector, name: str) -> None:
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(local), remote, ChildProposal(), name
    )
    pair.run()


def test_the_assigned_ipv6_address_is_the_remote_end_of_ipv6_policies() -> None:
    pair, sa_id = logged_in("fd79::10")
    [got] = pair.client.of(ev.ModeConfigReceived)
    assert str(got.config.ip6_address) == "fd79::10/128"
    quick(pair, sa_id, "fd79::10", LAN6, "lan6")
    quick(pair, sa_id, CLIENT_VIP, PROTECTED, "net")
    up = pair.gateway.of(ev.ChildSAEstablished)
    assert sorted((str(c.remote_ts), c.policy_name) for c in up) == [
        (f"{CLIENT_VIP}/32", "net"),
        ("fd79::10/128", "lan6"),
    ]


def test_a_quick_mode_from_another_ipv6_address_is_refused() -> None:
    pair, sa_id = logged_in("fd79::10")
    quick(pair, sa_id, "fd79::99", LAN6, "lan6")
    assert not pair.gateway.of(ev.ChildSAEstablished)
    assert pair.client.of(ev.ChildSAFailed)


def test_no_ipv6_address_assigned_no_ipv6_policy() -> None:
    """A client the gateway gave no IPv6 address cannot claim one, not even its outer one."""
    pair, sa_id = logged_in(None)
    quick(pair, sa_id, "fd79::10", LAN6, "lan6")
    assert not pair.gateway.of(ev.ChildSAEstablished)
