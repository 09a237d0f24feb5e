"""Type=notify as systemd sees it (contrib/systemd/, docs/service.md): a real ``tunvpn gateway``
and ``tunvpn connect`` on loopback, each started with ``$NOTIFY_SOCKET`` naming the test's own
AF_UNIX datagram socket (the gateway's in the abstract namespace, ``@name``, as systemd passes
it; the client's a path). The gateway says READY=1 once it serves, RELOADING=1 (with
MONOTONIC_USEC) then READY=1 with the new policy generation on SIGHUP (what ``ExecReload=`` sends),
STOPPING=1 on SIGTERM; the client READY=1 once its tunnel is up and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.loopback import free_port_pair, needs_loopback
from tests.helpers.tunvpn_proc import private_file, read_text, tunvpn_argv, tunvpn_env

pytestmark = needs_loopback

GATEWAY_TOML = """\
[gateway]
listen = "127.0.0.1"
ike_port = {ike}
natt_port = {natt}
psk_file = "gw.psk"
users_file = "users"

[network]
pool = "10.99.0.10-10.99.0.20"

[[policy]]
name = "{name}"
local = "{net}"
"""


class Listener:
    """What a service manager reads: datagrams of KEY=VALUE lines on $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        sock.settimeout(0.2)

    def next(self, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                if proc.poll() is not None:
                    break
                continue
            return dict(line.split("=", 1) for line in data.splitlines())
        raise AssertionError(f"no notification within {timeout} s; log:\n{read_text(log)[-3000:]}")


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"tunvpn-test-{os.getpid()}-gateway"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield Listener(sock, "@" + name)


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[Listener]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "client-notify"))
        yield Listener(sock, str(tmp_path / "client-notify"))


def start(argv: list[str], log: Path, listener: Listener, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **tunvpn_env(), "NOTIFY_SOCKET": listener.env_value}
    with open(log, "wb") as out:
        return subprocess.Popen(tunvpn_argv(*argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def test_gateway_and_client_notify_ready_reloading_stopping(
    tmp_path: Path, abstract_listener: Listener, path_listener: Listener
) -> None:
    ike, natt = free_port_pair()
    private_file(tmp_path / "gw.psk", "notify-test-psk\n")
    private_file(tmp_path / "client.psk", "notify-test-psk\n")
    private_file(tmp_path / "users", "alice:alice-pw\n")
    private_file(tmp_path / "alice.pw", "alice-pw\n")
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY_TOML.format(ike=ike, natt=natt, name="net-a", net="10.98.0.0/24"))
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = start(
        ["gateway", "-c", str(config), "--ike-only", "--control", "none"], gw_log, abstract_listener, tmp_path
    )
    cl: subprocess.Popen[bytes] | None = None
    try:
        ready = abstract_listener.next(20, gw, gw_log)
        assert ready["READY"] == "1" and "generation 1" in ready["STATUS"], ready
        assert "gateway ready" in read_text(gw_log)  # READY came once it served

        connect = ["connect", "127.0.0.1", "--local", "127.0.0.2", "--id", "any"]
        connect += ["--gateway-port", str(ike), "--gateway-natt-port", str(natt)]
        connect += ["--ike-port", str(ike), "--natt-port", str(natt)]
        connect += ["--psk-file", str(tmp_path / "client.psk"), "--user", "alice"]
        connect += ["--password-file", str(tmp_path / "alice.pw")]
        connect += ["--ike-only", "--control", "none", "--dns-backend", "none"]
        cl = start(connect, cl_log, path_listener, tmp_path)
        up = path_listener.next(30, cl, cl_log)
        assert up["READY"] == "1" and "tunnel up" in up["STATUS"], up

        config.write_text(GATEWAY_TOML.format(ike=ike, natt=natt, name="net-b", net="10.97.0.0/24"))
        gw.send_signal(signal.SIGHUP)  # ExecReload=/bin/kill -HUP $MAINPID
        reloading = abstract_listener.next(10, gw, gw_log)
        assert reloading["RELOADING"] == "1", reloading
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = abstract_listener.next(10, gw, gw_log)
        assert again["READY"] == "1" and "generation 2" in again["STATUS"], again
        # the client follows the change (net-b's SA up) and says so before it is stopped: read
        # that first, or it may arrive where STOPPING is expected (seen once in CI)
        followed = path_listener.next(10, cl, cl_log)
        assert followed["READY"] == "1" and "tunnel up" in followed["STATUS"], followed

        cl.send_signal(signal.SIGTERM)
        assert path_listener.next(10, cl, cl_log)["STOPPING"] == "1"
        assert cl.wait(15) == 0
        gw.send_signal(signal.SIGTERM)
        assert abstract_listener.next(10, gw, gw_log)["STOPPING"] == "1"
        assert gw.wait(15) == 0
    finally:
        for proc in (cl, gw):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_gateway_pings_the_watchdog_it_was_given(tmp_path: Path, abstract_listener: Listener) -> None:
    """WatchdogSec= (systemd passes $WATCHDOG_USEC and $WATCHDOG_PID): WATCHDOG=1 every half
    of it while healthy; without $WATCHDOG_USEC (the other test) no ping at all."""
    ike, natt = free_port_pair()
    private_file(tmp_path / "gw.psk", "notify-test-psk\n")
    private_file(tmp_path / "users", "alice:alice-pw\n")
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY_TOML.format(ike=ike, natt=natt, name="net-a", net="10.98.0.0/24"))
    gw_log = tmp_path / "gateway.log"
    env = {
        **os.environ,
        **tunvpn_env(),
        "NOTIFY_SOCKET": abstract_listener.env_value,
        "WATCHDOG_USEC": "400000",  # WatchdogSec=0.4s: a ping every 0.2 s
    }
    with open(gw_log, "wb") as out:
        gw = subprocess.Popen(
            tunvpn_argv("gateway", "-c", str(config), "--ike-only", "--control", "none"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        assert abstract_listener.next(20, gw, gw_log)["READY"] == "1"
        pings = [abstract_listener.next(5, gw, gw_log) for _ in range(5)]
        assert all(p == {"WATCHDOG": "1"} for p in pings), pings
        assert "watchdog: telling the service manager we are alive every 0.2 s" in read_text(gw_log)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
