"""The service definitions in contrib/ (docs/service.md): the systemd units pass
``systemd-analyze verify`` and score well in ``systemd-analyze security --offline=yes``; they run
as the unprivileged ``tunvpn`` user with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, notify
readiness, and reload the gateway with SIGHUP; the launchd property lists parse.

systemd is not PID 1 here, so the units are checked offline; what they promise at run time
(readiness notifications, the user and capabilities) is shown by
tests/loopback/test_service_notify.py and tests/netns/test_privileges.py.
"""

from __future__ import annotations

import configparser
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "contrib" / "systemd"
LAUNCHD = ROOT / "contrib" / "launchd"
UNITS = ("tunvpn-gateway.service", "tunvpn@.service")
INSTANCE = {"tunvpn-gateway.service": "tunvpn-gateway.service", "tunvpn@.service": "tunvpn@office.service"}
MAX_EXPOSURE = 2.5
"""``systemd-analyze security`` scores 0 (locked down) to 10 (exposed); a VPN daemon must keep the
network (PrivateNetwork=no, CAP_NET_ADMIN, AF_INET/AF_NETLINK), which alone costs about 1.5."""

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def service_section(name: str) -> dict[str, list[str]]:
    """[Service] of a unit: every value of each key (a key may repeat)."""
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), dict_type=_MultiDict)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name)
    return {k: v if isinstance(v, list) else [v] for k, v in parser["Service"].items()}


class _MultiDict(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at a tunvpn that exists here (verify checks the binary)."""
    tunvpn = shutil.which("tunvpn") or sys.executable
    text = (SYSTEMD / name).read_text().replace("/usr/local/bin/tunvpn", tunvpn)
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    installed_copy(tmp_path, name)
    out = subprocess.run(
        ["systemd-analyze", "verify", f"./{INSTANCE[name]}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in out.stderr.splitlines() if str(tmp_path) in line or "tunvpn" in line]
    assert out.returncode == 0, out.stderr
    assert ours == [], "\n".join(ours)  # no warning about our unit (unknown keys are warnings)


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_units_exposure_score(tmp_path: Path, name: str) -> None:
    installed_copy(tmp_path, name)
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", f"./{INSTANCE[name]}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    score = float(match.group(1))
    print(f"{name}: exposure {score}")
    assert score <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("name", UNITS)
def test_units_run_unprivileged_with_two_capabilities(name: str) -> None:
    service = service_section(name)
    assert service["Type"] == ["notify"]  # not notify-reload: Debian 12 has systemd 252
    assert service["User"] == ["tunvpn"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(service["CapabilityBoundingSet"][0].split()) == caps
    assert set(service["AmbientCapabilities"][0].split()) == caps
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["DeviceAllow"] == ["/dev/net/tun rw"]
    assert service["RuntimeDirectory"] == ["tunvpn"]
    assert set(service["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
        "AF_NETLINK",
    }


def test_only_the_gateway_reloads_with_sighup() -> None:
    assert service_section("tunvpn-gateway.service")["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "ExecReload" not in service_section("tunvpn@.service")  # a client reads its profile once
    assert "%i" in service_section("tunvpn@.service")["ExecStart"][0]


@pytest.mark.parametrize("name", ["com.tunvpn.gateway.plist", "com.tunvpn.client.plist"])
def test_launchd_plists_parse(name: str) -> None:
    with open(LAUNCHD / name, "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == name.removesuffix(".plist") or plist["Label"].startswith("com.tunvpn.client.")
    assert plist["ProgramArguments"][0].endswith("/tunvpn")
    assert plist["KeepAlive"]["SuccessfulExit"] is False


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_file_makes_the_tunvpn_account(tmp_path: Path) -> None:
    """contrib/systemd/tunvpn.sysusers, applied to an empty root directory (never this machine's)."""
    (tmp_path / "etc").mkdir()
    out = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "tunvpn.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [user] = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    [group] = [line.split(":") for line in (tmp_path / "etc" / "group").read_text().splitlines()]
    assert user[0] == group[0] == "tunvpn" and user[3] == group[2]  # its own group
    assert 0 < int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"  # a system account, no login
