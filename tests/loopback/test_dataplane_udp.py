"""The data path's UDP socket (tunvpn.dataplane.udp_linux.UdpSocket) over 127.0.0.1: batches of
equal-size datagrams leave as GSO sends and arrive as whole GRO buffers, in order (the fast
paths in memory are tested in tests/unit/dataplane/test_fastpath.py)."""

from __future__ import annotations

from tunvpn.dataplane.udp_linux import UdpSocket


def _pair_sockets() -> tuple[UdpSocket, UdpSocket]:
    receiver = UdpSocket(bind=("127.0.0.1", 0), rcvbuf=4 << 20)
    sender = UdpSocket(bind=("127.0.0.1", 0), sndbuf=4 << 20)
    return sender, receiver


def _drain(receiver: UdpSocket) -> list[bytes]:
    import select

    got: list[bytes] = []
    for _ in range(50):
        select.select([receiver.sock], [], [], 0.2)
        runs = receiver.recv_buffers(1000)
        if not runs:
            break
        for data, segment, addr in runs:
            assert addr[0] == "127.0.0.1"
            got += [data[i : i + segment] for i in range(0, len(data), segment)]
    return got


def test_equal_size_batches_and_whole_gro_buffers() -> None:
    sender, receiver = _pair_sockets()
    try:
        same = [bytes([i]) * 1200 for i in range(150)]
        assert sender.send_batch(same, receiver.getsockname()) == 150
        if sender.gso:
            assert sender.stats.gso_sends >= 3
            assert sender.stats.sendmsg_calls <= 5
        mixed = [b"a" * 1000, b"b" * 1000, b"c" * 500, b"d" * 1000, b"e" * 10]
        assert sender.send_batch(mixed, receiver.getsockname()) == 5
        assert _drain(receiver) == same + mixed
        assert receiver.stats.datagrams_received == 155
    finally:
        sender.close()
        receiver.close()
