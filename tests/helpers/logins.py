"""The login tests' set-up (tests/loopback/test_logins.py, test_audit.py, tests/unit/config/
test_passwords.py, tests/unit/ike/test_login_gate.py): a gateway with no users of its own, a
login plugin, a client per attempt from any loopback address, a gateway from a gateway.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.loopback import CLIENT, GATEWAY, PSK
from tunvpn.client.daemon import ClientOptions
from tunvpn.config.gateway import parse_gateway_config
from tunvpn.config.pool import AddressPool
from tunvpn.gateway.daemon import Gateway, GatewayOptions, options_from_config
from tunvpn.ike.config import PskTable
from tunvpn.plugins import CredentialRequest, Verdict, hookimpl
from tunvpn.testing import run_client, serve

__all__ = [
    "GW_FILE",
    "PasswordBackend",
    "attempt",
    "client_options",
    "file_gateway",
    "gateway_options",
    "serve",
]


class PasswordBackend:
    """A login plugin (a RADIUS or OTP server would do the same): alice / a-pass."""

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> Verdict | None:
        return (
            Verdict.accept() if (request.user, request.password) == ("alice", "a-pass") else Verdict.reject()
        )


def gateway_options(ike: int, natt: int, **kw: object) -> GatewayOptions:
    """A gateway on loopback with the test PSK and a pool; logins come from ``kw``."""
    return GatewayOptions(
        listen=GATEWAY,
        psks=PskTable({"*": PSK}),
        ike_port=ike,
        natt_port=natt,
        pool=AddressPool.parse("10.79.0.10-10.79.0.20"),
        **kw,  # type: ignore[arg-type]
    )


def client_options(
    ike: int, natt: int, user: str | None = None, password: str | None = None
) -> ClientOptions:
    """A client that gives up after 10 s and exits once its SAs are up."""
    return ClientOptions(
        gateway=GATEWAY,
        psks=PskTable({"*": PSK}),
        gateway_port=ike,
        gateway_natt_port=natt,
        ike_port=ike,
        natt_port=natt,
        user=user,
        password=password,
        password_prompt=False,
        timeout=10,
        exit_after_established=True,
    )


async def attempt(
    gateway: Gateway, cl: ClientOptions, local: str = CLIENT
) -> tuple[int, list[dict[str, Any]]]:
    """One client against the running ``gateway``, from the address ``local``: its exit code
    and progress records."""
    client, records = await run_client(cl, local)
    assert client.result is not None
    return client.result, records


GW_FILE = """
[gateway]
listen = "192.0.2.1"
psk = "a-long-random-group-secret-for-tests-0123456789"
{extra}

[network]
pool = "10.79.0.10-10.79.0.20"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
"""


def file_gateway(tmp_path: Path, extra: str) -> Gateway:
    """A gateway (not started) from :data:`GW_FILE` with ``extra`` in its [gateway] table and
    a users file ``users`` (alice: a-pass) in ``tmp_path``."""
    text = GW_FILE.format(extra=extra)
    (tmp_path / "users").write_text("alice:a-pass\n")
    (tmp_path / "users").chmod(0o600)
    return Gateway(
        options_from_config(parse_gateway_config(text, "gw.toml", base_dir=tmp_path, file_mode=0o600))
    )
