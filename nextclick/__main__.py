"""`python -m nextclick ...`: the same command line as the `nextclick` script."""

import sys

from nextclick.flows.cli import main

sys.exit(main())
