"""IKE fragmentation for IKEv1 (issue 16; tunvpn/ike/fragments.py): the codec, the bounded
reassembly, and two engines that talk through pieces no larger than a small path allows."""

from __future__ import annotations

import random

import pytest

from tests.helpers.ike_pair import GATEWAY_IP, Pair, client_config, full_tunnel, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike import fragments
from tunvpn.ike.constants import DHGroup, ExchangeType, HashAlgorithm, NotifyType, ProtocolId
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.errors import RemoteProtocolError
from tunvpn.ike.fragments import Fragment, Reassembler, decode, split
from tunvpn.ike.messages import Message, NotifyPayload, encode_message
from tunvpn.ike.proposals import Phase1Policy

MESSAGE = (
    bytes(range(8)) + bytes(8) + bytes([1, 0x10, 2, 0]) + bytes(4) + (5028).to_bytes(4, "big") + bytes(5000)
)
SOURCE = ("192.0.2.10", 500)


def test_a_message_is_cut_into_pieces_that_fit_and_put_together_again() -> None:
    pieces = split(MESSAGE, aggressive=False, max_datagram=1248)
    assert len(pieces) == 5 and all(len(p) <= 1248 for p in pieces)
    decoded = [decode(p) for p in pieces]
    assert [f.number for f in decoded] == [1, 2, 3, 4, 5]
    assert [f.last for f in decoded] == [False] * 4 + [True]
    assert len({f.fragment_id for f in decoded}) == 1
    # the header of each piece: same cookies, Identity Protection, message ID 0, no flags
    assert all(p[:16] == MESSAGE[:16] and p[16] == 132 and p[18] == 2 and p[19] == 0 for p in pieces)
    assert all(p[20:24] == bytes(4) for p in pieces)
    assert split(MESSAGE, aggressive=True, max_datagram=1248)[0][18] == ExchangeType.AGGRESSIVE
    assert split(MESSAGE, aggressive=False, max_datagram=1248) == pieces  # a retransmission: the same
    whole = None
    reassembler = Reassembler()
    for fragment in reversed(decoded):  # any order
        whole = reassembler.add(fragment, SOURCE, 0.0)
    assert whole == MESSAGE and len(reassembler) == 0


@pytest.mark.parametrize(
    "bad",
    [
        MESSAGE[:20],  # shorter than a header
        split(MESSAGE, aggressive=False, max_datagram=1248)[0][:-1],  # the header's length is wrong
        (lambda p: p[:28] + b"\x01" + p[29:])(
            split(MESSAGE, aggressive=False, max_datagram=1248)[0]
        ),  # chain
        (lambda p: p[:34] + b"\x00" + p[35:])(
            split(MESSAGE, aggressive=False, max_datagram=1248)[0]
        ),  # number 0
    ],
)
def test_malformed_fragments_are_refused(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(bad)


def test_split_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError):
        split(MESSAGE, aggressive=False, max_datagram=60)
    with pytest.raises(ValueError):  # more than MAX_FRAGMENTS pieces
        split(MESSAGE + bytes(40000), aggressive=False, max_datagram=1248)


def _piece(
    number: int, *, last: bool = False, ident: int = 7, size: int = 100, cookies: bytes = bytes(16)
) -> Fragment:
    return Fragment(cookies[:8], cookies[8:], ident, number, last, bytes([number]) * size)


def test_pieces_again_a_new_message_and_pieces_after_the_last_one() -> None:
    r = Reassembler()
    assert r.add(_piece(1), SOURCE, 0.0) is None
    assert r.add(_piece(1), SOURCE, 0.0) is None  # retransmitted: kept once
    assert r.add(_piece(2, ident=8), SOURCE, 0.0) is None  # the sender moved on: 7 is dropped
    assert r.add(_piece(1, ident=8), SOURCE, 0.0) is None
    assert r.add(_piece(3, ident=8, last=True), SOURCE, 0.0) == b"\x01" * 100 + b"\x02" * 100 + b"\x03" * 100
    assert r.add(_piece(3, last=True), SOURCE, 0.0) is None
    assert r.add(_piece(5), SOURCE, 0.0) is None
    assert len(r) == 0 and r.drops["fragment after the last one"] == 1


def test_reassembly_is_bounded_by_size_time_source_and_total() -> None:
    r = Reassembler(max_pending=8, per_source=2, max_message=1000, timeout=10.0)
    for n in range(1, 11):  # 1,000 octets at most
        r.add(_piece(n, size=150), SOURCE, 0.0)
    assert r.drops["fragmented message too large"] == 1 and len(r) == 1
    assert r.add(_piece(1, cookies=b"b" * 16), SOURCE, 0.0) is None
    assert r.add(_piece(1, cookies=b"c" * 16), SOURCE, 0.0) is None  # a third from one address
    assert r.drops["too many fragmented messages from one address"] == 1
    r.expire(11.0)
    assert len(r) == 0 and r.drops["fragmented message incomplete in time"] == 2
    rng = random.Random(16)
    for n in range(100):  # a spoofed flood: many addresses, never a whole message
        r.add(_piece(1, cookies=rng.randbytes(16)), (f"198.51.100.{n}", 500), 20.0)
    assert len(r) == 8  # the oldest were pushed out
    assert r.drops["fragmented message pushed out by newer ones"] == 92
    assert r.add(_piece(fragments.MAX_FRAGMENTS + 1), SOURCE, 20.0) is None
    assert r.drops["fragment number too large"] == 1


def test_the_vendor_id_with_and_without_capabilities() -> None:
    assert fragments.is_fragmentation_vid(fragments.FRAGMENTATION_VID)  # Windows
    assert fragments.is_fragmentation_vid(fragments.FRAGMENTATION_VID_PHASE1)  # strongSwan, Cisco
    assert fragments.is_fragmentation_vid(fragments.FRAGMENTATION_VID + bytes.fromhex("c0000000"))
    assert not fragments.is_fragmentation_vid(fragments.FRAGMENTATION_VID + bytes.fromhex("40000000"))
    assert not fragments.is_fragmentation_vid(bytes(16))


# ------------------------------------------------------------------ two engines, a small path

SMALL = 576


class SmallPath(Pair):
    """A path that drops every datagram larger than ``SMALL`` IP octets (IP fragments lost)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.sizes: dict[str, list[int]] = {"c>g": [], "g>c": []}
        self.too_big = 0

    def transfer(self, sender, *, drop: bool = False) -> int:  # type: ignore[no-untyped-def]
        out = sender.engine.datagrams_to_send()
        receiver = self._other(sender)
        way = "c>g" if sender is self.client else "g>c"
        for data, remote, local_port in out:
            self.sizes[way].append(len(data))
            if drop or len(data) + 28 > SMALL:
                self.too_big += not drop
                continue
            receiver.engine.receive_datagram(
                data, (sender.ip, local_port), (receiver.ip, remote[1]), self.now
            )
        sender.drain()
        receiver.drain()
        return len(out)


NARROW_GATEWAY = Phase1Policy(groups=(DHGroup.MODP_2048,), hashes=(HashAlgorithm.SHA2_256,))
"""A gateway whose only suites are outside our short first offer (the strongest that fit one
datagram): it refuses that, and the rest of our offer follows, one auth method at a time."""


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_a_whole_login_through_a_path_that_drops_ip_fragments(mode: str) -> None:
    """Main Mode: the first message carries the strongest suites that fit one datagram; this
    gateway refuses them, so the whole offer follows: lost as one large datagram, then (yes:
    the first retransmission) in IKE fragments, at once with force. The gateway announces the
    extension back. Aggressive Mode's first message (every suite of one group, 1.2 KB) is cut
    from its first retransmission on."""
    phase1 = NARROW_GATEWAY if mode == "main" else Phase1Policy()
    for setting in ("yes", "force"):
        pair = SmallPath(
            client_config(fragmentation=setting, fragment_size=SMALL),
            gateway_config(require_xauth=True, fragment_size=SMALL, phase1=phase1),
        )
        sa_id = pair.client.engine.initiate(
            (GATEWAY_IP, 500), ("192.0.2.10", 500), pair.now, mode=mode, xauth=True
        )
        pair.client.drain()
        for _ in range(6):
            pair.run()
            if pair.client.of(ev.Phase1Established):
                break
            pair.advance(1.0)
        assert pair.client.of(ev.Phase1Established), (setting, pair.sizes)
        assert "fragmentation" in pair.client.engine.get_sa(sa_id).peer_vendor_ids
        if mode == "main":
            # yes: the short offer fits; each later offer (one auth method, in messages of at
            # most four pieces: several at this small size) is lost once whole
            assert (pair.too_big >= 1) == (setting == "yes"), pair.sizes
            assert max(pair.sizes["c>g"]) <= 4 * SMALL, pair.sizes
            assert any(size + 28 > SMALL for size in pair.sizes["c>g"]) == (setting == "yes")
            suite = pair.client.of(ev.Phase1Established)[0].suite
            assert "modp_2048" in suite and "sha256" in suite, suite


def test_a_first_message_that_fits_needs_no_fragments() -> None:
    """The strongest suites that fit one datagram (issue 16): a gateway that takes one of them
    answers at once, whatever the path does to IP fragments."""
    pair = SmallPath(
        client_config(fragment_size=SMALL), gateway_config(require_xauth=True, fragment_size=SMALL)
    )
    pair.client.engine.initiate((GATEWAY_IP, 500), ("192.0.2.10", 500), pair.now, mode="main", xauth=True)
    pair.client.drain()
    pair.run()
    assert pair.client.of(ev.Phase1Established) and pair.too_big == 0
    assert pair.sizes["c>g"][0] + 28 <= SMALL


def test_full_tunnel_with_fragments_and_the_gateway_cuts_its_own_large_messages() -> None:
    pair = SmallPath(
        client_config(fragmentation="force", fragment_size=SMALL),
        gateway_config(require_xauth=True, fragment_size=SMALL),
    )
    children = full_tunnel(pair, mode="main")
    assert children and pair.too_big == 0
    assert max(pair.sizes["c>g"]) + 28 <= SMALL and max(pair.sizes["g>c"]) + 28 <= SMALL


def test_a_gateway_with_fragmentation_off_neither_announces_nor_takes_them() -> None:
    gateway = IkeEngine(gateway_config(fragmentation="no"))
    for piece in split(MESSAGE, aggressive=False, max_datagram=1248):
        gateway.receive_datagram(piece, SOURCE, (GATEWAY_IP, 500), 0.0)
    assert gateway.drops["IKE fragment (fragmentation is off)"] == 5
    assert not gateway.datagrams_to_send()


def test_pieces_of_a_message_under_other_cookies_or_for_an_unknown_sa_are_dropped() -> None:
    gateway = IkeEngine(gateway_config())
    other = bytes(range(8)) + b"\x01" * 8 + MESSAGE[16:]  # a responder cookie nobody gave
    for piece in split(other, aggressive=False, max_datagram=1248):
        gateway.receive_datagram(piece, SOURCE, (GATEWAY_IP, 500), 0.0)
    assert gateway.drops["IKE fragment for an unknown ISAKMP SA"] == 5
    # fragments under a first message's cookies that carry a message under other cookies
    smuggled = split(other, aggressive=False, max_datagram=1248)
    for piece in smuggled:
        gateway.receive_datagram(piece[:8] + bytes(8) + piece[16:], SOURCE, (GATEWAY_IP, 500), 0.0)
    assert gateway.drops["fragmented message under other cookies than its fragments"] == 1
    assert not gateway.datagrams_to_send()


def test_the_first_message_alternates_whole_and_in_pieces_until_answered() -> None:
    """yes: after a refusal of the short offer, the XAUTH suites are our first message; a peer
    behind a path that drops IP fragments gets it in pieces (retransmissions 1, 3, ...), one
    that does not know IKE fragments gets it whole again (2, 4, ...)."""
    client = IkeEngine(client_config(fragmentation="yes"))
    sa_id = client.initiate((GATEWAY_IP, 500), ("192.0.2.10", 500), 0.0, mode="main", xauth=True)
    [(short, _, _)] = client.datagrams_to_send()
    assert len(short) <= 1280 - 28
    refusal = encode_message(
        Message(
            sa_id[:8],
            bytes(8),
            ExchangeType.INFORMATIONAL,
            0,
            0,
            (NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, ProtocolId.ISAKMP, sa_id[:8] + bytes(8)),),
        )
    )
    client.receive_datagram(refusal, (GATEWAY_IP, 500), ("192.0.2.10", 500), 0.0)
    out = client.datagrams_to_send()
    assert len(out) == 1 and len(out[0][0]) > 1280  # the XAUTH suites, whole
    tries = [1]
    now = 0.0
    while len(tries) < 5:
        now += 1.0
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
            out = client.datagrams_to_send()
            if out:
                tries.append(len(out))
    assert tries[2] == 1 and tries[4] == 1  # the whole message
    assert tries[1] > 1 and tries[3] > 1  # in pieces


def _refuse(client: IkeEngine, sa_id: bytes) -> list[bytes]:
    refusal = encode_message(
        Message(
            sa_id[:8],
            bytes(8),
            ExchangeType.INFORMATIONAL,
            0,
            0,
            (NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, ProtocolId.ISAKMP, sa_id[:8] + bytes(8)),),
        )
    )
    client.receive_datagram(refusal, (GATEWAY_IP, 500), ("192.0.2.10", 500), 0.0)
    return [data for data, _, _ in client.datagrams_to_send()]


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("setting", ["yes", "force"])
def test_no_first_message_of_ours_takes_more_than_four_pieces(setting: str, legacy: bool) -> None:
    """strongSwan ignores a piece of a first message over its per-address half-open limit (5 by
    default) when its workers lag: each offer we start with goes in at most four pieces. After
    refusals, the whole offer follows one auth method at a time, strongest first, and nothing
    of it is left out."""
    phase1 = Phase1Policy.with_legacy() if legacy else Phase1Policy()
    client = IkeEngine(client_config(fragmentation=setting, phase1=phase1))
    sa_id = client.initiate((GATEWAY_IP, 500), ("192.0.2.10", 500), 0.0, mode="main", xauth=True)
    first = [data for data, _, _ in client.datagrams_to_send()]
    if setting == "yes":
        assert len(first) == 1 and len(first[0]) <= 1280 - 28
    assert len(first) <= fragments.FIRST_MESSAGE_PIECES
    sa = client.get_sa(sa_id)
    offered = list(sa.offered)
    sent = 0
    while sa.later_offers:
        out = _refuse(client, sa_id)
        sent += 1
        offered += sa.offered
        pieces = out if setting == "force" else split(out[0], aggressive=False, max_datagram=1280 - 28)
        assert 1 < len(pieces) <= fragments.FIRST_MESSAGE_PIECES, (sent, len(out[0]))
        assert len({suite.auth for suite in sa.offered}) == 1
    assert sent >= 2  # XAUTH, then plain pre-shared key
    whole = phase1.enumerate(client.config.auth_methods(xauth=True, responder=False))
    assert set(whole) == set(offered)
    assert _refuse(client, sa_id) == []  # nothing left: the refusal ends it
