"""The secrets store: one JSON file of :class:`~tunvpn_otp.core.Record` per user name.

The file holds every user's seed and PIN hash, so it must be owner-only: a group/other
readable or foreign-owned file is refused (:class:`StoreError` names the file and the fix).
It is rewritten atomically (a 0600 temp file in the same directory, then ``os.replace``) under
an exclusive ``fcntl.flock`` on ``FILE.lock``, since several gateway worker threads (and a
``tunvpn otp`` command) may verify and update at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tunvpn_otp.core import Record

FORMAT = 1


class StoreError(Exception):
    """The store file cannot be used (permissions, owner, syntax); the message says why."""


class Store:
    """``with store.edit() as users: users["carol"] = record`` (saved when the block ends)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _check(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreError(
                f"{self.path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
                f"chown it, then chmod 600 {self.path}"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise StoreError(
                f"{self.path} is readable or writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"it holds OTP secrets: chmod 600 {self.path}"
            )

    def _read(self, *, missing_ok: bool) -> dict[str, Record]:
        try:
            # O_NONBLOCK: a FIFO in the store's place must not hang the gateway (it is refused)
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise StoreError(f"{self.path}: no such OTP store (create it with `tunvpn otp enroll`)") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from None
        try:
            self._check(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            text = f.read()
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            return {user: Record.from_json(rec) for user, rec in data["users"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.path}: not an OTP store ({exc})") from None

    def _write(self, users: dict[str, Record]) -> None:
        data = {"format": FORMAT, "users": {u: r.to_json() for u, r in sorted(users.items())}}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def check(self) -> int:
        """Read the store as a login does, without its lock (a check at start, or of a reload:
        the file is only ever replaced whole, so a reader sees one version); the number of users.
        Raises :class:`StoreError`: missing, not owner-only, not an OTP store."""
        return len(self._read(missing_ok=False))

    def load(self) -> dict[str, Record]:
        """Every record (read under the lock)."""
        with self._locked():
            return self._read(missing_ok=False)

    def get(self, user: str) -> Record | None:
        return self.load().get(user)

    @contextlib.contextmanager
    def edit(self, *, create: bool = False) -> Iterator[dict[str, Record]]:
        """The records, locked for the block; written back atomically if they changed."""
        with self._locked():
            users = self._read(missing_ok=create)
            before = dict(users)
            yield users
            if users != before or (create and not self.path.exists()):
                self._write(users)
