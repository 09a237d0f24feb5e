"""RFC 2409 key derivation, PRF, CBC and KEYMAT of tunvpn.ike.crypto.

IKEv1 has no official key-derivation vectors, so the derivation tests recompute each formula of
RFC 2409 section 5 / appendix B independently with :mod:`hmac` and :mod:`hashlib`.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tunvpn.ike.constants import AuthMethod, EncryptionAlgorithm, HashAlgorithm, NotifyType, ProtocolId
from tunvpn.ike.crypto import (
    Phase1Keys,
    cbc_decrypt,
    cbc_encrypt,
    cipher_block_size,
    cipher_key_size,
    constant_time_equal,
    derive_phase1_keys,
    derive_skeyid,
    esp_key_lengths,
    hash_digest,
    hash_i,
    hash_r,
    hash_size,
    keymat,
    pad_to_block,
    phase2_iv,
    prf,
)
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError
from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform

# ----------------------------------------------------------------------------- RFC 4231 HMAC-SHA2
# (key, data, HMAC-SHA-256, HMAC-SHA-384, HMAC-SHA-512) from RFC 4231 sections 4.2 and 4.3.
RFC4231_CASES = [
    (
        bytes([0x0B] * 20),
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        (
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
            "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
        ),
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        (
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
            "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        ),
    ),
]


@pytest.mark.parametrize("case", RFC4231_CASES, ids=["4.2", "4.3"])
def test_prf_rfc4231(case: tuple[bytes, bytes, str, str, str]) -> None:
    key, data, sha256, sha384, sha512 = case
    assert prf(HashAlgorithm.SHA2_256, key, data).hex() == sha256
    assert prf(HashAlgorithm.SHA2_384, key, data).hex() == sha384
    assert prf(HashAlgorithm.SHA2_512, key, data).hex() == sha512


def test_prf_rfc2202_hmac_md5_and_sha1() -> None:
    # RFC 2202 sections 2 and 3, test case 2.
    assert prf(HashAlgorithm.MD5, b"Jefe", b"what do ya want for nothing?").hex() == (
        "750c783e6ab0b503eaa86e310a5db738"
    )
    assert prf(HashAlgorithm.SHA1, b"Jefe", b"what do ya want for nothing?").hex() == (
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    )


@pytest.mark.parametrize(
    ("alg", "size"),
    [
        (HashAlgorithm.MD5, 16),
        (HashAlgorithm.SHA1, 20),
        (HashAlgorithm.SHA2_256, 32),
        (HashAlgorithm.SHA2_384, 48),
        (HashAlgorithm.SHA2_512, 64),
    ],
)
def test_hash(alg: HashAlgorithm, size: int) -> None:
    assert hash_size(alg) == size
    assert len(hash_digest(alg, b"abc")) == size


def test_hash_sha256_abc() -> None:
    # FIPS 180-2 appendix B.1.
    assert hash_digest(HashAlgorithm.SHA2_256, b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_unsupported_hash() -> None:
    with pytest.raises(LocalProtocolError):
        hash_digest(HashAlgorithm.TIGER, b"")


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"ab")


# ----------------------------------------------------------------------------- ciphers


@pytest.mark.parametrize(
    ("enc", "bits", "block", "key"),
    [
        (EncryptionAlgorithm.AES_CBC, 128, 16, 16),
        (EncryptionAlgorithm.AES_CBC, 192, 16, 24),
        (EncryptionAlgorithm.AES_CBC, 256, 16, 32),
        (EncryptionAlgorithm.CAMELLIA_CBC, 256, 16, 32),
        (EncryptionAlgorithm.DES3_CBC, None, 8, 24),
        (EncryptionAlgorithm.DES3_CBC, 192, 8, 24),
        (EncryptionAlgorithm.DES_CBC, None, 8, 8),
    ],
)
def test_cipher_sizes_and_round_trip(
    enc: EncryptionAlgorithm, bits: int | None, block: int, key: int
) -> None:
    assert cipher_block_size(enc) == block
    assert cipher_key_size(enc, bits) == key
    k, iv = bytes(range(key)), bytes(range(100, 100 + block))
    plaintext = pad_to_block(b"ISAKMP payloads", block)
    ciphertext = cbc_encrypt(enc, k, iv, plaintext)
    assert len(ciphertext) == len(plaintext) and ciphertext != plaintext
    assert cbc_decrypt(enc, k, iv, ciphertext) == plaintext


@pytest.mark.parametrize("bits", [None, 64, 512])
def test_aes_needs_a_valid_key_length(bits: int | None) -> None:
    with pytest.raises(LocalProtocolError):
        cipher_key_size(EncryptionAlgorithm.AES_CBC, bits)


def test_unsupported_cipher() -> None:
    with pytest.raises(LocalProtocolError):
        cipher_block_size(EncryptionAlgorithm.IDEA_CBC)


def test_aes_cbc_rfc3602_case_1() -> None:
    # RFC 3602 section 4, case #1: encrypting 16 bytes (1 block) using AES-CBC with 128-bit key.
    key = bytes.fromhex("06a9214036b8a15b512e03d534120006")
    iv = bytes.fromhex("3dafba429d9eb430b422da802c9fac41")
    ciphertext = cbc_encrypt(EncryptionAlgorithm.AES_CBC, key, iv, b"Single block msg")
    assert ciphertext.hex() == "e353779c1079aeb82708942dbe77181a"


def test_cbc_encrypt_needs_aligned_plaintext() -> None:
    with pytest.raises(LocalProtocolError):
        cbc_encrypt(EncryptionAlgorithm.AES_CBC, bytes(16), bytes(16), b"x" * 17)


@pytest.mark.parametrize("ciphertext", [b"", b"x" * 15, b"x" * 17])
def test_cbc_decrypt_malformed(ciphertext: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        cbc_decrypt(EncryptionAlgorithm.AES_CBC, bytes(16), bytes(16), ciphertext)
    assert info.value.notify is NotifyType.PAYLOAD_MALFORMED
    assert info.value.field == "encrypted payload"


def test_pad_to_block() -> None:
    assert pad_to_block(b"", 16) == b""
    assert pad_to_block(b"a" * 16, 16) == b"a" * 16
    assert pad_to_block(b"abc", 8) == b"abc" + bytes(5)
    assert pad_to_block(b"a" * 17, 16) == b"a" * 17 + bytes(15)


# ----------------------------------------------------------------------------- phase 1

NI = bytes.fromhex("c3a1b8e0f45d2b6a7f1e9c0d8b4a3f2e1d0c9b8a")
NR = bytes.fromhex("5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d2c1b0a99887")
G_XY = bytes(range(256))[::-1] * 1  # a 256-byte stand-in for a MODP 2048 g^xy
GXI = bytes([0x11]) * 256
GXR = bytes([0x22]) * 256
CKY_I = bytes.fromhex("0123456789abcdef")
CKY_R = bytes.fromhex("fedcba9876543210")
PSK = b"correct horse battery staple"


def _hmac(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, name).digest()


@pytest.mark.parametrize(
    "auth", [AuthMethod.PRE_SHARED_KEY, AuthMethod.XAUTH_INIT_PRESHARED, AuthMethod.XAUTH_RESP_PRESHARED]
)
def test_skeyid_pre_shared_key(auth: AuthMethod) -> None:
    # RFC 2409 section 5: SKEYID = prf(pre-shared-key, Ni_b | Nr_b)
    skeyid = derive_skeyid(prf_alg=HashAlgorithm.SHA1, auth=auth, ni=NI, nr=NR, g_xy=G_XY, psk=PSK)
    assert skeyid == _hmac("sha1", PSK, NI + NR)


@pytest.mark.parametrize(
    "auth",
    [
        AuthMethod.RSA_SIGNATURES,
        AuthMethod.ECDSA_SHA256_P256,
        AuthMethod.XAUTH_INIT_RSA,
        AuthMethod.XAUTH_RESP_RSA,
        AuthMethod.HYBRID_INIT_RSA,
        AuthMethod.HYBRID_RESP_RSA,
    ],
)
def test_skeyid_signatures(auth: AuthMethod) -> None:
    # RFC 2409 section 5: SKEYID = prf(Ni_b | Nr_b, g^xy)
    skeyid = derive_skeyid(prf_alg=HashAlgorithm.SHA2_256, auth=auth, ni=NI, nr=NR, g_xy=G_XY)
    assert skeyid == _hmac("sha256", NI + NR, G_XY)


def test_skeyid_errors() -> None:
    with pytest.raises(LocalProtocolError):
        derive_skeyid(prf_alg=HashAlgorithm.SHA1, auth=AuthMethod.PRE_SHARED_KEY, ni=NI, nr=NR, g_xy=G_XY)
    with pytest.raises(LocalProtocolError):
        derive_skeyid(prf_alg=HashAlgorithm.SHA1, auth=AuthMethod.RSA_ENCRYPTION, ni=NI, nr=NR, g_xy=G_XY)


def test_phase1_keys_sha256_aes128() -> None:
    skeyid = _hmac("sha256", PSK, NI + NR)
    keys = derive_phase1_keys(
        prf_alg=HashAlgorithm.SHA2_256,
        hash_alg=HashAlgorithm.SHA2_256,
        enc_alg=EncryptionAlgorithm.AES_CBC,
        key_length_bits=128,
        skeyid=skeyid,
        g_xy=G_XY,
        icookie=CKY_I,
        rcookie=CKY_R,
        gxi=GXI,
        gxr=GXR,
    )
    # RFC 2409 section 5, computed independently.
    skeyid_d = _hmac("sha256", skeyid, G_XY + CKY_I + CKY_R + b"\x00")
    skeyid_a = _hmac("sha256", skeyid, skeyid_d + G_XY + CKY_I + CKY_R + b"\x01")
    skeyid_e = _hmac("sha256", skeyid, skeyid_a + G_XY + CKY_I + CKY_R + b"\x02")
    assert keys.skeyid == skeyid
    assert keys.skeyid_d == skeyid_d
    assert keys.skeyid_a == skeyid_a
    assert keys.skeyid_e == skeyid_e
    # Appendix B: SKEYID_e is long enough, the key is its first 16 bytes.
    assert keys.enc_key == skeyid_e[:16]
    # Appendix B: IV = hash(g^xi | g^xr), truncated to the AES block size.
    assert keys.iv == hashlib.sha256(GXI + GXR).digest()[:16]


def test_phase1_key_expansion_sha1_aes256() -> None:
    # RFC 2409 appendix B: SKEYID_e (20 bytes of SHA1) is shorter than an AES-256 key, so
    # Ka = K1 | K2 with K1 = prf(SKEYID_e, 0) and K2 = prf(SKEYID_e, K1).
    skeyid = _hmac("sha1", NI + NR, G_XY)
    keys = derive_phase1_keys(
        prf_alg=HashAlgorithm.SHA1,
        hash_alg=HashAlgorithm.MD5,
        enc_alg=EncryptionAlgorithm.AES_CBC,
        key_length_bits=256,
        skeyid=skeyid,
        g_xy=G_XY,
        icookie=CKY_I,
        rcookie=CKY_R,
        gxi=GXI,
        gxr=GXR,
    )
    assert len(keys.skeyid_e) == 20
    k1 = _hmac("sha1", keys.skeyid_e, b"\x00")
    k2 = _hmac("sha1", keys.skeyid_e, k1)
    assert keys.enc_key == (k1 + k2)[:32]
    # The IV uses the negotiated hash (MD5 here), not the PRF.
    assert keys.iv == hashlib.md5(GXI + GXR).digest()[:16]


def test_phase1_key_expansion_md5_3des() -> None:
    # 16 bytes of MD5 < 24 bytes of 3DES key.
    keys = derive_phase1_keys(
        prf_alg=HashAlgorithm.MD5,
        hash_alg=HashAlgorithm.MD5,
        enc_alg=EncryptionAlgorithm.DES3_CBC,
        key_length_bits=None,
        skeyid=b"k" * 16,
        g_xy=G_XY,
        icookie=CKY_I,
        rcookie=CKY_R,
        gxi=GXI,
        gxr=GXR,
    )
    k1 = _hmac("md5", keys.skeyid_e, b"\x00")
    k2 = _hmac("md5", keys.skeyid_e, k1)
    assert keys.enc_key == (k1 + k2)[:24]
    assert keys.iv == hashlib.md5(GXI + GXR).digest()[:8]


def test_phase1_keys_repr_hides_secrets() -> None:
    keys = Phase1Keys(
        skeyid=b"\xaa" * 20, skeyid_d=b"\xbb" * 20, skeyid_a=b"\xcc" * 20, skeyid_e=b"\xdd" * 20,
        enc_key=b"\xee" * 16, iv=b"\xff" * 16,
    )  # fmt: skip
    text = repr(keys) + str(keys)
    for byte in "abcdef":
        assert byte * 4 not in text
    assert "b'" not in text


def test_phase1_bad_cookie_length() -> None:
    with pytest.raises(LocalProtocolError):
        derive_phase1_keys(
            prf_alg=HashAlgorithm.SHA1,
            hash_alg=HashAlgorithm.SHA1,
            enc_alg=EncryptionAlgorithm.AES_CBC,
            key_length_bits=128,
            skeyid=b"k",
            g_xy=G_XY,
            icookie=CKY_I[:4],
            rcookie=CKY_R,
            gxi=GXI,
            gxr=GXR,
        )


def test_hash_i_and_hash_r() -> None:
    skeyid = b"s" * 32
    sai_b, idii_b, idir_b = b"\x00\x00\x00\x01SA", b"\x01\x11\x01\xf4\xc0\x00\x02\x01", b"\x02\x00\x00\x00vpn"
    # RFC 2409 section 5.
    assert hash_i(HashAlgorithm.SHA2_256, skeyid, GXI, GXR, CKY_I, CKY_R, sai_b, idii_b) == _hmac(
        "sha256", skeyid, GXI + GXR + CKY_I + CKY_R + sai_b + idii_b
    )
    assert hash_r(HashAlgorithm.SHA2_256, skeyid, GXI, GXR, CKY_I, CKY_R, sai_b, idir_b) == _hmac(
        "sha256", skeyid, GXR + GXI + CKY_R + CKY_I + sai_b + idir_b
    )


def test_phase2_iv() -> None:
    # RFC 2409 appendix B: hash(last phase 1 CBC block | M-ID), M-ID in network order.
    last_block = bytes(range(16))
    iv = phase2_iv(HashAlgorithm.SHA1, last_block, 0x01020304, 16)
    assert iv == hashlib.sha1(last_block + b"\x01\x02\x03\x04").digest()[:16]
    assert len(phase2_iv(HashAlgorithm.MD5, last_block[:8], 7, 8)) == 8
    with pytest.raises(LocalProtocolError):
        phase2_iv(HashAlgorithm.SHA1, last_block, 2**32, 16)


# ----------------------------------------------------------------------------- phase 2

SPI = bytes.fromhex("c0ffee01")


@pytest.mark.parametrize("length", [0, 1, 20, 21, 40, 72, 100])
def test_keymat_expansion(length: int) -> None:
    skeyid_d = b"d" * 20
    seed = bytes([ProtocolId.ESP]) + SPI + NI + NR
    k1 = _hmac("sha1", skeyid_d, seed)
    blocks = [k1]
    while sum(map(len, blocks)) < length:
        blocks.append(_hmac("sha1", skeyid_d, blocks[-1] + seed))
    expected = b"".join(blocks)[:length]
    assert keymat(HashAlgorithm.SHA1, skeyid_d, ProtocolId.ESP, SPI, NI, NR, length) == expected


def test_keymat_with_pfs() -> None:
    # RFC 2409 section 5.5: with PFS, g(qm)^xy comes first in every block's input.
    skeyid_d, g_qm = b"d" * 32, b"\x42" * 256
    seed = g_qm + bytes([ProtocolId.ESP]) + SPI + NI + NR
    k1 = _hmac("sha256", skeyid_d, seed)
    k2 = _hmac("sha256", skeyid_d, k1 + seed)
    got = keymat(HashAlgorithm.SHA2_256, skeyid_d, ProtocolId.ESP, SPI, NI, NR, 52, g_qm_xy=g_qm)
    assert got == (k1 + k2)[:52]
    assert got != keymat(HashAlgorithm.SHA2_256, skeyid_d, ProtocolId.ESP, SPI, NI, NR, 52)


def test_keymat_differs_per_spi() -> None:
    a = keymat(HashAlgorithm.SHA1, b"d", ProtocolId.ESP, b"\x00\x00\x00\x01", NI, NR, 36)
    b = keymat(HashAlgorithm.SHA1, b"d", ProtocolId.ESP, b"\x00\x00\x00\x02", NI, NR, 36)
    assert len(a) == 36 and a != b


@pytest.mark.parametrize(
    ("transform", "bits", "auth", "expected"),
    [
        (EspTransform.AES_GCM_16, 128, None, (20, 0)),  # RFC 4106 section 8.1: key + 4-byte salt
        (EspTransform.AES_GCM_16, 256, None, (36, 0)),
        (EspTransform.AES_GCM_8, 192, None, (28, 0)),
        (EspTransform.AES_GCM_12, 128, None, (20, 0)),
        (EspTransform.CHACHA20_POLY1305_PRIVATE, None, None, (36, 0)),  # RFC 7634 section 2
        (EspTransform.CHACHA20_POLY1305_PRIVATE, 256, None, (36, 0)),
        (EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256, (16, 32)),  # RFC 4868
        (EspTransform.AES_CBC, 192, AuthAlgorithm.HMAC_SHA2_384, (24, 48)),
        (EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_512, (32, 64)),
        (EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA1, (32, 20)),
        (EspTransform.AES_CBC, 128, AuthAlgorithm.AES_XCBC_MAC, (16, 16)),
        (EspTransform.AES_CTR, 128, AuthAlgorithm.HMAC_SHA1, (20, 20)),  # RFC 3686: + 4-byte nonce
        (EspTransform.AES_CCM_16, 128, None, (19, 0)),  # RFC 4309: + 3-byte salt
        (EspTransform.DES3, None, AuthAlgorithm.HMAC_MD5, (24, 16)),
        (EspTransform.DES3, None, AuthAlgorithm.HMAC_SHA1, (24, 20)),
        (EspTransform.NULL, None, AuthAlgorithm.HMAC_SHA2_256, (0, 32)),
        (EspTransform.AES_CBC, 128, None, (16, 0)),
    ],
)
def test_esp_key_lengths(
    transform: EspTransform, bits: int | None, auth: AuthAlgorithm | None, expected: tuple[int, int]
) -> None:
    assert esp_key_lengths(transform, bits, auth) == expected


@pytest.mark.parametrize(
    ("transform", "bits", "auth"),
    [
        (EspTransform.AES_CBC, None, AuthAlgorithm.HMAC_SHA1),  # RFC 3602: Key Length is required
        (EspTransform.AES_GCM_16, 512, None),
        (EspTransform.AES_GCM_16, 128, AuthAlgorithm.HMAC_SHA1),  # RFC 4106 section 8.4
        (EspTransform.DES3, 128, AuthAlgorithm.HMAC_SHA1),
        (EspTransform.AES_CBC, 128, AuthAlgorithm.DES_MAC),
    ],
)
def test_esp_key_lengths_refused(
    transform: EspTransform, bits: int | None, auth: AuthAlgorithm | None
) -> None:
    with pytest.raises(LocalProtocolError):
        esp_key_lengths(transform, bits, auth)


def test_keymat_split_encryption_first() -> None:
    # RFC 2409 section 5.5: one KEYMAT per SA, encryption key first, then integrity key.
    enc_len, integ_len = esp_key_lengths(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256)
    material = keymat(HashAlgorithm.SHA2_256, b"d" * 32, ProtocolId.ESP, SPI, NI, NR, enc_len + integ_len)
    enc_key, integ_key = material[:enc_len], material[enc_len:]
    assert (len(enc_key), len(integ_key)) == (16, 32)
