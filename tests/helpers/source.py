"""Checks on tunvpn's source with ast (tests/unit/test_no_io_in_cores.py, the data path's pure
modules in tests/unit/dataplane/test_packets.py)."""

from __future__ import annotations

import ast

FORBIDDEN = frozenset({"socket", "asyncio", "threading", "select", "selectors", "subprocess", "time"})
"""What a sans-I/O module must not import: time comes in as ``now``, bytes as arguments."""


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``"line N: import X"`` for each import of a forbidden top-level module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    return found
