"""The control socket without root: a real ControlServer on a Unix socket under tmp_path, the
blocking client run in a thread, the status/reload formatting and the ``status``/``reload`` CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.control import server as control
from tunvpn.control.server import ControlError, ControlPermissionError, ControlServer

NOW = 1_700_000_000.0

FULL_STATUS: dict[str, object] = {
    "role": "gateway",
    "pid": 4242,
    "started": NOW - 3725,
    "config": "/etc/tunvpn/gateway.conf",
    "generation": 3,
    "listen": "192.0.2.1",
    "tunnels": [
        {
            "peer": "10.0.0.2:4500",
            "peer_id": "keyid:corp",
            "user": "alice",
            "groups": ["eng", "ops"],
            "address": "10.79.0.10",
            "phase1": {
                "exchange": "main",
                "suite": "aes256/sha512/ecp384/psk",
                "established": NOW - 600,
                "expires_in": 2832.0,
            },
            "sas": [
                {
                    "name": "corp",
                    "local_ts": "10.79.0.10/32",
                    "remote_ts": "10.1.0.0/16",
                    "esp": "aes256gcm16",
                    "pfs": "ecp384",
                    "spi_in": "0x1234abcd",
                    "spi_out": "0xc0ffee01",
                    "bytes_in": 1_258_291,
                    "bytes_out": 307_200,
                    "packets_in": 1234,
                    "packets_out": 800,
                    "expires_in": 3130.0,
                },
                {
                    "name": "dns",
                    "local_ts": "10.79.0.10/32",
                    "remote_ts": "10.1.0.53/32",
                    "esp": "aes128gcm16",
                    "pfs": None,
                    "spi_in": "0x00000001",
                    "spi_out": "0x00000002",
                    "bytes_in": 0,
                    "bytes_out": 512,
                    "packets_in": 0,
                    "packets_out": 1,
                    "expires_in": None,
                },
            ],
        }
    ],
}


def handler(command: str, args: dict[str, object]) -> object:
    if command == "status":
        return FULL_STATUS
    if command == "echo":
        return args
    if command == "async-echo":
        return _async_echo(args)
    if command == "boom":
        raise RuntimeError("kaput")
    if command == "reload":
        if args.get("bad"):
            raise ControlError("gateway.conf line 7: policy 'x': unknown key 'sublet'")
        return {"generation": 4, "changes": ["added policy x", "removed policy y"], "clients_updated": 2}
    raise ControlError(f"unknown command {command!r}")


async def _async_echo(args: dict[str, object]) -> object:
    await asyncio.sleep(0)
    return {"async": args}


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv(control.RUN_DIR_ENV, str(directory))
    return directory


def with_server(
    path: Path, body: Callable[[ControlServer], Awaitable[None]], h: control.Handler = handler, **kw: float
) -> None:
    async def main() -> None:
        async with ControlServer(path, h, **kw) as server:  # type: ignore[arg-type]
            await body(server)

    asyncio.run(main())


async def ask(path: Path, command: str, args: dict[str, object] | None = None) -> object:
    return await asyncio.to_thread(control.request, path, command, args, 5.0)


async def raw(path: Path, data: bytes, *, shut: bool = True) -> dict[str, object]:
    """Send ``data`` as it is and read the server's one-line answer."""

    def go() -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            if data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return json.loads(answer)  # type: ignore[no-any-return]

    return await asyncio.to_thread(go)


# --------------------------------------------------------------------------- paths


def test_default_socket_paths(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert control.default_socket_path("gateway") == run_dir / "gateway.sock"
    assert control.default_socket_path("client", "tunvpn0") == run_dir / "client-tunvpn0.sock"
    assert control.default_socket_path("client") == run_dir / "client.sock"
    for role, name in (
        ("client", "../x"),
        ("client", ""),
        ("client", ".hidden"),
        ("gateway", "x"),
        ("vpn", None),
    ):
        with pytest.raises(ValueError):
            control.default_socket_path(role, name)
    monkeypatch.delenv(control.RUN_DIR_ENV)
    assert control.default_socket_path("gateway") == Path("/run/tunvpn/gateway.sock")


# --------------------------------------------------------------------------- server and client


def test_round_trip(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        assert server.serving
        assert await ask(path, "echo", {"a": 1, "b": [1, 2]}) == {"a": 1, "b": [1, 2]}
        assert await ask(path, "echo") == {}
        assert await ask(path, "async-echo", {"x": "y"}) == {"async": {"x": "y"}}
        assert await ask(path, "status") == FULL_STATUS

    with_server(path, body)
    assert not path.exists(), "close() removes the socket"


def test_unknown_command(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        with pytest.raises(ControlError, match="unknown command 'frobnicate'"):
            await ask(path, "frobnicate")

    with_server(path, body)


def test_handler_exception_is_an_internal_error_and_the_server_goes_on(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        with pytest.raises(ControlError, match=r"^internal error: RuntimeError: kaput$"):
            await ask(path, "boom")
        assert await ask(path, "echo", {"still": "here"}) == {"still": "here"}

    with caplog.at_level(logging.ERROR, logger="tunvpn.control.server"):
        with_server(path, body)
    logged = [r for r in caplog.records if r.exc_info and r.name == "tunvpn.control.server"]
    assert len(logged) == 1
    assert "boom" in logged[0].getMessage()


def test_result_that_is_not_json_is_an_internal_error(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    def odd(command: str, args: dict[str, object]) -> object:
        return {"inf": float("inf"), "obj": object()} if command == "bad" else {"inf": float("inf")}

    async def body(server: ControlServer) -> None:
        with pytest.raises(ControlError, match="internal error: result is not JSON"):
            await ask(path, "bad")
        assert await ask(path, "good") == {"inf": None}  # strict JSON: no Infinity

    with_server(path, body, odd)


def test_bad_requests(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        assert (await raw(path, b"not json\n"))["error"].startswith("bad request: not JSON")  # type: ignore[union-attr]
        assert await raw(path, b"[1]\n") == {"ok": False, "error": "bad request: not a JSON object"}
        answer = await raw(path, b'{"command": "echo", "args": 5}\n')
        assert answer == {"ok": False, "error": 'bad request: "args" must be an object'}
        assert (await raw(path, b""))["error"] == "bad request: empty"
        assert (await raw(path, b"[" * 60000 + b"\n"))["ok"] is False
        # no newline but EOF: still one request
        assert await raw(path, b'{"command": "echo", "args": {"n": 1}}') == {"ok": True, "result": {"n": 1}}

    with_server(path, body)


def test_socket_is_private(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"
    old = os.umask(0o022)
    try:

        async def body(server: ControlServer) -> None:
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700

        with_server(path, body)
    finally:
        os.umask(old)


def test_stale_socket_is_replaced(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"
    run_dir.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays: a process that died without cleaning up
    assert stat.S_ISSOCK(os.lstat(path).st_mode)

    async def body(server: ControlServer) -> None:
        assert await ask(path, "echo", {"fresh": True}) == {"fresh": True}

    with_server(path, body)


def test_live_socket_is_refused(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        second = ControlServer(path, handler)
        with pytest.raises(ControlError, match=f"another tunvpn process is already serving {path}"):
            await second.start()
        second.close()  # must not remove the first server's socket
        assert path.exists()
        assert await ask(path, "echo", {"first": 1}) == {"first": 1}

    with_server(path, body)


def test_a_file_that_is_not_a_socket_is_left_alone(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"
    run_dir.mkdir()
    path.write_text("important")

    async def main() -> None:
        with pytest.raises(ControlError, match="is not a socket"):
            await ControlServer(path, handler).start()

    asyncio.run(main())
    assert path.read_text() == "important"


def test_close_leaves_a_socket_that_is_no_longer_ours(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        path.unlink()
        path.write_text("someone else's")

    with_server(path, body)
    assert path.read_text() == "someone else's"


def test_oversize_request_is_refused(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        big = b'{"command": "echo", "args": {"x": "' + b"a" * (70 * 1024) + b'"}}\n'
        answer = await raw(path, big)
        assert answer == {"ok": False, "error": f"request too large (limit {control.MAX_REQUEST} bytes)"}
        assert await ask(path, "echo", {"after": 1}) == {"after": 1}

    with_server(path, body)
    with pytest.raises(ControlError, match="request too large"):
        control.request(path, "echo", {"x": "a" * (70 * 1024)})


def test_slow_client_times_out(run_dir: Path) -> None:
    path = run_dir / "gateway.sock"

    async def body(server: ControlServer) -> None:
        answer = await raw(path, b'{"command": "ec', shut=False)
        assert answer == {"ok": False, "error": "request timed out after 0.2 s"}
        assert await ask(path, "echo", {"after": 1}) == {"after": 1}

    with_server(path, body, read_timeout=0.2)


def test_peer_credentials_of_a_real_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        creds = control.peer_credentials(a)
    if creds is None:
        pytest.skip("no peer credentials on this platform")
    assert creds[0] == os.geteuid()


def test_foreign_uid_is_refused(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = run_dir / "gateway.sock"
    monkeypatch.setattr(control, "peer_credentials", lambda sock: (os.geteuid() + 4321, 77))
    calls: list[str] = []

    def spy(command: str, args: dict[str, object]) -> object:
        calls.append(command)
        return None

    async def body(server: ControlServer) -> None:
        with pytest.raises(ControlPermissionError, match="permission denied"):
            await ask(path, "status")

    with caplog.at_level(logging.WARNING, logger="tunvpn.control.server"):
        with_server(path, body, spy)
    assert calls == []
    assert any(
        "refused a request from uid" in r.getMessage() and "pid 77" in r.getMessage() for r in caplog.records
    )


def test_request_errors_name_the_socket(tmp_path: Path) -> None:
    missing = tmp_path / "gateway.sock"
    with pytest.raises(ControlError, match=rf"no such socket: is the gateway running\? \({missing}\)"):
        control.request(missing, "status")
    with pytest.raises(ControlError, match=r"is the tunvpn client running\?"):
        control.request(tmp_path / "client-tunvpn0.sock", "status")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(ControlError, match="nobody is listening"):
        control.request(stale, "status")


def test_request_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # accepts (in the backlog) but never answers
        with pytest.raises(ControlError, match=r"timed out after 0\.2 s waiting for the gateway"):
            control.request(path, "status", timeout=0.2)


# --------------------------------------------------------------------------- formatting


def test_format_status_full() -> None:
    assert control.format_status(FULL_STATUS, now=NOW) == (
        "gateway  pid 4242  up 1h 02m  config /etc/tunvpn/gateway.conf  generation 3  listen 192.0.2.1\n"
        "10.0.0.2:4500 (keyid:corp)  user alice  groups eng,ops  address 10.79.0.10"
        "  phase 1 main aes256/sha512/ecp384/psk  expires in 47m 12s\n"
        "    corp  10.79.0.10/32 <=> 10.1.0.0/16  esp aes256gcm16  pfs ecp384"
        "  spi in 0x1234abcd out 0xc0ffee01  in 1.2 MiB (1234 pkts)  out 300.0 KiB (800 pkts)"
        "  expires in 52m 10s\n"
        "    dns  10.79.0.10/32 <=> 10.1.0.53/32  esp aes128gcm16  pfs none"
        "  spi in 0x00000001 out 0x00000002  in 0 B (0 pkts)  out 512 B (1 pkt)  no expiry"
    )


def test_format_status_minimal_and_malformed() -> None:
    assert control.format_status({}) == "tunvpn\nno tunnels"
    assert control.format_status({"role": "client", "pid": 7, "config": None, "tunnels": []}, now=NOW) == (
        "client  pid 7  config (command line)\nno tunnels"
    )
    junk: dict[str, object] = {
        "role": "client",
        "pid": "nope",
        "started": None,
        "generation": True,
        "tunnels": [
            {"peer": "192.0.2.1:500"},
            "junk",
            {"phase1": "bad", "groups": "eng", "sas": [{}, 5, {"bytes_in": 3, "expires_in": -1}]},
            {"phase1": {}, "sas": "none"},
        ],
    }
    text = control.format_status(junk, now=NOW)
    assert text.splitlines() == [
        "client",
        "192.0.2.1:500  no phase 1",
        "    no IPsec SAs",
        "?  no phase 1",
        "    (unnamed)",
        "    (unnamed)  in 3 B  expired",
        "?  phase 1",
        "    no IPsec SAs",
    ]
    assert control.format_status({"tunnels": "x"}) == "tunvpn\nno tunnels"


def test_format_status_escapes_control_characters() -> None:
    text = control.format_status({"role": "gateway", "tunnels": [{"peer": "p", "user": "eve\x1b[2J\n"}]})
    assert "\x1b" not in text
    assert "user eve\\x1b[2J\\n" in text


def test_units() -> None:
    assert [control.format_bytes(n) for n in (0, 1023, 1024, 1536, 1_258_291, 5 * 1024**3, 3 * 1024**5)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "1.2 MiB",
        "5.0 GiB",
        "3072.0 TiB",
    ]
    assert [control.format_duration(s) for s in (-5, 0, 59, 60, 3599, 3600, 86399, 90000)] == [
        "0s",
        "0s",
        "59s",
        "1m 00s",
        "59m 59s",
        "1h 00m",
        "23h 59m",
        "1d 01h",
    ]


def test_format_reload() -> None:
    assert control.format_reload({"generation": 3, "changes": ["added policy x"], "clients_updated": 1}) == (
        "reloaded: policy generation 3\n  added policy x\n1 client updated"
    )
    assert (
        control.format_reload({"generation": 4, "changes": []})
        == "reloaded: policy generation 4\n  no changes"
    )
    assert control.format_reload(None) == "reloaded: null"


# --------------------------------------------------------------------------- command line


class ThreadedServer:
    """A ControlServer on its own event loop in a background thread (the CLI blocks the test's)."""

    def __init__(self, path: Path, h: control.Handler = handler) -> None:
        self.path = path
        self.handler = h
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = ControlServer(self.path, self.handler)
        try:
            self.loop.run_until_complete(server.start())
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        self.loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self.loop)  # connections still closing, as asyncio.run does
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(5), "the control server did not start"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def served(run_dir: Path) -> Iterator[Path]:
    with ThreadedServer(run_dir / "gateway.sock") as server:
        yield server.path


def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_status_json(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_run(capsys, "status", "--socket", str(served), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == FULL_STATUS


def test_cli_status_human_uses_the_gateway_socket_by_default(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli_run(capsys, "status")
    assert code == 0
    assert out.startswith("gateway  pid 4242  up ")
    assert "    corp  10.79.0.10/32 <=> 10.1.0.0/16  esp aes256gcm16" in out


def test_cli_status_finds_the_only_client(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def client_handler(command: str, args: dict[str, object]) -> object:
        return {"role": "client", "pid": 9, "tunnels": []}

    with ThreadedServer(control.default_socket_path("client", "tunvpn0"), client_handler):
        code, out, _ = cli_run(capsys, "status")
        assert (code, out) == (0, "client  pid 9\nno tunnels\n")
        # a second client makes the choice ambiguous: a usage error naming both
        (run_dir / "client-tunvpn1.sock").touch()
        code, out, err = cli_run(capsys, "status")
        assert code == 2
        assert "several tunvpn clients are running" in err
        assert "client-tunvpn0.sock" in err and "client-tunvpn1.sock" in err
        code, out, err = cli_run(capsys, "status", "--role", "gateway")
        assert code == 1
        assert "no such socket: is the gateway running?" in err


def test_cli_status_missing_socket(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_run(capsys, "status")
    assert (code, out) == (1, "")
    assert err == f"tunvpn: error: no such socket: is the gateway running? ({run_dir / 'gateway.sock'})\n"
    code, _, err = cli_run(capsys, "status", "--role", "client")
    assert code == 1
    assert "is a tunvpn client running?" in err


def test_cli_reload(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_run(capsys, "reload")
    assert (code, err) == (0, "")
    assert out == "reloaded: policy generation 4\n  added policy x\n  removed policy y\n2 clients updated\n"


def test_cli_reload_refused(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def bad_config(command: str, args: dict[str, object]) -> object:
        return handler(command, {"bad": True})

    with ThreadedServer(run_dir / "gateway.sock", bad_config) as server:
        code, out, err = cli_run(capsys, "reload", "--socket", str(server.path))
    assert (code, out) == (1, "")
    assert err == "tunvpn: error: gateway.conf line 7: policy 'x': unknown key 'sublet'\n"


def test_cli_permission_denied_is_exit_2(
    served: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "peer_credentials", lambda sock: (os.geteuid() + 1, None))
    code, _, err = cli_run(capsys, "status", "--socket", str(served))
    assert code == 2
    assert "permission denied" in err


def test_cli_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["status", "--timeout", "0"])
    assert exc.value.code == 2
    assert "the timeout must be positive" in capsys.readouterr().err


def test_format_status_shows_inbound_drops_by_reason() -> None:
    sa = {"name": "vpnc", "esp": "aes256-sha1", "esn": False, "drops_in": {"policy": 3, "replay": 1}}
    status = {"role": "gateway", "tunnels": [{"peer": "10.77.0.2:4500", "sas": [sa]}]}
    assert "vpnc  esp aes256-sha1  dropped in policy 3, replay 1" in control.format_status(status, now=NOW)


def test_format_status_marks_esn_sas() -> None:
    sa = {"name": "lan", "esp": "aes256gcm16", "pfs": "ECP_256", "esn": True}
    status = {"role": "gateway", "tunnels": [{"peer": "10.77.0.2:4500", "sas": [sa]}]}
    assert "lan  esp aes256gcm16  pfs ECP_256  esn" in control.format_status(status, now=NOW)


def test_format_status_ike_line() -> None:
    """Issue 14: the IKE side under load, drops by reason the most first; junk is left out."""
    status: dict[str, object] = {
        "role": "gateway",
        "ike": {"half_open": 12, "queue_depth": 3, "dropped": {"a \x1b[31m": 2, "b": 7, "c": 0, "d": "x"}},
    }
    assert (
        control.format_status(status).splitlines()[1]
        == "ike  half-open 12  queue 3  dropped b 7, a \\x1b[31m 2"
    )
    assert control.format_status({"ike": {"half_open": "x", "dropped": []}}).splitlines()[1] == "ike"
    withheld = {"ike": {"half_open": 0, "withheld": {"notify over budget": 990, "notify larger": 1}}}
    assert (
        control.format_status(withheld).splitlines()[1]
        == "ike  half-open 0  not answered notify over budget 990, notify larger 1"
    )


def test_format_status_shows_the_sites() -> None:
    """Issue 18: one line per other site's gateway, its state, networks, SAs, last error."""
    status = {
        "role": "gateway",
        "tunnels": [],
        "sites": [
            {"name": "b", "address": "198.18.2.2", "state": "up", "networks": ["10.88.0.0/24"], "sas": 2},
            {
                "name": "c",
                "address": "198.18.4.2",
                "state": "down",
                "networks": [],
                "sas": 0,
                "error": "dead peer",
            },
        ],
    }
    lines = control.format_status(status, now=NOW).splitlines()
    assert "site b 198.18.2.2: up, networks 10.88.0.0/24, 2 SA pair(s)" in lines
    assert "site c 198.18.4.2: down, networks -, 0 SA pair(s)  last error: dead peer" in lines


def test_format_status_shows_the_clients_sites_introduced() -> None:
    """Issue 18: on A, how many of its clients the site knows; on B, each client A introduced."""
    status = {
        "role": "gateway",
        "tunnels": [],
        "sites": [
            {"name": "b", "address": "198.18.2.2", "state": "up", "networks": [], "sas": 2, "introduced": 3},
            {
                "name": "a",
                "address": "198.18.1.2",
                "state": "up",
                "networks": ["10.79.0.0/24"],
                "sas": 2,
                "refused": 1,
                "clients": [
                    {
                        "name": "alice",
                        "address": "10.79.0.10",
                        "endpoint": "198.18.3.2:4500",
                        "state": "up",
                        "sas": 1,
                    }
                ],
            },
        ],
    }
    lines = control.format_status(status, now=NOW).splitlines()
    assert "site b 198.18.2.2: up, networks -, 2 SA pair(s), 3 of our clients introduced" in lines
    assert "site a 198.18.1.2: up, networks 10.79.0.0/24, 2 SA pair(s), 1 introduction(s) refused" in lines
    assert "  client alice 10.79.0.10 at 198.18.3.2:4500: up, 1 SA pair(s)" in lines


def test_format_status_shows_an_ipv6_address_beside_the_ipv4_one() -> None:
    """Issue 19: a dual-stack tunnel's two addresses."""
    status = {
        "role": "gateway",
        "tunnels": [
            {"peer": "198.51.100.7:4500", "user": "alice", "address": "10.79.0.10", "address6": "fd79::10"}
        ],
    }
    text = control.format_status(status, now=NOW)
    assert "address 10.79.0.10" in text and "address fd79::10" in text, text
