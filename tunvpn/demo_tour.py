"""``tunvpn demo``: the whole of tunvpn on one machine, in three network namespaces.

    client (10.77.0.2) --veth-- gateway (10.77.0.1 | 10.78.0.1, 10.78.1.1, 10.78.2.1, 10.20.0.1)
                                        --veth-- server (10.78.0.10, 10.78.1.10, 10.78.2.10, 10.20.0.10)

The gateway runs the built-in configuration (:data:`tunvpn.gwconfig.DEFAULT_GATEWAY_TOML`:
policies ``net-a``, ``net-b`` and, for the group ``eng``, ``eng``); the client gets a three-line
profile (gateway, PSK file, user) and learns everything else through Mode Config. Each phase
is printed from the client's ``--json`` records; then pings and a SHA-256-checked TCP
transfer go through the ESP tunnel, the gateway's policies change under a connected client
(``tunvpn reload``: ``net-b`` removed, ``net-c`` added) and the client follows. Everything it
made (namespaces with their veths and TUN devices, processes, the private temp dir) is
removed at the end, also after a failure, Ctrl-C or SIGTERM, and that is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tunvpn.demo import child_env, missing_requirements, private_file, report_missing
from tunvpn.gwconfig import (
    BUILT_IN,
    ConfigFileError,
    GatewayConfig,
    default_gateway_toml,
    parse_gateway_config,
)
from tunvpn.ike.constants import DHGroup

COMMAND = "demo"
NAME_PREFIX = "tvm"
"""Namespaces are ``tvm<6 hex><role>``, veths ``tvm<6 hex><from><to>``: unique per run."""
GATEWAY_ADDR = "10.77.0.1"
CLIENT_ADDR = "10.77.0.2"
OUTER_PREFIX = 24
POOL = "10.79.0.10-10.79.0.20"
USER = "demo"
SINK_PORT = 5001
ENCAP_UDP_TUNNEL = 3  # RFC 3947 section 5.2: UDP-Encapsulated-Tunnel
LOG_TAIL = 15
"""Log lines of each daemon shown when a step fails."""

Record = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Subnet:
    """A protected network behind the gateway and the server's address in it."""

    policy: str
    network: str
    gateway_ip: str
    server_ip: str

    @property
    def prefixlen(self) -> str:
        return self.network.rsplit("/", 1)[1]


SUBNETS = (
    Subnet("net-a", "10.78.0.0/24", "10.78.0.1", "10.78.0.10"),
    Subnet("net-b", "10.78.1.0/24", "10.78.1.1", "10.78.1.10"),
    Subnet("net-c", "10.78.2.0/24", "10.78.2.1", "10.78.2.10"),
    Subnet("eng", "10.20.0.0/16", "10.20.0.1", "10.20.0.10"),
)
BY_POLICY = {s.policy: s for s in SUBNETS}
REMOVED, ADDED = "net-b", "net-c"
ADDED_POLICY = f"""
[[policy]]
name = "{ADDED}"
local = "{BY_POLICY[ADDED].network}"
esp = "chacha20poly1305"
pfs = "ecp384"
"""


class DemoError(Exception):
    """A step of the demo failed; ``step`` names it."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


class Console:
    """Numbered sections and indented lines on stdout; remembers the step in progress."""

    def __init__(self) -> None:
        self.step = "start"
        self.number = 0

    def section(self, title: str) -> None:
        self.number += 1
        self.step = title
        print(f"\n== {self.number}. {title} ==", flush=True)

    def say(self, text: str, indent: int = 1) -> None:
        print("  " * indent + text, flush=True)

    def error(self, message: str) -> DemoError:
        return DemoError(self.step, message)


# --------------------------------------------------------------------------- the network


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _ip_lines(*args: str) -> list[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.splitlines()


class Topology:
    """The client, gateway and server namespaces and the two veth pairs between them."""

    def __init__(self) -> None:
        self.tag = NAME_PREFIX + secrets.token_hex(3)
        self.client, self.gateway, self.server = (self.tag + role for role in "cgs")
        self.namespaces: list[str] = []
        self.veths: list[str] = []

    def create(self) -> None:
        for ns in (self.client, self.gateway, self.server):
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        self._link(self.client, (f"{CLIENT_ADDR}/{OUTER_PREFIX}",), self.gateway, (f"{GATEWAY_ADDR}/24",))
        self._link(
            self.gateway,
            tuple(f"{s.gateway_ip}/{s.prefixlen}" for s in SUBNETS),
            self.server,
            tuple(f"{s.server_ip}/{s.prefixlen}" for s in SUBNETS),
        )
        _ip("-n", self.server, "route", "add", "default", "via", SUBNETS[0].gateway_ip)

    def _link(self, a: str, a_addrs: Sequence[str], b: str, b_addrs: Sequence[str]) -> None:
        dev_a, dev_b = self.tag + a[-1] + b[-1], self.tag + b[-1] + a[-1]
        _ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        self.veths += [dev_a, dev_b]
        for ns, dev, addrs in ((a, dev_a, a_addrs), (b, dev_b, b_addrs)):
            _ip("link", "set", dev, "netns", ns)
            for addr in addrs:
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def pids(self) -> dict[str, list[int]]:
        """Processes still running in our namespaces."""
        found = {}
        for ns in self.namespaces:
            pids = [int(p) for p in _ip_lines("netns", "pids", ns) if p.strip().isdigit()]
            if pids:
                found[ns] = pids
        return found

    def remove(self) -> list[str]:
        """Kill what still runs inside, delete the namespaces (their veths and TUN devices go
        with them) and any veth left in ours; what is still there afterwards, in words."""
        leftovers = []
        for ns, pids in self.pids().items():
            leftovers.append(f"{len(pids)} process(es) still running in {ns}: killed")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)
        for dev in self.veths:  # only there if a move into a namespace failed
            subprocess.run(["ip", "link", "del", dev], capture_output=True, check=False, timeout=30)
        left_ns = [line.split()[0] for line in _ip_lines("netns", "list") if line.startswith(self.tag)]
        left_links = [line for line in _ip_lines("-o", "link", "show") if self.tag in line]
        leftovers += [f"namespace {ns} is still there" for ns in left_ns]
        leftovers += [f"link still there: {line.split(':')[1].strip()}" for line in left_links]
        return leftovers


# --------------------------------------------------------------------------- processes


def _json_record(line: str) -> Record | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


async def _exec_in(
    ns: str, argv: Sequence[str], env: dict[str, str], *, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
    )


async def run_in(ns: str, argv: Sequence[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` in ``ns`` to completion: exit status, stdout, stderr."""
    proc = await _exec_in(ns, argv, env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def tunvpn_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunvpn", *args]


@dataclass
class Daemon:
    """A long-running process in a namespace: JSON records (``--json``) and log lines kept;
    log lines echoed with ``-v``."""

    name: str
    proc: asyncio.subprocess.Process
    verbose: bool
    records: list[Record] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    _cursor: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, name: str, ns: str, argv: Sequence[str], env: dict[str, str], verbose: bool
    ) -> Daemon:
        proc = await _exec_in(ns, argv, env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        daemon = cls(name, proc, verbose)
        assert proc.stdout is not None and proc.stderr is not None
        daemon._readers = [
            asyncio.ensure_future(daemon._read(proc.stdout)),
            asyncio.ensure_future(daemon._read(proc.stderr)),
        ]
        return daemon

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            record = _json_record(line)
            if record is not None:
                self.records.append(record)
            else:
                self.log.append(line)
                if self.verbose:
                    print(f"    {self.name} log | {line}", flush=True)
            self._changed.set()
        self._changed.set()

    @property
    def ended(self) -> bool:
        return all(reader.done() for reader in self._readers)

    async def _wait(self, check: Callable[[], T | None], what: str, timeout: float, console: Console) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            found = check()
            if found is not None:
                return found
            if self.ended:
                status = await self.proc.wait()
                raise console.error(f"the {self.name} exited (status {status}) before {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise console.error(f"no {what} within {timeout:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_log(self, text: str, what: str, timeout: float, console: Console) -> str:
        """The first log line containing ``text``."""
        return await self._wait(
            lambda: next((x for x in self.log if text in x), None), what, timeout, console
        )

    async def until(
        self, predicate: Callable[[Record], bool], what: str, timeout: float, console: Console
    ) -> list[Record]:
        """The records from the last match up to and including the next one that satisfies
        ``predicate``; a ``failed`` record on the way ends the step with its message."""

        def scan() -> list[Record] | None:
            for i in range(self._cursor, len(self.records)):
                record = self.records[i]
                if record.get("state") == "failed":
                    raise console.error(f"the {self.name} reports: {record.get('message')}")
                if predicate(record):
                    batch = self.records[self._cursor : i + 1]
                    self._cursor = i + 1
                    return batch
            return None

        return await self._wait(scan, what, timeout, console)

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the client deletes its SAs), SIGKILL if it does not exit in time."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers), 5)
        assert self.proc.returncode is not None
        return self.proc.returncode


def _event(event: str, state: str | None = None, name: str | None = None) -> Callable[[Record], bool]:
    def match(record: Record) -> bool:
        return (
            record.get("event") == event
            and (state is None or record.get("state") == state)
            and (name is None or record.get("name") == name)
        )

    return match


def _log_message(line: str) -> str:
    """A log line without its timestamp, level and logger name."""
    return re.sub(r"^\S+ \S+ [A-Z]+ \S+: ", "", line)


# --------------------------------------------------------------------------- network checks


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    avg_ms: float | None
    output: str

    def summary(self) -> str:
        rtt = f", rtt avg {self.avg_ms:.2f} ms" if self.avg_ms is not None else ""
        return f"{self.received}/{self.sent} replies{rtt}"


async def ping(ns: str, host: str, env: dict[str, str], count: int = 3) -> PingResult:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", host]
    _, out, err = await run_in(ns, argv, env, 30)
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    sent, received = (int(counts[1]), int(counts[2])) if counts else (count, 0)
    return PingResult(sent, received, float(rtt[1]) if rtt else None, (out + err).strip())


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Files:
    """What the demo writes into its private temp dir (0700; secret files 0600)."""

    workdir: Path
    gateway_toml: Path
    control: Path
    profile: Path
    password: Path

    @classmethod
    def write(cls, workdir: Path) -> tuple[Files, str]:
        """Fresh random secrets in their files; also the gateway TOML text."""
        psk = secrets.token_urlsafe(24)
        password = secrets.token_urlsafe(12)
        private_file(workdir / "gateway.psk", f"{psk}\n")
        private_file(workdir / "users", f"{USER}:{password}\n")
        private_file(workdir / "client.psk", f"{psk}\n")
        control = workdir / "gateway.sock"
        text = default_gateway_toml(
            listen=GATEWAY_ADDR,
            psk_file=workdir / "gateway.psk",
            users_file=workdir / "users",
            pool=POOL,
            net_a=BY_POLICY["net-a"].network,
            net_b=BY_POLICY["net-b"].network,
            net_eng=BY_POLICY["eng"].network,
            eng_users=(USER,),
        )
        text = with_control_socket(text, control)
        files = cls(
            workdir=workdir,
            gateway_toml=private_file(workdir / "gateway.toml", text),
            control=control,
            profile=private_file(
                workdir / "profile.toml",
                f'gateway = "{GATEWAY_ADDR}"\npsk_file = "client.psk"\nuser = "{USER}"\n',
            ),
            password=private_file(workdir / "client.password", f"{password}\n"),
        )
        return files, text


def with_control_socket(text: str, path: Path) -> str:
    """The gateway TOML with ``control_socket`` set in its ``[gateway]`` table (for
    ``tunvpn status`` and ``tunvpn reload``)."""
    header = "\n[gateway]\n"
    if header not in text:
        raise ValueError("the built-in gateway configuration has no [gateway] table")
    return text.replace(header, f"{header}control_socket = {json.dumps(str(path))}\n", 1)


def check_config(text: str, workdir: Path, console: Console) -> GatewayConfig:
    try:
        return parse_gateway_config(text, BUILT_IN, base_dir=workdir)
    except ConfigFileError as exc:
        raise console.error(f"the gateway configuration does not load: {exc}") from None


def changed_config(text: str) -> str:
    """The gateway TOML with the ``net-b`` policy removed and ``net-c`` appended."""
    head, *blocks = text.split("\n[[policy]]\n")
    kept = [b for b in blocks if f'name = "{REMOVED}"' not in b.splitlines()]
    return "\n[[policy]]\n".join([head, *kept]).rstrip("\n") + "\n" + ADDED_POLICY


def _audience(groups: Sequence[str], users: Sequence[str]) -> str:
    if not groups and not users:
        return "everyone"
    return ", ".join([*(f"group {g}" for g in groups), *(f"user {u}" for u in users)])


def show_policies(config: GatewayConfig, console: Console) -> None:
    for rule in config.rules:
        console.say(f"policy {rule.policy.describe()}  [for {_audience(rule.groups, rule.users)}]")


def _pfs_name(group: object) -> str:
    if not isinstance(group, int):
        return "no PFS"
    try:
        return f"PFS {DHGroup(group).name} (group {group})"
    except ValueError:
        return f"PFS group {group}"


def _sa_line(record: Record) -> str:
    encap = "ESP-in-UDP tunnel" if record.get("encapsulation") == ENCAP_UDP_TUNNEL else "ESP tunnel"
    return (
        f"{record.get('name')}: {record.get('local_ts')} === {record.get('remote_ts')}  "
        f"ESP {record.get('esp')}, {_pfs_name(record.get('pfs_group'))}, {encap}, "
        f"SPI in {record.get('spi_in')} out {record.get('spi_out')}"
    )


# --------------------------------------------------------------------------- the steps


@dataclass
class Tour:
    """One run of the demo: its network, files and processes."""

    args: argparse.Namespace
    console: Console
    topo: Topology
    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)
    files: Files | None = None
    gateway: Daemon | None = None
    client: Daemon | None = None
    up: dict[str, Record] = field(default_factory=dict)
    """The client's established SAs by policy name."""
    env: dict[str, str] = field(default_factory=child_env)
    """The children's environment; ``__post_init__`` points their run directory (state files,
    control sockets) into our temp dir, away from the host's ``/run/tunvpn``."""

    def __post_init__(self) -> None:
        self.env["TUNVPN_RUN_DIR"] = str(self.workdir)

    @property
    def timeout(self) -> float:
        return float(self.args.timeout)

    async def run(self) -> None:
        self.network()
        config_text = await self.start_gateway()
        await self.start_client()
        await self.phase1()
        await self.xauth()
        await self.modecfg()
        await self.quick_mode()
        await self.pings(sorted(self.up))
        await self.transfer()
        await self.policy_change(config_text)

    def network(self) -> None:
        c = self.console
        c.section("network")
        self.topo.create()
        c.say(f"client   namespace {self.topo.client}: {CLIENT_ADDR}/{OUTER_PREFIX}, nothing else configured")
        c.say(
            f"gateway  namespace {self.topo.gateway}: {GATEWAY_ADDR}/24 towards the client; "
            f"{', '.join(s.gateway_ip for s in SUBNETS)} towards the server; forwarding on"
        )
        c.say(f"server   namespace {self.topo.server}: {', '.join(s.server_ip for s in SUBNETS)}")
        c.say(f"files    {self.workdir} (mode 0700; secret files 0600)")

    async def start_gateway(self) -> str:
        c = self.console
        c.section("gateway")
        code, _, err = await run_in(
            self.topo.gateway,
            [sys.executable, "-c", "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')"],
            self.env,
            self.timeout,
        )
        if code != 0:
            raise c.error(f"cannot turn on forwarding in the gateway: {err.strip()}")
        self.files, text = Files.write(self.workdir)
        config = check_config(text, self.workdir, c)
        c.say(
            "built-in configuration (tunvpn.gwconfig.DEFAULT_GATEWAY_TOML) with a control socket, "
            "written to gateway.toml:"
        )
        c.say(f"pool {POOL}; XAUTH user {USER} (group eng); phase 1: every strong suite")
        show_policies(config, c)
        self.gateway = await self._daemon(
            "gateway",
            self.topo.gateway,
            ["gateway", "-c", str(self.files.gateway_toml)],
        )
        ready = await self.gateway.wait_log("gateway ready", "'gateway ready'", self.timeout, c)
        c.say(_log_message(ready))
        return text

    async def _daemon(self, name: str, ns: str, args: list[str]) -> Daemon:
        verbose = ["-v"] * max(0, self.args.verbose - 1)
        daemon = await Daemon.start(name, ns, tunvpn_argv(*args, *verbose), self.env, self.args.verbose > 0)
        self.daemons.append(daemon)
        return daemon

    async def start_client(self) -> None:
        c = self.console
        assert self.files is not None
        c.section("client")
        c.say("its whole configuration, profile.toml (the secret is in client.psk, not shown):")
        for line in self.files.profile.read_text().splitlines():
            c.say(line, indent=3)
        c.say(f"the XAUTH password comes from a private file (not shown); connecting to {GATEWAY_ADDR}")
        self.client = await self._daemon(
            "client",
            self.topo.client,
            [
                "connect",
                "-c",
                str(self.files.profile),
                "--password-file",
                str(self.files.password),
                "--json",
                "--dns-backend",
                "none",
                "--control",
                str(self.workdir / "client.sock"),
                "--timeout",
                str(self.timeout),
            ],
        )

    def _client(self) -> Daemon:
        assert self.client is not None
        return self.client

    async def phase1(self) -> None:
        c = self.console
        c.section("phase 1")
        client = self._client()
        [*_, done] = await client.until(_event("phase1", "established"), "phase 1", self.timeout, c)
        suite, _, auth = str(done.get("suite")).partition("/")
        c.say(f"{done.get('message')}")
        c.say(f"chosen suite: {suite} (encryption-hash-DH group), authentication {auth or 'unknown'}")
        c.say(
            "the client offered every suite it supports, strongest first; "
            "the gateway took the first one it allows"
        )

    async def xauth(self) -> None:
        c = self.console
        c.section("XAUTH")
        for record in await self._client().until(_event("xauth", "ok"), "XAUTH", self.timeout, c):
            c.say(str(record.get("message")))

    async def modecfg(self) -> None:
        c = self.console
        c.section("Mode Config")
        client = self._client()
        [*_, got] = await client.until(
            _event("modecfg", "received"), "the Mode Config reply", self.timeout, c
        )
        dns = ", ".join(got.get("dns") or []) or "none"
        c.say(f"address {got.get('address')}; DNS {dns} (not applied: --dns-backend none)")
        batch = await client.until(_event("quick", "started"), "the pushed policies", self.timeout, c)
        policies = [r for r in batch if r.get("event") == "policy"]
        if not policies:
            raise c.error("the gateway pushed no phase 2 policy")
        c.say(f"pushed phase 2 policies (generation {policies[0].get('generation')}):")
        for record in policies:
            c.say(str(record.get("message")), indent=2)

    async def quick_mode(self) -> None:
        c = self.console
        c.section("Quick Mode")
        batch = await self._client().until(
            _event("established", "up"), "every Quick Mode SA", self.timeout, c
        )
        for record in batch:
            if _event("quick", "established")(record):
                self.up[str(record.get("name"))] = record
                c.say(_sa_line(record))
        c.say(str(batch[-1].get("message")))

    async def pings(self, policies: Sequence[str]) -> None:
        c = self.console
        c.section("ping through the tunnel")
        for name in policies:
            subnet = BY_POLICY.get(name)
            if subnet is None:
                continue
            result = await ping(self.topo.client, subnet.server_ip, self.env)
            c.say(f"{subnet.server_ip} ({name}, {subnet.network}): {result.summary()}")
            if result.received == 0:
                raise c.error(f"no reply from {subnet.server_ip} through SA {name}:\n{result.output}")

    async def transfer(self, size: int | None = None) -> None:
        c = self.console
        c.section("data transfer")
        size = size or int(self.args.transfer_mb * (1 << 20))
        target = BY_POLICY["net-a"].server_ip
        sink = await _exec_in(
            self.topo.server,
            [sys.executable, "-m", "tunvpn.demo_traffic", "sink", target, str(SINK_PORT)],
            self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert sink.stdout is not None
            line = await asyncio.wait_for(sink.stdout.readline(), self.timeout)
            if b"listening" not in line:
                raise c.error(f"the sink on the server did not start: {line.decode(errors='replace')}")
            code, out, err = await run_in(
                self.topo.client,
                [sys.executable, "-m", "tunvpn.demo_traffic", "send", target, str(SINK_PORT), str(size)],
                self.env,
                self.timeout + 60,
            )
            if code != 0:
                raise c.error(f"the transfer to {target} failed: {err.strip() or out.strip()}")
            self._show_transfer(json.loads(out), target)
        finally:
            with contextlib.suppress(ProcessLookupError):
                sink.kill()
            await sink.wait()

    def _show_transfer(self, result: Record, target: str) -> None:
        c = self.console
        sent, seconds = int(result["sent"]), float(result["seconds"])
        mbits = sent * 8 / seconds / 1e6 if seconds > 0 else float("inf")
        c.say(
            f"{sent / (1 << 20):.1f} MiB of random data over TCP to {target}:{SINK_PORT} (SA net-a) "
            f"in {seconds:.2f} s: {mbits:.0f} Mbit/s"
        )
        if result["received"] != sent or result["received_sha256"] != result["sha256"]:
            raise c.error(
                f"the server received {result['received']} bytes with SHA-256 "
                f"{result['received_sha256']}, sent {sent} with {result['sha256']}"
            )
        c.say(f"SHA-256 {result['sha256'][:16]}... verified: the server got every byte intact")

    async def gateway_status(self) -> dict[str, Record]:
        """The gateway's SAs by name, from ``tunvpn status --json`` over its control socket."""
        assert self.files is not None
        argv = tunvpn_argv("status", "--socket", str(self.files.control), "--json")
        code, out, err = await run_in(self.topo.gateway, argv, self.env, self.timeout)
        if code != 0:
            raise self.console.error(f"tunvpn status failed: {err.strip()}")
        status = json.loads(out)
        return {
            str(sa.get("name")): sa for tunnel in status.get("tunnels", []) for sa in tunnel.get("sas", [])
        }

    async def policy_change(self, text: str) -> None:
        c = self.console
        assert self.files is not None
        c.section("live policy change")
        before = await self.gateway_status()
        c.say(
            "gateway's SAs now (tunvpn status): "
            + ", ".join(f"{n} {sa['spi_in']}" for n, sa in before.items())
        )
        new_text = changed_config(text)
        config = check_config(new_text, self.workdir, c)
        names = [rule.policy.name for rule in config.rules]
        if REMOVED in names or ADDED not in names:
            raise c.error(f"the changed configuration has policies {names}")
        private_file(self.files.gateway_toml, new_text)
        c.say(f"gateway.toml rewritten: policy {REMOVED} removed, policy {ADDED} added:")
        show_policies(config, c)
        await self._reload()
        await self._follow_update()
        await self._check_unchanged(before)
        await self.pings([ADDED])
        await self._check_removed()

    async def _reload(self) -> None:
        c = self.console
        assert self.files is not None
        argv = tunvpn_argv("reload", "--socket", str(self.files.control))
        code, out, err = await run_in(self.topo.gateway, argv, self.env, self.timeout)
        c.say("$ tunvpn reload --socket gateway.sock")
        for line in out.splitlines():
            c.say(line, indent=2)
        if code != 0:
            raise c.error(f"tunvpn reload failed (status {code}): {err.strip()}")

    async def _follow_update(self) -> None:
        c = self.console
        client = self._client()
        [*_, update] = await client.until(_event("update"), "the client's update", self.timeout, c)
        c.say(f"client: {update.get('message')}")
        for key in ("added", "changed", "removed", "unchanged"):
            c.say(f"{key:9} {', '.join(update.get(key) or []) or '-'}", indent=2)
        batch = await client.until(_event("established", "up"), f"the {ADDED} SA", self.timeout, c)
        for record in batch:
            if _event("quick", "deleted")(record):
                self.up.pop(str(record.get("name")), None)
                c.say(f"client: {record.get('message')} (SA deleted)")
            elif _event("quick", "established")(record):
                self.up[str(record.get("name"))] = record
                c.say("client: new SA " + _sa_line(record))
        if ADDED not in self.up or REMOVED in self.up:
            raise c.error(f"the client's SAs after the update: {sorted(self.up)}")

    async def _check_unchanged(self, before: dict[str, Record]) -> None:
        c = self.console
        after = await self.gateway_status()
        kept = [n for n in before if n != REMOVED]
        replaced = [n for n in kept if after.get(n, {}).get("spi_in") != before[n].get("spi_in")]
        if replaced or REMOVED in after or ADDED not in after:
            raise c.error(f"gateway's SAs after the reload: {sorted(after)} (replaced: {replaced})")
        c.say(f"gateway's SAs now: {', '.join(sorted(after))}; {', '.join(kept)} kept their SPIs (untouched)")

    async def _check_removed(self) -> None:
        c = self.console
        host = BY_POLICY[REMOVED].server_ip
        result = await ping(self.topo.client, host, self.env, count=1)
        if result.received:
            raise c.error(f"{host} ({REMOVED}) still answers after its policy was removed")
        c.say(f"{host} ({REMOVED}): no reply, as it should be: no SA and no route any more")

    async def stop(self) -> list[str]:
        """Stop the client (it deletes its SAs), then the gateway; a line for each."""
        lines = []
        for daemon in sorted(self.daemons, key=lambda d: d.name != "client"):
            status = await daemon.stop()
            closed = [r for r in daemon.records if r.get("event") == "closed"]
            note = f"; {closed[-1].get('message')}" if closed else ""
            how = f"exit status {status}" if status >= 0 else f"killed by {signal.Signals(-status).name}"
            lines.append(f"{daemon.name} stopped ({how}){note}")
        self.daemons.clear()
        return lines

    def log_tails(self) -> list[str]:
        lines = []
        for daemon in self.daemons:
            if daemon.log:
                lines.append(f"last lines of the {daemon.name}'s log:")
                lines += [f"    {line}" for line in daemon.log[-LOG_TAIL:]]
        return lines


# --------------------------------------------------------------------------- running it


@dataclass
class Outcome:
    """How the steps ended: the exit status, what to say last, the daemons' stop lines."""

    code: int = 0
    message: str | None = None
    stopped: list[str] = field(default_factory=list)


async def _run_tour(tour: Tour) -> Outcome:
    """The steps, then the processes stopped (also when a step fails or we are interrupted)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated: list[int] = []

    def on_sigterm() -> None:
        terminated.append(signal.SIGTERM)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    outcome = Outcome()
    try:
        await tour.run()
    except DemoError as exc:
        outcome = Outcome(1, f"FAILED at step '{exc.step}': {exc.message}")
    except (RuntimeError, OSError, ValueError, KeyError) as exc:  # `ip` of the set-up, a helper's output
        outcome = Outcome(1, f"FAILED at step '{tour.console.step}': {type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        task.uncancel()
        signum = terminated[0] if terminated else signal.SIGINT
        outcome = Outcome(
            128 + signum, f"interrupted ({signal.Signals(signum).name}) during step '{tour.console.step}'"
        )
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if outcome.code == 1:
            for line in tour.log_tails():
                print(line, file=sys.stderr, flush=True)
        outcome.stopped = await asyncio.shield(tour.stop())
    return outcome


def cleanup(tour: Tour, stopped: Sequence[str]) -> bool:
    """Remove the namespaces and the temp dir and say what was removed; False if anything is left."""
    c = tour.console
    c.section("cleanup")
    for line in stopped:
        c.say(line)
    leftovers = tour.topo.remove()
    shutil.rmtree(tour.workdir, ignore_errors=True)
    if tour.workdir.exists():
        leftovers.append(f"{tour.workdir} is still there")
    if tour.topo.namespaces:
        c.say(f"namespaces {', '.join(tour.topo.namespaces)} deleted, with their veths and TUN devices")
    c.say(f"temp dir {tour.workdir} removed")
    for line in leftovers:
        c.say(f"LEFT BEHIND: {line}")
    if not leftovers:
        c.say(f"checked: no namespace, link or process named {tour.topo.tag}* is left")
    return not leftovers


def run_tour(args: argparse.Namespace) -> int:
    """``tunvpn demo``: 0 every step passed, 1 a step failed (named), 2 missing requirements,
    130 Ctrl-C, 143 SIGTERM."""
    missing = missing_requirements(COMMAND, need_tun=True, need_ping=True)
    if missing:
        return report_missing(COMMAND, missing)
    tour = Tour(args, Console(), Topology(), Path(tempfile.mkdtemp(prefix="tunvpn-demo-")))
    outcome = Outcome(130, f"interrupted (SIGINT) during step '{tour.console.step}'")
    try:
        outcome = asyncio.run(_run_tour(tour))
    except KeyboardInterrupt:  # a second Ctrl-C: whatever still runs in the namespaces is killed
        outcome = Outcome(130, f"interrupted (SIGINT) during step '{tour.console.step}'")
    finally:
        clean = cleanup(tour, outcome.stopped)
    if outcome.code == 0 and not clean:
        outcome = Outcome(1, "FAILED at step 'cleanup': something was left behind (above)")
    if outcome.code == 0:
        print("\ndemo: every step passed", flush=True)
    else:
        print(f"\ndemo: {outcome.message}", file=sys.stderr, flush=True)
    return outcome.code


__all__ = ["SUBNETS", "Subnet", "Topology", "changed_config", "run_tour"]
