"""The gateway's TOML configuration (tunvpn.config.gateway): layout, defaults, errors with file,
line and key, private secret files, and who gets which phase 2 policy."""

from __future__ import annotations

import datetime
import logging
import pickle
import shutil
import textwrap
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.gwconfig import MINIMAL, load_config, private_file
from tunvpn.config.gateway import (
    BUILT_IN,
    DEFAULT_GATEWAY_TOML,
    ESP_SUITES,
    ConfigFileError,
    SourceText,
    default_gateway_toml,
    load_gateway_config,
    parse_gateway_config,
)
from tunvpn.gateway.daemon import ConfigError
from tunvpn.ike.constants import DHGroup, EncryptionAlgorithm, HashAlgorithm
from tunvpn.ike.identity import Identity
from tunvpn.ike.policies import ExtraProtocol
from tunvpn.ike.proposals import DEFAULT_ESP, LEGACY_ESP, Phase1Policy
from tunvpn.ipsec.algorithms import EspTransform
from tunvpn.ipsec.selectors import TrafficSelector

CONTRIB = Path(__file__).resolve().parents[3] / "contrib" / "gateway.toml"
GROUP_SECRET = "correct-horse-battery-staple-group"
USER_PASSWORD = "alice-password-xyzzy"


@pytest.fixture
def gwdir(tmp_path: Path) -> Path:
    """A directory with a private PSK file and users file, as the configs below expect."""
    private_file(tmp_path / "gw.psk", f"{GROUP_SECRET}\n")
    private_file(tmp_path / "users", f"alice:{USER_PASSWORD}\nbob:b0b\ncarol:c4rol\ndave:d4ve\n")
    return tmp_path


def _error(directory: Path, text: str, env: dict[str, str] | None = None) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        load_config(directory, text, env)
    return info.value


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based number of the line holding the ``occurrence``-th ``needle``."""
    seen = 0
    for number, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the text")


# --------------------------------------------------------------------------- loading


def test_contrib_example_loads(gwdir: Path) -> None:
    shutil.copy(CONTRIB, gwdir / "gateway.toml")
    config = load_gateway_config(gwdir / "gateway.toml", env={})
    assert config.listen == "192.0.2.1"
    assert config.local_id == Identity.parse("@vpn.example")
    assert config.psks.lookup(None, "198.51.100.7") == GROUP_SECRET.encode()
    assert config.users is not None and config.users.check("alice", USER_PASSWORD)
    assert config.require_xauth and not config.legacy and not config.allow_aggressive_psk
    assert config.pool is not None and config.pool.size == 191
    assert config.dns == (IPv4Address("10.78.0.53"),)
    assert config.domains == ("corp.example", "lab.example")
    assert [p.name for p in config.policies] == ["intranet", "eng-lab", "web"]
    intranet, _, web = config.policies
    assert intranet.client_ts is None  # "assigned"
    assert [str(s) for s in intranet.esp] == ["aes256gcm16", "chacha20poly1305", "aes128gcm16"]
    assert intranet.lifetime_seconds == 3600 and intranet.pfs_group == DHGroup.ECP_256
    assert web.gateway_ts == TrafficSelector.parse("10.81.0.10[tcp/443]")
    assert config.phase1.lifetime == 8 * 3600
    assert config.phase1.groups[0] == DHGroup.ECP_384
    assert config.protocols == () and config.plugins == ()


@pytest.mark.parametrize("value", [0, 250, 100_000])
def test_busy_poll_is_read_in_microseconds(gwdir: Path, value: int) -> None:
    text = MINIMAL.replace('psk_file = "gw.psk"', f'psk_file = "gw.psk"\nbusy_poll = {value}')
    assert load_config(gwdir, text).busy_poll_us == value


def test_minimal_file_gets_the_documented_defaults(gwdir: Path) -> None:
    config = load_config(gwdir, MINIMAL)
    assert (config.ike_port, config.natt_port, config.tun, config.mtu) == (500, 4500, "tunvpn%d", 1400)
    assert config.busy_poll_us is None  # the default for the machine (tunvpn.dataplane.busypoll)
    assert config.local_id is None and config.users is None and not config.require_xauth
    assert config.phase1 == Phase1Policy()
    (policy,) = config.policies
    assert policy.esp == DEFAULT_ESP and policy.client_ts is None
    assert (policy.pfs_group, policy.lifetime_seconds, policy.lifetime_kilobytes) == (
        DHGroup.ECP_256,
        3600,
        0,
    )
    assert config.rules[0].groups == () and config.rules[0].users == ()
    assert config.source == str(gwdir / "gateway.toml")


def test_relative_paths_are_relative_to_the_file(gwdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    text = MINIMAL.replace('listen = "192.0.2.1"', 'listen = "192.0.2.1"\nkeylog = "keys/k"')
    config = load_config(gwdir, text)
    assert config.psks and config.keylog == str(gwdir / "keys" / "k")


def test_built_in_demo_config(gwdir: Path) -> None:
    text = default_gateway_toml(
        listen="10.77.0.1",
        psk_file=gwdir / "gw.psk",
        users_file=gwdir / "users",
        pool="10.79.0.10-10.79.0.20",
        net_a="10.78.0.0/24",
        net_b="10.78.1.0/24",
        net_eng="10.78.2.0/24",
        eng_users=("alice",),
    )
    assert "{" not in text and "listen" in DEFAULT_GATEWAY_TOML
    config = parse_gateway_config(text, BUILT_IN, base_dir=gwdir, env={})
    assert config.source == BUILT_IN and config.require_xauth
    assert [p.name for p in config.policies_for("alice")] == ["net-a", "net-b", "eng"]
    assert [p.name for p in config.policies_for("bob")] == ["net-a", "net-b"]


def test_phase1_restriction_and_legacy(gwdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL + textwrap.dedent("""\
        [phase1]
        encryption = ["aes128"]
        hash = "sha256"
        groups = ["modp2048", "ecp256"]
        lifetime = "2h"
        """)
    phase1 = load_config(gwdir, text).phase1
    assert phase1.encryption == ((EncryptionAlgorithm.AES_CBC, 128),)
    assert phase1.hashes == (HashAlgorithm.SHA2_256,)
    assert phase1.groups == (DHGroup.MODP_2048, DHGroup.ECP_256)
    assert phase1.lifetime == 7200

    weak = text.replace('groups = ["modp2048", "ecp256"]', 'groups = ["modp2048", "modp1024"]')
    err = _error(gwdir, weak)
    assert err.key == "phase1.groups" and err.line == _line_of(weak, "modp1024")
    assert "legacy = true" in err.reason

    legacy = weak.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nlegacy = true')
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.gateway"):
        config = load_config(gwdir, legacy)
    assert DHGroup.MODP_1024 in config.phase1.groups and config.phase1.allow_legacy
    assert config.policies[0].esp == DEFAULT_ESP + LEGACY_ESP
    assert sum("legacy = true" in r.getMessage() for r in caplog.records) == 1

    default_legacy = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nlegacy = true')
    assert load_config(gwdir, default_legacy).phase1 == Phase1Policy.with_legacy()


def test_weak_choices_warn_once_each(gwdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL.replace(
        'psk_file = "gw.psk"', 'psk_file = "gw.psk"\nallow_aggressive_psk = true\nlegacy = true'
    )
    text += '\n[[policy]]\nname = "old"\nlocal = "10.90.0.0/24"\nesp = ["3des-sha1", "aes128-sha1"]\n'
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.gateway"):
        config = load_config(gwdir, text)
    assert config.allow_aggressive_psk and config.legacy
    assert str(config.policies[1].suite) == "3des-sha1"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert any("allow_aggressive_psk" in m for m in messages) and any("legacy" in m for m in messages)


def test_policy_details(gwdir: Path) -> None:
    text = MINIMAL + textwrap.dedent("""\
        [[policy]]
        name = "site"
        local = "10.1.0.0/16[udp/53]"
        remote = "172.16.0.0/12"
        esp = "aes128-sha256"
        pfs = "none"
        lifetime = 600
        lifetime_kb = 100000

        [[policy]]
        name = "v6"
        local = "2001:db8::/64"
        remote = "2001:db8:1::/64"
        lifetime = "1h30m"
        """)
    _, site, v6 = load_config(gwdir, text).policies
    assert site.gateway_ts == TrafficSelector.parse("10.1.0.0/16[udp/53]")
    assert site.client_ts == TrafficSelector.parse("172.16.0.0/12")
    assert site.esp == (ESP_SUITES["aes128-sha256"],) and site.pfs_group is None
    assert (site.lifetime_seconds, site.lifetime_kilobytes) == (600, 100000)
    assert v6.lifetime_seconds == 5400 and v6.gateway_ts.version == 6


def test_esp_names_are_what_espsuite_prints() -> None:
    assert set(ESP_SUITES) == {str(s) for s in DEFAULT_ESP + LEGACY_ESP}
    assert ESP_SUITES["chacha20poly1305"].transform == EspTransform.CHACHA20_POLY1305_PRIVATE


def test_network_groups_protocols_plugins(gwdir: Path) -> None:
    text = textwrap.dedent("""\
        [gateway]
        listen = "192.0.2.1"
        psk_file = "gw.psk"
        plugins = ["radius", "otp"]
        tun = false
        mtu = 1300

        [network]
        pool = "10.79.0.0/24"
        dns = ["10.78.0.53", "10.78.0.54"]
        domains = "corp.example"
        banner = "hello"

        [groups]
        eng = ["alice"]
        empty = []

        [[policy]]
        name = "intranet"
        local = "10.78.0.0/24"

        [[protocol]]
        name = "radius"
        server = "10.78.0.9"
        port = 1812
        strict = true

        [[protocol]]
        name = "otp"
        """)
    config = load_config(gwdir, text)
    assert config.pool is not None and (config.pool.first, config.pool.last) == (
        IPv4Address("10.79.0.1"),
        IPv4Address("10.79.0.254"),
    )
    assert config.dns == (IPv4Address("10.78.0.53"), IPv4Address("10.78.0.54"))
    assert config.domains == ("corp.example",) and config.banner == "hello"
    assert dict(config.groups) == {"eng": frozenset({"alice"}), "empty": frozenset()}
    assert config.protocols == (
        ExtraProtocol("radius", (("server", "10.78.0.9"), ("port", "1812"), ("strict", "true"))),
        ExtraProtocol("otp"),
    )
    assert config.plugins == ("radius", "otp") and config.tun is None and config.mtu == 1300

    err = _error(gwdir, text.replace('domains = "corp.example"', 'domains = ["corp example"]'))
    assert err.key == "network.domains" and err.line == 11
    err = _error(gwdir, text.replace('name = "otp"', 'name = "radius"'))
    assert err.key == "protocol[1].name" and err.line == _line_of(text, 'name = "otp"')


# --------------------------------------------------------------------------- who gets what

RULES = """\
[gateway]
listen = "192.0.2.1"
psk_file = "gw.psk"
users_file = "users"

[network]
pool = "10.79.0.10-10.79.0.20"

[groups]
eng = ["alice", "bob"]
ops = ["carol"]

[[policy]]
name = "everyone"
local = "10.78.0.0/24"

[[policy]]
name = "eng"
local = "10.80.0.0/16"
groups = ["eng"]

[[policy]]
name = "eng-or-dave"
local = "10.81.0.0/16"
groups = ["eng", "ops"]
users = ["dave"]

[[policy]]
name = "carol-only"
local = "10.82.0.0/16"
users = ["carol"]
"""


def test_policies_for_groups_and_users(gwdir: Path) -> None:
    config = load_config(gwdir, RULES)
    assert config.require_xauth  # users_file given: XAUTH is required unless said otherwise

    def names(user: str | None, extra: tuple[str, ...] = ()) -> list[str]:
        return [p.name for p in config.policies_for(user, extra)]

    assert config.groups_of("alice") == {"eng"} and config.groups_of(None) == frozenset()
    assert names("alice") == ["everyone", "eng", "eng-or-dave"]
    assert names("carol") == ["everyone", "eng-or-dave", "carol-only"]
    assert names("dave") == ["everyone", "eng-or-dave"]
    assert names("erin") == ["everyone"]
    assert names(None) == ["everyone"]
    assert names("erin", ("eng",)) == ["everyone", "eng", "eng-or-dave"]  # e.g. from RADIUS


# --------------------------------------------------------------------------- errors


def test_error_text_has_file_line_key_and_reason() -> None:
    err = ConfigFileError("gateway.toml", 12, "policy[1].esp", "unknown ESP suite 'aes999'")
    assert str(err) == "gateway.toml line 12, key policy[1].esp: unknown ESP suite 'aes999'"
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert str(ConfigFileError("g.toml", None, "policy", "none")) == "g.toml, key policy: none"
    assert str(ConfigFileError("g.toml", 3, "", "bad")) == "g.toml line 3: bad"


def test_syntax_error_gives_its_line(gwdir: Path) -> None:
    text = MINIMAL.replace('local = "10.78.0.0/24"', "local = 10.78.0.0/24")
    err = _error(gwdir, text)
    assert err.line == _line_of(text, "local =") and err.key == ""
    assert "TOML syntax error" in err.reason and str(err).startswith(f"{gwdir / 'gateway.toml'} line ")
    err = _error(gwdir, MINIMAL + 'banner = "unterminated\n')
    assert err.line == len(MINIMAL.splitlines()) + 1


def test_unknown_key_with_suggestion(gwdir: Path) -> None:
    text = MINIMAL + '\n[[policy]]\nname = "b"\nlocal = "10.90.0.0/24"\nlifetme = "1h"\n'
    err = _error(gwdir, text)
    assert err.key == "policy[1].lifetme" and err.line == _line_of(text, "lifetme")
    assert err.reason == "unknown key 'lifetme' in [[policy]] 2 (did you mean 'lifetime'?)"

    err = _error(gwdir, MINIMAL.replace("[network]", "[netwrok]"))
    assert err.key == "netwrok" and "did you mean 'network'" in err.reason and err.line == 5

    err = _error(gwdir, MINIMAL.replace("listen", "lissen"))
    assert err.key == "gateway.lissen" and err.line == 2 and "'listen'" in err.reason


def test_bad_esp_name(gwdir: Path) -> None:
    text = MINIMAL + '\n[[policy]]\nname = "b"\nlocal = "10.90.0.0/24"\nesp = ["aes256gcm16", "aes999"]\n'
    err = _error(gwdir, text)
    assert err.key == "policy[1].esp" and err.line == _line_of(text, "esp =")
    assert "unknown ESP suite 'aes999' (one of: aes256gcm16, chacha20poly1305," in err.reason
    assert "3des" not in err.reason  # legacy names are offered only with legacy = true

    err = _error(gwdir, text.replace('"aes999"', '"3des-sha1"'))
    assert err.key == "policy[1].esp" and "legacy = true" in err.reason


def test_undefined_group(gwdir: Path) -> None:
    text = RULES.replace('groups = ["eng", "ops"]', 'groups = ["eng", "sales"]')
    err = _error(gwdir, text)
    assert err.key == "policy[2].groups" and err.line == _line_of(text, '"sales"')
    assert "group 'sales' is not defined in [groups] (eng, ops)" in err.reason


def test_duplicate_policy_names(gwdir: Path) -> None:
    text = RULES.replace('name = "carol-only"', 'name = "eng"')
    err = _error(gwdir, text)
    assert err.key == "policy[3].name" and err.line == _line_of(text, 'name = "eng"', 2)
    assert "already used by [[policy]] 2" in err.reason


def test_world_readable_psk_file_refused(gwdir: Path) -> None:
    (gwdir / "gw.psk").chmod(0o644)
    err = _error(gwdir, MINIMAL)
    assert err.key == "gateway.psk_file" and err.line == 3
    assert "chmod 600" in err.reason and GROUP_SECRET not in str(err)


def test_world_readable_users_file_refused(gwdir: Path) -> None:
    (gwdir / "users").chmod(0o640)
    err = _error(gwdir, RULES)
    assert err.key == "gateway.users_file" and "chmod 600" in err.reason
    assert USER_PASSWORD not in str(err)


def test_psk_env(gwdir: Path) -> None:
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_env = "GW_SECRET"')
    err = _error(gwdir, text, env={})
    assert err.key == "gateway.psk_env" and err.line == 3 and "GW_SECRET is not set" in err.reason
    config = load_config(gwdir, text, env={"GW_SECRET": GROUP_SECRET})
    assert config.psks.lookup(None, "203.0.113.9") == GROUP_SECRET.encode()
    assert GROUP_SECRET not in repr(config)


def test_inline_psk_needs_a_private_config(gwdir: Path) -> None:
    text = MINIMAL.replace('psk_file = "gw.psk"', f'psk = "{GROUP_SECRET}"')
    path = gwdir / "gateway.toml"
    private_file(path, text, 0o644)
    with pytest.raises(ConfigFileError) as info:
        load_gateway_config(path, env={})
    assert info.value.key == "gateway.psk" and info.value.line == 3
    assert f"chmod 600 {path}" in info.value.reason and "0644" in info.value.reason
    assert GROUP_SECRET not in str(info.value) and GROUP_SECRET not in repr(info.value)
    path.chmod(0o600)
    config = load_gateway_config(path, env={})
    assert config.psks.lookup(None, "203.0.113.9") == GROUP_SECRET.encode()
    with pytest.raises(ConfigFileError, match="not read from a file"):
        parse_gateway_config(text, "t", base_dir=gwdir)


def test_only_one_psk_source(gwdir: Path) -> None:
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\npsk_env = "X"')
    err = _error(gwdir, text, env={"X": "y"})
    assert err.key == "gateway.psk_env" and "only one of psk_file, psk_env" in err.reason


def test_no_secret_in_repr_or_errors(gwdir: Path) -> None:
    config = load_config(gwdir, RULES)
    for text in (repr(config), str(config), repr(config.rules), repr(config.psks), repr(config.users)):
        assert GROUP_SECRET not in text and USER_PASSWORD not in text
    # a secret typed into the wrong key is not echoed either
    for wrong in (f'id = {{ k = "{GROUP_SECRET}" }}', f'psk_file = ["{GROUP_SECRET}"]'):
        text = MINIMAL.replace('psk_file = "gw.psk"', wrong)
        err = _error(gwdir, text)
        assert GROUP_SECRET not in str(err), str(err)


def test_remote_of_another_family(gwdir: Path) -> None:
    text = MINIMAL + '\n[[policy]]\nname = "x"\nlocal = "10.2.0.0/16"\nremote = "2001:db8::/64"\n'
    err = _error(gwdir, text)
    assert err.key == "policy[1].remote" and err.line == _line_of(text, "remote =")
    assert "different address families" in err.reason
    text = MINIMAL + '\n[[policy]]\nname = "x"\nlocal = "2001:db8::/64"\n'
    err = _error(gwdir, text)
    assert err.key == "policy[1].local" and "pool6" in err.reason


def test_an_ipv6_pool_gives_ipv6_policies_their_clients(gwdir: Path) -> None:
    """Issue 19: pool6 beside pool; an IPv6 policy's remote is then the client's IPv6 address;
    DNS servers of either family; a pool6 overlapping an IPv6 policy, or without pool, is refused."""
    six = '\n[[policy]]\nname = "lan6"\nlocal = "fd78::/64"\n'
    text = MINIMAL.replace(
        "[network]\n", '[network]\npool6 = "fd79::/112"\ndns = ["10.0.0.53", "fd78::53"]\n'
    )
    assert "pool6" in text, "MINIMAL has a [network] table"
    config = load_config(gwdir, text + six)
    assert config.pool6 is not None and (str(config.pool6.first), str(config.pool6.last)) == (
        "fd79::1",
        "fd79::ffff",
    )
    assert [str(a) for a in config.dns] == ["10.0.0.53", "fd78::53"]
    [lan6] = [r.policy for r in config.rules if r.policy.name == "lan6"]
    assert lan6.client_ts is None and str(lan6.gateway_ts) == "fd78::/64"
    err = _error(gwdir, text + '\n[[policy]]\nname = "x"\nlocal = "fd79::/64"\n')
    assert err.key == "network.pool6" and "overlaps" in err.reason
    err = _error(gwdir, text.replace('pool6 = "fd79::/112"', 'pool6 = "fd79::/64"') + six)
    assert err.key == "network.pool6" and "65536" in err.reason


def test_pool_overlapping_a_protected_network(gwdir: Path) -> None:
    text = MINIMAL + '\n[[policy]]\nname = "x"\nlocal = "10.79.0.0/24"\n'
    err = _error(gwdir, text)
    assert err.key == "network.pool" and err.line == _line_of(text, "pool =")
    assert "overlaps 10.79.0.0/24" in err.reason and "'x'" in err.reason
    # a full tunnel (0.0.0.0/0) is fine
    full = MINIMAL + '\n[[policy]]\nname = "all"\nlocal = "0.0.0.0/0"\n'
    assert load_config(gwdir, full).policies[1].gateway_ts.is_any


def test_assigned_remote_needs_a_pool(gwdir: Path) -> None:
    text = MINIMAL.replace('[network]\npool = "10.79.0.10-10.79.0.20"\n', "")
    err = _error(gwdir, text)
    assert err.key == "policy[0].remote" and err.line == _line_of(text, "[[policy]]")
    assert "pool" in err.reason


def test_no_policy(gwdir: Path) -> None:
    text = MINIMAL.split("[[policy]]")[0]
    err = _error(gwdir, text)
    assert err.key == "policy" and err.line is None and "at least one" in err.reason
    err = _error(gwdir, MINIMAL.replace("[[policy]]", "[policy]"))
    assert err.key == "policy" and err.line == _line_of(MINIMAL, "[[policy]]") and "[[policy]]" in err.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "positive"),
        ('"0s"', "positive"),
        ("-5", "positive"),
        ('"soon"', "not a duration"),
        ("true", "expected seconds"),
        ("4294967296", "32 bits"),
    ],
)
def test_bad_lifetime(gwdir: Path, value: str, reason: str) -> None:
    text = MINIMAL + f"lifetime = {value}\n"
    err = _error(gwdir, text)
    assert err.key == "policy[0].lifetime" and err.line == _line_of(text, "lifetime =")
    assert reason in err.reason


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (("listen = \"192.0.2.1\"", 'listen = "0.0.0.0"'), "gateway.listen", "wildcard"),
        (("listen = \"192.0.2.1\"", 'listen = "vpn.example"'), "gateway.listen", "address"),
        (("listen = \"192.0.2.1\"", "listen = 5"), "gateway.listen", "expected a string"),
        (("psk_file = \"gw.psk\"", 'psk_file = "missing.psk"'), "gateway.psk_file", "no such file"),
        (("psk_file = \"gw.psk\"", "require_xauth = true"), "gateway", "no way to authenticate"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nrequire_xauth = true'), "gateway.require_xauth",
         "users_file"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nxauth_chap = true'), "gateway.xauth_chap",
         "require_xauth"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nxauth_chap = "yes"'), "gateway.xauth_chap",
         "true or false"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nmtu = 100'), "gateway.mtu", "outside"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nbusy_poll = -1'), "gateway.busy_poll", "outside"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nbusy_poll = 200000'), "gateway.busy_poll",
         "outside"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nbusy_poll = "1ms"'), "gateway.busy_poll",
         "integer"),
        (("psk_file = \"gw.psk\"", 'psk_file = "gw.psk"\nid = "dn:nonsense"'), "gateway.id", "identity"),
        (("pool = \"10.79.0.10-10.79.0.20\"", 'pool = "10.79.0.20-10.79.0.10"'), "network.pool", "before"),
        (("local = \"10.78.0.0/24\"", 'local = "10.78.0.0/33"'), "policy[0].local", "selector"),
        (("local = \"10.78.0.0/24\"", 'local = "10.78.0.0/24"\npfs = "modp9999"'), "policy[0].pfs", "DH"),
        (("local = \"10.78.0.0/24\"", 'local = "10.78.0.0/24"\npfs = "modp1024"'), "policy[0].pfs", "legacy"),
        (("name = \"intranet\"", f'name = "{"n" * 65}"'), "policy[0].name", "64"),
        (("name = \"intranet\"\n", ""), "policy[0].name", "required"),
    ],
)  # fmt: skip
def test_semantic_errors(gwdir: Path, change: tuple[str, str], key: str, reason: str) -> None:
    text = MINIMAL.replace(*change)
    err = _error(gwdir, text)
    assert err.key == key and reason in err.reason, str(err)
    assert err.line is not None


def test_certificate(gwdir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpn.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (gwdir / "gw.crt").write_text(pem)
    (gwdir / "ca.crt").write_text(pem)
    private_file(gwdir / "gw.key", key_pem)
    text = MINIMAL.replace('psk_file = "gw.psk"\n', "") + textwrap.dedent("""\
        [gateway.certificate]
        cert = "gw.crt"
        key = "gw.key"
        ca = "ca.crt"
        """)
    config = load_config(gwdir, text)
    assert config.credential is not None and config.credential.certificate == cert
    assert config.trusted_cas == (cert,) and not config.psks
    key_body = key_pem.splitlines()[1]
    assert key_body not in repr(config) and "BEGIN PRIVATE" not in repr(config)

    (gwdir / "gw.key").chmod(0o644)
    err = _error(gwdir, text)
    assert err.key == "gateway.certificate.key" and err.line == _line_of(text, "key =")
    assert "chmod 600" in err.reason and key_body not in str(err)

    err = _error(gwdir, text.replace('ca = "ca.crt"\n', ""))
    assert err.key == "gateway.certificate.cert" and "ca is missing" in err.reason


def test_source_text_finds_keys_in_nested_and_multiline_places() -> None:
    text = textwrap.dedent('''\
        # comment = 1
        [gateway]
        listen = "192.0.2.1"
        banner = """
        not_a_key = 1
        [not_a_table]
        """
        plugins = [
          "a",
          ["b"],
        ]
        [gateway.certificate]
        cert = "x"
        [[policy]]
        name = "a"
        [[policy]]
        "name" = "b"
        esp = { x = 1 }
        [policy.sub]
        y = 2
        ''')
    src = SourceText(text, "t.toml")
    assert src.line_of("gateway.listen") == 3
    assert src.line_of("gateway.plugins") == 8
    assert src.line_of("not_a_table") is None and src.line_of("gateway.not_a_key") == 2
    assert src.line_of("gateway.certificate.cert") == 13
    assert src.line_of("policy[0].name") == 15 and src.line_of("policy[1].name") == 17
    assert src.line_of("policy[1].esp.x") == 18
    assert src.line_of("policy[1].sub.y") == 20
    assert src.line_of("policy[1].missing") == 16 and src.line_of("policy") == 14
    assert src.line_of("nowhere.at.all") is None


def test_error_pickles_and_failed_loads_do_not_warn(gwdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    err = ConfigFileError("g.toml", 4, "gateway.mtu", "too small")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.key, again.reason, str(again)) == (
        "g.toml",
        4,
        "gateway.mtu",
        "too small",
        str(err),
    )
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nlegacy = true\nmtu = 1')
    with caplog.at_level(logging.WARNING, logger="tunvpn.config.gateway"):
        _error(gwdir, text)
    assert not caplog.records


def test_plugin_tables_are_kept_for_named_plugins_only(gwdir: Path) -> None:
    named = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nplugins = ["radius"]')
    cfg = load_config(gwdir, named + '\n[plugin.radius]\nserver = "127.0.0.1"\nretries = 3\n')
    assert cfg.plugins == ("radius",)
    assert dict(cfg.plugin_settings["radius"]) == {"server": "127.0.0.1", "retries": 3}
    text = MINIMAL + "\n[plugin.otp]\nwindow = 1\n"
    error = _error(gwdir, text)
    assert error.key == "plugin.otp" and "gateway.plugins does not name" in str(error)


def test_half_open_limits_reach_the_engine(gwdir: Path) -> None:
    """Issue 14: both half-open limits are set in [gateway] and reach the IKE engine."""
    from tunvpn.gateway.daemon import build_engine_config, options_from_config

    default = build_engine_config(options_from_config(load_config(gwdir, MINIMAL)))
    assert (default.max_half_open, default.max_half_open_per_source) == (1000, 5)
    text = MINIMAL.replace(
        'psk_file = "gw.psk"', 'psk_file = "gw.psk"\nmax_half_open = 300\nmax_half_open_per_source = 2'
    )
    engine = build_engine_config(options_from_config(load_config(gwdir, text)))
    assert (engine.max_half_open, engine.max_half_open_per_source) == (300, 2)
    error = _error(
        gwdir, MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nmax_half_open_per_source = 0')
    )
    assert "max_half_open_per_source" in str(error)


def test_ike_queue_size_reaches_the_gateway_options(gwdir: Path) -> None:
    """Issue 14: the bound of the data thread -> loop IKE queue is set in [gateway] (restart)."""
    from tunvpn.gateway.daemon import RESTART_SETTINGS, options_from_config
    from tunvpn.shell.udp import IKE_QUEUE_SIZE

    assert options_from_config(load_config(gwdir, MINIMAL)).ike_queue_size == IKE_QUEUE_SIZE
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nike_queue_size = 64')
    assert options_from_config(load_config(gwdir, text)).ike_queue_size == 64
    assert "ike_queue_size" in RESTART_SETTINGS
    error = _error(gwdir, MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nike_queue_size = 3'))
    assert "ike_queue_size" in str(error)


def test_reauth_interval_is_a_duration_or_zero(gwdir: Path) -> None:
    """Issue 15: how long a bound phase 1 rekey goes without asking the user again."""
    from tunvpn.gateway.daemon import build_engine_config, options_from_config

    assert load_config(gwdir, MINIMAL).reauth_interval == 0
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nreauth_interval = "{}"')
    assert load_config(gwdir, text.format("8h")).reauth_interval == 8 * 3600
    assert load_config(gwdir, text.format("0")).reauth_interval == 0
    config = load_config(
        gwdir, MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nreauth_interval = 900')
    )
    assert build_engine_config(options_from_config(config)).reauth_interval == 900
    assert "reauth_interval" in str(_error(gwdir, text.format("soon")))


def test_fragmentation_is_yes_force_or_no(gwdir: Path) -> None:
    """Issue 16: IKE fragmentation toward clients that announce it."""
    from tunvpn.gateway.daemon import build_engine_config, options_from_config

    assert load_config(gwdir, MINIMAL).fragmentation == "yes"
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nfragmentation = "{}"')
    config = load_config(gwdir, text.format("no"))
    assert build_engine_config(options_from_config(config)).fragmentation == "no"
    assert "fragmentation" in str(_error(gwdir, text.format("sometimes")))


PEERING = """
[groups]
eng = ["alice", "bob"]
ops = ["olga"]

[[peering]]
name = "engineers"
from = "eng"
to = ["eng", "ops"]
esp = "aes128gcm16"
pfs = "none"
lifetime = "2h"
"""


def test_peering_rules_say_who_meets_whom(gwdir: Path) -> None:
    """Issue 17: [[peering]] blocks, both ways."""
    config = load_config(gwdir, MINIMAL + PEERING)
    [rule] = config.peering
    assert (rule.name, rule.from_groups, rule.to_groups) == ("engineers", ("eng",), ("eng", "ops"))
    assert rule.pfs is None and rule.lifetime == 7200 and rule.esp.key_length == 128
    assert rule.pairs({"eng"}, {"ops"}) and rule.pairs({"ops"}, {"eng"})  # a tunnel goes both ways
    assert not rule.pairs({"ops"}, {"ops"}) and not rule.pairs(set(), {"eng"})
    everyone = load_config(gwdir, MINIMAL + '[[peering]]\nname = "all"\nfrom = "*"\nto = "*"\n').peering[0]
    assert everyone.pairs(set(), set())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace('to = ["eng", "ops"]', 'to = ["eng", "sales"]'), "to"),
        (lambda t: t.replace('from = "eng"\n', ""), "from"),
        (lambda t: t.replace('pfs = "none"', 'pfs = "ecp999"'), "pfs"),
        (lambda t: t + '\n[[peering]]\nname = "engineers"\nfrom = "eng"\nto = "eng"\n', "name"),
        (lambda t: t.replace('lifetime = "2h"', 'colour = "blue"'), "colour"),
    ],
)
def test_a_bad_peering_block_names_its_key(gwdir: Path, change, key: str) -> None:  # type: ignore[no-untyped-def]
    assert key in str(_error(gwdir, change(MINIMAL + PEERING)))


def test_a_policy_can_be_limited_to_peer_identities(gwdir: Path) -> None:
    """Issue 18 (seed paragraph 0023): [[policy]] peers, the patterns of peer_id_patterns."""
    from tunvpn.ike.identity import Identity

    desk = '\n[[policy]]\nname = "desk"\nlocal = "10.78.7.0/24"\n'
    text = MINIMAL + desk + 'peers = ["CN=alice*,O=*", "@*.branch.example"]\n'
    config = load_config(gwdir, text)
    rule = next(r for r in config.rules if r.policy.name == "desk")
    assert [str(p) for p in rule.peers] == ["CN=alice*,O=*", "@*.branch.example"]
    assert rule.applies_to(None, (), Identity.parse("CN=alice,O=Example"))
    assert rule.applies_to(None, (), Identity.parse("@gw.branch.example"))
    assert not rule.applies_to("bob", (), Identity.parse("CN=bob,O=Example"))
    assert not rule.applies_to("bob", (), None)  # no proven identity: not by peers
    bad = MINIMAL + '\n[[policy]]\nname = "desk"\nlocal = "10.78.7.0/24"\npeers = ["CN="]\n'
    assert "peers" in str(_error(gwdir, bad))


SITE = """
[[site]]
name = "branch"
address = "198.18.2.2"
psk_file = "site.psk"
networks = ["10.88.0.0/24"]
"""
SITE_SECRET = "a-key-for-these-two-gateways-only-1234"


def test_a_site_block_names_the_other_gateway_its_key_and_the_networks_on_both_sides(gwdir: Path) -> None:
    """Issue 18: [[site]] with its own key file (not the group key); ``local`` defaults to our
    pool and our policies' networks, leaving out a policy that hands out the site's networks."""
    private_file(gwdir / "site.psk", SITE_SECRET + "\n")
    text = MINIMAL + '\n[[policy]]\nname = "to-branch"\nlocal = "10.88.0.0/24"\n' + SITE
    [site] = load_config(gwdir, text).sites
    assert (site.name, site.address, str(site.identity), site.initiate) == (
        "branch",
        "198.18.2.2",
        "198.18.2.2",
        True,
    )
    assert site.secret == SITE_SECRET.encode() and SITE_SECRET not in repr(site)
    assert [str(n) for n in site.networks] == ["10.88.0.0/24"]
    assert "10.88.0.0/24" not in [str(n) for n in site.local] and len(site.local) == 2  # pool + the policy
    explicit = load_config(
        gwdir, MINIMAL + SITE + 'local = ["10.78.0.0/24"]\nid = "@branch.example"\ninitiate = false\n'
    ).sites[0]
    assert [str(n) for n in explicit.local] == ["10.78.0.0/24"] and not explicit.initiate
    assert str(explicit.identity) == "@branch.example"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace('address = "198.18.2.2"', 'address = "branch..example"'), "address"),
        (lambda t: t.replace('address = "198.18.2.2"', 'address = "branch.example"'), "id"),
        (lambda t: t.replace('networks = ["10.88.0.0/24"]', "networks = []\ninitiate = false"), "networks"),
        (lambda t: t.replace('psk_file = "site.psk"', 'psk_file = "missing.psk"'), "psk_file"),
        (lambda t: t + SITE.replace('"branch"', '"other"'), "address"),
        (lambda t: t + SITE, "name"),
        (lambda t: t.replace('name = "branch"', 'name = "a/b"'), "name"),
    ],
)
def test_a_bad_site_block_names_its_key(gwdir: Path, change, key: str) -> None:  # type: ignore[no-untyped-def]
    private_file(gwdir / "site.psk", SITE_SECRET + "\n")
    assert key in str(_error(gwdir, change(MINIMAL + SITE)))


def test_a_site_we_start_may_learn_the_other_sites_networks(gwdir: Path) -> None:
    """No networks: the other gateway pushes them (only when we start the tunnel)."""
    private_file(gwdir / "site.psk", SITE_SECRET + "\n")
    [site] = load_config(gwdir, MINIMAL + SITE.replace('networks = ["10.88.0.0/24"]\n', "")).sites
    assert site.networks == () and site.initiate


def test_a_site_may_be_given_by_name_with_its_identity(gwdir: Path) -> None:
    private_file(gwdir / "site.psk", SITE_SECRET + "\n")
    text = MINIMAL + SITE.replace(
        'address = "198.18.2.2"', 'address = "gw.branch.example"\nid = "@gw.branch.example"'
    )
    [site] = load_config(gwdir, text).sites
    assert site.address == "gw.branch.example" and str(site.identity) == "@gw.branch.example"


def test_a_site_may_introduce_clients_of_named_groups_to_its_gateway(gwdir: Path) -> None:
    """``introduce``: the groups (or "*") whose clients meet the site's gateway (issue 18);
    each must be defined, and clients need addresses from our pool."""
    private_file(gwdir / "site.psk", SITE_SECRET + "\n")
    text = MINIMAL + '\n[groups]\neng = ["alice"]\n' + SITE + 'introduce = ["eng"]\n'
    [site] = load_config(gwdir, text).sites
    assert site.introduce == ("eng",)
    assert site.introduces({"eng", "ops"}) and not site.introduces({"ops"})
    [everyone] = load_config(gwdir, MINIMAL + SITE + 'introduce = ["*"]\n').sites
    assert everyone.introduces(())
    [nobody] = load_config(gwdir, MINIMAL + SITE).sites
    assert not nobody.introduce and not nobody.introduces({"eng"})
    assert "'ops' is not defined" in str(_error(gwdir, MINIMAL + SITE + 'introduce = ["ops"]\n'))


def test_a_site_key_must_be_long(gwdir: Path) -> None:
    private_file(gwdir / "site.psk", "short\n")
    assert "20 characters" in str(_error(gwdir, MINIMAL + SITE))


def test_a_site_without_a_key_needs_our_certificate(gwdir: Path) -> None:
    """Without psk_file the two gateways sign: a gateway without [gateway.certificate] and a
    CA cannot, and says what to give."""
    error = str(_error(gwdir, MINIMAL + SITE.replace('psk_file = "site.psk"\n', "")))
    assert "psk_file" in error and "[gateway.certificate]" in error


def test_the_metrics_endpoint_is_an_address_and_port(gwdir: Path) -> None:
    """Issue 20: ``metrics = "127.0.0.1:9477"`` (IPv6 in brackets); beyond loopback is warned."""
    text = MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nmetrics = "127.0.0.1:9477"')
    config = load_config(gwdir, text)
    assert config.metrics == ("127.0.0.1", 9477) and not config.metrics_per_user
    six = load_config(
        gwdir, MINIMAL.replace('psk_file = "gw.psk"', 'psk_file = "gw.psk"\nmetrics = "[::1]:9477"')
    )
    assert six.metrics == ("::1", 9477)
    for bad in ("9477", "localhost:9477", "127.0.0.1:0", "127.0.0.1:http"):
        err = _error(gwdir, MINIMAL.replace('psk_file = "gw.psk"', f'psk_file = "gw.psk"\nmetrics = "{bad}"'))
        assert err.key == "gateway.metrics", (bad, err)
