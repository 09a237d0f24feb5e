"""Issue 12, attacks 1, 3, 6, 7 and 8, each written as the attack against two in-memory
engines (tests/helpers/ike_pair.py): an insider with the group PSK, an on-path sender that replays or
forges packets, and a user who changes names during a login."""

from __future__ import annotations

import ipaddress

from tests.helpers.ike_pair import (
    CLIENT_IP,
    GATEWAY_IP,
    PROTECTED,
    PSK,
    Pair,
    Peer,
    client_config,
    gateway_config,
)
from tunvpn.ike import events as ev
from tunvpn.ike import exchanges, quickmode
from tunvpn.ike.config import ChildPolicy, EngineConfig, PskTable
from tunvpn.ike.constants import HEADER_SIZE, ExchangeType, HeaderFlag, NotifyType
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.messages import Header, decode_header, encode_header
from tunvpn.ike.modecfg import ModeConfig
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ike.sa import Access
from tunvpn.ipsec.selectors import TrafficSelector

STAFF = Identity.parse("keyid:staff")
ADMIN_NET = TrafficSelector.from_network("10.30.0.0/16")  # a policy for a group
CLIENT_VIP = "10.99.0.7"


def login_gateway(**kw) -> EngineConfig:
    base = dict(
        require_xauth=True,
        login_required=True,
        children=(
            ChildPolicy("net", PROTECTED, None, ChildProposal()),
            ChildPolicy("admins-only", ADMIN_NET, None, ChildProposal()),
        ),
    )
    base.update(kw)
    return gateway_config(**base)


def phase1(pair: Pair, local_id: Identity = STAFF, mode: str = "aggressive") -> bytes:
    sa_id = pair.client.engine.initiate(
        (GATEWAY_IP, 500), (pair.client.ip, 500), pair.now, mode=mode, xauth=True, local_id=local_id
    )
    pair.run()
    return sa_id


def another_client(pair: Pair, ip: str) -> None:
    """From now on the pair's client is a second machine (its own engine and address)."""
    pair.client = Peer(IkeEngine(client_config()), ip)


def gateway_sa(pair: Pair, client_sa: bytes) -> bytes:
    for e in pair.gateway.of(ev.Phase1Established):
        if e.sa_id[:8] == client_sa[:8]:
            return e.sa_id
    raise AssertionError("no gateway SA")


def xauth(pair: Pair, sa_id: bytes, user: str, ok: bool = True) -> bytes:
    gw = gateway_sa(pair, sa_id)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name=user, password="pw")
    pair.run()
    pair.gateway.engine.xauth_verdict(gw, pair.now, ok)
    pair.run()
    return gw


def mode_config(pair: Pair, sa_id: bytes, address: str = CLIENT_VIP) -> None:
    pair.client.engine.request_mode_config(sa_id, pair.now)
    pair.run()
    req = [r for r in pair.gateway.of(ev.ModeConfigRequested) if r.sa_id == gateway_sa(pair, sa_id)][-1]
    pair.gateway.engine.mode_config_reply(
        req.sa_id, pair.now, req.identifier, ModeConfig(address=ipaddress.IPv4Address(address))
    )
    pair.run()


def quick_mode(
    pair: Pair, sa_id: bytes, remote: TrafficSelector = PROTECTED, address: str = CLIENT_VIP
) -> int:
    mid = pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(address), remote, ChildProposal()
    )
    pair.run()
    return mid


def gateway_children(pair: Pair, gw_sa: bytes) -> list[ev.ChildSAEstablished]:
    return [e for e in pair.gateway.of(ev.ChildSAEstablished) if e.sa_id == gw_sa]


# ------------------------------------------------------------------ attack 1: no SA before login


def test_insider_with_the_psk_skipping_xauth_gets_no_sa() -> None:
    """Phase 1 with the group PSK, then Quick Mode straight away (no XAUTH answer, no Mode
    Config): refused with a Notify naming the offered SPI, nothing installed, not even the
    policy of a group the client is not in."""
    pair = Pair(client_config(), login_gateway())
    sa_id = phase1(pair)
    gw = gateway_sa(pair, sa_id)
    for network in (PROTECTED, ADMIN_NET):
        quick_mode(pair, sa_id, network, address=CLIENT_IP)
    assert not gateway_children(pair, gw) and not pair.client.of(ev.ChildSAEstablished)
    refused = pair.client.of(ev.ChildSAFailed)
    assert len(refused) == 2 and all(f.notify == NotifyType.AUTHENTICATION_FAILED for f in refused)
    assert any("login is not finished" in e.error for e in pair.gateway.of(ev.ProtocolError))


def test_mode_config_waits_for_xauth_and_quick_mode_for_grant() -> None:
    pair = Pair(client_config(), login_gateway())
    sa_id = phase1(pair)
    gw = gateway_sa(pair, sa_id)
    pair.client.engine.request_mode_config(sa_id, pair.now)
    pair.run()
    assert not pair.gateway.of(ev.ModeConfigRequested)  # before XAUTH: refused
    xauth(pair, sa_id, "alice")
    assert pair.gateway.engine.get_sa(gw).access is Access.XAUTH_PASSED
    mode_config(pair, sa_id)
    assert pair.gateway.of(ev.ModeConfigRequested)
    quick_mode(pair, sa_id)  # XAUTH passed, but the shell has not granted (extra protocols)
    assert not gateway_children(pair, gw)
    # until granted, the gateway's configured children are no fallback
    assert quickmode.child_policies(pair.gateway.engine, pair.gateway.engine.get_sa(gw)) == ()
    pair.gateway.engine.set_child_policies(gw, pair.gateway.engine.config.children[:1])
    pair.gateway.engine.grant(gw, pair.now)
    pair.gateway.drain()
    assert pair.gateway.of(ev.AccessGranted)[-1].user_name == "alice"
    quick_mode(pair, sa_id)
    assert len(gateway_children(pair, gw)) == 1


def test_login_not_finished_within_the_deadline_deletes_the_sa() -> None:
    pair = Pair(client_config(), login_gateway(login_timeout=120.0))
    sa_id = phase1(pair)
    gw = gateway_sa(pair, sa_id)
    for _ in range(11):
        pair.advance(10.0)
    assert not [e for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw]
    pair.advance(10.0)
    [deleted] = [e for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw]
    assert deleted.reason == "login not finished within 120 s" and not deleted.by_peer
    assert not pair.gateway.engine.ike_sas()


def test_a_granted_login_has_no_deadline() -> None:
    pair = Pair(client_config(dpd_interval=0), login_gateway(dpd_interval=0))
    sa_id = phase1(pair)
    gw = xauth(pair, sa_id, "alice")
    pair.gateway.engine.grant(gw, pair.now)
    for _ in range(30):
        pair.advance(10.0)
    assert pair.gateway.engine.get_sa(gw).established


# ------------------------------------------------------------------ attack 3: INITIAL-CONTACT


def test_initial_contact_of_another_user_of_the_same_group_leaves_the_first() -> None:
    """alice and bob share keyid:staff and the group PSK; bob's phase 1 carries
    INITIAL-CONTACT (as every tunvpn and vpnc client sends it)."""
    pair = Pair(client_config(), login_gateway())
    alice = phase1(pair)
    gw_alice = xauth(pair, alice, "alice")
    pair.gateway.engine.grant(gw_alice, pair.now)
    mode_config(pair, alice)
    pair.gateway.engine.set_child_policies(gw_alice, pair.gateway.engine.config.children[:1])
    quick_mode(pair, alice)
    assert len(gateway_children(pair, gw_alice)) == 1
    another_client(pair, "192.0.2.11")
    bob = phase1(pair)
    gw_bob = xauth(pair, bob, "bob")
    pair.gateway.engine.grant(gw_bob, pair.now)
    assert pair.gateway.engine.get_sa(gw_alice).established
    assert not [e for e in pair.gateway.of(ev.ChildSADeleted) if e.sa_id == gw_alice]


def test_initial_contact_waits_for_the_login_and_then_replaces_the_same_user() -> None:
    pair = Pair(client_config(), login_gateway())
    old = phase1(pair)
    gw_old = xauth(pair, old, "alice")
    pair.gateway.engine.grant(gw_old, pair.now)
    # a group PSK holder naming alice who cannot log in as her does not kick her off
    another_client(pair, "192.0.2.66")
    intruder = phase1(pair)
    xauth(pair, intruder, "alice", ok=False)
    assert pair.gateway.engine.get_sa(gw_old).established
    # alice herself, after a reboot: her old SA goes once her new login is granted
    another_client(pair, "192.0.2.12")
    new = phase1(pair)
    gw_new = xauth(pair, new, "alice")
    assert pair.gateway.engine.get_sa(gw_old).established
    pair.gateway.engine.grant(gw_new, pair.now)
    pair.gateway.drain()
    gone = [e for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw_old]
    assert gone and gone[0].reason == "replaced after INITIAL-CONTACT"


def test_initial_contact_of_two_clients_behind_nats_with_the_same_private_address() -> None:
    """Two site peers (PSK, no login) whose identity is the same private address, each behind
    its own NAT: the second one's INITIAL-CONTACT leaves the first alone."""
    same_id = Identity.parse("192.168.1.10")
    gateway = gateway_config(psks=PskTable({"*": PSK}))
    pair = Pair(client_config(), gateway, nat=True)
    first = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now, local_id=same_id)
    pair.run()
    gw_first = gateway_sa(pair, first)
    another_client(pair, "192.0.2.77")  # behind the second home NAT
    second = pair.client.engine.initiate((GATEWAY_IP, 500), ("192.0.2.77", 500), pair.now, local_id=same_id)
    pair.run()
    assert gateway_sa(pair, second) != gw_first
    assert pair.gateway.engine.get_sa(gw_first).established


# ------------------------------------------------------------------ attack 6: message IDs


def test_replayed_old_quick_mode_after_many_exchanges_installs_nothing() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    gw = gateway_sa(pair, sa_id)
    start = len(pair.wire)
    quick_mode(pair, sa_id, address=CLIENT_IP)
    first_qm1 = next(d for who, d in pair.wire[start:] if who == "c>g")
    for _ in range(20):
        quick_mode(pair, sa_id, address=CLIENT_IP)
    assert len(gateway_children(pair, gw)) == 21
    pair.gateway.engine.receive_datagram(first_qm1, (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    pair.gateway.drain()
    assert len(gateway_children(pair, gw)) == 21
    assert not pair.gateway.engine.datagrams_to_send()
    assert pair.gateway.engine.drops["message ID of a finished exchange"] == 1


def test_exchanges_per_isakmp_sa_are_capped() -> None:
    pair = Pair(client_config(), gateway_config(max_exchanges=5))
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    gw = gateway_sa(pair, sa_id)
    for _ in range(6):
        quick_mode(pair, sa_id, address=CLIENT_IP)
    [deleted] = [e for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw]
    assert deleted.reason == "too many exchanges on one ISAKMP SA (5)"
    assert len(gateway_children(pair, gw)) == 5


# ------------------------------------------------------------------ attack 7: peer address


def _forged(data: bytes, message_id: int) -> bytes:
    """Right cookies, a fresh message ID, a body of garbage."""
    h = decode_header(data)
    body = bytes(range(48))
    length = HEADER_SIZE + len(body)
    forged = Header(
        h.icookie,
        h.rcookie,
        h.next_payload,
        ExchangeType.QUICK_MODE,
        HeaderFlag.ENCRYPTION,
        message_id,
        length,
    )
    return encode_header(forged) + body


def test_garbage_with_the_right_cookies_from_a_new_address_moves_nothing() -> None:
    pair = Pair(client_config(), gateway_config(), nat=True)
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    gw_sa = pair.gateway.engine.get_sa(gateway_sa(pair, sa_id))
    assert gw_sa.nat_remote
    before, moves = gw_sa.remote, len(pair.gateway.of(ev.PeerAddressChanged))  # the float to 4500
    last = next(d for who, d in reversed(pair.wire) if who == "c>g")
    marker = last[:4] if last[:4] == bytes(4) else b""
    forged = marker + _forged(last[len(marker) :], 0x1234567)
    pair.gateway.engine.receive_datagram(forged, ("203.0.113.66", 4500), (GATEWAY_IP, 4500), pair.now)
    pair.gateway.drain()
    assert gw_sa.remote == before
    assert len(pair.gateway.of(ev.PeerAddressChanged)) == moves
    # nor does a verified message replayed from elsewhere
    quick_mode(pair, sa_id, address=CLIENT_IP)
    replay = [d for who, d in pair.wire if who == "c>g"][-2]
    pair.gateway.engine.receive_datagram(replay, ("203.0.113.66", 4500), (GATEWAY_IP, 4500), pair.now)
    pair.gateway.drain()
    assert gw_sa.remote == before and len(pair.gateway.of(ev.PeerAddressChanged)) == moves


def test_a_verified_new_message_from_a_new_nat_mapping_moves_the_peer() -> None:
    """Positive control (RFC 3947 section 4): the NAT rebinds, the next verified message moves it."""
    pair = Pair(client_config(), gateway_config(), nat=True)
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    gw_sa = pair.gateway.engine.get_sa(gateway_sa(pair, sa_id))
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    [(qm1, _, _)] = pair.client.engine.datagrams_to_send()
    pair.gateway.engine.receive_datagram(qm1, (CLIENT_IP, 41000), (GATEWAY_IP, 4500), pair.now)
    pair.gateway.drain()
    assert gw_sa.remote == (CLIENT_IP, 41000)
    assert pair.gateway.of(ev.PeerAddressChanged)[-1].new == (CLIENT_IP, 41000)
    assert pair.gateway.of(ev.ChildSAEstablished)[-1].remote == (CLIENT_IP, 41000)


def test_a_peer_not_behind_a_nat_is_not_moved_even_by_a_verified_message() -> None:
    pair = Pair(client_config(), gateway_config())
    sa_id = pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    gw_sa = pair.gateway.engine.get_sa(gateway_sa(pair, sa_id))
    pair.client.engine.start_child(
        sa_id, pair.now, TrafficSelector.from_address(CLIENT_IP), PROTECTED, ChildProposal()
    )
    [(qm1, _, _)] = pair.client.engine.datagrams_to_send()
    pair.gateway.engine.receive_datagram(qm1, ("203.0.113.66", 500), (GATEWAY_IP, 500), pair.now)
    pair.gateway.drain()
    assert gw_sa.remote == (CLIENT_IP, 500)


# ------------------------------------------------------------------ attack 8: one user per login


def test_a_user_switching_names_between_rounds_is_refused() -> None:
    """A password for alice, then the challenge's code for carol: the login fails in the
    engine, the second answer never reaches the plugins."""
    pair = Pair(client_config(), login_gateway())
    sa_id = phase1(pair)
    gw = gateway_sa(pair, sa_id)
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="alice", password="pw")
    pair.run()
    pair.gateway.engine.xauth_request(gw, pair.now, fields=("user_name", "passcode"), message="code?")
    pair.run()
    pair.client.engine.xauth_reply(sa_id, pair.now, user_name="carol", passcode="123456")
    pair.run()
    assert [c.user_name for c in pair.gateway.of(ev.XauthCredentials)] == ["alice"]
    assert not pair.client.of(ev.XauthCompleted)[-1].success
    assert [e for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw]


# ------------------------------------------------------------------ attack 1 against the Gateway


def test_insider_skipping_the_login_gets_no_sa_from_the_gateway() -> None:
    """The same attack against :class:`tunvpn.gateway.daemon.Gateway` (users file, a policy for group
    "eng" only): the insider's Quick Mode for the eng network and for the intranet install
    nothing; alice, who logs in, gets her SA on the same gateway."""
    import asyncio

    from tunvpn.config.credentials import UserTable
    from tunvpn.gateway.daemon import Gateway, GatewayOptions, SimpleRule
    from tunvpn.ike.policies import Phase2Policy

    intranet = Phase2Policy("intranet", TrafficSelector.parse("10.78.0.0/24"))
    eng = Phase2Policy("eng", TrafficSelector.parse("10.20.0.0/16"))
    options = GatewayOptions(
        listen=GATEWAY_IP,
        psks=PskTable({"*": PSK}),
        users=UserTable({"alice": b"a-pass"}),
        require_xauth=True,
        rules=(SimpleRule(intranet), SimpleRule(eng, groups=("eng",))),
        groups={"eng": frozenset({"alice"})},
    )
    pair = Pair(client_config(), gateway_config())
    gateway = Gateway(options, clock=lambda: pair.now)
    pair.gateway = Peer(gateway.engine, GATEWAY_IP)
    assert gateway.engine.config.login_required

    async def run() -> None:
        for _ in range(30):
            pair.run()
            pending = [gateway.handle_event(e) for e in pair.gateway.events[handled[0] :]]
            handled[0] = len(pair.gateway.events)
            awaited = [p for p in pending if p is not None]
            for coroutine in awaited:
                await coroutine
            if not awaited and not pair.gateway.engine._out:
                return

    handled = [0]
    insider = phase1(pair, mode="main")
    asyncio.run(run())
    for network in ("10.20.0.0/16", "10.78.0.0/24"):
        quick_mode(pair, insider, TrafficSelector.parse(network), address=CLIENT_IP)
        asyncio.run(run())
    assert not pair.gateway.of(ev.ChildSAEstablished) and not gateway.children
    another_client(pair, "192.0.2.11")
    alice = phase1(pair, mode="main")
    asyncio.run(run())
    pair.client.engine.xauth_reply(alice, pair.now, user_name="alice", password="a-pass")
    asyncio.run(run())
    assert pair.client.of(ev.XauthCompleted)[-1].success
    quick_mode(pair, alice, TrafficSelector.parse("10.20.0.0/16"), address=pair.client.ip)
    asyncio.run(run())
    assert [c.policy_name for c in gateway.children.values()] == ["eng"]


def test_informational_initial_contact_is_held_until_granted_dpd_and_delete_are_not() -> None:
    """Before the login: R-U-THERE is answered (RFC 3706), an INITIAL-CONTACT Informational
    waits for the grant, and the peer may always delete its own ISAKMP SA."""
    from tunvpn.ike.constants import ProtocolId
    from tunvpn.ike.messages import NotifyPayload

    pair = Pair(client_config(), login_gateway())
    old = phase1(pair)
    gw_old = xauth(pair, old, "alice")
    pair.gateway.engine.grant(gw_old, pair.now)
    another_client(pair, "192.0.2.12")
    new = phase1(pair)
    gw_new = gateway_sa(pair, new)
    sa = pair.client.engine.get_sa(new)
    dpd = NotifyPayload(NotifyType.R_U_THERE, ProtocolId.ISAKMP, sa.sa_id, b"\x00\x00\x00\x07")
    pair.now += 5.0
    exchanges.send_informational(pair.client.engine, sa, [dpd], pair.now)
    pair.run()
    assert pair.client.engine.get_sa(new).last_heard == pair.now  # the R-U-THERE-ACK came back
    initial_contact = NotifyPayload(NotifyType.INITIAL_CONTACT, ProtocolId.ISAKMP, sa.sa_id, b"")
    exchanges.send_informational(pair.client.engine, sa, [initial_contact], pair.now)
    pair.run()
    xauth(pair, new, "alice")
    assert pair.gateway.engine.get_sa(gw_old).established  # held: not granted yet
    pair.gateway.engine.grant(gw_new, pair.now)
    pair.gateway.drain()
    assert [e.reason for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw_old] == [
        "replaced after INITIAL-CONTACT"
    ]
    # an SA that never logs in may still delete itself
    another_client(pair, "192.0.2.13")
    quitter = phase1(pair)
    gw_quitter = gateway_sa(pair, quitter)
    pair.client.engine.delete_ike_sa(quitter, pair.now)
    pair.run()
    assert [e.reason for e in pair.gateway.of(ev.IkeSADeleted) if e.sa_id == gw_quitter] == [
        "deleted by peer"
    ]


def test_gateway_file_sets_the_login_deadline_and_xauth_turns_the_gate_on(tmp_path) -> None:
    """gateway.toml: ``login_timeout`` reaches the engine; a login source (users file) makes
    XAUTH required and with it ``login_required``; a site gateway (no login source) grants at
    phase 1."""
    from tests.helpers.logins import file_gateway

    gateway = file_gateway(tmp_path, 'users_file = "users"\nlogin_timeout = 30')
    assert gateway.config.login_required and gateway.config.login_timeout == 30
    default = file_gateway(tmp_path, 'users_file = "users"')
    assert default.config.login_required and default.config.login_timeout == 120
    assert not file_gateway(tmp_path, "").config.login_required
