"""Blocking plugin calls run in one bounded pool (issue 14): with the RADIUS server
black-holed (a real UDP socket on 127.0.0.3 that reads every request and never answers),
many parallel RADIUS logins hold at most ``plugin_workers`` threads, each fails (within the
RADIUS plugin's own timeout, or at once as "busy"), and a users-file login on the same
gateway still succeeds while the pool is full."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.loopback import (
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    needs_loopback,
    run_client,
    serve,
    stop,
)
from tests.helpers.radius_fixture import black_hole_radius
from tunvpn.gateway.daemon import BUSY_MESSAGE
from tunvpn.plugins.host import WORKER_PREFIX

pytest.importorskip("tunvpn_radius", reason="pip install -e plugins/tunvpn-radius")

pytestmark = needs_loopback

WORKERS = 3
RADIUS_LOGINS = 10
RADIUS_TIMEOUT = 6  # seconds, one try: below the gateway's PLUGIN_TIMEOUT (30)


@pytest.fixture
def black_hole() -> Iterator[tuple[int, list[bytes]]]:
    """A RADIUS "server" on 127.0.0.3 that reads every request and answers none."""
    with black_hole_radius() as hole:
        yield hole


def plugin_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"{WORKER_PREFIX}-radius-"))


def test_black_holed_radius_holds_at_most_the_pool_and_users_file_logins_go_on(
    black_hole: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, seen = black_hole
    secret = tmp_path / "radius-secret"
    secret.write_text("black-hole-secret\n")
    secret.chmod(0o600)
    radius = {
        "servers": [{"host": "127.0.0.3", "port": port, "secret_file": str(secret)}],
        "timeout": RADIUS_TIMEOUT,
        "retries": 0,
    }

    async def scenario() -> None:
        ike, natt = free_port_pair()
        options = gateway_options(
            ike, natt, RULES, plugins=("radius",), plugin_settings={"radius": radius}, plugin_workers=WORKERS
        )
        gateway, server = await serve(options)
        most = 0
        sampling = True

        async def sample() -> None:
            nonlocal most
            while sampling:
                most = max(most, plugin_threads())
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        try:
            radius_logins = [
                asyncio.ensure_future(
                    run_client(
                        dataclasses.replace(client_options(ike, natt, f"r{i}", "r-pass"), timeout=25),
                        f"127.0.1.{i + 1}",
                        timeout=40,
                    )
                )
                for i in range(RADIUS_LOGINS)
            ]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while gateway.plugins.pool("radius").busy < WORKERS:  # every worker waits for the black hole
                assert loop.time() < deadline, "the RADIUS logins never filled the pool"
                await asyncio.sleep(0.05)
            alice, alice_records = await run_client(
                dataclasses.replace(
                    client_options(ike, natt, "alice", "a-pass"), exit_after_established=True
                ),
                "127.0.2.1",
            )
            print(
                f"alice while {gateway.plugins.pool('radius').busy} of {WORKERS} workers wait: {alice.result}"
            )
            assert alice.result == 0, alice_records
            results = await asyncio.gather(*radius_logins)
        finally:
            sampling = False
            await sampler
            await stop(gateway, server)
        failures = []
        for client, records in results:
            assert client.result != 0, records
            failed = [r["message"] for r in records if r.get("state") == "failed"]
            failures.append(failed[-1] if failed else "")
        print(f"most plugin threads: {most}; RADIUS requests swallowed: {len(seen)}; failures: {failures}")
        assert 0 < most <= WORKERS
        assert all(("no RADIUS server answered" in f) or (BUSY_MESSAGE in f) for f in failures), failures
        assert any(BUSY_MESSAGE in f for f in failures)  # refused at once, not queued
        assert len(seen) >= WORKERS  # the pool's calls really reached the black hole

    asyncio.run(scenario())


def test_a_burst_of_logins_waits_for_the_users_file_instead_of_being_refused() -> None:
    """Ten users log in at once against scrypt lines of the users file (tens of ms each) with
    two workers: the logins the workers cannot take at once wait their turn (the users file is
    the last login source asked) and all succeed. Before, every login beyond the workers was
    refused at once as "busy"."""
    from tunvpn.config.credentials import UserTable
    from tunvpn.config.passwords import PasswordHash, hash_password

    users = UserTable({f"u{i}": PasswordHash.parse(hash_password(f"p{i}")) for i in range(10)})

    async def scenario() -> list[int]:
        ike, natt = free_port_pair()
        options = dataclasses.replace(gateway_options(ike, natt, RULES, plugin_workers=2), users=users)
        gateway, server = await serve(options)
        try:
            results = await asyncio.gather(
                *(
                    run_client(
                        dataclasses.replace(
                            client_options(ike, natt, f"u{i}", f"p{i}"), exit_after_established=True
                        ),
                        f"127.0.3.{i + 1}",
                        timeout=40,
                    )
                    for i in range(10)
                )
            )
        finally:
            await stop(gateway, server)
        return [client.result for client, _ in results]

    assert asyncio.run(scenario()) == [0] * 10
