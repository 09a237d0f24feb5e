"""MODP Diffie-Hellman through gmpy2 (GMP's mpz_powm_sec), without cryptography's FFDH API.

cryptography 51 deprecates finite-field DH (``CryptographyDeprecationWarning``) and a later
release will remove it; tunvpn computes the MODP groups (1, 2, 5, 14-18) itself. These tests
check that computation against Python's own ``pow`` for every MODP group, and that no DH
operation of any group warns (so a reintroduced FFDH call fails here).
"""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tunvpn.ike.constants import DHGroup, NotifyType
from tunvpn.ike.crypto import SUPPORTED_DH_GROUPS, DiffieHellman, dh_public_length, modp_prime
from tunvpn.ike.errors import RemoteProtocolError

MODP_GROUPS = sorted(
    [
        DHGroup.MODP_768,
        DHGroup.MODP_1024,
        DHGroup.MODP_1536,
        DHGroup.MODP_2048,
        DHGroup.MODP_3072,
        DHGroup.MODP_4096,
        DHGroup.MODP_6144,
        DHGroup.MODP_8192,
    ]
)


def test_every_supported_modp_group_is_covered() -> None:
    assert {g for g in SUPPORTED_DH_GROUPS if g.name.startswith("MODP_")} == set(MODP_GROUPS)


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: g.name)
def test_modp_agrees_with_python_pow(group: DHGroup) -> None:
    """Public value g^x mod p and shared secret y^x mod p equal Python's pow, for a short
    exponent, a full-size one and the largest allowed (p - 2), as fixed-length big-endian."""
    p = modp_prime(group)
    size = dh_public_length(group)
    rng = random.Random(f"tunvpn-modp-{group.value}")  # fixed seed: reproducible exponents
    exponents = [rng.getrandbits(256) | 2, rng.randrange(2, p - 1), p - 2]
    peer_public = pow(2, rng.getrandbits(256) | 2, p)
    for x in exponents:
        ours = DiffieHellman(group, private_key=x.to_bytes(size, "big"))
        assert ours.public == pow(2, x, p).to_bytes(size, "big")
        secret = ours.shared_secret(peer_public.to_bytes(size, "big"))
        assert len(secret) == size
        assert secret == pow(peer_public, x, p).to_bytes(size, "big")


@pytest.mark.parametrize("group", MODP_GROUPS, ids=lambda g: g.name)
def test_modp_random_exponent_against_python_pow(group: DHGroup) -> None:
    """A random (engine-side) private exponent: the peer's view, computed with Python's pow
    from a known exponent, matches ours."""
    p = modp_prime(group)
    size = dh_public_length(group)
    ours = DiffieHellman(group)
    y = int.from_bytes(ours.public, "big")
    assert 1 < y < p - 1
    peer_x = random.Random(group.value).getrandbits(256) | 2
    secret = ours.shared_secret(pow(2, peer_x, p).to_bytes(size, "big"))
    assert secret == pow(y, peer_x, p).to_bytes(size, "big")
    assert DiffieHellman(group).public != ours.public


def test_modp_degenerate_shared_secret_is_refused() -> None:
    # x = q = (p-1)/2 and y = 4 (in the order-q subgroup) give g^xy = 1. cryptography/OpenSSL
    # refused this ("invalid secret", as a Rust panic); it is a clean INVALID_KEY_INFORMATION.
    p = modp_prime(DHGroup.MODP_2048)
    q = (p - 1) // 2
    ours = DiffieHellman(DHGroup.MODP_2048, private_key=q.to_bytes(256, "big"))
    with pytest.raises(RemoteProtocolError) as info:
        ours.shared_secret((4).to_bytes(256, "big"))
    assert info.value.notify is NotifyType.INVALID_KEY_INFORMATION
    assert info.value.field == "KE"


@pytest.mark.parametrize("group", sorted(SUPPORTED_DH_GROUPS), ids=lambda g: g.name)
def test_no_warning_from_any_dh_group(group: DHGroup) -> None:
    """Key generation and exchange of every group, with every warning turned into an error
    (cryptography's FFDH API raises CryptographyDeprecationWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = DiffieHellman(group), DiffieHellman(group)
        assert a.shared_secret(b.public) == b.shared_secret(a.public)


def test_dh_known_answer_tests_pass_with_warnings_as_errors() -> None:
    """The DH known-answer tests in a fresh interpreter (nothing imported or warned before)
    with cryptography's deprecation warning as an error."""
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::cryptography.utils.CryptographyDeprecationWarning",
            "-W",
            "error::DeprecationWarning",
            str(here / "test_dh_groups.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
