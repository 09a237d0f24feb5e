"""``tunvpn_serve``: a plugin's service runs as long as the gateway does, is cancelled (and
may clean up) when it stops, is restarted when a reload changes the plugin's settings, and a
service that raises is logged once without stopping the gateway. ``tunvpn_authorize``: a
directory plugin adds groups, a per-user policy and an address, or refuses a user."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from tests.helpers.loopback import RULES, free_port_pair, gateway_options, loopback_available
from tunvpn.gateway.daemon import Gateway
from tunvpn.ike.policies import ExtraProtocol, Phase2Policy
from tunvpn.ipsec.selectors import TrafficSelector
from tunvpn.plugins import Authorization, GatewayContext, Verdict, hookimpl
from tunvpn.testing import DEFAULT_POLICIES, run_session

pytestmark = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable")


class Service:
    __name__ = "svc"

    def __init__(self, fail: bool = False) -> None:
        self.started: list[GatewayContext] = []
        self.stopped = 0
        self.fail = fail

    @hookimpl
    async def tunvpn_serve(self, context: GatewayContext) -> None:
        self.started.append(context)
        if self.fail:
            raise RuntimeError("cannot listen on 10.0.0.1:1701")
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped += 1


async def _run(gateway: Gateway, body: object) -> None:
    ready = asyncio.Event()
    server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        await body  # type: ignore[misc]
    finally:
        gateway.stop()
        await asyncio.wait_for(server, 10)


def test_a_service_runs_with_the_gateway_and_restarts_when_its_settings_change() -> None:
    service = Service()
    ike, natt = free_port_pair()
    options = gateway_options(
        ike,
        natt,
        RULES,
        plugin_objects=(service,),
        protocols=(ExtraProtocol("svc"),),
        plugin_settings={"svc": {"port": 1}},
    )
    gateway = Gateway(options)

    async def body() -> None:
        await asyncio.sleep(0.05)
        assert len(service.started) == 1 and service.stopped == 0
        same = gateway.apply_options(dataclasses.replace(options))
        assert not any("services restarted" in c for c in same["changes"])  # type: ignore[union-attr]
        changed = gateway.apply_options(dataclasses.replace(options, plugin_settings={"svc": {"port": 2}}))
        assert "plugin settings changed: plugin services restarted" in changed["changes"]  # type: ignore[operator]
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(service.started) == 2:
                break
        assert service.stopped == 1 and len(service.started) == 2
        assert service.started[1].settings("svc") == {"port": 2}

    asyncio.run(_run(gateway, body()))
    assert service.stopped == 2  # the second one too, at shutdown


def test_a_service_that_fails_is_logged_and_the_gateway_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    service = Service(fail=True)
    ike, natt = free_port_pair()
    gateway = Gateway(gateway_options(ike, natt, RULES, plugin_objects=(service,)))

    async def body() -> None:
        await asyncio.sleep(0.1)
        assert gateway.status()["role"] == "gateway"

    with caplog.at_level(logging.ERROR, logger="tunvpn.plugins"):
        asyncio.run(_run(gateway, body()))
    errors = [r.getMessage() for r in caplog.records if r.name == "tunvpn.plugins"]
    assert errors == ["plugin 'svc': its service stopped: cannot listen on 10.0.0.1:1701"]


# --------------------------------------------------------------------------- tunvpn_authorize


class Directory:
    """An authorization plugin: groups and a per-user policy from a "directory", a disabled user."""

    __name__ = "directory"

    def __init__(self) -> None:
        self.asked: list[tuple[str, frozenset[str]]] = []

    @hookimpl
    def tunvpn_declare_groups(self) -> tuple[str, ...]:
        return ("finance",)  # so a [[policy]] may name it

    @hookimpl
    def tunvpn_authorize(self, user: str, groups: frozenset[str]) -> Authorization | None:
        self.asked.append((user, groups))
        if user == "bob":
            return Authorization(deny="account disabled")
        if user == "alice":
            return Authorization(
                groups=("finance",),
                policies=(Phase2Policy("alice-desk", TrafficSelector.from_network("10.78.200.0/24")),),
                address="10.79.0.42",  # type: ignore[arg-type]  # text is converted
            )
        return None


def test_authorize_adds_groups_a_per_user_policy_and_an_address() -> None:
    directory = Directory()
    finance = Phase2Policy("ledger", TrafficSelector.from_network("10.78.100.0/24"))
    result = run_session(
        user="alice",
        password="a-pass",
        users={"alice": "a-pass"},
        plugins=[directory],
        policies=[DEFAULT_POLICIES[0], (finance, ["finance"])],
    )
    assert result.exit_code == 0, result.records
    assert directory.asked == [("alice", frozenset())]
    up = {r["name"]: r for r in result.records if r["event"] == "quick" and r["state"] == "established"}
    assert set(up) == {DEFAULT_POLICIES[0].name, "ledger", "alice-desk"}
    assert up["alice-desk"]["remote_ts"] == "10.78.200.0/24"
    [modecfg] = [r for r in result.records if r["event"] == "modecfg" and r["state"] == "received"]
    assert modecfg["address"] == "10.79.0.42"
    assert result.address == "10.79.0.42"
    assert result.groups == {"finance"}
    assert result.policies == (DEFAULT_POLICIES[0].name, "ledger", "alice-desk")


def test_authorize_can_refuse_an_authenticated_user() -> None:
    result = run_session(user="bob", password="b-pass", users={"bob": "b-pass"}, plugins=[Directory()])
    assert result.exit_code != 0
    [failed] = [r for r in result.records if r["state"] == "failed"]
    assert "account disabled" in failed["message"], failed


# --------------------------------------------------------------------------- routes (Framed-Route)


class Routed:
    __name__ = "routed"

    @hookimpl
    def tunvpn_verify_credentials(self, request: object) -> Verdict | None:
        # a branch office behind alice; the second one overlaps a protected network: ignored
        return Verdict.accept(routes=["10.99.0.0/24", "10.78.0.0/16"])


def test_routes_behind_the_client_become_pushed_sas_and_bad_ones_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tunvpn.gateway.daemon"):
        result = run_session(user="alice", password="a-pass", plugins=[Routed()])
    assert result.exit_code == 0, result.records
    base = DEFAULT_POLICIES[0].name
    up = {r["name"]: r for r in result.records if r["event"] == "quick" and r["state"] == "established"}
    routed = f"{base} <- 10.99.0.0/24"
    assert set(up) == {p.name for p in DEFAULT_POLICIES} | {
        f"{p.name} <- 10.99.0.0/24" for p in DEFAULT_POLICIES
    }
    assert up[routed]["local_ts"] == "10.99.0.0/24"
    assert up[routed]["remote_ts"] == up[base]["remote_ts"]
    assert any("route 10.78.0.0/16 for user 'alice' ignored" in r.getMessage() for r in caplog.records)
