"""Issue 22: ``tunvpn plugin new NAME`` writes a plugin distribution that passes its own tests as
written, uninstalled (its entry-point test skipped) and installed (all of them), and that
``tunvpn plugins`` then lists; names are checked and an existing folder is never written over.

The generated tests run in a process of their own (``python -m pytest``, every warning an
error), from the generated folder, with this checkout's tunvpn first on ``PYTHONPATH``. The
install goes into a folder of the test's own, never into this environment (docstring of
:func:`install`)."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tunvpn import cli
from tunvpn.plugins.template import MAX_NAME, TemplateError, check_name, render
from tunvpn.testing import loopback_available

ROOT = Path(__file__).resolve().parents[3]
NAME = "allow-list"
PACKAGE = "tunvpn_allow_list"
FILES = {
    "pyproject.toml",
    "README.md",
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/plugin.py",
    "tests/test_allow_list.py",
}
GENERATED_TESTS = 11
"""How many tests the generated suite has (its parametrized settings check counts 5)."""

needs_loopback = pytest.mark.skipif(not loopback_available(), reason="127.0.0.2 is not usable")


def generate(parent: Path) -> Path:
    """``tunvpn plugin new allow-list --dir parent``, its output swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["plugin", "new", NAME, "--dir", str(parent)]) == 0
    return parent / f"tunvpn-{NAME}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated distribution for the tests that run it (they do not change it)."""
    return generate(tmp_path_factory.mktemp("generated"))


def python(
    argv: list[str], cwd: Path, path: list[Path], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python argv`` in ``cwd`` with ``path``, then this checkout, first on PYTHONPATH and every
    warning an error."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [*map(str, [*path, ROOT]), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "PYTHONWARNINGS": "error",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_generated_tests(dist: Path, path: list[Path]) -> str:
    """The generated distribution's own test suite, as its author runs it; its output."""
    run = python(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(dist / "tests")], dist, path)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def can_build_wheels() -> bool:
    """pip can build a wheel offline with this environment's setuptools: 70.1 and later have
    ``bdist_wheel``, older ones need the ``wheel`` package (checked without importing either)."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(n) for n in [*re.findall(r"\d+", version), "0", "0"][:2])
    return (major, minor) >= (70, 1)


def install(dist: Path, site: Path) -> None:
    """Install ``dist`` into the folder ``site`` (not into this environment), offline, from a
    copy of it (a build leaves files in the source folder, which the other tests share).

    Where this environment's setuptools can build a wheel, pip installs it (``--no-index
    --no-build-isolation --target``). The setuptools of pyenv's Python 3.11 (65.x) cannot
    without the ``wheel`` package, which tunvpn does not depend on and this test does not
    download: then setuptools itself writes the distribution's metadata from its pyproject.toml
    (``egg_info``: name, version, the ``tunvpn`` entry point) into ``site`` beside a copy of
    its package, which is what importlib.metadata (and so the gateway) reads of an installed
    distribution."""
    source = site.with_name(f"{site.name}-source")
    shutil.copytree(dist, source, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = can_build_wheels()
    if wheels:
        argv = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        argv += ["--target", str(site), str(source)]
    else:
        argv = ["-c", "from setuptools import setup; setup()", "egg_info", "--egg-base", str(site)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # pip and setuptools warn: not errors here
    run = subprocess.run(
        [sys.executable, *argv], cwd=source, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    if not wheels:
        shutil.copytree(source / PACKAGE, site / PACKAGE)


def module_imports(source: str) -> set[str]:
    """Every module a Python source imports (``from a import b``: ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            found.add(node.module or "")
    return found


# --------------------------------------------------------------------------- the command


def test_the_command_writes_the_distribution_and_says_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugin", "new", NAME, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    target = tmp_path / f"tunvpn-{NAME}"
    written = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert written == FILES
    for name in FILES:
        assert f"  {target / name}\n" in out
    assert out.startswith(f"wrote the plugin distribution {target}/:\n")
    assert "pip install -e '.[test]' && pytest" in out

    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["build-system"] == {
        "requires": ["setuptools>=61"],
        "build-backend": "setuptools.build_meta",
    }
    meta = project["project"]
    assert meta["name"] == f"tunvpn-{NAME}"
    assert meta["dependencies"] == ["tunvpn"]
    assert meta["optional-dependencies"] == {"test": ["pytest"]}
    assert meta["entry-points"] == {"tunvpn": {NAME: f"{PACKAGE}.plugin"}}
    assert project["tool"]["setuptools"]["packages"] == [PACKAGE]

    readme = (target / "README.md").read_text()
    for needed in (
        "pip install -e '.[test]'",
        f'plugins = ["{NAME}"]',
        f"[plugin.{NAME}]",
        "\npytest\n",
        "docs/plugins.md",
        "Hook reference",
    ):
        assert needed in readme, needed


def test_the_plugin_imports_tunvpn_only_through_the_plugin_api(dist: Path) -> None:
    stdlib = sys.stdlib_module_names
    for name in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/plugin.py"):
        modules = module_imports((dist / name).read_text())
        assert {m for m in modules if m.split(".")[0] == "tunvpn"} <= {"tunvpn.plugins"}, name
        assert {m.split(".")[0] for m in modules} <= {"tunvpn", *stdlib}, name
    plugin = (dist / f"{PACKAGE}/plugin.py").read_text()
    for hook in ("tunvpn_check_settings", "tunvpn_declare_groups", "tunvpn_authorize"):
        assert f"@hookimpl\ndef {hook}(" in plugin
    tests = module_imports((dist / "tests/test_allow_list.py").read_text())
    assert {m for m in tests if m.split(".")[0] == "tunvpn"} == {"tunvpn.plugins", "tunvpn.testing"}
    assert {m.split(".")[0] for m in tests} <= {"tunvpn", "pytest", PACKAGE, *stdlib}


def test_the_generated_python_is_ruff_clean(dist: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    files = [str(p.relative_to(dist)) for p in sorted(dist.rglob("*.py"))]
    assert len(files) == 3
    common = ["--no-cache", "--isolated", "--line-length", "110"]
    rules = ["--select", "E,F,W,I,B,UP,SIM,RUF", "--target-version", "py311"]
    for argv in (["check", *common, *rules], ["format", "--check", *common]):
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *argv, *files],
            cwd=dist,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", ["a", "a1", "allow-list", "ldap-2-groups", "x" * MAX_NAME])
def test_good_names_give_a_package_each(name: str) -> None:
    files = render(name)
    package = "tunvpn_" + name.replace("-", "_")
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        f"{package}/__init__.py",
        f"{package}/plugin.py",
        f"tests/test_{name.replace('-', '_')}.py",
    }
    for path, text in files.items():
        assert "{{" not in text and "}}" not in text, path
        if path.endswith(".py"):
            compile(text, path, "exec")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Allow",
        "allow_list",
        "1st",
        "-x",
        "x-",
        "a.b",
        "a b",
        "café",
        "x" * (MAX_NAME + 1),
        "radius",
        "users-file",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(TemplateError, match="plugin name"):
        check_name(name)


def test_the_command_refuses_a_bad_name_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugin", "new", "Allow_List", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunvpn: error: plugin name 'Allow_List': lowercase letters, digits and '-'")
    assert cli.main(["plugin", "new", "otp", "--dir", str(tmp_path)]) == 2
    assert "plugin name 'otp' is taken by tunvpn's own plugin" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_written_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / f"tunvpn-{NAME}"
    target.mkdir()
    (target / "pyproject.toml").write_text("mine\n")
    assert cli.main(["plugin", "new", NAME, "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"tunvpn: error: {target} already exists: nothing written (choose another NAME or --dir)\n"
    )
    assert [p.name for p in target.iterdir()] == ["pyproject.toml"]
    assert (target / "pyproject.toml").read_text() == "mine\n"
    (target / "pyproject.toml").unlink()  # an empty folder is refused too
    assert cli.main(["plugin", "new", NAME, "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert list(target.iterdir()) == []
    assert cli.main(["plugin", "new", NAME, "--dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"tunvpn: error: {tmp_path / 'nowhere'}: no such directory\n"


# --------------------------------------------------------------------------- its own tests


@needs_loopback
def test_the_generated_tests_pass_uninstalled(dist: Path) -> None:
    out = run_generated_tests(dist, [dist])
    assert f"{GENERATED_TESTS - 1} passed, 1 skipped" in out, out
    assert f"the entry point '{NAME}' is not installed: pip install -e . (README.md)" in out


@needs_loopback
def test_installed_it_loads_by_its_entry_point(dist: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install(dist, site)

    listing = python(["-m", "tunvpn", "plugins"], tmp_path, [site])
    assert listing.returncode == 0, listing.stderr
    assert re.search(rf"^{NAME} +tunvpn-{NAME} 0\.1\.0 +{PACKAGE}\.plugin$", listing.stdout, re.M), (
        listing.stdout
    )

    # the README's gateway.toml lines, with what any gateway.toml has, pass `tunvpn plugins -c`
    readme = (dist / "README.md").read_text()
    block = re.findall(r"```toml\n(.*?)```", readme, re.S)[0]
    basics = '[gateway]\nlisten = "127.0.0.1"\npsk = "a-long-enough-group-secret-0123"\ntun = false\n'
    config = tmp_path / "gateway.toml"
    config.write_text(block.replace("[gateway]\n", basics) + '\n[network]\npool = "10.79.0.10-10.79.0.50"\n')
    config.chmod(0o600)
    check = python(["-m", "tunvpn", "plugins", "-c", str(config)], tmp_path, [site])
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"settings: OK (checked by {NAME})" in check.stdout
    assert f"groups declared by plugins: {NAME}-users ({NAME})" in check.stdout
    config.write_text(config.read_text().replace("only_listed = false", 'only_listed = "no"'))
    check = python(["-m", "tunvpn", "plugins", "-c", str(config)], tmp_path, [site])
    assert check.returncode == 2, check.stdout + check.stderr
    assert f"key plugin.{NAME}.only_listed: 'no': expected true or false (plugin '{NAME}')" in check.stderr

    out = run_generated_tests(dist, [site])
    assert f"{GENERATED_TESTS} passed" in out and "skipped" not in out, out
