"""Secret files and the key log, attacked as another local user would (issue 12, point 10).

* A symbolic link planted where the key log will be written must not redirect live keys into
  (or append them to) the file it points at.
* A secret file (PSK, users, password, private key, RADIUS secret, L2TP secret, OTP token) must be
  private *and ours*: a file another user owns, or one reached through a symbolic link, is refused
  with the fix, at every place tunvpn reads one.

Owner tests chown files to an unused uid, so they need root (they skip otherwise).
"""

from __future__ import annotations

import datetime
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunvpn.config.credentials import UserTable, load_password, load_psks
from tunvpn.config.gateway import ConfigFileError, load_gateway_config
from tunvpn.config.profile import load_profile
from tunvpn.config.secretfile import SecretFileError, read_secret_bytes
from tunvpn.ike.constants import EspTransform
from tunvpn.keylog import KeyLog

SECRET = "group-secret-not-for-logs-42"
OTHER_UID = 4242  # no such user on the test machine: "somebody else"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- the key log


def test_a_symlink_planted_as_the_key_log_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """The attack: in a directory others can write (``/tmp``), a user links the key log's name
    to a file the victim owns (here a stand-in for ~/.bashrc). Following the link would append
    live keys to it (or make the victim's own file the key log)."""
    victim = private(tmp_path / "victim-file", "precious\n", 0o644)
    link = tmp_path / "keys.esp_sa"
    link.symlink_to(victim)
    with pytest.raises(SecretFileError, match=rf"symbolic link.*refusing to follow.*Fix: rm {link} ") as info:
        KeyLog(tmp_path / "keys")
    assert str(victim) not in str(info.value)  # no advice to write the keys where the link points
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644  # not even chmod'ed
    # a dangling link (to where the keys would then be created) is refused as well
    (tmp_path / "other.ikev1_decryption_table").symlink_to(tmp_path / "created-by-the-link")
    with pytest.raises(SecretFileError, match="symbolic link"):
        KeyLog(tmp_path / "other")
    assert not (tmp_path / "created-by-the-link").exists()


def test_a_hard_link_planted_as_the_key_log_is_refused(tmp_path: Path) -> None:
    victim = private(tmp_path / "victim-file", "precious\n")
    os.link(victim, tmp_path / "keys.ikev1_decryption_table")
    with pytest.raises(SecretFileError, match="hard links"):
        KeyLog(tmp_path / "keys")
    assert victim.read_text() == "precious\n"


@needs_root
def test_a_key_log_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    planted = private(tmp_path / "keys.ikev1_decryption_table", "")
    os.chown(planted, OTHER_UID, -1)  # the other user could read every key we append
    with pytest.raises(SecretFileError, match=rf"owned by .*uid {OTHER_UID}.*chown"):
        KeyLog(tmp_path / "keys")
    assert planted.read_text() == ""


def test_a_key_log_others_may_write_is_refused(tmp_path: Path) -> None:
    private(tmp_path / "keys.esp_sa", "", 0o666)
    with pytest.raises(SecretFileError, match=r"writable by group/others \(mode 0666\)"):
        KeyLog(tmp_path / "keys")


def test_the_key_log_still_works_on_an_ordinary_path(tmp_path: Path) -> None:
    log = KeyLog(tmp_path / "keys")
    log.log_esp_sa("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_GCM_16, bytes(20), None, b"")
    assert stat.S_IMODE((tmp_path / "keys.esp_sa").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- secret files


def _psk_file(path: Path) -> object:
    return load_psks(path)


def _users_file(path: Path) -> object:
    return UserTable.load(path)


def _password_file(path: Path) -> object:
    return load_password(path)


def _radius_secret(path: Path) -> object:
    from tunvpn_radius.client import load_secret

    return load_secret(path)


def _otp_token(path: Path) -> object:
    from tunvpn_otp import plugin

    from tunvpn.plugins import ClientQuestion

    question = ClientQuestion(
        protocol="otp", field="passcode", round=1, plugin_settings={"otp": {"token_file": str(path)}}
    )
    return plugin.tunvpn_client_answer(question=question)


def _l2tp_secret(path: Path) -> object:
    from tunvpn_l2tp import lns

    return lns.read_private_file(path, "L2TP tunnel secret")


READERS: dict[str, Callable[[Path], object]] = {
    "psk file": _psk_file,
    "users file": _users_file,
    "password file": _password_file,
    "radius secret_file": _radius_secret,
    "otp token_file": _otp_token,
    "l2tp secret_file": _l2tp_secret,
}
CONTENT = {"users file": "carol:pw\n", "otp token_file": "otpauth://totp/x?secret=" + "A" * 32 + "\n"}


def _refused(reader: str, path: Path, match: str) -> None:
    # the radius plugin reports a bad setting as ValueError (its hook contract); the rest raise
    # SecretFileError (a ValueError subclass would do too)
    with pytest.raises((SecretFileError, ValueError), match=match) as info:
        READERS[reader](path)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_reached_through_a_symlink_is_refused(tmp_path: Path, reader: str) -> None:
    real = private(tmp_path / "real", CONTENT.get(reader, SECRET + "\n"))
    link = tmp_path / "secret"
    link.symlink_to(real)
    _refused(reader, link, rf"{link} is a symbolic link.*{real}")
    READERS[reader](real)  # the file itself is fine


@needs_root
@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_owned_by_another_user_is_refused(tmp_path: Path, reader: str) -> None:
    """mode 600 is not enough: the user who owns it can rewrite it (a PSK or users file of
    their choosing) or read it."""
    path = private(tmp_path / "secret", CONTENT.get(reader, SECRET + "\n"))
    os.chown(path, OTHER_UID, -1)
    _refused(reader, path, rf"owned by .*uid {OTHER_UID}.*Fix: chown \S+ {path} && chmod 600 {path}")
    os.chown(path, os.geteuid(), -1)
    READERS[reader](path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_others_may_read_or_write_is_refused(tmp_path: Path, reader: str, mode: int) -> None:
    path = private(tmp_path / "secret", CONTENT.get(reader, SECRET + "\n"), mode)
    _refused(reader, path, rf"accessible by group/others \(mode {mode:04o}\).*chmod 600 {path}")


def test_root_owned_secret_files_are_ours() -> None:
    from tunvpn.config.secretfile import trusted_owners

    assert trusted_owners() == {os.geteuid(), 0}


def test_a_fifo_in_place_of_a_secret_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "psk"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, lambda: read_secret_bytes(fifo, "PSK file")))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the thread before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("opening a FIFO as a secret file blocked")
    assert isinstance(outcome[0], SecretFileError) and "not a regular file" in str(outcome[0])


def _capture(into: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:
        into.append(exc)


# --------------------------------------------------------------------------- configuration files

GATEWAY_TOML = f"""[gateway]
listen = "192.0.2.1"
psk = "{SECRET}"

[network]
pool = "10.79.0.10-10.79.0.20"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
"""


@needs_root
def test_an_inline_psk_in_a_config_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    gateway = private(tmp_path / "gateway.toml", GATEWAY_TOML)
    profile = private(tmp_path / "work.toml", f'gateway = "192.0.2.1"\npsk = "{SECRET}"\n')
    for path in (gateway, profile):
        os.chown(path, OTHER_UID, -1)
    with pytest.raises(ConfigFileError, match=rf"another user owns.*chown \S+ {gateway}") as info:
        load_gateway_config(gateway, env={})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigFileError, match="another user owns"):
        load_profile(profile, env={})
    os.chown(gateway, os.geteuid(), -1)
    assert load_gateway_config(gateway, env={}).psks.lookup(None, "192.0.2.9") == SECRET.encode()


def _write_cert_files(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "client.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_path, private(directory / "client.key", key_pem.decode())


@needs_root
def test_a_private_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cert, key = _write_cert_files(tmp_path)
    text = f'gateway = "192.0.2.1"\ncert = "{cert}"\nkey = "{key}"\nca = "{cert}"\n'
    profile = private(tmp_path / "work.toml", text)
    assert load_profile(profile, env={}).credential is not None
    os.chown(key, OTHER_UID, -1)
    with pytest.raises(ConfigFileError, match=rf"owned by .*uid {OTHER_UID}") as info:
        load_profile(profile, env={})
    assert info.value.key == "key"
    key.unlink()
    key.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigFileError, match="symbolic link"):
        load_profile(profile, env={})
