"""``tunvpn demo-ike``: a gateway and a client in two network namespaces, on one machine.

As root: two namespaces joined by a veth pair (10.77.0.1/24 gateway, 10.77.0.2/24 client),
a throw-away PSK and XAUTH user in a private temp dir, then ``python -m tunvpn gateway`` and
``python -m tunvpn connect --exit-after-established`` as subprocesses (``ip netns exec``), their
output interleaved on the terminal, until the client reports its Quick Mode SAs up. Everything
is removed afterwards, also on Ctrl-C.

The README's main command, ``tunvpn demo`` (three namespaces, the built-in gateway
configuration, a live policy change), is in :mod:`tunvpn.demo.tour`; it shares this module's
requirement check, child environment and private files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import tunvpn
from tunvpn.untrusted import for_terminal

GATEWAY_ADDR = "10.77.0.1"
CLIENT_ADDR = "10.77.0.2"
PREFIX = 24
POOL = "10.79.0.10-10.79.0.20"
SPLIT = "10.78.0.0/24"
DNS = "10.78.0.53"
PROTECTED_HOST = "10.78.0.1"
"""An address behind the gateway (on its loopback) that the client pings through the tunnel."""
DEMO_USER = "demo"
DEMO_GROUP = "keyid:demo"
TUN_DEVICE = "/dev/net/tun"


def missing_requirements(
    command: str = "demo-ike", *, need_tun: bool = False, need_ping: bool = False
) -> list[str]:
    """What this machine lacks for ``tunvpn COMMAND``, each with how to get it (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append(
            "root privileges: the demo creates network namespaces and veth pairs "
            f"(run `sudo tunvpn {command}`)"
        )
    if shutil.which("ip") is None:
        missing.append("iproute2's `ip` command (e.g. `apt-get install iproute2`)")
    if need_tun and not os.path.exists(TUN_DEVICE):
        missing.append(
            f"the TUN device {TUN_DEVICE}: load the module with `modprobe tun`, or create the node "
            f"with `mkdir -p /dev/net && mknod {TUN_DEVICE} c 10 200` (in a container: start it "
            f"with `--device {TUN_DEVICE}`)"
        )
    if need_ping and shutil.which("ping") is None:
        missing.append("`ping` to test the tunnel (e.g. `apt-get install iputils-ping`)")
    return missing


def report_missing(command: str, missing: list[str]) -> int:
    """Print each missing requirement on stderr; the exit status for it (2)."""
    for what in missing:
        print(f"tunvpn: error: {command} needs {what}", file=sys.stderr)
    return 2


def child_env() -> dict[str, str]:
    """The environment of ``python -m tunvpn`` children: this package first on the path,
    unbuffered output, and no secret inherited from our own environment."""
    env = dict(os.environ)
    package_root = str(Path(tunvpn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TUNVPN_PSK", None)
    env.pop("TUNVPN_PASSWORD", None)
    return env


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


class DemoNetwork:
    """Two namespaces and one veth pair; ``close`` removes them (deleting a namespace deletes its veth)."""

    def __init__(self) -> None:
        tag = "tvd" + secrets.token_hex(3)
        self.gateway_ns = tag + "g"
        self.client_ns = tag + "c"
        self.created: list[str] = []

    def create(self) -> None:
        for ns in (self.gateway_ns, self.client_ns):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        veth_g, veth_c = self.gateway_ns + "v", self.client_ns + "v"
        _ip("link", "add", veth_g, "type", "veth", "peer", "name", veth_c)
        _ip("link", "set", veth_g, "netns", self.gateway_ns)
        _ip("link", "set", veth_c, "netns", self.client_ns)
        for ns, dev, addr in ((self.gateway_ns, veth_g, GATEWAY_ADDR), (self.client_ns, veth_c, CLIENT_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", self.gateway_ns, "addr", "add", f"{PROTECTED_HOST}/24", "dev", "lo")

    def close(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.created.clear()


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


async def _relay(stream: asyncio.StreamReader, label: str, lines: list[str]) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        print(f"{label} | {for_terminal(line)}", flush=True)


async def _start(ns: str, argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns,
        sys.executable,
        "-m",
        "tunvpn",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _demo(net: DemoNetwork, workdir: Path, args: argparse.Namespace) -> int:
    psk = secrets.token_urlsafe(24)
    password = secrets.token_urlsafe(12)
    gw_psk = private_file(workdir / "gateway.psk", f"* {psk}\n")
    users = private_file(workdir / "users", f"{DEMO_USER}:{password}\n")
    client_psk = private_file(workdir / "client.psk", f"{psk}\n")
    client_password = private_file(workdir / "client.password", f"{password}\n")
    env = child_env()
    verbose = ["-v"] * args.verbose

    gateway_argv = [
        "gateway",
        "--listen",
        GATEWAY_ADDR,
        "--psk-file",
        str(gw_psk),
        "--users",
        str(users),
        "--require-xauth",
        "--pool",
        POOL,
        "--split",
        SPLIT,
        "--dns",
        DNS,
        "--banner",
        "tunvpn demo gateway",
        *verbose,
    ]
    client_argv = [
        "connect",
        GATEWAY_ADDR,
        "--mode",
        args.mode,
        "--psk-file",
        str(client_psk),
        "--user",
        DEMO_USER,
        "--password-file",
        str(client_password),
        "--timeout",
        str(args.timeout),
        *verbose,
    ]
    if args.mode == "aggressive":
        gateway_argv.append("--allow-aggressive-psk")
        client_argv += ["--id", DEMO_GROUP]
        private_file(gw_psk, f"{DEMO_GROUP} {psk}\n")

    print(
        f"demo: namespaces {net.gateway_ns} (gateway {GATEWAY_ADDR}) and {net.client_ns} "
        f"(client {CLIENT_ADDR}); files in {workdir}",
        flush=True,
    )
    gw_lines: list[str] = []
    cl_lines: list[str] = []
    gateway = await _start(net.gateway_ns, gateway_argv, env)
    assert gateway.stdout is not None
    gw_relay = asyncio.ensure_future(_relay(gateway.stdout, "gateway", gw_lines))
    client: asyncio.subprocess.Process | None = None
    try:
        for _ in range(100):  # up to 10 s for the sockets to be bound
            if any("gateway ready" in line for line in gw_lines) or gateway.returncode is not None:
                break
            await asyncio.sleep(0.1)
        if not any("gateway ready" in line for line in gw_lines):
            print("demo: the gateway did not start (see its output above)", flush=True)
            return 1
        client = await _start(net.client_ns, client_argv, env)
        assert client.stdout is not None
        cl_relay = asyncio.ensure_future(_relay(client.stdout, "client ", cl_lines))
        for _ in range(int(args.timeout * 10) + 100):
            if any("IPsec SA pair(s) up" in line for line in cl_lines) or client.returncode is not None:
                break
            await asyncio.sleep(0.1)
        if not any("IPsec SA pair(s) up" in line for line in cl_lines):
            print(f"demo: the client failed (exit status {client.returncode})", flush=True)
            return 1
        print(
            f"demo: Quick Mode SAs established; pinging {PROTECTED_HOST} through the ESP tunnel", flush=True
        )
        ping = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            net.client_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "2",
            PROTECTED_HOST,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await ping.communicate()
        for line in output.decode(errors="replace").splitlines():
            print(f"ping    | {line}", flush=True)
        print("demo: tearing down", flush=True)
        await _stop(client)
        await cl_relay
        return 0 if ping.returncode == 0 else 1
    finally:
        if client is not None:
            await _stop(client)
        await _stop(gateway)
        await asyncio.wait_for(gw_relay, 5)


def run_demo(args: argparse.Namespace) -> int:
    missing = missing_requirements()
    if missing:
        return report_missing("demo-ike", missing)
    net = DemoNetwork()
    workdir = Path(tempfile.mkdtemp(prefix="tunvpn-demo-"))
    try:
        net.create()
        return asyncio.run(_demo(net, workdir, args))
    except RuntimeError as exc:
        print(f"tunvpn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        net.close()
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["child_env", "missing_requirements", "private_file", "report_missing", "run_demo"]
