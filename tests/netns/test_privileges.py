"""Issue 15: a gateway started by root drops its privileges before any thread starts, and still
works (docs/service.md, tunvpn/shell/privileges.py). Three namespaces with real TUN devices:

    client (10.71.0.2) --veth-- gateway (10.71.0.1 | 10.72.0.1) --veth-- server (10.72.0.10)

The gateway runs ``tunvpn gateway -c gateway.toml --user nobody`` as root (as a user starts it
without systemd); its PSK and users files are ``root:nogroup 0640`` (the service group may read,
not write). Shown, with a real client connected and pinging the server through the tunnel:
every thread of the gateway (/proc/PID/task/*/status: the main one, the data path's, the
plugin workers') has non-zero uids, CapEff/CapPrm of exactly CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE, and NoNewPrivs 1; it added the route to the client's address on its TUN
device after the drop; a SIGHUP reload (reading the config and both secret files again as
``nobody``) pushes a new policy that the client brings up and pings through.

Then both ends run as systemd runs the units (contrib/systemd/tunvpn-gateway.service,
tunvpn@.service): ``setpriv`` starts the gateway and the client as ``nobody`` with the units'
ambient capabilities, bounding set and no-new-privs; the client (its own secret files
``root:nogroup 0640``) connects and pings through, both with their control sockets in their
RuntimeDirectory.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    tunvpn_env,
    wait_for_line,
)
from tunvpn.shell.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, capability_names

GATEWAY = "10.71.0.1"
CLIENT = "10.71.0.2"
PSK = "privileges-test-psk-3c1e"
WANTED = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE)

GATEWAY_TOML = """\
[gateway]
listen = "10.71.0.1"
psk_file = "{dir}/gw.psk"
users_file = "{dir}/users"
tun = "tvpr%d"

[network]
pool = "10.73.0.10-10.73.0.20"

[[policy]]
name = "net-a"
local = "10.72.0.0/24"
{extra}"""

NET_B = """
[[policy]]
name = "net-b"
local = "10.74.0.0/24"
"""


@dataclass
class Net:
    topo: Topology
    client: str
    gateway: str
    server: str
    dir: Path
    """Readable by ``nobody`` (0755), unlike pytest's tmp_path under /tmp/pytest-of-root (0700)."""


@pytest.fixture
def net() -> Iterator[Net]:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    group = nobody.pw_gid
    work = Path(tempfile.mkdtemp(prefix="tunvpn-privileges-"))
    try:
        os.chmod(work, 0o755)
        with Topology() as topo:
            c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
            topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
            topo.link(g, "10.72.0.1/24", s, "10.72.0.10/24", names=(g + "s", s + "g"))
            topo.add_addr(g, "10.74.0.1/24", g + "s")
            topo.add_addr(s, "10.74.0.10/24", s + "g")
            run_in(s, ["ip", "route", "add", "default", "via", "10.72.0.1"])
            run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            for name, text in (("gw.psk", PSK + "\n"), ("users", "alice:alice-pw\n")):
                path = private_file(work / name, text)
                os.chown(path, 0, group)  # root:nogroup 0640: the service may read, not change
                os.chmod(path, 0o640)
            private_file(work / "client.psk", PSK + "\n")
            private_file(work / "alice.pw", "alice-pw\n")
            (work / "gateway.toml").write_text(GATEWAY_TOML.format(dir=work, extra=""))
            yield Net(topo, c, g, s, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start_client(net: Net) -> tuple[subprocess.Popen[bytes], Path]:
    log = net.dir / "client.log"
    profile = net.dir / "alice.toml"
    profile.write_text(f'gateway = "{GATEWAY}"\npsk_file = "{net.dir}/client.psk"\nuser = "alice"\n')
    argv = ["connect", "-c", str(profile), "--password-file", str(net.dir / "alice.pw"), "--json"]
    argv += ["--tun", "tvprc%d", "--control", "none", "--dns-backend", "none", "-v"]
    return popen_tunvpn(net.client, argv, log), log


def ping(net: Net, address: str) -> subprocess.CompletedProcess[str]:
    return run_in(
        net.client, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", address], check=False, timeout=60
    )


def threads_status(pid: int) -> dict[str, dict[str, str]]:
    """/proc/PID/task/*/status of every thread, by thread name and id."""
    out = {}
    for task in sorted(os.listdir(f"/proc/{pid}/task")):
        fields = {}
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out[f"{fields['Name']}/{task}"] = fields
    return out


def assert_dropped(pid: int, uid: int) -> dict[str, dict[str, str]]:
    tasks = threads_status(pid)
    for name, st in tasks.items():
        assert {int(x) for x in st["Uid"].split()} == {uid}, f"{name}: Uid {st['Uid']}"
        assert 0 not in {int(x) for x in st["Gid"].split()}, f"{name}: Gid {st['Gid']}"
        for key in ("CapEff", "CapPrm"):
            mask = int(st[key], 16)
            assert mask == WANTED, f"{name}: {key} {capability_names(mask)}"
        assert int(st["CapBnd"], 16) & ~WANTED == 0, (
            f"{name}: CapBnd {capability_names(int(st['CapBnd'], 16))}"
        )
        assert st["NoNewPrivs"] == "1", f"{name}: NoNewPrivs {st['NoNewPrivs']}"
    return tasks


def client_route(net: Net) -> str:
    return run_in(net.gateway, ["ip", "-4", "route", "show", "10.73.0.10"], check=False).stdout


def test_gateway_started_by_root_drops_before_any_thread_and_still_serves(net: Net) -> None:
    nobody = pwd.getpwnam("nobody")
    gw_log = net.dir / "gateway.log"
    argv = ["gateway", "-c", str(net.dir / "gateway.toml"), "--user", "nobody"]
    argv += ["--control", str(net.dir / "gw.sock"), "--keylog", str(net.dir / "keys"), "-v"]
    gw = popen_tunvpn(net.gateway, argv, gw_log)
    cl = None
    try:
        wait_for_line(gw_log, "gateway ready", gw, 20, "the gateway")
        assert "running as nobody" in read_text(gw_log)
        assert_dropped(gw.pid, nobody.pw_uid)
        assert client_route(net) == ""

        cl, cl_log = start_client(net)
        wait_for_line(cl_log, '"state": "up"', cl, 40, "alice's SAs")
        result = ping(net, "10.72.0.10")
        assert result.returncode == 0, result.stdout + result.stderr + read_text(gw_log)[-3000:]
        assert "tvpr" in client_route(net)  # added by the dropped gateway (CAP_NET_ADMIN)
        tasks = assert_dropped(gw.pid, nobody.pw_uid)
        keys = "".join(read_text(path) for path in net.dir.glob("keys*"))
        assert keys.count("\n") > 4, keys  # the key log, made by root, written to after the drop
        assert len(tasks) >= 3, list(tasks)  # main, data path, a plugin worker (the login): all dropped

        # SIGHUP: the config and both 0640 secret files read again, as nobody
        (net.dir / "gateway.toml").write_text(GATEWAY_TOML.format(dir=net.dir, extra=NET_B))
        gw.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(
                r.get("name") == "net-b" for r in json_records(cl_log) if r.get("state") == "established"
            ),
            30,
            "the pushed net-b SA",
        )
        result = ping(net, "10.74.0.10")
        assert result.returncode == 0, result.stdout + result.stderr
        status = run_tunvpn(net.gateway, ["status", "--socket", str(net.dir / "gw.sock"), "--json"])
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["generation"] == 2
        assert "refused" not in read_text(gw_log)
        assert_dropped(gw.pid, nobody.pw_uid)
    finally:
        if cl is not None:
            stop_process(cl)
        stop_process(gw)
    assert client_route(net) == ""


def as_service(
    net: Net, ns: str, tunvpn_args: list[str], run_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``python -m tunvpn ARGS`` in ``ns`` as a unit with ``User=nobody``,
    ``AmbientCapabilities=``/``CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE``,
    ``NoNewPrivileges=yes`` and ``RuntimeDirectory=`` starts it: applied by setpriv."""
    nobody = pwd.getpwnam("nobody")
    caps = "+net_admin,+net_bind_service"
    argv = ["setpriv", "--reuid", "nobody", "--regid", grp.getgrgid(nobody.pw_gid).gr_name, "--init-groups"]
    argv += ["--inh-caps", caps, "--ambient-caps", caps, "--bounding-set", f"-all,{caps}", "--no-new-privs"]
    argv += [sys.executable, "-m", "tunvpn", *tunvpn_args]
    # This Python may live where the service user cannot reach it (pyenv under /root, 0700).
    # In a mount namespace of its own, that directory is covered by a tmpfs holding only the
    # Python, bind-mounted at its own path (what contrib/install.sh's /opt/tunvpn gives a real
    # service user).
    prefix = Path(sys.base_prefix).resolve()
    closed = next((d for d in reversed(prefix.parents) if not os.stat(d).st_mode & 0o001), None)
    if closed is not None:
        saved = Path(tempfile.mkdtemp(dir=net.dir))
        shell = (
            'mount --bind "$1" "$2" && mount -t tmpfs -o mode=755 tmpfs "$1" && mkdir -p "$3" '
            '&& mount --bind "$2/$4" "$3" && shift 4 && exec "$@"'
        )
        mounts = [str(closed), str(saved), str(prefix), str(prefix.relative_to(closed))]
        argv = ["unshare", "-m", "sh", "-c", shell, "sh", *mounts, *argv]
    env = {**os.environ, **tunvpn_env(), "TUNVPN_RUN_DIR": str(run_dir)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def test_gateway_and_client_as_the_systemd_units_run_them_under_setpriv(net: Net) -> None:
    """contrib/systemd/tunvpn-gateway.service and tunvpn@.service: the service user with two
    capabilities is enough for both ends (TUN devices, UDP 500/4500, routes, control sockets in
    the RuntimeDirectory), and the client reads its own secret files as root:nogroup 0640."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) missing")
    nobody = pwd.getpwnam("nobody")
    runs = {}
    for side in ("gateway", "client"):  # each unit's RuntimeDirectory=, owned by the service user
        runs[side] = net.dir / f"run-{side}"
        runs[side].mkdir(mode=0o700)
        os.chown(runs[side], nobody.pw_uid, nobody.pw_gid)
    for name in ("client.psk", "alice.pw"):
        os.chown(net.dir / name, 0, nobody.pw_gid)
        os.chmod(net.dir / name, 0o640)
    profile = net.dir / "alice.toml"
    profile.write_text(
        f'gateway = "{GATEWAY}"\npsk_file = "{net.dir}/client.psk"\nuser = "alice"\n'
        f'password_file = "{net.dir}/alice.pw"\n'
    )
    gw_log, cl_log = net.dir / "gateway-setpriv.log", net.dir / "client-setpriv.log"
    gw = as_service(
        net, net.gateway, ["gateway", "-c", str(net.dir / "gateway.toml"), "-v"], runs["gateway"], gw_log
    )
    cl = None
    try:
        wait_for_line(gw_log, "gateway ready", gw, 20, "the gateway under setpriv")
        assert "running as root" not in read_text(gw_log)  # not root: nothing to drop, no warning
        client = ["connect", "-c", str(profile), "--json", "--tun", "tvprc%d", "--dns-backend", "none", "-v"]
        cl = as_service(net, net.client, client, runs["client"], cl_log)
        wait_for_line(cl_log, '"state": "up"', cl, 40, "alice's SAs (client under setpriv)")
        result = ping(net, "10.72.0.10")
        assert result.returncode == 0, result.stdout + result.stderr + read_text(gw_log)[-3000:]
        assert_dropped(gw.pid, nobody.pw_uid)
        assert_dropped(cl.pid, nobody.pw_uid)
        assert (runs["gateway"] / "gateway.sock").exists()  # the control sockets in the RuntimeDirectory
        assert list(runs["client"].glob("client-*.sock"))
    finally:
        if cl is not None:
            stop_process(cl)
        stop_process(gw)
