"""Client host configuration (tunvpn.client.hostconfig): DNS backends, state files, crash recovery.

Fast, no root: every resolv.conf here is a temporary file (never the host's /etc/resolv.conf),
every run directory a temporary directory, and commands (resolvectl, resolvconf, scutil, ip)
are recorded instead of run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from tunvpn.client import hostconfig
from tunvpn.client.hostconfig import (
    HostConfig,
    HostConfigError,
    choose_dns_backend,
    cleanup_stale,
    process_start_time,
    render_resolv_conf,
    render_resolvconf_fragment,
    render_scutil_remove,
    render_scutil_script,
)

REPO = Path(__file__).resolve().parents[3]
ORIGINAL = "# the original\nnameserver 192.0.2.53\nsearch home.lan\noptions edns0\n"
SERVERS = (IPv4Address("10.79.0.1"), IPv6Address("fd00::53"))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(run dir, resolv.conf) in tmp_path, also set in the environment."""
    run_dir = tmp_path / "run" / "tunvpn"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    monkeypatch.setenv("TUNVPN_RUN_DIR", str(run_dir))
    monkeypatch.setenv("TUNVPN_RESOLV_CONF", str(resolv))
    yield run_dir, resolv


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str | None]]:
    """Record hostconfig's commands instead of running them."""
    seen: list[tuple[list[str], str | None]] = []

    def fake_run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        seen.append((list(argv), stdin))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(hostconfig, "_run", fake_run)
    return seen


def state_of(run_dir: Path, ifname: str = "tunvpn0") -> dict[str, Any]:
    return json.loads((run_dir / f"client-{ifname}.json").read_text())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import sys"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- file backend


def test_file_backend_apply_and_restore_via_env(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    assert hc.apply_dns(SERVERS, ("corp.example",), split=False) == "file"
    text = resolv.read_text()
    assert "nameserver 10.79.0.1\nnameserver fd00::53\n" in text
    assert "192.0.2.53" not in text  # full tunnel: no DNS leaks outside the tunnel
    assert "search corp.example home.lan\n" in text
    assert "options edns0\n" in text
    state = state_of(run_dir)
    assert state["pid"] == os.getpid()
    assert state["start_time"] == process_start_time(os.getpid())
    assert state["ifname"] == "tunvpn0"
    assert state["dns"]["backend"] == "file"
    assert state["dns"]["path"] == str(resolv)
    backup = Path(state["dns"]["backup"])
    assert backup.parent == run_dir and backup.read_text() == ORIGINAL
    hc.restore()
    assert resolv.read_text() == ORIGINAL
    assert not (run_dir / "client-tunvpn0.json").exists()
    assert not backup.exists()
    hc.restore()  # idempotent
    assert resolv.read_text() == ORIGINAL


def test_file_backend_explicit_path_split_and_context_manager(tmp_path: Path) -> None:
    resolv = tmp_path / "other-resolv.conf"
    resolv.write_text(ORIGINAL)
    os.chmod(resolv, 0o644)
    with HostConfig("tun7", run_dir=tmp_path / "rd", dns_backend="file", resolv_conf=resolv) as hc:
        hc.apply_dns(SERVERS[:1], ("corp.example", "corp.example."), split=True)
        lines = resolv.read_text().splitlines()
        # split: the VPN's server first, the original one stays as a fallback
        assert [line for line in lines if line.startswith("nameserver")] == [
            "nameserver 10.79.0.1",
            "nameserver 192.0.2.53",
        ]
        assert "search corp.example home.lan" in lines
        assert stat.S_IMODE(resolv.stat().st_mode) == 0o644  # mode kept by the atomic replace
    assert resolv.read_text() == ORIGINAL
    assert not (tmp_path / "rd" / "client-tun7.json").exists()


def test_file_backend_through_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real-resolv.conf"
    target.write_text(ORIGINAL)
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    with HostConfig("tun1", run_dir=tmp_path / "rd", dns_backend="file", resolv_conf=link) as hc:
        hc.apply_dns(SERVERS, ())
        assert link.is_symlink()
        assert "nameserver 10.79.0.1" in target.read_text()
    assert link.is_symlink() and target.read_text() == ORIGINAL


def test_file_backend_missing_file_is_removed_again(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    with HostConfig("tun1", run_dir=tmp_path / "rd", dns_backend="file", resolv_conf=resolv) as hc:
        hc.apply_dns(SERVERS, ())
        assert resolv.read_text().count("nameserver") == 2
    assert not resolv.exists()


def test_restore_does_not_clobber_someone_elses_change(
    env: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    hc.apply_dns(SERVERS, ())
    theirs = "# written by NetworkManager\nnameserver 198.51.100.1\n"
    resolv.write_text(theirs)
    with caplog.at_level(logging.WARNING, logger="tunvpn.client.hostconfig"):
        hc.restore()
    assert resolv.read_text() == theirs
    assert "changed by someone else" in caplog.text
    assert not (run_dir / "client-tunvpn0.json").exists()


def test_reapply_restores_first(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    with HostConfig("tunvpn0", dns_backend="file") as hc:
        hc.apply_dns(SERVERS[:1], ())
        hc.apply_dns(SERVERS[1:], ())  # e.g. new Mode Config after a reconnect
        text = resolv.read_text()
        assert "fd00::53" in text and "10.79.0.1" not in text
        assert Path(state_of(run_dir)["dns"]["backup"]).read_text() == ORIGINAL
    assert resolv.read_text() == ORIGINAL


def test_no_servers_means_none_and_no_state(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    assert hc.apply_dns((), ("corp.example",)) == "none"
    assert resolv.read_text() == ORIGINAL
    assert not run_dir.exists()
    hc.restore()


def test_bad_domain_is_refused(env: tuple[Path, Path]) -> None:
    _, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    for bad in ("corp.example\nnameserver 6.6.6.6", "a b", "", "-x.example", "~corp"):
        with pytest.raises(HostConfigError, match="refusing DNS domain"):
            hc.apply_dns(SERVERS, (bad,))
    assert resolv.read_text() == ORIGINAL


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(HostConfigError, match="interface name"):
        HostConfig("../etc", run_dir=tmp_path)
    with pytest.raises(HostConfigError, match="unknown DNS backend"):
        HostConfig("tun0", run_dir=tmp_path, dns_backend="dnsmasq")


# ---------------------------------------------------------------------------- state files


def test_state_file_and_run_dir_permissions(env: tuple[Path, Path]) -> None:
    run_dir, _ = env
    with HostConfig("tunvpn0", dns_backend="file") as hc:
        hc.apply_dns(SERVERS, ())
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        for path in run_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_loose_run_dir_is_tightened(tmp_path: Path) -> None:
    run_dir = tmp_path / "rd"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o755)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    with HostConfig("tun0", run_dir=run_dir, dns_backend="file", resolv_conf=resolv) as hc:
        hc.apply_dns(SERVERS, ())
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


def test_process_start_time_of_self() -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs")
    start = process_start_time(os.getpid())
    assert isinstance(start, int) and start > 0
    assert process_start_time(dead_pid()) is None


def test_cleanup_stale_dead_pid_restores(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    hc.apply_dns(SERVERS, ())
    state = state_of(run_dir)
    pid = dead_pid()
    state["pid"] = pid
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    lines = cleanup_stale()
    assert lines == [f"restored {resolv} left by pid {pid} (tunvpn0)"]
    assert resolv.read_text() == ORIGINAL
    assert list(run_dir.iterdir()) == []


def test_cleanup_stale_leaves_live_process_alone(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    hc = HostConfig("tunvpn0", dns_backend="file")
    hc.apply_dns(SERVERS, ())
    applied = resolv.read_text()
    assert cleanup_stale(run_dir) == []  # os.getpid() is alive
    assert resolv.read_text() == applied
    assert (run_dir / "client-tunvpn0.json").exists()
    hc.restore()
    assert resolv.read_text() == ORIGINAL


def test_cleanup_stale_reused_pid(env: tuple[Path, Path]) -> None:
    """Our pid is alive, but with another start time it is a different process."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs")
    run_dir, resolv = env
    HostConfig("tunvpn0", dns_backend="file").apply_dns(SERVERS, ())
    state = state_of(run_dir)
    state["start_time"] -= 1
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    assert cleanup_stale() == [f"restored {resolv} left by pid {os.getpid()} (tunvpn0)"]
    assert resolv.read_text() == ORIGINAL


def test_cleanup_stale_malformed_files(env: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    run_dir, _ = env
    run_dir.mkdir(parents=True, mode=0o700)
    (run_dir / "client-a.json").write_text("{not json")
    (run_dir / "client-b.json").write_text(json.dumps({"version": 1, "pid": "x"}))
    (run_dir / "client-c.json").write_text(
        json.dumps(  # a backup outside the run dir: refused, never followed
            {
                "version": 1,
                "pid": dead_pid(),
                "start_time": None,
                "ifname": "c",
                "dns": {"backend": "file", "path": "/etc/shadow", "backup": "/tmp/x", "existed": True},
                "routes": [],
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="tunvpn.client.hostconfig"):
        lines = cleanup_stale()
        assert cleanup_stale() == []  # moved aside: warned once only
    assert lines == []
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "client-a.json.bad",
        "client-b.json.bad",
        "client-c.json.bad",
    ]
    assert caplog.text.count("malformed tunvpn state file") == 3
    assert "dns.backup is not in the run directory" in caplog.text


def test_cleanup_stale_missing_run_dir(tmp_path: Path) -> None:
    assert cleanup_stale(tmp_path / "nope") == []


def test_new_run_undoes_crashed_run_on_same_interface(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    HostConfig("tunvpn0", dns_backend="file").apply_dns(SERVERS[:1], ())
    state = state_of(run_dir)
    state["pid"] = dead_pid()
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    with HostConfig("tunvpn0", dns_backend="file") as hc:
        hc.apply_dns(SERVERS[1:], ())
        assert Path(state_of(run_dir)["dns"]["backup"]).read_text() == ORIGINAL
    assert resolv.read_text() == ORIGINAL


def test_live_owner_of_same_interface_is_refused(env: tuple[Path, Path]) -> None:
    _, resolv = env
    with HostConfig("tunvpn0", dns_backend="file") as first:
        first.apply_dns(SERVERS, ())
        with pytest.raises(HostConfigError, match="configured by running pid"):
            HostConfig("tunvpn0", dns_backend="file").apply_dns(SERVERS, ())
    assert resolv.read_text() == ORIGINAL


CRASHER = textwrap.dedent(
    """
    import ipaddress, sys, time
    from tunvpn.client.hostconfig import HostConfig
    hc = HostConfig("tunvpn9", dns_backend="file")
    hc.apply_dns([ipaddress.ip_address("10.79.0.1")], ["corp.example"], split=True)
    print("applied", flush=True)
    time.sleep(60)
    """
)


def test_crash_then_cleanup_stale_restores(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER], stdout=subprocess.PIPE, text=True, env=environ, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "applied"
        assert "nameserver 10.79.0.1" in resolv.read_text()
        assert cleanup_stale() == []  # still running
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert "nameserver 10.79.0.1" in resolv.read_text()  # nobody restored it
    assert cleanup_stale() == [f"restored {resolv} left by pid {proc.pid} (tunvpn9)"]
    assert resolv.read_text() == ORIGINAL
    assert list(run_dir.iterdir()) == []


def test_crash_before_write_is_not_mistaken_for_a_foreign_change(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The state is recorded before resolv.conf is written; a crash in between undoes quietly."""
    run_dir, resolv = env

    def crash(path: Path, data: bytes) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(hostconfig, "_write_config_file", crash)
    with pytest.raises(KeyboardInterrupt):
        HostConfig("tunvpn0", dns_backend="file").apply_dns(SERVERS, ())
    monkeypatch.undo()
    state = state_of(run_dir)
    state["pid"] = dead_pid()
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="tunvpn.client.hostconfig"):
        assert cleanup_stale(run_dir) == [
            f"removed state of pid {state['pid']} (tunvpn0): nothing left to undo"
        ]
    assert caplog.text == ""
    assert resolv.read_text() == ORIGINAL


# ---------------------------------------------------------------------------- backend selection


@pytest.mark.parametrize(
    ("system", "resolved_dir", "binaries", "expected"),
    [
        ("Linux", True, {"resolvectl", "resolvconf"}, "systemd-resolved"),
        ("Linux", False, {"resolvectl", "resolvconf"}, "resolvconf"),  # resolved installed, not running
        ("Linux", True, {"resolvconf"}, "resolvconf"),
        ("Linux", False, set(), "file"),
        ("Darwin", False, {"resolvconf"}, "scutil"),
    ],
)
def test_auto_backend_selection(
    monkeypatch: pytest.MonkeyPatch, system: str, resolved_dir: bool, binaries: set[str], expected: str
) -> None:
    monkeypatch.setattr(hostconfig, "_system", lambda: system)
    monkeypatch.setattr(hostconfig, "_isdir", lambda path: resolved_dir and path == "/run/systemd/resolve")
    monkeypatch.setattr(hostconfig, "_which", lambda name: f"/usr/bin/{name}" if name in binaries else None)
    assert choose_dns_backend("auto") == expected
    assert choose_dns_backend("file") == "file"  # a name overrides the probes
    with pytest.raises(HostConfigError):
        choose_dns_backend("bogus")


def test_resolved_commands(
    env: tuple[Path, Path], commands: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, resolv = env
    monkeypatch.setattr(hostconfig, "_link_exists", lambda ifname: True)
    hc = HostConfig("tunvpn0", dns_backend="systemd-resolved")
    hc.apply_dns(SERVERS, ("corp.example", "lab.example"), split=True)
    assert state_of(run_dir)["dns"] == {"backend": "systemd-resolved", "ifname": "tunvpn0"}
    hc.restore()
    hc.apply_dns(SERVERS[:1], ("corp.example",), split=False)
    hc.restore()
    assert [argv for argv, _ in commands] == [
        ["resolvectl", "dns", "tunvpn0", "10.79.0.1", "fd00::53"],
        ["resolvectl", "domain", "tunvpn0", "~corp.example", "~lab.example"],
        ["resolvectl", "revert", "tunvpn0"],
        ["resolvectl", "dns", "tunvpn0", "10.79.0.1"],
        ["resolvectl", "domain", "tunvpn0", "corp.example", "~."],
        ["resolvectl", "revert", "tunvpn0"],
    ]
    assert resolv.read_text() == ORIGINAL


def test_resolved_after_crash_link_gone(
    env: tuple[Path, Path], commands: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = env
    HostConfig("tunvpn0", dns_backend="systemd-resolved").apply_dns(SERVERS, (), split=True)
    state = state_of(run_dir)
    state["pid"] = pid = dead_pid()
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    monkeypatch.setattr(hostconfig, "_link_exists", lambda ifname: False)  # the kernel removed it
    assert cleanup_stale() == [f"reverted systemd-resolved DNS settings left by pid {pid} (tunvpn0)"]
    assert [argv for argv, _ in commands] == [["resolvectl", "dns", "tunvpn0", "10.79.0.1", "fd00::53"]]


def test_command_failure_is_typed_with_stderr(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = env
    monkeypatch.setenv("PATH", str(run_dir.parent))  # no resolvconf on PATH
    (run_dir.parent).mkdir(parents=True, exist_ok=True)
    fake = run_dir.parent / "resolvconf"
    fake.write_text("#!/bin/sh\necho 'resolvconf: permission denied' >&2\nexit 3\n")
    fake.chmod(0o755)
    hc = HostConfig("tunvpn0", dns_backend="resolvconf")
    with pytest.raises(HostConfigError) as info:
        hc.apply_dns(SERVERS, ())
    assert "`resolvconf -a tunvpn0.tunvpn` failed (exit 3): resolvconf: permission denied" in str(info.value)
    fake.unlink()
    with pytest.raises(HostConfigError, match="resolvectl not found"):
        HostConfig("tunvpn1", dns_backend="systemd-resolved").apply_dns(SERVERS, ())


def test_resolvconf_commands_and_fragment(
    env: tuple[Path, Path], commands: list[tuple[list[str], str | None]]
) -> None:
    with HostConfig("tunvpn0", dns_backend="resolvconf") as hc:
        hc.apply_dns(SERVERS, ("corp.example",), split=True)
    assert commands == [
        (
            ["resolvconf", "-a", "tunvpn0.tunvpn"],
            render_resolvconf_fragment("tunvpn0", SERVERS, ("corp.example",)),
        ),
        (["resolvconf", "-d", "tunvpn0.tunvpn"], None),
    ]


def test_resolvconf_fragment_text() -> None:
    assert render_resolvconf_fragment("tunvpn0", SERVERS, ("corp.example", "lab.example")) == (
        "# tunvpn tunvpn0\nnameserver 10.79.0.1\nnameserver fd00::53\nsearch corp.example lab.example\n"
    )
    assert render_resolvconf_fragment("tun1", SERVERS[:1], ()) == "# tunvpn tun1\nnameserver 10.79.0.1\n"


def test_scutil_script_text() -> None:
    assert render_scutil_script("utun5", SERVERS, ("corp.example",), split=True) == (
        "d.init\n"
        "d.add ServerAddresses * 10.79.0.1 fd00::53\n"
        "d.add SearchDomains * corp.example\n"
        "d.add SupplementalMatchDomains * corp.example\n"
        "set State:/Network/Service/tunvpn-utun5/DNS\n"
        "quit\n"
    )
    assert render_scutil_script("utun5", SERVERS[:1], (), split=False) == (
        "d.init\n"
        "d.add ServerAddresses * 10.79.0.1\n"
        'd.add SupplementalMatchDomains * ""\n'
        "set State:/Network/Service/tunvpn-utun5/DNS\n"
        "quit\n"
    )
    assert render_scutil_remove("utun5") == "remove State:/Network/Service/tunvpn-utun5/DNS\nquit\n"


def test_scutil_commands(env: tuple[Path, Path], commands: list[tuple[list[str], str | None]]) -> None:
    with HostConfig("utun5", dns_backend="scutil") as hc:
        hc.apply_dns(SERVERS[:1], ("corp.example",), split=False)
    assert commands == [
        (["scutil"], render_scutil_script("utun5", SERVERS[:1], ("corp.example",), False)),
        (["scutil"], render_scutil_remove("utun5")),
    ]


def test_resolv_conf_rendering() -> None:
    text = render_resolv_conf("tun0", [ip_address("10.0.0.1")], ["corp.example"], True, None)
    assert text.splitlines()[1:] == ["nameserver 10.0.0.1", "search corp.example"]
    text = render_resolv_conf(
        "tun0", [ip_address("10.0.0.1")], [], False, "domain old.lan\nnameserver 1.1.1.1\n"
    )
    assert text.splitlines()[1:] == ["nameserver 10.0.0.1", "search old.lan"]


# ---------------------------------------------------------------------------- routes


def test_routes_recorded_and_undone(
    env: tuple[Path, Path], commands: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = env
    monkeypatch.setattr(hostconfig, "_system", lambda: "Linux")
    hc = HostConfig("tunvpn0", dns_backend="none")
    hc.add_route("203.0.113.7/32", via="192.168.1.1", dev="eth0")
    assert state_of(run_dir)["routes"] == [{"dest": "203.0.113.7/32", "via": "192.168.1.1", "dev": "eth0"}]
    state = state_of(run_dir)
    state["pid"] = pid = dead_pid()
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    assert cleanup_stale() == [
        f"removed route 203.0.113.7/32 via 192.168.1.1 dev eth0 left by pid {pid} (tunvpn0)"
    ]
    assert [argv for argv, _ in commands] == [
        ["ip", "-j", "-4", "route", "show", "exact", "203.0.113.7/32", "table", "main"],
        ["ip", "route", "add", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"],
        ["ip", "route", "del", "203.0.113.7/32", "via", "192.168.1.1", "dev", "eth0"],
    ]
    with pytest.raises(HostConfigError, match="bad route"):
        hc.add_route("not-a-net", via="192.168.1.1")


class RouteTable:
    """A fake ``ip`` with a main table: ``show exact``, ``add`` (File exists), ``del`` (No such
    process); each add also notes whether the state file listed the route while it ran."""

    def __init__(self, run_dir: Path, routes: tuple[str, ...] = (), fail_add: bool = False) -> None:
        self.run_dir, self.routes, self.fail_add = run_dir, set(routes), fail_add
        self.recorded_during_add: list[bool] = []

    def __call__(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if argv[1] == "-j":
            dest = argv[argv.index("exact") + 1]
            found = [{"dst": dest}] if dest in self.routes else []
            return subprocess.CompletedProcess(argv, 0, json.dumps(found), "")
        dest = argv[-1] if argv[3] == "unreachable" else argv[3]
        if argv[2] == "add":
            path = self.run_dir / "client-tunvpn0.json"
            listed = path.exists() and any(r["dest"] == dest for r in json.loads(path.read_text())["routes"])
            self.recorded_during_add.append(listed)
            if dest in self.routes or self.fail_add:
                raise HostConfigError(f"`{' '.join(argv)}` failed (exit 2): RTNETLINK answers: File exists")
            self.routes.add(dest)
        elif dest not in self.routes:
            raise HostConfigError(f"`{' '.join(argv)}` failed (exit 2): RTNETLINK answers: No such process")
        else:
            self.routes.remove(dest)
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_a_new_route_is_recorded_before_it_is_added_so_a_kill_during_the_add_leaves_no_orphan(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client killed between ``ip route add`` and writing its state file used to leave a
    route nobody removed (the next run's add then found it there, called it foreign, and kept
    it after exit). A route for a new prefix is now recorded first; a record whose route was
    never added is skipped by the next run's undo, silently."""
    run_dir, _ = env
    monkeypatch.setattr(hostconfig, "_system", lambda: "Linux")
    table = RouteTable(run_dir)
    monkeypatch.setattr(hostconfig, "_run", table)
    HostConfig("tunvpn0", dns_backend="none").add_route("8000::/1", kind="unreachable")
    assert table.recorded_during_add == [True]
    # killed there: the next run removes it, and a record of an add that never ran is skipped
    state = state_of(run_dir)
    state["pid"] = pid = dead_pid()
    state["routes"].append({"dest": "::/1", "via": None, "dev": None, "type": "unreachable"})
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    assert cleanup_stale() == [f"removed route unreachable 8000::/1 left by pid {pid} (tunvpn0)"]
    assert table.routes == set()


def test_a_route_already_there_is_recorded_only_after_our_add_and_a_failed_add_is_forgotten(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never delete a route we did not make: where the prefix has a route before ours, the
    record follows the add (a crash in between leaves ours, never removes theirs); an add that
    fails leaves no record."""
    run_dir, _ = env
    monkeypatch.setattr(hostconfig, "_system", lambda: "Linux")
    table = RouteTable(run_dir, routes=("::/1",))
    monkeypatch.setattr(hostconfig, "_run", table)
    hc = HostConfig("tunvpn0", dns_backend="none")
    with pytest.raises(HostConfigError, match="File exists"):
        hc.add_route("::/1", kind="unreachable")
    assert table.recorded_during_add == [False]
    assert not (run_dir / "client-tunvpn0.json").exists()  # nothing of ours to undo
    monkeypatch.setattr(hostconfig, "_run", RouteTable(run_dir, fail_add=True))
    with pytest.raises(HostConfigError, match="File exists"):  # appeared between look and add
        hc.add_route("8000::/1", kind="unreachable")
    assert state_of(run_dir)["routes"] == []
    assert table.routes == {"::/1"}


def test_ipv6_is_blocked_with_two_unreachable_routes_recorded_and_lifted(
    env: tuple[Path, Path], commands: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: while a full IPv4 tunnel is up and the gateway offers no IPv6, the two halves
    of the IPv6 space are unreachable; the state file records them (a crash is undone by the
    next run) and turning the block off, or restore(), removes exactly those."""
    run_dir, _ = env
    monkeypatch.setattr(hostconfig, "_system", lambda: "Linux")
    monkeypatch.setattr(hostconfig, "_has_ipv6", lambda: True)
    hc = HostConfig("tunvpn0", dns_backend="none")
    assert hc.block_ipv6(True) is True
    assert hc.block_ipv6(True) is True  # already: nothing more is run
    assert state_of(run_dir)["routes"] == [
        {"dest": "::/1", "via": None, "dev": None, "type": "unreachable"},
        {"dest": "8000::/1", "via": None, "dev": None, "type": "unreachable"},
    ]
    assert hc.block_ipv6(False) is False
    assert state_of(run_dir)["routes"] == []
    hc.block_ipv6(True)
    state = state_of(run_dir)
    state["pid"] = pid = dead_pid()
    (run_dir / "client-tunvpn0.json").write_text(json.dumps(state))
    assert cleanup_stale() == [
        f"removed route unreachable 8000::/1 left by pid {pid} (tunvpn0)",
        f"removed route unreachable ::/1 left by pid {pid} (tunvpn0)",
    ]
    argvs = [argv for argv, _ in commands if argv[1] != "-j"]
    assert argvs[:4] == [
        ["ip", "route", "add", "unreachable", "::/1"],
        ["ip", "route", "add", "unreachable", "8000::/1"],
        ["ip", "route", "del", "unreachable", "8000::/1"],
        ["ip", "route", "del", "unreachable", "::/1"],
    ]
    with pytest.raises(HostConfigError, match="not a route tunvpn makes"):
        hostconfig.Route("::/1", kind="blackhole")
    with pytest.raises(HostConfigError, match="not a route tunvpn makes"):
        hostconfig.Route("::/1", via="fe80::1", kind="unreachable")
    monkeypatch.setattr(hostconfig, "_has_ipv6", lambda: False)
    assert HostConfig("tunvpn1", dns_backend="none").block_ipv6(True) is False  # nothing to leak


def test_rename_ebusy_falls_back_to_writing_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What happens on a bind-mounted /etc/resolv.conf the mount table did not reveal."""
    import errno

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    inode = resolv.stat().st_ino

    def busy(src: str, dst: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(hostconfig.os, "replace", busy)
    hostconfig._write_config_file(resolv, b"nameserver 10.0.0.1\n")
    assert resolv.read_text() == "nameserver 10.0.0.1\n"
    assert resolv.stat().st_ino == inode  # same file: written in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resolv.conf"]  # no temp file left


def test_state_file_writable_by_others_is_not_trusted(env: tuple[Path, Path]) -> None:
    run_dir, resolv = env
    HostConfig("tunvpn0", dns_backend="file").apply_dns(SERVERS, ())
    state_path = run_dir / "client-tunvpn0.json"
    state = state_of(run_dir)
    state["pid"] = dead_pid()
    state_path.write_text(json.dumps(state))
    os.chmod(state_path, 0o666)
    assert cleanup_stale() == []
    assert (run_dir / "client-tunvpn0.json.bad").exists()
    assert "nameserver 10.79.0.1" in resolv.read_text()  # not acted on
