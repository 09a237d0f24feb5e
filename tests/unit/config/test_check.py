"""``tunvpn --version``, ``tunvpn gateway --check`` and ``tunvpn connect --check``: load the
configuration as a start would, print the effective settings, exit 0 (or 2 with the error);
never bind a socket or create a TUN device."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.build import build_kind

CONTRIB = Path(__file__).resolve().parents[3] / "contrib"
SECRET = "group-secret-not-for-output-42"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _udp_port_held() -> socket.socket:
    """A UDP socket bound to a free port of 127.0.0.1, held by the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _gateway_toml(directory: Path, ike_port: int, natt_port: int) -> Path:
    """contrib/gateway.toml on 127.0.0.1 and the given ports, with its secret files."""
    _write(directory / "gw.psk", SECRET + "\n")
    _write(directory / "users", "alice:alice-password-long-enough\ncarol:carol-password-long-enough\n")
    text = (CONTRIB / "gateway.toml").read_text()
    text = text.replace(
        'listen = "192.0.2.1"', f'listen = "127.0.0.1"\nike_port = {ike_port}\nnatt_port = {natt_port}'
    )
    return _write(directory / "gateway.toml", text, 0o644)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"tunvpn {importlib.metadata.version('tunvpn')} ({build_kind()})\n"


def test_gateway_check_prints_the_effective_settings_and_binds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the test holds both ports: a gateway that bound them would fail (BindError, exit 2)
    with _udp_port_held() as ike, _udp_port_held() as natt:
        ike_port, natt_port = ike.getsockname()[1], natt.getsockname()[1]
        config = _gateway_toml(tmp_path, ike_port, natt_port)
        links = set(os.listdir("/sys/class/net"))
        assert cli.main(["gateway", "--check", "-c", str(config)]) == 0
        assert cli.main(["gateway", "--check", "-c", str(config)]) == 0  # and again: nothing left bound
        assert set(os.listdir("/sys/class/net")) == links  # no TUN device made
    out = capsys.readouterr().out
    assert f"listen:          127.0.0.1 (IKE {ike_port}, NAT-T {natt_port})" in out
    assert "xauth:           required (the default with a login source: users-file)" in out
    assert "login sources:   users-file" in out
    assert "pool:            10.79.0.10-10.79.0.200" in out
    assert "phase 2 policies (3):" in out
    assert "  intranet: local 10.78.0.0/24 <-> remote assigned address" in out
    assert "esp:  aes256gcm16, chacha20poly1305, aes128gcm16; pfs ecp_256; lifetime 3600 s" in out
    assert "    for:  group eng, user carol" in out
    assert "  web: local 10.81.0.10/32[tcp/443] <-> remote assigned address" in out
    assert "esp:  aes256-sha256;" in out
    assert SECRET not in out


def test_gateway_check_says_why_xauth_is_not_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "gw.psk", SECRET + "\n")
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\n[network]\npool = "10.8.0.0/24"\n'
        '[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    assert cli.main(["gateway", "--check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "xauth:           NOT required (no login source: no users_file, no login plugin)" in out
    assert "login sources:   none" in out
    assert "  lan: local 10.9.0.0/16 <-> remote assigned address" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('pool = "10.0.0.300-10.0.0.5"', "line 5, key network.pool"),
        ('pool = "10.8.0.0/24"\ndns = ["nope"]', "line 6, key network.dns"),
    ],
)
def test_gateway_check_of_a_bad_file_names_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    _write(tmp_path / "gw.psk", SECRET + "\n")
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\n[network]\n'
        f'{text}\n[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    assert cli.main(["gateway", "--check", "-c", str(config)]) == 2
    captured = capsys.readouterr()
    assert f"tunvpn: error: {config} {message}" in captured.err
    assert "OK" not in captured.out


def test_gateway_check_loads_the_plugins_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "gw.psk", SECRET + "\n")
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\nplugins = ["no-such-plugin"]\n'
        '[network]\npool = "10.8.0.0/24"\n[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    assert cli.main(["gateway", "--check", "-c", str(config)]) == 2
    assert "no-such-plugin" in capsys.readouterr().err


def test_gateway_check_reads_the_secret_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "gw.psk", SECRET + "\n", 0o644)  # world-readable: refused
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\n[network]\npool = "10.8.0.0/24"\n'
        '[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    assert cli.main(["gateway", "--check", "-c", str(config)]) == 2
    assert "gw.psk" in capsys.readouterr().err


def test_connect_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "alice.psk", SECRET + "\n")
    profile = _write(
        tmp_path / "work.toml",
        'gateway = "127.0.0.1"\npsk_file = "alice.psk"\nuser = "alice"\nremote_id = "@vpn.example"\n'
        'mode = "aggressive"\nid = "keyid:staff"\n',
        0o644,
    )
    assert cli.main(["connect", "--check", "-c", str(profile)]) == 0
    out = capsys.readouterr().out
    assert f"{profile}: OK" in out
    assert "gateway:         127.0.0.1 (IKE 500, NAT-T 4500)" in out
    assert "remote id:       @vpn.example" in out
    assert "mode:            aggressive" in out
    assert "authentication:  pre-shared key" in out
    assert "user:            alice" in out
    assert SECRET not in out


def test_connect_check_of_a_bad_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "alice.psk", SECRET + "\n")
    profile = _write(
        tmp_path / "work.toml", 'gateway = "127.0.0.1"\npsk_file = "alice.psk"\nmode = "quick"\n', 0o644
    )
    assert cli.main(["connect", "--check", "-c", str(profile)]) == 2
    captured = capsys.readouterr()
    assert f"tunvpn: error: {profile} line 3, key mode" in captured.err
    assert captured.out == ""


def test_gateway_check_warns_when_a_login_source_is_not_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "gw.psk", SECRET + "\n")
    _write(tmp_path / "users", "alice:alice-password-long-enough\n")
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\nusers_file = "users"\nrequire_xauth = false\n'
        '[network]\npool = "10.8.0.0/24"\n[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    assert cli.main(["gateway", "--check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "xauth:           NOT required (require_xauth = false although users-file can check" in out


def test_log_lines_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: ``--log-format json`` turns the daemon's log lines (here the warnings of a
    check) into one JSON object each."""
    _write(tmp_path / "gw.psk", SECRET + "\n")
    config = _write(
        tmp_path / "gw.toml",
        '[gateway]\nlisten = "127.0.0.1"\npsk_file = "gw.psk"\n[network]\npool = "10.8.0.0/24"\n'
        '[[policy]]\nname = "lan"\nlocal = "10.9.0.0/16"\n',
    )
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []  # as in a fresh process (the CLI's logging.basicConfig then applies)
    try:
        assert cli.main(["gateway", "--check", "-c", str(config), "--log-format", "json"]) == 0
        logging.getLogger("tunvpn.test").warning("a line from %s", "the test")
    finally:
        root.handlers[:] = saved
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines), lines
    assert {
        "level": "warning",
        "logger": "tunvpn.test",
        "message": "a line from the test",
    }.items() <= json.loads(lines[-1]).items()
