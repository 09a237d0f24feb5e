"""Our client's fallback path against a standard gateway, end to end with traffic: strongSwan
5.9 charon (kernel-libipsec) as an IKEv1 Main Mode PSK + XAUTH + Mode Config gateway whose
unity plugin announces two Cisco Unity split-include networks, in three namespaces::

    client (10.77.0.2) --veth-- charon (10.77.0.1 | 10.78.0.1, 10.78.1.1)
                                        --veth-- server (10.78.0.10, 10.78.1.10)

Our client sends the tunvpn vendor ID, gets an address and the split networks but no ``CFG_``
policy sets (charon knows none), so it runs one Quick Mode per split network with its own
enumerated proposals, routes both networks into its TUN device, and pings a host in each
through the tunnel.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.netns import Topology, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line
from tunvpn.ike.constants import VendorId

from . import configs
from .strongswan import Charon

GATEWAY = "10.77.0.1"
CLIENT = "10.77.0.2"
POOL_FIRST = "10.79.0.10"
NETS = ("10.78.0.0/24", "10.78.1.0/24")
HOSTS = ("10.78.0.10", "10.78.1.10")
PSK = "tv-fallback-psk-0123456789"


def xauth_gateway() -> str:
    """Main Mode PSK, then XAUTH (xauth-generic) and Mode Config from a pool; one child whose
    local_ts lists both networks, which the unity plugin sends as split-include."""
    return f"""\
connections {{
  fb {{
    version = 1
    local_addrs = {GATEWAY}
    remote_addrs = {CLIENT}
    pools = fbpool
    proposals = aes256-sha256-modp2048
    local {{
      auth = psk
      id = {GATEWAY}
    }}
    remote {{
      auth = psk
      id = {CLIENT}
    }}
    remote-xauth {{
      auth = xauth-generic
    }}
    children {{
      fb {{
        mode = tunnel
        local_ts = {", ".join(NETS)}
        esp_proposals = aes256gcm16-ecp256
      }}
    }}
  }}
}}
pools {{
  fbpool {{
    addrs = {configs.VPNC_POOL}
  }}
}}
secrets {{
  ike-fb {{
    id-1 = {GATEWAY}
    id-2 = {CLIENT}
    secret = "{PSK}"
  }}
  xauth-{configs.VPNC_USER} {{
    id = {configs.VPNC_USER}
    secret = "{configs.VPNC_PASSWORD}"
  }}
}}
"""


def ping(ns: str, host: str) -> subprocess.CompletedProcess[str]:
    return run_in(ns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", host], check=False, timeout=30)


def test_client_falls_back_to_unity_split_networks_and_pings_each(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        topo.link(g, "10.78.0.1/24", s, "10.78.0.10/24", names=(g + "s", s + "g"))
        topo.add_addr(g, "10.78.1.1/24", g + "s")
        topo.add_addr(s, "10.78.1.10/24", s + "g")
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        with Charon(tmp_path / "gw", g) as charon:
            charon.load(xauth_gateway())
            psk = private_file(tmp_path / "client.psk", PSK + "\n")
            password = private_file(tmp_path / "password", configs.VPNC_PASSWORD + "\n")
            log = tmp_path / "client.log"
            client = popen_tunvpn(
                c,
                [
                    "connect",
                    GATEWAY,
                    "--psk-file",
                    str(psk),
                    "--user",
                    configs.VPNC_USER,
                    "--password-file",
                    str(password),
                    "--tun",
                    "tvcl%d",
                    "--dns-backend",
                    "none",
                    "--control",
                    "none",
                    "--json",
                    "--timeout",
                    "30",
                    "-v",
                ],
                log,
            )
            try:
                try:
                    wait_for_line(log, '"event": "established"', client, 40, "the client's Quick Mode SAs")
                except (TimeoutError, RuntimeError) as exc:
                    raise AssertionError(f"{exc}\n--- charon log ---\n{charon.log_text()[-6000:]}") from None
                wait_for(
                    lambda: len(charon.established_children()) == 2, 10, "charon's two CHILD_SAs INSTALLED"
                )
                list_sas = charon.list_sas()
                routes = run_in(c, ["ip", "route"]).stdout
                pings = {host: ping(c, host) for host in HOSTS}
                counted = charon.list_sas()  # per-SA byte counters after the pings
            finally:
                code = stop_process(client)
            # the client's Delete of the ISAKMP SA (best effort, RFC 2408 section 4.8; sent
            # last, after the children's) reaches charon as the client exits
            wait_for(
                lambda: re.search(r"received DELETE for IKE_SA fb\[\d+\]", charon.log_text()) is not None,
                10,
                "charon to see the Delete",
            )
            charon_log = charon.log_text()
        text = read_text(log)

    assert code == 0, text[-4000:]
    records = json_records(log)
    modecfg = next(r for r in records if r["event"] == "modecfg" and r["state"] == "received")
    assert modecfg["address"] == POOL_FIRST
    assert modecfg["split_include"] == list(NETS), modecfg
    assert not [r for r in records if r["event"] == "policy"]  # no CFG_ sets from a standard gateway
    started = [r for r in records if r["event"] == "quick" and r["state"] == "started"]
    assert sorted(r["remote_ts"] for r in started) == list(NETS)
    up = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
    assert sorted(r["remote_ts"] for r in up) == list(NETS), up
    assert all(r["local_ts"] == f"{POOL_FIRST}/32" and r["esp"] == "aes256gcm16" for r in up), up
    assert all(r["pfs_group"] == 19 for r in up)  # our own proposal: PFS with ECP-256

    assert list_sas.count("INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256/ECP_256") == 2, list_sas
    assert f"XAuth: '{configs.VPNC_USER}'" in list_sas
    for net in NETS:
        assert f"local  {net}" in list_sas or f"local {net}" in list_sas, list_sas
        assert f"{net} dev tvcl" in routes, routes
    for host, result in pings.items():
        assert result.returncode == 0, f"{host}: {result.stdout}{result.stderr}\n{charon_log[-3000:]}"
        assert "3 received" in result.stdout
    vid = ":".join(f"{b:02x}" for b in VendorId.TUNVPN)
    assert f"received unknown vendor ID: {vid}" in charon_log  # we did announce tunvpn
    assert "CPRP(ADDR U_SPLITINC)" in charon_log  # a standard answer: no CFG_ sets
    # one Quick Mode per split network, each with our whole enumerated ESP offer
    offers = re.findall(r"received proposals: (ESP:.*)", charon_log)
    assert len(offers) == 2 and all(o.count("ESP:") >= 5 for o in offers), offers
    # strongest first (with and without ESN), the weaker suites after it
    assert all(re.match(r"ESP:AES_GCM_16_256/ECP_256/(NO_)?EXT_SEQ, ", o) for o in offers), offers
    assert all("ESP:AES_GCM_16_128/ECP_256" in o for o in offers), offers
    # both SAs carried the pings (charon counts the bytes it decrypted and encrypted); read
    # from swanctl while the SAs are up, as IKEv1 Deletes are best effort and may be lost
    bytes_in = [int(n) for n in re.findall(r"\n\s+in\s+\w+[^\n]*?(\d+) bytes", counted)]
    bytes_out = [int(n) for n in re.findall(r"\n\s+out\s+\w+[^\n]*?(\d+) bytes", counted)]
    assert len(bytes_in) == len(bytes_out) == 2 and min(bytes_in + bytes_out) > 0, counted
    assert f"assigning virtual IP {POOL_FIRST} to peer '{configs.VPNC_USER}'" in charon_log
    assert charon_log.count("CHILD_SA fb{") >= 2
    # (IKE_SA fb[2] when charon refused our short first offer and took the whole one after)
    assert re.search(r"received DELETE for IKE_SA fb\[\d+\]", charon_log)
    assert configs.VPNC_PASSWORD not in text and PSK not in text


# ------------------------------------------------------------------ PFS the gateway chooses

# Standard gateways with narrow settings (issue 16's matrix): each allows exactly one phase 1
# suite and one ESP suite with one PFS choice (no PFS at all is a very common setting), some
# with shorter lifetimes than ours. A Quick Mode carries one KE, so our client offers its PFS
# choices one at a time, strongest first and then none, moving on at a hash-verified
# NO-PROPOSAL-CHOSEN, and reaches a working tunnel with the gateway's only choices.
# case: (phase 1 proposal, ESP proposal, extra config, expected PFS group, expected ESP suite)
MATRIX = {
    "nopfs": ("aes256-sha256-modp2048", "aes256gcm16", "", None, "aes256gcm16"),
    "modp3072": ("aes256-sha256-modp2048", "aes256gcm16-modp3072", "", 15, "aes256gcm16"),
    "ecp521": ("aes256-sha256-modp2048", "aes256gcm16-ecp521", "", 21, "aes256gcm16"),
    "curve25519": ("aes256-sha256-modp2048", "aes256gcm16-curve25519", "", 31, "aes256gcm16"),
    "ike-aes128-sha384-ecp384": ("aes128-sha384-ecp384", "aes128gcm16-modp3072", "", 15, "aes128gcm16"),
    "ike-aes192-sha512-modp4096": ("aes192-sha512-modp4096", "aes256gcm16", "", None, "aes256gcm16"),
    "ike-aes256-sha1-ecp256": ("aes256-sha1-ecp256", "aes128gcm16-ecp384", "", 20, "aes128gcm16"),
    "ike-curve25519": ("aes256-sha256-curve25519", "aes256gcm16-curve25519", "", 31, "aes256gcm16"),
    "aes-cbc-only": ("aes256-sha256-modp2048", "aes128-sha256-ecp256", "", 19, "aes128-sha256"),
    "short-lifetimes": (
        "aes256-sha256-modp2048",
        "aes256gcm16-ecp256",
        "      life_time = 600s\n      rekey_time = 500s\n",
        19,
        "aes256gcm16",
    ),
    # SHA-1 for ESP integrity only (RFC 8221 still lists HMAC-SHA1-96): our client offers it
    # only with --legacy (tunvpn.ike.proposals.LEGACY_ESP), and then lands on it
    "esp-sha1-only": ("aes256-sha256-modp2048", "aes256-sha1", "", None, "aes256-sha1"),
}
CLIENT_ARGS = {"esp-sha1-only": ("--legacy",)}
"""Extra arguments of our client for a case."""


def run_fallback_client(tmp_path: Path, c: str, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    psk = private_file(tmp_path / "client.psk", PSK + "\n")
    password = private_file(tmp_path / "password", configs.VPNC_PASSWORD + "\n")
    log = tmp_path / "client.log"
    args = ["connect", GATEWAY, "--psk-file", str(psk), "--user", configs.VPNC_USER]
    args += ["--password-file", str(password), "--tun", "tvcl%d", "--dns-backend", "none"]
    args += ["--control", "none", "--json", "--timeout", "30", "--no-reconnect", "-v", *extra]
    return popen_tunvpn(c, args, log), log


@pytest.mark.parametrize("case", list(MATRIX))
def test_client_finds_the_narrow_gateways_only_choices(tmp_path: Path, case: str) -> None:
    ike, esp, extra, group, suite = MATRIX[case]
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g, s = topo.add_ns("c"), topo.add_ns("g"), topo.add_ns("s")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        topo.link(g, "10.78.0.1/24", s, "10.78.0.10/24", names=(g + "s", s + "g"))
        run_in(s, ["ip", "route", "add", "default", "via", "10.78.0.1"])
        run_in(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        with Charon(tmp_path / "gw", g) as charon:
            gateway = xauth_gateway().replace("esp_proposals = aes256gcm16-ecp256", f"esp_proposals = {esp}")
            gateway = gateway.replace("proposals = aes256-sha256-modp2048", f"proposals = {ike}")
            gateway = gateway.replace("        mode = tunnel\n", "        mode = tunnel\n" + extra)
            charon.load(gateway.replace(f"local_ts = {', '.join(NETS)}", f"local_ts = {NETS[0]}"))
            client, log = run_fallback_client(tmp_path, c, *CLIENT_ARGS.get(case, ()))
            try:
                try:
                    wait_for_line(log, '"event": "established"', client, 40, "the client's Quick Mode SA")
                except (TimeoutError, RuntimeError) as exc:
                    raise AssertionError(f"{exc}\n--- client ---\n{read_text(log)[-3000:]}") from None
                try:
                    wait_for(
                        lambda: f"{NETS[0]} dev tvcl" in run_in(c, ["ip", "route"]).stdout, 10, "the route"
                    )
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}\n--- client ---\n{read_text(log)[-3000:]}") from None
                result = ping(c, HOSTS[0])
            finally:
                stop_process(client)
    assert result.returncode == 0, result.stdout + result.stderr
    up = [r for r in json_records(log) if r["event"] == "quick" and r["state"] == "established"]
    assert [(r["pfs_group"], r["esp"]) for r in up] == [(group, suite)], up


def test_a_gateway_that_refuses_every_proposal_stops_the_client_with_a_clear_message(tmp_path: Path) -> None:
    """The gateway allows only an ESP suite we never offer (3DES): our client stops within
    2 s of the last NO-PROPOSAL-CHOSEN with a message naming the refused SA."""
    os.chmod(tmp_path, 0o700)
    with Topology() as topo:
        c, g = topo.add_ns("c"), topo.add_ns("g")
        topo.link(c, f"{CLIENT}/24", g, f"{GATEWAY}/24")
        with Charon(tmp_path / "gw", g) as charon:
            gateway = xauth_gateway().replace(
                "esp_proposals = aes256gcm16-ecp256", "esp_proposals = 3des-md5"
            )
            charon.load(gateway)
            client, log = run_fallback_client(tmp_path, c)
            try:
                code = client.wait(timeout=40)
            finally:
                stop_process(client)
    records = json_records(log)
    failed = [r for r in records if r.get("state") == "failed"]
    assert code != 0 and failed, read_text(log)[-3000:]
    message = failed[-1]["message"]
    assert "NO_PROPOSAL_CHOSEN" in message and "10.78.0.0/24" in message, message
