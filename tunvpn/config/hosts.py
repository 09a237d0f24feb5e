"""Gateways as a user writes them: an IP address or a host name (issue 15)."""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_address(text: str) -> bool:
    """Whether ``text`` is an IP address literal (no lookup needed)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_gateway(text: str) -> str:
    """A gateway as a user writes it: an IP address or a host name (RFC 1123 labels).

    :raises ValueError: neither, with the reason.
    """
    name = text.strip()
    if not name:
        raise ValueError("empty gateway")
    if is_address(name):
        if ipaddress.ip_address(name).is_unspecified:
            raise ValueError(f"{name} is a wildcard: give the gateway's address or name")
        return str(ipaddress.ip_address(name))
    bare = name[:-1] if name.endswith(".") else name
    if len(bare) > 253 or not all(_LABEL.match(label) for label in bare.split(".")):
        raise ValueError(f"{name!r} is neither an IP address nor a host name")
    if bare.replace(".", "").isdigit():
        raise ValueError(f"{name!r} is neither an IP address nor a host name")
    return bare.lower()


__all__ = ["check_gateway", "is_address"]
