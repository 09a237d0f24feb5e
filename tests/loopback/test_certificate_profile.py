"""A certificate-only client profile, loaded from its file, connects (issue 18): real `tunvpn
gateway -c` and `tunvpn connect -c` processes on loopback (IKE only). The profile names the
gateway, the client's certificate and key and the CA; no pre-shared key and no user: the
gateway asks for no XAUTH, both sides sign, and the client gets its address and policy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers.gateway_pki import pki, write_pem
from tests.helpers.loopback import free_port_pair, needs_loopback
from tests.helpers.tunvpn_proc import private_file, read_text, tunvpn_argv, tunvpn_env

pytestmark = needs_loopback

GATEWAY_TOML = """\
[gateway]
listen = "127.0.0.1"
id = "127.0.0.1"
ike_port = {ike}
natt_port = {natt}
require_xauth = false

[gateway.certificate]
cert = "gw.pem"
key = "gw.key"
ca = "ca.pem"

[network]
pool = "10.99.0.10-10.99.0.20"

[[policy]]
name = "intranet"
local = "10.98.0.0/24"
"""


def test_a_certificate_only_profile_connects(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    p = pki("127.0.0.1")
    ike, natt = free_port_pair()
    gwdir, cldir = tmp_path / "gw", tmp_path / "client"
    gwdir.mkdir()
    cldir.mkdir()
    (gwdir / "gw.pem").write_bytes(p.gateway.certificate.public_bytes(Encoding.PEM))
    key = p.gateway.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    private_file(gwdir / "gw.key", key.decode())
    (gwdir / "ca.pem").write_bytes(p.ca.public_bytes(Encoding.PEM))
    (gwdir / "gateway.toml").write_text(GATEWAY_TOML.format(ike=ike, natt=natt))
    profile = cldir / "work.toml"
    profile.write_text('gateway = "127.0.0.1"\n' + write_pem(cldir, p.client, p.ca))
    assert "psk" not in profile.read_text() and "user" not in profile.read_text()

    env = {**os.environ, **tunvpn_env()}
    gw_log = tmp_path / "gateway.log"
    with open(gw_log, "wb") as out:
        gateway = subprocess.Popen(
            tunvpn_argv("gateway", "-c", str(gwdir / "gateway.toml"), "--ike-only", "--control", "none"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=gwdir,
        )
    try:
        connect = ["connect", "-c", str(profile), "--local", "127.0.0.2", "--gateway-port", str(ike)]
        connect += ["--gateway-natt-port", str(natt), "--ike-port", str(ike), "--natt-port", str(natt)]
        connect += ["--ike-only", "--once", "--json", "--control", "none", "--dns-backend", "none"]
        done = subprocess.run(
            tunvpn_argv(*connect), capture_output=True, text=True, env=env, cwd=cldir, timeout=60
        )
    finally:
        gateway.terminate()
        gateway.wait(15)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + read_text(gw_log)[-3000:]
    phase1 = next(r for r in records if r["event"] == "phase1" and r["state"] == "established")
    assert phase1["suite"].endswith("/rsa_signatures"), phase1
    assert not any(r["event"] == "xauth" for r in records)  # no user, no password
    up = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
    assert up and up[0]["remote_ts"] == "10.98.0.0/24" and up[0]["local_ts"] == "10.99.0.10/32", up
