"""The reference peers work on this machine: vpnc -> charon and charon -> charon (IKEv1).

These check the harness, not tunvpn: if they fail, every interop test of ours would fail for
reasons that are not ours. Set-ups: tests/interop/scenarios.py and configs.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.pcap import read_udp

from .scenarios import INNER_A, PINGS, run_charon_main_mode, run_vpnc_vs_charon


def test_vpnc_aggressive_xauth_modecfg_against_charon(tmp_path: Path) -> None:
    result = run_vpnc_vs_charon(tmp_path)

    assert "ESTABLISHED, IKEv1" in result.list_sas, result.list_sas
    assert "AES_CBC-256/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024" in result.list_sas
    assert "XAuth: 'tvuser'" in result.list_sas
    [child] = result.children
    assert child["mode"] == "TUNNEL" and child["encap"] == "yes"
    assert (child["encr-alg"], child["encr-keysize"], child["integ-alg"]) == (
        "AES_CBC",
        "256",
        "HMAC_SHA1_96",
    )
    assert child["local-ts"] == ["0.0.0.0/0"]

    connect = [e for e in result.vpnc_events if e.get("reason") == "connect"]
    assert len(connect) == 1, result.vpnc_events
    assert connect[0]["INTERNAL_IP4_ADDRESS"] == "10.79.0.10"  # first address of the pool
    assert child["remote-ts"] == ["10.79.0.10/32"]
    assert "CISCO_SPLIT_INC" not in connect[0]  # local_ts 0.0.0.0/0: no split include
    assert [e["reason"] for e in result.vpnc_events] == ["pre-init", "connect", "disconnect"]

    assert f"{PINGS} received" in result.ping_output, result.ping_output
    kinds = [d.kind for d in read_udp(result.pcap)]
    assert kinds[:2] == ["ike", "ike"] and kinds.count("esp") == 2 * PINGS


def test_charon_main_mode_psk_between_two_daemons(tmp_path: Path) -> None:
    result = run_charon_main_mode(tmp_path)

    assert "ESTABLISHED, IKEv1" in result.list_sas, result.list_sas
    assert "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048" in result.list_sas
    [child] = result.children
    assert (child["mode"], child["encap"], child["encr-alg"]) == ("TUNNEL", "yes", "AES_GCM_16")
    assert child["local-ts"] == [f"{INNER_A}/32"]
    assert f"{PINGS} received" in result.ping_output, result.ping_output

    datagrams = read_udp(result.pcap)
    assert [d.dport for d in datagrams[:4]] == [500] * 4  # MM1-MM4, then the float to 4500
    assert all(d.dport == 4500 for d in datagrams[4:])
    assert [d.kind for d in datagrams].count("esp") == 2 * PINGS
