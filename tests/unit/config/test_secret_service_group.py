"""The one relaxation of the secret-file check for a service account (docs/service.md): a file
owned by root, mode 0640, whose group is the service's (``chown root:tunvpn``) is accepted, so a
gateway that dropped root can read its PSK and users files again on a reload without being able
to change them. Anything looser, or another group, is still refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from tunvpn.config import secretfile
from tunvpn.config.secretfile import SecretFileError, check_owner, check_secret_stat, trust_service_user

SERVICE_UID = 4241
SERVICE_GID = 4242
OTHER_GID = 4343


def fake_stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, gid, 10, 0, 0, 0))


@pytest.fixture(autouse=True)
def clean_groups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(secretfile, "_service_groups", set())  # each test starts with none trusted
    monkeypatch.setattr(secretfile, "_service_users", set())
    yield


def test_root_owned_0640_of_the_service_group_is_accepted_once_trusted() -> None:
    st = fake_stat(0o640, 0, SERVICE_GID)
    if SERVICE_GID not in secretfile.trusted_groups():
        with pytest.raises(SecretFileError, match="accessible by group/others"):
            check_secret_stat(st, "/etc/tunvpn/gw.psk", "PSK file")
    trust_service_user(SERVICE_UID, SERVICE_GID)
    check_secret_stat(st, "/etc/tunvpn/gw.psk", "PSK file")


@pytest.mark.parametrize(
    ("mode", "uid", "gid"),
    [
        (0o660, 0, SERVICE_GID),  # the group may write: refused
        (0o644, 0, SERVICE_GID),  # everybody may read
        (0o604, 0, SERVICE_GID),
        (0o640, 0, OTHER_GID),  # another group's
    ],
)
def test_anything_looser_is_still_refused(mode: int, uid: int, gid: int) -> None:
    trust_service_user(SERVICE_UID, SERVICE_GID)
    with pytest.raises(SecretFileError, match="accessible by group/others"):
        check_secret_stat(fake_stat(mode, uid, gid), "/etc/tunvpn/gw.psk", "PSK file")


def test_root_group_is_never_a_service_group() -> None:
    trust_service_user(0, 0)
    assert 0 not in secretfile.trusted_groups() or os.getegid() != 0
    if os.getegid() == 0:  # a root process: root:root 0640 stays refused
        with pytest.raises(SecretFileError):
            check_secret_stat(fake_stat(0o640, 0, 0), "/etc/tunvpn/gw.psk", "PSK file")


def test_the_service_users_own_files_are_trusted_by_root_that_will_become_it() -> None:
    """As under systemd's User=, where the service user is the effective user: its own 0600
    files (a plugin's state it rewrites, e.g. the OTP store) are its."""
    st = fake_stat(0o600, SERVICE_UID, SERVICE_GID)
    if SERVICE_UID != os.geteuid():
        with pytest.raises(SecretFileError, match="is owned by"):
            check_owner(st, "/var/lib/tunvpn/otp.json", "OTP store")
    trust_service_user(SERVICE_UID, SERVICE_GID)
    check_secret_stat(st, "/var/lib/tunvpn/otp.json", "OTP store")
    with pytest.raises(SecretFileError, match="accessible by group/others"):  # still private
        check_secret_stat(fake_stat(0o640, SERVICE_UID, SERVICE_GID), "/var/lib/tunvpn/otp.json", "OTP store")
