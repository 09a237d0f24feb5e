"""Two users of one gateway connected at once (issue 12, "What must be shown").

Every vpnc user of a group sends the same phase 1 identity (``keyid:GROUP``) and an
INITIAL-CONTACT notify; two tunvpn clients behind two home NATs with the same private address
send the same default identity (that address). The gateway must take "same peer" to mean the
same *user* (phase 1 identity and XAUTH user, as strongSwan does), so bob joining never tears
down alice's SAs, and each keeps its own pool address.

Topology (tests/interop/lan.py): our gateway in namespace g on a bridge (10.77.0.1), with the
protected host 10.78.0.1 on its loopback. Either alice and bob directly on the bridge
(10.77.0.2, 10.77.0.3), or each at 192.168.1.10 behind its own masquerading router
(10.77.0.11, 10.77.0.12). Real UDP, real TUN devices, unmodified vpnc or ``tunvpn connect``.

The scenario, for each set-up: alice connects and pings through; bob connects and pings
through; alice's tunnel still works; both ping at the same time; bob logs out and alice's
tunnel still works; the gateway gave them two addresses and logged both logins; nothing was
"replaced after INITIAL-CONTACT".

Two more with vpnc: a user whose client died without a DELETE comes back and her
INITIAL-CONTACT removes her own stale session only (the positive control: INITIAL-CONTACT
still works for the same user); a group-PSK holder who names alice but lacks her password
cannot kick her off (INITIAL-CONTACT waits for the login).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.netns import run_in, stop_process, wait_for
from tests.helpers.requires import skip_or_fail
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line

from . import configs
from .lan import GatewayLan
from .vpnc import Vpnc

LAN_HOST = "10.78.0.1"
USERS = {"alice": "alice-pass-31415", "bob": "bob-pass-27182"}
MAIN_MODE_PSK = "two-users-main-mode-psk-5c1d7e"
PRIVATE = "192.168.1.10/24"  # both natted clients have this address


def start_gateway(tmp: Path, lan: GatewayLan, *, for_vpnc: bool) -> tuple[subprocess.Popen[bytes], Path]:
    """Our gateway as the interop tests run it, with a users file of two users and Mode Config
    from a pool. For vpnc: one group identity and PSK, Aggressive Mode and ``--legacy``; for
    tunvpn clients: one PSK for every peer, Main Mode, default algorithms."""
    if for_vpnc:
        psk = private_file(tmp / "gateway.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
        mode = ["--allow-aggressive-psk", "--legacy"]  # vpnc: Aggressive Mode, MODP-1024 only
    else:
        psk = private_file(tmp / "gateway.psk", MAIN_MODE_PSK + "\n")
        mode = ["--split", "10.78.0.0/24", "--tun", "tvgw%d"]
    users = private_file(tmp / "users", "".join(f"{u}:{p}\n" for u, p in USERS.items()))
    log = tmp / "gateway.log"
    argv = ["gateway", "--listen", lan.addr_g, "--psk-file", str(psk), "--users", str(users)]
    argv += ["--pool", configs.VPNC_POOL, "--require-xauth", "--control", "none", *mode]
    proc = popen_tunvpn(lan.g, argv, log)
    wait_for_line(log, "gateway ready", proc, 15, "our gateway to bind its sockets")
    return proc, log


@contextmanager
def vpnc_user(tmp: Path, ns: str, gateway: str, user: str) -> Iterator[str]:
    """vpnc for ``user`` of the group in ``ns``; yields its Mode Config address once connected."""
    client = Vpnc(
        tmp / f"vpnc-{user}",
        ns,
        gateway=gateway,
        group=configs.VPNC_GROUP,
        group_psk=configs.VPNC_GROUP_PSK,
        user=user,
        password=USERS[user],
        routes=(f"{LAN_HOST}/32",),
    )
    with client:
        try:
            env = client.wait_connected(timeout=30)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"vpnc of {user}: {exc}") from None
        yield env["INTERNAL_IP4_ADDRESS"]
        client.stop(settle=0.5)  # vpnc sends its DELETEs


@contextmanager
def tunvpn_user(tmp: Path, ns: str, gateway: str, user: str) -> Iterator[str]:
    """``tunvpn connect`` for ``user`` in ``ns``, default identity (its own address); yields its
    Mode Config address once its SAs are up."""
    psk = private_file(tmp / f"{user}.psk", MAIN_MODE_PSK + "\n")
    password = private_file(tmp / f"{user}.pw", USERS[user] + "\n")
    log = tmp / f"client-{user}.log"
    argv = ["connect", gateway, "--psk-file", str(psk), "--user", user, "--password-file", str(password)]
    argv += ["--tun", "tvcl%d", "--control", "none", "--dns-backend", "none", "--json"]
    proc = popen_tunvpn(ns, argv, log)
    try:
        wait_for_line(log, "IPsec SA pair(s) up", proc, 30, f"{user}'s Quick Mode SAs")
        [address] = [r["address"] for r in json_records(log) if r["event"] == "modecfg" and "address" in r]
        yield str(address)
    finally:
        stop_process(proc)


def sessions(log: Path) -> str:
    """The gateway's session lines (logins, addresses, SAs made and deleted), for failure messages."""
    keys = ("phase 1 established", "XAUTH:", "gets ", "established (responder)", "deleted", "returned")
    return "\n".join(line for line in read_text(log).splitlines() if any(k in line for k in keys))


def pings(ns: str, count: int = 1) -> subprocess.CompletedProcess[str]:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", LAN_HOST]
    return run_in(ns, argv, check=False, timeout=30)


def wait_ping(ns: str, who: str, log: Path) -> None:
    """The first ping may race the gateway's Quick Mode (interop pitfall 13): retry briefly."""
    try:
        wait_for(lambda: pings(ns).returncode == 0, 15, f"a ping through {who}'s tunnel")
    except TimeoutError:
        raise AssertionError(f"no ping through {who}'s tunnel\n--- gateway ---\n{sessions(log)}") from None


def require_nft() -> None:
    """The NAT routers need nftables (contrib/test-all.sh installs it)."""
    if shutil.which("nft") is None:
        reason = "missing nft (apt-get install nftables; contrib/test-all.sh installs it)"
        skip_or_fail(reason)


@dataclass
class Outcome:
    addresses: dict[str, str]
    """Mode Config address of each user."""
    ping_codes: list[int]
    ping_outputs: list[str]
    log: str
    """The gateway's whole log."""


def alice_then_bob(tmp: Path, lan: GatewayLan, namespaces: dict[str, str], *, for_vpnc: bool) -> Outcome:
    """The scenario of the module docstring; ``namespaces``: user -> client namespace."""
    user_client = vpnc_user if for_vpnc else tunvpn_user
    with ExitStack() as stack:
        gateway, log = start_gateway(tmp, lan, for_vpnc=for_vpnc)
        stack.callback(stop_process, gateway)
        addresses = {}
        clients = {user: stack.enter_context(ExitStack()) for user in ("alice", "bob")}
        for user in ("alice", "bob"):
            try:
                addresses[user] = clients[user].enter_context(
                    user_client(tmp, namespaces[user], lan.addr_g, user)
                )
            except (AssertionError, TimeoutError, RuntimeError) as exc:
                raise AssertionError(f"{exc}\n--- gateway ---\n{sessions(log)}") from None
            wait_ping(namespaces[user], user, log)

        # Alice's tunnel still works after bob (same phase 1 identity, INITIAL-CONTACT) joined.
        alice_after = pings(namespaces["alice"], count=3)
        assert alice_after.returncode == 0, (
            f"alice's tunnel died when bob joined\n{alice_after.stdout}\n--- gateway ---\n{sessions(log)}"
        )

        # Both at the same time.
        argv = ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", LAN_HOST]
        both = [
            subprocess.Popen(
                ["ip", "netns", "exec", namespaces[user], *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for user in ("alice", "bob")
        ]
        outputs = [p.communicate(timeout=30)[0] for p in both]
        codes = [p.returncode for p in both]

        # Bob logs out (his client sends DELETEs): alice goes on.
        ends = read_text(log).count("deleted: deleted by peer")
        clients["bob"].close()
        wait_for(lambda: read_text(log).count("deleted: deleted by peer") > ends, 10, "bob's DELETE")
        alice_alone = pings(namespaces["alice"], count=3)
        assert alice_alone.returncode == 0, (
            f"alice's tunnel died when bob left\n{alice_alone.stdout}\n--- gateway ---\n{sessions(log)}"
        )
    # alice is stopped (DELETEs sent), then the gateway
    return Outcome(addresses, codes, outputs, read_text(log))


def check(outcome: Outcome, sources: dict[str, str], peer_id: str) -> None:
    text = outcome.log
    assert outcome.ping_codes == [0, 0], "\n".join(outcome.ping_outputs) + text[-4000:]
    assert all(" 5 received" in out for out in outcome.ping_outputs), outcome.ping_outputs
    # Each user has its own address from the pool, and the gateway knows them apart.
    assert len(set(outcome.addresses.values())) == 2, outcome.addresses
    for user, source in sources.items():
        assert f"XAUTH: user '{user}' from {source} accepted" in text, text[-3000:]
        assert f"user '{user}') gets {outcome.addresses[user]}" in text, text[-3000:]
    assert text.count(f"peer id {peer_id}") >= 2, text[-3000:]
    assert "replaced after INITIAL-CONTACT" not in text, text[-3000:]
    for secret in (*USERS.values(), configs.VPNC_GROUP_PSK, MAIN_MODE_PSK):
        assert secret not in text
    assert "Traceback" not in text


def test_two_vpnc_users_of_one_group_at_once(tmp_path: Path) -> None:
    with GatewayLan("10.77.0.1/24") as lan:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        namespaces = {
            "alice": lan.add_client("c1", "10.77.0.2/24"),
            "bob": lan.add_client("c2", "10.77.0.3/24"),
        }
        outcome = alice_then_bob(tmp_path, lan, namespaces, for_vpnc=True)
    check(outcome, {"alice": "10.77.0.2", "bob": "10.77.0.3"}, f"keyid:{configs.VPNC_GROUP}")


def test_two_vpnc_users_behind_two_nats_with_one_private_address(tmp_path: Path) -> None:
    require_nft()
    with GatewayLan("10.77.0.1/24") as lan:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        alice, _ = lan.add_natted_client("n1", "10.77.0.11/24", PRIVATE)
        bob, _ = lan.add_natted_client("n2", "10.77.0.12/24", PRIVATE)
        outcome = alice_then_bob(tmp_path, lan, {"alice": alice, "bob": bob}, for_vpnc=True)
    check(outcome, {"alice": "10.77.0.11", "bob": "10.77.0.12"}, f"keyid:{configs.VPNC_GROUP}")


def test_two_tunvpn_clients_behind_two_nats_with_one_private_address(tmp_path: Path) -> None:
    require_nft()
    with GatewayLan("10.77.0.1/24") as lan:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        alice, _ = lan.add_natted_client("n1", "10.77.0.11/24", PRIVATE)
        bob, _ = lan.add_natted_client("n2", "10.77.0.12/24", PRIVATE)
        outcome = alice_then_bob(tmp_path, lan, {"alice": alice, "bob": bob}, for_vpnc=False)
    check(outcome, {"alice": "10.77.0.11", "bob": "10.77.0.12"}, "192.168.1.10")


def test_a_user_who_reconnects_replaces_only_her_own_stale_session(tmp_path: Path) -> None:
    """The positive control of the tests above: INITIAL-CONTACT still works for the *same*
    user. Alice's vpnc dies without a DELETE (SIGKILL, as a crash or a lost laptop); her new
    login's INITIAL-CONTACT removes her stale session on the gateway, bob's stays."""
    with GatewayLan("10.77.0.1/24") as lan, ExitStack() as stack:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        ns_alice, ns_bob = lan.add_client("c1", "10.77.0.2/24"), lan.add_client("c2", "10.77.0.3/24")
        gateway, log = start_gateway(tmp_path, lan, for_vpnc=True)
        stack.callback(stop_process, gateway)
        stack.enter_context(vpnc_user(tmp_path, ns_bob, lan.addr_g, "bob"))
        wait_ping(ns_bob, "bob", log)

        crashed = Vpnc(
            tmp_path / "vpnc-alice-crashed",
            ns_alice,
            gateway=lan.addr_g,
            group=configs.VPNC_GROUP,
            group_psk=configs.VPNC_GROUP_PSK,
            user="alice",
            password=USERS["alice"],
            routes=(f"{LAN_HOST}/32",),
        )
        with crashed:
            crashed.wait_connected(timeout=30)
            wait_ping(ns_alice, "alice", log)
            assert crashed.proc is not None
            crashed.proc.kill()  # no DELETE: the gateway still holds alice's session
            crashed.proc.wait(10)
        assert "replaced after INITIAL-CONTACT" not in read_text(log), (
            f"alice's login replaced bob's\n{sessions(log)}"
        )

        stack.enter_context(vpnc_user(tmp_path, ns_alice, lan.addr_g, "alice"))
        wait_ping(ns_alice, "alice (again)", log)
        bob_after = pings(ns_bob, count=3)
        text = read_text(log)

    assert bob_after.returncode == 0, f"bob's tunnel died when alice came back\n{sessions(log)}"
    replaced = re.findall(r"ISAKMP SA with (\S+) deleted: replaced after INITIAL-CONTACT", text)
    assert replaced == ["10.77.0.2:4500"], sessions(log)


def test_a_group_psk_holder_naming_alice_cannot_kick_her_off(tmp_path: Path) -> None:
    """Mallory holds the group PSK and sends INITIAL-CONTACT under alice's name, without her
    password: the login fails, so the INITIAL-CONTACT is never acted on."""
    with GatewayLan("10.77.0.1/24") as lan, ExitStack() as stack:
        lan.add_addr(lan.g, f"{LAN_HOST}/24")
        ns_alice, ns_mallory = lan.add_client("c1", "10.77.0.2/24"), lan.add_client("c2", "10.77.0.3/24")
        gateway, log = start_gateway(tmp_path, lan, for_vpnc=True)
        stack.callback(stop_process, gateway)
        stack.enter_context(vpnc_user(tmp_path, ns_alice, lan.addr_g, "alice"))
        wait_ping(ns_alice, "alice", log)

        mallory = Vpnc(
            tmp_path / "vpnc-mallory",
            ns_mallory,
            gateway=lan.addr_g,
            group=configs.VPNC_GROUP,
            group_psk=configs.VPNC_GROUP_PSK,
            user="alice",
            password="not-alices-password",
        )
        with mallory:
            wait_for(lambda: "from 10.77.0.3 rejected" in read_text(log), 20, "the gateway to reject mallory")
            wait_for(
                lambda: mallory.proc is None or mallory.proc.poll() is not None,
                20,
                "mallory's vpnc to give up",
            )
        alice_after = pings(ns_alice, count=3)
        text = read_text(log)

    assert "XAUTH: user 'alice' from 10.77.0.3 rejected" in text, sessions(log)
    assert not [e for e in mallory.events() if e.get("reason") == "connect"]
    assert alice_after.returncode == 0, f"alice's tunnel died\n{alice_after.stdout}\n{sessions(log)}"
    assert "replaced after INITIAL-CONTACT" not in text, sessions(log)
