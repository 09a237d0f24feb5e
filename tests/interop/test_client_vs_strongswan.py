"""Our client (``python -m tunvpn connect`` in namespace b) against a strongSwan 5.9 charon gateway
(namespace a): IKEv1 Main Mode PSK with a pool, and Aggressive Mode PSK + XAUTH + Mode Config.

charon runs kernel-libipsec, which fakes a NAT (so everything floats to UDP/4500) and refuses
to install a policy whose remote selector is the client's own IKE address; the client therefore
gets a virtual IP from a pool in both set-ups. Each test waits for the client's JSON
"established" line, checks ``swanctl --list-sas`` while the SAs are up, then stops the client
with SIGTERM and checks that charon saw our DELETEs.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.netns import NetnsPair, stop_process, wait_for
from tests.helpers.tunvpn_proc import (
    json_records,
    popen_tunvpn,
    private_file,
    read_text,
    run_tunvpn,
    wait_for_line,
)

from . import configs
from .configs import IKE_PSK, INNER_A, POOL_FIRST, SPLIT, UNDERLAY_A, UNDERLAY_B, main_mode_gateway
from .strongswan import Charon


def aggressive_xauth_gateway(local: str) -> str:
    """Like the vpnc gateway of configs.py, but with strong algorithms and no PFS."""
    return f"""\
connections {{
  am {{
    version = 1
    aggressive = yes
    local_addrs = {local}
    pools = ampool
    proposals = aes256-sha256-modp2048
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = keyid:{configs.VPNC_GROUP}
    }}
    remote-xauth {{
      auth = xauth-generic
    }}
    children {{
      am {{
        mode = tunnel
        local_ts = 0.0.0.0/0
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
pools {{
  ampool {{
    addrs = {configs.VPNC_POOL}
  }}
}}
secrets {{
  ike-am {{
    id = keyid:{configs.VPNC_GROUP}
    secret = "{configs.VPNC_GROUP_PSK}"
  }}
  xauth-{configs.VPNC_USER} {{
    id = {configs.VPNC_USER}
    secret = "{configs.VPNC_PASSWORD}"
  }}
}}
"""


def run_client(
    tmp_path: Path, pair: NetnsPair, gateway: Charon, psk: str, extra: list[str]
) -> tuple[list[dict[str, object]], str, str]:
    """Start the client, wait for "established", return (progress records, list-sas, client log)."""
    psk_file = private_file(tmp_path / "client.psk", psk + "\n")
    log = tmp_path / "client.log"
    proc = popen_tunvpn(
        pair.b,
        ["connect", pair.addr_a, "--psk-file", str(psk_file), "--json", "--timeout", "30", "-v", *extra],
        log,
    )
    try:
        try:
            wait_for_line(log, '"event": "established"', proc, 40, "the client's Quick Mode SAs")
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n--- charon log ---\n{gateway.log_text()[-6000:]}") from None
        # our "established" follows our Quick Mode message 3; charon installs once it has read it
        wait_for(lambda: bool(gateway.established_children()), 10, "charon's CHILD_SA to be INSTALLED")
        list_sas = gateway.list_sas()
    finally:
        code = stop_process(proc)
    assert code == 0, read_text(log)
    return json_records(log), list_sas, read_text(log)


def test_main_mode_psk_with_pool(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "gw", pair.a) as gateway:
        pair.add_addr(pair.a, INNER_A)  # charon routes local_ts from an address inside it
        gateway.load(main_mode_gateway(pair.addr_a, pair.addr_b))
        records, list_sas, log = run_client(tmp_path, pair, gateway, IKE_PSK, [])

        assert "ESTABLISHED, IKEv1" in list_sas, list_sas
        assert "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048" in list_sas
        assert f"[{POOL_FIRST}]" in list_sas  # the virtual IP charon handed us
        assert "INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256/ECP_256" in list_sas, list_sas
        assert f"remote {POOL_FIRST}/32" in list_sas

        phase1 = next(r for r in records if r["event"] == "phase1" and r["state"] == "established")
        assert phase1["suite"] == "aes256-sha256-modp_2048/pre_shared_key"
        modecfg = next(r for r in records if r["event"] == "modecfg" and r["state"] == "received")
        assert modecfg["address"] == POOL_FIRST
        assert modecfg["split_include"] == [SPLIT]  # charon's unity plugin announces local_ts
        [quick] = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
        assert (quick["local_ts"], quick["remote_ts"], quick["pfs_group"]) == (f"{POOL_FIRST}/32", SPLIT, 19)
        assert "Quick Mode SA" in log and "spi_in=0x" in log  # the shell's INFO line

        charon_log = gateway.log_text()
        assert "CHILD_SA mm{1} established" in charon_log
        assert f"TS {SPLIT} === {POOL_FIRST}/32" in charon_log
        assert re.search(r"received DELETE for IKE_SA mm\[\d+\]", charon_log)  # our SIGTERM handler


def test_aggressive_mode_psk_xauth_mode_config(tmp_path: Path) -> None:
    with (
        NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair,
        Charon(tmp_path / "gw", pair.a, aggressive_psk=True) as gateway,
    ):
        gateway.load(aggressive_xauth_gateway(pair.addr_a))
        password = private_file(tmp_path / "password", configs.VPNC_PASSWORD + "\n")
        extra = [
            "--mode",
            "aggressive",
            "--id",
            f"keyid:{configs.VPNC_GROUP}",
            "--user",
            configs.VPNC_USER,
            "--password-file",
            str(password),
            "--pfs",
            "none",
        ]
        records, list_sas, _ = run_client(tmp_path, pair, gateway, configs.VPNC_GROUP_PSK, extra)

        assert "ESTABLISHED, IKEv1" in list_sas, list_sas
        assert f"XAuth: '{configs.VPNC_USER}'" in list_sas
        assert f"remote '{configs.VPNC_GROUP}'" in list_sas
        assert "INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" in list_sas, list_sas
        assert f"remote {POOL_FIRST}/32" in list_sas

        steps = [(r["event"], r["state"]) for r in records]
        assert (
            steps.index(("xauth", "ok"))
            < steps.index(("modecfg", "received"))
            < steps.index(("established", "up"))
        )
        [quick] = [r for r in records if r["event"] == "quick" and r["state"] == "established"]
        assert (quick["local_ts"], quick["remote_ts"], quick["pfs_group"]) == (
            f"{POOL_FIRST}/32",
            "0.0.0.0/0",
            None,
        )

        charon_log = gateway.log_text()
        assert f"XAuth authentication of '{configs.VPNC_USER}' successful" in charon_log
        assert f"assigning virtual IP {POOL_FIRST} to peer '{configs.VPNC_USER}'" in charon_log
        assert "received DELETE for IKE_SA" in charon_log


def test_exit_after_established_deletes_and_exits_zero(tmp_path: Path) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "gw", pair.a) as gateway:
        pair.add_addr(pair.a, INNER_A)  # charon routes local_ts from an address inside it
        gateway.load(main_mode_gateway(pair.addr_a, pair.addr_b))
        psk_file = private_file(tmp_path / "client.psk", IKE_PSK + "\n")
        result = run_tunvpn(
            pair.b,
            [
                "connect",
                pair.addr_a,
                "--psk-file",
                str(psk_file),
                "--exit-after-established",
                "--timeout",
                "30",
            ],
        )
        assert result.returncode == 0, result.stdout + result.stderr + gateway.log_text()[-4000:]
        assert "[established] 1 IPsec SA pair(s) up" in result.stdout
        assert re.search(r"received DELETE for IKE_SA mm\[\d+\]", gateway.log_text())
