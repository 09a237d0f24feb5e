"""ESP interop: our client's userspace data path against strongSwan's charon with
kernel-libipsec (userspace ESP in C, TUN "ipsec0"), IKEv1 Main Mode PSK, UDP-encapsulated.

Ping and iperf3 (TCP, both directions) pass through the tunnel for AES-GCM-16 and for
AES-CBC with HMAC-SHA2-256. Only that traffic passed is asserted, never a speed.

Extended sequence numbers (RFC 4304): our client offers each suite without ESN first, then
with it. charon (5.9, IKEv1) reads the attribute ("received proposals:
ESP:AES_GCM_16_256/ECP_256/NO_EXT_SEQ, ESP:AES_GCM_16_256/ECP_256/EXT_SEQ, ...") but
kernel-libipsec cannot install an ESN SA: with ``esp_proposals = aes256gcm16-ecp256-esn``
charon selects EXT_SEQ, then logs "IPsec SA: ESN not supported", "failed to create SAD
entry" and deletes the CHILD_SA. With its default (``-noesn`` implied) it picks our 32-bit
transform, which is what is asserted here.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, run_in, stop_process, wait_for
from tests.helpers.tunvpn_proc import json_records, popen_tunvpn, private_file, read_text, wait_for_line

from .configs import IKE_PSK, INNER_A, UNDERLAY_A, UNDERLAY_B, main_mode_gateway
from .strongswan import Charon

PROTECTED = INNER_A.split("/")[0]


def _iperf(pair: NetnsPair, *, reverse: bool) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", pair.a, "iperf3", "-s", "-1", "-B", PROTECTED],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        argv = ["iperf3", "-c", PROTECTED, "-t", "2", "-J", *(["-R"] if reverse else [])]
        out = run_in(pair.b, argv, check=False, timeout=30)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
        report = json.loads(out.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"])
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    ("esp", "charon_says", "selected"),
    [
        ("aes256gcm16-ecp256", "ESP:AES_GCM_16-256", "ESP:AES_GCM_16_256/ECP_256/NO_EXT_SEQ"),
        (
            "aes256-sha256-ecp256",
            "ESP:AES_CBC-256/HMAC_SHA2_256_128",
            "ESP:AES_CBC_256/HMAC_SHA2_256_128/ECP_256/NO_EXT_SEQ",
        ),
    ],
)
def test_ping_and_iperf3_through_charon_kernel_libipsec(
    tmp_path: Path, esp: str, charon_says: str, selected: str
) -> None:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair, Charon(tmp_path / "gw", pair.a) as gateway:
        pair.add_addr(pair.a, INNER_A)
        gateway.load(main_mode_gateway(pair.addr_a, pair.addr_b).replace("aes256gcm16-ecp256", esp))
        psk = private_file(tmp_path / "client.psk", IKE_PSK + "\n")
        log = tmp_path / "client.log"
        client = popen_tunvpn(
            pair.b, ["connect", pair.addr_a, "--psk-file", str(psk), "--tun", "tvesp%d", "--json"], log
        )
        try:
            wait_for_line(log, "IPsec SA pair(s) up", client, 40, "the client's Quick Mode SAs")
            wait_for(lambda: bool(gateway.established_children()), 10, "charon's CHILD_SA")
            assert charon_says in gateway.list_sas(), gateway.list_sas()
            charon_log = gateway.log_text()
            # our offer (each suite without, then with ESN) as charon read it, and what it took
            assert "ESP:AES_GCM_16_256/ECP_256/NO_EXT_SEQ, ESP:AES_GCM_16_256/ECP_256/EXT_SEQ" in charon_log
            assert f"selected proposal: {selected}\n" in charon_log, charon_log[-3000:]
            [quick] = [r for r in json_records(log) if r["event"] == "quick" and r["state"] == "established"]
            assert quick["esn"] is False
            ping = run_in(
                pair.b, ["ping", "-c", "4", "-i", "0.2", "-W", "2", PROTECTED], check=False, timeout=30
            )
            assert ping.returncode == 0, ping.stdout + gateway.log_text()[-3000:]
            assert _iperf(pair, reverse=False) > 0
            assert _iperf(pair, reverse=True) > 0
        finally:
            stop_process(client)
        assert "received DELETE" in gateway.log_text()
        assert "Traceback" not in read_text(log)
