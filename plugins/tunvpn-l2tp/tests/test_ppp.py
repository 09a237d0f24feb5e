"""tunvpn_l2tp.ppp: octets against the RFC packet formats, a client and a server in memory
(a pump moving frames both ways and advancing ``now``), hand-built pppd-style requests, and
random input on the receive path.

All expected octets below are written by hand from the packet diagrams of RFC 1661 section 5-6
(LCP), RFC 1334 section 2.2 (PAP), RFC 1994 section 4 (CHAP), RFC 1332 section 3 and RFC 1877
(IPCP); none is produced by the code under test.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunvpn_l2tp import pppframe
from tunvpn_l2tp.ppp import (
    TRANSITIONS,
    AuthFailed,
    AuthRequest,
    AuthSucceeded,
    Event,
    IpDown,
    IpPacket,
    IpUp,
    LinkDown,
    LinkUp,
    Output,
    Phase,
    Ppp,
    Role,
    State,
)
from tunvpn_l2tp.pppframe import (
    AuthMethod,
    Code,
    PppUsageError,
    chap_md5_response,
    decapsulate,
    decode_frame,
    decode_options,
    encapsulate_ip,
    verify_chap_md5,
)

SERVER_IP = IPv4Address("10.0.0.1")
CLIENT_IP = IPv4Address("10.0.0.2")
DNS = (IPv4Address("8.8.8.8"), IPv4Address("9.9.9.9"))
USERS = {"alice": "secret"}

# A 20-octet IPv4 header (version 4, IHL 5) plus 4 octets: enough to look like a packet.
IP_PACKET = bytes.fromhex("4500001800000000401100000a0000020a000001") + b"ping"


def zeros(n: int) -> bytes:
    return bytes(n)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def lcp(code: int, identifier: int, data: bytes) -> bytes:
    """ff 03 c0 21, then the RFC 1661 section 5 header."""
    return b"\xff\x03\xc0\x21" + struct.pack("!BBH", code, identifier, 4 + len(data)) + data


def make_client(**kwargs: object) -> Ppp:
    options: dict[str, object] = {
        "user": "alice",
        "password": "secret",
        "magic": 0x0A0B0C0D,
        "random": seeded(1),
    }
    options.update(kwargs)
    return Ppp(Role.CLIENT, **options)  # type: ignore[arg-type]


def make_server(**kwargs: object) -> Ppp:
    options: dict[str, object] = {
        "local_address": SERVER_IP,
        "peer_address": CLIENT_IP,
        "dns": DNS,
        "magic": 0x01020304,
        "random": seeded(2),
    }
    options.update(kwargs)
    return Ppp(Role.SERVER, **options)  # type: ignore[arg-type]


def check_credentials(request: AuthRequest) -> bool:
    secret = USERS.get(request.user)
    if secret is None:
        return False
    if request.method is AuthMethod.PAP:
        return request.password == secret
    assert request.chap_id is not None and request.challenge is not None and request.response is not None
    return verify_chap_md5(request.chap_id, secret, request.challenge, request.response)


class Link:
    """Two Ppp in memory; the server's AuthRequests are answered from USERS at once."""

    def __init__(
        self,
        client: Ppp,
        server: Ppp,
        *,
        drop_every: int = 0,
        shared_count: bool = False,
        answer_auth: bool = True,
    ) -> None:
        self.client, self.server = client, server
        self.names = {id(client): "client", id(server): "server"}
        self.events: dict[str, list[Event]] = {"client": [], "server": []}
        self.sent: dict[str, list[bytes]] = {"client": [], "server": []}
        self.wire: list[tuple[Ppp, bytes]] = []
        self.now = 0.0
        self.drop_every = drop_every
        self.shared_count = shared_count
        self.counts = {"client": 0, "server": 0}
        self.dropped = 0
        self.answer_auth = answer_auth
        self.blocked: set[str] = set()  # senders whose frames are lost

    def other(self, side: Ppp) -> Ppp:
        return self.server if side is self.client else self.client

    def deliver(self, side: Ppp, out: Output) -> None:
        name = self.names[id(side)]
        for frame in out.frames:
            self.sent[name].append(frame)
            counter = "client" if self.shared_count else name
            self.counts[counter] += 1
            if name in self.blocked or (self.drop_every and self.counts[counter] % self.drop_every == 0):
                self.dropped += 1
                continue
            self.wire.append((self.other(side), frame))
        for event in out.events:
            self.events[name].append(event)
            if isinstance(event, AuthRequest) and self.answer_auth:
                accepted = check_credentials(event)
                message = "welcome" if accepted else "bad password"
                self.deliver(side, side.auth_result(accepted, message, self.now))

    def start(self, server_delay: float = 0.0) -> Link:
        self.deliver(self.client, self.client.start(self.now))
        if server_delay:
            self.run(until=server_delay)
            self.now = server_delay
        self.deliver(self.server, self.server.start(self.now))
        return self

    def run(self, until: float = 120.0) -> Link:
        while True:
            while self.wire:
                destination, frame = self.wire.pop(0)
                payload = destination.receive_ip(frame)
                if payload is None:
                    self.deliver(destination, destination.receive(frame, self.now))
                else:
                    self.events[self.names[id(destination)]].append(IpPacket(payload))
            deadlines = [
                d for d in (self.client.next_deadline(), self.server.next_deadline()) if d is not None
            ]
            if not deadlines or min(deadlines) > until:
                return self
            self.now = max(self.now, min(deadlines))
            for side in (self.client, self.server):
                self.deliver(side, side.poll(self.now))

    def of(self, name: str, kind: type[Event]) -> list[Event]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    def ipcp_frames(self, name: str) -> list[bytes]:
        return [f for f in self.sent[name] if f[:4] == b"\xff\x03\x80\x21"]


def open_lcp(side: Ppp, peer_request: bytes) -> Output:
    """Start ``side``, feed it the peer's Configure-Request and Ack its own: LCP Opened."""
    first = side.start(0.0)
    request = first.frames[0]
    answer = side.receive(peer_request, 0.0)
    ack = request[:4] + b"\x02" + request[5:]
    opened = side.receive(ack, 0.0)
    return Output(first.frames + answer.frames + opened.frames, first.events + answer.events + opened.events)


# ------------------------------------------------------------------ exact octets


def test_state_table_has_every_rfc1661_pair() -> None:
    assert len(TRANSITIONS) == 120  # 16 events x 10 states minus the 40 "-" cells of section 4.1
    assert TRANSITIONS[State.OPENED, "RTR"] == (("tld", "zrc", "sta"), State.STOPPING)
    assert TRANSITIONS[State.ACK_RCVD, "RCR+"] == (("sca", "tlu"), State.OPENED)


def test_server_lcp_configure_request_octets() -> None:
    out = make_server(random=zeros).start(0.0)
    # Code 1, Id 1, Length 19; MRU 1400; Auth-Protocol CHAP (c2 23) MD5 (05); Magic 01020304.
    assert out.frames == (bytes.fromhex("ff03c021 01 01 0013 010405 78 0305c22305 050601020304"),)
    assert out.events == ()


def test_client_lcp_configure_request_octets_and_pap_server() -> None:
    assert make_client(random=zeros).start(0.0).frames == (
        bytes.fromhex("ff03c021 01 01 000e 01040578 05060a0b0c0d"),
    )
    # PAP as the server's only method: Auth-Protocol c0 23, no algorithm octet; MRU 1500 is the default.
    server = make_server(auth=("pap",), mru=1500, random=zeros)
    assert server.start(0.0).frames == (bytes.fromhex("ff03c021 01 01 000e 0304c023 050601020304"),)


def test_pap_authenticate_request_octets() -> None:
    client = make_client(random=zeros)
    out = open_lcp(client, lcp(1, 7, bytes.fromhex("0304c023 05061a2b3c4d")))
    assert out.frames[1] == lcp(2, 7, bytes.fromhex("0304c023 05061a2b3c4d"))  # Ack'd as sent
    assert any(isinstance(e, LinkUp) for e in out.events)
    # Code 1, Id 1, Length 17, Peer-ID-Length 5 "alice", Passwd-Length 6 "secret".
    assert out.frames[2] == bytes.fromhex("ff03c023 01 01 0011 05") + b"alice" + b"\x06" + b"secret"
    assert client.phase is Phase.AUTHENTICATE
    # Authenticate-Ack: Msg-Length 2 "ok"
    done = client.receive(bytes.fromhex("ff03c023 02 01 0007 02") + b"ok", 1.0)
    assert AuthSucceeded("ok") in done.events
    assert client.phase is Phase.NETWORK


# MD5(0x2a || "secret" || 10 11 ... 1f), computed with
# python3 -c 'import hashlib; print(hashlib.md5(b"\x2a" + b"secret" + bytes(range(16, 32))).hexdigest())'
CHAP_VECTOR = bytes.fromhex("9a1aad3726144f558375cb6a5d6688e2")


def test_chap_md5_value() -> None:
    challenge = bytes(range(0x10, 0x20))
    assert chap_md5_response(0x2A, "secret", challenge) == CHAP_VECTOR
    assert chap_md5_response(0x2A, b"secret", challenge) == hashlib.md5(b"\x2asecret" + challenge).digest()
    assert verify_chap_md5(0x2A, "secret", challenge, CHAP_VECTOR)
    assert not verify_chap_md5(0x2B, "secret", challenge, CHAP_VECTOR)
    assert not verify_chap_md5(0x2A, "secreT", challenge, CHAP_VECTOR)


def test_chap_response_octets() -> None:
    client = make_client(random=zeros)
    out = open_lcp(client, lcp(1, 1, bytes.fromhex("0305c22305 05061a2b3c4d")))
    assert len(out.frames) == 2  # the client waits for the Challenge
    challenge = bytes(range(0x10, 0x20))
    # Code 1, Id 0x2a, Length 24, Value-Size 16, Value, Name "lns"
    reply = client.receive(bytes.fromhex("ff03c223 01 2a 0018 10") + challenge + b"lns", 1.0)
    # Code 2, Id 0x2a, Length 26, Value-Size 16, MD5 value, Name "alice"
    assert reply.frames == (bytes.fromhex("ff03c223 02 2a 001a 10") + CHAP_VECTOR + b"alice",)
    # Success with a message
    done = client.receive(bytes.fromhex("ff03c223 03 2a 000b") + b"welcome", 1.5)
    assert AuthSucceeded("welcome") in done.events
    # and its IPCP request goes out at once (below)
    assert done.frames[0][:4] == b"\xff\x03\x80\x21"


def test_lost_chap_success_inferred_from_ipcp_and_response_retransmitted() -> None:
    client = make_client(random=zeros)
    open_lcp(client, lcp(1, 1, bytes.fromhex("0305c22305 05061a2b3c4d")))
    response = client.receive(bytes.fromhex("ff03c223 01 2a 0018 10") + bytes(range(16, 32)) + b"lns", 1.0)
    assert client.poll(4.0).frames == response.frames  # no Success yet: the Response again
    out = client.receive(bytes.fromhex("ff038021 01 09 000a 03060a000001"), 5.0)  # the server's IPCP
    assert out.events == (AuthSucceeded(""),)
    assert lcp(2, 9, bytes.fromhex("03060a000001"))[4:] in [f[4:] for f in out.frames]  # Acked


def test_ipcp_request_octets() -> None:
    link = Link(make_client(random=zeros), make_server(random=zeros)).start().run()
    client_ipcp, server_ipcp = link.ipcp_frames("client"), link.ipcp_frames("server")
    # Client: Code 1, Id 1, Length 22, IP-Address 0.0.0.0, Primary DNS (129) 0.0.0.0, Secondary (131) 0.0.0.0
    assert client_ipcp[0] == bytes.fromhex("ff038021 01 01 0016 030600000000 810600000000 830600000000")
    # Server: Code 1, Id 1, Length 10, IP-Address 10.0.0.1
    assert server_ipcp[0] == bytes.fromhex("ff038021 01 01 000a 03060a000001")
    # The server Naks 0.0.0.0 with the assigned address and its DNS servers (RFC 1332 3.3, RFC 1877),
    # the client asks again with what it was given (Id 2), and the server Acks that.
    nak = bytes.fromhex("ff038021 03 01 0016 03060a000002 810608080808 830609090909")
    again = bytes.fromhex("ff038021 01 02 0016 03060a000002 810608080808 830609090909")
    assert server_ipcp == [server_ipcp[0], nak, again[:4] + b"\x02" + again[5:]]
    assert client_ipcp == [client_ipcp[0], bytes.fromhex("ff038021 02 01 000a 03060a000001"), again]


def test_server_naks_another_address() -> None:
    link = Link(make_client(), make_server(dns=())).start().run()
    out = link.server.receive(bytes.fromhex("ff038021 01 40 000a 03060a000063"), link.now)  # 10.0.0.99
    assert bytes.fromhex("ff038021 03 40 000a 03060a000002") in out.frames


def test_frame_codec_accepts_compressed_headers() -> None:
    assert decode_frame(bytes.fromhex("ff03c02101")) == (0xC021, b"\x01")
    assert decode_frame(bytes.fromhex("c02101")) == (0xC021, b"\x01")
    assert decode_frame(bytes.fromhex("ff0321aa")) == (0x21, b"\xaa")
    assert decode_frame(bytes.fromhex("21aa")) == (0x21, b"\xaa")
    assert encapsulate_ip(b"xyz") == b"\xff\x03\x00\x21xyz"
    for frame in (b"\xff\x03\x00\x21xyz", b"\x00\x21xyz", b"\x21xyz", b"\xff\x03\x21xyz"):
        assert decapsulate(frame) == b"xyz"
    assert decapsulate(bytes.fromhex("ff03c021010100040000")) is None
    with pytest.raises(pppframe.MalformedFrame):
        decode_frame(b"\xff\x05\xc0\x21")
    with pytest.raises(pppframe.MalformedFrame):
        decode_frame(b"\xc0\x20")  # a 2-octet protocol must end odd
    with pytest.raises(pppframe.MalformedPacket):
        decode_options(bytes.fromhex("0104 05"))


# ------------------------------------------------------------------ pppd / xl2tpd style peers


def test_pppd_client_request_answered_by_server() -> None:
    """pppd (as an L2TP client behind xl2tpd) opens with ACCM 0, Magic and the compressions."""
    server = make_server(random=zeros)
    server.start(0.0)
    request = bytes.fromhex("020600000000 05061a2b3c4d 0702 0802")
    out = server.receive(lcp(1, 1, request), 0.1)
    assert out.frames == (lcp(4, 1, bytes.fromhex("0702 0802")),)  # PFC and ACFC Configure-Rejected
    out = server.receive(lcp(1, 2, bytes.fromhex("020600000000 05061a2b3c4d")), 0.2)
    assert out.frames == (lcp(2, 2, bytes.fromhex("020600000000 05061a2b3c4d")),)  # ACCM accepted


def test_pppd_server_request_answered_by_client() -> None:
    """pppd as LNS: ACCM 0, Auth-Protocol CHAP MD5 (c2 23 05), Magic."""
    client = make_client(random=zeros)
    client.start(0.0)
    request = bytes.fromhex("020600000000 0305c22305 05061a2b3c4d")
    assert client.receive(lcp(1, 1, request), 0.1).frames == (lcp(2, 1, request),)
    # MS-CHAPv2 (algorithm 0x81) is Nak'd with CHAP-MD5; a PAP-only client Naks with PAP.
    mschap = bytes.fromhex("020600000000 0305c22381 05061a2b3c4d")
    assert client.receive(lcp(1, 2, mschap), 0.2).frames == (lcp(3, 2, bytes.fromhex("0305c22305")),)
    pap_only = make_client(auth=("pap",), random=zeros)
    pap_only.start(0.0)
    assert pap_only.receive(lcp(1, 3, request), 0.1).frames == (lcp(3, 3, bytes.fromhex("0304c023")),)


def test_server_rejects_auth_protocol_from_client_and_unknown_options() -> None:
    server = make_server(random=zeros)
    server.start(0.0)
    # Auth-Protocol PAP (we do not authenticate ourselves) and Quality-Protocol LQR (4)
    out = server.receive(lcp(1, 9, bytes.fromhex("0304c023 0408c0250000000a 05061a2b3c4d")), 0.1)
    assert out.frames == (lcp(4, 9, bytes.fromhex("0304c023 0408c0250000000a")),)


def test_malformed_configure_request_dropped() -> None:
    server = make_server(random=zeros)
    server.start(0.0)
    for bad in ("0106 0578", "0500", "05010000", "0506 1a2b3c"):
        assert server.receive(lcp(1, 1, bytes.fromhex(bad)), 0.1) == Output()
    assert server.stats.malformed == 4
    assert server.receive(bytes.fromhex("ff03c021 01 01 0010 0104"), 0.1) == Output()  # Length > frame
    assert server.stats.malformed == 5


# ------------------------------------------------------------------ two peers


def test_chap_to_ip_up_on_both() -> None:
    link = Link(make_client(), make_server()).start().run()
    requests = link.of("server", AuthRequest)
    assert len(requests) == 1 and requests[0].method is AuthMethod.CHAP and requests[0].user == "alice"
    assert "secret" not in repr(requests[0])
    assert link.of("client", AuthSucceeded) == [AuthSucceeded("welcome")]
    assert link.of("client", IpUp) == [IpUp(CLIENT_IP, SERVER_IP, DNS)]
    assert link.of("server", IpUp) == [IpUp(SERVER_IP, CLIENT_IP, DNS)]
    assert link.client.phase is Phase.NETWORK and link.server.phase is Phase.NETWORK
    assert isinstance(link.events["client"][0], LinkUp) and link.events["client"][0].peer_mru == 1400
    assert link.client.next_deadline() is None and link.server.next_deadline() is None


def test_pap_and_nak_to_the_other_method() -> None:
    link = Link(make_client(), make_server(auth=("pap",))).start().run()
    assert link.of("server", AuthRequest)[0].method is AuthMethod.PAP
    assert link.of("client", IpUp) == [IpUp(CLIENT_IP, SERVER_IP, DNS)]
    # A PAP-only client Naks the server's CHAP; the server allows PAP too and switches to it.
    link = Link(make_client(auth=("pap",)), make_server(auth=("chap", "pap"))).start().run()
    assert [e.method for e in link.of("server", AuthRequest)] == [AuthMethod.PAP]  # type: ignore[attr-defined]
    assert link.of("server", IpUp) == [IpUp(SERVER_IP, CLIENT_IP, DNS)]


def test_client_refusing_the_only_method_ends_the_link() -> None:
    link = Link(make_client(auth=("pap",)), make_server(auth=("chap",))).start().run()
    assert link.of("server", IpUp) == [] and link.of("client", IpUp) == []
    assert link.of("server", LinkDown) == [LinkDown("the peer refused to authenticate")]


@pytest.mark.parametrize("auth", ["chap", "pap"])
def test_wrong_password(auth: str) -> None:
    link = Link(make_client(password="wrong"), make_server(auth=(auth,))).start().run()
    assert link.of("client", AuthFailed) == [AuthFailed("bad password")]
    assert link.of("client", LinkDown) == [LinkDown("authentication failed: bad password")]
    assert link.of("server", IpUp) == [] and link.of("client", IpUp) == []
    assert link.of("server", LinkDown) == [LinkDown("authentication failed: bad password")]
    assert link.client.lcp.state in (State.CLOSED, State.STOPPED)
    assert link.server.lcp.state in (State.CLOSED, State.STOPPED)


def test_address_given_in_auth_result() -> None:
    server = make_server(peer_address=None)
    link = Link(make_client(), server, answer_auth=False).start().run(until=5.0)  # a slow RADIUS
    request = link.of("server", AuthRequest)[0]
    assert isinstance(request, AuthRequest)
    link.deliver(server, server.auth_result(True, "hi", link.now, peer_address=IPv4Address("10.9.9.9")))
    link.run()
    assert link.of("client", IpUp) == [IpUp(IPv4Address("10.9.9.9"), SERVER_IP, DNS)]
    assert server.auth_result(True, "again", link.now) == Output()  # nothing pending: ignored
    assert server.stats.stale_auth_results == 1
    with pytest.raises(PppUsageError):
        link.client.auth_result(True, "", link.now)


def test_client_drops_rejected_dns() -> None:
    link = Link(make_client(), make_server(dns=())).start().run()
    assert link.of("client", IpUp) == [IpUp(CLIENT_IP, SERVER_IP, ())]


def test_ip_packets_both_ways_only_after_ip_up() -> None:
    client, server = make_client(), make_server()
    assert client.send_ip(IP_PACKET) is None
    link = Link(client, server).start()
    assert server.receive(encapsulate_ip(IP_PACKET), 0.0).events == ()  # before IPCP: dropped
    assert server.stats.ip_dropped == 1 and client.stats.ip_dropped == 1
    link.run()
    assert client.ip_up and server.ip_up
    frame = client.send_ip(IP_PACKET)
    assert frame == b"\xff\x03\x00\x21" + IP_PACKET
    assert server.receive_ip(frame) == IP_PACKET
    assert server.receive_ip(b"\x21" + IP_PACKET) == IP_PACKET  # PFC, no address/control
    assert server.receive_ip(bytes.fromhex("ff03c02109010008") + b"abcd") is None  # control: receive()
    back = server.send_ip(IP_PACKET[::-1])
    assert back is not None and client.receive(back, link.now).events == (IpPacket(IP_PACKET[::-1]),)


@pytest.mark.parametrize("closer", ["client", "server"])
def test_terminate_from_either_side(closer: str) -> None:
    link = Link(make_client(), make_server()).start().run()
    side = link.client if closer == "client" else link.server
    other = "server" if closer == "client" else "client"
    link.deliver(side, side.close(link.now, "user hung up"))
    link.run()
    assert link.of(closer, LinkDown) == [LinkDown("user hung up")]
    assert link.of(other, LinkDown) == [LinkDown("the peer sent Terminate-Request")]
    assert len(link.of("client", IpDown)) == 1 and len(link.of("server", IpDown)) == 1
    assert not link.client.ip_up and not link.server.ip_up
    assert link.client.next_deadline() is None and link.server.next_deadline() is None
    assert side.send_ip(IP_PACKET) is None


@pytest.mark.parametrize("auth", ["chap", "pap"])
@pytest.mark.parametrize("drop_every", [3, 4, 5, 6, 7])
@pytest.mark.parametrize(
    ("shared_count", "server_delay"), [(False, 0.0), (True, 1.3)], ids=["each-direction", "both-directions"]
)
def test_lossy_link_converges(auth: str, drop_every: int, shared_count: bool, server_delay: float) -> None:
    """Every n-th frame is lost, counted in each direction or over both; the timers recover.

    Counted over both directions the server starts 1.3 s after the client: with both Restart
    timers firing at the very same instants, a periodic loss can hit the same retransmission
    every round (as it would between two pppd), which no real pair of clocks keeps up.
    """
    link = Link(make_client(), make_server(auth=(auth,)), drop_every=drop_every, shared_count=shared_count)
    link.start(server_delay=server_delay).run()
    assert link.of("client", IpUp) == [IpUp(CLIENT_IP, SERVER_IP, DNS)]
    assert link.of("server", IpUp) == [IpUp(SERVER_IP, CLIENT_IP, DNS)]
    assert link.dropped > 0 or drop_every == 7
    assert link.dropped == 0 or link.client.stats.retransmits + link.server.stats.retransmits > 0
    assert len(link.of("client", AuthSucceeded)) == 1 and len(link.of("server", AuthRequest)) == 1


def test_duplicates_in_opened_do_not_renegotiate() -> None:
    """A repeated Configure-Request (our Ack was lost) is Acked again; a repeated Ack is ignored."""
    client = make_client(random=zeros)
    peer_request = lcp(1, 7, bytes.fromhex("05061a2b3c4d"))
    out = open_lcp(client, peer_request)
    assert client.lcp.state is State.OPENED
    assert client.receive(peer_request, 1.0).frames == (lcp(2, 7, bytes.fromhex("05061a2b3c4d")),)
    our_request = out.frames[0]
    assert client.receive(our_request[:4] + b"\x02" + our_request[5:], 1.0) == Output()
    assert client.lcp.state is State.OPENED and client.phase is Phase.NETWORK
    assert len([e for e in out.events if isinstance(e, LinkUp)]) == 1


def test_silent_peer_gives_up_after_max_configure() -> None:
    client = make_client()
    frames = list(client.start(0.0).frames)
    events: list[Event] = []
    while (deadline := client.next_deadline()) is not None:
        out = client.poll(deadline)
        frames += out.frames
        events += out.events
    assert len(frames) == 10 and all(f[4] == Code.CONFIGURE_REQUEST for f in frames)
    assert len({f[5] for f in frames}) == 1  # retransmissions keep the Identifier (as pppd)
    assert events == [LinkDown("LCP: no answer to 10 Configure-Requests")]
    assert deadline is None and client.lcp.state is State.STOPPED
    assert client.stats.retransmits == 9


def test_nak_loop_ends_in_reject_at_max_failure() -> None:
    server = make_server(random=zeros)
    server.start(0.0)
    answers = [server.receive(lcp(1, i, bytes.fromhex("050600000000")), 0.1).frames for i in range(1, 8)]
    # A Magic-Number of zero is always Nak'd (RFC 1661 6.4) -- five times, then Rejected (4.6).
    assert [a[0][4] for a in answers] == [3, 3, 3, 3, 3, 4, 4]
    assert answers[5] == (lcp(4, 6, bytes.fromhex("050600000000")),)


def test_unknown_protocols_get_protocol_reject() -> None:
    link = Link(make_client(), make_server()).start().run()
    server = link.server
    ipv6cp = bytes.fromhex("ff038057 01 01 000e 010a0011223344556677")
    out = server.receive(ipv6cp, link.now)
    assert len(out.frames) == 1
    reject = out.frames[0]
    # Code 8, Length 20, Rejected-Protocol 80 57, then the rejected information
    assert reject[:4] == b"\xff\x03\xc0\x21" and reject[4] == 8 and reject[6:8] == b"\x00\x14"
    assert reject[8:] == bytes.fromhex("8057 0101000e010a0011223344556677")
    ccp = server.receive(bytes.fromhex("80fd 01 01 0004"), link.now).frames[0]  # no FF 03
    assert ccp[4] == 8 and ccp[8:] == bytes.fromhex("80fd 01010004")
    assert server.stats.protocol_rejected == 2
    # Before LCP is Opened unknown protocols are silently discarded.
    fresh = make_server()
    fresh.start(0.0)
    assert fresh.receive(ipv6cp, 0.0) == Output()


def test_protocol_reject_of_ipcp_ends_the_link() -> None:
    link = Link(make_client(), make_server()).start().run()
    out = link.client.receive(lcp(8, 0x44, bytes.fromhex("8021 0101000a03060a000001")), link.now)
    assert IpDown() in out.events
    link.deliver(link.client, out)
    link.run(until=link.now + 60)
    assert link.of("client", LinkDown) == [LinkDown("IPCP did not come up")]


def test_echo_and_discard_and_code_reject() -> None:
    link = Link(make_client(), make_server()).start().run()
    server = link.server
    echo = server.receive(lcp(9, 5, bytes.fromhex("0a0b0c0d") + b"hello"), link.now)
    assert echo.frames == (lcp(10, 5, bytes.fromhex("01020304") + b"hello"),)  # our Magic-Number
    assert server.receive(lcp(11, 6, bytes.fromhex("0a0b0c0d")), link.now) == Output()
    assert server.receive(lcp(12, 7, bytes.fromhex("0a0b0c0d") + b"pppd 2.4.9"), link.now) == Output()
    unknown = lcp(0x20, 8, b"??")
    rejected = server.receive(unknown, link.now).frames
    assert len(rejected) == 1 and rejected[0][4] == Code.CODE_REJECT and rejected[0][8:] == unknown[4:]
    assert server.ip_up  # none of that disturbed the link


def test_keepalive_loss_detected() -> None:
    client = make_client(keepalive=10.0, keepalive_misses=3)
    link = Link(client, make_server()).start().run(until=5.0)
    assert client.ip_up
    link.run(until=45.0)  # the server answers our echoes: nothing happens
    assert client.ip_up and link.of("client", LinkDown) == []
    assert any(f[4] == Code.ECHO_REQUEST for f in link.sent["client"] if f[:4] == b"\xff\x03\xc0\x21")
    link.blocked.add("server")  # the server goes silent
    link.run(until=200.0)
    assert link.of("client", LinkDown) == [LinkDown("keepalive: 3 Echo-Requests unanswered")]
    assert link.of("client", IpDown) == [IpDown()]


def test_loopback_detected() -> None:
    looped = make_client(random=seeded(3))
    frames = list(looped.start(0.0).frames)
    events: list[Event] = []
    for _ in range(100):
        if not frames:
            break
        out = looped.receive(frames.pop(0), 0.0)
        frames += out.frames
        events += out.events
    assert events[:1] == [LinkDown("loopback detected (the peer sends our own Magic-Number)")]
    assert looped.lcp.state in (State.CLOSING, State.CLOSED)


def test_identical_magic_resolved_by_nak() -> None:
    """Two peers that start with the same Magic-Number pick new ones and still come up."""
    link = Link(make_client(magic=0x55555555), make_server(magic=0x55555555)).start().run()
    assert link.of("client", IpUp) and link.of("server", IpUp)


def test_server_rejects_ip_compression() -> None:
    link = Link(make_client(), make_server()).start().run()
    vj = bytes.fromhex("ff038021 01 33 0010 0206002d0f01 03060a000002")
    out = link.server.receive(vj, link.now)  # in Opened: IPCP renegotiates (RFC 1661 4.1), IP goes down
    assert bytes.fromhex("ff038021 04 33 000a 0206002d0f01") in out.frames
    assert IpDown() in out.events


def test_secrets_stay_out_of_repr() -> None:
    client = make_client(password="hunter2")
    assert "hunter2" not in repr(client) and "hunter2" not in repr(vars(client).get("stats"))


# ------------------------------------------------------------------ random input


def _phases() -> list[tuple[str, Callable[[], tuple[Ppp, float]]]]:
    def fresh(side: str) -> Callable[[], tuple[Ppp, float]]:
        def build() -> tuple[Ppp, float]:
            p = make_client() if side == "client" else make_server()
            p.start(0.0)
            return p, 0.0

        return build

    def linked(side: str, answer_auth: bool, until: float) -> Callable[[], tuple[Ppp, float]]:
        def build() -> tuple[Ppp, float]:
            link = Link(make_client(), make_server(), answer_auth=answer_auth).start().run(until)
            return (link.client if side == "client" else link.server), link.now

        return build

    def closing(side: str) -> Callable[[], tuple[Ppp, float]]:
        def build() -> tuple[Ppp, float]:
            link = Link(make_client(), make_server()).start().run()
            p = link.client if side == "client" else link.server
            p.close(link.now)
            return p, link.now

        return build

    phases: list[tuple[str, Callable[[], tuple[Ppp, float]]]] = []
    for side in ("client", "server"):
        phases += [
            (
                f"{side}-initial",
                lambda side=side: (make_client() if side == "client" else make_server(), 0.0),
            ),
            (f"{side}-establish", fresh(side)),
            (f"{side}-authenticate", linked(side, False, 1.0)),
            (f"{side}-network", linked(side, True, 120.0)),
            (f"{side}-closing", closing(side)),
        ]
    return phases


PHASES = _phases()
PROTOCOLS = [0xC021, 0xC023, 0xC223, 0x8021, 0x0021, 0x8057, 0x80FD, 0x0057]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    phase=st.sampled_from(range(len(PHASES))),
    frames=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda proto, code, ident, options: (
                    b"\xff\x03"
                    + struct.pack("!H", proto)
                    + struct.pack("!BBH", code, ident, 4 + sum(2 + len(v) for _, v in options))
                    + b"".join(bytes((k, 2 + len(v))) + v for k, v in options)
                ),
                st.sampled_from([0xC021, 0x8021]),
                st.integers(1, 4),
                st.integers(0, 255),
                st.lists(
                    st.tuples(
                        st.sampled_from([1, 2, 3, 4, 5, 7, 8, 129, 131, 0, 255]),
                        st.one_of(
                            st.binary(max_size=6),
                            st.sampled_from([b"\xc2\x23\x05", b"\xc0\x23", b"\x00\x00\x00\x00"]),
                        ),
                    ),
                    max_size=5,
                ),
            ),
            st.builds(
                lambda proto, code, ident, body, fix: (
                    b"\xff\x03"
                    + struct.pack("!H", proto)
                    + struct.pack("!BBH", code, ident, 4 + len(body) if fix else len(body))
                    + body
                ),
                st.sampled_from(PROTOCOLS),
                st.integers(0, 14),
                st.integers(0, 255),
                st.binary(max_size=30),
                st.booleans(),
            ),
        ),
        max_size=6,
    ),
    delay=st.floats(0, 20),
)
def test_random_frames_never_raise(phase: int, frames: list[bytes], delay: float) -> None:
    p, now = PHASES[phase][1]()
    for frame in frames:
        out = p.receive(frame, now)
        assert isinstance(out, Output)
        p.receive_ip(frame)
    p.poll(now + delay)
    p.next_deadline()
