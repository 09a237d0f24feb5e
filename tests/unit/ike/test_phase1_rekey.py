"""Phase 1 rekeying (issue 15): a new ISAKMP SA before the old one expires, the IPsec SAs handed
over with the same SPIs, the old ISAKMP SA deleted without them; between tunvpn peers the new
SA skips XAUTH only when bound to the old, logged-in session (tunvpn/ike/rekey.py)."""

from __future__ import annotations

import pytest

from tests.helpers.ike_pair import (
    CLIENT_IP,
    GATEWAY_IP,
    PSK,
    Pair,
    Peer,
    client_config,
    full_tunnel,
    gateway_config,
)
from tunvpn.ike import events as ev
from tunvpn.ike.config import PskTable
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.identity import Identity
from tunvpn.ike.proposals import Phase1Policy
from tunvpn.ike.sa import Access, Role

LIFETIME = 60


def _pair(*, gateway: dict | None = None, client: dict | None = None) -> Pair:
    gw = dict(
        require_xauth=True,
        xauth_available=True,
        phase1=Phase1Policy(lifetime=LIFETIME),
        dpd_interval=0,
    )
    gw.update(gateway or {})
    cl = dict(phase1=Phase1Policy(lifetime=LIFETIME), dpd_interval=0)
    cl.update(client or {})
    return Pair(client_config(**cl), gateway_config(**gw))


def _grant_first_login(pair: Pair, mode: str = "main") -> list[ev.ChildSAEstablished]:
    children = full_tunnel(pair, mode=mode)
    gw_sa = pair.gateway.of(ev.Phase1Established)[0].sa_id
    pair.gateway.engine.grant(gw_sa, pair.now)
    pair.run()
    return children


def _run_until_rekeyed(pair: Pair, limit: float = LIFETIME) -> None:
    """Advance the clock a second at a time until the client hands its IPsec SAs over."""
    before = len(pair.client.of(ev.Phase1Rekeyed))
    waited = 0.0
    while len(pair.client.of(ev.Phase1Rekeyed)) == before:
        assert waited < limit, "no phase 1 rekey"
        pair.advance(1.0)
        pair.run()
        waited += 1.0


def _live(peer: Peer) -> list:
    return [sa for sa in peer.engine.ike_sas() if sa.established]


@pytest.mark.parametrize("mode", ["main", "aggressive", "base"])
def test_several_rekeys_keep_the_ipsec_sas_and_ask_no_second_xauth(mode: str) -> None:
    pair = _pair()
    children = _grant_first_login(pair, mode)
    spis = {(c.spi_in, c.spi_out) for c in children}
    for n in range(1, 4):
        _run_until_rekeyed(pair)
        assert len(pair.client.of(ev.Phase1Rekeyed)) == n
        assert len(pair.gateway.of(ev.Phase1Rekeyed)) == n
        assert len(pair.client.of(ev.XauthRequested)) == 1, "XAUTH asked again"
        assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)
        # one ISAKMP SA left on each side, holding the same IPsec SAs
        (client_sa,) = _live(pair.client)
        (gw_sa,) = _live(pair.gateway)
        assert client_sa.sa_id == pair.client.of(ev.Phase1Rekeyed)[-1].new_sa_id
        assert gw_sa.sa_id == client_sa.sa_id
        got = {(c.spi_in, c.spi_out) for c in client_sa.children.values()}
        got |= {(c.spi_in, c.spi_out) for c in gw_sa.children.values()}
        assert got == spis
        assert gw_sa.access is Access.GRANTED and gw_sa.xauth_user == "alice"
    assert not any(
        e.reauthenticated for e in pair.client.of(ev.Phase1Rekeyed) + pair.gateway.of(ev.Phase1Rekeyed)
    )
    deleted = pair.client.of(ev.IkeSADeleted)
    assert [d.reason for d in deleted] == ["rekeyed"] * 3
    assert all(d.by_peer for d in pair.gateway.of(ev.IkeSADeleted))
    # the IPsec SAs are rekeyed under the newest ISAKMP SA
    (client_sa,) = _live(pair.client)
    child = children[0]
    pair.client.engine.start_child(
        client_sa.sa_id, pair.now, child.local_ts, child.remote_ts, _proposal(), "net"
    )
    pair.run()
    assert pair.gateway.of(ev.ChildSAEstablished)[-1].sa_id == client_sa.sa_id


def _proposal():
    from tunvpn.ike.proposals import ChildProposal

    return ChildProposal()


def test_a_delete_of_the_old_isakmp_sa_deletes_no_ipsec_sa_and_later_deletes_work() -> None:
    pair = _pair()
    children = _grant_first_login(pair)
    _run_until_rekeyed(pair)
    assert not pair.gateway.of(ev.ChildSADeleted)
    (client_sa,) = _live(pair.client)
    spi = next(c.spi_in for c in children if c.role == "initiator")
    pair.client.engine.delete_child(client_sa.sa_id, spi, pair.now)
    pair.run()
    gone = pair.gateway.of(ev.ChildSADeleted)
    assert len(gone) == 1 and gone[0].by_peer and gone[0].sa_id == client_sa.sa_id


def test_the_session_survives_the_old_sas_lifetime() -> None:
    pair = _pair()
    _grant_first_login(pair)
    pair.advance(0)
    for _ in range(3 * LIFETIME):
        pair.advance(1.0)
        pair.run()
    assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)
    assert len(_live(pair.client)) == 1 and len(_live(pair.gateway)) == 1
    assert len(pair.client.of(ev.XauthRequested)) == 1


def test_reauth_interval_asks_the_user_again() -> None:
    pair = _pair(gateway=dict(reauth_interval=LIFETIME / 2))
    _grant_first_login(pair)
    before = len(pair.client.of(ev.Phase1Rekeyed))
    for _ in range(LIFETIME):
        pair.advance(1.0)
        pair.run()
        asked = pair.client.of(ev.XauthRequested)
        if len(asked) == 2:
            break
    assert len(asked) == 2, "the user was not asked again"
    new_id = asked[-1].sa_id
    assert new_id[:8] == pair.client.of(ev.Phase1RekeyStarted)[-1].new_sa_id[:8]
    pair.client.engine.xauth_reply(new_id, pair.now, user_name="alice", password="s3cret")
    pair.run()
    creds = pair.gateway.of(ev.XauthCredentials)[-1]
    pair.gateway.engine.xauth_verdict(creds.sa_id, pair.now, True)
    pair.gateway.engine.grant(creds.sa_id, pair.now)
    pair.run()
    assert len(pair.client.of(ev.Phase1Rekeyed)) == before + 1
    rekeyed = pair.gateway.of(ev.Phase1Rekeyed)[-1]
    assert rekeyed.reauthenticated and rekeyed.new_sa_id == creds.sa_id
    assert pair.client.of(ev.Phase1Rekeyed)[-1].reauthenticated
    assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)


def test_a_standard_gateway_is_asked_again_by_a_full_login() -> None:
    pair = _pair(gateway=dict(tunvpn_extensions=False))
    _grant_first_login(pair)
    started = len(pair.client.of(ev.Phase1RekeyStarted))
    for _ in range(LIFETIME):
        pair.advance(1.0)
        pair.run()
        if len(pair.client.of(ev.XauthRequested)) == 2:
            break
    assert len(pair.client.of(ev.Phase1RekeyStarted)) == started + 1
    asked = pair.client.of(ev.XauthRequested)[-1]
    pair.client.engine.xauth_reply(asked.sa_id, pair.now, user_name="alice", password="s3cret")
    pair.run()
    creds = pair.gateway.of(ev.XauthCredentials)[-1]
    pair.gateway.engine.xauth_verdict(creds.sa_id, pair.now, True)
    pair.run()
    # the client hands over after XAUTH-STATUS OK; a gateway without our extensions is not
    # told anything: the old ISAKMP SA's Delete comes (it may drop what it holds under it)
    assert pair.client.of(ev.Phase1Rekeyed)[-1].new_sa_id == asked.sa_id
    assert not pair.client.of(ev.ChildSADeleted)


# ------------------------------------------------------------------ attacks on the binding


def _attacker(pair: Pair, ip: str = CLIENT_IP, psk: bytes = PSK) -> Peer:
    """Another holder of the group's pre-shared key, with its own engine."""
    engine = IkeEngine(client_config(psks=PskTable({"*": psk}), phase1=Phase1Policy(lifetime=LIFETIME)))
    return Peer(engine, ip)


def _shuttle(pair: Pair, peer: Peer, rounds: int = 30) -> None:
    """Deliver datagrams between ``peer`` and the gateway until both are quiet."""
    gw = pair.gateway.engine
    for _ in range(rounds):
        moved = 0
        for data, remote, port in peer.engine.datagrams_to_send():
            assert remote[0] == GATEWAY_IP
            gw.receive_datagram(data, (peer.ip, port), (GATEWAY_IP, remote[1]), pair.now)
            moved += 1
        for data, remote, port in gw.datagrams_to_send():
            if remote[0] == peer.ip and remote[1] in (500, 4500):
                peer.engine.receive_datagram(data, (GATEWAY_IP, port), remote, pair.now)
                moved += 1
        peer.drain()
        pair.gateway.drain()
        if not moved:
            return


def _attack(pair: Pair, peer: Peer, icookie: bytes | None = None) -> bytes:
    """``peer`` starts a phase 1 with XAUTH offered (optionally under ``icookie``)."""
    from tunvpn.ike import phase1

    sa_id = phase1.initiate(
        peer.engine,
        (GATEWAY_IP, 500),
        (peer.ip, 500),
        pair.now,
        local_id=Identity.parse("keyid:staff"),  # the group's identity
        xauth=True,
        icookie=icookie,
    )
    _shuttle(pair, peer)
    return sa_id


def test_same_address_and_identity_without_announcement_is_asked_for_xauth() -> None:
    pair = _pair()
    _grant_first_login(pair)
    mallory = _attacker(pair)  # the same address, the same group ID, the group's key
    _attack(pair, mallory)
    assert mallory.of(ev.Phase1Established), "phase 1 should succeed: she has the group key"
    assert mallory.of(ev.XauthRequested), "no XAUTH request: the login was skipped"
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    gw_sa = next(
        sa for sa in _live(pair.gateway) if sa.sa_id[:8] == mallory.of(ev.Phase1Established)[0].sa_id[:8]
    )
    assert gw_sa.access is Access.LOGIN_PENDING


def test_an_announced_cookie_reused_by_another_client_is_asked_for_xauth(monkeypatch) -> None:
    """Mallory (same group key, same address) sees alice's rekey begin and races a phase 1
    under the announced cookie (it travels in clear in message 1) with a proof notify naming
    alice's old SA (its cookies travel in clear too): without the old SA's keys she cannot
    make the proof, so she is asked to log in."""
    from tunvpn.ike import rekey
    from tunvpn.ike.constants import ProtocolId
    from tunvpn.ike.messages import NotifyPayload

    pair = _pair()
    _grant_first_login(pair)
    # let alice's engine start the rekey but hold its datagrams back (only the announcement
    # and the first message are out), then deliver the announcement alone
    for _ in range(LIFETIME):
        pair.advance(1.0)
        if pair.client.of(ev.Phase1RekeyStarted):
            break
    out = pair.client.engine.datagrams_to_send()
    announcement, first = out[0], out[1]
    pair.gateway.engine.receive_datagram(announcement[0], (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    icookie = first[0][:8]
    mallory = _attacker(pair)
    alices_old = pair.client.of(ev.Phase1RekeyStarted)[-1].sa_id
    real = rekey.auth_notifies

    def forged(engine, sa):  # Mallory's code: a proof she cannot compute, guessed
        if engine is not mallory.engine:
            return real(engine, sa)
        return [NotifyPayload(rekey.REKEY_PROOF, ProtocolId.ISAKMP, sa.sa_id, alices_old + bytes(32))]

    monkeypatch.setattr(rekey, "auth_notifies", forged)
    _attack(pair, mallory, icookie=icookie)
    assert mallory.of(ev.Phase1Established)
    assert mallory.of(ev.XauthRequested), "the announced cookie let her skip XAUTH"
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    assert pair.gateway.engine.drops["rekey not bound: proof does not verify"] == 1


def test_an_announcement_does_not_survive_another_phase_1_identity() -> None:
    pair = _pair(gateway=dict(psks=PskTable({"*": PSK})))
    _grant_first_login(pair)
    # alice's client announces and proves the old session, but the new phase 1 comes with
    # another group ID (the same pre-shared key): the binding needs the same credentials
    (old,) = [sa for sa in pair.client.engine.ike_sas() if sa.established]
    old.local_id = Identity.parse("keyid:guests")
    _run_rekey_attempt(pair)
    assert pair.client.of(ev.XauthRequested)[-1].sa_id[:8] != pair.client.of(ev.XauthRequested)[0].sa_id[:8]
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    assert pair.gateway.engine.drops["rekey not bound: other phase 1 credentials"] == 1


def test_an_expired_announcement_is_not_honoured() -> None:
    pair = _pair(
        client=dict(phase1=Phase1Policy(lifetime=600)), gateway=dict(phase1=Phase1Policy(lifetime=600))
    )
    _grant_first_login(pair)
    for _ in range(600):
        pair.advance(1.0)
        if pair.client.of(ev.Phase1RekeyStarted):
            break
    out = pair.client.engine.datagrams_to_send()
    announcement = out[0]
    pair.gateway.engine.receive_datagram(announcement[0], (CLIENT_IP, 500), (GATEWAY_IP, 500), pair.now)
    pair.now += 61  # the first message was lost; the client retransmits after the announcement expired
    for data, remote, port in out[1:]:
        pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
    pair.gateway.drain()
    pair.run()
    assert pair.client.of(ev.XauthRequested)[-1].sa_id[:8] == out[1][0][:8]
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    assert pair.gateway.engine.drops["rekey not bound: announcement expired"] == 1


def _run_rekey_attempt(pair: Pair) -> None:
    for _ in range(LIFETIME):
        pair.advance(1.0)
        pair.run()
        if len(pair.client.of(ev.XauthRequested)) >= 2:
            return
    raise AssertionError("no second XAUTH request")


def test_roles() -> None:
    pair = _pair()
    _grant_first_login(pair)
    (gw_sa,) = _live(pair.gateway)
    assert gw_sa.role is Role.RESPONDER and gw_sa.rekey_at is None
    (client_sa,) = _live(pair.client)
    assert client_sa.rekey_at is not None and client_sa.rekey_at < client_sa.expires


def test_a_rekey_whose_announcement_was_lost_logs_in_again() -> None:
    """The binding needs the announcement too: without it the gateway asks for XAUTH."""
    pair = _pair()
    _grant_first_login(pair)
    for _ in range(LIFETIME):
        pair.advance(1.0)
        if pair.client.of(ev.Phase1RekeyStarted):
            break
    out = pair.client.engine.datagrams_to_send()
    for data, remote, port in out[1:]:  # out[0], the announcement, is lost
        pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
    pair.gateway.drain()
    pair.run()
    asked = pair.client.of(ev.XauthRequested)[-1]
    assert asked.sa_id[:8] == out[1][0][:8]
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    assert pair.gateway.engine.drops["rekey not bound: cookie not announced under the old ISAKMP SA"] == 1
    # the user logs in again: a full login, after which the session still carries on (the
    # client hands over without N(SESSION-CONTINUED), the gateway adopts on the Delete)
    _log_in_again(pair, asked)
    pair.advance(6.0)
    pair.run()
    _one_session_kept(pair)


def test_a_rekey_logged_in_again_just_before_expiry_keeps_the_session() -> None:
    """The announcement was lost and the login again finished 2 s before the old SA expires:
    the client hands over at the expiry instead of waiting out CONTINUE_WAIT (the IPsec SAs
    would go with the old SA, and the orphaned new SA after them), and the gateway, whose old
    SA expires at the same moment, lets the newer login of the same user keep the IPsec SAs
    as the client's Delete would have (rekey.adopt). This used to lose the session whenever
    the random rekey time fell in the last 5 s."""
    pair = _pair(client={"rekey_margin": 2.0, "rekey_fuzz": 0.0})
    _grant_first_login(pair)
    while not pair.client.of(ev.Phase1RekeyStarted):
        pair.advance(1.0)
    out = pair.client.engine.datagrams_to_send()
    for data, remote, port in out[1:]:  # the announcement is lost: a full login follows
        pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
    pair.gateway.drain()
    pair.run()
    _log_in_again(pair, pair.client.of(ev.XauthRequested)[-1])
    for _ in range(8):  # past the old SA's expiry (and past CONTINUE_WAIT)
        pair.advance(1.0)
        pair.run()
    _one_session_kept(pair)


def _log_in_again(pair: Pair, asked: ev.XauthRequested) -> None:
    pair.client.engine.xauth_reply(asked.sa_id, pair.now, user_name="alice", password="s3cret")
    pair.run()
    creds = pair.gateway.of(ev.XauthCredentials)[-1]
    pair.gateway.engine.xauth_verdict(creds.sa_id, pair.now, True)
    pair.gateway.engine.grant(creds.sa_id, pair.now)
    pair.run()


def _one_session_kept(pair: Pair) -> None:
    (client_sa,) = _live(pair.client)
    (gw_sa,) = _live(pair.gateway)
    assert client_sa.sa_id == gw_sa.sa_id == pair.client.of(ev.Phase1Rekeyed)[-1].new_sa_id
    assert len(client_sa.children) == len(gw_sa.children) == 1
    assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)
    assert pair.gateway.of(ev.Phase1Rekeyed)[-1].reauthenticated


def test_a_client_without_our_extensions_that_logs_in_again_keeps_its_ipsec_sas() -> None:
    """A standard client (no tunvpn vendor ID) rekeys phase 1 as strongSwan does in IKEv1: a
    full new login without INITIAL-CONTACT, then a Delete of the old ISAKMP SA alone. The
    gateway hands the IPsec SAs to the new, fully logged-in SA of the same user and address."""
    pair = _pair(client=dict(tunvpn_extensions=False))
    _grant_first_login(pair)
    _run_rekey_attempt(pair)
    _log_in_again(pair, pair.client.of(ev.XauthRequested)[-1])
    _one_session_kept(pair)


def test_another_users_login_does_not_adopt_the_ipsec_sas() -> None:
    pair = _pair(client=dict(tunvpn_extensions=False))
    _grant_first_login(pair)
    _run_rekey_attempt(pair)
    asked = pair.client.of(ev.XauthRequested)[-1]
    pair.client.engine.xauth_reply(asked.sa_id, pair.now, user_name="bob", password="b0b")
    pair.run()
    creds = pair.gateway.of(ev.XauthCredentials)[-1]
    pair.gateway.engine.xauth_verdict(creds.sa_id, pair.now, True)
    pair.gateway.engine.grant(creds.sa_id, pair.now)
    pair.run()
    assert not pair.gateway.of(ev.Phase1Rekeyed)
    assert pair.gateway.of(ev.ChildSADeleted), "bob's login took alice's IPsec SAs"


def _start_rekey(pair: Pair) -> None:
    for _ in range(LIFETIME):
        pair.advance(1.0)
        if pair.client.of(ev.Phase1RekeyStarted):
            return
    raise AssertionError("no rekey started")


def test_a_quick_mode_in_flight_during_the_hand_over_ends_under_the_new_sa() -> None:
    pair = _pair()
    children = _grant_first_login(pair)
    (old,) = _live(pair.client)
    child = next(c for c in children if c.role == "initiator")
    _start_rekey(pair)
    # a Quick Mode starts on the old SA while the new phase 1 runs; the gateway's answers to
    # it are lost until the client has handed its IPsec SAs over
    mid = pair.client.engine.start_child(
        old.sa_id, pair.now, child.local_ts, child.remote_ts, _proposal(), "net"
    ).to_bytes(4, "big")
    for _ in range(20):
        for data, remote, port in pair.client.engine.datagrams_to_send():
            pair.gateway.engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, remote[1]), pair.now)
        for data, remote, port in pair.gateway.engine.datagrams_to_send():
            if mid in data[:32]:
                continue  # Quick Mode message 2, lost
            pair.client.engine.receive_datagram(data, (GATEWAY_IP, port), (CLIENT_IP, remote[1]), pair.now)
        pair.client.drain()
        pair.gateway.drain()
        if pair.client.of(ev.Phase1Rekeyed):
            break
    assert pair.client.of(ev.Phase1Rekeyed)
    assert not old.dead, "the old ISAKMP SA went while its Quick Mode was running"
    # the client sends Quick Mode message 1 again: the answer now arrives
    pair.advance(2.0)
    pair.run()
    new_id = pair.client.of(ev.Phase1Rekeyed)[-1].new_sa_id
    assert old.dead and pair.client.of(ev.IkeSADeleted)[-1].reason == "rekeyed"
    made = [e for e in pair.client.of(ev.ChildSAEstablished) if e.spi_in not in {c.spi_in for c in children}]
    gw_made = [e for e in pair.gateway.of(ev.ChildSAEstablished) if e.spi_out == made[0].spi_in]
    # the client's pair is made once the hand-over is done: under the new SA; the gateway
    # made its pair at message 1, under the old SA, and handed it over with the others
    assert made[0].sa_id == new_id and gw_made
    (client_sa,) = _live(pair.client)
    (gw_sa,) = _live(pair.gateway)
    assert made[0].spi_in in client_sa.children and gw_made[0].spi_in in gw_sa.children
    assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)


def test_a_rekey_whose_old_sa_is_deleted_meanwhile_is_abandoned() -> None:
    pair = _pair()
    _grant_first_login(pair)
    _start_rekey(pair)
    new_id = pair.client.of(ev.Phase1RekeyStarted)[-1].new_sa_id
    pair.client.engine.datagrams_to_send()  # lost
    (gw_old,) = _live(pair.gateway)
    pair.gateway.engine.delete_ike_sa(gw_old.sa_id, pair.now, reason="administrator")
    pair.run()
    pair.advance(1.0)
    pair.run()
    assert not [sa for sa in pair.client.engine.ike_sas() if sa.icookie == new_id[:8]]
    assert not pair.client.of(ev.Phase1Rekeyed)


def _informational(data: bytes) -> bool:
    message = data[4:] if data[:4] == bytes(4) else data
    return len(message) > 18 and message[18] == 5  # ISAKMP exchange type Informational


def test_a_lost_session_continued_is_sent_again_until_the_old_sa_is_deleted() -> None:
    """IKEv1 Informationals are not acknowledged: the gateway sends N(SESSION-CONTINUED) again
    (1, 2, 4, 8 s) until the client's Delete of the old ISAKMP SA shows it arrived. Before,
    a lost one left the client on the old SA until it expired, and a new login followed."""
    pair = _pair()
    children = _grant_first_login(pair)
    spis = {(c.spi_in, c.spi_out) for c in children}
    dropped = waited = 0
    lost_at = 0.0
    while not pair.client.of(ev.Phase1Rekeyed):
        assert waited < LIFETIME, "no hand-over"
        pair.advance(1.0)
        waited += 1
        for _ in range(50):
            moved = pair.transfer(pair.client)
            out = pair.gateway.engine.datagrams_to_send()
            pair.gateway.drain()
            for data, remote, port in out:
                if pair.gateway.of(ev.Phase1Rekeyed) and not dropped and _informational(data):
                    dropped, lost_at = 1, pair.now  # the first N(SESSION-CONTINUED): lost
                    continue
                pair.client.engine.receive_datagram(
                    data, (GATEWAY_IP, port), (CLIENT_IP, remote[1]), pair.now
                )
            pair.client.drain()
            if not moved and not out:
                break
    assert dropped == 1
    assert pair.now - lost_at <= 2.0, "not handed over on the resend 1 s later"
    (client_sa,) = _live(pair.client)
    (gw_sa,) = _live(pair.gateway)
    assert gw_sa.sa_id == client_sa.sa_id
    assert {(c.spi_in, c.spi_out) for c in client_sa.children.values()} <= spis
    assert not pair.client.of(ev.ChildSADeleted) and not pair.gateway.of(ev.ChildSADeleted)
    # the old SA's Delete reached the gateway: nothing is sent again after it
    pair.run()
    for _ in range(20):
        pair.advance(1.0)
        pair.run()
    assert gw_sa.continued_at is None
    assert pair.client.engine.drops["unexpected session continuation"] == 0
