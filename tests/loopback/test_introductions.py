"""Introductions (issue 17, first slice): the gateway's ``[[peering]]`` rules, applied to the
clients logged in right now, reach each client in phase 1a: in the Mode Config REPLY at login,
and as a CFG_SET when a peer comes or goes. Real shells on loopback (no TUN device).

alice and bob (group eng) are introduced to each other, with one pair secret both get and
complementary roles; carol (not in eng) is introduced to nobody and to nobody is she
introduced; when bob leaves, alice is told at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io

from tests.helpers.loopback import (
    INTRANET,
    client_options,
    free_port_pair,
    gateway_options,
    needs_loopback,
    serve,
    stop,
    wait_until,
)
from tunvpn.client import peerlinks
from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.config.credentials import UserTable
from tunvpn.config.gateway import PeeringRule
from tunvpn.gateway.daemon import SimpleRule
from tunvpn.ike.peers import Role

pytestmark = needs_loopback

ENG = PeeringRule("eng", ("eng",), ("eng",))


async def _connect(options: ClientOptions, local: str) -> tuple[Client, asyncio.Task[int]]:
    client = Client(
        dataclasses.replace(options, exit_after_established=False),
        local,
        progress=Progress(out=io.StringIO()),
    )
    task = asyncio.ensure_future(client.run(handle_signals=False))
    await wait_until(lambda: client.established or task.done(), 20)
    assert client.established, client.message
    return client, task


def test_peers_are_introduced_at_login_and_told_when_a_peer_comes_and_goes() -> None:
    ike, natt = free_port_pair()
    seen: dict[str, object] = {}

    async def scenario() -> None:
        options = dataclasses.replace(
            gateway_options(ike, natt, (SimpleRule(INTRANET),), peering=(ENG,)),
            users=UserTable({"alice": b"a-pass", "bob": b"b-pass", "carol": b"c-pass"}),
            groups={"eng": frozenset({"alice", "bob"})},
        )
        gateway, server = await serve(options)
        clients = []
        try:
            alice, task = await _connect(client_options(ike, natt, "alice", "a-pass"), "127.0.0.2")
            clients.append((alice, task))
            seen["alice alone"] = alice.peers.peers
            bob, task = await _connect(client_options(ike, natt, "bob", "b-pass"), "127.0.0.3")
            clients.append((bob, task))
            await wait_until(lambda: len(alice.peers.peers) == 1, 10)  # a CFG_SET told alice
            seen["alice"], seen["bob"] = alice.peers.peers, bob.peers.peers
            seen["alice status"] = alice.status()["tunnels"][0]["peers"]  # type: ignore[index]
            carol, task = await _connect(client_options(ike, natt, "carol", "c-pass"), "127.0.0.4")
            clients.append((carol, task))
            await asyncio.sleep(0.3)
            seen["carol"] = carol.peers.peers
            seen["alice with carol"] = alice.peers.peers
            bob.stop("bob leaves")
            await wait_until(lambda: not alice.peers.peers, 10)
            seen["alice after bob"] = alice.peers.peers
            seen["pairs left"] = len(gateway.pair_secrets)
        finally:
            for client, task in clients:
                client.stop("test over")
                await asyncio.wait_for(task, 10)
            await stop(gateway, server)

    asyncio.run(scenario())
    assert seen["alice alone"] == ()
    [bob_seen_by_alice] = seen["alice"]  # type: ignore[misc]
    [alice_seen_by_bob] = seen["bob"]  # type: ignore[misc]
    assert (bob_seen_by_alice.name, alice_seen_by_bob.name) == ("bob", "alice")
    assert bob_seen_by_alice.secret == alice_seen_by_bob.secret  # one secret for the pair
    assert {bob_seen_by_alice.role, alice_seen_by_bob.role} == {Role.INITIATOR, Role.RESPONDER}
    # the lower address starts: alice got the first address of the pool
    assert str(alice_seen_by_bob.address) < str(bob_seen_by_alice.address)
    assert alice_seen_by_bob.role is Role.RESPONDER and bob_seen_by_alice.role is Role.INITIATOR
    assert bob_seen_by_alice.endpoint[0] == "127.0.0.3" and alice_seen_by_bob.endpoint[0] == "127.0.0.2"
    assert b"tunvpn-peer:alice@" in bytes(alice_seen_by_bob.identity.value)  # type: ignore[arg-type]
    [status] = seen["alice status"]  # type: ignore[misc]
    assert status["name"] == "bob" and status["path"] in ("introduced", "connecting", "phase 1 up", "direct")
    assert seen["carol"] == () and seen["alice with carol"] == seen["alice"]
    assert seen["alice after bob"] == () and seen["pairs left"] == 0


def test_introduced_clients_build_a_direct_tunnel_and_lose_it_when_one_leaves() -> None:
    """What an introduction is for: alice (the lower inner address, so she starts) and bob build
    a Main Mode phase 1 with the pair's secret and the pair's Quick Mode between their inner
    addresses, endpoint to endpoint, without the gateway; when bob leaves, alice's direct SAs
    go at once."""
    ike, natt = free_port_pair()
    seen: dict[str, object] = {}

    async def scenario() -> None:
        options = dataclasses.replace(
            gateway_options(ike, natt, (SimpleRule(INTRANET),), peering=(ENG,)),
            users=UserTable({"alice": b"a-pass", "bob": b"b-pass"}),
            groups={"eng": frozenset({"alice", "bob"})},
        )
        gateway, server = await serve(options)
        clients = []
        try:
            # on the NAT-T port with the gateway, as every client with a data path is: the
            # gateway announces that endpoint, where direct tunnels start
            alice_options = dataclasses.replace(
                client_options(ike, natt, "alice", "a-pass"), force_encap=True
            )
            alice, task = await _connect(alice_options, "127.0.0.2")
            clients.append((alice, task))
            ticks: list[float] = []
            tick = alice.links.tick
            alice.links.tick = lambda now: (ticks.append(now), tick(now))[1]  # type: ignore[method-assign]
            await asyncio.sleep(3 * peerlinks.TICK)
            seen["ticks alone"] = len(ticks)  # nobody introduced: the timer sleeps
            bob_options = dataclasses.replace(client_options(ike, natt, "bob", "b-pass"), force_encap=True)
            bob, task = await _connect(bob_options, "127.0.0.3")
            clients.append((bob, task))

            def direct(client: Client) -> bool:
                return any(link.state == "direct" for link in client.links.links.values())

            await wait_until(lambda: direct(alice) and direct(bob), 15)
            [a_link] = alice.links.links.values()
            [b_link] = bob.links.links.values()
            seen["alice child"], seen["bob child"] = a_link.child, b_link.child
            seen["gateway sas"] = {sa.remote[0] for sa in gateway.engine.ike_sas()}
            seen["alice status"] = alice.status()["tunnels"][0]["peers"]  # type: ignore[index]
            seen["alice sas"] = len(alice.engine.ike_sas())
            seen["ticks"] = len(ticks)
            bob.stop("bob leaves")
            await wait_until(lambda: not alice.links.links, 10)
            await asyncio.sleep(0.3)
            seen["alice sas after"] = [sa.remote for sa in alice.engine.ike_sas() if not sa.dead]
        finally:
            for client, task in clients:
                client.stop("test over")
                await asyncio.wait_for(task, 10)
            await stop(gateway, server)

    asyncio.run(scenario())
    mine, theirs = seen["alice child"], seen["bob child"]
    assert mine is not None and theirs is not None
    assert mine.spi_out == theirs.spi_in and mine.spi_in == theirs.spi_out  # type: ignore[attr-defined]
    assert mine.remote == ("127.0.0.3", natt) and theirs.remote == ("127.0.0.2", natt)  # type: ignore[attr-defined]
    assert str(mine.local_ts) == f"{mine.local_ts}" and str(mine.remote_ts).endswith("/32")  # type: ignore[attr-defined]
    [status] = seen["alice status"]  # type: ignore[misc]
    assert status["path"] == "direct" and status["remote"] == f"127.0.0.3:{natt}"
    assert seen["alice sas"] == 2  # the gateway and bob
    # alone, alice's direct-tunnel timer slept; bob's introduction woke it (she starts, by it)
    assert seen["ticks alone"] == 0 and seen["ticks"] > 0, (seen["ticks alone"], seen["ticks"])
    assert seen["alice sas after"] == [("127.0.0.1", natt)], seen["alice sas after"]


def test_a_client_answers_nobody_who_starts_a_phase_1_with_it() -> None:
    """bob holds the group key too; pointing his client at alice's gets no answer at all: her
    client keeps no state for him and counts the drop (issue 17: only introduced peers will
    get in, over their own pair secret)."""
    ike, natt = free_port_pair()

    async def scenario() -> tuple[int, int, int]:
        gateway, server = await serve(gateway_options(ike, natt, (SimpleRule(INTRANET),)))
        alice, task = await _connect(client_options(ike, natt, "alice", "a-pass"), "127.0.0.2")
        try:
            towards_alice = dataclasses.replace(
                client_options(ike, natt, "bob", "b-pass"), gateway="127.0.0.2", timeout=3, reconnect=False
            )
            bob = Client(towards_alice, "127.0.0.3", progress=Progress(out=io.StringIO()))
            code = await asyncio.wait_for(bob.run(handle_signals=False), 20)
            return (
                code,
                alice.engine.drops["first message to a peer that answers none"],
                len(alice.engine.ike_sas()),
            )
        finally:
            alice.stop("test over")
            await asyncio.wait_for(task, 10)
            await stop(gateway, server)

    code, dropped, sas = asyncio.run(scenario())
    assert code != 0 and dropped >= 1 and sas == 1  # alice holds only her SA with the gateway


def test_clients_that_become_peers_in_an_extra_protocol_are_introduced_when_it_passes() -> None:
    """A client is a peer only once its extra protocols passed (here the "code" protocol, whose
    plugin also puts it in group eng): the gateway introduces it then, not at the next login
    or departure of someone else."""
    from tests.helpers.protocol_plugins import CodeProtocol, SoftToken
    from tunvpn.ike.policies import ExtraProtocol

    ike, natt = free_port_pair()
    seen: dict[str, object] = {}

    async def scenario() -> None:
        options = dataclasses.replace(
            gateway_options(
                ike,
                natt,
                (SimpleRule(INTRANET),),
                peering=(ENG,),
                plugin_objects=(CodeProtocol(),),
                protocols=(ExtraProtocol("code", (("prompt", "Enter the code"),)),),
            ),
            users=UserTable({"alice": b"a-pass", "bob": b"b-pass"}),
        )
        gateway, server = await serve(options)
        clients = []
        try:
            for user, password, local in (("alice", "a-pass", "127.0.0.2"), ("bob", "b-pass", "127.0.0.3")):
                client_opts = dataclasses.replace(
                    client_options(ike, natt, user, password),
                    plugin_objects=(SoftToken(),),
                    plugin_settings={"soft-token": {"code": "314159"}},
                )
                clients.append(await _connect(client_opts, local))
            alice, bob = clients[0][0], clients[1][0]
            await wait_until(lambda: alice.peers.peers and bob.peers.peers, 10)
            seen["alice"], seen["bob"] = alice.peers.peers, bob.peers.peers
        finally:
            for client, task in clients:
                client.stop("test over")
                await asyncio.wait_for(task, 10)
            await stop(gateway, server)

    asyncio.run(scenario())
    assert [p.name for p in seen["alice"]] == ["bob"]  # type: ignore[attr-defined]
    assert [p.name for p in seen["bob"]] == ["alice"]  # type: ignore[attr-defined]
