"""IANA and de-facto registries for IKEv1 / ISAKMP, as IntEnums.

Each enum cites the document its numbers come from. Values were checked against
RFC 2407, 2408, 2409, 3706, 3947 and 4304, draft-dukes-ike-mode-cfg-02 and
draft-beaulieu-ike-xauth-02, and the tables in strongSwan, racoon and vpnc.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

ISAKMP_VERSION = 0x10  # major 1, minor 0 (RFC 2408 section 3.1)
HEADER_SIZE = 28  # RFC 2408 section 3.1 (also tunvpn.ipsec.udpencap.IKE_HEADER_SIZE)
# NON_ESP_MARKER and NAT_KEEPALIVE (RFC 3948) are in tunvpn.ipsec.udpencap.
IKE_PORT = 500
NATT_PORT = 4500


class ExchangeType(IntEnum):
    """RFC 2408 section 3.1, RFC 2409 section 5 and 5.5."""

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2  # Main Mode
    AUTHENTICATION_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    TRANSACTION = 6  # Mode Config / XAUTH (draft-dukes-ike-mode-cfg-02)
    QUICK_MODE = 32
    NEW_GROUP_MODE = 33


class HeaderFlag(IntFlag):
    """RFC 2408 section 3.1."""

    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTHENTICATION_ONLY = 0x04


class PayloadType(IntEnum):
    """RFC 2408 section 3.1, RFC 2408 section 4 of the Mode Config draft, RFC 3947."""

    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    NOTIFICATION = 11
    DELETE = 12
    VENDOR_ID = 13
    ATTRIBUTE = 14  # draft-dukes-ike-mode-cfg-02 section 3.2
    NAT_D = 20  # RFC 3947 section 3.2
    NAT_OA = 21  # RFC 3947 section 5.1
    NAT_D_DRAFT = 130  # draft-ietf-ipsec-nat-t-ike-02/03
    NAT_OA_DRAFT = 131
    FRAGMENT_CISCO = 132


class NotifyType(IntEnum):
    """RFC 2408 section 3.14.1 (errors), RFC 2407 section 4.6.3, RFC 3706 (status)."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576  # RFC 2407 section 4.6.3.1
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136  # RFC 3706 section 5.1
    R_U_THERE_ACK = 36137
    CISCO_LOAD_BALANCE = 40501

    @property
    def is_error(self) -> bool:
        return self.value < 8192


class ProtocolId(IntEnum):
    """RFC 2407 section 4.4.1."""

    ISAKMP = 1
    AH = 2
    ESP = 3
    IPCOMP = 4


DOI_IPSEC = 1  # RFC 2407 section 4.2
SIT_IDENTITY_ONLY = 1  # RFC 2407 section 4.2
KEY_IKE = 1  # RFC 2407 section 4.4.2: the only phase 1 transform ID


class IdType(IntEnum):
    """RFC 2407 section 4.6.2.1."""

    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class CertEncoding(IntEnum):
    """RFC 2408 section 3.9."""

    PKCS7 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    X509_KEY_EXCHANGE = 5
    KERBEROS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


# --------------------------------------------------------------- phase 1 (Oakley)


class Phase1Attr(IntEnum):
    """RFC 2409 appendix A, attribute classes."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class LifeType(IntEnum):
    """RFC 2409 appendix A (phase 1) and RFC 2407 section 4.5 (phase 2): same values."""

    SECONDS = 1
    KILOBYTES = 2


class EncryptionAlgorithm(IntEnum):
    """RFC 2409 appendix A; AES-CBC from RFC 3602 section 5 / IANA."""

    DES_CBC = 1
    IDEA_CBC = 2
    BLOWFISH_CBC = 3
    RC5_R16_B64_CBC = 4
    DES3_CBC = 5
    CAST_CBC = 6
    AES_CBC = 7
    CAMELLIA_CBC = 8


class HashAlgorithm(IntEnum):
    """RFC 2409 appendix A; SHA2 values from IANA (RFC 4868 section 2.4)."""

    MD5 = 1
    SHA1 = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class AuthMethod(IntEnum):
    """RFC 2409 appendix A; ECDSA from RFC 4754; hybrid and XAUTH from the drafts."""

    PRE_SHARED_KEY = 1
    DSS_SIGNATURES = 2
    RSA_SIGNATURES = 3
    RSA_ENCRYPTION = 4
    RSA_REVISED_ENCRYPTION = 5
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    HYBRID_INIT_RSA = 64221
    HYBRID_RESP_RSA = 64222
    HYBRID_INIT_DSS = 64223
    HYBRID_RESP_DSS = 64224
    XAUTH_INIT_PRESHARED = 65001  # draft-beaulieu-ike-xauth-02 section 5
    XAUTH_RESP_PRESHARED = 65002
    XAUTH_INIT_DSS = 65003
    XAUTH_RESP_DSS = 65004
    XAUTH_INIT_RSA = 65005
    XAUTH_RESP_RSA = 65006
    XAUTH_INIT_RSA_ENCRYPTION = 65007
    XAUTH_RESP_RSA_ENCRYPTION = 65008
    XAUTH_INIT_RSA_REVISED_ENCRYPTION = 65009
    XAUTH_RESP_RSA_REVISED_ENCRYPTION = 65010


class DHGroup(IntEnum):
    """RFC 2409 section 6, RFC 3526, RFC 5903, RFC 5114; 31 as used by strongSwan/Libreswan."""

    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31


# --------------------------------------------------------------- phase 2 (IPsec DOI)


class IPsecAttr(IntEnum):
    """RFC 2407 section 4.5; ESN from RFC 4304."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9
    ECN_TUNNEL = 10
    EXTENDED_SEQUENCE_NUMBER = 11


# The values of ENCAPSULATION_MODE, AUTHENTICATION_ALGORITHM and the ESP transform IDs
# (EncapsulationMode, AuthAlgorithm, EspTransform) are in tunvpn.ipsec.algorithms: the ESP
# core needs them too.


# --------------------------------------------------------------- Mode Config / XAUTH


class CfgType(IntEnum):
    """draft-dukes-ike-mode-cfg-02 section 3.2."""

    REQUEST = 1
    REPLY = 2
    SET = 3
    ACK = 4


class CfgAttr(IntEnum):
    """draft-dukes-ike-mode-cfg-02 section 3.3; XAUTH (draft-beaulieu-ike-xauth-02 section 6);
    Cisco Unity private attributes (strongSwan attributes.h, racoon isakmp_unity.h)."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_ADDRESS_EXPIRY = 5
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_NETMASK = 9
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_NBNS = 11
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    XAUTH_TYPE = 16520
    XAUTH_USER_NAME = 16521
    XAUTH_USER_PASSWORD = 16522
    XAUTH_PASSCODE = 16523
    XAUTH_MESSAGE = 16524
    XAUTH_CHALLENGE = 16525
    XAUTH_DOMAIN = 16526
    XAUTH_STATUS = 16527
    XAUTH_NEXT_PIN = 16528
    XAUTH_ANSWER = 16529
    UNITY_BANNER = 28672
    UNITY_SAVE_PASSWD = 28673
    UNITY_DEF_DOMAIN = 28674
    UNITY_SPLITDNS_NAME = 28675
    UNITY_SPLIT_INCLUDE = 28676
    UNITY_NATT_PORT = 28677
    UNITY_LOCAL_LAN = 28678
    UNITY_PFS = 28679
    UNITY_FW_TYPE = 28680
    UNITY_BACKUP_SERVERS = 28681
    UNITY_DDNS_HOSTNAME = 28682


class XauthType(IntEnum):
    """draft-beaulieu-ike-xauth-02 section 6.3 (XAUTH-TYPE values)."""

    GENERIC = 0
    RADIUS_CHAP = 1
    OTP = 2
    SKEY = 3


class XauthStatus(IntEnum):
    """draft-beaulieu-ike-xauth-02 section 6.2 (XAUTH-STATUS)."""

    FAIL = 0
    OK = 1


# --------------------------------------------------------------- vendor IDs


class VendorId:
    """Vendor ID payload contents that change behaviour."""

    XAUTH = bytes.fromhex("09002689dfd6b712")
    CISCO_UNITY = bytes.fromhex("12f5f28c457168a9702d9fe274cc0100")
    DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")  # RFC 3706 section 5.1
    NATT_RFC3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")
    NATT_DRAFT_03 = bytes.fromhex("7d9419a65310ca6f2c179d9215529d56")
    NATT_DRAFT_02N = bytes.fromhex("90cb80913ebb696e086381b5ec427b1f")
    NATT_DRAFT_02 = bytes.fromhex("cd60464335df21f87cfdb2fc68b6a448")
    NATT_DRAFT_01 = bytes.fromhex("16f6ca16e4a4066d83821a0f0aeaa862")
    NATT_DRAFT_00 = bytes.fromhex("4485152d18b6bbcd0be8a8469579ddcc")
    # tunvpn's own: MD5("tunvpn dynamic configuration v1"), see docs/protocol.md.
    TUNVPN = bytes.fromhex("20c222e9d4daa937a28d647f1127e4a3")

    NATT_ALL = (NATT_RFC3947, NATT_DRAFT_03, NATT_DRAFT_02N, NATT_DRAFT_02, NATT_DRAFT_01, NATT_DRAFT_00)
    NATT_DRAFTS = (NATT_DRAFT_03, NATT_DRAFT_02N, NATT_DRAFT_02, NATT_DRAFT_01, NATT_DRAFT_00)
