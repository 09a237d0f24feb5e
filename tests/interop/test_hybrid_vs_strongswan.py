"""Our client (``python -m tunvpn connect -c profile`` in namespace b) against a strongSwan 5.9
charon gateway (namespace a) configured for hybrid authentication
(draft-ietf-ipsec-isakmp-hybrid-auth-05): charon signs with its RSA certificate
(``local { auth = pubkey }``), the client has only the CA and logs in with XAUTH
(``remote { auth = xauth-generic }``: charon then selects HybridInitRSA, phase1.c
calc_auth_method). Main Mode; charon sends its certificate because our client asks for it
(CR; send_cert defaults to ifasked). Then a charon holding a certificate of the same CA for
another name gets no password. Last, the other way round: charon as a hybrid client
(``local { auth = xauth }``, ``remote { auth = pubkey }``) against our gateway with
``hybrid = true``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.helpers.gateway_pki import pki
from tests.helpers.netns import NetnsPair, stop_process, wait_for
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line

from . import configs
from .strongswan import Charon

UNDERLAY_A = "10.77.0.1/24"
UNDERLAY_B = "10.77.0.2/24"
POOL_FIRST = "10.79.0.10"
USER, PASSWORD = configs.VPNC_USER, configs.VPNC_PASSWORD


def hybrid_gateway(local: str, identity: str, fragmentation: str = "yes") -> str:
    return f"""\
connections {{
  hybrid {{
    version = 1
    fragmentation = {fragmentation}
    local_addrs = {local}
    pools = hpool
    proposals = aes256-sha256-modp2048
    local {{
      auth = pubkey
      certs = gateway.pem
      id = {identity}
    }}
    remote {{
      auth = xauth-generic
    }}
    children {{
      hybrid {{
        mode = tunnel
        local_ts = 0.0.0.0/0
        esp_proposals = aes128gcm16-ecp256
      }}
    }}
  }}
}}
pools {{
  hpool {{
    addrs = {configs.VPNC_POOL}
  }}
}}
secrets {{
  xauth-{USER} {{
    id = {USER}
    secret = "{PASSWORD}"
  }}
}}
"""


def load_gateway(charon: Charon, credential, local: str, identity: str, fragmentation: str = "yes") -> None:
    """The certificate in swanctl/x509, its RSA key (PKCS#1) in swanctl/rsa, then the config."""
    confdir = charon.swanctl_path.parent
    (confdir / "x509").mkdir(parents=True, exist_ok=True)
    (confdir / "rsa").mkdir(parents=True, exist_ok=True)
    (confdir / "x509" / "gateway.pem").write_bytes(credential.certificate.public_bytes(Encoding.PEM))
    key = credential.private_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    private_file(confdir / "rsa" / "gateway.key", key.decode())
    out = charon.load(hybrid_gateway(local, identity, fragmentation))
    assert "loaded certificate" in out and "loaded RSA key" in out, out


def client_profile(tmp_path: Path, gateway: str, ca) -> Path:
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    private_file(tmp_path / "password", PASSWORD + "\n")
    return private_file(
        tmp_path / "hybrid.toml",
        f'gateway = "{gateway}"\nca = "ca.pem"\nuser = "{USER}"\npassword_file = "password"\n',
    )


def test_hybrid_client_against_strongswan(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "gw", pair.a) as charon:
        p = pki(pair.addr_a)
        load_gateway(charon, p.gateway, pair.addr_a, pair.addr_a)
        profile = client_profile(tmp_path, pair.addr_a, p.ca)
        log = tmp_path / "client.log"
        proc = popen_tunvpn(pair.b, ["connect", "-c", str(profile), "--json", "--timeout", "30", "-v"], log)
        try:
            try:
                wait_for_line(log, '"event": "established"', proc, 40, "the client's Quick Mode SA")
            except (TimeoutError, RuntimeError) as exc:
                raise AssertionError(f"{exc}\n--- charon log ---\n{charon.log_text()[-6000:]}") from None
            wait_for(lambda: bool(charon.established_children()), 10, "charon's CHILD_SA to be INSTALLED")
            list_sas = charon.list_sas()
        finally:
            code = stop_process(proc)
        assert code == 0, read_text(log)

        records = json_records(log)
        phase1 = next(r for r in records if r["event"] == "phase1" and r["state"] == "established")
        assert phase1["suite"] == "aes256-sha256-modp_2048/hybrid_init_rsa"
        assert phase1["peer_id"] == pair.addr_a
        steps = [(r["event"], r["state"]) for r in records]
        assert steps.index(("xauth", "ok")) < steps.index(("modecfg", "received"))

        assert "ESTABLISHED, IKEv1" in list_sas and f"XAuth: '{USER}'" in list_sas, list_sas
        assert f"remote {POOL_FIRST}/32" in list_sas
        charon_log = charon.log_text()
        assert "looking for HybridInitRSA peer configs" in charon_log
        assert "sending end entity cert" in charon_log  # asked for by our CR (send_cert = ifasked)
        assert f"XAuth authentication of '{USER}' successful" in charon_log


def test_strongswans_certificate_in_ike_fragments_is_put_together(tmp_path: Path) -> None:
    """Issue 16, the other direction: charon (fragmentation = force, 576-octet fragments) cuts
    its Main Mode messages, the certificate one too; our client puts them together."""
    with (
        NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair,
        Charon(tmp_path / "gw", pair.a, fragment_size=576) as charon,
    ):
        p = pki(pair.addr_a)
        load_gateway(charon, p.gateway, pair.addr_a, pair.addr_a, fragmentation="force")
        profile = client_profile(tmp_path, pair.addr_a, p.ca)
        log = tmp_path / "client.log"
        argv = ["connect", "-c", str(profile), "--json", "--timeout", "30", "--ike-only", "--once", "-v"]
        proc = popen_tunvpn(pair.b, argv, log)
        try:
            wait_for(lambda: proc.poll() is not None, 40, "the client to finish")
        finally:
            code = stop_process(proc)
        charon_log = charon.log_text()
        assert code == 0, read_text(log)[-3000:] + "\n--- charon ---\n" + charon_log[-4000:]
        assert "splitting IKE message" in charon_log, charon_log[-4000:]  # it did cut its messages
        assert "sending end entity cert" in charon_log
        phase1 = next(r for r in json_records(log) if r["event"] == "phase1" and r["state"] == "established")
        assert phase1["suite"] == "aes256-sha256-modp_2048/hybrid_init_rsa"


def test_strongswan_with_a_same_ca_certificate_for_another_name_gets_no_password(tmp_path: Path) -> None:
    """charon plays the gateway with a real certificate of our CA, issued for evil.example."""
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "gw", pair.a) as charon:
        p = pki(pair.addr_a)
        load_gateway(charon, p.other_gateway, pair.addr_a, "evil.example")
        profile = client_profile(tmp_path, pair.addr_a, p.ca)
        log = tmp_path / "client.log"
        proc = popen_tunvpn(pair.b, ["connect", "-c", str(profile), "--json", "--timeout", "30"], log)
        try:
            wait_for(lambda: proc.poll() is not None, 40, "the client to give up")
        finally:
            code = stop_process(proc)
        assert code == 1, read_text(log)
        assert "does not name 10.77.0.1" in read_text(log), read_text(log)
        assert not any(r["event"] == "xauth" for r in json_records(log))
        assert "XAuth authentication" not in charon.log_text()


# ------------------------------------------------------------------------------ strongSwan client

PROTECTED = "10.78.0.0/24"


def strongswan_hybrid_client(gateway: str) -> str:
    """charon as a hybrid client: XAUTH for itself, a certificate for the gateway
    (calc_auth_method: initiator xauth + responder pubkey = HybridInitRSA)."""
    return f"""\
connections {{
  home {{
    version = 1
    remote_addrs = {gateway}
    vips = 0.0.0.0
    proposals = aes256-sha256-modp2048
    local {{
      auth = xauth
      xauth_id = {USER}
    }}
    remote {{
      auth = pubkey
      id = {gateway}
    }}
    children {{
      home {{
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


def our_hybrid_gateway(tmp_path: Path, listen: str) -> Path:
    """gateway.toml: the RSA certificate, hybrid = true, a users file; no pre-shared key."""
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
hybrid = true
tun = false

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


def test_strongswan_hybrid_client_against_our_gateway(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "client", pair.b) as charon:
        config = our_hybrid_gateway(tmp_path, pair.addr_a)
        log = tmp_path / "gateway.log"
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", "none", "-v"], log)
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway to bind its sockets")
            confdir = charon.swanctl_path.parent
            (confdir / "x509ca").mkdir(parents=True, exist_ok=True)
            (confdir / "x509ca" / "ca.pem").write_bytes(pki(pair.addr_a).ca.public_bytes(Encoding.PEM))
            charon.load(strongswan_hybrid_client(pair.addr_a))
            try:
                out = charon.initiate("home", "home", timeout=20)
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None
            assert "CHILD_SA home{1} established" in out, out
            list_sas = charon.list_sas()
        finally:
            stop_process(gateway)
        charon_log = charon.log_text()
        # charon checked our SIG_R against the CA, then logged in with XAUTH
        assert f"authentication of '{pair.addr_a}' with RSA_EMSA_PKCS1_NULL successful" in charon_log
        assert f"XAuth authentication of '{USER}' (myself) successful" in charon_log, charon_log[-4000:]
        assert "ESTABLISHED, IKEv1" in list_sas and f"remote {PROTECTED}" in list_sas, list_sas
        gw_log = read_text(log)
        assert "hybrid_init_rsa" in gw_log, gw_log[-4000:]


# ------------------------------------------------------------------ re-authentication

# strongSwan 5.9.8 charon as a client of our gateway, re-authenticating (IKEv1 has no IKE SA
# rekey: charon logs in anew under a new ISAKMP SA when rekey_time comes, and keeps its IPsec SAs
# and its virtual address). Our gateway must give the new login the same address (charon asks
# for it in its Mode Config request): before, it leased the next one, charon's virtual IP moved
# to it while its IPsec SA still carried the first (issue 15). IKE only (`tun = false`).

REKEY = 8  # seconds: charon re-authenticates every 8 s (its over_time 4 s)


def gateway_status(netns: str, socket: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "python3",
            "-m",
            "tunvpn",
            "status",
            "--json",
            "--socket",
            str(socket),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_strongswan_reauthenticating_keeps_its_address(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "client", pair.b) as charon:
        config = our_hybrid_gateway(tmp_path, pair.addr_a)
        log = tmp_path / "gateway.log"
        control = tmp_path / "gateway.sock"
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", str(control), "-v"], log)
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway to bind its sockets")
            confdir = charon.swanctl_path.parent
            (confdir / "x509ca").mkdir(parents=True, exist_ok=True)
            (confdir / "x509ca" / "ca.pem").write_bytes(pki(pair.addr_a).ca.public_bytes(Encoding.PEM))
            conf = strongswan_hybrid_client(pair.addr_a).replace(
                "    vips = 0.0.0.0\n", f"    vips = 0.0.0.0\n    rekey_time = {REKEY}s\n    over_time = 4s\n"
            )
            charon.load(conf)
            out = charon.initiate("home", "home", timeout=20)
            assert "CHILD_SA home{1} established" in out, out
            first = charon.list_sas()
            time.sleep(2.5 * REKEY)  # two re-authentications
            after = charon.list_sas()
            status = gateway_status(pair.a, control)
        finally:
            stop_process(gateway)
        gw_log = read_text(log)
    assert "[10.79.0.10]" in first, first
    assert gw_log.count("logged in again and keeps 10.79.0.10") >= 2, gw_log[-4000:]
    # charon's virtual IP did not move, and its IPsec SA still carries it
    assert "[10.79.0.10]" in after and "[10.79.0.11]" not in after, after
    assert "local  10.79.0.10/32" in after, after
    # the gateway leased no second address and knows charon's IPsec SA
    tunnels = status.get("tunnels")
    assert isinstance(tunnels, list) and tunnels, status
    addresses = {t.get("address") for t in tunnels if isinstance(t, dict)}
    assert addresses <= {"10.79.0.10", None}, tunnels
