"""Issue 21: the figures the README quotes come from raw reports committed under docs/bench/.

The README's "Measuring" tables must be exactly ``readme_table()`` of the committed JSON, the
README must name each JSON file and the command that made it, and the committed markdown next
to each JSON must be that JSON's own rendering (nothing edited by hand).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunvpn.bench.report import BenchReport, readme_table

ROOT = Path(__file__).resolve().parents[3]
REPORTS = (
    "docs/bench/bench-2026-12-06-load.json",
    "docs/bench/bench-2026-12-06-load-nogso.json",
    "docs/bench/bench-2026-12-06-compiled.json",  # tunvpn interpreted and compiled side by side
    "docs/bench/bench-2026-12-06-load-gro.json",  # the veth's USO off, GRO on
    "docs/bench/bench-2026-12-06-busypoll.json",  # busy polling on (tunvpn) and off, side by side
    "docs/bench/bench-2026-12-06-busypoll-cpu.json",  # the same, with the daemons' CPU at rest
)


def measuring_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Measuring")
    end = text.index("`tunvpn bench logins`", start)
    return text[start:end]


def load(name: str) -> BenchReport:
    return BenchReport.from_dict(json.loads((ROOT / name).read_text()))


@pytest.mark.parametrize("name", REPORTS)
def test_the_readme_table_is_the_committed_report(name: str) -> None:
    report = load(name)
    section = measuring_section()
    assert readme_table(report) in section, f"README table differs from readme_table({name})"
    assert name in section
    assert report.command and f"`{report.command}`" in section
    assert f"--json {name}" in report.command
    assert report.has_load_pings()
    assert report.wire.get("setting") == ("off" if "nogso" in name else "gro" if "-gro" in name else "on")


@pytest.mark.parametrize("name", REPORTS)
def test_the_committed_markdown_is_the_json_rendered(name: str) -> None:
    markdown = (ROOT / name).with_suffix(".md").read_text()
    assert markdown == load(name).to_markdown() + "\n"
