"""A fleet's shared state for tests: a PostgreSQL cluster of its own and a FreeRADIUS that keeps
users, the address pool (rlm_sqlippool) and accounting (rlm_sql, radacct) in it.

``postgres_cluster`` runs ``initdb`` and ``pg_ctl`` (PostgreSQL 15, Debian's
``/usr/lib/postgresql/15/bin``) as the ``postgres`` user in a fresh directory, listening only
on a Unix socket in that directory (no TCP), loads FreeRADIUS's own PostgreSQL schemas (the
``sql`` module's radacct and the ``sqlippool`` module's radippool, from
``/etc/freeradius/3.0/mods-config/sql/``) and fills the pool; it always stops the cluster and
removes the directory. ``write_freeradius_config`` writes a FreeRADIUS configuration that uses
Debian's stock PostgreSQL queries for both modules (``queries.conf``) with the pool key this
project documents (docs/scale-out.md): ``Acct-Session-Id``, which the tunvpn-radius plugin
sends in the Access-Request and in every Accounting-Request of the session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MODCONF = Path("/etc/freeradius/3.0/mods-config")
SQL_SCHEMA = MODCONF / "sql" / "main" / "postgresql" / "schema.sql"
IPPOOL_SCHEMA = MODCONF / "sql" / "ippool" / "postgresql" / "schema.sql"
RLM_SQL_POSTGRESQL = Path("/usr/lib/freeradius/rlm_sql_postgresql.so")
DATABASE = "radius"
POOL_NAME = "fleet"
SECRET = "fleet-test-secret-Hq3x9Vb2"  # a public test secret


def fleet_unavailable_reason() -> str | None:
    """Why the fleet's shared state cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return "needs PostgreSQL 15 (apt-get install postgresql)"
    if not RLM_SQL_POSTGRESQL.exists() or not IPPOOL_SCHEMA.exists():
        return "needs FreeRADIUS's PostgreSQL driver (apt-get install freeradius-postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "needs the postgres user (made by the postgresql package)"
    if os.geteuid() != 0:
        return "needs root (to run PostgreSQL as the postgres user)"
    return None


def require_fleet() -> None:
    reason = fleet_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
        pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Postgres:
    """A running cluster: its directory (the Unix socket is in it too)."""

    directory: Path

    @property
    def socket_dir(self) -> str:
        return str(self.directory)

    def psql(self, sql: str, *, database: str = DATABASE, file: Path | None = None) -> str:
        """Run SQL (or a file of it) as the postgres superuser; the rows, ``|`` between columns."""
        argv = [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"]
        argv += ["-h", self.socket_dir, "-U", "postgres", "-d", database]
        argv += ["-f", str(file)] if file is not None else ["-c", sql]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql or file!s:.200}: {result.stderr.strip()}")
        return result.stdout

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("|") for line in self.psql(sql).splitlines() if line]

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _as_postgres(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60, check=True
    )


@contextlib.contextmanager
def postgres_cluster(pool_first: str, pool_size: int) -> Iterator[Postgres]:
    """A PostgreSQL cluster with the ``radius`` database, FreeRADIUS's schemas and the pool
    ``fleet`` of ``pool_size`` addresses from ``pool_first``; stopped and removed afterwards."""
    require_fleet()
    # not under pytest's tmp_path: its parents are 0700 root, closed to the postgres user
    directory = Path(tempfile.mkdtemp(prefix="tunvpn-pg-"))
    postgres = pwd.getpwnam("postgres")
    os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    data = directory / "data"
    started = False
    try:
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        options = f"-k {directory} -c listen_addresses='' -c fsync=off"
        log = str(directory / "postgres.log")
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start"])
        started = True
        db = Postgres(directory)
        db.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        db.psql("", file=SQL_SCHEMA)
        db.psql("", file=IPPOOL_SCHEMA)
        first = int(IPv4Address(pool_first))
        free = "'now'::timestamp(0) - interval '1 hour'"  # the default, NOW(), is not yet free
        values = ", ".join(f"('{POOL_NAME}', '{IPv4Address(first + i)}', {free})" for i in range(pool_size))
        db.psql(f"INSERT INTO radippool (pool_name, framedipaddress, expiry_time) VALUES {values}")
        yield db
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(directory, ignore_errors=True)


RADIUSD_CONF = """\
# FreeRADIUS for tests/interop/test_fleet.py (written by tests/helpers/fleet.py)
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
raddbdir = {dir}
confdir = {dir}
modconfdir = {modconf}
logdir = {dir}/log
radacctdir = {dir}/acct
run_dir = {dir}/run
db_dir = {dir}
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = ${{run_dir}}/radiusd.pid
name = freeradius
max_request_time = 10
cleanup_delay = 2
max_requests = 1024
hostname_lookups = no

log {{
	destination = stdout
	colourise = no
	auth = yes
}}

security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}}

thread pool {{
	start_servers = 2
	max_servers = 4
	min_spare_servers = 1
	max_spare_servers = 4
	max_requests_per_server = 0
}}

client gateways {{
	ipaddr = {clients}
	secret = {secret}
	require_message_authenticator = yes
	shortname = fleet
}}

modules {{
	expr {{
	}}
	always ok {{
		rcode = ok
	}}
	pap {{
	}}
	files {{
		filename = ${{confdir}}/users
	}}
	sql {{
		dialect = "postgresql"
		driver = "rlm_sql_postgresql"
		postgresql {{
			send_application_name = yes
		}}
		radius_db = "host={socket_dir} dbname={database} user=postgres"
		acct_table1 = "radacct"
		acct_table2 = "radacct"
		postauth_table = "radpostauth"
		authcheck_table = "radcheck"
		groupcheck_table = "radgroupcheck"
		authreply_table = "radreply"
		groupreply_table = "radgroupreply"
		usergroup_table = "radusergroup"
		delete_stale_sessions = yes
		pool {{
			start = 1
			min = 1
			max = 4
			spare = 2
			uses = 0
			retry_delay = 1
			lifetime = 0
			idle_timeout = 60
		}}
		client_table = "nas"
		group_attribute = "SQL-Group"
		$INCLUDE ${{modconfdir}}/sql/main/${{dialect}}/queries.conf
	}}
	sqlippool {{
		sql_module_instance = "sql"
		dialect = "postgresql"
		pool_name = "Pool-Name"
		ippool_table = "radippool"
		lease_duration = {lease}
		attribute_name = Framed-IP-Address
		req_attribute_name = Framed-IP-Address
		# the lease key: the session (Acct-Session-Id, the ISAKMP SA id) of one gateway
		# (NAS-IP-Address, which every query below adds)
		pool_key = "%{{Acct-Session-Id}}"
		$INCLUDE ${{modconfdir}}/sql/ippool/${{dialect}}/queries.conf
	}}
}}

server fleet {{
	listen {{
		type = auth
		ipaddr = *
		port = 1812
	}}
	listen {{
		type = acct
		ipaddr = *
		port = 1813
	}}

	authorize {{
		files
		pap
		update control {{
			&Pool-Name := "{pool}"
		}}
	}}

	authenticate {{
		Auth-Type PAP {{
			pap
		}}
	}}

	post-auth {{
		sqlippool
		update reply {{
			&Message-Authenticator := 0x00000000000000000000000000000000
		}}
		Post-Auth-Type REJECT {{
			update reply {{
				&Framed-IP-Address !* ANY
				&Message-Authenticator := 0x00000000000000000000000000000000
			}}
		}}
	}}

	preacct {{
		# radacct's AcctUniqueId is UNIQUE: one gateway's session (policy.d's acct_unique)
		update request {{
			&Acct-Unique-Session-Id := "%{{md5:%{{NAS-IP-Address}} %{{NAS-Identifier}} %{{Acct-Session-Id}}}}"
		}}
	}}

	accounting {{
		sql
		sqlippool
		update reply {{
			&Message-Authenticator := 0x00000000000000000000000000000000
		}}
		ok
	}}
}}
"""


def write_freeradius_config(
    directory: Path, db: Postgres, users: dict[str, str], *, clients: str, lease_duration: int
) -> None:
    """A FreeRADIUS configuration in ``directory``: ``users`` (name -> password) in a files
    module, addresses from the ``fleet`` pool of ``db`` (sqlippool, ``lease_duration`` s),
    accounting into ``db``'s radacct; RADIUS clients from the ``clients`` network."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("log", "acct", "run"):
        (directory / sub).mkdir(exist_ok=True)
    (directory / "radiusd.conf").write_text(
        RADIUSD_CONF.format(
            dir=directory,
            modconf=MODCONF,
            clients=clients,
            secret=SECRET,
            socket_dir=db.socket_dir,
            database=DATABASE,
            lease=lease_duration,
            pool=POOL_NAME,
        )
    )
    (directory / "users").write_text(
        "".join(f'{name}\tCleartext-Password := "{password}"\n' for name, password in users.items())
    )
    for path in directory.rglob("*"):  # FreeRADIUS refuses world-writable configuration
        path.chmod(0o700 if path.is_dir() else 0o600)
    directory.chmod(0o700)


@dataclass
class FleetRadius:
    """A running FreeRADIUS of the fleet and its output."""

    process: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread | None = None

    def log(self) -> str:
        return "".join(self.lines)


def start_fleet_freeradius(directory: Path, netns: str | None = None) -> FleetRadius:
    """Start FreeRADIUS on ``directory``'s configuration (in ``netns``), ready once it says so."""
    binary = shutil.which("freeradius") or "/usr/sbin/freeradius"
    argv = [binary, "-f", "-d", str(directory), "-l", "stdout"]
    if os.environ.get("TUNVPN_RADIUS_DEBUG") == "1":
        argv.append("-X")
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    server = FleetRadius(process, [])
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line)
            if "Ready to process requests" in line:
                ready.set()

    server.reader = threading.Thread(target=read, name="fleet-freeradius-log", daemon=True)
    server.reader.start()
    deadline = time.monotonic() + 20
    while not ready.is_set():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_fleet_freeradius(server)
            pytest.fail(f"FreeRADIUS did not start:\n{server.log()}", pytrace=False)
        time.sleep(0.05)
    return server


def stop_fleet_freeradius(server: FleetRadius) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)
    if server.reader is not None:
        server.reader.join(5)  # it reads to the end of the output, then the pipe can close
    if server.process.stdout is not None and (server.reader is None or not server.reader.is_alive()):
        server.process.stdout.close()
