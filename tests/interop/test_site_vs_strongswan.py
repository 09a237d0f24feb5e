"""Site to site with strongSwan (issue 18): our gateway's ``[[site]]`` against charon's
net-to-net IKEv1 connection, with a pre-shared key and with certificates of one CA, each side
starting it once::

    our gateway (10.77.0.1; network 10.78.0.0/24, 10.78.0.1 on its lo)
        --veth-- charon (10.77.0.2; network 10.88.0.0/24, 10.88.0.1 on its lo; kernel-libipsec)

Main Mode with the sites' key (no XAUTH, no Mode Config), one Quick Mode 10.78.0.0/24 ===
10.88.0.0/24, ESP in UDP on both sides (charon ``encap = yes``: our data path is UDP only). A
ping between the two networks' addresses and a short iperf3 run go through both userspace data
paths (ours and charon's kernel-libipsec).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.helpers.gateway_pki import pki
from tests.helpers.netns import NetnsPair, enable_ipv6, popen_in, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line

from .strongswan import Charon

OURS, THEIRS = "10.77.0.1", "10.77.0.2"
OUR_NET, OUR_HOST = "10.78.0.0/24", "10.78.0.1"
THEIR_NET, THEIR_HOST = "10.88.0.0/24", "10.88.0.1"
SITE_KEY = "tv-site-to-site-key-0123456789abcdef"


def our_gateway(tmp_path: Path, initiate: bool, certificates: bool = False) -> Path:
    """Our side: the sites' key, or (``certificates``) our certificate and the CA that issued
    charon's, which must name charon's identity alice.example."""
    private_file(tmp_path / "gw.psk", "a-group-key-nobody-uses-here-0123\n")
    private_file(tmp_path / "site.psk", SITE_KEY + "\n")
    auth = 'psk_file = "site.psk"'
    extra = ""
    if certificates:
        p = pki(OURS)
        (tmp_path / "gw.pem").write_bytes(p.gateway.certificate.public_bytes(Encoding.PEM))
        key = p.gateway.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        private_file(tmp_path / "gw.key", key.decode())
        (tmp_path / "ca.pem").write_bytes(p.ca.public_bytes(Encoding.PEM))
        auth = 'id = "alice.example"'
        extra = '\n[gateway.certificate]\ncert = "gw.pem"\nkey = "gw.key"\nca = "ca.pem"\n'
    return private_file(
        tmp_path / "gateway.toml",
        f"""\
[gateway]
listen = "{OURS}"
id = "{OURS}"
psk_file = "gw.psk"
tun = "tvgw%d"
{extra}
[[site]]
name = "charon"
address = "{THEIRS}"
{auth}
networks = ["{THEIR_NET}"]
local = ["{OUR_NET}"]
initiate = {"true" if initiate else "false"}
""",
    )


CHARON_SITE = f"""\
connections {{
  site {{
    version = 1
    local_addrs = {THEIRS}
    remote_addrs = {OURS}
    encap = yes
    proposals = aes256-sha256-ecp256
    local {{
      auth = psk
      id = {THEIRS}
    }}
    remote {{
      auth = psk
      id = {OURS}
    }}
    children {{
      site {{
        mode = tunnel
        local_ts = {THEIR_NET}
        remote_ts = {OUR_NET}
        esp_proposals = aes256gcm16-ecp256
      }}
    }}
  }}
}}
secrets {{
  ike-site {{
    id-1 = {THEIRS}
    id-2 = {OURS}
    secret = "{SITE_KEY}"
  }}
}}
"""


CHARON_CERT_SITE = (
    CHARON_SITE.replace(
        "auth = psk\n      id = " + THEIRS, "auth = pubkey\n      certs = site.pem\n      id = alice.example"
    )
    .replace("auth = psk\n      id = " + OURS, "auth = pubkey\n      id = " + OURS)
    .split("secrets {")[0]
)
"""charon signing with a certificate of our CA for alice.example, expecting ours for 10.77.0.1."""


def _charon_certificates(charon: Charon) -> None:
    p = pki(OURS)
    confdir = charon.swanctl_path.parent
    for sub in ("x509", "x509ca", "rsa"):
        (confdir / sub).mkdir(parents=True, exist_ok=True)
    (confdir / "x509ca" / "ca.pem").write_bytes(p.ca.public_bytes(Encoding.PEM))
    (confdir / "x509" / "site.pem").write_bytes(p.client.certificate.public_bytes(Encoding.PEM))
    key = p.client.private_key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    private_file(confdir / "rsa" / "site.key", key.decode())


def _ping(ns: str, source: str, target: str) -> bool:
    out = run_in(ns, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-I", source, target], check=False)
    return out.returncode == 0


@pytest.mark.parametrize(
    ("starter", "auth"),
    [("ours", "psk"), ("charon", "psk"), ("ours", "certificates"), ("charon", "certificates")],
)
def test_site_to_site_with_strongswan(tmp_path: Path, starter: str, auth: str) -> None:
    with NetnsPair(f"{OURS}/24", f"{THEIRS}/24") as pair, Charon(tmp_path / "charon", pair.b) as charon:
        pair.add_addr(pair.a, f"{OUR_HOST}/32")
        pair.add_addr(pair.b, f"{THEIR_HOST}/32")
        run_in(pair.a, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if auth == "certificates":
            _charon_certificates(charon)
        loaded = charon.load(CHARON_SITE if auth == "psk" else CHARON_CERT_SITE)
        if auth == "certificates":
            assert "loaded certificate" in loaded and "loaded RSA key" in loaded, loaded
        log = tmp_path / "gateway.log"
        config = our_gateway(tmp_path, initiate=starter == "ours", certificates=auth == "certificates")
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", "none", "-v"], log)
        procs = [gateway]
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway")
            if starter == "charon":
                try:
                    out = charon.initiate("site", "site", timeout=25)
                except RuntimeError as exc:
                    raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None
                assert "CHILD_SA site{1} established" in out, out
            try:
                wait_for(lambda: bool(charon.established_children()), 25, "charon's CHILD_SA")
            except TimeoutError:
                raise AssertionError(
                    f"{read_text(log)[-4000:]}\n--- charon ---\n{charon.log_text()[-4000:]}"
                ) from None
            wait_for(lambda: _ping(pair.b, THEIR_HOST, OUR_HOST), 15, "a ping from charon's network to ours")
            assert _ping(pair.a, OUR_HOST, THEIR_HOST), "a ping from our network to charon's"
            iperf = None
            if shutil.which("iperf3") is not None:
                server = popen_in(
                    pair.a,
                    ["iperf3", "-s", "-1", "--forceflush", "-B", OUR_HOST],
                    tmp_path / "iperf3-server.log",
                )
                procs.append(server)
                wait_for(
                    lambda: "listening" in read_text(tmp_path / "iperf3-server.log").lower(), 10, "iperf3 -s"
                )
                run = run_in(
                    pair.b,
                    ["iperf3", "-c", OUR_HOST, "-B", THEIR_HOST, "-t", "2", "-J"],
                    check=False,
                    timeout=30,
                )
                assert run.returncode == 0, run.stdout[-2000:] + run.stderr
                iperf = json.loads(run.stdout)["end"]["sum_received"]["bytes"]
            list_sas = charon.list_sas()
        finally:
            for proc in reversed(procs):
                stop_process(proc)
        gw_log = read_text(log)
        charon_log = charon.log_text()
    assert "site charon: phase 1 up" in gw_log, gw_log[-3000:]
    # no XAUTH between gateways (charon announces it can, by its vendor ID, but nobody asks)
    assert "XAuth authentication" not in charon_log and "XAUTH:" not in gw_log
    assert f"local  {THEIR_NET}" in list_sas and f"remote {OUR_NET}" in list_sas, list_sas
    assert iperf is None or iperf > 1 << 20, iperf
    assert SITE_KEY not in gw_log
    if auth == "certificates":  # each checked the other's signature against the CA
        assert f"authentication of '{OURS}' with RSA_EMSA_PKCS1_NULL successful" in charon_log, charon_log[
            -3000:
        ]
        assert "/rsa_signatures" in gw_log, gw_log[-3000:]


# ------------------------------------------------- over IPv6, with networks of both families (issue 19)

OURS6, THEIRS6 = "fd00:77::1", "fd00:77::2"
OUR_NET6, OUR_HOST6 = "fd78::/64", "fd78::1"
THEIR_NET6, THEIR_HOST6 = "fd88::/64", "fd88::1"

CHARON_SITE6 = f"""\
connections {{
  site6 {{
    version = 1
    local_addrs = {THEIRS6}
    remote_addrs = {OURS6}
    encap = yes
    proposals = aes256-sha256-ecp256
    local {{
      auth = psk
      id = {THEIRS6}
    }}
    remote {{
      auth = psk
      id = {OURS6}
    }}
    children {{
      four {{
        mode = tunnel
        local_ts = {THEIR_NET}
        remote_ts = {OUR_NET}
        esp_proposals = aes256gcm16-ecp256
      }}
      six {{
        mode = tunnel
        local_ts = {THEIR_NET6}
        remote_ts = {OUR_NET6}
        esp_proposals = aes256gcm16-ecp256
      }}
    }}
  }}
}}
secrets {{
  ike-site6 {{
    id-1 = {THEIRS6}
    id-2 = {OURS6}
    secret = "{SITE_KEY}"
  }}
}}
"""
"""charon's net-to-net IKEv1 over IPv6: one CHILD_SA per family (IKEv1 negotiates one pair of
selectors per Quick Mode)."""


@pytest.mark.parametrize("starter", ["ours", "charon"])
def test_site_to_site_with_strongswan_over_ipv6_with_ipv6_networks(tmp_path: Path, starter: str) -> None:
    """IKE and ESP over IPv6 between our gateway and charon, and an IPv6 network pair beside
    the IPv4 one: pings both ways on both families, and iperf3 over IPv6 inside the tunnel."""
    with NetnsPair(f"{OURS}/24", f"{THEIRS}/24") as pair, Charon(tmp_path / "charon", pair.b) as charon:
        for ns, ifname, addr in ((pair.a, pair.if_a, OURS6), (pair.b, pair.if_b, THEIRS6)):
            enable_ipv6(ns, ifname)
            run_in(ns, ["ip", "-6", "addr", "add", f"{addr}/64", "dev", ifname, "nodad"])
        for ns, addr in (
            (pair.a, OUR_HOST),
            (pair.b, THEIR_HOST),
            (pair.a, OUR_HOST6),
            (pair.b, THEIR_HOST6),
        ):
            pair.add_addr(ns, f"{addr}/{32 if '.' in addr else 128}")
        loaded = charon.load(CHARON_SITE6)
        assert "site6" in loaded, loaded
        private_file(tmp_path / "gw.psk", "a-group-key-nobody-uses-here-0123\n")
        private_file(tmp_path / "site.psk", SITE_KEY + "\n")
        config = private_file(
            tmp_path / "gateway.toml",
            f"""\
[gateway]
listen = "{OURS6}"
psk_file = "gw.psk"
tun = "tvgw%d"

[[site]]
name = "charon"
address = "{THEIRS6}"
psk_file = "site.psk"
networks = ["{THEIR_NET}", "{THEIR_NET6}"]
local = ["{OUR_NET}", "{OUR_NET6}"]
initiate = {"true" if starter == "ours" else "false"}
""",
        )
        log = tmp_path / "gateway.log"
        gateway = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "--control", "none", "-v"], log)
        procs = [gateway]
        try:
            wait_for_line(log, "gateway ready", gateway, 15, "our gateway")
            if starter == "charon":
                for child in ("four", "six"):
                    out = charon.initiate(child, "site6", timeout=25)
                    assert "established" in out, out + read_text(log)[-3000:]
            try:
                wait_for(lambda: len(charon.established_children()) >= 2, 25, "charon's two CHILD_SAs")
            except TimeoutError:
                raise AssertionError(
                    f"{read_text(log)[-4000:]}\n--- charon ---\n{charon.log_text()[-4000:]}"
                ) from None
            for ns, source, target in (
                (pair.b, THEIR_HOST, OUR_HOST),
                (pair.a, OUR_HOST, THEIR_HOST),
                (pair.b, THEIR_HOST6, OUR_HOST6),
                (pair.a, OUR_HOST6, THEIR_HOST6),
            ):
                wait_for(
                    lambda ns=ns, s=source, t=target: _ping(ns, s, t), 15, f"a ping {source} -> {target}"
                )
            iperf = None
            if shutil.which("iperf3") is not None:
                server = popen_in(
                    pair.a, ["iperf3", "-s", "-1", "--forceflush", "-B", OUR_HOST6], tmp_path / "iperf3.log"
                )
                procs.append(server)
                wait_for(lambda: "listening" in read_text(tmp_path / "iperf3.log").lower(), 10, "iperf3 -s")
                run = run_in(
                    pair.b,
                    ["iperf3", "-c", OUR_HOST6, "-B", THEIR_HOST6, "-t", "2", "-J"],
                    check=False,
                    timeout=30,
                )
                assert run.returncode == 0, run.stdout[-2000:] + run.stderr
                iperf = json.loads(run.stdout)["end"]["sum_received"]["bytes"]
            list_sas = charon.list_sas()
        finally:
            for proc in reversed(procs):
                stop_process(proc)
        gw_log = read_text(log)
    assert f"{THEIRS6}[{THEIRS6}]" in list_sas or THEIRS6 in list_sas, list_sas
    assert f"local  {THEIR_NET6}" in list_sas and f"remote {OUR_NET6}" in list_sas, list_sas
    assert iperf is None or iperf > 1 << 20, iperf
    assert SITE_KEY not in gw_log
