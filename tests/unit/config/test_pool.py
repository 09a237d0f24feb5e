"""The address pool hands out the lowest free address, in constant time per lease however many
clients hold one (issue 14: a scan from the start of the pool cost each login ~1 ms with 1,000
clients connected, `tunvpn bench logins --hold 1000 --hold-during`)."""

from __future__ import annotations

import ipaddress
import random
from ipaddress import IPv4Address

import pytest

from tunvpn.config import pool as pool_module
from tunvpn.config.errors import ConfigError
from tunvpn.config.pool import AddressPool


def owner(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_lowest_free_address_first_through_leases_and_releases() -> None:
    """Against the definition (the lowest address nobody holds), over a random walk."""
    pool = AddressPool.parse("10.79.0.10-10.79.0.60")
    rng = random.Random(14)
    held: dict[bytes, IPv4Address] = {}
    for step in range(3000):
        if held and rng.random() < 0.45:
            who = rng.choice(sorted(held))
            assert pool.release(who) == held.pop(who)
            continue
        who = owner(step)
        free = [IPv4Address(n) for n in range(int(pool.first), int(pool.last) + 1)]
        free = [a for a in free if a not in held.values()]
        got = pool.lease(who)
        assert got == (free[0] if free else None)
        if got is not None:
            held[who] = got
            assert pool.lease(who) == got  # the same SA asks again: the same address
    assert pool.leased() == held


def test_exhausted_then_a_release_in_the_middle_is_handed_out_next() -> None:
    pool = AddressPool.parse("10.79.0.1-10.79.0.3")
    a, b, c = (pool.lease(owner(i)) for i in range(3))
    assert pool.lease(owner(3)) is None
    assert pool.release(owner(1)) == b
    assert pool.lease(owner(4)) == b
    assert pool.lease(owner(5)) is None
    assert {a, c} <= set(pool.leased().values())


def test_leases_carried_into_a_new_pool_on_reload_are_not_handed_out_again() -> None:
    """The gateway's reload copies the old pool's leases into the new one (gateway/daemon.py
    _carry_leases writes them in directly)."""
    old = AddressPool.parse("10.79.0.1-10.79.0.10")
    for i in range(3):
        old.lease(owner(i))
    new = AddressPool.parse("10.79.0.1-10.79.0.10")
    new.lease(owner(99))  # a lease made before the carried ones arrive
    new.release(owner(99))
    for who, address in old.leased().items():
        new._leases[who] = address
    assert new.lease(owner(7)) == IPv4Address("10.79.0.4")


def test_many_clients_lease_in_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 leases: counted as the addresses the pool builds while searching, not timed (a
    scan from the start of the pool per lease builds ~500,000)."""
    built = 0

    class CountingAddress(IPv4Address):
        def __init__(self, address: object) -> None:
            nonlocal built
            built += 1
            super().__init__(address)

    monkeypatch.setattr(pool_module, "IPv4Address", CountingAddress)
    pool = AddressPool.parse("10.80.0.0/16")
    for i in range(1000):
        assert pool.lease(owner(i)) is not None
    assert built <= 2 * 1000


def test_an_ipv6_pool_leases_like_the_ipv4_one() -> None:
    """Issue 19: ``pool6`` as a range or a CIDR block of at most 65536 addresses."""
    pool = AddressPool.parse6("fd79::10-fd79::11")
    assert [str(pool.lease(owner)) for owner in (b"a", b"b", b"c")] == ["fd79::10", "fd79::11", "None"]
    assert ipaddress.IPv6Address("fd79::10") in pool and ipaddress.IPv4Address("10.0.0.1") not in pool
    pool.release(b"a")
    assert str(pool.lease(b"c")) == "fd79::10"
    block = AddressPool.parse6("fd79::/112")
    assert (str(block.first), str(block.last), block.size) == ("fd79::1", "fd79::ffff", 65535)
    with pytest.raises(ConfigError, match="65536"):
        AddressPool.parse6("fd79::/64")
    with pytest.raises(ConfigError, match="IPv6 address pool"):
        AddressPool.parse6("10.0.0.1-10.0.0.2")
