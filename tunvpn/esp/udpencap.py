"""UDP encapsulation of ESP (RFC 3948), done in userspace: no kernel ``UDP_ENCAP``.

Port 4500 carries three things: ESP packets (the first four octets are the non-zero SPI),
IKE messages behind a four-octet zero non-ESP marker, and NAT-keepalives (one 0xFF octet).
"""

from __future__ import annotations

from .constants import DatagramKind

NON_ESP_MARKER = b"\x00\x00\x00\x00"
"""RFC 3948 section 2.2: precedes IKE messages on the NAT-T port."""
NAT_KEEPALIVE = b"\xff"
"""RFC 3948 section 2.3: the whole payload of a NAT-keepalive."""
ISAKMP_HEADER_LEN = 28
"""RFC 2408 section 3.1: an IKE message is at least its fixed header."""
ESP_MIN_LEN = 8
"""SPI and sequence number: anything shorter cannot be ESP."""


def classify_datagram(data: bytes | bytearray | memoryview) -> DatagramKind:
    """What a UDP payload received on port 4500 is (RFC 3948 section 2)."""
    n = len(data)
    if n >= ESP_MIN_LEN and data[:4] != NON_ESP_MARKER:
        return DatagramKind.ESP
    if n == 1 and data[0] == 0xFF:
        return DatagramKind.KEEPALIVE
    if n >= 4 + ISAKMP_HEADER_LEN and data[:4] == NON_ESP_MARKER:
        return DatagramKind.IKE
    return DatagramKind.INVALID


def split_datagrams(
    datagrams: list[bytes],
) -> tuple[list[bytes], list[bytes], int, int]:
    """Sort a received batch: ``(esp, ike_messages, keepalives, invalid)``.

    IKE messages come back without their non-ESP marker, ready for the IKE engine.
    """
    esp: list[bytes] = []
    ike: list[bytes] = []
    keepalives = invalid = 0
    marker = NON_ESP_MARKER
    for data in datagrams:
        if len(data) >= ESP_MIN_LEN and data[:4] != marker:
            esp.append(data)
            continue
        kind = classify_datagram(data)
        if kind is DatagramKind.IKE:
            ike.append(bytes(data[4:]))
        elif kind is DatagramKind.KEEPALIVE:
            keepalives += 1
        else:
            invalid += 1
    return esp, ike, keepalives, invalid


def nat_keepalive() -> bytes:
    """The payload of a NAT-keepalive datagram (RFC 3948 section 2.3)."""
    return NAT_KEEPALIVE


def with_non_esp_marker(ike_message: bytes) -> bytes:
    """An IKE message as sent on port 4500 (RFC 3948 section 2.2)."""
    return NON_ESP_MARKER + ike_message


def strip_non_esp_marker(data: bytes) -> bytes | None:
    """The IKE message inside a port-4500 datagram, or None if it is not one."""
    if classify_datagram(data) is not DatagramKind.IKE:
        return None
    return bytes(data[4:])
