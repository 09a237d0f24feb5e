"""The RADIUS plugin (plugins/tunvpn-radius) against a real FreeRADIUS on loopback
(contrib/freeradius, fixture in radius_fixture.py): PAP and CHAP, a wrong password refused
with the server's message, an Access-Challenge round trip, Framed-IP-Address and Class, a
dead first server failing over, replies without Message-Authenticator dropped (a fake server:
a negative test of our BlastRADIUS check), and a real gateway + client over loopback whose
address comes from RADIUS and whose accounting Start and Stop reach FreeRADIUS's detail file;
an XAUTH RADIUS-CHAP login (the gateway gets only the CHAP answer, FreeRADIUS checks it)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import radius_fixture
from tests.helpers.loopback import (
    CLIENT,
    RULES,
    client_options,
    free_port_pair,
    gateway_options,
    loopback_available,
    serve,
)
from tests.helpers.radius_fixture import FreeRadius
from tunvpn.client.daemon import Client, Progress
from tunvpn.gateway.daemon import Gateway
from tunvpn.plugins import CredentialRequest, GatewayContext, PluginHost, Verdict, hookimpl

freeradius_server = radius_fixture.freeradius_server  # the fixtures
radius = radius_fixture.radius

tunvpn_radius = pytest.importorskip("tunvpn_radius", reason="pip install -e plugins/tunvpn-radius")
from tunvpn_radius import plugin as radius_plugin  # noqa: E402
from tunvpn_radius.client import RadiusClient, RadiusError, Server  # noqa: E402


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(radius: FreeRadius, tmp_path: Path, *, dead_first: bool = False, **extra: object) -> dict:
    secret = str(radius.secret_file(tmp_path))
    servers = [
        {"host": "127.0.0.1", "port": radius.auth_port, "acct_port": radius.acct_port, "secret_file": secret}
    ]
    if dead_first:
        dead = closed_port()
        servers.insert(0, {"host": "127.0.0.1", "port": dead, "acct_port": dead, "secret_file": secret})
    return {"servers": servers, "timeout": 1, "retries": 1, **extra}


def ask(request: CredentialRequest, radius_settings: dict) -> Verdict:
    context = GatewayContext(plugin_settings={"radius": radius_settings})
    host = PluginHost(["radius"])
    return asyncio.run(host.verify_credentials(request, context))


def test_pap_right_and_wrong_password(radius: FreeRadius, tmp_path: Path) -> None:
    s = settings(radius, tmp_path)
    assert ask(CredentialRequest("alice", "a-pass-3141", session_id="s-pap"), s).accepted
    wrong = ask(CredentialRequest("alice", "nope", session_id="s-pap2"), s)
    assert wrong.outcome == "reject" and wrong.message == "Wrong user name or password"


def test_chap_right_and_wrong_password(radius: FreeRadius, tmp_path: Path) -> None:
    s = settings(radius, tmp_path, auth="chap")
    assert ask(CredentialRequest("alice", "a-pass-3141", session_id="s-chap"), s).accepted
    assert ask(CredentialRequest("alice", "a-pass-314", session_id="s-chap2"), s).outcome == "reject"


def test_a_client_computed_chap_answer_is_passed_on(radius: FreeRadius, tmp_path: Path) -> None:
    """PPP CHAP inside L2TP: the gateway never sees the password, only the MD5 answer."""
    import hashlib

    s = settings(radius, tmp_path)  # auth = pap for XAUTH; a CHAP answer goes as CHAP anyway
    challenge = bytes.fromhex("00112233445566778899aabbccddeeff0102")

    def answer(password: bytes, ident: int = 42) -> tuple[int, bytes, bytes]:
        return ident, challenge, hashlib.md5(bytes([ident]) + password + challenge).digest()

    right = CredentialRequest("alice", chap=answer(b"a-pass-3141"), session_id="s-ppp", via="ppp")
    assert ask(right, s).accepted
    wrong = CredentialRequest("alice", chap=answer(b"a-pass-314"), session_id="s-ppp2", via="ppp")
    assert ask(wrong, s).outcome == "reject"


def test_framed_ip_address_class_and_framed_route(radius: FreeRadius, tmp_path: Path) -> None:
    verdict = ask(CredentialRequest("bob", "b-pass-2718", session_id="s-bob"), settings(radius, tmp_path))
    assert verdict.accepted and verdict.groups == ("eng",) and str(verdict.address) == "10.99.0.42"
    assert radius_plugin.SESSIONS["s-bob"].routes == ("10.66.0.0/24 0.0.0.0 1",)
    assert [str(r) for r in verdict.routes] == ["10.66.0.0/24"]


def test_framed_route_forms() -> None:
    lines = [
        "10.20.0.0/16 0.0.0.0 1",
        "192.168.50.0 255.255.255.0 0.0.0.0 1",
        "10.9.9.9 10.0.0.1 2",
        "2001:db8::/32",
        "x",
    ]
    assert [str(n) for n in radius_plugin.framed_route_networks(lines, "bob")] == [
        "10.20.0.0/16",
        "192.168.50.0/24",
        "10.9.9.9/32",
    ]


def test_access_challenge_round_trip(radius: FreeRadius, tmp_path: Path) -> None:
    s = settings(radius, tmp_path)
    state: dict = {}
    first = ask(CredentialRequest("carol", "c-pass-1618", session_id="s-c", state=state), s)
    assert first.outcome == "challenge" and first.message == "Enter the code" and first.fields == ("answer",)
    second = ask(CredentialRequest("carol", answer="314159", session_id="s-c", round=2, state=state), s)
    assert second.accepted
    state = {}
    ask(CredentialRequest("carol", "c-pass-1618", session_id="s-d", state=state), s)
    bad = ask(CredentialRequest("carol", answer="000000", session_id="s-d", round=2, state=state), s)
    assert bad.outcome == "reject"


def test_a_dead_first_server_fails_over(
    radius: FreeRadius, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    verdict = ask(CredentialRequest("alice", "a-pass-3141"), settings(radius, tmp_path, dead_first=True))
    assert verdict.accepted
    assert "trying the next one" in caplog.text


def test_no_server_answering_is_a_clear_rejection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 20)
    secret.chmod(0o600)
    s = {
        "servers": [{"host": "127.0.0.1", "port": closed_port(), "secret_file": str(secret)}],
        "timeout": 0.3,
    }
    verdict = ask(CredentialRequest("alice", "a"), s)
    assert verdict.outcome == "reject" and verdict.message == "no RADIUS server answered"
    assert "no RADIUS server answered" in caplog.text and "ERROR" in caplog.text


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 20)
    secret.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        radius_plugin.client_from_settings({"servers": [{"host": "127.0.0.1", "secret_file": str(secret)}]})


@pytest.fixture
def fake_server() -> Iterator[tuple[int, list[bytes]]]:
    """Answers every Access-Request with an Access-Accept whose Response Authenticator is right
    but that has no Message-Authenticator (what a pre-BlastRADIUS server, or a forger, sends)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    secret = b"fake-server-secret-0123"
    seen: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            seen.append(data)
            attrs = bytes([18, 4]) + b"ok"
            header = struct.pack("!BBH", 2, data[1], 20 + len(attrs))
            auth = hashlib.md5(header + data[4:20] + attrs + secret).digest()
            sock.sendto(header + auth + attrs, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        done.set()
        thread.join()
        sock.close()


def test_replies_without_message_authenticator_are_dropped(
    fake_server: tuple[int, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    port, seen = fake_server
    client = RadiusClient([Server("127.0.0.1", port, b"fake-server-secret-0123")], timeout=0.3, retries=1)
    with pytest.raises(RadiusError, match="no answer"):
        client.authenticate("alice", "a-pass")
    assert len(seen) == 2  # tried, retried, every reply dropped
    assert caplog.text.count("Message-Authenticator") == 1  # logged once
    assert seen[0][20:22] == bytes([80, 18])  # and our requests carry one, first


# --------------------------------------------------------------------------- end to end

needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable on this host")


def connect_once(
    user: str,
    password: str,
    gateway_kw: dict,
    ask_password: Callable[[str], str] | None = None,
    settle: float = 0.0,
) -> tuple[int, list[dict]]:
    """A real gateway (``gateway_options(**gateway_kw)``) and one client over loopback, until
    the client's SAs are up (or it gives up): its exit code and its JSON progress records."""

    async def scenario() -> tuple[int, list[dict]]:
        ike, natt = free_port_pair()
        gateway, server = await serve(gateway_options(ike, natt, RULES, **gateway_kw))
        out = io.StringIO()
        options = dataclasses.replace(
            client_options(ike, natt, user, password),
            exit_after_established=True,
            password_prompt=ask_password is not None,
        )
        progress = Progress(json_lines=True, out=out)
        client = Client(options, CLIENT, progress=progress, ask_password=ask_password)
        try:
            code = await asyncio.wait_for(client.run(handle_signals=False), 30)
            await asyncio.sleep(settle)  # e.g. the client's Delete reaches the gateway
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 20)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    return asyncio.run(scenario())


@needs_loopback
def test_a_client_connects_through_radius_gets_its_address_and_is_accounted(
    radius: FreeRadius, tmp_path: Path
) -> None:
    radius_settings = settings(radius, tmp_path, dead_first=True)
    code, records = connect_once(
        "bob",
        "b-pass-2718",
        {"plugins": ("radius",), "plugin_settings": {"radius": radius_settings}},
        settle=0.5,
    )
    assert code == 0, records
    [modecfg] = [r for r in records if r["event"] == "modecfg" and r["state"] == "received"]
    assert modecfg["address"] == "10.99.0.42", modecfg  # Framed-IP-Address, not the pool's
    up = {r["name"]: r for r in records if r["event"] == "quick" and r["state"] == "established"}
    assert "eng" in up  # the Class "eng" decided the policies
    # Framed-Route 10.66.0.0/24 (a network behind bob): one more SA per policy, from it
    for name in ("intranet", "mail", "eng"):
        routed = up[f"{name} <- 10.66.0.0/24"]
        assert routed["local_ts"].startswith("10.66.0.0/24") and routed["remote_ts"] == up[name]["remote_ts"]
    detail = radius.wait_for_detail("Acct-Status-Type = Start", "Acct-Status-Type = Stop")
    assert "Acct-Status-Type = Start" in detail and "Acct-Status-Type = Stop" in detail, detail
    assert 'User-Name = "bob"' in detail and "Framed-IP-Address = 10.99.0.42" in detail
    assert "Acct-Input-Octets" in detail and "Acct-Session-Id" in detail


def test_radius_then_otp_chained_on_one_connection(radius: FreeRadius, tmp_path: Path) -> None:
    """Issue 5: the login is RADIUS (real FreeRADIUS); the gateway announces "otp" in phase 1a
    and runs it as the next XAUTH round (the real tunvpn-otp plugin); Quick Mode after both."""
    otp_core = pytest.importorskip("tunvpn_otp.core", reason="pip install -e plugins/tunvpn-otp")
    from tunvpn_otp.store import Store

    from tunvpn.ike.policies import ExtraProtocol

    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    store = Store(tmp_path / "otp.json")
    with store.edit(create=True) as users:
        users["bob"] = otp_core.Record(otp_core.Kind.HOTP, secret, pin_hash=otp_core.hash_pin("4711"))
    first_code = otp_core.Record(otp_core.Kind.HOTP, secret).code(0)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "4711" + first_code

    gateway_kw = {
        "plugins": ("radius", "otp"),
        "plugin_settings": {"radius": settings(radius, tmp_path), "otp": {"store": str(store.path)}},
        "protocols": (ExtraProtocol("otp", (("prompt", "PIN + tokencode"),)),),
    }
    code, records = connect_once("bob", "b-pass-2718", gateway_kw, ask_password=ask)
    assert code == 0, records
    assert prompts == ["PIN + tokencode [passcode]: "]  # the RADIUS password came from the profile
    states = [(r["event"], r["state"]) for r in records]
    assert states.index(("xauth", "ok")) < states.index(("modecfg", "received"))
    assert states.index(("modecfg", "received")) < states.index(("protocols", "ok"))
    assert states.index(("protocols", "ok")) < states.index(("quick", "started"))
    [modecfg] = [r for r in records if r["event"] == "modecfg" and r["state"] == "received"]
    assert modecfg["address"] == "10.99.0.42"  # from RADIUS
    record = store.get("bob")
    assert record is not None and record.counter == 1  # the code is used up


def test_interim_updates_reach_the_server_while_the_client_is_connected(
    radius: FreeRadius, tmp_path: Path
) -> None:
    """accounting_interval = 1: Accounting-Request Interim-Update for the session in the detail file."""
    from tests.helpers.loopback import wait_until

    radius_settings = settings(radius, tmp_path)

    async def scenario() -> None:
        ike, natt = free_port_pair()
        gateway = Gateway(
            gateway_options(
                ike,
                natt,
                RULES,
                plugins=("radius",),
                plugin_settings={"radius": radius_settings},
                accounting_interval=1,
            )
        )
        ready = asyncio.Event()
        server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 5)
        client = Client(
            client_options(ike, natt, "bob", "b-pass-2718"), CLIENT, progress=Progress(out=io.StringIO())
        )
        run = asyncio.ensure_future(client.run(handle_signals=False))
        try:
            await wait_until(lambda: "Acct-Status-Type = Interim-Update" in radius.detail_text(), 10)
            client.close("test done")
            client._finish(0, "done")
            await asyncio.wait_for(run, 10)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 20)

    asyncio.run(scenario())
    detail = radius.wait_for_detail("Acct-Status-Type = Stop")
    assert detail.index("Acct-Status-Type = Start") < detail.index("Acct-Status-Type = Interim-Update")
    assert detail.index("Acct-Status-Type = Interim-Update") < detail.rindex("Acct-Status-Type = Stop")


class _Witness:
    """Sees every credential request first (tryfirst) and leaves the decision to the others."""

    def __init__(self) -> None:
        self.requests: list[CredentialRequest] = []

    @hookimpl(tryfirst=True)
    def tunvpn_verify_credentials(self, request: CredentialRequest) -> None:
        self.requests.append(request)


@needs_loopback
@pytest.mark.parametrize(("password", "accepted"), [("b-pass-2718", True), ("b-pass-wrong", False)])
def test_xauth_radius_chap_login_the_gateway_never_sees_the_password(
    radius: FreeRadius, tmp_path: Path, password: str, accepted: bool
) -> None:
    """xauth_chap: the gateway asks our client with XAUTH-TYPE RADIUS-CHAP; the client answers
    with the CHAP response to the gateway's challenge; the radius plugin sends it on as
    CHAP-Password/CHAP-Challenge and FreeRADIUS, which knows bob's password, decides."""
    witness = _Witness()
    gateway_kw = {
        "plugins": ("radius",),
        "plugin_objects": (witness,),
        "plugin_settings": {"radius": settings(radius, tmp_path)},
        "xauth_chap": True,
    }
    code, records = connect_once("bob", password, gateway_kw)
    [request] = witness.requests
    assert request.password is None and request.chap is not None  # only the CHAP answer
    _identifier, challenge, response = request.chap
    assert len(challenge) == 16 and len(response) == 16
    assert [r["state"] for r in records if r["event"] == "xauth"][:2] == ["waiting", "chap"]
    if accepted:
        assert code == 0, records
        [modecfg] = [r for r in records if r["event"] == "modecfg" and r["state"] == "received"]
        assert modecfg["address"] == "10.99.0.42"  # FreeRADIUS accepted the CHAP answer
    else:
        assert code != 0
        failed = [r for r in records if r["event"] == "xauth" and r["state"] == "failed"]
        assert failed and "Wrong user name or password" in failed[-1]["message"], records
