"""Traffic selectors: the addresses, IP protocol and port an IPsec SA carries.

A :class:`TrafficSelector` is a phase 2 client identity (RFC 2409 section 5.5, RFC 2407
section 4.6.2): an address range plus an IP protocol and port, each 0 for "any". Quick Mode
negotiates them (their ID payloads: :func:`tunvpn.ike.identity.selector_to_id_payload` and
:func:`~tunvpn.ike.identity.selector_from_id_payload`), the ESP core checks inner packets
against them (:mod:`tunvpn.esp.policy`), the data path routes by them. Bad values raise
:class:`~tunvpn.ipsec.errors.LocalProtocolError`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import LocalProtocolError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
AddressRange = tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address]


def ordered_range(start: IPAddress, end: IPAddress) -> AddressRange | None:
    """``(start, end)`` when both are of one family and ``start <= end``, else None."""
    if isinstance(start, IPv4Address) and isinstance(end, IPv4Address):
        return (start, end) if start <= end else None
    if isinstance(start, IPv6Address) and isinstance(end, IPv6Address):
        return (start, end) if start <= end else None
    return None


def parse_address_text(text: str) -> IPAddress | IPNetwork | AddressRange | None:
    """``10.0.0.1``, ``10.0.0.0/24`` (host bits ignored) or ``10.0.0.1-10.0.0.9``; None when
    the text is none of these; a range whose start is above its end raises."""
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        if "-" in text:
            start_s, end_s = text.split("-", 1)
            start, end = ipaddress.ip_address(start_s.strip()), ipaddress.ip_address(end_s.strip())
            rng = ordered_range(start, end)
            if rng is None:
                raise LocalProtocolError(f"bad address range {text!r}")
            return rng
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_PROTOCOL_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    115: "l2tp",
}
_PROTOCOL_NUMBERS = {name: number for number, name in _PROTOCOL_NAMES.items()}


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """A phase 2 client identity: addresses ``start``..``end``, protocol and port (0 = any).

    RFC 2409 section 5.5 and RFC 2407 section 4.6.2: Quick Mode IDci/IDcr.
    """

    start: IPAddress
    end: IPAddress
    protocol: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise LocalProtocolError(f"mixed address families {self.start} - {self.end}")
        if ordered_range(self.start, self.end) is None:
            raise LocalProtocolError(f"range start {self.start} > end {self.end}")
        if not 0 <= self.protocol <= 0xFF or not 0 <= self.port <= 0xFFFF:
            raise LocalProtocolError(f"bad protocol/port {self.protocol}/{self.port}")

    # -- constructors

    @classmethod
    def from_network(cls, network: IPNetwork | str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        """All addresses of a CIDR block (host bits are ignored)."""
        net = ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network
        return cls(net.network_address, net.broadcast_address, protocol, port)

    @classmethod
    def from_address(cls, address: IPAddress | str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        """A single host."""
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
        return cls(addr, addr, protocol, port)

    @classmethod
    def from_range(
        cls, start: IPAddress | str, end: IPAddress | str, protocol: int = 0, port: int = 0
    ) -> TrafficSelector:
        """An inclusive address range."""
        first = ipaddress.ip_address(start) if isinstance(start, str) else start
        last = ipaddress.ip_address(end) if isinstance(end, str) else end
        return cls(first, last, protocol, port)

    @classmethod
    def any(cls, version: int = 4) -> TrafficSelector:
        """Every address of one family, any protocol and port."""
        return cls.from_network("0.0.0.0/0" if version == 4 else "::/0")

    @classmethod
    def parse(cls, text: str) -> TrafficSelector:
        """``10.0.0.0/24``, ``10.0.0.1``, ``10.0.0.1-10.0.0.9``, each with an optional
        ``[proto/port]`` suffix such as ``[udp/1701]``, ``[tcp]`` or ``[17/0]``."""
        text = text.strip()
        protocol = port = 0
        match = re.fullmatch(r"(.*?)\[([^/\]]*)(?:/(\d+))?\]", text)
        if match:
            text, proto_text, port_text = (
                match.group(1).strip(),
                match.group(2).strip().lower(),
                match.group(3),
            )
            if proto_text.isdigit():
                protocol = int(proto_text)
            elif proto_text in _PROTOCOL_NUMBERS:
                protocol = _PROTOCOL_NUMBERS[proto_text]
            elif proto_text not in ("", "any"):
                raise LocalProtocolError(f"unknown protocol {proto_text!r}")
            port = int(port_text) if port_text else 0
        value = parse_address_text(text)
        if value is None:
            raise LocalProtocolError(f"not an address, subnet or range: {text!r}")
        if isinstance(value, tuple):
            return cls(value[0], value[1], protocol, port)
        if isinstance(value, (IPv4Network, IPv6Network)):
            return cls.from_network(value, protocol, port)
        return cls(value, value, protocol, port)

    # -- ranges and blocks

    @property
    def network(self) -> IPNetwork | None:
        """The CIDR block equal to this range, or None when it is not one."""
        nets = self.networks()
        return nets[0] if len(nets) == 1 else None

    def networks(self) -> list[IPNetwork]:
        """The smallest list of CIDR blocks covering exactly this range (for routes)."""
        start, end = self.start, self.end
        if isinstance(start, IPv4Address) and isinstance(end, IPv4Address):
            return list(ipaddress.summarize_address_range(start, end))
        assert isinstance(start, IPv6Address) and isinstance(end, IPv6Address)  # __post_init__ checked
        return list(ipaddress.summarize_address_range(start, end))

    @property
    def address_range(self) -> AddressRange:
        """``(start, end)``, typed as one family."""
        rng = ordered_range(self.start, self.end)
        assert rng is not None  # __post_init__ refused anything else
        return rng

    # -- set operations

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.start.version

    @property
    def is_any(self) -> bool:
        """True for every address of the family with any protocol and port."""
        top = (1 << (32 if self.version == 4 else 128)) - 1
        return int(self.start) == 0 and int(self.end) == top and self.protocol == 0 and self.port == 0

    def contains(self, other: TrafficSelector) -> bool:
        """True when every packet matching ``other`` matches this selector."""
        return (
            self.version == other.version
            and int(self.start) <= int(other.start)
            and int(other.end) <= int(self.end)
            and self.protocol in (0, other.protocol)
            and self.port in (0, other.port)
        )

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The packets matching both selectors, or None when there are none."""
        if self.version != other.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        if self.port and other.port and self.port != other.port:
            return None
        start = max(self.start, other.start, key=int)  # one family: checked above
        end = min(self.end, other.end, key=int)
        if int(start) > int(end):
            return None
        return TrafficSelector(start, end, self.protocol or other.protocol, self.port or other.port)

    def __str__(self) -> str:
        net = self.network
        text = str(net) if net is not None else f"{self.start}-{self.end}"
        if self.protocol or self.port:
            proto = _PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
            text += f"[{proto}/{self.port}]" if self.port else f"[{proto}]"
        return text


__all__ = [
    "AddressRange",
    "IPAddress",
    "IPNetwork",
    "TrafficSelector",
    "ordered_range",
    "parse_address_text",
]
