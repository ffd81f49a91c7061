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


_build: str | None = None


def release() -> str:
    """The version and a digest of the code and contracts installed (`0.1.0+3f2a9c1e`): two builds of one
    version (an upgrade rolled out to one pod, a patched image) are told apart where a cluster's processes
    compare releases (an outside probe: both said 0.1.0, and the refusal named settings that did not differ)."""
    global _build
    if _build is None:
        import hashlib
        import os

        root = os.path.dirname(os.path.abspath(__file__))
        digest = hashlib.sha256()
        found: list[tuple[str, str]] = []
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            found += [(os.path.relpath(os.path.join(folder, f), root), os.path.join(folder, f))
                      for f in files if f.endswith((".py", ".json", ".toml"))]
        for rel, path in sorted(found):
            digest.update(rel.replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(fh.read())
        _build = f"{__version__}+{digest.hexdigest()[:8]}"
    return _build
