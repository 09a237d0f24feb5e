"""Issue 16: a gateway's hash-verified error Notify stops our Quick Mode at once (no 30 s of
retransmissions), also when it names no SPI (strongSwan sends NO-PROPOSAL-CHOSEN for ESP with
SPI 0); an unprotected one changes nothing (a spoofed refusal must not talk a client down)."""

from __future__ import annotations

from tests.helpers.ike_pair import PROTECTED, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike import exchanges
from tunvpn.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunvpn.ike.messages import Message, NotifyPayload, encode_message
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

CLIENT_TS = TrafficSelector.from_network("10.99.0.7/32")


def started_quick_mode() -> tuple[Pair, bytes]:
    pair = Pair(client_config(), gateway_config(require_xauth=False))
    connect(pair)
    [client_sa] = pair.client.engine.ike_sas()
    pair.client.engine.start_child(
        client_sa.sa_id, pair.now, CLIENT_TS, PROTECTED, ChildProposal(), name="qm"
    )
    [(qm1, _, _)] = pair.client.engine.datagrams_to_send()  # lost: the gateway never sees it
    assert qm1
    return pair, client_sa.sa_id


def gateway_says(pair: Pair, notify: NotifyPayload) -> None:
    [gateway_sa] = pair.gateway.engine.ike_sas()
    exchanges.send_informational(pair.gateway.engine, gateway_sa, [notify], pair.now)
    pair.run()


def test_a_verified_refusal_naming_no_spi_stops_our_quick_mode_at_once() -> None:
    pair, _ = started_quick_mode()
    gateway_says(pair, NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, ProtocolId.ESP, bytes(4)))
    [failed] = pair.client.of(ev.ChildSAFailed)
    assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN and failed.policy_name == "qm"
    [sa] = pair.client.engine.ike_sas()
    assert not sa.exchanges or all(ex.sent.at is None for ex in sa.exchanges.values())  # nothing resent


def test_an_unprotected_refusal_changes_nothing() -> None:
    pair, sa_id = started_quick_mode()
    notify = NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, ProtocolId.ESP, bytes(4))
    forged = encode_message(Message(sa_id[:8], sa_id[8:], ExchangeType.INFORMATIONAL, 0, 0, (notify,)))
    pair.client.engine.receive_datagram(forged, ("198.51.100.1", 500), ("192.0.2.10", 500), pair.now)
    pair.client.drain()
    assert not pair.client.of(ev.ChildSAFailed)
    [sa] = pair.client.engine.ike_sas()
    assert any(ex.sent.at is not None for ex in sa.exchanges.values())  # still waiting, resending
