"""vpnc (namespace b) against our gateway (``python -m tunvpn gateway`` in namespace a): Aggressive
Mode group PSK (ID_KEY_ID), XAUTH, Mode Config from a pool, Quick Mode without PFS, NAT-T forced.

vpnc offers only MODP-1024 with AES/3DES + SHA1/MD5 and ESP HMAC-SHA1 (interop pitfall 9), so the
gateway runs with ``--legacy``; Aggressive Mode with a PSK needs ``--allow-aggressive-psk``.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.netns import NetnsPair, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line

from . import configs
from .vpnc import Vpnc

POOL_FIRST = "10.79.0.10"


def start_gateway(tmp_path: Path, pair: NetnsPair, *extra: str) -> tuple[object, Path]:
    psk = private_file(tmp_path / "gateway.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
    users = private_file(tmp_path / "users", f"{configs.VPNC_USER}:{configs.VPNC_PASSWORD}\n")
    log = tmp_path / "gateway.log"
    proc = popen_tunvpn(
        pair.a,
        [
            "gateway",
            "--listen",
            pair.addr_a,
            "--psk-file",
            str(psk),
            "--users",
            str(users),
            "--pool",
            configs.VPNC_POOL,
            "--allow-aggressive-psk",
            "--legacy",
            "--require-xauth",
            *extra,
        ],
        log,
    )
    wait_for_line(log, "gateway ready", proc, 15, "our gateway to bind its sockets")
    return proc, log


def make_vpnc(
    tmp_path: Path, pair: NetnsPair, password: str = configs.VPNC_PASSWORD, routes: tuple[str, ...] = ()
) -> Vpnc:
    return Vpnc(
        tmp_path / "vpnc",
        pair.b,
        gateway=pair.addr_a,
        group=configs.VPNC_GROUP,
        group_psk=configs.VPNC_GROUP_PSK,
        user=configs.VPNC_USER,
        password=password,
        natt_mode="force-natt",
        routes=routes,
        dh_group="dh2",
        pfs="nopfs",
    )


def test_vpnc_connects_to_our_gateway(tmp_path: Path) -> None:
    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as pair:
        gateway, log = start_gateway(tmp_path, pair)
        client = make_vpnc(tmp_path, pair)
        with client:
            try:
                connect = client.wait_connected(timeout=30)
            except (TimeoutError, RuntimeError) as exc:
                raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)}") from None
            wait_for(lambda: "Quick Mode SA" in read_text(log), 10, "the gateway's Quick Mode log line")
            output = client.stop(settle=0.5)
        wait_for(lambda: "deleted by peer" in read_text(log), 10, "the gateway to see vpnc's DELETE")
        stop_process(gateway)  # type: ignore[arg-type]
        text = read_text(log)

    assert connect["reason"] == "connect"
    assert connect["INTERNAL_IP4_ADDRESS"] == POOL_FIRST
    assert connect["VPNGATEWAY"] == pair.addr_a
    assert "CISCO_SPLIT_INC" not in connect  # no --split: the whole IPv4 space
    assert [e["reason"] for e in client.events()] == ["pre-init", "connect", "disconnect"]
    assert "terminated by signal: 15" in output, output  # our SIGTERM, not an error exit

    assert (
        "phase 1 established with 10.77.0.2:4500 (aggressive mode, responder) suite "
        "aes256-sha1-modp_1024/xauth_init_preshared" in text
    ), text
    assert f"peer id keyid:{configs.VPNC_GROUP}" in text
    assert f"XAUTH: user '{configs.VPNC_USER}' from 10.77.0.2 accepted" in text
    assert f"gets {POOL_FIRST}" in text
    assert "Quick Mode SA '0.0.0.0/0' established (responder) aes256-sha1 spi_in=0x" in text
    assert f"ts 0.0.0.0/0 === {POOL_FIRST}/32, no pfs" in text
    assert f"address {POOL_FIRST} returned to the pool" in text
    assert "legacy algorithms enabled (--legacy): DES3_CBC, MD5, MODP_1536, MODP_1024" in text
    assert configs.VPNC_PASSWORD not in text and configs.VPNC_GROUP_PSK not in text
    assert "Traceback" not in text


def test_vpnc_with_a_wrong_password_is_refused(tmp_path: Path) -> None:
    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as pair:
        gateway, log = start_gateway(tmp_path, pair)
        client = make_vpnc(tmp_path, pair, password="not-the-password")
        with client:
            wait_for(lambda: "rejected" in read_text(log), 20, "the gateway to reject the user")
            wait_for(lambda: client.proc is None or client.proc.poll() is not None, 20, "vpnc to give up")
            output = client.output()
        stop_process(gateway)  # type: ignore[arg-type]
        text = read_text(log)

    assert (
        f"XAUTH: user '{configs.VPNC_USER}' from 10.77.0.2 rejected: user name or password not accepted"
        in text
    )
    assert "Quick Mode SA" not in text
    assert not [e for e in client.events() if e.get("reason") == "connect"]
    assert "not-the-password" not in text
    assert "authentication unsuccessful" in output.lower() or "xauth" in output.lower(), output


def test_ping_through_vpnc_and_our_esp_data_path(tmp_path: Path) -> None:
    """vpnc's ESP (AES-256-CBC, HMAC-SHA1-96, in UDP) meets our userspace data path."""
    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as pair:
        pair.add_addr(pair.a, "10.78.0.1/24")
        gateway, log = start_gateway(tmp_path, pair)
        client = make_vpnc(tmp_path, pair, routes=("10.78.0.0/24",))
        with client:
            client.wait_connected(timeout=30)
            wait_for(lambda: "Quick Mode SA" in read_text(log), 10, "the gateway's Quick Mode log line")
            ping = run_in(
                pair.b, ["ping", "-c", "4", "-i", "0.2", "-W", "2", "10.78.0.1"], check=False, timeout=30
            )
            client.stop(settle=0.5)
        stop_process(gateway)  # type: ignore[arg-type]
        text = read_text(log)
    assert ping.returncode == 0, ping.stdout + text[-3000:]
    assert "4 received" in ping.stdout
    stats = [line for line in text.splitlines() if "data path: {" in line][-1]
    assert "'tun packets out': " in stats and "bad_icv" not in stats, stats
