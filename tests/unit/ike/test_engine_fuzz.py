"""Fuzz invariant of the engine (STYLE.md section 3): whatever arrives, receive_datagram
never raises; bad input becomes a ProtocolError event (and maybe a Notify), nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.ike_pair import CLIENT_IP, GATEWAY_IP, Pair, client_config, connect, gateway_config
from tunvpn.ike import events as ev
from tunvpn.ike.engine import IkeEngine


def _recorded_handshake() -> tuple[list[tuple[str, bytes]], Pair]:
    pair = Pair(client_config(), gateway_config())
    connect(pair, "main")
    return pair.wire, pair


WIRE, _ = _recorded_handshake()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([500, 4500]))
def test_random_bytes_never_raise(data: bytes, port: int) -> None:
    engine = IkeEngine(gateway_config())
    engine.receive_datagram(data, (CLIENT_IP, port), (GATEWAY_IP, port), 1_800_000_000.0)
    while (e := engine.next_event()) is not None:
        assert isinstance(e, ev.ProtocolError | ev.Phase1Failed)


class MutatingPair(Pair):
    """Runs a real handshake but corrupts the n-th datagram on the wire."""

    def __init__(self, victim: int, mutate) -> None:
        super().__init__(client_config(), gateway_config(require_xauth=False))
        self.victim = victim
        self.mutate = mutate
        self.count = 0

    def transfer(self, sender, *, drop: bool = False) -> int:  # type: ignore[override]
        out = sender.engine.datagrams_to_send()
        receiver = self._other(sender)
        for data, remote, local_port in out:
            if self.count == self.victim:
                data = self.mutate(data)
            self.count += 1
            receiver.engine.receive_datagram(data, (sender.ip, local_port), remote, self.now)
        sender.drain()
        receiver.drain()
        return len(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_mid_handshake_never_raise(data: st.DataObject) -> None:
    """Flip or cut bytes of one message of a live handshake: errors are events, not crashes."""
    victim = data.draw(st.integers(0, len(WIRE) - 1))
    pos_frac = data.draw(st.floats(0, 1))
    flip = data.draw(st.integers(1, 255))
    cut = data.draw(st.booleans())

    def mutate(message: bytes) -> bytes:
        pos = min(int(pos_frac * len(message)), len(message) - 1)
        if cut:
            return message[:pos]
        return message[:pos] + bytes([message[pos] ^ flip]) + message[pos + 1 :]

    pair = MutatingPair(victim, mutate)
    pair.client.engine.initiate((GATEWAY_IP, 500), (CLIENT_IP, 500), pair.now)
    pair.run()
    for _ in range(12):  # let retransmissions recover or give up
        pair.advance(4)
        pair.run()
    ok = pair.client.of(ev.Phase1Established) and pair.gateway.of(ev.Phase1Established)
    failed = pair.client.of(ev.Phase1Failed) or pair.gateway.of(ev.Phase1Failed)
    errors = pair.client.of(ev.ProtocolError) + pair.gateway.of(ev.ProtocolError)
    assert ok or failed or errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_messages_never_raise(data: st.DataObject) -> None:
    """Take a real handshake, flip bytes in one message, replay it into a fresh pair."""
    pair = Pair(client_config(), gateway_config())
    index = data.draw(st.integers(0, len(WIRE) - 1))
    direction, message = WIRE[index]
    pos = data.draw(st.integers(0, len(message) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = message[:pos] + bytes([message[pos] ^ flip]) + message[pos + 1 :]
    cut = data.draw(st.integers(0, len(mutated)))
    target = pair.gateway if direction == "c>g" else pair.client
    src = (CLIENT_IP, 500) if direction == "c>g" else (GATEWAY_IP, 500)
    dst = (GATEWAY_IP, 500) if direction == "c>g" else (CLIENT_IP, 500)
    target.engine.receive_datagram(mutated[:cut], src, dst, pair.now)
    target.drain()
    target.engine.datagrams_to_send()
