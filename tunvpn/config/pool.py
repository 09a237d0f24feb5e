"""The gateway's pool of client addresses (``pool`` in ``gateway.toml``, ``--pool``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from tunvpn.config.errors import ConfigError


class AddressPool:
    """Client addresses ``first``-``last`` (inclusive), lowest free address first."""

    def __init__(self, first: IPv4Address, last: IPv4Address) -> None:
        if last < first:
            raise ConfigError(f"address pool {first}-{last}: the end is before the start")
        if int(last) - int(first) >= 1 << 16:
            raise ConfigError(f"address pool {first}-{last}: more than 65536 addresses")
        self.first = first
        self.last = last
        self._leases: dict[bytes, IPv4Address] = {}

    def __repr__(self) -> str:
        return f"AddressPool({self.first}-{self.last}, {len(self._leases)} leased)"

    @classmethod
    def parse(cls, text: str) -> AddressPool:
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
        return cls(first, last)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def lease(self, owner: bytes) -> IPv4Address | None:
        """The address of ``owner`` (an ISAKMP SA id): the same one again if it asks twice."""
        if owner in self._leases:
            return self._leases[owner]
        used = set(self._leases.values())
        for n in range(int(self.first), int(self.last) + 1):
            address = IPv4Address(n)
            if address not in used:
                self._leases[owner] = address
                return address
        return None

    def release(self, owner: bytes) -> IPv4Address | None:
        return self._leases.pop(owner, None)

    def leased(self) -> dict[bytes, IPv4Address]:
        return dict(self._leases)
