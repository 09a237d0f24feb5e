"""Issue 14: what `tunvpn status` reads of the IKE side under attack, through the counter
registry: drops by reason (group ``ike``) and the half-open phase 1 SAs now (``ike state``)."""

from __future__ import annotations

from tests.helpers.ike_pair import GATEWAY_IP, client_config, gateway_config
from tunvpn.control.status import counter_registry
from tunvpn.ike.engine import IkeEngine


class Daemon:
    def __init__(self, engine: IkeEngine) -> None:
        self.engine = engine
        self.driver = None
        self.tunnel = None


def test_half_open_and_drops_are_in_the_registry() -> None:
    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY_IP, 500), ("192.0.2.10", 500), 1000.0)
    [(first, _, _)] = spare.datagrams_to_send()
    gateway = IkeEngine(gateway_config())
    for i in range(8):  # one spoofed source: 5 kept, 3 dropped
        gateway.receive_datagram(
            bytes([i + 1]) * 8 + first[8:], ("203.0.113.9", 500), (GATEWAY_IP, 500), 1000.0
        )
    gateway.receive_datagram(b"garbage", ("203.0.113.9", 500), (GATEWAY_IP, 500), 1000.0)
    snapshot = counter_registry(Daemon(gateway)).snapshot()  # type: ignore[arg-type]
    assert snapshot.get("ike state", "half-open") == 5
    assert snapshot.get("ike", "half-open limit per source") == 3
    assert snapshot.get("ike", "malformed ISAKMP header") == 1


def test_answers_withheld_from_unverified_senders_are_in_the_registry() -> None:
    """Aggressive Mode first messages (refused: it is off) "from" one victim: beyond the
    notify budget the gateway sends nothing, and `status` says how many answers it kept back."""
    spare = IkeEngine(client_config())
    spare.initiate((GATEWAY_IP, 500), ("192.0.2.10", 500), 1000.0, mode="aggressive")
    [(first, _, _)] = spare.datagrams_to_send()
    gateway = IkeEngine(gateway_config(allow_aggressive_psk=False, allow_aggressive_signatures=False))
    for i in range(50):
        gateway.receive_datagram(
            bytes([i + 1]) * 8 + first[8:], ("192.0.2.77", 500), (GATEWAY_IP, 500), 1000.0
        )
    sent = gateway.datagrams_to_send()
    snapshot = counter_registry(Daemon(gateway)).snapshot()  # type: ignore[arg-type]
    burst = int(gateway.config.notify_budget[1])
    assert len(sent) == burst
    assert snapshot.get("ike withheld", "notify over budget") == 50 - burst
