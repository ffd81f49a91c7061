"""One installed package: every module imports the project as nextclick.*, and nextclick/ maps the top-level
folders into it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import nextclick

REPO = Path(__file__).resolve().parent.parent
TOP = ("operators", "flows", "schemas")


def test_nextclick_maps_the_repository_folders() -> None:
    for name in TOP:
        link = REPO / "nextclick" / name
        assert link.is_symlink() and link.resolve() == (REPO / name).resolve(), name
    assert Path(nextclick.__file__).parent == REPO / "nextclick"


def test_no_module_imports_a_top_level_folder_by_its_own_name() -> None:
    """`import operators.x` would load a second copy of a module beside nextclick.operators.x (two metric
    registries, two classes of one record)."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for rel in tracked:
        path = REPO / rel
        if path.is_symlink() or not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{rel}:{node.lineno}: {n}" for n in names if n.split(".")[0] in TOP]
    assert not offenders, offenders
