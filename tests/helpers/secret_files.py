"""Secret files as tunvpn reads them, for the tests that attack them as another local user would
(tests/unit/config/test_secret_files.py, tests/netns/test_secret_files_owner.py): every reader
of a secret file, a private file, a gateway.toml with an inline PSK, a certificate and its key."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunvpn.config.credentials import UserTable, load_password, load_psks
from tunvpn.config.secretfile import SecretFileError

SECRET = "group-secret-not-for-logs-42"
OTHER_UID = 4242  # no such user on the test machine: "somebody else"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


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


def refused(reader: str, path: Path, match: str) -> None:
    # the radius plugin reports a bad setting as ValueError (its hook contract); the rest raise
    # SecretFileError (a ValueError subclass would do too)
    with pytest.raises((SecretFileError, ValueError), match=match) as info:
        READERS[reader](path)
    assert SECRET not in str(info.value)


GATEWAY_TOML = f"""[gateway]
listen = "192.0.2.1"
psk = "{SECRET}"

[network]
pool = "10.79.0.10-10.79.0.20"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
"""


def write_cert_files(directory: Path) -> tuple[Path, Path]:
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
