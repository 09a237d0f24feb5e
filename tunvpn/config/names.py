"""Names a user writes for protocol numbers: DH groups (``ecp256``, ``modp2048``, ``dh2``, ...)."""

from __future__ import annotations

from tunvpn.ike.constants import DHGroup

_GROUP_ALIASES = {
    "modp1024": DHGroup.MODP_1024, "dh2": DHGroup.MODP_1024, "modp1536": DHGroup.MODP_1536,
    "dh5": DHGroup.MODP_1536, "modp2048": DHGroup.MODP_2048, "modp3072": DHGroup.MODP_3072,
    "modp4096": DHGroup.MODP_4096, "ecp256": DHGroup.ECP_256, "ecp384": DHGroup.ECP_384,
    "ecp521": DHGroup.ECP_521, "curve25519": DHGroup.CURVE25519, "x25519": DHGroup.CURVE25519,
}  # fmt: skip


def parse_dh_group(text: str) -> DHGroup:
    """``ecp256``, ``modp2048``, ``dh2``, ``MODP_1024`` or the IANA number."""
    key = text.strip().lower().replace("_", "").replace("-", "")
    if key.isdigit():
        try:
            return DHGroup(int(key))
        except ValueError:
            pass
    elif key in _GROUP_ALIASES:
        return _GROUP_ALIASES[key]
    names = ", ".join(sorted(_GROUP_ALIASES))
    raise ValueError(f"unknown DH group {text!r} (one of {names}, or a group number)")
