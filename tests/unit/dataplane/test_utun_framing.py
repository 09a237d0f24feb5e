"""The macOS utun framing (pure; runs on any platform) and the backend's platform guard."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunvpn.dataplane import PacketDevice, open_tun
from tunvpn.dataplane.packets import PacketError
from tunvpn.dataplane.utun_framing import (
    DARWIN_AF_INET,
    DARWIN_AF_INET6,
    utun_frame,
    utun_header,
    utun_unframe,
)

# An ICMP echo request 10.0.0.1 -> 10.0.0.2 and the start of an IPv6 packet, as a utun socket
# carries them: xnu bsd/net/if_utun.c prepends the protocol family as a big-endian u32.
IPV4_PING = bytes.fromhex("4500001c00010000400166de0a0000010a0000020800f7ff00000000")
IPV6_HEADER = bytes.fromhex(
    "6000000000083a40" + "fd00" + "00" * 13 + "01" + "fd00" + "00" * 13 + "02"
) + bytes(8)


def test_known_frames() -> None:
    assert utun_frame(IPV4_PING) == bytes.fromhex("00000002") + IPV4_PING
    assert utun_frame(IPV6_HEADER) == bytes.fromhex("0000001e") + IPV6_HEADER
    assert utun_unframe(bytes.fromhex("00000002") + IPV4_PING) == IPV4_PING
    assert utun_unframe(bytes.fromhex("0000001e") + IPV6_HEADER) == IPV6_HEADER
    assert (DARWIN_AF_INET, DARWIN_AF_INET6) == (2, 30)  # Darwin's numbers, not Linux's 10
    assert utun_header(IPV4_PING) + IPV4_PING == utun_frame(IPV4_PING)


@given(st.sampled_from([0x45, 0x4F, 0x60, 0x6A]), st.binary(max_size=1600))
def test_round_trip(first: int, rest: bytes) -> None:
    packet = bytes([first]) + rest
    framed = utun_frame(packet)
    assert len(framed) == len(packet) + 4
    assert utun_unframe(framed) == packet
    assert utun_frame(memoryview(packet)) == framed


@pytest.mark.parametrize("packet", [b"", b"\x00abc", b"\x50" * 20, b"\xf0"])
def test_frame_rejects_non_ip(packet: bytes) -> None:
    with pytest.raises(PacketError):
        utun_frame(packet)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x02",  # header only
        bytes.fromhex("0000000a") + IPV6_HEADER,  # Linux AF_INET6 (10) is not Darwin's
        bytes.fromhex("00000002") + IPV6_HEADER,  # family says IPv4, packet is IPv6
        bytes.fromhex("0000001e") + IPV4_PING,
        bytes.fromhex("02000000") + IPV4_PING,  # little-endian family
    ],
)
def test_unframe_rejects(data: bytes) -> None:
    with pytest.raises(PacketError):
        utun_unframe(data)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the guard on other platforms")
def test_utun_backend_refuses_off_darwin() -> None:
    from tunvpn.dataplane.utun_darwin import UtunDevice, UtunError, utun_unit

    with pytest.raises(UtunError, match="macOS"):
        UtunDevice("utun3")
    assert (utun_unit("utun"), utun_unit(""), utun_unit("utun0"), utun_unit("utun12")) == (0, 0, 1, 13)
    with pytest.raises(ValueError):
        utun_unit("tun0")


def test_open_tun_picks_the_backend() -> None:
    with pytest.raises(OSError, match="no TUN backend"):
        open_tun("x", platform="win32")
    if sys.platform != "darwin":
        with pytest.raises(OSError, match="macOS"):
            open_tun("utun3", platform="darwin")


def test_backends_satisfy_the_protocol() -> None:
    from tunvpn.dataplane.tun_linux import TunDevice
    from tunvpn.dataplane.utun_darwin import UtunDevice

    for cls in (TunDevice, UtunDevice):
        for method in ("read_batch", "write_batch", "fileno", "close"):
            assert callable(getattr(cls, method))
    assert PacketDevice.__name__ == "PacketDevice"
