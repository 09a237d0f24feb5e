"""The batched TUN and UDP I/O against the real kernel, inside network namespaces.

Each test runs ``tests/helpers/datapath_helper.py`` in a fresh namespace (see its docstring for the
TUN "reflector" that sends every packet of a TCP transfer through read_batch and write_batch)
and checks the JSON it prints. Counters are compared, never timings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import NetnsPair, Topology, wait_for
from tunvpn.dataplane.tun_linux import TunDevice, TunError

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "datapath_helper.py"
MTU = 1500


@pytest.fixture
def ns() -> Iterator[str]:
    """One fresh namespace with lo up."""
    with Topology() as topo:
        yield topo.add_ns("io")


def helper(ns: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(HELPER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"helper {args} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_transfer_intact(out: dict[str, Any], size: int) -> None:
    assert out["sent"] == size
    assert out["received"] == size, out
    assert out["sha256_received"] == out["sha256_sent"]
    assert out["tun"]["malformed"] == 0
    assert out["tun"]["write_errors"] == 0


# --------------------------------------------------------------------------- TCP through the TUN


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_transfer_with_tso_super_packets(ns: str, family: int) -> None:
    size = 16_000_000
    out = helper(ns, "tcp-over-tun", "--family", str(family), "--bytes", str(size))
    assert out["offload"] is True and out["read_offload"] is True, out["offload_error"]
    assert_transfer_intact(out, size)
    tun = out["tun"]
    # The kernel handed us super-packets bigger than the MTU (TSO), which we split...
    assert tun["super_packets"] > 0
    assert tun["largest_read"] > MTU
    assert tun["packets_read"] > tun["reads"]
    # ...and took coalesced ones back: fewer writes than packets, none refused.
    assert tun["coalesced_writes"] > 0
    assert tun["coalesce_refused"] == 0
    assert tun["writes"] < tun["packets_written"]


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_transfer_with_coalesced_writes_only(ns: str, family: int) -> None:
    # The default: plain reads (the kernel segments in C), coalesced writes.
    size = 8_000_000
    out = helper(ns, "tcp-over-tun", "--family", str(family), "--no-read-offload", "--bytes", str(size))
    assert out["offload"] is True and out["read_offload"] is False
    assert_transfer_intact(out, size)
    tun = out["tun"]
    assert tun["super_packets"] == 0 and tun["largest_read"] <= MTU
    assert tun["reads"] == tun["packets_read"]
    assert tun["coalesced_writes"] > 0 and tun["coalesce_refused"] == 0
    assert tun["writes"] < tun["packets_written"]


def test_tcp_transfer_plain_mode(ns: str) -> None:
    size = 4_000_000
    out = helper(ns, "tcp-over-tun", "--no-offload", "--bytes", str(size))
    assert out["offload"] is False
    assert_transfer_intact(out, size)
    tun = out["tun"]
    assert tun["super_packets"] == tun["coalesced_writes"] == 0
    assert tun["largest_read"] <= MTU
    assert tun["writes"] == tun["packets_written"]


def test_refused_offload_falls_back_to_plain(ns: str) -> None:
    size = 2_000_000
    out = helper(ns, "tcp-over-tun", "--refuse", "offload", "--bytes", str(size))
    assert out["offload"] is False and out["uso"] is False
    assert "TUNSETOFFLOAD refused" in out["offload_error"]
    assert_transfer_intact(out, size)
    assert out["tun"]["largest_read"] <= MTU


def test_refused_uso_keeps_tso(ns: str) -> None:
    size = 2_000_000
    out = helper(ns, "tcp-over-tun", "--refuse", "uso", "--bytes", str(size))
    assert out["offload"] is True and out["read_offload"] is True and out["uso"] is False
    assert_transfer_intact(out, size)
    assert out["tun"]["super_packets"] > 0


# --------------------------------------------------------------------------- UDP through the TUN


def uso_available(ns: str) -> bool:
    probe = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE_USO],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() == "True"


PROBE_USO = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
    "from tunvpn.dataplane.tun_linux import TunDevice\n"
    "t = TunDevice('tvioprobe'); print(t.uso); t.close()\n"
)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_through_tun_with_uso(ns: str, family: int) -> None:
    if not uso_available(ns):
        pytest.skip("this kernel refuses TUN_F_USO4|TUN_F_USO6 (Linux < 6.2)")
    count = 640
    out = helper(ns, "udp-over-tun", "--family", str(family), "--count", str(count))
    assert out["uso"] is True
    assert out["all_present"] and out["bad"] == 0 and out["duplicates"] == 0, out
    tun = out["tun"]
    assert tun["super_packets"] > 0 and tun["largest_read"] > MTU  # USO super-packets read and split
    assert tun["coalesced_writes"] > 0 and tun["coalesce_refused"] == 0  # and written back coalesced
    assert out["sender"]["gso_sends"] > 0
    assert out["receiver"]["recvmsg_calls"] < count  # UDP GRO on the receiving socket


def test_udp_coalesced_writes_only(ns: str) -> None:
    if not uso_available(ns):
        pytest.skip("this kernel refuses TUN_F_USO4|TUN_F_USO6 (Linux < 6.2)")
    count = 320
    out = helper(ns, "udp-over-tun", "--no-read-offload", "--count", str(count))
    assert out["uso"] is True and out["read_offload"] is False
    assert out["all_present"] and out["bad"] == 0, out
    assert out["tun"]["super_packets"] == 0
    assert out["tun"]["coalesced_writes"] > 0 and out["tun"]["coalesce_refused"] == 0


def test_udp_through_plain_tun(ns: str) -> None:
    count = 256
    out = helper(ns, "udp-over-tun", "--no-offload", "--count", str(count))
    assert out["all_present"] and out["bad"] == 0, out
    assert out["tun"]["super_packets"] == 0


# --------------------------------------------------------------------------- UDP GSO / GRO sockets


def test_udp_gso_gro_on_loopback(ns: str) -> None:
    count = 256
    out = helper(ns, "udp-loop", "--count", str(count), "--size", "1200")
    assert out["gso"] and out["gro"]
    assert out["all_present"] and out["bad"] == 0 and out["duplicates"] == 0, out
    assert out["send_batch_calls"] == 1
    # 1200-octet datagrams: at most 54 fit in the 65507 octets of one GSO send.
    assert out["sender"]["sendmsg_calls"] == -(-count // 54)
    assert out["receiver"]["recvmsg_calls"] < count
    assert out["receiver"]["gro_receives"] > 0


def test_udp_without_offloads_sends_one_by_one(ns: str) -> None:
    count = 100
    out = helper(ns, "udp-loop", "--count", str(count), "--no-gso", "--no-gro")
    assert not out["gso"] and not out["gro"]
    assert out["all_present"] and out["bad"] == 0, out
    assert out["sender"]["sendmsg_calls"] == count
    assert out["receiver"]["recvmsg_calls"] == count


def test_udp_gso_gro_across_veth(netns_pair: NetnsPair, tmp_path: Path) -> None:
    count = 300
    ready = tmp_path / "ready"
    result = tmp_path / "recv.json"
    argv = [sys.executable, str(HELPER), "udp-recv", "--bind", f"{netns_pair.addr_b}:5002"]
    argv += ["--count", str(count), "--ready", str(ready)]
    receiver = netns_pair.popen_in(netns_pair.b, argv, result)
    wait_for(lambda: ready.exists() or receiver.poll() is not None, 15, "the UDP receiver")
    sent = helper(netns_pair.a, "udp-send", "--to", f"{netns_pair.addr_b}:5002", "--count", str(count))
    assert receiver.wait(30) == 0, result.read_text()
    got = json.loads(result.read_text().strip().splitlines()[-1])
    assert sent["gso"] and got["gro"]
    assert got["all_present"] and got["bad"] == 0 and got["duplicates"] == 0, got
    assert sent["send_batch_calls"] == 1
    assert sent["sender"]["sendmsg_calls"] < count
    assert got["receiver"]["recvmsg_calls"] < count


# --------------------------------------------------------------------------- errors


def test_missing_dev_net_tun_is_explained(tmp_path: Path) -> None:
    with pytest.raises(TunError) as info:
        TunDevice("tvionone", dev_path=str(tmp_path / "tun"))
    assert "does not exist" in str(info.value) and "modprobe tun" in str(info.value)


def test_missing_cap_net_admin_is_explained(ns: str, tmp_path: Path) -> None:
    if shutil.which("capsh") is None:
        pytest.skip("capsh (libcap2-bin) is needed to drop CAP_NET_ADMIN")
    script = tmp_path / "open_tun.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tunvpn.dataplane.tun_linux import TunDevice, TunError\n"
        "try:\n    TunDevice('tvionoperm')\nexcept TunError as e:\n    print('ERR', e.errno, e)\n"
    )
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "capsh",
            "--drop=cap_net_admin",
            "--",
            "-c",
            f"{sys.executable} {script}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "ERR 1" in result.stdout, result.stdout + result.stderr
    assert "CAP_NET_ADMIN" in result.stdout and "root" in result.stdout
