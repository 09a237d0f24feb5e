"""The client's profile file (tunvpn.config.profile): the gateway, the secret and the user."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunvpn.config.gateway import ConfigFileError
from tunvpn.config.profile import ClientProfile, load_profile, parse_profile
from tunvpn.ike.identity import Identity

CONTRIB = Path(__file__).resolve().parents[3] / "contrib" / "client.toml"
SECRET = "group-secret-not-for-logs-42"
PASSWORD = "alice-password-not-for-logs"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "alice.psk", SECRET + "\n")
    _write(tmp_path / "alice.password", PASSWORD + "\n")
    return tmp_path


THREE_LINES = 'gateway = "192.0.2.1"\npsk_file = "alice.psk"\nuser = "alice"\n'


def _load(directory: Path, text: str, mode: int = 0o644, env: dict[str, str] | None = None) -> ClientProfile:
    return load_profile(_write(directory / "work.toml", text, mode), env={} if env is None else env)


def _error(
    directory: Path, text: str, mode: int = 0o644, env: dict[str, str] | None = None
) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        _load(directory, text, mode, env)
    return info.value


def test_three_line_profile(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # paths are relative to the profile, not to the working directory
    profile = _load(secrets_dir, THREE_LINES)
    assert profile.gateway == "192.0.2.1" and profile.user == "alice"
    assert profile.psks.lookup(None, "192.0.2.1") == SECRET.encode()
    assert (profile.mode, profile.local_id, profile.password_file) == ("main", None, None)
    assert profile.credential is None and profile.trusted_cas == ()
    assert profile.source == str(secrets_dir / "work.toml")
    assert SECRET not in repr(profile)


def test_contrib_example_loads(secrets_dir: Path) -> None:
    shutil.copy(CONTRIB, secrets_dir / "client.toml")
    profile = load_profile(secrets_dir / "client.toml", env={})
    assert profile.gateway == "192.0.2.1" and profile.user == "alice"
    assert profile.psks.lookup(None, "192.0.2.1") == SECRET.encode()


def test_optional_keys(secrets_dir: Path) -> None:
    text = THREE_LINES + 'password_file = "alice.password"\nmode = "aggressive"\nid = "keyid:staff"\n'
    profile = _load(secrets_dir, text)
    assert profile.password_file == str(secrets_dir / "alice.password")
    assert profile.mode == "aggressive" and profile.local_id == Identity.parse("keyid:staff")
    assert PASSWORD not in repr(profile)


def test_inline_psk_only_in_a_private_profile(tmp_path: Path) -> None:
    text = f'gateway = "192.0.2.1"\npsk = "{SECRET}"\n'
    err = _error(tmp_path, text, mode=0o644)
    path = tmp_path / "work.toml"
    assert err.key == "psk" and err.line == 2
    assert f"chmod 600 {path}" in err.reason and "0644" in err.reason
    assert SECRET not in str(err) and SECRET not in repr(err)
    profile = _load(tmp_path, text, mode=0o600)
    assert profile.psks.lookup(None, "192.0.2.1") == SECRET.encode()
    assert SECRET not in repr(profile)
    with pytest.raises(ConfigFileError, match="psk"):
        parse_profile(text, "text", base_dir=tmp_path)


def test_psk_env(tmp_path: Path) -> None:
    text = 'gateway = "192.0.2.1"\npsk_env = "WORK_PSK"\n'
    err = _error(tmp_path, text)
    assert err.key == "psk_env" and err.line == 2 and "WORK_PSK is not set" in err.reason
    profile = _load(tmp_path, text, env={"WORK_PSK": SECRET})
    assert profile.psks.lookup(None, "192.0.2.1") == SECRET.encode() and profile.user is None


def test_open_psk_file_refused(secrets_dir: Path) -> None:
    (secrets_dir / "alice.psk").chmod(0o604)
    err = _error(secrets_dir, THREE_LINES)
    assert err.key == "psk_file" and err.line == 2 and "chmod 600" in err.reason
    assert SECRET not in str(err)


@pytest.mark.parametrize(
    ("text", "key", "line", "reason"),
    [
        (THREE_LINES.replace("user", "usr"), "usr", 3, "did you mean 'user'?"),
        (THREE_LINES + 'mode = "quick"\n', "mode", 4, "one of: main, aggressive, base"),
        (THREE_LINES.replace("192.0.2.1", "vpn_1.example"), "gateway", 1, "nor a host name"),
        (THREE_LINES.replace('"192.0.2.1"', "[]"), "gateway", 1, "at least one gateway"),
        (THREE_LINES.replace('"192.0.2.1"', '["a.example", "A.example"]'), "gateway", 1, "twice"),
        (THREE_LINES.replace('"192.0.2.1"', '["a.example", 7]'), "gateway", 1, "array of strings"),
        (THREE_LINES.replace("192.0.2.1", "0.0.0.0"), "gateway", 1, "wildcard"),
        (THREE_LINES + 'reconnect = "yes"\n', "reconnect", 4, "true or false"),
        (THREE_LINES.replace('gateway = "192.0.2.1"\n', ""), "gateway", None, "required"),
        ('gateway = "192.0.2.1"\nuser = "alice"\n', "", None, "no secret"),
        (
            THREE_LINES.replace('user = "alice"', 'password_file = "alice.password"'),
            "password_file",
            3,
            "user",
        ),
        (THREE_LINES + 'password_file = "nope"\n', "password_file", 4, "no such file"),
        (THREE_LINES + 'cert = "alice.crt"\n', "cert", 4, "key is missing"),
        (THREE_LINES + 'id = "dn:garbage"\n', "id", 4, "identity"),
        ('gateway = "192.0.2.1"\npsk_file = "alice.psk"\nuser = \n', "", 3, "syntax"),
    ],
)
def test_errors(secrets_dir: Path, text: str, key: str, line: int | None, reason: str) -> None:
    err = _error(secrets_dir, text)
    assert (err.key, err.line) == (key, line), str(err)
    assert reason in err.reason
    assert SECRET not in str(err) and PASSWORD not in str(err)


def test_open_password_file_refused(secrets_dir: Path) -> None:
    (secrets_dir / "alice.password").chmod(0o644)
    err = _error(secrets_dir, THREE_LINES + 'password_file = "alice.password"\n')
    assert err.key == "password_file" and "chmod 600" in err.reason and PASSWORD not in str(err)


def test_missing_profile() -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        load_profile("/nonexistent/tunvpn/profile.toml", env={})


def test_client_plugins_and_their_tables(secrets_dir: Path) -> None:
    text = THREE_LINES + 'plugins = ["soft-token"]\n\n[plugin.soft-token]\nseed_file = "token.seed"\n'
    profile = _load(secrets_dir, text)
    assert profile.plugins == ("soft-token",)
    # *_file paths are relative to the profile, like psk_file
    assert profile.plugin_settings == {"soft-token": {"seed_file": str(secrets_dir / "token.seed")}}
    error = _error(secrets_dir, THREE_LINES + "\n[plugin.other]\nx = 1\n")
    assert error.key == "plugin.other" and "plugins does not name" in str(error)


def test_gateway_names_and_lists(secrets_dir: Path) -> None:
    """Issue 15: a host name, or a list of gateways tried in order; reconnecting by default."""
    one = _load(secrets_dir, THREE_LINES.replace("192.0.2.1", "VPN.Example.com."))
    assert (one.gateway, one.gateways, one.reconnect) == ("vpn.example.com", ("vpn.example.com",), True)
    text = THREE_LINES.replace('"192.0.2.1"', '["vpn1.example.com", "192.0.2.7"]') + "reconnect = false\n"
    many = _load(secrets_dir, text)
    assert many.gateway == "vpn1.example.com"
    assert many.gateways == ("vpn1.example.com", "192.0.2.7")
    assert many.reconnect is False


def test_ipv6_is_blocked_around_a_full_tunnel_unless_the_profile_says_not(secrets_dir: Path) -> None:
    """Issue 19: ``block_ipv6`` defaults to true; a non-boolean is refused with its key."""
    assert _load(secrets_dir, THREE_LINES).block_ipv6 is True
    assert _load(secrets_dir, THREE_LINES + "block_ipv6 = false\n").block_ipv6 is False
    assert _error(secrets_dir, THREE_LINES + 'block_ipv6 = "no"\n').key == "block_ipv6"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("required", "required"), ("none", "none"), ("ecp384", "ecp384")],
)
def test_pfs_key(secrets_dir: Path, value: str, expected: str) -> None:
    """Issue 16: the PFS choice for gateways that push no policies, as `tunvpn connect --pfs`."""
    assert _load(secrets_dir, THREE_LINES + f'pfs = "{value}"\n').pfs == expected
    assert _load(secrets_dir, THREE_LINES).pfs is None


def test_a_bad_pfs_names_its_key(secrets_dir: Path) -> None:
    error = _error(secrets_dir, THREE_LINES + 'pfs = "ecp999"\n')
    assert "pfs" in str(error) and "required" in str(error)


def test_fragmentation_key(secrets_dir: Path) -> None:
    """Issue 16: IKE fragmentation, as `tunvpn connect --fragmentation`."""
    assert _load(secrets_dir, THREE_LINES + 'fragmentation = "force"\n').fragmentation == "force"
    assert _load(secrets_dir, THREE_LINES).fragmentation is None
    error = _error(secrets_dir, THREE_LINES + 'fragmentation = "always"\n')
    assert "fragmentation" in str(error) and "force" in str(error)


def test_pfs_min_key(secrets_dir: Path) -> None:
    assert _load(secrets_dir, THREE_LINES + 'pfs_min = "ecp384"\n').pfs_min == "ecp384"
    assert "pfs_min" in str(_error(secrets_dir, THREE_LINES + 'pfs_min = "ecp999"\n'))
