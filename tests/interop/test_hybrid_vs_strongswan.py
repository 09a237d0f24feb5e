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


def hybrid_gateway(local: str, identity: str) -> str:
    return f"""\
connections {{
  hybrid {{
    version = 1
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


def load_gateway(charon: Charon, credential, local: str, identity: str) -> None:
    """The certificate in swanctl/x509, its RSA key (PKCS#1) in swanctl/rsa, then the config."""
    confdir = charon.swanctl_path.parent
    (confdir / "x509").mkdir(parents=True, exist_ok=True)
    (confdir / "rsa").mkdir(parents=True, exist_ok=True)
    (confdir / "x509" / "gateway.pem").write_bytes(credential.certificate.public_bytes(Encoding.PEM))
    key = credential.private_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    private_file(confdir / "rsa" / "gateway.key", key.decode())
    out = charon.load(hybrid_gateway(local, identity))
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
