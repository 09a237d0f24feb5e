"""vpnc, an unmodified Cisco-compatible client, through the gateway's authentication plugins
(issue 5): the plugins answer XAUTH, so a standard client needs nothing of ours.

* RADIUS: a real FreeRADIUS (contrib/freeradius) in the gateway's namespace; bob's password
  connects, his Framed-IP-Address is the address vpnc gets and pings go through; a wrong password is refused
  with the server's Reply-Message; accounting Start and Stop reach the detail file.
* OTP: the PIN followed by an HOTP code as vpnc's XAUTH password connects once; the same
  passcode again is refused (a code is accepted once only); the next code connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, run_in, stop_process, wait_for
from tests.helpers.radius_fixture import FreeRadius, require_freeradius, start_freeradius, stop_freeradius
from tests.helpers.tunvpn_proc import popen_tunvpn, private_file, read_text, wait_for_line

from . import configs
from .vpnc import Vpnc

LAN_HOST = "10.78.0.1"

GATEWAY_TOML = """\
[gateway]
listen = "{listen}"
psk_file = "gateway.psk"
plugins = ["{plugin}"]
control_socket = "gw.sock"
require_xauth = true
allow_aggressive_psk = true   # vpnc: Aggressive Mode with a group PSK
legacy = true                 # vpnc: MODP-1024 only

[network]
pool = "{pool}"

[[policy]]
name = "lan"
local = "10.78.0.0/24"

{plugin_table}
"""


def start_gateway(tmp: Path, pair: NetnsPair, plugin: str, plugin_table: str) -> tuple[object, Path]:
    private_file(tmp / "gateway.psk", f"keyid:{configs.VPNC_GROUP} {configs.VPNC_GROUP_PSK}\n")
    config = tmp / "gateway.toml"
    config.write_text(
        GATEWAY_TOML.format(
            listen=pair.addr_a, plugin=plugin, pool=configs.VPNC_POOL, plugin_table=plugin_table
        )
    )
    log = tmp / "gateway.log"
    proc = popen_tunvpn(pair.a, ["gateway", "-c", str(config), "-v"], log)
    wait_for_line(log, "gateway ready", proc, 15, "our gateway to start with the plugin")
    return proc, log


def vpnc(tmp: Path, pair: NetnsPair, name: str, user: str, password: str) -> Vpnc:
    return Vpnc(
        tmp / name,
        pair.b,
        gateway=pair.addr_a,
        group=configs.VPNC_GROUP,
        group_psk=configs.VPNC_GROUP_PSK,
        user=user,
        password=password,
        routes=("10.78.0.0/24",),
    )


def connects(client: Vpnc, pair: NetnsPair, log: Path) -> dict[str, str]:
    """Run ``client`` until a ping goes through its tunnel (vpnc is then in its main loop, past
    the connect script); then stop it (vpnc sends its DELETEs)."""
    ends = read_text(log).count("deleted: deleted by peer")
    with client:
        try:
            connect = client.wait_connected(timeout=30)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n--- gateway log ---\n{read_text(log)[-4000:]}") from None

        def ping() -> bool:
            argv = ["ping", "-n", "-c", "1", "-W", "1", LAN_HOST]
            return run_in(pair.b, argv, check=False, timeout=10).returncode == 0

        try:
            wait_for(ping, 15, f"a ping to {LAN_HOST} through vpnc's tunnel")
        except TimeoutError:
            raise AssertionError(f"no ping through the tunnel\n{read_text(log)[-4000:]}") from None
        client.stop(settle=0.5)
    wait_for(lambda: read_text(log).count("deleted: deleted by peer") > ends, 10, "vpnc's DELETE")
    return connect


def is_refused(client: Vpnc, log: Path, needle: str) -> None:
    with client:
        wait_for(lambda: needle in read_text(log), 20, f"the gateway to log {needle!r}")
        wait_for(lambda: client.proc is None or client.proc.poll() is not None, 20, "vpnc to give up")
    assert not [e for e in client.events() if e.get("reason") == "connect"]


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    with NetnsPair("10.77.0.1/24", "10.77.0.2/24") as p:
        p.add_addr(p.a, f"{LAN_HOST}/24")  # a host of the protected network "lan"
        yield p


@pytest.fixture
def radius_in_gateway_ns(pair: NetnsPair, tmp_path: Path) -> Iterator[FreeRadius]:
    require_freeradius()
    server = start_freeradius(tmp_path / "raddb", netns=pair.a)
    try:
        yield server
    finally:
        stop_freeradius(server)
        print("---- FreeRADIUS log ----\n" + server.log())


def test_vpnc_logs_in_through_radius(
    pair: NetnsPair, radius_in_gateway_ns: FreeRadius, tmp_path: Path
) -> None:
    radius = radius_in_gateway_ns
    radius.secret_file(tmp_path)
    table = (
        "[plugin.radius]\n"
        f'servers = [{{ host = "127.0.0.1", port = {radius.auth_port}, acct_port = {radius.acct_port}, '
        'secret_file = "radius-secret" }]\n'
        "timeout = 1\nretries = 1\n"
    )
    gateway, log = start_gateway(tmp_path, pair, "radius", table)
    try:
        connect = connects(vpnc(tmp_path, pair, "bob", "bob", "b-pass-2718"), pair, log)
        is_refused(vpnc(tmp_path, pair, "alice", "alice", "not-alices-password"), log, "user 'alice'")
    finally:
        stop_process(gateway)  # type: ignore[arg-type]
    text = read_text(log)

    assert connect["INTERNAL_IP4_ADDRESS"] == "10.99.0.42", connect  # bob's Framed-IP-Address
    assert "XAUTH: user 'bob' from 10.77.0.2 accepted" in text, text[-3000:]
    assert "XAUTH: user 'alice' from 10.77.0.2 rejected: Wrong user name or password" in text, text[-3000:]
    detail = radius.wait_for_detail("Acct-Status-Type = Start", "Acct-Status-Type = Stop")
    assert 'User-Name = "bob"' in detail and "Framed-IP-Address = 10.99.0.42" in detail, detail
    assert "Acct-Status-Type = Start" in detail and "Acct-Status-Type = Stop" in detail, detail
    for secret in ("b-pass-2718", "not-alices-password", radius.secret, configs.VPNC_GROUP_PSK):
        assert secret not in text
    assert "Traceback" not in text


def test_vpnc_with_an_otp_passcode_connects_once(pair: NetnsPair, tmp_path: Path) -> None:
    otp_core = pytest.importorskip("tunvpn_otp.core", reason="pip install -e plugins/tunvpn-otp")
    from tunvpn_otp.store import Store

    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    store = Store(tmp_path / "otp.json")
    with store.edit(create=True) as users:
        users["tina"] = otp_core.Record(otp_core.Kind.HOTP, secret, pin_hash=otp_core.hash_pin("4711"))
    token = otp_core.Record(otp_core.Kind.HOTP, secret)
    first, second = "4711" + token.code(0), "4711" + token.code(1)
    gateway, log = start_gateway(tmp_path, pair, "otp", f'[plugin.otp]\nstore = "{store.path}"\n')
    try:
        connects(vpnc(tmp_path, pair, "one", "tina", first), pair, log)
        is_refused(vpnc(tmp_path, pair, "again", "tina", first), log, "rejected")
        connects(vpnc(tmp_path, pair, "next", "tina", second), pair, log)
    finally:
        stop_process(gateway)  # type: ignore[arg-type]
    text = read_text(log)

    assert text.count("XAUTH: user 'tina' from 10.77.0.2 accepted") == 2, text[-3000:]
    assert "OTP: user 'tina' from 10.77.0.2 refused: this tokencode was used already" in text, text[-3000:]
    record = store.get("tina")
    assert record is not None and record.counter == 2
    for passcode in (first, second):
        assert passcode not in text
