"""The paths the benchmark measures, each a ``TunnelProvider``.

A provider builds one tunnel between two namespaces that the harness made and joined with a
veth pair, and removes it again::

    provider.bind(context)                          # work dir, process tracker, timeouts
    missing = provider.missing()                    # non-empty: "not available: <missing>"
    ta, tb = provider.setup(ns_a, ns_b, ip_a, ip_b) # tunnel addresses in A and in B
    ...                                             # harness pings tb from A, runs iperf3 A -> B
    provider.teardown()                             # always called, also after a failed setup

``setup`` raises ``NotAvailable`` (or any exception) when the tunnel cannot be built; the harness
then reports the path as "not available: <reason>" and goes on. Daemons started through
``self.spawn`` are stopped by PID in ``teardown`` (and by the harness in any case).
"""

from __future__ import annotations

import abc
import base64
import datetime
import functools
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunvpn.bench.system import (
    Requirement,
    Tracker,
    dpkg_version,
    first_line,
    read_text,
    wait_until,
    write_private,
)

log = logging.getLogger("tunvpn.bench")


class NotAvailable(RuntimeError):
    """The path cannot be measured here; the message says why."""


@dataclass
class BenchContext:
    """What the harness hands each provider before ``setup``."""

    tracker: Tracker
    workdir: Path
    """A fresh directory for this provider's configs and logs."""
    tag: str
    """Unique per topology ("tvb" + 6 hex), for device names (15 characters at most)."""
    setup_timeout: float = 30.0
    ipv6: bool = False
    """The IPv6 variant: the underlay addresses are IPv6; the tunnel carries IPv6 inside too."""


class TunnelProvider(abc.ABC):
    """Base class of a benchmark path. Subclasses set ``name`` and override ``setup``/``teardown``.

    ``program`` and ``cipher`` are shown in the report (fill them during ``setup``);
    ``daemon_pids()`` names the processes whose CPU time the report shows.
    """

    name = "?"
    requirements: Sequence[Requirement] = ()

    def __init__(self) -> None:
        self.program = ""
        self.cipher = ""
        self.ctx: BenchContext | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ harness side

    def bind(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self._procs = {}

    def missing(self) -> list[str]:
        """What this machine lacks for the path, in words (empty: nothing)."""
        return [r.describe() for r in self.requirements if not r.present()]

    def packages(self) -> list[str]:
        """Debian packages that ``--install`` installs for the missing requirements."""
        return sorted({r.package for r in self.requirements if not r.present()})

    @abc.abstractmethod
    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        """Build the tunnel between the namespaces; return the tunnel addresses of A and B."""

    def teardown(self) -> None:
        for label, proc in reversed(list(self._procs.items())):
            self.tracker.stop(proc, timeout=10)
            log.debug("%s: stopped %s", self.name, label)
        self._procs.clear()

    def daemon_pids(self) -> dict[str, int]:
        return {label: p.pid for label, p in self._procs.items() if p.poll() is None}

    # ------------------------------------------------------------------ helpers for subclasses

    @property
    def tracker(self) -> Tracker:
        assert self.ctx is not None, "bind() first"
        return self.ctx.tracker

    @property
    def workdir(self) -> Path:
        assert self.ctx is not None, "bind() first"
        return self.ctx.workdir

    def spawn(
        self, label: str, ns: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = self.tracker.spawn(label, argv, self.workdir / f"{label}.log", ns=ns, env=env)
        self._procs[label] = proc
        return proc

    def log_of(self, label: str) -> str:
        return read_text(self.workdir / f"{label}.log")

    def wait_log(self, label: str, text: str, timeout: float | None = None) -> None:
        """Wait until ``text`` shows in daemon ``label``'s log; NotAvailable if it exits or times out."""
        proc = self._procs[label]
        limit = timeout if timeout is not None else (self.ctx.setup_timeout if self.ctx else 30.0)
        wait_until(lambda: text in self.log_of(label) or proc.poll() is not None, limit)
        if text not in self.log_of(label):
            state = (
                f"exited {proc.returncode}" if proc.poll() is not None else f"no {text!r} in {limit:.0f} s"
            )
            raise NotAvailable(f"{label} {state}: {_tail(self.log_of(label))}")

    @property
    def ipv6(self) -> bool:
        return self.ctx is not None and self.ctx.ipv6

    def ip(self, *args: str) -> None:
        self.tracker.run(["ip", *args], check=True)


def _exists_or_exited(path: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Whether a daemon made its socket ``path`` yet, or died trying."""
    return path.exists() or proc.poll() is not None


def _tail(text: str, n: int = 240) -> str:
    """The last lines of a log, for a one-line reason (a traceback's last line is its error)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1][-n:]
    return " / ".join(lines[-2:])[-n:] or "(no output)"


# --------------------------------------------------------------------------- veth


class VethProvider(TunnelProvider):
    """The veth pair itself: no VPN, the ceiling of the box."""

    name = "veth"

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        self.program = "kernel veth (no VPN)"
        self.cipher = "none"
        return ip_a, ip_b


# --------------------------------------------------------------------------- OpenVPN


def self_signed_ec_cert(common_name: str) -> tuple[bytes, bytes, str]:
    """(key PEM, certificate PEM, SHA-256 fingerprint as ``AA:BB:...``): P-256, valid 2 days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    fingerprint = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    return key_pem, cert_pem, fingerprint


class OpenVPNProvider(TunnelProvider):
    """OpenVPN 2.6 point-to-point over UDP: TLS with self-signed EC certificates pinned by
    ``--peer-fingerprint``, data channel AES-256-GCM, no DCO, no compression (interop pitfalls 17-18).
    """

    name = "openvpn"
    requirements = (Requirement("openvpn", "openvpn"),)
    tunnel_a = "10.81.0.1"
    tunnel_b = "10.81.0.2"
    tunnel6_a = "fd81::1"
    tunnel6_b = "fd81::2"
    port = 1194

    def __init__(self, extra_args: Sequence[str] = (), name: str | None = None) -> None:
        super().__init__()
        self.extra_args = list(extra_args)
        """Appended to both daemons' command lines (``openvpn-bigbuf``: the socket buffers)."""
        if name is not None:
            self.name = name

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        assert self.ctx is not None
        tag = self.ctx.tag
        version = first_line(["openvpn", "--version"]).split()
        number = version[1] if len(version) > 1 else "?"
        self.program = f"OpenVPN {number} (deb {dpkg_version('openvpn')}), --disable-dco"
        if self.extra_args:
            self.program += " " + " ".join(self.extra_args)
        certs = {}
        for side in ("a", "b"):
            key_pem, cert_pem, fingerprint = self_signed_ec_cert(f"tunvpn-bench-{side}")
            key = write_private(self.workdir / f"{side}.key", key_pem.decode())
            cert = self.workdir / f"{side}.crt"
            cert.write_bytes(cert_pem)
            certs[side] = (key, cert, fingerprint)
        common = [
            "--dev-type", "tun",
            "--proto", "udp6" if self.ipv6 else "udp",
            "--port", str(self.port),
            "--data-ciphers", "AES-256-GCM",
            "--allow-compression", "no",
            "--disable-dco",
            "--ping", "10",
            "--ping-exit", "60",
            "--verb", "3",
        ]  # fmt: skip
        ends = (
            (
                "openvpn-a",
                ns_a,
                ip_a,
                ip_b,
                self.tunnel_a,
                self.tunnel_b,
                "a",
                "b",
                ["--tls-server", "--dh", "none"],
            ),
            ("openvpn-b", ns_b, ip_b, ip_a, self.tunnel_b, self.tunnel_a, "b", "a", ["--tls-client"]),
        )
        six = {self.tunnel_a: self.tunnel6_a, self.tunnel_b: self.tunnel6_b}
        for label, ns, local, remote, mine, theirs, me, peer, role in ends:
            key, cert, _ = certs[me]
            inner6 = ["--ifconfig-ipv6", f"{six[mine]}/64", six[theirs]] if self.ipv6 else []
            self.spawn(
                label,
                ns,
                [
                    "openvpn",
                    "--dev", f"{tag}o{me}",
                    "--local", local,
                    "--remote", remote,
                    "--ifconfig", mine, theirs,
                    *inner6,
                    *role,
                    "--cert", str(cert),
                    "--key", str(key),
                    "--peer-fingerprint", certs[peer][2],
                    *common,
                    *self.extra_args,
                ],
            )  # fmt: skip
        for label in ("openvpn-a", "openvpn-b"):
            self.wait_log(label, "Initialization Sequence Completed")
        found = re.findall(r"Data Channel: cipher '([^']+)'", self.log_of("openvpn-a"))
        control = [
            f"{version} {cipher}"
            for version, cipher in re.findall(
                r"Control Channel: ([^,]+), cipher \S+ ([^,\s]+)", self.log_of("openvpn-a")
            )
        ]
        self.cipher = f"{found[-1] if found else '?'} (TLS p2p{', ' + control[-1] if control else ''})"
        buffers = re.findall(r"Socket Buffers: (R=\[[^\]]*\] S=\[[^\]]*\])", self.log_of("openvpn-a"))
        if buffers:  # what OpenVPN asked for and got (net.core.[rw]mem_max caps it; no *FORCE)
            self.program += f"; socket buffers {buffers[-1]}"
        if self.ipv6:
            return self.tunnel6_a, self.tunnel6_b
        return self.tunnel_a, self.tunnel_b


# --------------------------------------------------------------------------- wireguard-go


def wg_keypair() -> tuple[str, str]:
    """(private, public) WireGuard keys, base64, made with X25519 from ``cryptography``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = X25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


WG_RUN_DIR = Path("/run/wireguard")


class WireGuardProvider(TunnelProvider):
    """wireguard-go (userspace) in the foreground, configured with ``wg set``.

    Its UAPI socket is ``/run/wireguard/<ifname>.sock`` on the host /run that every namespace
    shares, so the interface names are unique per run (interop pitfall 15).
    """

    name = "wireguard"
    requirements = (Requirement("wireguard-go", "wireguard-go"), Requirement("wg", "wireguard-tools"))
    tunnel_a = "10.80.0.1"
    tunnel_b = "10.80.0.2"
    tunnel6_a = "fd80::1"
    tunnel6_b = "fd80::2"
    port = 51820

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        assert self.ctx is not None
        wg_go = first_line(["wireguard-go", "--version"]).replace("wireguard-go ", "")
        self.program = (
            f"wireguard-go {wg_go} (deb {dpkg_version('wireguard-go')}), "
            f"wg (deb wireguard-tools {dpkg_version('wireguard-tools')})"
        )
        self.cipher = "ChaCha20-Poly1305 (WireGuard)"
        if not WG_RUN_DIR.exists():
            self.tracker.add_dir_if_empty(WG_RUN_DIR)  # removed at the end if we leave it empty
        keys = {side: wg_keypair() for side in ("a", "b")}
        devs = {side: f"{self.ctx.tag}w{side}" for side in ("a", "b")}
        for side, ns in (("a", ns_a), ("b", ns_b)):
            self.tracker.add_file(WG_RUN_DIR / f"{devs[side]}.sock")
            self.spawn(f"wireguard-go-{side}", ns, ["wireguard-go", "-f", devs[side]])
        for side in ("a", "b"):
            sock = WG_RUN_DIR / f"{devs[side]}.sock"
            proc = self._procs[f"wireguard-go-{side}"]
            wait_until(functools.partial(_exists_or_exited, sock, proc), 10)
            if not sock.exists():
                raise NotAvailable(
                    f"wireguard-go made no {sock}: {_tail(self.log_of(f'wireguard-go-{side}'))}"
                )
        a, b = (self.tunnel6_a, self.tunnel6_b) if self.ipv6 else (self.tunnel_a, self.tunnel_b)
        ends = (("a", ns_a, "b", ip_b, a, b), ("b", ns_b, "a", ip_a, b, a))
        for side, ns, peer, peer_ip, mine, theirs in ends:
            key_file = write_private(self.workdir / f"{side}.key", keys[side][0] + "\n")
            host = f"[{peer_ip}]" if ":" in peer_ip else peer_ip
            self.tracker.run(
                [
                    "wg", "set", devs[side],
                    "private-key", str(key_file),
                    "listen-port", str(self.port),
                    "peer", keys[peer][1],
                    "endpoint", f"{host}:{self.port}",
                    "allowed-ips", f"{theirs}/{128 if self.ipv6 else 32}",
                ],
                ns=ns,
                check=True,
            )  # fmt: skip
            self.ip("-n", ns, "addr", "add", f"{mine}/{64 if self.ipv6 else 24}", "dev", devs[side])
            self.ip("-n", ns, "link", "set", devs[side], "up")
        return a, b


# --------------------------------------------------------------------------- strongSwan


CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
# Every plugin named (Debian splits them across packages); no `stroke`, no `resolve` (pitfall 1).
CHARON_PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey gmp kdf vici "
    "kernel-libipsec kernel-netlink socket-default"
)
SWANCTL_SUBDIRS = (
    *("x509", "x509ca", "x509aa", "x509ocsp", "x509crl", "x509ac"),
    *("pubkey", "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12"),
)

_CHARON_CONF = """\
# strongswan.conf written by tunvpn bench: userspace ESP through kernel-libipsec (TUN ipsec0)
charon {{
  load = {plugins}
  install_routes = yes
  install_virtual_ip = yes
  filelog {{
    log {{
      path = {log}
      time_format = %T
      default = 1
      flush_line = yes
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici}
    }}
    kernel-libipsec {{
      mtu = {mtu}
    }}
  }}
}}
"""

_SWANCTL_CONF = """\
connections {{
  bench {{
    version = 1
    local_addrs = {local}
    remote_addrs = {remote}
    encap = yes
    proposals = aes128-sha256-modp2048
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      bench {{
        mode = tunnel
        local_ts = {local_ts}/{host}
        remote_ts = {remote_ts}/{host}
        esp_proposals = {esp}
      }}
    }}
  }}
}}
secrets {{
  ike-bench {{
    id-1 = {local}
    id-2 = {remote}
    secret = "{psk}"
  }}
}}
"""


def _plugin(name: str, package: str) -> Requirement:
    return Requirement(f"{PLUGIN_DIR}/libstrongswan-{name}.so", package, is_path=True)


class StrongSwanProvider(TunnelProvider):
    """Two strongSwan 5.9 charon daemons (one per namespace) with kernel-libipsec: IKEv1 Main Mode
    PSK, ESP in UDP (``encap = yes``), ESP done in userspace; inner addresses on lo.

    /var/run/charon.pid is compiled in, so each charon runs in a private mount namespace with its
    own directory over /run; the vici socket lives in the work dir (interop pitfall 2).
    """

    name = "strongswan"
    requirements = (
        Requirement(CHARON, "strongswan-charon", is_path=True),
        Requirement("swanctl", "strongswan-swanctl"),
        Requirement("unshare", "util-linux"),
        _plugin("openssl", "libstrongswan-standard-plugins"),
        _plugin("gcm", "libstrongswan-standard-plugins"),
        _plugin("kernel-libipsec", "libcharon-extra-plugins"),
        _plugin("kernel-netlink", "strongswan-charon"),
        _plugin("socket-default", "strongswan-charon"),
        _plugin("vici", "strongswan-swanctl"),
    )
    inner_a = "10.78.0.1"
    inner_b = "10.78.0.2"
    inner6_a = "fd78::1"
    inner6_b = "fd78::2"
    mtu = 1400

    def __init__(self, esp_proposals: str = "aes128gcm16", name: str | None = None) -> None:
        super().__init__()
        self.esp_proposals = esp_proposals
        if name is not None:
            self.name = name
        self.psk = "tunvpn-bench-" + base64.b32encode(os.urandom(15)).decode().lower()

    def packages(self) -> list[str]:
        missing = super().packages()
        # what peers.sh installs, so that the interop set-ups work as well
        return (
            sorted({*missing, "libstrongswan-extra-plugins", "libcharon-extauth-plugins"}) if missing else []
        )

    def _uri(self, side: str) -> str:
        return f"unix://{self.workdir / side / 'charon.vici'}"

    def swanctl(self, side: str, command: str, *args: str, timeout: float = 30) -> str:
        # the command first, then --uri (pitfall 3)
        result = self.tracker.run(
            ["swanctl", f"--{command}", "--uri", self._uri(side), *args], timeout=timeout
        )
        text = result.stdout + result.stderr
        if result.returncode != 0:
            raise NotAvailable(
                f"swanctl --{command} ({side}) exited {result.returncode}: {_tail(text)}; "
                f"charon: {_tail(read_text(self.workdir / side / 'charon.log'))}"
            )
        return text

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        version = dpkg_version("strongswan-charon")
        self.program = (
            f"strongSwan charon {version.split('-')[0]} (deb strongswan-charon {version}, "
            f"libcharon-extra-plugins {dpkg_version('libcharon-extra-plugins')}), kernel-libipsec"
        )
        inner_a, inner_b = (self.inner6_a, self.inner6_b) if self.ipv6 else (self.inner_a, self.inner_b)
        ends = (
            ("a", ns_a, ip_a, ip_b, inner_a, inner_b),
            ("b", ns_b, ip_b, ip_a, inner_b, inner_a),
        )
        for side, ns, local, remote, local_ts, remote_ts in ends:
            d = self.workdir / side
            (d / "run").mkdir(parents=True, exist_ok=True)
            for sub in SWANCTL_SUBDIRS:  # --load-all --file scans these (pitfall 5)
                (d / sub).mkdir(exist_ok=True)
            vici = d / "charon.vici"
            if len(str(vici)) > 100:
                raise NotAvailable(f"vici socket path too long for AF_UNIX: {vici}")
            (d / "strongswan.conf").write_text(
                _CHARON_CONF.format(plugins=CHARON_PLUGINS, log=d / "charon.log", vici=vici, mtu=self.mtu)
            )
            write_private(
                d / "swanctl.conf",
                _SWANCTL_CONF.format(
                    local=local,
                    remote=remote,
                    local_ts=local_ts,
                    remote_ts=remote_ts,
                    host=128 if self.ipv6 else 32,
                    esp=self.esp_proposals,
                    psk=self.psk,
                ),
            )
            self.ip("-n", ns, "addr", "add", f"{local_ts}/{128 if self.ipv6 else 32}", "dev", "lo")
            label = f"charon-{side}"
            proc = self.spawn(
                label,
                ns,
                [
                    "unshare", "--mount", "--propagation", "private",
                    "sh", "-c", 'mount --bind "$1" /run && exec "$2"', "sh", str(d / "run"), CHARON,
                ],
                env={"STRONGSWAN_CONF": str(d / "strongswan.conf")},
            )  # fmt: skip
            wait_until(functools.partial(_exists_or_exited, vici, proc), 15)
            if not vici.exists():
                raise NotAvailable(
                    f"{label} opened no vici socket: {_tail(self.log_of(label))} "
                    f"{_tail(read_text(d / 'charon.log'))}"
                )
        for side in ("a", "b"):
            self.swanctl(side, "load-all", "--file", str(self.workdir / side / "swanctl.conf"))
        self.swanctl("a", "initiate", "--child", "bench", "--timeout", "20", timeout=40)
        sas = self.swanctl("a", "list-sas")
        (self.workdir / "list-sas.txt").write_text(sas)
        esp = re.search(r"ESP:(\S+)", sas)
        mode = "TUNNEL-in-UDP" if "TUNNEL-in-UDP" in sas else ("TUNNEL" if "TUNNEL" in sas else "?")
        ike = re.search(r"^\s+([A-Z0-9_]+(?:-\d+)?/\S+)", sas, re.MULTILINE)
        self.cipher = f"ESP {esp.group(1) if esp else '?'} {mode}; IKEv1 {ike.group(1) if ike else '?'}"
        return inner_a, inner_b


# --------------------------------------------------------------------------- tunvpn


# RFC 2407 4.5 encapsulation modes + RFC 3947 UDP-encapsulated ones (and the draft numbers)
ENCAPSULATION: dict[object, str] = {
    1: "TUNNEL",
    2: "TRANSPORT",
    3: "TUNNEL-in-UDP",
    4: "TRANSPORT-in-UDP",
    61443: "TUNNEL-in-UDP",
    61444: "TRANSPORT-in-UDP",
}


def _tunvpn_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tunvpn")
    except metadata.PackageNotFoundError:
        return "?"


def _data_path_build() -> str:
    """``"interpreted"`` or ``"compiled (mypyc)"``: how the data path's ESP core runs here (a
    ``TUNVPN_MYPYC=1`` wheel loads it from an extension module; see tunvpn/build.py)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("tunvpn.esp.sa")
    except (ImportError, ValueError):
        return "?"
    origin = spec.origin if spec is not None else None
    return "compiled (mypyc)" if origin and origin.endswith((".so", ".pyd")) else "interpreted"


class TunvpnProvider(TunnelProvider):
    """Our own: ``python -m tunvpn gateway`` in A and ``python -m tunvpn connect`` in B.

    IKEv1 Main Mode PSK, Mode Config from a pool, ESP in UDP (``--force-encap``). The gateway
    protects ``inner_a`` (on lo in A); the client's Mode Config address is the tunnel address
    of B. The harness reports "not available" if no ping passes within the setup timeout (until
    the ESP data path exists, the IKE SAs come up but carry nothing).
    """

    name = "tunvpn"
    inner_a = "10.82.0.1"
    inner6_a = "fd82::1"
    pool = "10.83.0.10-10.83.0.20"
    pool6 = "fd83::10-fd83::20"

    def __init__(
        self,
        gateway_args: Sequence[str] = (),
        client_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        super().__init__()
        self.gateway_args = list(gateway_args)
        self.client_args = list(client_args)
        self.python = python
        self.records: list[dict[str, object]] = []

    def missing(self) -> list[str]:
        out = super().missing()
        if not os.path.exists("/dev/net/tun"):
            out.append("/dev/net/tun (modprobe tun)")
        return out

    def _env(self) -> dict[str, str]:
        import tunvpn

        root = str(Path(tunvpn.__file__).resolve().parent.parent)
        return {
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        self.program = f"tunvpn {_tunvpn_version()} (python {sys.version.split()[0]}, {_data_path_build()})"
        if self.gateway_args or self.client_args:
            self.program += (
                f"; gateway {' '.join(self.gateway_args) or '-'}, client {' '.join(self.client_args) or '-'}"
            )
        psk = base64.b32encode(os.urandom(20)).decode().lower()
        gw_psk = write_private(self.workdir / "gateway.psk", f"* {psk}\n")
        cl_psk = write_private(self.workdir / "client.psk", f"{psk}\n")
        self.ip("-n", ns_a, "addr", "add", f"{self.inner_a}/32", "dev", "lo")
        inner = [f"{self.inner_a}/32"]
        if self.ipv6:  # IPv6 inside as well: its pool, the protected address on lo
            self.ip("-n", ns_a, "addr", "add", f"{self.inner6_a}/128", "dev", "lo", "nodad")
            inner = [f"{self.inner6_a}/128"]
        timeout = self.ctx.setup_timeout if self.ctx else 30.0
        env = self._env()
        self.spawn(
            "tunvpn-gateway",
            ns_a,
            [
                self.python, "-m", "tunvpn", "gateway",
                "--listen", ip_a,
                "--psk-file", str(gw_psk),
                "--pool", self.pool,
                *(("--pool6", self.pool6) if self.ipv6 else ()),
                *(a for net in inner for a in ("--split", net)),
                "--force-encap",
                *self.gateway_args,
            ],
            env=env,
        )  # fmt: skip
        self.wait_log("tunvpn-gateway", "gateway ready", timeout=min(timeout, 20))
        self.spawn(
            "tunvpn-client",
            ns_b,
            [
                self.python, "-m", "tunvpn", "connect", ip_a,
                "--local", ip_b,
                "--mode", "main",
                "--psk-file", str(cl_psk),
                "--force-encap",
                "--json",
                "--timeout", f"{timeout:g}",
                *self.client_args,
            ],
            env=env,
        )  # fmt: skip
        self.wait_log("tunvpn-client", '"event": "established"', timeout=timeout + 5)
        self.records = []
        for line in self.log_of("tunvpn-client").splitlines():
            if line.startswith("{"):
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    continue
        key = "address6" if self.ipv6 else "address"
        address = next((r.get(key) for r in self.records if r.get("event") == "modecfg" and r.get(key)), None)
        quick = next(
            (r for r in self.records if r.get("event") == "quick" and r.get("state") == "established"), {}
        )
        encap = quick.get("encapsulation")
        self.cipher = f"ESP {quick.get('esp', '?')}" + (
            f" {ENCAPSULATION.get(encap, encap)}" if encap else ""
        )
        if not address:
            raise NotAvailable(f"the client got no Mode Config {key}")
        return (self.inner6_a if self.ipv6 else self.inner_a), str(address)


COMPILED_TREE_ENV = "TUNVPN_COMPILED_TREE"
"""A source tree whose data path is compiled (``bash contrib/test-compiled.sh --tree DIR``)."""


class TunvpnCompiledProvider(TunvpnProvider):
    """tunvpn with its data path compiled by mypyc (issue 21), beside the interpreted one in the
    same run: the daemons run from the tree that ``TUNVPN_COMPILED_TREE`` names."""

    name = "tunvpn-compiled"

    def _tree(self) -> Path | None:
        tree = os.environ.get(COMPILED_TREE_ENV)
        if not tree or not any(Path(tree, "tunvpn", "esp").glob("sa.*.so")):
            return None
        return Path(tree)

    def missing(self) -> list[str]:
        out = super().missing()
        if self._tree() is None:
            out.append(f"{COMPILED_TREE_ENV}=DIR, a compiled tree (bash contrib/test-compiled.sh --tree DIR)")
        return out

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PYTHONPATH"] = str(self._tree())
        return env

    def setup(self, ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> tuple[str, str]:
        tunnel = super().setup(ns_a, ns_b, ip_a, ip_b)
        self.program = f"tunvpn {_tunvpn_version()} (python {sys.version.split()[0]}, compiled (mypyc))"
        return tunnel


# --------------------------------------------------------------------------- registry


ProviderFactory = Callable[[], TunnelProvider]

OPENVPN_BIG_BUFFER = 8 << 20
"""``openvpn-bigbuf``: the UDP socket buffers tunvpn asks for (tunvpn/dataplane/thread.py
SOCKET_BUFFER), so that OpenVPN is measured with the same request (issue 21)."""

NO_BUSY_POLL = ("--busy-poll", "0")
"""``tunvpn-no-busy-poll``: tunvpn with busy polling off on both sides (docs/datapath.md
"Busy polling"), measured beside the default in one run (issue 21)."""

PROVIDERS: dict[str, ProviderFactory] = {
    "veth": VethProvider,
    "openvpn": OpenVPNProvider,
    "openvpn-bigbuf": lambda: OpenVPNProvider(
        ["--sndbuf", str(OPENVPN_BIG_BUFFER), "--rcvbuf", str(OPENVPN_BIG_BUFFER)], "openvpn-bigbuf"
    ),
    "wireguard": WireGuardProvider,
    "strongswan": lambda: StrongSwanProvider("aes128gcm16", "strongswan"),
    "strongswan-cbc": lambda: StrongSwanProvider("aes128-sha256", "strongswan-cbc"),
    "strongswan-gcm256": lambda: StrongSwanProvider("aes256gcm16", "strongswan-gcm256"),
    "tunvpn": TunvpnProvider,
    "tunvpn-compiled": TunvpnCompiledProvider,
    "tunvpn-no-busy-poll": lambda: TunvpnProvider(NO_BUSY_POLL, NO_BUSY_POLL),
}
ALIASES = {"wireguard-go": "wireguard", "strongswan-gcm": "strongswan", "wg": "wireguard", "ovpn": "openvpn"}
DEFAULT_PATHS = ("veth", "openvpn", "wireguard", "strongswan-gcm256", "tunvpn")
"""strongSwan with AES-GCM-16-256, the transform tunvpn negotiates by default (same-transform goal)."""


def canonical_path(name: str) -> str:
    name = name.strip().lower()
    return ALIASES.get(name, name)
