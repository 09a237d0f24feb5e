"""The client stays connected (issue 15): real processes in namespaces.

Namespace a: the gateway (10.77.0.1; a second one at 10.77.0.3 for failover), with a
protected address 10.78.0.1 behind it. Namespace b: the client (10.77.0.2), whose default
route points at the gateway's underlay address, as a laptop's points at its router: a packet
for the tunnel's network that is not in the tunnel would leave in clear on the underlay.

* The gateway is killed with SIGKILL and started again: the client finds it dead (DPD),
  reconnects, and pings again; meanwhile a capture on the client's underlay sees no packet
  for the tunnel's network in clear.
* Failover: the first gateway of the list is dead, the client connects to the second; a name
  (in the namespace's hosts file) resolving to a dead and a live address works the same.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, capture, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line

PROTECTED = "10.78.0.1"
PROTECTED_NET = "10.78.0.0/24"
POOL = "10.79.0.10-10.79.0.20"
PSK = "reconnect-test-psk-0123456789"
SECOND = "10.77.0.3"
DEAD = "10.77.0.9"  # on the link, nobody answers
QUIET = ("--json", "--control", "none", "-v")
OUTAGE = 9.0  # seconds the gateway stays dead after the client noticed


def _gateway(
    pair: NetnsPair, tmp: Path, listen: str, log: Path, tun: str = "tvgw%d", extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    psk = private_file(tmp / "psk", PSK + "\n")
    users = private_file(tmp / "users", "alice:wonderland\n")
    proc = popen_tunvpn(
        pair.a,
        [
            "gateway",
            "--listen",
            listen,
            "--psk-file",
            str(psk),
            "--users",
            str(users),
            "--require-xauth",
            "--pool",
            POOL,
            "--split",
            PROTECTED_NET,
            "--tun",
            tun,
            "--control",
            "none",
            *extra,
        ],
        log,
    )
    wait_for_line(log, "gateway ready", proc, 30, f"the gateway on {listen}")
    return proc


def _profile(tmp: Path, gateway: str, extra: str = "") -> Path:
    private_file(tmp / "psk", PSK + "\n")
    private_file(tmp / "pw", "wonderland\n")
    return private_file(
        tmp / "client.toml",
        f'gateway = {gateway}\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n{extra}',
    )


def _client(pair: NetnsPair, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    return popen_tunvpn(
        pair.b,
        ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"],
        log,
    )


def _ping_once(pair: NetnsPair) -> bool:
    out = run_in(pair.b, ["ping", "-c", "1", "-W", "1", PROTECTED], check=False, timeout=10)
    return out.returncode == 0


def _first_reply_after(pings: Path, since: float) -> float | None:
    """The wall-clock time of ping -D's first reply at or after ``since``, if any."""
    for line in read_text(pings).splitlines():
        match = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
        if match and float(match.group(1)) >= since:
            return float(match.group(1))
    return None


def _pcap_frames(path: Path) -> int:
    """Frames in a classic pcap file (dumpcap -P)."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return 0
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset, count = 24, 0
    while offset + 16 <= len(data):
        (incl,) = struct.unpack_from(endian + "I", data, offset + 8)
        offset += 16 + incl
        count += 1
    return count


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    if shutil.which("dumpcap") is None:
        pytest.skip("needs dumpcap (wireshark-common) for the leak capture")
    with NetnsPair() as net:
        net.add_addr(net.a, f"{PROTECTED}/24")
        # the client's default route: where a leaked packet would go, in clear
        run_in(net.b, ["ip", "route", "add", "default", "via", net.addr_a], check=True)
        yield net


def test_gateway_killed_and_restarted_client_comes_back_without_leaking(
    pair: NetnsPair, tmp_path: Path
) -> None:
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
    cl = _client(pair, _profile(tmp_path, f'"{pair.addr_a}"'), cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        assert _ping_once(pair), read_text(cl_log)[-3000:]
        leak = tmp_path / "leak.pcap"
        # anything for the tunnel's network on the underlay in clear (ESP rides in UDP 4500 to
        # the gateway's underlay address, so it never matches)
        pings = tmp_path / "pings.txt"
        with capture(pair.b, pair.if_b, leak, bpf=f"dst net {PROTECTED_NET}"), pings.open("wb") as out:
            # -D: each reply line starts with its wall-clock time, so the first reply after the
            # restart is timed by ping itself, not by this test's polling
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", pair.b, "ping", "-D", "-i", "0.2", "-W", "1", PROTECTED],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
            killed = time.monotonic()
            gw.kill()  # SIGKILL: no Delete, no goodbye
            gw.wait(5)
            wait_for(
                lambda: (
                    any(r.get("event") == "reconnect" for r in json_records(cl_log)) or cl.poll() is not None
                ),
                60,
                "the client to find the gateway dead",
            )
            assert cl.poll() is None, f"the client exited {cl.returncode}:\n{read_text(cl_log)[-3000:]}"
            noticed = time.monotonic() - killed
            routes = run_in(pair.b, ["ip", "route"], check=True).stdout
            assert re.search(r"10\.78\.0\.0/24 dev tvcl\d", routes), f"route left the TUN device:\n{routes}"
            # long enough for several rounds of unanswered attempts: a doubling back-off would
            # be at 4 s between rounds by now, and the client must still find the gateway at once
            time.sleep(OUTAGE)
            gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
            back = time.time()
            wait_for(
                lambda: _first_reply_after(pings, back) is not None or cl.poll() is not None,
                60,
                "a ping reply after the restart",
            )
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            first = _first_reply_after(pings, back)
            assert first is not None
            took = first - back
            pinger.terminate()
            pinger.wait(5)
        print(
            f"gateway SIGKILLed: client noticed after {noticed:.1f} s (traffic watch + DPD), "
            f"gateway down {OUTAGE:.0f} s more, first ping reply {took:.1f} s after the restarted "
            "gateway was ready (goal 5 s)"
        )
        # the goal; the widest gap between two first messages is 2 s (reconnect.py)
        assert took < 5.0, read_text(cl_log)[-3000:]
        assert _pcap_frames(leak) == 0, "packets for the tunnel's network left the underlay in clear"
        states = [r.get("state") for r in json_records(cl_log) if r.get("event") == "reconnect"]
        assert "lost" in states, states
        assert sum(1 for r in json_records(cl_log) if r.get("event") == "established") >= 2
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]


def test_failover_to_the_second_gateway_of_the_list(pair: NetnsPair, tmp_path: Path) -> None:
    run_in(pair.a, ["ip", "addr", "add", f"{SECOND}/24", "dev", pair.if_a], check=True)
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = _gateway(pair, tmp_path, SECOND, gw_log)
    # the profile names a dead gateway first; remote_id defaults to each entry as written
    cl = _client(pair, _profile(tmp_path, f'["{DEAD}", "{SECOND}"]'), cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 60, "the client's SAs through the second gateway")
        assert _ping_once(pair)
        failed = [
            r for r in json_records(cl_log) if r.get("event") == "reconnect" and r.get("state") == "failed"
        ]
        assert failed and DEAD in failed[0]["message"], read_text(cl_log)[-3000:]
        established = [
            r for r in json_records(cl_log) if r.get("event") == "phase1" and r.get("state") == "established"
        ]
        assert SECOND in established[-1]["message"]
    finally:
        stop_process(cl)
        stop_process(gw)


@contextlib.contextmanager
def _hosts_file(ns: str, text: str) -> Iterator[None]:
    """/etc/netns/NS/hosts: `ip netns exec NS` bind-mounts it over /etc/hosts (ip-netns(8))."""
    directory = Path("/etc/netns") / ns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(text)
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_name_with_two_addresses_the_first_dead(pair: NetnsPair, tmp_path: Path) -> None:
    run_in(pair.a, ["ip", "addr", "add", f"{SECOND}/24", "dev", pair.if_a], check=True)
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    with _hosts_file(pair.b, f"127.0.0.1 localhost\n{DEAD} vpn.example.test\n{SECOND} vpn.example.test\n"):
        resolved = run_in(pair.b, ["getent", "ahostsv4", "vpn.example.test"], check=True).stdout
        assert DEAD in resolved and SECOND in resolved, resolved
        gw = _gateway(pair, tmp_path, SECOND, gw_log)
        # a pre-shared-key gateway identifies by its address: remote_id says which one we accept
        profile = _profile(tmp_path, '"vpn.example.test"', f'remote_id = "{SECOND}"\n')
        cl = _client(pair, profile, cl_log)
        try:
            wait_for_line(
                cl_log, "IPsec SA pair(s) up", cl, 60, "the client's SAs through the name's second address"
            )
            assert _ping_once(pair)
            failed = [
                r
                for r in json_records(cl_log)
                if r.get("event") == "reconnect" and r.get("state") == "failed"
            ]
            assert failed and "vpn.example.test" in failed[0]["message"], read_text(cl_log)[-3000:]
            started = [
                r for r in json_records(cl_log) if r.get("event") == "phase1" and r.get("state") == "started"
            ]
            assert [r["gateway"] for r in started][:2] == [DEAD, SECOND], started
        finally:
            stop_process(cl)
            stop_process(gw)


def test_gateway_stopped_gracefully_deletes_child_sas_first_and_nothing_leaks(
    pair: NetnsPair, tmp_path: Path
) -> None:
    """A gateway that stops (SIGTERM) deletes each IPsec SA, then the ISAKMP SA, in separate
    messages: between them the client must not drop the routes onto the plain network."""
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
    cl = _client(pair, _profile(tmp_path, f'"{pair.addr_a}"'), cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        leak = tmp_path / "leak.pcap"
        with capture(pair.b, pair.if_b, leak, bpf=f"dst net {PROTECTED_NET}"):
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", pair.b, "ping", "-i", "0.05", "-W", "1", PROTECTED],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            stop_process(gw)  # SIGTERM: Deletes for the IPsec SAs, then for the ISAKMP SA
            wait_for(
                lambda: any(r.get("state") == "lost" for r in json_records(cl_log)) or cl.poll() is not None,
                30,
                "the client to see the gateway go",
            )
            time.sleep(2)
            gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
            wait_for(lambda: _ping_once(pair) or cl.poll() is not None, 60, "a ping after the restart")
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            pinger.terminate()
            pinger.wait(5)
        assert _pcap_frames(leak) == 0, "packets for the tunnel's network left the underlay in clear"
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)


def test_remote_id_is_checked_per_gateway_by_the_name_written(pair: NetnsPair, tmp_path: Path) -> None:
    """No remote_id in the profile: each gateway must prove the name it is listed under. The
    first one (vpn1) identifies as another name: refused before XAUTH, and the client fails
    over to vpn2, which identifies as vpn2.example.test."""
    run_in(pair.a, ["ip", "addr", "add", f"{SECOND}/24", "dev", pair.if_a], check=True)
    log1, log2, cl_log = tmp_path / "gateway1.log", tmp_path / "gateway2.log", tmp_path / "client.log"
    hosts = f"127.0.0.1 localhost\n{pair.addr_a} vpn1.example.test\n{SECOND} vpn2.example.test\n"
    with _hosts_file(pair.b, hosts):
        gw1 = _gateway(pair, tmp_path, pair.addr_a, log1, extra=("--id", "other.example.test"))
        gw2 = _gateway(pair, tmp_path, SECOND, log2, extra=("--id", "vpn2.example.test"))
        cl = _client(pair, _profile(tmp_path, '["vpn1.example.test", "vpn2.example.test"]'), cl_log)
        try:
            wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 60, "the client's SAs through vpn2")
            assert _ping_once(pair)
            records = json_records(cl_log)
            refused = [r for r in records if r.get("event") == "phase1" and r.get("state") == "failed"]
            assert refused and "other.example.test" in refused[0]["message"], read_text(cl_log)[-3000:]
            assert f"phase 1 with vpn1.example.test ({pair.addr_a}) failed" in refused[0]["message"], refused[
                0
            ]
            established = [
                r for r in records if r.get("event") == "phase1" and r.get("state") == "established"
            ]
            assert SECOND in established[-1]["message"], established
            assert "alice" not in read_text(log1), "the refused gateway saw the XAUTH login"
        finally:
            stop_process(cl)
            stop_process(gw1)
            stop_process(gw2)


def test_gateway_restarted_at_once_is_found_by_its_invalid_spi_answer(
    pair: NetnsPair, tmp_path: Path
) -> None:
    """The usual restart: SIGKILL and started again at once, while the user's traffic flows.
    The restarted gateway answers our ESP for SAs it lost with an unprotected INVALID-SPI
    Notify; the client cannot verify it, so it probes (R-U-THERE, 2 s) and, unanswered,
    reconnects without waiting for the idle DPD timeout. (Without that Notify the traffic
    watch would find it: ESP out, nothing in for 2 s, a 3 s probe.)"""
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
    cl = _client(pair, _profile(tmp_path, f'"{pair.addr_a}"'), cl_log)
    pinger: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        leak = tmp_path / "leak.pcap"
        pings = tmp_path / "pings.txt"
        with capture(pair.b, pair.if_b, leak, bpf=f"dst net {PROTECTED_NET}"), pings.open("wb") as out:
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", pair.b, "ping", "-D", "-i", "0.2", "-W", "1", PROTECTED],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            gw.kill()
            gw.wait(5)
            gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
            back = time.time()
            wait_for(
                lambda: _first_reply_after(pings, back) is not None or cl.poll() is not None,
                60,
                "a ping reply after the restart",
            )
            assert cl.poll() is None, read_text(cl_log)[-3000:]
            first = _first_reply_after(pings, back)
            assert first is not None
            took = first - back
            pinger.terminate()
            pinger.wait(5)
        print(
            f"gateway SIGKILLed and restarted at once: first ping reply {took:.1f} s after it was "
            "ready (goal 5 s)"
        )
        assert took < 5.0, read_text(cl_log)[-3000:]
        assert _pcap_frames(leak) == 0, "packets for the tunnel's network left the underlay in clear"
        # the restarted gateway answered our old ESP with INVALID-SPI: a 2 s probe, not DPD's 25 s
        assert "has no SA for our ESP SPI" in read_text(cl_log), read_text(cl_log)[-3000:]
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
        stop_process(cl)
        stop_process(gw)


def test_an_idle_tunnel_finds_a_restarted_gateway_by_its_invalid_cookie_answer(
    pair: NetnsPair, tmp_path: Path
) -> None:
    """No traffic: only DPD's R-U-THERE (after 10 s idle) reaches the restarted gateway, which
    cannot read it and answers INVALID-COOKIE in the clear; the client probes for 2 s and logs
    in again: about 12 s after the restart instead of DPD's 25 s."""
    gw_log, cl_log = tmp_path / "gateway.log", tmp_path / "client.log"
    gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
    cl = _client(pair, _profile(tmp_path, f'"{pair.addr_a}"'), cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        gw.kill()
        gw.wait(5)
        gw = _gateway(pair, tmp_path, pair.addr_a, gw_log)
        back = time.monotonic()
        wait_for(
            lambda: (
                sum(1 for r in json_records(cl_log) if r.get("event") == "established") >= 2
                or cl.poll() is not None
            ),
            40,
            "the client to log in again",
        )
        took = time.monotonic() - back
        assert cl.poll() is None, read_text(cl_log)[-3000:]
        print(f"idle tunnel, gateway restarted at once: logged in again {took:.1f} s later (DPD alone: 25 s)")
        assert "does not know this ISAKMP SA" in read_text(cl_log), read_text(cl_log)[-3000:]
        assert took < 20, read_text(cl_log)[-3000:]
        assert _ping_once(pair)
    finally:
        stop_process(cl)
        stop_process(gw)


def test_a_laptop_that_moved_logs_in_again_despite_the_session_limit(pair: NetnsPair, tmp_path: Path) -> None:
    """max_sessions_per_user = 1. Alice's client dies without a word (SIGKILL: a laptop that
    left the Wi-Fi) and she logs in again from another address: the gateway asks the old
    session R-U-THERE before refusing; it does not answer within 2 s, so it goes and the new
    login is let in. (Before, she was refused until DPD cleared the old session.)"""
    moved = "10.77.0.5"
    pair.add_addr(pair.b, f"{moved}/24", dev=pair.if_b)  # a secondary address: the first stays the source
    gw_log, first_log, second_log = tmp_path / "gateway.log", tmp_path / "first.log", tmp_path / "second.log"
    gw = _gateway(pair, tmp_path, pair.addr_a, gw_log, extra=("--max-sessions-per-user", "1"))
    first = _client(pair, _profile(tmp_path, f'"{pair.addr_a}"'), first_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for_line(first_log, "IPsec SA pair(s) up", first, 30, "the first client's SAs")
        first.kill()  # no Delete: the gateway still holds alice's session
        first.wait(5)
        second = popen_tunvpn(
            pair.b,
            ["connect", "-c", str(tmp_path / "client.toml"), "--local", moved, "--tun", "tvcl%d", *QUIET],
            second_log,
        )
        started = time.monotonic()
        wait_for_line(second_log, "IPsec SA pair(s) up", second, 30, "the login from the new address")
        took = time.monotonic() - started
        print(f"logged in again from another address at the session limit in {took:.1f} s")
        gateway_text = read_text(gw_log)
        assert "asking 1 older session(s) whether they are alive" in gateway_text, gateway_text[-3000:]
        assert "already has 1 session" not in read_text(second_log)
        assert _ping_once(pair)
    finally:
        if second is not None:
            stop_process(second)
        stop_process(gw)
