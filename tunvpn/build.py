"""Which modules of the data path can be compiled with mypyc, and which of them run compiled.

The hot path (the ESP core, the packet helpers, the data thread's loop) is the project's own
Python, type-checked strictly. A wheel built with ``TUNVPN_MYPYC=1`` (``setup.py``) compiles
:data:`COMPILED_MODULES` with mypyc, as black and charset-normalizer ship; any other install
(an editable one, a wheel built without it, a machine without a C compiler) runs the same
source interpreted. ``tunvpn --version`` and ``tunvpn status`` say which one runs
(:func:`build_kind`).

This module imports nothing of tunvpn, so ``setup.py`` reads the list from it without
importing the package.
"""

from __future__ import annotations

import importlib.util

COMPILED_MODULES: tuple[str, ...] = (
    "tunvpn.esp.replay",
    "tunvpn.esp.transforms",
    "tunvpn.esp.sa",
    "tunvpn.esp.table",
    "tunvpn.dataplane.checksum",
    "tunvpn.dataplane.virtio",
    "tunvpn.dataplane.packets",
)
"""Compiled in a ``TUNVPN_MYPYC=1`` build, in dependency order."""

EXTENSION_SUFFIXES = (".so", ".pyd")


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that are loaded from a compiled extension."""
    out = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and origin.endswith(EXTENSION_SUFFIXES):
            out.append(name)
    return out


def build_kind() -> str:
    """``"compiled (mypyc, N of M modules)"`` or ``"interpreted"``: what ``--version`` prints."""
    done = compiled_modules()
    if not done:
        return "interpreted"
    return f"compiled (mypyc, {len(done)} of {len(COMPILED_MODULES)} data path modules)"
