"""The shape of the package, checked on the source with ast (as tests/unit/test_no_io_in_cores.py does):

* no module imports a private name (``_x``) of another module;
* the packages of ``tunvpn/`` import each other only as :data:`MAY_IMPORT` says (the diagram in
  docs/architecture.md), which has no cycle;
* plugins (``plugins/*/``, the example plugin of docs/plugins.md) reach tunvpn only through
  the plugin API, ``tunvpn.plugins``.

Imports inside functions and under ``if TYPE_CHECKING`` count too: they are dependencies all
the same.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tunvpn"

# What each part of tunvpn may import (besides itself). A part is a subpackage (tunvpn.ike) or a
# top-level module (tunvpn.cli). Keep in step with docs/architecture.md.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "tunvpn.ipsec": frozenset(),
    "tunvpn.ike": frozenset({"tunvpn.ipsec"}),
    "tunvpn.esp": frozenset({"tunvpn.ipsec"}),
    "tunvpn.untrusted": frozenset(),
    "tunvpn.build": frozenset(),  # what runs compiled (mypyc); imports nothing of tunvpn
    "tunvpn.shell": frozenset({"tunvpn.ike", "tunvpn.ipsec", "tunvpn.untrusted"}),  # logs.py escapes
    "tunvpn.dataplane": frozenset({"tunvpn.esp", "tunvpn.ike", "tunvpn.ipsec"}),
    "tunvpn.config": frozenset({"tunvpn.ike", "tunvpn.ipsec", "tunvpn.shell"}),
    "tunvpn.keylog": frozenset({"tunvpn.config", "tunvpn.ike", "tunvpn.ipsec"}),
    "tunvpn.control": frozenset({"tunvpn.dataplane", "tunvpn.ike", "tunvpn.shell"}),
    "tunvpn.plugins": frozenset(
        {"tunvpn.config", "tunvpn.dataplane", "tunvpn.ike", "tunvpn.ipsec", "tunvpn.untrusted"}
    ),
    "tunvpn.gateway": frozenset(
        {
            "tunvpn.build",
            "tunvpn.config",
            "tunvpn.control",
            "tunvpn.dataplane",
            "tunvpn.ike",
            "tunvpn.ipsec",
            "tunvpn.keylog",
            "tunvpn.plugins",
            "tunvpn.shell",
            "tunvpn.untrusted",
        }
    ),
    "tunvpn.client": frozenset(
        {
            "tunvpn.build",
            "tunvpn.config",
            "tunvpn.control",
            "tunvpn.dataplane",
            "tunvpn.ike",
            "tunvpn.ipsec",
            "tunvpn.keylog",
            "tunvpn.plugins",
            "tunvpn.shell",
            "tunvpn.untrusted",
        }
    ),
    "tunvpn.testing": frozenset(
        {"tunvpn.client", "tunvpn.config", "tunvpn.gateway", "tunvpn.ike", "tunvpn.ipsec"}
    ),
    "tunvpn.demo": frozenset({"tunvpn.config", "tunvpn.ike", "tunvpn.untrusted"}),
    "tunvpn.bench": frozenset({"tunvpn.client", "tunvpn.config", "tunvpn.ike"}),
    "tunvpn.cli": frozenset(
        {
            "tunvpn.bench",
            "tunvpn.client",
            "tunvpn.build",
            "tunvpn.config",
            "tunvpn.control",
            "tunvpn.demo",
            "tunvpn.gateway",
            "tunvpn.ike",
            "tunvpn.plugins",
            "tunvpn.shell",
            "tunvpn.untrusted",
        }
    ),
    "tunvpn.__main__": frozenset({"tunvpn.cli"}),
}
PLUGIN_API = "tunvpn.plugins"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for each import in ``source`` (``name`` None for ``import m``);
    relative imports resolved against ``module``; in the order of the source."""
    nodes = sorted(ast.walk(ast.parse(source)), key=lambda n: getattr(n, "lineno", 0))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_package else -1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield node.lineno, target, alias.name


def part(module: str) -> str:
    """``tunvpn.gateway.daemon`` -> ``tunvpn.gateway``; ``tunvpn.cli`` -> ``tunvpn.cli``."""
    return ".".join(module.split(".")[:2])


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str, name: str | None, known: set[str]) -> str:
    """The module an import reaches: ``from tunvpn.gateway import audit`` reaches a module."""
    return f"{target}.{name}" if name and f"{target}.{name}" in known else target


def private_imports(source: str, module: str, is_package: bool, known: set[str]) -> list[str]:
    """``"line N: from M import _x"`` for each private name taken from another module."""
    found = []
    for line, target, name in imports(source, module, is_package):
        if name is None or not name.startswith("_") or name.startswith("__"):
            continue
        if resolve(target, name, known) == target and target != module:
            found.append(f"line {line}: from {target} import {name}")
    return found


def part_edges() -> dict[str, set[tuple[str, str]]]:
    """part -> {(part it imports, "module:line")}, over every module of tunvpn/."""
    known = set(modules())
    edges: dict[str, set[tuple[str, str]]] = {}
    for module, path in modules().items():
        for line, target, name in imports(path.read_text(), module, path.name == "__init__.py"):
            if not target.startswith("tunvpn."):
                continue  # `import tunvpn` (for its path) is no dependency on a part
            to = part(resolve(target, name, known))
            if to != part(module):
                edges.setdefault(part(module), set()).add((to, f"{module}:{line}"))
    return edges


def cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_detectors_catch_the_forms() -> None:
    known = {"tunvpn.a", "tunvpn.a.b", "tunvpn.c"}
    src = (
        "from tunvpn.c import _secret, public\n"
        "def f():\n    from tunvpn.a.b import _helper\n"
        "from tunvpn.a import b\nfrom . import _own\nfrom tunvpn.c import __version__\n"
    )
    assert private_imports(src, "tunvpn.a.x", False, known) == [
        "line 1: from tunvpn.c import _secret",
        "line 3: from tunvpn.a.b import _helper",
        "line 5: from tunvpn.a import _own",
    ]
    assert list(imports("from ..esp import sa\n", "tunvpn.dataplane.thread")) == [(1, "tunvpn.esp", "sa")]
    assert list(imports("from .. import x\n", "tunvpn.dataplane", is_package=True)) == [(1, "tunvpn", "x")]
    assert resolve("tunvpn.a", "b", known) == "tunvpn.a.b" and resolve("tunvpn.a", "B", known) == "tunvpn.a"
    a, b, c = (frozenset({x}) for x in "abc")
    assert cycle({"a": b, "b": c, "c": a}) == ["a", "b", "c", "a"]
    assert cycle({"a": b, "b": c, "d": a}) is None


def test_the_rules_are_a_layering() -> None:
    assert cycle(MAY_IMPORT) is None
    assert all(dep in MAY_IMPORT for deps in MAY_IMPORT.values() for dep in deps)


def test_every_part_has_its_rule() -> None:
    parts = {part(m) for m in modules()} - {"tunvpn"}
    assert parts <= set(MAY_IMPORT), f"add {sorted(parts - set(MAY_IMPORT))} to MAY_IMPORT and the diagram"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_of_other_modules(path: Path) -> None:
    bad = private_imports(path.read_text(), module_name(path), path.name == "__init__.py", set(modules()))
    assert not bad, f"{path.relative_to(ROOT)} imports private names: {'; '.join(bad)}"


def test_parts_import_only_what_the_diagram_allows() -> None:
    wrong = [
        f"{src} imports {dst} ({where})"
        for src, deps in sorted(part_edges().items())
        for dst, where in sorted(deps)
        if dst not in MAY_IMPORT.get(src, frozenset())
    ]
    assert not wrong, "\n".join(wrong) + "\n(a new dependency: MAY_IMPORT and docs/architecture.md)"


def plugin_sources() -> list[Path]:
    dists = [*sorted((ROOT / "plugins").glob("tunvpn-*/tunvpn_*")), ROOT / "tests" / "example-plugin"]
    return sorted(p for d in dists for p in d.rglob("*.py") if "build" not in p.parts)


def test_there_are_plugins_to_check() -> None:
    assert len({p.parts[len(ROOT.parts) + 1] for p in plugin_sources()}) >= 3, "has the layout changed?"


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_only_the_plugin_api(path: Path) -> None:
    import tunvpn.plugins

    bad = []
    for line, target, name in imports(path.read_text(), "plugin.module"):
        if target == PLUGIN_API and name in tunvpn.plugins.__all__:
            continue
        if target == "tunvpn" or target.startswith("tunvpn."):
            bad.append(f"line {line}: {target}" + (f" import {name}" if name else ""))
    assert not bad, f"{path.relative_to(ROOT)} reaches past {PLUGIN_API}: {'; '.join(bad)}"
