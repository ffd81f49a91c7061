"""`python -m nextclick ...`: the same command line as the `nextclick` script."""

from nextclick.flows.cli import entry

entry()
