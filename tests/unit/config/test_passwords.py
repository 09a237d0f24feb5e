"""scrypt hashes in the users file (tunvpn/config/passwords.py): the format, the known answer of
RFC 7914, CHAP refused, ``tunvpn passwd`` (logins against a hashed users file over UDP:
tests/loopback/test_passwords.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tunvpn.cli import main
from tunvpn.config.credentials import SecretFileError, UserTable
from tunvpn.config.gateway import ConfigFileError, parse_gateway_config
from tunvpn.config.passwords import PasswordHash, PasswordHashError, hash_password
from tunvpn.gateway.daemon import ConfigError, GatewayOptions
from tunvpn.ike.config import PskTable
from tunvpn.ike.crypto import chap_response

# RFC 7914 section 12, third vector: scrypt(P="pleaseletmein", S="SodiumChloride", N=16384,
# r=8, p=1, dkLen=64), written in the users-file format (salt and hash base64 without padding)
RFC7914_HASH = (
    "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
    "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887"
)
RFC7914_ENTRY = PasswordHash(14, 8, 1, b"SodiumChloride", bytes.fromhex(RFC7914_HASH)).encode()


def test_rfc7914_vector_in_the_users_file_format() -> None:
    assert RFC7914_ENTRY.startswith("$scrypt$ln=14,r=8,p=1$U29kaXVtQ2hsb3JpZGU$cCO9yzr9")
    entry = PasswordHash.parse(RFC7914_ENTRY)
    assert entry.verify("pleaseletmein")
    assert not entry.verify("pleaseletmeim")
    assert "Sodium" not in repr(entry) and "cCO9" not in repr(entry)


def test_fresh_hashes_are_salted_and_verify() -> None:
    one, two = hash_password("s3cret", ln=10), hash_password("s3cret", ln=10)
    assert one != two and one.startswith("$scrypt$ln=10,r=8,p=1$")
    assert PasswordHash.parse(one).verify("s3cret") and not PasswordHash.parse(one).verify("s3cret ")
    assert hash_password("x").startswith("$scrypt$ln=15,r=8,p=1$")  # the documented default


@pytest.mark.parametrize(
    "bad",
    [
        "$scrypt$ln=15,r=8$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=40,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 2**40: refused
        "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAA$AAAA",  # a 3-octet hash
        "$scrypt$ln=15,r=8,p=1$!!!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_hashes_are_refused_with_the_line(bad: str) -> None:
    with pytest.raises(PasswordHashError):
        PasswordHash.parse(bad)
    with pytest.raises(SecretFileError, match="line 2: user 'bob'"):
        UserTable.parse(f"alice:clear\nbob:{bad}\n", "users file u")


def test_users_table_mixes_clear_and_hashed_entries_and_refuses_chap_for_hashes() -> None:
    table = UserTable.parse(f"alice:{hash_password('a-pass', ln=10)}\nbob:b-pass\n", "users")
    assert table.check("alice", "a-pass") and not table.check("alice", "b-pass")
    assert not table.check("alice", None) and table.check("bob", "b-pass")
    assert table.hashed_users() == ["alice"]
    challenge = bytes(16)
    assert table.check_chap("bob", 1, challenge, chap_response(1, b"b-pass", challenge))
    # a CHAP answer computed with the right password still cannot be checked against a hash
    assert not table.check_chap("alice", 1, challenge, chap_response(1, b"a-pass", challenge))
    assert "a-pass" not in repr(table) and "scrypt" not in repr(table)


def test_xauth_chap_with_a_hashed_user_is_a_configuration_error(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('a-pass', ln=10)}\n")
    users.chmod(0o600)
    text = (
        '[gateway]\nlisten = "192.0.2.1"\npsk = "a-long-random-group-secret-for-tests-0123456789"\n'
        'users_file = "users"\nxauth_chap = true\n[network]\npool = "10.79.0.10-10.79.0.20"\n'
        '[[policy]]\nname = "i"\nlocal = "10.78.0.0/24"\n'
    )
    with pytest.raises(ConfigFileError) as err:
        parse_gateway_config(text, "gw.toml", base_dir=tmp_path, file_mode=0o600)
    assert err.value.key == "gateway.xauth_chap" and "alice" in err.value.reason
    with pytest.raises(ConfigError, match="scrypt"):
        GatewayOptions(
            listen="192.0.2.1", psks=PskTable({"*": b"x"}), users=UserTable.load(users), xauth_chap=True
        )


def test_tunvpn_passwd_prints_a_users_file_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["passwd", "alice", "--stdin"]) == 0
    line = capsys.readouterr().out.strip()
    table = UserTable.parse(line + "\n", "users")
    assert table.hashed_users() == ["alice"] and table.check("alice", "correct horse")
    assert "correct horse" not in line
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["passwd", "al:ice", "--stdin"]) == 2
