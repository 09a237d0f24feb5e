"""Issue 16: a gateway's hash-verified error Notify during one of our Transactions (a Mode
Config request it will not answer: ATTRIBUTES-NOT-SUPPORTED) stops it at once with an event
naming what was refused, instead of retransmitting until the client gives up "stuck in Mode
Config"; an unprotected one changes nothing."""

from __future__ import annotations

from tests.helpers.ike_pair import Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike import exchanges
from tunvpn.ike.constants import ExchangeType, NotifyType, ProtocolId
from tunvpn.ike.messages import Message, NotifyPayload, encode_message


def requested_mode_config() -> tuple[Pair, bytes]:
    pair = Pair(client_config(), gateway_config(require_xauth=False))
    connect(pair)
    [client_sa] = pair.client.engine.ike_sas()
    pair.client.engine.request_mode_config(client_sa.sa_id, pair.now)
    [(request, _, _)] = pair.client.engine.datagrams_to_send()  # lost: the gateway never sees it
    assert request
    return pair, client_sa.sa_id


def test_a_verified_refusal_stops_our_mode_config_request_at_once() -> None:
    pair, _ = requested_mode_config()
    [gateway_sa] = pair.gateway.engine.ike_sas()
    notify = NotifyPayload(NotifyType.ATTRIBUTES_NOT_SUPPORTED, ProtocolId.ISAKMP, gateway_sa.sa_id)
    exchanges.send_informational(pair.gateway.engine, gateway_sa, [notify], pair.now)
    pair.run()
    [failed] = pair.client.of(ev.TransactionFailed)
    assert failed.purpose == "modecfg" and failed.notify == NotifyType.ATTRIBUTES_NOT_SUPPORTED
    assert failed.reason == "refused by the peer (ATTRIBUTES-NOT-SUPPORTED)"
    [sa] = pair.client.engine.ike_sas()
    assert not sa.exchanges or all(ex.sent.at is None for ex in sa.exchanges.values())  # nothing resent
    pair.advance(10)
    assert not pair.client.engine.datagrams_to_send()


def test_an_unprotected_refusal_changes_nothing() -> None:
    pair, sa_id = requested_mode_config()
    notify = NotifyPayload(NotifyType.ATTRIBUTES_NOT_SUPPORTED, ProtocolId.ISAKMP, sa_id)
    forged = encode_message(Message(sa_id[:8], sa_id[8:], ExchangeType.INFORMATIONAL, 0, 0, (notify,)))
    pair.client.engine.receive_datagram(forged, ("198.51.100.1", 500), ("192.0.2.10", 500), pair.now)
    pair.client.drain()
    assert not pair.client.of(ev.TransactionFailed)
    [sa] = pair.client.engine.ike_sas()
    assert any(ex.sent.at is not None for ex in sa.exchanges.values())  # still waiting, resending


def test_a_request_nobody_answers_ends_with_the_same_event() -> None:
    pair, _ = requested_mode_config()
    for _ in range(40):
        pair.advance(2)
        pair.client.engine.datagrams_to_send()  # the gateway is gone
    [failed] = pair.client.of(ev.TransactionFailed)
    assert failed.purpose == "modecfg" and failed.notify is None and "no answer" in failed.reason
