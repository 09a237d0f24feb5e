"""A real FreeRADIUS on loopback for the RADIUS plugin's tests (config: contrib/freeradius/).

``freeradius_server`` copies contrib/freeradius into a temporary directory, fills in the
directory and two free UDP ports, starts ``freeradius -f -d DIR -l stdout`` (``-X`` as well
when ``TUNVPN_RADIUS_DEBUG=1``), waits for "Ready to process requests" and until the auth
port answers, and always stops it. The server's log is printed when a test using it fails.
Without FreeRADIUS installed the tests skip, unless ``TUNVPN_REQUIRE_ALL=1`` (then they fail).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "freeradius"
SECRET = "Kr_juOKx6qTFPr-aFZCo6Ags8K-ra8OU"  # the public test secret of contrib/freeradius/clients.conf
FREERADIUS = "freeradius"


def freeradius_binary() -> str | None:
    return shutil.which(FREERADIUS) or (
        "/usr/sbin/freeradius" if os.access("/usr/sbin/freeradius", os.X_OK) else None
    )


def free_udp_port_pair() -> tuple[int, int]:
    """Two consecutive UDP ports free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port, port + 1
    raise RuntimeError("no two consecutive free UDP ports on 127.0.0.1")


@dataclass
class FreeRadius:
    """A running FreeRADIUS: where it listens, its shared secret, its accounting detail file."""

    directory: Path
    auth_port: int
    acct_port: int
    secret: str = field(default=SECRET, repr=False)
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def detail(self) -> Path:
        return self.directory / "acct" / "detail"

    def log(self) -> str:
        return "".join(self.lines)

    def detail_text(self) -> str:
        return self.detail.read_text() if self.detail.exists() else ""

    def wait_for_detail(self, *needles: str, timeout: float = 5.0) -> str:
        """The detail file once it contains every needle (or what it holds after timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.detail_text()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def secret_file(self, tmp: Path, name: str = "radius-secret") -> Path:
        """The shared secret in an owner-only file, as the plugin wants it."""
        path = tmp / name
        path.write_text(self.secret + "\n")
        path.chmod(0o600)
        return path


def _config(directory: Path, auth_port: int, acct_port: int) -> None:
    shutil.copytree(CONTRIB, directory, dirs_exist_ok=True)
    for sub in ("log", "acct", "run"):
        (directory / sub).mkdir(exist_ok=True)
    conf = directory / "radiusd.conf"
    text = conf.read_text()
    text = text.replace("@DIR@", str(directory))
    text = text.replace("@AUTH_PORT@", str(auth_port)).replace("@ACCT_PORT@", str(acct_port))
    conf.write_text(text)
    for path in directory.rglob("*"):  # FreeRADIUS refuses world-writable configuration
        path.chmod(0o700 if path.is_dir() else 0o600)
    directory.chmod(0o700)


def _answers(port: int) -> bool:
    """Does something answer a (deliberately unauthenticated) Status-Server on the port? Any
    answer at all, or an ICMP "port unreachable" turning into ConnectionRefusedError, tells us
    whether the server is up; FreeRADIUS drops a Status-Server without Message-Authenticator
    silently, so we only use this to see that the port is bound (see _wait_ready)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.connect(("127.0.0.1", port))
        try:
            s.send(bytes([12, 1, 0, 20]) + bytes(16))
            s.recv(4096)
        except ConnectionRefusedError:
            return False
        except TimeoutError:
            return True  # bound (no ICMP unreachable), just quiet
        return True


def start_freeradius(directory: Path, netns: str | None = None) -> FreeRadius:
    """Start FreeRADIUS on 127.0.0.1 of this network namespace, or of ``netns`` (then it is
    ready once it says so: the port probe below runs in ours)."""
    binary = freeradius_binary()
    assert binary is not None
    auth_port, acct_port = free_udp_port_pair()
    _config(directory, auth_port, acct_port)
    server = FreeRadius(directory, auth_port, acct_port)
    args = [binary, "-f", "-d", str(directory), "-l", "stdout"]
    if netns is not None:
        args = ["ip", "netns", "exec", netns, *args]  # ip execs it: the pid is FreeRADIUS's
    if os.environ.get("TUNVPN_RADIUS_DEBUG") == "1":
        args.append("-X")
    server.process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    ready = threading.Event()

    def read() -> None:
        assert server.process is not None and server.process.stdout is not None
        for line in server.process.stdout:
            server.lines.append(line)
            if "Ready to process requests" in line:
                ready.set()

    server.reader = threading.Thread(target=read, name="freeradius-log", daemon=True)
    server.reader.start()
    deadline = time.monotonic() + 15
    while not ready.is_set():
        if server.process.poll() is not None or time.monotonic() > deadline:
            stop_freeradius(server)
            pytest.fail(f"FreeRADIUS did not start:\n{server.log()}", pytrace=False)
        time.sleep(0.05)
    while netns is None and not _answers(auth_port):
        if time.monotonic() > deadline:
            stop_freeradius(server)
            pytest.fail(f"FreeRADIUS does not listen on {auth_port}:\n{server.log()}", pytrace=False)
        time.sleep(0.05)
    return server


def stop_freeradius(server: FreeRadius) -> None:
    process = server.process
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    if server.reader is not None:
        server.reader.join(5)  # it reads to the end of the output, then the pipe can close
    if process.stdout is not None and (server.reader is None or not server.reader.is_alive()):
        process.stdout.close()


def require_freeradius() -> None:
    if freeradius_binary() is not None:
        return
    reason = "FreeRADIUS is not installed (apt-get install freeradius; bash contrib/test-all.sh does)"
    if os.environ.get("TUNVPN_REQUIRE_ALL") == "1":
        pytest.fail(f"TUNVPN_REQUIRE_ALL=1 but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def freeradius_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    require_freeradius()
    server = start_freeradius(tmp_path_factory.mktemp("raddb"))
    try:
        yield server
    finally:
        stop_freeradius(server)


@pytest.fixture
def radius(freeradius_server: FreeRadius) -> Iterator[FreeRadius]:
    """The module's FreeRADIUS; its log during the test is printed (pytest shows captured
    output only for a failing test)."""
    start = len(freeradius_server.lines)
    yield freeradius_server
    print("---- FreeRADIUS log during this test ----")
    print("".join(freeradius_server.lines[start:]))


@contextlib.contextmanager
def black_hole_radius(host: str = "127.0.0.3") -> Iterator[tuple[int, list[bytes]]]:
    """A RADIUS "server" on ``host`` that reads every request and answers none (a real UDP
    socket: the plugin's own timeouts run as against a dead server). Yields (port, requests
    seen); skips the test where ``host`` cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        pytest.skip(f"{host} is not usable on this host")
    sock.settimeout(0.2)
    seen: list[bytes] = []
    done = threading.Event()

    def swallow() -> None:
        while not done.is_set():
            try:
                seen.append(sock.recv(4096))
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=swallow, name="black-hole RADIUS", daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        done.set()
        thread.join(2)
        sock.close()
