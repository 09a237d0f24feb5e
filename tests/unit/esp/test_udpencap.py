"""UDP encapsulation of ESP (RFC 3948) without the kernel, and the drop-log token bucket."""

from __future__ import annotations

from tunvpn.esp import (
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    DatagramKind,
    TokenBucket,
    classify_datagram,
    nat_keepalive,
    split_datagrams,
    strip_non_esp_marker,
    with_non_esp_marker,
)

IKE_HEADER = bytes(range(28))  # any 28 octets: the classifier only needs the length


def test_classify_datagrams_on_port_4500() -> None:
    esp = (0x1234).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(40)
    assert classify_datagram(esp) is DatagramKind.ESP
    assert classify_datagram(memoryview(esp)) is DatagramKind.ESP
    assert classify_datagram(b"\xff") is DatagramKind.KEEPALIVE  # RFC 3948 section 2.3
    assert classify_datagram(NON_ESP_MARKER + IKE_HEADER) is DatagramKind.IKE  # section 2.2
    assert classify_datagram(NON_ESP_MARKER + IKE_HEADER[:27]) is DatagramKind.INVALID
    assert classify_datagram(b"\x00\x00\x00\x00\x00\x00\x00\x01") is DatagramKind.INVALID  # SPI 0
    assert classify_datagram(b"\x01\x02\x03") is DatagramKind.INVALID
    assert classify_datagram(b"\xfe") is DatagramKind.INVALID
    assert classify_datagram(b"") is DatagramKind.INVALID


def test_keepalive_and_marker_helpers() -> None:
    assert nat_keepalive() == NAT_KEEPALIVE == b"\xff"
    framed = with_non_esp_marker(IKE_HEADER)
    assert framed == b"\x00\x00\x00\x00" + IKE_HEADER
    assert strip_non_esp_marker(framed) == IKE_HEADER
    assert strip_non_esp_marker(b"\x00\x00\x12\x34" + bytes(40)) is None


def test_split_a_received_batch() -> None:
    esp1 = b"\x00\x00\x10\x00" + bytes(30)
    esp2 = b"\x00\x00\x10\x01" + bytes(30)
    batch = [esp1, b"\xff", NON_ESP_MARKER + IKE_HEADER, b"\x00\x01", esp2, b"\xff"]
    esp, ike, keepalives, invalid = split_datagrams(batch)
    assert esp == [esp1, esp2]
    assert ike == [IKE_HEADER]
    assert (keepalives, invalid) == (2, 1)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(100.4) is False  # 0.8 of a token
    assert bucket.allow(100.5) is True
    assert [bucket.allow(200.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert bucket.allow(150.0) is False  # time going backwards adds nothing
