"""Issue 17: the answering client's NAT-keepalives toward an introduced peer carry a small IP TTL
(tunvpn.client.peerlinks.PUNCH_TTL), set per packet so the socket's other sends keep theirs."""

from __future__ import annotations

import socket

from tunvpn.shell.udp import send_with_ttl

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux's number; Python does not export it


def test_one_datagram_goes_with_the_ttl_asked_and_the_next_with_the_normal_one() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as into,
    ):
        out.bind(("127.0.0.1", 0))
        into.bind(("127.0.0.1", 0))
        into.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        into.settimeout(2)
        assert send_with_ttl(out, b"\xff", into.getsockname(), 2)
        out.sendto(b"\xff", into.getsockname())
        ttls = []
        for _ in range(2):
            data, ancillary, _, _ = into.recvmsg(16, 64)
            assert data == b"\xff"
            [(level, kind, value)] = ancillary
            assert (level, kind) == (socket.IPPROTO_IP, socket.IP_TTL)
            ttls.append(int.from_bytes(value, "little"))
        assert ttls[0] == 2 and ttls[1] > 2
