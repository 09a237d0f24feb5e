"""Shared helpers for the ESP core tests: packets and SA pairs made by hand."""

from __future__ import annotations

import os
import struct

from tunvpn.esp import EspSuite, InboundSA, Lifetime, OutboundSA
from tunvpn.esp.sa import NO_LIMITS
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform

ALL_SUITES = [
    EspSuite(EspTransform.AES_GCM_16, 128),
    EspSuite(EspTransform.AES_GCM_16, 192),
    EspSuite(EspTransform.AES_GCM_16, 256),
    EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256),
    EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1),
    EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256),
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256),
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_384),
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_512),
]
GCM128 = ALL_SUITES[0]


def ipv4(src: str = "10.1.0.2", dst: str = "10.2.0.2", payload: bytes = b"", protocol: int = 17) -> bytes:
    """An IPv4 packet (checksum zero) around ``payload``."""
    total = 20 + len(payload)
    return (
        struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0,
            64,
            protocol,
            0,
            bytes(map(int, src.split("."))),
            bytes(map(int, dst.split("."))),
        )
        + payload
    )


def ipv6(
    src: bytes = b"\xfd" + bytes(14) + b"\x01",
    dst: bytes = b"\xfd" + bytes(14) + b"\x02",
    payload: bytes = b"",
) -> bytes:
    """An IPv6 packet around ``payload`` (next header 59)."""
    return struct.pack(">IHBB", 6 << 28, len(payload), 59, 64) + src + dst + payload


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def make_keys(suite: EspSuite) -> tuple[bytes, bytes]:
    """Random encryption and integrity keys of the right lengths."""
    return os.urandom(suite.enc_key_len), os.urandom(suite.auth_key_len)


def sa_pair(
    suite: EspSuite = GCM128,
    *,
    spi: int = 0x1234,
    esn: bool = False,
    lifetime: Lifetime = NO_LIMITS,
    window: int = 4096,
    **kwargs: object,
) -> tuple[OutboundSA, InboundSA]:
    """An outbound SA and the inbound SA that accepts its packets (same keys)."""
    key, auth = make_keys(suite)
    outbound = OutboundSA(spi, suite, key, auth, esn=esn, lifetime=lifetime)
    inbound = InboundSA(spi, suite, key, auth, esn=esn, lifetime=lifetime, replay_window=window, **kwargs)  # type: ignore[arg-type]
    return outbound, inbound
