"""The client's privileged helper takes only its closed set of requests, each argument checked
(tunvpn/client/privhelper.py). A real helper process, with the ``none`` DNS backend and a run
directory of the test: nothing on the host changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunvpn.client.privhelper import PrivHelper, PrivHelperError, start_helper


@pytest.fixture
def helper(tmp_path: Path) -> Iterator[PrivHelper]:
    started = start_helper("tvph0", "none", tmp_path / "run", tmp_path / "resolv.conf")
    yield started
    started.close()


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "run", "argv": ["sh", "-c", "id"]},
        {"op": "apply_dns", "servers": ["10.0.0.1; reboot"], "domains": [], "split": False},
        {"op": "apply_dns", "servers": ["10.0.0.1"], "domains": ["corp\nnameserver 6.6.6.6"], "split": False},
        {"op": "apply_dns", "servers": ["10.0.0.1"], "domains": [], "split": "yes"},
        {"op": "apply_dns", "servers": "10.0.0.1", "domains": [], "split": False},
        {"op": "pin_host", "address": "10.0.0.1 dev eth0"},
        {"op": "pin_host", "address": 167772161},
        {"op": "block_ipv6", "on": "yes"},
        {"op": "block_ipv6"},
        ["restore"],
    ],
)
def test_a_request_outside_the_closed_set_is_refused(helper: PrivHelper, request_: object) -> None:
    """What a compromised client could send down the socket."""
    helper._sock.send(json.dumps(request_).encode())
    reply = json.loads(helper._sock.recv(65536))
    assert reply["ok"] is False and reply["error"], reply
    assert helper.proc.poll() is None  # a refusal does not end the helper


def test_garbage_is_refused(helper: PrivHelper) -> None:
    helper._sock.send(b"\xff{not json")
    assert json.loads(helper._sock.recv(65536))["ok"] is False
    with pytest.raises(PrivHelperError):
        helper.pin_host("not-an-address")


def test_requests_in_the_set_are_carried_out_and_the_helper_exits_with_the_client(helper: PrivHelper) -> None:
    assert helper.apply_dns(["10.0.0.53"], ["corp.example"], split=True) == "none"
    helper.restore()
    helper.close()
    assert helper.proc.returncode == 0


def test_the_helper_removes_only_a_socket_at_the_control_socket_path(tmp_path: Path) -> None:
    import socket as socketmod

    from tunvpn.client.privhelper import remove_socket

    path = tmp_path / "client-tvcl0.sock"
    with socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM) as sock:
        sock.bind(str(path))
    remove_socket(str(path))
    assert not path.exists()
    remove_socket(str(path))  # gone already: nothing to do
    path.write_text("not a socket")  # replaced by a file: left alone
    remove_socket(str(path))
    assert path.read_text() == "not a socket"
