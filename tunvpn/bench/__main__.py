"""``python -m tunvpn.bench``: the benchmark (the same as ``tunvpn bench``)."""

import sys

from tunvpn.bench.cli import main

sys.exit(main())
