"""Live proof of tunvpn.keylog: charon <-> charon with ESP AES-CBC + HMAC-SHA2-256-128, keys taken
from charon's level-4 log, written with KeyLog, and tshark decrypts IKE and ESP from the capture.

(The stored captures in tests/vectors cover AES-GCM-16 and AES-CBC + HMAC-SHA1-96; this adds SHA-256
and checks the whole chain against daemons running now, not against frozen bytes.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform
from tunvpn.keylog import KeyLog, tshark_args

from .scenarios import PINGS, run_charon_main_mode
from .strongswan import CharonKeys


def test_tshark_decrypts_live_charon_traffic_with_keylog(tmp_path: Path) -> None:
    result = run_charon_main_mode(tmp_path, key_log=True, esp_proposals="aes128-sha256")
    [child] = result.children
    assert (child["encr-alg"], child["integ-alg"]) == ("AES_CBC", "HMAC_SHA2_256_128")
    keys = CharonKeys.from_log(result.charon_logs["initiator"])
    icookie = bytes.fromhex(result.list_sas.split("IKEv1, ", 1)[1][:16])

    log = KeyLog(tmp_path / "keys")
    log.log_ike_sa(icookie, keys.first("encryption key Ka"))
    esp = keys.esp_keys()
    for spi_field, src, dst in (("spi-in", "10.77.0.2", "10.77.0.1"), ("spi-out", "10.77.0.1", "10.77.0.2")):
        spi = int(str(child[spi_field]), 16)
        enc, integ = esp[spi]
        log.log_esp_sa(src, dst, spi, EspTransform.AES_CBC, enc, AuthAlgorithm.HMAC_SHA2_256, integ)

    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(result.pcap),
            *tshark_args(tmp_path / "keys"),
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-e",
            "frame.number",
            "-e",
            "icmp.type",
            "-e",
            "esp.icv_good",
            "-e",
            "isakmp.id.type",
            "-e",
            "isakmp.flags",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    icmp = [r for r in rows if r[1]]
    assert len(icmp) == 2 * PINGS and all(r[2] == "1" for r in icmp), out
    # Main Mode 5/6 are encrypted and carry ID payloads: visible only if decryption worked.
    encrypted_with_id = [r for r in rows if r[4] and int(r[4], 16) & 1 and r[3]]
    assert len(encrypted_with_id) >= 2, out
