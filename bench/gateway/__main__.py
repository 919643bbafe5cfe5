"""``python -m bench.gateway``: see ``run.py``."""

import sys

from bench.gateway.run import main

sys.exit(main())
