"""Traffic-selector checks on inner IP packets (RFC 4301 section 5.2, tunnel mode).

After an inbound packet authenticates, its inner source must lie in the peer's selector
and its inner destination in ours; otherwise one client of a gateway could inject packets
in another client's name. The checks are compiled once per SA into a small closure so the
data path pays one call per packet, and nothing for an "any" selector.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ipsec.selectors import TrafficSelector
from .transforms import Packet

PacketTest = Callable[[Packet], bool]

# Where the addresses are in the fixed IPv4 (RFC 791) and IPv6 (RFC 8200) headers.
_SRC = {4: (12, 16), 6: (8, 24)}
_DST = {4: (16, 20), 6: (24, 40)}
_FULL = {4: (1 << 32) - 1, 6: (1 << 128) - 1}

NH_VERSION_ANY: tuple[int, ...] = tuple(4 if nh == 4 else 6 if nh == 41 else 0 for nh in range(256))
"""IP version an inner packet must have for each Next Header value (0 = not tunnel mode)."""
NH_VERSION_4: tuple[int, ...] = tuple(4 if nh == 4 else 0 for nh in range(256))
NH_VERSION_6: tuple[int, ...] = tuple(6 if nh == 41 else 0 for nh in range(256))


def next_header_versions(*selectors: TrafficSelector | None) -> tuple[int, ...]:
    """The Next Header → IP version table for an SA whose selectors have these families."""
    versions = {ts.version for ts in selectors if ts is not None}
    if versions == {4}:
        return NH_VERSION_4
    if versions == {6}:
        return NH_VERSION_6
    return NH_VERSION_ANY


def _ports(packet: Packet) -> tuple[int, int, int]:
    """``(protocol, source port, destination port)`` of an IPv4/IPv6 packet; ports are 0
    for protocols without them. IPv6 extension headers are not walked."""
    if packet[0] >> 4 == 4:
        protocol = packet[9]
        offset = (packet[0] & 0x0F) * 4
    else:
        protocol = packet[6]
        offset = 40
    if protocol in (6, 17, 132, 136) and len(packet) >= offset + 4:  # TCP, UDP, SCTP, UDP-Lite
        return (
            protocol,
            int.from_bytes(packet[offset : offset + 2], "big"),
            int.from_bytes(packet[offset + 2 : offset + 4], "big"),
        )
    return protocol, 0, 0


def _address_test(ts: TrafficSelector, where: dict[int, tuple[int, int]]) -> PacketTest | None:
    start, end = int(ts.start), int(ts.end)
    if start == 0 and end == _FULL[ts.version]:
        return None
    lo, hi = where[ts.version]
    if start == end:
        packed = ts.start.packed
        return lambda packet: packet[lo:hi] == packed
    return lambda packet: start <= int.from_bytes(packet[lo:hi], "big") <= end


def _port_test(ts: TrafficSelector, source: bool) -> PacketTest | None:
    if not ts.protocol and not ts.port:
        return None
    protocol, port = ts.protocol, ts.port

    def test(packet: Packet) -> bool:
        got_protocol, src_port, dst_port = _ports(packet)
        if protocol and got_protocol != protocol:
            return False
        return not port or (src_port if source else dst_port) == port

    return test


def compile_inbound_policy(
    remote_ts: TrafficSelector | None, local_ts: TrafficSelector | None
) -> PacketTest | None:
    """A test that an inner packet came from ``remote_ts`` and goes to ``local_ts``.

    None when nothing needs checking beyond the IP version (which the Next Header table of
    :func:`next_header_versions` enforces). The packet's version has been checked and it
    is at least a fixed header long when the test runs.
    """
    tests = [
        test
        for test in (
            _address_test(remote_ts, _SRC) if remote_ts is not None else None,
            _address_test(local_ts, _DST) if local_ts is not None else None,
            _port_test(remote_ts, source=True) if remote_ts is not None else None,
            _port_test(local_ts, source=False) if local_ts is not None else None,
        )
        if test is not None
    ]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda packet: first(packet) and second(packet)
    return lambda packet: all(test(packet) for test in tests)


def compile_inbound_policy_any(
    remote_ts: TrafficSelector | None, local_choices: tuple[TrafficSelector, ...]
) -> PacketTest | None:
    """Like :func:`compile_inbound_policy`, with the destination in any of ``local_choices``
    (the networks a standard client's 0.0.0.0/0 SA may reach: ``ChildPolicy.inbound_local``).
    Each choice also checks the packet's IP version, since the choices may mix families."""
    if len(local_choices) == 1:
        return compile_inbound_policy(remote_ts, local_choices[0])
    source = compile_inbound_policy(remote_ts, None)
    choices: list[tuple[int, PacketTest]] = []
    for ts in local_choices:
        dest_test = compile_inbound_policy(None, ts)
        if dest_test is None:
            return source  # one choice admits every destination of its family
        choices.append((ts.version, dest_test))

    def test(packet: Packet) -> bool:
        if source is not None and not source(packet):
            return False
        version = packet[0] >> 4
        return any(v == version and dest(packet) for v, dest in choices)

    return test


def compile_inbound_ranges(
    remote_ts: TrafficSelector | None, local_ts: TrafficSelector | None
) -> tuple[int, int, int, int] | None:
    """The inbound policy of an IPv4 SA as plain integers, for the data path's fast loop:
    ``(src_lo, src_hi, dst_lo, dst_hi)``, the inner source and destination addresses (read as
    32-bit big-endian ints) must lie in. An absent selector admits every address.

    None when a selector is IPv6 or restricts protocol or ports: the fast loop then calls the
    test of :func:`compile_inbound_policy` instead.
    """
    ranges: list[int] = []
    for ts in (remote_ts, local_ts):
        if ts is None:
            ranges += (0, _FULL[4])
            continue
        if ts.version != 4 or ts.protocol or ts.port:
            return None
        ranges += (int(ts.start), int(ts.end))
    return ranges[0], ranges[1], ranges[2], ranges[3]


def compile_outbound_test(
    remote_ts: TrafficSelector, local_ts: TrafficSelector | None
) -> tuple[PacketTest | None, bool]:
    """For routing, what a packet must match besides its destination block: the
    protocol/port parts of both selectors and the inner source address in ``local_ts``.

    Several SAs may protect one destination: a gateway's SAs to one client all end at the
    client's address and differ only by the gateway-side (source) selector. Returns ``(test
    or None, whether the test looks at protocol or ports)``: a test of addresses alone lets
    the route cache key on the address pair; one of ports does not.
    """
    port_tests = [_port_test(remote_ts, source=False)]
    address_test = None
    if local_ts is not None:
        port_tests.append(_port_test(local_ts, source=True))
        if local_ts.version == remote_ts.version:
            address_test = _address_test(local_ts, _SRC)
    tests = [test for test in (address_test, *port_tests) if test is not None]
    uses_ports = any(test is not None for test in port_tests)
    if not tests:
        return None, False
    if len(tests) == 1:
        return tests[0], uses_ports
    return (lambda packet: all(test(packet) for test in tests)), uses_ports
