"""sd_notify (tunvpn/shell/sdnotify.py) against a real NOTIFY_SOCKET listener: an AF_UNIX datagram
socket bound to a path, and one in the abstract namespace (``@name``), as systemd passes both."""

from __future__ import annotations

import asyncio
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


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30s: a ping every 15 s
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),  # for us
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_watchdog_usec_for_our_pid(env: dict, expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env, pid=4242) == expected


def test_the_watchdog_pings_while_healthy_and_stops_while_not(listener: socket.socket) -> None:
    """A stuck data path (health() gives a reason) stops the pings, so systemd restarts the
    service; the reason goes out once as STATUS=; pings resume when it is well again."""
    answers = iter([None, "the ESP data path thread has died", "the ESP data path thread has died", None])

    async def drive() -> None:
        task = asyncio.get_running_loop().create_task(sdnotify.watchdog(lambda: next(answers, None), 0.001))
        for _ in range(8):  # fewer than the listener's queue holds (max_dgram_qlen, 10 at least)
            await asyncio.sleep(0.002)
        task.cancel()

    asyncio.run(drive())
    seen: list[dict[str, str]] = []
    listener.settimeout(0.2)
    while True:
        try:
            data = listener.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(dict(line.split("=", 1) for line in data.splitlines()))
    assert seen[0] == {"WATCHDOG": "1"}
    assert seen[1] == {"STATUS": "unhealthy: the ESP data path thread has died"}  # once, not twice
    assert seen[2] == {"WATCHDOG": "1", "STATUS": "healthy again"}
    assert seen[3:] and all(s == {"WATCHDOG": "1"} for s in seen[3:])


def test_a_listener_that_stopped_reading_costs_notifications_not_a_hung_daemon(
    listener: socket.socket,
) -> None:
    sent = [sdnotify.notify("WATCHDOG=1") for _ in range(1000)]  # nobody reads meanwhile
    assert sent[0] and not sent[-1]  # the queue filled up: later ones are dropped, not waited for
