"""``tunvpn events`` (issue 20): the hub queues each event for every subscriber and drops one
that stopped reading instead of waiting for it; the control server streams the events of a
real socket until the client closes it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from tunvpn.control import server as control
from tunvpn.control.events import EventHub, EventKind
from tunvpn.control.server import ControlServer


def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub(lambda: 1000.0)
    a, b = hub.subscribe(), hub.subscribe()
    assert a is not None and b is not None
    hub.publish(EventKind.LOGIN, user="alice", address="10.79.0.10", groups=None)
    hub.publish(EventKind.LOGOUT, user="alice", reason="left")
    for sub in (a, b):
        assert [e.record() for e in sub.take()] == [
            {"event": "login", "time": 1000.0, "user": "alice", "address": "10.79.0.10"},  # None left out
            {"event": "logout", "time": 1000.0, "user": "alice", "reason": "left"},
        ]
    assert a.take() == []


def test_a_subscriber_that_stops_reading_is_dropped_never_waited_for() -> None:
    hub = EventHub(lambda: 0.0, queue_size=3)
    slow, live = hub.subscribe(), hub.subscribe()
    assert slow is not None and live is not None
    for i in range(3):
        hub.publish(EventKind.SA_UP, n=i)
        live.take()
    assert not slow.dropped and len(slow.queue) == 3
    hub.publish(EventKind.SA_UP, n=3)  # slow's queue is full: it goes, live gets the event
    assert slow.dropped and slow not in hub.subscribers and hub.dropped == 1
    assert [e.fields["n"] for e in live.take()] == [3]


def test_subscribers_are_bounded() -> None:
    hub = EventHub(lambda: 0.0, max_subscribers=2)
    assert hub.subscribe() is not None and hub.subscribe() is not None
    assert hub.subscribe() is None


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv(control.RUN_DIR_ENV, str(directory))
    return directory


def test_the_server_streams_events_until_the_client_closes(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"
    hub = EventHub(time.time)

    async def main() -> None:
        async with ControlServer(path, lambda command, args: {}, events=hub):
            got: list[object] = []

            def reader() -> None:
                for record in control.stream(path, "events", timeout=5):
                    got.append(record)
                    if len(got) == 2:
                        return  # closes the connection

            task = asyncio.create_task(asyncio.to_thread(reader))
            for _ in range(100):
                if hub.subscribers:
                    break
                await asyncio.sleep(0.02)
            hub.publish(EventKind.LOGIN, user="alice")
            hub.publish(EventKind.RELOAD, generation=2, changes=["policy x added"])
            await asyncio.wait_for(task, 5)
            assert [r["event"] for r in got] == ["login", "reload"]  # type: ignore[index]
            for _ in range(100):  # the server notices the close and forgets the subscriber
                if not hub.subscribers:
                    break
                hub.publish(EventKind.SA_UP)
                await asyncio.sleep(0.02)
            assert not hub.subscribers

    asyncio.run(main())


def test_a_stalled_reader_is_dropped_and_the_publisher_never_blocks(run_dir: Path) -> None:
    """A subscriber that never reads: the socket fills, its queue fills, it is dropped. publish
    is synchronous (it never awaits the writer), so the loop below runs to the drop."""
    path = run_dir / "gateway.sock"
    hub = EventHub(time.time, queue_size=64)

    async def main() -> None:
        async with ControlServer(path, lambda command, args: {}, events=hub):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await asyncio.to_thread(sock.connect, str(path))
            sock.sendall(json.dumps({"command": "events", "args": {}}).encode() + b"\n")
            for _ in range(100):
                if hub.subscribers:
                    break
                await asyncio.sleep(0.02)
            for i in range(5000):
                hub.publish(EventKind.SA_UP, n=i, padding="x" * 200)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the server write what it can
                if hub.dropped:
                    break
            assert hub.dropped == 1 and not hub.subscribers
            sock.close()

    asyncio.run(main())


def test_format_event_for_humans() -> None:
    text = control.format_event({"event": "login", "time": 0, "user": "alice", "address": "10.79.0.10"})
    assert text.endswith("login user=alice address=10.79.0.10") and text[2] == ":"


def test_closing_the_server_ends_the_streams(run_dir: Path) -> None:
    """A gateway that stops ends every ``tunvpn events`` stream (the command then exits)."""
    path = run_dir / "gateway.sock"
    hub = EventHub(time.time)

    async def main() -> None:
        server = ControlServer(path, lambda command, args: {}, events=hub)
        await server.start()
        reader = asyncio.create_task(
            asyncio.to_thread(lambda: list(control.stream(path, "events", timeout=5)))
        )
        for _ in range(100):
            if hub.subscribers:
                break
            await asyncio.sleep(0.02)
        hub.publish(EventKind.LOGIN, user="alice")
        await asyncio.sleep(0.1)
        server.close()
        got = await asyncio.wait_for(reader, 5)
        assert [r["event"] for r in got] == ["login"]  # type: ignore[index]

    asyncio.run(main())
