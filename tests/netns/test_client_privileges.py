"""A client started as root drops root too (issue 15): real processes in namespaces.

Root starts ``tunvpn connect --run-as nobody`` against a real gateway that pushes a full
tunnel and a DNS server. The client opens its TUN device, binds its ports, starts its
privileged helper (tunvpn/client/privhelper.py) and becomes ``nobody`` with CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE only, before any thread starts. Everything root-only goes through the
helper: the ``file`` DNS backend rewrites a resolv.conf in a directory only root may write,
the gateway's pin is a host route outside the TUN device, the crash-recovery state goes in a
0700 root run directory.

* Every thread of the client runs as nobody with only those capabilities and NoNewPrivs; the
  helper is another process (its role on its command line) and the only one still root; DNS
  and the pin are applied, pings go through the tunnel; SIGTERM restores all of it.
* SIGKILL of the client: the helper sees its end of the socket close, restores the resolv.conf,
  removes the pin and the state file, and exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, popen_in, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import private_file, read_text, tunvpn_argv, tunvpn_env, wait_for_line

PROTECTED = "10.78.0.1"
POOL = "10.79.0.10-10.79.0.20"
DNS = "10.78.0.53"
PSK = "client-privileges-psk-0123456789"
ORIGINAL = "# the test's resolv.conf\nnameserver 192.0.2.53\n"
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12
KEPT = 1 << CAP_NET_ADMIN | 1 << CAP_NET_BIND_SERVICE
HELPER = "tunvpn.client.privhelper"


@dataclass
class Net:
    pair: NetnsPair
    tmp: Path
    resolv: Path
    run_dir: Path

    def routes(self) -> list[str]:
        out = run_in(self.pair.b, ["ip", "-4", "route", "show", "table", "main"], check=True).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, a privilege drop)")
    os.chmod(tmp_path, 0o700)  # only root may write the resolv.conf and the run dir below
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    with NetnsPair() as pair:
        pair.add_addr(pair.a, f"{PROTECTED}/24")
        run_in(pair.b, ["ip", "route", "add", "default", "via", pair.addr_a], check=True)
        yield Net(pair, tmp_path, resolv, tmp_path / "run")


def _gateway(net: Net, log: Path) -> subprocess.Popen[bytes]:
    psk = private_file(net.tmp / "psk", PSK + "\n")
    users = private_file(net.tmp / "users", "alice:wonderland\n")
    argv = ["gateway", "--listen", net.pair.addr_a, "--psk-file", str(psk), "--users", str(users)]
    argv += ["--require-xauth", "--pool", POOL, "--dns", DNS, "--tun", "tvgw%d", "--control", "none"]
    proc = popen_in(net.pair.a, tunvpn_argv(*argv), log, env=tunvpn_env())
    wait_for_line(log, "gateway ready", proc, 30, "the gateway")
    return proc


def _client(net: Net, log: Path, *, in_profile: bool = False) -> subprocess.Popen[bytes]:
    """``tunvpn connect --run-as nobody``, or with ``run_as = "nobody"`` in the profile."""
    private_file(net.tmp / "pw", "wonderland\n")
    profile = private_file(
        net.tmp / "client.toml",
        f'gateway = "{net.pair.addr_a}"\npsk_file = "psk"\nuser = "alice"\npassword_file = "pw"\n'
        + ('run_as = "nobody"\n' if in_profile else ""),
    )
    # the control socket in root's run directory (as root made it): the helper removes it
    argv = ["connect", "-c", str(profile), "--tun", "tvcl%d", "--json", "--control", "auto", "-v"]
    argv += ["--dns-backend", "file"] + ([] if in_profile else ["--run-as", "nobody"])
    env = {**tunvpn_env(), "TUNVPN_RUN_DIR": str(net.run_dir), "TUNVPN_RESOLV_CONF": str(net.resolv)}
    return popen_in(net.pair.b, tunvpn_argv(*argv), log, env=env)


def _status(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _helpers(parent: int) -> list[int]:
    """The processes ``parent`` started whose command line names the helper's module."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = _status(entry / "status")
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(status.get("PPid", "0")) == parent and HELPER.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _pid_gone(pid: int) -> bool:
    try:
        state = _status(Path(f"/proc/{pid}/status")).get("State", "")
    except OSError:
        return True
    return state.startswith(("Z", "X"))


def _ping(net: Net) -> bool:
    return run_in(net.pair.b, ["ping", "-c", "1", "-W", "2", PROTECTED], check=False).returncode == 0


def _pin(net: Net) -> str:
    return f"{net.pair.addr_a} dev "


def test_a_client_started_as_root_runs_as_nobody_and_its_helper_restores_on_exit(net: Net) -> None:
    before = net.routes()
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        wait_for(lambda: _ping(net) or cl.poll() is not None, 20, "a ping through the tunnel")
        assert cl.poll() is None, read_text(cl_log)[-3000:]

        tasks = sorted(Path(f"/proc/{cl.pid}/task").iterdir())
        assert len(tasks) > 1, "expected the data thread and others to run"
        for task in tasks:
            status = _status(task / "status")
            uids = {int(u) for u in status["Uid"].split()}
            assert uids == {65534}, f"thread {task.name} ({status['Name']}): Uid {status['Uid']}"
            for key in ("CapEff", "CapPrm", "CapBnd"):
                assert int(status[key], 16) == KEPT, f"thread {task.name}: {key} {status[key]}"
            assert status["NoNewPrivs"] == "1", f"thread {task.name}: NoNewPrivs {status['NoNewPrivs']}"

        helpers = _helpers(cl.pid)
        assert len(helpers) == 1, f"expected one privileged helper under pid {cl.pid}: {helpers}"
        helper = helpers[0]
        assert _status(Path(f"/proc/{helper}/status"))["Uid"].split()[0] == "0"

        text = net.resolv.read_text()
        assert f"nameserver {DNS}\n" in text and "192.0.2.53" not in text, text  # a full tunnel
        assert any(r.startswith(_pin(net)) for r in net.routes()), net.routes()
        assert list(net.run_dir.glob("client-*.json")), "no crash-recovery state while up"
        assert list(net.run_dir.glob("client-tvcl*.sock")), "no control socket while up"
    finally:
        stop_process(cl)
    assert cl.returncode == 0, read_text(cl_log)[-3000:]
    wait_for(lambda: _pid_gone(helper), 10, "the helper to exit")
    assert net.resolv.read_text() == ORIGINAL
    assert net.routes() == before
    assert not list(net.run_dir.glob("client-*.json")), "crash-recovery state left after a clean exit"
    assert not list(net.run_dir.glob("client-*.sock")), "control socket left in root's run directory"
    stop_process(gw)


def test_the_helper_cleans_up_after_a_killed_client(net: Net) -> None:
    """Also: ``run_as`` in the profile (what ``tunvpn up`` starts) drops as ``--run-as`` does."""
    before = net.routes()
    gw_log, cl_log = net.tmp / "gateway.log", net.tmp / "client.log"
    gw = _gateway(net, gw_log)
    cl = _client(net, cl_log, in_profile=True)
    try:
        wait_for_line(cl_log, "IPsec SA pair(s) up", cl, 30, "the client's SAs")
        assert _status(Path(f"/proc/{cl.pid}/status"))["Uid"].split() == ["65534"] * 4
        wait_for(lambda: net.resolv.read_text() != ORIGINAL or cl.poll() is not None, 10, "DNS applied")
        assert any(r.startswith(_pin(net)) for r in net.routes()), net.routes()
        helpers = _helpers(cl.pid)
        assert len(helpers) == 1, helpers
        os.kill(cl.pid, signal.SIGKILL)  # no clean-up of its own
        cl.wait(5)
        wait_for(lambda: _pid_gone(helpers[0]), 15, "the helper to notice and exit")
        assert net.resolv.read_text() == ORIGINAL
        wait_for(lambda: "tvcl" not in run_in(net.pair.b, ["ip", "link"]).stdout, 10, "the TUN device to go")
        assert net.routes() == before, "the pin outlived the client and its helper"
        assert not list(net.run_dir.glob("client-*.json"))
        assert not list(net.run_dir.glob("client-*.sock")), "control socket left by a killed client"
        assert "undoing its host configuration" in read_text(cl_log)
    finally:
        stop_process(cl)
        stop_process(gw)
    shutil.rmtree(net.run_dir, ignore_errors=True)
