"""``python -m pgchanges.cli``."""

import sys

from pgchanges.cli import main

sys.exit(main())
