"""``python -m tunvpn``: the same as the ``tunvpn`` command."""

import sys

from tunvpn.cli import main

sys.exit(main())
