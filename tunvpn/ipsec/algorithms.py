"""The IPsec DOI's ESP registries (RFC 2407 section 4.4.4 and 4.5), as IntEnums.

Quick Mode negotiates these numbers (:mod:`tunvpn.ike.quickmode`) and the ESP core
implements them (:mod:`tunvpn.esp.transforms`); they live here so that neither core imports
the other. The rest of the IKE registries stay in :mod:`tunvpn.ike.constants`.
"""

from __future__ import annotations

from enum import IntEnum


class EncapsulationMode(IntEnum):
    """RFC 2407 section 4.5, RFC 3947 section 5.2; draft values used by older peers."""

    TUNNEL = 1
    TRANSPORT = 2
    UDP_TUNNEL = 3
    UDP_TRANSPORT = 4
    UDP_TUNNEL_DRAFT = 61443
    UDP_TRANSPORT_DRAFT = 61444


class AuthAlgorithm(IntEnum):
    """RFC 2407 section 4.5; SHA2 from RFC 4868 section 2.4."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    DES_MAC = 3
    KPDK = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    HMAC_RIPEMD = 8
    AES_XCBC_MAC = 9


class EspTransform(IntEnum):
    """RFC 2407 section 4.4.4 and IANA "IPsec ESP Transform Identifiers"."""

    DES = 2
    DES3 = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 23
    # Private use (249-255). Used between tunvpn peers only, announced by the
    # tunvpn vendor ID; see docs/protocol.md.
    CHACHA20_POLY1305_PRIVATE = 250


__all__ = ["AuthAlgorithm", "EncapsulationMode", "EspTransform"]
