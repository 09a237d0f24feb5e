"""The README's first command with the distribution's own Python (issue 20).

Debian's /usr/bin/python3 is "externally managed" (PEP 668): its pip refuses `pip install .`.
`contrib/install.sh` makes a virtual environment and links `tunvpn`; this test runs it with that
very interpreter into a temporary prefix and bin directory (the CI host is not changed), then
`tunvpn demo` from the link, then `--uninstall`.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "contrib" / "install.sh"
DISTRO_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _clean_env() -> dict[str, str]:
    # no virtualenv or pyenv of the test runner may leak into the distribution's Python
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYENV_VERSION", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def test_readme_first_command_with_the_distribution_python(tmp_path: Path) -> None:
    if not DISTRO_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 on this machine")
    if not _externally_managed(DISTRO_PYTHON):
        pytest.skip(f"{DISTRO_PYTHON} is not externally managed (not a Debian/Ubuntu Python)")
    env = _clean_env()
    # positive control: the distribution's pip really refuses the old README command
    refused = subprocess.run(
        [str(DISTRO_PYTHON), "-m", "pip", "install", "--dry-run", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "externally-managed-environment" in refused.stderr + refused.stdout

    prefix, bindir, share = tmp_path / "opt-tunvpn", tmp_path / "bin", tmp_path / "share"
    done = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--python",
            str(DISTRO_PYTHON),
            "--prefix",
            str(prefix),
            "--bindir",
            str(bindir),
            "--sharedir",
            str(share),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    link = bindir / "tunvpn"
    assert link.is_symlink() and Path(os.readlink(link)) == prefix / "bin" / "tunvpn"
    # the manual page and the completions, made from the installed command (issue 20)
    made = [
        share / "man/man1/tunvpn.1",
        share / "bash-completion/completions/tunvpn",
        share / "zsh/site-functions/_tunvpn",
    ]
    assert made[0].read_text().startswith(".TH TUNVPN") and "gateway" in made[0].read_text()
    assert "complete" in made[1].read_text() and "#compdef" in made[2].read_text()
    # the venv runs the distribution's interpreter, not the one running this test
    base = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert base == "/usr", base
    assert sysconfig.get_paths()["purelib"] not in str(prefix)

    demo = subprocess.run(
        [str(link), "demo"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo: every step passed" in demo.stdout

    gone = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--prefix",
            str(prefix),
            "--bindir",
            str(bindir),
            "--sharedir",
            str(share),
            "--uninstall",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert gone.returncode == 0, gone.stderr
    assert not prefix.exists() and not link.exists() and not link.is_symlink()
    assert not any(path.exists() for path in made), made
