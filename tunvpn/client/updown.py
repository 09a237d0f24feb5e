"""``tunvpn up NAME`` / ``tunvpn down NAME``: named client profiles in the background, as
``wg-quick up wg0`` and ``nmcli connection up office`` users expect (docs/service.md).

A profile NAME is ``$XDG_CONFIG_HOME/tunvpn/NAME.toml`` (``~/.config/tunvpn/NAME.toml``) if that
exists, else ``/etc/tunvpn/NAME.toml``; a path (with a ``/`` or ending in ``.toml``) is taken as
it is. ``up`` starts ``tunvpn connect -c PROFILE`` in a session of its own (it outlives the
command), with

* its pid (and process start time, so a reused pid is not mistaken for it) in
  ``RUN_DIR/NAME.pid``, its output in ``RUN_DIR/NAME.log``, its control socket
  ``RUN_DIR/NAME.sock`` (``tunvpn status --socket ...``); RUN_DIR is ``/run/tunvpn``
  (``$TUNVPN_RUN_DIR`` overrides), as for every control socket;
* ``$NOTIFY_SOCKET`` pointing at a datagram socket of ``up`` itself: the client says READY=1
  when its tunnel is up (tunvpn/shell/sdnotify.py, the same message systemd waits for).

``up`` returns 0 once the tunnel is up, or 1 with the client's own last words if it exits
first, or stops it after ``timeout`` seconds. ``down`` sends SIGTERM and returns once the
process is gone: by then it has deleted its SAs and put DNS back (the client does that before it
exits). Under systemd, ``systemctl start tunvpn@NAME`` is the same with the unit's hardening.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunvpn.control.server import run_dir

SYSTEM_DIR = Path("/etc/tunvpn")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
UP_TIMEOUT = 60.0
DOWN_TIMEOUT = 15.0


class UpDownError(Exception):
    """``up`` or ``down`` cannot do what was asked (the message says why)."""


def user_dir() -> Path:
    """``$XDG_CONFIG_HOME/tunvpn`` or ``~/.config/tunvpn``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tunvpn"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UpDownError(
            f"profile name {name!r}: letters, digits, '_', '.', '-' (or give a path to a .toml)"
        )
    return name


def find_profile(name: str) -> tuple[str, Path]:
    """``(NAME, path)`` of a profile given by name or path."""
    if "/" in name or name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise UpDownError(f"no profile {path}")
        return check_name(path.stem), path.resolve()
    check_name(name)
    tried = [user_dir() / f"{name}.toml", SYSTEM_DIR / f"{name}.toml"]
    for path in tried:
        if path.is_file():
            return name, path
    raise UpDownError(f"no profile {name!r}: looked for {' and '.join(map(str, tried))}")


@dataclass(frozen=True)
class Paths:
    pid: Path
    log: Path
    socket: Path

    @classmethod
    def of(cls, name: str) -> Paths:
        base = run_dir()
        return cls(base / f"{name}.pid", base / f"{name}.log", base / f"{name}.sock")


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot); None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def running(paths: Paths) -> int | None:
    """The pid of the client the pid file names, if that very process still runs."""
    try:
        fields = paths.pid.read_text().split()
        pid, started = int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or start_time(pid) != started:
        return None
    return pid


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _log_tail(path: Path, offset: int) -> str:
    """The reason a client gave up: its ``tunvpn: ...`` line, else its last line (since ``offset``)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if line.startswith("tunvpn:"):
            return line.removeprefix("tunvpn:").strip()
    return lines[-1] if lines else "(no output)"


def up(name: str, *, timeout: float = UP_TIMEOUT, verbose: int = 0) -> str:
    """Start the client of profile ``name`` and wait until its tunnel is up; what to tell the user.

    :raises UpDownError: no such profile, already up, or the tunnel did not come up (with why).
    """
    name, profile = find_profile(name)
    paths = Paths.of(name)
    try:
        paths.pid.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UpDownError(
            f"cannot write {paths.log}: {exc.strerror or exc} (run as root, or set TUNVPN_RUN_DIR)"
        ) from None
    os.close(log_fd)
    pid = running(paths)
    if pid is not None:
        raise UpDownError(f"{name} is already up (pid {pid}); tunvpn down {name} first")
    with contextlib.suppress(FileNotFoundError):
        paths.pid.unlink()  # a stale one
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    address = f"tunvpn-up-{name}-{os.getpid()}-{secrets.token_hex(4)}"
    listener.bind(b"\0" + address.encode())
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    offset = os.fstat(log_fd).st_size
    argv = [sys.executable, "-m", "tunvpn", "connect", "-c", str(profile), "--control", str(paths.socket)]
    argv += ["-v"] * verbose
    env = {**os.environ, "NOTIFY_SOCKET": "@" + address}
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # not killed with our terminal; `down` stops it
        )
    finally:
        os.close(log_fd)
    with listener:
        started = start_time(child.pid)
        _write_private(paths.pid, f"{child.pid} {started}\n")
        deadline = time.monotonic() + timeout
        listener.settimeout(0.2)
        while True:
            try:
                message = listener.recv(4096).decode(errors="replace")
            except TimeoutError:
                message = ""
            if "READY=1" in message.splitlines():
                return (
                    f"{name} is up (pid {child.pid}); log {paths.log}; tunvpn status --socket {paths.socket}"
                )
            if child.poll() is not None:
                with contextlib.suppress(FileNotFoundError):
                    paths.pid.unlink()
                raise UpDownError(f"{name} did not come up: {_log_tail(paths.log, offset)}")
            if time.monotonic() > deadline:
                _stop(child.pid, DOWN_TIMEOUT)
                child.poll()
                with contextlib.suppress(FileNotFoundError):
                    paths.pid.unlink()
                raise UpDownError(
                    f"{name}: no tunnel within {timeout:g} s, stopped; last: {_log_tail(paths.log, offset)}"
                )


def _stop(pid: int, timeout: float) -> bool:
    """SIGTERM, wait until gone; SIGKILL after ``timeout``. True if it went by itself."""
    started = start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours when `up` gives up on it
        current = start_time(pid)
        if current is None or current != started or _is_zombie(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2 :].startswith("Z")
    except (OSError, ValueError):
        return True


def down(name: str, *, timeout: float = DOWN_TIMEOUT) -> str:
    """Stop the client ``up`` started for ``name``; returns once it has cleaned up.

    :raises UpDownError: it is not up.
    """
    if "/" in name or name.endswith(".toml"):
        name = Path(name).stem
    paths = Paths.of(check_name(name))
    pid = running(paths)
    if pid is None:
        stale = paths.pid.exists()
        with contextlib.suppress(FileNotFoundError):
            paths.pid.unlink()
        raise UpDownError(f"{name} is not up" + (" (a stale pid file was removed)" if stale else ""))
    clean = _stop(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        paths.pid.unlink()
    if not clean:
        raise UpDownError(
            f"{name} (pid {pid}) did not stop within {timeout:g} s and was killed; its DNS changes are "
            f"undone when a client next starts"
        )
    return f"{name} is down"


__all__ = ["UpDownError", "down", "find_profile", "up", "user_dir"]
