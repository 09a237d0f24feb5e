"""The command line without root: argument errors, secret-file permissions, privilege messages,
and the file formats behind them (PSK file, users file, address pool)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.config.credentials import (
    SecretFileError,
    UserTable,
    load_password,
    load_psks,
    parse_psk_text,
    read_private_file,
)
from tunvpn.demo import ike as demo
from tunvpn.gateway.daemon import (
    AddressPool,
    ConfigError,
    GatewayOptions,
    child_policies,
    legacy_algorithm_names,
)
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.identity import Identity
from tunvpn.ike.proposals import Phase1Policy
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.shell.udp import BindError, bind_udp


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- arguments


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "vpn_1.example"], "'vpn_1.example' is neither an IP address nor a host name"),
        (["connect", "10.0.0.1", "--pfs", "modp999"], "unknown DH group 'modp999'"),
        (["connect", "10.0.0.1", "--mode", "quick"], "invalid choice: 'quick'"),
        (["connect", "10.0.0.1", "--ike-port", "70000"], "port 70000 is outside 1-65535"),
        (["connect", "10.0.0.1", "--timeout", "-1"], "a timeout cannot be negative"),
        (["connect", "10.0.0.1", "--busy-poll", "-5"], "-5 is outside 0-100000 microseconds"),
        (["gateway", "--listen", "10.0.0.1", "--busy-poll", "1ms"], "expected microseconds (an integer)"),
        (["connect", "10.0.0.1", "--id", "CN="], "is not an identity"),
        (["gateway", "--listen", "10.0.0.1", "--split", "10.0.0.0/33"], "is not a network like"),
        (["gateway", "--listen", "10.0.0.1", "--dns", "10.0.0.1,nope"], "is not an IPv4 address"),
    ],
)
def test_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_gateway_refuses_wildcard_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNVPN_PSK", "not-a-real-secret")
    code, err = run(capsys, "gateway", "--listen", "0.0.0.0")
    assert code == 2
    assert "not a wildcard" in err


def test_require_xauth_needs_users(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNVPN_PSK", "not-a-real-secret")
    code, err = run(capsys, "gateway", "--listen", "192.0.2.1", "--require-xauth")
    assert code == 2
    assert "--require-xauth needs --users FILE" in err


def test_bad_pool(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNVPN_PSK", "not-a-real-secret")
    code, err = run(capsys, "gateway", "--listen", "192.0.2.1", "--pool", "10.0.0.9-10.0.0.1")
    assert code == 2
    assert "the end is before the start" in err


def test_connect_without_psk(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNVPN_PSK", raising=False)
    code, err = run(capsys, "connect", "192.0.2.1")
    assert code == 2
    assert "--psk-file FILE (mode 600) or set TUNVPN_PSK" in err


# --------------------------------------------------------------------------- secret files


def test_world_readable_psk_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    psk = private(tmp_path / "gw.psk", "keyid:group s3cret\n", 0o644)
    code, err = run(capsys, "gateway", "--listen", "192.0.2.1", "--psk-file", str(psk))
    assert code == 2
    assert f"PSK file {psk} is accessible by group/others (mode 0644)" in err
    assert f"chmod 600 {psk}" in err
    assert "s3cret" not in err


def test_group_readable_users_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    psk = private(tmp_path / "gw.psk", "s3cret\n")
    users = private(tmp_path / "users", "alice:pw\n", 0o640)
    code, err = run(capsys, "gateway", "--listen", "192.0.2.1", "--psk-file", str(psk), "--users", str(users))
    assert code == 2
    assert f"users file {users} is accessible by group/others (mode 0640)" in err
    assert f"chmod 600 {users}" in err


def test_world_readable_password_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    psk = private(tmp_path / "c.psk", "s3cret\n")
    password = private(tmp_path / "pw", "hunter2\n", 0o604)
    code, err = run(
        capsys,
        "connect",
        "192.0.2.1",
        "--psk-file",
        str(psk),
        "--user",
        "u",
        "--password-file",
        str(password),
    )
    assert code == 2
    assert f"password file {password} is accessible by group/others" in err
    assert "hunter2" not in err


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="no such file"):
        read_private_file(tmp_path / "nope", "PSK file")


def test_psk_file_formats(tmp_path: Path) -> None:
    assert parse_psk_text("# comment\n\nsingle-secret\n", "f") == {"*": b"single-secret"}
    table = parse_psk_text('keyid:group "with spaces"\n10.0.0.2 0x00ff\n* fallback\n', "f")
    assert table == {"keyid:group": b"with spaces", "10.0.0.2": b"\x00\xff", "*": b"fallback"}
    with pytest.raises(SecretFileError, match="line 2: expected `ID SECRET`"):
        parse_psk_text("a b\nlonely\n", "f")
    with pytest.raises(SecretFileError, match="listed twice"):
        parse_psk_text("a b\na c\n", "f")
    with pytest.raises(SecretFileError, match="no secret"):
        parse_psk_text("# nothing\n", "f")
    psks = load_psks(private(tmp_path / "p", "keyid:group g\n"), env={})
    assert psks.lookup(Identity.parse("keyid:group"), "10.9.9.9") == b"g"
    assert "g" not in repr(psks).replace("group", "")


def test_psk_from_environment() -> None:
    psks = load_psks(None, env={"TUNVPN_PSK": "from-env"})
    assert psks.lookup(None, "10.0.0.1") == b"from-env"


def test_users_file() -> None:
    users = UserTable.parse("alice:pa:ss\nbob:\n", "f")
    assert users.check("alice", "pa:ss")
    assert not users.check("alice", "pa")
    assert not users.check("alice", None)
    assert users.check("bob", "")
    assert not users.check("carol", "pa:ss")
    assert "pa:ss" not in repr(users)
    with pytest.raises(SecretFileError, match="expected `user:password`"):
        UserTable.parse("nocolon\n", "f")


def test_password_sources(tmp_path: Path) -> None:
    assert load_password(private(tmp_path / "pw", "first\nsecond\n"), env={}) == "first"
    assert load_password(None, env={"TUNVPN_PASSWORD": "env-pw"}) == "env-pw"
    assert load_password(None, env={}) is None


# --------------------------------------------------------------------------- privileges


def test_binding_a_privileged_port_says_root_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(BindError) as exc:
        bind_udp("127.0.0.1", 500)
    assert "need root or CAP_NET_BIND_SERVICE" in str(exc.value.args[-1])


def test_gateway_on_a_foreign_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNVPN_PSK", "not-a-real-secret")
    # --ike-only: no TUN device (that would need root), only the UDP sockets
    args = ["--listen", "192.0.2.1", "--ike-port", "45000", "--natt-port", "45001", "--ike-only"]
    code, err = run(capsys, "gateway", *args)
    assert code == 2
    assert "cannot bind UDP 192.0.2.1:45000: 192.0.2.1 is not an address of this host" in err


def test_demo_names_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    code, err = run(capsys, "demo-ike")
    assert code == 2
    assert "demo-ike needs root privileges" in err
    assert "demo-ike needs iproute2's `ip` command" in err


def test_demo_says_what_is_missing_and_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo, "TUN_DEVICE", str(tmp_path / "no-tun"))
    code, err = run(capsys, "demo")
    assert code == 2
    assert "demo needs root privileges" in err and "`sudo tunvpn demo`" in err
    assert "demo needs iproute2's `ip` command (e.g. `apt-get install iproute2`)" in err
    assert f"demo needs the TUN device {tmp_path / 'no-tun'}: load the module with `modprobe tun`" in err
    assert "demo needs `ping`" in err and "iputils-ping" in err


def test_demo_asks_only_for_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "tun").touch()
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(demo.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(demo, "TUN_DEVICE", str(tmp_path / "tun"))
    code, err = run(capsys, "demo")
    assert code == 2
    assert err.count("demo needs") == 1 and "demo needs root privileges" in err


@pytest.mark.parametrize(("value", "message"), [("0", "above 0"), ("lots", "is not a number of MiB")])
def test_demo_transfer_size_is_checked(capsys: pytest.CaptureFixture[str], value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--transfer-mb", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- gateway pieces


def test_address_pool() -> None:
    pool = AddressPool.parse("10.79.0.10-10.79.0.11")
    first = pool.lease(b"a" * 16)
    assert str(first) == "10.79.0.10"
    assert pool.lease(b"a" * 16) == first  # same SA asks again: same address
    assert str(pool.lease(b"b" * 16)) == "10.79.0.11"
    assert pool.lease(b"c" * 16) is None  # exhausted
    assert pool.release(b"a" * 16) == first
    assert pool.lease(b"c" * 16) == first
    assert (AddressPool.parse("10.0.0.0/30").first, AddressPool.parse("10.0.0.0/30").last) == (
        AddressPool.parse("10.0.0.1-10.0.0.2").first,
        AddressPool.parse("10.0.0.1-10.0.0.2").last,
    )
    with pytest.raises(ConfigError, match="expected FIRST-LAST"):
        AddressPool.parse("ten-eleven")


def test_child_policies_accept_no_pfs_and_every_group() -> None:
    options = GatewayOptions(listen="192.0.2.1", psks=PskTable({"*": b"x"}))
    policies = child_policies(options, Phase1Policy())
    assert [p.local_ts for p in policies] == [TrafficSelector.from_network("0.0.0.0/0")]
    assert all(p.remote_ts is None for p in policies)
    proposal = policies[0].proposal
    assert proposal.pfs_group is None and DHGroup.ECP_256 in proposal.accept_pfs
    assert DHGroup.MODP_1024 not in proposal.accept_pfs
    legacy = GatewayOptions(
        listen="192.0.2.1",
        psks=PskTable({"*": b"x"}),
        legacy=True,
        split=(TrafficSelector.from_network("10.78.0.0/24").network,),  # type: ignore[arg-type]
    )
    legacy_policies = child_policies(legacy, Phase1Policy.with_legacy())
    # the split network, then the 0.0.0.0/0 SA a Cisco-style client asks for, narrowed to it
    assert [str(p.local_ts) for p in legacy_policies] == ["10.78.0.0/24", "0.0.0.0/0"]
    assert [str(ts) for ts in legacy_policies[1].inbound_local] == ["10.78.0.0/24"]
    assert DHGroup.MODP_1024 in legacy_policies[0].proposal.accept_pfs
    assert "MODP_1024" in legacy_algorithm_names() and "DES3_CBC" in legacy_algorithm_names()


def test_gateway_needs_a_config_file_or_listen(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gateway", "--psk-file", "x"]) == 2
    assert "give -c gateway.toml, or --listen ADDRESS" in capsys.readouterr().err


def test_connect_needs_a_gateway_or_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["connect"]) == 2
    assert "give the GATEWAY address" in capsys.readouterr().err


def test_gateway_config_error_names_file_line_and_key(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nlisten = "10.0.0.1"\npsk_env = "TUNVPN_TEST_UNSET"\n')
    assert cli.main(["gateway", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg} line 3, key gateway.psk_env" in err


def test_gateway_flags_that_the_config_file_holds_are_refused_beside_it(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: with -c, --pool/--split/... were silently ignored; now they are an error that
    names them. Flags about how to run it (-v, --control, --keylog, --tun, --check) still go."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nlisten = "10.0.0.1"\npsk_env = "TUNVPN_TEST_UNSET"\n')
    assert cli.main(["gateway", "-c", str(cfg), "--pool", "10.1.1.1-10.1.1.5", "--split", "10.2.0.0/16"]) == 2
    err = capsys.readouterr().err
    assert "--pool, --split:" in err and "holds the gateway's settings when -c is given" in err
    assert cli.main(["gateway", "-c", str(cfg), "--id", "@gw.example"]) == 2
    assert "--id:" in capsys.readouterr().err
    # runtime flags pass the check: the file's own error is what stops this one
    assert cli.main(["gateway", "-c", str(cfg), "-v", "--control", "none", "--tun", "tv%d"]) == 2
    assert "key gateway.psk_env" in capsys.readouterr().err
