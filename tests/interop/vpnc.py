"""Drive vpnc (the Cisco-compatible IKEv1 client) inside a network namespace.

vpnc runs with ``No Detach`` so the process we hold is the daemon; SIGTERM makes it send
DELETE for the ESP SA and the ISAKMP SA and run the script with reason=disconnect. The script
written here records what vpnc hands it (reason, TUNDEV, INTERNAL_IP4_*, CISCO_SPLIT_INC*) and
sets the TUN up; it never touches /etc/resolv.conf (the stock vpnc-script does: pitfall 11).
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.helpers.netns import popen_in, stop_process, wait_for

VPNC = "vpnc"

_SCRIPT = """\
#!/bin/sh
# vpnc script written by tests/interop/vpnc.py: record the environment, set up the TUN, no DNS.
{{
  echo "--- event"
  env | grep -E '^(reason|TUNDEV|VPNGATEWAY|INTERNAL_IP4_|INTERNAL_IP6_|CISCO_)' | sort
}} >>{events}
case "$reason" in
  connect)
    ip link set dev "$TUNDEV" mtu "${{INTERNAL_IP4_MTU:-1400}}" up
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
{routes}    ;;
  disconnect)
    ip link set dev "$TUNDEV" down 2>/dev/null
    ;;
esac
exit 0
"""


_SPLIT_ROUTES = """\
    i=0
    while [ "$i" -lt "${CISCO_SPLIT_INC:-0}" ]; do
      eval "net=\\$CISCO_SPLIT_INC_${i}_ADDR len=\\$CISCO_SPLIT_INC_${i}_MASKLEN"
      ip route replace "$net/$len" dev "$TUNDEV" src "$INTERNAL_IP4_ADDRESS"
      i=$((i + 1))
    done
"""


@dataclass
class Vpnc:
    """One vpnc client in ``netns``; files under ``workdir``."""

    workdir: Path
    netns: str
    gateway: str
    group: str
    group_psk: str
    user: str
    password: str
    ifname: str = "tvvpnc0"
    dh_group: str = "dh2"
    pfs: str = "nopfs"
    natt_mode: str = "force-natt"
    debug: int = 0
    """vpnc Debug level; keep 0 for data-path tests (level 1 logs every ESP packet: pitfall 10)."""
    routes: tuple[str, ...] = ()
    """Destinations (CIDR) the script routes into the TUN on connect."""
    split_routes: bool = False
    """Also route the Cisco Unity split-include networks the gateway sent (CISCO_SPLIT_INC_*),
    as the stock vpnc-script does."""
    extra_config: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "vpnc.conf"
        self.script_path = self.workdir / "vpnc-script.sh"
        self.events_path = self.workdir / "vpnc-script.events"
        self.stdout_path = self.workdir / "vpnc.stdout"
        self.pid_path = self.workdir / "vpnc.pid"

    def write_config(self) -> None:
        routes = "".join(
            f'    ip route replace {shlex.quote(r)} dev "$TUNDEV" src "$INTERNAL_IP4_ADDRESS"\n'
            for r in self.routes
        )
        if self.split_routes:
            routes += _SPLIT_ROUTES
        self.script_path.write_text(_SCRIPT.format(events=shlex.quote(str(self.events_path)), routes=routes))
        self.script_path.chmod(0o755)
        lines = [
            f"IPSec gateway {self.gateway}",
            f"IPSec ID {self.group}",
            f"IPSec secret {self.group_psk}",
            f"Xauth username {self.user}",
            f"Xauth password {self.password}",
            "IKE Authmode psk",
            f"IKE DH Group {self.dh_group}",
            f"Perfect Forward Secrecy {self.pfs}",
            f"NAT Traversal Mode {self.natt_mode}",
            f"Interface name {self.ifname}",
            "Interface mode tun",
            f"Script {self.script_path}",
            f"Pidfile {self.pid_path}",  # default /run/vpnc.pid is the host's (pitfall 12)
            "No Detach",
            "Noninteractive",
            f"Debug {self.debug}",
            *self.extra_config,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")
        self.conf_path.chmod(0o600)

    def start(self) -> None:
        self.write_config()
        self.proc = popen_in(self.netns, [VPNC, str(self.conf_path)], self.stdout_path)

    def events(self) -> list[dict[str, str]]:
        """What the script recorded, one dict of environment variables per call."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        out: list[dict[str, str]] = []
        for line in text.splitlines():
            if line == "--- event":
                out.append({})
            elif "=" in line and out:
                key, _, value = line.partition("=")
                out[-1][key] = value
        return out

    def wait_connected(self, timeout: float = 30) -> dict[str, str]:
        """Wait for the script's reason=connect; return its environment."""

        def connected() -> bool:
            return any(e.get("reason") == "connect" for e in self.events()) or (
                self.proc is not None and self.proc.poll() is not None
            )

        try:
            wait_for(connected, timeout, "vpnc reason=connect")
        except TimeoutError:
            raise TimeoutError(
                f"vpnc did not connect in {timeout}s; output so far:\n{self.output()}"
            ) from None
        for event in self.events():
            if event.get("reason") == "connect":
                # vpnc runs the connect script before it installs its SIGTERM handler (which
                # sends the DELETEs) and writes its pid file right after: a SIGTERM before the
                # pid file exists kills it silently. Wait for the file.
                wait_for(self._past_its_script, timeout, "vpnc's pid file")
                return event
        raise RuntimeError(f"vpnc exited {self.proc.returncode if self.proc else '?'}:\n{self.output()}")

    def _past_its_script(self) -> bool:
        return self.pid_path.exists() or self.proc is None or self.proc.poll() is not None

    def output(self) -> str:
        """vpnc's stdout+stderr (block-buffered: complete only after it exits, pitfall 12)."""
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, settle: float = 0.0) -> str:
        """SIGTERM vpnc (it sends DELETEs and runs reason=disconnect); return its output."""
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None
            if settle:
                time.sleep(settle)
        return self.output()

    def __enter__(self) -> Vpnc:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
