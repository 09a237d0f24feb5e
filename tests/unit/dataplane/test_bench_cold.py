"""``python -m tunvpn.dataplane.bench_cold`` (issue 21): its steps run the real data path code
(no timing is asserted: the figures are for docs/datapath.md, measured by hand)."""

from __future__ import annotations

import pytest

from tunvpn.dataplane.bench_cold import PING, LonePacketPath, main, measure
from tunvpn.dataplane.bench_pipeline import SPI


@pytest.mark.parametrize("step", ["data_path", "minimal"])
def test_a_lone_packet_step_sends_one_esp_datagram(step: str) -> None:
    path = LonePacketPath()
    try:
        path.offer()
        getattr(path, step)()
        path.sink.setblocking(True)
        path.sink.settimeout(5)
        datagram = path.sink.recv(65536)
        assert datagram[:4] == SPI.to_bytes(4, "big")
        assert len(datagram) > 84 + 16  # the ping, sealed with its ICV
    finally:
        path.close()


def test_every_step_is_measured(capsys: pytest.CaptureFixture[str]) -> None:
    results = measure(gap=0.001, rounds=2, warm_rounds=2)
    assert set(results) == {
        "python call",
        "aes-256-gcm seal",
        "udp send+recv",
        "lone packet out",
        "lone packet out, minimal",
        "lone packet in",
    }
    assert all(warm > 0 and cold > 0 for warm, cold in results.values())
    main(["--gap", "0.001", "--rounds", "1", "--warm-rounds", "1"])
    assert "lone packet out, minimal" in capsys.readouterr().out


def test_the_lone_packet_in_step_writes_the_ping_to_the_tun_device() -> None:
    path = LonePacketPath()
    try:
        path.offer_esp()
        path.far.sock.setblocking(True)
        path.far.sock.settimeout(5)
        path.data_path_in()
        path.far_kernel_end.setblocking(True)
        path.far_kernel_end.settimeout(5)
        assert path.far_kernel_end.recv(65536)[10:] == PING  # after the virtio header
    finally:
        path.close()
