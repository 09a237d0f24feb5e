"""Vendor IDs and NAT traversal (RFC 3947): NAT-D hashes, NAT detection and the float to 4500."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import crypto
from .constants import (
    VendorId,
)
from .fragments import FRAGMENTATION_VID_PHASE1, is_fragmentation_vid
from .messages import (
    NatDPayload,
    Payload,
    RawPayload,
    VendorIDPayload,
)
from .sa import Address, IkeSA
from .sa import find_payloads as _find

if TYPE_CHECKING:
    from .config import EngineConfig

log = logging.getLogger(__name__)

BASE_MODE_V2_VID = bytes.fromhex("4037cfa7e4a81ece25ac81bd9bd84f6a")
"""MD5("tunvpn base mode v2"): the sender speaks Base Mode as docs/protocol.md defines it
(cookie round, both authentication payloads keyed with g^xy). Sent only in Base Mode."""

VID_NAMES = {
    VendorId.XAUTH: "xauth",
    VendorId.CISCO_UNITY: "unity",
    VendorId.DPD: "dpd",
    VendorId.NATT_RFC3947: "nat-t",
    VendorId.TUNVPN: "tunvpn",
    BASE_MODE_V2_VID: "base-v2",
    **{vid: "nat-t-draft" for vid in VendorId.NATT_DRAFTS},
}


def vendor_ids(config: EngineConfig, *, xauth: bool, peer: IkeSA | None = None) -> list[Payload]:
    """Our Vendor IDs for a phase 1 message; ``peer``: the SA a responder answers (IKE
    fragmentation is announced to a peer that announced it, as strongSwan does)."""
    vids = []
    if xauth:
        vids.append(VendorId.XAUTH)
    if config.unity:
        vids.append(VendorId.CISCO_UNITY)
    vids.append(VendorId.DPD)
    if config.natt:
        vids += [
            VendorId.NATT_RFC3947,
            VendorId.NATT_DRAFT_03,
            VendorId.NATT_DRAFT_02N,
            VendorId.NATT_DRAFT_02,
        ]
    if config.tunvpn_extensions:
        vids.append(VendorId.TUNVPN)
    if config.fragmentation != "no" and (peer is None or "fragmentation" in peer.peer_vendor_ids):
        vids.append(FRAGMENTATION_VID_PHASE1)
    return [VendorIDPayload(v) for v in vids]


def note_vendor_ids(config: EngineConfig, sa: IkeSA, payloads: list[RawPayload]) -> None:
    """Record the peer's Vendor IDs on ``sa`` and what they mean (NAT-T, tunvpn extensions)."""
    for raw in _find(payloads, VendorIDPayload):
        assert isinstance(raw.payload, VendorIDPayload)
        data = raw.payload.data
        name = VID_NAMES.get(data)
        if name is None and data[:14] == VendorId.DPD[:14]:
            name = "dpd"
        if name is None and data[:12] == VendorId.CISCO_UNITY[:12]:
            name = "unity"
        if name is None and is_fragmentation_vid(data):
            name = "fragmentation"
        if name:
            sa.peer_vendor_ids.add(name)
    if config.natt:
        if "nat-t" in sa.peer_vendor_ids:
            sa.natt, sa.natt_draft = True, False
        elif "nat-t-draft" in sa.peer_vendor_ids:
            sa.natt, sa.natt_draft = True, True
    sa.tunvpn_peer = config.tunvpn_extensions and "tunvpn" in sa.peer_vendor_ids


def natd_hash(sa: IkeSA, addr: Address, rcookie: bytes | None = None) -> bytes:
    """HASH(CKY-I | CKY-R | IP | Port) (RFC 3947 section 3.2); ``rcookie`` overrides CKY-R
    (Base Mode message 3 is sent before the responder's cookie exists: zeros)."""
    assert sa.suite is not None
    import ipaddress

    packed = ipaddress.ip_address(addr[0]).packed + struct.pack("!H", addr[1])
    cky_r = sa.rcookie if rcookie is None else rcookie
    return crypto.hash_digest(sa.suite.hash, sa.icookie + cky_r + packed)


def natd_payloads(config: EngineConfig, sa: IkeSA, random_bytes: Callable[[int], bytes]) -> list[Payload]:
    """NAT-D payloads (RFC 3947 section 3.2): the peer's address first, then ours."""
    if not sa.natt:
        return []
    remote = natd_hash(sa, sa.remote)
    local = natd_hash(sa, sa.local)
    if config.force_encap:
        local = random_bytes(len(local))  # pretend to sit behind a NAT (strongSwan encap=yes)
    return [NatDPayload(remote, sa.natt_draft), NatDPayload(local, sa.natt_draft)]


def check_natd(
    config: EngineConfig, sa: IkeSA, payloads: list[RawPayload], *, rcookie: bytes | None = None
) -> None:
    """Compare the peer's NAT-D hashes with ours: who is behind a NAT (RFC 3947 section 3.2)."""
    if not sa.natt:
        return
    natds = [p.payload.data for p in _find(payloads, NatDPayload) if isinstance(p.payload, NatDPayload)]
    if len(natds) < 2:
        return  # the peer did not do NAT-D after all
    sa.nat_local = not crypto.constant_time_equal(natds[0], natd_hash(sa, sa.local, rcookie))
    peer_hash = natd_hash(sa, sa.remote, rcookie)
    sa.nat_remote = not any(crypto.constant_time_equal(h, peer_hash) for h in natds[1:])
    if config.force_encap:
        sa.nat_local = True


def maybe_float(config: EngineConfig, sa: IkeSA) -> None:
    """RFC 3947 section 4: the initiator moves to port 4500 once a NAT is seen."""
    if sa.natt and (sa.nat_local or sa.nat_remote) and not sa.floated:
        sa.floated = True
        sa.local = (sa.local[0], config.natt_port)
        sa.remote = (sa.remote[0], config.peer_natt_port)
