"""Dropping root: a daemon started as root opens its TUN device and binds its ports, then becomes
an unprivileged user that keeps only ``CAP_NET_ADMIN`` and ``CAP_NET_BIND_SERVICE``.

Linux only (ctypes on libc's ``prctl`` and ``capset``; no dependency). The order matters:

1. no thread may be running yet: capabilities are per thread, so a thread started before the
   drop would keep root's (the caller drops before the data path thread and the plugin
   workers start; :func:`drop_privileges` refuses otherwise);
2. the bounding set loses every other capability (needs ``CAP_SETPCAP``, so while still root);
3. ``PR_SET_KEEPCAPS``, then ``initgroups``, ``setresgid``, ``setresuid`` to the user;
4. ``capset``: effective = permitted = inheritable = the kept ones; they are raised in the
   ambient set too, so a helper the daemon runs (``resolvectl``) has them as well;
5. ``PR_SET_NO_NEW_PRIVS``: no set-uid program or file capability can give any back;
6. the result is checked in ``/proc/self/status``, and ``setuid(0)`` must fail.

``CAP_NET_ADMIN``: routes and addresses on the TUN device as clients come and go, DNS through
systemd-resolved. ``CAP_NET_BIND_SERVICE``: ports below 1024 (IKE's 500) if a socket must be
bound again. The same set as the systemd units' ``CapabilityBoundingSet``
(contrib/systemd/).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
KEEP = (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE)
"""The capabilities a dropped daemon keeps."""

CAP_NAMES = {CAP_NET_BIND_SERVICE: "cap_net_bind_service", CAP_NET_ADMIN: "cap_net_admin"}

DEFAULT_USER = "tunvpn"
"""The account a daemon started as root becomes when no ``--user`` is given (if it exists)."""

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The privileges could not be dropped (the message says why); the daemon must not go on."""


@dataclass(frozen=True)
class ServiceUser:
    """The account to run as after the drop."""

    name: str
    """Its login name."""
    uid: int
    """Its user id (never 0)."""
    gid: int
    """Its primary group id."""

    @property
    def group(self) -> str:
        """The name of its primary group (the number as text if it has none)."""
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


def lookup_user(name: str) -> ServiceUser:
    """The account ``name`` (a name or a numeric uid).

    :raises PrivilegeError: no such account, or it is root.
    """
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"no user {name!r} to run as (create it: useradd --system tunvpn)") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root: give an unprivileged account (or --user root)")
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def choose_user(name: str | None) -> ServiceUser | None:
    """Whom a daemon started as root becomes: ``name`` (``--user``); ``root`` for nobody (keep
    root); without a name :data:`DEFAULT_USER` if that account exists, else nobody. Always
    None when not running as root on Linux (nothing to drop; under systemd the unit's
    ``User=`` has done it).

    :raises PrivilegeError: ``name`` names no account.
    """
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return None
    if name == "root":
        return None
    if name is None:
        try:
            return lookup_user(DEFAULT_USER)
        except PrivilegeError:
            return None
    return lookup_user(name)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _prctl(libc: ctypes.CDLL, what: str, *args: int) -> None:
    padded = [ctypes.c_ulong(a) for a in (*args, 0, 0, 0, 0)[:5]]
    if libc.prctl(*padded) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({what}) failed: {os.strerror(err)}")


def _capset(libc: ctypes.CDLL, caps: tuple[int, ...]) -> None:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def process_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict (``Uid``, ``CapEff``, ``NoNewPrivs``, ...)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def capability_names(mask: int) -> list[str]:
    """The capabilities set in a ``CapEff``-style mask, by name where we know it."""
    return [CAP_NAMES.get(cap, f"cap_{cap}") for cap in range(64) if mask >> cap & 1]


def drop_privileges(user: ServiceUser, keep: tuple[int, ...] = KEEP) -> None:
    """Become ``user`` keeping only ``keep`` (see the module docstring for the steps).

    :raises PrivilegeError: a thread is already running, a step failed, or the result is not
        what was asked (the caller must exit: carrying on as root would be silent).
    """
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    others += [f"{n} (not a Python thread)" for n in _task_names() if n is not None][len(others) :]
    if others:
        raise PrivilegeError(
            f"cannot drop privileges: threads already run ({', '.join(others)}), which would keep root's"
        )
    libc = _libc()
    for cap in range(last_cap() + 1):
        if cap not in keep:
            _prctl(libc, f"PR_CAPBSET_DROP {cap}", _PR_CAPBSET_DROP, cap)
    _prctl(libc, "PR_SET_KEEPCAPS", _PR_SET_KEEPCAPS, 1)
    try:
        os.initgroups(user.name, user.gid)
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot become {user.name}: {exc.strerror or exc}") from None
    _capset(libc, keep)
    for cap in keep:
        _prctl(libc, f"PR_CAP_AMBIENT_RAISE {cap}", _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap)
    _prctl(libc, "PR_SET_KEEPCAPS", _PR_SET_KEEPCAPS, 0)
    _prctl(libc, "PR_SET_NO_NEW_PRIVS", _PR_SET_NO_NEW_PRIVS, 1)
    _check(user, keep)
    log.info(
        "running as %s:%s (uid %d) with %s only; no new privileges",
        user.name,
        user.group,
        user.uid,
        ", ".join(capability_names(sum(1 << c for c in keep))),
    )


def _task_names() -> list[str | None]:
    """The names of this process's other threads as the kernel sees them (C libraries start
    threads Python does not list); empty where /proc is not there."""
    try:
        tasks = [t for t in os.listdir("/proc/self/task") if int(t) != threading.get_native_id()]
    except OSError:
        return []
    names: list[str | None] = []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f"{f.read().strip()}/{task}")
        except OSError:  # it ended meanwhile
            names.append(None)
    return names


def _check(user: ServiceUser, keep: tuple[int, ...]) -> None:
    """What /proc says, against what was asked."""
    status = process_status()
    wanted = sum(1 << c for c in keep)
    uids = {int(x) for x in status["Uid"].split()}
    if uids != {user.uid}:
        raise PrivilegeError(f"after the drop the uids are {status['Uid']}, not {user.uid}")
    for key in ("CapEff", "CapPrm", "CapBnd"):
        if int(status[key], 16) & ~wanted:
            raise PrivilegeError(f"after the drop {key} is {status[key]}: more than asked")
    if status.get("NoNewPrivs") != "1":
        raise PrivilegeError("after the drop NoNewPrivs is not set")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("setuid(0) still works after the drop")


__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "DEFAULT_USER",
    "KEEP",
    "PrivilegeError",
    "ServiceUser",
    "capability_names",
    "choose_user",
    "drop_privileges",
    "last_cap",
    "lookup_user",
    "process_status",
]
