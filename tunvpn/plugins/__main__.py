"""``python -m tunvpn.plugins [--markdown]``: installed plugins, or the hook reference."""

import sys

from tunvpn.plugins.host import main

sys.exit(main())
