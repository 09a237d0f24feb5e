"""A minimal classic-pcap reader for the captures made in tests (Ethernet/IPv4/UDP only)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2


@dataclass(frozen=True)
class UdpDatagram:
    """One captured UDP datagram."""

    index: int
    """1-based frame number, as tshark counts."""
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes

    @property
    def kind(self) -> str:
        """ "ike", "esp" or "keepalive" (RFC 3948 demultiplexing on port 4500)."""
        if 500 in (self.sport, self.dport) and 4500 not in (self.sport, self.dport):
            return "ike"
        if self.payload == b"\xff":
            return "keepalive"
        return "ike" if self.payload.startswith(NON_ESP_MARKER) else "esp"

    @property
    def ike(self) -> bytes:
        """The ISAKMP message, non-ESP marker stripped."""
        if self.kind != "ike":
            raise ValueError(f"frame {self.index} is {self.kind}, not IKE")
        if 4500 in (self.sport, self.dport):
            return self.payload[len(NON_ESP_MARKER) :]
        return self.payload


def read_udp(path: str | Path) -> list[UdpDatagram]:
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng? capture with dumpcap -P)")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, only Ethernet is supported")
    out: list[UdpDatagram] = []
    pos, index = 24, 0
    while pos + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        index += 1
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != 17:  # UDP
            continue
        udp = ip[ihl:total]
        sport, dport, length = struct.unpack_from("!HHH", udp, 0)
        out.append(
            UdpDatagram(
                index=index,
                src=str(ipaddress.IPv4Address(ip[12:16])),
                sport=sport,
                dst=str(ipaddress.IPv4Address(ip[16:20])),
                dport=dport,
                payload=bytes(udp[8:length]),
            )
        )
    return out
