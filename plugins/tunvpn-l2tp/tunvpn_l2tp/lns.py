"""The gateway's L2TP network server (LNS): the thin asyncio shell around the sans-I/O cores.

One UDP socket on ``server:port`` (an address of the gateway that clients reach through the
SA for UDP 1701), one TUN device for the IP packets of every PPP session. The control
connections are :class:`tunvpn_l2tp.dispatch.Lns`; each session runs :class:`tunvpn_l2tp.ppp.Ppp`
as the authenticator. PPP PAP/CHAP answers are decided by the gateway's login plugins
(``context.verify``); the peer gets an address from ``pool``. A packet from a session whose
source is not the session's address is dropped (and counted), so a client cannot spoof
another one. Bad input of any kind is counted and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, cast

from tunvpn.plugins import (
    AddressPool,
    CredentialRequest,
    GatewayContext,
    PacketDevice,
    off_loop,
)
from tunvpn.plugins import read_private_file as read_private_file  # tests/helpers/secret_files.py uses lns's
from tunvpn_l2tp import ppp as pppmod
from tunvpn_l2tp.control import (
    SessionClosed,
    SessionEstablished,
    TunnelClosed,
    TunnelEstablished,
)
from tunvpn_l2tp.dispatch import (
    Lns,
    LnsOutput,
)
from tunvpn_l2tp.message import (
    decode_data,
    is_control,
)
from tunvpn_l2tp.plugin import read_tunnel_secret

if TYPE_CHECKING:
    from tunvpn_l2tp.plugin import LnsSettings

log = logging.getLogger("tunvpn.l2tp")

Address = tuple[str, int]


@dataclass
class PppSession:
    """One L2TP session of one tunnel, and its PPP."""

    peer: Address
    tunnel_id: int  # ours
    session_id: int  # ours
    ppp: pppmod.Ppp
    address: IPv4Address | None = None
    user: str | None = None
    method: str = ""
    up: bool = False
    packets_in: int = 0
    packets_out: int = 0
    spoofed: int = 0

    @property
    def owner(self) -> bytes:
        return f"l2tp {self.peer[0]}:{self.peer[1]} {self.tunnel_id}/{self.session_id}".encode()


@dataclass
class LnsStats:
    not_ours: int = 0  # a data message for no session of ours
    malformed: int = 0
    spoofed: int = 0
    no_session: int = 0  # a TUN packet for an address no session has
    socket_errors: int = 0


class LnsServer(asyncio.DatagramProtocol):
    def __init__(self, settings: LnsSettings, context: GatewayContext, tun: PacketDevice) -> None:
        self.settings = settings
        self.context = context
        self.tun = tun
        secret = None
        if settings.secret_file is not None:
            secret = read_tunnel_secret(settings.secret_file)
        self.lns = Lns(
            host_name="tunvpn-lns",
            secret=secret,
            hello_interval=settings.hello,
            max_sessions_per_tunnel=min(settings.max_sessions, 256),
        )
        self.pool = AddressPool(settings.pool_first, settings.pool_last)
        self.sessions: dict[tuple[int, int], PppSession] = {}
        self.by_address: dict[IPv4Address, PppSession] = {}
        self.stats = LnsStats()
        self.transport: asyncio.DatagramTransport | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- I/O plumbing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_datagram_endpoint's transport: DatagramTransport's methods, though the selector
        # loop's class does not derive from it (so no isinstance check)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        self.stats.socket_errors += 1
        log.debug("L2TP socket error: %s", exc)

    def _send(self, out: LnsOutput) -> None:
        assert self.transport is not None
        for peer, datagram in out.datagrams:
            self.transport.sendto(datagram, peer)
        for wrapped in out.events:
            self._lns_event(wrapped.peer, wrapped.local_tunnel_id, wrapped.event)
        self._wake.set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        peer = (addr[0], addr[1])
        if is_control(data):
            self._send(self.lns.receive(data, peer, now))
            return
        try:
            tunnel_id, session_id, frame = decode_data(data)
        except ValueError:
            self.stats.malformed += 1
            return
        session = self.sessions.get((tunnel_id, session_id))
        if session is None or session.peer != peer:
            self.stats.not_ours += 1
            return
        packet = session.ppp.receive_ip(frame) if session.up else None
        if packet is not None and session.address is not None:
            if len(packet) < 20 or packet[12:16] != session.address.packed:
                session.spoofed += 1
                self.stats.spoofed += 1
                if session.spoofed in (1, 100, 10000):
                    log.warning(
                        "L2TP: %s (user %r) sent %d packet(s) from an address not its own; dropped",
                        session.peer[0],
                        session.user,
                        session.spoofed,
                    )
                return
            session.packets_in += 1
            self.tun.write_batch([packet])
            return
        self._ppp_output(session, session.ppp.receive(frame, now))

    def tun_readable(self) -> None:
        for packet in self.tun.read_batch(64):
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue
            session = self.by_address.get(IPv4Address(packet[16:20]))
            if session is None or not session.up:
                self.stats.no_session += 1
                continue
            frame = session.ppp.send_ip(packet)
            if frame is not None:
                session.packets_out += 1
                self._frame(session, frame)

    def _frame(self, session: PppSession, frame: bytes) -> None:
        try:
            peer, datagram = self.lns.data_message(session.tunnel_id, session.session_id, frame)
        except ValueError:
            return  # the tunnel went away
        assert self.transport is not None
        self.transport.sendto(datagram, peer)

    # -- events

    def _lns_event(self, peer: Address, tunnel_id: int, event: object) -> None:
        if isinstance(event, TunnelEstablished):
            log.info("L2TP tunnel %d from %s:%d (%s) established", tunnel_id, *peer, event.peer_host_name)
        elif isinstance(event, TunnelClosed):
            log.info("L2TP tunnel %d from %s:%d closed: %s", tunnel_id, *peer, event.reason)
            for key in [k for k in self.sessions if k[0] == tunnel_id]:
                self._end(self.sessions[key], "tunnel closed")
        elif isinstance(event, SessionEstablished):
            self._session_up(peer, tunnel_id, event.local_session_id)
        elif isinstance(event, SessionClosed):
            session = self.sessions.get((tunnel_id, event.local_session_id))
            if session is not None:
                self._end(session, event.reason)

    def _session_up(self, peer: Address, tunnel_id: int, session_id: int) -> None:
        s = self.settings
        ppp = pppmod.Ppp(
            role=pppmod.Role.SERVER,
            auth=(s.auth,),
            local_address=s.local,
            dns=s.dns,
            mru=s.mtu,
        )
        session = PppSession(peer, tunnel_id, session_id, ppp)
        self.sessions[(tunnel_id, session_id)] = session
        log.info("L2TP session %d/%d from %s: PPP starting (%s)", tunnel_id, session_id, peer[0], s.auth)
        self._ppp_output(session, ppp.start(time.monotonic()))

    def _ppp_output(self, session: PppSession, out: pppmod.Output) -> None:
        for frame in out.frames:
            self._frame(session, frame)
        for event in out.events:
            self._ppp_event(session, event)
        self._wake.set()

    def _ppp_event(self, session: PppSession, event: object) -> None:
        if isinstance(event, pppmod.AuthRequest):
            task = asyncio.get_running_loop().create_task(self._authenticate(session, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, pppmod.IpUp):
            session.up = True
            session.address = event.peer
            self.by_address[session.address] = session
            try:
                off_loop(self.tun.configure, routes=[f"{session.address}/32"], up=True)
            except Exception as exc:  # OSError, or pyroute2's NetlinkError
                log.error("L2TP: cannot route %s into %s: %s", session.address, self.settings.tun, exc)
            log.info(
                "L2TP session %d/%d: PPP up for %r, address %s",
                session.tunnel_id,
                session.session_id,
                session.user,
                session.address,
            )
        elif isinstance(event, pppmod.LinkDown):
            log.info("L2TP session %d/%d: PPP down: %s", session.tunnel_id, session.session_id, event.reason)
            self._end(session, event.reason)
            self._send(self.lns.close_session(time.monotonic(), session.tunnel_id, session.session_id))

    async def _authenticate(self, session: PppSession, event: pppmod.AuthRequest) -> None:
        verify = self.context.verify
        chap = None
        if event.method == "chap":  # a CHAP AuthRequest carries all three
            assert event.chap_id is not None and event.challenge is not None and event.response is not None
            chap = (event.chap_id, event.challenge, event.response)
        request = CredentialRequest(
            user=event.user,
            password=event.password if event.method == "pap" else None,
            chap=chap,
            peer=session.peer,
            session_id=session.owner.decode(),
            via="ppp",
        )
        if verify is None:
            accepted, message = False, "the gateway cannot check PPP credentials"
            address = None
        else:
            verdict = await verify(request)
            accepted, message = verdict.accepted, verdict.message or ""
            address = verdict.address if accepted else None
        if (session.tunnel_id, session.session_id) not in self.sessions:
            return  # it went away while the plugins decided
        if accepted and address is None:
            address = self.pool.lease(session.owner)
            if address is None:
                accepted, message = False, "no PPP address left"
                log.warning("L2TP: PPP address pool exhausted; user %r refused", event.user)
        session.user = event.user
        session.method = event.method
        session.address = address
        verb = "accepted" if accepted else "rejected"
        log.info(
            "L2TP session %d/%d: PPP user %r (%s) %s%s",
            session.tunnel_id,
            session.session_id,
            event.user,
            event.method.upper(),
            verb,
            f", address {address}" if accepted else f": {message}",
        )
        out = session.ppp.auth_result(
            accepted,
            message or ("welcome" if accepted else "not accepted"),
            time.monotonic(),
            peer_address=address,
        )
        self._ppp_output(session, out)

    def _end(self, session: PppSession, reason: str) -> None:
        key = (session.tunnel_id, session.session_id)
        if self.sessions.pop(key, None) is None:
            return
        if session.address is not None and self.by_address.get(session.address) is session:
            del self.by_address[session.address]
            with contextlib.suppress(Exception):
                off_loop(_unroute, self.tun, f"{session.address}/32")
        self.pool.release(session.owner)
        log.info(
            "L2TP session %d/%d (user %r) ended: %s; %d packets in, %d out",
            session.tunnel_id,
            session.session_id,
            session.user,
            reason,
            session.packets_in,
            session.packets_out,
        )

    # -- timers

    async def timers(self) -> None:
        while True:
            now = time.monotonic()
            deadlines = [d for d in (self.lns.next_deadline(),) if d is not None]
            deadlines += [d for s in self.sessions.values() if (d := s.ppp.next_deadline()) is not None]
            delay = max(0.0, min(deadlines) - now) if deadlines else 5.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 5.0))
            now = time.monotonic()
            self._send(self.lns.poll(now))
            for session in list(self.sessions.values()):
                deadline = session.ppp.next_deadline()
                if deadline is not None and deadline <= now:
                    self._ppp_output(session, session.ppp.poll(now))

    def close(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            self._ppp_output(session, session.ppp.close(now, "the gateway is shutting down"))
        self._send(self.lns.close_all(now))


def _unroute(tun: PacketDevice, route: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=tun.name)
        if found:
            ipr.route("del", dst=route, oif=int(found[0]))


async def serve(settings: LnsSettings, context: GatewayContext) -> None:
    """Run the LNS until cancelled; tell every LAC (StopCCN) when it is."""
    from tunvpn.plugins import open_tun

    loop = asyncio.get_running_loop()
    try:
        tun = await asyncio.to_thread(
            open_tun, settings.tun, offload=False, mtu=settings.mtu, addresses=[f"{settings.local}/32"]
        )
    except OSError as exc:
        raise RuntimeError(f"L2TP: cannot open the TUN device {settings.tun}: {exc}") from exc
    server = LnsServer(settings, context, tun)
    try:
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: server, local_addr=(str(settings.server), settings.port), family=socket.AF_INET
            )
        except OSError as exc:
            raise RuntimeError(
                f"L2TP: cannot listen on {settings.server}:{settings.port}: {exc.strerror} "
                "(server must be an address of this gateway)"
            ) from exc
        loop.add_reader(tun.fileno(), server.tun_readable)
        log.info(
            "L2TP network server on %s:%d (PPP %s, pool %s-%s, networks %s, TUN %s)",
            settings.server,
            settings.port,
            settings.auth.upper(),
            settings.pool_first,
            settings.pool_last,
            ", ".join(map(str, settings.networks)),
            getattr(tun, "name", "?"),
        )
        try:
            await server.timers()
        finally:
            loop.remove_reader(tun.fileno())
            server.close()
            await asyncio.sleep(0.05)  # let the StopCCNs leave
            transport.close()
    finally:
        tun.close()
