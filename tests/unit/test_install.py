"""contrib/install.sh, the README's first command, is valid bash and documents what it changes
(the script run for real with the distribution's own Python: tests/netns/test_install.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "contrib" / "install.sh"


def test_install_script_is_valid_bash_and_documents_its_changes() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    text = INSTALL.read_text()
    assert "What it changes on the machine" in text and "--uninstall" in text
    readme = (ROOT / "README.md").read_text()
    assert "bash contrib/install.sh && tunvpn demo" in readme
    assert "pip install . && tunvpn demo" not in readme
