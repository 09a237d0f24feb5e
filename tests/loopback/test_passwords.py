"""A gateway whose users file holds scrypt hashes (tunvpn/config/passwords.py) logs users in over
UDP on loopback: the wrong password is refused, the right one accepted (the hash format and
its known answer are tested in tests/unit/config/test_passwords.py)."""

from __future__ import annotations

import asyncio

from tests.helpers.logins import attempt, client_options, gateway_options, serve
from tests.helpers.loopback import free_port_pair, needs_loopback
from tunvpn.config.credentials import UserTable
from tunvpn.config.passwords import hash_password


@needs_loopback
def test_login_against_a_hashed_users_file() -> None:
    ike, natt = free_port_pair()
    users = UserTable.parse(f"alice:{hash_password('a-pass')}\n", "users")

    async def scenario() -> tuple[int, int]:
        gateway, server = await serve(gateway_options(ike, natt, users=users))
        try:
            wrong, _ = await attempt(gateway, client_options(ike, natt, "alice", "not-it"))
            right, _ = await attempt(gateway, client_options(ike, natt, "alice", "a-pass"), "127.0.0.3")
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 5)
        return wrong, right

    assert asyncio.run(scenario()) == (1, 0)
