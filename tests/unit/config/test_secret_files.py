"""Secret files and the key log, attacked as another local user would (issue 12, point 10).

* A symbolic link planted where the key log will be written must not redirect live keys into
  (or append them to) the file it points at.
* A secret file (PSK, users, password, private key, RADIUS secret, L2TP secret, OTP token) must be
  private *and ours*: a file another user owns, or one reached through a symbolic link, is refused
  with the fix, at every place tunvpn reads one.

Files owned by another user need root to make (chown): tests/netns/test_secret_files_owner.py.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.secret_files import CONTENT, READERS, SECRET, private, refused
from tunvpn.config.secretfile import SecretFileError, read_secret_bytes
from tunvpn.ipsec.algorithms import EspTransform
from tunvpn.keylog import KeyLog

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


def test_a_key_log_others_may_write_is_refused(tmp_path: Path) -> None:
    private(tmp_path / "keys.esp_sa", "", 0o666)
    with pytest.raises(SecretFileError, match=r"writable by group/others \(mode 0666\)"):
        KeyLog(tmp_path / "keys")


def test_the_key_log_still_works_on_an_ordinary_path(tmp_path: Path) -> None:
    log = KeyLog(tmp_path / "keys")
    log.log_esp_sa("10.0.0.1", "10.0.0.2", 7, EspTransform.AES_GCM_16, bytes(20), None, b"")
    assert stat.S_IMODE((tmp_path / "keys.esp_sa").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- secret files


@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_reached_through_a_symlink_is_refused(tmp_path: Path, reader: str) -> None:
    real = private(tmp_path / "real", CONTENT.get(reader, SECRET + "\n"))
    link = tmp_path / "secret"
    link.symlink_to(real)
    refused(reader, link, rf"{link} is a symbolic link.*{real}")
    READERS[reader](real)  # the file itself is fine


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
@pytest.mark.parametrize("reader", READERS)
def test_a_secret_file_others_may_read_or_write_is_refused(tmp_path: Path, reader: str, mode: int) -> None:
    path = private(tmp_path / "secret", CONTENT.get(reader, SECRET + "\n"), mode)
    refused(reader, path, rf"accessible by group/others \(mode {mode:04o}\).*chmod 600 {path}")


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
