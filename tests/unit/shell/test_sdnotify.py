"""sd_notify (tunvpn/shell/sdnotify.py) against a real NOTIFY_SOCKET listener: an AF_UNIX datagram
socket bound to a path, and one in the abstract namespace (``@name``), as systemd passes both."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunvpn.shell import sdnotify


def _receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"tunvpn-test-notify-{os.getpid()}-{id(sock)}"
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        yield sock


def test_ready_reloading_stopping_reach_the_listener(listener: socket.socket) -> None:
    assert sdnotify.ready("serving on 192.0.2.1")
    assert _receive(listener) == {"READY": "1", "STATUS": "serving on 192.0.2.1"}
    assert sdnotify.reloading()
    got = _receive(listener)
    assert got["RELOADING"] == "1"
    usec = int(got["MONOTONIC_USEC"])  # CLOCK_MONOTONIC, as systemd 253+ compares it to its own
    assert abs(usec - time_usec()) < 60_000_000
    assert sdnotify.stopping("SIGTERM")
    assert _receive(listener) == {"STOPPING": "1", "STATUS": "SIGTERM"}


def test_a_newline_in_a_status_cannot_add_a_line(listener: socket.socket) -> None:
    sdnotify.status("peer said\nREADY=1")
    assert _receive(listener) == {"STATUS": "peer said READY=1"}


def test_no_socket_no_notification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not supported: ignored, not an error
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")  # the supervisor went away
    assert sdnotify.ready() is False


def time_usec() -> int:
    import time

    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
