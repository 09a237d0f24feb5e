"""Diffie-Hellman groups of tunvpn.ike.crypto: primes, known answers, round trips, bad values."""

from __future__ import annotations

import hashlib
import random

import pytest

from tunvpn.ike.constants import DHGroup, NotifyType
from tunvpn.ike.crypto import (
    LEGACY_DH_GROUPS,
    SUPPORTED_DH_GROUPS,
    DiffieHellman,
    dh_public_length,
    modp_prime,
)
from tunvpn.ike.errors import LocalProtocolError, RemoteProtocolError

# ----------------------------------------------------------------------------- MODP primes

# SHA-256 of the upper-case hex of each prime as printed in RFC 2409 section 6.1/6.2 and
# RFC 3526 sections 2-7 (spaces and line breaks removed).
PRIME_HEX_SHA256 = {
    DHGroup.MODP_768: "c00532299113ee0931f7197460f65d9a837c6c19b3ad9e9b923c22653895d455",
    DHGroup.MODP_1024: "693daceaf10c4200894cbd5696b120faebc30f7c4a242a8cd915ca3e83e141db",
    DHGroup.MODP_1536: "0a14e50abc56277fbf3d24ae174026486e91f013263cfde280c32577dcebe636",
    DHGroup.MODP_2048: "dcd8538e629d7b8bc0dabdcda6744e0542bfb801d50305b2f6acf823b3d4e7ba",
    DHGroup.MODP_3072: "2b2c15e1523695d748a2f56b3b81d59d23467b300f1879585be61f0addacdc45",
    DHGroup.MODP_4096: "2349a6f8251156cbfade78ada6bd1e0c961a56847def4d288b6fdbd740016bff",
    DHGroup.MODP_6144: "eeff9f22efbb6af437e9bb4a5466ddc607a9d0c954e14a4a90461688896b9e2b",
    DHGroup.MODP_8192: "d0c08f76798cac51345c195a01a2bea21bc577cfa9d857bbc6627ee41cb0b2b6",
}

# (bits, k) of "p = 2^n - 2^(n-64) - 1 + 2^64 * { [2^(n-130) pi] + k }" in RFC 2409
# section 6.1/6.2 and RFC 3526 sections 2-7.
PRIME_FORMULA = {
    DHGroup.MODP_768: (768, 149686),
    DHGroup.MODP_1024: (1024, 129093),
    DHGroup.MODP_1536: (1536, 741804),
    DHGroup.MODP_2048: (2048, 124476),
    DHGroup.MODP_3072: (3072, 1690314),
    DHGroup.MODP_4096: (4096, 240904),
    DHGroup.MODP_6144: (6144, 929484),
    DHGroup.MODP_8192: (8192, 4743158),
}

MODP_GROUPS = sorted(PRIME_FORMULA)


def _pi_times_2_pow(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula, pi = 16 atan(1/5) - 4 atan(1/239)."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inverse(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * arctan_inverse(5) - 4 * arctan_inverse(239)) >> guard


def _is_probable_prime(n: int, rounds: int = 4) -> bool:
    """Miller-Rabin with a fixed seed, so the test is deterministic."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n.bit_length())
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: g.name)
def test_prime_is_the_transcribed_rfc_hex(group: DHGroup) -> None:
    p = modp_prime(group)
    bits, _ = PRIME_FORMULA[group]
    assert hashlib.sha256(f"{p:0{bits // 4}X}".encode()).hexdigest() == PRIME_HEX_SHA256[group]


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: g.name)
def test_prime_follows_the_rfc_construction(group: DHGroup) -> None:
    bits, k = PRIME_FORMULA[group]
    expected = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_times_2_pow(bits - 130) + k)
    assert modp_prime(group) == expected
    assert modp_prime(group).bit_length() == bits
    assert dh_public_length(group) == bits // 8


@pytest.mark.parametrize(
    "group", [DHGroup.MODP_768, DHGroup.MODP_1024, DHGroup.MODP_1536, DHGroup.MODP_2048], ids=lambda g: g.name
)
def test_prime_is_a_safe_prime(group: DHGroup) -> None:
    # Miller-Rabin is quick on the smaller primes; the larger ones are pinned by hash and formula.
    p = modp_prime(group)
    assert _is_probable_prime(p)
    assert _is_probable_prime((p - 1) // 2)


def test_modp_prime_of_non_modp_group() -> None:
    with pytest.raises(LocalProtocolError):
        modp_prime(DHGroup.ECP_256)


def test_supported_groups() -> None:
    assert {14, 15, 16, 17, 18, 19, 20, 21, 31, 1, 2, 5} <= set(SUPPORTED_DH_GROUPS)
    assert {DHGroup.MODP_768, DHGroup.MODP_1024, DHGroup.MODP_1536} == LEGACY_DH_GROUPS


@pytest.mark.parametrize(
    ("group", "length"),
    [(DHGroup.ECP_256, 64), (DHGroup.ECP_384, 96), (DHGroup.ECP_521, 132), (DHGroup.CURVE25519, 32)],
)
def test_public_lengths(group: DHGroup, length: int) -> None:
    assert dh_public_length(group) == length
    assert len(DiffieHellman(group).public) == length


# ----------------------------------------------------------------------------- RFC 5903 section 8
# (group, i, g^i x, g^i y, r, g^r x, g^r y, g^ir x) from RFC 5903 sections 8.1, 8.2 and 8.3.

RFC5903_VECTORS = [
    (
        DHGroup.ECP_256,
        "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180",
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63",
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    ),
    (
        DHGroup.ECP_384,
        "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
        "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA",
        "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571",
        "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746",
    ),
    (
        DHGroup.ECP_521,
        (
            "0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A095AA85A30FE1C2952C6771D937BA97"
            "77F5957B2639BAB072462F68C27A57382D4A52"
        ),
        (
            "0015417E84DBF28C0AD3C278713349DC7DF153C897A1891BD98BAB4357C9ECBEE1E3BF42E00B8E380AEAE57C2D1075"
            "64941885942AF5A7F4601723C4195D176CED3E"
        ),
        (
            "017CAE20B6641D2EEB695786D8C946146239D099E18E1D5A514C739D7CB4A10AD8A788015AC405D7799DC75E7B7D5B"
            "6CF2261A6A7F1507438BF01BEB6CA3926F9582"
        ),
        (
            "0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E9C677D600B343757A3BDBF2A3163E4"
            "C2F869CCA7458AA4A4EFFC311F5CB151685EB9"
        ),
        (
            "00D0B3975AC4B799F5BEA16D5E13E9AF971D5E9B984C9F39728B5E5739735A219B97C356436ADC6E95BB0352F6BE64"
            "A6C2912D4EF2D0433CED2B6171640012D9460F"
        ),
        (
            "015C68226383956E3BD066E797B623C27CE0EAC2F551A10C2C724D9852077B87220B6536C5C408A1D2AEBB8E86D678"
            "AE49CB57091F4732296579AB44FCD17F0FC56A"
        ),
        (
            "01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04D1427E73CA4BAA240A34786859810C"
            "06B3C715A3A8CC3151F2BEE417996D19F3DDEA"
        ),
    ),
]


@pytest.mark.parametrize("vector", RFC5903_VECTORS, ids=lambda v: v[0].name)
def test_rfc5903_known_answer(vector: tuple[DHGroup, str, str, str, str, str, str, str]) -> None:
    group, i, gix, giy, r, grx, gry, girx = vector
    initiator = DiffieHellman(group, private_key=bytes.fromhex(i))
    responder = DiffieHellman(group, private_key=bytes.fromhex(r))
    # RFC 5903 section 7: the KE payload is x || y with no point-format octet.
    assert initiator.public == bytes.fromhex(gix + giy)
    assert responder.public == bytes.fromhex(grx + gry)
    # ... and the shared secret is the x coordinate only.
    assert initiator.shared_secret(responder.public) == bytes.fromhex(girx)
    assert responder.shared_secret(initiator.public) == bytes.fromhex(girx)


@pytest.mark.parametrize("group", [DHGroup.ECP_256, DHGroup.ECP_384, DHGroup.ECP_521], ids=lambda g: g.name)
def test_ecp_point_not_on_curve(group: DHGroup) -> None:
    ours = DiffieHellman(group)
    peer = bytearray(DiffieHellman(group).public)
    peer[-1] ^= 1  # change y: no longer on the curve
    with pytest.raises(RemoteProtocolError) as info:
        ours.shared_secret(bytes(peer))
    assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION
    assert info.value.field == "KE"
    with pytest.raises(RemoteProtocolError):
        ours.shared_secret(bytes(dh_public_length(group)))  # (0, 0) is not a point


def test_ecp_with_point_format_octet_is_refused() -> None:
    ours = DiffieHellman(DHGroup.ECP_256)
    with pytest.raises(RemoteProtocolError) as info:
        ours.shared_secret(b"\x04" + DiffieHellman(DHGroup.ECP_256).public)
    assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION


# ----------------------------------------------------------------------------- RFC 7748 section 6.1

X25519_ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
X25519_ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
X25519_BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
X25519_BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
X25519_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def test_x25519_rfc7748_known_answer() -> None:
    alice = DiffieHellman(DHGroup.CURVE25519, private_key=bytes.fromhex(X25519_ALICE_PRIVATE))
    bob = DiffieHellman(DHGroup.CURVE25519, private_key=bytes.fromhex(X25519_BOB_PRIVATE))
    assert alice.public.hex() == X25519_ALICE_PUBLIC
    assert bob.public.hex() == X25519_BOB_PUBLIC
    assert alice.shared_secret(bob.public).hex() == X25519_SHARED
    assert bob.shared_secret(alice.public).hex() == X25519_SHARED


@pytest.mark.parametrize(
    "low_order_point",
    [bytes(32), (1).to_bytes(32, "little")],
    ids=["zero", "one"],
)
def test_x25519_low_order_point(low_order_point: bytes) -> None:
    # RFC 7748 section 6.1 / RFC 8031 section 2.3: an all-zero result must be refused.
    with pytest.raises(RemoteProtocolError) as info:
        DiffieHellman(DHGroup.CURVE25519).shared_secret(low_order_point)
    assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION


def test_bad_private_keys() -> None:
    with pytest.raises(LocalProtocolError):
        DiffieHellman(DHGroup.CURVE25519, private_key=b"\x01" * 31)
    with pytest.raises(LocalProtocolError):
        DiffieHellman(DHGroup.ECP_256, private_key=bytes(32))
    with pytest.raises(LocalProtocolError):
        DiffieHellman(DHGroup.MODP_2048, private_key=b"\x01")


# ----------------------------------------------------------------------------- MODP exchange


@pytest.mark.parametrize(
    "group",
    [
        DHGroup.MODP_768,
        DHGroup.MODP_1024,
        DHGroup.MODP_1536,
        DHGroup.MODP_2048,
        DHGroup.MODP_3072,
        DHGroup.MODP_4096,
        DHGroup.MODP_6144,
        DHGroup.MODP_8192,
        DHGroup.ECP_256,
        DHGroup.ECP_384,
        DHGroup.ECP_521,
        DHGroup.CURVE25519,
    ],
    ids=lambda g: g.name,
)
def test_round_trip(group: DHGroup) -> None:
    a, b = DiffieHellman(group), DiffieHellman(group)
    assert a.group is group
    assert len(a.public) == dh_public_length(group)
    secret = a.shared_secret(b.public)
    assert secret == b.shared_secret(a.public)
    assert a.public != b.public


def test_modp_known_exponent_matches_textbook() -> None:
    p = modp_prime(DHGroup.MODP_2048)
    x, y = 0x1234567890ABCDEF, 0xFEDCBA0987654321
    a = DiffieHellman(DHGroup.MODP_2048, private_key=x.to_bytes(8, "big"))
    b = DiffieHellman(DHGroup.MODP_2048, private_key=y.to_bytes(8, "big"))
    assert a.public == pow(2, x, p).to_bytes(256, "big")
    assert a.shared_secret(b.public) == pow(2, x * y, p).to_bytes(256, "big")


def test_modp_shared_secret_keeps_leading_zeros() -> None:
    # Find a peer exponent whose shared secret has a leading zero byte (about 1 in 256): the
    # result must still be padded to the prime length (RFC 2409 section 5).
    p = modp_prime(DHGroup.MODP_768)
    x = 3
    ours = DiffieHellman(DHGroup.MODP_768, private_key=x.to_bytes(1, "big"))
    for y in range(2, 5000):
        if pow(2, x * y, p).bit_length() <= 768 - 8:
            break
    else:  # pragma: no cover - the search space is large enough
        pytest.fail("no leading-zero shared secret found")
    peer = pow(2, y, p).to_bytes(96, "big")
    secret = ours.shared_secret(peer)
    assert len(secret) == 96 and secret[0] == 0
    assert secret == pow(2, x * y, p).to_bytes(96, "big")


@pytest.mark.parametrize("bad", ["zero", "one", "p-1", "p", "all-ones"])
def test_modp_degenerate_public_values(bad: str) -> None:
    p = modp_prime(DHGroup.MODP_2048)
    value = {"zero": 0, "one": 1, "p-1": p - 1, "p": p, "all-ones": 2**2048 - 1}[bad]
    with pytest.raises(RemoteProtocolError) as info:
        DiffieHellman(DHGroup.MODP_2048).shared_secret(value.to_bytes(256, "big"))
    assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION
    assert info.value.field == "KE"


@pytest.mark.parametrize(
    "group", [DHGroup.MODP_2048, DHGroup.ECP_256, DHGroup.CURVE25519], ids=lambda g: g.name
)
def test_wrong_length_public_value(group: DHGroup) -> None:
    ours, peer = DiffieHellman(group), DiffieHellman(group)
    for data in (peer.public[1:], peer.public + b"\x00", b""):
        with pytest.raises(RemoteProtocolError) as info:
            ours.shared_secret(data)
        assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION


def test_unsupported_group() -> None:
    with pytest.raises(LocalProtocolError):
        DiffieHellman(22)  # type: ignore[arg-type]  # RFC 5114 group, not implemented


def test_repr_shows_no_private_key() -> None:
    dh = DiffieHellman(DHGroup.CURVE25519, private_key=bytes.fromhex(X25519_ALICE_PRIVATE))
    assert X25519_ALICE_PRIVATE not in repr(dh)
    assert "CURVE25519" in repr(dh)
