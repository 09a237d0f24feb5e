"""A fleet of gateways behind one login system, on real shared state (issue 15).

Namespaces: ``core`` (a router; FreeRADIUS listens there) joined to two gateways ``gwa``
(10.60.1.2) and ``gwb`` (10.60.2.2) and to six clients, each in its own namespace. Both
gateways run the tunvpn-radius plugin, no address pool of their own: FreeRADIUS logs the users
in (files), hands out addresses from one SQL pool (rlm_sqlippool) and writes accounting
(rlm_sql, radacct), both in a PostgreSQL cluster the test starts (Unix socket only) and stops.
Each gateway protects 10.78.0.1 (on its lo); clients ping it through their tunnel.

* Clients spread over both gateways (half list A first, half B first) get six different
  addresses; the clients' Mode Config, the pool's leases and the Start rows agree.
* Interim-Updates every 3 s keep the 10 s leases alive well past 10 s.
* Gateway A is killed with SIGKILL (it sends no Stop): its clients fail over to B (the
  profile's gateway list), ping again, and their new sessions have Start rows from B; the
  leases of the dead sessions are never handed out twice while held.
* Gateway A restarts: its Accounting-On closes its stale sessions (acctstoptime,
  NAS-Reboot) and frees their leases at once.
* A client that disconnects leaves a Stop row; gateway B stopped cleanly sends
  Accounting-Off after its sessions' Stops.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.helpers.fleet import (
    SECRET,
    Postgres,
    postgres_cluster,
    require_fleet,
    start_fleet_freeradius,
    stop_fleet_freeradius,
    write_freeradius_config,
)
from tests.helpers.netns import Topology, run_in, stop_process, wait_for
from tests.helpers.radius_fixture import require_freeradius
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line

PSK = "fleet-test-psk-0123456789abcdef"
PROTECTED = "10.78.0.1"
GW = {"a": "10.60.1.2", "b": "10.60.2.2"}
CORE = {"a": "10.60.1.1", "b": "10.60.2.1"}
CLIENTS = 6
POOL_FIRST, POOL_SIZE = "10.79.0.10", 24
LEASE = 10  # sqlippool lease_duration, seconds
INTERIM = 3  # accounting_interval of the gateways

GATEWAY_TOML = """\
[gateway]
listen = "{listen}"
psk_file = "gw.psk"
plugins = ["radius"]
control_socket = "gw.sock"
require_xauth = true
accounting_interval = {interim}

[network]
# only for a user RADIUS gives no address (none here): disjoint per gateway, outside the SQL pool
pool = "10.79.{fallback}.10-10.79.{fallback}.20"

[[policy]]
name = "lan"
local = "10.78.0.0/24"

[plugin.radius]
servers = [{{ host = "{radius}", port = 1812, acct_port = 1813, secret_file = "radius.secret" }}]
timeout = 1
retries = 2
nas_identifier = "gw-{name}"
"""


@dataclass
class Client:
    index: int
    ns: str
    user: str
    first: str  # "a" or "b": the gateway its list names first
    proc: subprocess.Popen[bytes]
    log: Path

    def address(self) -> str | None:
        """The address of the client's latest Mode Config."""
        got = [
            r.get("address")
            for r in json_records(self.log)
            if r.get("event") == "modecfg" and r.get("state") == "received"
        ]
        return str(got[-1]) if got and got[-1] else None

    def connections(self) -> int:
        return sum(1 for r in json_records(self.log) if r.get("event") == "established")

    def ping(self) -> bool:
        out = run_in(self.ns, ["ping", "-n", "-c", "1", "-W", "1", PROTECTED], check=False, timeout=10)
        return out.returncode == 0


class Fleet:
    def __init__(self, net: Topology, tmp: Path, db: Postgres) -> None:
        self.net, self.tmp, self.db = net, tmp, db
        self.core = net.add_ns("core")
        run_in(self.core, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.gw_ns: dict[str, str] = {}
        for name in ("a", "b"):
            ns = net.add_ns("gw" + name)
            net.link(
                self.core, f"{CORE[name]}/24", ns, f"{GW[name]}/24", names=(f"{net.tag}k{name}", ns + "v")
            )
            net.add_addr(ns, f"{PROTECTED}/32")
            run_in(ns, ["ip", "route", "add", "default", "via", CORE[name]])
            self.gw_ns[name] = ns
        self.client_ns: list[str] = []
        for i in range(1, CLIENTS + 1):
            ns = net.add_ns(f"c{i}")
            ends = (f"{net.tag}k{i}", ns + "v")
            net.link(self.core, f"10.61.{i}.1/24", ns, f"10.61.{i}.2/24", names=ends)
            run_in(ns, ["ip", "route", "add", "default", "via", f"10.61.{i}.1"])
            self.client_ns.append(ns)
        self.gateways: dict[str, subprocess.Popen[bytes]] = {}
        self.runs: dict[str, int] = {}

    def gateway_dir(self, name: str) -> Path:
        return self.tmp / f"gw-{name}"

    def gateway_log(self, name: str) -> Path:
        """The log of the gateway's latest run (one file per run)."""
        return self.gateway_dir(name) / f"gateway-{self.runs.get(name, 1)}.log"

    def start_gateway(self, name: str) -> subprocess.Popen[bytes]:
        d = self.gateway_dir(name)
        d.mkdir(exist_ok=True)
        private_file(d / "gw.psk", PSK + "\n")
        private_file(d / "radius.secret", SECRET + "\n")
        config = d / "gateway.toml"
        config.write_text(
            GATEWAY_TOML.format(
                listen=GW[name],
                interim=INTERIM,
                radius=CORE[name],
                name=name,
                fallback=200 + ord(name) - ord("a"),
            )
        )
        self.runs[name] = self.runs.get(name, 0) + 1
        log = self.gateway_log(name)
        proc = popen_tunvpn(
            self.gw_ns[name], ["gateway", "-c", str(config), "--tun", f"tvg{name}%d", "-v"], log
        )
        wait_for_line(log, "gateway ready", proc, 30, f"gateway {name}")
        self.gateways[name] = proc
        return proc

    def start_client(self, i: int, first: str) -> Client:
        d = self.tmp / f"client-{i}"
        d.mkdir(exist_ok=True)
        user = f"user{i}"
        order = [GW[first], GW["b" if first == "a" else "a"]]
        private_file(d / "psk", PSK + "\n")
        private_file(d / "pw", f"pw-{i}-secret\n")
        profile = private_file(
            d / "client.toml",
            f'gateway = ["{order[0]}", "{order[1]}"]\npsk_file = "psk"\n'
            f'user = "{user}"\npassword_file = "pw"\n',
        )
        log = d / "client.log"
        ns = self.client_ns[i - 1]
        argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "none", "-v"]
        return Client(i, ns, user, first, popen_tunvpn(ns, argv, log), log)

    def open_sessions(self) -> list[list[str]]:
        """Open radacct rows: session id, user, NAS-IP-Address, framed address."""
        return self.db.rows(
            "SELECT acctsessionid, username, host(nasipaddress), host(framedipaddress) FROM radacct "
            "WHERE acctstoptime IS NULL ORDER BY radacctid"
        )

    def held_leases(self) -> list[list[str]]:
        """Unexpired pool leases: address, NAS-IP-Address, pool key, user."""
        return self.db.rows(
            "SELECT host(framedipaddress), nasipaddress, pool_key, username FROM radippool "
            "WHERE expiry_time > 'now'::timestamp(0) ORDER BY framedipaddress"
        )

    def db_now(self) -> float:
        return float(self.db.psql("SELECT EXTRACT(EPOCH FROM 'now'::timestamp(0))").strip())


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_freeradius()
    require_fleet()
    users = {f"user{i}": f"pw-{i}-secret" for i in range(1, CLIENTS + 1)}
    with postgres_cluster(POOL_FIRST, POOL_SIZE) as db, Topology() as net:
        f = Fleet(net, tmp_path, db)
        write_freeradius_config(tmp_path / "raddb", db, users, clients="10.60.0.0/16", lease_duration=LEASE)
        radius = start_fleet_freeradius(tmp_path / "raddb", netns=f.core)
        try:
            yield f
        finally:
            for proc in f.gateways.values():
                stop_process(proc)
            stop_fleet_freeradius(radius)
            (tmp_path / "freeradius.log").write_text(radius.log())
            print("---- FreeRADIUS ----\n" + radius.log()[-4000:])
            for name in ("a", "b"):
                print(f"---- gateway {name} ----\n" + read_text(f.gateway_log(name))[-4000:])
            print("---- PostgreSQL ----\n" + db.log()[-2000:])


def _logs(clients: list[Client]) -> str:
    return "\n".join(f"---- client {c.index} ----\n{read_text(c.log)[-1500:]}" for c in clients)


def test_two_gateways_share_one_pool_fail_over_and_clean_up_after_a_crash(fleet: Fleet) -> None:
    began = time.monotonic()
    fleet.start_gateway("a")
    fleet.start_gateway("b")
    clients = [fleet.start_client(i, "a" if i % 2 else "b") for i in range(1, CLIENTS + 1)]
    try:
        for c in clients:
            wait_for_line(c.log, "IPsec SA pair(s) up", c.proc, 60, f"client {c.index}")
        for c in clients:
            wait_for(c.ping, 15, f"a ping through client {c.index}'s tunnel")

        # ---- one pool across both gateways: six different addresses, as the database says
        got = {c.user: c.address() for c in clients}
        assert None not in got.values(), _logs(clients)
        addresses = {user: str(address) for user, address in got.items()}
        assert len(set(addresses.values())) == CLIENTS, addresses
        sql_pool = {str(IPv4Address(POOL_FIRST) + i) for i in range(POOL_SIZE)}
        assert set(addresses.values()) <= sql_pool, addresses  # from FreeRADIUS, not a gateway's pool
        sessions = fleet.open_sessions()
        assert len(sessions) == CLIENTS, sessions
        by_user = {user: (nas, framed) for _sid, user, nas, framed in sessions}
        for c in clients:
            assert by_user[c.user] == (GW[c.first], addresses[c.user]), (c.user, by_user, addresses)
        leases = fleet.held_leases()
        assert sorted(lease[0] for lease in leases) == sorted(addresses.values()), leases
        assert {lease[1] for lease in leases} == {GW["a"], GW["b"]}
        # the pool key: the session's Acct-Session-Id, sent in its Access-Request already
        assert {lease[2] for lease in leases} == {sid for sid, *_ in sessions}, (leases, sessions)
        started = fleet.db_now()

        # ---- Interim-Updates keep the 10 s leases alive
        time.sleep(LEASE + 2 * INTERIM)
        leases = fleet.held_leases()
        assert sorted(lease[0] for lease in leases) == sorted(addresses.values()), (
            f"leases lapsed {fleet.db_now() - started:.0f} s after the Starts: {leases}"
        )
        updated = fleet.db.rows(
            "SELECT username FROM radacct WHERE acctstoptime IS NULL AND acctupdatetime > acctstarttime"
        )
        assert len(updated) == CLIENTS, updated

        # ---- gateway A dies without a word; its clients fail over to B
        on_a = [c for c in clients if c.first == "a"]
        stale = {sid for sid, _user, nas, _framed in fleet.open_sessions() if nas == GW["a"]}
        assert len(stale) == len(on_a)
        fleet.gateways["a"].kill()
        fleet.gateways["a"].wait(5)
        killed = fleet.db_now()
        for c in on_a:
            wait_for(
                lambda c=c: c.connections() >= 2 or c.proc.poll() is not None,
                90,
                f"client {c.index} to reconnect to gateway B",
            )
            assert c.proc.poll() is None, _logs([c])
            wait_for(c.ping, 15, f"a ping through client {c.index}'s new tunnel (gateway B)")
        open_now = fleet.open_sessions()
        on_b = {user: (sid, framed) for sid, user, nas, framed in open_now if nas == GW["b"]}
        for c in on_a:
            assert c.user in on_b, open_now  # a Start row from B for the new session
            assert on_b[c.user][1] == c.address()
        current = [c.address() for c in clients]
        assert len(set(current)) == CLIENTS, current
        # the dead gateway's sessions stay open in radacct: nobody told FreeRADIUS
        assert stale <= {sid for sid, *_ in open_now}

        # ---- gateway A restarts: its Accounting-On closes them and frees their leases
        wait_for(lambda: fleet.db_now() - killed > LEASE + 2, LEASE + 5, "the dead sessions' leases to lapse")
        before_on = fleet.db_now()
        fleet.start_gateway("a")  # "gateway ready" comes after the Accounting-On was answered
        closed = fleet.db.rows(
            "SELECT acctsessionid, acctterminatecause FROM radacct WHERE host(nasipaddress) = "
            f"'{GW['a']}' AND acctstoptime IS NOT NULL"
        )
        assert {sid for sid, _ in closed} == stale, closed
        assert {cause for _, cause in closed} == {"NAS-Reboot"}
        cleared = fleet.db.rows(
            "SELECT host(framedipaddress), EXTRACT(EPOCH FROM expiry_time) FROM radippool "
            f"WHERE nasipaddress = '{GW['a']}'"
        )
        assert len(cleared) == len(stale), cleared
        for address, expiry in cleared:
            # on_clear set it to the Accounting-On's time - 1 s; lapsing would have left it at
            # the last Interim-Update + 10 s, before the kill + 12 s
            assert float(expiry) >= before_on - 2, (address, expiry, before_on)
        for c in clients:  # nobody was moved back or cut off by A's return
            wait_for(c.ping, 10, f"a ping through client {c.index} after gateway A came back")
        assert [c.connections() for c in clients] == [2 if c.first == "a" else 1 for c in clients]

        # ---- a client that leaves gets a Stop row; B stopped cleanly sends Accounting-Off
        leaving = clients[1]
        stop_process(leaving.proc)
        wait_for(
            lambda: bool(
                fleet.db.rows(
                    f"SELECT 1 FROM radacct WHERE username = '{leaving.user}' AND acctstoptime IS NOT NULL "
                    "AND acctterminatecause = 'User-Request'"
                )
            ),
            10,
            "the Stop row of the client that disconnected",
        )
        stop_process(fleet.gateways["b"])
        assert "RADIUS Accounting-Off sent" in read_text(fleet.gateway_log("b"))
        assert not [row for row in fleet.open_sessions() if row[2] == GW["b"]], fleet.open_sessions()
        took = time.monotonic() - began
        print(f"fleet test: {CLIENTS} clients, failover and Accounting-On in {took:.0f} s")
    finally:
        for c in clients:
            stop_process(c.proc)
