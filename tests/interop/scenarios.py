"""The two reference set-ups between real peers, each in its own pair of namespaces.

* ``run_vpnc_vs_charon``: vpnc (client, namespace b) -> charon gateway (namespace a):
  Aggressive Mode group PSK, XAUTH, Mode Config virtual IP, ESP-in-UDP (force-natt),
  AES-256-CBC + HMAC-SHA1-96.
* ``run_charon_main_mode``: charon (initiator, a) -> charon (responder, b): IKEv1 Main Mode
  PSK, ``encap = yes`` (UDP/4500), ESP AES-GCM-16-128 by default.

Both capture the IKE and ESP traffic on a's veth with dumpcap, send a few pings through the
tunnel, then stop the peers inside the capture so that the DELETE notifications are in it too.
Used by the self-check test and by ``make_captures.py`` (which regenerates tests/vectors/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import NetnsPair, capture, run_in

from . import configs
from .strongswan import DEFAULT_LOG_LEVELS, KEY_LOG_LEVELS, Charon
from .vpnc import Vpnc

UNDERLAY_A = "10.77.0.1/24"
UNDERLAY_B = "10.77.0.2/24"
INNER_A = "10.78.0.1"  # on a's lo: what the tunnel reaches
INNER_B = "10.78.0.2"
PINGS = 3


@dataclass
class ScenarioResult:
    """What one run left behind (files stay under the work dir)."""

    pcap: Path
    list_sas: str
    """``swanctl --list-sas`` of charon in namespace a while the SAs were up."""
    children: list[dict[str, object]]
    """INSTALLED CHILD_SAs (parsed ``--list-sas --raw``) of charon in namespace a."""
    ping_output: str
    charon_logs: dict[str, str] = field(default_factory=dict)
    vpnc_events: list[dict[str, str]] = field(default_factory=list)
    vpnc_output: str = ""


def _levels(key_log: bool) -> dict[str, int]:
    return dict(KEY_LOG_LEVELS if key_log else DEFAULT_LOG_LEVELS)


def run_vpnc_vs_charon(workdir: Path, *, key_log: bool = False) -> ScenarioResult:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair:
        pair.add_addr(pair.a, f"{INNER_A}/32")
        gateway = Charon(workdir / "gw", pair.a, aggressive_psk=True, log_levels=_levels(key_log))
        with gateway:
            gateway.load(configs.vpnc_gateway(local=pair.addr_a))
            pcap = workdir / "vpnc-aggressive.pcap"
            with capture(pair.a, pair.if_a, pcap):
                client = Vpnc(
                    workdir / "vpnc",
                    pair.b,
                    gateway=pair.addr_a,
                    group=configs.VPNC_GROUP,
                    group_psk=configs.VPNC_GROUP_PSK,
                    user=configs.VPNC_USER,
                    password=configs.VPNC_PASSWORD,
                    routes=(f"{INNER_A}/32",),
                )
                with client:
                    client.wait_connected(timeout=30)
                    list_sas = gateway.list_sas()
                    children = gateway.established_children()
                    ping = run_in(
                        pair.b, ["ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", INNER_A], check=False
                    )
                    client.stop(settle=0.5)  # DELETEs go out inside the capture
                gateway.stop()
        return ScenarioResult(
            pcap=pcap,
            list_sas=list_sas,
            children=children,
            ping_output=ping.stdout + ping.stderr,
            charon_logs={"gateway": gateway.log_text()},
            vpnc_events=client.events(),
            vpnc_output=client.output(),
        )


def run_charon_main_mode(
    workdir: Path, *, key_log: bool = False, esp_proposals: str = "aes128gcm16", name: str = "s2s"
) -> ScenarioResult:
    with NetnsPair(UNDERLAY_A, UNDERLAY_B) as pair:
        pair.add_addr(pair.a, f"{INNER_A}/32")
        pair.add_addr(pair.b, f"{INNER_B}/32")
        initiator = Charon(workdir / "initiator", pair.a, log_levels=_levels(key_log))
        responder = Charon(workdir / "responder", pair.b, log_levels=_levels(key_log))
        with initiator, responder:
            initiator.load(
                configs.s2s_main_mode_psk(
                    local=pair.addr_a,
                    remote=pair.addr_b,
                    local_ts=f"{INNER_A}/32",
                    remote_ts=f"{INNER_B}/32",
                    esp_proposals=esp_proposals,
                    name=name,
                )
            )
            responder.load(
                configs.s2s_main_mode_psk(
                    local=pair.addr_b,
                    remote=pair.addr_a,
                    local_ts=f"{INNER_B}/32",
                    remote_ts=f"{INNER_A}/32",
                    esp_proposals=esp_proposals,
                    name=name,
                )
            )
            pcap = workdir / "charon-mainmode.pcap"
            with capture(pair.a, pair.if_a, pcap):
                initiator.initiate(name)
                list_sas = initiator.list_sas()
                children = initiator.established_children()
                ping = run_in(
                    pair.a,
                    ["ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", "-I", INNER_A, INNER_B],
                    check=False,
                )
                initiator.stop()  # sends DELETE for the CHILD_SA and the IKE_SA
                responder.stop()
        return ScenarioResult(
            pcap=pcap,
            list_sas=list_sas,
            children=children,
            ping_output=ping.stdout + ping.stderr,
            charon_logs={"initiator": initiator.log_text(), "responder": responder.log_text()},
        )
