"""Sans-I/O L2TP control connections, both roles (RFC 2661).

No sockets, threads or clocks: the caller passes datagrams and ``now`` (seconds, any
monotonic origin) in and gets datagrams and events out.

* the messages themselves (codec, numbers, data messages) are :mod:`tunvpn_l2tp.message`;
* reliable delivery (section 5.8): Ns/Nr, a send window of the peer's Receive Window Size,
  retransmission with exponential back-off, ZLB ACKs, duplicate re-ACK (also for a while after
  the tunnel closed, section 5.7);
* :class:`Tunnel`, one control connection in either :class:`Role`: the LAC initiates the
  tunnel (SCCRQ -> SCCRP -> SCCCN) and incoming calls (ICRQ -> ICRP -> ICCN); the LNS answers
  both. CDN and StopCCN both ways; OCRQ is answered with CDN (no outgoing calls). All legal
  ``(role, state, message)`` triples are in :data:`TRANSITIONS`;
* HELLO keepalives of our own (section 6.5) after ``hello_interval`` seconds of silence;
* tunnel authentication (section 5.1.1) with an optional shared secret: Challenge and
  Challenge Response AVPs, a failed or missing response is StopCCN result 4;
* the gateway's dispatcher over many tunnels from many peers is :mod:`tunvpn_l2tp.dispatch`.

Not here (yet): hidden AVPs (H bit: kept as opaque bytes; a hidden AVP we need to read is
malformed input), outgoing calls (OCRQ/OCRP/OCCN), WEN/SLI, tie breakers, data-message
sequencing (Ns/Nr of data messages are skipped on receive, never sent), and a timeout for a
session whose ICCN never comes.

:meth:`Tunnel.receive` never raises on bad input: it counts the datagram in ``stats`` and
drops it.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from tunvpn_l2tp.message import (
    CHALLENGE_LEN,
    FRAMING_ASYNC,
    FRAMING_SYNC,
    PROTOCOL_VERSION_1_0,
    Avp,
    AvpType,
    CdnResult,
    ControlMessage,
    L2tpError,
    MalformedAvp,
    MessageType,
    NotControl,
    ResultCode,
    StopCcnResult,
    challenge_response,
    decode,
    encode,
    encode_data,
    seq_lt,
)

__all__ = [
    "Role",
    "Tunnel",
    "TunnelState",
    "Session",
    "SessionState",
    "Stats",
    "TRANSITIONS",
    "Output",
    "Event",
    "TunnelEstablished",
    "TunnelClosed",
    "SessionEstablished",
    "SessionClosed",
    "Acked",
    "Received",
]


# ------------------------------------------------------------------ events and output


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Received(Event):
    """Every in-order non-ZLB message, after the state machine has seen it."""

    message: ControlMessage


@dataclass(frozen=True)
class Acked(Event):
    """The peer acknowledged one of our messages."""

    message_type: MessageType
    ns: int
    session_id: int  # the Session ID in the header of the acknowledged message


@dataclass(frozen=True)
class TunnelEstablished(Event):
    """The control connection is up (SCCCN sent by the LAC, received by the LNS)."""

    peer_tunnel_id: int
    peer_host_name: str


@dataclass(frozen=True)
class TunnelClosed(Event):
    """The tunnel is gone; sent at most once per tunnel."""

    reason: str
    result: int | None = None  # the StopCCN result code sent or received, if any


@dataclass(frozen=True)
class SessionEstablished(Event):
    """An incoming call is up (ICCN sent by the LAC, received by the LNS)."""

    local_session_id: int
    peer_session_id: int


@dataclass(frozen=True)
class SessionClosed(Event):
    """A session is gone (CDN either way, or its tunnel closed)."""

    local_session_id: int
    reason: str
    result: int | None = None  # the CDN result code, if any


@dataclass(frozen=True)
class Output:
    """What one call on a Tunnel produced: datagrams for the peer, events for the caller."""

    datagrams: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


# ------------------------------------------------------------------ state machines


class Role(enum.Enum):
    """Which end of the tunnel we are: the LAC sends SCCRQ and ICRQ, the LNS answers them."""

    LAC = "lac"
    LNS = "lns"


class TunnelState(enum.Enum):
    IDLE = "idle"  # LAC: before start(); LNS: waiting for the SCCRQ
    WAIT_CTL_REPLY = "wait-ctl-reply"  # LAC: SCCRQ sent
    WAIT_CTL_CONN = "wait-ctl-conn"  # LNS: SCCRP sent
    ESTABLISHED = "established"
    CLOSING = "closing"  # our StopCCN is out, waiting for its ACK
    CLOSED = "closed"


class SessionState(enum.Enum):
    WAIT_REPLY = "wait-reply"  # LAC: ICRQ sent
    WAIT_CONNECT = "wait-connect"  # LNS: ICRP sent
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass
class Session:
    local_id: int
    call_serial: int
    state: SessionState = SessionState.WAIT_REPLY
    peer_id: int = 0


MAX_QUEUED = 64
"""Our control messages waiting for room in the peer's receive window. A peer that sends
requests faster than it acknowledges our answers gets its next message ignored (not
acknowledged, so it retransmits it) until the queue drains (issue 14: bounded state)."""


@dataclass
class _Pending:
    msg: ControlMessage  # Ns set; Nr re-stamped at each (re)transmission
    deadline: float = 0.0
    tries: int = 0


@dataclass
class Stats:
    malformed: int = 0
    not_control: int = 0
    wrong_tunnel: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    retransmits: int = 0
    unexpected: int = 0
    hellos_sent: int = 0
    auth_failures: int = 0
    queue_full: int = 0  # in-sequence messages not taken while MAX_QUEUED of ours wait


_LIVE_STATES = (
    TunnelState.WAIT_CTL_REPLY,
    TunnelState.WAIT_CTL_CONN,
    TunnelState.ESTABLISHED,
    TunnelState.CLOSING,
)
_SETUP_STATES = (TunnelState.WAIT_CTL_REPLY, TunnelState.WAIT_CTL_CONN)


@dataclass
class Tunnel:
    """One control connection and the incoming-call sessions in it, as LAC or LNS.

    LAC: ``start()`` sends SCCRQ, ``open_session()`` sends ICRQ. LNS: construct it with
    ``role=Role.LNS`` and feed it the peer's SCCRQ (or let :class:`Lns` do that).
    """

    local_tunnel_id: int
    host_name: str = "tunvpn"
    receive_window: int = 4
    initial_timeout: float = 1.0
    max_timeout: float = 8.0
    max_retries: int = 5
    role: Role = Role.LAC
    secret: bytes | None = field(default=None, repr=False)  # tunnel authentication (5.1.1)
    hello_interval: float = 60.0  # section 6.5; 0 turns our HELLOs off
    setup_timeout: float = 60.0  # give up on a tunnel not established by then; 0 = never
    max_sessions: int = 256  # LNS: open sessions per tunnel; more ICRQs get CDN
    random_bytes: Callable[[int], bytes] = field(default=secrets.token_bytes, repr=False)
    state: TunnelState = TunnelState.IDLE
    peer_tunnel_id: int = 0
    peer_host_name: str = ""
    peer_window: int = 4
    sessions: dict[int, Session] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    ns: int = 0  # next Ns to send
    nr: int = 0  # next Ns expected from the peer
    _unacked: list[_Pending] = field(default_factory=list)
    _queued: list[ControlMessage] = field(default_factory=list)
    _ack_owed: bool = False
    _challenge: bytes | None = field(default=None, repr=False)  # the one we sent the peer
    _started: float = 0.0
    _last_received: float = 0.0
    _closed_reported: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.local_tunnel_id <= 0xFFFF:
            raise ValueError("local tunnel ID must be 1..65535")
        if self.secret is not None and not self.secret:
            raise ValueError("an empty secret: pass None for no tunnel authentication")
        if not 0 < self.max_sessions < 0xFFFF:
            raise ValueError("max_sessions must be 1..65534")

    # -- the caller's actions

    def start(self, now: float) -> Output:
        """LAC: send SCCRQ."""
        if self.role is not Role.LAC or self.state is not TunnelState.IDLE:
            raise RuntimeError(f"start() as {self.role.value} in state {self.state.value}")
        self.state = TunnelState.WAIT_CTL_REPLY
        self._started = now
        if self.secret is not None:
            self._challenge = self.random_bytes(CHALLENGE_LEN)
        return self._send(now, self.sccrq())

    def sccrq(self) -> ControlMessage:
        avps = [
            Avp(AvpType.PROTOCOL_VERSION, PROTOCOL_VERSION_1_0),
            Avp(AvpType.HOST_NAME, self.host_name.encode()),
            Avp.u32(AvpType.FRAMING_CAPABILITIES, FRAMING_SYNC | FRAMING_ASYNC),
            Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id),
            Avp.u16(AvpType.RECEIVE_WINDOW_SIZE, self.receive_window),
        ]
        if self._challenge is not None:
            avps.append(Avp(AvpType.CHALLENGE, self._challenge))
        return ControlMessage.build(MessageType.SCCRQ, 0, 0, avps)

    def open_session(self, now: float, local_session_id: int, call_serial: int = 1) -> Output:
        """LAC: send ICRQ for a new incoming call."""
        if self.role is not Role.LAC or self.state is not TunnelState.ESTABLISHED:
            raise RuntimeError(f"open_session() as {self.role.value} in tunnel state {self.state.value}")
        if not 0 < local_session_id <= 0xFFFF or local_session_id in self.sessions:
            raise ValueError(f"bad or used session ID {local_session_id}")
        self.sessions[local_session_id] = Session(local_session_id, call_serial)
        icrq = ControlMessage.build(
            MessageType.ICRQ,
            self.peer_tunnel_id,
            0,
            [
                Avp.u16(AvpType.ASSIGNED_SESSION_ID, local_session_id),
                Avp.u32(AvpType.CALL_SERIAL_NUMBER, call_serial),
            ],
        )
        return self._send(now, icrq)

    def close_session(self, now: float, local_session_id: int, result: int = ResultCode.ADMIN) -> Output:
        """Send CDN; the session is closed at once (CDN needs no reply beyond the ACK)."""
        session = self.sessions.get(local_session_id)
        if session is None or session.state is SessionState.CLOSED:
            return Output()
        session.state = SessionState.CLOSED
        out = self._send(now, self._cdn(session.peer_id, local_session_id, result))
        return Output(out.datagrams, (*out.events, SessionClosed(local_session_id, "closed by us", result)))

    def close(self, now: float, result: int = ResultCode.GENERAL_CLEAR, message: str = "") -> Output:
        """Send StopCCN; TunnelClosed comes when the peer acknowledges it (or retries run out)."""
        if self.state in (TunnelState.CLOSING, TunnelState.CLOSED, TunnelState.IDLE):
            return Output()
        return self._send_stopccn(now, result, message)

    def data_message(self, local_session_id: int, payload: bytes) -> bytes:
        """A data message carrying ``payload`` (a PPP frame) to the peer's end of the session."""
        session = self.sessions.get(local_session_id)
        if session is None or session.state is not SessionState.ESTABLISHED:
            raise ValueError(f"session {local_session_id} is not established")
        return encode_data(self.peer_tunnel_id, session.peer_id, payload)

    def next_deadline(self) -> float | None:
        """When poll() next has something to do, or None."""
        deadlines = [p.deadline for p in self._unacked]
        for due in (self._hello_due(), self._setup_due()):
            if due is not None:
                deadlines.append(due)
        return min(deadlines, default=None)

    def poll(self, now: float) -> Output:
        """Retransmit what is due, send a HELLO after silence; give up after max_retries."""
        datagrams: list[bytes] = []
        for pending in self._unacked:
            if pending.deadline > now:
                continue
            if pending.tries > self.max_retries:
                return self._fail("peer stopped acknowledging (retransmissions exhausted)")
            datagrams.append(self._transmit(pending, now))
            self.stats.retransmits += 1
        events: list[Event] = []
        setup_due = self._setup_due()
        if setup_due is not None and now >= setup_due:
            out = self._stop_for("tunnel setup timed out", now, StopCcnResult.GENERAL_ERROR)
            datagrams += out.datagrams
            events += out.events
        hello_due = self._hello_due()
        if hello_due is not None and now >= hello_due:
            self.stats.hellos_sent += 1
            datagrams += self._send(
                now, ControlMessage.build(MessageType.HELLO, self.peer_tunnel_id, 0)
            ).datagrams
        return Output(tuple(datagrams), tuple(events))

    # -- the receive path

    def receive(self, data: bytes, now: float) -> Output:
        """One datagram from the peer. Never raises on bad input: counts and drops it."""
        try:
            msg = decode(data)
            msg.validate()
        except NotControl:
            self.stats.not_control += 1
            return Output()
        except L2tpError:
            self.stats.malformed += 1
            return Output()
        return self.receive_message(msg, now)

    def receive_message(self, msg: ControlMessage, now: float) -> Output:
        """A message already through decode() and validate() (what Lns uses)."""
        if self.state is TunnelState.IDLE and (
            self.role is Role.LAC or msg.message_type is not MessageType.SCCRQ or msg.ns != 0
        ):
            self.stats.unexpected += 1
            return Output()
        expected_tunnel_id = 0 if self.state is TunnelState.IDLE else self.local_tunnel_id
        if msg.tunnel_id != expected_tunnel_id:
            self.stats.wrong_tunnel += 1
            return Output()
        if self.state is TunnelState.CLOSED:
            # Section 5.7: keep acknowledging retransmissions (of StopCCN, say) for a while.
            if not msg.is_zlb and seq_lt(msg.ns, self.nr):
                self.stats.duplicates += 1
                return Output((self._zlb(),))
            self.stats.unexpected += 1
            return Output()
        self._last_received = now
        events: list[Event] = list(self._process_nr(msg.nr))
        datagrams: list[bytes] = []
        if not msg.is_zlb:
            if msg.ns == self.nr and len(self._queued) >= MAX_QUEUED:
                self.stats.queue_full += 1  # taken later: the peer retransmits it
            elif msg.ns == self.nr:
                self.nr = (self.nr + 1) & 0xFFFF
                self._ack_owed = True
                try:
                    out = self._handle(msg, now)
                except L2tpError:
                    self.stats.malformed += 1
                    out = Output()
                datagrams += out.datagrams
                events += out.events
                events.append(Received(msg))
            elif seq_lt(msg.ns, self.nr):
                self.stats.duplicates += 1  # our ACK was lost: ACK again
                self._ack_owed = True
            else:
                self.stats.out_of_order += 1  # not queued: the peer retransmits it
        datagrams += self._flush(now)
        if self._ack_owed and self.state is not TunnelState.IDLE:
            datagrams.append(self._zlb())
        return Output(tuple(datagrams), tuple(events))

    # -- the state machine: TRANSITIONS (below the class) picks one of these

    def _handle(self, msg: ControlMessage, now: float) -> Output:
        msg_type = msg.message_type
        assert msg_type is not None
        handler = TRANSITIONS.get((self.role, self.state, msg_type))
        if handler is None:
            self.stats.unexpected += 1
            return Output()
        return handler(self, msg, now)

    def _on_sccrq(self, msg: ControlMessage, now: float) -> Output:
        """LNS: answer with SCCRP (section 5.1), challenging the LAC if we hold a secret."""
        self._started = now
        self._take_peer_parameters(msg)
        if msg.raw(AvpType.PROTOCOL_VERSION) != PROTOCOL_VERSION_1_0:
            return self._stop_for("peer speaks another L2TP version", now, StopCcnResult.UNSUPPORTED_VERSION)
        avps = [
            Avp(AvpType.PROTOCOL_VERSION, PROTOCOL_VERSION_1_0),
            Avp.u32(AvpType.FRAMING_CAPABILITIES, FRAMING_SYNC | FRAMING_ASYNC),
            Avp.u32(AvpType.BEARER_CAPABILITIES, 0),
            Avp(AvpType.HOST_NAME, self.host_name.encode()),
            Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id),
            Avp.u16(AvpType.RECEIVE_WINDOW_SIZE, self.receive_window),
        ]
        if msg.find(AvpType.CHALLENGE) is not None:
            if self.secret is None:
                return self._refuse_challenge(now)
            response = challenge_response(MessageType.SCCRP, self.secret, self._peer_challenge(msg))
            avps.append(Avp(AvpType.CHALLENGE_RESPONSE, response))
        if self.secret is not None:
            self._challenge = self.random_bytes(CHALLENGE_LEN)
            avps.append(Avp(AvpType.CHALLENGE, self._challenge))
        self.state = TunnelState.WAIT_CTL_CONN
        return self._send(now, ControlMessage.build(MessageType.SCCRP, self.peer_tunnel_id, 0, avps))

    def _on_sccrp(self, msg: ControlMessage, now: float) -> Output:
        """LAC: check the LNS's answer to our challenge, answer its own, send SCCCN."""
        self._take_peer_parameters(msg)
        if not self._response_ok(msg, MessageType.SCCRP):
            return self._auth_failed(now)
        avps: list[Avp] = []
        if msg.find(AvpType.CHALLENGE) is not None:
            if self.secret is None:
                return self._refuse_challenge(now)
            response = challenge_response(MessageType.SCCCN, self.secret, self._peer_challenge(msg))
            avps.append(Avp(AvpType.CHALLENGE_RESPONSE, response))
        self.state = TunnelState.ESTABLISHED
        out = self._send(now, ControlMessage.build(MessageType.SCCCN, self.peer_tunnel_id, 0, avps))
        return Output(
            out.datagrams, (TunnelEstablished(self.peer_tunnel_id, self.peer_host_name), *out.events)
        )

    def _on_scccn(self, msg: ControlMessage, now: float) -> Output:
        """LNS: the tunnel is up once the LAC has answered our challenge (if we sent one)."""
        if not self._response_ok(msg, MessageType.SCCCN):
            return self._auth_failed(now)
        self.state = TunnelState.ESTABLISHED
        return Output((), (TunnelEstablished(self.peer_tunnel_id, self.peer_host_name),))

    def _on_stopccn(self, msg: ControlMessage, now: float) -> Output:
        result = msg.result_code()[0]
        self._unacked.clear()
        self._queued.clear()
        events: list[Event] = self._close_sessions("tunnel stopped by peer")
        self.state = TunnelState.CLOSED
        # ACK it now: after CLOSED the ZLB at the end of receive() is still sent.
        zlb = self._zlb()
        self._ack_owed = False
        return Output((zlb,), (*events, *self._closed("StopCCN from peer", result)))

    def _on_hello(self, msg: ControlMessage, now: float) -> Output:
        return Output()  # section 6.5: the ZLB that receive() sends is the whole answer

    def _on_icrq(self, msg: ControlMessage, now: float) -> Output:
        """LNS: a new incoming call; answer with ICRP carrying our Session ID (section 5.6)."""
        peer_session_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        call_serial = msg.u32(AvpType.CALL_SERIAL_NUMBER)
        for sid in [s.local_id for s in self.sessions.values() if s.state is SessionState.CLOSED]:
            del self.sessions[sid]
        if len(self.sessions) >= self.max_sessions:
            return self._send(now, self._cdn(peer_session_id, 0, CdnResult.TEMPORARY_NO_RESOURCES))
        session = Session(self._new_session_id(), call_serial, SessionState.WAIT_CONNECT, peer_session_id)
        self.sessions[session.local_id] = session
        icrp = ControlMessage.build(
            MessageType.ICRP,
            self.peer_tunnel_id,
            peer_session_id,
            [Avp.u16(AvpType.ASSIGNED_SESSION_ID, session.local_id)],
        )
        return self._send(now, icrp)

    def _on_icrp(self, msg: ControlMessage, now: float) -> Output:
        """LAC: the LNS took the call; send ICCN."""
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is not SessionState.WAIT_REPLY:
            self.stats.unexpected += 1
            return Output()
        session.peer_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        session.state = SessionState.ESTABLISHED
        iccn = ControlMessage.build(
            MessageType.ICCN,
            self.peer_tunnel_id,
            session.peer_id,
            [
                Avp.u32(AvpType.TX_CONNECT_SPEED, 100_000_000),
                Avp.u32(AvpType.FRAMING_TYPE, FRAMING_SYNC),
            ],
        )
        out = self._send(now, iccn)
        return Output(out.datagrams, (SessionEstablished(session.local_id, session.peer_id), *out.events))

    def _on_iccn(self, msg: ControlMessage, now: float) -> Output:
        """LNS: the call is connected."""
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is not SessionState.WAIT_CONNECT:
            self.stats.unexpected += 1
            return Output()
        session.state = SessionState.ESTABLISHED
        return Output((), (SessionEstablished(session.local_id, session.peer_id),))

    def _on_cdn(self, msg: ControlMessage, now: float) -> Output:
        session = self.sessions.get(msg.session_id)
        if session is None or session.state is SessionState.CLOSED:
            self.stats.unexpected += 1
            return Output()
        session.state = SessionState.CLOSED
        result = msg.result_code()[0]
        return Output((), (SessionClosed(session.local_id, "CDN from peer", result),))

    def _on_ocrq(self, msg: ControlMessage, now: float) -> Output:
        """Outgoing calls are not supported: refuse at once with CDN (section 5.6)."""
        peer_session_id = msg.u16(AvpType.ASSIGNED_SESSION_ID)
        cdn = self._cdn(peer_session_id, 0, CdnResult.PERMANENT_NO_FACILITIES, "outgoing calls not supported")
        return self._send(now, cdn)

    # -- authentication (section 5.1.1)

    def _peer_challenge(self, msg: ControlMessage) -> bytes:
        challenge = msg.raw(AvpType.CHALLENGE)
        if not challenge:
            raise MalformedAvp("empty Challenge")
        return challenge

    def _response_ok(self, msg: ControlMessage, carrier: MessageType) -> bool:
        """True if we sent no challenge, or the peer's response to it is right."""
        if self._challenge is None:
            return True
        assert self.secret is not None
        response = msg.find(AvpType.CHALLENGE_RESPONSE)
        if response is None or response.hidden:
            return False
        expected = challenge_response(carrier, self.secret, self._challenge)
        return hmac.compare_digest(response.value, expected)

    def _auth_failed(self, now: float) -> Output:
        self.stats.auth_failures += 1
        reason = "peer failed tunnel authentication (Challenge Response missing or wrong)"
        return self._stop_for(reason, now, StopCcnResult.NOT_AUTHORIZED)

    def _refuse_challenge(self, now: float) -> Output:
        reason = "peer demands tunnel authentication and we hold no secret"
        return self._stop_for(reason, now, StopCcnResult.GENERAL_ERROR, "no shared secret configured")

    # -- internals

    def _take_peer_parameters(self, msg: ControlMessage) -> None:
        self.peer_tunnel_id = msg.u16(AvpType.ASSIGNED_TUNNEL_ID)
        self.peer_host_name = msg.text(AvpType.HOST_NAME)
        if msg.find(AvpType.RECEIVE_WINDOW_SIZE) is not None:
            self.peer_window = max(1, msg.u16(AvpType.RECEIVE_WINDOW_SIZE))

    def _new_session_id(self) -> int:
        for _ in range(16):
            session_id = int.from_bytes(self.random_bytes(2), "big")
            if session_id and session_id not in self.sessions:
                return session_id
        return next(i for i in range(1, 0x10000) if i not in self.sessions)  # max_sessions < 65535

    def _cdn(
        self, peer_session_id: int, local_session_id: int, result: int, message: str = ""
    ) -> ControlMessage:
        return ControlMessage.build(
            MessageType.CDN,
            self.peer_tunnel_id,
            peer_session_id,
            [Avp.result(result, None, message), Avp.u16(AvpType.ASSIGNED_SESSION_ID, local_session_id)],
        )

    def _hello_due(self) -> float | None:
        if (
            self.state is not TunnelState.ESTABLISHED
            or self.hello_interval <= 0
            or self._unacked  # a message in flight already tells us whether the peer lives
            or self._queued
        ):
            return None
        return self._last_received + self.hello_interval

    def _setup_due(self) -> float | None:
        if self.state not in _SETUP_STATES or self.setup_timeout <= 0:
            return None
        return self._started + self.setup_timeout

    def _close_sessions(self, reason: str) -> list[Event]:
        events: list[Event] = []
        for session in self.sessions.values():
            if session.state is not SessionState.CLOSED:
                session.state = SessionState.CLOSED
                events.append(SessionClosed(session.local_id, reason))
        return events

    def _closed(self, reason: str, result: int | None = None) -> tuple[Event, ...]:
        """The TunnelClosed event, the first time only."""
        if self._closed_reported:
            return ()
        self._closed_reported = True
        return (TunnelClosed(reason, result),)

    def _send_stopccn(self, now: float, result: int, message: str) -> Output:
        events = self._close_sessions("tunnel closing")
        self.state = TunnelState.CLOSING
        stop = ControlMessage.build(
            MessageType.StopCCN,
            self.peer_tunnel_id,
            0,
            [Avp.u16(AvpType.ASSIGNED_TUNNEL_ID, self.local_tunnel_id), Avp.result(result, None, message)],
        )
        out = self._send(now, stop)
        return Output(out.datagrams, (*events, *out.events))

    def _stop_for(self, reason: str, now: float, result: int, message: str = "") -> Output:
        """Tear the tunnel down for a reason of ours: StopCCN now, TunnelClosed now."""
        out = self._send_stopccn(now, result, message)
        return Output(out.datagrams, (*out.events, *self._closed(reason, result)))

    def _fail(self, reason: str) -> Output:
        self._unacked.clear()
        self._queued.clear()
        events = self._close_sessions(reason)
        self.state = TunnelState.CLOSED
        return Output((), (*events, *self._closed(reason)))

    def _process_nr(self, nr: int) -> list[Event]:
        events: list[Event] = []
        keep: list[_Pending] = []
        for pending in self._unacked:
            if seq_lt(pending.msg.ns, nr):
                msg_type = pending.msg.message_type
                assert msg_type is not None
                events.append(Acked(msg_type, pending.msg.ns, pending.msg.session_id))
                if msg_type is MessageType.StopCCN and self.state is TunnelState.CLOSING:
                    self.state = TunnelState.CLOSED
                    events += self._closed("our StopCCN was acknowledged", None)
            else:
                keep.append(pending)
        self._unacked = keep
        return events

    def _send(self, now: float, msg: ControlMessage) -> Output:
        self._queued.append(msg)
        return Output(tuple(self._flush(now)))

    def _flush(self, now: float) -> list[bytes]:
        datagrams: list[bytes] = []
        while self._queued and len(self._unacked) < self.peer_window:
            msg = self._queued.pop(0)
            pending = _Pending(ControlMessage(msg.tunnel_id, msg.session_id, self.ns, 0, msg.avps))
            self.ns = (self.ns + 1) & 0xFFFF
            self._unacked.append(pending)
            datagrams.append(self._transmit(pending, now))
        return datagrams

    def _transmit(self, pending: _Pending, now: float) -> bytes:
        msg = pending.msg
        pending.deadline = now + min(self.initial_timeout * (2**pending.tries), self.max_timeout)
        pending.tries += 1
        self._ack_owed = False  # Nr rides on this message
        return encode(ControlMessage(msg.tunnel_id, msg.session_id, msg.ns, self.nr, msg.avps))

    def _zlb(self) -> bytes:
        self._ack_owed = False
        return encode(ControlMessage(self.peer_tunnel_id, 0, self.ns, self.nr))


Handler = Callable[[Tunnel, ControlMessage, float], Output]


def _transitions() -> dict[tuple[Role, TunnelState, MessageType], Handler]:
    """Every legal (role, tunnel state, message) triple; anything else is counted as unexpected."""
    lac, lns, up = Role.LAC, Role.LNS, TunnelState.ESTABLISHED
    table: dict[tuple[Role, TunnelState, MessageType], Handler] = {
        (lns, TunnelState.IDLE, MessageType.SCCRQ): Tunnel._on_sccrq,
        (lac, TunnelState.WAIT_CTL_REPLY, MessageType.SCCRP): Tunnel._on_sccrp,
        (lns, TunnelState.WAIT_CTL_CONN, MessageType.SCCCN): Tunnel._on_scccn,
        (lns, up, MessageType.ICRQ): Tunnel._on_icrq,
        (lac, up, MessageType.ICRP): Tunnel._on_icrp,
        (lns, up, MessageType.ICCN): Tunnel._on_iccn,
    }
    for role in Role:
        table[(role, up, MessageType.CDN)] = Tunnel._on_cdn
        table[(role, up, MessageType.OCRQ)] = Tunnel._on_ocrq
        for state in _LIVE_STATES:
            table[(role, state, MessageType.StopCCN)] = Tunnel._on_stopccn
            table[(role, state, MessageType.HELLO)] = Tunnel._on_hello
    return table


TRANSITIONS = _transitions()
