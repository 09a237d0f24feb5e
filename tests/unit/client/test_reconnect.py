"""Staying connected (issue 15): the back-off between rounds of attempts, the gateways a
client accepts, and the remote identity each of them must prove."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.client.daemon import DPD_INTERVAL, DPD_TIMEOUT, ClientOptions, build_engine_config
from tunvpn.client.reconnect import (
    RECONNECT_MAX_DELAY,
    SILENT_ROUND_DELAY,
    GatewayResolver,
    backoff_delay,
    round_delay,
)
from tunvpn.config.hosts import check_gateway
from tunvpn.ike.config import PskTable
from tunvpn.ike.identity import Identity


def test_backoff_doubles_from_one_second_up_to_the_cap() -> None:
    no_jitter = [backoff_delay(n, rand=lambda: 0.0) for n in range(1, 9)]
    assert no_jitter == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_delay(10_000, rand=lambda: 0.0) == RECONNECT_MAX_DELAY  # no overflow


def test_backoff_jitter_only_shortens() -> None:
    assert backoff_delay(3, rand=lambda: 0.999999) == pytest.approx(4.0 * 0.8, rel=1e-5)
    for n in range(1, 12):
        assert 0.8 * min(30.0, 2.0 ** (n - 1)) <= backoff_delay(n) <= min(30.0, 2.0 ** (n - 1))


def test_backoff_needs_a_failure() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192.0.2.1", "192.0.2.1"), ("VPN1.Example.COM", "vpn1.example.com"), ("gw.", "gw"), ("::1", "::1")],
)
def test_gateways_are_addresses_or_names(text: str, expected: str) -> None:
    assert check_gateway(text) == expected


@pytest.mark.parametrize(
    "text", ["", "0.0.0.0", "vpn_1.example", "-a.example", "a..b", "10.0.0.300", "x" * 64]
)
def test_other_gateways_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        check_gateway(text)


def test_client_options_take_a_list_and_dpd_is_on() -> None:
    options = ClientOptions(
        gateway="vpn1.example.com", gateways=("vpn1.example.com", "192.0.2.9"), psks=PskTable()
    )
    assert options.gateways == ("vpn1.example.com", "192.0.2.9")
    # remote_id defaults to each entry as the user wrote it: the name, or the address
    assert options.expected_for("vpn1.example.com") == Identity.parse("vpn1.example.com")
    assert options.expected_for("192.0.2.9") == Identity.parse("192.0.2.9")
    pinned = ClientOptions(gateway="vpn1.example.com", psks=PskTable(), remote_id=Identity.parse("@gw"))
    assert pinned.expected_for("vpn1.example.com") == Identity.parse("@gw")
    config = build_engine_config(options)
    assert (config.dpd_interval, config.dpd_timeout) == (DPD_INTERVAL, DPD_TIMEOUT)
    assert 10 <= DPD_INTERVAL <= 15 and DPD_TIMEOUT >= DPD_INTERVAL + 3 * 5  # three probes unanswered
    with pytest.raises(ValueError, match="neither an IP address nor a host name"):
        ClientOptions(gateway="bad name", psks=PskTable())


def test_resolver_returns_literals_as_they_are_and_keeps_names_it_found() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        resolver = GatewayResolver(timeout=5)
        literal = await resolver.addresses("192.0.2.1", 500)
        found = await resolver.addresses("localhost", 500)
        resolver.cache["vpn.invalid"] = ["192.0.2.44"]  # what an earlier lookup found
        cached = await resolver.addresses("vpn.invalid", 500, cached_only=True)
        return literal, found, cached

    literal, found, cached = asyncio.run(scenario())
    assert literal == ["192.0.2.1"]
    assert "127.0.0.1" in found
    assert cached == ["192.0.2.44"]


def test_resolver_names_the_gateway_it_cannot_resolve() -> None:
    async def scenario() -> None:
        await GatewayResolver(timeout=5).addresses("no-such-gateway.invalid", 500)

    with pytest.raises(OSError, match=r"cannot resolve no-such-gateway\.invalid"):
        asyncio.run(scenario())


def test_connect_check_shows_every_gateway_and_the_reconnecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profile naming a dead first gateway (127.0.0.9, never answers) and localhost: the
    command line takes the list, resolves the name, and says it will reconnect."""
    psk = tmp_path / "alice.psk"
    psk.write_text("a-long-enough-group-secret-for-the-check-0123\n")
    psk.chmod(0o600)
    profile = tmp_path / "work.toml"
    profile.write_text('gateway = ["127.0.0.9", "localhost"]\npsk_file = "alice.psk"\n')
    assert cli.main(["connect", "--check", "-c", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "gateway:         127.0.0.9, localhost (IKE 500, NAT-T 4500)" in out
    assert "reconnect:       yes" in out
    assert cli.main(["connect", "--check", "-c", str(profile), "--once"]) == 0
    assert "reconnect:       no" in capsys.readouterr().out
    profile.write_text('gateway = "127.0.0.9"\npsk_file = "alice.psk"\nreconnect = false\n')
    assert cli.main(["connect", "--check", "-c", str(profile)]) == 0
    assert "reconnect:       no" in capsys.readouterr().out


def test_a_full_tunnels_dns_is_not_asked_for_the_gateway_while_it_is_down() -> None:
    """With the tunnel's DNS servers answering every name (a full tunnel), the next round takes
    the gateway's addresses from the last answer instead of asking the dead tunnel's DNS."""
    from ipaddress import IPv4Address

    from tunvpn.client.daemon import Client

    options = ClientOptions(gateway="vpn.invalid", psks=PskTable(), reconnect=True)
    client = Client(options, "127.0.0.1")
    assert not client._dns_into_tunnel()  # nothing applied yet: names are looked up
    client._dns_applied = ((IPv4Address("10.0.0.53"),), (), True)  # split DNS: still looked up
    assert not client._dns_into_tunnel()
    client._dns_applied = ((IPv4Address("10.0.0.53"),), (), False)  # full tunnel
    assert client._dns_into_tunnel()
    client.resolver.cache["vpn.invalid"] = ["192.0.2.44"]  # the first round's answer

    async def scenario() -> list[str]:
        return await client.resolver.addresses("vpn.invalid", 500, cached_only=client._dns_into_tunnel())

    assert asyncio.run(scenario()) == ["192.0.2.44"]


def test_a_silent_round_is_followed_by_a_short_wait_however_long_the_outage() -> None:
    # nobody answered: one small datagram a second or two, so a gateway that is back is found
    # at once (issue 15: within 5 s of it being back)
    for n in (1, 5, 50):
        assert 0.8 * SILENT_ROUND_DELAY <= round_delay(n, silent=True) <= SILENT_ROUND_DELAY
    # a gateway answered and the login still failed: each attempt cost it a DH, back off
    assert round_delay(6, silent=False, rand=lambda: 0.0) == RECONNECT_MAX_DELAY
    assert round_delay(1, silent=False, rand=lambda: 0.0) == 1.0


def test_the_dpd_interval_is_a_setting(tmp_path: Path) -> None:
    """An idle tunnel finds a restarted gateway at its next R-U-THERE: --dpd-interval (profile
    dpd_interval) shortens that; the gateway is dead after 2.5 times the interval."""
    assert cli.dpd_options(None) == (DPD_INTERVAL, DPD_TIMEOUT) == (10.0, 25.0)
    assert cli.dpd_options(4) == (4, 10.0)
    assert cli.dpd_options(0) == (0, 0.0)  # no DPD
    from tunvpn.config.profile import load_profile

    (tmp_path / "psk").write_text("x" * 32 + "\n")
    (tmp_path / "psk").chmod(0o600)
    path = tmp_path / "p.toml"
    path.write_text('gateway = "192.0.2.1"\npsk_file = "psk"\ndpd_interval = "4s"\n')
    assert load_profile(path, env={}).dpd_interval == 4
