"""UDP encapsulation of ESP (RFC 3948), done in userspace: no kernel ``UDP_ENCAP``.

Port 4500 carries three things: ESP packets (the first four octets are the non-zero SPI),
IKE messages behind a four-octet zero non-ESP marker, and NAT-keepalives (one 0xFF octet).
The one classifier of the port, :func:`classify_datagram`, lives in :mod:`tunvpn.ipsec.udpencap`
(the IKE core needs it too; both cores import :mod:`tunvpn.ipsec`); this module re-exports it
with the helpers of the ESP side.
"""

from __future__ import annotations

from tunvpn.ipsec.udpencap import ESP_MIN_LEN, NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify_datagram


def split_datagrams(
    datagrams: list[bytes],
) -> tuple[list[bytes], list[bytes], int, int]:
    """Sort a received batch: ``(esp, ike_messages, keepalives, invalid)``.

    IKE messages come back without their non-ESP marker, ready for the IKE engine.
    """
    esp: list[bytes] = []
    ike: list[bytes] = []
    keepalives = invalid = 0
    for data in datagrams:
        kind = classify_datagram(data)
        if kind is DatagramKind.ESP:
            esp.append(data)
        elif kind is DatagramKind.IKE:
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


__all__ = [
    "ESP_MIN_LEN",
    "NAT_KEEPALIVE",
    "NON_ESP_MARKER",
    "DatagramKind",
    "classify_datagram",
    "nat_keepalive",
    "split_datagrams",
    "strip_non_esp_marker",
    "with_non_esp_marker",
]
