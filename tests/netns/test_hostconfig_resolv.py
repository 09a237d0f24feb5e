"""The ``file`` DNS backend on /etc/resolv.conf inside ``ip netns exec``, where it is a bind mount.

``ip netns exec NS`` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf in a private
mount namespace, so renaming a temporary file over it fails with EBUSY: hostconfig must notice
and write in place. The namespace's file must change, the host's /etc/resolv.conf must not
(it is only ever read here), and a later run's cleanup_stale puts the original back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import textwrap
from pathlib import Path

from tests.helpers.netns import Topology, run_in

REPO = Path(__file__).resolve().parents[2]
HOST_RESOLV = Path("/etc/resolv.conf")
NS_ORIGINAL = "# test namespace resolv.conf\nnameserver 192.0.2.53\n"

APPLY = textwrap.dedent(
    """
    import ipaddress, os
    from tunvpn.client.hostconfig import HostConfig, _is_mount_point
    from pathlib import Path
    assert _is_mount_point(Path("/etc/resolv.conf")), "expected a bind mount under ip netns exec"
    hc = HostConfig("tvdns0", dns_backend="file", resolv_conf="/etc/resolv.conf")
    hc.apply_dns([ipaddress.ip_address("10.79.0.1")], ["corp.example"], split=False)
    print(open("/etc/resolv.conf").read(), end="", flush=True)
    os._exit(0)  # "crash": no restore
    """
)

CLEANUP = textwrap.dedent(
    """
    from tunvpn.client.hostconfig import cleanup_stale
    for line in cleanup_stale():
        print(line)
    print(open("/etc/resolv.conf").read(), end="")
    """
)


def _fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()  # follows a symlink; the host file is only read
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_ino, st.st_mtime_ns


def test_file_backend_in_netns_bind_mount(tmp_path: Path) -> None:
    host_before = _fingerprint(HOST_RESOLV) if HOST_RESOLV.exists() else None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "TUNVPN_RUN_DIR": str(tmp_path / "run"),
    }
    env.pop("TUNVPN_RESOLV_CONF", None)
    with Topology() as topo:
        ns = topo.tag + "dns"
        etc_ns = Path("/etc/netns") / ns
        made_netns_root = not etc_ns.parent.exists()
        try:
            etc_ns.mkdir(parents=True)
            ns_resolv = etc_ns / "resolv.conf"
            ns_resolv.write_text(NS_ORIGINAL)
            topo.add_ns("dns")

            applied = run_in(ns, [sys.executable, "-c", APPLY], env=env, cwd=REPO)
            assert "nameserver 10.79.0.1\n" in applied.stdout
            assert ns_resolv.read_text() == applied.stdout  # written through the bind mount
            assert "192.0.2.53" not in applied.stdout
            assert (tmp_path / "run" / "client-tvdns0.json").exists()
            if host_before is not None:
                assert _fingerprint(HOST_RESOLV) == host_before

            cleaned = run_in(ns, [sys.executable, "-c", CLEANUP], env=env, cwd=REPO)
            assert cleaned.stdout.splitlines()[0].startswith("restored /etc/resolv.conf left by pid ")
            assert cleaned.stdout.endswith(NS_ORIGINAL)
            assert ns_resolv.read_text() == NS_ORIGINAL
            assert not (tmp_path / "run" / "client-tvdns0.json").exists()
            if host_before is not None:
                assert _fingerprint(HOST_RESOLV) == host_before
        finally:
            shutil.rmtree(etc_ns, ignore_errors=True)
            if made_netns_root:
                try:
                    etc_ns.parent.rmdir()
                except OSError:
                    pass
