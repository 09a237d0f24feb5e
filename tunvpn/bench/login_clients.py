"""The load generator of ``tunvpn bench logins`` (:mod:`tunvpn.bench.logins`): many
:class:`tunvpn.client.daemon.Client` objects in one asyncio loop, each login from its own
loopback address (its own UDP sockets), no TUN device. Imported only when the bench runs, so
that ``tunvpn --help`` does not load the client."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

from tunvpn.bench.logins import (
    GATEWAY_IP,
    PSK,
    LoginBenchOptions,
    Outcome,
    password_of,
    source_address,
    user_name,
)
from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.ike.config import PskTable
from tunvpn.ike.constants import DHGroup

SUITES = {"ecp256": DHGroup.ECP_256, "x25519": DHGroup.CURVE25519}
"""``--suite`` -> the DH group the clients offer (phase 1 and PFS)."""


class _Watch(Progress):
    """A client's progress, kept as two facts: when its SAs came up, and why it failed."""

    def __init__(self) -> None:
        super().__init__(json_lines=False)
        self.up_at: float | None = None
        self.failure: str | None = None
        self.up = asyncio.Event()

    def report(self, step: str, text: str, **fields: object) -> None:
        if step == "established" and fields.get("state") == "up":
            self.up_at = time.monotonic()
            self.up.set()
        elif fields.get("state") == "failed" and self.failure is None:
            self.failure = f"{step}: {text}"


class Generator:
    """The clients: each login a new :class:`Client` from the next source address."""

    def __init__(self, options: LoginBenchOptions, ike: int, natt: int, users: int) -> None:
        self.options = options
        self.users = users
        group = SUITES[options.suite]
        self.base = ClientOptions(
            gateway=GATEWAY_IP,
            psks=PskTable({"*": PSK.encode()}),
            gateway_port=ike,
            gateway_natt_port=natt,
            ike_port=ike,
            natt_port=natt,
            password_prompt=False,
            ike_groups=(group,),
            pfs=group if options.pfs else None,
            timeout=options.timeout,
            dns_backend=None,
        )
        self._addresses = itertools.count()
        self._users = itertools.count()
        self.held: list[tuple[Client, asyncio.Task[int]]] = []

    def _client(self, hold: bool) -> tuple[Client, _Watch]:
        n = next(self._users) % self.users
        password = "bench-password-shared" if self.options.passwords == "scrypt" else password_of(n)
        options = dataclasses.replace(
            self.base, user=user_name(n), password=password, exit_after_established=not hold
        )
        watch = _Watch()
        return Client(options, source_address(next(self._addresses)), progress=watch), watch

    async def login(self) -> Outcome:
        """One login, then the client deletes its SAs and closes its sockets."""
        client, watch = self._client(hold=False)
        started = time.monotonic()
        try:
            code = await client.run(handle_signals=False)
        except OSError as exc:  # its address could not be bound
            return Outcome(False, None, f"client: {exc}")
        if code == 0 and watch.up_at is not None:
            return Outcome(True, watch.up_at - started)
        return Outcome(False, None, watch.failure or client.message or f"exit {code}")

    async def login_and_hold(self) -> Outcome:
        """One login whose client stays connected (until :meth:`release`)."""
        client, watch = self._client(hold=True)
        started = time.monotonic()
        task = asyncio.ensure_future(client.run(handle_signals=False))
        up = asyncio.ensure_future(watch.up.wait())
        await asyncio.wait({task, up}, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if watch.up_at is not None and not task.done():
            self.held.append((client, task))
            return Outcome(True, watch.up_at - started)
        if not task.done():
            task.cancel()
        try:
            await task
        except OSError as exc:
            return Outcome(False, None, f"client: {exc}")
        except asyncio.CancelledError:
            pass
        return Outcome(False, None, watch.failure or client.message or "ended")

    async def release(self, batch: int = 20) -> None:
        """Held clients delete their SAs (the gateway is told) and close, ``batch`` at a time: a
        thousand Deletes at once overflow the gateway's socket buffer on loopback, and the SAs
        whose Delete was lost would stay until dead peer detection (150 s)."""
        held, self.held = self.held, []
        for start in range(0, len(held), batch):
            chunk = held[start : start + batch]
            for client, _task in chunk:
                client.close("bench done")
            for _client, task in chunk:
                task.cancel()
            await asyncio.gather(*(t for _c, t in chunk), return_exceptions=True)
            await asyncio.sleep(0.01)

    async def run_many(
        self, concurrency: int, count: int | None, duration: float | None, hold: bool = False
    ) -> tuple[list[Outcome], float]:
        """``concurrency`` workers, each running logins back to back, until ``count`` logins were
        started or ``duration`` seconds have passed; the outcomes and the wall time."""
        outcomes: list[Outcome] = []
        numbers = itertools.count()
        started = time.monotonic()
        deadline = started + duration if duration is not None else None

        async def worker() -> None:
            while True:
                if count is not None and next(numbers) >= count:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                outcomes.append(await (self.login_and_hold() if hold else self.login()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.monotonic() - started


__all__ = ["SUITES", "Generator"]
