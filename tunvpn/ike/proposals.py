"""Proposal enumeration and selection (the seed text, FIG. 6 items 601 and 610).

The initiator offers *every* permutation of the algorithms its policy allows, ordered most
secure first; the responder walks the offer in order and takes the first transform its own
policy allows, so the strongest suite both sides support wins.

Strength order (documented in docs/proposals.md). Each algorithm gets a security strength in
bits after NIST SP 800-57 part 1 table 2/3 (HMAC strengths capped at the key size we use):

=================  =======  ==================  =======  =================  =======
encryption         bits     hash / PRF          bits     DH group           bits
=================  =======  ==================  =======  =================  =======
AES-CBC-256        256      SHA2-512            256      21 ECP-521         256
AES-CBC-192        192      SHA2-384            192      20 ECP-384         192
AES-CBC-128        128      SHA2-256            128      16 MODP-4096       152
3DES (legacy)      112      SHA1                 80      31 Curve25519      128
DES (legacy)        56      MD5 (legacy)         64      19 ECP-256         128
                                                         15 MODP-3072       128
                                                         14 MODP-2048       112
                                                          5 MODP-1536 (leg.) 96
                                                          2 MODP-1024 (leg.) 80
=================  =======  ==================  =======  =================  =======

A suite's strength is its weakest part; ties are broken by group, then encryption, then hash
strength, and finally by the order of the table (so Curve25519 precedes ECP-256, which is
faster to compute than MODP-3072 of the same strength).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..ipsec.algorithms import AuthAlgorithm, EncapsulationMode, EspTransform
from .constants import (
    KEY_IKE,
    AuthMethod,
    DHGroup,
    EncryptionAlgorithm,
    HashAlgorithm,
    IPsecAttr,
    LifeType,
    NotifyType,
    Phase1Attr,
    ProtocolId,
)
from .errors import LocalProtocolError, NoProposalChosen, RemoteProtocolError
from .messages import DataAttribute, Proposal, SAPayload, Transform

# ----------------------------------------------------------------------------- strengths

ENCRYPTION_STRENGTH: dict[tuple[EncryptionAlgorithm, int | None], int] = {
    (EncryptionAlgorithm.AES_CBC, 256): 256,
    (EncryptionAlgorithm.AES_CBC, 192): 192,
    (EncryptionAlgorithm.AES_CBC, 128): 128,
    (EncryptionAlgorithm.DES3_CBC, None): 112,
    (EncryptionAlgorithm.DES_CBC, None): 56,
}
HASH_STRENGTH: dict[HashAlgorithm, int] = {
    HashAlgorithm.SHA2_512: 256,
    HashAlgorithm.SHA2_384: 192,
    HashAlgorithm.SHA2_256: 128,
    HashAlgorithm.SHA1: 80,
    HashAlgorithm.MD5: 64,
}
GROUP_STRENGTH: dict[DHGroup, int] = {
    DHGroup.ECP_521: 256,
    DHGroup.ECP_384: 192,
    DHGroup.MODP_4096: 152,
    DHGroup.CURVE25519: 128,
    DHGroup.ECP_256: 128,
    DHGroup.MODP_3072: 128,
    DHGroup.MODP_2048: 112,
    DHGroup.MODP_1536: 96,
    DHGroup.MODP_1024: 80,
}
LEGACY_ENCRYPTION = frozenset({EncryptionAlgorithm.DES3_CBC, EncryptionAlgorithm.DES_CBC})
LEGACY_HASHES = frozenset({HashAlgorithm.MD5})
LEGACY_GROUPS = frozenset({DHGroup.MODP_1024, DHGroup.MODP_1536})

DEFAULT_ENCRYPTION: tuple[tuple[EncryptionAlgorithm, int | None], ...] = (
    (EncryptionAlgorithm.AES_CBC, 256),
    (EncryptionAlgorithm.AES_CBC, 192),
    (EncryptionAlgorithm.AES_CBC, 128),
)
DEFAULT_HASHES = (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256, HashAlgorithm.SHA1)
DEFAULT_GROUPS = (
    DHGroup.ECP_521,
    DHGroup.ECP_384,
    DHGroup.MODP_4096,
    DHGroup.CURVE25519,
    DHGroup.ECP_256,
    DHGroup.MODP_3072,
    DHGroup.MODP_2048,
)
LEGACY_EXTRA_ENCRYPTION = ((EncryptionAlgorithm.DES3_CBC, None),)
LEGACY_EXTRA_HASHES = (HashAlgorithm.MD5,)
LEGACY_EXTRA_GROUPS = (DHGroup.MODP_1536, DHGroup.MODP_1024)

_ORDER_GROUPS = list(GROUP_STRENGTH)
_ORDER_HASHES = list(HASH_STRENGTH)
_ORDER_ENC = list(ENCRYPTION_STRENGTH)

MAX_TRANSFORMS = 255  # the transform number is one octet (RFC 2408 section 3.6)
ESN_64_BIT = 1  # RFC 4304 section 2: Extended (64-bit) Sequence Number attribute value


def _weak_names(
    enc: tuple[EncryptionAlgorithm, int | None], hash_alg: HashAlgorithm, group: DHGroup
) -> list[str]:
    weak = []
    if enc[0] in LEGACY_ENCRYPTION:
        weak.append(enc[0].name)
    if hash_alg in LEGACY_HASHES:
        weak.append(hash_alg.name)
    if group in LEGACY_GROUPS:
        weak.append(group.name)
    return weak


# ----------------------------------------------------------------------------- phase 1


@dataclass(frozen=True, slots=True)
class Phase1Suite:
    """One phase 1 transform: the algorithms of an ISAKMP SA."""

    encryption: EncryptionAlgorithm
    key_length: int | None
    hash: HashAlgorithm
    group: DHGroup
    auth: AuthMethod
    lifetime: int = 28800
    """Lifetime in seconds."""

    @property
    def strength(self) -> int:
        return min(
            ENCRYPTION_STRENGTH[(self.encryption, self.key_length)],
            HASH_STRENGTH[self.hash],
            GROUP_STRENGTH[self.group],
        )

    @property
    def is_legacy(self) -> bool:
        return bool(_weak_names((self.encryption, self.key_length), self.hash, self.group))

    def sort_key(self) -> tuple[int, ...]:
        return (
            -self.strength,
            -GROUP_STRENGTH[self.group],
            -ENCRYPTION_STRENGTH[(self.encryption, self.key_length)],
            -HASH_STRENGTH[self.hash],
            _ORDER_GROUPS.index(self.group),
            _ORDER_ENC.index((self.encryption, self.key_length)),
            _ORDER_HASHES.index(self.hash),
        )

    def __str__(self) -> str:
        enc = self.encryption.name.replace("_CBC", "").lower()
        if self.key_length:
            enc += str(self.key_length)
        hash_name = self.hash.name.lower().replace("sha2_", "sha")
        return f"{enc}-{hash_name}-{self.group.name.lower()}/{self.auth.name.lower()}"

    def to_transform(self, number: int) -> Transform:
        attrs = [DataAttribute(Phase1Attr.ENCRYPTION_ALGORITHM, int(self.encryption))]
        if self.key_length is not None:
            attrs.append(DataAttribute(Phase1Attr.KEY_LENGTH, self.key_length))
        attrs += [
            DataAttribute(Phase1Attr.HASH_ALGORITHM, int(self.hash)),
            DataAttribute(Phase1Attr.AUTHENTICATION_METHOD, int(self.auth)),
            DataAttribute(Phase1Attr.GROUP_DESCRIPTION, int(self.group)),
            DataAttribute(Phase1Attr.LIFE_TYPE, int(LifeType.SECONDS)),
            DataAttribute.auto(Phase1Attr.LIFE_DURATION, self.lifetime),
        ]
        return Transform(number, KEY_IKE, tuple(attrs))

    @classmethod
    def from_transform(cls, t: Transform, field: str = "SA.transform") -> Phase1Suite | None:
        """Decode one offered transform; ``None`` when it uses something we do not implement."""
        values: dict[int, int] = {}
        lifetime = 28800
        life_type: int | None = None
        for a in t.attributes:
            if a.type == Phase1Attr.LIFE_TYPE:
                life_type = a.as_int()
            elif a.type == Phase1Attr.LIFE_DURATION:
                if life_type == LifeType.SECONDS:
                    lifetime = a.as_int()
            else:
                values[a.type] = a.as_int()
        if t.transform_id != KEY_IKE:
            return None
        try:
            enc = EncryptionAlgorithm(values[Phase1Attr.ENCRYPTION_ALGORITHM])
            hash_alg = HashAlgorithm(values[Phase1Attr.HASH_ALGORITHM])
            auth = AuthMethod(values[Phase1Attr.AUTHENTICATION_METHOD])
            group = DHGroup(values[Phase1Attr.GROUP_DESCRIPTION])
        except KeyError as exc:
            raise RemoteProtocolError(
                f"phase 1 transform {t.number} lacks a mandatory attribute", field=field
            ) from exc
        except ValueError:
            return None
        key_length = values.get(Phase1Attr.KEY_LENGTH)
        if enc == EncryptionAlgorithm.AES_CBC and key_length is None:
            key_length = 128  # RFC 3602 / strongSwan: AES without Key Length means 128
        if Phase1Attr.PRF in values and values[Phase1Attr.PRF] != 0:
            return None  # no one implements the IKEv1 PRF attribute; HMAC of the hash is used
        if (enc, key_length) not in ENCRYPTION_STRENGTH or hash_alg not in HASH_STRENGTH:
            return None
        if group not in GROUP_STRENGTH:
            return None
        return cls(enc, key_length, hash_alg, group, auth, lifetime)


@dataclass(frozen=True, slots=True)
class Phase1Policy:
    """What one side allows in phase 1. The defaults are the strong set; legacy needs opt-in."""

    encryption: tuple[tuple[EncryptionAlgorithm, int | None], ...] = DEFAULT_ENCRYPTION
    hashes: tuple[HashAlgorithm, ...] = DEFAULT_HASHES
    groups: tuple[DHGroup, ...] = DEFAULT_GROUPS
    lifetime: int = 28800
    allow_legacy: bool = False
    """Opt-in for 3DES, MD5 and MODP-1024/1536 (needed for vpnc, which offers only MODP-1024)."""

    def __post_init__(self) -> None:
        for enc in self.encryption:
            if enc not in ENCRYPTION_STRENGTH:
                raise LocalProtocolError(f"unsupported phase 1 encryption {enc}")
        for h in self.hashes:
            if h not in HASH_STRENGTH:
                raise LocalProtocolError(f"unsupported phase 1 hash {h!r}")
        for g in self.groups:
            if g not in GROUP_STRENGTH:
                raise LocalProtocolError(f"unsupported DH group {g!r}")
        if not self.allow_legacy:
            weak = [f"{e.name}" for e, _ in self.encryption if e in LEGACY_ENCRYPTION]
            weak += [h.name for h in self.hashes if HashAlgorithm(h) in LEGACY_HASHES]
            weak += [g.name for g in self.groups if DHGroup(g) in LEGACY_GROUPS]
            if weak:
                raise LocalProtocolError(
                    f"weak phase 1 algorithms {', '.join(weak)} need allow_legacy = true"
                )

    @classmethod
    def with_legacy(cls) -> Phase1Policy:
        """The default strong set followed by the legacy algorithms (explicit opt-in)."""
        return cls(
            encryption=DEFAULT_ENCRYPTION + LEGACY_EXTRA_ENCRYPTION,
            hashes=DEFAULT_HASHES + LEGACY_EXTRA_HASHES,
            groups=DEFAULT_GROUPS + LEGACY_EXTRA_GROUPS,
            allow_legacy=True,
        )

    def allows(self, suite: Phase1Suite) -> bool:
        return (
            (suite.encryption, suite.key_length) in self.encryption
            and suite.hash in self.hashes
            and suite.group in self.groups
        )

    def groups_by_strength(self) -> list[DHGroup]:
        return sorted(self.groups, key=lambda g: (-GROUP_STRENGTH[g], _ORDER_GROUPS.index(g)))

    def enumerate(
        self, auth_methods: Sequence[AuthMethod], groups: Iterable[DHGroup] | None = None
    ) -> list[Phase1Suite]:
        """Every permutation the policy allows, strongest first (seed FIG. 6 item 601).

        ``auth_methods`` are in preference order (XAUTH variants first when we have a user
        name). When the full product exceeds 255 transforms the weakest are dropped.
        """
        chosen_groups = list(self.groups if groups is None else groups)
        suites = [
            Phase1Suite(enc, kl, h, g, a, self.lifetime)
            for (enc, kl), h, g in itertools.product(self.encryption, self.hashes, chosen_groups)
            for a in auth_methods
        ]
        suites.sort(key=lambda s: (*s.sort_key(), list(auth_methods).index(s.auth)))
        return suites[:MAX_TRANSFORMS]


def phase1_sa_payload(suites: Sequence[Phase1Suite]) -> SAPayload:
    """One ISAKMP proposal holding every suite as a transform (RFC 2409 section 5)."""
    if not suites:
        raise LocalProtocolError("no phase 1 suite to offer")
    transforms = tuple(s.to_transform(i + 1) for i, s in enumerate(suites))
    return SAPayload((Proposal(1, ProtocolId.ISAKMP, b"", transforms),))


def select_phase1_proposal(
    sa: SAPayload,
    policy: Phase1Policy,
    auth_ok: Iterable[AuthMethod],
    group: DHGroup | None = None,
) -> tuple[Phase1Suite, Proposal, Transform]:
    """Responder: the first offered transform our policy allows (seed FIG. 6 item 610).

    ``group`` restricts the choice to the group of an already received KE (Aggressive and
    Base Mode carry the key exchange in the first message).
    """
    allowed_auth = set(auth_ok)
    for pi, prop in enumerate(sa.proposals):
        if prop.protocol != ProtocolId.ISAKMP:
            continue
        for ti, t in enumerate(prop.transforms):
            suite = Phase1Suite.from_transform(t, f"SA.proposal[{pi}].transform[{ti}]")
            if suite is None or not policy.allows(suite) or suite.auth not in allowed_auth:
                continue
            if group is not None and suite.group != group:
                continue
            lifetime = min(suite.lifetime, policy.lifetime) if suite.lifetime else policy.lifetime
            chosen = Phase1Suite(
                suite.encryption, suite.key_length, suite.hash, suite.group, suite.auth, lifetime
            )
            return chosen, Proposal(prop.number, prop.protocol, prop.spi, (t,)), t
    raise NoProposalChosen("no offered phase 1 transform is allowed by our policy")


def check_phase1_answer(offered: Sequence[Phase1Suite], sa: SAPayload) -> Phase1Suite:
    """Initiator: the responder must answer with exactly one transform that we offered."""
    if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
        raise RemoteProtocolError(
            "responder must choose exactly one proposal and transform", NotifyType.BAD_PROPOSAL_SYNTAX, "SA"
        )
    suite = Phase1Suite.from_transform(sa.proposals[0].transforms[0])
    for s in offered:
        if suite is not None and (s.encryption, s.key_length, s.hash, s.group, s.auth) == (
            suite.encryption,
            suite.key_length,
            suite.hash,
            suite.group,
            suite.auth,
        ):
            return Phase1Suite(
                s.encryption, s.key_length, s.hash, s.group, s.auth, suite.lifetime or s.lifetime
            )
    raise NoProposalChosen("responder chose a transform we did not offer")


# ----------------------------------------------------------------------------- phase 2


@dataclass(frozen=True, slots=True)
class EspSuite:
    """One ESP transform of a Quick Mode proposal."""

    transform: EspTransform
    key_length: int | None
    auth: AuthAlgorithm | None

    @property
    def is_aead(self) -> bool:
        return self.transform in (
            EspTransform.AES_GCM_16,
            EspTransform.AES_GCM_12,
            EspTransform.AES_GCM_8,
            EspTransform.CHACHA20_POLY1305_PRIVATE,
        )

    @property
    def is_private(self) -> bool:
        return self.transform == EspTransform.CHACHA20_POLY1305_PRIVATE

    @property
    def wire_key_length(self) -> int | None:
        """The key length to send in a ``CFG_`` set: none for a fixed-length cipher
        (ChaCha20-Poly1305 is always 256 bits; docs/protocol.md)."""
        return None if self.transform in FIXED_KEY_LENGTH else self.key_length

    @classmethod
    def from_wire(
        cls, transform: EspTransform, key_length: int | None, auth: AuthAlgorithm | None
    ) -> EspSuite:
        """The suite a ``CFG_`` set names: a fixed-length cipher's key length filled in."""
        if key_length is None:
            key_length = FIXED_KEY_LENGTH.get(transform)
        return cls(transform, key_length, auth)

    @property
    def is_legacy(self) -> bool:
        return self.transform in (EspTransform.DES, EspTransform.DES3) or self.auth == AuthAlgorithm.HMAC_MD5

    def __str__(self) -> str:
        names = {
            EspTransform.AES_GCM_16: "aes{}gcm16",
            EspTransform.AES_CBC: "aes{}",
            EspTransform.CHACHA20_POLY1305_PRIVATE: "chacha20poly1305",
            EspTransform.DES3: "3des",
        }
        text = names.get(self.transform, self.transform.name.lower()).format(self.key_length or "")
        if self.auth is not None:
            text += "-" + self.auth.name.lower().replace("hmac_", "").replace("sha2_", "sha")
        return text


FIXED_KEY_LENGTH: dict[EspTransform, int] = {EspTransform.CHACHA20_POLY1305_PRIVATE: 256}
"""ESP ciphers with one key length: no Key Length is sent for them in a ``CFG_`` set."""

# Strongest first: AEAD with 256-bit keys, then 128-bit AEAD, then CBC+HMAC by key size.
DEFAULT_ESP: tuple[EspSuite, ...] = (
    EspSuite(EspTransform.AES_GCM_16, 256, None),
    EspSuite(EspTransform.CHACHA20_POLY1305_PRIVATE, 256, None),
    EspSuite(EspTransform.AES_GCM_16, 128, None),
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_512),
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256),
    EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA2_256),
)
LEGACY_ESP: tuple[EspSuite, ...] = (
    EspSuite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA1),
    EspSuite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1),
    EspSuite(EspTransform.DES3, None, AuthAlgorithm.HMAC_SHA1),
)


@dataclass(frozen=True, slots=True)
class ChildProposal:
    """Everything one Quick Mode negotiates for one IPsec SA, apart from the selectors."""

    esp: tuple[EspSuite, ...] = DEFAULT_ESP
    pfs_group: DHGroup | None = DHGroup.ECP_256
    lifetime_seconds: int = 3600
    lifetime_kilobytes: int = 0
    """0 means no volume limit."""
    encapsulation: EncapsulationMode = EncapsulationMode.TUNNEL
    """TUNNEL; the engine turns it into UDP_TUNNEL (or the draft number) when NAT-T is in use."""
    accept_pfs: frozenset[DHGroup | None] = frozenset()
    """Responder: PFS choices accepted besides ``pfs_group`` (``None`` = no PFS)."""
    esn: tuple[bool, ...] = (False, True)
    """Sequence number sizes, preferred first: ``True`` = 64-bit ESN (RFC 4304), ``False`` =
    32-bit. The initiator offers each ESP suite once per entry, in this order; the responder
    accepts a transform only if its ESN choice is listed."""

    def __post_init__(self) -> None:
        if not self.esn or len(set(self.esn)) != len(self.esn):
            raise LocalProtocolError(f"ESN preference {self.esn!r}: one or two distinct choices")

    def transforms(self, encap: int, allow_private: bool) -> tuple[Transform, ...]:
        """The offer: for each suite (strongest first) one transform per ESN choice."""
        out: list[Transform] = []
        for suite in self.esp:
            if suite.is_private and not allow_private:
                continue
            for esn in self.esn:
                out.append(Transform(len(out) + 1, int(suite.transform), self._attributes(suite, encap, esn)))
        if not out:
            raise LocalProtocolError("no ESP transform left to offer")
        return tuple(out[:MAX_TRANSFORMS])

    def _attributes(self, suite: EspSuite, encap: int, esn: bool) -> tuple[DataAttribute, ...]:
        attrs = [
            DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.SECONDS)),
            DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, self.lifetime_seconds),
        ]
        if self.lifetime_kilobytes:
            attrs += [
                DataAttribute(IPsecAttr.SA_LIFE_TYPE, int(LifeType.KILOBYTES)),
                DataAttribute.auto(IPsecAttr.SA_LIFE_DURATION, self.lifetime_kilobytes),
            ]
        if self.pfs_group is not None:
            attrs.append(DataAttribute(IPsecAttr.GROUP_DESCRIPTION, int(self.pfs_group)))
        attrs.append(DataAttribute(IPsecAttr.ENCAPSULATION_MODE, encap))
        if suite.auth is not None:
            attrs.append(DataAttribute(IPsecAttr.AUTHENTICATION_ALGORITHM, int(suite.auth)))
        if suite.key_length is not None:
            attrs.append(DataAttribute(IPsecAttr.KEY_LENGTH, suite.key_length))
        if esn:  # RFC 4304 section 2: absent means 32-bit sequence numbers
            attrs.append(DataAttribute(IPsecAttr.EXTENDED_SEQUENCE_NUMBER, ESN_64_BIT))
        return tuple(attrs)


@dataclass(frozen=True, slots=True)
class ChildTransform:
    """A decoded Quick Mode transform."""

    suite: EspSuite
    pfs_group: DHGroup | None
    lifetime_seconds: int
    lifetime_kilobytes: int
    encapsulation: int
    esn: bool = False
    """64-bit extended sequence numbers (RFC 4304)."""

    @classmethod
    def from_transform(cls, t: Transform) -> ChildTransform | None:
        try:
            esp = EspTransform(t.transform_id)
        except ValueError:
            return None
        auth: AuthAlgorithm | None = None
        key_length: int | None = None
        group: DHGroup | None = None
        seconds = 28800  # RFC 2407 section 4.5: default 28800 s when no lifetime is given
        kilobytes = 0
        encap = int(EncapsulationMode.TUNNEL)
        life_type: int | None = None
        esn = False
        for a in t.attributes:
            value = a.as_int()
            if a.type == IPsecAttr.SA_LIFE_TYPE:
                life_type = value
            elif a.type == IPsecAttr.SA_LIFE_DURATION:
                if life_type == LifeType.SECONDS:
                    seconds = value
                elif life_type == LifeType.KILOBYTES:
                    kilobytes = value
            elif a.type == IPsecAttr.GROUP_DESCRIPTION:
                try:
                    group = DHGroup(value)
                except ValueError:
                    return None
            elif a.type == IPsecAttr.ENCAPSULATION_MODE:
                encap = value
            elif a.type == IPsecAttr.AUTHENTICATION_ALGORITHM:
                try:
                    auth = AuthAlgorithm(value)
                except ValueError:
                    return None
            elif a.type == IPsecAttr.KEY_LENGTH:
                key_length = value
            elif a.type == IPsecAttr.EXTENDED_SEQUENCE_NUMBER:
                if value == ESN_64_BIT:
                    esn = True
                elif value != 0:  # 0 is RESERVED in RFC 4304; read it as absent, as before
                    return None  # a value we do not know: the transform is not for us
            else:
                return None  # an attribute we do not understand: the transform is not for us
        if esp in (EspTransform.AES_CBC, EspTransform.AES_GCM_16) and key_length is None:
            key_length = 128
        if esp == EspTransform.CHACHA20_POLY1305_PRIVATE and key_length is None:
            key_length = 256
        return cls(EspSuite(esp, key_length, auth), group, seconds, kilobytes, encap, esn)


def select_child_transform(
    proposals: Sequence[Proposal], policy: ChildProposal, allow_private: bool, encap_ok: Iterable[int]
) -> tuple[Proposal, Transform, ChildTransform]:
    """Responder: the first offered ESP transform our policy allows."""
    encaps = set(encap_ok)
    for prop in proposals:
        if prop.protocol != ProtocolId.ESP:
            continue
        if len(prop.spi) != 4:
            raise RemoteProtocolError("ESP SPI must be 4 octets", field="SA.proposal.spi")
        for t in prop.transforms:
            ct = ChildTransform.from_transform(t)
            if ct is None or ct.suite not in policy.esp or ct.esn not in policy.esn:
                continue
            if ct.suite.is_private and not allow_private:
                continue
            pfs_ok = ct.pfs_group == policy.pfs_group or ct.pfs_group in policy.accept_pfs
            if not pfs_ok or ct.encapsulation not in encaps:
                continue
            return prop, t, ct
    raise NoProposalChosen("no offered ESP transform is allowed by our policy")
