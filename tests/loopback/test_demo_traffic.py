"""``tunvpn demo``'s transfer (tunvpn.demo.traffic) over TCP on 127.0.0.1: the sender and the sink
check every byte (the demo's files are tested in tests/unit/demo/test_demo.py, the whole demo
in tests/netns/test_demo.py)."""

from __future__ import annotations

import threading

import pytest

from tunvpn.demo import traffic as demo_traffic


def test_the_transfer_ends_check_every_byte_over_loopback() -> None:
    import socket

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = threading.Thread(target=demo_traffic.sink, args=("127.0.0.1", port), daemon=True)
    sink.start()
    for _ in range(100):
        try:
            result = demo_traffic.send("127.0.0.1", port, 3 << 20, timeout=10)
            break
        except ConnectionRefusedError:
            threading.Event().wait(0.02)
    else:
        pytest.fail("the sink never listened")
    sink.join(10)
    assert result["sent"] == result["received"] == 3 << 20
    assert result["sha256"] == result["received_sha256"]
    assert isinstance(result["seconds"], float) and result["seconds"] > 0
