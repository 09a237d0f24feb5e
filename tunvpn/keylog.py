"""Key log for Wireshark/tshark: IKEv1 and ESP keys as the dissectors' UAT tables.

``KeyLog(PATH)`` appends to two files in Wireshark's UAT ("user access table") syntax:

``PATH.ikev1_decryption_table``
    one line per IKE SA: ``<initiator cookie hex>,<encryption key hex>`` (ISAKMP dissector,
    table ``ikev1_decryption_table``; both fields are bare hex byte strings).
``PATH.esp_sa``
    one line per ESP SA: ``"IPv4","<src>","<dst>","0x<spi>","<encryption>","0x<key>",
    "<authentication>","0x<key>"`` (ESP dissector, table ``esp_sa``).

``tshark_args(PATH)`` turns both files into ``-o uat:...`` options, so
``tshark -r cap.pcap *tshark_args(PATH) -V`` shows decrypted IKE and ESP. The suffixes are the
file names Wireshark itself uses in a profile directory, so the two files can also be copied into
``~/.config/wireshark/profiles/NAME/`` (without the ``PATH.`` prefix) for the GUI.

Checked against tshark 4.0.17 (Debian 12): the algorithm strings below are the exact enum
labels of its ``esp_sa`` table; a label the dissector does not know makes tshark reject the whole
``-o`` option, so transforms it cannot decrypt are written as ``#`` comment lines instead.

What to log:
* IKEv1: the encryption key is the cipher key proper, e.g. 16 bytes for AES-128 (RFC 2409
  appendix B: SKEYID_e, expanded and truncated). Wireshark recomputes the IVs itself.
* ESP: the key is the cipher's share of KEYMAT including the salt/nonce where the mode has one
  (AES-GCM: key + 4-byte salt, RFC 4106 section 8.1; AES-CTR: key + 4-byte nonce, RFC 3686
  section 5.1). ``src``/``dst`` are the outer addresses of packets carrying this SPI.

The files hold live session keys: they are created 0600 and exist only when a user asks for them.
They are opened without following a symbolic link; a link, a hard-linked file, a file owned by
another user or one others may write to is refused (:class:`tunvpn.config.secretfile.SecretFileError`),
so a link planted at the path in a shared directory cannot redirect the keys (or clobber a file).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from tunvpn.config.secretfile import open_private_append
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform

IKEV1_TABLE = "ikev1_decryption_table"
ESP_TABLE = "esp_sa"

# ESP transform -> label in Wireshark's esp_encryption_type_vals (packet-esp.c).
ESP_ENCRYPTION_LABELS: dict[EspTransform, str] = {
    EspTransform.NULL: "NULL",
    EspTransform.DES: "DES-CBC [RFC2405]",
    EspTransform.DES3: "TripleDES-CBC [RFC2451]",
    EspTransform.AES_CBC: "AES-CBC [RFC3602]",
    EspTransform.AES_CTR: "AES-CTR [RFC3686]",
    EspTransform.AES_GCM_8: "AES-GCM with 8 octet ICV [RFC4106]",
    EspTransform.AES_GCM_12: "AES-GCM with 12 octet ICV [RFC4106]",
    EspTransform.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
}

# Newer Wireshark releases than 4.0 (not installed here, so not verified) know ChaCha20-Poly1305;
# 4.0 does not. Written as a comment line unless the caller opts in.
ESP_ENCRYPTION_LABELS_NEWER: dict[EspTransform, str] = {
    EspTransform.CHACHA20_POLY1305_PRIVATE: "ChaCha20 with Poly1305 [RFC7634]",
}

AEAD_TRANSFORMS = frozenset(
    {
        EspTransform.AES_GCM_8,
        EspTransform.AES_GCM_12,
        EspTransform.AES_GCM_16,
        EspTransform.AES_CCM_8,
        EspTransform.AES_CCM_12,
        EspTransform.AES_CCM_16,
        EspTransform.NULL_AUTH_AES_GMAC,
        EspTransform.CHACHA20_POLY1305_PRIVATE,
    }
)

# IKEv1 ESP authentication algorithm -> label in Wireshark's esp_authentication_type_vals.
ESP_AUTH_LABELS: dict[AuthAlgorithm, str] = {
    AuthAlgorithm.HMAC_MD5: "HMAC-MD5-96 [RFC2403]",
    AuthAlgorithm.HMAC_SHA1: "HMAC-SHA-1-96 [RFC2404]",
    AuthAlgorithm.HMAC_SHA2_256: "HMAC-SHA-256-128 [RFC4868]",
    AuthAlgorithm.HMAC_SHA2_384: "HMAC-SHA-384-192 [RFC4868]",
    AuthAlgorithm.HMAC_SHA2_512: "HMAC-SHA-512-256 [RFC4868]",
    AuthAlgorithm.HMAC_RIPEMD: "MAC-RIPEMD-160-96 [RFC2857]",
    # Wireshark cannot verify AES-XCBC-MAC-96 (RFC 3566) but can skip a 96-bit ICV and decrypt.
    AuthAlgorithm.AES_XCBC_MAC: "ANY 96 bit authentication [no checking]",
}
ESP_AUTH_NULL = "NULL"

_HEADER = "# tunvpn key log for Wireshark (UAT table {table}); contains live keys, keep private.\n"


class KeyLog:
    """Append IKEv1 and ESP keys to ``PATH.ikev1_decryption_table`` and ``PATH.esp_sa``."""

    def __init__(self, path: str | os.PathLike[str], *, allow_newer_wireshark_labels: bool = False) -> None:
        self.path = Path(path)
        self.ike_path = table_path(self.path, IKEV1_TABLE)
        self.esp_path = table_path(self.path, ESP_TABLE)
        self._encryption_labels = dict(ESP_ENCRYPTION_LABELS)
        if allow_newer_wireshark_labels:
            self._encryption_labels.update(ESP_ENCRYPTION_LABELS_NEWER)
        for file, table in ((self.ike_path, IKEV1_TABLE), (self.esp_path, ESP_TABLE)):
            _append_private(file, "", header=_HEADER.format(table=table))

    def __repr__(self) -> str:
        return f"KeyLog({str(self.path)!r})"

    def log_ike_sa(self, icookie: bytes, enc_key: bytes) -> None:
        """Record the ISAKMP SA with initiator cookie ``icookie`` and cipher key ``enc_key``."""
        if len(icookie) != 8:
            raise ValueError(f"initiator cookie must be 8 bytes, got {len(icookie)}")
        if not enc_key:
            raise ValueError("empty IKE encryption key")
        _append_private(self.ike_path, ike_line(icookie, enc_key))

    def log_esp_sa(
        self,
        src: str,
        dst: str,
        spi: int,
        transform: EspTransform,
        enc_key: bytes,
        auth: AuthAlgorithm | None,
        auth_key: bytes,
    ) -> None:
        """Record one direction of an ESP SA (packets ``src`` -> ``dst`` carrying ``spi``).

        ``auth`` is None (and ``auth_key`` empty) for AEAD transforms.
        """
        _append_private(
            self.esp_path,
            esp_line(src, dst, spi, transform, enc_key, auth, auth_key, labels=self._encryption_labels),
        )


def table_path(path: str | os.PathLike[str], table: str) -> Path:
    """``PATH.<table>``: where KeyLog(PATH) keeps the given UAT table."""
    return Path(f"{os.fspath(path)}.{table}")


def ike_line(icookie: bytes, enc_key: bytes) -> str:
    """One ``ikev1_decryption_table`` record (both fields are UAT hex-byte fields: no quotes)."""
    return f"{icookie.hex()},{enc_key.hex()}\n"


def esp_line(
    src: str,
    dst: str,
    spi: int,
    transform: EspTransform,
    enc_key: bytes,
    auth: AuthAlgorithm | None,
    auth_key: bytes,
    *,
    labels: dict[EspTransform, str] = ESP_ENCRYPTION_LABELS,
) -> str:
    """One ``esp_sa`` record, or a ``#`` comment line if this Wireshark cannot use it."""
    protocol = _protocol(src, dst)
    if not 0 <= spi <= 0xFFFFFFFF:
        raise ValueError(f"SPI out of range: {spi}")
    transform = EspTransform(transform)
    enc_label = labels.get(transform)
    if transform in AEAD_TRANSFORMS:
        if auth is not None or auth_key:
            raise ValueError(f"{transform.name} is AEAD: pass auth=None and no auth key")
        auth_label: str | None = ESP_AUTH_NULL
    elif auth is None:
        auth_label = ESP_AUTH_NULL
        if auth_key:
            raise ValueError("auth key given without an auth algorithm")
    else:
        auth_label = ESP_AUTH_LABELS.get(AuthAlgorithm(auth))
    if enc_label is None:
        return _unusable(spi, src, dst, transform.name)
    if auth_label is None:
        return _unusable(spi, src, dst, AuthAlgorithm(auth).name if auth is not None else "?")
    fields = [
        protocol,
        src,
        dst,
        f"0x{spi:08x}",
        enc_label,
        "0x" + enc_key.hex() if enc_key else "",
        auth_label,
        "0x" + auth_key.hex() if auth_key else "",
    ]
    return ",".join(f'"{field}"' for field in fields) + "\n"


def read_table(path: str | os.PathLike[str]) -> list[str]:
    """The records of one UAT file, comments and blank lines dropped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def tshark_args(path: str | os.PathLike[str]) -> list[str]:
    """tshark ``-o`` options that load the key log written by ``KeyLog(path)``."""
    args: list[str] = []
    for record in read_table(table_path(path, IKEV1_TABLE)):
        args += ["-o", f"uat:{IKEV1_TABLE}:{record}"]
    esp_records = read_table(table_path(path, ESP_TABLE))
    if esp_records:
        # ESP decryption and ICV checking are off by default in the dissector.
        args += ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    for record in esp_records:
        args += ["-o", f"uat:{ESP_TABLE}:{record}"]
    return args


def _unusable(spi: int, src: str, dst: str, what: str) -> str:
    return f"# SPI 0x{spi:08x} {src} -> {dst}: {what} not decryptable by this Wireshark\n"


def _protocol(src: str, dst: str) -> str:
    versions = set()
    for address in (src, dst):
        if address == "*":  # Wireshark's wildcard
            continue
        versions.add(ipaddress.ip_address(address).version)
    if len(versions) > 1:
        raise ValueError(f"mixed address families: {src} -> {dst}")
    return "IPv6" if versions == {6} else "IPv4"


def _append_private(path: Path, text: str, *, header: str = "") -> None:
    """Append ``text`` to ``path``, creating it 0600 (:func:`tunvpn.config.secretfile.open_private_append`:
    a symbolic link, a hard-linked, foreign-owned or group/other-writable file is refused with
    :class:`~tunvpn.config.secretfile.SecretFileError`; one of ours others may read is tightened to 0600)."""
    fd = open_private_append(path, "key log")
    try:
        if header and os.fstat(fd).st_size == 0:
            os.write(fd, header.encode())
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
