"""strongSwan's charon as a standard IKEv1 client of our gateway (issue 16), with traffic:

    charon (10.77.0.2, virtual IP from our pool, kernel-libipsec TUN)
        --veth-- our gateway (10.77.0.1, TUN device; 10.78.0.1 on its lo)

charon logs in as a road warrior does with a Cisco-style gateway: Main Mode with a pre-shared
key (or, in the second test, its own certificate of our CA: XAuthInitRSA), then XAUTH (its
user name and password), Mode Config (it asks for a virtual IP), and one Quick Mode for the
gateway's network. It never sends our vendor ID, so our gateway answers it
the standard way (no ``CFG_`` sets) and takes its Quick Mode proposal. A ping from charon's
virtual address reaches 10.78.0.1 through both userspace data paths (charon's
kernel-libipsec and ours).
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.helpers.gateway_pki import pki
from tests.helpers.netns import NetnsPair, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line

from . import configs
from .strongswan import Charon

UNDERLAY_A = "10.77.0.1/24"  # our gateway
UNDERLAY_B = "10.77.0.2/24"  # charon
PROTECTED, INSIDE = "10.78.0.0/24", "10.78.0.1"
POOL_FIRST = "10.79.0.10"
USER, PASSWORD = configs.VPNC_USER, configs.VPNC_PASSWORD
PSK = "tv-standard-client-psk-0123456789"


def our_gateway(tmp_path: Path, listen: str) -> Path:
    private_file(tmp_path / "gw.psk", PSK + "\n")
    private_file(tmp_path / "users", f"{USER}:{PASSWORD}\n")
    return private_file(
        tmp_path / "gateway.toml",
        f"""\
[gateway]
listen = "{listen}"
psk_file = "gw.psk"
users_file = "users"
require_xauth = true
tun = "tvgw%d"

[network]
pool = "{configs.VPNC_POOL}"
dns = ["10.78.0.53"]
banner = "tunvpn test gateway"

[[policy]]
name = "intranet"
local = "{PROTECTED}"
""",
    )


def charon_client(gateway: str, local: str) -> str:
    """Main Mode PSK (round 1), then XAUTH as the user (round 2), a virtual IP, one child."""
    return f"""\
connections {{
  office {{
    version = 1
    remote_addrs = {gateway}
    vips = 0.0.0.0
    proposals = aes256-sha256-modp2048
    local {{
      auth = psk
      id = {local}
    }}
    local-xauth {{
      auth = xauth
      xauth_id = {USER}
    }}
    remote {{
      auth = psk
      id = {gateway}
    }}
    children {{
      office {{
        mode = tunnel
        remote_ts = {PROTECTED}
        esp_proposals = aes256gcm16-modp2048
      }}
    }}
  }}
}}
secrets {{
  ike-office {{
    id-1 = {local}
    id-2 = {gateway}
    secret = "{PSK}"
  }}
  xauth-{USER} {{
    id = {USER}
    secret = "{PASSWORD}"
  }}
}}
"""


def test_strongswan_logs_in_with_psk_and_xauth_and_pings_through_our_gateway(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "client", pair.b) as charon:
        pair.add_addr(pair.a, f"{INSIDE}/32")
        config = our_gateway(tmp_path, pair.addr_a)
        log = tmp_path / "gateway.log"
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", "none", "-v"], log)
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway")
            charon.load(charon_client(pair.addr_a, pair.addr_b))
            try:
                out = charon.initiate("office", "office", timeout=25)
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None
            assert "CHILD_SA office{1} established" in out, out
            wait_for(lambda: bool(charon.established_children()), 10, "charon's CHILD_SA")
            ping = run_in(pair.b, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", INSIDE], check=False)
            list_sas = charon.list_sas()
        finally:
            stop_process(gateway)
        charon_log = charon.log_text()
        gw_log = read_text(log)
    assert ping.returncode == 0 and "3 received" in ping.stdout, (ping.stdout, gw_log[-3000:])
    assert f"XAuth authentication of '{USER}' (myself) successful" in charon_log, charon_log[-4000:]
    # Mode Config gave charon the first address of our pool, and it installed it
    assert f"installing new virtual IP {POOL_FIRST}" in charon_log, charon_log[-4000:]
    assert "ESTABLISHED, IKEv1" in list_sas and f"remote {PROTECTED}" in list_sas, list_sas
    assert f"local  {POOL_FIRST}/32" in list_sas, list_sas
    assert re.search(r"ESP:AES_GCM_16-256/MODP_2048", list_sas), list_sas  # charon's PFS group
    assert "pushed as CFG_ sets" not in gw_log  # a standard client: no tunvpn extensions
    assert PASSWORD not in gw_log and PSK not in gw_log


# ------------------------------------------------------------------ certificates + XAUTH


def our_certificate_gateway(tmp_path: Path, listen: str) -> Path:
    """gateway.toml: our RSA certificate and the CA clients' certificates must chain to, a
    users file for XAUTH; no pre-shared key."""
    p = pki(listen)
    (tmp_path / "gw.pem").write_bytes(p.gateway.certificate.public_bytes(Encoding.PEM))
    key = p.gateway.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    private_file(tmp_path / "gw.key", key.decode())
    (tmp_path / "ca.pem").write_bytes(p.ca.public_bytes(Encoding.PEM))
    private_file(tmp_path / "users", f"{USER}:{PASSWORD}\n")
    return private_file(
        tmp_path / "gateway.toml",
        f"""\
[gateway]
listen = "{listen}"
id = "{listen}"
users_file = "users"
require_xauth = true
tun = "tvgw%d"

[gateway.certificate]
cert = "gw.pem"
key = "gw.key"
ca = "ca.pem"

[network]
pool = "{configs.VPNC_POOL}"

[[policy]]
name = "intranet"
local = "{PROTECTED}"
""",
    )


def charon_certificate_client(gateway: str) -> str:
    """XAuthInitRSA: charon signs with alice's certificate (round 1), then XAUTH (round 2)."""
    return f"""\
connections {{
  office {{
    version = 1
    remote_addrs = {gateway}
    vips = 0.0.0.0
    proposals = aes256-sha256-modp2048
    local {{
      auth = pubkey
      certs = client.pem
      id = alice.example
    }}
    local-xauth {{
      auth = xauth
      xauth_id = {USER}
    }}
    remote {{
      auth = pubkey
      id = {gateway}
    }}
    children {{
      office {{
        mode = tunnel
        remote_ts = {PROTECTED}
        esp_proposals = aes256gcm16-ecp256
      }}
    }}
  }}
}}
secrets {{
  xauth-{USER} {{
    id = {USER}
    secret = "{PASSWORD}"
  }}
}}
"""


def test_strongswan_logs_in_with_a_certificate_and_xauth_and_pings_through(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "client", pair.b) as charon:
        pair.add_addr(pair.a, f"{INSIDE}/32")
        config = our_certificate_gateway(tmp_path, pair.addr_a)
        log = tmp_path / "gateway.log"
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", "none", "-v"], log)
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway")
            p = pki(pair.addr_a)
            confdir = charon.swanctl_path.parent
            for sub in ("x509", "x509ca", "rsa"):
                (confdir / sub).mkdir(parents=True, exist_ok=True)
            (confdir / "x509ca" / "ca.pem").write_bytes(p.ca.public_bytes(Encoding.PEM))
            (confdir / "x509" / "client.pem").write_bytes(p.client.certificate.public_bytes(Encoding.PEM))
            key = p.client.private_key.private_bytes(
                Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()
            )
            private_file(confdir / "rsa" / "client.key", key.decode())
            loaded = charon.load(charon_certificate_client(pair.addr_a))
            assert "loaded certificate" in loaded and "loaded RSA key" in loaded, loaded
            try:
                out = charon.initiate("office", "office", timeout=25)
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None
            assert "CHILD_SA office{1} established" in out, out
            wait_for(lambda: bool(charon.established_children()), 10, "charon's CHILD_SA")
            ping = run_in(pair.b, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", INSIDE], check=False)
        finally:
            stop_process(gateway)
        charon_log = charon.log_text()
        gw_log = read_text(log)
    assert ping.returncode == 0 and "3 received" in ping.stdout, (ping.stdout, gw_log[-3000:])
    # charon checked our signature against the CA; we checked its certificate, then XAUTH
    assert f"authentication of '{pair.addr_a}' with RSA_EMSA_PKCS1_NULL successful" in charon_log
    assert f"XAuth authentication of '{USER}' (myself) successful" in charon_log, charon_log[-4000:]
    assert "xauth_init_rsa" in gw_log, gw_log[-4000:]
    assert f"installing new virtual IP {POOL_FIRST}" in charon_log
