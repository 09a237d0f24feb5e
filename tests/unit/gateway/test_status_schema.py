"""``tunvpn status --json`` schema 2 (issue 20): the gateway's policies as objects, not
preformatted strings, and the schema's version in every answer."""

from __future__ import annotations

from tests.helpers.loopback import ENG, INTRANET, MAIL
from tunvpn.build import build_kind
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import STATUS_SCHEMA, Gateway, GatewayOptions, SimpleRule
from tunvpn.ike.config import PskTable


def test_policies_are_objects_with_who_gets_them() -> None:
    gateway = Gateway(
        GatewayOptions(
            listen="127.0.0.1",
            psks=PskTable({"*": b"a-long-enough-group-secret-0123"}),
            pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
            rules=(
                SimpleRule(INTRANET),
                SimpleRule(MAIL, users=("alice",)),
                SimpleRule(ENG, groups=("eng",)),
            ),
            groups={"eng": frozenset()},
            tun=None,
        )
    )
    status = gateway.status()
    assert status["schema"] == STATUS_SCHEMA == 2
    assert status["build"] == build_kind()  # interpreted, or compiled (mypyc): issue 21
    intranet, mail, eng = status["policies"]  # type: ignore[misc]
    assert intranet == {
        "name": "intranet",
        "local": "10.78.0.0/24",
        "remote": "assigned",
        "esp": [str(s) for s in INTRANET.esp],
        "pfs": "ecp_256",
        "lifetime": 3600,
        "lifetime_kb": None,
        "groups": [],
        "users": [],
        "peers": [],
    }
    assert mail["local"] == "10.78.5.0/24[tcp/993]" and mail["pfs"] is None and mail["users"] == ["alice"]
    assert mail["lifetime"] == 1200 and mail["esp"] == ["aes128gcm16"]
    assert eng["groups"] == ["eng"] and eng["pfs"] == "ecp_384"
