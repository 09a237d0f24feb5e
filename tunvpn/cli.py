"""``tunvpn``: the command line (``gateway``, ``connect``, ``demo``, ``demo-ike``, ``status``, ``reload``).

Exit status: 0 success, 1 the negotiation failed (the message says where), 2 bad arguments,
unusable secret files or missing privileges.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from cryptography import x509

from tunvpn.config.credentials import (
    PASSWORD_ENV,
    PSK_ENV,
    SecretFileError,
    UserTable,
    load_password,
    load_psks,
)
from tunvpn.config.errors import ConfigError
from tunvpn.control import server as control
from tunvpn.control.metrics import MetricsError
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.errors import LocalProtocolError
from tunvpn.ike.identity import Identity
from tunvpn.shell.privileges import PrivilegeError
from tunvpn.shell.udp import BindError
from tunvpn.untrusted import for_terminal

if TYPE_CHECKING:
    from tunvpn.client.daemon import ClientOptions
    from tunvpn.gateway.daemon import GatewayOptions
    from tunvpn.shell.privileges import ServiceUser

log = logging.getLogger(__name__)

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as ``tunvpn: error: ...`` with exit status 2."""


# --------------------------------------------------------------------------- argument types


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1-65535")
    return value


def _busy_poll_us(text: str) -> int:
    """``--busy-poll US``: 0-100000 microseconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected microseconds (an integer), not {text!r}") from None
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 0-100000 microseconds")
    return value


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _ipv4_list(text: str) -> list[IPv4Address]:
    try:
        return [IPv4Address(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (or a comma-separated list)"
        ) from None


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a network like 10.78.0.0/24 or fd78::/64"
        ) from None


def _identity(text: str) -> Identity:
    try:
        return Identity.parse(text)
    except (LocalProtocolError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an identity ({exc}); examples: keyid:group, 10.0.0.1, @vpn.example"
        ) from None


def _load_cas(paths: Sequence[str]) -> tuple[x509.Certificate, ...]:
    from tunvpn.ike.certs import load_certificates

    cas: list[x509.Certificate] = []
    for path in paths:
        try:
            cas += load_certificates(Path(path).read_bytes())
        except OSError as exc:
            raise CliError(f"--ca {path}: {exc.strerror or exc}") from None
        except LocalProtocolError as exc:
            raise CliError(f"--ca {path}: {exc}") from None
    return tuple(cas)


def _remote_id(text: str) -> Identity | str:
    return "any" if text.strip().lower() == "any" else _identity(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a timeout cannot be negative")
    return value


def _dh_group(text: str) -> object:
    from tunvpn.config.names import parse_dh_group

    try:
        return parse_dh_group(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if not 0 < value <= 1024:
        raise argparse.ArgumentTypeError("the transfer size must be above 0 and at most 1024 MiB")
    return value


def dpd_options(interval: float | None) -> tuple[float, float]:
    """``dpd_interval`` and ``dpd_timeout`` of ClientOptions for ``--dpd-interval`` (None: the
    defaults, 10 and 25 s; 0: no DPD); the gateway is dead after 2.5 times the interval."""
    from tunvpn.client.daemon import DPD_INTERVAL, DPD_TIMEOUT

    if interval is None:
        return DPD_INTERVAL, DPD_TIMEOUT
    if interval < 0 or interval > 3600:
        raise SystemExit("tunvpn connect: --dpd-interval must be 0 to 3600 seconds")
    return interval, interval * 2.5


def _pfs(text: str) -> object:
    if text.strip().lower() in ("none", "no", "off", "nopfs"):
        return None
    if text.strip().lower() in ("auto", "required"):
        return text.strip().lower()
    return _dh_group(text)


# --------------------------------------------------------------------------- the parser


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command adds its parser to it."""


def version() -> str:
    """The installed distribution's version, else ``tunvpn.__version__``, else "unknown"."""
    import importlib.metadata

    try:
        return importlib.metadata.version("tunvpn")
    except importlib.metadata.PackageNotFoundError:
        import tunvpn

        return str(getattr(tunvpn, "__version__", "unknown"))


class _VersionAction(argparse.Action):
    """``--version``: ``tunvpn 0.1.0 (interpreted)``, the build looked at only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from tunvpn.build import build_kind

        print(f"tunvpn {version()} ({build_kind()})")
        parser.exit()


def _add_check(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--check",
        action="store_true",
        help=f"load {what} (and its secret files) and print what would be done, then exit: 0 if "
        "usable, 2 with the error; binds no socket, creates no TUN device",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tunvpn`` command line: one function per command adds its parser."""
    parser = argparse.ArgumentParser(
        prog="tunvpn",
        description="Userspace IKEv1/IPsec VPN: the gateway pushes the client's configuration.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the version and whether the data path runs compiled (mypyc) or interpreted",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (
        _add_bench,
        _add_passwd,
        _add_gateway,
        _add_connect,
        _add_updown,
        _add_demo,
        _add_demo_ike,
        _add_plugins,
        _add_plugin_new,
    ):
        add(sub)
    control.add_status_parser(sub)
    control.add_reload_parser(sub)
    control.add_events_parser(sub)
    _add_docs(sub)
    add_plugin_commands(sub)
    return parser


def _add_docs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    man = sub.add_parser(
        "manpage",
        help="print the tunvpn(1) manual page, made from these command-line definitions",
        description="Print tunvpn(1) in troff, from the argparse definitions of every command "
        "(needs argparse-manpage: pip install 'tunvpn[manpages]'; contrib/install.sh installs it).",
    )
    man.set_defaults(docs="manpage")
    comp = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print the completion script of SHELL for tunvpn, from the argparse definitions "
        "(needs shtab: pip install 'tunvpn[manpages]'). bash: save it as "
        "/usr/local/share/bash-completion/completions/tunvpn; zsh: as _tunvpn in a $fpath directory.",
    )
    comp.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    comp.set_defaults(docs="completion")


def cmd_docs(args: argparse.Namespace) -> int:
    """``tunvpn manpage`` / ``tunvpn completion SHELL``: generated from :func:`build_parser`."""
    parser = build_parser()
    try:
        if args.docs == "manpage":
            from argparse_manpage.manpage import Manpage

            text = str(Manpage(parser))
        else:
            import shtab

            text = shtab.complete(parser, shell=args.shell)
    except ImportError as exc:
        raise CliError(f"{exc.name} is not installed: pip install 'tunvpn[manpages]'") from None
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    """The options ``gateway`` and ``connect`` share: logging, ports, secrets, data path."""
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default; with <N> level prefixes under systemd) or one JSON object each",
    )
    p.add_argument(
        "--syslog", action="store_true", help="log to the local syslog (/dev/log, facility daemon)"
    )
    p.add_argument("--ike-port", type=_port, default=500, help="local IKE port (default 500)")
    p.add_argument("--natt-port", type=_port, default=4500, help="local NAT-T port (default 4500)")
    p.add_argument(
        "--psk-file",
        metavar="FILE",
        help=f"pre-shared keys (mode 600): one secret, or `ID SECRET` lines; else ${PSK_ENV}",
    )
    p.add_argument(
        "--id",
        dest="local_id",
        type=_identity,
        metavar="IDENTITY",
        help="our phase 1 identity (default: our address), e.g. keyid:group",
    )
    p.add_argument(
        "--legacy",
        action="store_true",
        help="also allow weak algorithms (3DES, MD5, MODP-1024/1536, ESP HMAC-SHA1): vpnc needs them",
    )
    p.add_argument(
        "--force-encap",
        action="store_true",
        help="pretend to be behind a NAT so ESP goes in UDP/4500 (strongSwan's encap=yes)",
    )
    p.add_argument(
        "--keylog",
        metavar="FILE",
        help="append IKE and ESP keys to FILE.* for Wireshark (live secrets: debugging only)",
    )
    p.add_argument(
        "--tun",
        metavar="NAME",
        default="tunvpn%d",
        help="TUN device of the ESP data path (default tunvpn%%d: the next free number)",
    )
    p.add_argument("--mtu", type=int, default=1400, help="inner MTU of the TUN device (default 1400)")
    p.add_argument(
        "--busy-poll",
        type=_busy_poll_us,
        default=None,
        metavar="US",
        help="after sending a lone packet, poll up to US microseconds for its answer instead of "
        "sleeping (adaptive, at most 5%% of a CPU; 0: never; default 1000 on 2 or more CPUs)",
    )
    p.add_argument(
        "--sa-lifetime",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="IPsec SA lifetime (default 3600); SAs are rekeyed make-before-break at 90%%",
    )
    p.add_argument(
        "--ike-only",
        action="store_true",
        help="negotiate IKE only: no TUN device, no ESP (needs no CAP_NET_ADMIN for TUN)",
    )


def _add_bench(sub: Subparsers) -> None:
    """``tunvpn bench``: its arguments are in tunvpn.bench.cli."""
    from tunvpn.bench import cli as bench_cli

    bench = sub.add_parser(
        "bench",
        help="measure tunvpn against plain veth, OpenVPN, wireguard-go and strongSwan (root)",
        description=bench_cli.DESCRIPTION,
    )
    bench_cli.add_arguments(bench)  # its own -v/-q


def _add_updown(sub: Subparsers) -> None:
    """``tunvpn up NAME`` / ``tunvpn down NAME``: a named profile in the background (docs/service.md)."""
    up = sub.add_parser(
        "up",
        help="connect in the background with profile NAME (~/.config/tunvpn/ or /etc/tunvpn/NAME.toml)",
        description="Start `tunvpn connect -c PROFILE` in the background and return once the tunnel is up "
        "(exit 1 with the reason if it does not come up). Pid, log and control socket: /run/tunvpn/NAME.*.",
    )
    up.add_argument("name", metavar="NAME", help="profile name (or a path to a profile .toml)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the tunnel (default 60)")
    up.add_argument("-v", "--verbose", action="count", default=0, help="more log output in the log file")
    down = sub.add_parser(
        "down",
        help="disconnect a profile started with tunvpn up",
        description="Stop the client `tunvpn up NAME` started; return once it has deleted its SAs and "
        "restored DNS.",
    )
    down.add_argument("name", metavar="NAME", help="profile name")
    down.add_argument("--timeout", type=float, default=15.0, help="seconds to wait (default 15)")


def cmd_up(args: argparse.Namespace) -> int:
    from tunvpn.client.updown import UpDownError, up

    try:
        print(up(args.name, timeout=args.timeout, verbose=args.verbose))
    except UpDownError as exc:
        print(f"tunvpn: {for_terminal(str(exc))}", file=sys.stderr)
        return 1
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tunvpn.client.updown import UpDownError, down

    try:
        print(down(args.name, timeout=args.timeout))
    except UpDownError as exc:
        print(f"tunvpn: {for_terminal(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _add_passwd(sub: Subparsers) -> None:
    """``tunvpn passwd``: a users-file line with an scrypt hash."""
    pw = sub.add_parser(
        "passwd",
        help="print a users-file line with an scrypt hash of a password",
        description="Print `USER:$scrypt$ln=15,r=8,p=1$SALT$HASH` for the gateway's users file: the "
        "file then holds no password (such a user cannot log in with CHAP / xauth_chap).",
    )
    pw.add_argument("user", metavar="USER", help="the XAUTH user name")
    pw.add_argument("--stdin", action="store_true", help="read the password from standard input (first line)")


def _add_gateway(sub: Subparsers) -> None:
    """``tunvpn gateway``: run a gateway."""
    gw = sub.add_parser(
        "gateway",
        help="run a gateway (IKEv1 responder)",
        description="Run a gateway: PSK (+XAUTH) phase 1, Mode Config from a pool, Quick Mode.",
    )
    _add_common(gw)
    gw.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="gateway.toml (docs/configuration.md): identity, secrets, pool, DNS, groups, phase 2 "
        "policies; replaces the flags below (tunvpn reload / SIGHUP reads it again)",
    )
    gw.add_argument(
        "--listen",
        type=_ip,
        metavar="ADDRESS",
        help="the gateway's own address to listen on (not 0.0.0.0); required without -c",
    )
    gw.add_argument(
        "--control",
        metavar="PATH",
        help="control socket for tunvpn status/reload (default /run/tunvpn/gateway.sock); `none` for none",
    )
    gw.add_argument(
        "--user",
        metavar="NAME",
        help="started as root: become NAME, keeping only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, once "
        "the TUN device is open and the ports are bound (default: tunvpn if that account exists; "
        "`root` to stay root; docs/service.md)",
    )
    gw.add_argument("--users", metavar="FILE", help="XAUTH users, `user:password` lines (mode 600)")
    gw.add_argument(
        "--require-xauth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every client must log in with XAUTH (default: yes with --users; "
        "--no-require-xauth lets clients skip the login, with a warning)",
    )
    gw.add_argument(
        "--max-sessions-per-user",
        type=int,
        default=4,
        metavar="N",
        help="logged-in sessions one user may hold at once; a login beyond is refused (0: no limit)",
    )
    gw.add_argument("--pool", metavar="FIRST-LAST", help="client addresses, e.g. 10.79.0.10-10.79.0.20")
    gw.add_argument(
        "--pool6",
        metavar="FIRST-LAST",
        help="clients' IPv6 addresses beside --pool, e.g. fd79::10-fd79::ff or fd79::/112 "
        "(for IPv6 --split networks)",
    )
    gw.add_argument(
        "--dns",
        type=_ipv4_list,
        action="append",
        default=[],
        metavar="ADDR[,ADDR]",
        help="DNS servers for clients (repeatable)",
    )
    gw.add_argument(
        "--split",
        type=_network,
        action="append",
        default=[],
        metavar="NETWORK",
        help="a network behind the gateway, IPv4 or IPv6 (with --pool6; repeatable); "
        "default: everything (0.0.0.0/0)",
    )
    gw.add_argument(
        "--allow-aggressive-psk",
        action="store_true",
        help="accept Aggressive Mode with a PSK (needed for vpnc; weak, see README)",
    )
    gw.add_argument(
        "--allow-aggressive-signatures",
        action="store_true",
        help="accept Aggressive Mode with RSA signatures or hybrid (off: costly for spoofed senders)",
    )
    gw.add_argument(
        "--allow-base-mode",
        action="store_true",
        help="accept tunvpn's Base Mode (off by default; see docs/protocol.md)",
    )
    gw.add_argument("--banner", help="text shown by clients after login (Cisco Unity banner)")
    _add_check(gw, "the configuration, its plugins and certificates")


def _add_connect(sub: Subparsers) -> None:
    """``tunvpn connect``: connect to a gateway."""
    cl = sub.add_parser(
        "connect",
        help="connect to a gateway (IKEv1 initiator)",
        description="Connect to a gateway; exits 1 with a message if a phase fails.",
    )
    _add_common(cl)
    cl.add_argument(
        "gateway", type=_gateway, nargs="?", metavar="GATEWAY", help="the gateway's IP address or host name"
    )
    cl.add_argument(
        "-c",
        "--profile",
        metavar="FILE",
        help="client profile (gateway, secret, user; docs/configuration.md) instead of GATEWAY, "
        "--psk-file and --user",
    )
    cl.add_argument(
        "--dns-backend",
        choices=("auto", "systemd-resolved", "resolvconf", "scutil", "file", "none"),
        default="auto",
        help="how to apply the gateway's DNS servers (default auto; restored on exit)",
    )
    cl.add_argument(
        "--control",
        metavar="PATH",
        help="control socket for tunvpn status (default /run/tunvpn/client-IFACE.sock); `none` for none",
    )
    cl.add_argument("--gateway-port", type=_port, default=500, help="the gateway's IKE port (default 500)")
    cl.add_argument(
        "--gateway-natt-port", type=_port, default=4500, help="the gateway's NAT-T port (default 4500)"
    )
    cl.add_argument("--local", type=_ip, metavar="ADDRESS", help="our address (default: the route's source)")
    cl.add_argument("--mode", choices=("main", "aggressive", "base"), default="main", help="phase 1 mode")
    cl.add_argument("--user", help="XAUTH user name (offers XAUTH authentication)")
    cl.add_argument(
        "--run-as",
        metavar="NAME",
        help="started as root: become NAME, keeping only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, once "
        "the TUN device is open and the ports are bound; DNS, the gateway's route and the crash-recovery "
        "state then go through a small privileged helper (default: stay root; docs/security.md)",
    )
    cl.add_argument(
        "--ca",
        metavar="FILE",
        action="append",
        help="CA certificate(s) of the gateway, PEM (repeatable): hybrid authentication - the "
        "gateway proves itself by its certificate, you by XAUTH (--user); no pre-shared key",
    )
    cl.add_argument(
        "--remote-id",
        type=_remote_id,
        metavar="IDENTITY|any",
        help="who the gateway must be: a name or address in its certificate, or a pre-shared-key "
        "gateway's identity (default: GATEWAY); `any`: any identity of a pre-shared-key gateway",
    )
    cl.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"XAUTH password, first line (mode 600); else ${PASSWORD_ENV}, else a prompt",
    )
    cl.add_argument(
        "--ike-group",
        type=_dh_group,
        action="append",
        metavar="GROUP",
        help="phase 1 DH group(s) to offer, e.g. ecp256, modp2048, dh2 (repeatable)",
    )
    cl.add_argument(
        "--dpd-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds of silence from the gateway before a DPD R-U-THERE (default 10; the gateway "
        "is dead after 2.5 times as long; 0: no DPD). Lower finds a restarted gateway on an idle "
        "tunnel sooner (profile: dpd_interval)",
    )
    cl.add_argument(
        "--pfs-min",
        type=_dh_group,
        default=None,
        metavar="GROUP",
        help="never offer a Quick Mode PFS group weaker than GROUP (by security strength), nor "
        "no PFS, whatever the gateway answers (profile: pfs_min)",
    )
    cl.add_argument(
        "--fragmentation",
        choices=("yes", "force", "no"),
        default=None,
        help="IKE fragmentation (the Cisco/strongSwan extension): `yes` (default) cuts large "
        "messages for a gateway that announces it, and the first message from its first "
        "retransmission on; `force` cuts every large message at once; `no` never",
    )
    cl.add_argument(
        "--pfs",
        type=_pfs,
        default="auto",
        metavar="auto|required|GROUP|none",
        help="Quick Mode PFS with a gateway that pushes no policies: `auto` (default) offers ecp256, "
        "then every other group strongest first, then none, moving on when the gateway refuses; "
        "`required` the same without none; a GROUP or `none`: only that",
    )
    cl.add_argument(
        "--no-mode-config",
        dest="mode_config",
        action="store_false",
        help="do not ask for Mode Config; protect 0.0.0.0/0 from our own address",
    )
    cl.add_argument(
        "--exit-after-established",
        "--once",
        dest="exit_after",
        action="store_true",
        help="delete the SAs and exit 0 once every Quick Mode is up (no reconnecting)",
    )
    cl.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        default=None,
        help="exit when the connection ends or fails instead of reconnecting with back-off "
        "(default: reconnect, failing over between the profile's gateways; profile: reconnect = false)",
    )
    cl.add_argument(
        "--no-block-ipv6",
        dest="block_ipv6",
        action="store_false",
        default=None,
        help="leave the host's IPv6 alone in a full tunnel whose gateway offers no IPv6 (default: make "
        "it unreachable while connected, so it cannot go around the tunnel; profile: block_ipv6 = false)",
    )
    cl.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up if the tunnel is not up by then (default 60; 0: never)",
    )
    cl.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    _add_check(cl, "the profile")


def _add_demo(sub: Subparsers) -> None:
    """``tunvpn demo``: the three-namespace tour."""
    tour = sub.add_parser(
        "demo",
        help="as root: client, gateway and protected server in three network namespaces",
        description="Create three network namespaces (client, gateway, a server behind it), run the "
        "gateway with its built-in configuration and a client that knows only the gateway, the "
        "secret and a user; show each phase, ping and move data through the tunnel, change a "
        "policy live, then remove everything. Needs root, iproute2 and /dev/net/tun.",
    )
    tour.add_argument(
        "-v", "--verbose", action="count", default=0, help="show the daemons' logs (-vv: their debug logs)"
    )
    tour.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="longest wait for one step (30)"
    )
    tour.add_argument(
        "--transfer-mb",
        type=_megabytes,
        default=8.0,
        metavar="MB",
        help="MiB sent through the tunnel and checked (8)",
    )
    tour.add_argument(
        "--peers",
        action="store_true",
        help="then a second client and a peering rule: the gateway introduces the two and they "
        "build a direct tunnel (issue 17)",
    )


def _add_demo_ike(sub: Subparsers) -> None:
    """``tunvpn demo-ike``: gateway and client in two namespaces."""
    demo = sub.add_parser(
        "demo-ike",
        help="as root: gateway and client in two network namespaces",
        description="Create two network namespaces joined by a veth pair, run a gateway "
        "in one and a client in the other, show their progress until the client's "
        "Quick Mode SAs are up, then remove everything.",
    )
    demo.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    demo.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS", help="give up after (60)")
    demo.add_argument("--mode", choices=("main", "aggressive"), default="main", help="client phase 1 mode")


def _add_plugins(sub: Subparsers) -> None:
    """``tunvpn plugins``: the installed plugins."""
    plugins = sub.add_parser(
        "plugins",
        help="list the installed plugins (and those a gateway.toml enables)",
        description="List the plugins installed in this Python environment (entry points of the "
        "`tunvpn` group) with their distributions and versions; with -c, mark those the gateway "
        "configuration enables, name any it needs that are missing (exit 1), check their "
        "settings and group names (exit 2 on an error) and print the order each hook asks them "
        "in.",
    )
    plugins.add_argument("-c", "--config", metavar="FILE", help="gateway.toml to check")


def _add_plugin_new(sub: Subparsers) -> None:
    """``tunvpn plugin new NAME [--dir PATH]``: a plugin distribution from the template."""
    plugin = sub.add_parser(
        "plugin",
        help="start a plugin of your own: plugin new NAME writes tunvpn-NAME/ from a template",
        description="Tools for plugin authors (docs/plugin-template.md).",
    )
    actions = plugin.add_subparsers(dest="plugin_action", metavar="ACTION")
    actions.required = True
    new = actions.add_parser(
        "new",
        help="write tunvpn-NAME/: a plugin distribution that passes its own tests as written",
        description="Write the folder tunvpn-NAME/ (never over an existing one): a distribution "
        "with an entry point NAME, a small documented example plugin (an allow list that gives "
        "its users a group: tunvpn_check_settings, tunvpn_declare_groups, tunvpn_authorize), its "
        "end-to-end tests over loopback (tunvpn.testing) and a README. Then: cd tunvpn-NAME, "
        "pip install -e '.[test]', pytest.",
    )
    new.add_argument(
        "name", metavar="NAME", help="the plugin's name: lowercase letters, digits and '-' (e.g. allow-list)"
    )
    new.add_argument(
        "--dir", metavar="PATH", default=".", help="the folder to write tunvpn-NAME/ in (default: here)"
    )


def cmd_plugin_new(args: argparse.Namespace) -> int:
    """``tunvpn plugin new NAME [--dir PATH]``: exit 0, or 2 for a bad name or an existing folder."""
    from tunvpn.plugins.template import TemplateError, write

    try:
        target, written = write(args.name, Path(args.dir))
    except TemplateError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote the plugin distribution {target}/:")
    for path in written:
        print(f"  {path}")
    print(f"next: cd {target} && pip install -e '.[test]' && pytest  (README.md says more)")
    return 0


def add_plugin_commands(sub: Subparsers) -> None:
    """``tunvpn_add_commands`` of every installed plugin; a broken one is logged and skipped."""
    import importlib.metadata

    import pluggy

    from tunvpn.plugins import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for ep in importlib.metadata.entry_points(group="tunvpn"):
        try:
            module = ep.load()
            if hasattr(module, "tunvpn_add_commands") and not pm.is_registered(module):
                pm.register(module, name=ep.name)
        except Exception as exc:
            log.warning("plugin %r (%s) skipped: %s", ep.name, ep.value, exc)
    for impl in pm.hook.tunvpn_add_commands.get_hookimpls():
        try:
            impl.function(subparsers=sub)
        except Exception as exc:
            log.warning("plugin %r: its commands are skipped: %s", impl.plugin_name, exc)


def cmd_plugins(args: argparse.Namespace) -> int:
    """``tunvpn plugins [-c gateway.toml]``: exit 0, 1 when a plugin the file needs is not
    installed, 2 when the file or a plugin's settings are wrong (as ``tunvpn gateway``)."""
    from tunvpn.plugins.host import OWN_PLUGINS, installed_plugins

    enabled: tuple[str, ...] = ()
    options = None
    if args.config:
        from tunvpn.config.gateway import load_gateway_config
        from tunvpn.gateway.daemon import options_from_config

        options = options_from_config(load_gateway_config(args.config))
        enabled = options.plugin_names()
    installed = installed_plugins()
    for plugin in installed:
        mark = "enabled" if plugin.name in enabled else ("-" if args.config else "")
        dist = f"{plugin.distribution} {plugin.version}"
        line = f"{plugin.name:<16} {dist:<28} {plugin.module:<32} {mark}"
        print(line.rstrip())
    missing = [name for name in enabled if name not in {p.name for p in installed}]
    for name in missing:
        hint = f"pip install {OWN_PLUGINS[name]}" if name in OWN_PLUGINS else "not one of tunvpn's own"
        print(f"{for_terminal(name):<16} NOT INSTALLED ({hint}), needed by {args.config}")
    if missing:
        return 1
    if options is not None:
        _print_plugin_setup(options)
    return 0


def _print_plugin_setup(options: GatewayOptions) -> None:
    """What ``plugins -c`` adds once everything is installed: the plugins' settings checked (a
    refusal raises: exit 2), the groups they declare, and the order each hook asks them in."""
    from tunvpn.gateway.daemon import Gateway
    from tunvpn.plugins import hookspecs

    gateway = Gateway(options)  # loads the plugins and runs tunvpn.gateway.plugin_setup
    try:
        checked = gateway.plugins.call_order("tunvpn_check_settings")
        print(
            f"settings: OK ({'checked by ' + ', '.join(checked) if checked else 'no plugin checks its own'})"
        )
        if gateway.plugin_groups:
            groups = ", ".join(f"{g} ({p})" for g, p in gateway.plugin_groups.items())
            print(f"groups declared by plugins: {for_terminal(groups)}")
        print("order in which the plugins are asked:")
        for hook in hookspecs.hook_names():
            order = gateway.plugins.call_order(hook)
            if order and hook != "tunvpn_add_commands":
                print(f"  {hook}: {', '.join(order)}")
    finally:
        gateway.plugins.close()


def _setup_logging(verbose: int, quiet: bool, default: int, fmt: str = "text", syslog: bool = False) -> None:
    from tunvpn.shell.logs import make_handler

    level = logging.WARNING if quiet else max(logging.DEBUG, default - 10 * verbose)
    # a peer's text in a log argument (an XAUTH user name, a gateway's message) is escaped in
    # every format, so it cannot forge log lines or send escape sequences to the terminal
    try:
        handler = make_handler(fmt, syslog=syslog)
    except OSError as exc:
        raise CliError(f"--syslog: no syslog socket ({exc.strerror or exc}); log to stderr instead") from None
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("pyroute2", "asyncio"):  # their debug output drowns ours
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))


# --------------------------------------------------------------------------- gateway


def _gateway_options(args: argparse.Namespace) -> GatewayOptions:
    from tunvpn.config.pool import AddressPool
    from tunvpn.gateway.daemon import GatewayOptions

    psks = load_psks(args.psk_file)
    users = UserTable.load(args.users) if args.users else None
    pool = AddressPool.parse(args.pool) if args.pool else None
    pool6 = AddressPool.parse6(args.pool6) if args.pool6 else None
    if pool6 is not None and pool is None:
        raise CliError("--pool6 goes with --pool: every client gets an IPv4 address too")
    if any(net.version == 6 for net in args.split) and pool6 is None:
        raise CliError("an IPv6 --split network needs --pool6 (the clients' IPv6 addresses)")
    dns = tuple(a for group in args.dns for a in group)
    return GatewayOptions(
        listen=args.listen,
        psks=psks,
        ike_port=args.ike_port,
        natt_port=args.natt_port,
        users=users,
        pool=pool,
        pool6=pool6,
        dns=dns,
        split=tuple(dict.fromkeys(args.split)),
        allow_aggressive_psk=args.allow_aggressive_psk,
        allow_aggressive_signatures=args.allow_aggressive_signatures,
        allow_base_mode=args.allow_base_mode,
        legacy=args.legacy,
        require_xauth=args.require_xauth,
        max_sessions_per_user=args.max_sessions_per_user,
        banner=args.banner,
        local_id=args.local_id,
        force_encap=args.force_encap,
        keylog=args.keylog,
        tun=None if args.ike_only else args.tun,
        mtu=args.mtu,
        busy_poll_us=args.busy_poll,
        sa_lifetime=args.sa_lifetime,
    )


def _control_path(value: str | None, role: str) -> str | None:
    if value is not None:
        return None if value == "none" else value
    if role == "client":
        return "auto"
    from tunvpn.control.server import default_socket_path

    return str(default_socket_path(role))


def cmd_gateway(args: argparse.Namespace) -> int:
    from tunvpn.gateway.daemon import Gateway, options_from_config

    _setup_logging(args.verbose, args.quiet, logging.INFO, args.log_format, args.syslog)
    run_as = _service_user(args.user)
    if args.config:
        from tunvpn.config.gateway import load_gateway_config

        _refuse_config_flags(args)
        options = options_from_config(load_gateway_config(args.config))
        if args.tun != build_parser().parse_args(["gateway"]).tun:
            options.overrides["tun"] = args.tun  # a device name for this run
        if args.ike_only:
            options.overrides["tun"] = None
        if args.keylog:
            options.overrides["keylog"] = args.keylog
        if args.control is not None or options.control_socket is None:
            options.overrides["control_socket"] = _control_path(args.control, "gateway")
        for name, value in options.overrides.items():
            setattr(options, name, value)
    else:
        if args.listen is None:
            raise CliError("give -c gateway.toml, or --listen ADDRESS with the other flags")
        options = _gateway_options(args)
        options.control_socket = _control_path(args.control, "gateway")
    if args.check:
        return check_gateway(options, args.config)
    gateway = Gateway(options)
    gateway.run_as = run_as
    asyncio.run(gateway.run())
    return 0


GATEWAY_RUNTIME_FLAGS = frozenset(
    {
        *("command", "verbose", "quiet", "log_format", "syslog", "keylog", "ike_only"),
        *("config", "control", "user", "check", "tun"),
    }
)
"""``tunvpn gateway`` settings that go with ``-c`` (how to run it, not what it is; ``--tun``
overrides the file's ``tun``): every other flag is a setting gateway.toml holds, and is refused
beside ``-c`` instead of ignored."""


def _refuse_config_flags(args: argparse.Namespace) -> None:
    """With ``-c``, a flag that gateway.toml replaces is a mistake: say so (issue 20)."""
    defaults = vars(build_parser().parse_args(["gateway"]))
    given = sorted(
        {"local_id": "--id"}.get(name, "--" + name.replace("_", "-"))
        for name, value in vars(args).items()
        if name in defaults and name not in GATEWAY_RUNTIME_FLAGS and value != defaults[name]
    )
    if given:
        raise CliError(
            f"{', '.join(given)}: {args.config} holds the gateway's settings when -c is given "
            "(docs/configuration.md); put them there, or drop -c"
        )


def _service_user(name: str | None) -> ServiceUser | None:
    """Whom a daemon started as root becomes (tunvpn/shell/privileges.py); the files it would
    trust as that user are then trusted (its own, and root:GROUP 0640 ones): they stay usable
    after the drop."""
    from tunvpn.config.secretfile import trust_service_user
    from tunvpn.shell.privileges import DEFAULT_USER, choose_user

    try:
        user = choose_user(name)
    except PrivilegeError as exc:
        raise CliError(str(exc)) from None
    if user is not None:
        trust_service_user(user.uid, user.gid)
    elif os.geteuid() == 0 and name != "root":
        log.warning(
            "running as root: no user %r to drop to (useradd --system %s, or --user NAME; "
            "--user root to keep root on purpose); the IKE parser and the plugins run as root",
            DEFAULT_USER,
            DEFAULT_USER,
        )
    return user


def cmd_passwd(args: argparse.Namespace) -> int:
    """``tunvpn passwd USER``: a users-file line holding an scrypt hash (tunvpn/config/passwords.py)."""
    import getpass

    from tunvpn.config.passwords import hash_password

    if not args.user or ":" in args.user or args.user != args.user.strip() or "\n" in args.user:
        raise CliError(f"user name {args.user!r}: no colon, no surrounding spaces")
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ")
    if not password:
        raise CliError("empty password")
    print(f"{args.user}:{hash_password(password)}")
    return 0


def _suites(items: Sequence[object]) -> str:
    return ", ".join(str(getattr(i, "name", i)).lower() for i in items) or "none"


def _identity_text(identity: object) -> str:
    return for_terminal(str(identity))


def check_gateway(options: GatewayOptions, source: str | None) -> int:
    """``tunvpn gateway --check``: build the gateway as it would start (plugins loaded, engine
    configuration, certificates and CRLs), print its effective settings and return 0. No socket,
    no TUN device, no plugin service (those start in ``Gateway.run``)."""
    from tunvpn.gateway.daemon import Gateway, effective_rules
    from tunvpn.gateway.logins import login_sources

    gateway = Gateway(options)  # ConfigError (exit 2) for what only the gateway can check
    try:
        sources = login_sources(options, gateway.plugins)
        required = gateway.config.require_xauth
        phase1 = gateway.phase1
        lines = [f"{source or 'command line'}: OK"]
        lines.append(f"listen:          {options.listen} (IKE {options.ike_port}, NAT-T {options.natt_port})")
        lines.append(f"identity:        {_identity_text(options.local_id or options.listen)}")
        auth = []
        if options.psks:
            ids = [for_terminal(i) for i, _ in options.psks.entries()]
            auth.append(f"pre-shared keys for {', '.join(ids)}")
        if options.credential is not None:
            subject = options.credential.certificate.subject.rfc4514_string()
            auth.append(f"certificate {for_terminal(subject)}")
        if options.hybrid:
            auth.append("hybrid (clients log in with XAUTH only)")
        lines.append(f"authentication:  {'; '.join(auth) or 'none'}")
        if options.trusted_cas:
            cas = ", ".join(for_terminal(c.subject.rfc4514_string()) for c in options.trusted_cas)
            lines.append(f"trusted CAs:     {cas}")
        encryption = ", ".join(
            f"{enc.name.lower()}{'-' + str(bits) if bits else ''}" for enc, bits in phase1.encryption
        )
        lines.append(
            f"phase 1:         encryption {encryption}; hash {_suites(phase1.hashes)}; "
            f"groups {_suites(phase1.groups)}; lifetime {phase1.lifetime} s"
        )
        modes = ["main"]
        modes += ["aggressive (PSK)"] if options.allow_aggressive_psk else []
        modes += ["aggressive (signatures)"] if options.allow_aggressive_signatures else []
        modes += ["base"] if options.allow_base_mode else []
        lines.append(
            f"modes:           {', '.join(modes)}{'; legacy algorithms ON' if options.legacy else ''}"
        )
        if required:
            xauth = f"required (the default with a login source: {', '.join(sources)})"
        elif sources:
            xauth = (
                f"NOT required (require_xauth = false although {', '.join(sources)} can check "
                "logins: a holder of the group secret may skip the login)"
            )
        else:
            xauth = "NOT required (no login source: no users_file, no login plugin)"
        lines.append(f"xauth:           {xauth}")
        lines.append(f"login sources:   {', '.join(sources) or 'none'}")
        lines.append(f"plugins:         {', '.join(gateway.plugins.names) or 'none'}")
        login_order = gateway.plugins.call_order("tunvpn_verify_credentials")
        if len(login_order) > 1:
            lines.append(f"login asks:      {', '.join(login_order)} (in this order; first answer decides)")
        authorizers = gateway.plugins.call_order("tunvpn_authorize")
        if authorizers:
            lines.append(f"authorization:   {', '.join(authorizers)} (all asked; any refusal wins)")
        if gateway.plugin_groups:
            groups = ", ".join(f"{g} ({p})" for g, p in gateway.plugin_groups.items())
            lines.append(f"plugin groups:   {for_terminal(groups)}")
        pool = f"{options.pool.first}-{options.pool.last}" if options.pool else "none"
        lines.append(f"pool:            {pool}")
        lines.append(f"dns:             {', '.join(map(str, options.dns)) or 'none'}")
        if options.domains:
            lines.append(f"domains:         {', '.join(for_terminal(d) for d in options.domains)}")
        tun = f"{options.tun} (mtu {options.mtu})" if options.tun is not None else "none (IKE only)"
        lines.append(f"tun:             {for_terminal(tun)}")
        lines.append(f"control socket:  {for_terminal(str(options.control_socket or 'none'))}")
        rules = effective_rules(options, phase1)
        lines.append(f"phase 2 policies ({len(rules)}):")
        for rule in rules:
            policy = rule.policy
            who = ", ".join([*(f"group {g}" for g in rule.groups), *(f"user {u}" for u in rule.users)])
            remote = str(policy.client_ts) if policy.client_ts is not None else "assigned address"
            pfs = policy.pfs_group.name.lower() if policy.pfs_group is not None else "none"
            lines.append(f"  {for_terminal(policy.name)}: local {policy.gateway_ts} <-> remote {remote}")
            lines.append(f"    for:  {for_terminal(who) if who else 'everyone'}")
            lines.append(
                f"    esp:  {', '.join(str(s) for s in policy.esp)}; pfs {pfs}; "
                f"lifetime {policy.lifetime_seconds} s"
                + (f" / {policy.lifetime_kilobytes} KiB" if policy.lifetime_kilobytes else "")
            )
        print("\n".join(lines))
    finally:
        gateway.plugins.close()
    return 0


def check_client(options: ClientOptions, source: str | None) -> int:
    """``tunvpn connect --check``: the profile loaded (secret files read), what the client would do."""
    if options.credential is not None and options.psks:
        auth = "certificate (or pre-shared key)"
    elif options.credential is not None:
        auth = "certificate"
    elif options.trusted_cas and not options.psks:
        auth = "hybrid (the gateway's certificate, then XAUTH)"
    else:
        auth = "pre-shared key"
    if options.remote_id_any:
        remote = "any (pre-shared-key gateway)"
    else:
        remote = _identity_text(options.remote_id or options.gateway)
    lines = [
        f"{source or 'command line'}: OK",
        f"gateway:         {', '.join(options.gateways)} (IKE {options.gateway_port}, "
        f"NAT-T {options.gateway_natt_port})",
        f"reconnect:       {'yes (DPD, back-off, in order)' if options.reconnect else 'no'}",
        f"local address:   {options.local_ip}",
        f"remote id:       {remote}",
        f"local id:        {_identity_text(options.local_id or options.local_ip)}",
        f"mode:            {options.mode}",
        f"authentication:  {auth}",
        f"user:            {for_terminal(options.user) if options.user else 'none (no XAUTH)'}",
    ]
    if options.trusted_cas:
        cas = ", ".join(for_terminal(c.subject.rfc4514_string()) for c in options.trusted_cas)
        lines.append(f"trusted CAs:     {cas}")
    if options.plugins:
        from tunvpn.plugins.host import PluginError, PluginHost

        try:  # loaded and their settings checked, as `tunvpn connect` does
            host = PluginHost(options.plugins)
            host.check_settings(options.plugin_settings, "client")
        except PluginError as exc:
            raise ConfigError(f"{source or 'command line'}: {exc}") from None
        host.close()
        lines.append(f"plugins:         {', '.join(options.plugins)} (settings checked)")
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- client


def route_source(gateway: str, port: int) -> str:
    """The address the kernel would send from towards ``gateway`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((gateway, port))
        except OSError as exc:
            raise CliError(f"no route to the gateway {gateway}: {exc.strerror or exc}") from None
        return str(probe.getsockname()[0])


def _client_source(gateways: Sequence[str], port: int) -> str:
    """Our address towards the first gateway that resolves and has a route (issue 15: names)."""
    from tunvpn.config.hosts import is_address

    errors = []
    for gateway in gateways:
        try:
            if is_address(gateway):
                addresses = [gateway]
            else:
                # IPv4 first (a gateway on both is reached as before), then IPv6: a name with
                # only AAAA records, or a host without an IPv4 route, connects over IPv6
                infos = socket.getaddrinfo(gateway, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
                found = list(dict.fromkeys(str(info[4][0]) for info in infos))
                addresses = sorted(found, key=lambda a: ":" in a)
            for address in addresses:
                try:
                    return route_source(address, port)
                except CliError as exc:
                    errors.append(str(exc))
        except OSError as exc:
            errors.append(f"cannot resolve {gateway}: {exc.strerror or exc}")
    raise CliError("; ".join(errors) or "no gateway")


def _gateway(text: str) -> str:
    """argparse type: an IP address or a host name."""
    from tunvpn.config.hosts import check_gateway

    try:
        return check_gateway(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_connect(args: argparse.Namespace) -> int:
    from tunvpn.client.daemon import Client, ClientOptions

    _setup_logging(args.verbose, args.quiet, logging.WARNING, args.log_format, args.syslog)
    credential = None
    trusted_cas: tuple[x509.Certificate, ...] = ()
    peer_certificates = None
    if args.profile:
        from tunvpn.config.profile import load_profile

        profile = load_profile(args.profile)
        if args.gateway is not None and args.gateway not in profile.gateways:
            raise CliError(f"GATEWAY {args.gateway} is not among the profile's {', '.join(profile.gateways)}")
        gateways = profile.gateways if args.gateway is None else (args.gateway,)
        args.gateway = gateways[0]
        if args.reconnect is None:
            args.reconnect = profile.reconnect
        if args.block_ipv6 is None:
            args.block_ipv6 = profile.block_ipv6
        psks = profile.psks
        args.user = args.user or profile.user
        args.password_file = args.password_file or profile.password_file
        args.run_as = args.run_as or profile.run_as
        if args.pfs == "auto" and profile.pfs is not None:  # the command line's --pfs comes first
            args.pfs = _pfs(profile.pfs)
        args.fragmentation = args.fragmentation or profile.fragmentation
        if args.dpd_interval is None and profile.dpd_interval is not None:
            args.dpd_interval = float(profile.dpd_interval)
        if args.pfs_min is None and profile.pfs_min is not None:
            args.pfs_min = _dh_group(profile.pfs_min)
        if args.mode == "main" and profile.mode != "main":
            args.mode = profile.mode
        args.local_id = args.local_id or profile.local_id
        if args.remote_id is None:
            args.remote_id = "any" if profile.remote_id_any else profile.remote_id
        if args.ca:
            raise CliError("--ca goes into the profile (ca = ...) when -c PROFILE is given")
        credential, trusted_cas = profile.credential, tuple(profile.trusted_cas)
        peer_certificates = profile.peer_certificates
        plugins, plugin_settings = profile.plugins, dict(profile.plugin_settings)
    else:
        if args.gateway is None:
            raise CliError("give the GATEWAY address (and --psk-file, --user), or -c PROFILE")
        gateways = (args.gateway,)
        if args.ca:
            # hybrid authentication: the gateway's certificate, then XAUTH; no pre-shared key
            if args.psk_file:
                raise CliError("--ca (hybrid authentication) uses no pre-shared key: drop --psk-file")
            psks, trusted_cas = PskTable(), _load_cas(args.ca)
        else:
            psks = load_psks(args.psk_file)
        plugins, plugin_settings = (), {}
    from tunvpn.config.pskcheck import warn_weak_psks

    warn_weak_psks(psks, "client")  # the offline-guessing warning, as the gateway gives it
    password = load_password(args.password_file) if args.user else None
    if args.password_file and not args.user:
        raise CliError("--password-file needs --user")
    local_ip = args.local or _client_source(gateways, args.gateway_port)
    try:
        options = ClientOptions(
            gateway=args.gateway,
            gateways=gateways,
            reconnect=args.reconnect is not False and not args.exit_after,
            block_ipv6=args.block_ipv6 is not False,
            psks=psks,
            local_ip=local_ip,
            gateway_port=args.gateway_port,
            gateway_natt_port=args.gateway_natt_port,
            ike_port=args.ike_port,
            natt_port=args.natt_port,
            mode=args.mode,
            local_id=args.local_id,
            user=args.user,
            password=password,
            password_prompt=sys.stdin.isatty(),
            legacy=args.legacy,
            ike_groups=tuple(args.ike_group) if args.ike_group else None,
            pfs=DHGroup.ECP_256 if args.pfs in ("auto", "required") else args.pfs,
            pfs_auto=args.pfs in ("auto", "required"),
            pfs_required=args.pfs == "required",
            fragmentation=args.fragmentation or "yes",
            pfs_min=args.pfs_min,
            dpd_interval=dpd_options(args.dpd_interval)[0],
            dpd_timeout=dpd_options(args.dpd_interval)[1],
            mode_config=args.mode_config,
            exit_after_established=args.exit_after,
            timeout=args.timeout,
            keylog=args.keylog,
            tun=None if args.ike_only else args.tun,
            mtu=args.mtu,
            busy_poll_us=args.busy_poll,
            sa_lifetime=args.sa_lifetime,
            json=args.json,
            force_encap=args.force_encap,
            dns_backend=None if args.dns_backend == "none" else args.dns_backend,
            control_socket=_control_path(args.control, "client"),
            credential=credential,
            trusted_cas=trusted_cas,
            peer_certificates=peer_certificates,
            remote_id=None if args.remote_id == "any" else args.remote_id,
            remote_id_any=args.remote_id == "any",
            plugins=plugins,
            plugin_settings=plugin_settings,
            roaming=not args.local,  # a pinned --local address is not followed
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.check:
        return check_client(options, args.profile)
    client = Client(options, local_ip)
    if args.run_as is not None:
        from tunvpn.shell.privileges import choose_user

        client.run_as = choose_user(args.run_as)  # None: not root, or `root`
    code = asyncio.run(client.run())
    if code != 0:
        print(f"tunvpn: {for_terminal(client.message)}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "gateway": cmd_gateway,
        "connect": cmd_connect,
        "status": control.run_status,
        "reload": control.run_reload,
        "events": control.run_events,
        "manpage": cmd_docs,
        "completion": cmd_docs,
        "plugins": cmd_plugins,
        "plugin": cmd_plugin_new,
        "passwd": cmd_passwd,
        "up": cmd_up,
        "down": cmd_down,
    }
    try:
        if args.command == "bench":
            from tunvpn.bench import cli as bench_cli

            return bench_cli.run_from_args(args)
        if args.command == "demo":
            from tunvpn.demo.tour import run_tour

            return run_tour(args)
        if args.command == "demo-ike":
            from tunvpn.demo.ike import run_demo

            return run_demo(args)
        if args.command in handlers:
            return handlers[args.command](args)
        return int(args.handler(args))  # a plugin's command (tunvpn_add_commands)
    except (CliError, SecretFileError, BindError, ConfigError, PrivilegeError, MetricsError) as exc:
        text = exc.args[-1] if isinstance(exc, BindError) else str(exc)
        print(f"tunvpn: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if type(exc).__name__ != "TunError":
            raise
        print(f"tunvpn: error: {exc} (or use --ike-only)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["CliError", "build_parser", "main", "route_source"]
