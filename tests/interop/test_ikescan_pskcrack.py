"""ike-scan and psk-crack, the standard Aggressive Mode attack, against our gateway (issue 12,
"What must be shown").

The attacker knows the gateway's address, nothing else. ike-scan sends an Aggressive Mode first
message naming a group (ID_KEY_ID, as vpnc does) with one transform that psk-crack can use
(AES-256, SHA-1: psk-crack reads only MD5 and SHA-1 answers; MODP-2048, which our gateway allows
without ``legacy``; XAUTH-initiator PSK, the method vpnc uses and the one a gateway that requires
XAUTH accepts) and writes the responder's answer in psk-crack's format; psk-crack then runs a
dictionary over HASH_R.

* The default: Aggressive Mode with a pre-shared key is off, and ike-scan gets no handshake
  (nothing to crack) for the real group name or any other, and the same refusal for both.
* Positive control (``allow_aggressive_psk`` on, as for vpnc): for the real group name the
  answer is a dictionary target and psk-crack finds the PSK (it is in the dictionary). This is
  what Aggressive Mode with a PSK gives away, why it is off by default, and why the group PSK
  must be long and random.
* XAUTH required by default: an offer of plain pre-shared-key authentication (no XAUTH) is
  refused for any name, known or not.
* No identity oracle: for a group name the gateway does not know, the answer must look exactly
  like the real one (same payloads in the same order, same lengths, same chosen transform,
  same vendor IDs, same identity), and psk-crack must find nothing in it even with the real
  PSK in its dictionary. Both answers are compared as ike-scan decodes them and as tshark
  dissects them from a capture.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, capture, run_in, stop_process
from tests.helpers.requires import skip_or_fail
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line

from . import configs

GATEWAY = "10.77.0.1"
ATTACKER = "10.77.0.2"
UNKNOWN_GROUP = "no-such-group"
ID_KEY_ID = 11  # RFC 2407 section 4.6.2.1
# enc 7 = AES-CBC/256 bits, hash 2 = SHA-1, auth 65001 = XAUTHInitPreShared, group 14 = MODP-2048
TRANSFORM = "7/256,2,65001,14"
NO_XAUTH_TRANSFORM = "7/256,2,1,14"  # the same with auth 1 = plain pre-shared key (no XAUTH)
DH_GROUP = "14"
DICTIONARY = ("password", "cisco", "letmein", configs.VPNC_GROUP, configs.VPNC_GROUP_PSK, "vpn-secret")


def require_ike_scan() -> None:
    missing = [tool for tool in ("ike-scan", "psk-crack") if shutil.which(tool) is None]
    if missing:
        reason = f"missing {', '.join(missing)} (apt-get install ike-scan; contrib/test-all.sh installs it)"
        skip_or_fail(reason)


@dataclass
class Probe:
    """One ike-scan run: what it printed and the psk-crack parameters it saved."""

    group: str
    output: str
    pskcrack_file: Path

    @property
    def handshake(self) -> bool:
        return "Aggressive Mode Handshake returned" in self.output

    def decoded(self) -> list[str]:
        """ike-scan's decode of the answer, one line per payload, with the one field that must
        differ between any two answers (the responder cookie) blanked."""
        lines = []
        for line in self.output.splitlines():
            if line.startswith((GATEWAY, "\t")):
                lines.append(re.sub(r"CKY-R=[0-9a-f]+", "CKY-R=*", line))
        return lines

    def pskcrack_fields(self) -> list[str]:
        """psk-crack's input line: g_xr:g_xi:cky_r:cky_i:sai_b:idir_b:ni_b:nr_b:hash_r (hex)."""
        return self.pskcrack_file.read_text().strip().split(":")


def probe(ns: str, tmp: Path, group: str, label: str, transform: str = TRANSFORM) -> Probe:
    """ike-scan's Aggressive Mode probe for ``group`` (ID_KEY_ID), answer saved for psk-crack."""
    out = tmp / f"{label}.psk-params"
    argv = [
        "ike-scan",
        "--multiline",
        "--aggressive",
        f"--id={group}",
        f"--idtype={ID_KEY_ID}",
        f"--dhgroup={DH_GROUP}",
        f"--trans={transform}",
        f"--pskcrack={out}",
        "--retry=2",
        GATEWAY,
    ]
    result = run_in(ns, argv, check=False, timeout=30)
    return Probe(group, result.stdout + result.stderr, out)


def psk_crack(params: Path, tmp: Path) -> str:
    dictionary = tmp / "dictionary"
    dictionary.write_text("\n".join(DICTIONARY) + "\n")
    result = subprocess.run(
        ["psk-crack", "-d", str(dictionary), str(params)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def dissect_answers(pcap: Path) -> list[list[str]]:
    """tshark's view of each gateway answer: exchange type, message length, and per payload its
    type and length, the chosen transform's attributes, the identity and the vendor IDs."""
    fields = [
        "isakmp.exchangetype",
        "isakmp.length",
        "isakmp.typepayload",
        "isakmp.payloadlength",
        "isakmp.ike.attr.type",
        "isakmp.ike.attr.value",
        "isakmp.id.type",
        "isakmp.id.data.ipv4_addr",
        "isakmp.id.data.fqdn",
        "isakmp.id.data.key_id",
        "isakmp.vid_bytes",
        "isakmp.notify.msgtype",
    ]
    argv = ["tshark", "-n", "-r", str(pcap), "-Y", f"isakmp && ip.src == {GATEWAY}", "-T", "fields"]
    argv += ["-E", "occurrence=a", "-E", "separator=|"]
    for field in fields:
        argv += ["-e", field]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in result.stdout.splitlines() if line]


@contextmanager
def running_gateway(tmp: Path, *extra: str) -> Iterator[tuple[NetnsPair, Path]]:
    """Our gateway with one group and one user, default algorithms (no ``legacy``) and the
    flags ``extra``; the attacker's namespace is b."""
    require_ike_scan()
    with NetnsPair(f"{GATEWAY}/24", f"{ATTACKER}/24") as pair:
        psk = private_file(tmp / "gateway.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
        users = private_file(tmp / "users", f"{configs.VPNC_USER}:{configs.VPNC_PASSWORD}\n")
        log = tmp / "gateway.log"
        argv = ["gateway", "--listen", GATEWAY, "--psk-file", str(psk), "--users", str(users)]
        argv += ["--pool", configs.VPNC_POOL, "--ike-only", "--control", "none", *extra]
        proc = popen_tunvpn(pair.a, argv, log)
        try:
            wait_for_line(log, "gateway ready", proc, 15, "our gateway to bind its sockets")
            yield pair, log
        finally:
            stop_process(proc)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[NetnsPair, Path]]:
    """The gateway with Aggressive Mode PSK enabled (as for vpnc)."""
    with running_gateway(tmp_path, "--allow-aggressive-psk") as running:
        yield running


def test_by_default_ike_scan_gets_no_handshake_for_any_name(tmp_path: Path) -> None:
    """The default (no ``allow_aggressive_psk``): neither the real group name nor an unknown
    one gets an Aggressive Mode answer, so there is no HASH_R to crack, and both get the same
    refusal."""
    with running_gateway(tmp_path) as (pair, _log):
        known = probe(pair.b, tmp_path, configs.VPNC_GROUP, "known")
        unknown = probe(pair.b, tmp_path, UNKNOWN_GROUP, "unknown")
    for answer in (known, unknown):
        assert not answer.handshake, answer.output
        assert "Notify message 14 (NO-PROPOSAL-CHOSEN)" in answer.output, answer.output
        assert not answer.pskcrack_file.exists() or not answer.pskcrack_file.read_text().strip()
    assert known.decoded() == unknown.decoded()


def test_pskcrack_recovers_the_psk_from_the_known_groups_answer(
    gateway: tuple[NetnsPair, Path], tmp_path: Path
) -> None:
    """Positive control: the attack works where it must (a valid group name, PSK in the
    dictionary), so its failure on an unknown name below means something."""
    pair, log = gateway
    known = probe(pair.b, tmp_path, configs.VPNC_GROUP, "known")

    assert known.handshake, known.output + read_text(log)[-3000:]
    assert "Enc=AES KeyLength=256 Hash=SHA1 Auth=XAUTH_PSK Group=14:modp2048" in known.output, known.output
    cracked = psk_crack(known.pskcrack_file, tmp_path)
    assert f'key "{configs.VPNC_GROUP_PSK}" matches SHA1 hash' in cracked, cracked


def test_unknown_group_gets_an_identical_answer_that_psk_crack_cannot_use(
    gateway: tuple[NetnsPair, Path], tmp_path: Path
) -> None:
    pair, log = gateway
    pcap = tmp_path / "answers.pcap"
    with capture(pair.b, pair.if_b, pcap, bpf="udp port 500"):
        known = probe(pair.b, tmp_path, configs.VPNC_GROUP, "known")
        unknown = probe(pair.b, tmp_path, UNKNOWN_GROUP, "unknown")

    assert known.handshake, known.output
    # The attack: an unknown name must not be told apart from a known one.
    assert unknown.handshake, f"unknown group {UNKNOWN_GROUP!r} answered differently:\n{unknown.output}"
    assert unknown.decoded() == known.decoded(), (unknown.decoded(), known.decoded())

    known_params, unknown_params = known.pskcrack_fields(), unknown.pskcrack_fields()
    assert [len(f) for f in unknown_params] == [len(f) for f in known_params]
    assert unknown_params[5] == known_params[5]  # the gateway's ID payload body
    assert unknown_params[2] != known_params[2]  # two exchanges, two responder cookies

    # Same payloads, lengths, transform, identity and vendor IDs as tshark dissects them.
    answers = dissect_answers(pcap)
    assert len(answers) == 2, answers
    assert answers[0] == answers[1], answers
    assert answers[0][0] == "4", answers  # Aggressive Mode

    # And the decoy's HASH_R is useless to the dictionary, the real PSK included.
    cracked = psk_crack(unknown.pskcrack_file, tmp_path)
    assert "no match found" in cracked and configs.VPNC_GROUP_PSK not in cracked, cracked
    text = read_text(log)
    assert f"no pre-shared key for keyid:{UNKNOWN_GROUP} at {ATTACKER}: answering with a decoy key" in text, (
        text
    )
    assert f"keyid:{configs.VPNC_GROUP} at {ATTACKER}: answering with a decoy key" not in text, text
    assert configs.VPNC_GROUP_PSK not in text


def test_an_offer_without_xauth_gets_no_handshake_for_any_name(
    gateway: tuple[NetnsPair, Path], tmp_path: Path
) -> None:
    """Issue 12 item 2 with a real tool: the gateway has a users file and no ``--require-xauth``
    flag, so XAUTH is required by default; an offer of plain pre-shared-key authentication
    (which would skip the login) gets NO-PROPOSAL-CHOSEN, for the real group name and an
    unknown one alike."""
    pair, log = gateway
    known = probe(pair.b, tmp_path, configs.VPNC_GROUP, "known-no-xauth", NO_XAUTH_TRANSFORM)
    unknown = probe(pair.b, tmp_path, UNKNOWN_GROUP, "unknown-no-xauth", NO_XAUTH_TRANSFORM)
    for answer in (known, unknown):
        assert not answer.handshake, f"{answer.output}\n{read_text(log)[-3000:]}"
        assert "Notify message 14 (NO-PROPOSAL-CHOSEN)" in answer.output, answer.output
    assert known.decoded() == unknown.decoded()
