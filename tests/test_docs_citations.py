"""Every test the documentation cites exists: a guarantee that points at a deleted test has none.

The docs name tests three ways: a file (`tests/test_crash.py`), a test in a file
(`tests/shard/test_shard.py::test_name`) and a bare test name in backticks (`test_name[param]`). Bench
summaries are dated records of a run and are not checked.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted({*REPO.glob("*.md"), *REPO.glob("docs/**/*.md"), *REPO.glob("deploy/**/*.md")})
CITED_FILE = re.compile(r"\btests/[\w/]+\.py\b")
CITED_TEST = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
NAMED_TEST = re.compile(r"`(test_\w+)(?:\[[^\]`]*\])?`")


@lru_cache(maxsize=1)
def defined_tests() -> dict[str, set[str]]:
    """Test functions by the file that defines them (relative to the repository)."""
    return {str(path.relative_to(REPO)): set(re.findall(r"^\s*(?:async\s+)?def\s+(test_\w+)\(", path.read_text(),
                                                         re.MULTILINE))
            for path in (REPO / "tests").rglob("*.py")}


def test_the_docs_cite_tests_at_all() -> None:
    assert any(CITED_FILE.search(doc.read_text()) for doc in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_test_a_doc_cites_exists(doc: Path) -> None:
    text = doc.read_text()
    tests = defined_tests()
    missing = [f for f in CITED_FILE.findall(text) if f not in tests and not (REPO / f).is_file()]
    missing += [f"{f}::{name}" for f, name in CITED_TEST.findall(text) if name not in tests.get(f, set())]
    everywhere = set().union(*tests.values())
    missing += [name for name in NAMED_TEST.findall(text) if name not in everywhere]
    assert missing == [], f"{doc.relative_to(REPO)} cites tests that do not exist: {missing}"
