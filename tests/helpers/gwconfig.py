"""gateway.toml files for tests: private files beside them and the smallest valid file."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tunvpn.config.gateway import GatewayConfig, load_gateway_config

MINIMAL = """\
[gateway]
listen = "192.0.2.1"
psk_file = "gw.psk"

[network]
pool = "10.79.0.10-10.79.0.20"

[[policy]]
name = "intranet"
local = "10.78.0.0/24"
"""
"""The smallest gateway.toml: a PSK file ``gw.psk`` beside it, a pool, one policy."""


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write ``text`` to ``path`` with ``mode`` (0600: what a secret file must have)."""
    path.write_text(text)
    path.chmod(mode)
    return path


def load_config(directory: Path, text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    """Write ``text`` (dedented) as ``directory/gateway.toml`` and load it."""
    path = directory / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return load_gateway_config(path, env={} if env is None else env)
