"""What arrived on UDP port 4500 (RFC 3948 section 2): the one classifier of the NAT-T port.

Port 4500 carries three things: ESP packets (the first four octets are the non-zero SPI,
section 2.1), IKE messages behind a four-octet zero non-ESP marker (section 2.2), and
NAT-keepalives (the single octet 0xFF, section 2.3). Every place that splits port-4500
traffic asks :func:`classify_datagram`: the data thread (:mod:`tunvpn.dataplane.thread`),
the IKE driver when it owns the socket itself (:mod:`tunvpn.shell.udp`) and the IKE engine
(:meth:`tunvpn.ike.engine.IkeEngine.receive_datagram`). It lives in :mod:`tunvpn.ipsec`,
which both cores import and which imports neither; :mod:`tunvpn.esp.udpencap` re-exports it
with the ESP side's batch helpers.
"""

from __future__ import annotations

from enum import IntEnum

NON_ESP_MARKER = b"\x00\x00\x00\x00"
"""Four zero octets in front of an IKE message on port 4500 (RFC 3948 section 2.2)."""
NAT_KEEPALIVE = b"\xff"
"""The payload of a NAT-keepalive (RFC 3948 section 2.3)."""
IKE_HEADER_SIZE = 28
"""The ISAKMP header (RFC 2408 section 3.1): anything shorter behind the marker is not IKE."""
ESP_MIN_LEN = 8
"""SPI and sequence number (RFC 4303 section 2): anything shorter cannot be ESP."""


class DatagramKind(IntEnum):
    """What arrived on UDP port 4500 (RFC 3948 section 2)."""

    ESP = 0
    """An ESP packet: the first four octets are a non-zero SPI."""
    IKE = 1
    """An IKE message behind the four-octet non-ESP marker (RFC 3948 section 2.2)."""
    KEEPALIVE = 2
    """A NAT-keepalive: the single octet 0xFF (RFC 3948 section 2.3)."""
    INVALID = 3
    """Anything else: too short for ESP, a marker with no IKE header behind it."""


def classify_datagram(data: bytes | bytearray | memoryview) -> DatagramKind:
    """What a UDP payload received on port 4500 is (RFC 3948 section 2)."""
    n = len(data)
    if n >= ESP_MIN_LEN and data[:4] != NON_ESP_MARKER:
        return DatagramKind.ESP
    if n == 1 and data[0] == NAT_KEEPALIVE[0]:
        return DatagramKind.KEEPALIVE
    if n >= len(NON_ESP_MARKER) + IKE_HEADER_SIZE and data[:4] == NON_ESP_MARKER:
        return DatagramKind.IKE
    return DatagramKind.INVALID


__all__ = [
    "ESP_MIN_LEN",
    "IKE_HEADER_SIZE",
    "NAT_KEEPALIVE",
    "NON_ESP_MARKER",
    "DatagramKind",
    "classify_datagram",
]
