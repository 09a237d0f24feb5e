"""The protocol cores stay sans-I/O (STYLE.md section 1): no module under tunvpn/ike/,
tunvpn/esp/ or tunvpn/ipsec/ (what the two share) imports socket, asyncio, threading,
select, selectors, subprocess or time.

Checked on the source with ast, so an import inside a function or under `if TYPE_CHECKING`
counts too; time must come in as `now`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.source import forbidden_imports

PACKAGE = Path(__file__).resolve().parents[2] / "tunvpn"
CORES = ("ipsec", "ike", "esp")


def core_sources() -> list[Path]:
    return sorted(p for core in CORES if (PACKAGE / core).is_dir() for p in (PACKAGE / core).rglob("*.py"))


def test_detector_catches_the_forms() -> None:
    src = (
        "import os, socket\nfrom asyncio import sleep\nimport time as t\ndef f():\n    import select.epoll\n"
    )
    assert forbidden_imports(src, "x.py") == [
        "line 1: socket",
        "line 2: asyncio",
        "line 3: time",
        "line 5: select.epoll",
    ]
    assert forbidden_imports("from . import time\nimport timeit\nimport datetime\n", "x.py") == []


def test_there_is_a_core_to_check() -> None:
    assert core_sources(), f"no modules under {PACKAGE}/ipsec, /ike or /esp: has the layout changed?"


@pytest.mark.parametrize("path", core_sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_has_no_io_imports(path: Path) -> None:
    bad = forbidden_imports(path.read_text(), str(path))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports I/O modules: {', '.join(bad)}"
