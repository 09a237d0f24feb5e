"""ESP transforms: the suite a child SA negotiated, and the engines that seal and open packets.

An engine owns the keyed crypto objects of one SA direction, created once (never per
packet), and knows the wire layout of its transform:

- AEAD (AES-GCM-16, RFC 4106; ChaCha20-Poly1305, RFC 7634)::

      SPI(4) | Seq(4) | IV(8) | ciphertext | ICV(16)
      nonce = salt(4) | IV(8);  AAD = SPI | Seq, or SPI | Seq-high | Seq-low with ESN

  The IV is the 64-bit sequence number (RFC 4106 section 3.1 allows a counter), so it never
  repeats within an SA.
- AES-CBC (RFC 3602) with HMAC-SHA1-96 (RFC 2404) or HMAC-SHA2-256/384/512 (RFC 4868)::

      SPI(4) | Seq(4) | IV(16) | ciphertext | ICV
      ICV = HMAC(SPI | Seq | IV | ciphertext [| Seq-high with ESN]) truncated

  (RFC 4303 section 2.2.1: the high half of an ESN is authenticated but not sent.)

Per-packet cost matters here, so the engines avoid per-packet object creation. AES-CBC keeps
one encryption and one decryption context for the SA's life: creating a context per packet
costs ~30 us with OpenSSL 3, a persistent context's ``update`` ~1 us. With a persistent CBC
context the chaining value left by the previous packet (``C_prev``) enters the next packet, so
the encryptor is fed ``R | plaintext`` with ``R`` 16 fresh random bytes: the first output block
``E(R xor C_prev)`` is uniformly random and serves as the packet's IV, the rest is exactly
CBC of the plaintext under that IV. The decryptor is fed ``IV | ciphertext`` and its first
output block (garbage, chained from the previous packet) is dropped.

Engines are not thread-safe: one data-path thread drives an SA.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..ipsec.algorithms import AuthAlgorithm, EspTransform

Packet: TypeAlias = bytes | bytearray | memoryview

_M32 = 0xFFFF_FFFF
_pack_seq32 = struct.Struct(">I").pack
_pack_seq64 = struct.Struct(">Q").pack
_pack_header = struct.Struct(">IIQ").pack
"""SPI, low sequence number and the 8-octet IV (the sequence number) of an AEAD ESP packet."""

PAD_BYTES = bytes(range(1, 256))
"""RFC 4303 section 2.4: the default padding is 1, 2, 3, ...; ``PAD_BYTES[:n]`` is n of it."""
PAD_SUFFIXES = tuple(PAD_BYTES[:n] + bytes((n,)) for n in range(256))
"""``PAD_SUFFIXES[n]``: n octets of padding followed by the Pad Length n."""
Opener: TypeAlias = "Callable[[Packet, int], bytes | None]"


# ---------------------------------------------------------------------------- the suite

_HASHES: dict[AuthAlgorithm, tuple[type[hashes.HashAlgorithm], int, int]] = {
    # algorithm: (hash, key bytes, ICV bytes)
    AuthAlgorithm.HMAC_SHA1: (hashes.SHA1, 20, 12),  # RFC 2404: HMAC-SHA1-96
    AuthAlgorithm.HMAC_SHA2_256: (hashes.SHA256, 32, 16),  # RFC 4868 section 2.1: -256-128
    AuthAlgorithm.HMAC_SHA2_384: (hashes.SHA384, 48, 24),  # -384-192
    AuthAlgorithm.HMAC_SHA2_512: (hashes.SHA512, 64, 32),  # -512-256
}
_AEAD_TRANSFORMS = frozenset({EspTransform.AES_GCM_16, EspTransform.CHACHA20_POLY1305_PRIVATE})
_AES_KEY_BITS = frozenset({128, 192, 256})


@dataclass(frozen=True, slots=True)
class EspSuite:
    """The cryptographic suite of one ESP SA, as Quick Mode negotiated it.

    :raises ValueError: a transform, key length or integrity algorithm the data path does
        not implement (GCM-8/-12, CCM, 3DES, MD5, ...), or an AEAD with an integrity
        algorithm.
    """

    transform: EspTransform
    """ESP transform ID (RFC 2407 section 4.4.4; 250 = our private ChaCha20-Poly1305)."""
    key_bits: int
    """Cipher key length in bits, without any salt (ChaCha20-Poly1305: 256)."""
    integrity: AuthAlgorithm | None = None
    """Authentication algorithm for AES-CBC; None for the AEADs."""

    def __post_init__(self) -> None:
        transform = EspTransform(self.transform)
        object.__setattr__(self, "transform", transform)
        if transform is EspTransform.CHACHA20_POLY1305_PRIVATE:
            if self.key_bits != 256:
                raise ValueError("ChaCha20-Poly1305 takes a 256-bit key")
        elif transform in (EspTransform.AES_GCM_16, EspTransform.AES_CBC):
            if self.key_bits not in _AES_KEY_BITS:
                raise ValueError(f"{transform.name} needs a 128, 192 or 256-bit key, not {self.key_bits}")
        else:
            raise ValueError(f"ESP transform {transform.name} is not implemented by the data path")
        if transform in _AEAD_TRANSFORMS:
            if self.integrity is not None:
                raise ValueError(f"combined-mode {transform.name} takes no integrity algorithm")
        elif self.integrity is not None:
            integrity = AuthAlgorithm(self.integrity)
            if integrity not in _HASHES:
                raise ValueError(f"ESP integrity {integrity.name} is not implemented by the data path")
            object.__setattr__(self, "integrity", integrity)

    @property
    def aead(self) -> bool:
        """True for the combined-mode transforms."""
        return self.transform in _AEAD_TRANSFORMS

    @property
    def enc_key_len(self) -> int:
        """Encryption key octets including the 4-octet AEAD salt (RFC 4106 section 8.1)."""
        return self.key_bits // 8 + (4 if self.aead else 0)

    @property
    def auth_key_len(self) -> int:
        """Integrity key octets (0 for the AEADs)."""
        return _HASHES[self.integrity][1] if self.integrity is not None else 0

    @property
    def iv_len(self) -> int:
        """Explicit IV octets on the wire."""
        return 8 if self.aead else 16

    @property
    def icv_len(self) -> int:
        """ICV octets at the end of each packet."""
        if self.aead:
            return 16
        return _HASHES[self.integrity][2] if self.integrity is not None else 0

    @property
    def align(self) -> int:
        """What ``payload | padding | pad length | next header`` is padded to a multiple of:
        the cipher block, and at least 4 (RFC 4303 section 2.4)."""
        return 4 if self.aead else 16

    @property
    def overhead(self) -> int:
        """Octets an ESP packet adds to its inner packet before padding."""
        return 8 + self.iv_len + 2 + self.icv_len

    @property
    def name(self) -> str:
        """Short name for logs and the benchmark, e.g. ``aes128gcm16`` or ``aes256-sha256``."""
        if self.transform is EspTransform.CHACHA20_POLY1305_PRIVATE:
            return "chacha20poly1305"
        if self.transform is EspTransform.AES_GCM_16:
            return f"aes{self.key_bits}gcm16"
        auth = {
            None: "null",
            AuthAlgorithm.HMAC_SHA1: "sha1",
            AuthAlgorithm.HMAC_SHA2_256: "sha256",
            AuthAlgorithm.HMAC_SHA2_384: "sha384",
            AuthAlgorithm.HMAC_SHA2_512: "sha512",
        }[self.integrity]
        return f"aes{self.key_bits}-{auth}"

    def check_keys(self, enc_key: bytes, auth_key: bytes) -> None:
        """:raises ValueError: a key of the wrong length for this suite."""
        if len(enc_key) != self.enc_key_len:
            raise ValueError(
                f"{self.name} needs {self.enc_key_len} encryption key octets, not {len(enc_key)}"
            )
        if len(auth_key) != self.auth_key_len:
            raise ValueError(
                f"{self.name} needs {self.auth_key_len} integrity key octets, not {len(auth_key)}"
            )

    def make_engine(self, enc_key: bytes, auth_key: bytes = b"", esn: bool = False) -> Engine:
        """Key an engine for one direction.

        :raises ValueError: a key of the wrong length.
        """
        self.check_keys(enc_key, auth_key)
        if self.aead:
            return AeadEngine(self, enc_key, esn)
        return CbcEngine(self, enc_key, auth_key, esn)


# ---------------------------------------------------------------------------- trailer


def esp_trailer(payload_len: int, next_header: int, align: int) -> bytes:
    """Padding, Pad Length and Next Header for a payload (RFC 4303 section 2.4).

    Pads ``payload | padding | pad length | next header`` to a multiple of ``align`` with
    the default 1, 2, 3, ... pattern.
    """
    pad = -(payload_len + 2) % align
    return PAD_BYTES[:pad] + bytes((pad, next_header))


TrailerTable: TypeAlias = list[tuple[bytes, ...] | None]
"""``table[version][payload_len % align]``: see :func:`trailer_table`."""

HotTrailers: TypeAlias = list[Any]
"""A :data:`TrailerTable` as the hot loops see it: they index it inside ``try`` and let the
None rows (and a memoryview packet, which has no ``+``) raise into the slow path."""


def trailer_table(align: int) -> TrailerTable:
    """Precomputed trailers for the hot loop: ``table[version][payload_len % align]``.

    Indexed by the IP version nibble of the inner packet (4 or 6; other entries are None),
    so the Next Header byte (4 or 41) comes out of the same lookup.
    """
    table: TrailerTable = [None] * 16
    for version, next_header in ((4, 4), (6, 41)):
        table[version] = tuple(esp_trailer(n, next_header, align) for n in range(align))
    return table


def _pad_slowly(packet: Packet, trailers: TrailerTable, mask: int) -> bytes | None:
    """The hot loop's fallback: a memoryview packet (no ``+``), or None for an empty packet
    or one that is neither IPv4 nor IPv6."""
    if not len(packet):
        return None
    by_length = trailers[packet[0] >> 4]
    if by_length is None:
        return None
    return bytes(packet) + by_length[len(packet) & mask]


def strip_trailer(plaintext: bytes) -> tuple[bytes, int] | None:
    """``(payload, next_header)`` of a decrypted ESP payload, or None when the Pad Length
    overruns it or the padding is not 1, 2, 3, ... (RFC 4303 section 2.4)."""
    if len(plaintext) < 2:
        return None
    pad = plaintext[-2]
    end = len(plaintext) - 2 - pad
    if end < 0 or plaintext[end:-2] != PAD_BYTES[:pad]:
        return None
    return plaintext[:end], plaintext[-1]


# ---------------------------------------------------------------------------- engines


def _aead_opener(decrypt: Callable[..., bytes], salt: bytes, esn: bool) -> Opener:
    """A closure that opens one AEAD ESP packet: fewer attribute look-ups than a method."""
    pack64 = _pack_seq64
    if esn:

        def open_esn(packet: Packet, seq: int) -> bytes | None:
            try:
                return decrypt(salt + packet[8:16], packet[16:], bytes(packet[:4]) + pack64(seq))
            except InvalidTag:
                return None

        return open_esn

    def open_packet(packet: Packet, seq: int) -> bytes | None:
        try:
            return decrypt(salt + packet[8:16], packet[16:], packet[:8])
        except InvalidTag:
            return None

    return open_packet


class AeadEngine:
    """AES-GCM-16 (RFC 4106) or ChaCha20-Poly1305 (RFC 7634) for one SA direction."""

    __slots__ = ("_decrypt", "_encrypt", "_salt", "esn", "opener", "suite")

    header_len = 16
    """SPI, sequence number and the 8-octet IV."""
    block = 1
    """Ciphertext length granularity (a stream cipher: none)."""
    fixed_len = 16 + 16
    """Header and ICV: what surrounds the ciphertext."""
    min_len = 16 + 2 + 16
    """The shortest packet worth opening: header, a 2-octet trailer and the ICV."""

    def __init__(self, suite: EspSuite, enc_key: bytes, esn: bool) -> None:
        self.suite = suite
        self.esn = esn
        key, self._salt = enc_key[:-4], enc_key[-4:]
        if suite.transform is EspTransform.AES_GCM_16:
            aead: AESGCM | ChaCha20Poly1305 = AESGCM(key)
        else:
            aead = ChaCha20Poly1305(key)
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self.opener: Opener = _aead_opener(aead.decrypt, self._salt, esn)
        """``opener(packet, seq)``: what :meth:`open` does, for hot loops."""

    def seal(self, spi: bytes, seq: int, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """One ESP packet for ``plaintext`` (already padded and trailed) under sequence ``seq``.

        ``iv`` overrides the sequence-number IV; only known-answer tests need that.
        """
        iv8 = _pack_seq64(seq) if iv is None else iv
        seq_low = _pack_seq32(seq & _M32)
        aad = spi + _pack_seq64(seq) if self.esn else spi + seq_low
        return spi + seq_low + iv8 + self._encrypt(self._salt + iv8, plaintext, aad)

    def open(self, packet: Packet, seq: int) -> bytes | None:
        """The decrypted ``payload | padding | pad length | next header``, or None when the
        ICV does not verify. ``seq`` is the full (inferred) sequence number."""
        return self.opener(packet, seq)

    def seal_batch(
        self, spi: bytes, seq: int, packets: Sequence[Packet], out: list[bytes], trailers: HotTrailers
    ) -> tuple[int, int, int]:
        """Seal IP packets in order, numbering them from ``seq + 1``; append to ``out``.

        A packet whose version nibble is not 4 or 6 is skipped without a number. Returns
        ``(last sequence number used, inner octets sealed, packets skipped)``.
        """
        encrypt = self._encrypt
        salt = self._salt
        append = out.append
        pad_slowly = _pad_slowly
        sealed_bytes = skipped = 0
        esn = self.esn
        if esn or seq + len(packets) > _M32:
            pack64 = _pack_seq64
            for packet in packets:
                n = len(packet)
                try:
                    data = packet + trailers[packet[0] >> 4][n & 3]
                except (IndexError, TypeError):
                    data = pad_slowly(packet, trailers, 3)
                    if data is None:
                        skipped += 1
                        continue
                seq += 1
                iv = pack64(seq)
                append(spi + iv[4:] + iv + encrypt(salt + iv, data, spi + iv if esn else spi + iv[4:]))
                sealed_bytes += n
            return seq, sealed_bytes, skipped
        # Without ESN, below 2^32: the header is SPI | seq | 0 | seq, one struct call.
        pack_header = _pack_header
        spi_value = int.from_bytes(spi, "big")
        for packet in packets:
            try:
                data = packet + trailers[packet[0] >> 4][len(packet) & 3]
            except (IndexError, TypeError):
                data = pad_slowly(packet, trailers, 3)
                if data is None:
                    skipped += 1
                    sealed_bytes -= len(packet)
                    continue
            seq += 1
            header = pack_header(spi_value, seq, seq)
            append(header + encrypt(salt + header[8:], data, header[:8]))
        return seq, sealed_bytes + sum(map(len, packets)), skipped


class CbcEngine:
    """AES-CBC (RFC 3602) with an HMAC ICV (RFC 2404, RFC 4868) for one SA direction.

    ``integrity=None`` gives confidentiality-only ESP; it exists for RFC 3602's examples
    and is refused for negotiated SAs (RFC 8221 section 5).
    """

    __slots__ = (
        "_dec_update",
        "_enc_update",
        "_key",
        "_mac",
        "esn",
        "fixed_len",
        "icv_len",
        "min_len",
        "opener",
        "suite",
    )

    header_len = 24
    """SPI, sequence number and the 16-octet IV."""
    block = 16

    def __init__(self, suite: EspSuite, enc_key: bytes, auth_key: bytes, esn: bool) -> None:
        self.suite = suite
        self.esn = esn
        self._key = algorithms.AES(enc_key)
        zero_iv = modes.CBC(bytes(16))
        self._enc_update = Cipher(self._key, zero_iv).encryptor().update
        self._dec_update = Cipher(self._key, zero_iv).decryptor().update
        self.icv_len = suite.icv_len
        self.fixed_len = self.header_len + self.icv_len
        """Header and ICV: what surrounds the ciphertext."""
        self.min_len = self.fixed_len + 16
        """Header, one ciphertext block and the ICV."""
        self._mac: crypto_hmac.HMAC | None = None
        if suite.integrity is not None:
            self._mac = crypto_hmac.HMAC(auth_key, _HASHES[suite.integrity][0]())
        self.opener: Opener = self.open

    def icv(self, data: Packet, seq_high: bytes = b"") -> bytes:
        """The truncated HMAC over ``data`` (and the ESN high half when given)."""
        if self._mac is None:
            return b""
        mac = self._mac.copy()
        mac.update(data)
        if seq_high:
            mac.update(seq_high)
        return mac.finalize()[: self.icv_len]

    def seal(self, spi: bytes, seq: int, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """One ESP packet; ``plaintext`` is already padded to 16 octets and trailed.

        Without ``iv`` the IV is random (see the module docstring); ``iv`` is for
        known-answer tests.
        """
        header = spi + _pack_seq32(seq & _M32)
        if iv is None:
            body = self._enc_update(os.urandom(16) + plaintext)
        else:
            encryptor = Cipher(self._key, modes.CBC(iv)).encryptor()
            body = iv + encryptor.update(plaintext) + encryptor.finalize()
        signed = header + body
        return signed + self.icv(signed, _pack_seq32(seq >> 32) if self.esn else b"")

    def open(self, packet: Packet, seq: int) -> bytes | None:
        """The decrypted ``payload | padding | pad length | next header``, or None when the
        ICV does not verify. The caller has checked that the ciphertext is whole blocks."""
        base_mac = self._mac
        if base_mac is not None:  # an integrity algorithm: icv_len > 0
            icv_len = self.icv_len
            end = len(packet) - icv_len
            mac = base_mac.copy()
            mac.update(packet[:end])
            if self.esn:
                mac.update(_pack_seq32(seq >> 32))
            if not hmac.compare_digest(mac.finalize()[:icv_len], packet[end:]):
                return None
            return self._dec_update(packet[8:end])[16:]
        return self._dec_update(packet[8:])[16:]

    def seal_batch(
        self, spi: bytes, seq: int, packets: Sequence[Packet], out: list[bytes], trailers: HotTrailers
    ) -> tuple[int, int, int]:
        """As :meth:`AeadEngine.seal_batch`; one ``os.urandom`` call serves the whole batch."""
        enc_update = self._enc_update
        append = out.append
        pack32 = _pack_seq32
        base_mac = self._mac
        icv_len = self.icv_len
        esn = self.esn
        randomness = os.urandom(16 * len(packets))
        sealed_bytes = skipped = 0
        for index, packet in enumerate(packets):
            n = len(packet)
            start = index << 4
            try:
                data = randomness[start : start + 16] + packet + trailers[packet[0] >> 4][n & 15]
            except (IndexError, TypeError):
                skipped += 1
                continue
            seq += 1
            signed = spi + pack32(seq & _M32) + enc_update(data)
            if base_mac is not None:
                mac = base_mac.copy()
                mac.update(signed)
                if esn:
                    mac.update(pack32(seq >> 32))
                signed += mac.finalize()[:icv_len]
            append(signed)
            sealed_bytes += n
        return seq, sealed_bytes, skipped


Engine: TypeAlias = AeadEngine | CbcEngine
