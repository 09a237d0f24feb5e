"""Run ``python -m tunvpn ...`` inside a network namespace, as a user would (a helper, not a test).

The subprocess gets this checkout on PYTHONPATH, unbuffered output, and its own log file; secret
files are written 0600 as the command line demands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.netns import popen_in, run_in, wait_for

REPO = Path(__file__).resolve().parents[2]


def private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 (the only mode tunvpn accepts for secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def tunvpn_env() -> dict[str, str]:
    """Environment additions so that ``python -m tunvpn`` finds this checkout, with every
    warning an error (issue 20: a normal run of the daemons warns of nothing)."""
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "error",
    }


def tunvpn_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "tunvpn", *argv]


def popen_tunvpn(ns: str, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    return popen_in(ns, tunvpn_argv(*argv), log_path, env=tunvpn_env())


def run_tunvpn(ns: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tunvpn argv`` in ``ns`` to completion (output captured)."""
    return run_in(ns, tunvpn_argv(*argv), check=False, timeout=timeout, env={**os.environ, **tunvpn_env()})


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def json_records(path: Path) -> list[dict[str, object]]:
    """The ``--json`` progress lines of a client log (other lines are log output)."""
    out = []
    for line in read_text(path).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Wait until ``text`` appears in the log at ``path``; fail early with the log if ``proc`` exits."""
    try:
        wait_for(lambda: text in read_text(path) or proc.poll() is not None, timeout, what)
    except TimeoutError:
        raise TimeoutError(f"timed out waiting for {what}; log:\n{read_text(path)[-4000:]}") from None
    if text not in read_text(path):
        raise RuntimeError(f"{what}: process exited {proc.returncode}; log:\n{read_text(path)[-4000:]}")
