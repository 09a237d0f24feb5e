"""The captured messages and keys in tests/vectors/captures.py are consistent with each other.

Independent of tunvpn's own codec and crypto (only hashlib/hmac and `cryptography`), so a
failure here means the data, not our code, is wrong. It recomputes RFC 2409 key derivation from
the PSK, the nonces and g^xy, decrypts the first encrypted message of each flow, and decrypts one
ESP packet per captured SA, which also pins down which key belongs to which direction.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.helpers.pcap import read_udp
from tests.vectors import captures as cap

DATA = Path(__file__).resolve().parents[1] / "vectors"
PAYLOAD_SA, PAYLOAD_KE, PAYLOAD_NONCE = 1, 4, 10


def payload_chain(first: int, body: bytes) -> list[tuple[int, bytes]]:
    """Walk generic payload headers (RFC 2408 section 3.2): [(type, body)]."""
    out, kind, pos = [], first, 0
    while kind != 0:
        next_kind, length = body[pos], struct.unpack_from("!H", body, pos + 2)[0]
        assert length >= 4 and pos + length <= len(body), (kind, pos, length)
        out.append((kind, body[pos + 4 : pos + length]))
        kind, pos = next_kind, pos + length
    return out


def header(data: bytes) -> tuple[bytes, bytes, int, int, int, int, int, int]:
    return struct.unpack_from("!8s8sBBBBII", data)


def payload(message: bytes, kind: int) -> bytes:
    return dict(payload_chain(message[16], message[28:]))[kind]


@pytest.mark.parametrize("flow", [cap.VPNC_FLOW, cap.S2S_FLOW], ids=["vpnc", "s2s"])
def test_headers_and_plain_payload_chains(flow: tuple[cap.Captured, ...]) -> None:
    icookie = flow[0].data[:8]
    for msg in flow:
        i, _r, first, version, exchange, flags, _mid, length = header(msg.data)
        assert (i, version, exchange, length) == (icookie, 0x10, msg.exchange, len(msg.data))
        assert bool(flags & 1) == msg.encrypted
        if not msg.encrypted:
            assert [kind for kind, _ in payload_chain(first, msg.data[28:])] == msg.payloads


def test_vpnc_first_message_facts() -> None:
    assert cap.VPNC_AM1_PAYLOADS == cap.VPNC_FLOW[0].payloads
    sa = payload(cap.VPNC_AM1, PAYLOAD_SA)
    proposal = sa[8:]  # DOI + situation
    assert proposal[4 + 3] == cap.VPNC_AM1_TRANSFORM_COUNT == 24  # "# of transforms"
    chain = dict(payload_chain(cap.VPNC_AM1[16], cap.VPNC_AM1[28:]))
    id_body = chain[5]
    assert (id_body[0], id_body[4:]) == cap.VPNC_AM1_ID
    vids = [body for kind, body in payload_chain(cap.VPNC_AM1[16], cap.VPNC_AM1[28:]) if kind == 13]
    assert tuple(vids) == cap.VPNC_AM1_VIDS
    assert len(payload(cap.VPNC_AM1, PAYLOAD_KE)) == 128  # MODP1024


def prf_hmac(hash_name: str) -> Callable[[bytes, bytes], bytes]:
    return lambda key, data: hmac.new(key, data, hash_name).digest()


def derive_and_check(flow, psk: str, hash_name: str, key_len: int, keys: dict[str, bytes], first_enc: int):
    """RFC 2409 section 5 (PSK) and appendix B; then decrypt flow[first_enc]."""
    prf = prf_hmac(hash_name)
    init_msg, resp_msg = (flow[0], flow[1]) if flow[0].exchange == 4 else (flow[2], flow[3])
    ni, nr = payload(init_msg.data, PAYLOAD_NONCE), payload(resp_msg.data, PAYLOAD_NONCE)
    gxi, gxr = payload(init_msg.data, PAYLOAD_KE), payload(resp_msg.data, PAYLOAD_KE)
    cky_i, cky_r = flow[1].data[:8], flow[1].data[8:16]
    gxy = keys["g^xy"]
    skeyid = prf(psk.encode(), ni + nr)
    skeyid_d = prf(skeyid, gxy + cky_i + cky_r + b"\x00")
    skeyid_a = prf(skeyid, skeyid_d + gxy + cky_i + cky_r + b"\x01")
    skeyid_e = prf(skeyid, skeyid_a + gxy + cky_i + cky_r + b"\x02")
    assert (skeyid, skeyid_d, skeyid_a, skeyid_e) == (
        keys["SKEYID"],
        keys["SKEYID_d"],
        keys["SKEYID_a"],
        keys["SKEYID_e"],
    )
    ka = skeyid_e
    if len(ka) < key_len:  # appendix B: K1 = prf(SKEYID_e, 0), K2 = prf(SKEYID_e, K1), ...
        k = prf(skeyid_e, b"\x00")
        ka = k
        while len(ka) < key_len:
            k = prf(skeyid_e, k)
            ka += k
    ka = ka[:key_len]
    assert ka == keys["Ka"]
    iv = hashlib.new(hash_name, gxi + gxr).digest()[:16]  # RFC 2409 appendix B
    assert iv == keys["IV"]
    msg = flow[first_enc]
    body = msg.data[28:]
    dec = Cipher(algorithms.AES(ka), modes.CBC(iv)).decryptor()
    plain = dec.update(body) + dec.finalize()
    kinds = [kind for kind, _ in payload_chain(msg.data[16], plain)]
    assert kinds == msg.payloads


def test_vpnc_flow_key_derivation_and_decryption() -> None:
    derive_and_check(
        cap.VPNC_FLOW,
        cap.PSK_VPNC_GROUP,
        "sha1",
        32,
        {
            "g^xy": cap.VPNC_SHARED_DIFFIE_HELLMAN_SECRET,
            "SKEYID": cap.VPNC_SKEYID,
            "SKEYID_d": cap.VPNC_SKEYID_D,
            "SKEYID_a": cap.VPNC_SKEYID_A,
            "SKEYID_e": cap.VPNC_SKEYID_E,
            "Ka": cap.VPNC_ENCRYPTION_KEY_KA,
            "IV": cap.VPNC_INITIAL_IV,
        },
        first_enc=2,
    )
    assert cap.VPNC_FLOW[2].data == cap.VPNC_AM3_ENCRYPTED
    assert cap.VPNC_FLOW[2].payloads == cap.VPNC_AM3_DECRYPTED_PAYLOADS


def test_s2s_flow_key_derivation_and_decryption() -> None:
    derive_and_check(
        cap.S2S_FLOW,
        cap.PSK_S2S,
        "sha256",
        16,
        {
            "g^xy": cap.S2S_SHARED_DIFFIE_HELLMAN_SECRET,
            "SKEYID": cap.S2S_SKEYID,
            "SKEYID_d": cap.S2S_SKEYID_D,
            "SKEYID_a": cap.S2S_SKEYID_A,
            "SKEYID_e": cap.S2S_SKEYID_E,
            "Ka": cap.S2S_ENCRYPTION_KEY_KA,
            "IV": cap.S2S_INITIAL_IV,
        },
        first_enc=4,
    )
    assert cap.S2S_FLOW[4].payloads == cap.CHARON_MM5_DECRYPTED_PAYLOADS


def decrypt_esp(esp: bytes, sa: cap.EspKeys) -> bytes:
    """RFC 4303 + RFC 4106 (GCM) / RFC 3602 + RFC 2404 (CBC, HMAC-SHA1-96): inner IP packet."""
    spi, _seq = struct.unpack_from("!II", esp)
    assert spi == sa.spi
    if sa.encryption == "AES_GCM_16":
        iv, sealed = esp[8:16], esp[16:]
        plain = AESGCM(sa.enc_key[:-4]).decrypt(sa.enc_key[-4:] + iv, sealed, esp[:8])
    else:
        assert sa.integrity == "HMAC_SHA1_96"
        icv = esp[-12:]
        assert hmac.compare_digest(icv, hmac.new(sa.auth_key, esp[:-12], "sha1").digest()[:12])
        iv, body = esp[8:24], esp[24:-12]
        dec = Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv)).decryptor()
        plain = dec.update(body) + dec.finalize()
    pad_len, next_header = plain[-2], plain[-1]
    assert next_header == 4  # IPv4 in tunnel mode
    return plain[: -2 - pad_len]


@pytest.mark.parametrize(
    ("pcap", "sas"), [(cap.VPNC_PCAP, cap.VPNC_ESP_SAS), (cap.S2S_PCAP, cap.S2S_ESP_SAS)]
)
def test_esp_keys_decrypt_the_captured_pings(pcap: str, sas: tuple[cap.EspKeys, ...]) -> None:
    by_spi = {sa.spi: sa for sa in sas}
    esp = [d for d in read_udp(DATA / pcap) if d.kind == "esp"]
    assert len(esp) == 6
    for d in esp:
        sa = by_spi[struct.unpack_from("!I", d.payload)[0]]
        assert (d.src, d.dst) == (sa.src, sa.dst)
        inner = decrypt_esp(d.payload, sa)
        assert inner[0] >> 4 == 4 and inner[9] == 1  # IPv4, ICMP
