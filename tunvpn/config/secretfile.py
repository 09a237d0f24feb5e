"""Secret files (PSKs, users, private keys, RADIUS and L2TP secrets, OTP tokens, key logs):
opened without following a symbolic link, checked on the open descriptor, refused with the fix.

Every check is made with ``fstat`` on the descriptor that is then read or written, so the file
cannot be swapped between the check and the use. A secret file is used only if

* its last path component is not a symbolic link (``O_NOFOLLOW``: a link in a shared directory
  could point anywhere, and it can be re-pointed later);
* it is a regular file (a FIFO or device is refused, and opening one does not block);
* it is owned by the user the process runs as (its effective uid) or by root, who can change
  any file anyway (as OpenSSH's ``StrictModes``); a file another user owns can be rewritten by
  that user, so the secret is not ours alone;
* nobody else may read or write it: no group or other permission bits (``chmod 600``), with
  one exception for a service account: a file owned by root and readable (not writable) by the
  service's own group (``chown root:tunvpn``, ``chmod 640``) is accepted by a process running in
  that group, or by root that will drop to it (:func:`trust_service_user`). The daemon can then read it
  again on a reload after dropping root (docs/service.md), but never change it.

A refusal is a :class:`SecretFileError` whose message names the file, what is wrong and the
command that fixes it; it never contains the file's contents.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

MAX_SECRET_FILE_BYTES = 16 << 20
"""More than any PSK, users or key file needs; a larger file is refused instead of read."""


class SecretFileError(Exception):
    """A secret file is missing, unreadable, too open, foreign-owned or malformed (the message
    says which and how to fix it)."""


def user_name(uid: int) -> str:
    """The login name of ``uid`` (the number as text if it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def trusted_owners() -> frozenset[int]:
    """Who may own our secret files: the effective user, root, and the service user a daemon
    started as root will become (:func:`trust_service_user`)."""
    return frozenset({os.geteuid(), 0, *_service_users})


_service_users: set[int] = set()
_service_groups: set[int] = set()


def trust_service_user(uid: int, gid: int) -> None:
    """A daemon started as root that will drop to ``uid``:``gid`` (tunvpn/shell/privileges.py)
    trusts what it would trust running as that user, as under systemd's ``User=``: files the
    user owns (``0600``; e.g. a plugin's state it rewrites), and root-owned ``0640`` files of
    group ``gid``. Called before the configuration is read."""
    if uid != 0:
        _service_users.add(uid)
    if gid != 0:
        _service_groups.add(gid)


def trusted_groups() -> frozenset[int]:
    """Groups that may read a root-owned secret file (``0640``): our own group when it is not
    root's, and those given to :func:`trust_service_user`."""
    egid = os.getegid()
    return frozenset(_service_groups | ({egid} if egid != 0 else set()))


def check_secret_stat(st: os.stat_result, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a file that is not a regular file owned by us (or root) and private (``0600``).

    :param st: ``os.fstat`` of the open descriptor (never a second ``stat`` by name).
    :raises SecretFileError: with the fix in the message.
    """
    p = os.fspath(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {p}: not a regular file")
    check_owner(st, p, what)
    service_readable = st.st_mode & 0o077 == 0o040 and st.st_uid == 0 and st.st_gid in trusted_groups()
    if st.st_mode & 0o077 and not service_readable:
        raise SecretFileError(
            f"{what} {p} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it. Fix: chmod 600 {p}"
        )


def check_owner(st: os.stat_result, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a file owned by anybody but the effective user or root."""
    if st.st_uid in trusted_owners():
        return
    p = os.fspath(path)
    euid = os.geteuid()
    raise SecretFileError(
        f"{what} {p} is owned by {user_name(st.st_uid)} (uid {st.st_uid}), not by the user "
        f"tunvpn runs as ({user_name(euid)}, uid {euid}) or root; that user can change it. "
        f"Refusing to use it. Fix: chown {user_name(euid)} {p} && chmod 600 {p}"
    )


def _open_error(exc: OSError, p: str, what: str, symlink_fix: str) -> SecretFileError:
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link as the last component
        return SecretFileError(
            f"{what} {p} is a symbolic link; refusing to follow it (a link can be re-pointed at "
            f"another file). Fix: {symlink_fix}"
        )
    if isinstance(exc, FileNotFoundError):
        return SecretFileError(f"{what} {p}: no such file")
    if isinstance(exc, PermissionError):
        return SecretFileError(f"{what} {p}: permission denied")
    return SecretFileError(f"{what} {p}: {exc.strerror or exc}")


def read_secret_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """The contents of a private secret file (see the module docstring for what is refused).

    :param what: what the file is, for messages (``"PSK file"``, ``"RADIUS secret_file"``).
    :raises SecretFileError: missing, a symbolic link, not regular, foreign-owned, too open.
    """
    p = os.fspath(Path(path))
    try:
        # O_NONBLOCK: opening a FIFO planted in place of the file must not hang the daemon.
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        fix = f"if you made the link, name the file itself in the setting ({os.path.realpath(p)})"
        raise _open_error(exc, p, what, fix) from None
    try:
        check_secret_stat(os.fstat(fd), p, what)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError(f"{what} {p}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    return data


def read_secret_text(path: str | os.PathLike[str], what: str) -> str:
    """:func:`read_secret_bytes` decoded as UTF-8."""
    data = read_secret_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} {path}: not UTF-8 text") from None


def open_private_append(path: str | os.PathLike[str], what: str) -> int:
    """A descriptor to append to ``path``, created ``0600`` if missing (for key logs).

    Refused: a symbolic link, a non-regular file, a file with more than one hard link (it would
    write into the linked file, e.g. one planted in /tmp), a file owned by another user, a file
    others may write to. A file of ours that others may only read is tightened to ``0600``.
    The caller closes the descriptor.
    """
    p = os.fspath(Path(path))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(p, flags, 0o600)
    except OSError as exc:
        raise _open_error(exc, p, what, f"rm {p} (it is created again, as a file)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {p}: not a regular file")
        if st.st_nlink != 1:
            raise SecretFileError(
                f"{what} {p} has {st.st_nlink} hard links; refusing to write keys into a file "
                f"that is also elsewhere. Fix: rm {p} (it is created again)"
            )
        check_owner(st, p, what)
        if st.st_mode & 0o022:
            raise SecretFileError(
                f"{what} {p} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"somebody else may have written into it. Refusing to use it. Fix: rm {p}, or "
                f"chmod 600 {p} if you trust its contents"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "SecretFileError",
    "check_owner",
    "check_secret_stat",
    "open_private_append",
    "read_secret_bytes",
    "read_secret_text",
    "trust_service_user",
    "trusted_groups",
    "trusted_owners",
    "user_name",
]
