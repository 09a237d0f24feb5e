"""The client's privileged helper: the root-only host configuration of a client that dropped root.

A client started as root with ``--run-as USER`` (tunvpn/cli.py) opens its TUN device and binds
its ports, starts this helper, then becomes ``USER`` keeping only ``CAP_NET_ADMIN`` and
``CAP_NET_BIND_SERVICE`` (tunvpn/shell/privileges.py) before any thread runs. The helper is a
separate process (``python -m tunvpn.client.privhelper``, its role visible in ``ps``) that stays
root and does only what an unprivileged process cannot, for the one TUN device it was started
for: DNS through a backend (``/etc/resolv.conf``, ``resolvconf``, ``resolvectl``), the gateway's
pin (a host route outside the TUN device) and the crash-recovery state file in root's run
directory (tunvpn/client/hostconfig.py does the work, unchanged).

What the client may ask is a closed set (:data:`OPERATIONS`), one JSON object per datagram on
a ``SOCK_SEQPACKET`` socketpair, every argument checked before use:

* ``apply_dns``: ``servers`` IP addresses, ``domains`` plain domain names, ``split`` a boolean;
* ``pin_host``: ``address`` an IP address (the gateway); the device avoided is the helper's TUN;
* ``pin_peer`` / ``unpin_peer``: ``address`` an introduced peer's endpoint (issue 17), kept
  outside the helper's TUN under a full tunnel, or its host route removed;
* ``refresh_pin``: nothing (the pin the helper made follows the network);
* ``restore``: nothing (DNS and routes undone, the state file removed).

When the client is gone the helper also removes its control socket (named when root started
it), which the client made as root in root's run directory and can no longer unlink.

The interface name, the DNS backend, the resolv.conf path and the run directory are fixed when
root starts the helper; the client cannot name a file, a device or a command. The helper never
parses IKE and never runs a plugin. When the client's end of the socket closes (it exited, or
was killed) the helper undoes everything, as the crash-recovery path does, and exits. It
ignores SIGINT and SIGTERM (a Ctrl-C or a service stop reaches the whole process group): the
client restores through it, then its end closes.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from tunvpn.client.hostconfig import DNS_BACKENDS, HostConfig, HostConfigError, Route

log = logging.getLogger(__name__)

OPERATIONS = ("apply_dns", "pin_host", "pin_peer", "unpin_peer", "refresh_pin", "block_ipv6", "restore")
"""Everything the unprivileged client may ask the helper."""

MAX_MESSAGE = 1 << 16
MAX_SERVERS = 16
MAX_DOMAINS = 64


class PrivHelperError(HostConfigError):
    """The helper refused a request, failed, or is gone."""


# ---------------------------------------------------------------------------- the helper side


def _route_doc(route: Route | None) -> dict[str, str | None] | None:
    return None if route is None else {"dest": route.dest, "via": route.via, "dev": route.dev}


def _strings(value: Any, what: str, limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, str) for v in value):
        raise PrivHelperError(f"{what}: not a list of at most {limit} strings")
    return value


def handle(hostconfig: HostConfig, request: Any) -> Any:
    """Check and carry out one request; its result (JSON-able). PrivHelperError / HostConfigError
    when it is refused or fails."""
    if not isinstance(request, dict) or request.get("op") not in OPERATIONS:
        raise PrivHelperError("unknown request")
    op = request["op"]
    if op == "apply_dns":
        servers = []
        for text in _strings(request.get("servers"), "servers", MAX_SERVERS):
            try:
                servers.append(ipaddress.ip_address(text))
            except ValueError:
                raise PrivHelperError(f"DNS server {text!r} is not an IP address") from None
        domains = _strings(request.get("domains"), "domains", MAX_DOMAINS)  # checked by apply_dns
        split = request.get("split")
        if not isinstance(split, bool):
            raise PrivHelperError("split is not a boolean")
        return hostconfig.apply_dns(servers, domains, split=split)
    if op == "pin_host":
        address = request.get("address")
        try:
            host = ipaddress.ip_address(address if isinstance(address, str) else "")
        except ValueError:
            raise PrivHelperError(f"{address!r} is not an IP address") from None
        return _route_doc(hostconfig.pin_host(str(host), avoid_dev=hostconfig.ifname))
    if op in ("pin_peer", "unpin_peer"):
        address = request.get("address")
        try:
            peer = ipaddress.ip_address(address if isinstance(address, str) else "")
        except ValueError:
            raise PrivHelperError(f"{address!r} is not an IP address") from None
        if op == "unpin_peer":
            hostconfig.unpin_peer(str(peer))
            return None
        return _route_doc(hostconfig.pin_peer(str(peer), avoid_dev=hostconfig.ifname))
    if op == "refresh_pin":
        return _route_doc(hostconfig.refresh_pin(avoid_dev=hostconfig.ifname))
    if op == "block_ipv6":
        on = request.get("on")
        if not isinstance(on, bool):
            raise PrivHelperError("on is not a boolean")
        return hostconfig.block_ipv6(on)
    hostconfig.restore()
    return None


def serve(sock: socket.socket, hostconfig: HostConfig, control_socket: str | None = None) -> None:
    """Answer requests until the client's end closes; then undo everything, and remove the
    client's control socket (``control_socket``: in root's run directory, where the client,
    no longer root, cannot unlink it)."""
    try:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except ConnectionResetError:
                data = b""
            if not data:
                break
            try:
                request = json.loads(data)
                reply = {"ok": True, "result": handle(hostconfig, request)}
            except (HostConfigError, OSError, ValueError, TypeError, RecursionError) as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                sock.send(json.dumps(reply).encode())
            except OSError:
                break
    finally:
        log.info(
            "privileged helper: the client of %s is gone; undoing its host configuration", hostconfig.ifname
        )
        try:
            hostconfig.restore()
        except HostConfigError as exc:
            log.warning("privileged helper: %s (the state file is kept for the next run)", exc)
        if control_socket is not None:
            remove_socket(control_socket)


def remove_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket (never a file or a link that replaced it)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("privileged helper: cannot remove %s: %s", path, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunvpn-privhelper", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the socket to the client")
    parser.add_argument("--ifname", required=True, help="the client's TUN device")
    parser.add_argument("--dns-backend", choices=DNS_BACKENDS, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resolv-conf", required=True)
    parser.add_argument("--control-socket", help="the client's control socket, removed at the end")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="tunvpn-privhelper[%(process)d] %(levelname)s %(message)s",
    )
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    hostconfig = HostConfig(args.ifname, args.run_dir, args.dns_backend, resolv_conf=args.resolv_conf)
    serve(sock, hostconfig, args.control_socket)
    return 0


# ---------------------------------------------------------------------------- the client side


class PrivHelper:
    """The unprivileged client's handle on its helper: the part of
    :class:`~tunvpn.client.hostconfig.HostConfig` the client uses, each call a request."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes], ifname: str) -> None:
        self._sock = sock
        self.proc = proc
        self.ifname = ifname
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, op: str, **args: Any) -> Any:
        with self._lock:
            try:
                self._sock.send(json.dumps({"op": op, **args}).encode())
                data = self._sock.recv(MAX_MESSAGE)
            except OSError as exc:
                raise PrivHelperError(f"privileged helper: {exc}") from exc
        if not data:
            raise PrivHelperError("the privileged helper is gone")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise PrivHelperError(str(reply.get("error")))
        return reply.get("result")

    @staticmethod
    def _route(doc: Any) -> Route | None:
        return None if doc is None else Route(doc["dest"], doc.get("via"), doc.get("dev"))

    def apply_dns(self, servers: Iterable[object], domains: Iterable[str] = (), split: bool = False) -> str:
        return str(
            self._ask("apply_dns", servers=[str(s) for s in servers], domains=list(domains), split=split)
        )

    def pin_host(self, address: str, avoid_dev: str | None = None) -> Route | None:
        return self._route(self._ask("pin_host", address=address))

    def pin_peer(self, address: str, avoid_dev: str | None = None) -> Route | None:
        return self._route(self._ask("pin_peer", address=address))

    def unpin_peer(self, address: str) -> None:
        self._ask("unpin_peer", address=address)

    def block_ipv6(self, on: bool) -> bool:
        return bool(self._ask("block_ipv6", on=on))

    def refresh_pin(self, avoid_dev: str | None = None) -> Route | None:
        return self._route(self._ask("refresh_pin"))

    def restore(self) -> None:
        self._ask("restore")

    def close(self, timeout: float = 10.0) -> None:
        """Close our end (the helper undoes what is left and exits) and wait for it."""
        with contextlib.suppress(OSError):
            self._sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the privileged helper (pid %d) did not exit", self.proc.pid)


def start_helper(
    ifname: str,
    dns_backend: str,
    run_dir: str | os.PathLike[str],
    resolv_conf: str | os.PathLike[str],
    *,
    control_socket: str | None = None,
) -> PrivHelper:
    """Start the helper for TUN device ``ifname`` (as root, before the drop; starts no thread).
    ``control_socket``: the client's, which the helper removes when the client is gone."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        argv = [sys.executable, "-m", "tunvpn.client.privhelper", "--fd", str(theirs.fileno())]
        argv += ["--ifname", ifname, "--dns-backend", dns_backend]
        argv += ["--run-dir", os.fspath(run_dir), "--resolv-conf", os.fspath(resolv_conf)]
        if control_socket is not None:
            argv += ["--control-socket", control_socket]
        if log.isEnabledFor(logging.INFO) or logging.getLogger().isEnabledFor(logging.INFO):
            argv.append("-v")
        proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.set_inheritable(False)
    log.info("privileged helper for %s started (pid %d)", ifname, proc.pid)
    return PrivHelper(ours, proc, ifname)


if __name__ == "__main__":
    sys.exit(main())
