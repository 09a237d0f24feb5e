"""The local control socket: ``tunvpn status`` and ``tunvpn reload`` talk to a running gateway or client.

Protocol (one request per connection, UTF-8 JSON lines)::

    client -> server   {"command": "status", "args": {}}\\n
    server -> client   {"ok": true, "result": ...}\\n     or   {"ok": false, "error": "message"}\\n

then the server closes the connection. ``events`` (a server given an :class:`EventHub`) keeps
it open instead: after ``{"ok": true, "result": {"stream": "events"}}`` one JSON object per
line for each event (:mod:`tunvpn.control.events`), until the client closes it; a client that
stops reading is dropped (its queue full, or no progress writing for :data:`STREAM_STALL`
seconds), never slowing the server. A request is at most :data:`MAX_REQUEST` bytes and must
arrive within :data:`READ_TIMEOUT` seconds, so a stuck or hostile local client cannot block the
control loop.

Security: the socket lives in a private directory (``/run/tunvpn``, 0700; ``$TUNVPN_RUN_DIR``
overrides it) and is itself 0600. The server also checks the peer's uid (``SO_PEERCRED`` on Linux,
``LOCAL_PEERCRED`` on macOS): only root and the server's own uid are answered.

Default socket names (:func:`default_socket_path`): ``gateway.sock`` for the gateway,
``client-IFACE.sock`` (or ``client.sock``) for a client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import errno
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import socket
import stat
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path, PurePath

from tunvpn.control.events import EventHub

log = logging.getLogger(__name__)

RUN_DIR_ENV = "TUNVPN_RUN_DIR"
DEFAULT_RUN_DIR = Path("/run/tunvpn")
GATEWAY_SOCKET = "gateway.sock"
MAX_REQUEST = 64 * 1024  # bytes, the request line included
READ_TIMEOUT = 5.0  # seconds for the whole request to arrive
MAX_RESPONSE = 16 * 1024 * 1024  # what the blocking client accepts
PERMISSION_DENIED = "permission denied"
STREAM_STALL = 5.0
"""Seconds an ``events`` subscriber may leave its socket full before it is dropped."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[str, dict[str, object]], Awaitable[object] | object]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ControlError(Exception):
    """A control request failed; the message is meant for the user (also sent as ``"error"``)."""


class ControlPermissionError(ControlError):
    """The socket or the server refused us: run as root or as the user running tunvpn."""


class ControlUsageError(ControlError):
    """The command line does not say which socket to use (e.g. several clients are running)."""


# --------------------------------------------------------------------------- paths


def run_dir() -> Path:
    """The directory of the control sockets: ``$TUNVPN_RUN_DIR`` or ``/run/tunvpn``."""
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def default_socket_path(role: str, name: str | None = None) -> Path:
    """``RUN_DIR/gateway.sock`` for the gateway, ``RUN_DIR/client-NAME.sock`` (or ``client.sock``)
    for a client, where NAME is its TUN device."""
    if role == "gateway":
        if name is not None:
            raise ValueError("the gateway socket has no name")
        return run_dir() / GATEWAY_SOCKET
    if role == "client":
        if name is None:
            return run_dir() / "client.sock"
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} cannot be part of a socket name (letters, digits, '.', '_', '-')")
        return run_dir() / f"client-{name}.sock"
    raise ValueError(f"unknown role {role!r} (gateway or client)")


def _ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700) if it is missing; warn if an existing one is writable by others."""
    try:
        st = directory.stat()
    except FileNotFoundError:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ControlError(
                f"cannot create the control directory {directory}: {exc.strerror or exc}"
            ) from None
        return
    except OSError as exc:
        raise ControlError(f"control directory {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"control directory {directory} exists and is not a directory")
    if st.st_mode & 0o022:
        log.warning(
            "control directory %s is writable by group/others (mode %04o); chmod 700 it",
            directory,
            stat.S_IMODE(st.st_mode),
        )


# --------------------------------------------------------------------------- peer credentials

_SOL_LOCAL = 0  # macOS <sys/un.h>
_LOCAL_PEERCRED = 0x001


def peer_credentials(sock: socket.socket) -> tuple[int, int | None] | None:
    """``(uid, pid)`` of the process at the other end of a connected Unix socket (pid may be None);
    None where the platform has no way to ask. Raises OSError if the platform has one and it fails."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid;}
        fmt = "iII"
        pid, uid, _gid = struct.unpack(
            fmt, sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
        )
        return uid, pid
    if sys.platform == "darwin":  # struct xucred {u_int cr_version; uid_t cr_uid; short; gid_t[16]}
        data = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 76)
        _version, uid = struct.unpack_from("=II", data)
        return uid, None
    return None


# --------------------------------------------------------------------------- JSON


_ADDRESS_TYPES = (
    ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network
    | ipaddress.IPv4Interface
    | ipaddress.IPv6Interface
)


def _json_default(obj: object) -> object:
    """Common non-JSON values a handler may return: addresses, paths, enums, sets, dataclasses."""
    if isinstance(obj, _ADDRESS_TYPES | PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.name.lower()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite(obj: object) -> object:
    """``obj`` with infinite and NaN floats replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _encode(message: dict[str, object]) -> bytes:
    return json.dumps(_finite(message), default=_json_default, allow_nan=False).encode() + b"\n"


# --------------------------------------------------------------------------- server


class ControlServer:
    """Serves the control socket at ``path`` on the running event loop.

    ``handler(command, args)`` returns (or, as a coroutine function, resolves to) the JSON-able
    result; it raises :class:`ControlError` for a refusal the user should see (unknown command,
    bad configuration), anything else becomes ``"internal error: ..."`` and is logged.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        max_request: int = MAX_REQUEST,
        read_timeout: float = READ_TIMEOUT,
        events: EventHub | None = None,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._events = events
        self._streams: set[asyncio.Event] = set()
        """The wake-up events of the open ``events`` streams (set by :meth:`close` to end them)."""
        self._closing = False
        self._max_request = max_request
        self._read_timeout = read_timeout
        self._uid = os.geteuid()
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Create the directory and the socket; replace a stale socket, refuse a live one."""
        if self._server is not None:
            raise ControlError(f"already serving {self.path}")
        _ensure_private_dir(self.path.parent)
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            st = os.lstat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=self._max_request)
        except OSError as exc:
            sock.close()
            self._unlink_own()
            if exc.errno == errno.EADDRINUSE:
                raise ControlError(f"another tunvpn process is already serving {self.path}") from None
            raise ControlError(
                f"cannot create the control socket {self.path}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            sock.close()
            self._unlink_own()
            raise
        log.debug("control socket %s ready", self.path)

    async def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; remove it if it is not needed")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(probe, str(self.path)), 1.0)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing the stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except (TimeoutError, BlockingIOError):
            pass  # a full backlog: somebody is listening but busy
        except OSError as exc:
            raise ControlError(
                f"cannot check the existing socket {self.path}: {exc.strerror or exc}"
            ) from None
        finally:
            probe.close()
        raise ControlError(f"another tunvpn process is already serving {self.path}")

    def close(self) -> None:
        """Stop accepting connections, end the event streams and remove the socket file if it
        is still ours."""
        self._closing = True
        for wake in list(self._streams):
            wake.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._unlink_own()

    def _unlink_own(self) -> None:
        if self._identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the control socket %s: %s", self.path, exc.strerror or exc)
        self._identity = None

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The connection task ends normally even when cancelled (the loop is shutting down): nobody
        # awaits it, and Python 3.11's stream callback logs a cancelled one as an error.
        try:
            response, linger = await self._respond(reader, writer)
            if response is _STREAM:
                await self._stream(reader, writer)
                return
            writer.write(response)
            await asyncio.wait_for(writer.drain(), self._read_timeout)
            if linger:  # let the peer read the answer before a close with unread data resets it
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()
                await self._discard(reader)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the control loop down
            log.exception("control socket %s: error while answering", self.path)
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        deadline = asyncio.get_running_loop().time() + min(self._read_timeout, 1.0)
        budget = 4 * self._max_request
        with contextlib.suppress(TimeoutError, ConnectionError):
            while budget > 0:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
                if not chunk:
                    return
                budget -= len(chunk)

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, bool]:
        """The encoded answer, and whether the request may not have been read completely."""
        if self._check_peer(writer):
            return _error(PERMISSION_DENIED), True
        try:
            line = await asyncio.wait_for(reader.readline(), self._read_timeout)
        except TimeoutError:
            log.warning("control socket %s: no complete request within %g s", self.path, self._read_timeout)
            return _error(f"request timed out after {self._read_timeout:g} s"), True
        except ValueError:  # StreamReader's limit: the line is longer than max_request
            log.warning("control socket %s: refused a request over %d bytes", self.path, self._max_request)
            return _error(f"request too large (limit {self._max_request} bytes)"), True
        try:
            command, args = _parse_request(line)
        except ControlError as exc:
            return _error(str(exc)), False
        if command == "events" and self._events is not None:
            return _STREAM, False
        try:
            result = self._handler(command, args)
            if inspect.isawaitable(result):
                result = await result
        except ControlError as exc:
            return _error(str(exc)), False
        except Exception as exc:
            log.exception("control command %r failed", command)
            return _error(f"internal error: {_describe(exc)}"), False
        try:
            return _encode({"ok": True, "result": result}), False
        except (TypeError, ValueError) as exc:
            log.error("control command %r returned a result that is not JSON: %s", command, exc)
            return _error(f"internal error: result is not JSON: {exc}"), False

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``events``: the subscriber's events as they come, until it closes or stalls."""
        assert self._events is not None
        subscriber = self._events.subscribe()
        if subscriber is None:
            writer.write(_error(f"too many event subscribers (at most {self._events.max_subscribers})"))
            await asyncio.wait_for(writer.drain(), self._read_timeout)
            return
        wake = asyncio.Event()
        subscriber.wake = wake.set
        self._streams.add(wake)
        closed = asyncio.ensure_future(reader.read(1))  # the client closing (or sending anything)
        try:
            writer.write(_encode({"ok": True, "result": {"stream": "events"}}))
            while True:
                await asyncio.wait_for(writer.drain(), STREAM_STALL)
                waiter = asyncio.ensure_future(wake.wait())
                done, _ = await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if closed in done or subscriber.dropped or self._closing:
                    if subscriber.dropped:
                        log.warning(
                            "control socket %s: an events subscriber stopped reading; dropped", self.path
                        )
                    return
                wake.clear()
                for event in subscriber.take():
                    writer.write(_encode(event.record()))
        except TimeoutError:
            log.warning("control socket %s: an events subscriber stopped reading; dropped", self.path)
        finally:
            closed.cancel()
            self._streams.discard(wake)
            self._events.unsubscribe(subscriber)

    def _check_peer(self, writer: asyncio.StreamWriter) -> bool:
        """True if the peer must be refused (neither root nor our uid, or its uid is unknowable)."""
        sock = writer.get_extra_info("socket")
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            log.warning("control socket %s: cannot read the peer's credentials (%s); refused", self.path, exc)
            return True
        if creds is None:  # no way to ask on this platform: the 0600 socket file must do
            return False
        uid, pid = creds
        if uid in (0, self._uid):
            return False
        log.warning(
            "control socket %s: refused a request from uid %d%s",
            self.path,
            uid,
            f" (pid {pid})" if pid else "",
        )
        return True


_STREAM = b""
"""What :meth:`ControlServer._respond` answers for a streaming command (``events``)."""


def _error(message: str) -> bytes:
    return _encode({"ok": False, "error": message})


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_request(line: bytes) -> tuple[str, dict[str, object]]:
    if not line.strip():
        raise ControlError("bad request: empty")
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"bad request: not JSON ({exc})") from None
    except RecursionError:
        raise ControlError("bad request: nested too deeply") from None
    if not isinstance(request, dict):
        raise ControlError("bad request: not a JSON object")
    command = request.get("command")
    if not isinstance(command, str) or not command:
        raise ControlError('bad request: "command" must be a non-empty string')
    args = request.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError('bad request: "args" must be an object')
    return command, args


# --------------------------------------------------------------------------- blocking client


def _who(path: Path) -> str:
    return "tunvpn client" if path.name.startswith("client") else "gateway"


def _connect(sock: socket.socket, p: Path, timeout: float) -> None:
    """Connect ``sock`` to the control socket ``p``; each way it can fail as a ControlError."""
    try:
        sock.connect(str(p))
    except FileNotFoundError:
        raise ControlError(f"no such socket: is the {_who(p)} running? ({p})") from None
    except ConnectionRefusedError:
        raise ControlError(f"nobody is listening on {p}: is the {_who(p)} running? (stale socket)") from None
    except PermissionError:
        raise ControlPermissionError(
            f"permission denied: {p} (run as root or as the user running the {_who(p)})"
        ) from None
    except TimeoutError:
        raise ControlError(f"timed out after {timeout:g} s connecting to {p}") from None
    except OSError as exc:
        raise ControlError(f"cannot connect to {p}: {exc.strerror or exc}") from None


def request(
    path: str | os.PathLike[str],
    command: str,
    args: dict[str, object] | None = None,
    timeout: float = 10.0,
) -> object:
    """Send one command to the server at ``path`` and return its result.

    Raises :class:`ControlError` with the server's message on ``"ok": false``, or with a message
    naming the socket when it is missing, refuses us (:class:`ControlPermissionError`) or times out.
    """
    p = Path(path)
    payload = json.dumps({"command": command, "args": args or {}}, default=_json_default).encode() + b"\n"
    if len(payload) > MAX_REQUEST:
        raise ControlError(f"request too large ({len(payload)} bytes, limit {MAX_REQUEST})")
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, p, timeout)
        try:
            sock.sendall(payload)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            data = _read_line(sock, deadline)
        except TimeoutError:
            raise ControlError(f"timed out after {timeout:g} s waiting for the {_who(p)} ({p})") from None
        except OSError as exc:
            raise ControlError(f"connection to {p} failed: {exc.strerror or exc}") from None
    return _parse_response(data, p)


def stream(path: str | os.PathLike[str], command: str = "events", timeout: float = 10.0) -> Iterator[object]:
    """Send a streaming command (``events``) and yield each object the server sends, until it
    closes the connection. Connection errors as :func:`request` raises them."""
    p = Path(path)
    payload = json.dumps({"command": command, "args": {}}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, p, timeout)
        try:
            sock.sendall(payload)
        except OSError as exc:
            raise ControlError(f"connection to {p} failed: {exc.strerror or exc}") from None
        with sock.makefile("rb") as lines:
            try:
                first = lines.readline(MAX_RESPONSE)
            except TimeoutError:
                raise ControlError(f"timed out after {timeout:g} s waiting for the {_who(p)} ({p})") from None
            _parse_response(first.rstrip(b"\n"), p)  # raises the server's refusal
            sock.settimeout(None)  # events come when they come
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
        if size > MAX_RESPONSE:
            raise ControlError(f"answer larger than {MAX_RESPONSE} bytes")
    return b"".join(chunks).split(b"\n", 1)[0]


def _parse_response(data: bytes, path: Path) -> object:
    if not data.strip():
        raise ControlError(f"the {_who(path)} closed the connection without an answer ({path})")
    try:
        response = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ControlError(f"the {_who(path)} sent something that is not JSON ({path})") from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError(f"the {_who(path)} sent a malformed answer ({path})")
    if response["ok"]:
        return response.get("result")
    error = str(response.get("error") or "unknown error")
    if error == PERMISSION_DENIED:
        raise ControlPermissionError(f"permission denied by the {_who(path)} (run as root or as its user)")
    raise ControlError(error)


# --------------------------------------------------------------------------- formatting


def _clean(value: object) -> str:
    """``value`` as text safe for a terminal: control characters (a VPN user's name may hold
    escape sequences) are shown escaped instead of being interpreted."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 04m``, ``2d 03h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def format_bytes(count: float) -> str:
    """``512 B``, ``1.2 KiB``, ``3.4 MiB``, ..."""
    value = float(count)
    if abs(value) < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _packets(count: float) -> str:
    n = int(count)
    if n < 10_000:
        return f"{n} pkt" if n == 1 else f"{n} pkts"
    if n < 10_000_000:
        return f"{n / 1000:.1f}k pkts"
    return f"{n / 1_000_000:.1f}M pkts"


def _expires(value: object, present: bool) -> str | None:
    if not present:
        return None
    seconds = _number(value)
    if seconds is None:
        return "no expiry"
    return "expired" if seconds <= 0 else f"expires in {format_duration(seconds)}"


def _text(d: dict[str, object], key: str) -> str | None:
    value = d.get(key)
    return None if value is None or value == "" else _clean(value)


def _traffic(sa: dict[str, object], direction: str) -> str | None:
    nbytes = _number(sa.get(f"bytes_{direction}"))
    npackets = _number(sa.get(f"packets_{direction}"))
    if nbytes is None and npackets is None:
        return None
    parts = [format_bytes(nbytes) if nbytes is not None else "? B"]
    if npackets is not None:
        parts.append(f"({_packets(npackets)})")
    return f"{direction} " + " ".join(parts)


def _format_sa(sa: dict[str, object]) -> str:
    parts: list[str] = [_text(sa, "name") or "(unnamed)"]
    local, remote = _text(sa, "local_ts"), _text(sa, "remote_ts")
    if local or remote:
        parts.append(f"{local or '?'} <=> {remote or '?'}")
    if esp := _text(sa, "esp"):
        parts.append(f"esp {esp}")
    if "pfs" in sa:
        parts.append(f"pfs {_text(sa, 'pfs') or 'none'}")
    if sa.get("esn") is True:
        parts.append("esn")
    spi_in, spi_out = _text(sa, "spi_in"), _text(sa, "spi_out")
    if spi_in or spi_out:
        parts.append(f"spi in {spi_in or '?'} out {spi_out or '?'}")
    for direction in ("in", "out"):
        if traffic := _traffic(sa, direction):
            parts.append(traffic)
    drops = sa.get("drops_in")
    if isinstance(drops, dict) and drops:
        counted = [(k, _number(v)) for k, v in drops.items()]
        parts.append(
            "dropped in " + ", ".join(f"{_clean(str(k))} {int(n)}" for k, n in counted if n is not None)
        )
    if expires := _expires(sa.get("expires_in"), "expires_in" in sa):
        parts.append(expires)
    return "  ".join(parts)


def _format_tunnel(tunnel: dict[str, object]) -> list[str]:
    peer = _text(tunnel, "peer") or "?"
    peer_id = _text(tunnel, "peer_id")
    parts = [f"{peer} ({peer_id})" if peer_id and peer_id != peer else peer]
    if user := _text(tunnel, "user"):
        parts.append(f"user {user}")
    groups = tunnel.get("groups")
    if isinstance(groups, list) and groups:
        parts.append("groups " + ",".join(_clean(g) for g in groups))
    if address := _text(tunnel, "address"):
        parts.append(f"address {address}")
    if address6 := _text(tunnel, "address6"):
        parts.append(f"address {address6}")
    phase1 = tunnel.get("phase1")
    if isinstance(phase1, dict):
        p1 = " ".join(t for t in (_text(phase1, "exchange"), _text(phase1, "suite")) if t)
        parts.append(f"phase 1 {p1}" if p1 else "phase 1")
        if expires := _expires(phase1.get("expires_in"), "expires_in" in phase1):
            parts.append(expires)
    else:
        parts.append("no phase 1")
    lines = ["  ".join(parts)]
    sas = tunnel.get("sas")
    sa_list = [sa for sa in sas if isinstance(sa, dict)] if isinstance(sas, list) else []
    if sa_list:
        lines += ["    " + _format_sa(sa) for sa in sa_list]
    else:
        lines.append("    no IPsec SAs")
    protocols = tunnel.get("protocols")
    for protocol in protocols if isinstance(protocols, list) else ():
        if isinstance(protocol, dict):
            name, state = _text(protocol, "name") or "?", _text(protocol, "state") or "?"
            message = _text(protocol, "message")
            lines.append(f"    {name}: {state}" + (f" ({message})" if message else ""))
    peers = tunnel.get("peers")
    for peer in peers if isinstance(peers, list) else ():
        if isinstance(peer, dict):  # issue 17: the peers this client was introduced to
            name, address = _text(peer, "name") or "?", _text(peer, "address") or "?"
            endpoint, path = _text(peer, "endpoint") or "?", _text(peer, "path") or "?"
            role = _text(peer, "role") or "?"
            line = f"    peer {name} {address} at {endpoint}: {path} ({role})"
            if remote := _text(peer, "remote"):
                line += f" via {remote}"
            for direction in ("in", "out"):
                if traffic := _traffic(peer, direction):
                    line += f"  {traffic}"
            if error := _text(peer, "error"):
                line += f"  last error: {error}"
            lines.append(line)
    return lines


def _format_ike(ike: dict[str, object]) -> str:
    """The IKE side under load (issue 14): half-open phase 1 SAs, the queue from the data
    thread, what was dropped and which answers to unverified senders were not sent, by
    reason (the most first)."""
    parts = ["ike"]
    for key, label in (("half_open", "half-open"), ("queue_depth", "queue")):
        value = _number(ike.get(key))
        if value is not None:
            parts.append(f"{label} {int(value)}")
    for key, label in (("dropped", "dropped"), ("withheld", "not answered")):
        counted = ike.get(key)
        if isinstance(counted, dict):
            counts = [(n, _clean(reason)) for reason, n in counted.items() if _number(n)]
            counts.sort(key=lambda item: (-int(item[0]), item[1]))
            if counts:
                parts.append(f"{label} " + ", ".join(f"{reason} {int(n)}" for n, reason in counts))
    return "  ".join(parts)


def format_status(result: dict[str, object], now: float | None = None) -> str:
    """The ``status`` result for humans: a header line, then per tunnel a line and one indented
    line per IPsec SA. Missing or malformed keys are shown as absent, never an error."""
    if not isinstance(result, dict):
        return _clean(json.dumps(result))
    now = time.time() if now is None else now
    header = [_text(result, "role") or "tunvpn"]
    pid = _number(result.get("pid"))
    if pid is not None:
        header.append(f"pid {int(pid)}")
    started = _number(result.get("started"))
    if started is not None:
        header.append(f"up {format_duration(now - started)}")
    if "config" in result:
        header.append(f"config {_text(result, 'config') or '(command line)'}")
    generation = _number(result.get("generation"))
    if generation is not None:
        header.append(f"generation {int(generation)}")
    if listen := _text(result, "listen"):
        header.append(f"listen {listen}")
    lines = ["  ".join(header)]
    if isinstance(ike := result.get("ike"), dict):
        lines.append(_format_ike(ike))
    tunnels = result.get("tunnels")
    tunnel_list = [t for t in tunnels if isinstance(t, dict)] if isinstance(tunnels, list) else []
    if not tunnel_list:
        lines.append("no tunnels")
    for tunnel in tunnel_list:
        lines += _format_tunnel(tunnel)
    sites = result.get("sites")
    for site in sites if isinstance(sites, list) else ():
        if isinstance(site, dict):  # issue 18: the other sites' gateways
            name, address = _text(site, "name") or "?", _text(site, "address") or "?"
            state = _text(site, "state") or "?"
            nets = site.get("networks")
            networks = ", ".join(_clean(str(n)) for n in nets) if isinstance(nets, list) and nets else "-"
            count = _number(site.get("sas"))
            line = f"site {name} {address}: {state}, networks {networks}"
            if count is not None:
                line += f", {int(count)} SA pair(s)"
            introduced = _number(site.get("introduced"))
            if introduced is not None:
                line += f", {int(introduced)} of our clients introduced"
            if refused := _number(site.get("refused")):
                line += f", {int(refused)} introduction(s) refused"
            if error := _text(site, "error"):
                line += f"  last error: {error}"
            lines.append(line)
            clients = site.get("clients")
            for client in clients if isinstance(clients, list) else ():
                if isinstance(client, dict):  # its clients it introduced to us
                    who = _text(client, "name") or "?"
                    inner, endpoint = _text(client, "address") or "?", _text(client, "endpoint") or "?"
                    pairs = _number(client.get("sas"))
                    lines.append(
                        f"  client {who} {inner} at {endpoint}: {_text(client, 'state') or '?'}"
                        + (f", {int(pairs)} SA pair(s)" if pairs is not None else "")
                    )
    return "\n".join(lines)


def format_reload(result: object) -> str:
    """The ``reload`` result for humans: the new generation, the changes, the clients updated."""
    if not isinstance(result, dict):
        return f"reloaded: {_clean(json.dumps(result))}"
    generation = _number(result.get("generation"))
    lines = [f"reloaded: policy generation {int(generation)}" if generation is not None else "reloaded"]
    changes = result.get("changes")
    if isinstance(changes, list) and changes:
        lines += [f"  {_clean(change)}" for change in changes]
    elif isinstance(changes, list):
        lines.append("  no changes")
    updated = _number(result.get("clients_updated"))
    if updated is not None:
        n = int(updated)
        lines.append(f"{n} client{'' if n == 1 else 's'} updated")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def add_status_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "status",
        help="show the tunnels of a running gateway or client",
        description="Ask a running gateway or client (over its control socket) for its tunnels and SAs.",
    )
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the control socket (default: {GATEWAY_SOCKET} if present, else the only client-*.sock "
        f"in ${RUN_DIR_ENV} or {DEFAULT_RUN_DIR})",
    )
    p.add_argument(
        "--role", choices=("gateway", "client"), help="which process to ask when --socket is not given"
    )
    p.add_argument("--timeout", type=_timeout, default=10.0, metavar="SECONDS", help="give up after (10)")
    return p


def add_reload_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "reload",
        help="make a running gateway re-read its configuration",
        description="Make a running gateway re-read its configuration file; if the new file is bad "
        "the gateway keeps the old configuration and the error names the file, line and key.",
    )
    p.add_argument(
        "--socket", metavar="PATH", help=f"the gateway's control socket (default {GATEWAY_SOCKET})"
    )
    p.add_argument("--timeout", type=_timeout, default=10.0, metavar="SECONDS", help="give up after (10)")
    return p


def add_events_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "events",
        help="follow what a running gateway does (logins, SAs, rekeys, reloads), like swanctl --monitor",
        description="Stream a running gateway's events over its control socket until interrupted: "
        "logins and refused logins, IPsec SAs up and down, rekeys, reloads, logouts.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line (docs/service.md)")
    p.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the gateway's control socket (default: {GATEWAY_SOCKET} in the run dir)",
    )
    return p


def format_event(record: object) -> str:
    """One event for humans: time, kind, then its fields (``key=value``)."""
    if not isinstance(record, dict):
        return _clean(json.dumps(record))
    when = record.get("time")
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(float(when)))
        if isinstance(when, int | float)
        else "--:--:--"
    )
    kind = _clean(record.get("event", "?"))
    rest = " ".join(f"{_clean(k)}={_clean(v)}" for k, v in record.items() if k not in ("event", "time"))
    return f"{stamp} {kind} {rest}".rstrip()


def run_events(args: argparse.Namespace) -> int:
    """``tunvpn events``: print events until interrupted (0) or the gateway goes (1)."""
    path = Path(args.socket) if args.socket else default_socket_path("gateway")
    try:
        for record in stream(path, "events"):
            print(json.dumps(record) if args.json else format_event(record), flush=True)
    except ControlError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return EXIT_OK
    except (OSError, ValueError) as exc:
        print(f"tunvpn: error: the event stream broke: {_clean(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    print("tunvpn: the gateway closed the event stream", file=sys.stderr)
    return EXIT_FAILURE


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:
        return False
    return True


def find_socket(role: str | None = None) -> Path:
    """The socket ``tunvpn status`` talks to without ``--socket``: the gateway's if it exists (or
    ``role`` is gateway), else the only client socket in the run directory."""
    gateway = default_socket_path("gateway")
    if role == "gateway" or (role is None and _exists(gateway)):
        return gateway
    directory = run_dir()
    try:
        clients = sorted(
            p
            for p in directory.iterdir()
            if p.name == "client.sock" or (p.name.startswith("client-") and p.suffix == ".sock")
        )
    except OSError:
        clients = []
    if len(clients) == 1:
        return clients[0]
    if len(clients) > 1:
        names = ", ".join(str(p) for p in clients)
        raise ControlUsageError(f"several tunvpn clients are running ({names}); choose one with --socket")
    if role == "client":
        raise ControlError(f"no client socket in {directory}: is a tunvpn client running?")
    return gateway  # request() then says that no gateway is running


def _fail(exc: ControlError) -> int:
    print(f"tunvpn: error: {_clean(exc)}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, ControlPermissionError | ControlUsageError) else EXIT_FAILURE


def run_status(args: argparse.Namespace) -> int:
    """``tunvpn status``: 0 printed, 1 the process could not be asked, 2 bad arguments or privileges."""
    try:
        path = Path(args.socket) if args.socket else find_socket(args.role)
        result = request(path, "status", timeout=args.timeout)
    except ControlError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result, indent=2))
    elif isinstance(result, dict):
        print(format_status(result))
    else:
        print(_clean(json.dumps(result)))
    return EXIT_OK


def run_reload(args: argparse.Namespace) -> int:
    """``tunvpn reload``: 0 reloaded, 1 refused (the gateway keeps its old configuration), 2 privileges."""
    path = Path(args.socket) if args.socket else default_socket_path("gateway")
    try:
        result = request(path, "reload", timeout=args.timeout)
    except ControlError as exc:
        return _fail(exc)
    print(format_reload(result))
    return EXIT_OK


__all__ = [
    "ControlError",
    "ControlPermissionError",
    "ControlUsageError",
    "ControlServer",
    "Handler",
    "MAX_REQUEST",
    "READ_TIMEOUT",
    "RUN_DIR_ENV",
    "add_events_parser",
    "add_reload_parser",
    "add_status_parser",
    "default_socket_path",
    "find_socket",
    "format_bytes",
    "format_duration",
    "format_event",
    "format_reload",
    "format_status",
    "run_events",
    "stream",
    "peer_credentials",
    "request",
    "run_dir",
    "run_reload",
    "run_status",
]
