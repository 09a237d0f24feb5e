"""The L2TP control-connection core (plugins/tunvpn-l2tp, tunvpn_l2tp.control) against Debian's
xl2tpd as the LNS, over plain UDP on 127.0.0.1 (no IPsec underneath in this test).

Our LAC side sets up the tunnel (SCCRQ -> SCCRP -> SCCCN, ZLB ACKs), a session (ICRQ -> ICRP ->
ICCN), then tears both down (CDN, StopCCN). xl2tpd runs in the foreground (-D) with its own
config, pid file and control pipe in a temp dir, on a free port, `challenge = no` (our core does
no tunnel authentication yet). After ICCN xl2tpd starts pppd for the call; without /dev/ppp (or
pppd) that fails and xl2tpd may send a CDN of its own: the assertions about the session stop at
"ICRP received, ICCN acknowledged", whichever side sends the CDN. (Seen with xl2tpd 1.3.18:
pppd exits with "You need to create the /dev/ppp device node", xl2tpd sends CDN result 1, and
that CDN's Nr is what acknowledges our ICCN; we ACK it and send StopCCN, which xl2tpd ACKs.)
The codec and state machine unit tests are in plugins/tunvpn-l2tp/tests/.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.requires import skip_or_fail

pytest.importorskip("tunvpn_l2tp", reason="pip install -e plugins/tunvpn-l2tp")

from tunvpn_l2tp.control import (
    Acked,
    Output,
    Received,
    SessionClosed,
    SessionEstablished,
    Tunnel,
    TunnelClosed,
    TunnelEstablished,
    TunnelState,
)
from tunvpn_l2tp.message import (
    MessageType,
)

XL2TPD = "/usr/sbin/xl2tpd"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, port: int) -> Path:
    options = tmp / "options.l2tpd.lns"
    options.write_text("noauth\nnodefaultroute\nnodetach\n")
    conf = tmp / "xl2tpd.conf"
    conf.write_text(
        "[global]\n"
        "listen-addr = 127.0.0.1\n"
        f"port = {port}\n"
        "debug tunnel = yes\n"
        "debug state = yes\n"
        "debug avp = yes\n"
        "\n[lns default]\n"
        "ip range = 192.0.2.10-192.0.2.20\n"
        "local ip = 192.0.2.1\n"
        "require authentication = no\n"
        "challenge = no\n"
        "ppp debug = no\n"
        f"pppoptfile = {options}\n"
        "hostname = xl2tpd-lns\n"
    )
    return conf


class Peer:
    """Our core on a UDP socket, with the events and xl2tpd's datagrams collected."""

    def __init__(self, tunnel: Tunnel, port: int) -> None:
        self.tunnel = tunnel
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.events: list[object] = []
        self.received: list[bytes] = []

    def emit(self, out: Output) -> None:
        for datagram in out.datagrams:
            self.sock.send(datagram)
        self.events += out.events

    def run_until(self, done, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now > end:
                raise AssertionError(f"timed out; events so far: {self.events}")
            self.emit(self.tunnel.poll(now))
            deadline = self.tunnel.next_deadline()
            wait = min(end - now, 0.2 if deadline is None else max(0.0, deadline - now))
            self.sock.settimeout(max(wait, 0.01))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append(data)
            self.emit(self.tunnel.receive(data, time.monotonic()))

    def has(self, cls: type, **attrs: object) -> bool:
        return any(
            isinstance(e, cls) and all(getattr(e, k) == v for k, v in attrs.items()) for e in self.events
        )


def test_control_connection_and_session_with_xl2tpd(tmp_path: Path) -> None:
    if shutil.which("xl2tpd") is None and not Path(XL2TPD).exists():
        skip_or_fail("xl2tpd is not installed (bash contrib/test-all.sh installs it)")
    port = free_udp_port()
    conf = write_config(tmp_path, port)
    log_path = tmp_path / "xl2tpd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                shutil.which("xl2tpd") or XL2TPD,
                "-D",
                "-c",
                str(conf),
                "-p",
                str(tmp_path / "xl2tpd.pid"),
                "-C",
                str(tmp_path / "l2tp-control"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(0.5)  # xl2tpd binds its socket at start-up
        assert proc.poll() is None, log_path.read_text()
        peer = Peer(Tunnel(local_tunnel_id=4711, host_name="tunvpn-lac"), port)
        peer.emit(peer.tunnel.start(time.monotonic()))
        peer.run_until(lambda: peer.has(Acked, message_type=MessageType.SCCCN))
        est = next(e for e in peer.events if isinstance(e, TunnelEstablished))
        assert est.peer_tunnel_id != 0
        assert est.peer_host_name == "xl2tpd-lns"
        assert peer.tunnel.state is TunnelState.ESTABLISHED

        peer.emit(peer.tunnel.open_session(time.monotonic(), local_session_id=77, call_serial=1))
        peer.run_until(lambda: peer.has(Acked, message_type=MessageType.ICCN))
        sess = next(e for e in peer.events if isinstance(e, SessionEstablished))
        assert sess.local_session_id == 77 and sess.peer_session_id != 0
        assert any(
            isinstance(e, Received) and e.message.message_type is MessageType.ICRP for e in peer.events
        )

        # xl2tpd starts pppd now; if that fails it sends CDN itself. Give it a moment, then
        # close the session (a no-op if xl2tpd already did) and the tunnel.
        deadline = time.monotonic() + 1.0
        try:
            peer.run_until(lambda: peer.has(SessionClosed) or time.monotonic() > deadline, timeout=3)
        except AssertionError:
            pass
        peer_cdn = peer.has(SessionClosed, reason="CDN from peer")
        if not peer_cdn:
            peer.emit(peer.tunnel.close_session(time.monotonic(), 77))
            peer.run_until(lambda: peer.has(Acked, message_type=MessageType.CDN))
        peer.emit(peer.tunnel.close(time.monotonic()))
        peer.run_until(lambda: peer.has(TunnelClosed))
        assert peer.has(TunnelClosed, reason="our StopCCN was acknowledged"), peer.events
        assert peer.tunnel.stats.malformed == 0
        for data in peer.received:
            print(data.hex())
        time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        peer_sock = locals().get("peer")
        if peer_sock is not None:
            peer_sock.sock.close()
    log_text = log_path.read_text(errors="replace")
    print(log_text)
    assert "Connection established" in log_text or "SCCCN" in log_text, log_text
    assert "Call established" in log_text or "ICCN" in log_text, log_text
