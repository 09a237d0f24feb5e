"""The gateway's pools of client addresses (``pool`` and ``pool6`` in ``gateway.toml``,
``--pool`` and ``--pool6``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, TypeVar

from tunvpn.config.errors import ConfigError

A = TypeVar("A", IPv4Address, IPv6Address)


class AddressPool(Generic[A]):
    """Client addresses ``first``-``last`` (inclusive) of one family, lowest free address first."""

    def __init__(self, first: A, last: A) -> None:
        if type(first) is not type(last):
            raise ConfigError(f"address pool {first}-{last}: two address families")
        if last < first:
            raise ConfigError(f"address pool {first}-{last}: the end is before the start")
        if int(last) - int(first) >= 1 << 16:
            raise ConfigError(f"address pool {first}-{last}: more than 65536 addresses")
        self.first: A = first
        self.last: A = last
        self._make: type[A] = type(first)
        self._leases: dict[bytes, A] = {}
        self._used: set[int] = set()
        """The leased addresses as integers (kept with ``_leases``)."""
        self._low = int(first)
        """Every address below this one is leased: where the search for a free one starts."""

    def __repr__(self) -> str:
        return f"AddressPool({self.first}-{self.last}, {len(self._leases)} leased)"

    @staticmethod
    def parse(text: str) -> AddressPool[IPv4Address]:
        """``10.79.0.10-10.79.0.20`` or a CIDR block (its host addresses)."""
        try:
            if "-" in text:
                start, _, end = text.partition("-")
                first, last = IPv4Address(start.strip()), IPv4Address(end.strip())
            else:
                net = IPv4Network(text.strip(), strict=False)
                first, last = (net[1], net[-2]) if net.num_addresses > 2 else (net[0], net[-1])
        except ValueError as exc:
            raise ConfigError(f"address pool {text!r}: {exc} (expected FIRST-LAST or a CIDR block)") from None
        return AddressPool(first, last)

    @staticmethod
    def parse6(text: str) -> AddressPool[IPv6Address]:
        """``fd79::10-fd79::ff`` or a CIDR block of at most 65536 addresses (``fd79::/112``:
        its addresses but the first, the subnet-router anycast address)."""
        try:
            if "-" in text:
                start, _, end = text.partition("-")
                first, last = IPv6Address(start.strip()), IPv6Address(end.strip())
            else:
                net = IPv6Network(text.strip(), strict=False)
                first, last = (net[1], net[-1]) if net.num_addresses > 1 else (net[0], net[0])
        except ValueError as exc:
            raise ConfigError(
                f"IPv6 address pool {text!r}: {exc} (expected FIRST-LAST or a CIDR block such as fd79::/112)"
            ) from None
        return AddressPool(first, last)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, self._make) and self.first <= address <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def lease(self, owner: bytes) -> A | None:
        """The address of ``owner`` (an ISAKMP SA id): the same one again if it asks twice."""
        if owner in self._leases:
            return self._leases[owner]
        if len(self._used) != len(self._leases):  # leases written in from outside (a reload)
            self._used = {int(a) for a in self._leases.values()}
            self._low = int(self.first)
        # from the lowest address that may be free, not from the start: with 1,000 clients
        # a scan from the start cost each login ~1 ms (issue 14, tunvpn bench logins)
        n, last = self._low, int(self.last)
        while n <= last and n in self._used:
            n += 1
        if n > last:
            self._low = n
            return None
        address = self._make(n)
        self._leases[owner] = address
        self._used.add(n)
        self._low = n + 1
        return address

    def release(self, owner: bytes) -> A | None:
        address = self._leases.pop(owner, None)
        if address is not None:
            self._used.discard(int(address))
            self._low = min(self._low, int(address))
        return address

    def move(self, owner: bytes, new_owner: bytes) -> None:
        """The lease of ``owner`` now belongs to ``new_owner`` (a rekeyed ISAKMP SA)."""
        address = self._leases.pop(owner, None)
        if address is not None:
            self._leases[new_owner] = address

    def adopt(self, old: AddressPool[A]) -> None:
        """Take over ``old``'s leases that fall inside this pool (a reload changed the pool:
        connected clients keep their addresses where they can)."""
        for owner, address in old.leased().items():
            if address in self:
                self._leases[owner] = address

    def leased(self) -> dict[bytes, A]:
        return dict(self._leases)
