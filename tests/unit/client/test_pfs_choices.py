"""Issue 16: the PFS choices our client offers a gateway that pushes no policies, in order."""

from __future__ import annotations

from tunvpn.client.daemon import ClientOptions, pfs_choices
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup
from tunvpn.ike.proposals import DEFAULT_GROUPS


def options(**kw: object) -> ClientOptions:
    return ClientOptions(gateway="192.0.2.1", psks=PskTable({"*": b"x" * 32}), **kw)  # type: ignore[arg-type]


def test_auto_offers_ecp256_then_every_group_strongest_first_then_none() -> None:
    choices = pfs_choices(options(pfs_auto=True))
    assert choices[0] == DHGroup.ECP_256 and choices[-1] is None
    assert list(choices[1:-1]) == [g for g in DEFAULT_GROUPS if g != DHGroup.ECP_256]


def test_required_never_falls_back_to_no_pfs() -> None:
    assert None not in pfs_choices(options(pfs_auto=True, pfs_required=True))


def test_an_explicit_choice_is_the_only_one() -> None:
    assert pfs_choices(options(pfs=DHGroup.ECP_384)) == (DHGroup.ECP_384,)
    assert pfs_choices(options(pfs=None)) == (None,)


def test_a_floor_cuts_weaker_groups_and_no_pfs_whatever_the_gateway_says() -> None:
    """pfs_min = ecp256 (128-bit strength): modp3072 and curve25519 stay (the same strength),
    modp2048 and no PFS go, so a refusal (or a spoofed one) cannot talk the client below it."""
    choices = pfs_choices(options(pfs_auto=True, pfs_min=DHGroup.ECP_256))
    assert None not in choices and DHGroup.MODP_2048 not in choices
    assert {DHGroup.ECP_256, DHGroup.CURVE25519, DHGroup.MODP_3072, DHGroup.ECP_521} <= set(choices)
    assert choices[0] == DHGroup.ECP_256  # the order is unchanged
    assert pfs_choices(options(pfs_auto=True, pfs_min=DHGroup.ECP_384)) == (
        DHGroup.ECP_521,
        DHGroup.ECP_384,
    )


def test_a_choice_below_the_floor_is_refused_when_the_options_are_made() -> None:
    import pytest

    with pytest.raises(ValueError, match="below the floor"):
        options(pfs=None, pfs_min=DHGroup.ECP_256)
    with pytest.raises(ValueError, match="below the floor"):
        options(pfs=DHGroup.MODP_2048, pfs_min=DHGroup.ECP_256)
