"""Sans-I/O userspace PPP for L2TP sessions: LCP, PAP/CHAP-MD5, IPCP.

No sockets, threads or clocks: the caller passes frames and ``now`` (seconds, any monotonic
origin) in and gets frames and events out, as in :mod:`tunvpn_l2tp.control`;
the frame and packet codec is :mod:`tunvpn_l2tp.pppframe`.

* framing: each L2TP data message carries one PPP frame (RFC 2661 section 4); we send
  ``FF 03`` + 2-octet protocol + information (synchronous, no flags/escaping/FCS) and accept
  frames without address/control field and with a 1-octet protocol field (RFC 1661 section 6.5/6.6);
* the option negotiation automaton of RFC 1661 section 4, one table (:data:`TRANSITIONS`) shared
  by LCP (RFC 1661) and IPCP (RFC 1332, DNS options of RFC 1877);
* authentication (RFC 1334 PAP, RFC 1994 CHAP with MD5): the server role asks for it and hands
  the peer's credentials to the caller as :class:`AuthRequest` (it holds no secrets); the client
  role answers with its user name and password;
* LCP Echo keepalives, loopback detection through Magic-Number, Protocol-Reject of protocols we
  do not speak (IPv6CP, CCP, ...).

The data path is :meth:`Ppp.send_ip` / :meth:`Ppp.receive_ip` (or the pure
:func:`encapsulate_ip` / :func:`decapsulate`); everything else goes through :meth:`Ppp.receive`,
which never raises on bad input: it counts the frame in :attr:`Ppp.stats` and drops it.

Where we depart from the letter of RFC 1661/1994, to let a lossy link settle:

* a Configure-Request repeated in Opened (same Identifier and options: our Ack was lost) is
  Acked again, and a repeated Configure-Ack in Ack-Rcvd/Opened is ignored, instead of
  renegotiating; Configure-Request retransmissions keep their Identifier (as pppd's do);
* the client retransmits its CHAP Response on the Restart timer until Success/Failure comes
  (the authenticator repeats its answer to a repeated Response), and takes an IPCP packet from
  the authenticator as the Success/Ack it lost.

Not here: compression (CCP, VJ), multilink, IPv6CP, EAP, MS-CHAP, callback, LQR, periodic CHAP
rechallenges by the server (a client answers them), and authenticating ourselves to a client
(only the client role is authenticated).
"""

from __future__ import annotations

import abc
import enum
import logging
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from tunvpn_l2tp.pppframe import (
    ANY_ADDRESS,
    DEFAULT_MRU,
    IP_FRAME_HEADER,
    MIN_MRU,
    AuthMethod,
    ChapCode,
    Code,
    IpcpOption,
    LcpOption,
    MalformedPacket,
    Option,
    Packet,
    PapCode,
    PppError,
    PppUsageError,
    Protocol,
    auth_method,
    auth_option,
    chap_md5_response,
    decapsulate,
    decode_frame,
    decode_options,
    encode_frame,
    encode_options,
    length_prefixed,
    message_text,
)

__all__ = [
    "Role",
    "Phase",
    "State",
    "Event",
    "LinkUp",
    "LinkDown",
    "AuthRequest",
    "AuthSucceeded",
    "AuthFailed",
    "IpUp",
    "IpDown",
    "IpPacket",
    "Output",
    "Stats",
    "Ppp",
    "TRANSITIONS",
]

logger = logging.getLogger(__name__)


class Role(enum.Enum):
    CLIENT = "client"  # the peer being authenticated; learns its address through IPCP
    SERVER = "server"  # the authenticator; assigns the peer's address


class Phase(enum.Enum):
    """RFC 1661 section 3.2."""

    DEAD = "dead"
    ESTABLISH = "establish"
    AUTHENTICATE = "authenticate"
    NETWORK = "network"
    TERMINATE = "terminate"


class State(enum.IntEnum):
    """Automaton states (RFC 1661 section 4.2), numbered as in its state table."""

    INITIAL = 0
    STARTING = 1
    CLOSED = 2
    STOPPED = 3
    CLOSING = 4
    STOPPING = 5
    REQ_SENT = 6
    ACK_RCVD = 7
    ACK_SENT = 8
    OPENED = 9


# ------------------------------------------------------------------ the state table

# RFC 1661 section 4.1, transcribed (the "r", "p" and "x" annotations do not change what we do).
# Columns are the State numbers: 0 Initial, 1 Starting, 2 Closed, 3 Stopped, 4 Closing, 5 Stopping,
# 6 Req-Sent, 7 Ack-Rcvd, 8 Ack-Sent, 9 Opened. A cell is "actions/next-state" or just the next
# state; "-" cannot happen (ignored, counted as unexpected).
_STATE_TABLE = """
event 0     1         2         3             4     5     6         7         8         9
Up    2     irc,scr/6 -         -             -     -     -         -         -         -
Down  -     -         0         tls/1         0     1     1         1         1         tld/1
Open  tls/1 1         irc,scr/6 3             5     5     6         7         8         9
Close 0     tlf/0     2         2             4     4     irc,str/4 irc,str/4 irc,str/4 tld,irc,str/4
TO+   -     -         -         -             str/4 str/5 scr/6     scr/6     scr/8     -
TO-   -     -         -         -             tlf/2 tlf/3 tlf/3     tlf/3     tlf/3     -
RCR+  -     -         sta/2     irc,scr,sca/8 4     5     sca/8     sca,tlu/9 sca/8     tld,scr,sca/8
RCR-  -     -         sta/2     irc,scr,scn/6 4     5     scn/6     scn/7     scn/6     tld,scr,scn/6
RCA   -     -         sta/2     sta/3         4     5     irc/7     scr/6     irc,tlu/9 tld,scr/6
RCN   -     -         sta/2     sta/3         4     5     irc,scr/6 scr/6     irc,scr/8 tld,scr/6
RTR   -     -         sta/2     sta/3         sta/4 sta/5 sta/6     sta/6     sta/6     tld,zrc,sta/5
RTA   -     -         2         3             tlf/2 tlf/3 6         6         8         tld,scr/6
RUC   -     -         scj/2     scj/3         scj/4 scj/5 scj/6     scj/7     scj/8     scj/9
RXJ+  -     -         2         3             4     5     6         6         8         9
RXJ-  -     -         tlf/2     tlf/3         tlf/2 tlf/3 tlf/3     tlf/3     tlf/3     tld,irc,str/5
RXR   -     -         2         3             4     5     6         7         8         ser/9
"""


def _parse_state_table(text: str) -> dict[tuple[State, str], tuple[tuple[str, ...], State]]:
    rows = [line.split() for line in text.strip().splitlines()]
    table: dict[tuple[State, str], tuple[tuple[str, ...], State]] = {}
    for event, *cells in rows[1:]:
        for state, cell in zip(State, cells):
            if cell == "-":
                continue
            actions, _, target = cell.rpartition("/")
            table[state, event] = (tuple(actions.split(",")) if actions else (), State(int(target)))
    return table


TRANSITIONS = _parse_state_table(_STATE_TABLE)
"""(state, event) -> (actions, next state) for every legal pair of RFC 1661 section 4.1."""

# The Restart timer runs in these states only (RFC 1661 section 4.6).
_TIMER_STATES = frozenset({State.CLOSING, State.STOPPING, State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT})
# The states in which our Configure-Request is out or agreed, and the peer's answers count.
_NEGOTIATING = frozenset({State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT, State.OPENED})


# ------------------------------------------------------------------ events and output


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class LinkUp(Event):
    """LCP reached Opened."""

    peer_mru: int
    """The largest information field the peer accepts."""


@dataclass(frozen=True)
class LinkDown(Event):
    """The link is unusable; sent once. A Terminate exchange may still run: keep polling to finish it."""

    reason: str


@dataclass(frozen=True)
class AuthRequest(Event):
    """Server role: the peer's credentials; answer with Ppp.auth_result()."""

    method: AuthMethod
    user: str
    password: str | None = field(default=None, repr=False)
    """PAP only; decoded as UTF-8 with surrogateescape, so ``.encode(errors="surrogateescape")`` is exact."""
    chap_id: int | None = None
    """CHAP only: the Identifier of the Challenge and Response."""
    challenge: bytes | None = None
    """CHAP only: the challenge we sent."""
    response: bytes | None = field(default=None, repr=False)
    """CHAP only: the peer's MD5 value (check it with verify_chap_md5)."""


@dataclass(frozen=True)
class AuthSucceeded(Event):
    message: str
    """The server's message (client role) or the one we sent (server role)."""


@dataclass(frozen=True)
class AuthFailed(Event):
    message: str
    """The server's message (client role) or the one we sent (server role)."""


@dataclass(frozen=True)
class IpUp(Event):
    """IPCP reached Opened."""

    local: IPv4Address
    peer: IPv4Address
    dns: tuple[IPv4Address, ...]
    """Client: the servers the peer gave us; server: the ones we gave the peer."""


@dataclass(frozen=True)
class IpDown(Event):
    pass


@dataclass(frozen=True)
class IpPacket(Event):
    """An IPv4 packet that came through receive() rather than receive_ip()."""

    packet: bytes


@dataclass(frozen=True)
class Output:
    frames: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


@dataclass
class Stats:
    malformed: int = 0
    unexpected: int = 0  # well-formed but not legal now (wrong phase, unknown state-table pair)
    bad_identifier: int = 0  # replies that match no request of ours
    protocol_rejected: int = 0  # frames of protocols we do not speak (Protocol-Reject sent)
    ip_dropped: int = 0  # IPv4 packets before IPCP is Opened, either direction
    retransmits: int = 0
    echo_requests_answered: int = 0
    stale_auth_results: int = 0


# ------------------------------------------------------------------ the automaton

_ACK, _NAK, _REJ = Code.CONFIGURE_ACK, Code.CONFIGURE_NAK, Code.CONFIGURE_REJECT


class _Automaton(abc.ABC):
    """RFC 1661 section 4 for one protocol; subclasses supply the options and the layer actions."""

    protocol: Protocol
    name: str

    def __init__(self, ppp: Ppp) -> None:
        self.ppp = ppp
        self.state = State.INITIAL
        self.restart_counter = 0
        self.deadline: float | None = None
        self.naks_sent = 0
        self._identifier = ppp.random(1)[0]
        self._request: Packet | None = None  # our last Configure-Request
        self._response: Packet | None = None  # our answer to the peer's, for sca/scn
        self._received: Packet | None = None  # what the current event came with
        self._acked_request: Packet | None = None  # the peer's request we last Ack'd

    # -- hooks

    @abc.abstractmethod
    def request_options(self) -> list[Option]:
        """The options of our Configure-Request."""

    @abc.abstractmethod
    def check_option(self, kind: int, value: bytes) -> tuple[Code, bytes]:
        """(ACK, value) / (NAK, suggested value) / (REJ, value) for one option of the peer's."""

    # the optional hooks below do nothing unless a layer has something to do

    def accept_request(self, options: list[Option]) -> None:
        """We Ack the peer's options: commit them."""
        return None

    def acked(self, options: list[Option]) -> None:
        """The peer Ack'd our request."""
        return None

    def nakked(self, options: list[Option]) -> None:
        """The peer Nak'd our request: take its suggestions."""
        return None

    def rejected(self, options: list[Option]) -> None:
        """The peer rejected options of our request: stop asking for them."""
        return None

    def layer_up(self, now: float) -> None:
        """This-Layer-Up (RFC 1661 section 4.4, tlu)."""
        return None

    def gave_up(self, reason: str) -> None:
        """The Restart timer ran out while negotiating (before TO-)."""
        return None

    def layer_down(self, now: float) -> None:
        """This-Layer-Down (tld)."""
        return None

    def layer_finished(self, now: float) -> None:
        """This-Layer-Finished (tlf)."""
        return None

    def extended_code(self, packet: Packet, now: float) -> str | None:
        """The state-table event for a code beyond 7, or None for an unknown code (RUC)."""
        return None

    # -- events from outside

    def open(self, now: float) -> None:
        self.naks_sent = 0
        self.signal("Open", now)

    def up(self, now: float) -> None:
        self.signal("Up", now)

    def down(self, now: float) -> None:
        self.signal("Down", now)

    def close(self, now: float) -> None:
        self.signal("Close", now)

    def timeout(self, now: float) -> None:
        self.deadline = None
        if self.restart_counter > 0:
            self.ppp.stats.retransmits += 1
            self.signal("TO+", now)
        else:
            if self.state in (State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT):
                self.gave_up(f"{self.name}: no answer to {self.ppp.max_configure} Configure-Requests")
            self.signal("TO-", now)

    def receive(self, packet: Packet, now: float) -> None:
        self._received = packet
        code = packet.code
        if code == Code.CONFIGURE_REQUEST:
            options = decode_options(packet.data)
            if self.state is State.OPENED and packet == self._acked_request and self._response:
                # A retransmission (same Identifier, same options): our Ack was lost. Acking it
                # again, rather than renegotiating as the state table says, lets a lossy link settle.
                self.send(self._response)
                return
            answer, answer_options = self._answer(options)
            self._response = Packet(answer, packet.identifier, encode_options(answer_options))
            if answer is _ACK and self.state in _NEGOTIATING | {State.STOPPED}:
                self.accept_request(options)
            self.signal("RCR+" if answer is _ACK else "RCR-", now)
        elif code in (_ACK, _NAK, _REJ):
            options = decode_options(packet.data)
            request = self._request
            if request is None or packet.identifier != request.identifier:
                self.ppp.stats.bad_identifier += 1
                return
            if code == _ACK:
                if packet.data != request.data:
                    self.ppp.stats.bad_identifier += 1  # RFC 1661 5.2: must match exactly
                    return
                if self.state in (State.ACK_RCVD, State.OPENED):
                    # Already Ack'd: the peer answered both copies of a retransmitted request.
                    # (The state table would restart negotiation; a duplicate is no reason to.)
                    self.ppp.stats.unexpected += 1
                    return
                if self.state in (State.REQ_SENT, State.ACK_SENT):
                    self.acked(options)
                self.signal("RCA", now)
                return
            if self.state in _NEGOTIATING:  # our next Configure-Request takes the answer into account
                if code == _NAK:
                    self.nakked(options)
                else:
                    self.rejected(options)
            self.signal("RCN", now)
        elif code == Code.TERMINATE_REQUEST:
            self.signal("RTR", now)
        elif code == Code.TERMINATE_ACK:
            self.signal("RTA", now)
        elif code == Code.CODE_REJECT:
            rejected = packet.data[0] if packet.data else 0
            # Rejecting codes 1-7 makes the protocol unusable; anything else is survivable.
            self.signal("RXJ-" if Code.CONFIGURE_REQUEST <= rejected <= Code.CODE_REJECT else "RXJ+", now)
        else:
            event = self.extended_code(packet, now)
            self.signal(event or "RUC", now)

    # -- the engine

    def signal(self, event: str, now: float) -> None:
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            self.ppp.stats.unexpected += 1
            return
        actions, target = entry
        if target is not self.state:
            logger.debug("%s %s: %s -> %s", self.name, event, self.state.name, target.name)
        # The state changes first so that layer actions see where we are going.
        self.state = target
        if target not in _TIMER_STATES:
            self.deadline = None
        for action in actions:
            if action == "irc":
                terminate = "str" in actions
                self.restart_counter = self.ppp.max_terminate if terminate else self.ppp.max_configure
            elif action == "zrc":
                self.restart_counter = 0
                self.deadline = now + self.ppp.restart_interval
            elif action == "scr":
                data = encode_options(self.request_options())
                # A retransmission keeps its Identifier, as pppd's do: the peer can tell it from a
                # restart (RFC 1661 5.1 asks for a new one only when the options change).
                if event == "TO+" and self._request is not None and self._request.data == data:
                    identifier = self._request.identifier
                else:
                    self._identifier = identifier = (self._identifier + 1) & 0xFF
                self._request = Packet(Code.CONFIGURE_REQUEST, identifier, data)
                self._send_counted(self._request, now)
            elif action == "str":
                self._identifier = (self._identifier + 1) & 0xFF
                self._send_counted(Packet(Code.TERMINATE_REQUEST, self._identifier), now)
            elif action in ("sca", "scn"):
                assert self._response is not None
                if action == "sca":
                    self.naks_sent = 0
                    self._acked_request = self._received
                elif self._response.code == _NAK:
                    self.naks_sent += 1  # Rejects do not count towards Max-Failure
                self.send(self._response)
            elif action == "sta":
                received = self._received
                self.send(Packet(Code.TERMINATE_ACK, received.identifier if received else self._identifier))
            elif action == "scj":
                rejected = self._received.encode() if self._received else b""
                self.send(self.reject_packet(Code.CODE_REJECT, rejected))
            elif action == "ser":
                self.ppp._echo_reply(self._received)
            elif action == "tlu":
                self.layer_up(now)
            elif action == "tld":
                self.layer_down(now)
            elif action == "tlf":
                self.layer_finished(now)
            # tls (this-layer-started): the lower layer, the L2TP session, is already up.

    def _answer(self, options: list[Option]) -> tuple[Code, list[Option]]:
        """RFC 1661 section 5.2-5.4: Reject beats Nak beats Ack; Naks turn into Rejects after Max-Failure."""
        rejects: list[Option] = []
        naks: list[tuple[Option, Option]] = []
        for kind, value in options:
            verdict, suggestion = self.check_option(kind, value)
            if verdict is _REJ:
                rejects.append((kind, value))
            elif verdict is _NAK:
                naks.append(((kind, value), (kind, suggestion)))
        if rejects:
            return _REJ, rejects
        if naks and self.naks_sent >= self.ppp.max_failure:
            return _REJ, [original for original, _ in naks]
        if naks:
            return _NAK, [suggested for _, suggested in naks]
        return _ACK, options

    def reject_packet(self, code: Code, rejected: bytes, prefix: bytes = b"") -> Packet:
        """Code-/Protocol-Reject carrying as much of the rejected packet as the peer's MRU allows."""
        self._identifier = (self._identifier + 1) & 0xFF
        room = max(0, self.ppp.peer_mru - 4 - len(prefix))
        return Packet(code, self._identifier, prefix + rejected[:room])

    def send(self, packet: Packet) -> None:
        self.ppp._frames.append(encode_frame(self.protocol, packet.encode()))

    def _send_counted(self, packet: Packet, now: float) -> None:
        self.restart_counter -= 1
        self.deadline = now + self.ppp.restart_interval
        self.send(packet)


class _Lcp(_Automaton):
    protocol = Protocol.LCP
    name = "LCP"

    def __init__(self, ppp: Ppp, mru: int, magic: int) -> None:
        super().__init__(ppp)
        self.want_mru: int | None = mru if mru != DEFAULT_MRU else None
        self.want_magic: int | None = magic or None
        self.want_auth: AuthMethod | None = ppp.auth[0] if ppp.role is Role.SERVER and ppp.auth else None
        self.auth_refused = False
        self.loopbacks = 0

    def request_options(self) -> list[Option]:
        options: list[Option] = []
        if self.want_mru is not None:
            options.append((LcpOption.MRU, struct.pack("!H", self.want_mru)))
        if self.want_auth is not None:
            options.append(auth_option(self.want_auth))
        if self.want_magic is not None:
            options.append((LcpOption.MAGIC_NUMBER, struct.pack("!I", self.want_magic)))
        return options

    def check_option(self, kind: int, value: bytes) -> tuple[Code, bytes]:
        ppp = self.ppp
        if kind == LcpOption.MRU and len(value) == 2:
            if struct.unpack("!H", value)[0] < MIN_MRU:
                return _NAK, struct.pack("!H", MIN_MRU)
            return _ACK, value
        if kind == LcpOption.ACCM and len(value) == 4:
            return _ACK, value
        if kind == LcpOption.MAGIC_NUMBER and len(value) == 4:
            (magic,) = struct.unpack("!I", value)
            if magic == 0:  # RFC 1661 section 6.4: zero is illegal and always Nak'd
                return _NAK, struct.pack("!I", ppp._new_magic())
            if magic == self.want_magic:
                # Our own number: looped back, or a coincidence a new number resolves (6.4).
                self.loopbacks += 1
                if self.loopbacks >= ppp.max_failure:
                    ppp._fail_later("loopback detected (the peer sends our own Magic-Number)")
                self.want_magic = ppp._new_magic()
                return _NAK, struct.pack("!I", ppp._new_magic())
            return _ACK, value
        if kind == LcpOption.AUTH_PROTOCOL and ppp.role is Role.CLIENT and len(value) >= 2:
            if auth_method(value) in ppp.auth:
                return _ACK, value
            if ppp.auth:  # e.g. MS-CHAPv2 or CHAP-SHA1: suggest what we can do
                return _NAK, auth_option(ppp.auth[0])[1]
        return _REJ, value  # unknown, wrong length, PFC/ACFC, or asking the server to authenticate

    def accept_request(self, options: list[Option]) -> None:
        ppp = self.ppp
        ppp.peer_mru = DEFAULT_MRU
        ppp.peer_auth = None
        for kind, value in options:
            if kind == LcpOption.MRU:
                ppp.peer_mru = struct.unpack("!H", value)[0]
            elif kind == LcpOption.AUTH_PROTOCOL:
                ppp.peer_auth = auth_method(value)
            elif kind == LcpOption.MAGIC_NUMBER:
                ppp.peer_magic = struct.unpack("!I", value)[0]

    def acked(self, options: list[Option]) -> None:
        self.ppp.our_auth = self.want_auth

    def nakked(self, options: list[Option]) -> None:
        for kind, value in options:
            if kind == LcpOption.MRU and len(value) == 2 and self.want_mru is not None:
                self.want_mru = max(MIN_MRU, struct.unpack("!H", value)[0])
            elif kind == LcpOption.MAGIC_NUMBER and self.want_magic is not None:
                self.want_magic = self.ppp._new_magic()
            elif kind == LcpOption.AUTH_PROTOCOL and self.want_auth is not None:
                suggested = auth_method(value)
                if suggested in self.ppp.auth:  # RFC 1661 6.2: switch to another we allow
                    self.want_auth = suggested

    def rejected(self, options: list[Option]) -> None:
        for kind, _ in options:
            if kind == LcpOption.MRU:
                self.want_mru = None
            elif kind == LcpOption.MAGIC_NUMBER:
                self.want_magic = None
            elif kind == LcpOption.AUTH_PROTOCOL and self.want_auth is not None:
                self.want_auth = None
                self.auth_refused = True

    def receive(self, packet: Packet, now: float) -> None:
        if packet.code == Code.TERMINATE_REQUEST and self.state is State.OPENED:
            reason = "the peer sent Terminate-Request"
            self.ppp.phase = Phase.TERMINATE
            self.ppp._report_down(f"{reason}: {message_text(packet.data)}" if packet.data else reason)
        super().receive(packet, now)

    def gave_up(self, reason: str) -> None:
        self.ppp._report_down(reason)

    def layer_up(self, now: float) -> None:
        self.loopbacks = 0
        self.ppp._link_up(now)

    def layer_down(self, now: float) -> None:
        self.ppp._link_down(now)

    def layer_finished(self, now: float) -> None:
        self.ppp._report_down("LCP finished")
        self.ppp.phase = Phase.DEAD

    def extended_code(self, packet: Packet, now: float) -> str | None:
        if packet.code == Code.PROTOCOL_REJECT:
            if self.state is State.OPENED:
                self.ppp._protocol_rejected(packet, now)
            return "RXR"
        if packet.code in (Code.ECHO_REQUEST, Code.ECHO_REPLY, Code.DISCARD_REQUEST):
            return "RXR"
        if packet.code in (Code.IDENTIFICATION, Code.TIME_REMAINING):
            return "RXJ+"  # informational (RFC 1570): no action, no Code-Reject
        return None


class _Ipcp(_Automaton):
    protocol = Protocol.IPCP
    name = "IPCP"

    def __init__(self, ppp: Ppp) -> None:
        super().__init__(ppp)
        server = ppp.role is Role.SERVER
        self.want_address: IPv4Address | None = ppp.local_address if server else ANY_ADDRESS
        self.want_dns: dict[int, IPv4Address] = (
            {}
            if server or not ppp.request_dns
            else {IpcpOption.PRIMARY_DNS: ANY_ADDRESS, IpcpOption.SECONDARY_DNS: ANY_ADDRESS}
        )
        self.acked_address: IPv4Address | None = None
        self.acked_dns: tuple[IPv4Address, ...] = ()

    def request_options(self) -> list[Option]:
        options: list[Option] = []
        if self.want_address is not None:
            options.append((IpcpOption.IP_ADDRESS, self.want_address.packed))
        options += [(kind, address.packed) for kind, address in self.want_dns.items()]
        return options

    def check_option(self, kind: int, value: bytes) -> tuple[Code, bytes]:
        ppp = self.ppp
        if len(value) != 4:
            return _REJ, value
        if kind == IpcpOption.IP_ADDRESS:
            if ppp.role is Role.CLIENT:  # the server's own address
                return (_REJ if value == ANY_ADDRESS.packed else _ACK), value
            assigned = ppp.peer_address
            if assigned is None:
                return _REJ, value
            return (_ACK if value == assigned.packed else _NAK), assigned.packed
        if kind in (IpcpOption.PRIMARY_DNS, IpcpOption.SECONDARY_DNS) and ppp.role is Role.SERVER:
            index = 0 if kind == IpcpOption.PRIMARY_DNS else 1
            if index >= len(ppp.dns):
                return _REJ, value
            server = ppp.dns[index].packed
            return (_ACK if value == server else _NAK), server
        return _REJ, value  # IP-Compression-Protocol, NBNS, ...

    def accept_request(self, options: list[Option]) -> None:
        for kind, value in options:
            if kind == IpcpOption.IP_ADDRESS and self.ppp.role is Role.CLIENT:
                self.ppp.peer_address = IPv4Address(value)

    def acked(self, options: list[Option]) -> None:
        self.acked_address = self.want_address
        self.acked_dns = tuple(a for a in self.want_dns.values() if a != ANY_ADDRESS)

    def nakked(self, options: list[Option]) -> None:
        for kind, value in options:
            if len(value) != 4:
                continue
            if kind == IpcpOption.IP_ADDRESS and self.ppp.role is Role.CLIENT:
                self.want_address = IPv4Address(value)
            elif kind in self.want_dns:
                self.want_dns[kind] = IPv4Address(value)

    def rejected(self, options: list[Option]) -> None:
        for kind, _ in options:
            if kind == IpcpOption.IP_ADDRESS:
                self.want_address = None
            self.want_dns.pop(kind, None)  # RFC 1877: a server without DNS to give

    def layer_up(self, now: float) -> None:
        self.ppp._ip_up()

    def layer_down(self, now: float) -> None:
        self.ppp._ip_down()

    def gave_up(self, reason: str) -> None:
        self.ppp._fail_later(reason)

    def layer_finished(self, now: float) -> None:
        if self.ppp.lcp.state is State.OPENED:
            self.ppp._fail_later("IPCP did not come up")


# ------------------------------------------------------------------ the link


class Ppp:
    """One PPP link over one L2TP session."""

    # the authentication phase's state, set by _reset_auth()
    _auth_deadline: float | None
    _auth_tries: int
    _auth_identifier: int
    _challenge: bytes
    _auth_pending: bool  # server: AuthRequest out, no auth_result yet
    _auth_answer: tuple[Protocol, int, bytes] | None  # server: for repeats
    _auth_retransmit: Packet | None  # client: Authenticate-Request or Response
    _auth_done: bool

    def __init__(
        self,
        role: Role,
        *,
        user: str = "",
        password: str = "",
        auth: Sequence[str] = ("chap", "pap"),
        local_address: IPv4Address | None = None,
        peer_address: IPv4Address | None = None,
        dns: Sequence[IPv4Address] = (),
        request_dns: bool = True,
        mru: int = 1400,
        magic: int | None = None,
        name: str = "tunvpn",
        keepalive: float | None = None,
        keepalive_misses: int = 3,
        restart_interval: float = 3.0,
        max_configure: int = 10,
        max_terminate: int = 2,
        max_failure: int = 5,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        :param auth: server: the methods we request, preferred first ("chap" = CHAP-MD5; empty: no
            authentication); client: the methods we agree to.
        :param local_address: server: our IPCP address (required); client: unused.
        :param peer_address: server: the address we assign (or give it in auth_result()).
        :param dns: server: the DNS servers we hand out (RFC 1877), at most two.
        :param magic: our Magic-Number (default: random; 0: none, no loopback detection).
        :param name: server: the Name field of our CHAP Challenge.
        :param keepalive: send an LCP Echo-Request after this many idle seconds; the link is down
            after ``keepalive_misses`` unanswered ones. None: no keepalives (we still answer).
        :param random: the source of Magic-Numbers, CHAP challenges and identifiers.
        """
        self.role = role
        self.auth = tuple(AuthMethod(method) for method in auth)
        if role is Role.SERVER and local_address is None:
            raise PppUsageError("the server role needs local_address")
        if not MIN_MRU <= mru <= 0xFFFF:
            raise PppUsageError(f"MRU {mru} out of range")
        self.user = user
        self._password = password  # never logged, never in repr
        self.local_address = local_address
        self.peer_address = peer_address
        self.dns = tuple(dns)[:2]
        self.request_dns = request_dns
        self.name = name
        self.keepalive = keepalive
        self.keepalive_misses = keepalive_misses
        self.restart_interval = restart_interval
        self.max_configure = max_configure
        self.max_terminate = max_terminate
        self.max_failure = max_failure
        self.random = random
        self.stats = Stats()
        self.phase = Phase.DEAD
        self.peer_mru = DEFAULT_MRU
        self.peer_magic = 0
        self.peer_auth: AuthMethod | None = None  # the method the peer requires of us (client)
        self.our_auth: AuthMethod | None = None  # the method the peer agreed to (server)
        self._frames: list[bytes] = []
        self._events: list[Event] = []
        self._failure: str | None = None
        self._down_reported = False
        self._ip_open = False
        self._rx_seen = False
        self._keepalive_deadline: float | None = None
        self._echoes_unanswered = 0
        self._reset_auth()
        self.lcp = _Lcp(self, mru, self._new_magic() if magic is None else magic)
        self.ipcp = _Ipcp(self)

    def __repr__(self) -> str:
        return f"<Ppp {self.role.value} {self.phase.value} LCP {self.lcp.state.name}>"

    # -- the caller's actions

    def start(self, now: float) -> Output:
        """The L2TP session is up: send our LCP Configure-Request."""
        if self.lcp.state is not State.INITIAL:
            raise PppUsageError(f"start() in LCP state {self.lcp.state.name}")
        self.phase = Phase.ESTABLISH
        self.lcp.open(now)
        self.lcp.up(now)
        return self._drain(now)

    def close(self, now: float, reason: str = "closed by us") -> Output:
        """Send Terminate-Request; LinkDown(reason) comes at once."""
        if self.lcp.state in (State.INITIAL, State.STARTING, State.CLOSED, State.STOPPED):
            return self._drain(now)
        self._fail_later(reason)
        return self._drain(now)

    def auth_result(
        self, accepted: bool, message: str, now: float, peer_address: IPv4Address | None = None
    ) -> Output:
        """Server role: the verdict on the last AuthRequest (PAP Ack/Nak, CHAP Success/Failure)."""
        if self.role is not Role.SERVER:
            raise PppUsageError("auth_result() is for the server role")
        if not self._auth_pending:
            self.stats.stale_auth_results += 1  # the link renegotiated or went down meanwhile
            return self._drain(now)
        self._auth_pending = False
        if peer_address is not None:
            self.peer_address = peer_address
        if self.our_auth is AuthMethod.PAP:
            pap = PapCode.AUTHENTICATE_ACK if accepted else PapCode.AUTHENTICATE_NAK
            encoded = message.encode()[:255]
            self._auth_answer = (Protocol.PAP, pap, bytes((len(encoded),)) + encoded)
        else:
            chap = ChapCode.SUCCESS if accepted else ChapCode.FAILURE
            self._auth_answer = (Protocol.CHAP, chap, message.encode())
        self._send_auth_answer(self._auth_identifier)
        if accepted:
            self._events.append(AuthSucceeded(message))
            self._network(now)
        else:
            self._events.append(AuthFailed(message))
            self._fail_later(f"authentication failed: {message}")
        return self._drain(now)

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        deadlines = (self.lcp.deadline, self.ipcp.deadline, self._auth_deadline, self._keepalive_deadline)
        return min((d for d in deadlines if d is not None), default=None)

    def poll(self, now: float) -> Output:
        """Run the timers that are due: retransmissions, give-ups, keepalives."""
        if self.lcp.deadline is not None and self.lcp.deadline <= now:
            self.lcp.timeout(now)
        if self.ipcp.deadline is not None and self.ipcp.deadline <= now:
            self.ipcp.timeout(now)
        if self._auth_deadline is not None and self._auth_deadline <= now:
            self._auth_timeout(now)
        if self._keepalive_deadline is not None and self._keepalive_deadline <= now:
            self._keepalive_timeout(now)
        return self._drain(now)

    @property
    def ip_up(self) -> bool:
        return self._ip_open

    # -- the data path

    def send_ip(self, packet: bytes) -> bytes | None:
        """The frame for an IPv4 packet, or None (counted) before IPCP is Opened."""
        if not self._ip_open:
            self.stats.ip_dropped += 1
            return None
        return IP_FRAME_HEADER + packet

    def receive_ip(self, frame: bytes) -> bytes | None:
        """The IPv4 packet in ``frame`` if IPCP is Opened; None: pass the frame to receive()."""
        if not self._ip_open:
            return None
        payload = decapsulate(frame)
        if payload is not None:
            self._rx_seen = True
        return payload

    # -- the receive path

    def receive(self, frame: bytes, now: float) -> Output:
        """One frame from the peer. Never raises on bad input: counts and drops it."""
        try:
            protocol, information = decode_frame(frame)
            self._rx_seen = True
            self._dispatch(protocol, information, now)
        except PppError as exc:
            self.stats.malformed += 1
            logger.debug("dropped a malformed frame: %s", exc)
        return self._drain(now)

    def _dispatch(self, protocol: int, information: bytes, now: float) -> None:
        lcp_open = self.lcp.state is State.OPENED
        if protocol == Protocol.IPV4:
            if self._ip_open:
                self._events.append(IpPacket(information))
            else:
                self.stats.ip_dropped += 1
        elif protocol == Protocol.LCP:
            if self.lcp.state is State.INITIAL:
                self.stats.unexpected += 1
                return
            self.lcp.receive(Packet.decode(information), now)
        elif not lcp_open:
            self.stats.unexpected += 1  # RFC 1661 section 3.4: silently discard before Opened
        elif protocol == Protocol.PAP:
            self._receive_pap(Packet.decode(information), now)
        elif protocol == Protocol.CHAP:
            self._receive_chap(Packet.decode(information), now)
        elif protocol == Protocol.IPCP:
            packet = Packet.decode(information)
            if self.phase is Phase.AUTHENTICATE and self.role is Role.CLIENT and self._auth_retransmit:
                # The authenticator enters the network phase only after a Success/Ack (RFC 1661
                # 3.5): its IPCP proves the one we have not seen was sent and lost.
                self._client_verdict(True, "", now)
            if self.phase is not Phase.NETWORK:
                self.stats.unexpected += 1  # RFC 1661 section 3.5: no NCPs before authentication
                return
            self.ipcp.receive(packet, now)
        else:
            self.stats.protocol_rejected += 1  # RFC 1661 section 5.7
            rejected = encode_frame(protocol, information)[2:]
            self.lcp.send(self.lcp.reject_packet(Code.PROTOCOL_REJECT, rejected[2:], rejected[:2]))

    # -- LCP layer actions and extended codes

    def _link_up(self, now: float) -> None:
        self._down_reported = False
        self._events.append(LinkUp(self.peer_mru))
        if self.keepalive is not None:
            self._keepalive_deadline = now + self.keepalive
            self._echoes_unanswered = 0
        if self.role is Role.SERVER and self.auth and self.our_auth is None:
            self._fail_later("the peer refused to authenticate")
            return
        self.phase = Phase.AUTHENTICATE
        self._reset_auth()
        if self.role is Role.SERVER and self.our_auth is AuthMethod.CHAP:
            self._auth_identifier = self.random(1)[0]
            self._challenge = self.random(16)
            self._auth_tries = 0
            self._send_challenge(now)
        elif self.role is Role.SERVER and self.our_auth is AuthMethod.PAP:
            self._auth_deadline = now + self.restart_interval * self.max_configure
        elif self.role is Role.CLIENT and self.peer_auth is AuthMethod.PAP:
            self._send_pap_request(now)
        elif self.role is Role.CLIENT and self.peer_auth is AuthMethod.CHAP:
            self._auth_deadline = now + self.restart_interval * self.max_configure
        else:
            self._network(now)

    def _link_down(self, now: float) -> None:
        self.ipcp.down(now)
        self._reset_auth()
        self._keepalive_deadline = None
        if self.phase is not Phase.TERMINATE:
            self.phase = Phase.ESTABLISH

    def _echo_reply(self, request: Packet | None) -> None:
        """ser: answer an Echo-Request in Opened (RFC 1661 section 5.8)."""
        if request is None or request.code != Code.ECHO_REQUEST:
            if request is not None and request.code == Code.ECHO_REPLY:
                self._echoes_unanswered = 0
            return
        if len(request.data) < 4:
            raise MalformedPacket("Echo-Request without Magic-Number")
        self.stats.echo_requests_answered += 1
        magic = struct.pack("!I", self.lcp.want_magic or 0)
        self.lcp.send(Packet(Code.ECHO_REPLY, request.identifier, magic + request.data[4:]))

    def _protocol_rejected(self, packet: Packet, now: float) -> None:
        if len(packet.data) < 2:
            raise MalformedPacket("Protocol-Reject without a protocol")
        (protocol,) = struct.unpack("!H", packet.data[:2])
        if protocol == Protocol.IPCP:
            self.ipcp.signal("RXJ-", now)
        elif protocol in (Protocol.LCP, Protocol.PAP, Protocol.CHAP):
            self._fail_later(f"the peer rejects protocol {protocol:#06x}")

    # -- authentication

    def _reset_auth(self) -> None:
        self._auth_deadline = None
        self._auth_tries = 0
        self._auth_identifier = 0
        self._challenge = b""
        self._auth_pending = False
        self._auth_answer = None
        self._auth_retransmit = None
        self._auth_done = False

    def _send_challenge(self, now: float) -> None:
        """RFC 1994 section 4.1: Value-Size, Value, Name."""
        data = bytes((len(self._challenge),)) + self._challenge + self.name.encode()
        self._send_auth(Protocol.CHAP, Packet(ChapCode.CHALLENGE, self._auth_identifier, data))
        self._auth_tries += 1
        self._auth_deadline = now + self.restart_interval

    def _send_pap_request(self, now: float) -> None:
        """RFC 1334 section 2.2.1: Peer-ID-Length, Peer-ID, Passwd-Length, Password."""
        user, password = self.user.encode()[:255], self._password.encode()[:255]
        self._auth_identifier = (self._auth_identifier + 1) & 0xFF
        data = bytes((len(user),)) + user + bytes((len(password),)) + password
        self._auth_retransmit = Packet(PapCode.AUTHENTICATE_REQUEST, self._auth_identifier, data)
        self._send_auth(Protocol.PAP, self._auth_retransmit)
        self._auth_tries += 1
        self._auth_deadline = now + self.restart_interval

    def _send_auth(self, protocol: Protocol, packet: Packet) -> None:
        self._frames.append(encode_frame(protocol, packet.encode()))

    def _send_auth_answer(self, identifier: int) -> None:
        assert self._auth_answer is not None
        protocol, code, data = self._auth_answer
        self._send_auth(protocol, Packet(code, identifier, data))

    def _auth_timeout(self, now: float) -> None:
        self._auth_deadline = None
        if self._auth_tries >= self.max_configure or (self.role is Role.SERVER and not self._challenge):
            self._fail_later("authentication timed out")
            return
        self.stats.retransmits += 1
        if self.role is Role.SERVER:
            self._send_challenge(now)
        elif self.peer_auth is AuthMethod.PAP:
            self._send_pap_request(now)
        elif self._auth_retransmit is not None:  # a CHAP Response whose Success/Failure is lost
            self._send_auth(Protocol.CHAP, self._auth_retransmit)
            self._auth_tries += 1
            self._auth_deadline = now + self.restart_interval
        else:
            self._fail_later("authentication timed out: no CHAP Challenge")

    def _receive_pap(self, packet: Packet, now: float) -> None:
        if self.role is Role.SERVER and self.our_auth is AuthMethod.PAP:
            if packet.code != PapCode.AUTHENTICATE_REQUEST:
                self.stats.unexpected += 1
                return
            user, pos = length_prefixed(packet.data, 0)
            password, _ = length_prefixed(packet.data, pos)
            if self._auth_answer is not None:  # our Ack/Nak was lost: repeat it (RFC 1334 2.2.1)
                self._send_auth_answer(packet.identifier)
            elif not self._auth_pending:
                self._auth_pending = True
                self._auth_identifier = packet.identifier
                self._auth_deadline = None
                self._events.append(
                    AuthRequest(
                        AuthMethod.PAP,
                        user.decode("utf-8", "surrogateescape"),
                        password=password.decode("utf-8", "surrogateescape"),
                    )
                )
            else:
                self._auth_identifier = packet.identifier  # answer the latest retransmission
        elif self.role is Role.CLIENT and self.peer_auth is AuthMethod.PAP:
            if packet.code not in (PapCode.AUTHENTICATE_ACK, PapCode.AUTHENTICATE_NAK):
                self.stats.unexpected += 1
                return
            message, _ = length_prefixed(packet.data, 0) if packet.data else (b"", 0)
            self._client_verdict(packet.code == PapCode.AUTHENTICATE_ACK, message_text(message), now)
        else:
            self.stats.unexpected += 1

    def _receive_chap(self, packet: Packet, now: float) -> None:
        if self.role is Role.SERVER and self.our_auth is AuthMethod.CHAP:
            if packet.code != ChapCode.RESPONSE or not self._challenge:
                self.stats.unexpected += 1
                return
            if packet.identifier != self._auth_identifier:
                self.stats.bad_identifier += 1
                return
            value, pos = length_prefixed(packet.data, 0)
            if self._auth_answer is not None:  # our Success/Failure was lost: repeat it
                self._send_auth_answer(packet.identifier)
            elif not self._auth_pending:
                self._auth_pending = True
                self._auth_deadline = None
                user = packet.data[pos:].decode("utf-8", "surrogateescape")
                self._events.append(
                    AuthRequest(
                        AuthMethod.CHAP,
                        user,
                        chap_id=packet.identifier,
                        challenge=self._challenge,
                        response=value,
                    )
                )
        elif self.role is Role.CLIENT and self.peer_auth is AuthMethod.CHAP:
            if packet.code == ChapCode.CHALLENGE:
                challenge, _ = length_prefixed(packet.data, 0)
                response = chap_md5_response(packet.identifier, self._password, challenge)
                data = bytes((len(response),)) + response + self.user.encode()
                self._auth_retransmit = Packet(ChapCode.RESPONSE, packet.identifier, data)
                self._send_auth(Protocol.CHAP, self._auth_retransmit)
                if not self._auth_done:
                    self._auth_tries += 1
                    self._auth_deadline = now + self.restart_interval
            elif packet.code in (ChapCode.SUCCESS, ChapCode.FAILURE):
                retransmit = self._auth_retransmit
                if retransmit is None or packet.identifier != retransmit.identifier:
                    self.stats.bad_identifier += 1
                    return
                self._client_verdict(packet.code == ChapCode.SUCCESS, message_text(packet.data), now)
            else:
                self.stats.unexpected += 1
        else:
            self.stats.unexpected += 1

    def _client_verdict(self, success: bool, message: str, now: float) -> None:
        if self._auth_done or self.phase is not Phase.AUTHENTICATE:
            return  # a repeated answer, or one to a rechallenge during the network phase
        self._auth_done = True
        self._auth_deadline = None
        if success:
            self._events.append(AuthSucceeded(message))
            self._network(now)
        else:
            self._events.append(AuthFailed(message))
            self._fail_later(f"authentication failed: {message}")

    # -- the network phase

    def _network(self, now: float) -> None:
        if self.role is Role.SERVER and self.peer_address is None:
            self._fail_later("no address to assign to the peer")
            return
        self.phase = Phase.NETWORK
        if self.ipcp.state is State.INITIAL:
            self.ipcp.open(now)
        self.ipcp.up(now)

    def _ip_up(self) -> None:
        self._ip_open = True
        if self.role is Role.SERVER:
            assert self.local_address is not None and self.peer_address is not None
            event = IpUp(self.local_address, self.peer_address, self.dns)
        else:
            local = self.ipcp.acked_address or ANY_ADDRESS
            event = IpUp(local, self.peer_address or ANY_ADDRESS, self.ipcp.acked_dns)
        logger.info("IP up: local %s, peer %s", event.local, event.peer)
        self._events.append(event)

    def _ip_down(self) -> None:
        if self._ip_open:
            self._ip_open = False
            self._events.append(IpDown())

    # -- keepalive

    def _keepalive_timeout(self, now: float) -> None:
        assert self.keepalive is not None
        self._keepalive_deadline = now + self.keepalive
        if self._rx_seen:
            self._rx_seen = False
            self._echoes_unanswered = 0
            return
        if self._echoes_unanswered >= self.keepalive_misses:
            self._keepalive_deadline = None
            self._fail_later(f"keepalive: {self._echoes_unanswered} Echo-Requests unanswered")
            return
        self._echoes_unanswered += 1
        self.lcp._identifier = (self.lcp._identifier + 1) & 0xFF
        magic = struct.pack("!I", self.lcp.want_magic or 0)
        self.lcp.send(Packet(Code.ECHO_REQUEST, self.lcp._identifier, magic))

    # -- common

    def _new_magic(self) -> int:
        return int.from_bytes(self.random(4), "big") or 1

    def _fail_later(self, reason: str) -> None:
        """Decided inside a layer action: LinkDown and Close run once the automaton has settled."""
        if self._failure is None:
            self._failure = reason

    def _report_down(self, reason: str) -> None:
        if not self._down_reported:
            self._down_reported = True
            logger.info("PPP link down: %s", reason)
            self._events.append(LinkDown(reason))

    def _drain(self, now: float) -> Output:
        while self._failure is not None:
            reason, self._failure = self._failure, None
            self._report_down(reason)
            self.phase = Phase.TERMINATE
            self._keepalive_deadline = None
            self._auth_deadline = None
            self.lcp.close(now)
        frames, events = tuple(self._frames), tuple(self._events)
        self._frames.clear()
        self._events.clear()
        return Output(frames, events)
