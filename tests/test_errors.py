"""One exception root: every error raised on purpose is a NextclickError, and the CLI's one line keys on it."""

from __future__ import annotations

import ast
from pathlib import Path

from nextclick.operators.errors import NextclickError
from nextclick.operators.infra.failures import one_line, root_cause
from nextclick.operators.state.store import StateError

ROOT = Path(__file__).resolve().parent.parent
# Control flow inside one module, never raised past it; and the failpoints' simulated crash.
NOT_ERRORS = {"_Quarantined", "_Bad", "InjectedFailure"}


def _exception_classes() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in [*ROOT.joinpath("operators").rglob("*.py"), *ROOT.joinpath("flows").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Explained")) or b.endswith("Failed") for b in bases):
                    found.append((str(path.relative_to(ROOT)), node.name, bases))
    return found


def test_every_project_exception_derives_from_the_root() -> None:
    import importlib

    classes = _exception_classes()
    assert len(classes) > 10
    for path, name, _bases in classes:
        if name in NOT_ERRORS:
            continue
        module = importlib.import_module("nextclick." + path.removesuffix(".py").replace("/", "."))
        assert issubclass(getattr(module, name), NextclickError), f"{path}: {name}"


def test_the_one_line_is_the_project_errors_own_message() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise StateError(f"cannot open shard store '/data/shard-0003' (write): {exc}") from exc
    except StateError as wrapped:
        assert root_cause(wrapped) is wrapped
        assert one_line(wrapped) == ("cannot open shard store '/data/shard-0003' (write): "
                                     "[Errno 28] No space left on device")
    # Unexpected errors: the innermost cause, with its class when the message alone says nothing.
    try:
        try:
            {}["profile"]
        except KeyError as exc:
            raise RuntimeError("step failed") from exc
    except RuntimeError as outer:
        assert one_line(outer) == "KeyError: 'profile'"
