"""Who the gateway introduces to whom (issue 17): ``[[peering]]`` rules applied to the
logged-in sessions, and the pair secrets it makes for them.

Pure: the gateway passes its sessions in (:class:`Member`) and gets, per session, the complete
list of peers to introduce (:class:`tunvpn.ike.peers.PeerList`) to send in phase 1a. A pair's
secret is made once (``secrets.token_bytes``) and given to both sides; it is forgotten when
either session ends, so a later pair of the same users gets a new one.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tunvpn.config.gateway import PeeringRule
from tunvpn.ike.config import ChildPolicy
from tunvpn.ike.identity import Identity
from tunvpn.ike.peers import SECRET_SIZE, Introduction, PeerList, Role
from tunvpn.ike.proposals import ChildProposal
from tunvpn.ipsec.selectors import TrafficSelector

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Member:
    """A logged-in session, as the peering rules see it."""

    sa_id: bytes
    user: str
    groups: frozenset[str]
    address: ipaddress.IPv4Address
    endpoint: Endpoint


def peer_identity(member: Member) -> Identity:
    """The phase 1 identity ``member`` presents to the peers it was introduced to (a KEY_ID
    naming the user and the inner address: unique among the logged-in sessions)."""
    return Identity.parse(f"keyid:tunvpn-peer:{member.user}@{member.address}")


class PairSecrets:
    """The secret of each introduced pair, made on first use, forgotten with either session."""

    def __init__(self, random: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self._random = random
        self._secrets: dict[frozenset[bytes], bytes] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def of(self, a: bytes, b: bytes) -> bytes:
        key = frozenset((a, b))
        secret = self._secrets.get(key)
        if secret is None:
            secret = self._secrets[key] = self._random(SECRET_SIZE)
        return secret

    def forget(self, sa_id: bytes) -> None:
        """``sa_id``'s session ended: its pairs' secrets go (a new pair gets a new one)."""
        for key in [k for k in self._secrets if sa_id in k]:
            del self._secrets[key]


def introductions(
    member: Member, others: Iterable[Member], rules: Sequence[PeeringRule], pair_secrets: PairSecrets
) -> PeerList:
    """Every peer ``member`` is introduced to: the other members a rule pairs it with (the
    first matching rule gives the tunnel's parameters), sorted by address. Of each pair, the
    member with the lower address starts the phase 1."""
    found = []
    for other in others:
        if other.sa_id == member.sa_id:
            continue
        rule = next((r for r in rules if r.pairs(member.groups, other.groups)), None)
        if rule is None:
            continue
        found.append(
            Introduction(
                name=other.user,
                identity=peer_identity(other),
                address=other.address,
                endpoint=other.endpoint,
                secret=pair_secrets.of(member.sa_id, other.sa_id),
                role=Role.INITIATOR if member.address < other.address else Role.RESPONDER,
                esp=rule.esp,
                pfs_group=rule.pfs,
                lifetime_seconds=rule.lifetime,
                local_id=peer_identity(member),
            )
        )
    found.sort(key=lambda peer: peer.address)
    return PeerList(tuple(found))


RELAY_PREFIX = "relay:"
"""Names of the phase 2 policies that relay a client's traffic to an introduced peer."""


def relay_policies(peers: PeerList) -> tuple[ChildPolicy, ...]:
    """The Quick Modes a client may make with the gateway to reach its introduced peers through
    it when no direct path works (issue 17): its own address (the responder's ``None``) to each
    peer's address, with the pair's ESP parameters. The gateway forwards what arrives on one
    client's relay SA into the other's (its TUN device routes both addresses)."""
    return tuple(
        ChildPolicy(
            f"{RELAY_PREFIX}{peer.name}",
            TrafficSelector.from_network(f"{peer.address}/{peer.address.max_prefixlen}"),
            None,
            ChildProposal(esp=(peer.esp,), pfs_group=peer.pfs_group, lifetime_seconds=peer.lifetime_seconds),
        )
        for peer in peers.peers
        if not peer.networks  # a site's gateway: our own SAs reach its networks
    )


__all__ = ["RELAY_PREFIX", "Member", "PairSecrets", "introductions", "peer_identity", "relay_policies"]
