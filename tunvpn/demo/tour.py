"""``tunvpn demo``: the whole of tunvpn on one machine, in three network namespaces.

    client (10.77.0.2) --veth-- gateway (10.77.0.1 | 10.78.0.1, 10.78.1.1, 10.78.2.1, 10.20.0.1)
                                        --veth-- server (10.78.0.10, 10.78.1.10, 10.78.2.10, 10.20.0.10)

The gateway runs the built-in configuration (:data:`tunvpn.config.gateway.DEFAULT_GATEWAY_TOML`:
policies ``net-a``, ``net-b`` and, for the group ``eng``, ``eng``); the client gets a three-line
profile (gateway, PSK file, user) and learns everything else through Mode Config. Each phase
is printed from the client's ``--json`` records; then pings and a SHA-256-checked TCP
transfer go through the ESP tunnel, the gateway's policies change under a connected client
(``tunvpn reload``: ``net-b`` removed, ``net-c`` added) and the client follows. Everything it
made (namespaces with their veths and TUN devices, processes, the private temp dir) is
removed at the end, also after a failure, Ctrl-C or SIGTERM, and that is checked.

With ``--peers`` a second client joins from a fourth namespace (10.77.1.2, reached through the
gateway namespace, which routes between its two links as any router would), a ``[[peering]]``
rule is added by ``tunvpn reload``, the gateway introduces the two clients to each other, they
build a direct tunnel and ping each other by their inner addresses over it (issue 17).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunvpn.config.gateway import (
    BUILT_IN,
    ConfigFileError,
    GatewayConfig,
    default_gateway_toml,
    parse_gateway_config,
)
from tunvpn.demo.ike import child_env, missing_requirements, private_file, report_missing
from tunvpn.demo.netns import (
    Daemon,
    Record,
    StepFailed,
    Topology,
    event_is,
    exec_in,
    log_message,
    ping,
    run_in,
    tunvpn_argv,
)
from tunvpn.ike.constants import DHGroup
from tunvpn.untrusted import for_terminal

COMMAND = "demo"
NAME_PREFIX = "tvm"
"""Namespaces are ``tvm<6 hex><role>``, veths ``tvm<6 hex><from><to>``: unique per run."""
GATEWAY_ADDR = "10.77.0.1"
CLIENT_ADDR = "10.77.0.2"
OUTER_PREFIX = 24
POOL = "10.79.0.10-10.79.0.20"
USER = "demo"
PEER_USER = "demo2"
PEER_ADDR, PEER_ROUTER = "10.77.1.2", "10.77.1.1"
PEERING = """
[[peering]]
name = "everyone"
from = "*"
to = "*"
"""
SINK_PORT = 5001
ENCAP_UDP_TUNNEL = 3  # RFC 3947 section 5.2: UDP-Encapsulated-Tunnel
LOG_TAIL = 15
"""Log lines of each daemon shown when a step fails."""


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
        # texts quote the client's JSON records, i.e. what the gateway sent (banner, messages)
        print("  " * indent + for_terminal(text), flush=True)


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


def check_config(text: str, workdir: Path) -> GatewayConfig:
    try:
        return parse_gateway_config(text, BUILT_IN, base_dir=workdir)
    except ConfigFileError as exc:
        raise StepFailed(f"the gateway configuration does not load: {exc}") from None


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
    def client_ns(self) -> str:
        return self.topo.tag + "c"

    @property
    def gateway_ns(self) -> str:
        return self.topo.tag + "g"

    @property
    def server_ns(self) -> str:
        return self.topo.tag + "s"

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
        new_text = await self.policy_change(config_text)
        if getattr(self.args, "peers", False):
            await self.peers(new_text)

    def network(self) -> None:
        c = self.console
        c.section("network")
        client, gateway, server = (self.topo.add_ns(role) for role in "cgs")
        self.topo.link(client, [f"{CLIENT_ADDR}/{OUTER_PREFIX}"], gateway, [f"{GATEWAY_ADDR}/{OUTER_PREFIX}"])
        self.topo.link(
            gateway,
            [f"{s.gateway_ip}/{s.prefixlen}" for s in SUBNETS],
            server,
            [f"{s.server_ip}/{s.prefixlen}" for s in SUBNETS],
        )
        self.topo.route(server, "default", "via", SUBNETS[0].gateway_ip)
        c.say(f"client   namespace {self.client_ns}: {CLIENT_ADDR}/{OUTER_PREFIX}, nothing else configured")
        c.say(
            f"gateway  namespace {self.gateway_ns}: {GATEWAY_ADDR}/24 towards the client; "
            f"{', '.join(s.gateway_ip for s in SUBNETS)} towards the server; forwarding on"
        )
        c.say(f"server   namespace {self.server_ns}: {', '.join(s.server_ip for s in SUBNETS)}")
        c.say(f"files    {self.workdir} (mode 0700; secret files 0600)")

    async def start_gateway(self) -> str:
        c = self.console
        c.section("gateway")
        code, _, err = await run_in(
            self.gateway_ns,
            [sys.executable, "-c", "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')"],
            self.env,
            self.timeout,
        )
        if code != 0:
            raise StepFailed(f"cannot turn on forwarding in the gateway: {err.strip()}")
        self.files, text = Files.write(self.workdir)
        config = check_config(text, self.workdir)
        c.say(
            "built-in configuration (tunvpn.config.gateway.DEFAULT_GATEWAY_TOML) with a control socket, "
            "written to gateway.toml:"
        )
        c.say(f"pool {POOL}; XAUTH user {USER} (group eng); phase 1: every strong suite")
        show_policies(config, c)
        self.gateway = await self._daemon(
            "gateway",
            self.gateway_ns,
            ["gateway", "-c", str(self.files.gateway_toml)],
        )
        ready = await self.gateway.wait_log("gateway ready", "'gateway ready'", self.timeout)
        c.say(log_message(ready))
        return text

    async def _daemon(self, name: str, ns: str, args: list[str], quiet_by_default: bool = False) -> Daemon:
        """Start ``tunvpn ARGS``; with ``-v`` its log is shown (a ``quiet_by_default`` daemon, the
        client, logs only warnings unless given ``-v`` itself), ``-vv`` shows debug logs."""
        verbose = ["-v"] * max(0, self.args.verbose - (0 if quiet_by_default else 1))
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
            self.client_ns,
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
            quiet_by_default=True,
        )

    def _client(self) -> Daemon:
        assert self.client is not None
        return self.client

    async def phase1(self) -> None:
        c = self.console
        c.section("phase 1")
        client = self._client()
        [*_, done] = await client.until(event_is("phase1", "established"), "phase 1", self.timeout)
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
        for record in await self._client().until(event_is("xauth", "ok"), "XAUTH", self.timeout):
            c.say(str(record.get("message")))

    async def modecfg(self) -> None:
        c = self.console
        c.section("Mode Config")
        client = self._client()
        [*_, got] = await client.until(event_is("modecfg", "received"), "the Mode Config reply", self.timeout)
        dns = ", ".join(got.get("dns") or []) or "none"
        c.say(f"address {got.get('address')}; DNS {dns} (not applied: --dns-backend none)")
        batch = await client.until(event_is("quick", "started"), "the pushed policies", self.timeout)
        policies = [r for r in batch if r.get("event") == "policy"]
        if not policies:
            raise StepFailed("the gateway pushed no phase 2 policy")
        c.say(f"pushed phase 2 policies (generation {policies[0].get('generation')}):")
        for record in policies:
            c.say(str(record.get("message")), indent=2)

    async def quick_mode(self) -> None:
        c = self.console
        c.section("Quick Mode")
        batch = await self._client().until(event_is("established", "up"), "every Quick Mode SA", self.timeout)
        for record in batch:
            if event_is("quick", "established")(record):
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
            result = await ping(self.client_ns, subnet.server_ip, self.env)
            c.say(f"{subnet.server_ip} ({name}, {subnet.network}): {result.summary()}")
            if result.received == 0:
                raise StepFailed(f"no reply from {subnet.server_ip} through SA {name}:\n{result.output}")

    async def transfer(self) -> None:
        self.console.section("data transfer")
        size = int(self.args.transfer_mb * (1 << 20))
        target = BY_POLICY["net-a"].server_ip
        sink = await exec_in(
            self.server_ns,
            [sys.executable, "-m", "tunvpn.demo.traffic", "sink", target, str(SINK_PORT)],
            self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert sink.stdout is not None
            try:
                line = await asyncio.wait_for(sink.stdout.readline(), self.timeout)
            except TimeoutError:
                raise StepFailed(f"the sink on the server did not listen within {self.timeout:g} s") from None
            if b"listening" not in line:
                raise StepFailed(f"the sink on the server did not start: {line.decode(errors='replace')}")
            code, out, err = await run_in(
                self.client_ns,
                [sys.executable, "-m", "tunvpn.demo.traffic", "send", target, str(SINK_PORT), str(size)],
                self.env,
                self.timeout + 60,
            )
            if code != 0:
                raise StepFailed(f"the transfer to {target} failed: {err.strip() or out.strip()}")
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
            raise StepFailed(
                f"the server received {result['received']} bytes with SHA-256 "
                f"{result['received_sha256']}, sent {sent} with {result['sha256']}"
            )
        c.say(f"SHA-256 {result['sha256'][:16]}... verified: the server got every byte intact")

    async def gateway_status(self) -> dict[str, Record]:
        """The gateway's SAs by name, from ``tunvpn status --json`` over its control socket."""
        assert self.files is not None
        argv = tunvpn_argv("status", "--socket", str(self.files.control), "--json")
        code, out, err = await run_in(self.gateway_ns, argv, self.env, self.timeout)
        if code != 0:
            raise StepFailed(f"tunvpn status failed: {err.strip()}")
        status = json.loads(out)
        return {
            str(sa.get("name")): sa for tunnel in status.get("tunnels", []) for sa in tunnel.get("sas", [])
        }

    async def policy_change(self, text: str) -> str:
        c = self.console
        assert self.files is not None
        c.section("live policy change")
        before = await self.gateway_status()
        c.say(
            "gateway's SAs now (tunvpn status): "
            + ", ".join(f"{n} {sa['spi_in']}" for n, sa in before.items())
        )
        new_text = changed_config(text)
        config = check_config(new_text, self.workdir)
        names = [rule.policy.name for rule in config.rules]
        if REMOVED in names or ADDED not in names:
            raise StepFailed(f"the changed configuration has policies {names}")
        private_file(self.files.gateway_toml, new_text)
        c.say(f"gateway.toml rewritten: policy {REMOVED} removed, policy {ADDED} added:")
        show_policies(config, c)
        await self._reload()
        await self._follow_update()
        await self._check_unchanged(before)
        await self.pings([ADDED])
        await self._check_removed()
        return new_text

    async def _reload(self) -> None:
        c = self.console
        assert self.files is not None
        argv = tunvpn_argv("reload", "--socket", str(self.files.control))
        code, out, err = await run_in(self.gateway_ns, argv, self.env, self.timeout)
        c.say("$ tunvpn reload --socket gateway.sock")
        for line in out.splitlines():
            c.say(line, indent=2)
        if code != 0:
            raise StepFailed(f"tunvpn reload failed (status {code}): {err.strip()}")

    async def _follow_update(self) -> None:
        c = self.console
        client = self._client()
        [*_, update] = await client.until(event_is("update"), "the client's update", self.timeout)
        c.say(f"client: {update.get('message')}")
        for key in ("added", "changed", "removed", "unchanged"):
            c.say(f"{key:9} {', '.join(update.get(key) or []) or '-'}", indent=2)
        batch = await client.until(event_is("established", "up"), f"the {ADDED} SA", self.timeout)
        for record in batch:
            if event_is("quick", "deleted")(record):
                self.up.pop(str(record.get("name")), None)
                c.say(f"client: {record.get('message')} (SA deleted)")
            elif event_is("quick", "established")(record):
                self.up[str(record.get("name"))] = record
                c.say("client: new SA " + _sa_line(record))
        if ADDED not in self.up or REMOVED in self.up:
            raise StepFailed(f"the client's SAs after the update: {sorted(self.up)}")

    async def _check_unchanged(self, before: dict[str, Record]) -> None:
        c = self.console
        after = await self.gateway_status()
        kept = [n for n in before if n != REMOVED]
        replaced = [n for n in kept if after.get(n, {}).get("spi_in") != before[n].get("spi_in")]
        if replaced or REMOVED in after or ADDED not in after:
            raise StepFailed(f"gateway's SAs after the reload: {sorted(after)} (replaced: {replaced})")
        c.say(f"gateway's SAs now: {', '.join(sorted(after))}; {', '.join(kept)} kept their SPIs (untouched)")

    async def _check_removed(self) -> None:
        c = self.console
        host = BY_POLICY[REMOVED].server_ip
        result = await ping(self.client_ns, host, self.env, count=1)
        if result.received:
            raise StepFailed(f"{host} ({REMOVED}) still answers after its policy was removed")
        c.say(f"{host} ({REMOVED}): no reply, as it should be: no SA and no route any more")

    async def peers(self, text: str) -> None:
        """``--peers``: a second client, a peering rule, and the direct tunnel between them."""
        c = self.console
        assert self.files is not None
        c.section("peers")
        peer_ns = self.topo.add_ns("p")
        self.topo.link(
            self.gateway_ns, [f"{PEER_ROUTER}/{OUTER_PREFIX}"], peer_ns, [f"{PEER_ADDR}/{OUTER_PREFIX}"]
        )
        self.topo.route(peer_ns, "default", "via", PEER_ROUTER)
        self.topo.route(self.client_ns, "default", "via", GATEWAY_ADDR)
        c.say(
            f"second client namespace {peer_ns}: {PEER_ADDR}/{OUTER_PREFIX}; the gateway namespace "
            "routes between its two links, as a router on the Internet would"
        )
        password = secrets.token_urlsafe(12)
        users = (self.workdir / "users").read_text()
        private_file(self.workdir / "users", f"{users}{PEER_USER}:{password}\n")
        private_file(self.files.gateway_toml, text.rstrip("\n") + "\n" + PEERING)
        check_config(text + PEERING, self.workdir)
        c.say(
            f"gateway.toml gets a peering rule (everyone may meet everyone directly); user {PEER_USER} added:"
        )
        for line in PEERING.strip().splitlines():
            c.say(line, indent=3)
        await self._reload()
        profile = private_file(
            self.workdir / "peer.toml",
            f'gateway = "{GATEWAY_ADDR}"\npsk_file = "client.psk"\nuser = "{PEER_USER}"\n',
        )
        secret = private_file(self.workdir / "peer.password", f"{password}\n")
        second = await self._daemon(
            "second client",
            peer_ns,
            [
                *("connect", "-c", str(profile), "--password-file", str(secret), "--json"),
                *("--dns-backend", "none", "--tun", "tvpeer%d"),
                *("--control", str(self.workdir / "peer.sock"), "--timeout", str(self.timeout)),
            ],
            quiet_by_default=True,
        )
        for name, daemon in ((USER, self._client()), (PEER_USER, second)):
            [*_, introduced] = await daemon.until(
                event_is("peer", "introduced"), f"{name}'s introduction", self.timeout
            )
            c.say(f"{name}: {introduced.get('message')}")
        records = {}
        for name, daemon in ((USER, self._client()), (PEER_USER, second)):
            [*_, direct] = await daemon.until(
                event_is("peer", "direct"), f"{name}'s direct tunnel", self.timeout
            )
            records[name] = direct
            c.say(
                f"{name}: {direct.get('message')} (spi in {direct.get('spi_in')} out {direct.get('spi_out')})"
            )
        target = str(records[USER].get("address"))
        result = await ping(self.client_ns, target, self.env)
        c.say(f"{USER} pings {PEER_USER} at {target}: {result.summary()}")
        if result.received == 0:
            raise StepFailed(f"no reply from {target} over the direct tunnel:\n{result.output}")
        argv = tunvpn_argv("status", "--socket", str(self.workdir / "client.sock"))
        code, out, err = await run_in(self.client_ns, argv, self.env, self.timeout)
        lines = [line.strip() for line in out.splitlines() if line.strip().startswith("peer ")]
        if code != 0 or not lines or ": direct" not in lines[0]:
            raise StepFailed(f"tunvpn status on {USER} shows no direct peer: {out or err}")
        c.say(f"{USER}'s tunvpn status: {lines[0]}")
        c.say(
            f"the pair's SAs go from {CLIENT_ADDR} to {PEER_ADDR} directly: the tunvpn gateway "
            "introduced the two (and would relay if no direct path worked)"
        )

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
    except StepFailed as exc:
        outcome = Outcome(1, f"FAILED at step '{tour.console.step}': {exc}")
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
                print(for_terminal(line), file=sys.stderr, flush=True)
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
    tour = Tour(args, Console(), Topology(NAME_PREFIX), Path(tempfile.mkdtemp(prefix="tunvpn-demo-")))
    outcome = Outcome(130, f"interrupted (SIGINT) during step '{tour.console.step}'")
    try:
        outcome = asyncio.run(_run_tour(tour))
    except KeyboardInterrupt:  # a second Ctrl-C: whatever still runs in the namespaces is killed
        outcome = Outcome(130, f"interrupted (SIGINT) during step '{tour.console.step}'")
    finally:
        # a second Ctrl-C (or a SIGTERM) must not cut the cleanup short
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            clean = cleanup(tour, outcome.stopped)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if outcome.code == 0 and not clean:
        outcome = Outcome(1, "FAILED at step 'cleanup': something was left behind (above)")
    if outcome.code == 0:
        print("\ndemo: every step passed", flush=True)
    else:
        print(f"\ndemo: {for_terminal(outcome.message)}", file=sys.stderr, flush=True)
    return outcome.code


__all__ = ["SUBNETS", "Subnet", "Topology", "changed_config", "run_tour"]
