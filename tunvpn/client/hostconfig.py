"""Client host configuration: DNS (and routes not on the TUN device) applied when the tunnel
comes up, undone on disconnect, and undone by a later run after a crash.

The TUN device is not persistent: when the process dies the kernel deletes it together with
its addresses and routes. What survives a crash is DNS configuration and any route on another
device (e.g. a host route to the gateway through the original default gateway). Everything
changed is therefore recorded *before* the change in a state file
``<run dir>/client-<ifname>.json`` (run dir ``/run/tunvpn``, ``$TUNVPN_RUN_DIR`` overrides;
directory 0700, files 0600) holding the owner's pid and process start time. A later run calls
:func:`cleanup_stale`, which undoes what every state file of a dead owner records.

DNS backends (``auto`` picks the first that fits; a name forces one):

* ``systemd-resolved`` -- ``resolvectl dns|domain|revert`` on the TUN link (when
  ``/run/systemd/resolve`` exists and ``resolvectl`` is on PATH);
* ``resolvconf`` -- Debian's resolvconf or openresolv: ``resolvconf -a|-d <ifname>.tunvpn``;
* ``scutil`` -- macOS: a ``State:/Network/Service/tunvpn-<ifname>/DNS`` dictionary;
* ``file`` -- rewrite a resolv.conf (``/etc/resolv.conf``, ``$TUNVPN_RESOLV_CONF`` overrides),
  keeping a backup in the run dir; put back only if it still holds what we wrote;
* ``none`` -- leave DNS alone (also used when the gateway pushes no DNS servers).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol

log = logging.getLogger(__name__)

__all__ = [
    "HostConfigError",
    "DnsServer",
    "DnsBackend",
    "DNS_BACKENDS",
    "HostConfig",
    "Route",
    "cleanup_stale",
    "host_route_outside",
    "routes_cover",
    "choose_dns_backend",
    "default_run_dir",
    "default_resolv_conf",
    "render_resolv_conf",
    "render_resolvconf_fragment",
    "render_scutil_script",
    "render_scutil_remove",
    "process_start_time",
]

DnsServer = IPv4Address | IPv6Address
Servers = tuple[DnsServer, ...]
Domains = tuple[str, ...]

DEFAULT_RUN_DIR = "/run/tunvpn"
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_DIR = "/run/systemd/resolve"
RESOLVCONF_SUFFIX = ".tunvpn"
SCUTIL_KEY = "State:/Network/Service/tunvpn-{ifname}/DNS"
STATE_VERSION = 1
STATE_MAX_BYTES = 1 << 16
COMMAND_TIMEOUT = 20.0

DNS_BACKENDS = ("auto", "systemd-resolved", "resolvconf", "scutil", "file", "none")

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class HostConfigError(Exception):
    """Host configuration could not be applied or undone (the message says what and why)."""


# ---------------------------------------------------------------------------- validation


def _check_ifname(ifname: str) -> str:
    if not _IFNAME_RE.match(ifname) or ifname in (".", ".."):
        raise HostConfigError(f"bad interface name {ifname!r}")
    return ifname


def _check_domain(domain: str) -> str:
    """A DNS domain as pushed by the gateway: plain labels only (it ends up in files and scripts)."""
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or len(name) > 253 or not all(_LABEL_RE.match(label) for label in name.split(".")):
        raise HostConfigError(f"refusing DNS domain {domain!r}: not a plain domain name")
    return name


def _check_servers(servers: Iterable[DnsServer]) -> tuple[DnsServer, ...]:
    out = []
    for server in servers:
        if not isinstance(server, IPv4Address | IPv6Address):
            raise HostConfigError(f"DNS server {server!r} is not an IP address object")
        out.append(server)
    return tuple(out)


# ---------------------------------------------------------------------------- commands


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a configuration command; :class:`HostConfigError` naming it and its stderr on failure."""
    shown = " ".join(argv)
    try:
        result = subprocess.run(
            list(argv),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HostConfigError(f"`{shown}` failed: {argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostConfigError(f"`{shown}` failed: no answer after {COMMAND_TIMEOUT:.0f}s") from exc
    except OSError as exc:
        raise HostConfigError(f"`{shown}` failed: {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or "no output"
        raise HostConfigError(f"`{shown}` failed (exit {result.returncode}): {detail}")
    return result


# Probes, separate so the tests can replace them.
def _system() -> str:
    return platform.system()


def _which(name: str) -> str | None:
    return shutil.which(name)


def _isdir(path: str) -> bool:
    return os.path.isdir(path)


def _has_ipv6() -> bool:
    """Whether this host's kernel has IPv6 at all."""
    return Path("/proc/sys/net/ipv6").is_dir()


def _link_exists(ifname: str) -> bool:
    """Whether the network interface exists (only asked on Linux)."""
    return os.path.exists(f"/sys/class/net/{ifname}")


def choose_dns_backend(requested: str = "auto") -> str:
    """The DNS backend name for ``requested`` (``auto`` probes this host)."""
    if requested not in DNS_BACKENDS:
        raise HostConfigError(f"unknown DNS backend {requested!r} (one of {', '.join(DNS_BACKENDS)})")
    if requested != "auto":
        return requested
    if _system() == "Darwin":
        return "scutil"
    if _isdir(RESOLVED_DIR) and _which("resolvectl"):
        return "systemd-resolved"
    if _which("resolvconf"):
        return "resolvconf"
    return "file"


def default_run_dir() -> Path:
    return Path(os.environ.get("TUNVPN_RUN_DIR") or DEFAULT_RUN_DIR)


def default_resolv_conf() -> Path:
    return Path(os.environ.get("TUNVPN_RESOLV_CONF") or DEFAULT_RESOLV_CONF)


# ---------------------------------------------------------------------------- text renderers


def _parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, other kept lines such as ``options``) of a resolv.conf."""
    servers: list[str] = []
    search: list[str] = []
    kept: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) >= 2:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]  # the last of "search"/"domain" wins, as in glibc
        elif words[0] in ("options", "sortlist"):
            kept.append(" ".join(words))
    return servers, search, kept


def render_resolv_conf(
    ifname: str, servers: Sequence[DnsServer], domains: Sequence[str], split: bool, original: str | None
) -> str:
    """The resolv.conf the ``file`` backend writes.

    The VPN's servers come first. A resolv.conf cannot route names by domain, so for a split
    tunnel the original servers stay behind them as fallbacks; a full tunnel uses only the
    VPN's (no queries leak outside the tunnel). Search domains: the VPN's, then the original
    ones; ``options``/``sortlist`` lines are kept.
    """
    orig_servers, orig_search, kept = _parse_resolv_conf(original or "")
    lines = [f"# Generated by tunvpn for {ifname}; the original is put back when the VPN disconnects."]
    names = [str(s) for s in servers]
    if split:
        names += [s for s in orig_servers if s not in names]
    lines += [f"nameserver {name}" for name in names]
    search = list(dict.fromkeys([*domains, *orig_search]))
    if search:
        lines.append("search " + " ".join(search))
    lines += kept
    return "\n".join(lines) + "\n"


def render_resolvconf_fragment(ifname: str, servers: Sequence[DnsServer], domains: Sequence[str]) -> str:
    """What ``resolvconf -a <ifname>.tunvpn`` reads on stdin."""
    lines = [f"# tunvpn {ifname}"]
    lines += [f"nameserver {s}" for s in servers]
    if domains:
        lines.append("search " + " ".join(domains))
    return "\n".join(lines) + "\n"


def render_scutil_script(
    ifname: str, servers: Sequence[DnsServer], domains: Sequence[str], split: bool
) -> str:
    """The ``scutil`` script that publishes the VPN's resolver on macOS.

    Split tunnel: the servers answer only names under ``SupplementalMatchDomains``. Full
    tunnel: the empty match domain ``""`` makes them answer every name.
    """
    lines = ["d.init", "d.add ServerAddresses * " + " ".join(str(s) for s in servers)]
    if domains:
        lines.append("d.add SearchDomains * " + " ".join(domains))
    match = list(domains) if split else ['""', *domains]
    if match:
        lines.append("d.add SupplementalMatchDomains * " + " ".join(match))
    lines += [f"set {SCUTIL_KEY.format(ifname=ifname)}", "quit"]
    return "\n".join(lines) + "\n"


def render_scutil_remove(ifname: str) -> str:
    return f"remove {SCUTIL_KEY.format(ifname=ifname)}\nquit\n"


# ---------------------------------------------------------------------------- file writing


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _is_mount_point(path: Path) -> bool:
    """True if ``path`` is a mount point, including a bind-mounted file (``ip netns exec``)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == str(path):
                    return True
    except OSError:
        pass
    return os.path.ismount(path)


def _read_bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _write_in_place(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise HostConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_config_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename) where that is possible.

    A symlink is followed (the link stays, its target is replaced). A mount point -- under
    ``ip netns exec`` /etc/resolv.conf is a bind mount of /etc/netns/<ns>/resolv.conf, and
    renaming over it fails with EBUSY -- is written in place.
    """
    target = Path(os.path.realpath(path))
    if _is_mount_point(target):
        log.debug("%s is a mount point: writing in place", target)
        _write_in_place(target, data)
        return
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise HostConfigError(f"cannot stat {target}: {exc.strerror or exc}") from exc
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tunvpn-", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), (st.st_mode & 0o7777) if st else 0o644)
            if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS):
            log.debug("atomic replace of %s failed (%s): writing in place", target, exc.strerror)
            _write_in_place(target, data)
        else:
            raise HostConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically (state files and backups, in the run dir)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- DNS backends


Recorder = Callable[[dict[str, Any]], None]


class DnsBackend(Protocol):
    """One way of configuring the resolver. ``record()`` is what a later run needs to undo it."""

    name: ClassVar[str]

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None: ...

    def restore(self) -> None: ...

    def record(self) -> dict[str, Any]: ...


class NoneDns:
    name: ClassVar[str] = "none"

    def __init__(self, ifname: str = "") -> None:
        self.ifname = ifname

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None:
        self.ifname = ifname
        log.info("DNS: leaving the resolver configuration alone (backend none)")

    def restore(self) -> None:
        pass

    def record(self) -> dict[str, Any]:
        return {"backend": self.name}


class ResolvedDns:
    """systemd-resolved: per-link servers and domains, dropped with ``resolvectl revert``."""

    name: ClassVar[str] = "systemd-resolved"

    def __init__(self, ifname: str | None = None, on_prepared: Recorder | None = None) -> None:
        self.ifname = ifname
        self._on_prepared = on_prepared

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None:
        self.ifname = ifname
        if self._on_prepared:
            self._on_prepared(self.record())
        _run(["resolvectl", "dns", ifname, *(str(s) for s in servers)])
        if split:
            routing = [f"~{d}" for d in domains]
        else:
            routing = [*domains, "~."]
        if routing:
            _run(["resolvectl", "domain", ifname, *routing])
        log.info(
            "DNS via systemd-resolved on %s: %s, domains %s",
            ifname,
            " ".join(map(str, servers)),
            " ".join(routing) or "(none)",
        )

    def restore(self) -> None:
        if self.ifname is None:
            return
        if not _link_exists(self.ifname):
            log.debug("%s is gone; systemd-resolved dropped its DNS settings with it", self.ifname)
            return
        _run(["resolvectl", "revert", self.ifname])
        log.info("DNS: reverted systemd-resolved settings of %s", self.ifname)

    def record(self) -> dict[str, Any]:
        return {"backend": self.name, "ifname": self.ifname}


class ResolvconfDns:
    """Debian resolvconf / openresolv: one record named ``<ifname>.tunvpn``."""

    name: ClassVar[str] = "resolvconf"

    def __init__(self, ifname: str | None = None, on_prepared: Recorder | None = None) -> None:
        self.ifname = ifname
        self._on_prepared = on_prepared

    @staticmethod
    def record_name(ifname: str) -> str:
        return ifname + RESOLVCONF_SUFFIX

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None:
        self.ifname = ifname
        if self._on_prepared:
            self._on_prepared(self.record())
        fragment = render_resolvconf_fragment(ifname, servers, domains)
        _run(["resolvconf", "-a", self.record_name(ifname)], stdin=fragment)
        log.info("DNS via resolvconf record %s: %s", self.record_name(ifname), " ".join(map(str, servers)))

    def restore(self) -> None:
        if self.ifname is None:
            return
        _run(["resolvconf", "-d", self.record_name(self.ifname)])
        log.info("DNS: removed resolvconf record %s", self.record_name(self.ifname))

    def record(self) -> dict[str, Any]:
        return {"backend": self.name, "ifname": self.ifname}


class ScutilDns:
    """macOS: a DNS dictionary in the dynamic store, under a service key of our own."""

    name: ClassVar[str] = "scutil"

    def __init__(self, ifname: str | None = None, on_prepared: Recorder | None = None) -> None:
        self.ifname = ifname
        self._on_prepared = on_prepared

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None:
        self.ifname = ifname
        if self._on_prepared:
            self._on_prepared(self.record())
        _run(["scutil"], stdin=render_scutil_script(ifname, servers, domains, split))
        log.info("DNS via scutil %s: %s", SCUTIL_KEY.format(ifname=ifname), " ".join(map(str, servers)))

    def restore(self) -> None:
        if self.ifname is None:
            return
        _run(["scutil"], stdin=render_scutil_remove(self.ifname))
        log.info("DNS: removed %s", SCUTIL_KEY.format(ifname=self.ifname))

    def record(self) -> dict[str, Any]:
        return {"backend": self.name, "ifname": self.ifname}


class FileDns:
    """Rewrite a resolv.conf; the original is kept in ``backup`` until it is put back."""

    name: ClassVar[str] = "file"

    def __init__(
        self,
        path: Path,
        backup: Path,
        on_prepared: Recorder | None = None,
        *,
        existed: bool = True,
        written_sha256: str | None = None,
    ) -> None:
        self.path = path
        self.backup = backup
        self.existed = existed
        self.written_sha256 = written_sha256
        self._on_prepared = on_prepared

    def apply(self, ifname: str, servers: Servers, domains: Domains, split: bool) -> None:
        original = _read_bytes_or_none(self.path)
        text = render_resolv_conf(
            ifname, servers, domains, split, None if original is None else original.decode("utf-8", "replace")
        )
        data = text.encode()
        try:
            _write_private(self.backup, original or b"")
        except OSError as exc:
            raise HostConfigError(f"cannot save a backup of {self.path} to {self.backup}: {exc}") from exc
        self.existed = original is not None
        self.written_sha256 = _sha256(data)
        if self._on_prepared:
            self._on_prepared(self.record())  # on disk before the change, so a crash can be undone
        _write_config_file(self.path, data)
        log.info("DNS via %s: %s (original saved to %s)", self.path, " ".join(map(str, servers)), self.backup)

    def restore(self) -> None:
        """Put the original back if the file still holds what we wrote (else warn and leave it)."""
        self.restore_report()

    def restore_report(self) -> str:
        """Like :meth:`restore`; says what happened: "restored", "unchanged" or "left"."""
        if self.written_sha256 is None:
            return "unchanged"
        current = _read_bytes_or_none(self.path)
        original = _read_bytes_or_none(self.backup)
        if original is None:
            raise HostConfigError(f"cannot restore {self.path}: backup {self.backup} is missing")
        if current is not None and _sha256(current) == self.written_sha256:
            if self.existed:
                _write_config_file(self.path, original)
            else:
                try:
                    os.unlink(os.path.realpath(self.path))
                except OSError as exc:
                    raise HostConfigError(f"cannot remove {self.path}: {exc.strerror or exc}") from exc
            outcome = "restored"
            log.info("DNS: restored the original %s", self.path)
        elif (current == original) if self.existed else current is None:
            outcome = "unchanged"  # never written (crash before the write) or already put back
        else:
            log.warning(
                "%s was changed by someone else after tunvpn wrote it; leaving it as it is "
                "(the content from before tunvpn is in %s)",
                self.path,
                self.backup,
            )
            self.written_sha256 = None
            return "left"
        self.written_sha256 = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.backup)
        return outcome

    def record(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "path": str(self.path),
            "backup": str(self.backup),
            "existed": self.existed,
            "written_sha256": self.written_sha256,
        }


def _backend_from_record(record: Any, run_dir: Path, ifname: str) -> DnsBackend:
    """Rebuild the backend a state file names (ValueError if the record makes no sense)."""
    if not isinstance(record, dict):
        raise ValueError("dns is not an object")
    backend = record.get("backend")
    if backend == "none":
        return NoneDns(ifname)
    if backend in ("systemd-resolved", "resolvconf", "scutil"):
        backends: dict[str, Callable[[str], DnsBackend]] = {
            "systemd-resolved": ResolvedDns,
            "resolvconf": ResolvconfDns,
            "scutil": ScutilDns,
        }
        cls = backends[backend]
        if record.get("ifname") != ifname:
            raise ValueError("dns.ifname does not match the state file")
        return cls(ifname)
    if backend == "file":
        path, backup, digest = record.get("path"), record.get("backup"), record.get("written_sha256")
        existed = record.get("existed")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError("dns.path is not an absolute path")
        if not isinstance(backup, str) or Path(backup).parent != run_dir:
            raise ValueError("dns.backup is not in the run directory")
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError("dns.written_sha256 is not a SHA-256 hex digest")
        if not isinstance(existed, bool):
            raise ValueError("dns.existed is not a boolean")
        return FileDns(Path(path), Path(backup), existed=existed, written_sha256=digest)
    raise ValueError(f"unknown dns backend {backend!r}")


# ---------------------------------------------------------------------------- routes


ROUTE_TYPES = ("unreachable",)
"""Route types besides unicast that a :class:`Route` may be (``ip route add unreachable ...``)."""
IPV6_BLOCK = ("::/1", "8000::/1")
"""The halves of the IPv6 space made unreachable while a full IPv4 tunnel is up and the gateway
offers no IPv6 (issue 19): more specific than any default route, less than the host's on-link
and link-local prefixes, as the tunnel's own 0.0.0.0/1 and 128.0.0.0/1 are for IPv4."""


@dataclass(frozen=True, slots=True)
class Route:
    """A route not on the TUN device (e.g. the gateway's address via the original gateway), or
    an ``unreachable`` one (``kind``) that makes a prefix fail at once."""

    dest: str
    via: str | None = None
    dev: str | None = None
    kind: str | None = None
    """None: unicast; else one of :data:`ROUTE_TYPES` (no ``via``, no ``dev``)."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_network(self.dest, strict=False)
            if self.via is not None:
                ipaddress.ip_address(self.via)
        except ValueError as exc:
            raise HostConfigError(f"bad route {self.dest} via {self.via}: {exc}") from exc
        if self.dev is not None:
            _check_ifname(self.dev)
        if self.kind is not None:
            if self.kind not in ROUTE_TYPES or self.via is not None or self.dev is not None:
                raise HostConfigError(f"route {self.kind} {self.dest}: not a route tunvpn makes")
        elif self.via is None and self.dev is None:
            raise HostConfigError(f"route {self.dest}: needs a gateway (via) or a device")

    def ip_args(self) -> list[str]:
        args = [self.dest] if self.kind is None else [self.kind, self.dest]
        if self.via is not None:
            args += ["via", self.via]
        if self.dev is not None:
            args += ["dev", self.dev]
        return args

    def __str__(self) -> str:
        return " ".join(self.ip_args())

    def add(self) -> None:
        if _system() != "Linux":
            raise HostConfigError("routes outside the TUN device are only supported on Linux")
        _run(["ip", "route", "add", *self.ip_args()])
        log.info("route added: %s", self)

    def delete(self) -> bool:
        """Remove the route; False if it was not there (already gone, or never added)."""
        try:
            _run(["ip", "route", "del", *self.ip_args()])
        except HostConfigError as exc:
            if "No such process" in str(exc) or "Cannot find device" in str(exc):
                log.debug("route %s was already gone", self)
                return False
            raise
        log.info("route removed: %s", self)
        return True

    def present(self) -> bool:
        """Whether the main table has a route for exactly this prefix (any type, metric or
        next hop): one that is there before we add ours is not ours."""
        if _system() != "Linux":
            raise HostConfigError("routes outside the TUN device are only supported on Linux")
        family = "-6" if ipaddress.ip_network(self.dest, strict=False).version == 6 else "-4"
        return bool(_ip_json([family, "route", "show", "exact", self.dest, "table", "main"]))


def _ip_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    """``ip -j <argv>`` parsed (a list of objects); HostConfigError if it makes no sense."""
    out = _run(["ip", "-j", *argv]).stdout
    try:
        doc = json.loads(out or "[]")
    except ValueError as exc:
        raise HostConfigError(f"`ip -j {' '.join(argv)}`: unreadable output: {exc}") from exc
    if not isinstance(doc, list):
        raise HostConfigError(f"`ip -j {' '.join(argv)}`: not a list")
    return [entry for entry in doc if isinstance(entry, dict)]


def routes_cover(networks: Iterable[str], address: str) -> bool:
    """Whether one of ``networks`` (routes of the tunnel) contains ``address``."""
    try:
        host = ipaddress.ip_address(address)
    except ValueError:
        return False
    for network in networks:
        net = ipaddress.ip_network(network, strict=False)
        if net.version == host.version and host in net:
            return True
    return False


def host_route_outside(
    address: str, avoid_dev: str | None = None, *, ours: Route | None = None
) -> Route | None:
    """The host route that reaches ``address`` the way it is reached now, not through
    ``avoid_dev`` (the TUN device): ``address/32 via <next hop> dev <underlay>`` (no ``via``
    when it is on the link). None when the address is this host's own (nothing to pin).

    ``ip route get`` answers first (it knows policy routing); when it names ``avoid_dev`` (the
    tunnel's routes already cover the address, e.g. a reconnect to another gateway), the most
    specific route of the main table on another device is taken instead. ``ours``: a host
    route for the address that we added (the pin being refreshed): not an answer, so only
    the main table is asked, without it.
    """
    host = ipaddress.ip_address(address)
    family = "-6" if host.version == 6 else "-4"
    dest = f"{host}/{host.max_prefixlen}"
    if ours is None:
        found = _ip_json([family, "route", "get", str(host)])
        hop = found[0] if found else {}
        if hop.get("type") == "local":
            return None
        if hop.get("dev") and hop.get("dev") != avoid_dev and hop.get("type") in (None, "unicast"):
            return Route(dest, hop.get("gateway"), hop["dev"])
    best: tuple[int, int, dict[str, Any]] | None = None
    for entry in _ip_json([family, "route", "show", "table", "main"]):
        if entry.get("type") not in (None, "unicast") or not entry.get("dev") or entry["dev"] == avoid_dev:
            continue
        if ours is not None and entry.get("dst") in (str(host), dest):
            continue
        dst = entry.get("dst")
        try:
            net = (
                ipaddress.ip_network("::/0" if host.version == 6 else "0.0.0.0/0")
                if dst == "default"
                else (ipaddress.ip_network(str(dst), strict=False))
            )
        except ValueError:
            continue
        if net.version != host.version or host not in net:
            continue
        metric = entry.get("metric", 0) if isinstance(entry.get("metric", 0), int) else 0
        key = (net.prefixlen, -metric)
        if best is None or key > best[:2]:
            best = (*key, entry)
    if best is None:
        raise HostConfigError(f"no route to {host} outside {avoid_dev or 'the tunnel'}")
    entry = best[2]
    return Route(dest, entry.get("gateway"), entry["dev"])


# ---------------------------------------------------------------------------- processes


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
        return int(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(pid: int, start_time: int | None) -> bool:
    """Whether the process that wrote a state file still runs (pid reuse detected by start time)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if not os.path.isdir("/proc/self"):
        return True  # no procfs (macOS): the pid is all we have
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields and fields[0] in ("Z", "X"):
        return False  # dead, not yet reaped: its TUN device is closed
    # A different start time: the pid was reused by another process.
    return start_time is None or process_start_time(pid) == start_time


# ---------------------------------------------------------------------------- state files


@dataclass(frozen=True, slots=True)
class _State:
    pid: int
    start_time: int | None
    ifname: str
    dns: dict[str, Any] | None
    routes: tuple[Route, ...]

    def to_json(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "pid": self.pid,
            "start_time": self.start_time,
            "ifname": self.ifname,
            "dns": self.dns,
            "routes": [
                {"dest": r.dest, "via": r.via, "dev": r.dev, **({"type": r.kind} if r.kind else {})}
                for r in self.routes
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> _State:
        """ValueError (or HostConfigError from a bad route) if the file is not one of ours."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError("not a version 1 state object")
        pid, start, ifname = doc.get("pid"), doc.get("start_time"), doc.get("ifname")
        if type(pid) is not int or not (start is None or type(start) is int):
            raise ValueError("pid / start_time are not integers")
        if not isinstance(ifname, str) or not _IFNAME_RE.match(ifname):
            raise ValueError("bad ifname")
        routes_doc = doc.get("routes", [])
        if not isinstance(routes_doc, list) or not all(isinstance(r, dict) for r in routes_doc):
            raise ValueError("routes is not a list of objects")
        for r in routes_doc:
            if not isinstance(r.get("dest"), str) or not all(
                v is None or isinstance(v, str) for v in (r.get("via"), r.get("dev"), r.get("type"))
            ):
                raise ValueError("route fields are not strings")
        routes = tuple(Route(r["dest"], r.get("via"), r.get("dev"), r.get("type")) for r in routes_doc)
        dns = doc.get("dns")
        if dns is not None and not isinstance(dns, dict):
            raise ValueError("dns is not an object")
        return cls(pid, start, ifname, dns, routes)


def _state_path(run_dir: Path, ifname: str) -> Path:
    return run_dir / f"client-{ifname}.json"


def _ensure_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = run_dir.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(run_dir, 0o700)
    except OSError as exc:
        raise HostConfigError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc


def _read_state(path: Path) -> _State:
    """Read a state file; ValueError if it is malformed or not safely ours."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ValueError(f"owned by uid {st.st_uid} with mode {st.st_mode & 0o777:o}, not ours")
        data = f.read(STATE_MAX_BYTES + 1)
    if len(data) > STATE_MAX_BYTES:
        raise ValueError("too large")
    try:
        state = _State.parse(data)
    except HostConfigError as exc:
        raise ValueError(str(exc)) from exc
    if state.dns is not None:
        _backend_from_record(state.dns, path.parent, state.ifname)  # ValueError if it makes no sense
    return state


def _move_aside(path: Path, why: str) -> None:
    bad = path.with_name(path.name + ".bad")
    log.warning("malformed tunvpn state file %s (%s); moved it to %s", path, why, bad)
    try:
        os.replace(path, bad)
    except OSError as exc:
        log.warning("could not move %s aside: %s", path, exc)


def _undo(state: _State, run_dir: Path) -> list[str]:
    """Undo what a state file records; lines of what was done. HostConfigError if part failed
    (everything is still attempted)."""
    done: list[str] = []
    errors: list[str] = []
    owner = f"pid {state.pid} ({state.ifname})"
    for route in reversed(state.routes):
        try:
            if route.delete():
                done.append(f"removed route {route} left by {owner}")
        except HostConfigError as exc:
            errors.append(str(exc))
    if state.dns is not None:
        try:
            backend = _backend_from_record(state.dns, run_dir, state.ifname)
        except ValueError as exc:
            errors.append(f"cannot undo DNS settings: {exc}")
        else:
            try:
                if isinstance(backend, FileDns):
                    outcome = backend.restore_report()
                    if outcome == "restored":
                        done.append(f"restored {backend.path} left by {owner}")
                    elif outcome == "left":
                        done.append(
                            f"left {backend.path} alone: changed since {owner} wrote it "
                            f"(the original is in {backend.backup})"
                        )
                elif not isinstance(backend, NoneDns):
                    backend.restore()
                    done.append(f"reverted {backend.name} DNS settings left by {owner}")
            except HostConfigError as exc:
                errors.append(str(exc))
    if errors:
        raise HostConfigError("; ".join(errors))
    return done


def cleanup_stale(run_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Undo what crashed tunvpn clients left behind; lines saying what was undone.

    Every ``client-*.json`` whose process is gone (pid dead, or reused: start time differs) is
    undone and deleted. A live owner's file is left alone; a malformed one is moved to
    ``*.bad`` with one warning. A file whose undo fails is kept (for the next run) and logged.
    """
    rdir = Path(run_dir) if run_dir is not None else default_run_dir()
    try:
        paths = sorted(rdir.glob("client-*.json"))
    except OSError:
        return []
    lines: list[str] = []
    for path in paths:
        try:
            state = _read_state(path)
        except FileNotFoundError:
            continue  # another cleanup got there first
        except (OSError, ValueError) as exc:
            _move_aside(path, str(exc))
            continue
        if path.name != _state_path(rdir, state.ifname).name:
            _move_aside(path, f"records ifname {state.ifname!r}")
            continue
        if _owner_alive(state.pid, state.start_time):
            log.debug("%s belongs to live pid %d; leaving it", path, state.pid)
            continue
        try:
            done = _undo(state, rdir)
        except HostConfigError as exc:
            log.warning("could not undo everything %s records: %s (kept for a later run)", path, exc)
            lines.append(f"could not fully undo what pid {state.pid} ({state.ifname}) left: {exc}")
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if not done:
            done = [f"removed state of pid {state.pid} ({state.ifname}): nothing left to undo"]
        lines += done  # each undo step has logged itself
    return lines


# ---------------------------------------------------------------------------- HostConfig


class HostConfig:
    """DNS and extra routes of one client tunnel, recorded for crash recovery.

    Nothing is written until the first change. ``restore()`` is idempotent and also runs when
    the ``with`` block ends.
    """

    def __init__(
        self,
        ifname: str,
        run_dir: str | os.PathLike[str] | None = None,
        dns_backend: str = "auto",
        *,
        resolv_conf: str | os.PathLike[str] | None = None,
    ) -> None:
        self.ifname = _check_ifname(ifname)
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
        if dns_backend not in DNS_BACKENDS:
            raise HostConfigError(f"unknown DNS backend {dns_backend!r} (one of {', '.join(DNS_BACKENDS)})")
        self.dns_backend = dns_backend
        self.resolv_conf = Path(resolv_conf) if resolv_conf is not None else default_resolv_conf()
        self.state_path = _state_path(self.run_dir, ifname)
        self.backup_path = self.run_dir / f"client-{ifname}.resolv.conf.orig"
        self._dns: DnsBackend | None = None
        self._dns_record: dict[str, Any] | None = None
        self._routes: list[Route] = []
        self._pin: Route | None = None
        self._peer_pins: dict[str, Route] = {}
        """Host routes that keep introduced peers' endpoints outside a full tunnel (issue 17)."""
        self._ipv6_block: list[Route] = []
        """The unreachable routes of :meth:`block_ipv6` (issue 19)."""
        self._claimed = False

    # -- state

    def _claim(self) -> None:
        """Before the first change: make the run dir, deal with a previous file for this ifname."""
        if self._claimed:
            return
        _ensure_run_dir(self.run_dir)
        try:
            previous = _read_state(self.state_path)
        except FileNotFoundError:
            previous = None
        except (OSError, ValueError) as exc:
            _move_aside(self.state_path, str(exc))
            previous = None
        if previous is not None:
            if _owner_alive(previous.pid, previous.start_time):
                raise HostConfigError(
                    f"{self.ifname} is configured by running pid {previous.pid} ({self.state_path})"
                )
            try:
                _undo(previous, self.run_dir)  # the backends log what they undo
            except HostConfigError as exc:
                raise HostConfigError(
                    f"cannot undo what crashed pid {previous.pid} left for {self.ifname}: {exc} "
                    f"(undo it by hand, then remove {self.state_path})"
                ) from exc
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
        self._claimed = True

    def _save(self) -> None:
        state = _State(
            pid=os.getpid(),
            start_time=process_start_time(os.getpid()),
            ifname=self.ifname,
            dns=self._dns_record,
            routes=tuple(self._routes),
        )
        try:
            _write_private(self.state_path, state.to_json())
        except OSError as exc:
            raise HostConfigError(f"cannot write state file {self.state_path}: {exc}") from exc

    def _record_dns(self, record: dict[str, Any]) -> None:
        self._dns_record = record
        self._save()

    # -- DNS

    def _make_backend(self, name: str) -> DnsBackend:
        if name == "file":
            return FileDns(self.resolv_conf, self.backup_path, self._record_dns)
        if name == "systemd-resolved":
            return ResolvedDns(on_prepared=self._record_dns)
        if name == "resolvconf":
            return ResolvconfDns(on_prepared=self._record_dns)
        if name == "scutil":
            return ScutilDns(on_prepared=self._record_dns)
        return NoneDns()

    def apply_dns(
        self, servers: Iterable[DnsServer], domains: Iterable[str] = (), split: bool = False
    ) -> str:
        """Point the resolver at the VPN's ``servers``; returns the backend used.

        ``split``: the VPN carries only some networks (no default route through it), so only
        names under ``domains`` should go to its servers where the backend can express that.
        Applying again first undoes the previous settings.
        """
        servers_t = _check_servers(servers)
        domains_t = tuple(dict.fromkeys(_check_domain(d) for d in domains))
        name = choose_dns_backend(self.dns_backend) if servers_t else "none"
        if self._dns is not None:
            self._restore_dns()
        if name == "none":
            if not servers_t:
                log.info("DNS: the gateway pushed no DNS servers; resolver left alone")
            else:
                log.info("DNS: resolver left alone (backend none)")
            return name
        self._claim()
        backend = self._make_backend(name)
        self._dns = backend
        try:
            backend.apply(self.ifname, servers_t, domains_t, split)
        except HostConfigError:
            # Undo a half-applied change (e.g. dns set, domain failed) as far as possible.
            with contextlib.suppress(HostConfigError):
                self._restore_dns()
            raise
        return name

    def _restore_dns(self) -> None:
        backend, self._dns = self._dns, None
        if backend is None:
            return
        try:
            backend.restore()
        except HostConfigError:
            self._dns = backend
            raise
        self._dns_record = None
        if self._claimed:
            self._save()

    # -- routes

    def add_route(
        self, dest: str, *, via: str | None = None, dev: str | None = None, kind: str | None = None
    ) -> None:
        """Add a route outside the TUN device (Linux, ``ip route add``), recorded for undo."""
        route = Route(dest, via, dev, kind)
        self._claim()
        if route.present():
            # someone's route for this prefix is there (the add fails, or adds another metric):
            # recorded only after our add succeeded, so a crash never deletes a route not ours
            route.add()
            self._routes.append(route)
            self._save()
            return
        # recorded before the add: a crash (SIGKILL) right after it still leaves a record, and
        # the next run removes it (a record of a route never added is skipped then)
        self._routes.append(route)
        self._save()
        try:
            route.add()
        except BaseException:
            self._routes.remove(route)
            self._save()
            raise

    def remove_route(self, route: Route) -> None:
        """Remove a route :meth:`add_route` added (and forget it)."""
        route.delete()
        if route in self._routes:
            self._routes.remove(route)
            self._save()

    def pin_host(self, address: str, avoid_dev: str | None = None) -> Route | None:
        """Keep ``address`` (the gateway) reachable as it is now, outside ``avoid_dev`` (the TUN
        device), before the tunnel's routes cover it: a host route via the underlay's current
        next hop (:func:`host_route_outside`), recorded for undo like every route here. One
        pin at a time: pinning another address (the client moved to another gateway) adds
        the new pin, then removes the old one. Returns the route added; None when nothing was
        added (already pinned, this host's own address, or a host route that is not ours is
        already there: it pins the address and stays alone)."""
        host = ipaddress.ip_address(address)
        if self._pin is not None and self._pin.dest == f"{host}/{host.max_prefixlen}":
            return None
        route = host_route_outside(str(host), avoid_dev)
        old, added = self._pin, None
        if route is not None:
            try:
                self.add_route(route.dest, via=route.via, dev=route.dev)
                added = self._pin = route
            except HostConfigError as exc:
                if "File exists" not in str(exc):
                    raise
                log.info("a host route for %s is already there: left as it is", host)
                self._pin = None
        else:
            self._pin = None
        if old is not None:
            self.remove_route(old)
        return added

    def pin_peer(self, address: str, avoid_dev: str | None = None) -> Route | None:
        """Keep an introduced peer's endpoint ``address`` outside ``avoid_dev`` (the TUN device)
        when the tunnel's routes cover it (a full tunnel): our direct tunnel to it goes on the
        underlay, as IKE and ESP to the gateway do (:meth:`pin_host`). Any number of these,
        recorded for undo; None when nothing was added (already pinned, no way out, a host
        route that is not ours)."""
        host = ipaddress.ip_address(address)
        if str(host) in self._peer_pins or (
            self._pin is not None and self._pin.dest.split("/")[0] == str(host)
        ):
            return None
        route = host_route_outside(str(host), avoid_dev)
        if route is None:
            return None
        try:
            self.add_route(route.dest, via=route.via, dev=route.dev)
        except HostConfigError as exc:
            if "File exists" not in str(exc):
                raise
            log.info("a host route for %s is already there: left as it is", host)
            return None
        self._peer_pins[str(host)] = route
        return route

    def unpin_peer(self, address: str) -> None:
        """The peer at ``address`` is gone: its host route goes (if we made one)."""
        route = self._peer_pins.pop(str(ipaddress.ip_address(address)), None)
        if route is not None:
            self.remove_route(route)

    def refresh_pin(self, avoid_dev: str | None = None) -> Route | None:
        """The host's addresses or routes changed (roaming): pin the pinned address again the
        way it is reached now (the kernel may have flushed the pin with the address or link it
        went through; the next hop may be another one). Returns the new pin; None when there
        is none or it is still right."""
        old = self._pin
        if old is None:
            return None
        host = ipaddress.ip_interface(old.dest).ip
        route = host_route_outside(str(host), avoid_dev, ours=old)
        if route == old and self._pin_present(old):
            return None
        self.remove_route(old)  # gone already (flushed by the kernel) is fine
        self._pin = None
        if route is not None:
            self.add_route(route.dest, via=route.via, dev=route.dev)
            self._pin = route
        return route

    def block_ipv6(self, on: bool) -> bool:
        """Make the host's IPv6 beyond its own links unreachable (``on``), or reachable again:
        while a full IPv4 tunnel is up and the gateway offers no IPv6, IPv6 would otherwise go
        around the tunnel, in clear (issue 19). Link-local and on-link prefixes, and host
        routes such as the gateway's pin, are more specific and stay. Recorded for undo like
        every route here (an exit or the next run after a crash lifts it). Returns whether
        IPv6 is blocked now: False also where the host has no IPv6 (nothing can leak)."""
        if not on:
            for route in reversed(self._ipv6_block):
                self.remove_route(route)
            self._ipv6_block.clear()
            return False
        if self._ipv6_block:
            return True
        if _system() != "Linux":
            raise HostConfigError("blocking IPv6 outside the tunnel is only supported on Linux")
        if not _has_ipv6():
            log.info("IPv6: this host has none; nothing to block")
            return False
        for dest in IPV6_BLOCK:
            route = Route(dest, kind="unreachable")
            try:
                self.add_route(route.dest, kind=route.kind)
            except HostConfigError as exc:
                if "File exists" not in str(exc):
                    self.block_ipv6(False)
                    raise
                log.warning("IPv6: a route for %s is already there (another VPN?): left as it is", dest)
                continue
            self._ipv6_block.append(route)
        return True

    @staticmethod
    def _pin_present(route: Route) -> bool:
        host = ipaddress.ip_interface(route.dest).ip
        family = "-6" if host.version == 6 else "-4"
        for entry in _ip_json([family, "route", "show", "table", "main"]):
            if entry.get("dst") in (str(host), route.dest) and entry.get("dev") == route.dev:
                return entry.get("gateway") == route.via
        return False

    # -- undo

    def restore(self) -> None:
        """Undo everything (routes, then DNS) and delete the state file. Idempotent.

        If part of it fails, the rest is still undone, the state file keeps what is left (so a
        later :func:`cleanup_stale` retries) and :class:`HostConfigError` says what failed.
        """
        errors: list[str] = []
        for route in reversed(list(self._routes)):
            try:
                route.delete()
                self._routes.remove(route)
            except HostConfigError as exc:
                errors.append(str(exc))
        self._pin = None
        self._peer_pins.clear()
        self._ipv6_block.clear()
        try:
            self._restore_dns()
        except HostConfigError as exc:
            errors.append(str(exc))
        if not self._claimed:
            return
        if errors:
            self._save()
            raise HostConfigError("; ".join(errors))
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self._claimed = False

    def __enter__(self) -> HostConfig:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.restore()
        except HostConfigError as err:
            if exc is None:
                raise
            log.error("restoring host configuration of %s: %s", self.ifname, err)
