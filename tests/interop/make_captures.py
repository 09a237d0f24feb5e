"""Regenerate tests/vectors/captures.py and the two pcaps beside it from live peers.

Run as root on a machine with the interop packages (bash contrib/test-all.sh installs them)::

    python3 tests/interop/make_captures.py            # rewrites tests/vectors/{captures.py,*.pcap}
    python3 tests/interop/make_captures.py --out DIR  # writes there instead

It runs the two set-ups of tests/interop/scenarios.py with charon at log level 4 for ike/chd
(so charon prints the derived keys), captures with dumpcap, extracts every ISAKMP message
(non-ESP marker stripped) and asks tshark, given the logged keys, for facts the codec tests can
assert (payload chains, transform counts, vendor IDs). All keys belong to throw-away daemons
with test-only PSKs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from tests.helpers.pcap import UdpDatagram, read_udp  # noqa: E402
from tunvpn.keylog import KeyLog, tshark_args  # noqa: E402

from interop import configs  # noqa: E402
from interop.scenarios import (  # noqa: E402
    INNER_A,
    INNER_B,
    ScenarioResult,
    run_charon_main_mode,
    run_vpnc_vs_charon,
)
from interop.strongswan import PLUGINS, CharonKeys  # noqa: E402

KEY_LABELS = (
    "shared Diffie Hellman secret",
    "SKEYID",
    "SKEYID_d",
    "SKEYID_a",
    "SKEYID_e",
    "encryption key Ka",
    "initial IV",
    "HASH_I",
    "HASH_R",
)


def version(argv: list[str], pick: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if pick in line:
            return line.strip()
    return "?"


def hex_literal(data: bytes, indent: int = 4) -> str:
    """bytes.fromhex("...") wrapped at 96 hex digits a line."""
    h = data.hex()
    if len(h) <= 80:
        return f'bytes.fromhex("{h}")'
    pad = " " * (indent + 4)
    chunks = "\n".join(f'{pad}"{h[i : i + 96]}"' for i in range(0, len(h), 96))
    return f"bytes.fromhex(\n{chunks}\n{' ' * indent})"


def tshark_facts(pcap: Path, keylog_base: Path) -> dict[int, dict[str, object]]:
    """Per frame: exchange type, flags, payload chain (decrypted where keys allow), etc."""
    fields = [
        "frame.number",
        "isakmp.exchangetype",
        "isakmp.flags",
        "isakmp.typepayload",
        "isakmp.prop.transforms",
        "isakmp.vid_bytes",
        "isakmp.id.type",
        "isakmp.ike.attr.group_description",
    ]
    argv = [
        "tshark",
        "-r",
        str(pcap),
        *tshark_args(keylog_base),
        "-Y",
        "isakmp",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=;",
        "-E",
        "separator=\t",
    ]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    facts: dict[int, dict[str, object]] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        split = [c.split(";") if c else [] for c in cols]
        frame, exch, flags, types, transforms, vids, id_types, groups = split
        facts[int(frame[0])] = {
            "exchange": int(exch[0]),
            "flags": int(flags[0], 16),
            # Top-level chain only: proposal (2) and transform (3) payloads nest inside SA.
            "payloads": [int(t) for t in types if int(t) not in (2, 3)],
            "transforms": [int(t) for t in transforms],
            "vids": [v for v in vids],
            "id_types": [int(t) for t in id_types],
            "dh_groups": sorted({int(g) for g in groups}),
        }
    return facts


def keylog_for(
    result: ScenarioResult, keys: CharonKeys, first: UdpDatagram, base: Path, local: str, remote: str
) -> None:
    """KeyLog for charon in namespace a (address ``local``)."""
    from tunvpn.ipsec.algorithms import AuthAlgorithm, EspTransform

    log = KeyLog(base)
    log.log_ike_sa(first.ike[:8], keys.first("encryption key Ka"))
    esp = keys.esp_keys()
    for child in result.children:
        gcm = child["encr-alg"] == "AES_GCM_16"
        transform = EspTransform.AES_GCM_16 if gcm else EspTransform.AES_CBC
        auth = (
            None
            if gcm
            else {"HMAC_SHA1_96": AuthAlgorithm.HMAC_SHA1, "HMAC_SHA2_256_128": AuthAlgorithm.HMAC_SHA2_256}[
                str(child["integ-alg"])
            ]
        )
        for spi_key, src, dst in (("spi-in", remote, local), ("spi-out", local, remote)):
            spi = int(str(child[spi_key]), 16)
            enc, integ = esp[spi]
            log.log_esp_sa(src, dst, spi, transform, enc, auth, integ)


def render_flow(prefix: str, datagrams: list[UdpDatagram], facts: dict[int, dict[str, object]]) -> str:
    lines = [f"{prefix}_FLOW: tuple[Captured, ...] = ("]
    for d in datagrams:
        if d.kind != "ike":
            continue
        f = facts.get(d.index, {})
        lines.append(
            f"    Captured({d.index}, {d.src!r}, {d.sport}, {d.dst!r}, {d.dport}, "
            f"exchange={f.get('exchange')}, encrypted={bool(int(f.get('flags', 0)) & 1)!r}, "
            f"payloads={f.get('payloads')!r},\n             data={hex_literal(d.ike, 13)}),"
        )
    lines.append(")")
    return "\n".join(lines)


def render_keys(
    prefix: str, keys: CharonKeys, result: ScenarioResult, first: UdpDatagram, local: str, remote: str
) -> str:
    out = [f"{prefix}_ICOOKIE = {hex_literal(first.ike[:8])}"]
    for label in KEY_LABELS:
        if label in keys.values:
            name = label.upper().replace(" ", "_")
            out.append(f"{prefix}_{name} = {hex_literal(keys.first(label))}")
    esp = keys.esp_keys()
    out.append(f"{prefix}_ESP_SAS: tuple[EspKeys, ...] = (")
    for child in result.children:
        for spi_key, src, dst in (("spi-in", remote, local), ("spi-out", local, remote)):
            spi = int(str(child[spi_key]), 16)
            enc, integ = esp[spi]
            algs = f"{child['encr-alg']!r}, {child.get('integ-alg')!r}"
            out.append(f"    EspKeys(0x{spi:08x}, {src!r}, {dst!r}, {algs},")
            out.append(f"            enc_key={hex_literal(enc, 12)},")
            out.append(f"            auth_key={hex_literal(integ, 12)}),")
    out.append(")")
    return "\n".join(out)


HEADER = '''\
"""Real ISAKMP messages from strongSwan and vpnc, for the codec and crypto tests.

GENERATED by `python3 tests/interop/make_captures.py` (as root, interop packages installed);
do not edit by hand. Peers: {swan}, vpnc {vpnc};
captured with dumpcap, checked with {tshark}.
The pcaps are beside this file; `Captured.data` is the UDP payload with the RFC 3948 non-ESP
marker stripped (messages on port 4500).

All keys below come from throw-away test daemons whose PSKs are in tests/interop/configs.py;
charon printed them at log level 4 (`ike = 4`, `chd = 4`). They let tests recompute the
RFC 2409 key derivation (SKEYID from PSK, Ni, Nr; SKEYID_d/a/e from g^xy and the cookies) and
decrypt the encrypted messages; `tests/unit/test_keylog.py` proves them with tshark.

Set-ups (tests/interop/scenarios.py, configs.py); charon loads only:
{plugins}
"""

from __future__ import annotations

from typing import NamedTuple


class Captured(NamedTuple):
    """One captured ISAKMP message."""

    frame: int  # frame number in the pcap (tshark numbering)
    src: str
    sport: int
    dst: str
    dport: int
    exchange: int  # ISAKMP exchange type (RFC 2408 section 3.1)
    encrypted: bool  # E flag set
    payloads: list[int]  # top-level payload types in order, as tshark decoded them (with the keys)
    data: bytes


class EspKeys(NamedTuple):
    """One direction of an ESP SA: packets src -> dst carry spi."""

    spi: int
    src: str
    dst: str
    encryption: str  # strongSwan's name
    integrity: str | None
    enc_key: bytes  # incl. the 4-byte salt for AES-GCM (RFC 4106 section 8.1)
    auth_key: bytes


PSK_S2S = {s2s_psk!r}
PSK_VPNC_GROUP = {vpnc_psk!r}
XAUTH_USER = {xauth_user!r}
XAUTH_PASSWORD = {xauth_password!r}
'''


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=TESTS / "vectors")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="tvcap.") as tmp:
        work = Path(tmp)
        vpnc_result = run_vpnc_vs_charon(work / "vpnc", key_log=True)
        s2s_result = run_charon_main_mode(work / "s2s", key_log=True)
        (work / "keys").mkdir()

        sections = []

        # ------------------------------------------------------------ vpnc -> charon
        vpnc_dgrams = read_udp(vpnc_result.pcap)
        vpnc_keys = CharonKeys.from_log(vpnc_result.charon_logs["gateway"])
        keylog_for(vpnc_result, vpnc_keys, vpnc_dgrams[0], work / "keys" / "vpnc", "10.77.0.1", "10.77.0.2")
        vpnc_facts = tshark_facts(vpnc_result.pcap, work / "keys" / "vpnc")
        am1 = vpnc_facts[vpnc_dgrams[0].index]
        am2 = vpnc_facts[vpnc_dgrams[1].index]
        virtual_ip = vpnc_result.vpnc_events[1].get("INTERNAL_IP4_ADDRESS")
        sections.append(
            textwrap.dedent(f"""\
            # ------------------------------------------------------------------------------------------------
            # vpnc -> charon gateway: Aggressive Mode group PSK + XAUTH + Mode Config, NAT-T forced.
            # Gateway (10.77.0.1, namespace a): charon with
            #   charon.i_dont_care_about_security_and_use_aggressive_mode_psk = yes and
            #   configs.vpnc_gateway(local="10.77.0.1")  (aggressive = yes, encap = yes,
            #   proposals = aes256-sha1-modp1024, aes128-sha1-modp1024, 3des-sha1-modp1024,
            #   remote id keyid:{configs.VPNC_GROUP}, xauth-generic, pool {configs.VPNC_POOL},
            #   esp_proposals = aes256-sha1, aes128-sha1, 3des-sha1).
            # Client (10.77.0.2, namespace b): `ip netns exec b vpnc vpnc.conf` with
            #   IPSec ID {configs.VPNC_GROUP}, IKE Authmode psk, IKE DH Group dh2, Perfect Forward Secrecy
            #   nopfs, NAT Traversal Mode force-natt, No Detach, Debug 0 (tests/interop/vpnc.py).
            # Capture: `ip netns exec a dumpcap -P -i <veth a> -f "udp port 500 or udp port 4500"`
            # then {len(vpnc_result.vpnc_events)} script calls; vpnc got {virtual_ip};
            # {PINGS_NOTE}; vpnc stopped with SIGTERM (DELETEs at the end).
            VPNC_PCAP = "vpnc-aggressive.pcap"
            """)
        )
        sections.append(render_flow("VPNC", vpnc_dgrams, vpnc_facts))
        flow = [d for d in vpnc_dgrams if d.kind == "ike"]
        n = am1["transforms"][0]
        sections.append(
            textwrap.dedent(f"""\
            # vpnc's first message: [SA KE No ID V*9], one proposal, {n} transforms, all MODP1024.
            VPNC_AM1 = VPNC_FLOW[0].data
            VPNC_AM1_TRANSFORM_COUNT = {am1["transforms"][0]}
            VPNC_AM1_DH_GROUPS = {am1["dh_groups"]!r}
            VPNC_AM1_ID = (11, {configs.VPNC_GROUP.encode()!r})  # ID_KEY_ID: the group name
            VPNC_AM1_PAYLOADS = {am1["payloads"]!r}
            VPNC_AM1_VIDS = (
            """)
        )
        sections.append("\n".join(f'    bytes.fromhex("{v}"),' for v in am1["vids"]) + "\n)")
        sections.append(
            textwrap.dedent(f"""\
            # charon's answer: [SA KE No ID V V V NAT-D NAT-D HASH], the chosen transform only.
            CHARON_AM2 = VPNC_FLOW[1].data
            CHARON_AM2_PAYLOADS = {am2["payloads"]!r}
            CHARON_AM2_VIDS = (
            """)
        )
        sections.append("\n".join(f'    bytes.fromhex("{v}"),' for v in am2["vids"]) + "\n)")
        sections.append(
            textwrap.dedent(f"""\
            # vpnc's third message is encrypted (E flag), sent to 4500: [HASH N V V NAT-D NAT-D] inside.
            VPNC_AM3_ENCRYPTED = VPNC_FLOW[2].data
            VPNC_AM3_DECRYPTED_PAYLOADS = {vpnc_facts[flow[2].index]["payloads"]!r}
            # Keys as charon (the responder) derived them. IKE: AES-256-CBC, HMAC-SHA1, MODP1024.
            """)
        )
        sections.append(render_keys("VPNC", vpnc_keys, vpnc_result, vpnc_dgrams[0], "10.77.0.1", "10.77.0.2"))

        # ------------------------------------------------------------ charon -> charon
        s2s_dgrams = read_udp(s2s_result.pcap)
        s2s_keys = CharonKeys.from_log(s2s_result.charon_logs["initiator"])
        keylog_for(s2s_result, s2s_keys, s2s_dgrams[0], work / "keys" / "s2s", "10.77.0.1", "10.77.0.2")
        s2s_facts = tshark_facts(s2s_result.pcap, work / "keys" / "s2s")
        mm1 = s2s_facts[s2s_dgrams[0].index]
        mm2 = s2s_facts[s2s_dgrams[1].index]
        sections.append(
            textwrap.dedent(f"""\
            # ------------------------------------------------------------------------------------------------
            # charon -> charon: IKEv1 Main Mode PSK, encap = yes (both float to 4500), ESP AES-GCM-16-128.
            # Initiator 10.77.0.1 (namespace a), responder 10.77.0.2 (b), each
            #   configs.s2s_main_mode_psk(local=..., remote=..., local_ts={INNER_A}/32 <-> {INNER_B}/32,
            #   proposals = aes128-sha256-modp2048, esp_proposals = aes128gcm16), IDs = addresses;
            # `swanctl --initiate --child s2s` on a; {PINGS_NOTE};
            # then both charons stopped with SIGTERM (the initiator sends DELETE for the CHILD_SA and
            # the ISAKMP SA).
            S2S_PCAP = "charon-mainmode.pcap"
            """)
        )
        sections.append(render_flow("S2S", s2s_dgrams, s2s_facts))
        s2s_flow = [d for d in s2s_dgrams if d.kind == "ike"]
        sections.append(
            textwrap.dedent(f"""\
            # Main Mode message 1 [SA V V V V V] and 2 [SA V V V V].
            CHARON_MM1 = S2S_FLOW[0].data
            CHARON_MM1_TRANSFORM_COUNT = {mm1["transforms"][0]}
            CHARON_MM1_PAYLOADS = {mm1["payloads"]!r}
            CHARON_MM1_VIDS = (
            """)
        )
        sections.append("\n".join(f'    bytes.fromhex("{v}"),' for v in mm1["vids"]) + "\n)")
        sections.append(
            textwrap.dedent(f"""\
            CHARON_MM2 = S2S_FLOW[1].data
            CHARON_MM2_PAYLOADS = {mm2["payloads"]!r}
            CHARON_MM2_VIDS = (
            """)
        )
        sections.append("\n".join(f'    bytes.fromhex("{v}"),' for v in mm2["vids"]) + "\n)")
        sections.append(
            textwrap.dedent(f"""\
            # Main Mode message 5 (first encrypted one, on 4500): [ID HASH N(INITIAL_CONTACT)] inside.
            CHARON_MM5_ENCRYPTED = S2S_FLOW[4].data
            CHARON_MM5_DECRYPTED_PAYLOADS = {s2s_facts[s2s_flow[4].index]["payloads"]!r}
            # Keys as the initiator derived them. IKE: AES-128-CBC, HMAC-SHA2-256, MODP2048.
            """)
        )
        sections.append(render_keys("S2S", s2s_keys, s2s_result, s2s_dgrams[0], "10.77.0.1", "10.77.0.2"))

        header = HEADER.format(
            swan=version(["/usr/lib/ipsec/charon", "--version"], "strongSwan"),
            vpnc=version(["vpnc", "--version"], "vpnc version").removeprefix("vpnc version "),
            tshark=version(["tshark", "--version"], "TShark").split(" (Git")[0],
            plugins=textwrap.fill(PLUGINS, 96, initial_indent="  ", subsequent_indent="  "),
            s2s_psk=configs.S2S_PSK,
            vpnc_psk=configs.VPNC_GROUP_PSK,
            xauth_user=configs.VPNC_USER,
            xauth_password=configs.VPNC_PASSWORD,
        )
        text = header + "\n\n" + "\n\n".join(s.rstrip("\n") for s in sections) + "\n"
        (args.out / "captures.py").write_text(text)
        shutil.copy(vpnc_result.pcap, args.out / "vpnc-aggressive.pcap")
        shutil.copy(s2s_result.pcap, args.out / "charon-mainmode.pcap")
    subprocess.run(["ruff", "format", str(args.out / "captures.py")], check=False, capture_output=True)
    print(f"wrote {args.out / 'captures.py'} and the two pcaps")
    return 0


PINGS_NOTE = "3 pings through the tunnel (ESP frames in the pcap)"

if __name__ == "__main__":
    raise SystemExit(main())
