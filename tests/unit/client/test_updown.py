"""``tunvpn up`` / ``down`` bookkeeping (tunvpn/client/updown.py) without root: where a named
profile is found, names that are refused, the pid file that cannot be fooled by a reused pid,
and the errors a user sees. The real thing (a client brought up and down against a gateway) is
tests/netns/test_updown.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunvpn.client import updown
from tunvpn.client.updown import Paths, UpDownError, find_profile, running, start_time


@pytest.fixture(autouse=True)
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("TUNVPN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(updown, "SYSTEM_DIR", tmp_path / "etc")
    for d in ("config/tunvpn", "etc", "run"):
        (tmp_path / d).mkdir(parents=True)


def test_the_users_profile_comes_before_the_systems(tmp_path: Path) -> None:
    (tmp_path / "etc" / "office.toml").write_text("")
    assert find_profile("office") == ("office", tmp_path / "etc" / "office.toml")
    (tmp_path / "config" / "tunvpn" / "office.toml").write_text("")
    assert find_profile("office") == ("office", tmp_path / "config" / "tunvpn" / "office.toml")
    other = tmp_path / "elsewhere.toml"
    other.write_text("")
    assert find_profile(str(other)) == ("elsewhere", other.resolve())


@pytest.mark.parametrize("name", ["../office", ".hidden", "a b", "x" * 65, ""])
def test_names_that_could_leave_the_directories_are_refused(name: str) -> None:
    with pytest.raises(UpDownError):
        updown.check_name(name)


def test_a_missing_profile_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(
        UpDownError,
        match=r"no profile 'nosuch': looked for .*config/tunvpn/nosuch.toml and .*etc/nosuch.toml",
    ):
        find_profile("nosuch")


def test_the_pid_file_names_a_process_only_with_its_start_time(tmp_path: Path) -> None:
    paths = Paths.of("office")
    me = os.getpid()
    paths.pid.write_text(f"{me} {start_time(me)}\n")
    assert running(paths) == me
    paths.pid.write_text(f"{me} {start_time(me) + 1}\n")  # the pid was reused by another process
    assert running(paths) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pid.write_text(f"{dead.pid} 12345\n")
    assert running(paths) is None


def test_down_of_a_profile_that_is_not_up(tmp_path: Path) -> None:
    with pytest.raises(UpDownError, match=r"office is not up$"):
        updown.down("office")
    Paths.of("office").pid.write_text("999999999 1\n")
    with pytest.raises(UpDownError, match="stale pid file was removed"):
        updown.down("office")
    assert not Paths.of("office").pid.exists()


def test_up_without_a_writable_run_dir_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config" / "tunvpn" / "office.toml").write_text("")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TUNVPN_RUN_DIR", str(tmp_path / "file" / "run"))  # not a directory, even for root
    with pytest.raises(UpDownError, match=r"cannot write .*TUNVPN_RUN_DIR"):
        updown.up("office")
