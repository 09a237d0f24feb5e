"""The latency breakdown's bookkeeping (tunvpn.dataplane.stagetrace, issue 21): what a record
keeps of a ping, and how a client's and a gateway's records pair into four traversals."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from tunvpn.dataplane.stagetrace import StageTrace, breakdown, icmp_echo, load, summary


def ping_packet(kind: int, ident: int, seq: int, sent_ns: int) -> bytes:
    seconds, micros = divmod(sent_ns // 1000, 1_000_000)
    order = "<" if sys.byteorder == "little" else ">"
    data = struct.pack(f"{order}qq", seconds, micros) + bytes(40)
    icmp = bytes([kind, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + data
    header = bytes([0x45, 0]) + (20 + len(icmp)).to_bytes(2, "big") + bytes(4) + bytes([64, 1]) + bytes(2)
    return header + bytes([10, 83, 0, 10, 10, 82, 0, 1]) + icmp


def test_an_echo_gives_its_key_and_the_time_ping_wrote_into_it() -> None:
    key, stamp = icmp_echo(ping_packet(8, 77, 5, 1_700_000_000_123_456_000)) or ((0, 0, 0), None)
    assert key == (8, 77, 5) and stamp == 1_700_000_000_123_456_000
    assert icmp_echo(b"\x60" + bytes(60)) is None  # IPv6
    assert icmp_echo(ping_packet(3, 1, 1, 0)) is None  # not an echo


def test_the_records_of_two_threads_pair_into_four_traversals(tmp_path: Path) -> None:
    t0 = 1_700_000_000_000_000_000
    client, gateway = StageTrace(str(tmp_path)), StageTrace(str(tmp_path))
    sent = t0 + 100_000_000  # after 100 ms of nothing: a cold ping
    request, reply = ping_packet(8, 9, 1, sent), ping_packet(0, 9, 1, sent)
    client._last_done = t0  # the last batch before the idle period
    client.add("out", sent + 40_000, 10_000, 30_000, 45_000, 1, request)  # wakes 40 us after ping wrote it
    gateway.add("in", sent + 200_000, 8_000, 28_000, 40_000, 1, request, kernel=sent + 150_000)
    gateway.add("out", sent + 290_000, 9_000, 27_000, 38_000, 1, reply)  # 50 us after its TUN write
    client.add("in", sent + 400_000, 7_000, 25_000, 36_000, 1, reply, kernel=sent + 350_000)
    files = [load(p) for p in (client.write(), gateway.write()) if p is not None]
    [ping] = breakdown(reversed(files))  # whichever file comes first
    assert ping.seq == 1 and ping.cold
    assert ping.stages["client out"] == {"wake": 40_000, "read": 10_000, "core": 20_000, "write": 15_000}
    assert ping.stages["gateway in"] == {"wake": 50_000, "read": 8_000, "core": 20_000, "write": 12_000}
    assert ping.stages["gateway out"]["wake"] == 50_000
    assert ping.stages["client in"]["wake"] == 50_000
    text = summary([ping])
    assert "cold (idle >= 50 ms): 1 pings" in text and "hot: 0 pings" in text


def test_a_batch_of_many_packets_is_not_taken_for_a_lone_ping(tmp_path: Path) -> None:
    trace = StageTrace(str(tmp_path))
    trace.add("out", 10, 1, 2, 3, 5, ping_packet(8, 1, 1, 0))
    assert breakdown([list(trace.records)]) == []
    assert StageTrace(str(tmp_path)).write() is None  # nothing recorded: no file
