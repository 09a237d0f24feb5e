"""The build's one hook: ``TUNVPN_MYPYC=1`` compiles the data path with mypyc.

``TUNVPN_MYPYC=1 pip wheel --no-build-isolation --no-deps .`` (with mypy and setuptools
installed) builds a wheel whose modules listed in ``tunvpn/build.py`` are C extensions; every
other build, an editable install included, is pure Python. Nothing else is configured here:
the rest is pyproject.toml.
"""

import ast
import os
import sys
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list[str]:
    """``tunvpn.build.COMPILED_MODULES``, read without importing the package."""
    tree = ast.parse((Path(__file__).parent / "tunvpn" / "build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMPILED_MODULES":
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    raise SystemExit("tunvpn/build.py: no COMPILED_MODULES")


ext_modules = []
editable = "editable_wheel" in sys.argv or "develop" in sys.argv
if os.environ.get("TUNVPN_MYPYC") == "1" and editable:
    # compiled modules beside the sources would shadow every later edit of them
    print("TUNVPN_MYPYC=1 is ignored for an editable install: build a wheel to compile", file=sys.stderr)
elif os.environ.get("TUNVPN_MYPYC") == "1":
    from mypyc.build import mypycify

    files = [name.replace(".", "/") + ".py" for name in compiled_modules()]
    ext_modules = mypycify(files, opt_level="3", debug_level="1")

setup(ext_modules=ext_modules)
