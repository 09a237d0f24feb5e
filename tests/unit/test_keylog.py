"""tunvpn.keylog: the Wireshark UAT formats, and tshark really decrypting with them.

The tshark test uses the real captures in tests/vectors/ (strongSwan <-> vpnc, strongSwan <->
strongSwan) with the keys charon printed; it needs only the tshark binary, not root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.vectors import captures as cap
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform
from tunvpn.keylog import (
    ESP_AUTH_LABELS,
    ESP_ENCRYPTION_LABELS,
    KeyLog,
    esp_line,
    ike_line,
    read_table,
    tshark_args,
)

DATA = Path(__file__).resolve().parents[1] / "vectors"
ICOOKIE = bytes.fromhex("0011223344556677")


def test_ike_line_is_bare_hex() -> None:
    assert ike_line(ICOOKIE, bytes(range(16))) == "0011223344556677,000102030405060708090a0b0c0d0e0f\n"


def test_esp_line_gcm() -> None:
    line = esp_line("10.0.0.1", "10.0.0.2", 0xC0FFEE, EspTransform.AES_GCM_16, bytes(20), None, b"")
    assert line == (
        '"IPv4","10.0.0.1","10.0.0.2","0x00c0ffee","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x0000000000000000000000000000000000000000","NULL",""\n'
    )


def test_esp_line_cbc_hmac_and_ipv6() -> None:
    line = esp_line(
        "2001:db8::1",
        "2001:db8::2",
        1,
        EspTransform.AES_CBC,
        b"\x01" * 16,
        AuthAlgorithm.HMAC_SHA2_256,
        b"\x02" * 32,
    )
    fields = line.rstrip("\n").split(",")
    assert fields[0] == '"IPv6"'
    assert fields[4] == '"AES-CBC [RFC3602]"'
    assert fields[6] == '"HMAC-SHA-256-128 [RFC4868]"'
    assert fields[7] == '"0x' + "02" * 32 + '"'


@pytest.mark.parametrize(
    "transform",
    [EspTransform.AES_CCM_16, EspTransform.NULL_AUTH_AES_GMAC, EspTransform.CHACHA20_POLY1305_PRIVATE],
)
def test_transforms_wireshark_4_0_cannot_use_become_comments(transform: EspTransform) -> None:
    line = esp_line("10.0.0.1", "10.0.0.2", 5, transform, b"k" * 36, None, b"")
    assert line.startswith("# SPI 0x00000005") and transform.name in line


def test_unverifiable_auth_algorithms_become_comments() -> None:
    line = esp_line("10.0.0.1", "10.0.0.2", 5, EspTransform.AES_CBC, bytes(16), AuthAlgorithm.KPDK, b"x")
    assert line.startswith("#") and "KPDK" in line


def test_invalid_arguments_are_local_errors() -> None:
    with pytest.raises(ValueError, match="AEAD"):
        esp_line("10.0.0.1", "10.0.0.2", 1, EspTransform.AES_GCM_16, bytes(20), AuthAlgorithm.HMAC_SHA1, b"x")
    with pytest.raises(ValueError, match="address families"):
        esp_line("10.0.0.1", "::1", 1, EspTransform.AES_CBC, bytes(16), None, b"")
    with pytest.raises(ValueError, match="SPI"):
        esp_line("10.0.0.1", "10.0.0.2", 1 << 32, EspTransform.AES_CBC, bytes(16), None, b"")
    with pytest.raises(ValueError, match="cookie"):
        KeyLog.log_ike_sa(object.__new__(KeyLog), b"short", bytes(16))


def test_labels_are_the_ones_tshark_4_0_knows() -> None:
    # Spelled out once more so that a typo in the module cannot agree with itself.
    assert set(ESP_ENCRYPTION_LABELS.values()) <= {
        "NULL",
        "TripleDES-CBC [RFC2451]",
        "AES-CBC [RFC3602]",
        "AES-CTR [RFC3686]",
        "DES-CBC [RFC2405]",
        "CAST5-CBC [RFC2144]",
        "BLOWFISH-CBC [RFC2451]",
        "TWOFISH-CBC",
        "AES-GCM with 8 octet ICV [RFC4106]",
        "AES-GCM with 12 octet ICV [RFC4106]",
        "AES-GCM with 16 octet ICV [RFC4106]",
    }
    assert set(ESP_AUTH_LABELS.values()) <= {
        "NULL",
        "HMAC-SHA-1-96 [RFC2404]",
        "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
        "HMAC-SHA-256-128 [RFC4868]",
        "HMAC-SHA-384-192 [RFC4868]",
        "HMAC-SHA-512-256 [RFC4868]",
        "HMAC-MD5-96 [RFC2403]",
        "MAC-RIPEMD-160-96 [RFC2857]",
        "ANY 64 bit authentication [no checking]",
        "ANY 96 bit authentication [no checking]",
        "ANY 128 bit authentication [no checking]",
        "ANY 192 bit authentication [no checking]",
        "ANY 256 bit authentication [no checking]",
    }


def test_files_are_private_and_appended(tmp_path: Path) -> None:
    base = tmp_path / "keys"
    old_umask = os.umask(0o022)
    try:
        log = KeyLog(base)
        log.log_ike_sa(ICOOKIE, bytes(16))
        log.log_esp_sa("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_GCM_16, bytes(20), None, b"")
        for suffix in ("ikev1_decryption_table", "esp_sa"):
            path = tmp_path / f"keys.{suffix}"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # A second KeyLog on the same path appends and re-tightens a loosened mode.
        (tmp_path / "keys.esp_sa").chmod(0o644)
        KeyLog(base).log_esp_sa("10.0.0.2", "10.0.0.1", 8, EspTransform.AES_GCM_16, bytes(20), None, b"")
        assert stat.S_IMODE((tmp_path / "keys.esp_sa").stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
    assert len(read_table(tmp_path / "keys.esp_sa")) == 2
    assert read_table(tmp_path / "keys.ikev1_decryption_table") == [ICOOKIE.hex() + "," + "00" * 16]
    assert "0011223344556677" not in repr(log)


def test_tshark_args_shape(tmp_path: Path) -> None:
    log = KeyLog(tmp_path / "k")
    assert tshark_args(tmp_path / "k") == []
    log.log_ike_sa(ICOOKIE, bytes(16))
    log.log_esp_sa("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_CCM_16, bytes(20), None, b"")  # comment only
    assert tshark_args(tmp_path / "k") == [
        "-o",
        "uat:ikev1_decryption_table:" + ike_line(ICOOKIE, bytes(16))[:-1],
    ]
    log.log_esp_sa("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_GCM_16, bytes(20), None, b"")
    args = tshark_args(tmp_path / "k")
    assert args[2:6] == [
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]
    assert args[6:8] == [
        "-o",
        "uat:esp_sa:"
        + esp_line("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_GCM_16, bytes(20), None, b"")[:-1],
    ]


# ------------------------------------------------------------------ real tshark, real captures

STRONGSWAN_ESP = {
    "AES_GCM_16": (EspTransform.AES_GCM_16, None),
    "AES_CBC": (EspTransform.AES_CBC, None),
}
STRONGSWAN_INTEG = {"HMAC_SHA1_96": AuthAlgorithm.HMAC_SHA1, "HMAC_SHA2_256_128": AuthAlgorithm.HMAC_SHA2_256}


def write_keylog(base: Path, icookie: bytes, ka: bytes, sas: tuple[cap.EspKeys, ...]) -> None:
    log = KeyLog(base)
    log.log_ike_sa(icookie, ka)
    for sa in sas:
        transform, _ = STRONGSWAN_ESP[sa.encryption]
        auth = STRONGSWAN_INTEG[sa.integrity] if sa.integrity else None
        log.log_esp_sa(sa.src, sa.dst, sa.spi, transform, sa.enc_key, auth, sa.auth_key)


def tshark_fields(pcap: Path, args: list[str], display_filter: str, *fields: str) -> list[list[str]]:
    argv = [
        "tshark",
        "-n",
        "-r",
        str(pcap),
        *args,
        "-Y",
        display_filter,
        "-T",
        "fields",
        "-E",
        "occurrence=a",
    ]
    for field in fields:
        argv += ["-e", field]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="needs tshark (apt-get install tshark)"
)


@needs_tshark
@pytest.mark.parametrize(
    ("pcap", "icookie", "ka", "sas", "flow"),
    [
        (
            cap.VPNC_PCAP,
            cap.VPNC_ICOOKIE,
            cap.VPNC_ENCRYPTION_KEY_KA,
            cap.VPNC_ESP_SAS,
            cap.VPNC_FLOW,
        ),
        (
            cap.S2S_PCAP,
            cap.S2S_ICOOKIE,
            cap.S2S_ENCRYPTION_KEY_KA,
            cap.S2S_ESP_SAS,
            cap.S2S_FLOW,
        ),
    ],
    ids=["vpnc-aggressive-aes256cbc-sha1", "charon-mainmode-aes128gcm16"],
)
def test_tshark_decrypts_real_captures_with_our_key_log(
    tmp_path: Path,
    pcap: str,
    icookie: bytes,
    ka: bytes,
    sas: tuple[cap.EspKeys, ...],
    flow: tuple[cap.Captured, ...],
) -> None:
    base = tmp_path / "keylog"
    write_keylog(base, icookie, ka, sas)
    args = tshark_args(base)

    # Without keys tshark sees ESP only; with them, every ping, each ICV verified.
    assert tshark_fields(DATA / pcap, [], "icmp", "frame.number") == []
    icmp = tshark_fields(DATA / pcap, args, "icmp", "frame.number", "esp.icv_good")
    assert len(icmp) == 6 and all(good == "1" for _, good in icmp), icmp

    # Every encrypted ISAKMP message decrypts: tshark decodes the payload chain inside, and it is
    # the chain the capture recorded (proposal/transform payloads nest inside SA, left out).
    assert tshark_fields(DATA / pcap, [], "isakmp.flags & 1 and isakmp.typepayload", "frame.number") == []
    chains = {
        int(frame): [int(t) for t in types.split(",") if int(t) not in (2, 3)]
        for frame, types in tshark_fields(
            DATA / pcap, args, "isakmp.flags & 1", "frame.number", "isakmp.typepayload"
        )
    }
    assert chains == {m.frame: m.payloads for m in flow if m.encrypted}
