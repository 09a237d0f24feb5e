"""Real peers' bytes into our engine: vpnc's Aggressive Mode opening (captured by
tests/interop/make_captures.py, see tests/vectors/captures.py for the exact set-up)."""

from __future__ import annotations

from tests.vectors import captures
from tunvpn.ike import events as ev
from tunvpn.ike.config import EngineConfig, PskTable
from tunvpn.ike.constants import ExchangeType, PayloadType, VendorId
from tunvpn.ike.engine import IkeEngine
from tunvpn.ike.messages import SAPayload, decode_header, decode_payloads, payload_type_of
from tunvpn.ike.proposals import Phase1Policy, Phase1Suite

VPNC = ("10.77.0.2", 500)
GATEWAY = ("10.77.0.1", 500)


def _gateway(**kw) -> IkeEngine:
    config = EngineConfig(
        psks=PskTable({"keyid:tvgroup": captures.PSK_VPNC_GROUP.encode()}),
        phase1=Phase1Policy.with_legacy(),
        allow_aggressive_psk=True,
        require_xauth=True,
        **kw,
    )
    return IkeEngine(config)


def test_vpnc_aggressive_mode_opening_gets_a_complete_answer() -> None:
    gw = _gateway()
    gw.receive_datagram(captures.VPNC_AM1, VPNC, GATEWAY, 1_800_000_000.0)
    ((answer, remote, port),) = gw.datagrams_to_send()
    assert remote == VPNC and port == 500
    header = decode_header(answer)
    assert header.exchange == ExchangeType.AGGRESSIVE and header.icookie == captures.VPNC_ICOOKIE
    payloads = decode_payloads(header.next_payload, answer[28:])
    kinds = [payload_type_of(p.payload) for p in payloads]
    assert kinds[:5] == [PayloadType.SA, PayloadType.KE, PayloadType.NONCE, PayloadType.ID, PayloadType.HASH]
    assert kinds.count(PayloadType.NAT_D) == 2
    chosen = payloads[0].payload
    assert isinstance(chosen, SAPayload) and len(chosen.proposals[0].transforms) == 1
    suite = Phase1Suite.from_transform(chosen.proposals[0].transforms[0])
    # vpnc offers AES-256/192/128, 3DES, DES x SHA1/MD5 with MODP-1024; the strongest wins
    assert str(suite) == "aes256-sha1-modp_1024/xauth_init_preshared"
    vids = {p.payload.data for p in payloads if type(p.payload).__name__ == "VendorIDPayload"}
    assert {VendorId.XAUTH, VendorId.DPD, VendorId.NATT_RFC3947} <= vids
    assert gw.next_event() is None  # nothing established or failed yet


def test_vpnc_opening_is_refused_without_the_legacy_opt_in() -> None:
    config = EngineConfig(
        psks=PskTable({"keyid:tvgroup": b"x"}), allow_aggressive_psk=True, require_xauth=True
    )
    gw = IkeEngine(config)
    gw.receive_datagram(captures.VPNC_AM1, VPNC, GATEWAY, 1_800_000_000.0)
    error = gw.next_event()
    assert isinstance(error, ev.ProtocolError) and "NO_PROPOSAL_CHOSEN" in error.error
    ((notify, _, _),) = gw.datagrams_to_send()
    assert decode_header(notify).exchange == ExchangeType.INFORMATIONAL


def test_charon_main_mode_opening_is_accepted() -> None:
    gw = IkeEngine(EngineConfig(psks=PskTable({"*": b"x"})))
    gw.receive_datagram(captures.CHARON_MM1, ("10.77.0.1", 500), ("10.77.0.2", 500), 1_800_000_000.0)
    ((answer, _, _),) = gw.datagrams_to_send()
    header = decode_header(answer)
    payloads = decode_payloads(header.next_payload, answer[28:])
    sa = payloads[0].payload
    assert isinstance(sa, SAPayload)
    assert gw.next_event() is None
