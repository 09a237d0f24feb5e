"""tshark, given our ``--keylog`` output, decrypts and dissects a whole tunvpn handshake
(Main and Aggressive Mode, XAUTH, Mode Config, Quick Mode) with no malformed packet.

The capture is written from the datagrams two in-memory engines exchanged, wrapped in
IPv4/UDP headers (pcap LINKTYPE_RAW); tshark reads it like any capture.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.helpers.ike_pair import Pair, client_config, full_tunnel, gateway_config
from tunvpn.ike import events as ev
from tunvpn.keylog import KeyLog, tshark_args

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

LINKTYPE_RAW = 101


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    s, d = ipaddress.IPv4Address(src[0]).packed, ipaddress.IPv4Address(dst[0]).packed
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s, d)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + udp


def write_pcap(path: Path, frames: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_800_000_000 + i, 0, len(frame), len(frame)))
            f.write(frame)


class RecordingPair(Pair):
    """A Pair that also records each datagram with its addresses, as on a wire."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.frames: list[bytes] = []

    def transfer(self, sender, *, drop: bool = False) -> int:  # type: ignore[override]
        out = sender.engine.datagrams_to_send()
        receiver = self._other(sender)
        for data, remote, local_port in out:
            self.frames.append(_ipv4_udp((sender.ip, local_port), remote, data))
            receiver.engine.receive_datagram(data, (sender.ip, local_port), remote, self.now)
        sender.drain()
        receiver.drain()
        return len(out)


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_tshark_decrypts_a_full_handshake(tmp_path: Path, mode: str) -> None:
    pair = RecordingPair(client_config(force_encap=True), gateway_config(require_xauth=True))
    children = full_tunnel(pair, mode=mode)
    keylog = KeyLog(tmp_path / "keys")
    for e in pair.client.of(ev.Phase1Established):
        keylog.log_ike_sa(e.sa_id[:8], e.enc_key)
    pcap = tmp_path / "ike.pcap"
    write_pcap(pcap, pair.frames)
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), *tshark_args(tmp_path / "keys"), "-V"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Malformed" not in out and "Expert Info (Error" not in out
    assert out.count("Internet Security Association and Key Management Protocol") == len(pair.frames)
    # every encrypted message was decrypted: its payloads are dissected by name
    assert "XAUTH_USER_NAME: alice" in out
    assert "ISAKMP_CFG_REPLY" in out and "INTERNAL_IP4_ADDRESS" in out
    assert "Encapsulation-Mode: UDP-Encapsulated-Tunnel" in out
    assert out.count("Payload: Identification (5)") >= 4  # phase 1 IDs + IDci/IDcr (twice)
    assert len(children) == 2
