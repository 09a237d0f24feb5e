"""The SA table of the data path: lookups, longest-prefix routing, make-before-break
rekeying, drops counted by reason, lifetimes driven by the timer, and its memory size."""

from __future__ import annotations

import gc
import ipaddress
import tracemalloc

import pytest

from tests.helpers.esp_helpers import GCM128, ipv4, ipv6, make_keys, udp
from tunvpn.esp import (
    DropReason,
    InboundSA,
    Lifetime,
    LifetimeTrigger,
    OutboundSA,
    SadTable,
    SaHardExpired,
    SaSoftExpired,
)
from tunvpn.esp.constants import Direction
from tunvpn.ipsec.selectors import TrafficSelector as TS

KEY, _ = make_keys(GCM128)


def outbound(spi: int, remote: str | TS | None, **kwargs: object) -> OutboundSA:
    ts = TS.parse(remote) if isinstance(remote, str) else remote
    return OutboundSA(spi, GCM128, KEY, remote_ts=ts, **kwargs)  # type: ignore[arg-type]


def inbound(spi: int, **kwargs: object) -> InboundSA:
    return InboundSA(spi, GCM128, KEY, **kwargs)  # type: ignore[arg-type]


def test_inbound_lookup_install_remove() -> None:
    table = SadTable()
    sa = inbound(0xAAAA)
    table.install(sa)
    assert table.lookup(0xAAAA) is sa
    assert table.lookup(0xBBBB) is None
    with pytest.raises(ValueError):
        table.install(inbound(0xAAAA))
    assert table.remove_inbound(0xAAAA) is sa
    assert table.lookup(0xAAAA) is None
    assert table.remove_inbound(0xAAAA) is None
    with pytest.raises(ValueError):
        table.remove(sa)


def test_longest_prefix_wins_and_removal_falls_back() -> None:
    table = SadTable()
    default = outbound(0x100, "0.0.0.0/0")
    net16 = outbound(0x101, "10.2.0.0/16")
    net24 = outbound(0x102, "10.2.3.0/24")
    host = outbound(0x103, "10.2.3.4")
    ranged = outbound(0x104, "192.168.1.10-192.168.1.20")  # not one CIDR block
    v6 = outbound(0x105, "fd00::/64")
    for sa in (default, net16, net24, host, ranged, v6):
        table.install(sa)
    assert table.select(ipv4(dst="10.2.3.4")) is host
    assert table.select(ipv4(dst="10.2.3.5")) is net24
    assert table.select(ipv4(dst="10.2.9.9")) is net16
    assert table.select(ipv4(dst="8.8.8.8")) is default
    assert table.select(ipv4(dst="192.168.1.10")) is ranged
    assert table.select(ipv4(dst="192.168.1.20")) is ranged
    assert table.select(ipv4(dst="192.168.1.21")) is default
    dst6 = ipaddress.IPv6Address("fd00::99").packed
    assert table.select(ipv6(dst=dst6)) is v6
    assert table.select(ipv6(dst=ipaddress.IPv6Address("fd01::1").packed)) is None
    assert table.select(b"") is None and table.select(b"\x45" * 10) is None
    table.remove(host)
    assert table.select(ipv4(dst="10.2.3.4")) is net24
    table.remove(net24)
    table.remove(net16)
    assert table.select(ipv4(dst="10.2.3.4")) is default


def test_protocol_and_port_selectors_route_only_their_traffic() -> None:
    table = SadTable()
    general = outbound(0x200, "10.5.0.0/16")
    dns = outbound(0x201, TS.parse("10.5.0.53[udp/53]"))
    table.install(general)
    table.install(dns)
    assert table.select(ipv4(dst="10.5.0.53", payload=udp(4000, 53))) is dns
    assert table.select(ipv4(dst="10.5.0.53", payload=udp(4000, 54))) is general
    table.remove(general)
    assert table.select(ipv4(dst="10.5.0.53", payload=udp(4000, 54))) is None


def test_sas_to_one_destination_are_told_apart_by_their_source_selector() -> None:
    """A gateway's SAs to one client all end at the client's address; the gateway-side
    selector (the packet's source) picks the SA, also through the route cache."""
    table = SadTable()
    client = "10.79.0.10"
    net_a = outbound(0x400, client, local_ts=TS.parse("10.78.0.0/24"))
    net_b = outbound(0x401, client, local_ts=TS.parse("10.78.1.0/24"))
    eng = outbound(0x402, client, local_ts=TS.parse("10.20.0.0/16"))
    for sa in (net_a, net_b, eng):
        table.install(sa)
    cases = [("10.78.0.10", net_a), ("10.78.1.10", net_b), ("10.20.3.4", eng)]
    for src, sa in cases:
        assert table.select(ipv4(src=src, dst=client)) is sa
    assert table.select(ipv4(src="10.99.0.1", dst=client)) is None
    for _ in range(2):  # the second batch is served by the route cache
        packets = [ipv4(src=src, dst=client) for src, _ in cases] * 2
        groups = dict(table.encrypt_batch(packets))
        assert {sa: len(esp) for sa, esp in groups.items()} == {net_a: 2, net_b: 2, eng: 2}
    table.remove(net_b)
    assert table.select(ipv4(src="10.78.1.10", dst=client)) is None
    groups = dict(
        table.encrypt_batch([ipv4(src="10.78.1.10", dst=client), ipv4(src="10.78.0.1", dst=client)])
    )
    assert list(groups) == [net_a]
    assert table.drop_counts() == {DropReason.NO_ROUTE: 1}


def test_encrypt_batch_groups_per_sa_in_order_and_counts_no_route() -> None:
    table = SadTable()
    a, b = outbound(0x300, "10.0.0.1"), outbound(0x301, "10.0.0.2")
    table.install(a)
    table.install(b)
    packets = [ipv4(dst="10.0.0.1", payload=bytes([n])) for n in range(3)]
    packets.insert(1, ipv4(dst="10.0.0.2"))
    packets.append(ipv4(dst="10.0.0.3"))
    groups = table.encrypt_batch(packets)
    assert [(sa, len(esp)) for sa, esp in groups] == [(a, 3), (b, 1)]
    assert [int.from_bytes(p[4:8], "big") for p in groups[0][1]] == [1, 2, 3]
    assert table.encrypt(ipv4(dst="10.0.0.9")) is DropReason.NO_ROUTE
    sa, esp = table.encrypt(ipv4(dst="10.0.0.2"))  # type: ignore[misc]
    assert sa is b and isinstance(esp, bytes)
    assert table.drop_counts() == {DropReason.NO_ROUTE: 2}


def test_decrypt_batch_dispatches_runs_by_spi_and_counts_unknown() -> None:
    table = SadTable()
    one, two = inbound(0x401), inbound(0x402)
    table.install(one)
    table.install(two)
    send_one, send_two, stranger = outbound(0x401, None), outbound(0x402, None), outbound(0x499, None)
    p1 = [ipv4(payload=bytes([n])) for n in range(4)]
    p2 = [ipv4(src="10.1.0.3", payload=bytes([n])) for n in range(4)]
    e1, e2 = send_one.encrypt_batch(p1), send_two.encrypt_batch(p2)
    datagrams = [
        e1[0],
        e1[1],
        e2[0],
        stranger.encrypt(ipv4()),
        e1[2],
        e2[1],
        e2[2],
        b"\x00\x01",
        e1[3],
        e2[3],
    ]
    assert table.decrypt_batch(datagrams, now=5.0) == [p1[0], p1[1], p2[0], p1[2], p2[1], p2[2], p1[3], p2[3]]
    assert table.decrypt(e1[0]) is DropReason.REPLAY
    assert table.decrypt(stranger.encrypt(ipv4())) is DropReason.UNKNOWN_SPI  # type: ignore[arg-type]
    assert table.drop_counts() == {
        DropReason.UNKNOWN_SPI: 2,
        DropReason.MALFORMED: 1,
        DropReason.REPLAY: 1,
    }


def test_make_before_break_rekey_loses_nothing() -> None:
    """RFC 2409 section 5.5 rekeying as the table sees it: the new inbound SA is installed
    beside the old one, the outbound switch is one call, packets still in flight on the old
    SA are accepted until the old inbound SA is removed."""
    table = SadTable()
    old_in, old_out = inbound(0x501), outbound(0x601, "10.7.0.0/24")
    table.install_pair(old_in, old_out)
    peer_old = outbound(0x501, None)  # the peer's side of the old pair
    in_flight = peer_old.encrypt_batch([ipv4(payload=bytes([n])) for n in range(5)])

    new_in, new_out = inbound(0x502), outbound(0x602, "10.7.0.0/24")
    table.install(new_in)  # 1. both inbound SPIs are valid
    peer_new = outbound(0x502, None)
    assert table.decrypt_batch(peer_new.encrypt_batch([ipv4()])) == [ipv4()]
    assert table.decrypt_batch(in_flight[:2]) == [ipv4(payload=bytes([n])) for n in range(2)]

    assert table.select(ipv4(dst="10.7.0.9")) is old_out
    table.replace(0x601, new_out)  # 2. outbound switches atomically
    assert table.select(ipv4(dst="10.7.0.9")) is new_out
    assert old_out not in table.outbound_sas()
    groups = table.encrypt_batch([ipv4(dst="10.7.0.9")])
    assert groups[0][0] is new_out

    assert table.decrypt_batch(in_flight[2:]) == [ipv4(payload=bytes([n])) for n in range(2, 5)]
    table.remove(old_in)  # 3. the old inbound SA goes last
    assert table.decrypt(peer_old.encrypt(ipv4())) is DropReason.UNKNOWN_SPI  # type: ignore[arg-type]
    assert table.drop_counts() == {DropReason.UNKNOWN_SPI: 1}


def test_replace_needs_an_unambiguous_old_sa() -> None:
    table = SadTable()
    first, second = outbound(0x700, "10.8.0.1"), outbound(0x700, "10.8.0.2")  # two peers, one SPI
    table.install(first)
    table.install(second)
    with pytest.raises(ValueError, match="ambiguous"):
        table.replace(0x700, outbound(0x701, "10.8.0.1"))
    with pytest.raises(ValueError, match="not installed"):
        table.replace(0x7FF, outbound(0x701, "10.8.0.1"))
    new = outbound(0x701, "10.8.0.1")
    table.replace(first, new)
    assert table.select(ipv4(dst="10.8.0.1")) is new
    assert table.select(ipv4(dst="10.8.0.2")) is second
    assert table.remove_outbound(0x700) is second
    moved = outbound(0x702, "10.8.9.0/24")  # a new selector: routed by its own
    table.replace(new, moved)
    assert table.select(ipv4(dst="10.8.0.1")) is None
    assert table.select(ipv4(dst="10.8.9.1")) is moved


def test_timer_drives_time_lifetimes_and_events_are_queued() -> None:
    table = SadTable()
    lifetime = Lifetime(seconds=100, soft_fraction=0.8)
    sa_in = inbound(0x801, lifetime=lifetime, now=1000.0)
    sa_out = outbound(0x802, "10.9.0.0/16", lifetime=lifetime, now=1010.0)
    table.install_pair(sa_in, sa_out)
    assert table.get_timer() == pytest.approx(1080.0)
    table.handle_timer(1079.0)
    assert table.next_event() is None
    table.handle_timer(1085.0)
    assert table.next_event() == SaSoftExpired(0x801, Direction.INBOUND, LifetimeTrigger.TIME)
    assert table.next_event() is None
    assert table.get_timer() == pytest.approx(1090.0)
    table.handle_timer(1200.0)
    events = [table.next_event() for _ in range(3)]
    assert set(events) == {
        SaSoftExpired(0x802, Direction.OUTBOUND, LifetimeTrigger.TIME),
        SaHardExpired(0x801, Direction.INBOUND, LifetimeTrigger.TIME),
        SaHardExpired(0x802, Direction.OUTBOUND, LifetimeTrigger.TIME),
    }
    assert table.get_timer() is None
    assert table.encrypt(ipv4(dst="10.9.0.1")) is DropReason.EXPIRED
    table.remove(sa_out)
    assert table.drop_counts() == {DropReason.EXPIRED: 1}  # kept after removal


def test_data_path_lifetime_events_reach_the_table_queue() -> None:
    table = SadTable()
    sa = outbound(0x901, "10.10.0.1", lifetime=Lifetime(packets=10))
    table.install(sa)
    table.encrypt_batch([ipv4(dst="10.10.0.1")] * 12)
    assert [type(table.next_event()) for _ in range(2)] == [SaSoftExpired, SaHardExpired]
    assert table.drop_counts() == {DropReason.EXPIRED: 2}


def test_ten_thousand_sas_fit_in_well_under_50_mb() -> None:
    """10,000 SAs (5,000 inbound/outbound pairs, one client /32 each) with one packet each
    way through every pair, so engines and replay windows exist. tracemalloc sees Python's
    allocations only: each live SA also holds ~2.4 kB of OpenSSL cipher contexts outside it
    (``python -m tunvpn.esp.bench --memory`` prints the process RSS figures)."""
    pairs = 5000
    hosts = [ipaddress.IPv4Address(0x0A640000 + i) for i in range(pairs)]
    selectors = [TS.from_address(host) for host in hosts]
    local = TS.any(4)
    packets = [ipv4(src="10.99.0.1", dst=str(host)) for host in hosts]
    gc.collect()
    tracemalloc.start()
    try:
        table = SadTable()
        for i in range(pairs):
            table.install(inbound(0x10000 + i, remote_ts=local, local_ts=local))
            table.install(OutboundSA(0x10000 + i, GCM128, KEY, remote_ts=selectors[i], local_ts=local))
        sealed = [esp for _, group in table.encrypt_batch(packets) for esp in group]
        assert len(table.decrypt_batch(sealed)) == pairs
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == 2 * pairs
    print(f"10,000 SAs: {size / 1e6:.1f} MB traced")
    assert size < 50e6
