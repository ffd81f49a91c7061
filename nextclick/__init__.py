"""nextclick: real-time customer profiles and targeting decisions on Kafka, by the next click.

The repository keeps its parts at the top (flows/, operators/, schemas/); the wheel installs them as
this one package: nextclick.flows (the dataflows and their entry points), nextclick.operators (the
building blocks, in the layers docs/architecture.md draws) and nextclick.schemas (the contracts).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nextclick")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
