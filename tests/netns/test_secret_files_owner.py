"""Secret files owned by another user are refused (issue 12, point 10): mode 600 is not enough,
the owner can rewrite or read them. The tests chown files to an unused uid, so they need root;
symbolic links, modes and the key log's other attacks are tested without root in
tests/unit/config/test_secret_files.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.secret_files import (
    CONTENT,
    GATEWAY_TOML,
    OTHER_UID,
    READERS,
    SECRET,
    private,
    refused,
    write_cert_files,
)
from tunvpn.config.gateway import ConfigFileError, load_gateway_config
from tunvpn.config.profile import load_profile
from tunvpn.config.secretfile import SecretFileError
from tunvpn.keylog import KeyLog


def test_a_key_log_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    planted = private(tmp_path / "keys.ikev1_decryption_table", "")
    os.chown(planted, OTHER_UID, -1)  # the other user could read every key we append
    with pytest.raises(SecretFileError, match=rf"owned by .*uid {OTHER_UID}.*chown"):
        KeyLog(tmp_path / "keys")
    assert planted.read_text() == ""


@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_owned_by_another_user_is_refused(tmp_path: Path, reader: str) -> None:
    """mode 600 is not enough: the user who owns it can rewrite it (a PSK or users file of
    their choosing) or read it."""
    path = private(tmp_path / "secret", CONTENT.get(reader, SECRET + "\n"))
    os.chown(path, OTHER_UID, -1)
    refused(reader, path, rf"owned by .*uid {OTHER_UID}.*Fix: chown \S+ {path} && chmod 600 {path}")
    os.chown(path, os.geteuid(), -1)
    READERS[reader](path)


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


def test_a_private_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cert, key = write_cert_files(tmp_path)
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
