"""Numbers and reasons of the ESP data path (RFC 4303, RFC 4304, RFC 3948).

Everything the data path reports is an IntEnum, so a counter table can be a plain list
indexed by the member and a log line can name the member.
"""

from __future__ import annotations

from enum import Enum, IntEnum

SEQ32_MAX = 0xFFFF_FFFF
"""Last 32-bit sequence number an SA may send (RFC 4303 section 3.3.3: never cycle)."""
SEQ64_MAX = 0xFFFF_FFFF_FFFF_FFFF
"""Last 64-bit extended sequence number (RFC 4304)."""
DEFAULT_REPLAY_WINDOW = 4096
"""Anti-replay window in packets; RFC 4303 section 3.4.3 asks for at least 32, we need >= 1024."""
MIN_REPLAY_WINDOW = 32
"""RFC 4303 section 3.4.3: "a minimum window size of 32 packets MUST be supported"."""
DEFAULT_SOFT_FRACTION = 0.9
"""Soft lifetime as a fraction of the hard one (the rekey signal)."""


class NextHeader(IntEnum):
    """Values of the ESP trailer's Next Header byte we act on (IANA protocol numbers)."""

    IPV4 = 4  # IP-in-IP: tunnel mode with an IPv4 inner packet (RFC 4303 section 2.6)
    IPV6 = 41  # tunnel mode with an IPv6 inner packet
    NO_NEXT_HEADER = 59  # a TFC dummy packet, discarded silently (RFC 4303 section 2.6)


class DropReason(IntEnum):
    """Why the data path discarded a packet; every drop is counted under one of these."""

    BAD_ICV = 0
    """The ICV did not verify (RFC 4303 section 3.4.4): tampered, truncated or wrong key."""
    REPLAY = 1
    """Sequence number already seen, left of the window, or zero (RFC 4303 section 3.4.3)."""
    UNKNOWN_SPI = 2
    """No inbound SA has this SPI (RFC 4303 section 3.4.2)."""
    MALFORMED = 3
    """Too short, not block-aligned, or not an IPv4/IPv6 packet where tunnel mode needs one."""
    PADDING = 4
    """Pad Length overruns the payload or the pad bytes are not 1, 2, 3, ... (RFC 4303 2.4)."""
    EXPIRED = 5
    """The SA reached its hard lifetime or its sequence number space is used up."""
    POLICY = 6
    """The inner packet's addresses are outside the SA's traffic selectors (RFC 4301 5.2)."""
    DUMMY = 7
    """Next Header 59: a traffic-flow-confidentiality dummy packet, dropped silently."""
    NO_ROUTE = 8
    """Outbound: no SA's remote traffic selector covers the destination."""


DROP_REASON_COUNT = len(DropReason)


class Direction(Enum):
    """Which way an SA protects traffic."""

    INBOUND = "in"
    OUTBOUND = "out"


class LifetimeTrigger(Enum):
    """What made an SA reach a soft or hard lifetime."""

    TIME = "seconds"
    BYTES = "bytes"
    PACKETS = "packets"
    SEQUENCE = "sequence numbers"  # RFC 4303 section 3.3.3: the counter must not cycle
