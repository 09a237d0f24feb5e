"""Issue 21: the data path runs compiled (mypyc) or interpreted, from the same source, and
tunvpn says which. contrib/test-compiled.sh runs the unit tests with TUNVPN_EXPECT_COMPILED=1 on
a mypyc build; everywhere else they run on the sources."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

from tunvpn.build import COMPILED_MODULES, build_kind, compiled_modules

ROOT = Path(__file__).resolve().parents[2]


def test_the_build_runs_as_this_run_expects() -> None:
    expected = os.environ.get("TUNVPN_EXPECT_COMPILED") == "1"
    if expected:
        assert compiled_modules() == list(COMPILED_MODULES)
        assert (
            build_kind()
            == f"compiled (mypyc, {len(COMPILED_MODULES)} of {len(COMPILED_MODULES)} data path modules)"
        )
        for name in COMPILED_MODULES:  # loaded from the extension, not the .py beside it
            assert importlib.import_module(name).__file__.endswith(".so"), name  # type: ignore[union-attr]
    else:
        assert compiled_modules() == [] and build_kind() == "interpreted"


def test_version_says_which_build_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunvpn", "--version"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.startswith("tunvpn ") and f"({build_kind()})" in out


def test_setup_py_compiles_exactly_the_listed_modules_and_they_are_strictly_typed_cores() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    namespace: dict[str, object] = {"__file__": str(ROOT / "setup.py")}
    [function] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compiled_modules"]
    imports = [
        n
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom) and "setuptools" not in ast.unparse(n)
    ]
    exec(compile(ast.Module([*imports, function], []), "setup.py", "exec"), namespace)
    assert namespace["compiled_modules"]() == list(COMPILED_MODULES)  # type: ignore[operator]
    for name in COMPILED_MODULES:
        # the strict mypy override of pyproject.toml covers them (mypyc needs the types)
        assert name.startswith(("tunvpn.esp.", "tunvpn.dataplane.", "tunvpn.ipsec.")), name
        assert (ROOT / (name.replace(".", "/") + ".py")).exists()
