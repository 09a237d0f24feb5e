"""IKEv1 cryptography: Diffie-Hellman groups, PRF/hash, CBC ciphers and key derivation.

Everything here is pure computation over bytes (sans-I/O); the heavy lifting is done by the
``cryptography`` package, gmpy2 (GMP) for the MODP groups, and the standard library
(:mod:`hashlib`, :mod:`hmac`).

* Diffie-Hellman: MODP groups of RFC 2409 section 6 and RFC 3526 (g^x mod p by GMP's
  constant-time ``mpz_powm_sec``, not cryptography's deprecated FFDH API), ECP groups of
  RFC 5903 and Curve25519 (RFC 7748, group 31 as in RFC 8031 / strongSwan / Libreswan) by
  ``cryptography``.
* PRF: HMAC of the negotiated hash (RFC 2409 section 4: "the PRF ... is the HMAC version of
  the negotiated hash function" when no PRF attribute is negotiated).
* Phase 1 key derivation (RFC 2409 section 5 and appendix B), HASH_I / HASH_R, phase 1 and
  phase 2 IVs (appendix B) and Quick Mode KEYMAT (section 5.5).

Secrets never appear in a ``repr`` or in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from functools import cache

import gmpy2
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit_algorithms
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..ipsec.algorithms import AuthAlgorithm, EspTransform
from .constants import AuthMethod, DHGroup, EncryptionAlgorithm, HashAlgorithm, NotifyType
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "LEGACY_DH_GROUPS",
    "SUPPORTED_CIPHERS",
    "SUPPORTED_DH_GROUPS",
    "SUPPORTED_HASHES",
    "DiffieHellman",
    "Phase1Keys",
    "cbc_decrypt",
    "cbc_encrypt",
    "cipher_block_size",
    "cipher_key_size",
    "constant_time_equal",
    "derive_phase1_keys",
    "derive_skeyid",
    "dh_public_length",
    "esp_key_lengths",
    "hash_digest",
    "hash_i",
    "hash_r",
    "hash_size",
    "keymat",
    "modp_prime",
    "pad_to_block",
    "phase2_iv",
    "prf",
]

# --------------------------------------------------------------------------- MODP primes
# Transcribed from the RFC texts; tests/unit/ike/test_dh_groups.py checks each against a SHA-256 of
# this hex, a Miller-Rabin test and the "p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k)"
# construction the RFCs give.

# RFC 2409 section 6.1 (First Oakley Group): 768-bit MODP prime, generator 2.
_MODP_768_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF"
)
# RFC 2409 section 6.2 (Second Oakley Group): 1024-bit MODP prime, generator 2.
_MODP_1024_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF"
)
# RFC 3526 section 2: 1536-bit MODP prime, generator 2.
_MODP_1536_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF"
)
# RFC 3526 section 3: 2048-bit MODP prime, generator 2.
_MODP_2048_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
)
# RFC 3526 section 4: 3072-bit MODP prime, generator 2.
_MODP_3072_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
)
# RFC 3526 section 5: 4096-bit MODP prime, generator 2.
_MODP_4096_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
)
# RFC 3526 section 6: 6144-bit MODP prime, generator 2.
_MODP_6144_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DCC4024FFFFFFFFFFFFFFFF"
)
# RFC 3526 section 7: 8192-bit MODP prime, generator 2.
_MODP_8192_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DBE115974A3926F12FEE5E4"
    "38777CB6A932DF8CD8BEC4D073B931BA3BC832B68D9DD300741FA7BF8AFC47ED"
    "2576F6936BA424663AAB639C5AE4F5683423B4742BF1C978238F16CBE39D652D"
    "E3FDB8BEFC848AD922222E04A4037C0713EB57A81A23F0C73473FC646CEA306B"
    "4BCBC8862F8385DDFA9D4B7FA2C087E879683303ED5BDD3A062B3CF5B3A278A6"
    "6D2A13F83F44F82DDF310EE074AB6A364597E899A0255DC164F31CC50846851D"
    "F9AB48195DED7EA1B1D510BD7EE74D73FAF36BC31ECFA268359046F4EB879F92"
    "4009438B481C6CD7889A002ED5EE382BC9190DA6FC026E479558E4475677E9AA"
    "9E3050E2765694DFC81F56E880B96E7160C980DD98EDD3DFFFFFFFFFFFFFFFFF"
)

_MODP_PRIMES_HEX: dict[DHGroup, str] = {
    DHGroup.MODP_768: _MODP_768_HEX,
    DHGroup.MODP_1024: _MODP_1024_HEX,
    DHGroup.MODP_1536: _MODP_1536_HEX,
    DHGroup.MODP_2048: _MODP_2048_HEX,
    DHGroup.MODP_3072: _MODP_3072_HEX,
    DHGroup.MODP_4096: _MODP_4096_HEX,
    DHGroup.MODP_6144: _MODP_6144_HEX,
    DHGroup.MODP_8192: _MODP_8192_HEX,
}
MODP_GENERATOR = 2  # RFC 2409 section 6, RFC 3526: every MODP group uses g = 2

# RFC 5903 section 3: the ECP groups and their field sizes in bytes.
_ECP_CURVES: dict[DHGroup, tuple[type[ec.EllipticCurve], int]] = {
    DHGroup.ECP_256: (ec.SECP256R1, 32),
    DHGroup.ECP_384: (ec.SECP384R1, 48),
    DHGroup.ECP_521: (ec.SECP521R1, 66),
}
_X25519_LENGTH = 32  # RFC 7748 section 5, RFC 8031 section 3.1

#: Groups 1, 2 and 5 are weak (RFC 8247 section 2.4); the crypto supports them but the
#: policy layer must only offer or accept them when the configuration opts in.
LEGACY_DH_GROUPS: frozenset[DHGroup] = frozenset({DHGroup.MODP_768, DHGroup.MODP_1024, DHGroup.MODP_1536})

#: Every group :class:`DiffieHellman` can compute (legacy groups included, see above).
SUPPORTED_DH_GROUPS: frozenset[DHGroup] = (
    frozenset(_MODP_PRIMES_HEX) | frozenset(_ECP_CURVES) | {DHGroup.CURVE25519}
)


def modp_prime(group: DHGroup) -> int:
    """The prime of a MODP group (RFC 2409 section 6, RFC 3526)."""
    try:
        return _modp_prime_cached(DHGroup(group))
    except KeyError:
        raise LocalProtocolError(f"{group!r} is not a MODP group") from None


@cache
def _modp_prime_cached(group: DHGroup) -> int:
    return int(_MODP_PRIMES_HEX[group], 16)


# Length in bits of a random private exponent for the RFC 3526 groups: the short exponents
# OpenSSL 3 picks for these named groups (twice the group's security strength, RFC 3526
# section 8, NIST SP 800-56A rev. 3 section 5.6.1.1.1), which tunvpn used while it computed
# MODP through cryptography. Groups 1 and 2 (no such table) draw x from the full range 2..p-2.
_MODP_EXPONENT_BITS: dict[DHGroup, int] = {
    DHGroup.MODP_1536: 200,
    DHGroup.MODP_2048: 225,
    DHGroup.MODP_3072: 275,
    DHGroup.MODP_4096: 325,
    DHGroup.MODP_6144: 375,
    DHGroup.MODP_8192: 400,
}


def _random_modp_exponent(group: DHGroup, p: int) -> int:
    """A fresh private exponent 1 < x < p - 1 from the operating system's CSPRNG."""
    bits = _MODP_EXPONENT_BITS.get(group)
    while True:
        x = secrets.randbits(bits) if bits is not None else secrets.randbelow(p - 3) + 2
        if 1 < x < p - 1:
            return x


class _ModpPrivate:
    """A MODP private exponent; computations go through GMP's ``mpz_powm_sec``, whose sequence
    of operations and memory accesses does not depend on the exponent's bits (only its limb
    count). Never shown in a ``repr``."""

    __slots__ = ("_p", "_x")

    def __init__(self, x: int, p: int) -> None:
        self._x = gmpy2.mpz(x)
        self._p = gmpy2.mpz(p)

    def power(self, base: int) -> int:
        """base^x mod p."""
        return int(gmpy2.powmod_sec(gmpy2.mpz(base), self._x, self._p))

    def __repr__(self) -> str:
        return "_ModpPrivate(<hidden>)"


def dh_public_length(group: DHGroup) -> int:
    """Length in bytes of the KE payload data for ``group``.

    MODP: the prime length (RFC 2409 section 5: g^x is padded with zeros to that length);
    ECP: two field elements x || y (RFC 5903 section 7); Curve25519: 32 (RFC 8031 section 3.1).
    """
    group = _check_group(group)
    if group in _MODP_PRIMES_HEX:
        return len(_MODP_PRIMES_HEX[group]) // 2
    if group in _ECP_CURVES:
        return 2 * _ECP_CURVES[group][1]
    return _X25519_LENGTH


def _check_group(group: DHGroup | int) -> DHGroup:
    try:
        checked = DHGroup(group)
    except ValueError:
        raise LocalProtocolError(f"unknown Diffie-Hellman group {group}") from None
    if checked not in SUPPORTED_DH_GROUPS:
        raise LocalProtocolError(f"unsupported Diffie-Hellman group {checked.name}")
    return checked


def _bad_ke(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, NotifyType.INVALID_KEY_INFORMATION, field="KE")


class DiffieHellman:
    """One side of a Diffie-Hellman exchange (RFC 2409 section 5, RFC 5903, RFC 7748).

    :param group: the negotiated group.
    :param private_key: a fixed private value for known-answer tests (big-endian exponent or
        scalar for MODP/ECP, the 32-byte scalar for Curve25519); random when ``None``.

    ``public`` is the KE payload data. :meth:`shared_secret` returns g^xy in the form IKEv1
    feeds into SKEYID: MODP left-padded to the prime length, ECP the x coordinate only
    (RFC 5903 section 7), Curve25519 the 32-byte X25519 output.
    """

    __slots__ = ("_private", "group", "public")

    group: DHGroup
    public: bytes
    _private: _ModpPrivate | ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey

    def __init__(self, group: DHGroup, private_key: bytes | None = None) -> None:
        self.group = _check_group(group)
        if self.group in _MODP_PRIMES_HEX:
            modp = self._modp_private(private_key)
            self._private = modp
            y = modp.power(MODP_GENERATOR)
            self.public = y.to_bytes(dh_public_length(self.group), "big")
        elif self.group in _ECP_CURVES:
            curve_type, size = _ECP_CURVES[self.group]
            if private_key is None:
                self._private = ec.generate_private_key(curve_type())
            else:
                try:
                    self._private = ec.derive_private_key(int.from_bytes(private_key, "big"), curve_type())
                except ValueError:
                    raise LocalProtocolError(f"{self.group.name} private scalar out of range") from None
            numbers = self._private.public_key().public_numbers()
            self.public = numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")
        else:
            if private_key is None:
                self._private = x25519.X25519PrivateKey.generate()
            else:
                if len(private_key) != _X25519_LENGTH:
                    raise LocalProtocolError("an X25519 private key is 32 bytes")
                self._private = x25519.X25519PrivateKey.from_private_bytes(private_key)
            self.public = self._private.public_key().public_bytes_raw()

    def _modp_private(self, private_key: bytes | None) -> _ModpPrivate:
        p = modp_prime(self.group)
        if private_key is None:
            return _ModpPrivate(_random_modp_exponent(self.group, p), p)
        x = int.from_bytes(private_key, "big")
        if not 1 < x < p - 1:
            raise LocalProtocolError("MODP private exponent out of range")
        return _ModpPrivate(x, p)

    def __repr__(self) -> str:
        return f"DiffieHellman(group={self.group.name}, public={self.public[:8].hex()}...)"

    def shared_secret(self, peer_public: bytes) -> bytes:
        """Compute g^xy from the peer's KE payload data.

        :raises RemoteProtocolError: INVALID_KEY_INFORMATION (field ``KE``) when the peer's value
            has the wrong length or is not a valid group element: MODP values outside
            2..p-2 (RFC 2631 section 2.1.5 style check; 0, 1 and p-1 are degenerate), ECP
            points off the curve (RFC 5903 section 7, "MUST" be validated), or an all-zero
            X25519 result from a low-order point (RFC 7748 section 6.1, RFC 8031 section 2.3).
        """
        expected = dh_public_length(self.group)
        if len(peer_public) != expected:
            raise _bad_ke(f"{self.group.name} public value is {len(peer_public)} bytes, expected {expected}")
        if isinstance(self._private, _ModpPrivate):
            return self._modp_shared(self._private, peer_public)
        if isinstance(self._private, ec.EllipticCurvePrivateKey):
            try:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(
                    self._private.curve, b"\x04" + peer_public
                )
                return self._private.exchange(ec.ECDH(), peer)
            except ValueError:
                raise _bad_ke(f"{self.group.name} public value is not a point on the curve") from None
        try:
            peer_x = x25519.X25519PublicKey.from_public_bytes(peer_public)
            secret = self._private.exchange(peer_x)
        except ValueError:
            raise _bad_ke("X25519 exchange gave the all-zero value (low-order point)") from None
        if constant_time_equal(secret, bytes(_X25519_LENGTH)):
            raise _bad_ke("X25519 exchange gave the all-zero value (low-order point)")
        return secret

    def _modp_shared(self, private: _ModpPrivate, peer_public: bytes) -> bytes:
        p = modp_prime(self.group)
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < p - 1:
            raise _bad_ke(f"{self.group.name} public value is 0, 1, p-1 or not below p")
        secret = private.power(y)
        # As OpenSSL's DH_compute_key did: a degenerate g^xy (1 or p-1, only when x is a multiple
        # of the order of y) is refused rather than fed into SKEYID.
        if secret <= 1 or secret == p - 1:
            raise _bad_ke(f"{self.group.name} public value rejected")
        # IKEv1 uses g^xy padded with leading zeros to the prime length (RFC 2409 section 5).
        return secret.to_bytes(dh_public_length(self.group), "big")


# --------------------------------------------------------------------------- hash and PRF

_HASHLIB_NAMES: dict[HashAlgorithm, str] = {
    HashAlgorithm.MD5: "md5",
    HashAlgorithm.SHA1: "sha1",
    HashAlgorithm.SHA2_256: "sha256",
    HashAlgorithm.SHA2_384: "sha384",
    HashAlgorithm.SHA2_512: "sha512",
}
#: Hash algorithms usable as phase 1 hash and (as HMAC) PRF. Tiger is not supported.
SUPPORTED_HASHES: frozenset[HashAlgorithm] = frozenset(_HASHLIB_NAMES)


def _hash_name(alg: HashAlgorithm) -> str:
    try:
        return _HASHLIB_NAMES[alg]
    except KeyError:
        raise LocalProtocolError(f"unsupported hash algorithm {alg!r}") from None


def chap_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """The CHAP-MD5 response (RFC 1994 section 4.1): MD5(Identifier || secret || challenge)."""
    return hashlib.md5(bytes((identifier & 0xFF,)) + secret + challenge).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (hashes, MACs, keys) without a data-dependent early exit."""
    return hmac.compare_digest(a, b)


def hash_digest(alg: HashAlgorithm, data: bytes) -> bytes:
    """The negotiated hash (RFC 2409 appendix A, class 2) over ``data``."""
    return hashlib.new(_hash_name(alg), data).digest()


def hash_size(alg: HashAlgorithm) -> int:
    """Digest size in bytes of the hash, and so of the HMAC PRF output."""
    return hashlib.new(_hash_name(alg)).digest_size


def prf(alg: HashAlgorithm, key: bytes, data: bytes) -> bytes:
    """prf(key, data) of RFC 2409 section 3.2: HMAC (RFC 2104) with hash ``alg``.

    RFC 2409 section 4: without a PRF attribute the PRF is the HMAC of the negotiated hash,
    so callers pass the negotiated hash here.
    """
    return hmac.digest(key, data, _hash_name(alg))


# --------------------------------------------------------------------------- CBC ciphers

# RFC 2409 appendix A encryption algorithms we implement: block size and fixed key size
# (None = variable, set by the Key Length attribute, RFC 2409 section 4.5 / RFC 3602).
_CIPHERS: dict[EncryptionAlgorithm, tuple[int, int | None]] = {
    EncryptionAlgorithm.DES_CBC: (8, 8),
    EncryptionAlgorithm.DES3_CBC: (8, 24),
    EncryptionAlgorithm.AES_CBC: (16, None),
    EncryptionAlgorithm.CAMELLIA_CBC: (16, None),
}
_VARIABLE_KEY_BITS = (128, 192, 256)  # AES (RFC 3602 section 5.3), Camellia (RFC 4312)

#: Phase 1 encryption algorithms :func:`cbc_encrypt` implements.
SUPPORTED_CIPHERS: frozenset[EncryptionAlgorithm] = frozenset(_CIPHERS)


def _cipher_entry(enc: EncryptionAlgorithm) -> tuple[int, int | None]:
    try:
        return _CIPHERS[enc]
    except KeyError:
        raise LocalProtocolError(f"unsupported encryption algorithm {enc!r}") from None


def cipher_block_size(enc: EncryptionAlgorithm) -> int:
    """Cipher block size in bytes (also the IV size, RFC 2409 appendix B)."""
    return _cipher_entry(enc)[0]


def cipher_key_size(enc: EncryptionAlgorithm, key_length_bits: int | None) -> int:
    """Key size in bytes: AES/Camellia from the Key Length attribute (128/192/256, which
    RFC 3602 section 5.3 requires), 3DES 24, DES 8 (RFC 2409 appendix B).

    :raises LocalProtocolError: an impossible key length; the proposal layer must have
        refused it already.
    """
    _, fixed = _cipher_entry(enc)
    if fixed is not None:
        if key_length_bits not in (None, fixed * 8):
            raise LocalProtocolError(f"{enc.name} has a fixed {fixed * 8}-bit key, not {key_length_bits}")
        return fixed
    if key_length_bits not in _VARIABLE_KEY_BITS:
        raise LocalProtocolError(
            f"{enc.name} needs a key length of 128, 192 or 256 bits, not {key_length_bits}"
        )
    return key_length_bits // 8


def _cipher(enc: EncryptionAlgorithm, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    block_size, _ = _cipher_entry(enc)
    if len(iv) != block_size:
        raise LocalProtocolError(f"{enc.name} IV must be {block_size} bytes, not {len(iv)}")
    algorithm: algorithms.BlockCipherAlgorithm
    if enc is EncryptionAlgorithm.AES_CBC:
        algorithm = algorithms.AES(key)
    elif enc is EncryptionAlgorithm.CAMELLIA_CBC:
        algorithm = decrepit_algorithms.Camellia(key)
    elif enc is EncryptionAlgorithm.DES3_CBC:
        algorithm = decrepit_algorithms.TripleDES(key)
    else:
        if len(key) != 8:
            raise LocalProtocolError("a DES key is 8 bytes")
        algorithm = decrepit_algorithms.TripleDES(key * 3)  # EDE with K1=K2=K3 is single DES
    return Cipher(algorithm, modes.CBC(iv))


def cbc_encrypt(enc: EncryptionAlgorithm, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """CBC-encrypt a block-aligned message body (RFC 2408 section 3.1, RFC 2409 appendix B).

    :raises LocalProtocolError: ``plaintext`` is not a multiple of the block size
        (use :func:`pad_to_block` first).
    """
    block_size = cipher_block_size(enc)
    if len(plaintext) % block_size:
        raise LocalProtocolError(f"plaintext of {len(plaintext)} bytes is not a multiple of {block_size}")
    encryptor = _cipher(enc, key, iv).encryptor()
    return encryptor.update(plaintext) + encryptor.finalize()


def cbc_decrypt(enc: EncryptionAlgorithm, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """CBC-decrypt an encrypted message body. The padding is left for the payload parser.

    :raises RemoteProtocolError: PAYLOAD_MALFORMED (field ``encrypted payload``) when the
        ciphertext is empty or not a multiple of the block size.
    """
    block_size = cipher_block_size(enc)
    if not ciphertext or len(ciphertext) % block_size:
        raise RemoteProtocolError(
            f"encrypted payload of {len(ciphertext)} bytes is not a non-empty multiple of {block_size}",
            NotifyType.PAYLOAD_MALFORMED,
            field="encrypted payload",
        )
    decryptor = _cipher(enc, key, iv).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def pad_to_block(data: bytes, block_size: int) -> bytes:
    """Pad with zero bytes up to a multiple of ``block_size`` (nothing if already aligned).

    RFC 2408 section 3.1 ("the message MUST be padded with zeros") and RFC 2409 appendix B
    leave the padding content open; zero bytes and no extra pad-length byte is what racoon,
    strongSwan and vpnc send, and receivers ignore trailing bytes past the last payload.
    """
    if block_size <= 0:
        raise LocalProtocolError("block size must be positive")
    return data + bytes(-len(data) % block_size)


# --------------------------------------------------------------------------- phase 1 keys

_PSK_METHODS = frozenset(
    {AuthMethod.PRE_SHARED_KEY, AuthMethod.XAUTH_INIT_PRESHARED, AuthMethod.XAUTH_RESP_PRESHARED}
)
_SIGNATURE_METHODS = frozenset(
    {
        AuthMethod.DSS_SIGNATURES,
        AuthMethod.RSA_SIGNATURES,
        AuthMethod.ECDSA_SHA256_P256,
        AuthMethod.ECDSA_SHA384_P384,
        AuthMethod.ECDSA_SHA512_P521,
        AuthMethod.HYBRID_INIT_RSA,
        AuthMethod.HYBRID_RESP_RSA,
        AuthMethod.HYBRID_INIT_DSS,
        AuthMethod.HYBRID_RESP_DSS,
        AuthMethod.XAUTH_INIT_DSS,
        AuthMethod.XAUTH_RESP_DSS,
        AuthMethod.XAUTH_INIT_RSA,
        AuthMethod.XAUTH_RESP_RSA,
    }
)


@dataclass(frozen=True)
class Phase1Keys:
    """The keying material of an ISAKMP SA (RFC 2409 section 5 and appendix B).

    The ``repr`` shows only lengths: secrets never reach logs.
    """

    skeyid: bytes = field(repr=False)
    """SKEYID, the root secret."""
    skeyid_d: bytes = field(repr=False)
    """SKEYID_d, from which Quick Mode KEYMAT is derived (RFC 2409 section 5.5)."""
    skeyid_a: bytes = field(repr=False)
    """SKEYID_a, the key of HASH(1..3) and informational hashes (RFC 2409 section 5.5)."""
    skeyid_e: bytes = field(repr=False)
    """SKEYID_e, the source of the encryption key."""
    enc_key: bytes = field(repr=False)
    """The phase 1 encryption key, SKEYID_e expanded per appendix B if too short."""
    iv: bytes = field(repr=False)
    """The initial phase 1 IV: hash(g^xi | g^xr) truncated to the block size (appendix B)."""

    def __repr__(self) -> str:
        return f"Phase1Keys(<secret>, enc_key={len(self.enc_key)} bytes, iv={len(self.iv)} bytes)"


def derive_skeyid(
    *,
    prf_alg: HashAlgorithm,
    auth: AuthMethod,
    ni: bytes,
    nr: bytes,
    g_xy: bytes,
    psk: bytes | None = None,
) -> bytes:
    """SKEYID per RFC 2409 section 5 (``ni``/``nr`` are the nonce payload bodies Ni_b, Nr_b).

    * pre-shared keys (including the XAUTH PSK methods): prf(pre-shared-key, Ni_b | Nr_b)
    * signatures (DSS, RSA, ECDSA, hybrid and XAUTH signature methods):
      prf(Ni_b | Nr_b, g^xy)

    Public key encryption (methods 4, 5) is not implemented.
    """
    if auth in _PSK_METHODS:
        if psk is None:
            raise LocalProtocolError(f"{AuthMethod(auth).name} needs a pre-shared key")
        return prf(prf_alg, psk, ni + nr)
    if auth in _SIGNATURE_METHODS:
        return prf(prf_alg, ni + nr, g_xy)
    raise LocalProtocolError(f"no SKEYID derivation for authentication method {auth!r}")


def _expand_enc_key(prf_alg: HashAlgorithm, skeyid_e: bytes, key_size: int) -> bytes:
    """RFC 2409 appendix B: Ka = K1 | K2 | ... with K1 = prf(SKEYID_e, 0) (one zero octet)
    and K(n+1) = prf(SKEYID_e, Kn), when SKEYID_e is shorter than the key."""
    if len(skeyid_e) >= key_size:
        return skeyid_e[:key_size]
    blocks: list[bytes] = []
    block = b"\x00"
    total = 0
    while total < key_size:
        block = prf(prf_alg, skeyid_e, block)
        blocks.append(block)
        total += len(block)
    return b"".join(blocks)[:key_size]


def derive_phase1_keys(
    *,
    prf_alg: HashAlgorithm,
    hash_alg: HashAlgorithm,
    enc_alg: EncryptionAlgorithm,
    key_length_bits: int | None,
    skeyid: bytes,
    g_xy: bytes,
    icookie: bytes,
    rcookie: bytes,
    gxi: bytes,
    gxr: bytes,
) -> Phase1Keys:
    """Derive SKEYID_d/_a/_e, the encryption key and the first IV (RFC 2409 section 5, appendix B).

    SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
    SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
    SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
    IV = hash(g^xi | g^xr) truncated to the cipher block size, with the negotiated hash.
    """
    if len(icookie) != 8 or len(rcookie) != 8:
        raise LocalProtocolError("cookies are 8 bytes each")
    tail = g_xy + icookie + rcookie
    skeyid_d = prf(prf_alg, skeyid, tail + b"\x00")
    skeyid_a = prf(prf_alg, skeyid, skeyid_d + tail + b"\x01")
    skeyid_e = prf(prf_alg, skeyid, skeyid_a + tail + b"\x02")
    enc_key = _expand_enc_key(prf_alg, skeyid_e, cipher_key_size(enc_alg, key_length_bits))
    iv = hash_digest(hash_alg, gxi + gxr)[: cipher_block_size(enc_alg)]
    return Phase1Keys(
        skeyid=skeyid, skeyid_d=skeyid_d, skeyid_a=skeyid_a, skeyid_e=skeyid_e, enc_key=enc_key, iv=iv
    )


def hash_i(
    prf_alg: HashAlgorithm,
    skeyid: bytes,
    gxi: bytes,
    gxr: bytes,
    icookie: bytes,
    rcookie: bytes,
    sai_b: bytes,
    idii_b: bytes,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) (RFC 2409 section 5).

    ``sai_b`` is the initiator's whole SA payload body (without the generic header);
    ``idii_b`` the ID payload body (without the generic header).
    """
    return prf(prf_alg, skeyid, gxi + gxr + icookie + rcookie + sai_b + idii_b)


def hash_r(
    prf_alg: HashAlgorithm,
    skeyid: bytes,
    gxi: bytes,
    gxr: bytes,
    icookie: bytes,
    rcookie: bytes,
    sai_b: bytes,
    idir_b: bytes,
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b) (RFC 2409 section 5)."""
    return prf(prf_alg, skeyid, gxr + gxi + rcookie + icookie + sai_b + idir_b)


def phase2_iv(hash_alg: HashAlgorithm, last_phase1_block: bytes, message_id: int, block_size: int) -> bytes:
    """First IV of a Quick Mode / Informational / Transaction exchange (RFC 2409 appendix B).

    hash(last CBC output block of the last phase 1 message | M-ID), truncated to the block
    size, with M-ID as the 4-byte big-endian message ID from the ISAKMP header. Later
    messages of the same exchange chain from the previous message's last ciphertext block.
    """
    if not 0 <= message_id <= 0xFFFFFFFF:
        raise LocalProtocolError(f"message ID {message_id} does not fit in 32 bits")
    return hash_digest(hash_alg, last_phase1_block + message_id.to_bytes(4, "big"))[:block_size]


# --------------------------------------------------------------------------- phase 2 keys


def keymat(
    prf_alg: HashAlgorithm,
    skeyid_d: bytes,
    protocol: int,
    spi: bytes,
    ni: bytes,
    nr: bytes,
    length: int,
    g_qm_xy: bytes | None = None,
) -> bytes:
    """Quick Mode KEYMAT for one SA direction (RFC 2409 section 5.5).

    KEYMAT = K1 | K2 | K3 | ... truncated to ``length`` bytes, with
    K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b) and
    K(n+1) = prf(SKEYID_d, Kn | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b).
    ``spi`` is the SPI of the receiving side of that SA; ``g_qm_xy`` is the PFS shared secret.
    """
    if not 0 <= protocol <= 0xFF:
        raise LocalProtocolError(f"protocol {protocol} does not fit in one byte")
    if length < 0:
        raise LocalProtocolError("negative KEYMAT length")
    seed = (g_qm_xy or b"") + bytes([protocol]) + spi + ni + nr
    blocks: list[bytes] = []
    block = b""
    total = 0
    while total < length:
        block = prf(prf_alg, skeyid_d, block + seed)
        blocks.append(block)
        total += len(block)
    return b"".join(blocks)[:length]


# ESP encryption: key bytes per Key Length (None = fixed size), plus salt/nonce bytes.
_ESP_SALT: dict[EspTransform, int] = {
    EspTransform.AES_CBC: 0,  # RFC 3602
    EspTransform.AES_CTR: 4,  # RFC 3686 section 5.1: 4-byte nonce
    EspTransform.AES_CCM_8: 3,  # RFC 4309 section 7.1: 3-byte salt
    EspTransform.AES_CCM_12: 3,
    EspTransform.AES_CCM_16: 3,
    EspTransform.AES_GCM_8: 4,  # RFC 4106 section 8.1: 4-byte salt
    EspTransform.AES_GCM_12: 4,
    EspTransform.AES_GCM_16: 4,
    EspTransform.NULL_AUTH_AES_GMAC: 4,  # RFC 4543 section 8.1
}
_ESP_FIXED_KEY: dict[EspTransform, int] = {
    EspTransform.DES: 8,
    EspTransform.DES3: 24,  # RFC 2451
    EspTransform.NULL: 0,  # RFC 2410
    EspTransform.CHACHA20_POLY1305_PRIVATE: 32 + 4,  # RFC 7634 section 2: 256-bit key + 4-byte salt
}
_ESP_COMBINED = frozenset(
    {
        EspTransform.AES_CCM_8,
        EspTransform.AES_CCM_12,
        EspTransform.AES_CCM_16,
        EspTransform.AES_GCM_8,
        EspTransform.AES_GCM_12,
        EspTransform.AES_GCM_16,
        EspTransform.NULL_AUTH_AES_GMAC,
        EspTransform.CHACHA20_POLY1305_PRIVATE,
    }
)
_INTEGRITY_KEY: dict[AuthAlgorithm, int] = {
    AuthAlgorithm.HMAC_MD5: 16,  # RFC 2403
    AuthAlgorithm.HMAC_SHA1: 20,  # RFC 2404
    AuthAlgorithm.HMAC_SHA2_256: 32,  # RFC 4868 section 2.1
    AuthAlgorithm.HMAC_SHA2_384: 48,
    AuthAlgorithm.HMAC_SHA2_512: 64,
    AuthAlgorithm.AES_XCBC_MAC: 16,  # RFC 3566
}


def esp_key_lengths(
    transform: EspTransform, key_length_bits: int | None, auth: AuthAlgorithm | None
) -> tuple[int, int]:
    """(encryption key bytes including any salt/nonce, integrity key bytes) for one ESP SA.

    KEYMAT is split encryption key first, then integrity key (RFC 2409 section 5.5, as
    strongSwan and the Linux XFRM interface do). Combined-mode transforms (GCM, CCM, GMAC,
    ChaCha20-Poly1305) take no integrity algorithm (RFC 4106 section 8.4).

    :raises LocalProtocolError: a transform, key length or algorithm we cannot key; the
        proposal layer must have refused it.
    """
    transform = EspTransform(transform)
    if transform in _ESP_FIXED_KEY:
        if key_length_bits is not None and transform is not EspTransform.NULL:
            fixed_bits = (_ESP_FIXED_KEY[transform] - (4 if transform in _ESP_COMBINED else 0)) * 8
            if key_length_bits != fixed_bits:
                raise LocalProtocolError(
                    f"{transform.name} has a fixed key length, not {key_length_bits} bits"
                )
        encryption = _ESP_FIXED_KEY[transform]
    elif transform in _ESP_SALT:
        if key_length_bits not in _VARIABLE_KEY_BITS:
            raise LocalProtocolError(f"{transform.name} needs a key length of 128, 192 or 256 bits")
        encryption = key_length_bits // 8 + _ESP_SALT[transform]
    else:
        raise LocalProtocolError(f"unsupported ESP transform {transform.name}")
    if transform in _ESP_COMBINED:
        if auth is not None:
            raise LocalProtocolError(f"combined-mode {transform.name} takes no separate integrity algorithm")
        return encryption, 0
    if auth is None:
        return encryption, 0
    try:
        return encryption, _INTEGRITY_KEY[AuthAlgorithm(auth)]
    except KeyError:
        raise LocalProtocolError(f"unsupported ESP integrity algorithm {AuthAlgorithm(auth).name}") from None
