"""Two vpnc users of one group connected to our gateway at once (issue 12, "What must be shown").

Every vpnc user of a group sends the same phase 1 identity (``keyid:GROUP``) and an
INITIAL-CONTACT notify. The gateway must take "same peer" to mean the same *user* (phase 1
identity and XAUTH user, as strongSwan does), so bob joining never tears down alice's SAs.

Topology (tests/interop/lan.py): our gateway in namespace g on a bridge (10.77.0.1), with the
protected host 10.78.0.1 on its loopback; alice's vpnc in namespace c1 (10.77.0.2), bob's in c2
(10.77.0.3); real UDP, real TUN devices, unmodified vpnc.
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from . import configs
from .lan import GatewayLan
from .tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line
from .vpnc import Vpnc
from netns import run_in, stop_process, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.netns]

LAN_HOST = "10.78.0.1"
USERS = {"alice": "alice-pass-31415", "bob": "bob-pass-27182"}


def start_gateway(tmp: Path, lan: GatewayLan) -> tuple[subprocess.Popen[bytes], Path]:
    """Our gateway as the vpnc interop tests run it: one group identity and PSK, a users file
    of two users, Mode Config from a pool."""
    psk = private_file(tmp / "gateway.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
    users = private_file(tmp / "users", "".join(f"{u}:{p}\n" for u, p in USERS.items()))
    log = tmp / "gateway.log"
    proc = popen_tunvpn(
        lan.g,
        [
            "gateway",
            "--listen",
            lan.addr_g,
            "--psk-file",
            str(psk),
            "--users",
            str(users),
            "--pool",
            configs.VPNC_POOL,
            "--allow-aggressive-psk",  # vpnc: Aggressive Mode with the group PSK
            "--legacy",  # vpnc: MODP-1024 only
            "--require-xauth",
            "--control",
            "none",
        ],
        log,
    )
    wait_for_line(log, "gateway ready", proc, 15, "our gateway to bind its sockets")
    return proc, log


def user_vpnc(tmp: Path, ns: str, gateway: str, user: str) -> Vpnc:
    return Vpnc(
        tmp / f"vpnc-{user}",
        ns,
        gateway=gateway,
        group=configs.VPNC_GROUP,
        group_psk=configs.VPNC_GROUP_PSK,
        user=user,
        password=USERS[user],
        routes=(f"{LAN_HOST}/32",),
    )


def sessions(log: Path) -> str:
    """The gateway's session lines (logins, addresses, SAs made and deleted), for failure messages."""
    keys = ("phase 1 established", "XAUTH:", "gets ", "established (responder)", "deleted", "returned")
    return "\n".join(line for line in read_text(log).splitlines() if any(k in line for k in keys))


def connect(client: Vpnc, log: Path) -> dict[str, str]:
    try:
        return client.wait_connected(timeout=30)
    except (TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None


def pings(ns: str, count: int = 1) -> subprocess.CompletedProcess[str]:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", LAN_HOST]
    return run_in(ns, argv, check=False, timeout=30)


def wait_ping(ns: str, who: str, log: Path) -> None:
    """The first ping may race the gateway's Quick Mode (interop pitfall 13): retry briefly."""
    try:
        wait_for(lambda: pings(ns).returncode == 0, 15, f"a ping through {who}'s tunnel")
    except TimeoutError:
        raise AssertionError(f"no ping through {who}'s tunnel\n{read_text(log)[-4000:]}") from None


@pytest.mark.xfail(
    strict=True,
    reason="issue 12: bob's INITIAL-CONTACT (same keyid:GROUP) deletes alice's SAs, and bob then gets "
    "alice's pool address (fails on main before the fix)",
)
def test_two_vpnc_users_of_one_group_at_once(tmp_path: Path) -> None:
    with GatewayLan("10.77.0.1/24") as lan, ExitStack() as stack:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        ns_alice = lan.add_client("c1", "10.77.0.2/24")
        ns_bob = lan.add_client("c2", "10.77.0.3/24")
        gateway, log = start_gateway(tmp_path, lan)
        stack.callback(stop_process, gateway)

        alice = stack.enter_context(user_vpnc(tmp_path, ns_alice, lan.addr_g, "alice"))
        alice_env = connect(alice, log)
        wait_ping(ns_alice, "alice", log)

        bob = stack.enter_context(user_vpnc(tmp_path, ns_bob, lan.addr_g, "bob"))
        bob_env = connect(bob, log)
        wait_ping(ns_bob, "bob", log)

        # Alice's tunnel still works after bob (same keyid:GROUP, INITIAL-CONTACT) joined.
        alice_after = pings(ns_alice, count=3)
        assert alice_after.returncode == 0, (
            f"alice's tunnel died when bob joined\n{alice_after.stdout}\n--- gateway ---\n{sessions(log)}"
        )

        # Both at the same time.
        both = [
            subprocess.Popen(
                ["ip", "netns", "exec", ns, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", LAN_HOST],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for ns in (ns_alice, ns_bob)
        ]
        outputs = [p.communicate(timeout=30)[0] for p in both]
        codes = [p.returncode for p in both]

        alice.stop(settle=0.5)
        bob.stop(settle=0.5)
        wait_for(lambda: read_text(log).count("deleted: deleted by peer") >= 2, 10, "both vpnc DELETEs")
        stop_process(gateway)
        text = read_text(log)

    assert codes == [0, 0], "\n".join(outputs) + text[-4000:]
    assert all(" 5 received" in out for out in outputs), outputs
    # Each user has its own address from the pool, and the gateway knows them apart.
    addresses = {alice_env["INTERNAL_IP4_ADDRESS"], bob_env["INTERNAL_IP4_ADDRESS"]}
    assert len(addresses) == 2, (alice_env, bob_env)
    assert "XAUTH: user 'alice' from 10.77.0.2 accepted" in text, text[-3000:]
    assert "XAUTH: user 'bob' from 10.77.0.3 accepted" in text, text[-3000:]
    assert f"gets {alice_env['INTERNAL_IP4_ADDRESS']}" in text
    assert f"gets {bob_env['INTERNAL_IP4_ADDRESS']}" in text
    assert text.count(f"peer id keyid:{configs.VPNC_GROUP}") >= 2, text[-3000:]
    assert "replaced after INITIAL-CONTACT" not in text, text[-3000:]
    for secret in (*USERS.values(), configs.VPNC_GROUP_PSK):
        assert secret not in text
    assert "Traceback" not in text
