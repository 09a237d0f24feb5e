"""Drive a strongSwan 5.9 charon daemon (IKEv1, kernel-libipsec) inside a network namespace.

One ``Charon`` per namespace: kernel-libipsec always names its TUN ``ipsec0``. Each daemon runs
in a private mount namespace with its own directory bound over /run, because charon's pid file
(/var/run/charon.pid) is compiled in; the vici socket lives in the work dir so swanctl reaches
it from the host. See /work/shared/interop/README.md (pitfalls 1-14) for why each setting is
here.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.helpers.netns import popen_in, stop_process, wait_for

logger = logging.getLogger(__name__)

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"

# Every plugin is named (Debian splits them across packages); no `stroke`, and no `resolve`,
# which would rewrite /etc/resolv.conf.
PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey curve25519 gmp kdf vici "
    "kernel-libipsec kernel-netlink socket-default attr xauth-generic unity"
)

# Log levels per subsystem. esp/net stay at 1: level 2 logs every packet.
DEFAULT_LOG_LEVELS: dict[str, int] = {"default": 1, "ike": 2, "cfg": 2, "knl": 1}
# Level 4 on ike/chd makes charon print derived key material (SKEYID_e, "encryption key Ka",
# the ESP keys). Only ever for test daemons with throw-away PSKs.
KEY_LOG_LEVELS: dict[str, int] = {"default": 1, "ike": 4, "chd": 4, "cfg": 2, "knl": 1}

_STRONGSWAN_CONF = """\
# strongswan.conf written by tests/interop/strongswan.py for one test daemon.
charon {{
  load = {plugins}
  install_routes = yes
  install_virtual_ip = yes
  port = 500
  port_nat_t = 4500
  retransmit_tries = 3
  retransmit_timeout = 2.0
  fragment_size = {fragment_size}
  block_threshold = {block_threshold}
  receive_delay = {receive_delay}
  receive_delay_type = {receive_delay_type}
{aggressive}  filelog {{
    log {{
      path = {log}
      time_format = %T
      flush_line = yes
{levels}
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


@dataclass
class Charon:
    """One charon daemon in ``netns`` with all its files under ``workdir``."""

    workdir: Path
    netns: str
    aggressive_psk: bool = False
    """Accept Aggressive Mode with PSK as responder (needed for vpnc; off by default in 5.9)."""
    log_levels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LOG_LEVELS))
    mtu: int = 1400
    fragment_size: int = 1280
    """charon.fragment_size: the largest IP datagram of an IKE fragment (strongSwan's default)."""
    block_threshold: int = 5
    """charon.block_threshold: half-open IKE_SAs one peer address may hold (strongSwan's
    default 5; charon counts each queued piece of a fragmented first message as one)."""
    receive_delay: int = 0
    """charon.receive_delay: milliseconds charon holds each received message before its
    workers see it (0: none). Queued pieces stay counted against ``block_threshold`` meanwhile,
    as when its workers lag behind its receiver."""
    receive_delay_type: int = 0
    """charon.receive_delay_type: the exchange type delayed (0: all; 5: Main Mode)."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.workdir / "run"
        self.conf_path = self.workdir / "strongswan.conf"
        self.log_path = self.workdir / "charon.log"
        self.stdout_path = self.workdir / "charon.stdout"
        self.vici_path = self.workdir / "charon.vici"
        self.swanctl_path = self.workdir / "swanctl" / "swanctl.conf"
        if len(str(self.vici_path)) > 100:  # sun_path is 108 bytes
            raise ValueError(f"vici socket path too long for AF_UNIX: {self.vici_path}")

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    def write_config(self) -> None:
        levels = "\n".join(f"      {name} = {level}" for name, level in self.log_levels.items())
        aggressive = (
            "  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n" if self.aggressive_psk else ""
        )
        self.conf_path.write_text(
            _STRONGSWAN_CONF.format(
                plugins=PLUGINS,
                aggressive=aggressive,
                log=self.log_path,
                levels=levels,
                vici=self.vici_path,
                mtu=self.mtu,
                fragment_size=self.fragment_size,
                block_threshold=self.block_threshold,
                receive_delay=self.receive_delay,
                receive_delay_type=self.receive_delay_type,
            )
        )

    def start(self, timeout: float = 15) -> None:
        """Write strongswan.conf, start charon, wait for its vici socket."""
        self.write_config()
        self.run_dir.mkdir(exist_ok=True)
        # A private /run per daemon: the pid file /var/run/charon.pid is hard-coded.
        wrapper = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$1" /run && exec "$2"',
            "sh",
            str(self.run_dir),
        ]
        self.proc = popen_in(
            self.netns,
            [CHARON],
            self.stdout_path,
            env={"STRONGSWAN_CONF": str(self.conf_path)},
            prefix=wrapper,
        )
        try:
            wait_for(
                lambda: self.vici_path.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                timeout,
                f"charon vici socket {self.vici_path}",
            )
        except TimeoutError:
            raise TimeoutError(
                f"charon did not open vici in {timeout}s:\n{self.log_text()[-3000:]}"
            ) from None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"charon exited {self.proc.returncode}:\n{self.stdout_path.read_text()}"
                f"\n{self.log_text()[-3000:]}"
            )

    def swanctl(self, command: str, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run ``swanctl --<command> --uri ... args`` (command first: pitfall 3)."""
        argv = [SWANCTL, f"--{command}", "--uri", self.uri, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\n--- charon log tail ---\n{self.log_text()[-3000:]}"
            )
        return result.stdout + result.stderr

    def load(self, swanctl_conf: str) -> str:
        """Write ``swanctl_conf`` (one setting per line! pitfall 4) and load all of it."""
        confdir = self.swanctl_path.parent
        confdir.mkdir(parents=True, exist_ok=True)
        # --load-all --file scans these next to the file and complains about missing ones.
        for sub in (
            "x509",
            "x509ca",
            "x509aa",
            "x509ocsp",
            "x509crl",
            "x509ac",
            "pubkey",
            "private",
            "rsa",
            "ecdsa",
            "bliss",
            "pkcs8",
            "pkcs12",
        ):
            (confdir / sub).mkdir(exist_ok=True)
        self.swanctl_path.write_text(swanctl_conf)
        return self.swanctl("load-all", "--file", str(self.swanctl_path))

    def initiate(self, child: str, ike: str | None = None, timeout: int = 20) -> str:
        args = ["--child", child, "--timeout", str(timeout)]
        if ike:
            args += ["--ike", ike]
        return self.swanctl("initiate", *args, timeout=timeout + 10)

    def list_sas(self) -> str:
        return self.swanctl("list-sas")

    def list_sas_raw(self) -> list[dict[str, object]]:
        """``swanctl --list-sas --raw`` parsed: one dict per IKE_SA event, ``{name: {...}}``."""
        return [
            parse_vici_raw(line)
            for line in self.swanctl("list-sas", "--raw").splitlines()
            if line.startswith("list-sa event")
        ]

    def established_children(self) -> list[dict[str, object]]:
        """All CHILD_SAs in state INSTALLED, each with its IKE_SA name under ``"ike"``."""
        out = []
        for event in self.list_sas_raw():
            for ike_name, ike in event.items():
                assert isinstance(ike, dict)
                children = ike.get("child-sas", {})
                assert isinstance(children, dict)
                for child in children.values():
                    if isinstance(child, dict) and child.get("state") == "INSTALLED":
                        out.append({**child, "ike": ike_name, "ike-state": ike.get("state")})
        return out

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None

    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_RAW_TOKEN = re.compile(
    r"\s*(?:(?P<open>[\w.()-]+) \{|(?P<close>\})|(?P<list>[\w.-]+)=\[|(?P<end>\])"
    r"|(?P<key>[\w.-]+)=(?P<value>[^\s\[\]{}]*)|(?P<item>[^\s\[\]{}]+))"
)


def parse_vici_raw(line: str) -> dict[str, object]:
    """Parse one ``swanctl --raw`` line into nested dicts.

    The format is ``list-sa event {NAME {key=value list=[a b] section {...}}}``; values are
    printed unquoted, and values with spaces do not occur in the list-sas output we read. An
    IKE_SA that has no config yet (a responder's, before its peer's identity) is ``(unnamed)``.
    """
    body = line[line.index("{") + 1 : line.rindex("}")]
    stack: list[dict[str, object]] = [{}]
    current_list: list[str] | None = None
    pos = 0
    while pos < len(body):
        m = _RAW_TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            if body[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse vici raw output at {body[pos : pos + 40]!r}")
        pos = m.end()
        if m["open"]:
            section: dict[str, object] = {}
            stack[-1][m["open"]] = section
            stack.append(section)
        elif m["close"]:
            stack.pop()
        elif m["list"]:
            current_list = []
            stack[-1][m["list"]] = current_list
        elif m["end"]:
            current_list = None
        elif m["key"]:
            stack[-1][m["key"]] = m["value"]
        elif current_list is not None:
            current_list.append(m["item"])
        else:
            raise ValueError(f"stray value {m['item']!r} in vici raw output")
    if len(stack) != 1:
        raise ValueError("unbalanced braces in vici raw output")
    return stack[0]


def find_key_lines(log: str) -> dict[str, list[bytes]]:
    """Pull hex dumps that charon prints at level 4 ("encryption key Ka => 16 bytes @ ...").

    Returns ``{label: [bytes, ...]}`` in log order, e.g. ``{"encryption key Ka": [...]}``.
    """
    found: dict[str, list[bytes]] = {}
    lines = log.splitlines()
    header = re.compile(r"\]\s(?P<label>[^\[\]]+?) => (?P<n>\d+) bytes @ 0x[0-9a-f]+$")
    dump = re.compile(r"^\S+\s+\d+\[\w+\]\s+(?P<off>\d+): (?P<hex>(?:[0-9A-F]{2} ?)+)")
    i = 0
    while i < len(lines):
        m = header.search(lines[i])
        if m is None:
            i += 1
            continue
        n = int(m["n"])
        data = bytearray()
        i += 1
        while len(data) < n and i < len(lines):
            d = dump.match(lines[i])
            if d is None:
                break
            data += bytes.fromhex(d["hex"].replace(" ", ""))
            i += 1
        found.setdefault(m["label"].strip(), []).append(bytes(data[:n]))
    return found


@dataclass
class CharonKeys:
    """Key material charon printed at ike/chd level 4 (``KEY_LOG_LEVELS``)."""

    values: dict[str, list[bytes]]

    @classmethod
    def from_log(cls, log: str) -> CharonKeys:
        return cls(find_key_lines(log))

    def first(self, label: str) -> bytes:
        try:
            return self.values[label][0]
        except (KeyError, IndexError):
            raise KeyError(f"charon log has no {label!r} (log levels ike/chd = 4?)") from None

    def esp_keys(self) -> dict[int, tuple[bytes, bytes]]:
        """SPI -> (encryption key incl. salt, integrity key or b"") for every CHILD_SA logged.

        charon logs "<role> SA seed" (protocol | SPI | Ni | Nr without PFS, RFC 2409 section 5.5)
        then "encryption <role> key" / "integrity <role> key" for the SA that SPI names.
        """
        out: dict[int, tuple[bytes, bytes]] = {}
        for role in ("initiator", "responder"):
            seeds = self.values.get(f"{role} SA seed", [])
            encs = self.values.get(f"encryption {role} key", [])
            integs = self.values.get(f"integrity {role} key", [])
            for i, seed in enumerate(seeds):
                spi = int.from_bytes(seed[1:5], "big")
                out[spi] = (encs[i] if i < len(encs) else b"", integs[i] if i < len(integs) else b"")
        return out


def charon_available() -> bool:
    return os.access(CHARON, os.X_OK)
