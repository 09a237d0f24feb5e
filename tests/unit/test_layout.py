"""tests/ mirrors the package (tests/README.md says where a new test goes), checked on the tree
and on the source with ast, as tests/unit/test_import_graph.py checks tunvpn/:

* a test file sits in tests/unit/ (or tests/unit/<a package of tunvpn>/), tests/loopback/,
  tests/netns/ or tests/interop/; test folders hold tests, shared set-up lives in tests/helpers/
  (or in tunvpn.testing when plugin authors need it too);
* no test module imports another test module (share set-up through helpers instead);
* nothing under tests/unit/ asks for root: no ``netns`` or ``interop`` marker, no namespaces, no
  skip unless root.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PACKAGE = ROOT / "tunvpn"
# folders whose every file is a test (or the folder's conftest.py / __init__.py)
TEST_FOLDERS = ("unit", "loopback", "netns")
# interop/ also holds the drivers of the real peers (strongswan.py, vpnc.py, configs.py, ...)
KINDS = (*TEST_FOLDERS, "interop")
NOT_TESTS = ("example-plugin",)  # docs/plugins.md's example distribution, installed by test-all.sh
ROOT_MARKERS = frozenset({"netns", "interop"})
ROOT_NEEDS = frozenset({"tests.helpers.netns", "tests.helpers.requires"})


def packages() -> set[str]:
    """The subpackages of tunvpn/ (tunvpn/ike, tunvpn/esp, ...): the folders of tests/unit/."""
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def python_files() -> Iterator[Path]:
    """Every Python file of the test suite: tests/ and the plugin distributions' tests."""
    for path in sorted([*TESTS.rglob("*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]):
        rel = path.relative_to(ROOT).parts
        if "__pycache__" in rel or any(part in NOT_TESTS for part in rel):
            continue
        yield path


def misplaced(rel: tuple[str, ...], package_names: set[str]) -> str | None:
    """Why the test file at ``rel`` (its path under tests/, split) is out of the layout."""
    kind = rel[0]
    if kind not in KINDS:
        return f"not under one of tests/{{{','.join(KINDS)}}}/"
    if kind == "unit" and len(rel) == 3 and rel[1] not in package_names:
        return f"tests/unit/{rel[1]}/ mirrors no package: there is no tunvpn/{rel[1]}/"
    if len(rel) > (3 if kind == "unit" else 2):
        return "too deep: tests/unit/<package>/test_x.py or tests/<kind>/test_x.py"
    return None


def test_every_test_file_sits_in_the_layout() -> None:
    names = packages()
    bad = []
    for path in TESTS.rglob("test_*.py"):
        rel = path.relative_to(TESTS).parts
        if rel[0] in NOT_TESTS:
            continue
        why = misplaced(rel, names)
        if why:
            bad.append(f"tests/{'/'.join(rel)}: {why}")
    assert not bad, "test files out of the layout (tests/README.md):\n" + "\n".join(sorted(bad))


def test_the_layout_check_catches_the_forms() -> None:
    names = {"ike", "esp"}
    assert misplaced(("test_x.py",), names)
    assert misplaced(("helpers", "test_x.py"), names)
    assert misplaced(("unit", "nosuch", "test_x.py"), names)
    assert misplaced(("unit", "ike", "deep", "test_x.py"), names)
    assert misplaced(("loopback", "ike", "test_x.py"), names)
    assert misplaced(("unit", "ike", "test_x.py"), names) is None
    assert misplaced(("unit", "test_x.py"), names) is None
    assert misplaced(("netns", "test_x.py"), names) is None


def test_test_folders_hold_only_tests() -> None:
    bad = [
        str(path.relative_to(ROOT))
        for kind in TEST_FOLDERS
        for path in (TESTS / kind).rglob("*.py")
        if "__pycache__" not in path.parts
        and not (path.name.startswith("test_") or path.name in ("__init__.py", "conftest.py"))
    ]
    assert not bad, f"helpers belong in tests/helpers/ (or tunvpn/testing.py): {bad}"


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of every module ``tree`` imports (relative imports resolved
    against ``module``; ``from a import b`` yields ``a`` and ``a.b``, as b may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = module.split(".")
            if node.level:
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def imported_test_modules(path: Path, source: str) -> list[str]:
    """``"line N: module"`` for each test module (``test_*``) the file imports."""
    rel = path.relative_to(ROOT).with_suffix("")
    tree = ast.parse(source, str(path))
    found: dict[str, None] = {}
    for line, name in imported_modules(tree, ".".join(rel.parts), path.name == "__init__.py"):
        parts = name.split(".")
        for n, part in enumerate(parts):
            if not part.startswith("test_"):
                continue
            is_module = n < len(parts) - 1 or any(
                (folder / f"{part}.py").is_file() for folder in (ROOT.joinpath(*parts[:n]), path.parent)
            )
            if is_module:
                found[f"line {line}: {'.'.join(parts[: n + 1])}"] = None
                break
    return list(found)


def test_no_test_module_imports_another() -> None:
    bad = []
    for path in python_files():
        found = imported_test_modules(path, path.read_text())
        bad += [f"{path.relative_to(ROOT)} {hit}" for hit in found]
    assert not bad, "tests import test modules (move the shared set-up to tests/helpers/):\n" + "\n".join(bad)


def test_the_import_check_catches_the_forms() -> None:
    here = TESTS / "unit" / "ike" / "test_example.py"  # need not exist
    for source in (
        "from tests.unit.ike.test_engine import client_config\n",
        "import tests.loopback.test_shell\n",
        "from tests.unit.ike import test_engine\n",
        "from .test_engine import connect\n",
        "from . import test_engine\n",
        "import test_engine\n",  # the old flat layout's sys.path import
    ):
        assert imported_test_modules(here, source), source
    assert (
        imported_test_modules(here, "from tests.helpers.ike_pair import Pair\nfrom tunvpn import testing\n")
        == []
    )


def root_needs(source: str, filename: str) -> list[str]:
    """What in a test file asks for root: a netns/interop marker, the namespace helpers, the
    ``netns_pair`` fixture, a test of the uid against 0."""
    tree = ast.parse(source, filename)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ROOT_MARKERS
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark"
        ):
            found.append(f"line {node.lineno}: mark.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ROOT_NEEDS:
            found.append(f"line {node.lineno}: {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: {a.name}" for a in node.names if a.name in ROOT_NEEDS]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            a.arg == "netns_pair" for a in node.args.args
        ):
            found.append(f"line {node.lineno}: fixture netns_pair")
        elif isinstance(node, ast.Compare) and is_uid_zero_test(node):
            found.append(f"line {node.lineno}: a test of the uid against 0 (root)")
    return found


def is_uid_zero_test(node: ast.Compare) -> bool:
    """``os.geteuid() != 0`` and the like: a skip (or a branch) for root."""
    sides = [node.left, *node.comparators]
    uid = any(
        isinstance(side, ast.Call)
        and isinstance(side.func, ast.Attribute | ast.Name)
        and (side.func.attr if isinstance(side.func, ast.Attribute) else side.func.id)
        in ("geteuid", "getuid")
        for side in sides
    )
    return uid and any(isinstance(side, ast.Constant) and side.value == 0 for side in sides)


def test_unit_tests_ask_for_no_root() -> None:
    bad = []
    for path in sorted((TESTS / "unit").rglob("test_*.py")):
        bad += [f"{path.relative_to(ROOT)} {hit}" for hit in root_needs(path.read_text(), str(path))]
    assert not bad, "tests needing root belong in tests/netns/ (or tests/interop/):\n" + "\n".join(bad)


def test_the_root_check_catches_the_forms() -> None:
    assert root_needs("import pytest\n@pytest.mark.netns\ndef test_x(): pass\n", "x.py")
    assert root_needs("import pytest\npytestmark = [pytest.mark.interop]\n", "x.py")
    assert root_needs("from tests.helpers.netns import NetnsPair\n", "x.py")
    assert root_needs("def test_x(netns_pair): pass\n", "x.py")
    assert root_needs("import os, pytest\nroot = pytest.mark.skipif(os.geteuid() != 0, reason='')\n", "x.py")
    assert root_needs("import os\nours = {os.geteuid(), 0}\n", "x.py") == []
    assert (
        root_needs("import pytest\n@pytest.mark.parametrize('a', [1])\ndef test_x(a): pass\n", "x.py") == []
    )
