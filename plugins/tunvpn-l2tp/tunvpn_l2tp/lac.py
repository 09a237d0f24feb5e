"""The client's L2TP access concentrator (LAC): the thin asyncio shell around the sans-I/O cores.

Runs once the client's SAs are up (``tunvpn_client_protocol``'s ``run``): a UDP socket from
the client's Mode Config address to the announced ``server:port`` (so the kernel routes it
into the IPsec TUN device and the SA for UDP 1701 carries it), one control connection and
one incoming call (:class:`tunvpn_l2tp.control.Tunnel`), PPP as the authenticated peer
(:class:`tunvpn_l2tp.ppp.Ppp`), and a second TUN device with the IPCP address and routes to
the announced networks. When cancelled (the client stops) it says goodbye: LCP
Terminate-Request, CDN and StopCCN, while the SA is still up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunvpn.plugins import ClientSession
from tunvpn_l2tp import ppp as pppmod
from tunvpn_l2tp.control import (
    Output,
    SessionClosed,
    SessionEstablished,
    Tunnel,
    TunnelClosed,
    TunnelEstablished,
)
from tunvpn_l2tp.message import (
    decode_data,
    is_control,
)
from tunvpn_l2tp.plugin import read_ppp_password, read_tunnel_secret

if TYPE_CHECKING:
    from tunvpn_l2tp.plugin import Announced

log = logging.getLogger("tunvpn.l2tp")

SESSION_ID = 1
SETUP_TIMEOUT = 30.0


class L2tpFailed(Exception):
    """The L2TP tunnel, the session or PPP could not be set up or went down."""


class Lac:
    def __init__(
        self,
        session: ClientSession,
        announced: Announced,
        user: str,
        password: str,
        secret: bytes | None,
        tun_name: str,
    ) -> None:
        self.session = session
        self.announced = announced
        self.tunnel = Tunnel(
            local_tunnel_id=int.from_bytes(os.urandom(2)) or 1,
            host_name="tunvpn-lac",
            secret=secret,
            hello_interval=60.0,
        )
        self.ppp = pppmod.Ppp(
            role=pppmod.Role.CLIENT, user=user, password=password, mru=announced.mtu, auth=("chap", "pap")
        )
        self.tun_name = tun_name
        self.tun: Any = None
        self.sock: socket.socket | None = None
        self.failure: str | None = None
        self.done = asyncio.Event()
        self.wake = asyncio.Event()
        self.session_up = False
        self.ip_up = False
        self.method = ""
        self.packets_in = 0
        self.packets_out = 0

    # -- plumbing

    def _send(self, datagrams: tuple[bytes, ...] | list[bytes]) -> None:
        assert self.sock is not None
        for datagram in datagrams:
            try:
                self.sock.send(datagram)
            except (BlockingIOError, ConnectionRefusedError, OSError) as exc:
                log.debug("L2TP send: %s", exc)
        self.wake.set()

    def _control(self, out: Output) -> None:
        self._send(out.datagrams)
        for event in out.events:
            self._tunnel_event(event)

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
        self.done.set()

    def readable(self) -> None:
        assert self.sock is not None
        now = time.monotonic()
        for _ in range(64):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable: nobody listens on server:port
                log.debug("L2TP recv: %s", exc)
                return
            if is_control(data):
                self._control(self.tunnel.receive(data, now))
                continue
            try:
                tunnel_id, session_id, frame = decode_data(data)
            except ValueError:
                continue
            if tunnel_id != self.tunnel.local_tunnel_id or session_id != SESSION_ID or not self.session_up:
                continue
            packet = self.ppp.receive_ip(frame) if self.tun is not None else None
            if packet is not None:
                self.packets_in += 1
                self.tun.write_batch([packet])
                continue
            self._ppp(self.ppp.receive(frame, now))

    def tun_readable(self) -> None:
        for packet in self.tun.read_batch(64):
            frame = self.ppp.send_ip(packet)
            if frame is not None:
                self.packets_out += 1
                self._send([self.tunnel.data_message(SESSION_ID, frame)])

    def _ppp(self, out: pppmod.Output) -> None:
        self._send([self.tunnel.data_message(SESSION_ID, f) for f in out.frames])
        for event in out.events:
            self._ppp_event(event)

    # -- events

    def _tunnel_event(self, event: object) -> None:
        report = self.session.report
        if isinstance(event, TunnelEstablished):
            report("l2tp", f"control connection with {event.peer_host_name} up", state="tunnel")
            self._control(self.tunnel.open_session(time.monotonic(), SESSION_ID))
        elif isinstance(event, SessionEstablished):
            self.session_up = True
            report("l2tp", "session up; PPP starting", state="session")
            self._ppp(self.ppp.start(time.monotonic()))
        elif isinstance(event, SessionClosed):
            self._fail(f"the L2TP session was closed ({event.reason})")
        elif isinstance(event, TunnelClosed):
            self._fail(f"the L2TP tunnel was closed ({event.reason})")

    def _ppp_event(self, event: object) -> None:
        if isinstance(event, pppmod.AuthSucceeded):
            self.method = str(self.ppp.peer_auth or "")
        elif isinstance(event, pppmod.AuthFailed):
            said = f": {event.message}" if event.message else ""
            self._fail(f"PPP authentication failed{said}")
        elif isinstance(event, pppmod.IpUp):
            self._ip_up(event)
        elif isinstance(event, pppmod.LinkDown):
            self._fail(f"PPP went down: {event.reason}")

    def _ip_up(self, event: pppmod.IpUp) -> None:
        from tunvpn.plugins import off_loop, open_tun  # off_loop: pyroute2 cannot run on a running event loop

        networks = [str(n) for n in self.announced.networks]
        try:
            self.tun = off_loop(
                open_tun,
                self.tun_name,
                offload=False,
                mtu=self.announced.mtu,
                addresses=[f"{event.local}/32"],
                routes=networks,
            )
        except Exception as exc:  # OSError, or pyroute2's NetlinkError
            self._fail(f"cannot open the PPP TUN device {self.tun_name}: {exc}")
            return
        asyncio.get_running_loop().add_reader(self.tun.fileno(), self.tun_readable)
        self.ip_up = True
        self.session.report(
            "ppp",
            f"PPP up ({self.method.upper() or 'no auth'}): {event.local} <-> {event.peer} on "
            f"{self.tun.name}, routes {', '.join(networks) or 'none'}",
            state="up",
            address=str(event.local),
            peer=str(event.peer),
            dns=[str(d) for d in event.dns],
            auth=self.method,
            networks=networks,
            tun=self.tun.name,
        )

    # -- running

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        source = str(self.session.address) if self.session.address is not None else "0.0.0.0"
        self.sock.bind((source, 0))
        self.sock.connect((str(self.announced.server), self.announced.port))
        loop.add_reader(self.sock.fileno(), self.readable)
        self.session.report(
            "l2tp",
            f"connecting to {self.announced.server}:{self.announced.port} from {source}",
            state="started",
        )
        started = time.monotonic()
        try:
            self._control(self.tunnel.start(started))
            while not self.done.is_set():
                now = time.monotonic()
                if not self.ip_up and now - started > SETUP_TIMEOUT:
                    self._fail(f"L2TP/PPP not up after {SETUP_TIMEOUT:.0f} s")
                    break
                deadlines = [
                    d for d in (self.tunnel.next_deadline(), self.ppp.next_deadline()) if d is not None
                ]
                delay = min(max(0.0, min(deadlines) - now), 1.0) if deadlines else 1.0
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                now = time.monotonic()
                self._control(self.tunnel.poll(now))
                if self.session_up:
                    deadline = self.ppp.next_deadline()
                    if deadline is not None and deadline <= now:
                        self._ppp(self.ppp.poll(now))
            if self.failure is not None:
                raise L2tpFailed(self.failure)
        finally:
            self._goodbye()
            loop.remove_reader(self.sock.fileno())
            if self.tun is not None:
                loop.remove_reader(self.tun.fileno())
                self.tun.close()
            self.sock.close()

    def _goodbye(self) -> None:
        """LCP Terminate, CDN, StopCCN: best effort, right now (the SAs go next)."""
        now = time.monotonic()
        with contextlib.suppress(Exception):
            if self.session_up:
                self._ppp(self.ppp.close(now, "the user disconnected"))
            self._control(self.tunnel.close_session(now, SESSION_ID))
            self._control(self.tunnel.close(now))


@dataclass
class Reconnect:
    """When to set the L2TP session up again after it went down (the SAs are still up).

    The first set-up is not retried: its failure (no LNS, wrong PPP password) is the user's
    answer. Once a session has been up, losing it (an LNS restart on a gateway reload, a lost
    tunnel) is retried after 1, 2, 4, ... seconds (at most :attr:`max_delay`); ``attempts``
    set-ups in a row that do not come up end it. A PPP authentication failure is never retried
    (the password was changed: asking again is the user's call)."""

    attempts: int = 5
    max_delay: float = 30.0
    failures: int = 0

    def delay(self, was_up: bool, failure: str) -> float | None:
        """Seconds to wait before the next try, or ``None``: give up with ``failure``."""
        if self.attempts <= 0 or failure.startswith("PPP authentication failed"):
            return None
        if was_up:
            self.failures = 0
        elif self.failures == 0:
            return None  # never up since the start (or since the last give-up): not ours to retry
        self.failures += 1
        if self.failures > self.attempts:
            return None
        return min(self.max_delay, 2.0 ** (self.failures - 1))


async def run_lac(session: ClientSession, announced: Announced, settings: dict[str, Any]) -> None:
    """``tunvpn_client_protocol``'s run: the whole L2TP client, until cancelled.

    The credentials are gathered once; a session that goes down after it was up is set up
    again as :class:`Reconnect` says (each try is a new control connection, session and PPP)."""
    attempts = int(settings.get("reconnect_attempts", 5)) if settings.get("reconnect", True) else 0
    policy = Reconnect(attempts=attempts)
    user = settings.get("user") or session.user
    if not user:
        raise L2tpFailed("PPP needs a user name: set user in the profile (or in [plugin.l2tp])")
    password = session.password
    if settings.get("password_file"):
        password = read_ppp_password(str(settings["password_file"]))
    if password is None:
        if session.prompt is None:
            raise L2tpFailed("PPP needs a password and there is no terminal to ask for it")
        password = await session.prompt(f"PPP password for {user}: ", True)
    secret = None
    if settings.get("secret_file"):
        secret = read_tunnel_secret(str(settings["secret_file"]))
    tun_name = str(settings.get("tun", "tvl2tp%d"))
    while True:
        lac = Lac(session, announced, user, password, secret, tun_name)
        try:
            await lac.run()
            return
        except L2tpFailed as exc:
            delay = policy.delay(lac.ip_up, str(exc))
            if delay is None:
                raise
            log.warning("%s: setting L2TP up again in %.0f s", exc, delay)
            session.report(
                "l2tp",
                f"{exc}: reconnecting in {delay:.0f} s (try {policy.failures} of {policy.attempts})",
                state="reconnecting",
            )
        await asyncio.sleep(delay)
