"""The number of ``# type: ignore`` comments in the code mypy checks may only go down.

contrib/test-all.sh runs mypy over the files that ``[tool.mypy] files`` in pyproject.toml names
(tunvpn/ and the plugins' packages). An ignore hides a real error or a library without types;
fix the types instead (a typed dataclass, a Protocol, narrowing). When you remove some, lower
CEILING to the new count in the same commit, so they stay removed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CEILING = 0
"""The count when this test last changed (98 when mypy came into CI)."""

IGNORE = re.compile(r"#\s*type:\s*ignore\b")


def checked_files() -> list[Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out: list[Path] = []
    for entry in config["tool"]["mypy"]["files"]:
        path = ROOT / entry
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def type_ignores() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in checked_files():
        found = len(IGNORE.findall(path.read_text()))
        if found:
            counts[str(path.relative_to(ROOT))] = found
    return counts


def test_mypy_checks_the_package_and_the_plugins() -> None:
    files = {str(p.relative_to(ROOT)) for p in checked_files()}
    assert "tunvpn/ike/engine.py" in files
    assert any(f.startswith("plugins/tunvpn-l2tp/tunvpn_l2tp/") for f in files)


def test_type_ignores_do_not_grow() -> None:
    counts = type_ignores()
    total = sum(counts.values())
    by_file = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    assert total <= CEILING, (
        f"{total} `# type: ignore` comments, more than the ceiling of {CEILING} ({by_file}). "
        "Fix the types instead of ignoring the error."
    )


def test_the_counter_sees_an_ignore() -> None:
    sample = "x: int = 'a'  # type: ignore[assignment]\ny = 1  #type:ignore\nz = 'type: ignore'\n"
    assert len(IGNORE.findall(sample)) == 2
