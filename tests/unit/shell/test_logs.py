"""Log formats (issue 20): text, one JSON object per line, the systemd journal's ``<N>`` level
prefixes, and syslog; a peer's text cannot forge a line in any of them."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from tunvpn.shell.logs import make_handler, syslog_priority


def record(message: str, level: int = logging.WARNING, *args: object) -> logging.LogRecord:
    return logging.LogRecord("tunvpn.gateway", level, __file__, 1, message, args, None)


def test_text_escapes_a_peers_newline() -> None:
    handler = make_handler("text", env={})
    line = handler.format(record("user %r refused", logging.WARNING, "eve\nFAKE line"))
    assert "\n" not in line and "WARNING tunvpn.gateway: user" in line


def test_json_is_one_object_per_line() -> None:
    handler = make_handler("json", env={})
    line = handler.format(record("user %s from %s refused", logging.WARNING, "eve\nx", "192.0.2.7"))
    doc = json.loads(line)
    assert "\n" not in line
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "warning",
        "tunvpn.gateway",
        "user eve\nx from 192.0.2.7 refused",
    )
    assert doc["time"].endswith("+00:00")


def test_under_systemd_text_lines_carry_the_syslog_level() -> None:
    handler = make_handler("text", env={"JOURNAL_STREAM": "8:12345"})
    assert handler.format(record("down", logging.WARNING)) == "<4>tunvpn.gateway: down"
    assert handler.format(record("up", logging.INFO)).startswith("<6>")
    assert [syslog_priority(lv) for lv in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]


def test_syslog_sends_daemon_facility_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        handler = make_handler("text", syslog=True, syslog_address=path)
        try:
            handler.emit(record("gateway ready", logging.WARNING))
            data = server.recv(4096)
        finally:
            handler.close()
    assert data.startswith(b"<28>tunvpn[") and b"tunvpn.gateway: gateway ready" in data  # daemon.warning


def test_syslog_without_a_socket_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        make_handler("text", syslog=True, syslog_address=str(tmp_path / "none"))
