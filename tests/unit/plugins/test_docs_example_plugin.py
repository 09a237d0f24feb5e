"""docs/plugins.md's example plugin is a real distribution (tests/example-plugin, installed by
contrib/test-all.sh) whose files are the page's code blocks, word for word; it loads through
its entry point and passes the page's own test (tests/loopback/test_my_otp.py, also a code block)."""

from __future__ import annotations

import re
from pathlib import Path

from tunvpn.plugins import installed_plugins

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "plugins.md").read_text()


def block(first_line: str, language: str) -> str:
    found = re.findall(rf"```{language}\n({re.escape(first_line)}.*?)```", PAGE, re.S)
    assert len(found) == 1, f"docs/plugins.md: one {language} block starting {first_line!r}"
    return found[0]


def test_the_page_and_the_example_distribution_are_the_same_files() -> None:
    example = ROOT / "tests" / "example-plugin"
    assert block("# my_otp/plugin.py", "python") == (example / "my_otp" / "plugin.py").read_text()
    assert block("# pyproject.toml, beside", "toml") == (example / "pyproject.toml").read_text()
    assert block("# test_my_otp.py", "python") == (ROOT / "tests" / "loopback" / "test_my_otp.py").read_text()


def test_the_example_is_installed_under_its_entry_point() -> None:
    [plugin] = [p for p in installed_plugins() if p.name == "my-otp"]
    assert (plugin.distribution, plugin.module) == ("tunvpn-my-otp", "my_otp.plugin")
