"""tunvpn(1) and the shell completion are made from the argparse definitions (issue 20): every
option of every command shows in the page, and every command completes."""

from __future__ import annotations

import re

import pytest

from tunvpn import cli

pytest.importorskip("argparse_manpage")
pytest.importorskip("shtab")

OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return capsys.readouterr().out


def _commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    text = _help(capsys).split("positional arguments:")[1].split("options:")[0]
    return [m.group(1) for m in re.finditer(r"^    ([a-z][\w-]*)\s", text, re.MULTILINE)]


def test_every_option_of_every_command_is_in_the_manual_page(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(capsys)
    assert {"gateway", "connect", "status", "events", "reload", "bench", "manpage", "completion"} <= set(
        commands
    )
    assert cli.main(["manpage"]) == 0
    page = capsys.readouterr().out.replace("\\-", "-")
    assert page.startswith(".TH TUNVPN")
    missing = []
    for command in commands:
        if f"'tunvpn {command}'" not in page:
            missing.append(command)
        for option in set(OPTION.findall(_help(capsys, command))) - {
            "-h",
            "--help",
        }:  # every command has them
            if option not in page:
                missing.append(f"{command} {option}")
    assert not missing, missing


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_knows_every_command(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(capsys)
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for command in commands:
        assert command in script, command
    assert "--log-format" in script and "--pool6" in script
