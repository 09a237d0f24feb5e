"""tunvpn_l2tp.plugin: ``[plugin.l2tp]`` checked key by key, the phase 1a announcement, and the
one policy both sides derive from it (the SA for UDP 1701)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest
from tunvpn_l2tp import plugin
from tunvpn_l2tp.plugin import L2tpConfigError, l2tp_policy, lns_settings, parse_announcement

from tunvpn.plugins import (
    ClientProtocol,
    ExtraProtocol,
    GatewayContext,
    PluginHost,
    ProtocolAnnouncement,
    TrafficSelector,
)

GOOD = {
    "server": "10.78.9.1",
    "pool": "10.80.0.10-10.80.0.20",
    "local": "10.80.0.1",
    "networks": ["10.78.1.0/24", "10.78.5.0/24"],
    "dns": ["10.78.0.53"],
}


def test_good_settings_and_defaults() -> None:
    s = lns_settings(GOOD)
    assert s.server == IPv4Address("10.78.9.1") and s.port == 1701
    assert (s.pool_first, s.pool_last) == (IPv4Address("10.80.0.10"), IPv4Address("10.80.0.20"))
    assert s.networks == (IPv4Network("10.78.1.0/24"), IPv4Network("10.78.5.0/24"))
    assert (s.auth, s.tun, s.mtu, s.hello, s.secret_file) == ("chap", "tvlns%d", 1300, 60.0, None)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"server": None}, "server", "[plugin.l2tp] server: an IPv4 address is required"),
        ({"server": "gateway"}, "server", "[plugin.l2tp] server = 'gateway': not an IPv4 address"),
        ({"pool": "10.80.0.10"}, "pool", "[plugin.l2tp] pool = '10.80.0.10': a range FIRST-LAST"),
        ({"pool": "10.80.0.20-10.80.0.10"}, "pool", "the first address is after the last"),
        ({"local": "10.80.0.15"}, "local", "local = '10.80.0.15': inside the pool"),
        ({"networks": []}, "networks", "networks = []: a list of networks is required"),
        ({"networks": ["10.1.0.0/33"]}, "networks", "networks = ['10.1.0.0/33']:"),
        ({"auth": "mschapv2"}, "auth", "auth = 'mschapv2': chap or pap"),
        ({"mtu": 9000}, "mtu", "[plugin.l2tp] mtu = 9000: a whole number 576..1460"),
        ({"port": 0}, "port", "port = 0"),
        ({"hello": -1}, "hello", "hello = -1"),
        ({"tun": "a-name-longer-than-15"}, "tun", "tun = "),
        ({"dns": ["1.1.1.1", "8.8.8.8", "9.9.9.9"]}, "dns", "a list of at most two"),
        ({"colour": "blue"}, "colour", "[plugin.l2tp] colour: unknown key (known: server, port"),
    ],
)
def test_bad_settings_name_the_key(change: dict, key: str, message: str) -> None:
    table = {**GOOD, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(L2tpConfigError, match=re.escape(message)) as info:
        lns_settings(table)
    assert info.value.key == key


def test_the_announcement_and_the_accepted_policy() -> None:
    context = GatewayContext(plugin_settings={"l2tp": GOOD})
    host = PluginHost(["l2tp"])  # through its entry point
    announcement = host.announce(ExtraProtocol("l2tp"), context)
    assert isinstance(announcement, ProtocolAnnouncement)
    params = dict(announcement.params)
    assert params == {
        "exchange": "l2tp",
        "server": "10.78.9.1",
        "port": "1701",
        "networks": "10.78.1.0/24,10.78.5.0/24",
        "mtu": "1300",
    }
    [policy] = announcement.accept
    assert policy.gateway_ts == TrafficSelector.from_address("10.78.9.1", 17, 1701)
    assert policy.client_ts is None  # the client's assigned address


def test_a_broken_table_fails_the_gateway_start_with_its_message() -> None:
    from tunvpn.gateway.daemon import ConfigError, Gateway, GatewayOptions
    from tunvpn.ike.config import PskTable

    options = GatewayOptions(
        listen="127.0.0.1",
        psks=PskTable({"*": "x" * 20}),
        protocols=(ExtraProtocol("l2tp"),),
        plugins=("l2tp",),
        plugin_settings={"l2tp": {**GOOD, "auth": "none"}},
    )
    with pytest.raises(ConfigError, match=r"auth = 'none': chap or pap"):
        Gateway(options)


def test_the_client_side_derives_the_same_policy() -> None:
    announced = ExtraProtocol(
        "l2tp",
        (
            ("server", "10.78.9.1"),
            ("port", "1701"),
            ("networks", "10.78.1.0/24"),
            ("mtu", "1300"),
            ("exchange", "l2tp"),
        ),
    )
    handler = plugin.tunvpn_client_protocol(announced, {})
    assert isinstance(handler, ClientProtocol)
    assert handler.policies == (l2tp_policy(IPv4Address("10.78.9.1")),)
    assert handler.run is not None
    assert plugin.tunvpn_client_protocol(ExtraProtocol("otp", (("exchange", "xauth"),)), {}) is None


@pytest.mark.parametrize(
    "params",
    [
        (("exchange", "l2tp"),),
        (("exchange", "l2tp"), ("server", "nowhere")),
        (("exchange", "l2tp"), ("server", "10.0.0.1"), ("port", "70000")),
        (("exchange", "l2tp"), ("server", "10.0.0.1"), ("networks", "10.0.0.0/99")),
    ],
)
def test_a_malformed_announcement_is_a_clear_error(params: tuple) -> None:
    with pytest.raises(L2tpConfigError, match="announcement"):
        parse_announcement(ExtraProtocol("l2tp", params))


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"tunn": "x"}, "tunn", "[plugin.l2tp] tunn: unknown key in the profile"),
        ({"reconnect": "yes"}, "reconnect", "reconnect = 'yes': must be true or false"),
        ({"reconnect_attempts": 0}, "reconnect_attempts", "reconnect_attempts = 0: must be a whole number"),
        ({"reconnect_attempts": True}, "reconnect_attempts", "= True: must be a whole number"),
        ({"password_file": ""}, "password_file", "password_file = '': must be a non-empty string"),
        ({"tun": "a-name-longer-than-15"}, "tun", "an interface name (at most 15 characters)"),
    ],
)
def test_bad_client_settings_name_the_key(table: dict, key: str, message: str) -> None:
    with pytest.raises(L2tpConfigError, match=re.escape(message)) as info:
        plugin.client_settings(table)
    assert info.value.key == key
    protocol = ExtraProtocol("l2tp", (("exchange", "l2tp"), ("server", "10.78.9.1")))
    with pytest.raises(L2tpConfigError, match=re.escape(message)):  # before Quick Mode, not after it
        plugin.tunvpn_client_protocol(protocol, {"l2tp": table})


def test_reconnect_only_after_a_session_was_up_with_growing_delays() -> None:
    from tunvpn_l2tp.lac import Reconnect

    policy = Reconnect(attempts=3, max_delay=3.0)
    assert policy.delay(False, "L2TP/PPP not up after 30 s") is None  # the first set-up: no retry
    assert policy.delay(True, "the L2TP tunnel was closed (StopCCN)") == 1.0
    assert policy.delay(False, "L2TP/PPP not up after 30 s") == 2.0
    assert policy.delay(False, "L2TP/PPP not up after 30 s") == 3.0  # capped
    assert policy.delay(False, "L2TP/PPP not up after 30 s") is None  # three tries in a row failed
    # up again: the count starts over
    policy = Reconnect(attempts=3)
    assert policy.delay(True, "PPP went down: x") == 1.0
    assert policy.delay(True, "PPP went down: x") == 1.0
    # a refused password is not retried; reconnect = false never retries
    assert Reconnect().delay(True, "PPP authentication failed: bad") is None
    assert Reconnect(attempts=0).delay(True, "the L2TP tunnel was closed") is None
